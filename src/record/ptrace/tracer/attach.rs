//! Attaching to a running process and detaching from it, leaving it as it was: every
//! thread is stopped, breakpoint bytes restored, threads stepped out of injected code,
//! return addresses of calls still running put back, the injected regions unmapped and
//! the signals that arrived meanwhile delivered.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::rc::Rc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::ptrace::{self, Options as PtOptions};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::{install_signal_handlers, pt, tgkill, Proc, Progress, Thread, TraceError, Tracer};

use crate::format::{ExitHow, StartCause};
use crate::record::ptrace::mem;
use crate::record::ptrace::space::Space;

/// Most instructions single-stepped to leave injected code (a stub is 9, a trampoline 2).
const MAX_STEPS: usize = 64;

impl<W: Write> Tracer<'_, W> {
    /// Attaches to every thread of running process `pid`, records until asked to stop
    /// (SIGINT, SIGTERM, SIGHUP), `deadline` or the process's end, then detaches.
    pub fn run_attached(
        mut self,
        pid: u32,
        deadline: Option<Instant>,
    ) -> Result<ExitHow, TraceError> {
        install_signal_handlers();
        self.root = pid;
        self.attached = true;
        self.deadline = deadline;
        if let Some(d) = deadline {
            arm_alarm(d);
        }
        let tids = self.seize_all(pid)?;
        let space = Space::new(pid)?;
        self.procs.insert(
            pid,
            Proc {
                space: Rc::new(RefCell::new(space)),
                quiet: false,
                tids: tids.clone(),
                reorder: BTreeMap::new(),
                ctr: 0,
                last_seq: 0,
            },
        );
        for &t in &tids {
            self.threads.insert(t, Thread::new(pid, Vec::new()));
        }
        self.begin_stop();
        while !self.world_stopped() {
            if self.wait_and_dispatch()?.is_none() {
                break;
            }
        }
        if !self.procs.contains_key(&pid) {
            // It ended while we were attaching.
            return Ok(self.root_status.unwrap_or(ExitHow::Running));
        }
        self.set_up_attached(pid)?;
        self.report(Progress::Attached {
            pid,
            threads: self.threads.len(),
        });
        self.release_held()?;
        self.event_loop()?;
        self.note_unresolved_ifuncs()?;
        Ok(self.root_status.unwrap_or(ExitHow::Running))
    }

    /// Seizes every thread of `pid`, listing its tasks until no new one appears (threads
    /// created after their creator was seized are attached by the kernel).
    fn seize_all(&mut self, pid: u32) -> Result<Vec<u32>, TraceError> {
        let options = PtOptions::PTRACE_O_TRACECLONE
            | PtOptions::PTRACE_O_TRACEFORK
            | PtOptions::PTRACE_O_TRACEVFORK
            | PtOptions::PTRACE_O_TRACEEXEC
            | PtOptions::PTRACE_O_TRACEEXIT
            | self.syscall_option();
        let mut seized: Vec<u32> = Vec::new();
        let mut seen: HashSet<u32> = HashSet::new();
        loop {
            let tids = task_ids(pid).map_err(|e| TraceError::Attach {
                pid,
                why: if e.kind() == std::io::ErrorKind::NotFound {
                    "no such process".into()
                } else {
                    format!("cannot list its threads: {e}")
                },
            })?;
            let mut new = false;
            for t in tids {
                if !seen.insert(t) {
                    continue;
                }
                new = true;
                match ptrace::seize(Pid::from_raw(t as i32), options) {
                    Ok(()) => seized.push(t),
                    // A thread that exited between the listing and the seize.
                    Err(Errno::ESRCH) if t != pid => {}
                    Err(e) => {
                        for &s in &seized {
                            let _ = ptrace::detach(Pid::from_raw(s as i32), None);
                        }
                        let thread = if t == pid {
                            String::new()
                        } else {
                            format!("thread {t}: ")
                        };
                        return Err(TraceError::Attach {
                            pid,
                            why: format!("{thread}{}", attach_advice(e)),
                        });
                    }
                }
            }
            if !new {
                return Ok(seized);
            }
        }
    }

    /// Asks every running thread to stop; until [`Self::release_held`], threads that
    /// stop are held rather than resumed.
    pub(super) fn begin_stop(&mut self) {
        self.stopping = true;
        let tids: Vec<u32> = self.threads.keys().copied().collect();
        for t in tids {
            if !self.held.contains_key(&t) {
                let _ = ptrace::interrupt(Pid::from_raw(t as i32));
            }
        }
    }

    /// Every known thread is held and no announced one is still to appear.
    pub(super) fn world_stopped(&self) -> bool {
        self.expected_new.is_empty()
            && self.exec_stepping.is_empty()
            && self.threads.keys().all(|t| self.held.contains_key(t))
    }

    /// A held thread of `pid` whose registers can be borrowed for injected system calls.
    fn clean_thread(&self, pid: u32) -> Option<u32> {
        let p = self.procs.get(&pid)?;
        let (tids, space) = (&p.tids, p.space.borrow());
        let ok = |t: &u32| {
            self.held.get(t).is_some_and(|h| h.clean)
                && mem::get_regs(*t).is_ok_and(|r| !space.in_region(r.rip))
        };
        // The leader first: it is the thread most programs leave idle.
        tids.iter()
            .find(|&&t| t == pid && ok(&t))
            .or_else(|| tids.iter().find(|t| ok(t)))
            .copied()
    }

    /// With every thread stopped: injects the region, installs the SIGTRAP handler and
    /// places the breakpoints.
    fn set_up_attached(&mut self, pid: u32) -> Result<(), TraceError> {
        let tid = self.clean_thread(pid).ok_or_else(|| TraceError::Attach {
            pid,
            why: "no thread is stopped where code can be injected; try again".into(),
        })?;
        let path = std::fs::read_link(format!("/proc/{pid}/exe"))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        self.sink.process_start(pid, 0, StartCause::Attach, &path)?;
        let space_rc = self.procs[&pid].space.clone();
        match space_rc.borrow_mut().adopt_leftovers() {
            Ok(0) => {}
            Ok(n) => self.sink.note(
                pid,
                format!("undid {n} breakpoints left by an rltrace that was killed while attached"),
            )?,
            Err(e) => self.sink.note(
                pid,
                format!("looking for leftovers of a killed rltrace: {e}"),
            )?,
        }
        let injected = space_rc.borrow_mut().inject_primary(tid);
        if let Err(e) = injected {
            self.sink
                .note(pid, format!("calls of {path} are not recorded: {e}"))?;
            return Ok(());
        }
        match space_rc.borrow_mut().install_trap_handler(tid) {
            Ok(true) => {}
            Ok(false) => self.sink.note(
                pid,
                "the program handles SIGTRAP itself: if rltrace is killed while attached, \\
                 its breakpoints reach that handler"
                    .into(),
            )?,
            Err(e) => self.sink.note(
                pid,
                format!("no SIGTRAP safety net if rltrace is killed while attached: {e}"),
            )?,
        }
        self.refresh_modules(pid, tid)?;
        // Long past its entry: the GOT already holds the IFUNCs' implementations.
        self.resolve_ifuncs(pid, tid)?;
        Ok(self.hook_imports(pid, tid)?)
    }

    /// Lets every held thread run again, with the signals it is owed.
    fn release_held(&mut self) -> Result<(), TraceError> {
        self.stopping = false;
        for (tid, h) in std::mem::take(&mut self.held) {
            let mut sigs = h.sigs.into_iter();
            let first = sigs.next();
            if h.group_stop && first.is_none() {
                super::listen(tid)?;
            } else {
                self.resume(tid, first)?;
            }
            let pid = self.threads.get(&tid).map_or(tid, |t| t.pid);
            for s in sigs {
                tgkill(pid, tid, s);
            }
        }
        Ok(())
    }

    /// With every thread held: collects what can be, undoes every change made to the
    /// processes, and detaches from all their threads.
    pub(super) fn detach_all(&mut self) -> Result<(), TraceError> {
        let pids: Vec<u32> = self.procs.keys().copied().collect();
        let mut cleaned: HashSet<*const RefCell<Space>> = HashSet::new();
        for &pid in &pids {
            let tids = self.procs[&pid].tids.clone();
            for &t in &tids {
                self.step_out(pid, t)?;
            }
            let mut unhooked_all = true;
            for &t in &tids {
                unhooked_all &= self.finish_detached_calls(pid, t)?;
            }
            let Some(p) = self.procs.get(&pid) else {
                continue;
            };
            let space_rc = p.space.clone();
            if cleaned.insert(Rc::as_ptr(&space_rc)) {
                self.clean_space(pid, &space_rc, unhooked_all)?;
            }
            self.drain(pid, u64::MAX)?;
            if let Some(p) = self.procs.remove(&pid) {
                if !p.quiet {
                    self.sink.process_exit(pid, ExitHow::Running)?;
                }
            }
        }
        self.root_status.get_or_insert(ExitHow::Running);
        // Held threads (and new ones that stopped before their creator's event) go free.
        let mut tids: Vec<u32> = self.threads.keys().copied().collect();
        tids.extend(self.early_stopped.drain());
        for tid in tids {
            let h = self.held.remove(&tid).unwrap_or_default();
            let pid = self.threads.get(&tid).map_or(tid, |t| t.pid);
            let mut sigs = h.sigs.into_iter();
            match ptrace::detach(Pid::from_raw(tid as i32), sigs.next()) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(e) => return Err(pt(format!("detach thread {tid}"))(e)),
            }
            for s in sigs {
                tgkill(pid, tid, s);
            }
        }
        self.threads.clear();
        Ok(())
    }

    /// Restores breakpoint bytes and the SIGTRAP action, and unmaps the injected regions
    /// if no stub address can be left on a stack.
    fn clean_space(
        &mut self,
        pid: u32,
        space_rc: &Rc<RefCell<Space>>,
        unhooked_all: bool,
    ) -> Result<(), TraceError> {
        space_rc.borrow_mut().remove_breakpoints()?;
        let Some(tid) = self.clean_thread(pid) else {
            self.sink.note(
                pid,
                "no thread could run the clean-up: the injected pages stay mapped".into(),
            )?;
            return Ok(());
        };
        space_rc.borrow_mut().restore_trap_handler(tid)?;
        if unhooked_all {
            space_rc.borrow_mut().unmap_regions(tid)?;
        } else {
            self.sink.note(
                pid,
                "a call in progress could not be unhooked: the injected pages stay mapped so \\
                 that it returns safely"
                    .into(),
            )?;
        }
        let deferred = std::mem::take(&mut space_rc.borrow_mut().deferred_signals);
        for (t, s) in deferred {
            if let Ok(sig) = nix::sys::signal::Signal::try_from(s) {
                self.held.entry(t).or_default().sigs.push(sig);
            }
        }
        Ok(())
    }

    /// Single-steps a held thread until it is out of injected code (a trampoline or a
    /// stub), keeping signals that arrive meanwhile for delivery at detach.
    fn step_out(&mut self, pid: u32, tid: u32) -> Result<(), TraceError> {
        let Some(space_rc) = self.procs.get(&pid).map(|p| p.space.clone()) else {
            return Ok(());
        };
        if !self.held.get(&tid).is_some_and(|h| h.clean) {
            // Held at an event inside a system call: not in injected code.
            return Ok(());
        }
        let p = Pid::from_raw(tid as i32);
        for _ in 0..MAX_STEPS {
            let Ok(regs) = mem::get_regs(tid) else {
                return Ok(());
            };
            if !space_rc.borrow().in_region(regs.rip) {
                return Ok(());
            }
            match ptrace::step(p, None) {
                Ok(()) => {}
                Err(Errno::ESRCH) => return Ok(()),
                Err(e) => return Err(pt(format!("single-step thread {tid}"))(e)),
            }
            loop {
                let status = match waitpid(p, Some(WaitPidFlag::__WALL)) {
                    Err(Errno::EINTR) => continue,
                    other => other.map_err(pt(format!("wait for thread {tid}")))?,
                };
                match status {
                    WaitStatus::Stopped(_, nix::sys::signal::Signal::SIGTRAP) => break,
                    WaitStatus::Stopped(_, sig) => {
                        self.held.entry(tid).or_default().sigs.push(sig);
                        break;
                    }
                    WaitStatus::PtraceEvent(..) => break,
                    WaitStatus::Exited(..) | WaitStatus::Signaled(..) => {
                        self.held.remove(&tid);
                        self.threads.remove(&tid);
                        if let Some(pr) = self.procs.get_mut(&pid) {
                            pr.tids.retain(|&t| t != tid);
                        }
                        return Ok(());
                    }
                    _ => break,
                }
            }
        }
        self.sink.note(
            pid,
            format!("thread {tid} did not leave injected code in {MAX_STEPS} steps"),
        )?;
        Ok(())
    }

    /// Collects the returns of a held thread's calls; calls still running lose their stub
    /// (the real return address goes back on the stack) and are recorded as not returned
    /// in the window. Returns false if some stub address could not be found to undo.
    fn finish_detached_calls(&mut self, pid: u32, tid: u32) -> Result<bool, TraceError> {
        let pending = match self.threads.get_mut(&tid) {
            Some(t) => std::mem::take(&mut t.pending),
            None => return Ok(true),
        };
        if pending.is_empty() {
            return Ok(true);
        }
        let Some(space_rc) = self.procs.get(&pid).map(|p| p.space.clone()) else {
            return Ok(true);
        };
        let Some(seq_addr) = space_rc.borrow().seq_addr() else {
            return Ok(true);
        };
        let (got, header, seq_now) = {
            let space = space_rc.borrow();
            self.read_polled(tid, seq_addr, &space, &pending, None)
        };
        let results = super::parse_poll(&self.buf[..got.min(header)], &pending);
        let mut all = true;
        let proc_ = self.procs.get_mut(&pid).expect("checked above");
        proc_.last_seq = proc_.last_seq.max(seq_now.unwrap_or(0));
        let mut space = space_rc.borrow_mut();
        // Innermost first: a traced function that tail-called another left both stubs at
        // the same place, the inner one on top.
        for (i, pc) in pending.iter().enumerate().rev() {
            match results[i] {
                Some((seq, ret, out, tsc)) => proc_.buffer(
                    seq,
                    1,
                    super::Event::Exit {
                        pid,
                        tid,
                        ret: Some(ret),
                        out: pc.has_out.then_some(out),
                        ts: Some(self.clock.to_ns(tsc)),
                        data: Vec::new(),
                    },
                ),
                None => {
                    all &= space.unhook_return(pc.entry_rsp, pc.slot).unwrap_or(false);
                    proc_.buffer(proc_.last_seq, 0, super::Event::never_returned(pid, tid));
                }
            }
            space.free_slot(pc.slot);
        }
        Ok(all)
    }
}

/// Thread ids of a process, from `/proc/PID/task`.
fn task_ids(pid: u32) -> std::io::Result<Vec<u32>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        if let Some(t) = e?.file_name().to_str().and_then(|s| s.parse().ok()) {
            v.push(t);
        }
    }
    v.sort_unstable();
    Ok(v)
}

/// Why an attach was refused, with what to do about it.
fn attach_advice(e: Errno) -> String {
    let scope = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    match e {
        Errno::EPERM if scope != "0" && !scope.is_empty() => {
            format!("{e} (kernel.yama.ptrace_scope is {scope}: run as root, or set it to 0)")
        }
        Errno::EPERM => format!("{e} (not your process, or it is already being traced)"),
        Errno::ESRCH => "no such process".into(),
        _ => e.to_string(),
    }
}

/// Makes SIGALRM arrive at `deadline`, so a blocking wait wakes up to detach.
fn arm_alarm(deadline: Instant) {
    let left = deadline.saturating_duration_since(Instant::now());
    super::set_timer(left.max(Duration::from_micros(1)), false);
}
