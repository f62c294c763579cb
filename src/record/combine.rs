//! Merges the two recordings of a run recorded by both engines (src/record/hybrid.rs) into
//! one: the agent's (the allocator family, the program's calls through its imports, every
//! process, module and thread) and the ptrace engine's (the functions `-x` selects).
//!
//! Both are timed in raw counter ticks, read on the same counter by the program's threads
//! (the agent's hooks, the ptrace engine's return stubs) and by the tracer at the end of
//! each entry stop, while the thread is stopped: within a thread, the readings order every
//! event of both recordings exactly. The agent's recording is kept in its own order (by its
//! process-wide call numbers, which the leak analysis relies on: a `free` before the
//! `malloc` that reuses the block), and each traced call is placed in it before the first
//! record of its own thread that came later; a thread with no later record there gets its
//! calls once the agent's records are [`MARGIN`] past them, or at its process's end. The
//! ptrace recording is read whole first (its calls are the few that cost a stop each).
//!
//! Times are converted to nanoseconds once, here, with one map over the whole run. The
//! ptrace recording's processes are the agent's, so only its calls, crashes and notes are
//! taken, with its own module records for their stacks (minus frames in the agent's
//! library: its import trampoline); calls the agent itself made (its first frame in the
//! agent, unless the function is one the agent interposes and forwards) are dropped. A
//! process the agent never saw (it cleared `LD_PRELOAD`) keeps the ptrace recording's
//! records.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::{Read, Write};
use std::path::Path;

use crate::format::{
    CallRecord, Enter, Exit, FormatError, Frame, FunctionDef, Meta, ModuleDef, OpenError, Reader,
    Record, SignalRec, StackDef, Summary, ThreadDef, Writer,
};
use crate::record::clock::TscClock;

/// How far the agent's records must have passed a traced call of a thread they have no
/// later record of before it is placed: more than any call number's lag behind its time
/// reading (a thread preempted between the two), in nanoseconds.
pub const MARGIN: u64 = 50_000_000;

