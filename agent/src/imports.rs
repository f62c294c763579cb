//! Tracing every call the main executable makes into shared libraries, as ltrace does:
//! each of its GOT slots that holds an imported function (`JUMP_SLOT` and `GLOB_DAT`
//! relocations alike, so Rust, `-z now` and `-fno-plt` binaries are covered, which PLT
//! breakpoints miss) is pointed at a 16-byte stub that enters [`trampoline`] with the
//! import's number. The trampoline records the entry, calls the real function in a frame
//! of its own and records the return.
//!
//! The frame is a real one with CFI, so exceptions, forced unwinding (`pthread_cancel`)
//! and `longjmp` pass through it; stack arguments (up to 16 of them: the 7th integer
//! argument on, and varargs) are copied into it. A call that never returns (unwound past,
//! longjmp'ed over) is noticed at the thread's next traced call from an outer frame and
//! recorded as "never returned".
//!
//! Calls made inside libraries, and through pointers from `dlsym`, do not pass through
//! the executable's GOT and are not seen here (the allocator family is interposed and
//! seen everywhere); `-x` with the ptrace engine hooks function entries instead.

use std::ffi::c_void;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use rltrace_wire as wire;
use rltrace_wire::protos::{self, Proto};

/// One traced import.
pub struct Hook {
    /// Symbol name.
    pub name: Vec<u8>,
    /// The function the GOT held (IFUNCs already resolved by the loader).
    pub target: u64,
    /// Built-in prototype, if any.
    pub proto: Option<&'static Proto>,
}

static HOOKS: AtomicPtr<Hook> = AtomicPtr::new(std::ptr::null_mut());
static HOOK_COUNT: AtomicUsize = AtomicUsize::new(0);

/// The traced imports, numbered as the stubs number them.
pub fn hooks() -> &'static [Hook] {
    let p = HOOKS.load(Ordering::Acquire);
    if p.is_null() {
        return &[];
    }
    // SAFETY: set once by `install` from a leaked boxed slice of this length, never freed.
    unsafe { std::slice::from_raw_parts(p, HOOK_COUNT.load(Ordering::Acquire)) }
}

/// Imports never redirected: [`wire::import_skipped`].
fn skipped(name: &str) -> bool {
    wire::import_skipped(name)
}

const DT_NULL: i64 = 0;
const DT_PLTRELSZ: i64 = 2;
const DT_STRTAB: i64 = 5;
const DT_SYMTAB: i64 = 6;
const DT_RELA: i64 = 7;
const DT_RELASZ: i64 = 8;
const DT_STRSZ: i64 = 10;
const DT_PLTREL: i64 = 20;
const DT_JMPREL: i64 = 23;
const DT_VERSYM: i64 = 0x6fff_fff0;
const DT_VERNEED: i64 = 0x6fff_fffe;
const DT_VERNEEDNUM: i64 = 0x6fff_ffff;
const R_X86_64_GLOB_DAT: u32 = 6;
const R_X86_64_JUMP_SLOT: u32 = 7;
const STT_FUNC: u8 = 2;
const STT_GNU_IFUNC: u8 = 10;

/// What `dl_iterate_phdr` says about the main executable.
#[derive(Default)]
struct Exe {
    bias: u64,
    dynamic: u64,
    relro: Option<(u64, u64)>,
    span: (u64, u64),
}

unsafe extern "C" fn first_object(
    info: *mut libc::dl_phdr_info,
    _: usize,
    data: *mut c_void,
) -> i32 {
    // SAFETY: dl_iterate_phdr passes a valid info (whose phdr array has dlpi_phnum
    // entries) and our pointer to an Exe.
    let (info, exe) = unsafe { (&*info, &mut *data.cast::<Exe>()) };
    exe.bias = info.dlpi_addr;
    let mut lo = u64::MAX;
    let mut hi = 0;
    for i in 0..info.dlpi_phnum as usize {
        // SAFETY: i < dlpi_phnum.
        let ph = unsafe { &*info.dlpi_phdr.add(i) };
        let start = info.dlpi_addr.wrapping_add(ph.p_vaddr);
        match ph.p_type {
            libc::PT_DYNAMIC => exe.dynamic = start,
            libc::PT_GNU_RELRO => exe.relro = Some((start, start + ph.p_memsz)),
            libc::PT_LOAD => {
                lo = lo.min(start);
                hi = hi.max(start + ph.p_memsz);
            }
            _ => {}
        }
    }
    exe.span = (lo, hi);
    1 // the first object is the main program: stop
}

