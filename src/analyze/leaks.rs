//! Leak analysis: blocks allocated and never freed by the end of the recording, grouped by
//! allocation stack.
//!
//! Only outermost allocator calls count (an allocator calling another one inside is one
//! allocation). A free takes effect at its entry, an allocation at its return; `realloc`
//! releases the old block at entry and restores it if the call fails.

use std::collections::HashMap;

use super::{Defs, Step};
use crate::format::FnClass;

/// A live block.
#[derive(Clone, Copy, Debug)]
struct Block {
    size: u64,
    stack: Option<u32>,
    func: u32,
    ts: u64,
}

/// Blocks leaked from one allocation stack in one process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeakGroup {
    /// Process.
    pub pid: u32,
    /// Allocation stack id.
    pub stack: Option<u32>,
    /// Allocating function id (of the first block).
    pub func: u32,
    /// Number of blocks.
    pub blocks: u64,
    /// Total bytes.
    pub bytes: u64,
    /// Smallest block.
    pub min_size: u64,
    /// Largest block.
    pub max_size: u64,
    /// Allocation time of the first and last block (ns since the recording started).
    pub first_ts: u64,
    /// See `first_ts`.
    pub last_ts: u64,
    /// Live blocks of this stack at the end of each tenth of the recording: a leak that
    /// grows with the workload climbs, a cache filled once stays flat.
    pub growth: Vec<u64>,
}

/// The result of the leak analysis.
#[derive(Clone, Debug, Default)]
pub struct LeakReport {
    /// Groups, most important first (see [`LeakAnalysis::finish`]).
    pub groups: Vec<LeakGroup>,
    /// Nanoseconds between the first and the last call.
    pub span_ns: u64,
}

impl LeakReport {
    /// Total leaked blocks.
    pub fn blocks(&self) -> u64 {
        self.groups.iter().map(|g| g.blocks).sum()
    }

    /// Total leaked bytes.
    pub fn bytes(&self) -> u64 {
        self.groups.iter().map(|g| g.bytes).sum()
    }
}

/// Streaming state of the leak analysis.
#[derive(Default)]
pub struct LeakAnalysis {
    live: HashMap<(u32, u64), Block>,
    /// Block released at a realloc's entry, by (thread, depth), restored if it fails.
    released: HashMap<(u32, usize), (u64, Block)>,
    growth: super::growth::Growth,
}

/// Slices of the recording the growth of a group is reported in.
pub const GROWTH_SLICES: usize = 10;

const PAGE: u64 = 4096;

impl LeakAnalysis {
    /// Feeds one call step.
    pub fn step(&mut self, step: &Step<'_>, defs: &Defs) {
        match step {
            Step::Began {
                enter,
                in_alloc: false,
                ..
            } => {
                let (pid, _) = defs.thread(enter.thread);
                let arg = |i: usize| enter.args.get(i).copied().unwrap_or(0);
                self.growth.tick(enter.ts);
                match defs.class(enter.func) {
                    FnClass::Free => {
                        if let Some(b) = self.live.remove(&(pid, arg(0))) {
                            self.growth.change((pid, b.stack), enter.ts, -1);
                        }
                    }
                    FnClass::Realloc | FnClass::ReallocArray if arg(0) != 0 => {
                        if let Some(b) = self.live.remove(&(pid, arg(0))) {
                            self.growth.change((pid, b.stack), enter.ts, -1);
                            self.released.insert((enter.thread, 0), (arg(0), b));
                        }
                    }
                    _ => {}
                }
            }
            Step::Ended {
                enter,
                exit,
                in_alloc: false,
                ..
            } => {
                let (pid, _) = defs.thread(enter.thread);
                let arg = |i: usize| enter.args.get(i).copied().unwrap_or(0);
                let released = self.released.remove(&(enter.thread, 0));
                let size = match defs.class(enter.func) {
                    FnClass::Malloc | FnClass::Valloc => Some(arg(0)),
                    FnClass::Calloc => Some(arg(0).saturating_mul(arg(1))),
                    FnClass::Realloc => Some(arg(1)),
                    FnClass::ReallocArray => Some(arg(1).saturating_mul(arg(2))),
                    FnClass::AlignedAlloc => Some(arg(1)),
                    FnClass::Pvalloc => Some(arg(0).div_ceil(PAGE).max(1).saturating_mul(PAGE)),
                    FnClass::PosixMemalign => Some(arg(2)),
                    FnClass::Free | FnClass::Other => None,
                };
                let Some(size) = size else { return };
                let ptr = match (defs.class(enter.func), exit.ret, exit.out) {
                    (FnClass::PosixMemalign, Some(0), Some(p)) => p,
                    (FnClass::PosixMemalign, _, _) => 0,
                    (_, Some(r), _) => r,
                    (_, None, _) => 0,
                };
                let is_realloc = matches!(
                    defs.class(enter.func),
                    FnClass::Realloc | FnClass::ReallocArray
                );
                if ptr == 0 {
                    // Failed (or never returned): a realloc keeps its old block; a
                    // realloc to size 0 that returned NULL freed it.
                    if let Some((old, b)) = released {
                        if !(is_realloc && size == 0 && exit.ret.is_some()) {
                            self.growth.change((pid, b.stack), enter.ts, 1);
                            self.live.insert((pid, old), b);
                        }
                    }
                    return;
                }
                self.growth.change((pid, enter.stack), enter.ts, 1);
                if let Some(replaced) = self.live.insert(
                    (pid, ptr),
                    Block {
                        size,
                        stack: enter.stack,
                        func: enter.func,
                        ts: enter.ts,
                    },
                ) {
                    // The address was live already: its free was not seen.
                    self.growth.change((pid, replaced.stack), enter.ts, -1);
                }
            }
            _ => {}
        }
    }