/// Why two partial recordings could not be merged.
#[derive(Debug, thiserror::Error)]
pub enum CombineError {
    /// A partial recording could not be opened.
    #[error("merging the engines' recordings: {0}")]
    Open(#[from] OpenError),
    /// A partial recording did not read, or the output did not write.
    #[error("merging the engines' recordings: {0}")]
    Format(#[from] FormatError),
}

/// A call the ptrace engine recorded, waiting for its place.
struct Traced {
    key: u64,
    rec: Record,
}

/// What is known of the ptrace engine's recording.
#[derive(Default)]
struct TracedSide {
    functions: HashMap<u32, FunctionDef>,
    modules: HashMap<u32, ModuleDef>,
    stacks: HashMap<u32, Vec<Frame>>,
    threads: HashMap<u32, (u32, u32)>,
    /// Events by (pid, tid), each thread's in its order.
    events: BTreeMap<(u32, u32), VecDeque<Traced>>,
    /// Process records, for processes the agent never saw.
    processes: Vec<Record>,
    /// When each process exec'd, in order, as the tracer saw it at the exec stop (the
    /// agent's records of a start carry the time its recorder got to them).
    execs: HashMap<u32, VecDeque<u64>>,
    notes: Vec<Record>,
    prototypes: Vec<Record>,
    dropped: u64,
    /// The agent library's modules, and the functions it exports.
    agent_modules: HashSet<u32>,
    agent_exports: HashSet<String>,
}

/// Merges `agent` and `traced` (both timed in ticks) into `out`, timed by `clock`.
pub fn combine<W: Write>(
    agent: &Path,
    traced: &Path,
    out: W,
    meta: &Meta,
    clock: &TscClock,
    agent_file: &str,
) -> Result<(W, Summary), CombineError> {
    let t = read_traced(crate::format::open_file(traced)?, agent_file)?;
    let a = crate::format::open_file(agent)?;
    let mut m = Merger {
        w: Writer::new(out, meta)?,
        clock,
        t,
        functions: HashMap::new(),
        t_functions: HashMap::new(),
        next_function: 0,
        threads: HashMap::new(),
        a_threads: HashMap::new(),
        modules: HashMap::new(),
        t_modules: HashMap::new(),
        next_module: 0,
        stacks: HashMap::new(),
        a_stacks: HashMap::new(),
        t_stacks: HashMap::new(),
        a_returns: HashMap::new(),
        seen_pids: HashSet::new(),
        held: None,
        open: HashMap::new(),
        swallow: HashMap::new(),
        margin: clock.ticks_in(MARGIN),
        last_global: 0,
    };
    for p in std::mem::take(&mut m.t.prototypes) {
        m.w.push(&p)?;
    }
    Ok(m.run(a)?)
}

fn read_traced<R: Read>(mut r: Reader<R>, agent_file: &str) -> Result<TracedSide, FormatError> {
    let mut t = TracedSide::default();
    // Per thread: whether each open call is kept (its exit goes the same way).
    let mut open: HashMap<u32, Vec<bool>> = HashMap::new();
    while let Some(rec) = r.next_record()? {
        match rec {
            Record::Function(f) => {
                t.functions.insert(f.id, f);
            }
            Record::Module(m) => {
                if m.path.rsplit('/').next() == Some(agent_file) {
                    if t.agent_exports.is_empty() {
                        if let Ok(e) = crate::elf::ElfInfo::open(Path::new(&m.path)) {
                            t.agent_exports =
                                e.function_symbols(false).into_iter().map(|f| f.0).collect();
                        }
                    }
                    t.agent_modules.insert(m.id);
                }
                t.modules.insert(m.id, m);
            }
            Record::Stack(s) => {
                t.stacks.insert(s.id, s.frames);
            }
            Record::Thread(th) => {
                t.threads.insert(th.num, (th.pid, th.tid));
            }
            Record::Enter(e) => {
                let keep = !t.made_by_agent(&e);
                open.entry(e.thread).or_default().push(keep);
                if keep {
                    t.queue(e.thread, e.ts, Record::Enter(e));
                }
            }
            Record::Exit(x) => {
                let keep = open
                    .get_mut(&x.thread)
                    .and_then(|o| o.pop())
                    .unwrap_or(true);
                if keep {
                    // Without a time, found left (`longjmp`) when the thread was next seen:
                    // it sorts with the thread's next event (set below).
                    t.queue(x.thread, x.ts.unwrap_or(u64::MAX), Record::Exit(x));
                }
            }
            Record::Signal(s) => t.queue(s.thread, s.ts, Record::Signal(s)),
            Record::ProcessStart(ref p) => {
                if p.cause == crate::format::StartCause::Exec {
                    t.execs.entry(p.pid).or_default().push_back(p.ts);
                }
                t.processes.push(rec);
            }
            Record::ProcessExit(_) => t.processes.push(rec),
            Record::Note(_) => t.notes.push(rec),
            Record::Prototypes(_) => t.prototypes.push(rec),
            Record::ModuleUnload(_) | Record::Packed(_) | Record::Source(_) => {}
        }
    }
    for q in t.events.values_mut() {
        let mut next = u64::MAX;
        for ev in q.iter_mut().rev() {
            if matches!(&ev.rec, Record::Exit(x) if x.ts.is_none()) {
                ev.key = next;
            }
            next = ev.key;
        }
    }
    t.dropped = r.summary().map_or(0, |s| s.dropped);
    Ok(t)
}

impl TracedSide {
    fn queue(&mut self, thread: u32, key: u64, rec: Record) {
        let who = self.threads.get(&thread).copied().unwrap_or((0, thread));
        self.events
            .entry(who)
            .or_default()
            .push_back(Traced { key, rec });
    }

    /// A call the agent made for itself: its caller is the agent's code, and the agent
    /// does not interpose the function (an interposer forwarding the program's call, like
    /// `exit`, is the program's call); or the C library made it for the agent, whose code
    /// is then outermost (its constructor, its writer thread: the stack reaches no module
    /// but the agent's, the C library's and the loader's).
    fn made_by_agent(&self, e: &Enter) -> bool {
        let Some(frames) = e.stack.and_then(|s| self.stacks.get(&s)) else {
            return false;
        };
        let in_agent = |f: &Frame| f.module.is_some_and(|m| self.agent_modules.contains(&m));
        let first_in_agent = frames.first().is_some_and(in_agent);
        let forwarded = self
            .functions
            .get(&e.func)
            .is_some_and(|f| self.agent_exports.contains(&f.name));
        if first_in_agent && !forwarded {
            return true;
        }
        frames.iter().any(in_agent)
            && frames.iter().all(|f| {
                in_agent(f)
                    || f.module
                        .and_then(|m| self.modules.get(&m))
                        .is_some_and(|m| is_system(&m.path))
            })
    }
}

/// The C library and the loader, which run code for the agent as for the program.
fn is_system(path: &str) -> bool {
    let file = path.rsplit('/').next().unwrap_or(path);
    [
        "libc.so",
        "ld-linux",
        "libpthread.so",
        "libdl.so",
        "libgcc_s.so",
    ]
    .iter()
    .any(|p| file.starts_with(p))
}

struct Merger<'c, W: Write> {
    w: Writer<W>,
    clock: &'c TscClock,
    t: TracedSide,
    /// The agent recording's function ids, and the ptrace recording's, to the output's.
    functions: HashMap<u32, u32>,
    t_functions: HashMap<u32, u32>,
    next_function: u32,
    /// Output thread numbers by (pid, tid), and the agent recording's thread numbers.
    threads: HashMap<(u32, u32), u32>,
    a_threads: HashMap<u32, (u32, u32)>,
    modules: HashMap<u32, u32>,
    t_modules: HashMap<u32, u32>,
    next_module: u32,
    stacks: HashMap<Vec<Frame>, u32>,
    a_stacks: HashMap<u32, Option<u32>>,
    t_stacks: HashMap<u32, Option<u32>>,
    /// Whether each of the agent recording's functions returns.
    a_returns: HashMap<u32, bool>,
    seen_pids: HashSet<u32>,
    /// An agent call entry held to see whether its return follows at once (then both go
    /// out as one call record), with its thread.
    held: Option<((u32, u32), Enter)>,
    /// Each thread's calls in progress, innermost last: whether each is a traced one.
    open: HashMap<(u32, u32), Vec<bool>>,
    /// Returns still to come from each side (agent, traced) for calls already closed
    /// here, per thread: see [`Merger::exit`].
    swallow: HashMap<(u32, u32), [u32; 2]>,
    /// [`MARGIN`] in ticks.
    margin: u64,
    last_global: u64,
}

impl<W: Write> Merger<'_, W> {
    fn run<R: Read>(mut self, mut a: Reader<R>) -> Result<(W, Summary), FormatError> {
        while let Some(rec) = a.next_record()? {
            self.agent_record(rec)?;
        }
        self.release_held()?;
        // Processes the agent never saw, then everything still waiting.
        let unseen: Vec<Record> = std::mem::take(&mut self.t.processes)
            .into_iter()
            .filter(|r| match r {
                Record::ProcessStart(p) => !self.seen_pids.contains(&p.pid),
                Record::ProcessExit(p) => !self.seen_pids.contains(&p.pid),
                _ => false,
            })
            .collect();
        for r in unseen
            .iter()
            .filter(|r| matches!(r, Record::ProcessStart(_)))
        {
            self.push_timed(r.clone())?;
        }
        self.flush_traced(u64::MAX, None)?;
        for r in unseen
            .iter()
            .filter(|r| matches!(r, Record::ProcessExit(_)))
        {
            self.push_timed(r.clone())?;
        }
        for n in std::mem::take(&mut self.t.notes) {
            self.w.push(&n)?;
        }
        // Calls of the agent's that did not decode are not in the combined file's
        // coding: what the reader said of them goes along as notes.
        for text in a.notes() {
            self.w.push(&Record::Note(crate::format::Note {
                pid: 0,
                text: text.clone(),
            }))?;
        }
        self.w
            .add_dropped(a.summary().map_or(0, |s| s.dropped) + self.t.dropped);
        self.w.finish()
    }

