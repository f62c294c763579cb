//! Calls coded against their thread's previous calls: the prediction state machine that
//! the recording format's thread-coded calls use (docs/FORMAT.md, *Calls chunk*), and the
//! agent's coded call record, which carries the format's coding of a call so that the
//! recorder can store it as it is (protocol version 6).
//!
//! The agent codes each allocator call as it records it, against its thread's own state;
//! the reader of a recording decodes it against the same state, kept per coder. Both ends
//! run the one machine here, so they update it identically.

/// Values and stacks each thread remembers, most recent first.
pub const RECENT: usize = 8;
/// Values from this up are pointer-like: remembered, and coded as a hit or a delta.
pub const POINTER_MIN: u64 = 1 << 32;
/// Size of a thread's table of last small values.
const SMALL_SLOTS: usize = 32;
/// The value slot of a return value and of an out value.
pub const SLOT_RET: usize = 3;
/// The value code of a pointer-like value given as its distance from the most recent one
/// (an `svar` follows).
pub const FAR_VALUE: u64 = 2 * RECENT as u64 + 1;
/// The stack code of a call without a stack.
pub const NO_STACK_CODE: u64 = RECENT as u64;

/// Bits of a coded call's shape byte above its argument count.
pub mod shape {
    /// The argument count.
    pub const ARGS: u8 = 0x1f;
    /// The call returned.
    pub const EXIT: u8 = 0x20;
    /// A return value follows.
    pub const RET: u8 = 0x40;
    /// An out value follows.
    pub const OUT: u8 = 0x80;
}

/// Maps a signed value to an unsigned one, small magnitudes to small numbers.
#[inline(always)]
pub fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// Undoes [`zigzag`].
#[inline(always)]
pub fn unzigzag(z: u64) -> i64 {
    ((z >> 1) as i64) ^ -((z & 1) as i64)
}

/// What one thread's calls are coded against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Coder {
    values: [u64; RECENT],
    /// The last small value seen per (function, value slot), hashed into a small table.
    small: [u64; SMALL_SLOTS],
    stacks: [Option<u32>; RECENT],
}

impl Default for Coder {
    fn default() -> Self {
        Coder {
            values: [0; RECENT],
            small: [0; SMALL_SLOTS],
            stacks: [None; RECENT],
        }
    }
}

/// Why a value or stack code does not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodeError {
    /// An odd value code past [`FAR_VALUE`].
    BadValue(u64),
    /// A stack code naming a recent stack the thread does not have.
    NoRecentStack(u64),
    /// A stack id past 32 bits.
    StackRange(u64),
}

impl core::fmt::Display for CodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            CodeError::BadValue(c) => write!(f, "bad value code {c}"),
            CodeError::NoRecentStack(c) => write!(f, "stack code {c} names no recent stack"),
            CodeError::StackRange(id) => write!(f, "stack id {id} out of range"),
        }
    }
}

/// Where a function's value slot (argument index, or `SLOT_RET`) keeps its last small value.
#[inline(always)]
fn small_slot(func: u32, slot: usize) -> usize {
    (func as usize % (SMALL_SLOTS / 4)) * 4 + slot.min(3)
}

impl Coder {
    /// Codes a value of `func`'s value `slot` (argument index, or `SLOT_RET`): a hit in
    /// the recent values, a pointer-like value as its distance from the most recent one
    /// (the code is [`FAR_VALUE`], and the distance is returned to follow it), or a small
    /// value as its distance from the slot's last small value (sizes repeat, or step,
    /// from one call of a loop to the next).
    #[inline(always)]
    pub fn value(&mut self, func: u32, slot: usize, v: u64) -> (u64, Option<i64>) {
        if v >= POINTER_MIN {
            // One search, for the code and for the move to the front.
            let at = self.values.iter().position(|&x| x == v);
            let code = match at {
                Some(k) => (2 * k as u64 + 1, None),
                None => (FAR_VALUE, Some(v.wrapping_sub(self.values[0]) as i64)),
            };
            to_front(&mut self.values, at, v);
            code
        } else {
            let small = &mut self.small[small_slot(func, slot)];
            let d = v.wrapping_sub(*small) as i64;
            *small = v;
            // Both below 2^32: the zigzag distance fits 33 bits, the shifted code 34.
            (zigzag(d) << 1, None)
        }
    }

