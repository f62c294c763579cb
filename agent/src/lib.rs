//! The rltrace preload agent. `rltrace record --engine agent` starts the program with this
//! library in `LD_PRELOAD`; it interposes the allocator family, unwinds each call's stack
//! in-process with DWARF CFI, and streams compact records to the recorder through
//! per-thread rings (see `docs/DESIGN.md`, "The agent engine").
//!
//! Everything here runs inside someone else's program, on its threads, in its allocator:
//! the agent's own allocations go straight to the real allocator, a per-thread guard
//! keeps hooks from recursing, and any failure turns recording off rather than
//! disturbing the program.

mod conn;
mod exec;
mod imports;
mod modules;
mod real;
mod ring;
mod signals;
mod stackcache;
mod stacks;
mod sync;

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicUsize, Ordering};

use framehop::x86_64::CacheX86_64;
use rltrace_wire as wire;

use real::*;

/// The agent's own heap is the real allocator, never the hooks.
struct RealAlloc;

// SAFETY: forwards to the C allocator, whose blocks satisfy `align` up to 16 (malloc's
// guarantee on x86-64) and memalign's for larger alignments.
unsafe impl GlobalAlloc for RealAlloc {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if l.align() <= 16 {
            real_malloc(l.size()).cast()
        } else {
            real_memalign(l.align(), l.size()).cast()
        }
    }
    unsafe fn dealloc(&self, p: *mut u8, _: Layout) {
        real_free(p.cast())
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, size: usize) -> *mut u8 {
        if l.align() <= 16 {
            return real_realloc(p.cast(), size).cast();
        }
        let q = real_memalign(l.align(), size).cast::<u8>();
        if !q.is_null() {
            // SAFETY: both blocks hold at least min(old, new) bytes.
            unsafe { std::ptr::copy_nonoverlapping(p, q, l.size().min(size)) };
            real_free(p.cast());
        }
        q
    }
}

#[global_allocator]
static GLOBAL: RealAlloc = RealAlloc;

use wire::func as f;

/// Recording is on: the constructor connected and nothing failed since.
pub(crate) static ENABLED: AtomicBool = AtomicBool::new(false);
/// Most return addresses per stack.
static MAX_DEPTH: AtomicUsize = AtomicUsize::new(64);
/// Most bytes captured from a string or buffer argument.
static STRLEN: AtomicUsize = AtomicUsize::new(32);
/// Status passed to `exit`, or i32::MIN.
static EXIT_STATUS: AtomicI32 = AtomicI32::new(i32::MIN);
/// The process whose stream this is (a vfork child shares the memory, not the pid).
static OWN_PID: AtomicU32 = AtomicU32::new(0);
/// The next stack id (unique in the process's stream).
static NEXT_STACK: AtomicU32 = AtomicU32::new(0);
/// pthread key whose destructor retires a thread's ring.
static KEY: AtomicUsize = AtomicUsize::new(usize::MAX);

struct Exe(std::cell::UnsafeCell<Vec<u8>>);
// SAFETY: written in the constructor before the agent records anything; read-only after.
unsafe impl Sync for Exe {}
static EXE: Exe = Exe(std::cell::UnsafeCell::new(Vec::new()));

fn exe() -> &'static [u8] {
    // SAFETY: see `Exe`.
    unsafe { &*EXE.0.get() }
}

/// Turns recording off for good (the recorder went away).
pub(crate) fn disable() {
    ENABLED.store(false, Ordering::Release);
}

/// What one thread keeps between calls.
struct ThreadState {
    ring: &'static ring::Ring,
    stack_top: u64,
    /// The stack mapping the last unwind ran on, and whether it is the main thread's:
    /// checked before the per-thread cache of `stacks::bounds`, which cost 5% of a
    /// recorded run (a thread-local lookup and a copy of the cache per call).
    map: (u64, u64),
    map_main: bool,
    cache: CacheX86_64,
    /// Unwinds found before, reused while the stack words they read are unchanged.
    unwinds: stackcache::StackCache,
    /// The stack words the last unwind read.
    log: stackcache::ReadLog,
    stacks: HashMap<Box<[u64]>, u32, BuildHasherDefault<wire::FastHasher>>,
    frames: Vec<u64>,
    rec: Vec<u8>,
    /// Room for one captured argument: on the heap, since hooks may run on small stacks
    /// (coroutines).
    data: Vec<u8>,
    /// Trampoline frames of the import calls this thread is inside, outermost first.
    /// Every import call gets an exit record, `void` ones too (the recorder defines
    /// imports as returning), so calls made inside a `void` one nest under it.
    open: Vec<u64>,
    /// The order key of the thread's last record: the lower bound its ring's busy mark
    /// gives while a hook runs.
    last_key: u64,
    /// What its allocator calls are coded against (`wire::coded`), for its ring's coder
    /// number, and the key of its last coded call.
    coder: wire::coded::Coder,
    coded_key: u64,
}

/// A thread's agent words, in one thread-local: in a shared library every access to one
/// is a `__tls_get_addr` call, and a hook used to make four (2% of a recorded run).
struct Tls {
    /// Set while this thread runs agent code: nested allocator calls pass straight
    /// through.
    guard: Cell<bool>,
    state: Cell<*mut ThreadState>,
}

