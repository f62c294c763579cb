//! One traced address space: its modules, breakpoints, injected regions and return slots.
//! Threads of a process, and a `vfork` child until it execs, share one.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::path::Path;

use nix::sys::ptrace;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::codegen::{
    self, slot, REGION_LEN, SLOTS, SLOT_OFF, SLOT_SIZE, STUB_OFF, STUB_SIZE, TRAMPS, TRAMP_OFF,
    TRAMP_SIZE,
};
use super::mem::{get_regs, set_regs, MemFile, Regs};
use crate::elf::{self, ElfInfo};
use crate::format::Frame;
use crate::record::procfs::{self, Mapping};
use crate::unwind::StackUnwinder;

/// What a breakpoint is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BpKind {
    /// Entry of traced function number N.
    Call(u32),
    /// The dynamic linker's `_dl_debug_state`: the module list changed.
    DlDebugState,
    /// The program's entry point: relocations are done, GOT slots hold final addresses.
    Entry,
}

/// An `int3` at a function entry.
#[derive(Clone, Copy, Debug)]
pub struct Breakpoint {
    /// What it is for.
    pub kind: BpKind,
    /// Where the displaced instruction runs out of line.
    pub tramp: u64,
    /// The byte the `int3` replaced.
    pub orig: u8,
}

/// A module known in the address space.
#[derive(Clone, Debug)]
pub struct LoadedModule {
    /// Recording-wide module id.
    pub id: u32,
    /// One past the highest mapped address.
    pub end: u64,
    /// Load bias.
    pub bias: u64,
    /// File identity, to notice a different file mapped at the same place.
    pub dev_inode: (String, u64),
}

/// A module found in `/proc/PID/maps` that the tracer must record.
pub struct NewModule {
    /// Lowest address.
    pub start: u64,
    /// One past the highest address.
    pub end: u64,
    /// Path as the tracee sees it.
    pub path: String,
    /// Parsed file.
    pub elf: ElfInfo,
    /// Load bias.
    pub bias: u64,
    /// File identity.
    pub dev_inode: (String, u64),
}

/// Errors that make an address space untraceable.
#[derive(Debug, thiserror::Error)]
pub enum SpaceError {
    /// A system call on the tracee failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: io::Error,
    },
    /// The injected system call failed in the tracee.
    #[error("injected {what} failed in the tracee: errno {errno}")]
    Remote {
        /// Which system call.
        what: &'static str,
        /// The errno it returned.
        errno: i64,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> SpaceError {
    let what = what.into();
    move |source| SpaceError::Io { what, source }
}

fn nix_err(what: impl Into<String>) -> impl FnOnce(nix::Error) -> SpaceError {
    let what = what.into();
    move |e| SpaceError::Io {
        what,
        source: io::Error::from(e),
    }
}

struct Region {
    base: u64,
    next_tramp: u64,
}

/// State of one address space.
pub struct Space {
    /// A process whose `/proc/PID/mem` is open.
    pub pid: u32,
    mem: MemFile,
    regions: Vec<Region>,
    /// Breakpoints by address.
    pub bps: HashMap<u64, Breakpoint>,
    free_slots: VecDeque<u32>,
    /// Real return address of each slot in use, to undo stub addresses while unwinding.
    slot_retaddr: Vec<u64>,
    /// Which slots belong to a call.
    slot_owned: Vec<bool>,
    /// Bookkeeping anomalies to report.
    slot_anomalies: Vec<String>,
    /// Modules by start address.
    pub modules: BTreeMap<u64, LoadedModule>,
    /// CFI unwinder over the modules.
    pub unwinder: StackUnwinder,
    /// Signals that arrived while the tracer ran an injected system call, to deliver later.
    pub deferred_signals: Vec<(u32, i32)>,
    /// The region's SIGTRAP handler is installed (attach mode), the program's action saved.
    pub trap_handler: bool,
    /// Regions left by an earlier rltrace that was killed while attached.
    leftovers: Vec<u64>,
    /// `__register_frame_info` of the C++ runtime's unwinder in this image, if loaded.
    register_frame: Option<u64>,
    /// The stubs' call frame information is registered with it.
    stubs_described: bool,
    /// Imports bound to one function (`memcpy` and `memmove` to one IFUNC
    /// implementation), by the address of its breakpoint: told apart by call site.
    pub aliases: HashMap<u64, Vec<Alias>>,
}

/// One of several imports whose GOT slots lead to the same function.
#[derive(Clone, Debug)]
pub struct Alias {
    /// Its function id.
    pub id: u32,
    /// The program's PLT entry for it (`.plt` or `.plt.sec`), which `call rel32` reaches.
    pub plt: Option<u64>,
    /// Its GOT slots, which `call [rip+disp32]` (`-fno-plt`) reads.
    pub slots: Vec<u64>,
}

/// Where a call instruction that ends just before a return address leads: to a direct
/// target (`call rel32`), or through a memory word (`call [rip+disp32]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallSite {
    /// `E8 rel32`: the target.
    Direct(u64),
    /// `FF 15 disp32`: the address of the pointer called through.
    Indirect(u64),
}

