//! Puts one process image's records back in call order. Every record the agent sends
//! carries an order key (the time stamp counter at the point that orders it against other
//! threads' calls; see `wire::ORDER_MARGIN`); each batch holds one thread's records in
//! the order of their keys, and batches of different threads interleave. The merge keeps
//! each batch as it arrived (a run) and hands out the head with the smallest key once its
//! turn has come: once the agent's last watermark, which says every record with a
//! smaller key has been sent, is above it. A run decodes
//! its records one at a time as the merge reaches them, and each is lent where it lies:
//! decoding a whole batch into records first, on the connection's thread, wrote and then
//! read back three times the bytes the wire holds, through another core's cache.
//!
//! A watermark that stops moving (a thread stopped inside a hook) would hold everything
//! back: once more than [`MAX_WAITING`] bytes of runs wait, the merge hands out the
//! smallest heads without waiting and counts them. At the end of a stream, the rest is
//! handed out in order.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Most bytes of runs held back waiting for the watermark.
pub const MAX_WAITING: usize = 32 << 20;

/// One batch of a thread's records, in the order of their keys.
pub trait Run {
    /// What the run hands out.
    type Item;
    /// The thread whose records these are.
    fn tid(&self) -> u32;
    /// Moves to the next record and returns its key; `None` once the run is spent.
    /// Called once before the first head is looked at.
    fn advance(&mut self) -> Option<u64>;
    /// The current head.
    fn item(&mut self) -> &mut Self::Item;
    /// Whether the current head has a key of its own (a head that has not, such as
    /// definitions left at a batch's end, sorts at the key before it and goes out once it
    /// is the smallest, without waiting for the watermark).
    fn keyed(&self) -> bool {
        true
    }
    /// Bytes the run holds, counted against [`MAX_WAITING`].
    fn size(&self) -> usize;
}

/// A run of records decoded already, each with its key.
pub struct VecRun<T> {
    tid: u32,
    items: Vec<(u64, T)>,
    /// Index of the head plus one; 0 before the first `advance`.
    next: usize,
}

impl<T> VecRun<T> {
    /// Thread `tid`'s records, in its order.
    pub fn new(tid: u32, items: Vec<(u64, T)>) -> Self {
        VecRun {
            tid,
            items,
            next: 0,
        }
    }
}

impl<T> Run for VecRun<T> {
    type Item = T;
    fn tid(&self) -> u32 {
        self.tid
    }
    fn advance(&mut self) -> Option<u64> {
        let (n, _) = self.items.get(self.next)?;
        self.next += 1;
        Some(*n)
    }
    fn item(&mut self) -> &mut T {
        // `advance` returned a number, so the head exists; an index past the end is
        // only reachable by misuse, and then the last record is lent again.
        let i = self
            .next
            .saturating_sub(1)
            .min(self.items.len().saturating_sub(1));
        &mut self.items[i].1
    }
    fn size(&self) -> usize {
        self.items.len() * std::mem::size_of::<(u64, T)>()
    }
}

/// The records of one stream waiting for their turn.
pub struct Merge<R> {
    runs: Vec<Option<R>>,
    free: Vec<usize>,
    /// (key of a run's head, run slot) of the run with the smallest, kept out of
    /// `heads`: a thread's calls come out several in a row (3 to 12 on average in the
    /// 4-thread fixture, with how the threads ran), and each of those is then one
    /// comparison with the heap's top instead of a sift through the heap.
    first: Option<(u64, usize)>,
    /// The same of every other run, smallest first.
    heads: BinaryHeap<Reverse<(u64, usize)>>,
    /// Whether the last `pop` lent `first`'s head: its run moves on at the next call (to
    /// `pop` or `push`), so that the head stays where it lies meanwhile.
    lent: bool,
    /// Every record with a smaller key has been received.
    watermark: u64,
    waiting: usize,
    /// Records handed out before the watermark passed them, since too much waited.
    pub forced: u64,
}

impl<R> Default for Merge<R> {
    fn default() -> Self {
        Merge {
            runs: Vec::new(),
            free: Vec::new(),
            first: None,
            heads: BinaryHeap::new(),
            lent: false,
            watermark: 0,
            waiting: 0,
            forced: 0,
        }
    }
}

impl<R: Run> Merge<R> {
    /// Adds a run (a thread's next records, in the order it sent them).
    pub fn push(&mut self, mut run: R) {
        self.settle();
        let Some(head) = run.advance() else {
            return;
        };
        self.waiting += run.size();
        let slot = self.free.pop().unwrap_or(self.runs.len());
        if slot == self.runs.len() {
            self.runs.push(Some(run));
        } else {
            self.runs[slot] = Some(run);
        }
        let e = (head, slot);
        match self.first {
            None => self.first = Some(e),
            Some(f) if e < f => {
                self.heads.push(Reverse(f));
                self.first = Some(e);
            }
            Some(_) => self.heads.push(Reverse(e)),
        }
    }