thread_local! {
    static TLS: Tls = const {
        Tls {
            guard: Cell::new(false),
            state: Cell::new(std::ptr::null_mut()),
        }
    };
}

/// The calling thread's agent words.
#[inline(always)]
fn tls() -> &'static Tls {
    let p = TLS.with(|t| t as *const Tls);
    // SAFETY: a const-initialised thread-local without a destructor lives as long as its
    // thread, and the reference is only used on this thread (hooks, constructors and
    // fork handlers hold it for the duration of one call).
    unsafe { &*p }
}

/// True while the calling thread runs agent code (and may hold the agent's locks).
pub(crate) fn in_agent() -> bool {
    tls().guard.get()
}

/// Sends what the rings hold from a fatal signal's handler (the caller checked that this
/// thread holds no agent lock). Not a full finish: the process is about to die.
pub(crate) fn flush_on_signal(sig: i32) {
    guarded(|| {
        conn::drain_all();
        conn::send_killed(sig);
    });
}

/// Marks the calling thread as the agent's own (its calls are never recorded).
pub(crate) fn mark_agent_thread() {
    tls().guard.set(true);
}

/// The time stamp counter: a third of the cost of the vDSO clock, and the recorder maps
/// it to recording time (Linux only uses an invariant, synchronized TSC as clocksource).
fn now() -> u64 {
    // SAFETY: rdtsc reads a counter; it has no memory effects.
    unsafe { std::arch::x86_64::_rdtsc() }
}

/// The counter as the order key of what the thread does next (a `free`, an import's
/// entry): a plain `rdtsc` suffices, since it reads the counter before it retires and the
/// stores that follow it (the block put back in a free list) become visible to other
/// threads only after they retire, in order. Half the cost of `rdtscp` in free's hook
/// here, where `rdtscp` also waited for the unwinder's loads.
#[inline(always)]
fn order_before() -> u64 {
    now()
}

/// The counter as the order key of what the thread just did (an allocation returned, a
/// module list read): `rdtscp` waits until the loads before it have completed, so a key
/// read after taking a block another thread freed (or a pointer another thread stored)
/// is above the key that thread read before giving it up (`wire::ORDER_MARGIN`).
pub(crate) fn order_now() -> u64 {
    let mut aux = 0u32;
    // SAFETY: rdtscp reads the counter and the processor id into `aux`, a valid u32.
    unsafe { std::arch::x86_64::__rdtscp(&mut aux) }
}

fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}

extern "C" {
    /// The main thread's stack pointer at process start (exported by ld.so).
    static __libc_stack_end: *const c_void;
}

/// The top of the calling thread's stack. Not `pthread_getattr_np`: it takes the thread's
/// lock and allocates, and programs call it themselves (Rust's runtime does at start), so
/// a hook calling it from inside it would deadlock. glibc puts a thread's descriptor
/// right above its stack; the main thread's stack ends where the kernel started it.
fn stack_top(tid: u32) -> u64 {
    // SAFETY: getpid has no preconditions; __libc_stack_end is written once by ld.so before
    // any code runs, and pthread_self only reads the thread pointer.
    unsafe {
        if tid == libc::getpid() as u32 {
            __libc_stack_end as u64
        } else {
            libc::pthread_self() as u64
        }
    }
}

/// Stack room below which a hook does not unwind (see `capture_stack`).
const MIN_UNWIND_ROOM: u64 = 24 << 10;

/// Largest distance from a call's stack pointer to its thread's stack top that is
/// believed: farther means the call runs on another stack (a signal's alternate stack),
/// whose extent is unknown, so it is not unwound.
const MAX_STACK: u64 = 1 << 30;

/// The calling thread's state, made on its first traced call.
fn state(tls: &Tls) -> Option<&'static mut ThreadState> {
    let p = tls.state.get();
    if !p.is_null() {
        // SAFETY: made by Box::into_raw below for this thread alone.
        return Some(unsafe { &mut *p });
    }
    let tid = gettid();
    let ring = ring::acquire(tid)?;
    let st = Box::into_raw(Box::new(ThreadState {
        ring,
        stack_top: stack_top(tid),
        map: (0, 0),
        map_main: false,
        cache: CacheX86_64::new(),
        unwinds: stackcache::StackCache::default(),
        log: stackcache::ReadLog::default(),
        stacks: HashMap::default(),
        frames: vec![0; MAX_DEPTH.load(Ordering::Relaxed).clamp(1, wire::MAX_FRAMES)],
        rec: Vec::with_capacity(256),
        data: vec![0; wire::MAX_DATA + 1],
        open: Vec::new(),
        last_key: 1,
        coder: wire::coded::Coder::default(),
        coded_key: 0,
    }));
    tls.state.set(st);
    let key = KEY.load(Ordering::Acquire);
    if key != usize::MAX {
        // SAFETY: a key made by pthread_key_create; the value is only used as a flag.
        unsafe { libc::pthread_setspecific(key as libc::pthread_key_t, st.cast()) };
    }
    // SAFETY: just made, owned by this thread.
    Some(unsafe { &mut *st })
}

