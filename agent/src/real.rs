//! The allocator functions the agent interposes, as the next library in the lookup order
//! (normally libc) defines them.
//!
//! `dlsym` itself allocates (its error buffer), so while the pointers are being looked up
//! allocations are served from a small static arena; the arena's blocks are never freed.

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

/// Bootstrap arena for allocations made while `dlsym` runs.
const ARENA: usize = 64 << 10;
#[repr(C, align(16))]
struct Arena([u8; ARENA]);
static mut ARENA_BYTES: Arena = Arena([0; ARENA]);
static ARENA_USED: AtomicUsize = AtomicUsize::new(0);
static RESOLVING: AtomicBool = AtomicBool::new(false);

macro_rules! real_fns {
    ($($name:ident),*) => {
        $(
            #[allow(non_upper_case_globals)]
            static $name: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());
        )*

        /// Looks every function up once; later calls are no-ops.
        pub fn resolve() {
            if RESOLVED.load(Ordering::Acquire) {
                return;
            }
            if RESOLVING.swap(true, Ordering::AcqRel) {
                return;
            }
            $(
                // SAFETY: dlsym with a NUL-terminated name; RTLD_NEXT skips this library.
                let p = unsafe {
                    libc::dlsym(libc::RTLD_NEXT, concat!(stringify!($name), "\0").as_ptr().cast())
                };
                $name.store(p, Ordering::Release);
            )*
            RESOLVED.store(true, Ordering::Release);
            RESOLVING.store(false, Ordering::Release);
        }
    };
}

static RESOLVED: AtomicBool = AtomicBool::new(false);

real_fns!(
    malloc,
    calloc,
    realloc,
    reallocarray,
    free,
    posix_memalign,
    memalign,
    aligned_alloc,
    valloc,
    pvalloc,
    dlclose,
    exit,
    _exit,
    close,
    close_range,
    closefrom
);

/// True while the pointers are being looked up: allocations must come from the arena.
pub fn bootstrapping() -> bool {
    RESOLVING.load(Ordering::Acquire) && !RESOLVED.load(Ordering::Acquire)
}

/// Serves an allocation from the arena (16-byte aligned, 16-byte size header).
pub fn arena_alloc(size: usize, zero: bool) -> *mut c_void {
    let need = (size.saturating_add(16 + 15)) & !15;
    let at = ARENA_USED.fetch_add(need, Ordering::AcqRel);
    if at.saturating_add(need) > ARENA {
        return std::ptr::null_mut();
    }
    // SAFETY: [at, at+need) lies inside the arena and was reserved by the fetch_add above
    // for this caller alone; the arena is static, zero-initialised and never reused.
    unsafe {
        let base = std::ptr::addr_of_mut!(ARENA_BYTES.0).cast::<u8>().add(at);
        base.cast::<usize>().write(size);
        let p = base.add(16);
        if zero {
            std::ptr::write_bytes(p, 0, size);
        }
        p.cast()
    }
}

/// True if `p` came from the arena.
pub fn in_arena(p: *mut c_void) -> bool {
    let start = std::ptr::addr_of!(ARENA_BYTES) as usize;
    (start..start + ARENA).contains(&(p as usize))
}

/// Size recorded for an arena block.
pub fn arena_size(p: *mut c_void) -> usize {
    // SAFETY: callers checked `in_arena(p)`; every arena block has its size 16 bytes before.
    unsafe { p.cast::<u8>().sub(16).cast::<usize>().read() }
}

macro_rules! call_real {
    ($name:ident, $fty:ty, $($a:expr),*) => {{
        let mut p = $name.load(Ordering::Acquire);
        if p.is_null() {
            resolve();
            p = $name.load(Ordering::Acquire);
        }
        if p.is_null() {
            None
        } else {
            // SAFETY: p is the address dlsym returned for this symbol, whose C prototype
            // is $fty.
            let f: $fty = unsafe { std::mem::transmute::<*mut c_void, $fty>(p) };
            // SAFETY: the caller passes arguments it received for the same prototype.
            Some(unsafe { f($($a),*) })
        }
    }};
}

type FnMalloc = unsafe extern "C" fn(usize) -> *mut c_void;
type FnCalloc = unsafe extern "C" fn(usize, usize) -> *mut c_void;
type FnRealloc = unsafe extern "C" fn(*mut c_void, usize) -> *mut c_void;
type FnReallocArray = unsafe extern "C" fn(*mut c_void, usize, usize) -> *mut c_void;
type FnFree = unsafe extern "C" fn(*mut c_void);
type FnPosixMemalign = unsafe extern "C" fn(*mut *mut c_void, usize, usize) -> i32;
type FnAlign = unsafe extern "C" fn(usize, usize) -> *mut c_void;
type FnDlclose = unsafe extern "C" fn(*mut c_void) -> i32;
type FnExit = unsafe extern "C" fn(i32);

