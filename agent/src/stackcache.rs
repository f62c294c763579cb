//! Skips the unwind when a hook runs again on the same stack. An unwind is a function of
//! the registers it starts from (the hook's `pc`, `sp`, `bp`), the module list, and the
//! stack words it reads; if a later call starts from the same registers and those words
//! still hold the same values, it would find the same frames. So each entry keeps the
//! words the unwinder read and the stack id it found, and a hit costs one comparison per
//! word read (about two per frame) instead of the CFI lookups, the unwind and the hash
//! of the frames.
//!
//! `bp` and the words where functions saved it are the exception: in code without frame
//! pointers `bp` is an ordinary register (a loop counter) that changes between calls from
//! the same place, and the hook's prologue saves it on the stack, where the unwinder
//! reads it back, while no frame's rule uses it. So a value (the `bp` register, or a
//! word read) that differed between two calls whose unwinds read the same addresses and
//! found the same stack is dropped from the entry's checks. A value that mattered would
//! have moved the addresses read after it (a frame pointer locates its frame) or changed
//! the frames. (A frame-pointer rule can also end an unwind by comparing `bp` with `sp`
//! without reading through it; two different values that both end it there, and a third
//! that would not, is the one case this cannot tell apart: the stack found is then the
//! truncated one found before.)

/// Sets per thread, chosen by `sp` and `pc`.
const SETS: usize = 32;
/// Entries per set: calls from different places can share the hook's `pc` and `sp` (two
/// call sites at one depth, every import through the one trampoline): a single entry per
/// key made such calls evict each other on every call, and each of them unwound again.
const WAYS: usize = 4;
/// Most words an entry checks; deeper unwinds are not cached.
const MAX_READS: usize = 256;

/// The stack words one unwind read, in order.
#[derive(Default)]
pub struct ReadLog {
    /// (address, value) of every successful read.
    pub reads: Vec<(u64, u64)>,
    /// More reads than an entry can hold were made.
    pub overflow: bool,
    /// The module list's generation the unwind used.
    pub generation: u32,
}

impl ReadLog {
    /// Forgets the previous unwind's reads.
    pub fn clear(&mut self) {
        self.reads.clear();
        self.overflow = false;
    }

    /// Notes a successful read.
    #[inline(always)]
    pub fn push(&mut self, addr: u64, value: u64) {
        if self.reads.len() < MAX_READS {
            self.reads.push((addr, value));
        } else {
            self.overflow = true;
        }
    }
}

#[derive(Default)]
struct Entry {
    key: Key,
    /// `key.bp` made no difference to the unwind.
    bp_free: bool,
    id: u32,
    /// The words read: address, value, and whether the value is checked; empty in an
    /// unused entry.
    reads: Vec<(u64, u64, bool)>,
}

impl Entry {
    /// An unwind from `k` would start where this one did (`bp` aside).
    fn starts_like(&self, k: &Key) -> bool {
        let e = &self.key;
        !self.reads.is_empty()
            && (e.pc, e.sp, e.end, e.generation) == (k.pc, k.sp, k.end, k.generation)
    }

    /// An unwind from `k` would find this entry's stack.
    #[inline(always)]
    fn matches(&self, k: &Key) -> bool {
        self.starts_like(k) && (self.bp_free || self.key.bp == k.bp) && words_unchanged(&self.reads)
    }
}

/// Where the unwind would start: the hook's registers, the end of the stack mapping it
/// reads within, and the module list's generation.
#[derive(Clone, Copy, Default)]
pub struct Key {
    /// The hook's instruction pointer.
    pub pc: u64,
    /// Its stack pointer.
    pub sp: u64,
    /// Its frame pointer register.
    pub bp: u64,
    /// End of the stack mapping (reads are bounded by `sp..end`).
    pub end: u64,
    /// The module list's generation ([`crate::modules::generation`]).
    pub generation: u32,
}

/// One thread's cache.
#[derive(Default)]
pub struct StackCache {
    entries: Vec<Entry>,
    /// Per set, the way the next new entry replaces (round robin).
    next: [u8; SETS],
}