/// Decodes the call that returns to `ra` from the six code bytes before it; `None` for
/// any other (a call through a register, or no call: a tail call's return address).
pub fn call_site(before: [u8; 6], ra: u64) -> Option<CallSite> {
    let rel = |b: &[u8]| i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    if before[0] == 0xff && before[1] == 0x15 {
        return Some(CallSite::Indirect(
            ra.wrapping_add_signed(rel(&before[2..])),
        ));
    }
    if before[1] == 0xe8 {
        return Some(CallSite::Direct(ra.wrapping_add_signed(rel(&before[2..]))));
    }
    None
}

/// The alias among `aliases` the call returning to `ra` was made to, by its call site.
pub fn alias_called(aliases: &[Alias], site: CallSite) -> Option<u32> {
    aliases
        .iter()
        .find(|a| match site {
            CallSite::Direct(t) => a.plt == Some(t),
            CallSite::Indirect(p) => a.slots.contains(&p),
        })
        .map(|a| a.id)
}

impl Space {
    /// Opens the address space of `pid`, with no regions yet.
    pub fn new(pid: u32) -> Result<Self, SpaceError> {
        Ok(Space {
            pid,
            mem: MemFile::open(pid).map_err(io_err(format!("open /proc/{pid}/mem")))?,
            regions: Vec::new(),
            bps: HashMap::new(),
            free_slots: (0..SLOTS as u32).collect(),
            slot_retaddr: vec![0; SLOTS as usize],
            slot_owned: vec![false; SLOTS as usize],
            slot_anomalies: Vec::new(),
            modules: BTreeMap::new(),
            unwinder: StackUnwinder::default(),
            deferred_signals: Vec::new(),
            trap_handler: false,
            leftovers: Vec::new(),
            register_frame: None,
            stubs_described: false,
            aliases: HashMap::new(),
        })
    }

    /// A copy for a forked child: same layout, the child's own memory file.
    pub fn fork_for(&self, child: u32) -> Result<Self, SpaceError> {
        Ok(Space {
            pid: child,
            mem: MemFile::open(child).map_err(io_err(format!("open /proc/{child}/mem")))?,
            regions: self
                .regions
                .iter()
                .map(|r| Region {
                    base: r.base,
                    next_tramp: r.next_tramp,
                })
                .collect(),
            bps: self.bps.clone(),
            free_slots: self.free_slots.clone(),
            slot_retaddr: self.slot_retaddr.clone(),
            slot_owned: self.slot_owned.clone(),
            slot_anomalies: Vec::new(),
            modules: self.modules.clone(),
            unwinder: self.unwinder.clone(),
            deferred_signals: Vec::new(),
            trap_handler: self.trap_handler,
            leftovers: self.leftovers.clone(),
            register_frame: self.register_frame,
            stubs_described: self.stubs_described,
            aliases: self.aliases.clone(),
        })
    }

    /// Notes where this image's unwinder registers call frame information (the first
    /// found: the shared C++ runtime's is noted before the program's).
    pub fn note_unwinder(&mut self, register_frame_info: u64) {
        self.register_frame.get_or_insert(register_frame_info);
    }

    /// Registers the stubs' call frame information with the image's unwinder (once), by
    /// a call injected on stopped thread `tid`: at the program's entry, where everything
    /// loaded with it is relocated and initialised.
    pub fn describe_stubs(&mut self, tid: u32) -> Result<(), SpaceError> {
        let (Some(base), Some(register)) = (self.primary(), self.register_frame) else {
            return Ok(());
        };
        if self.stubs_described {
            return Ok(());
        }
        self.stubs_described = true;
        let mut blob = codegen::stub_eh_frame(base);
        // Then the unwinder's `struct object`, which the caller provides (zeroed).
        let object_at = blob.len().next_multiple_of(16);
        blob.resize(object_at + 128, 0);
        let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
        let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        let at = self.remote_syscall(
            tid,
            libc::SYS_mmap,
            [0, blob.len() as u64, rw, flags, u64::MAX, 0],
            "mmap",
        )?;
        self.mem
            .write(at, &blob)
            .map_err(io_err("write the stubs' call frame information"))?;
        self.remote_call(tid, register, [at, at + object_at as u64])?;
        Ok(())
    }

    /// Calls the function at `func` with two arguments on stopped thread `tid` and
    /// waits for it to return (to the gadget's `int3`); its registers are restored after.
    /// The function must not reach a breakpoint: its own stop would end the wait early.
    fn remote_call(&mut self, tid: u32, func: u64, args: [u64; 2]) -> Result<u64, SpaceError> {
        let Some(base) = self.primary() else {
            return Err(SpaceError::Remote {
                what: "call without a region",
                errno: libc::EINVAL.into(),
            });
        };
        let saved = get_regs(tid).map_err(nix_err("read registers"))?;
        // Below the red zone, 16-aligned, with the return address pushed as by `call`.
        let rsp = ((saved.rsp - 1024) & !15) - 8;
        let ret = base + 2; // the gadget's int3
        self.mem
            .write(rsp, &ret.to_le_bytes())
            .map_err(io_err("write a return address"))?;
        let mut r = saved;
        r.rip = func;
        r.rsp = rsp;
        r.rax = 0;
        r.orig_rax = u64::MAX;
        r.rdi = args[0];
        r.rsi = args[1];
        set_regs(tid, r).map_err(nix_err("set registers"))?;
        let now = self.run_to_trap(tid, "call")?;
        // Stopped at a breakpoint on the way instead: given up, the thread back where it
        // was.
        set_regs(tid, saved).map_err(nix_err("restore registers"))?;
        if now.rip != ret + 1 {
            return Err(SpaceError::Remote {
                what: "injected call (it reached a breakpoint)",
                errno: libc::EINTR.into(),
            });
        }
        Ok(now.rax)
    }

