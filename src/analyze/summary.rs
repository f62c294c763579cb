//! What a recording holds: processes, threads, modules, call counts, time span.

use std::collections::{BTreeMap, HashSet};

use crate::format::{ExitHow, ModuleDef, Record, StartCause};

/// One process of a recording.
#[derive(Clone, Debug)]
pub struct ProcessInfo {
    /// Process id.
    pub pid: u32,
    /// Parent process id, 0 if none.
    pub parent: u32,
    /// Executable path (of its last image).
    pub path: String,
    /// How it appeared (of its first start).
    pub cause: StartCause,
    /// Images it ran (1 + execs).
    pub images: u32,
    /// How it ended, if the recording says.
    pub exit: Option<ExitHow>,
    /// Threads seen making calls.
    pub threads: u32,
    /// Calls made.
    pub calls: u64,
    /// The fatal signal that struck it, if one was recorded: (signal, thread id).
    pub crash: Option<(i32, u32)>,
}

/// A summary of a recording.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Processes by pid.
    pub processes: BTreeMap<u32, ProcessInfo>,
    /// Modules, in recording order.
    pub modules: Vec<ModuleDef>,
    /// Calls per function name.
    pub calls: BTreeMap<String, u64>,
    /// Distinct stacks.
    pub stacks: u64,
    /// Timestamp of the first and last event (ns since the recording started).
    pub first_ts: Option<u64>,
    /// See `first_ts`.
    pub last_ts: u64,
    /// Addresses with packed symbols.
    pub packed_addresses: u64,
    /// Packed source lines.
    pub packed_lines: u64,
    /// Prototypes found in libraries' DWARF while recording.
    pub callee_prototypes: u64,
    /// The recorder's notes.
    pub notes: Vec<String>,
}

/// Accumulates a [`Summary`] from a record stream.
#[derive(Default)]
pub struct SummaryBuilder {
    s: Summary,
    functions: BTreeMap<u32, String>,
    thread_pid: BTreeMap<u32, u32>,
    active_threads: HashSet<u32>,
}

impl SummaryBuilder {
    /// Feeds one record.
    pub fn add(&mut self, rec: &Record) {
        let s = &mut self.s;
        let mut seen = |ts: u64| {
            s.first_ts = Some(s.first_ts.map_or(ts, |f| f.min(ts)));
            s.last_ts = s.last_ts.max(ts);
        };
        match rec {
            Record::ProcessStart(p) => {
                seen(p.ts);
                let e = s.processes.entry(p.pid).or_insert_with(|| ProcessInfo {
                    pid: p.pid,
                    parent: p.parent,
                    path: p.path.clone(),
                    cause: p.cause,
                    images: 0,
                    exit: None,
                    threads: 0,
                    calls: 0,
                    crash: None,
                });
                e.images += 1;
                e.path = p.path.clone();
            }
            Record::ProcessExit(p) => {
                seen(p.ts);
                if let Some(e) = s.processes.get_mut(&p.pid) {
                    e.exit = Some(p.how);
                }
            }
            Record::Module(m) => s.modules.push(m.clone()),
            Record::Function(f) => {
                self.functions.insert(f.id, f.name.clone());
            }
            Record::Thread(t) => {
                self.thread_pid.insert(t.num, t.pid);
            }
            Record::Stack(_) => s.stacks += 1,
            Record::Enter(e) => {
                seen(e.ts);
                let name = self
                    .functions
                    .get(&e.func)
                    .cloned()
                    .unwrap_or_else(|| format!("#{}", e.func));
                *s.calls.entry(name).or_default() += 1;
                if let Some(p) = self
                    .thread_pid
                    .get(&e.thread)
                    .and_then(|pid| s.processes.get_mut(pid))
                {
                    p.calls += 1;
                    if self.active_threads.insert(e.thread) {
                        p.threads += 1;
                    }
                }
            }
            Record::Signal(x) => {
                seen(x.ts);
                if let Some(pid) = self.thread_pid.get(&x.thread) {
                    if let Some(p) = s.processes.get_mut(pid) {
                        p.crash = Some((x.signo, x.thread));
                    }
                }
            }
            Record::Packed(_) => s.packed_addresses += 1,
            Record::Source(_) => s.packed_lines += 1,
            Record::Prototypes(t) => s.callee_prototypes += t.lines().count() as u64,
            Record::Note(n) => s.notes.push(format!("pid {}: {}", n.pid, n.text)),
            Record::ModuleUnload(_) | Record::Exit(_) => {}
        }
    }

    /// The summary so far.
    pub fn finish(self) -> Summary {
        self.s
    }
}