    /// Groups what is still live. Groups of several blocks (leaks that repeat, which grow
    /// with the workload) come before single blocks (one-off buffers), each by bytes.
    pub fn finish(self) -> LeakReport {
        let mut groups: HashMap<(u32, Option<u32>), LeakGroup> = HashMap::new();
        for ((pid, _), b) in self.live {
            let g = groups.entry((pid, b.stack)).or_insert(LeakGroup {
                pid,
                stack: b.stack,
                func: b.func,
                blocks: 0,
                bytes: 0,
                min_size: u64::MAX,
                max_size: 0,
                first_ts: u64::MAX,
                last_ts: 0,
                growth: Vec::new(),
            });
            g.blocks += 1;
            g.bytes = g.bytes.saturating_add(b.size);
            g.min_size = g.min_size.min(b.size);
            g.max_size = g.max_size.max(b.size);
            if b.ts < g.first_ts {
                g.first_ts = b.ts;
                g.func = b.func;
            }
            g.last_ts = g.last_ts.max(b.ts);
        }
        let mut groups: Vec<LeakGroup> = groups.into_values().collect();
        for g in &mut groups {
            g.growth = self.growth.slices((g.pid, g.stack), GROWTH_SLICES);
        }
        groups.sort_by(|a, b| {
            (b.blocks > 1)
                .cmp(&(a.blocks > 1))
                .then(b.bytes.cmp(&a.bytes))
                .then(b.blocks.cmp(&a.blocks))
                .then(a.pid.cmp(&b.pid))
                .then(a.first_ts.cmp(&b.first_ts))
        });
        LeakReport {
            groups,
            span_ns: self.growth.span(),
        }
    }
}