    /// Lets stopped thread `tid` run injected code until its next SIGTRAP stop (signals
    /// meanwhile are kept for later) and returns its registers there.
    fn run_to_trap(&mut self, tid: u32, what: &str) -> Result<Regs, SpaceError> {
        let pid = Pid::from_raw(tid as i32);
        ptrace::cont(pid, None).map_err(nix_err("continue for injected code"))?;
        loop {
            // The recorder's own signal handlers interrupt waits; the caller's loop sees
            // their flags later.
            let status = match waitpid(pid, Some(WaitPidFlag::__WALL)) {
                Err(nix::errno::Errno::EINTR) => continue,
                other => other.map_err(nix_err("wait for injected code"))?,
            };
            match status {
                WaitStatus::Stopped(_, Signal::SIGTRAP) => {
                    return get_regs(tid).map_err(nix_err("read registers"));
                }
                WaitStatus::Stopped(_, sig) => {
                    self.deferred_signals.push((tid, sig as i32));
                    ptrace::cont(pid, None).map_err(nix_err("continue for injected code"))?;
                }
                WaitStatus::PtraceEvent(..)
                | WaitStatus::PtraceSyscall(_)
                | WaitStatus::Continued(_) => {
                    ptrace::cont(pid, None).map_err(nix_err("continue for injected code"))?;
                }
                other => {
                    return Err(SpaceError::Io {
                        what: format!("thread {tid} ended during injected {what}: {other:?}"),
                        source: io::Error::from(io::ErrorKind::UnexpectedEof),
                    });
                }
            }
        }
    }

    /// Base of the region holding the return stubs.
    pub fn primary(&self) -> Option<u64> {
        self.regions.first().map(|r| r.base)
    }

    /// Address of the sequence counter.
    pub fn seq_addr(&self) -> Option<u64> {
        self.primary().map(|b| b + codegen::DATA_OFF)
    }

    /// Address of slot `i`.
    pub fn slot_addr(&self, i: u32) -> u64 {
        self.primary().unwrap_or(0) + SLOT_OFF + u64::from(i) * SLOT_SIZE
    }

    /// Address of stub `i`.
    pub fn stub_addr(&self, i: u32) -> u64 {
        self.primary().unwrap_or(0) + STUB_OFF + u64::from(i) * STUB_SIZE
    }

    /// The slot whose stub is at `addr`, if `addr` is a stub.
    pub fn stub_slot(&self, addr: u64) -> Option<u32> {
        let base = self.primary()?;
        let off = addr.checked_sub(base + STUB_OFF)?;
        (off % STUB_SIZE == 0 && off / STUB_SIZE < SLOTS).then_some((off / STUB_SIZE) as u32)
    }

    /// Replaces a stub address by the real return address it stands for.
    pub fn real_retaddr(&self, value: u64) -> u64 {
        match self.stub_slot(value) {
            Some(i) => self.slot_retaddr[i as usize],
            None => value,
        }
    }

    /// Takes a free return slot. A slot is never handed to two calls at once: its stub's
    /// sequence number would then be credited to the wrong call.
    pub fn alloc_slot(&mut self, retaddr: u64) -> Option<u32> {
        loop {
            let i = self.free_slots.pop_front()?;
            if self.slot_owned[i as usize] {
                self.slot_anomalies
                    .push(format!("slot {i} was queued twice; skipped"));
                continue;
            }
            self.slot_owned[i as usize] = true;
            self.slot_retaddr[i as usize] = retaddr;
            return Some(i);
        }
    }

    /// Returns a slot; it is reused last, so a stub that still fires late (a frame the
    /// tracer wrongly believed unwound) is unlikely to clobber a live call. Freeing a slot
    /// that is not owned is refused and reported.
    pub fn free_slot(&mut self, i: u32) {
        match self.slot_owned.get_mut(i as usize) {
            Some(owned) if *owned => {
                *owned = false;
                self.free_slots.push_back(i);
            }
            _ => self
                .slot_anomalies
                .push(format!("slot {i} freed twice; ignored")),
        }
    }

    /// Slot bookkeeping anomalies seen since the last call (for the recording's notes).
    pub fn take_slot_anomalies(&mut self) -> Vec<String> {
        std::mem::take(&mut self.slot_anomalies)
    }