/// The first entry of `k`'s set.
fn set(k: &Key) -> usize {
    // sp is 16-aligned at calls; pc separates hooks at the same depth.
    let h = (k.sp >> 4) ^ (k.sp >> 11) ^ k.pc.rotate_left(7);
    (h as usize) % SETS * WAYS
}

impl StackCache {
    /// The stack id of an earlier unwind from `k` whose words are unchanged; on `None`,
    /// unwind and call [`StackCache::store`].
    #[inline(always)]
    pub fn lookup(&self, k: &Key) -> Option<u32> {
        let at = set(k);
        let ways = self.entries.get(at..at + WAYS)?;
        ways.iter().find(|e| e.matches(k)).map(|e| e.id)
    }

    /// Remembers the unwind from `k` that read `log` and found stack `id`.
    pub fn store(&mut self, k: &Key, log: &ReadLog, id: u32) {
        // Only reads inside this key's stack mapping are ever kept: a lookup that matches
        // the key (same `sp` and `end`) may then read them without checking bounds again.
        if log.overflow || log.reads.is_empty() || !log.reads.iter().all(|&(a, _)| inside(a, k)) {
            return;
        }
        if self.entries.is_empty() {
            self.entries.resize_with(SETS * WAYS, Entry::default);
        }
        let at = set(k);
        let ways = &mut self.entries[at..at + WAYS];
        let same_walk = |e: &Entry| {
            e.starts_like(k)
                && e.id == id
                && e.reads.len() == log.reads.len()
                && e.reads.iter().zip(&log.reads).all(|(a, b)| a.0 == b.0)
        };
        if let Some(e) = ways.iter_mut().find(|e| same_walk(e)) {
            // The same addresses read and the same frames found: the values that differ
            // played no part.
            if e.key.bp != k.bp {
                e.bp_free = true;
            }
            for (a, b) in e.reads.iter_mut().zip(&log.reads) {
                if a.1 != b.1 {
                    a.2 = false;
                }
            }
            return;
        }
        // An entry a lookup from `k` would take is wrong now (a bp or value it stopped
        // checking mattered after all): it goes first. (A hook stores only after a miss,
        // so this only happens to callers that store without looking up.)
        for e in ways.iter_mut() {
            if e.matches(k) {
                e.reads.clear();
            }
        }
        // An empty way, else the next in turn.
        let w = match ways.iter().position(|e| e.reads.is_empty()) {
            Some(w) => w,
            None => {
                let n = &mut self.next[at / WAYS];
                *n = n.wrapping_add(1);
                usize::from(*n) % WAYS
            }
        };
        let e = &mut self.entries[at + w];
        e.key = *k;
        e.bp_free = false;
        e.id = id;
        e.reads.clear();
        e.reads.extend(log.reads.iter().map(|&(a, v)| (a, v, true)));
    }

    /// Forgets every entry (a forked child numbers its stacks anew).
    pub fn clear(&mut self) {
        for e in &mut self.entries {
            e.reads.clear();
        }
    }
}

/// `a` is an aligned word within `sp..end` of `k`'s stack mapping.
fn inside(a: u64, k: &Key) -> bool {
    a >= k.sp && a.saturating_add(8) <= k.end && a.is_multiple_of(8)
}