/// pthread key destructor: the thread is exiting; its ring is drained and reused.
unsafe extern "C" fn thread_exit(_: *mut c_void) {
    let p = tls().state.replace(std::ptr::null_mut());
    if p.is_null() {
        return;
    }
    // SAFETY: made by `state` for this thread, which no longer uses it.
    let st = unsafe { Box::from_raw(p) };
    st.ring.state.store(ring::DEAD, Ordering::Release);
}

/// Registers of the calling frame, for the unwinder.
#[inline(always)]
fn registers() -> (u64, u64, u64) {
    let (pc, sp, bp): (u64, u64, u64);
    // SAFETY: reads rip, rsp and rbp into registers; no memory is touched.
    unsafe {
        std::arch::asm!(
            "lea {pc}, [rip]",
            "mov {sp}, rsp",
            "mov {bp}, rbp",
            pc = out(reg) pc,
            sp = out(reg) sp,
            bp = out(reg) bp,
            options(nomem, nostack, preserves_flags)
        );
    }
    (pc, sp, bp)
}

/// Unwinds the caller's stack and returns its thread-local id, defining it if new.
#[inline(always)]
fn capture_stack(st: &mut ThreadState) -> u32 {
    let (pc, sp, bp) = registers();
    // Reads stay inside the mapping the hook runs on (a coroutine's stack may sit next
    // to unmapped pages); frames on another stack end the unwind.
    if !(st.map.0..st.map.1).contains(&sp) {
        let Some(map) = stacks::bounds(sp) else {
            return wire::NO_STACK;
        };
        st.map = map;
        // SAFETY: __libc_stack_end is written once by ld.so before any code runs.
        st.map_main = (map.0..=map.1).contains(&unsafe { __libc_stack_end as u64 });
    }
    let (start, end) = st.map;
    // The unwinder needs about 10 KiB of stack. A fixed-size stack (a thread's, a
    // coroutine's) with less room left would overflow: the call is recorded without its
    // stack instead. The main thread's stack grows on demand.
    if !st.map_main && sp - start < MIN_UNWIND_ROOM {
        return wire::NO_STACK;
    }
    let mut key = stackcache::Key {
        pc,
        sp,
        bp,
        end,
        generation: modules::generation(),
    };
    if let Some(id) = st.unwinds.lookup(&key) {
        return id;
    }
    let stack = sp..end;
    let unwind = |st: &mut ThreadState| {
        modules::capture(
            pc,
            sp,
            bp,
            &stack,
            &mut st.cache,
            &mut st.frames,
            &mut st.log,
        )
    };
    let (mut n, mut known) = unwind(st);
    // `dlopen` is not interposed (glibc resolves a relative name against the RUNPATH of
    // the object that called it, which a wrapper would replace with the agent's), so a
    // module loaded since the last scan shows up as a stack that ends in unknown code:
    // rescan if the loader's count of loads moved, and unwind again.
    if !known && modules::loads_changed() {
        rescan_and_send();
        (n, known) = unwind(st);
    }
    if n == 0 {
        return wire::NO_STACK;
    }
    let id = match st.stacks.get(&st.frames[..n]) {
        Some(&id) => id,
        None => define_stack(st, n),
    };
    // A stack ending in unknown code is not reused: the next call checks for new modules.
    if known && id != wire::NO_STACK {
        key.generation = st.log.generation;
        st.unwinds.store(&key, &st.log, id);
    }
    id
}

/// Numbers the thread's first `n` frames as a new stack and sends its definition.
fn define_stack(st: &mut ThreadState, n: usize) -> u32 {
    // Numbered process-wide: a thread whose state was retired (its TLS destructors run
    // after the agent's) gets a fresh map, and its new definitions travel in a new ring
    // that may be read before the old one; the same number twice would mix them up.
    let id = NEXT_STACK.fetch_add(1, Ordering::Relaxed);
    if id == wire::NO_STACK {
        return wire::NO_STACK;
    }
    let frames = &st.frames[..n];
    st.stacks.insert(frames.into(), id);
    st.rec.clear();
    st.rec.push(wire::REC_STACK);
    st.rec.extend_from_slice(&id.to_le_bytes());
    st.rec.extend_from_slice(&(n as u16).to_le_bytes());
    for a in frames {
        st.rec.extend_from_slice(&a.to_le_bytes());
    }
    st.ring.push(&st.rec, &conn::try_drain);
    id
}

/// A traced call in progress.
struct Open {
    tls: &'static Tls,
    st: &'static mut ThreadState,
    stack: u32,
    ts_in: u64,
}

/// Takes the calling thread's guard and its state, or `None` if this call passes through
/// unrecorded (recording is off, the agent itself called, or no state could be made).
#[inline(always)]
fn enter() -> Option<(&'static Tls, &'static mut ThreadState)> {
    if !ENABLED.load(Ordering::Acquire) {
        return None;
    }
    let tls = tls();
    if tls.guard.replace(true) {
        return None;
    }
    match state(tls) {
        Some(st) => {
            // Before any order key is read: the drainer's watermark stays below this
            // thread's next record until `leave`. Less the margin, since a key read by
            // `rdtsc` may be read a little before an earlier `rdtscp` of this thread; 0
            // would mean idle. Release (a plain store on x86): a drainer that reads this
            // mark also finds the records this thread pushed before it.
            let mark = st.last_key.saturating_sub(wire::ORDER_MARGIN).max(1);
            st.ring.busy.store(mark, Ordering::Release);
            std::sync::atomic::compiler_fence(Ordering::SeqCst);
            Some((tls, st))
        }
        None => {
            tls.guard.set(false);
            None
        }
    }
}

