//! Reading and writing tracee memory and registers: the only place the ptrace engine
//! calls into libc for memory access.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;

/// Registers of a stopped thread.
pub type Regs = libc::user_regs_struct;

/// Reads several remote ranges into one local buffer with a single `process_vm_readv`.
/// Returns the number of bytes read; the kernel stops at the first range it cannot read,
/// so callers put the ranges that must succeed first and split optional ones by page.
pub fn readv(pid: u32, remote: &[(u64, usize)], local: &mut [u8]) -> io::Result<usize> {
    let total: usize = remote.iter().map(|r| r.1).sum();
    assert!(
        total <= local.len(),
        "local buffer smaller than the remote ranges"
    );
    let liov = libc::iovec {
        iov_base: local.as_mut_ptr().cast(),
        iov_len: total,
    };
    let riov: Vec<libc::iovec> = remote
        .iter()
        .map(|&(addr, len)| libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: len,
        })
        .collect();
    // SAFETY: the local iovec covers `total` bytes of `local`, which is at least that long
    // (asserted above) and exclusively borrowed; remote iovecs name tracee addresses, which
    // the kernel validates, never dereferenced here.
    let n = unsafe {
        libc::process_vm_readv(
            pid as libc::pid_t,
            &liov,
            1,
            riov.as_ptr(),
            riov.len() as libc::c_ulong,
            0,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Writes several small pieces to tracee memory with one `process_vm_writev`. The target
/// pages must be writable by the tracee (stack, the injected region's data part).
pub fn writev(pid: u32, pieces: &[(u64, &[u8])]) -> io::Result<()> {
    let liov: Vec<libc::iovec> = pieces
        .iter()
        .map(|(_, b)| libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect();
    let riov: Vec<libc::iovec> = pieces
        .iter()
        .map(|&(addr, b)| libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect();
    let total: usize = pieces.iter().map(|p| p.1.len()).sum();
    // SAFETY: each local iovec points into a borrowed slice of exactly its length, which the
    // kernel only reads; remote addresses are validated by the kernel.
    let n = unsafe {
        libc::process_vm_writev(
            pid as libc::pid_t,
            liov.as_ptr(),
            liov.len() as libc::c_ulong,
            riov.as_ptr(),
            riov.len() as libc::c_ulong,
            0,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else if n as usize != total {
        Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("short write to tracee: {n} of {total} bytes"),
        ))
    } else {
        Ok(())
    }
}

/// `/proc/PID/mem`, which (unlike `process_vm_writev`) can write read-only code pages of a
/// traced process: used for breakpoints and trampolines.
pub struct MemFile {
    file: File,
}

impl MemFile {
    /// Opens the memory of `pid`; the tracer must be attached to it.
    pub fn open(pid: u32) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/{pid}/mem"))?;
        Ok(MemFile { file })
    }

    /// Reads exactly `buf.len()` bytes at `addr`.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, addr)
    }

    /// Writes all of `data` at `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, addr)
    }
}

/// Fetches the registers of a stopped thread.
pub fn get_regs(tid: u32) -> nix::Result<Regs> {
    nix::sys::ptrace::getregs(nix::unistd::Pid::from_raw(tid as i32))
}

/// The low 64 bits of the vector registers xmm0-7 of a stopped thread (where `float` and
/// `double` arguments travel).
pub fn get_xmm(tid: u32) -> io::Result<[u64; 8]> {
    // SAFETY: user_fpregs_struct is plain integers, valid zeroed.
    let mut fp: libc::user_fpregs_struct = unsafe { std::mem::zeroed() };
    // SAFETY: PTRACE_GETFPREGS writes one user_fpregs_struct at `data`, which points to
    // ours; the kernel checks that `tid` is a stopped tracee of this thread.
    let r = unsafe {
        libc::ptrace(
            libc::PTRACE_GETFPREGS,
            tid as libc::pid_t,
            std::ptr::null_mut::<libc::c_void>(),
            &mut fp as *mut libc::user_fpregs_struct,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // xmm_space holds each register as four 32-bit words, low first.
    Ok(std::array::from_fn(|i| {
        u64::from(fp.xmm_space[4 * i]) | u64::from(fp.xmm_space[4 * i + 1]) << 32
    }))
}

/// Sets the registers of a stopped thread.
pub fn set_regs(tid: u32, regs: Regs) -> nix::Result<()> {
    nix::sys::ptrace::setregs(nix::unistd::Pid::from_raw(tid as i32), regs)
}

/// Where a thread stopped by `PTRACE_SYSCALL` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyscallStop {
    /// Entering system call `nr` with these arguments.
    Entry {
        /// System call number.
        nr: u64,
        /// Made with the x86-64 convention (not `int 0x80`, whose numbers are i386's).
        native: bool,
        /// Its six arguments.
        args: [u64; 6],
    },
    /// Leaving the system call entered last, with this result (-errno on failure).
    Exit {
        /// The result.
        rval: i64,
    },
    /// Something else (a seccomp stop, or no system call).
    Other,
}

/// `AUDIT_ARCH_X86_64`: the `arch` of a system call made with the x86-64 convention.
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;

/// Asks the kernel where a thread in a syscall stop is (`PTRACE_GET_SYSCALL_INFO`, Linux
/// 5.3), rather than counting entries and exits, which an exec or a restarted call upsets.
pub fn syscall_info(tid: u32) -> Result<SyscallStop, nix::errno::Errno> {
    // struct ptrace_syscall_info, read as bytes: op u8 at 0, arch u32 at 4, then at 24
    // either the entry (nr u64, args [u64; 6]) or the exit (rval s64, is_error u8). The
    // layout is kernel ABI.
    let mut buf = [0u8; 88];
    // SAFETY: PTRACE_GET_SYSCALL_INFO writes at most `addr` (the buffer's length) bytes to
    // `data`, which points at this exclusively borrowed buffer of that length.
    let n = unsafe {
        libc::ptrace(
            libc::PTRACE_GET_SYSCALL_INFO,
            tid as libc::pid_t,
            buf.len() as *mut libc::c_void,
            buf.as_mut_ptr().cast::<libc::c_void>(),
        )
    };
    if n < 0 {
        return Err(nix::errno::Errno::last());
    }
    let word = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&buf[at..at + 8]);
        u64::from_le_bytes(w)
    };
    let got = usize::try_from(n).unwrap_or(0).min(buf.len());
    Ok(match buf[0] {
        libc::PTRACE_SYSCALL_INFO_ENTRY if got >= 80 => {
            let mut args = [0u64; 6];
            for (i, a) in args.iter_mut().enumerate() {
                *a = word(32 + 8 * i);
            }
            let arch = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
            SyscallStop::Entry {
                nr: word(24),
                native: arch == AUDIT_ARCH_X86_64,
                args,
            }
        }
        libc::PTRACE_SYSCALL_INFO_EXIT if got >= 33 => SyscallStop::Exit {
            rval: word(24) as i64,
        },
        _ => SyscallStop::Other,
    })
}
