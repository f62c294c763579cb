//! The `exec` family: an image that execs loses whatever its rings still hold, so every
//! variant first sends it. The shims are naked so that one body serves fixed and
//! variadic prototypes alike (`execl` cannot be written in stable Rust): they save the
//! argument registers, flush, restore them, and jump to the real function.

use std::sync::atomic::{AtomicUsize, Ordering};

macro_rules! exec_shims {
    ($($name:ident / $real:ident),* $(,)?) => {
        $(
            static $real: AtomicUsize = AtomicUsize::new(0);

            /// Interposed exec variant: flushes the rings, then runs the real one.
            #[unsafe(naked)]
            #[no_mangle]
            pub extern "C" fn $name() {
                std::arch::naked_asm!(
                    // Seven pushes keep the stack 16-byte aligned at the call.
                    "push rdi", "push rsi", "push rdx", "push rcx", "push r8", "push r9",
                    "push rax",
                    "call {before}",
                    "pop rax", "pop r9", "pop r8", "pop rcx", "pop rdx", "pop rsi",
                    "pop rdi",
                    "jmp qword ptr [rip + {real}]",
                    before = sym before_exec,
                    real = sym $real,
                )
            }
        )*

        /// Looks the real exec functions up (before any can be called).
        pub fn resolve() {
            $(
                if $real.load(Ordering::Acquire) == 0 {
                    // SAFETY: dlsym with a NUL-terminated name.
                    let p = unsafe {
                        libc::dlsym(libc::RTLD_NEXT, concat!(stringify!($name), "\0").as_ptr().cast())
                    };
                    $real.store(p as usize, Ordering::Release);
                }
            )*
        }
    };
}

exec_shims!(
    execve / REAL_EXECVE,
    execv / REAL_EXECV,
    execvp / REAL_EXECVP,
    execvpe / REAL_EXECVPE,
    fexecve / REAL_FEXECVE,
    execl / REAL_EXECL,
    execlp / REAL_EXECLP,
    execle / REAL_EXECLE,
);

extern "C" fn before_exec() {
    resolve();
    crate::flush_before_exec();
}