/// Reads a value of type `T` at `addr` in this process.
///
/// # Safety
/// `addr` must point to a readable, initialised `T` (the loader's own tables here).
unsafe fn read<T: Copy>(addr: u64) -> T {
    // SAFETY: the caller's contract.
    unsafe { (addr as *const T).read_unaligned() }
}

/// A NUL-terminated string in the executable's string table, bounded by its size.
///
/// # Safety
/// `strtab..strtab+strsz` must be the mapped string table.
unsafe fn string(strtab: u64, strsz: u64, off: u64) -> &'static [u8] {
    if off >= strsz {
        return &[];
    }
    // SAFETY: off < strsz, inside the table; the loop stops at its end.
    unsafe {
        let p = (strtab + off) as *const u8;
        let max = (strsz - off) as usize;
        let mut n = 0;
        while n < max && *p.add(n) != 0 {
            n += 1;
        }
        std::slice::from_raw_parts(p, n)
    }
}

/// The version name the executable requires for version index `idx`, from `DT_VERNEED`.
///
/// # Safety
/// The dynamic tables must be the loader's (mapped, well formed).
unsafe fn needed_version(
    verneed: u64,
    count: u64,
    idx: u16,
    strtab: u64,
    strsz: u64,
) -> Option<&'static [u8]> {
    let mut vn = verneed;
    for _ in 0..count.min(1024) {
        // SAFETY: Elf64_Verneed: vn_version u16, vn_cnt u16, vn_file u32, vn_aux u32,
        // vn_next u32, inside the loader's mapped tables.
        let (cnt, aux, next) = unsafe {
            (
                read::<u16>(vn + 2),
                read::<u32>(vn + 8),
                read::<u32>(vn + 12),
            )
        };
        let mut va = vn + aux as u64;
        for _ in 0..cnt.min(1024) {
            // SAFETY: Elf64_Vernaux: vna_hash u32, vna_flags u16, vna_other u16,
            // vna_name u32, vna_next u32.
            let (other, name, vnext) = unsafe {
                (
                    read::<u16>(va + 6),
                    read::<u32>(va + 8),
                    read::<u32>(va + 12),
                )
            };
            if other & 0x7fff == idx {
                // SAFETY: the name is an offset into the string table.
                return Some(unsafe { string(strtab, strsz, name as u64) });
            }
            if vnext == 0 {
                break;
            }
            va += vnext as u64;
        }
        if next == 0 {
            break;
        }
        vn += next as u64;
    }
    None
}

/// One GOT slot to redirect.
struct Slot {
    got: u64,
    hook: usize,
}

/// The imports found, before any slot is redirected.
pub struct Found {
    /// One per imported function, numbered in this order.
    pub hooks: Vec<Hook>,
    slots: Vec<Slot>,
    relro: Option<(u64, u64)>,
}