    /// Runs one system call in the tracee on stopped thread `tid` and returns its result.
    pub fn remote_syscall(
        &mut self,
        tid: u32,
        nr: i64,
        args: [u64; 6],
        what: &'static str,
    ) -> Result<u64, SpaceError> {
        let saved = get_regs(tid).map_err(nix_err("read registers"))?;
        let (gadget, patched) = match self.primary() {
            Some(base) => (base, None),
            None => {
                // No region yet: only at an exec stop, where the process has one thread,
                // so patching the instruction at rip cannot be seen by anyone else.
                let mut orig = [0u8; 3];
                self.mem
                    .read(saved.rip, &mut orig)
                    .map_err(io_err("read code at rip"))?;
                self.mem
                    .write(saved.rip, &codegen::GADGET)
                    .map_err(io_err("patch code at rip"))?;
                (saved.rip, Some(orig))
            }
        };
        let mut r = saved;
        r.rip = gadget;
        r.rax = nr as u64;
        r.orig_rax = u64::MAX;
        r.rdi = args[0];
        r.rsi = args[1];
        r.rdx = args[2];
        r.r10 = args[3];
        r.r8 = args[4];
        r.r9 = args[5];
        set_regs(tid, r).map_err(nix_err("set registers"))?;
        let result = self.run_to_trap(tid, what)?.rax;
        if let Some(orig) = patched {
            self.mem
                .write(saved.rip, &orig)
                .map_err(io_err("restore code at rip"))?;
        }
        set_regs(tid, saved).map_err(nix_err("restore registers"))?;
        let signed = result as i64;
        if (-4095..0).contains(&signed) {
            return Err(SpaceError::Remote {
                what,
                errno: -signed,
            });
        }
        Ok(result)
    }

    /// Maps a new region in the tracee, at `hint` if given (which must be free).
    fn inject_region(&mut self, tid: u32, hint: Option<u64>) -> Result<u64, SpaceError> {
        let prot_rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
        let mut flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        if hint.is_some() {
            flags |= libc::MAP_FIXED_NOREPLACE as u64;
        }
        let base = self.remote_syscall(
            tid,
            libc::SYS_mmap,
            [hint.unwrap_or(0), REGION_LEN, prot_rw, flags, u64::MAX, 0],
            "mmap",
        )?;
        if hint.is_some_and(|h| h != base) {
            return Err(SpaceError::Remote {
                what: "mmap at a fixed address",
                errno: libc::EEXIST.into(),
            });
        }
        self.mem
            .write(
                base,
                &codegen::region_code(base).map_err(|e| SpaceError::Io {
                    what: e,
                    source: io::Error::from(io::ErrorKind::InvalidData),
                })?,
            )
            .map_err(io_err("write injected code"))?;
        let prot_rx = (libc::PROT_READ | libc::PROT_EXEC) as u64;
        self.remote_syscall(
            tid,
            libc::SYS_mprotect,
            [base, codegen::DATA_OFF, prot_rx, 0, 0, 0],
            "mprotect",
        )?;
        self.regions.push(Region {
            base,
            next_tramp: TRAMP_OFF,
        });
        Ok(base)
    }

    /// Maps the region holding the stubs; called once per new image, at its exec stop.
    pub fn inject_primary(&mut self, tid: u32) -> Result<(), SpaceError> {
        self.regions.clear();
        self.inject_region(tid, None).map(|_| ())
    }

    /// Finds room for a trampoline within reach of rip-relative code at `near`, injecting
    /// a new region next to it if no existing one is close enough.
    fn tramp_slot(&mut self, tid: u32, near: u64) -> Result<u64, SpaceError> {
        const REACH: u64 = 1 << 30;
        if let Some(r) = self.regions.iter_mut().find(|r| {
            r.base.abs_diff(near) < REACH && r.next_tramp < TRAMP_OFF + TRAMPS * TRAMP_SIZE
        }) {
            let at = r.base + r.next_tramp;
            r.next_tramp += TRAMP_SIZE;
            return Ok(at);
        }
        let maps = procfs::read_maps(self.pid).map_err(io_err("read maps"))?;
        let hint = free_gap_near(&maps, near, REGION_LEN, REACH).ok_or_else(|| SpaceError::Io {
            what: format!("no free address space within 1 GiB of {near:#x}"),
            source: io::Error::from(io::ErrorKind::OutOfMemory),
        })?;
        let base = self.inject_region(tid, Some(hint))?;
        let r = self.regions.last_mut().expect("region just pushed");
        r.next_tramp += TRAMP_SIZE;
        Ok(base + TRAMP_OFF)
    }

    /// Places a breakpoint at `addr`; the displaced instruction gets a trampoline.
    pub fn insert_bp(&mut self, tid: u32, addr: u64, kind: BpKind) -> Result<(), String> {
        if self.bps.contains_key(&addr) {
            return Ok(());
        }
        let mut orig = [0u8; 16];
        self.mem
            .read(addr, &mut orig)
            .map_err(|e| format!("cannot read code at {addr:#x}: {e}"))?;
        if orig[0] == 0xcc {
            return Err(format!("code at {addr:#x} already starts with int3"));
        }
        let tramp = self.tramp_slot(tid, addr).map_err(|e| e.to_string())?;
        let (code, _) = codegen::trampoline(&orig, addr, tramp).map_err(|e| e.to_string())?;
        self.mem
            .write(tramp, &code)
            .map_err(|e| format!("cannot write trampoline at {tramp:#x}: {e}"))?;
        let bp = Breakpoint {
            kind,
            tramp,
            orig: orig[0],
        };
        // The trap table learns of the breakpoint before the code does: a recorder killed
        // in between must not leave an `int3` the SIGTRAP handler cannot explain.
        self.bps.insert(addr, bp);
        if let Err(e) = self.append_trap_entry(addr, &bp) {
            self.bps.remove(&addr);
            return Err(e.to_string());
        }
        if let Err(e) = self.mem.write(addr, &[0xcc]) {
            self.bps.remove(&addr);
            let _ = self.sync_trap_table();
            return Err(format!("cannot write breakpoint at {addr:#x}: {e}"));
        }
        Ok(())
    }

