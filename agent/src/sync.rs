//! Locks that can be taken and released from `pthread_atfork` handlers (std's guards
//! cannot cross those calls) and that never allocate.

use std::sync::atomic::{AtomicU32, Ordering};

const WRITER: u32 = 1 << 31;

/// A reader-writer spin lock with yielding; writers are rare (module list changes, fork).
pub struct RwSpin(AtomicU32);

impl RwSpin {
    /// An unlocked lock.
    pub const fn new() -> Self {
        RwSpin(AtomicU32::new(0))
    }

    /// Takes a shared hold.
    pub fn read(&self) {
        loop {
            let v = self.0.load(Ordering::Relaxed);
            if v & WRITER != 0 {
                // Writers are rare and short; readers only race each other, which a
                // retry settles without a system call.
                yield_now();
                continue;
            }
            if self
                .0
                .compare_exchange_weak(v, v + 1, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return;
            }
            std::hint::spin_loop();
        }
    }

    /// Releases a shared hold.
    pub fn read_unlock(&self) {
        self.0.fetch_sub(1, Ordering::Release);
    }

    /// Takes the exclusive hold.
    pub fn write(&self) {
        loop {
            if self
                .0
                .compare_exchange_weak(0, WRITER, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return;
            }
            yield_now();
        }
    }

    /// Takes the exclusive hold if nobody holds the lock.
    pub fn try_write(&self) -> bool {
        self.0
            .compare_exchange(0, WRITER, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Releases the exclusive hold.
    pub fn write_unlock(&self) {
        self.0.store(0, Ordering::Release);
    }

    /// Forgets every hold (the child of `fork`, where the holders do not exist).
    pub fn reset(&self) {
        self.0.store(0, Ordering::Release);
    }
}

/// Gives the CPU away while spinning.
pub fn yield_now() {
    // SAFETY: sched_yield has no preconditions.
    unsafe { libc::sched_yield() };
}

/// Sleeps about 50 microseconds: long enough to give the CPU to whoever drains.
pub fn sleep_briefly() {
    let ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 50_000,
    };
    // SAFETY: nanosleep reads `ts`; a null remainder is allowed.
    unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
}
