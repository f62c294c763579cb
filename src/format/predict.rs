//! Prediction state for thread-coded call records (tag 15, version 7).
//!
//! The calls of one thread repeat themselves: `free` takes the pointer the last `malloc`
//! returned, `malloc` returns a block a recent `free` gave back, and a loop calls from the
//! same few stacks. Calls of different threads interleave in the file, which hides those
//! repeats from zstd. Each thread therefore keeps, per chunk, its own last time, its
//! recently seen pointer-sized values and its recent stacks; a call is coded against them.
//! Threads themselves are coded by recency, since two threads running at once alternate.
//! Times go to a column of their own at the end of the chunk (see `put_times`), where
//! they no longer break zstd's matches of otherwise identical records. Writer and reader
//! share this state machine, so both sides update it identically.

use std::collections::HashMap;

use rltrace_wire::coded::{to_front, CodeError};
pub use rltrace_wire::coded::{Coder, RECENT, SLOT_RET};

#[cfg(test)]
use rltrace_wire::coded::POINTER_MIN;

use super::codec::{Decoder, Encoder};
use super::FormatError;

/// Most threads one chunk may code (the writer seals the chunk before exceeding it).
pub const MAX_THREADS_PER_CHUNK: usize = 1024;

/// What one thread's calls in the current chunk are coded against.
#[derive(Default)]
pub struct ThreadState {
    /// The thread's last time in the chunk, in stored units (0 before its first call).
    pub ts: u64,
    /// Its recent values and stacks (the state machine the agent's coded calls share).
    pub coder: Coder,
}

/// A value or stack code that did not decode, or the bytes that ended first.
enum Bad {
    Code(CodeError),
    Format(FormatError),
}

impl From<CodeError> for Bad {
    fn from(e: CodeError) -> Self {
        Bad::Code(e)
    }
}

/// Codes a value of `func`'s value `slot` with `coder` (see [`Coder::value`]).
pub fn put_value(coder: &mut Coder, e: &mut Encoder, func: u32, slot: usize, v: u64) {
    let (code, far) = coder.value(func, slot, v);
    e.uvar(code);
    if let Some(d) = far {
        e.svar(d);
    }
}

/// Decodes a value coded by [`put_value`].
pub fn get_value(
    coder: &mut Coder,
    d: &mut Decoder,
    func: u32,
    slot: usize,
) -> Result<u64, FormatError> {
    let code = d.uvar()?;
    let v = coder.get_value(func, slot, code, || d.svar().map_err(Bad::Format));
    v.map_err(|b| match b {
        Bad::Code(c) => d.error(c.to_string()),
        Bad::Format(f) => f,
    })
}

/// Decodes a stack code written by [`Coder::stack`].
pub fn get_stack(coder: &mut Coder, d: &mut Decoder) -> Result<Option<u32>, FormatError> {
    let code = d.uvar()?;
    coder.get_stack(code).map_err(|c| d.error(c.to_string()))
}

impl ThreadState {
    /// Codes a value of `func`'s value `slot` (argument index, or `SLOT_RET`).
    pub fn put_value(&mut self, e: &mut Encoder, func: u32, slot: usize, v: u64) {
        put_value(&mut self.coder, e, func, slot, v)
    }

    /// Decodes a value coded by `put_value`.
    #[cfg(test)]
    pub fn get_value(
        &mut self,
        d: &mut Decoder,
        func: u32,
        slot: usize,
    ) -> Result<u64, FormatError> {
        get_value(&mut self.coder, d, func, slot)
    }

    /// Codes a stack id: a hit in the recent stacks, none, or the id.
    pub fn put_stack(&mut self, e: &mut Encoder, stack: Option<u32>) {
        e.uvar(self.coder.stack(stack));
    }

    /// Decodes a stack id coded by `put_stack`.
    #[cfg(test)]
    pub fn get_stack(&mut self, d: &mut Decoder) -> Result<Option<u32>, FormatError> {
        get_stack(&mut self.coder, d)
    }
}

/// Largest start delta and duration a one-byte time code holds.
const SHORT_DELTA: u64 = 16;
const SHORT_DURATION: u64 = 14;
/// The time code that announces a delta and a duration as two `svar`s.
const LONG_TIMES: u8 = 255;