    /// Puts back every byte a breakpoint replaced, so that the process can run untraced.
    /// Injected regions stay: return stubs still on its stacks work without a tracer.
    pub fn remove_breakpoints(&mut self) -> Result<(), SpaceError> {
        for (&addr, bp) in &self.bps {
            self.mem
                .write(addr, &[bp.orig])
                .map_err(io_err(format!("restore code at {addr:#x}")))?;
        }
        self.bps.clear();
        self.sync_trap_table()
    }

    /// Rewrites the trap table of the primary region from the breakpoint map: entries
    /// first, then the count, so a handler running meanwhile never reads a torn entry.
    fn sync_trap_table(&mut self) -> Result<(), SpaceError> {
        let Some(base) = self.primary() else {
            return Ok(());
        };
        let mut bps: Vec<(&u64, &Breakpoint)> = self.bps.iter().collect();
        bps.sort_by_key(|(a, _)| **a);
        bps.truncate(codegen::TABLE_CAP as usize);
        let mut table = Vec::with_capacity(bps.len() * codegen::TABLE_ENTRY as usize);
        for (addr, bp) in &bps {
            table.extend_from_slice(&addr.to_le_bytes());
            table.extend_from_slice(&bp.tramp.to_le_bytes());
            table.extend_from_slice(&u64::from(bp.orig).to_le_bytes());
        }
        self.mem
            .write(base + codegen::TABLE_ENTRIES_OFF, &table)
            .map_err(io_err("write the trap table"))?;
        self.mem
            .write(base + codegen::TABLE_OFF, &(bps.len() as u64).to_le_bytes())
            .map_err(io_err("write the trap table"))
    }

    /// Adds the newest breakpoint to the trap table (entry, then count).
    fn append_trap_entry(&mut self, addr: u64, bp: &Breakpoint) -> Result<(), SpaceError> {
        let Some(base) = self.primary() else {
            return Ok(());
        };
        let n = self.bps.len() as u64 - 1;
        if n >= codegen::TABLE_CAP {
            return Ok(());
        }
        let mut e = [0u8; codegen::TABLE_ENTRY as usize];
        e[0..8].copy_from_slice(&addr.to_le_bytes());
        e[8..16].copy_from_slice(&bp.tramp.to_le_bytes());
        e[16..24].copy_from_slice(&u64::from(bp.orig).to_le_bytes());
        let at = base + codegen::TABLE_ENTRIES_OFF + n * codegen::TABLE_ENTRY;
        self.mem
            .write(at, &e)
            .map_err(io_err("write the trap table"))?;
        self.mem
            .write(base + codegen::TABLE_OFF, &(n + 1).to_le_bytes())
            .map_err(io_err("write the trap table"))
    }

    /// Finds regions an earlier rltrace left when it was killed while attached (their
    /// trap tables still emulate its breakpoints) and puts back the code bytes under those
    /// breakpoints. The regions stay mapped: return stubs of calls then in progress may
    /// still be on stacks. Returns how many breakpoints were undone.
    pub fn adopt_leftovers(&mut self) -> Result<usize, SpaceError> {
        let maps = procfs::read_maps(self.pid).map_err(io_err("read maps"))?;
        let mut undone = 0;
        for m in &maps {
            if !m.exec || m.write || m.is_file() || m.end - m.start != codegen::DATA_OFF {
                continue;
            }
            let mut head = [0u8; 16];
            if self.mem.read(m.start, &mut head).is_err()
                || head[..3] != codegen::GADGET
                || head[codegen::RESTORER_OFF as usize..][..codegen::RESTORER.len()]
                    != codegen::RESTORER
            {
                continue;
            }
            let n = self
                .read_u64(m.start + codegen::TABLE_OFF, "read a leftover trap table")?
                .min(codegen::TABLE_CAP) as usize;
            let mut table = vec![0u8; n * codegen::TABLE_ENTRY as usize];
            self.mem
                .read(m.start + codegen::TABLE_ENTRIES_OFF, &mut table)
                .map_err(io_err("read a leftover trap table"))?;
            for e in table.chunks_exact(codegen::TABLE_ENTRY as usize) {
                let word = |i: usize| {
                    let mut w = [0u8; 8];
                    w.copy_from_slice(&e[i * 8..i * 8 + 8]);
                    u64::from_le_bytes(w)
                };
                let (addr, orig) = (word(0), word(2) as u8);
                let mut cur = [0u8; 1];
                if self.mem.read(addr, &mut cur).is_ok() && cur[0] == 0xcc && orig != 0xcc {
                    self.mem
                        .write(addr, &[orig])
                        .map_err(io_err(format!("restore code at {addr:#x}")))?;
                    undone += 1;
                }
            }
            self.mem
                .write(m.start + codegen::TABLE_OFF, &0u64.to_le_bytes())
                .map_err(io_err("clear a leftover trap table"))?;
            self.leftovers.push(m.start);
        }
        Ok(undone)
    }