    /// Decodes a value code of `func`'s value `slot`; `far` reads the distance that
    /// follows a [`FAR_VALUE`] code.
    #[inline]
    pub fn get_value<E: From<CodeError>>(
        &mut self,
        func: u32,
        slot: usize,
        code: u64,
        far: impl FnOnce() -> Result<i64, E>,
    ) -> Result<u64, E> {
        let v = if code & 1 == 0 {
            let delta = unzigzag(code >> 1);
            self.small[small_slot(func, slot)].wrapping_add(delta as u64)
        } else {
            let k = (code >> 1) as usize;
            match k.cmp(&RECENT) {
                core::cmp::Ordering::Less => self.values[k],
                core::cmp::Ordering::Equal => self.values[0].wrapping_add(far()? as u64),
                core::cmp::Ordering::Greater => return Err(CodeError::BadValue(code).into()),
            }
        };
        self.remember_value(func, slot, v);
        Ok(v)
    }

    #[inline(always)]
    fn remember_value(&mut self, func: u32, slot: usize, v: u64) {
        if v < POINTER_MIN {
            self.small[small_slot(func, slot)] = v;
        } else {
            let at = self.values.iter().position(|&x| x == v);
            to_front(&mut self.values, at, v);
        }
    }

    /// Codes a stack id: a hit in the recent stacks, none, or the id.
    #[inline(always)]
    pub fn stack(&mut self, stack: Option<u32>) -> u64 {
        let Some(s) = stack else {
            return NO_STACK_CODE;
        };
        let at = self.stacks.iter().position(|&x| x == Some(s));
        to_front(&mut self.stacks, at, Some(s));
        match at {
            Some(k) => k as u64,
            None => NO_STACK_CODE + 1 + u64::from(s),
        }
    }

    /// Decodes a stack code written by [`Coder::stack`].
    #[inline]
    pub fn get_stack(&mut self, code: u64) -> Result<Option<u32>, CodeError> {
        let (at, s) = if code < NO_STACK_CODE {
            let s = self.stacks[code as usize].ok_or(CodeError::NoRecentStack(code))?;
            (Some(code as usize), s)
        } else if code == NO_STACK_CODE {
            return Ok(None);
        } else {
            let id = code - NO_STACK_CODE - 1;
            let s = u32::try_from(id).map_err(|_| CodeError::StackRange(id))?;
            (self.stacks.iter().position(|&x| x == Some(s)), s)
        };
        to_front(&mut self.stacks, at, Some(s));
        Ok(Some(s))
    }
}

/// Puts `v` first in a most-recent-first `list`: moved from `at`, its place if it is
/// there, or pushing the last entry out.
#[inline(always)]
pub fn to_front<T: Copy>(list: &mut [T], at: Option<usize>, v: T) {
    let k = at.unwrap_or(list.len() - 1).min(list.len() - 1);
    // A copy loop, not `rotate_right`: on these eight-entry lists its general algorithm
    // called `memmove` for every value, stack and thread coded (2.5% of a recording's
    // CPU).
    for i in (1..=k).rev() {
        list[i] = list[i - 1];
    }
    list[0] = v;
}

/// Most bytes of a coded call's body: function id, shape, three arguments, stack code,
/// return and out values.
pub const MAX_BODY: usize = 1 + 1 + 3 * 20 + 5 + 2 * 20;

/// Most bytes a coded call record takes: kind, body length, key and duration (each with
/// its escape), body.
pub const CODED_LEN: usize = 1 + 1 + 4 + 8 + 2 + 8 + MAX_BODY;

/// The key distance that says the key itself follows (`u64`).
const FAR_KEY: i32 = i32::MIN;
/// The duration that says the duration itself follows (`u64`).
const LONG_DURATION: u16 = u16::MAX;