    fn agent_record(&mut self, rec: Record) -> Result<(), FormatError> {
        match rec {
            Record::Function(f) => {
                self.a_returns.insert(f.id, f.returns);
                let id = self.define(f.clone())?;
                self.functions.insert(f.id, id);
            }
            Record::Thread(th) => {
                self.a_threads.insert(th.num, (th.pid, th.tid));
            }
            Record::Module(m) => {
                self.release_held()?;
                let a_id = m.id;
                let id = self.define_module(m)?;
                self.modules.insert(a_id, id);
            }
            Record::ModuleUnload(id) => {
                self.release_held()?;
                if let Some(&o) = self.modules.get(&id) {
                    self.w.push(&Record::ModuleUnload(o))?;
                }
            }
            Record::Stack(s) => {
                let frames = s
                    .frames
                    .iter()
                    .map(|f| Frame {
                        module: f.module.and_then(|m| self.modules.get(&m).copied()),
                        addr: f.addr,
                    })
                    .collect();
                let id = self.intern(frames)?;
                self.a_stacks.insert(s.id, id);
            }
            Record::Enter(e) => {
                let who = self.a_thread(e.thread);
                self.release_held()?;
                self.place(who, e.ts)?;
                self.started(who, false);
                let returns = self.a_returns.get(&e.func).copied().unwrap_or(true);
                if !returns && e.data.is_empty() {
                    // An entry alone (`free`): one call record.
                    self.write_call(who, &e, None)?;
                } else if e.data.is_empty() {
                    self.held = Some((who, e));
                } else {
                    self.write_agent_enter(who, e)?;
                }
            }
            Record::Exit(x) => {
                let who = self.a_thread(x.thread);
                let key = x.ts.unwrap_or(0);
                let inside = self
                    .t
                    .events
                    .get(&who)
                    .and_then(|q| q.front())
                    .is_some_and(|f| f.key < key);
                // A call record without a return value is an entry alone: a call that
                // never returned (`_Unwind_Resume`) keeps its own exit record.
                let returned = x.ret.is_some() || x.out.is_some();
                match self.held.take() {
                    Some((h, e)) if h == who && !inside && x.ts.is_some() && returned => {
                        self.write_call(who, &e, Some(&x))?;
                    }
                    held => {
                        self.held = held;
                        self.release_held()?;
                        self.place(who, key)?;
                        self.exit(who, false, x)?;
                    }
                }
            }
            Record::ProcessStart(p) => {
                self.release_held()?;
                self.seen_pids.insert(p.pid);
                if p.cause == crate::format::StartCause::Exec {
                    // The old image's traced calls go before it, by the tracer's time of
                    // the exec: this record's own time is when the agent's recorder got to
                    // it, possibly after the new image ran (and a spawned or forked
                    // process has no earlier calls).
                    let at = self.t.execs.get_mut(&p.pid).and_then(|q| q.pop_front());
                    if let Some(at) = at {
                        self.flush_traced(at, Some(p.pid))?;
                    }
                    self.image_ended(p.pid, Some(at.unwrap_or(p.ts)))?;
                }
                self.push_timed(Record::ProcessStart(p))?;
            }
            Record::ProcessExit(p) => {
                self.release_held()?;
                self.flush_traced(u64::MAX, Some(p.pid))?;
                self.image_ended(p.pid, None)?;
                self.push_timed(Record::ProcessExit(p))?;
            }
            Record::Signal(s) => {
                self.release_held()?;
                let who = self.a_thread(s.thread);
                self.place(who, s.ts)?;
                let thread = self.thread(who)?;
                let stack = s
                    .stack
                    .and_then(|id| self.a_stacks.get(&id).copied().flatten());
                self.push_timed(Record::Signal(SignalRec { thread, stack, ..s }))?;
            }
            Record::Note(_) | Record::Prototypes(_) => {
                self.release_held()?;
                self.w.push(&rec)?;
            }
            Record::Packed(_) | Record::Source(_) => {}
        }
        Ok(())
    }

