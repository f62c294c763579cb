//! Per-thread byte rings: the owning thread appends whole records without a system call;
//! whoever holds the drain lock (the agent's writer thread, or a producer whose ring is
//! full and finds no writer) copies them to the recorder's socket.

use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU8, AtomicUsize, Ordering};

use crate::sync::{sleep_briefly, yield_now};

/// Bytes per ring; a power of two.
pub const RING_BYTES: usize = 256 << 10;

/// Ring state: unused, ready for a new thread.
pub const FREE: u8 = 0;
/// Ring state: owned by a running thread.
pub const LIVE: u8 = 1;
/// Ring state: its thread exited; reusable once drained.
pub const DEAD: u8 = 2;

/// One thread's ring.
pub struct Ring {
    buf: *mut u8,
    /// Bytes ever written (the producer's position).
    head: AtomicUsize,
    /// Bytes ever drained (the consumer's position).
    tail: AtomicUsize,
    /// Kernel thread id of the owner.
    pub tid: AtomicU32,
    /// [`FREE`], [`LIVE`] or [`DEAD`].
    pub state: AtomicU8,
    /// Drain passes in a row that found nothing (the drainer's bookkeeping).
    pub idle: AtomicU32,
    next: *mut Ring,
}

// SAFETY: `buf` is only written by the owning thread between `tail` and `tail +
// RING_BYTES` and only read by the drain-lock holder between `tail` and `head`; the
// positions are atomics with release/acquire ordering.
unsafe impl Sync for Ring {}
// SAFETY: as above; rings are never freed, so references stay valid.
unsafe impl Send for Ring {}

static RINGS: AtomicPtr<Ring> = AtomicPtr::new(std::ptr::null_mut());

/// Takes a free ring for thread `tid`, or makes a new one; `None` if memory ran out.
pub fn acquire(tid: u32) -> Option<&'static Ring> {
    for r in iter() {
        if r.state.load(Ordering::Acquire) == FREE
            && r.state
                .compare_exchange(FREE, LIVE, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            r.tid.store(tid, Ordering::Release);
            r.idle.store(0, Ordering::Relaxed);
            return Some(r);
        }
    }
    // SAFETY: anonymous private mapping; checked for failure below.
    let buf = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            RING_BYTES,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if buf == libc::MAP_FAILED {
        return None;
    }
    let ring = Box::leak(Box::new(Ring {
        buf: buf.cast(),
        head: AtomicUsize::new(0),
        tail: AtomicUsize::new(0),
        tid: AtomicU32::new(tid),
        state: AtomicU8::new(LIVE),
        idle: AtomicU32::new(0),
        next: std::ptr::null_mut(),
    }));
    let mut head = RINGS.load(Ordering::Acquire);
    loop {
        ring.next = head;
        match RINGS.compare_exchange_weak(head, ring, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Some(ring),
            Err(h) => head = h,
        }
    }
}

/// Every ring ever made.
pub fn iter() -> impl Iterator<Item = &'static Ring> {
    let mut p = RINGS.load(Ordering::Acquire);
    std::iter::from_fn(move || {
        if p.is_null() {
            return None;
        }
        // SAFETY: rings are leaked boxes, published with release ordering, never freed.
        let r = unsafe { &*p };
        p = r.next;
        Some(r)
    })
}

impl Ring {
    /// Appends one record, waiting (and draining, if nobody else does) while the ring is
    /// full. Records larger than the ring are refused.
    pub fn push(&self, rec: &[u8], drain: &dyn Fn()) -> bool {
        if rec.len() > RING_BYTES {
            return false;
        }
        let head = self.head.load(Ordering::Relaxed);
        let mut waits = 0u32;
        while RING_BYTES - (head - self.tail.load(Ordering::Acquire)) < rec.len() {
            drain();
            // The recorder is behind: spinning on sched_yield would take the CPU it needs
            // to catch up (on two cores, 15% of the run went to yields).
            if waits < 4 {
                yield_now();
            } else {
                sleep_briefly();
            }
            waits += 1;
        }
        let at = head % RING_BYTES;
        let first = rec.len().min(RING_BYTES - at);
        // SAFETY: [head, head + len) is free space of this ring (checked above against the
        // consumer's position), and only this thread writes it; the two copies split it at
        // the end of the buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(rec.as_ptr(), self.buf.add(at), first);
            std::ptr::copy_nonoverlapping(rec.as_ptr().add(first), self.buf, rec.len() - first);
        }
        self.head.store(head + rec.len(), Ordering::Release);
        true
    }

    /// Copies every published byte to `out`; returns how many (pass it to [`Ring::consume`]
    /// once they are sent). Only the drain-lock holder calls this.
    pub fn peek(&self, out: &mut Vec<u8>) -> usize {
        let tail = self.tail.load(Ordering::Relaxed);
        let head = self.head.load(Ordering::Acquire);
        let n = head - tail;
        let at = tail % RING_BYTES;
        let first = n.min(RING_BYTES - at);
        // SAFETY: [tail, head) was published by the producer's release store of `head`
        // and is not overwritten until `tail` moves past it.
        unsafe {
            out.extend_from_slice(std::slice::from_raw_parts(self.buf.add(at), first));
            out.extend_from_slice(std::slice::from_raw_parts(self.buf, n - first));
        }
        n
    }

    /// Releases `n` drained bytes to the producer.
    pub fn consume(&self, n: usize) {
        self.tail.fetch_add(n, Ordering::Release);
    }

    /// Drops unsent bytes (the child of `fork`: they belong to the parent's stream).
    pub fn clear(&self) {
        self.tail
            .store(self.head.load(Ordering::Acquire), Ordering::Release);
    }
}
