//! The process's loaded modules, from `dl_iterate_phdr`, and in-process DWARF CFI
//! unwinding over their mapped `.eh_frame` sections with framehop.

use std::cell::UnsafeCell;
use std::ffi::CStr;
use std::ops::{Deref, Range};

use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder};

use crate::stackcache::ReadLog;
use crate::sync::RwSpin;

/// A byte range of a loaded module, valid while the module stays mapped.
#[derive(Clone)]
pub struct MemSlice {
    ptr: *const u8,
    len: usize,
}

// SAFETY: the bytes are read-only mapped module contents.
unsafe impl Send for MemSlice {}
// SAFETY: as above.
unsafe impl Sync for MemSlice {}

impl Default for MemSlice {
    fn default() -> Self {
        MemSlice {
            ptr: std::ptr::NonNull::dangling().as_ptr(),
            len: 0,
        }
    }
}

impl Deref for MemSlice {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr/len describe part of a PT_LOAD segment of a module that is loaded
        // (or, for the default, an empty slice at a dangling, aligned pointer):
        // modules leave the unwinder (under the write lock) before `dlclose` returns.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// A loaded module as the recorder needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleInfo {
    /// Load bias.
    pub bias: u64,
    /// Lowest mapped address.
    pub start: u64,
    /// End of the highest segment.
    pub end: u64,
    /// GNU build id.
    pub build_id: Vec<u8>,
    /// File path.
    pub path: Vec<u8>,
}

struct State {
    modules: Vec<ModuleInfo>,
    unwinder: UnwinderX86_64<MemSlice>,
    /// Address range of the agent itself, whose frames are left out of stacks.
    own: Range<u64>,
}

struct Shared(UnsafeCell<Option<State>>);
// SAFETY: every access goes through LOCK (shared for unwinding, exclusive for changes).
unsafe impl Sync for Shared {}

static STATE: Shared = Shared(UnsafeCell::new(None));
/// Guards [`STATE`]; taken by fork's prepare handler too.
pub static LOCK: RwSpin = RwSpin::new();

struct Found {
    info: ModuleInfo,
    section: ExplicitModuleSectionInfo<MemSlice>,
}

/// Re-reads the module list, updates the unwinder, and returns the list if it changed.
pub fn rescan(exe: &[u8]) -> Option<Vec<ModuleInfo>> {
    let mut adds: u64 = 0;
    // SAFETY: as in `loads_changed`; read before the scan, so a load during it is seen
    // by the next check.
    unsafe {
        libc::dl_iterate_phdr(Some(first_adds), (&mut adds as *mut u64).cast());
    }
    LOADS.store(adds, std::sync::atomic::Ordering::Release);
    let mut found: Vec<Found> = Vec::new();
    // SAFETY: the callback only reads the phdr array dl_iterate_phdr hands it, for the
    // duration of the call; `found` outlives the call.
    unsafe {
        libc::dl_iterate_phdr(Some(collect), (&mut found as *mut Vec<Found>).cast());
    }
    for f in &mut found {
        if f.info.path.is_empty() {
            f.info.path = exe.to_vec();
        }
    }
    found.retain(|f| f.info.path.first() == Some(&b'/'));
    LOCK.write();
    // SAFETY: exclusive hold of LOCK.
    let st = unsafe { &mut *STATE.0.get() };
    let st = st.get_or_insert_with(|| State {
        modules: Vec::new(),
        unwinder: UnwinderX86_64::new(),
        own: own_range(&found),
    });
    let new: Vec<ModuleInfo> = found.iter().map(|f| f.info.clone()).collect();
    let changed = new != st.modules;
    if changed {
        for old in &st.modules {
            if !new.contains(old) {
                st.unwinder.remove_module(old.start);
            }
        }
        for f in found {
            if !st.modules.contains(&f.info) {
                let name = String::from_utf8_lossy(&f.info.path).into_owned();
                st.unwinder.add_module(Module::new(
                    name,
                    f.info.start..f.info.end,
                    f.info.bias,
                    f.section,
                ));
            }
        }
        st.modules = new.clone();
        GENERATION.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }
    LOCK.write_unlock();
    changed.then_some(new)
}

/// Bumped whenever the module list changes: cached unwinds of an older list are stale.
static GENERATION: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// The module list's generation (see [`crate::stackcache`]).
pub fn generation() -> u32 {
    GENERATION.load(std::sync::atomic::Ordering::Acquire)
}

/// The loader's count of objects ever added, at the last scan.
static LOADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// True if objects were loaded since the last scan (cheap: reads one counter through
/// `dl_iterate_phdr`, stopping at the first object).
pub fn loads_changed() -> bool {
    let mut adds: u64 = 0;
    // SAFETY: the callback writes one u64 through the pointer it is given.
    unsafe {
        libc::dl_iterate_phdr(Some(first_adds), (&mut adds as *mut u64).cast());
    }
    adds != LOADS.load(std::sync::atomic::Ordering::Acquire)
}