/// Writes `c` as a coded call record (kind byte included) at the start of `out`, which
/// must hold [`CODED_LEN`] bytes, coding it against `coder` and `last_key` (the key of
/// the coder's previous coded call, 0 before the first); returns the length written.
///
/// `kind u8, i32 key - last_key, u16 key - entry time, body length u8, body`; a key
/// distance outside `i32` is `i32::MIN` and the key (`u64`), a duration from `u16::MAX`
/// on is `u16::MAX` and the duration (`u64`). The body is the format's thread-coded call
/// from its function id on (docs/FORMAT.md), its stack code naming the agent's stack
/// ids. The header is fixed-size, not varints, so that the recorder finds the body
/// without waiting for two varints' lengths; the length comes last, so that length and
/// body go to the recording as one piece.
#[inline(always)]
pub fn put_coded(out: &mut [u8], c: &crate::Call, coder: &mut Coder, last_key: &mut u64) -> usize {
    let mut w = crate::Put { buf: out, at: 0 };
    w.u8(crate::REC_CODED);
    match i32::try_from(c.ts_out.wrapping_sub(*last_key) as i64) {
        Ok(d) if d != FAR_KEY => w.u32(d as u32),
        _ => {
            w.u32(FAR_KEY as u32);
            w.u64(c.ts_out);
        }
    }
    match u16::try_from(c.ts_out.wrapping_sub(c.ts_in)) {
        Ok(d) if d != LONG_DURATION => w.u16(d),
        _ => {
            w.u16(LONG_DURATION);
            w.u64(c.ts_out.wrapping_sub(c.ts_in));
        }
    }
    *last_key = c.ts_out;
    let len_at = w.at;
    w.u8(0);
    let body = w.at;
    let func = u32::from(c.func);
    let ret = c.flags & crate::CALL_RET != 0;
    let out_v = c.flags & crate::CALL_OUT != 0;
    let n = (c.nargs as usize).min(crate::CALL_ARGS);
    w.uvar(u64::from(func));
    w.u8(n as u8
        | if ret || out_v { shape::EXIT } else { 0 }
        | if ret { shape::RET } else { 0 }
        | if out_v { shape::OUT } else { 0 });
    #[inline(always)]
    fn value(w: &mut crate::Put, coder: &mut Coder, func: u32, slot: usize, v: u64) {
        let (code, far) = coder.value(func, slot, v);
        w.uvar(code);
        if let Some(d) = far {
            w.uvar(zigzag(d));
        }
    }
    for (i, &a) in c.args[..n].iter().enumerate() {
        value(&mut w, coder, func, i, a);
    }
    let stack = (c.stack != crate::NO_STACK).then_some(c.stack);
    w.uvar(coder.stack(stack));
    if ret {
        value(&mut w, coder, func, SLOT_RET, c.ret);
    }
    if out_v {
        value(&mut w, coder, func, SLOT_RET, c.out);
    }
    let len = w.at - body;
    if let Some(b) = w.buf.get_mut(len_at) {
        *b = len as u8;
    }
    w.at
}

/// A coded call record's header, as the recorder reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodedHead {
    /// The call's order key, its return time (its entry, for a call without a return).
    pub key: u64,
    /// Its entry time.
    pub ts_in: u64,
    /// Where its body starts in the record (its length byte is just before).
    pub body: usize,
    /// The body's length.
    pub len: usize,
    /// The call returned (duration counts).
    pub exits: bool,
}