/// Finds the main executable's imported functions and the GOT slots that hold them. Runs
/// in the agent's constructor, after the loader relocated every object and before the
/// program's own constructors.
pub fn find() -> Option<Found> {
    let mut exe = Exe::default();
    // SAFETY: the callback only reads what dl_iterate_phdr hands it and writes our Exe.
    unsafe { libc::dl_iterate_phdr(Some(first_object), (&mut exe as *mut Exe).cast()) };
    if exe.dynamic == 0 {
        return None; // a static program has no imports (and no agent, normally)
    }
    // glibc relocates the main program's dynamic entries in place; another loader might
    // not, so a value below the load bias is taken as unrelocated.
    let fix = |v: u64| if v < exe.bias { v + exe.bias } else { v };
    let mut tags = [0u64; 24];
    let mut verneed = (0u64, 0u64);
    let mut versym = 0u64;
    let mut at = exe.dynamic;
    for _ in 0..4096 {
        // SAFETY: PT_DYNAMIC of the main program, an array of Elf64_Dyn ended by DT_NULL.
        let (tag, val) = unsafe { (read::<i64>(at), read::<u64>(at + 8)) };
        match tag {
            DT_NULL => break,
            DT_PLTRELSZ | DT_STRTAB | DT_SYMTAB | DT_RELA | DT_RELASZ | DT_STRSZ | DT_PLTREL
            | DT_JMPREL => tags[tag as usize] = val,
            DT_VERSYM => versym = fix(val),
            DT_VERNEED => verneed.0 = fix(val),
            DT_VERNEEDNUM => verneed.1 = val,
            _ => {}
        }
        at += 16;
    }
    let (strtab, symtab, strsz) = (
        fix(tags[DT_STRTAB as usize]),
        fix(tags[DT_SYMTAB as usize]),
        tags[DT_STRSZ as usize],
    );
    if strtab == 0 || symtab == 0 {
        return None;
    }
    let mut tables = Vec::new();
    if tags[DT_RELA as usize] != 0 {
        tables.push((fix(tags[DT_RELA as usize]), tags[DT_RELASZ as usize]));
    }
    // DT_PLTREL 7 is DT_RELA: x86-64 uses RELA only.
    if tags[DT_JMPREL as usize] != 0 && tags[DT_PLTREL as usize] == DT_RELA as u64 {
        tables.push((fix(tags[DT_JMPREL as usize]), tags[DT_PLTRELSZ as usize]));
    }

    let mut hooks: Vec<Hook> = Vec::new();
    let mut by_name: std::collections::HashMap<&'static [u8], usize> = Default::default();
    let mut slots: Vec<Slot> = Vec::new();
    // The names travel in one message, which the recorder bounds.
    let mut name_bytes = 4usize;
    for (table, size) in tables {
        for i in 0..(size / 24).min(1 << 20) {
            let r = table + i * 24;
            // SAFETY: Elf64_Rela entries (offset, info, addend) of the loader's tables.
            let (off, info) = unsafe { (read::<u64>(r), read::<u64>(r + 8)) };
            let (kind, sym) = (info as u32, info >> 32);
            if (kind != R_X86_64_JUMP_SLOT && kind != R_X86_64_GLOB_DAT) || sym == 0 {
                continue;
            }
            let s = symtab + sym * 24;
            // SAFETY: Elf64_Sym: st_name u32, st_info u8, st_other u8, st_shndx u16,
            // st_value u64, st_size u64.
            let (name_off, st_info, shndx) =
                unsafe { (read::<u32>(s), read::<u8>(s + 4), read::<u16>(s + 6)) };
            let ty = st_info & 0xf;
            if shndx != 0 || (ty != STT_FUNC && ty != STT_GNU_IFUNC) {
                continue; // defined here, or not a function (data, copy relocations)
            }
            // SAFETY: the symbol's name offset into the string table.
            let name = unsafe { string(strtab, strsz, name_off as u64) };
            let Ok(text) = std::str::from_utf8(name) else {
                continue;
            };
            if name.is_empty() || name.len() > wire::MAX_NAME || skipped(text) {
                continue;
            }
            let got = fix(off);
            // SAFETY: a GOT slot of the main program, relocated by the loader.
            let value = unsafe { read::<u64>(got) };
            if value == 0 {
                continue; // an unresolved weak reference
            }
            let hook = match by_name.get(name) {
                Some(&h) => h,
                None => {
                    let target = if (exe.span.0..exe.span.1).contains(&value) {
                        // Lazy binding: the slot still points at the PLT. Resolve it the
                        // way the loader would, with the version the program asks for.
                        // SAFETY: the loader's tables; versym has one u16 per symbol.
                        let ver = (versym != 0)
                            .then(|| unsafe { read::<u16>(versym + sym * 2) } & 0x7fff)
                            .filter(|&v| v > 1)
                            .and_then(|v| unsafe {
                                needed_version(verneed.0, verneed.1, v, strtab, strsz)
                            });
                        resolve(name, ver)
                    } else {
                        value
                    };
                    name_bytes += 3 + name.len();
                    // A target inside the program would be its own PLT: never redirected.
                    let own = (exe.span.0..exe.span.1).contains(&target);
                    if target == 0 || own || name_bytes > wire::MAX_MESSAGE {
                        continue;
                    }
                    hooks.push(Hook {
                        name: name.to_vec(),
                        target,
                        proto: protos::lookup(text),
                    });
                    by_name.insert(name, hooks.len() - 1);
                    hooks.len() - 1
                }
            };
            slots.push(Slot { got, hook });
        }
    }
    if hooks.is_empty() || hooks.len() > u16::MAX as usize {
        return None;
    }
    Some(Found {
        hooks,
        slots,
        relro: exe.relro,
    })
}

