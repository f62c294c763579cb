//! Per-thread byte rings: the owning thread appends whole records without a system call;
//! whoever holds the drain lock (the agent's writer thread, or a producer whose ring is
//! full and finds no writer) copies them to the recorder's socket.

use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};

use crate::sync::{sleep_briefly, yield_now};

/// Bytes per ring; a power of two.
pub const RING_BYTES: usize = 256 << 10;

/// Largest record [`Ring::push_with`] takes: one crossing the ring's end is written to a
/// stack buffer of this size first.
pub const BOUNCE: usize = 512;

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
    /// 0 while the owner is outside the agent's hooks; inside one, a lower bound of the
    /// order key of any record it has yet to push (see `wire::ORDER_MARGIN`).
    pub busy: AtomicU64,
    /// The number of its owner's coding state, new with every owner: the recorder keeps
    /// one chain of coded calls per number (see `wire::coded`), so that the records of a
    /// thread's retired state, still in a dead ring, never mix with its next state's.
    pub coder: AtomicU32,
    /// The key of the last coded call below `head`, published with it under `seq` (odd
    /// while the two change): the drainer tells the recorder the key its batch's first
    /// coded call is coded from, so that batches decode without the ones before them.
    key: AtomicU64,
    seq: AtomicU32,
    /// The drainer's: the key of the last coded call below `tail`.
    sent_key: AtomicU64,
    next: *mut Ring,
}

// SAFETY: `buf` is only written by the owning thread between `tail` and `tail +
// RING_BYTES` and only read by the drain-lock holder between `tail` and `head`; the
// positions are atomics with release/acquire ordering.
unsafe impl Sync for Ring {}
// SAFETY: as above; rings are never freed, so references stay valid.
unsafe impl Send for Ring {}

static RINGS: AtomicPtr<Ring> = AtomicPtr::new(std::ptr::null_mut());