    /// Process `pid`'s image ended (it exec'd at `exec`, or exited): a return either
    /// engine reports for one of its calls later closes nothing. At an exec its calls
    /// still open never returned, as the ptrace engine reports them; at the end they stay
    /// as the agent leaves them (`_exit(0 <unfinished ...>`).
    fn image_ended(&mut self, pid: u32, exec: Option<u64>) -> Result<(), FormatError> {
        if exec.is_some() {
            let ended: Vec<((u32, u32), usize)> = self
                .open
                .iter()
                .filter(|(who, _)| who.0 == pid)
                .map(|(who, calls)| (*who, calls.len()))
                .collect();
            for (who, n) in ended {
                let thread = self.thread(who)?;
                for _ in 0..n {
                    self.push_timed(Record::Exit(Exit {
                        thread,
                        ret: None,
                        out: None,
                        ts: exec,
                        data: Vec::new(),
                    }))?;
                }
            }
        }
        self.open.retain(|who, _| who.0 != pid);
        self.swallow.retain(|who, _| who.0 != pid);
        Ok(())
    }

    fn a_thread(&self, num: u32) -> (u32, u32) {
        self.a_threads.get(&num).copied().unwrap_or((0, num))
    }

    /// Writes the held agent entry as an entry record.
    fn release_held(&mut self) -> Result<(), FormatError> {
        if let Some((who, e)) = self.held.take() {
            self.write_agent_enter(who, e)?;
        }
        Ok(())
    }