/// Runs the leak analysis over a whole recording (no symbolization).
pub fn analyze<R: std::io::Read>(
    reader: &mut crate::format::Reader<R>,
) -> Result<LeakReport, crate::format::FormatError> {
    let mut defs = Defs::default();
    let mut pairer = super::CallPairer::default();
    let mut leaks = LeakAnalysis::default();
    while let Some(rec) = reader.next_record()? {
        defs.learn(&rec);
        if let Some(step) = pairer.step(&rec, &defs) {
            leaks.step(&step, &defs);
        }
    }
    Ok(leaks.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::CallPairer;
    use crate::format::{Enter, Exit, FunctionDef, Record, ThreadDef};

    fn defs() -> Defs {
        let mut d = Defs::default();
        for (id, name, class, returns) in [
            (0, "malloc", FnClass::Malloc, true),
            (1, "free", FnClass::Free, false),
            (2, "realloc", FnClass::Realloc, true),
            (3, "posix_memalign", FnClass::PosixMemalign, true),
            (4, "pvalloc", FnClass::Pvalloc, true),
        ] {
            d.learn(&Record::Function(FunctionDef {
                id,
                name: name.into(),
                class,
                returns,
                origin: Default::default(),
            }));
        }
        d.learn(&Record::Thread(ThreadDef {
            num: 0,
            pid: 7,
            tid: 7,
        }));
        d
    }

    fn call(
        func: u32,
        args: &[u64],
        stack: u32,
        ret: Option<u64>,
        out: Option<u64>,
    ) -> Vec<Record> {
        let mut v = vec![Record::Enter(Enter {
            thread: 0,
            ts: 0,
            func,
            args: args.to_vec(),
            stack: Some(stack),
            data: Vec::new(),
        })];
        if func != 1 {
            v.push(Record::Exit(Exit {
                thread: 0,
                ret,
                out,
                ts: None,
                data: Vec::new(),
            }));
        }
        v
    }

    fn run(records: Vec<Vec<Record>>) -> LeakReport {
        let d = defs();
        let mut p = CallPairer::default();
        let mut a = LeakAnalysis::default();
        for r in records.into_iter().flatten() {
            if let Some(s) = p.step(&r, &d) {
                a.step(&s, &d);
            }
        }
        a.finish()
    }

    #[test]
    fn frees_cancel_allocations_and_reallocs_move_blocks() {
        let r = run(vec![
            call(0, &[32], 1, Some(0x1000), None),
            call(0, &[32], 1, Some(0x2000), None),
            call(0, &[16], 2, Some(0x3000), None),
            call(1, &[0x3000], 3, None, None),
            call(2, &[0x2000, 64], 4, Some(0x4000), None),
            call(2, &[0x1000, 1 << 40], 4, Some(0), None),
            call(3, &[0x7ff0, 64, 100], 5, Some(0), Some(0x5000)),
        ]);
        let got: Vec<(Option<u32>, u64, u64)> = r
            .groups
            .iter()
            .map(|g| (g.stack, g.blocks, g.bytes))
            .collect();
        // A failed realloc keeps the block at its original stack.
        assert_eq!(
            got,
            vec![(Some(5), 1, 100), (Some(4), 1, 64), (Some(1), 1, 32)]
        );
    }

    #[test]
    fn sizes_from_a_hostile_recording_saturate() {
        // pvalloc rounds up to whole pages: from u64::MAX that used to overflow (found by
        // the fuzzer).
        let r = run(vec![
            call(4, &[u64::MAX], 1, Some(0x1000), None),
            call(4, &[1], 1, Some(0x2000), None),
        ]);
        assert_eq!(r.groups[0].blocks, 2);
        assert_eq!(r.groups[0].bytes, u64::MAX);
        assert_eq!(r.groups[0].min_size, PAGE);
    }

    #[test]
    fn repeated_leaks_rank_before_large_one_offs() {
        let mut calls = vec![call(0, &[4096], 9, Some(0x9000), None)];
        for i in 0..3 {
            calls.push(call(0, &[32], 1, Some(0x100 + i * 0x40), None));
        }
        let r = run(calls);
        assert_eq!(r.groups[0].stack, Some(1));
        assert_eq!(r.groups[0].blocks, 3);
        assert_eq!(r.groups[1].stack, Some(9));
    }

    #[test]
    fn nested_allocator_calls_count_once() {
        // realloc(NULL, n) implemented by calling malloc inside.
        let recs = vec![
            Record::Enter(Enter {
                thread: 0,
                ts: 0,
                func: 2,
                args: vec![0, 48],
                stack: Some(1),
                data: Vec::new(),
            }),
            Record::Enter(Enter {
                thread: 0,
                ts: 0,
                func: 0,
                args: vec![48],
                stack: Some(2),
                data: Vec::new(),
            }),
            Record::Exit(Exit {
                thread: 0,
                ret: Some(0x1000),
                out: None,
                ts: None,
                data: Vec::new(),
            }),
            Record::Exit(Exit {
                thread: 0,
                ret: Some(0x1000),
                out: None,
                ts: None,
                data: Vec::new(),
            }),
        ];
        let r = run(vec![recs]);
        assert_eq!(r.groups.len(), 1);
        assert_eq!(r.groups[0].stack, Some(1));
        assert_eq!(r.groups[0].bytes, 48);
    }
}