/// Ends a hook that `enter` let through: the thread is idle for the drainer again (its
/// records are in its ring) and its own allocator calls are recorded again.
#[inline(always)]
fn leave(tls: &Tls, st: &ThreadState) {
    st.ring.busy.store(0, Ordering::Release);
    tls.guard.set(false);
}

/// Starts recording a call, or `None` if this one passes through unrecorded; with
/// `ordered_at_entry` (`free`), the entry time is the call's order key.
#[inline(always)]
fn begin(ordered_at_entry: bool) -> Option<Open> {
    let (tls, st) = enter()?;
    if !st.open.is_empty() {
        settle(st, registers().1);
    }
    let stack = capture_stack(st);
    Some(Open {
        tls,
        st,
        stack,
        ts_in: if ordered_at_entry {
            order_before()
        } else {
            now()
        },
    })
}

/// Finishes recording a call.
#[inline(always)]
fn end(o: Open, func: u8, args: &[u64], ret: Option<u64>, out: Option<u64>) {
    // A call without a return value is recorded at its entry alone (`free`, whose order
    // key is its entry): its return time would be dropped (and reading the counter is a
    // fifth of free's hook).
    let ts_out = if ret.is_none() && out.is_none() {
        o.ts_in
    } else {
        order_now()
    };
    o.st.last_key = ts_out;
    let mut c = wire::Call {
        func,
        flags: 0,
        nargs: args.len().min(wire::CALL_ARGS) as u8,
        args: [0; wire::CALL_ARGS],
        ret: ret.unwrap_or(0),
        out: out.unwrap_or(0),
        ts_in: o.ts_in,
        ts_out,
        stack: o.stack,
    };
    c.args[..c.nargs as usize].copy_from_slice(&args[..c.nargs as usize]);
    if ret.is_some() {
        c.flags |= wire::CALL_RET;
    }
    if out.is_some() {
        c.flags |= wire::CALL_OUT;
    }
    let st = &mut *o.st;
    st.ring
        .push_keyed(wire::coded::CODED_LEN, &conn::try_drain, ts_out, |dst| {
            wire::coded::put_coded(dst, &c, &mut st.coder, &mut st.coded_key)
        });
    leave(o.tls, o.st);
}

// ---- calls through the main executable's imports ----

/// Records "never returned" for the import calls whose trampoline frames lie below `sp`
/// (unwound past by an exception, or longjmp'ed over): the thread is running above them.
/// Not from another stack (a signal handler on an alternate stack, which may lie above
/// the thread's): frames compare only within one stack.
fn settle(st: &mut ThreadState, sp: u64) {
    if !(sp < st.stack_top && st.stack_top - sp < MAX_STACK) {
        return;
    }
    while let Some(&f) = st.open.last() {
        if f >= sp {
            break;
        }
        st.open.pop();
        push_exit(st, None, None);
    }
}

/// Records the return of the thread's innermost import call: `ret` (`None`: it never
/// returned), and with `text` the string it returned, the first `text.0` bytes of
/// `st.data` (`text.1`: cut).
fn push_exit(st: &mut ThreadState, ret: Option<u64>, text: Option<(usize, bool)>) {
    let key = order_now();
    st.last_key = key;
    st.rec.clear();
    st.rec.push(if text.is_some() {
        wire::REC_EXIT_DATA
    } else {
        wire::REC_EXIT
    });
    st.rec.extend_from_slice(&key.to_le_bytes());
    st.rec.push(if ret.is_some() { wire::CALL_RET } else { 0 });
    st.rec.extend_from_slice(&ret.unwrap_or(0).to_le_bytes());
    if let Some((len, truncated)) = text {
        let len = len.min(wire::MAX_DATA);
        st.rec.push(0);
        st.rec.push(u8::from(truncated));
        st.rec.extend_from_slice(&(len as u16).to_le_bytes());
        st.rec.extend_from_slice(&st.data[..len]);
    }
    st.ring.push(&st.rec, &conn::try_drain);
}

/// Copies up to `out.len()` bytes at `addr` without trusting the pointer: the program may
/// pass one its callee rejects with EFAULT. Returns how many bytes were readable.
fn read_own(addr: u64, out: &mut [u8]) -> usize {
    let page_end = (addr | 4095).wrapping_add(1);
    let first = (page_end.wrapping_sub(addr) as usize).min(out.len());
    let local = libc::iovec {
        iov_base: out.as_mut_ptr().cast(),
        iov_len: out.len(),
    };
    // Split at the page boundary: a read that faults returns what came before the page.
    let remote = [
        libc::iovec {
            iov_base: addr as *mut c_void,
            iov_len: first,
        },
        libc::iovec {
            iov_base: page_end as *mut c_void,
            iov_len: out.len() - first,
        },
    ];
    let n_remote = if first < out.len() { 2 } else { 1 };
    // The pid the constructor and the fork child handler noted: getpid is a system call
    // (glibc caches nothing), and this runs for every captured argument. A vfork child
    // shares the memory it names.
    let pid = match OWN_PID.load(Ordering::Acquire) {
        // SAFETY: getpid has no preconditions.
        0 => unsafe { libc::getpid() },
        p => p as libc::pid_t,
    };
    // SAFETY: process_vm_readv on this very process copies into `out` (valid for its
    // length) and reports unreadable source memory as an error or a short count.
    let n = unsafe { libc::process_vm_readv(pid, &local, 1, remote.as_ptr(), n_remote, 0) };
    n.max(0) as usize
}