    fn write_agent_enter(&mut self, who: (u32, u32), e: Enter) -> Result<(), FormatError> {
        if self.a_returns.get(&e.func).copied().unwrap_or(true) {
            self.open.entry(who).or_default().push(false);
        }
        let thread = self.thread(who)?;
        let func = self.functions.get(&e.func).copied().unwrap_or(e.func);
        let stack = e
            .stack
            .and_then(|s| self.a_stacks.get(&s).copied().flatten());
        self.push_timed(Record::Enter(Enter {
            thread,
            func,
            stack,
            ..e
        }))
    }

    fn write_call(
        &mut self,
        who: (u32, u32),
        e: &Enter,
        x: Option<&Exit>,
    ) -> Result<(), FormatError> {
        let thread = self.thread(who)?;
        let func = self.functions.get(&e.func).copied().unwrap_or(e.func);
        let stack = e
            .stack
            .and_then(|s| self.a_stacks.get(&s).copied().flatten());
        let ts_in = self.clock.to_ns(e.ts);
        let ts_out = x.and_then(|x| x.ts).map_or(ts_in, |t| self.clock.to_ns(t));
        self.w.call(&CallRecord {
            thread,
            func,
            args: &e.args,
            stack,
            ts_in,
            ts_out,
            ret: x.and_then(|x| x.ret),
            out: x.and_then(|x| x.out),
        })
    }

    /// Places the traced calls that come before an agent record of thread `who` at `key`:
    /// that thread's earlier ones, and any thread's far enough behind.
    fn place(&mut self, who: (u32, u32), key: u64) -> Result<(), FormatError> {
        self.flush_thread(who, key)?;
        if key > self.last_global.saturating_add(self.margin / 8) {
            self.last_global = key;
            self.flush_traced(key.saturating_sub(self.margin), None)?;
        }
        Ok(())
    }

    fn flush_thread(&mut self, who: (u32, u32), before: u64) -> Result<(), FormatError> {
        while let Some(t) = self.t.events.get_mut(&who).and_then(|q| {
            if q.front().is_some_and(|f| f.key < before) {
                q.pop_front()
            } else {
                None
            }
        }) {
            self.write_traced(who, t.rec)?;
        }
        Ok(())
    }

    /// Writes every waiting traced call before `before` (of process `pid` only, if given),
    /// in time order across threads.
    fn flush_traced(&mut self, before: u64, pid: Option<u32>) -> Result<(), FormatError> {
        loop {
            let next = self
                .t
                .events
                .iter()
                .filter(|(who, _)| pid.is_none_or(|p| who.0 == p))
                .filter_map(|(who, q)| q.front().map(|f| (f.key, *who)))
                // u64::MAX: everything, returns found only at the end (keyed MAX) too.
                .filter(|(k, _)| *k < before || before == u64::MAX)
                .min();
            let Some((_, who)) = next else {
                return Ok(());
            };
            if let Some(t) = self.t.events.get_mut(&who).and_then(|q| q.pop_front()) {
                self.write_traced(who, t.rec)?;
            }
        }
    }

    fn write_traced(&mut self, who: (u32, u32), rec: Record) -> Result<(), FormatError> {
        let thread = self.thread(who)?;
        let rec = match rec {
            Record::Enter(e) => {
                if self.t.functions.get(&e.func).is_none_or(|f| f.returns) {
                    self.started(who, true);
                    self.open.entry(who).or_default().push(true);
                }
                let func = self.traced_function(e.func)?;
                let stack = self.traced_stack(e.stack)?;
                Record::Enter(Enter {
                    thread,
                    func,
                    stack,
                    ..e
                })
            }
            Record::Exit(x) => return self.exit(who, true, x),
            Record::Signal(s) => {
                let stack = self.traced_stack(s.stack)?;
                Record::Signal(SignalRec { thread, stack, ..s })
            }
            other => other,
        };
        self.push_timed(rec)
    }

    /// A new call of one side (`traced` or the agent's) begins in thread `who`: returns
    /// that side still owed for calls closed here are not coming (each engine reports
    /// the calls a thread left, by `longjmp` or an exception, before its next one).
    fn started(&mut self, who: (u32, u32), traced: bool) {
        if let Some(s) = self.swallow.get_mut(&who) {
            s[usize::from(traced)] = 0;
        }
    }

