//! Puts one process image's records back in call order. Every record the agent sends
//! carries a number from a process-wide counter; each batch holds one thread's records in
//! the order that thread numbered them, and batches of different threads interleave. The
//! merge keeps each batch as it arrived (a run) and hands out the head with the smallest
//! number once its turn has come: the number after the last one handed out. Records are
//! lent in place, in their run, rather than moved through a window indexed by number.
//!
//! A number that never comes (a thread stopped between numbering a call and writing it)
//! would hold everything back: once more than [`MAX_WAITING`] records wait, the merge
//! gives up on the missing numbers before the smallest head and counts them as lost.
//! At the end of a stream, the rest is handed out in order, gaps ignored (numbers taken
//! by calls still running when the process ended).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Most records held back waiting for a missing number.
pub const MAX_WAITING: usize = 1 << 20;

/// One batch: a thread's records with their numbers, in the order it sent them.
struct Run<T> {
    tid: u32,
    items: Vec<(u64, T)>,
    /// Index of the head: the next record to hand out.
    next: usize,
}

/// The records of one stream waiting for their turn.
pub struct Merge<T> {
    runs: Vec<Option<Run<T>>>,
    free: Vec<usize>,
    /// (number of a run's head, run slot), smallest first.
    heads: BinaryHeap<Reverse<(u64, usize)>>,
    /// A run whose last record was handed out by reference: freed at the next call.
    spent: Option<usize>,
    next: u64,
    waiting: usize,
    /// Numbers given up on (never received while later records waited).
    pub lost: u64,
}

impl<T> Default for Merge<T> {
    fn default() -> Self {
        Merge {
            runs: Vec::new(),
            free: Vec::new(),
            heads: BinaryHeap::new(),
            spent: None,
            next: 0,
            waiting: 0,
            lost: 0,
        }
    }
}

impl<T> Merge<T> {
    /// Adds thread `tid`'s records, in the order it sent them.
    pub fn push(&mut self, tid: u32, items: Vec<(u64, T)>) {
        let Some(&(head, _)) = items.first() else {
            return;
        };
        self.waiting += items.len();
        let slot = self.free.pop().unwrap_or(self.runs.len());
        self.heads.push(Reverse((head, slot)));
        let run = Run {
            tid,
            items,
            next: 0,
        };
        if slot == self.runs.len() {
            self.runs.push(Some(run));
        } else {
            self.runs[slot] = Some(run);
        }
    }

    /// The next record whose turn has come, with its thread; with `all` (the stream
    /// ended), the next one in order whatever is missing before it. The record is lent
    /// where it lies, not moved: copying records this size out of their batch, through
    /// the stack, was most of the merge's time.
    pub fn pop(&mut self, all: bool) -> Option<(u32, &mut T)> {
        if let Some(slot) = self.spent.take() {
            self.runs[slot] = None;
            self.free.push(slot);
        }
        let &Reverse((seq, slot)) = self.heads.peek()?;
        if seq > self.next {
            if all {
                self.next = seq;
            } else if self.waiting > MAX_WAITING {
                self.lost += seq - self.next;
                self.next = seq;
            } else {
                return None;
            }
        }
        let run = self.runs.get_mut(slot)?.as_mut()?;
        let at = run.next;
        run.next += 1;
        match run.items.get(run.next) {
            Some(&(h, _)) => {
                // The run's next head replaces it at the top: one sift instead of a pop
                // and a push. A confused stream may go backwards: that record is simply
                // behind.
                if let Some(mut top) = self.heads.peek_mut() {
                    *top = Reverse((h, slot));
                }
            }
            None => {
                self.heads.pop();
                self.spent = Some(slot);
            }
        }
        self.waiting -= 1;
        let (n, item) = run.items.get_mut(at)?;
        // A number behind the ones handed out (only a confused stream sends one) goes
        // out at once and moves nothing.
        if *n >= self.next {
            self.next = n.saturating_add(1);
        }
        Some((run.tid, item))
    }

    /// Records waiting.
    pub fn waiting(&self) -> usize {
        self.waiting
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(m: &mut Merge<&'static str>, all: bool) -> Vec<(u32, &'static str)> {
        std::iter::from_fn(|| m.pop(all).map(|(t, s)| (t, *s))).collect()
    }

    #[test]
    fn interleaved_threads_come_out_in_number_order() {
        let mut m = Merge::default();
        m.push(1, vec![(0, "a0"), (2, "a2"), (3, "a3")]);
        // 1 is missing: nothing past 0 may go.
        assert_eq!(drain(&mut m, false), [(1, "a0")]);
        m.push(2, vec![(1, "b1"), (4, "b4")]);
        assert_eq!(
            drain(&mut m, false),
            [(2, "b1"), (1, "a2"), (1, "a3"), (2, "b4")]
        );
        assert_eq!(m.waiting(), 0);
        assert_eq!(m.lost, 0);
    }

    #[test]
    fn the_end_of_a_stream_releases_past_gaps_without_counting_them() {
        let mut m = Merge::default();
        m.push(1, vec![(0, "x"), (5, "y")]);
        assert_eq!(drain(&mut m, false), [(1, "x")]);
        assert_eq!(drain(&mut m, true), [(1, "y")]);
        assert_eq!(m.lost, 0);
    }

    #[test]
    fn a_number_that_never_comes_is_given_up_once_too_much_waits() {
        let mut m = Merge::default();
        let items: Vec<(u64, &str)> = (1..=MAX_WAITING as u64 + 1).map(|n| (n, "r")).collect();
        m.push(7, items);
        let out = drain(&mut m, false);
        // The first record past the limit moved the merge past the missing 0; the rest
        // follow in order.
        assert_eq!(out.len(), MAX_WAITING + 1);
        assert_eq!(m.lost, 1);
    }

    #[test]
    fn records_are_lent_in_place_and_spent_runs_are_reused() {
        let mut m: Merge<String> = Merge::default();
        for n in 0..1000u64 {
            m.push(
                (n % 3) as u32,
                vec![(2 * n, format!("a{n}")), (2 * n + 1, format!("b{n}"))],
            );
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
    fn a_confused_stream_neither_loops_nor_loses_records() {
        let mut m = Merge::default();
        m.push(1, vec![(0, "a"), (3, "b"), (1, "c"), (1, "d")]);
        m.push(2, vec![(2, "e")]);
        let out = drain(&mut m, true);
        assert_eq!(out.len(), 5);
        assert_eq!(out[0], (1, "a"));
    }
}