/// Appends the strings and buffers the prototype says the arguments (the call's values)
/// point to, and what a `printf` format's conversions take: strings, and arguments on the
/// stack, which starts at `stack`.
fn put_data(
    rec: &mut Vec<u8>,
    buf: &mut [u8],
    proto: Option<&wire::protos::Proto>,
    args: &[u64],
    stack: u64,
) {
    let at = rec.len();
    rec.push(0);
    let Some(proto) = proto else {
        return;
    };
    let limit = STRLEN.load(Ordering::Relaxed).min(wire::MAX_DATA);
    let mut count = 0u8;
    wire::protos::capture(
        proto,
        args,
        stack,
        limit,
        buf,
        read_own,
        |i, truncated, bytes| {
            rec.push(i);
            rec.push(truncated as u8);
            rec.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
            rec.extend_from_slice(bytes);
            count += 1;
        },
    );
    rec[at] = count;
}

/// Copies the caller's possible stack arguments into the trampoline's frame, as far as
/// the stack's mapping goes (a coroutine's stack may end right above its top frame, next
/// to an unmapped page); the rest is zero: a callee with that many stack arguments would
/// have found them inside the mapping.
fn copy_stack_args(r: &imports::Regs) {
    let src = r.stack_args();
    let n = imports::STACK_ARGS;
    // SAFETY: the trampoline reserved [stack_copy, +STACK_ARGS) in its frame for this.
    let dst = unsafe { std::slice::from_raw_parts_mut(r.stack_copy(), n) };
    // The return address sits right below the arguments: its mapping is the stack's.
    let end = stacks::bounds(src - 8).map_or(src, |(_, end)| end);
    let avail = (end.saturating_sub(src) as usize).min(n);
    // SAFETY: [src, src + avail) lies inside a readable mapping, found just above.
    unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), avail) };
    dst[avail..].fill(0);
}

/// Called by the import trampoline before the real function: records the entry and
/// returns the function to call.
pub(crate) extern "C" fn import_enter(r: &imports::Regs) -> u64 {
    let Some((index, hook)) = r.hook() else {
        // Cannot happen: every stub carries the number of an existing import.
        std::process::abort();
    };
    copy_stack_args(r);
    let Some((tls, st)) = enter() else {
        return hook.target;
    };
    let frame = r.frame();
    // Open calls at or below this frame were left without returning.
    settle(st, frame + 1);
    let stack = capture_stack(st);
    let key = order_before();
    st.last_key = key;
    let gpr = r.args();
    let mut values = [0u64; wire::protos::MAX_VALUES];
    let nargs = match hook.proto {
        Some(p) => p.values(&gpr, &r.xmm(), r.rax, &mut values),
        None => {
            values[..6].copy_from_slice(&gpr);
            6
        }
    };
    let args = &values[..nargs];
    st.rec.clear();
    st.rec.push(wire::REC_ENTER);
    st.rec.extend_from_slice(&(index as u16).to_le_bytes());
    st.rec.extend_from_slice(&key.to_le_bytes());
    st.rec.extend_from_slice(&stack.to_le_bytes());
    st.rec.push(nargs as u8);
    for a in args {
        st.rec.extend_from_slice(&a.to_le_bytes());
    }
    put_data(&mut st.rec, &mut st.data, hook.proto, args, r.stack_args());
    st.ring.push(&st.rec, &conn::try_drain);
    st.open.push(frame);
    leave(tls, st);
    hook.target
}

/// Called by the import trampoline after the real function returned `ret`.
pub(crate) extern "C" fn import_exit(ret: u64, frame: u64) {
    let Some((tls, st)) = enter() else {
        return;
    };
    settle(st, frame);
    if st.open.last() == Some(&frame) {
        st.open.pop();
        // SAFETY: called by the trampoline of `frame`, after its callee returned.
        let (hook, xmm0) = unsafe { imports::returned(frame) };
        let proto = hook.and_then(|h| h.proto);
        // A `float` or `double` comes back in xmm0.
        let vector = proto.is_some_and(|p| p.ret.is_vector());
        let ret = if vector { xmm0 } else { ret };
        let limit = STRLEN.load(Ordering::Relaxed).min(wire::MAX_DATA);
        // A returned string is read here, at the return, as ltrace shows it: later the
        // buffer may hold something else (strerror's, a strchr into the caller's).
        let text =
            proto.and_then(|p| wire::protos::capture_return(p, ret, limit, &mut st.data, read_own));
        push_exit(st, Some(ret), text);
    }
    leave(tls, st);
}