#[inline(always)]
fn words_unchanged(reads: &[(u64, u64, bool)]) -> bool {
    reads.iter().all(|&(a, v, checked)| {
        !checked || {
            // SAFETY: `store` keeps only 8-aligned reads inside `sp..end` of the entry's
            // key, and the lookup matched that key: `a` lies in the stack mapping the hook
            // runs on.
            unsafe { (a as *const u64).read_volatile() == v }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(stack: &[u64], bp: u64) -> Key {
        let sp = stack.as_ptr() as u64;
        Key {
            pc: 0x1000,
            sp,
            bp,
            end: sp + 8 * stack.len() as u64,
            generation: 1,
        }
    }

    fn log_of(stack: &[u64]) -> ReadLog {
        let mut log = ReadLog::default();
        for (i, v) in stack.iter().enumerate() {
            log.push(stack.as_ptr() as u64 + 8 * i as u64, *v);
        }
        log
    }

    #[test]
    fn a_changed_word_or_start_misses() {
        let mut stack = vec![11u64, 22, 33, 44];
        let mut c = StackCache::default();
        let k = key(&stack, 7);
        assert!(c.lookup(&k).is_none());
        c.store(&k, &log_of(&stack), 5);
        assert_eq!(c.lookup(&k), Some(5));
        // Another module list.
        assert!(c.lookup(&Key { generation: 2, ..k }).is_none());
        // Another bp, not yet known to be irrelevant.
        assert!(c.lookup(&key(&stack, 8)).is_none());
        // A return address on the stack changed.
        stack[2] = 34;
        assert!(c.lookup(&key(&stack, 7)).is_none());
    }

    #[test]
    fn bp_is_dropped_from_the_key_only_after_it_made_no_difference() {
        let stack = vec![1u64, 2, 3];
        let mut c = StackCache::default();
        c.store(&key(&stack, 7), &log_of(&stack), 9);
        // Same words, same stack with another bp: bp is free from now on.
        c.store(&key(&stack, 8), &log_of(&stack), 9);
        assert_eq!(c.lookup(&key(&stack, 1234)), Some(9));
        // A different stack with another bp replaces the entry, bp-bound again.
        c.store(&key(&stack, 5), &log_of(&stack), 10);
        assert_eq!(c.lookup(&key(&stack, 5)), Some(10));
        assert!(c.lookup(&key(&stack, 6)).is_none());
    }

    #[test]
    fn a_saved_register_that_made_no_difference_is_not_checked() {
        let mut stack = vec![100u64, 7, 300];
        let mut c = StackCache::default();
        c.store(&key(&stack, 1), &log_of(&stack), 4);
        // Word 1 (a saved register) differs, the walk and the stack do not.
        stack[1] = 8;
        c.store(&key(&stack, 1), &log_of(&stack), 4);
        stack[1] = 9;
        assert_eq!(c.lookup(&key(&stack, 1)), Some(4));
        // The return addresses are still checked.
        stack[2] = 301;
        assert!(c.lookup(&key(&stack, 1)).is_none());
    }

    #[test]
    fn reads_outside_the_stack_mapping_are_never_cached() {
        let stack = vec![1u64, 2, 3, 4];
        let k = key(&stack[..3], 0);
        let mut c = StackCache::default();
        // The fourth word lies past `end`: a lookup must not read it unchecked.
        c.store(&k, &log_of(&stack), 1);
        assert!(c.lookup(&k).is_none());
        let mut log = log_of(&stack[..3]);
        log.reads[1].0 += 1; // unaligned
        c.store(&k, &log, 1);
        assert!(c.lookup(&k).is_none());
        c.store(&k, &log_of(&stack[..3]), 1);
        assert_eq!(c.lookup(&k), Some(1));
    }

    #[test]
    fn call_sites_sharing_the_hooks_registers_do_not_evict_each_other() {
        // Two callers at the same depth: the same hook pc and sp, different return
        // addresses on the stack. Alternating, each must still hit.
        let mut a = vec![1u64, 0x1000, 3];
        let k = key(&a, 0);
        let log_a = log_of(&a);
        let mut c = StackCache::default();
        c.store(&k, &log_a, 1);
        a[1] = 0x2000;
        assert!(c.lookup(&k).is_none());
        c.store(&k, &log_of(&a), 2);
        for _ in 0..3 {
            a[1] = 0x1000;
            assert_eq!(c.lookup(&k), Some(1));
            a[1] = 0x2000;
            assert_eq!(c.lookup(&k), Some(2));
        }
        // More sites than ways: the oldest go, the cache keeps working.
        for site in 0..(2 * WAYS as u64) {
            a[1] = 0x3000 + site;
            c.store(&k, &log_of(&a), 10 + site as u32);
            assert_eq!(c.lookup(&k), Some(10 + site as u32));
        }
    }

    #[test]
    fn overflowing_unwinds_are_not_cached() {
        let stack = vec![1u64; 4];
        let mut log = log_of(&stack);
        log.overflow = true;
        let mut c = StackCache::default();
        c.store(&key(&stack, 0), &log, 1);
        assert!(c.lookup(&key(&stack, 0)).is_none());
    }
}