/// Codes a call's start (its distance from the thread's last time) and duration: one
/// byte when both are short, as they are for most calls at microsecond resolution.
pub fn put_times(e: &mut Encoder, delta: u64, duration: u64) {
    if delta <= SHORT_DELTA && duration <= SHORT_DURATION {
        e.u8((delta * (SHORT_DURATION + 1) + duration) as u8);
    } else {
        e.u8(LONG_TIMES);
        e.svar(delta as i64);
        e.svar(duration as i64);
    }
}

/// Decodes a time code written by `put_times`: (start delta, duration).
pub fn get_times(d: &mut Decoder) -> Result<(u64, u64), FormatError> {
    let c = d.u8()?;
    if c == LONG_TIMES {
        let delta = d.svar()? as u64;
        Ok((delta, d.svar()? as u64))
    } else {
        let c = u64::from(c);
        Ok((c / (SHORT_DURATION + 1), c % (SHORT_DURATION + 1)))
    }
}

/// The prediction state of every thread seen in the current chunk.
#[derive(Default)]
pub struct Threads {
    states: Vec<ThreadState>,
    /// Where each thread's state is in `states`.
    index: HashMap<u32, usize>,
    /// The latest threads of thread-coded calls and their states, most recent first: the
    /// common case finds its state here without hashing.
    recent: [Option<(u32, usize)>; RECENT],
}

impl Threads {
    /// Forgets every thread: a new chunk starts from nothing.
    pub fn clear(&mut self) {
        self.states.clear();
        self.index.clear();
        self.recent = [None; RECENT];
    }

    /// True if coding a call of `thread` would exceed the per-chunk thread limit.
    pub fn is_full_for(&self, thread: u32) -> bool {
        self.index.len() >= MAX_THREADS_PER_CHUNK && !self.index.contains_key(&thread)
    }

    /// Codes a thread number, its place among the recent threads or the number, and
    /// returns its state (callers check `is_full_for` first).
    pub fn put_thread(&mut self, e: &mut Encoder, thread: u32) -> &mut ThreadState {
        // A thread's calls come several in a row: then it is first already, code 0.
        if let Some((t, at)) = self.recent[0] {
            if t == thread {
                e.u8(0);
                return &mut self.states[at];
            }
        }
        let k = self.place(thread);
        match k {
            Some(k) => e.uvar(k as u64),
            None => e.uvar(RECENT as u64 + u64::from(thread)),
        }
        self.remember(k, thread)
    }

    /// Decodes a thread number coded by `put_thread`; returns it and its state.
    pub fn get_thread(&mut self, d: &mut Decoder) -> Result<(u32, &mut ThreadState), FormatError> {
        let code = d.uvar()?;
        let (k, thread) = if code < RECENT as u64 {
            let (thread, _) = self.recent[code as usize]
                .ok_or_else(|| d.error(format!("thread code {code} names no recent thread")))?;
            (Some(code as usize), thread)
        } else {
            let thread = u32::try_from(code - RECENT as u64)
                .map_err(|_| d.error(format!("thread number {code} out of range")))?;
            (self.place(thread), thread)
        };
        if k.is_none() && self.is_full_for(thread) {
            return Err(d.error(format!(
                "chunk codes calls of more than {MAX_THREADS_PER_CHUNK} threads"
            )));
        }
        Ok((thread, self.remember(k, thread)))
    }

    /// Where `thread` is among the recent threads.
    fn place(&self, thread: u32) -> Option<usize> {
        self.recent
            .iter()
            .position(|t| t.map(|t| t.0) == Some(thread))
    }