    /// Reads the process's SIGTRAP action into the tracee buffer at `buf` (32 bytes) and
    /// returns its handler address.
    fn sigtrap_handler(&mut self, tid: u32, buf: u64) -> Result<u64, SpaceError> {
        let sig = libc::SIGTRAP as u64;
        self.remote_syscall(
            tid,
            libc::SYS_rt_sigaction,
            [sig, 0, buf, 8, 0, 0],
            "rt_sigaction",
        )?;
        self.read_u64(buf, "read the SIGTRAP action")
    }

    /// Sets the process's SIGTRAP action from the tracee buffer at `buf` (32 bytes).
    fn set_sigtrap_action(&mut self, tid: u32, buf: u64) -> Result<(), SpaceError> {
        let sig = libc::SIGTRAP as u64;
        self.remote_syscall(
            tid,
            libc::SYS_rt_sigaction,
            [sig, buf, 0, 8, 0, 0],
            "rt_sigaction",
        )?;
        Ok(())
    }

    /// Installs the region's SIGTRAP handler on stopped thread `tid`, so breakpoints left
    /// behind by a recorder that dies are emulated rather than fatal. Returns false, and
    /// installs nothing, if the program has a SIGTRAP action of its own.
    pub fn install_trap_handler(&mut self, tid: u32) -> Result<bool, SpaceError> {
        let Some(base) = self.primary() else {
            return Ok(false);
        };
        let old = base + codegen::SIGACT_OLD_OFF;
        let new = base + codegen::SIGACT_NEW_OFF;
        let cur = self.sigtrap_handler(tid, old)?;
        if let Some(&lb) = self
            .leftovers
            .iter()
            .find(|&&b| cur == b + codegen::HANDLER_OFF)
        {
            // A killed rltrace's handler: the program's own action is the one it saved.
            let mut saved = [0u8; 32];
            self.mem
                .read(lb + codegen::SIGACT_OLD_OFF, &mut saved)
                .map_err(io_err("read a leftover SIGTRAP action"))?;
            self.mem
                .write(old, &saved)
                .map_err(io_err("write the SIGTRAP action"))?;
            if saved[..8] != (libc::SIG_DFL as u64).to_le_bytes() {
                self.set_sigtrap_action(tid, old)?;
                return Ok(false);
            }
        } else if cur != libc::SIG_DFL as u64 {
            return Ok(false);
        }
        self.mem
            .write(new, &codegen::handler_sigaction(base))
            .map_err(io_err("write the SIGTRAP action"))?;
        self.set_sigtrap_action(tid, new)?;
        self.trap_handler = true;
        Ok(true)
    }

    /// Puts the program's SIGTRAP action back, unless the program replaced ours meanwhile.
    pub fn restore_trap_handler(&mut self, tid: u32) -> Result<(), SpaceError> {
        let Some(base) = self.primary().filter(|_| self.trap_handler) else {
            return Ok(());
        };
        let new = base + codegen::SIGACT_NEW_OFF;
        let old = base + codegen::SIGACT_OLD_OFF;
        if self.sigtrap_handler(tid, new)? == base + codegen::HANDLER_OFF {
            self.set_sigtrap_action(tid, old)?;
        }
        self.trap_handler = false;
        Ok(())
    }

    /// The function id of the alias at breakpoint `addr` that the call returning to `ra`
    /// made, if `addr` has aliases and the call site tells which (not when `ra` is a
    /// return stub: a tail call from a traced function).
    pub fn alias_at(&self, addr: u64, ra: u64) -> Option<u32> {
        let aliases = self.aliases.get(&addr)?;
        if self.in_region(ra) {
            return None;
        }
        let mut before = [0u8; 6];
        self.mem.read(ra.checked_sub(6)?, &mut before).ok()?;
        alias_called(aliases, call_site(before, ra)?)
    }

    /// Reads one 64-bit word of the tracee's memory; `what` names it in the error.
    pub fn read_u64(&self, addr: u64, what: &str) -> Result<u64, SpaceError> {
        let mut b = [0u8; 8];
        self.mem.read(addr, &mut b).map_err(io_err(what))?;
        Ok(u64::from_le_bytes(b))
    }

    /// Is `addr` inside an injected region?
    pub fn in_region(&self, addr: u64) -> bool {
        self.regions
            .iter()
            .any(|r| (r.base..r.base + REGION_LEN).contains(&addr))
    }

    /// Puts a still-running call's real return address back on its stack, in place of its
    /// stub's address. Returns false if the stub's address is not where the call left it.
    pub fn unhook_return(&mut self, entry_rsp: u64, slot_i: u32) -> Result<bool, SpaceError> {
        if self.read_u64(entry_rsp, "read the stack")? != self.stub_addr(slot_i) {
            return Ok(false);
        }
        // The address the stub would have jumped to: the caller, or an outer call's stub
        // (a traced function tail-calling another), unhooked in its turn.
        let ra = self.read_u64(self.slot_addr(slot_i) + slot::RETADDR, "read a return slot")?;
        self.mem
            .write(entry_rsp, &ra.to_le_bytes())
            .map_err(io_err(format!("write the stack at {entry_rsp:#x}")))?;
        Ok(true)
    }

