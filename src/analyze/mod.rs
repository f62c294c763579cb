//! Analyses: pure functions over the decoded record stream. They never touch a process.

pub mod calltable;
pub mod growth;
pub mod leaks;
pub mod summary;

use std::collections::HashMap;

use crate::format::{Enter, Exit, FnClass, Frame, FunctionDef, Record, StartCause, ThreadDef};

/// Definitions accumulated while streaming a recording.
#[derive(Default)]
pub struct Defs {
    /// Functions by id.
    pub functions: HashMap<u32, FunctionDef>,
    /// Threads by number.
    pub threads: HashMap<u32, ThreadDef>,
    /// Stacks by id.
    pub stacks: HashMap<u32, Vec<Frame>>,
    /// Names shown instead of the recorded ones (`replay -C`).
    pub display: HashMap<u32, String>,
}

impl Defs {
    /// Absorbs a definition record; other records are ignored.
    pub fn learn(&mut self, rec: &Record) {
        match rec {
            Record::Function(f) => {
                self.functions.insert(f.id, f.clone());
            }
            Record::Thread(t) => {
                self.threads.insert(t.num, t.clone());
            }
            Record::Stack(s) => {
                self.stacks.insert(s.id, s.frames.clone());
            }
            _ => {}
        }
    }

    /// What a function id does.
    pub fn class(&self, func: u32) -> FnClass {
        self.functions
            .get(&func)
            .map_or(FnClass::Other, |f| f.class)
    }

    /// Name of a function id.
    pub fn name(&self, func: u32) -> &str {
        self.functions.get(&func).map_or("?", |f| f.name.as_str())
    }

    /// The name a trace shows for a function: demangled with `-C`, else as recorded.
    pub fn shown(&self, func: u32) -> &str {
        self.display
            .get(&func)
            .map_or_else(|| self.name(func), |s| s.as_str())
    }

    /// The frames of a stack id (empty if none or unknown).
    pub fn frames_of(&self, stack: Option<u32>) -> Vec<Frame> {
        stack
            .and_then(|s| self.stacks.get(&s))
            .cloned()
            .unwrap_or_default()
    }

    /// (pid, tid) of a thread number.
    pub fn thread(&self, num: u32) -> (u32, u32) {
        self.threads.get(&num).map_or((0, 0), |t| (t.pid, t.tid))
    }
}

/// One step of a thread's call nesting.
pub enum Step<'a> {
    /// A call began. `depth` counts calls of the same thread still open around it; `void`
    /// calls get no `Ended` step.
    Began {
        /// The entry.
        enter: &'a Enter,
        /// Enclosing open calls.
        depth: usize,
        /// An allocator call is among them (an allocator calling another: not a block of
        /// its own; one inside `strdup` traced with `-x` is).
        in_alloc: bool,
        /// True if the function returns nothing.
        void: bool,
        /// The stack of the innermost call open around it.
        outer: Option<u32>,
    },
    /// The innermost open call of a thread ended.
    Ended {
        /// Its entry.
        enter: Enter,
        /// Its exit.
        exit: &'a Exit,
        /// Enclosing open calls.
        depth: usize,
        /// An allocator call is among them.
        in_alloc: bool,
        /// The stack of the innermost call open around it.
        outer: Option<u32>,
    },
}

/// Pairs exits with their entries, per thread (an exit closes the innermost open call).
#[derive(Default)]
pub struct CallPairer {
    open: HashMap<u32, Vec<Enter>>,
}

impl CallPairer {
    /// Feeds one record; returns the call step it is, if any.
    pub fn step<'a>(&mut self, rec: &'a Record, defs: &Defs) -> Option<Step<'a>> {
        match rec {
            Record::Enter(e) => {
                let stack = self.open.entry(e.thread).or_default();
                let depth = stack.len();
                let in_alloc = stack.iter().any(|o| defs.class(o.func) != FnClass::Other);
                let void = defs.functions.get(&e.func).is_some_and(|f| !f.returns);
                let outer = stack.last().and_then(|o| o.stack);
                if !void {
                    stack.push(e.clone());
                }
                Some(Step::Began {
                    enter: e,
                    depth,
                    in_alloc,
                    void,
                    outer,
                })
            }
            Record::Exit(x) => {
                let stack = self.open.get_mut(&x.thread)?;
                let enter = stack.pop()?;
                let in_alloc = stack.iter().any(|o| defs.class(o.func) != FnClass::Other);
                Some(Step::Ended {
                    enter,
                    exit: x,
                    depth: stack.len(),
                    in_alloc,
                    outer: stack.last().and_then(|o| o.stack),
                })
            }
            // An exec replaces the image: the calls its threads were inside (the exec call
            // itself) never return.
            Record::ProcessStart(p) if p.cause == StartCause::Exec => {
                self.open.retain(|&t, _| defs.thread(t).0 != p.pid);
                None
            }
            _ => None,
        }
    }

    /// Calls still open at the end of the recording, per thread.
    pub fn open_calls(&self) -> impl Iterator<Item = (&u32, &Vec<Enter>)> {
        self.open.iter().filter(|(_, v)| !v.is_empty())
    }
}