/// Builds the stubs and points the slots of the imports the recorder chose at them, with
/// the prototypes the user loaded. Returns how many imports are traced.
pub fn install(mut found: Found, chosen: crate::conn::Choice) -> usize {
    let bits = chosen.traced;
    let on = |i: usize| bits.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0);
    for (i, ret, args) in chosen.protos {
        let Some(h) = found.hooks.get_mut(i) else {
            continue;
        };
        // Leaked: a handful per process, alive as long as the stubs.
        let name: &'static str = Box::leak(
            String::from_utf8_lossy(&h.name)
                .into_owned()
                .into_boxed_str(),
        );
        h.proto = Some(Box::leak(Box::new(Proto {
            name,
            args: Box::leak(args.into_boxed_slice()),
            ret,
        })));
    }
    let Some(stubs) = make_stubs(found.hooks.len()) else {
        return 0;
    };
    let traced = (0..found.hooks.len()).filter(|&i| on(i)).count();
    HOOK_COUNT.store(found.hooks.len(), Ordering::Release);
    HOOKS.store(
        Box::leak(found.hooks.into_boxed_slice()).as_mut_ptr(),
        Ordering::Release,
    );
    let slots: Vec<Slot> = found.slots.into_iter().filter(|s| on(s.hook)).collect();
    patch(&slots, stubs, found.relro);
    traced
}

fn resolve(name: &[u8], version: Option<&[u8]>) -> u64 {
    let mut cname = name.to_vec();
    cname.push(0);
    // The agent's own interposers (`_exit`, the `exec` family) carry no symbol version,
    // which a versioned lookup passes over: the loader would bind the program to them.
    // SAFETY: dlsym with a NUL-terminated name.
    let plain = unsafe { libc::dlsym(libc::RTLD_DEFAULT, cname.as_ptr().cast()) };
    if !plain.is_null() && in_agent(plain as u64) {
        return plain as u64;
    }
    // SAFETY: dlsym/dlvsym with NUL-terminated strings. Not RTLD_DEFAULT: in a non-PIE
    // program a function whose address is taken is "defined" by the program at its PLT
    // entry, which jumps through the very slot being redirected (a call would loop). The
    // program's imports bind past it; RTLD_NEXT searches the objects after the agent,
    // which comes right after the program: the libraries (and other preloads).
    let p = unsafe {
        match version {
            Some(v) => {
                let mut cv = v.to_vec();
                cv.push(0);
                libc::dlvsym(libc::RTLD_NEXT, cname.as_ptr().cast(), cv.as_ptr().cast())
            }
            None => libc::dlsym(libc::RTLD_NEXT, cname.as_ptr().cast()),
        }
    };
    p as u64
}

/// True if `addr` lies in the agent: by the module scan's range of it, or else by
/// `dladdr`, which scans an object's whole symbol table for the name (two calls per lazy
/// import took 10 ms of every process start of a program like bash).
fn in_agent(addr: u64) -> bool {
    let own = crate::modules::own();
    if !own.is_empty() {
        return own.contains(&addr);
    }
    same_object(addr, resolve as *const () as u64)
}

/// True if both addresses lie in the same loaded object.
fn same_object(a: u64, b: u64) -> bool {
    let base = |addr: u64| {
        // SAFETY: dladdr only reads the loader's tables; Dl_info is plain data.
        let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
        let ok = unsafe { libc::dladdr(addr as *const c_void, &mut info) } != 0;
        ok.then_some(info.dli_fbase as u64)
    };
    matches!((base(a), base(b)), (Some(x), Some(y)) if x == y)
}

/// Bytes per stub: `endbr64; mov r11d, N; jmp [rip + to_trampoline]`.
const STUB: usize = 16;

/// Maps the stubs, one per import, followed by the trampoline's address they jump through.
fn make_stubs(n: usize) -> Option<u64> {
    let len = n * STUB + 8;
    // SAFETY: a fresh anonymous private mapping, checked below.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if page == libc::MAP_FAILED {
        return None;
    }
    let base = page as u64;
    let slot = base + (n * STUB) as u64;
    let mut code = Vec::with_capacity(len);
    for i in 0..n {
        let at = base + (i * STUB) as u64;
        code.extend_from_slice(&[0xf3, 0x0f, 0x1e, 0xfa]); // endbr64
        code.extend_from_slice(&[0x41, 0xbb]); // mov r11d, imm32
        code.extend_from_slice(&(i as u32).to_le_bytes());
        code.extend_from_slice(&[0xff, 0x25]); // jmp [rip + disp32]
        let next = at + STUB as u64;
        code.extend_from_slice(&((slot - next) as u32).to_le_bytes());
    }
    code.extend_from_slice(&(rltrace_import_trampoline as *const () as u64).to_le_bytes());
    // SAFETY: the mapping is `len` bytes, writable, and ours alone; it becomes read+exec
    // before any slot points into it.
    unsafe {
        std::ptr::copy_nonoverlapping(code.as_ptr(), page.cast::<u8>(), len);
        if libc::mprotect(page, len, libc::PROT_READ | libc::PROT_EXEC) != 0 {
            libc::munmap(page, len);
            return None;
        }
    }
    Some(base)
}

