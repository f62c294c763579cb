//! System calls (`record -S`): each thread runs with `PTRACE_SYSCALL`, and each entry and
//! exit stop becomes an Enter and Exit record of a function named `SYS_<name>`, ordered
//! with the calls by the same sequence counter the return stubs take.

use std::io::Write;

use nix::errno::Errno;

use super::{capture_args, pt, TraceError, Tracer};
use crate::format::Origin;
use crate::record::ptrace::mem::{self, SyscallStop};
use crate::record::ptrace::syscalls;
use crate::record::sink::Event;

/// `exit` and `exit_group`: recorded as never returning.
const NEVER_RETURN: [u64; 2] = [60, 231];

impl<W: Write> Tracer<'_, W> {
    /// Records the system call entry or exit thread `tid` stopped at, and lets it go on.
    pub(super) fn on_syscall(&mut self, tid: u32) -> Result<(), TraceError> {
        let Some(pid) = self.threads.get(&tid).map(|t| t.pid) else {
            return self.resume(tid, None);
        };
        match mem::syscall_info(tid) {
            Ok(SyscallStop::Entry { nr, native, args }) => {
                self.syscall_entry(tid, pid, nr, native, args)?
            }
            Ok(SyscallStop::Exit { rval }) => self.syscall_exit(tid, pid, rval)?,
            Ok(SyscallStop::Other) => {}
            Err(Errno::ESRCH) => return Ok(()),
            Err(e) => return Err(pt(format!("system call of thread {tid}"))(e)),
        }
        self.release(pid)?;
        self.resume(tid, None)
    }

    fn syscall_entry(
        &mut self,
        tid: u32,
        pid: u32,
        nr: u64,
        native: bool,
        all: [u64; 6],
    ) -> Result<(), TraceError> {
        let Some(space_rc) = self.procs.get(&pid).map(|p| p.space.clone()) else {
            return Ok(());
        };
        let regs = match mem::get_regs(tid) {
            Ok(r) => r,
            Err(Errno::ESRCH) => return Ok(()),
            Err(e) => return Err(pt(format!("registers of thread {tid}"))(e)),
        };
        let func = self.syscall_id(nr, native)?;
        let mut space = space_rc.borrow_mut();
        let Some(seq_addr) = space.seq_addr() else {
            return Ok(());
        };
        let len = self.stack_read_len(tid);
        // The stack from the instruction after `syscall`, in the C library's wrapper (or
        // wherever the program made it): its caller is the line that asked for it.
        let (frames, seq) = self.stack_at_stop(tid, &mut space, seq_addr, &regs, len);
        drop(space);
        let f = &self.funcs[func as usize];
        let args = all[..usize::from(f.nargs).min(6)].to_vec();
        // System calls take integers only (their values are the registers), none on the
        // stack.
        let data = match crate::protos::lookup(f.name) {
            Some(p) => capture_args(tid, p, &args, 0, self.opts.string_limit),
            None => Vec::new(),
        };
        let ts = self.sink.now();
        let Some(proc_) = self.procs.get_mut(&pid) else {
            return Ok(());
        };
        proc_.last_seq = proc_.last_seq.max(seq.unwrap_or(0));
        let at = proc_.last_seq;
        proc_.buffer(
            at,
            0,
            Event::Enter {
                pid,
                tid,
                ts,
                func,
                args,
                frames,
                data,
            },
        );
        if native && NEVER_RETURN.contains(&nr) {
            // exit and exit_group end the thread or process inside the kernel.
            proc_.buffer(at, 0, Event::never_returned(pid, tid));
        } else if let Some(t) = self.threads.get_mut(&tid) {
            t.in_syscall = true;
        }
        Ok(())
    }

    fn syscall_exit(&mut self, tid: u32, pid: u32, rval: i64) -> Result<(), TraceError> {
        // An exit without a recorded entry: the thread was inside the call when rltrace
        // attached, or the entry belonged to the image an exec replaced.
        let Some(t) = self.threads.get_mut(&tid).filter(|t| t.in_syscall) else {
            return Ok(());
        };
        t.in_syscall = false;
        let ts = self.sink.now();
        let Some(proc_) = self.procs.get_mut(&pid) else {
            return Ok(());
        };
        let at = proc_.last_seq;
        proc_.buffer(
            at,
            0,
            Event::Exit {
                pid,
                tid,
                ret: Some(rval as u64),
                out: None,
                ts: Some(ts),
                data: Vec::new(),
            },
        );
        Ok(())
    }

    /// The function id of system call `nr` (`SYS_write`, `SYS_<nr>` for a number this
    /// table does not know, `SYS_i386_<nr>` for one made with `int 0x80`), defining it on
    /// first use.
    fn syscall_id(&mut self, nr: u64, native: bool) -> Result<u32, TraceError> {
        let key = (nr, native);
        if let Some(&id) = self.syscall_ids.get(&key) {
            return Ok(id);
        }
        let name = match (native, syscalls::name(nr)) {
            (true, Some(n)) => format!("SYS_{n}"),
            (true, None) => format!("SYS_{nr}"),
            (false, _) => format!("SYS_i386_{nr}"),
        };
        let id = self.define(&name, Origin::Syscall)?;
        self.syscall_ids.insert(key, id);
        Ok(id)
    }
}