unsafe extern "C" fn first_adds(
    info: *mut libc::dl_phdr_info,
    _size: usize,
    data: *mut libc::c_void,
) -> libc::c_int {
    // SAFETY: dl_iterate_phdr passes a valid info and our pointer to a u64.
    unsafe { *data.cast::<u64>() = (*info).dlpi_adds };
    1
}

/// The current module list.
pub fn snapshot() -> Vec<ModuleInfo> {
    LOCK.read();
    // SAFETY: shared hold of LOCK; only rescan mutates, under the exclusive hold.
    let v = unsafe { (*STATE.0.get()).as_ref().map(|s| s.modules.clone()) };
    LOCK.read_unlock();
    v.unwrap_or_default()
}

/// The agent's own address range, as the last scan found it (empty before any scan).
pub fn own() -> Range<u64> {
    LOCK.read();
    // SAFETY: shared hold of LOCK; only rescan mutates, under the exclusive hold.
    let r = unsafe { (*STATE.0.get()).as_ref().map(|s| s.own.clone()) };
    LOCK.read_unlock();
    r.unwrap_or(0..0)
}

fn own_range(found: &[Found]) -> Range<u64> {
    let me = own_range as *const () as u64;
    found
        .iter()
        .find(|f| (f.info.start..f.info.end).contains(&me))
        .map(|f| f.info.start..f.info.end)
        .unwrap_or(0..0)
}

unsafe extern "C" fn collect(
    info: *mut libc::dl_phdr_info,
    _size: usize,
    data: *mut libc::c_void,
) -> libc::c_int {
    // SAFETY: dl_iterate_phdr passes a valid info and our `data` pointer.
    let (info, found) = unsafe { (&*info, &mut *data.cast::<Vec<Found>>()) };
    if info.dlpi_phdr.is_null() {
        return 0;
    }
    // SAFETY: dlpi_phdr points at dlpi_phnum program headers of a loaded module.
    let phdrs = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) };
    let bias = info.dlpi_addr;
    let path = if info.dlpi_name.is_null() {
        Vec::new()
    } else {
        // SAFETY: dlpi_name is a NUL-terminated string owned by the loader.
        unsafe { CStr::from_ptr(info.dlpi_name) }
            .to_bytes()
            .to_vec()
    };
    let mut lo = u64::MAX;
    let mut hi = 0u64;
    let mut text: Option<Range<u64>> = None;
    let mut hdr: Option<Range<u64>> = None;
    let mut build_id = Vec::new();
    for p in phdrs {
        match p.p_type {
            libc::PT_LOAD => {
                lo = lo.min(p.p_vaddr & !0xfff);
                hi = hi.max((p.p_vaddr + p.p_memsz + 0xfff) & !0xfff);
                if p.p_flags & libc::PF_X != 0 {
                    text = Some(p.p_vaddr..p.p_vaddr + p.p_memsz);
                }
            }
            libc::PT_GNU_EH_FRAME => hdr = Some(p.p_vaddr..p.p_vaddr + p.p_memsz),
            libc::PT_NOTE if build_id.is_empty() => {
                build_id = note_build_id(bias + p.p_vaddr, p.p_memsz);
            }
            _ => {}
        }
    }
    if lo >= hi {
        return 0;
    }
    let slice = |r: &Range<u64>| MemSlice {
        ptr: (bias + r.start) as *const u8,
        len: (r.end - r.start) as usize,
    };
    let mut section = ExplicitModuleSectionInfo::<MemSlice>::default();
    if let Some(t) = &text {
        section.text_segment_svma = Some(t.clone());
        section.text_segment = Some(slice(t));
    }
    if let Some(h) = &hdr {
        if let Some(eh) = eh_frame_range(bias, h, phdrs) {
            section.eh_frame_svma = Some(eh.clone());
            section.eh_frame = Some(slice(&eh));
        }
        section.eh_frame_hdr_svma = Some(h.clone());
        section.eh_frame_hdr = Some(slice(h));
    }
    found.push(Found {
        info: ModuleInfo {
            bias,
            start: bias + lo,
            end: bias + hi,
            build_id,
            path,
        },
        section,
    });
    0
}

/// `.eh_frame`'s stated range: from the pointer in `.eh_frame_hdr` to the end of the
/// segment holding it (the section's own size is not recorded in program headers).
fn eh_frame_range(bias: u64, hdr: &Range<u64>, phdrs: &[libc::Elf64_Phdr]) -> Option<Range<u64>> {
    if hdr.end - hdr.start < 8 {
        return None;
    }
    let at = (bias + hdr.start) as *const u8;
    // SAFETY: the header lies in a loaded segment and is at least 8 bytes long.
    let (version, enc, field) =
        unsafe { (*at, *at.add(1), at.add(4).cast::<i32>().read_unaligned()) };
    // Version 1 with a pc-relative signed 4-byte pointer is what every linker writes.
    if version != 1 || enc != 0x1b {
        return None;
    }
    let start = (hdr.start + 4).wrapping_add(field as i64 as u64);
    let seg = phdrs.iter().find(|p| {
        p.p_type == libc::PT_LOAD && (p.p_vaddr..p.p_vaddr + p.p_memsz).contains(&start)
    })?;
    Some(start..seg.p_vaddr + seg.p_filesz.min(seg.p_memsz))
}