// ---- the interposed functions ----

/// Interposed `malloc`.
#[no_mangle]
pub extern "C" fn malloc(size: usize) -> *mut c_void {
    let Some(o) = begin(false) else {
        return real_malloc(size);
    };
    let r = real_malloc(size);
    end(o, f::MALLOC, &[size as u64], Some(r as u64), None);
    r
}

/// Interposed `calloc`.
#[no_mangle]
pub extern "C" fn calloc(n: usize, size: usize) -> *mut c_void {
    let Some(o) = begin(false) else {
        return real_calloc(n, size);
    };
    let r = real_calloc(n, size);
    end(o, f::CALLOC, &[n as u64, size as u64], Some(r as u64), None);
    r
}

/// Interposed `realloc`.
#[no_mangle]
pub extern "C" fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    let Some(o) = begin(false) else {
        return real_realloc(p, size);
    };
    let r = real_realloc(p, size);
    end(
        o,
        f::REALLOC,
        &[p as u64, size as u64],
        Some(r as u64),
        None,
    );
    r
}

/// Interposed `reallocarray`.
#[no_mangle]
pub extern "C" fn reallocarray(p: *mut c_void, n: usize, size: usize) -> *mut c_void {
    let Some(o) = begin(false) else {
        return real_reallocarray(p, n, size);
    };
    let r = real_reallocarray(p, n, size);
    end(
        o,
        f::REALLOCARRAY,
        &[p as u64, n as u64, size as u64],
        Some(r as u64),
        None,
    );
    r
}

/// Interposed `free`. Its place in the call order is taken before the block is released,
/// so a block reused by another thread is never seen allocated twice. `free(NULL)` is
/// recorded too: it is a call the program made, which the ptrace engine and ltrace show.
#[no_mangle]
pub extern "C" fn free(p: *mut c_void) {
    if in_arena(p) {
        return real_free(p);
    }
    let Some(o) = begin(true) else {
        return real_free(p);
    };
    real_free(p);
    end(o, f::FREE, &[p as u64], None, None);
}

/// Interposed `posix_memalign`.
///
/// # Safety
/// `pp` must be valid for a pointer write, as C requires of callers.
#[no_mangle]
pub unsafe extern "C" fn posix_memalign(pp: *mut *mut c_void, align: usize, size: usize) -> i32 {
    let Some(o) = begin(false) else {
        return real_posix_memalign(pp, align, size);
    };
    let r = real_posix_memalign(pp, align, size);
    // SAFETY: on success posix_memalign stored the block through pp, which the caller
    // passed as a valid out-pointer.
    let out = (r == 0 && !pp.is_null()).then(|| unsafe { pp.read() } as u64);
    end(
        o,
        f::POSIX_MEMALIGN,
        &[pp as u64, align as u64, size as u64],
        Some(r as u32 as u64),
        out,
    );
    r
}

macro_rules! aligned_hook {
    ($name:ident, $real:ident, $id:expr) => {
        /// Interposed aligned allocator.
        #[no_mangle]
        pub extern "C" fn $name(align: usize, size: usize) -> *mut c_void {
            let Some(o) = begin(false) else {
                return $real(align, size);
            };
            let r = $real(align, size);
            end(o, $id, &[align as u64, size as u64], Some(r as u64), None);
            r
        }
    };
}
aligned_hook!(memalign, real_memalign, f::MEMALIGN);
aligned_hook!(aligned_alloc, real_aligned_alloc, f::ALIGNED_ALLOC);

macro_rules! page_hook {
    ($name:ident, $real:ident, $id:expr) => {
        /// Interposed page-aligned allocator.
        #[no_mangle]
        pub extern "C" fn $name(size: usize) -> *mut c_void {
            let Some(o) = begin(false) else {
                return $real(size);
            };
            let r = $real(size);
            end(o, $id, &[size as u64], Some(r as u64), None);
            r
        }
    };
}
page_hook!(valloc, real_valloc, f::VALLOC);
page_hook!(pvalloc, real_pvalloc, f::PVALLOC);

/// Runs agent bookkeeping with the guard set.
fn guarded<R>(f: impl FnOnce() -> R) -> R {
    let tls = tls();
    let was = tls.guard.replace(true);
    let r = f();
    tls.guard.set(was);
    r
}

fn rescan_and_send() {
    if let Some(mods) = modules::rescan(exe()) {
        if ENABLED.load(Ordering::Acquire) {
            conn::send_modules(&mods);
        }
    }
}

/// Interposed `dlclose`: unloaded modules leave the unwinder before their code can be
/// replaced by another module's at the same addresses.
#[no_mangle]
pub extern "C" fn dlclose(h: *mut c_void) -> i32 {
    let r = real_dlclose(h);
    guarded(rescan_and_send);
    r
}

/// Interposed `close`: the recorder's socket is not the program's to close (a daemon or
/// `ssh` closing every descriptor it did not open would end the recording). It stays
/// open; the call succeeds.
#[no_mangle]
pub extern "C" fn close(fd: i32) -> i32 {
    if fd >= 0 && fd == conn::fd() {
        return 0;
    }
    real_close(fd)
}