    /// Writes a return of one side's innermost call in thread `who`. Returns are
    /// positional (they close the thread's innermost call), and each engine sees only its
    /// own calls: when the other side's calls are open inside this one, they were left
    /// (`longjmp`, an exception) and are closed first, as never returning; the returns
    /// their engine reports for them later are dropped.
    fn exit(&mut self, who: (u32, u32), traced: bool, x: Exit) -> Result<(), FormatError> {
        let side = usize::from(traced);
        let owed = self.swallow.entry(who).or_default();
        if owed[side] > 0 {
            owed[side] -= 1;
            return Ok(());
        }
        let thread = self.thread(who)?;
        let stack = self.open.entry(who).or_default();
        // A return with no call of its side open closes nothing of its own (the ptrace
        // engine ends every thread of an image that execs or exits so): here it would
        // close the other side's.
        let Some(at) = stack.iter().rposition(|&t| t == traced) else {
            return Ok(());
        };
        let inside: Vec<bool> = stack.drain(at + 1..).collect();
        stack.pop();
        for other in inside.into_iter().rev() {
            self.swallow.entry(who).or_default()[usize::from(other)] += 1;
            self.push_timed(Record::Exit(Exit {
                thread,
                ret: None,
                out: None,
                ts: x.ts,
                data: Vec::new(),
            }))?;
        }
        self.push_timed(Record::Exit(Exit { thread, ..x }))
    }

    fn traced_function(&mut self, id: u32) -> Result<u32, FormatError> {
        if let Some(&o) = self.t_functions.get(&id) {
            return Ok(o);
        }
        let o = match self.t.functions.get(&id).cloned() {
            Some(f) => self.define(f)?,
            None => id,
        };
        self.t_functions.insert(id, o);
        Ok(o)
    }

    fn traced_stack(&mut self, id: Option<u32>) -> Result<Option<u32>, FormatError> {
        let Some(id) = id else {
            return Ok(None);
        };
        if let Some(&o) = self.t_stacks.get(&id) {
            return Ok(o);
        }
        let frames = self.t.stacks.get(&id).cloned().unwrap_or_default();
        let mut out = Vec::with_capacity(frames.len());
        for f in frames {
            match f.module {
                // The agent's import trampoline, between the program and the function.
                Some(m) if self.t.agent_modules.contains(&m) => {}
                Some(m) => {
                    let module = self.traced_module(m)?;
                    out.push(Frame {
                        module,
                        addr: f.addr,
                    });
                }
                None => out.push(f),
            }
        }
        let o = self.intern(out)?;
        self.t_stacks.insert(id, o);
        Ok(o)
    }

    fn traced_module(&mut self, id: u32) -> Result<Option<u32>, FormatError> {
        if let Some(&o) = self.t_modules.get(&id) {
            return Ok(Some(o));
        }
        let Some(m) = self.t.modules.get(&id).cloned() else {
            return Ok(None);
        };
        let o = self.define_module(m)?;
        self.t_modules.insert(id, o);
        Ok(Some(o))
    }

    fn define(&mut self, f: FunctionDef) -> Result<u32, FormatError> {
        let id = self.next_function;
        self.next_function += 1;
        self.w.push(&Record::Function(FunctionDef { id, ..f }))?;
        Ok(id)
    }

    fn define_module(&mut self, m: ModuleDef) -> Result<u32, FormatError> {
        let id = self.next_module;
        self.next_module += 1;
        self.w.push(&Record::Module(ModuleDef { id, ..m }))?;
        Ok(id)
    }

    fn intern(&mut self, frames: Vec<Frame>) -> Result<Option<u32>, FormatError> {
        if frames.is_empty() {
            return Ok(None);
        }
        if let Some(&id) = self.stacks.get(&frames) {
            return Ok(Some(id));
        }
        let id = self.stacks.len() as u32;
        self.w.push(&Record::Stack(StackDef {
            id,
            frames: frames.clone(),
        }))?;
        self.stacks.insert(frames, id);
        Ok(Some(id))
    }

    fn thread(&mut self, who: (u32, u32)) -> Result<u32, FormatError> {
        if let Some(&n) = self.threads.get(&who) {
            return Ok(n);
        }
        let num = self.threads.len() as u32;
        self.w.push(&Record::Thread(ThreadDef {
            num,
            pid: who.0,
            tid: who.1,
        }))?;
        self.threads.insert(who, num);
        Ok(num)
    }