fn note_build_id(addr: u64, len: u64) -> Vec<u8> {
    let mut off = 0u64;
    while off + 12 <= len {
        let p = (addr + off) as *const u32;
        // SAFETY: the note header lies inside the PT_NOTE segment (checked against len).
        let (namesz, descsz, kind) = unsafe {
            (
                p.read_unaligned() as u64,
                p.add(1).read_unaligned() as u64,
                p.add(2).read_unaligned(),
            )
        };
        let name_at = off + 12;
        let desc_at = name_at + ((namesz + 3) & !3);
        let next = desc_at + ((descsz + 3) & !3);
        if next > len {
            break;
        }
        if kind == 3 && namesz == 4 && descsz <= 64 {
            // SAFETY: name and descriptor lie inside the segment (next <= len).
            let (name, desc) = unsafe {
                (
                    std::slice::from_raw_parts((addr + name_at) as *const u8, 4),
                    std::slice::from_raw_parts((addr + desc_at) as *const u8, descsz as usize),
                )
            };
            if name == b"GNU\0" {
                return desc.to_vec();
            }
        }
        off = next;
    }
    Vec::new()
}

/// Where the ptrace engine's return stubs are, in a run it records too (written by it: see
/// `wire::PTRACE_REGION_SYMBOL`); 0 otherwise.
#[no_mangle]
pub static RLTRACE_PTRACE_REGION: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(0);
use RLTRACE_PTRACE_REGION as PTRACE_REGION;

/// The real return address of a call the ptrace engine redirected to stub `ra` of its
/// region at `base`.
fn stub_return(base: u64, ra: u64) -> Option<u64> {
    let slot = rltrace_wire::region::retaddr_slot(base, ra)?;
    // The region is the tracer's mapping, but read only where a mapping is.
    let (lo, hi) = crate::stacks::bounds(slot)?;
    if slot < lo || slot.saturating_add(8) > hi {
        return None;
    }
    // SAFETY: 8-aligned (slots are 64-byte aligned in a page-aligned region) and inside a
    // readable mapping, which the tracer keeps for the process's life.
    Some(unsafe { (slot as *const u64).read_volatile() })
}

/// Unwinds from the given registers of the calling thread, whose stack is `stack`, and
/// writes up to `out.len()` return addresses outside the agent; returns how many, and
/// whether the last one (or `pc`, if none) lies in a known module. Every stack word read
/// goes into `log`.
pub fn capture(
    pc: u64,
    sp: u64,
    bp: u64,
    stack: &Range<u64>,
    cache: &mut CacheX86_64,
    out: &mut [u64],
    log: &mut ReadLog,
) -> (usize, bool) {
    log.clear();
    let mut read = |addr: u64| -> Result<u64, ()> {
        if addr.is_multiple_of(8) && addr >= stack.start && addr.saturating_add(8) <= stack.end {
            // SAFETY: the address is 8-aligned and inside this thread's own mapped stack.
            let v = unsafe { (addr as *const u64).read() };
            log.push(addr, v);
            Ok(v)
        } else {
            Err(())
        }
    };
    LOCK.read();
    // SAFETY: shared hold of LOCK.
    let n = match unsafe { (*STATE.0.get()).as_ref() } {
        Some(st) => {
            let mut regs = UnwindRegsX86_64::new(pc, sp, bp);
            let mut address = FrameAddress::from_instruction_pointer(pc);
            let region = PTRACE_REGION.load(std::sync::atomic::Ordering::Relaxed);
            let mut n = 0;
            let mut redirected = false;
            while n < out.len() {
                let Ok(Some(mut ra)) = st
                    .unwinder
                    .unwind_frame(address, &mut regs, cache, &mut read)
                else {
                    break;
                };
                if region != 0 {
                    if let Some(real) = stub_return(region, ra) {
                        ra = real;
                        redirected = true;
                    }
                }
                let Some(next) = FrameAddress::from_return_address(ra) else {
                    break;
                };
                address = next;
                // The hook's own frames, and the `main` wrapper further out.
                if st.own.contains(&ra) {
                    continue;
                }
                out[n] = ra;
                n += 1;
            }
            let last = if n == 0 { pc } else { out[n - 1] };
            // A stack through a stub is not reused: the stub's slot is another call's next
            // time, while the stack words read stay the same.
            let known = st.modules.iter().any(|m| (m.start..m.end).contains(&last)) && !redirected;
            (n, known)
        }
        None => (0, true),
    };
    // Read under the lock: the list this unwind used.
    log.generation = generation();
    LOCK.read_unlock();
    n
}
