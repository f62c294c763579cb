//! Where engines deliver events: assigns compact ids (threads, stacks stored once) and
//! appends records to the recording file.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::io::Write;
use std::time::Instant;

use crate::format::{
    ArgData, Enter, Exit, ExitHow, FnClass, FormatError, Frame, FunctionDef, Meta, ModuleDef, Note,
    Origin, ProcessExit, ProcessStart, Record, SignalRec, StackDef, StartCause, Summary, ThreadDef,
    Writer,
};
use crate::record::funcs::TracedFn;

/// An event as an engine reports it, before ids are assigned.
#[derive(Debug)]
pub enum Event {
    /// Entry into a traced function.
    Enter {
        /// Process id.
        pid: u32,
        /// Thread id.
        tid: u32,
        /// Nanoseconds since the recording started.
        ts: u64,
        /// Index into the engine's function table.
        func: u32,
        /// Integer arguments.
        args: Vec<u64>,
        /// Return addresses, caller first, already resolved to modules.
        frames: Vec<Frame>,
        /// Strings and buffers captured for some arguments.
        data: Vec<ArgData>,
    },
    /// A fatal signal struck a thread.
    Signal {
        /// Process id.
        pid: u32,
        /// Thread id.
        tid: u32,
        /// Nanoseconds since the recording started.
        ts: u64,
        /// Signal number.
        signo: i32,
        /// `si_code`.
        code: i32,
        /// `si_addr`, 0 if none.
        addr: u64,
        /// The faulting instruction, then return addresses.
        frames: Vec<Frame>,
    },
    /// Return from the innermost open call of the thread.
    Exit {
        /// Process id.
        pid: u32,
        /// Thread id.
        tid: u32,
        /// Return value, `None` if the call never returned.
        ret: Option<u64>,
        /// Out-pointer value read at return.
        out: Option<u64>,
        /// When it returned, if known (recording nanoseconds).
        ts: Option<u64>,
        /// Memory captured at return (see [`Exit::data`]).
        data: Vec<ArgData>,
    },
}

impl Event {
    /// The return of thread `tid`'s innermost open call that never came (its thread or
    /// image ended, or its frame was unwound past).
    pub fn never_returned(pid: u32, tid: u32) -> Event {
        Event::Exit {
            pid,
            tid,
            ret: None,
            out: None,
            ts: None,
            data: Vec::new(),
        }
    }
}

/// Interns definitions and writes records.
pub struct Sink<W: Write> {
    writer: Writer<W>,
    stacks: HashMap<Vec<Frame>, u32, BuildHasherDefault<rltrace_wire::FastHasher>>,
    threads: HashMap<(u32, u32), u32, BuildHasherDefault<rltrace_wire::FastHasher>>,
    /// The thread looked up last ((pid, tid), number): consecutive calls share it.
    last_thread: Option<((u32, u32), u32)>,
    next_module: u32,
    next_function: u32,
    next_coder: u32,
    start: Instant,
    seal_at: Instant,
    /// Times are counter ticks, not nanoseconds (see [`Sink::in_ticks`]).
    ticks: bool,
}

impl<W: Write> Sink<W> {
    /// Starts a recording with the given metadata and function table (whose calls replay
    /// treats as `origin` says).
    pub fn new(
        out: W,
        meta: &Meta,
        funcs: &[TracedFn],
        origin: Origin,
    ) -> Result<Self, FormatError> {
        let now = Instant::now();
        let mut sink = Sink {
            writer: Writer::new(out, meta)?,
            stacks: HashMap::default(),
            threads: HashMap::default(),
            last_thread: None,
            next_module: 0,
            next_function: 0,
            next_coder: 0,
            start: now,
            seal_at: now,
            ticks: false,
        };
        for f in funcs {
            sink.function_named(f.name, f.class, f.returns, origin)?;
        }
        Ok(sink)
    }

    /// Defines one more traced function (found while recording); returns its id.
    pub fn function_named(
        &mut self,
        name: &str,
        class: FnClass,
        returns: bool,
        origin: Origin,
    ) -> Result<u32, FormatError> {
        let id = self.next_function;
        self.writer.push(&Record::Function(FunctionDef {
            id,
            name: name.to_string(),
            class,
            returns,
            origin,
        }))?;
        self.next_function += 1;
        Ok(id)
    }