/// Reads the header of the coded call record at the start of `rec` (kind byte
/// included), whose coder's previous coded call had key `last_key`, and makes sure its
/// body is there. The body is not checked: the recorder stores it with its length, and
/// the reader, which decodes it anyway, skips one that does not decode (docs/FORMAT.md).
#[inline(always)]
pub fn get_coded_head(rec: &[u8], last_key: u64) -> Result<CodedHead, crate::Truncated> {
    let mut g = crate::Get::new(rec);
    g.u8()?;
    let key = match g.u32()? as i32 {
        FAR_KEY => g.u64()?,
        d => last_key.wrapping_add(d as i64 as u64),
    };
    let ts_in = key.wrapping_sub(match g.u16()? {
        LONG_DURATION => g.u64()?,
        d => u64::from(d),
    });
    let len = g.u8()? as usize;
    let body = g.offset();
    let b = g.bytes(len)?;
    // The function id is below 128 in a body that decodes: one byte, then the shape.
    let exits = b.get(1).is_some_and(|f| f & shape::EXIT != 0);
    Ok(CodedHead {
        key,
        ts_in,
        body,
        len,
        exits,
    })
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::{Call, CALL_OUT, CALL_RET, NO_STACK};
    use std::vec::Vec;

    fn call(func: u8, args: &[u64], ret: Option<u64>, out: Option<u64>, stack: u32) -> Call {
        let mut a = [0; crate::CALL_ARGS];
        a[..args.len()].copy_from_slice(args);
        Call {
            func,
            flags: if ret.is_some() { CALL_RET } else { 0 }
                | if out.is_some() { CALL_OUT } else { 0 },
            nargs: args.len() as u8,
            args: a,
            ret: ret.unwrap_or(0),
            out: out.unwrap_or(0),
            ts_in: 0,
            ts_out: 0,
            stack,
        }
    }

    /// Decodes a body the way a reader does, against its own coder.
    fn decode(body: &[u8], coder: &mut Coder) -> (u32, Vec<u64>, Option<u32>, Vec<u64>) {
        let mut g = crate::Get::new(body);
        let func = g.uvar().unwrap() as u32;
        let form = g.u8().unwrap();
        let n = usize::from(form & shape::ARGS);
        let mut get = |g: &mut crate::Get, slot| {
            let code = g.uvar().unwrap();
            coder
                .get_value::<CodeError>(func, slot, code, || Ok(unzigzag(g.uvar().unwrap())))
                .unwrap()
        };
        let args: Vec<u64> = (0..n).map(|i| get(&mut g, i)).collect();
        let stack = g.uvar().unwrap();
        let mut rets = Vec::new();
        if form & shape::RET != 0 {
            rets.push(get(&mut g, SLOT_RET));
        }
        if form & shape::OUT != 0 {
            rets.push(get(&mut g, SLOT_RET));
        }
        assert!(g.is_empty());
        (func, args, coder.get_stack(stack).unwrap(), rets)
    }

    #[test]
    fn coded_calls_decode_against_the_same_state_and_check_out() {
        let calls = [
            (call(0, &[24], Some(0x5555_0000_1000), None, 3), 100, 140),
            (call(4, &[0x5555_0000_1000], None, None, 3), 150, 150),
            (
                call(0, &[24], Some(0x5555_0000_1000), None, NO_STACK),
                160,
                200,
            ),
            (
                call(
                    5,
                    &[0x7ffe_0000_0008, 64, 100],
                    Some(0),
                    Some(0x5555_0000_2000),
                    9,
                ),
                90,
                300,
            ),
            (
                call(
                    2,
                    &[0x5555_0000_2000, 1 << 40],
                    Some(0x6666_0000_0000),
                    None,
                    3,
                ),
                310,
                320,
            ),
            // A key far from the last and a long call: both escaped.
            (
                call(0, &[24], Some(0x5555_0000_3000), None, 3),
                400,
                1 << 40,
            ),
            // A key a little behind the last (an `rdtsc` ahead of an `rdtscp`).
            (
                call(4, &[0x5555_0000_3000], None, None, 3),
                (1 << 40) - 7,
                (1 << 40) - 7,
            ),
        ];
        let (mut enc, mut dec) = (Coder::default(), Coder::default());
        let (mut key, mut last) = (0, 0);
        for (mut c, ts_in, ts_out) in calls {
            c.ts_in = ts_in;
            c.ts_out = ts_out;
            let mut buf = [0u8; CODED_LEN];
            let n = put_coded(&mut buf, &c, &mut enc, &mut key);
            let h = get_coded_head(&buf[..n], last).unwrap();
            last = h.key;
            assert_eq!((h.key, h.ts_in, h.body + h.len), (ts_out, ts_in, n));
            assert_eq!(h.exits, c.flags != 0);
            let (func, args, stack, rets) = decode(&buf[h.body..n], &mut dec);
            assert_eq!(func, u32::from(c.func));
            assert_eq!(args, c.args[..c.nargs as usize]);
            assert_eq!(stack, (c.stack != NO_STACK).then_some(c.stack));
            let want: Vec<u64> = [(CALL_RET, c.ret), (CALL_OUT, c.out)]
                .iter()
                .filter(|(f, _)| c.flags & f != 0)
                .map(|&(_, v)| v)
                .collect();
            assert_eq!(rets, want);
            // Any byte cut off the end is noticed.
            for cut in 0..n {
                assert!(get_coded_head(&buf[..cut], 0).is_err(), "cut at {cut}");
            }
        }
        assert_eq!(enc, dec);
        // `free` of the block the thread's last `malloc` returned is the most recent value.
        let mut c = Coder::default();
        c.value(0, SLOT_RET, 0x5555_0000_1000);
        assert_eq!(c.value(4, 0, 0x5555_0000_1000), (1, None));
    }
}