/// The next coding state's number.
static NEXT_CODER: AtomicU32 = AtomicU32::new(0);

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
            r.busy.store(0, Ordering::Release);
            r.coder.store(
                NEXT_CODER.fetch_add(1, Ordering::Relaxed),
                Ordering::Release,
            );
            r.restart_chain();
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
        busy: AtomicU64::new(0),
        coder: AtomicU32::new(NEXT_CODER.fetch_add(1, Ordering::Relaxed)),
        key: AtomicU64::new(0),
        seq: AtomicU32::new(0),
        sent_key: AtomicU64::new(0),
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
        let head = self.wait_room(rec.len(), drain);
        self.copy_in(head, rec);
        self.head.store(head + rec.len(), Ordering::Release);
        true
    }

    /// Appends one record of at most `max` bytes (at most [`BOUNCE`]), which `put` writes
    /// into the slice it is given, returning its length: straight into the ring when
    /// the space before the buffer's end allows, so a call record costs no copy (and not
    /// the two `memmove` calls of a few bytes each that a copy made), else through a
    /// bounce buffer. Waits like [`Ring::push`]; the new position is published with `publish`.
    #[inline(always)]
    fn push_published(
        &self,
        max: usize,
        drain: &dyn Fn(),
        put: impl FnOnce(&mut [u8]) -> usize,
        publish: impl FnOnce(usize),
    ) -> bool {
        if max > BOUNCE {
            return false;
        }
        let head = self.wait_room(max, drain);
        let at = head % RING_BYTES;
        let n = if RING_BYTES - at >= max {
            // SAFETY: [head, head + max) is free space of this ring (`wait_room` checked
            // it against the consumer's position) and lies before the buffer's end; only
            // this thread writes it.
            let dst = unsafe { std::slice::from_raw_parts_mut(self.buf.add(at), max) };
            put(dst).min(max)
        } else {
            let mut tmp = [0u8; BOUNCE];
            let n = put(&mut tmp[..max]).min(max);
            self.copy_in(head, &tmp[..n]);
            n
        };
        publish(head + n);
        true
    }

    /// Waits until `len` bytes are free; returns the producer's position.
    #[inline]
    fn wait_room(&self, len: usize, drain: &dyn Fn()) -> usize {
        let head = self.head.load(Ordering::Relaxed);
        let mut waits = 0u32;
        while RING_BYTES - (head - self.tail.load(Ordering::Acquire)) < len {
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
        head
    }

    /// Copies `rec` to the free space at position `head`, split at the buffer's end.
    fn copy_in(&self, head: usize, rec: &[u8]) {
        let at = head % RING_BYTES;
        let first = rec.len().min(RING_BYTES - at);
        // SAFETY: [head, head + len) is free space of this ring (the callers waited for
        // it against the consumer's position), and only this thread writes it; the two
        // copies split it at the end of the buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(rec.as_ptr(), self.buf.add(at), first);
            std::ptr::copy_nonoverlapping(rec.as_ptr().add(first), self.buf, rec.len() - first);
        }
    }

    /// Appends one record of at most `max` bytes as `push_published` does, a coded
    /// call whose order key is `key`: published with the bytes, as the last coded key.
    pub fn push_keyed(
        &self,
        max: usize,
        drain: &dyn Fn(),
        key: u64,
        put: impl FnOnce(&mut [u8]) -> usize,
    ) -> bool {
        self.push_published(max, drain, put, |head| {
            let s = self.seq.load(Ordering::Relaxed);
            self.seq.store(s.wrapping_add(1), Ordering::Relaxed);
            std::sync::atomic::fence(Ordering::Release);
            self.key.store(key, Ordering::Relaxed);
            self.head.store(head, Ordering::Release);
            self.seq.store(s.wrapping_add(2), Ordering::Release);
        })
    }

    /// Copies every published byte to `out`; returns how many and the key of the last
    /// coded call among them (pass both to [`Ring::consume`] once they are sent), or
    /// `None` if the producer kept changing them (try again on the next pass). Only the
    /// drain-lock holder calls this.
    pub fn peek(&self, out: &mut Vec<u8>) -> Option<(usize, u64)> {
        let tail = self.tail.load(Ordering::Relaxed);
        let (head, key) = self.published()?;
        let n = head - tail;
        let at = tail % RING_BYTES;
        let first = n.min(RING_BYTES - at);
        // SAFETY: [tail, head) was published by the producer's release store of `head`
        // and is not overwritten until `tail` moves past it.
        unsafe {
            out.extend_from_slice(std::slice::from_raw_parts(self.buf.add(at), first));
            out.extend_from_slice(std::slice::from_raw_parts(self.buf, n - first));
        }
        Some((n, key))
    }

    /// The producer's position and the last coded key below it, read consistently.
    fn published(&self) -> Option<(usize, u64)> {
        for _ in 0..1000 {
            let s1 = self.seq.load(Ordering::Acquire);
            if s1 & 1 == 0 {
                let head = self.head.load(Ordering::Acquire);
                let key = self.key.load(Ordering::Relaxed);
                std::sync::atomic::fence(Ordering::Acquire);
                if self.seq.load(Ordering::Relaxed) == s1 {
                    return Some((head, key));
                }
            }
            std::hint::spin_loop();
        }
        None
    }

    /// The key the next batch's coded calls are coded from.
    pub fn sent_key(&self) -> u64 {
        self.sent_key.load(Ordering::Relaxed)
    }

    /// Releases `n` drained bytes to the producer; `key` is the last coded key in them.
    pub fn consume(&self, n: usize, key: u64) {
        self.sent_key.store(key, Ordering::Relaxed);
        self.tail.fetch_add(n, Ordering::Release);
    }

    /// Drops unsent bytes (the child of `fork`: they belong to the parent's stream).
    pub fn clear(&self) {
        self.tail
            .store(self.head.load(Ordering::Acquire), Ordering::Release);
    }

    /// Starts the chain of coded keys afresh (a new owner, or the child of `fork`, whose
    /// coding state starts from nothing): only while nobody pushes or drains.
    pub fn restart_chain(&self) {
        self.key.store(0, Ordering::Relaxed);
        self.sent_key.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_written_in_place_or_across_the_end_come_out_whole_and_in_order() {
        let ring = acquire(1).unwrap();
        let mut sent = Vec::new();
        let mut got = Vec::new();
        let mut out = Vec::new();
        let mut last = 0;
        // Records of 1 to 87 bytes: positions drift over the buffer's end many times.
        for i in 0..40_000usize {
            let len = 1 + i % 87;
            let rec: Vec<u8> = (0..len).map(|k| (i * 31 + k) as u8).collect();
            let pushed = if i % 3 == 0 {
                ring.push(&rec, &|| {})
            } else {
                last = i as u64;
                ring.push_keyed(BOUNCE, &|| {}, last, |dst| {
                    dst[..len].copy_from_slice(&rec);
                    len
                })
            };
            assert!(pushed);
            sent.extend_from_slice(&rec);
            if i % 1000 == 999 {
                out.clear();
                let (n, key) = ring.peek(&mut out).unwrap();
                // The last keyed record's key comes with the bytes.
                assert_eq!(key, last);
                got.extend_from_slice(&out);
                ring.consume(n, key);
            }
        }
        out.clear();
        let (n, key) = ring.peek(&mut out).unwrap();
        got.extend_from_slice(&out);
        ring.consume(n, key);
        assert_eq!(got.len(), sent.len());
        assert!(got == sent, "bytes differ");
        assert!(
            !ring.push_keyed(BOUNCE + 1, &|| {}, 0, |_| 0),
            "too large is refused"
        );
    }
}