/// The real `malloc`.
pub fn real_malloc(size: usize) -> *mut c_void {
    if bootstrapping() {
        return arena_alloc(size, false);
    }
    call_real!(malloc, FnMalloc, size).unwrap_or(std::ptr::null_mut())
}

/// The real `calloc`.
pub fn real_calloc(n: usize, size: usize) -> *mut c_void {
    if bootstrapping() {
        return match n.checked_mul(size) {
            Some(t) => arena_alloc(t, true),
            None => std::ptr::null_mut(),
        };
    }
    call_real!(calloc, FnCalloc, n, size).unwrap_or(std::ptr::null_mut())
}

/// The real `realloc` (arena blocks move to the real heap).
pub fn real_realloc(p: *mut c_void, size: usize) -> *mut c_void {
    if in_arena(p) {
        let q = real_malloc(size);
        if !q.is_null() {
            let n = arena_size(p).min(size);
            // SAFETY: both blocks hold at least n bytes and are distinct allocations.
            unsafe { std::ptr::copy_nonoverlapping(p.cast::<u8>(), q.cast::<u8>(), n) };
        }
        return q;
    }
    call_real!(realloc, FnRealloc, p, size).unwrap_or(std::ptr::null_mut())
}

/// The real `reallocarray`.
pub fn real_reallocarray(p: *mut c_void, n: usize, size: usize) -> *mut c_void {
    if in_arena(p) {
        return match n.checked_mul(size) {
            Some(t) => real_realloc(p, t),
            None => std::ptr::null_mut(),
        };
    }
    call_real!(reallocarray, FnReallocArray, p, n, size).unwrap_or(std::ptr::null_mut())
}

/// The real `free` (arena blocks are never released).
pub fn real_free(p: *mut c_void) {
    if p.is_null() || in_arena(p) {
        return;
    }
    call_real!(free, FnFree, p);
}

/// The real `posix_memalign`.
pub fn real_posix_memalign(pp: *mut *mut c_void, align: usize, size: usize) -> i32 {
    call_real!(posix_memalign, FnPosixMemalign, pp, align, size).unwrap_or(libc::ENOMEM)
}

/// The real `memalign`.
pub fn real_memalign(align: usize, size: usize) -> *mut c_void {
    call_real!(memalign, FnAlign, align, size).unwrap_or(std::ptr::null_mut())
}

/// The real `aligned_alloc`.
pub fn real_aligned_alloc(align: usize, size: usize) -> *mut c_void {
    call_real!(aligned_alloc, FnAlign, align, size).unwrap_or(std::ptr::null_mut())
}

/// The real `valloc`.
pub fn real_valloc(size: usize) -> *mut c_void {
    call_real!(valloc, FnMalloc, size).unwrap_or(std::ptr::null_mut())
}

/// The real `pvalloc`.
pub fn real_pvalloc(size: usize) -> *mut c_void {
    call_real!(pvalloc, FnMalloc, size).unwrap_or(std::ptr::null_mut())
}

/// The real `dlclose`.
pub fn real_dlclose(h: *mut c_void) -> i32 {
    call_real!(dlclose, FnDlclose, h).unwrap_or(-1)
}

type FnClose = unsafe extern "C" fn(i32) -> i32;
type FnCloseRange = unsafe extern "C" fn(u32, u32, i32) -> i32;
type FnClosefrom = unsafe extern "C" fn(i32);

/// The real `close`.
pub fn real_close(fd: i32) -> i32 {
    // SAFETY (fallback): the close system call on a number the caller passed.
    call_real!(close, FnClose, fd).unwrap_or_else(|| unsafe { libc::close(fd) })
}

/// The real `close_range` (the system call if the C library has none).
pub fn real_close_range(first: u32, last: u32, flags: i32) -> i32 {
    call_real!(close_range, FnCloseRange, first, last, flags).unwrap_or_else(|| {
        // SAFETY: the close_range system call with the caller's arguments.
        unsafe { libc::syscall(libc::SYS_close_range, first, last, flags) as i32 }
    })
}

/// The real `closefrom` (close_range if the C library has none).
pub fn real_closefrom(low: i32) {
    if call_real!(closefrom, FnClosefrom, low).is_none() {
        real_close_range(low.max(0) as u32, u32::MAX, 0);
    }
}

/// The real `exit`.
pub fn real_exit(status: i32) -> ! {
    call_real!(exit, FnExit, status);
    // SAFETY: exit_group ends the process; reached only if dlsym found no `exit`.
    unsafe { libc::syscall(libc::SYS_exit_group, status) };
    unreachable_exit()
}

/// The real `_exit`.
pub fn real_underscore_exit(status: i32) -> ! {
    call_real!(_exit, FnExit, status);
    // SAFETY: as in `real_exit`.
    unsafe { libc::syscall(libc::SYS_exit_group, status) };
    unreachable_exit()
}

fn unreachable_exit() -> ! {
    loop {
        // SAFETY: pause has no preconditions; exit_group never returns, this only satisfies
        // the type checker.
        unsafe { libc::pause() };
    }
}