    /// Writes a record with its tick times converted.
    fn push_timed(&mut self, rec: Record) -> Result<(), FormatError> {
        let c = self.clock;
        let rec = match rec {
            Record::Enter(e) => Record::Enter(Enter {
                ts: c.to_ns(e.ts),
                ..e
            }),
            Record::Exit(x) => Record::Exit(Exit {
                ts: x.ts.map(|t| c.to_ns(t)),
                ..x
            }),
            Record::Signal(s) => Record::Signal(SignalRec {
                ts: c.to_ns(s.ts),
                ..s
            }),
            Record::ProcessStart(mut p) => {
                p.ts = c.to_ns(p.ts);
                Record::ProcessStart(p)
            }
            Record::ProcessExit(mut p) => {
                p.ts = c.to_ns(p.ts);
                Record::ProcessExit(p)
            }
            other => other,
        };
        self.w.push(&rec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Origin, ProcessExit, ProcessStart, StartCause};

    fn meta() -> Meta {
        Meta {
            pairs: vec![(crate::format::META_TIME_UNIT.to_string(), "1".to_string())],
        }
    }

    fn function(id: u32, name: &str, returns: bool) -> Record {
        Record::Function(FunctionDef {
            id,
            name: name.to_string(),
            class: crate::format::FnClass::Other,
            returns,
            origin: Origin::Hooked,
        })
    }

    fn enter(func: u32, ts: u64) -> Record {
        Record::Enter(Enter {
            thread: 0,
            ts,
            func,
            args: vec![],
            stack: None,
            data: vec![],
        })
    }

    fn exit(ts: u64) -> Record {
        Record::Exit(Exit {
            thread: 0,
            ret: Some(0),
            out: None,
            ts: Some(ts),
            data: Vec::new(),
        })
    }

    fn write(path: &Path, recs: &[Record]) {
        let f = std::fs::File::create(path).unwrap();
        let mut w = Writer::new(f, &meta()).unwrap();
        for r in recs {
            w.push(r).unwrap();
        }
        w.finish().unwrap();
    }

    /// The functions called, in the merged recording's order.
    fn merged(agent: &[Record], traced: &[Record]) -> Vec<String> {
        let dir = std::env::temp_dir().join(format!("rltrace-combine-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, t, o) = (dir.join("a"), dir.join("t"), dir.join("o"));
        write(&a, agent);
        write(&t, traced);
        let out = std::fs::File::create(&o).unwrap();
        combine(&a, &t, out, &meta(), &TscClock::identity(), "agent.so").unwrap();
        let mut r = crate::format::open_file(&o).unwrap();
        let mut names = HashMap::new();
        let mut seq = Vec::new();
        while let Some(rec) = r.next_record().unwrap() {
            match rec {
                Record::Function(f) => {
                    names.insert(f.id, f.name);
                }
                Record::Enter(e) => seq.push(names[&e.func].clone()),
                Record::Exit(_) => seq.push("ret".to_string()),
                Record::ProcessStart(_) => seq.push("start".to_string()),
                _ => {}
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        seq
    }

    #[test]
    fn a_late_start_record_of_the_agent_does_not_pull_traced_calls_ahead() {
        let thread = Record::Thread(ThreadDef {
            num: 0,
            pid: 7,
            tid: 7,
        });
        let start = |ts| {
            Record::ProcessStart(ProcessStart {
                pid: 7,
                parent: 0,
                ts,
                cause: StartCause::Spawn,
                path: String::new(),
            })
        };
        let end = Record::ProcessExit(ProcessExit {
            pid: 7,
            ts: 900,
            how: crate::format::ExitHow::Code(0),
        });
        // The agent's recorder got to the program's start only at 500, after it ran: its
        // calls at 100 and 300, the traced ones at 200 and 400.
        let agent = [
            function(0, "free", false),
            thread.clone(),
            start(500),
            enter(0, 100),
            enter(0, 300),
            end.clone(),
        ];
        let traced = [
            function(0, "frob", true),
            thread,
            start(10),
            enter(0, 200),
            exit(210),
            enter(0, 400),
            exit(410),
            end,
        ];
        assert_eq!(
            merged(&agent, &traced),
            ["start", "free", "frob", "ret", "free", "frob", "ret"]
        );
    }
}