    /// Unmaps every injected region, with system calls run on stopped thread `tid` (whose
    /// `rip` must not be inside one). Breakpoints must be gone and no stub referenced.
    pub fn unmap_regions(&mut self, tid: u32) -> Result<(), SpaceError> {
        let regions = std::mem::take(&mut self.regions);
        for r in &regions {
            // With no region left, remote_syscall borrows the code at the thread's rip.
            self.remote_syscall(
                tid,
                libc::SYS_munmap,
                [r.base, REGION_LEN, 0, 0, 0, 0],
                "munmap",
            )?;
        }
        Ok(())
    }

    /// Reads `/proc/PID/maps` and returns modules that appeared and the ids of those that
    /// vanished; the caller records them and registers the new ones.
    pub fn scan_modules(&mut self) -> Result<(Vec<NewModule>, Vec<u32>), SpaceError> {
        let maps = procfs::read_maps(self.pid).map_err(io_err("read maps"))?;
        let mut present: BTreeMap<u64, (u64, &Mapping)> = BTreeMap::new();
        // A module is the run of mappings of one file; it counts if any of them is code.
        let mut i = 0;
        while i < maps.len() {
            let m = &maps[i];
            if !m.is_file() {
                i += 1;
                continue;
            }
            let mut j = i;
            let mut exec = false;
            let mut end = m.end;
            while j < maps.len() && maps[j].dev_inode == m.dev_inode && maps[j].path == m.path {
                exec |= maps[j].exec;
                end = maps[j].end;
                j += 1;
            }
            if exec {
                present.insert(m.start, (end, m));
            }
            i = j;
        }
        let gone: Vec<u64> = self
            .modules
            .iter()
            .filter(|(start, lm)| {
                present
                    .get(start)
                    .is_none_or(|(_, m)| m.dev_inode != lm.dev_inode)
            })
            .map(|(s, _)| *s)
            .collect();
        let mut removed = Vec::new();
        for start in gone {
            if let Some(lm) = self.modules.remove(&start) {
                self.unwinder.remove_module(start);
                self.bps.retain(|a, _| !(start..lm.end).contains(a));
                removed.push(lm.id);
            }
        }
        if !removed.is_empty() {
            self.sync_trap_table()?;
        }
        let mut added = Vec::new();
        for (start, (end, m)) in present {
            if self.modules.contains_key(&start) {
                continue;
            }
            let elf = match ElfInfo::open(&m.map_file(self.pid))
                .or_else(|_| ElfInfo::open(Path::new(&m.path)))
            {
                Ok(e) => e,
                Err(_) => continue,
            };
            let Some(bias) = elf.bias(m.start, m.offset) else {
                continue;
            };
            added.push(NewModule {
                start,
                end,
                path: m.path.clone(),
                elf,
                bias,
                dev_inode: m.dev_inode.clone(),
            });
        }
        Ok((added, removed))
    }

    /// Makes a recorded module known to the unwinder and the address resolver.
    pub fn register_module(&mut self, id: u32, m: &NewModule) {
        self.unwinder
            .add_module(m.path.clone(), m.start..m.end, m.bias, m.elf.unwind_info());
        self.modules.insert(
            m.start,
            LoadedModule {
                id,
                end: m.end,
                bias: m.bias,
                dev_inode: m.dev_inode.clone(),
            },
        );
    }

    /// Forgets every module and breakpoint (the image was replaced by exec).
    pub fn clear(&mut self) -> Vec<u32> {
        self.bps.clear();
        self.register_frame = None;
        self.stubs_described = false;
        self.unwinder = StackUnwinder::default();
        std::mem::take(&mut self.modules)
            .into_values()
            .map(|m| m.id)
            .collect()
    }

    /// Resolves an absolute address to a module-relative frame.
    pub fn frame(&self, addr: u64) -> Frame {
        match self.modules.range(..=addr).next_back() {
            Some((_, m)) if addr < m.end => Frame {
                module: Some(m.id),
                addr: addr.wrapping_sub(m.bias),
            },
            _ => Frame { module: None, addr },
        }
    }

    /// Initial slot contents for a call: real return address, the address the stub
    /// dereferences, the "still running" sequence marker, and a cleared done byte.
    pub fn slot_init(&self, i: u32, retaddr: u64, out_ptr: Option<u64>) -> [u8; slot::INIT_LEN] {
        let s = self.slot_addr(i);
        let mut b = [0u8; slot::INIT_LEN];
        b[0..8].copy_from_slice(&retaddr.to_le_bytes());
        b[8..16].copy_from_slice(&out_ptr.unwrap_or(s + slot::ARG).to_le_bytes());
        b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        b
    }
}