    /// Moves `thread` (at `k` among the recent threads, if there) to the front; returns
    /// its state, made if new.
    fn remember(&mut self, k: Option<usize>, thread: u32) -> &mut ThreadState {
        let at = match k.and_then(|k| self.recent[k]) {
            Some((_, at)) => at,
            None => {
                let states = &mut self.states;
                *self.index.entry(thread).or_insert_with(|| {
                    states.push(ThreadState::default());
                    states.len() - 1
                })
            }
        };
        to_front(&mut self.recent, k, Some((thread, at)));
        &mut self.states[at]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(values: &[u64], stacks: &[Option<u32>]) -> usize {
        let mut w = ThreadState::default();
        let mut e = Encoder::default();
        for (i, &v) in values.iter().enumerate() {
            w.put_value(&mut e, i as u32 % 3, i % 5, v);
        }
        for &s in stacks {
            w.put_stack(&mut e, s);
        }
        let mut r = ThreadState::default();
        let mut d = Decoder::new(&e.buf, 0);
        for (i, &v) in values.iter().enumerate() {
            assert_eq!(r.get_value(&mut d, i as u32 % 3, i % 5).unwrap(), v);
        }
        for &s in stacks {
            assert_eq!(r.get_stack(&mut d).unwrap(), s);
        }
        assert!(d.is_empty());
        e.buf.len()
    }

    #[test]
    fn values_and_stacks_round_trip() {
        let p = 0x5555_5555_a000u64;
        let values = [
            0,
            1,
            u32::MAX as u64,
            POINTER_MIN,
            p,
            p,
            p + 0x30,
            p,
            u64::MAX,
            p + 0x30,
            1 << 63,
        ];
        let stacks = [Some(0), Some(7), None, Some(7), Some(u32::MAX), Some(0)];
        round_trip(&values, &stacks);
        // More distinct values than remembered: the oldest falls out and is coded again.
        let many: Vec<u64> = (0..3 * RECENT as u64).map(|i| p + 16 * i).collect();
        let twice: Vec<u64> = many.iter().chain(many.iter()).copied().collect();
        round_trip(&twice, &[]);
    }

    #[test]
    fn repeats_cost_one_byte() {
        let p = 0x7f00_1234_5670u64;
        let first = round_trip(&[p], &[Some(300)]);
        let again = round_trip(&[p, p, p], &[Some(300), Some(300), Some(300)]);
        assert_eq!(again - first, 4);
    }

    #[test]
    fn threads_and_times_round_trip() {
        let threads = [3, 1, 3, 1, 0, u32::MAX, 9, 10, 11, 12, 13, 14, 15, 3, 3];
        let times = [
            (0, 0),
            (16, 14),
            (17, 0),
            (0, 15),
            (5, 3),
            (u64::MAX, 1 << 40),
        ];
        let mut w = Threads::default();
        let mut e = Encoder::default();
        for &t in &threads {
            w.put_thread(&mut e, t).ts += u64::from(t);
        }
        for &(a, b) in &times {
            put_times(&mut e, a, b);
        }
        // Short times take one byte; a thread seen among the last eight, one byte.
        let mut short = Encoder::default();
        put_times(&mut short, 16, 14);
        assert_eq!(short.buf.len(), 1);
        let mut r = Threads::default();
        let mut d = Decoder::new(&e.buf, 0);
        for &t in &threads {
            let (got, state) = r.get_thread(&mut d).unwrap();
            assert_eq!(got, t);
            // Each thread keeps its own state, however it was found.
            state.ts += u64::from(t);
        }
        for &t in &threads {
            let count = threads.iter().filter(|&&x| x == t).count() as u64;
            assert_eq!(r.states[r.index[&t]].ts, count * u64::from(t));
            assert_eq!(w.states[w.index[&t]].ts, count * u64::from(t));
        }
        for &t in &times {
            assert_eq!(get_times(&mut d).unwrap(), t);
        }
        assert!(d.is_empty());
        // A recent-thread code before any thread was seen.
        assert!(Threads::default()
            .get_thread(&mut Decoder::new(&[0], 0))
            .is_err());
    }

    #[test]
    fn codes_that_name_nothing_are_errors() {
        let mut r = ThreadState::default();
        let bad = [2 * RECENT as u8 + 3];
        assert!(r.get_value(&mut Decoder::new(&bad, 0), 0, 0).is_err());
        // A recent-stack code before any stack was seen.
        assert!(r.get_stack(&mut Decoder::new(&[0], 0)).is_err());
        // A stack id beyond u32.
        let mut e = Encoder::default();
        e.uvar(RECENT as u64 + 2 + u64::from(u32::MAX));
        assert!(r.get_stack(&mut Decoder::new(&e.buf, 0)).is_err());
    }
}