    /// Moves the run lent from last on to its next record, or frees it when spent.
    fn settle(&mut self) {
        if !std::mem::take(&mut self.lent) {
            return;
        }
        let Some((_, slot)) = self.first else {
            return;
        };
        let Some(run) = self.runs.get_mut(slot).and_then(|r| r.as_mut()) else {
            return;
        };
        match run.advance() {
            // A confused stream may go backwards: that record is simply behind.
            Some(h) => {
                let e = (h, slot);
                // Looked at first, only taken for the swap: a `PeekMut` costs its drop.
                if self.heads.peek().is_some_and(|top| top.0 < e) {
                    // Another run's head comes first: one sift, the two swapped.
                    if let Some(mut top) = self.heads.peek_mut() {
                        self.first = Some(top.0);
                        *top = Reverse(e);
                    }
                } else {
                    self.first = Some(e);
                }
            }
            None => {
                self.waiting = self.waiting.saturating_sub(run.size());
                self.runs[slot] = None;
                self.free.push(slot);
                self.first = self.heads.pop().map(|Reverse(e)| e);
            }
        }
    }

    /// Notes the agent's word that every record with a key below `w` has been sent.
    pub fn watermark(&mut self, w: u64) {
        self.watermark = self.watermark.max(w);
    }

    /// The next record whose turn has come, with its thread; with `all` (the stream
    /// ended), the next one in order, whatever the watermark. The record is lent
    /// where it lies, not moved: copying records this size out of their batch, through
    /// the stack, was most of the merge's time.
    pub fn pop(&mut self, all: bool) -> Option<(u32, &mut R::Item)> {
        self.settle();
        let (key, slot) = self.first?;
        let run = self.runs.get_mut(slot)?.as_mut()?;
        // A key below the watermark goes out at once, behind the ones handed out or not
        // (only a confused stream sends one behind).
        if run.keyed() && key >= self.watermark && !all {
            if self.waiting <= MAX_WAITING {
                return None;
            }
            // Committed: what comes below it later is late.
            self.forced += 1;
            self.watermark = key.saturating_add(1);
        }
        self.lent = true;
        Some((run.tid(), run.item()))
    }