/// Interposed `close_range`: closes the range around the recorder's socket.
#[no_mangle]
pub extern "C" fn close_range(first: u32, last: u32, flags: i32) -> i32 {
    let own = conn::fd();
    if own < 0 || !(first..=last).contains(&(own as u32)) {
        return real_close_range(first, last, flags);
    }
    let own = own as u32;
    let mut r = 0;
    if own > first {
        r = real_close_range(first, own - 1, flags);
    }
    if r == 0 && own < last {
        r = real_close_range(own + 1, last, flags);
    }
    r
}

/// Interposed `closefrom`: closes every descriptor from `low` but the recorder's socket.
#[no_mangle]
pub extern "C" fn closefrom(low: i32) {
    let own = conn::fd();
    if own < 0 || own < low {
        return real_closefrom(low);
    }
    if own > low {
        real_close_range(low.max(0) as u32, own as u32 - 1, 0);
    }
    real_closefrom(own + 1);
}

/// Interposed `exit`: remembers the status for the recorder.
#[no_mangle]
pub extern "C" fn exit(status: i32) -> ! {
    EXIT_STATUS.store(status, Ordering::Release);
    real_exit(status)
}

/// Interposed `_exit`: destructors will not run, so the stream is finished here, unless
/// this is a `vfork` child whose exec failed: it shares the parent's memory and
/// connection, and the parent records on.
#[no_mangle]
pub extern "C" fn _exit(status: i32) -> ! {
    // SAFETY: getpid has no preconditions.
    if unsafe { libc::getpid() } as u32 == OWN_PID.load(Ordering::Acquire) {
        EXIT_STATUS.store(status, Ordering::Release);
        guarded(finish);
    }
    real_underscore_exit(status)
}

type MainFn = unsafe extern "C" fn(i32, *mut *mut libc::c_char, *mut *mut libc::c_char) -> i32;
type StartMainFn = unsafe extern "C" fn(
    MainFn,
    i32,
    *mut *mut libc::c_char,
    *mut c_void,
    *mut c_void,
    *mut c_void,
    *mut c_void,
) -> i32;

/// The program's `main`, while the agent's wrapper runs it.
static MAIN: AtomicUsize = AtomicUsize::new(0);

unsafe extern "C" fn main_wrapper(
    argc: i32,
    argv: *mut *mut libc::c_char,
    envp: *mut *mut libc::c_char,
) -> i32 {
    // SAFETY: MAIN holds the `main` that __libc_start_main was given, stored just before
    // it called us; it has this prototype.
    let r = unsafe {
        let m = std::mem::transmute::<usize, MainFn>(MAIN.load(Ordering::Acquire));
        m(argc, argv, envp)
    };
    EXIT_STATUS.store(r, Ordering::Release);
    r
}

/// Interposed `__libc_start_main`: wraps `main` so that the status it returns (which libc
/// passes to `exit` internally, where no interposition can see it) reaches the recorder.
///
/// # Safety
/// Called by the program's `_start` with the arguments glibc defines.
#[no_mangle]
pub unsafe extern "C" fn __libc_start_main(
    main: MainFn,
    argc: i32,
    argv: *mut *mut libc::c_char,
    init: *mut c_void,
    fini: *mut c_void,
    rtld_fini: *mut c_void,
    stack_end: *mut c_void,
) -> i32 {
    // SAFETY: dlsym with a NUL-terminated name.
    let real = unsafe { libc::dlsym(libc::RTLD_NEXT, c"__libc_start_main".as_ptr()) };
    if real.is_null() {
        // Cannot happen with glibc; without the real one there is nothing to start.
        real_underscore_exit(127);
    }
    MAIN.store(main as usize, Ordering::Release);
    // SAFETY: `real` is glibc's __libc_start_main, which has this prototype.
    unsafe {
        let real = std::mem::transmute::<*mut c_void, StartMainFn>(real);
        real(main_wrapper, argc, argv, init, fini, rtld_fini, stack_end)
    }
}

/// Interposed `_Exit`, the same as `_exit`.
#[no_mangle]
pub extern "C" fn _Exit(status: i32) -> ! {
    _exit(status)
}

static FINISHED: AtomicBool = AtomicBool::new(false);

/// Sends what the rings hold: the image is about to be replaced.
pub(crate) fn flush_before_exec() {
    if ENABLED.load(Ordering::Acquire) {
        guarded(|| {
            conn::drain_all();
        });
    }
}

/// Sends everything recorded and closes the stream (once).
fn finish() {
    if FINISHED.swap(true, Ordering::AcqRel) || !conn::connected() {
        return;
    }
    disable();
    conn::drain_all();
    let status = EXIT_STATUS.load(Ordering::Acquire);
    if status != i32::MIN {
        conn::send_exit(status);
    }
    conn::send_end();
}

// ---- start, end, fork ----