/// Points every slot at its stub. Slots under RELRO are made writable for the moment.
fn patch(slots: &[Slot], stubs: u64, relro: Option<(u64, u64)>) {
    let page = 4096u64;
    let relro = relro.map(|(s, e)| (s & !(page - 1), (e + page - 1) & !(page - 1)));
    if let Some((s, e)) = relro {
        // SAFETY: the executable's own RELRO pages, made writable while we patch them.
        unsafe {
            libc::mprotect(
                s as *mut c_void,
                (e - s) as usize,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
    }
    for s in slots {
        let stub = stubs + (s.hook * STUB) as u64;
        // SAFETY: a GOT slot of the main program: writable (made so above if under
        // RELRO), aligned, and only read by the program's calls through it.
        unsafe { (s.got as *mut u64).write_volatile(stub) };
    }
    if let Some((s, e)) = relro {
        // SAFETY: restores the protection the loader gave the RELRO pages.
        unsafe { libc::mprotect(s as *mut c_void, (e - s) as usize, libc::PROT_READ) };
    }
}

/// The registers the trampoline saved at entry, lowest address first.
#[repr(C)]
pub struct Regs {
    /// Import number (r11, set by the stub).
    pub index: u64,
    /// rax: vector register count for varargs calls.
    pub rax: u64,
    /// Sixth argument.
    pub r9: u64,
    /// Fifth argument.
    pub r8: u64,
    /// Fourth argument.
    pub rcx: u64,
    /// Third argument.
    pub rdx: u64,
    /// Second argument.
    pub rsi: u64,
    /// First argument.
    pub rdi: u64,
}

/// Bytes of the caller's stack arguments the trampoline passes on (16 words).
pub const STACK_ARGS: usize = 128;

impl Regs {
    /// Where the caller's stack arguments start (right above the return address).
    pub fn stack_args(&self) -> u64 {
        self as *const Regs as u64 + 64 + 16
    }
    /// Where the trampoline wants them copied (the bottom of its frame).
    pub fn stack_copy(&self) -> *mut u8 {
        (self as *const Regs as u64 - 0x140) as *mut u8
    }
    /// The integer arguments in ABI order.
    pub fn args(&self) -> [u64; 6] {
        [self.rdi, self.rsi, self.rdx, self.rcx, self.r8, self.r9]
    }
    /// The low 64 bits of the vector argument registers xmm0-7.
    pub fn xmm(&self) -> [u64; 8] {
        let base = self as *const Regs as u64;
        // SAFETY: the trampoline saved xmm0-7 in its frame right below the integer
        // registers, xmm_i at [rbp-0x80-0x10*i] = Regs-0x40-0x10*i; the frame outlives
        // this borrow of it.
        std::array::from_fn(|i| unsafe {
            ((base - 0x40 - 0x10 * i as u64) as *const u64).read_unaligned()
        })
    }

    /// The trampoline frame's base (its saved rbp slot): identifies the call.
    pub fn frame(&self) -> u64 {
        self as *const Regs as u64 + 64
    }
    /// The traced import, if the number is one of ours.
    pub fn hook(&self) -> Option<(usize, &'static Hook)> {
        let i = self.index as usize;
        hooks().get(i).map(|h| (i, h))
    }
}

/// The traced import of a trampoline frame whose base (saved rbp slot) is `frame`, and
/// the low 64 bits of xmm0 as the trampoline saved them after the call returned.
///
/// # Safety
/// `frame` must be the base of a live trampoline frame that has returned from its callee.
pub unsafe fn returned(frame: u64) -> (Option<&'static Hook>, u64) {
    // SAFETY: the caller's contract: the import number is at [rbp-64] (`Regs::index`)
    // and the trampoline stores xmm0 at [rbp-0x80] after the call.
    let (index, xmm0) = unsafe {
        (
            ((frame - 64) as *const u64).read_unaligned(),
            ((frame - 0x80) as *const u64).read_unaligned(),
        )
    };
    (hooks().get(index as usize), xmm0)
}

extern "C" {
    /// The assembly below; only its address is used.
    fn rltrace_import_trampoline();
}

// The frame: [rbp+8] return address into the program, [rbp] its rbp, [rbp-64..rbp) the
// integer registers (`Regs`), [rbp-0xf0..rbp-0x70) xmm0-7, [rbp-0x180..rbp-0x100) the
// stack arguments `import_enter` copies, which sit at the callee's [rsp+8] as they did
// at ours.
std::arch::global_asm!(
    ".pushsection .text.rltrace_import_trampoline,\"ax\",@progbits",
    ".globl rltrace_import_trampoline",
    ".hidden rltrace_import_trampoline",
    ".type rltrace_import_trampoline,@function",
    ".p2align 4",
    "rltrace_import_trampoline:",
    ".cfi_startproc",
    "endbr64",
    "push rbp",
    ".cfi_def_cfa_offset 16",
    ".cfi_offset rbp, -16",
    "mov rbp, rsp",
    ".cfi_def_cfa_register rbp",
    "sub rsp, 0x180",
    "mov [rbp-8], rdi",
    "mov [rbp-16], rsi",
    "mov [rbp-24], rdx",
    "mov [rbp-32], rcx",
    "mov [rbp-40], r8",
    "mov [rbp-48], r9",
    "mov [rbp-56], rax",
    "mov [rbp-64], r11",
    "movdqu [rbp-0x80], xmm0",
    "movdqu [rbp-0x90], xmm1",
    "movdqu [rbp-0xa0], xmm2",
    "movdqu [rbp-0xb0], xmm3",
    "movdqu [rbp-0xc0], xmm4",
    "movdqu [rbp-0xd0], xmm5",
    "movdqu [rbp-0xe0], xmm6",
    "movdqu [rbp-0xf0], xmm7",
    "lea rdi, [rbp-64]",
    "call {enter}",
    "mov r11, rax",
    "mov rdi, [rbp-8]",
    "mov rsi, [rbp-16]",
    "mov rdx, [rbp-24]",
    "mov rcx, [rbp-32]",
    "mov r8, [rbp-40]",
    "mov r9, [rbp-48]",
    "mov rax, [rbp-56]",
    "movdqu xmm0, [rbp-0x80]",
    "movdqu xmm1, [rbp-0x90]",
    "movdqu xmm2, [rbp-0xa0]",
    "movdqu xmm3, [rbp-0xb0]",
    "movdqu xmm4, [rbp-0xc0]",
    "movdqu xmm5, [rbp-0xd0]",
    "movdqu xmm6, [rbp-0xe0]",
    "movdqu xmm7, [rbp-0xf0]",
    "call r11",
    "mov [rbp-8], rax",
    "mov [rbp-16], rdx",
    "movdqu [rbp-0x80], xmm0",
    "movdqu [rbp-0x90], xmm1",
    "mov rdi, rax",
    "mov rsi, rbp",
    "call {exit}",
    "mov rax, [rbp-8]",
    "mov rdx, [rbp-16]",
    "movdqu xmm0, [rbp-0x80]",
    "movdqu xmm1, [rbp-0x90]",
    "leave",
    ".cfi_def_cfa rsp, 8",
    "ret",
    ".cfi_endproc",
    ".size rltrace_import_trampoline, .-rltrace_import_trampoline",
    ".popsection",
    enter = sym crate::import_enter,
    exit = sym crate::import_exit,
);

#[cfg(test)]
mod tests {
    use super::skipped;

    #[test]
    fn what_is_never_redirected() {
        for name in [
            "__sigsetjmp",
            "_setjmp",
            "vfork",
            "swapcontext",
            "__libc_start_main",
            "__tls_get_addr",
            "_ITM_registerTMCloneTable",
            "dlopen",
            "malloc",
        ] {
            assert!(skipped(name), "{name}");
        }
        // Real frames let these pass: they are traced.
        for name in [
            "write",
            "exit",
            "_exit",
            "longjmp",
            "__cxa_throw",
            "_Unwind_Resume",
        ] {
            assert!(!skipped(name), "{name}");
        }
    }
}