impl Space {
    /// Unwinds a thread stopped at `pc` from a copy of its stack starting at `sp`. Stub
    /// addresses found on the stack are replaced by the return addresses they stand for.
    pub fn unwind(
        &mut self,
        pc: u64,
        sp: u64,
        bp: u64,
        max: usize,
        stack: &[u8],
        out: &mut Vec<u64>,
    ) -> Unwound {
        let primary = self.primary();
        let slot_retaddr = &self.slot_retaddr;
        let hi = sp + stack.len() as u64;
        let mut overran = false;
        let mut deepest = 0u64;
        let mut read = |addr: u64| -> Result<u64, ()> {
            if addr < sp || addr.saturating_add(8) > hi {
                overran |= addr >= hi;
                return Err(());
            }
            deepest = deepest.max(addr + 8 - sp);
            let o = (addr - sp) as usize;
            let mut w = [0u8; 8];
            w.copy_from_slice(&stack[o..o + 8]);
            let v = u64::from_le_bytes(w);
            Ok(match primary.and_then(|b| v.checked_sub(b + STUB_OFF)) {
                Some(off) if off % STUB_SIZE == 0 && off / STUB_SIZE < SLOTS => {
                    slot_retaddr[(off / STUB_SIZE) as usize]
                }
                _ => v,
            })
        };
        let complete = self.unwinder.unwind(pc, sp, bp, max, &mut read, out);
        Unwound {
            complete,
            overran,
            used: deepest as usize,
        }
    }
}

impl Space {
    /// The stack of a thread stopped at instruction `pc` (not at a function's entry: a
    /// fault, a system call), that instruction first: at most `max` frames. `ras` is
    /// scratch space.
    pub fn frames_at(
        &mut self,
        pc: u64,
        sp: u64,
        bp: u64,
        max: usize,
        stack: &[u8],
        ras: &mut Vec<u64>,
    ) -> Vec<Frame> {
        ras.clear();
        self.unwind(pc, sp, bp, max.saturating_sub(1), stack, ras);
        std::iter::once(pc)
            .chain(ras.iter().copied())
            .map(|a| self.frame(a))
            .collect()
    }
}

/// How an unwind went.
#[derive(Clone, Copy, Debug)]
pub struct Unwound {
    /// The outermost frame was reached.
    pub complete: bool,
    /// The unwinder wanted bytes beyond the copied stack.
    pub overran: bool,
    /// Bytes above the stack pointer the unwinder read.
    pub used: usize,
}

/// A free, page-aligned gap of `len` bytes within `reach` of `near`, closest first.
fn free_gap_near(maps: &[Mapping], near: u64, len: u64, reach: u64) -> Option<u64> {
    let mut best: Option<u64> = None;
    let lo_limit = near.saturating_sub(reach).max(0x10000);
    let hi_limit = near.saturating_add(reach).min(0x7fff_ffff_f000);
    let mut prev_end = lo_limit;
    let mut consider = |gap_start: u64, gap_end: u64| {
        let gs = gap_start.max(lo_limit);
        let ge = gap_end.min(hi_limit);
        if ge <= gs || ge - gs < len {
            return;
        }
        // Take the end of the gap nearest to `near`.
        let cand = if ge <= near {
            (ge - len) & !0xfff
        } else {
            (gs + 0xfff) & !0xfff
        };
        if cand < gs || cand + len > ge {
            return;
        }
        if best.is_none_or(|b| cand.abs_diff(near) < b.abs_diff(near)) {
            best = Some(cand);
        }
    };
    for m in maps {
        if m.start > prev_end {
            consider(prev_end, m.start);
        }
        prev_end = prev_end.max(m.end);
    }
    consider(prev_end, hi_limit);
    best
}

/// Hex form of a build-id, for notes.
pub fn build_id_hex(b: &[u8]) -> String {
    elf::hex(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_site_names_the_alias_called() {
        let ra = 0x1000;
        // call rel32 to 0x2000: E8 and the displacement from the return address.
        let direct = [0x90, 0xe8, 0x00, 0x10, 0x00, 0x00];
        assert_eq!(call_site(direct, ra), Some(CallSite::Direct(0x2000)));
        // call [rip-0x10]: through the slot at 0xff0.
        let indirect = [0xff, 0x15, 0xf0, 0xff, 0xff, 0xff];
        assert_eq!(call_site(indirect, ra), Some(CallSite::Indirect(0xff0)));
        // call rax (FF D0) is no call site the engine can read.
        assert_eq!(call_site([0, 0, 0, 0, 0xff, 0xd0], ra), None);
        let aliases = [
            Alias {
                id: 1,
                plt: Some(0x3000),
                slots: vec![0xfe0],
            },
            Alias {
                id: 2,
                plt: Some(0x2000),
                slots: vec![0xff0],
            },
        ];
        assert_eq!(alias_called(&aliases, CallSite::Direct(0x2000)), Some(2));
        assert_eq!(alias_called(&aliases, CallSite::Indirect(0xfe0)), Some(1));
        assert_eq!(alias_called(&aliases, CallSite::Direct(0x4000)), None);
    }

    fn map(start: u64, end: u64) -> Mapping {
        Mapping {
            start,
            end,
            read: true,
            write: false,
            exec: false,
            offset: 0,
            dev_inode: ("00:00".into(), 0),
            path: String::new(),
        }
    }

    #[test]
    fn gap_is_found_next_to_the_module() {
        let maps = [
            map(0x5555_0000_0000, 0x5555_0010_0000),
            map(0x7f00_0000_0000, 0x7f00_1000_0000),
        ];
        let g = free_gap_near(&maps, 0x5555_0000_1000, 0x10000, 1 << 30).unwrap();
        assert!(g + 0x10000 <= 0x5555_0000_0000 || g >= 0x5555_0010_0000);
        assert!(g.abs_diff(0x5555_0000_1000) < 1 << 30);
    }
}
