//! Calls and time per function, for `replay -c` (ltrace's `-c`).

use std::collections::HashMap;

use super::{Defs, Step};
use crate::format::{Enter, FnClass, Origin};

/// True if a call returning `ret` failed, as its function tells failures: an allocator
/// returning null for a nonzero size, a system call (`-S`) returning -errno, a C library
/// function returning its failure value (`-1`, null, an error number: see
/// [`crate::protos::failure`]).
pub fn failed(defs: &Defs, e: &Enter, ret: u64) -> bool {
    let arg = |i: usize| e.args.get(i).copied().unwrap_or(0);
    let name = defs.name(e.func);
    match defs.class(e.func) {
        FnClass::Malloc | FnClass::Valloc | FnClass::Pvalloc | FnClass::AlignedAlloc => ret == 0,
        FnClass::Calloc => ret == 0 && arg(0) != 0 && arg(1) != 0,
        FnClass::Realloc => ret == 0 && arg(1) != 0,
        FnClass::ReallocArray => ret == 0 && arg(1) != 0 && arg(2) != 0,
        FnClass::PosixMemalign => ret as u32 != 0,
        FnClass::Free => false,
        FnClass::Other => {
            if defs.functions.get(&e.func).map(|f| f.origin) == Some(Origin::Syscall) {
                return (-4095..0).contains(&(ret as i64));
            }
            crate::protos::lookup(name).is_some_and(|p| crate::protos::failed(name, p.ret, ret))
        }
    }
}

/// One function's row.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Row {
    /// Function name.
    pub name: String,
    /// Calls seen.
    pub calls: u64,
    /// Calls whose return time is known.
    pub timed: u64,
    /// Total nanoseconds from entry to return over the timed calls.
    pub ns: u64,
    /// Calls whose return value says they failed (see [`failed`]).
    pub errors: u64,
}

/// Streaming counts per function.
#[derive(Default)]
pub struct CallTable {
    rows: HashMap<u32, Row>,
}

impl CallTable {
    /// Feeds one call step.
    pub fn step(&mut self, step: &Step<'_>, defs: &Defs) {
        match step {
            Step::Began { enter, .. } => {
                let r = self.rows.entry(enter.func).or_insert_with(|| Row {
                    name: defs.shown(enter.func).to_string(),
                    ..Row::default()
                });
                r.calls += 1;
            }
            Step::Ended { enter, exit, .. } => {
                let Some(r) = self.rows.get_mut(&enter.func) else {
                    return;
                };
                if let Some(ts) = exit.ts {
                    r.timed += 1;
                    // Saturating: a hostile recording can claim any times.
                    r.ns = r.ns.saturating_add(ts.saturating_sub(enter.ts));
                }
                if exit.ret.is_some_and(|ret| failed(defs, enter, ret)) {
                    r.errors += 1;
                }
            }
        }
    }

    /// Rows by total time, then calls, then name (most expensive first).
    pub fn finish(self) -> Vec<Row> {
        let mut rows: Vec<Row> = self.rows.into_values().collect();
        rows.sort_by(|a, b| (b.ns, b.calls, &a.name).cmp(&(a.ns, a.calls, &b.name)));
        rows
    }
}