    /// Stores prototypes found while recording, for the calls that follow (replay reads
    /// them from the recording).
    pub fn prototypes(&mut self, protos: &[crate::protos::Loaded]) -> Result<(), FormatError> {
        // As many lines per chunk as the readers' limit allows (a line longer than the
        // limit, a name of a megabyte, cannot be stored).
        let mut text = String::new();
        for p in protos {
            let line = crate::protos::to_text(std::slice::from_ref(p));
            if text.len() + line.len() > crate::format::MAX_PROTOTYPES && !text.is_empty() {
                self.writer
                    .push(&Record::Prototypes(std::mem::take(&mut text)))?;
            }
            if line.len() <= crate::format::MAX_PROTOTYPES {
                text.push_str(&line);
            }
        }
        if !text.is_empty() {
            self.writer.push(&Record::Prototypes(text))?;
        }
        Ok(())
    }

    /// Writes a call's entry whose stack is already interned.
    #[allow(clippy::too_many_arguments)]
    pub fn enter(
        &mut self,
        pid: u32,
        tid: u32,
        func: u32,
        args: Vec<u64>,
        stack: Option<u32>,
        ts: u64,
        data: Vec<ArgData>,
    ) -> Result<(), FormatError> {
        let thread = self.thread(pid, tid)?;
        self.writer.push(&Record::Enter(Enter {
            thread,
            ts,
            func,
            args,
            stack,
            data,
        }))
    }

    /// Writes the return of the thread's innermost open call.
    pub fn exit(
        &mut self,
        pid: u32,
        tid: u32,
        ret: Option<u64>,
        out: Option<u64>,
        ts: Option<u64>,
        data: Vec<ArgData>,
    ) -> Result<(), FormatError> {
        let thread = self.thread(pid, tid)?;
        self.writer.push(&Record::Exit(Exit {
            thread,
            ret,
            out,
            ts,
            data,
        }))
    }

    /// Nanoseconds since the recording started (ticks of the time stamp counter with
    /// [`Sink::in_ticks`]).
    pub fn now(&self) -> u64 {
        if self.ticks {
            return crate::record::clock::rdtsc();
        }
        self.start.elapsed().as_nanos() as u64
    }

    /// Times everything in raw counter ticks: for the two partial recordings of a run
    /// recorded by both engines, which are merged by those readings and converted once
    /// (src/record/hybrid.rs).
    pub fn in_ticks(mut self) -> Self {
        self.ticks = true;
        self
    }

    /// The map from counter values to this recording's times: calibrated against
    /// [`Sink::now`], or none at all when the recording is in ticks.
    pub fn clock(&self) -> crate::record::clock::TscClock {
        if self.ticks {
            crate::record::clock::TscClock::identity()
        } else {
            crate::record::clock::TscClock::new(|| self.now())
        }
    }

    fn thread(&mut self, pid: u32, tid: u32) -> Result<u32, FormatError> {
        match self.last_thread {
            Some((key, n)) if key == (pid, tid) => return Ok(n),
            _ => {}
        }
        if let Some(&n) = self.threads.get(&(pid, tid)) {
            self.last_thread = Some(((pid, tid), n));
            return Ok(n);
        }
        let num = self.threads.len() as u32;
        self.threads.insert((pid, tid), num);
        self.last_thread = Some(((pid, tid), num));
        self.writer
            .push(&Record::Thread(ThreadDef { num, pid, tid }))?;
        Ok(num)
    }

    /// The id of a stack, writing its definition the first time it is seen.
    pub fn stack(&mut self, frames: Vec<Frame>) -> Result<Option<u32>, FormatError> {
        if frames.is_empty() {
            return Ok(None);
        }
        if let Some(&id) = self.stacks.get(&frames) {
            return Ok(Some(id));
        }
        let id = self.stacks.len() as u32;
        self.writer.push(&Record::Stack(StackDef {
            id,
            frames: frames.clone(),
        }))?;
        self.stacks.insert(frames, id);
        Ok(Some(id))
    }

    /// Writes one event, defining its thread and stack first if they are new.
    pub fn event(&mut self, ev: Event) -> Result<(), FormatError> {
        match ev {
            Event::Enter {
                pid,
                tid,
                ts,
                func,
                args,
                frames,
                data,
            } => {
                let stack = self.stack(frames)?;
                self.enter(pid, tid, func, args, stack, ts, data)
            }
            Event::Signal {
                pid,
                tid,
                ts,
                signo,
                code,
                addr,
                frames,
            } => {
                let thread = self.thread(pid, tid)?;
                let stack = self.stack(frames)?;
                self.writer.push(&Record::Signal(SignalRec {
                    thread,
                    ts,
                    signo,
                    code,
                    addr,
                    stack,
                }))
            }
            Event::Exit {
                pid,
                tid,
                ret,
                out,
                ts,
                data,
            } => self.exit(pid, tid, ret, out, ts, data),
        }
    }