    /// Bytes of runs waiting.
    pub fn waiting(&self) -> usize {
        self.waiting
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(m: &mut Merge<VecRun<&'static str>>, all: bool) -> Vec<(u32, &'static str)> {
        std::iter::from_fn(|| m.pop(all).map(|(t, s)| (t, *s))).collect()
    }

    #[test]
    fn interleaved_threads_come_out_in_key_order_below_the_watermark() {
        let mut m = Merge::default();
        m.push(VecRun::new(1, vec![(0, "a0"), (2, "a2"), (3, "a3")]));
        m.watermark(1);
        // 1 may still come: nothing from 1 on may go.
        assert_eq!(drain(&mut m, false), [(1, "a0")]);
        m.push(VecRun::new(2, vec![(1, "b1"), (4, "b4")]));
        assert_eq!(drain(&mut m, false), []);
        m.watermark(5);
        assert_eq!(
            drain(&mut m, false),
            [(2, "b1"), (1, "a2"), (1, "a3"), (2, "b4")]
        );
        // A watermark never moves back.
        m.watermark(2);
        m.push(VecRun::new(3, vec![(4, "c4")]));
        assert_eq!(drain(&mut m, false), [(3, "c4")]);
        assert_eq!(m.waiting(), 0);
        assert_eq!(m.forced, 0);
    }

    #[test]
    fn the_end_of_a_stream_releases_everything_in_order() {
        let mut m = Merge::default();
        m.push(VecRun::new(1, vec![(0, "x"), (5, "y")]));
        m.push(VecRun::new(2, vec![(3, "z")]));
        m.watermark(1);
        assert_eq!(drain(&mut m, false), [(1, "x")]);
        assert_eq!(drain(&mut m, true), [(2, "z"), (1, "y")]);
        assert_eq!(m.forced, 0);
    }

    #[test]
    fn a_stalled_watermark_is_passed_once_too_much_waits() {
        let mut m = Merge::default();
        let per = std::mem::size_of::<(u64, &str)>();
        let n = (MAX_WAITING / per) as u64 + 1;
        // Just under the limit: without a watermark everything is held back.
        m.push(VecRun::new(7, (1..n).map(|k| (k, "r")).collect()));
        assert!(m.pop(false).is_none());
        // One more record is past it: the merge hands out the smallest heads in order
        // until the rest fits again.
        m.push(VecRun::new(8, vec![(n, "s")]));
        let out = drain(&mut m, false);
        assert_eq!(out.len() as u64, n - 1);
        assert!(out.iter().all(|&(t, r)| (t, r) == (7, "r")));
        assert_eq!(m.forced, n - 1);
        // The handed-out keys count as passed: a later watermark just above them
        // releases the rest.
        m.watermark(n + 1);
        assert_eq!(drain(&mut m, false), [(8, "s")]);
    }

    #[test]
    fn records_are_lent_in_place_and_spent_runs_are_reused() {
        let mut m: Merge<VecRun<String>> = Merge::default();
        for n in 0..1000u64 {
            m.push(VecRun::new(
                (n % 3) as u32,
                vec![(2 * n, format!("a{n}")), (2 * n + 1, format!("b{n}"))],
            ));
            m.watermark(2 * n + 2);
            let (_, first) = m.pop(false).unwrap();
            let taken = std::mem::take(first);
            assert_eq!(taken, format!("a{n}"));
            let (tid, second) = m.pop(false).unwrap();
            assert_eq!(
                (tid, second.as_str()),
                ((n % 3) as u32, format!("b{n}").as_str())
            );
            assert!(m.pop(false).is_none());
        }
        // Each batch's slot was freed once it was spent: two at most ever existed.
        assert!(m.runs.len() <= 2, "{} runs", m.runs.len());
        assert_eq!(m.waiting(), 0);
    }

    #[test]
    fn a_push_between_pops_moves_the_lent_run_on_first() {
        let mut m = Merge::default();
        m.push(VecRun::new(1, vec![(1, "a1"), (4, "a4")]));
        m.push(VecRun::new(2, vec![(0, "b0")]));
        m.watermark(1);
        assert_eq!(m.pop(false).map(|(t, s)| (t, *s)), Some((2, "b0")));
        // Lent b0's run is spent; the new run's head 2 waits behind a1.
        m.push(VecRun::new(3, vec![(2, "c2"), (3, "c3")]));
        m.watermark(5);
        assert_eq!(
            drain(&mut m, false),
            [(1, "a1"), (3, "c2"), (3, "c3"), (1, "a4")]
        );
    }

    /// A run whose heads alternate: keyed, then one without a key (as stack
    /// definitions left at a batch's end are).
    struct Marked {
        items: Vec<(u64, bool, &'static str)>,
        next: usize,
    }

    impl Run for Marked {
        type Item = &'static str;
        fn tid(&self) -> u32 {
            9
        }
        fn advance(&mut self) -> Option<u64> {
            let n = self.items.get(self.next)?.0;
            self.next += 1;
            Some(n)
        }
        fn item(&mut self) -> &mut &'static str {
            &mut self.items[self.next - 1].2
        }
        fn keyed(&self) -> bool {
            self.items[self.next - 1].1
        }
        fn size(&self) -> usize {
            self.items.len()
        }
    }

    #[test]
    fn a_head_without_a_key_goes_out_in_place_without_waiting() {
        let mut m = Merge::default();
        // A batch holding only definitions, ahead of the stream's first key.
        m.push(Marked {
            items: vec![(0, false, "defs")],
            next: 0,
        });
        m.push(Marked {
            items: vec![(1, true, "one"), (1, false, "tail")],
            next: 0,
        });
        // No watermark yet: "defs" goes (it waits for nothing), "one" does not.
        let out: Vec<&str> = std::iter::from_fn(|| m.pop(false).map(|(_, s)| *s)).collect();
        assert_eq!(out, ["defs"]);
        m.push(Marked {
            items: vec![(0, true, "zero")],
            next: 0,
        });
        m.watermark(2);
        let out: Vec<&str> = std::iter::from_fn(|| m.pop(false).map(|(_, s)| *s)).collect();
        assert_eq!(out, ["zero", "one", "tail"]);
        assert_eq!(m.forced, 0);
    }

    #[test]
    fn a_confused_stream_neither_loops_nor_loses_records() {
        let mut m = Merge::default();
        m.push(VecRun::new(1, vec![(0, "a"), (3, "b"), (1, "c"), (1, "d")]));
        m.push(VecRun::new(2, vec![(2, "e")]));
        let out = drain(&mut m, true);
        assert_eq!(out.len(), 5);
        assert_eq!(out[0], (1, "a"));
    }
}