fn env(name: &str) -> Option<&'static [u8]> {
    let mut key = Vec::with_capacity(name.len() + 1);
    key.extend_from_slice(name.as_bytes());
    key.push(0);
    // SAFETY: getenv with a NUL-terminated name; the result lives as long as the
    // environment, which the constructor reads before the program can change it.
    let p = unsafe { libc::getenv(key.as_ptr().cast()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: getenv returns a NUL-terminated string.
    Some(unsafe { std::ffi::CStr::from_ptr(p) }.to_bytes())
}

fn parse_u64(b: &[u8]) -> Option<u64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

fn read_exe() -> Vec<u8> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: readlink writes at most buf.len() bytes into buf.
    let n = unsafe {
        libc::readlink(
            c"/proc/self/exe".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    buf.truncate(n.max(0) as usize);
    buf
}

extern "C" fn init() {
    mark_agent_thread();
    real::resolve();
    exec::resolve();
    let Some(path) = env(wire::ENV_SOCKET) else {
        return;
    };
    // SAFETY: single-threaded as far as the agent is concerned: no other agent code runs
    // before ENABLED is set at the end of this function.
    unsafe {
        let dst = &mut *conn::PATH.0.get();
        let n = path.len().min(dst.len() - 1);
        dst[..n].copy_from_slice(&path[..n]);
        *EXE.0.get() = read_exe();
    }
    if let Some(d) = env(wire::ENV_MAX_DEPTH).and_then(parse_u64) {
        MAX_DEPTH.store(d as usize, Ordering::Release);
    }
    if let Some(d) = env(wire::ENV_STRLEN).and_then(parse_u64) {
        STRLEN.store(d as usize, Ordering::Release);
    }
    let mut key: libc::pthread_key_t = 0;
    // SAFETY: creates a key with a destructor that only touches agent state.
    if unsafe { libc::pthread_key_create(&mut key, Some(thread_exit)) } == 0 {
        KEY.store(key as usize, Ordering::Release);
    }
    // SAFETY: registers handlers that only take and release the agent's own locks and
    // reset the agent's state in the child.
    unsafe { libc::pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child)) };
    // SAFETY: getpid and getppid have no preconditions.
    let (me, parent) = unsafe { (libc::getpid() as u32, libc::getppid() as u32) };
    OWN_PID.store(me, Ordering::Release);
    if !conn::connect(wire::CAUSE_IMAGE, parent, exe()) {
        return;
    }
    // Modules first: the recorder looks for prototypes of the imports in the libraries'
    // debug info before it answers the import list.
    let mods = modules::rescan(exe()).unwrap_or_default();
    conn::send_modules(&mods);
    let found = if env(wire::ENV_IMPORTS) != Some(b"0") {
        imports::find()
    } else {
        None
    };
    let hooks = found.as_ref().map_or(&[][..], |f| &f.hooks[..]);
    conn::send_imports(hooks);
    // The recorder answers which imports its `-e` chains select.
    let chosen = conn::read_choice(hooks.len());
    if let Some(found) = found {
        imports::install(found, chosen);
    }
    conn::start_writer();
    signals::install();
    ENABLED.store(true, Ordering::Release);
    tls().guard.set(false);
}

extern "C" fn fini() {
    guarded(finish);
}

extern "C" fn fork_prepare() {
    tls().guard.set(true);
    modules::LOCK.write();
    conn::DRAIN.write();
    conn::SOCK.write();
}

extern "C" fn fork_parent() {
    conn::SOCK.write_unlock();
    conn::DRAIN.write_unlock();
    modules::LOCK.write_unlock();
    tls().guard.set(false);
}

extern "C" fn fork_child() {
    conn::SOCK.reset();
    conn::DRAIN.reset();
    modules::LOCK.reset();
    let was_enabled = ENABLED.load(Ordering::Acquire) && !FINISHED.load(Ordering::Acquire);
    disable();
    conn::abandon();
    // The parent's unsent records stay the parent's; only this thread exists here.
    let me = tls().state.get();
    let tid = gettid();
    for r in ring::iter() {
        r.clear();
        r.busy.store(0, Ordering::Release);
        // SAFETY: `me` is this thread's state pointer (or null).
        let mine = !me.is_null() && std::ptr::eq(r, unsafe { (*me).ring });
        if mine {
            r.tid.store(tid, Ordering::Release);
            r.restart_chain();
        } else {
            r.state.store(ring::FREE, Ordering::Release);
        }
    }
    if !me.is_null() {
        // SAFETY: this thread's own state; the new stream knows none of its stacks, and
        // the calls it is inside (fork itself) were entered in the parent's stream.
        unsafe {
            (*me).stacks.clear();
            (*me).unwinds.clear();
            (*me).open.clear();
            // The child's stream starts its coded calls from nothing.
            (*me).coder = wire::coded::Coder::default();
            (*me).coded_key = 0;
        }
    }
    // SAFETY: getpid has no preconditions.
    OWN_PID.store(unsafe { libc::getpid() } as u32, Ordering::Release);
    if was_enabled {
        // SAFETY: getppid has no preconditions.
        let parent = unsafe { libc::getppid() } as u32;
        if conn::connect(wire::CAUSE_FORK, parent, exe()) {
            conn::send_imports(imports::hooks());
            // The slots were redirected before the fork: the answer changes nothing.
            let _ = conn::read_choice(imports::hooks().len());
            conn::send_modules(&modules::snapshot());
            conn::start_writer();
            ENABLED.store(true, Ordering::Release);
        }
    }
    tls().guard.set(false);
}

#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = init;

#[used]
#[link_section = ".fini_array"]
static FINI: extern "C" fn() = fini;