    /// Defines a new coder of thread `tid`'s coded calls and returns its number.
    pub fn coder(&mut self, pid: u32, tid: u32) -> Result<u32, FormatError> {
        let thread = self.thread(pid, tid)?;
        let c = self.next_coder;
        self.next_coder += 1;
        self.writer.coder(c, thread)?;
        Ok(c)
    }

    /// Says what coder `coder`'s stack `local` is in the recording.
    pub fn stack_alias(
        &mut self,
        coder: u32,
        local: u32,
        stack: Option<u32>,
    ) -> Result<(), FormatError> {
        self.writer.stack_alias(coder, local, stack)
    }

    /// Records a finished call the agent coded for `coder` (times in recording time):
    /// `from[..n]` is its body's length byte and its body.
    pub fn coded_call(
        &mut self,
        coder: u32,
        ts_in: u64,
        ts_out: u64,
        exits: bool,
        from: &[u8],
        n: usize,
    ) -> Result<(), FormatError> {
        self.writer.coded_call(coder, ts_in, ts_out, exits, from, n)
    }

    /// Records a newly mapped module and returns its id.
    pub fn module(
        &mut self,
        pid: u32,
        path: &str,
        build_id: &[u8],
        bias: u64,
        start: u64,
        end: u64,
    ) -> Result<u32, FormatError> {
        let id = self.next_module;
        self.next_module += 1;
        self.writer.push(&Record::Module(ModuleDef {
            id,
            pid,
            path: path.to_string(),
            build_id: build_id.to_vec(),
            bias,
            start,
            end,
        }))?;
        Ok(id)
    }

    /// Records that a module was unmapped.
    pub fn module_unload(&mut self, id: u32) -> Result<(), FormatError> {
        self.writer.push(&Record::ModuleUnload(id))
    }

    /// Records a process start.
    pub fn process_start(
        &mut self,
        pid: u32,
        parent: u32,
        cause: StartCause,
        path: &str,
    ) -> Result<(), FormatError> {
        let ts = self.now();
        self.writer.push(&Record::ProcessStart(ProcessStart {
            pid,
            parent,
            ts,
            cause,
            path: path.to_string(),
        }))
    }

    /// Records a process end.
    pub fn process_exit(&mut self, pid: u32, how: ExitHow) -> Result<(), FormatError> {
        let ts = self.now();
        self.writer
            .push(&Record::ProcessExit(ProcessExit { pid, ts, how }))
    }

    /// Records a diagnostic that replay repeats.
    pub fn note(&mut self, pid: u32, text: String) -> Result<(), FormatError> {
        self.writer.push(&Record::Note(Note { pid, text }))
    }

    /// Counts calls seen but not recorded.
    pub fn dropped(&mut self, n: u64) {
        self.writer.add_dropped(n);
    }

    /// Seals the pending chunk if a second has passed, bounding what a crash can lose.
    pub fn maybe_seal(&mut self) -> Result<(), FormatError> {
        if self.seal_at.elapsed().as_millis() >= 1000 {
            self.seal_at = Instant::now();
            self.writer.seal()?;
        }
        Ok(())
    }

    /// Finishes the file.
    pub fn finish(self) -> Result<(W, Summary), FormatError> {
        self.writer.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protos::{Loaded, Ty};

    #[test]
    fn prototypes_are_split_into_chunks_readers_accept_and_none_is_lost() {
        let mut sink = Sink::new(Vec::new(), &Meta::default(), &[], Origin::Hooked).unwrap();
        // 300 lines of about 10 KiB: three chunks under the 1 MiB limit.
        let protos: Vec<Loaded> = (0..300)
            .map(|i| Loaded {
                name: format!("f{i}_{}", "x".repeat(10_000)),
                args: vec![Ty::Str],
                ret: Ty::Int,
            })
            .collect();
        sink.prototypes(&protos).unwrap();
        let (bytes, _) = sink.finish().unwrap();
        let mut r = crate::format::Reader::new(&bytes[..]).unwrap();
        let mut chunks = Vec::new();
        while let Some(rec) = r.next_record().unwrap() {
            if let Record::Prototypes(t) = rec {
                assert!(t.len() <= crate::format::MAX_PROTOTYPES);
                chunks.push(t);
            }
        }
        assert_eq!(chunks.len(), 3);
        let back: Vec<Loaded> = chunks
            .iter()
            .flat_map(|t| crate::protos::from_text(t))
            .collect();
        assert_eq!(back, protos);
    }
}
