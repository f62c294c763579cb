//! The byte stream between the rltrace preload agent (in the traced process) and the
//! recorder: one Unix stream connection per process image, little-endian, documented in
//! `docs/DESIGN.md`. The agent only encodes; the recorder decodes and treats the bytes as
//! untrusted (a confused or hostile program can write anything to its own socket).

#![no_std]

pub mod coded;
pub mod protos;

/// First bytes of a connection.
pub const MAGIC: [u8; 4] = *b"RLTA";
/// Protocol version; the recorder refuses others (agent and recorder ship together).
pub const VERSION: u16 = 6;
/// Environment variable naming the recorder's socket.
pub const ENV_SOCKET: &str = "RLTRACE_AGENT_SOCKET";
/// Environment variable holding the largest number of frames to capture.
pub const ENV_MAX_DEPTH: &str = "RLTRACE_AGENT_MAX_DEPTH";
/// Environment variable holding how many bytes of a string or buffer argument to capture.
pub const ENV_STRLEN: &str = "RLTRACE_AGENT_STRLEN";
/// Environment variable: when set to `0`, the main executable's imports are not traced.
pub const ENV_IMPORTS: &str = "RLTRACE_AGENT_IMPORTS";

/// The agent's variable (a `u64`) where the ptrace engine, in a run both engines record,
/// writes the base of the region holding its return stubs: a call it traces returns
/// through a stub, and the agent's unwinder finds the real return address in the stub's
/// slot.
pub const PTRACE_REGION_SYMBOL: &str = "RLTRACE_PTRACE_REGION";

/// The part of the ptrace engine's injected region the agent reads (src/record/ptrace/
/// codegen.rs has the whole layout).
pub mod region {
    /// Offset of the first return stub.
    pub const STUB_OFF: u64 = 256 + 1020 * 64;
    /// Bytes per stub.
    pub const STUB_SIZE: u64 = 128;
    /// Number of stubs and slots.
    pub const SLOTS: u64 = 2048;
    /// Offset of the first slot, whose first word is the real return address.
    pub const SLOT_OFF: u64 = STUB_OFF + SLOTS * STUB_SIZE + 128;
    /// Bytes per slot.
    pub const SLOT_SIZE: u64 = 128;

    /// Where the real return address of a call returning to `addr` is kept, if `addr` is
    /// a stub of the region at `base`.
    pub fn retaddr_slot(base: u64, addr: u64) -> Option<u64> {
        let off = addr.checked_sub(base.checked_add(STUB_OFF)?)?;
        (off % STUB_SIZE == 0 && off / STUB_SIZE < SLOTS)
            .then(|| base + SLOT_OFF + off / STUB_SIZE * SLOT_SIZE)
    }
}

/// Hello cause: a new image (the spawned command, or any `execve`).
pub const CAUSE_IMAGE: u8 = 0;
/// Hello cause: the child side of `fork`.
pub const CAUSE_FORK: u8 = 1;

/// The functions the agent interposes, in the order of their indices in call records
/// (the recorder's function table, `src/record/funcs.rs`, lists them in this order).
pub const FUNCTIONS: [&str; 10] = [
    "malloc",
    "calloc",
    "realloc",
    "reallocarray",
    "free",
    "posix_memalign",
    "memalign",
    "aligned_alloc",
    "valloc",
    "pvalloc",
];

/// Indices into [`FUNCTIONS`].
pub mod func {
    /// `malloc`.
    pub const MALLOC: u8 = 0;
    /// `calloc`.
    pub const CALLOC: u8 = 1;
    /// `realloc`.
    pub const REALLOC: u8 = 2;
    /// `reallocarray`.
    pub const REALLOCARRAY: u8 = 3;
    /// `free`.
    pub const FREE: u8 = 4;
    /// `posix_memalign`.
    pub const POSIX_MEMALIGN: u8 = 5;
    /// `memalign`.
    pub const MEMALIGN: u8 = 6;
    /// `aligned_alloc`.
    pub const ALIGNED_ALLOC: u8 = 7;
    /// `valloc`.
    pub const VALLOC: u8 = 8;
    /// `pvalloc`.
    pub const PVALLOC: u8 = 9;
}

/// Functions neither engine puts anything between and their caller: they return twice on
/// a shared stack, save or replace their caller's stack, or start the program. Globs for
/// [`glob`].
pub const NEVER_HOOKED: &[&str] = &[
    "*setjmp",
    "*vfork",
    "*getcontext",
    "*setcontext",
    "*swapcontext",
    "*makecontext",
    "__libc_start_*",
    "_dl_*",
    "__tls_get_addr",
];

/// Imports neither engine traces by default, besides [`NEVER_HOOKED`] and the allocator
/// family (recorded on its own): toolchain internals ltrace does not show either, and
/// functions that act on behalf of the object their return address lies in (`dlopen`
/// searches the caller's RUNPATH; `dlsym(RTLD_NEXT)` starts after the caller), which a
/// trampoline or a replaced return address would change. Globs for [`glob`].
pub const IMPORTS_SKIPPED: &[&str] = &[
    "dlopen",
    "dlmopen",
    "dlsym",
    "dlvsym",
    "__cxa_finalize",
    "__gmon_start__",
    "_ITM_*",
];

/// True for an import neither engine traces by default: the allocator family (recorded
/// anyway), [`NEVER_HOOKED`] and [`IMPORTS_SKIPPED`].
pub fn import_skipped(name: &str) -> bool {
    FUNCTIONS.contains(&name)
        || NEVER_HOOKED
            .iter()
            .chain(IMPORTS_SKIPPED)
            .any(|p| glob(p, name))
}

/// Shell-style glob with `*` (any run of characters) and `?` (one character).
pub fn glob(pattern: &str, text: &str) -> bool {
    // The character at byte offset `i`, and its length.
    fn at(s: &str, i: usize) -> Option<(char, usize)> {
        s.get(i..)?.chars().next().map(|c| (c, c.len_utf8()))
    }
    // Iterative matcher with one backtrack point for the last `*`.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while let Some((tc, tl)) = at(text, ti) {
        match at(pattern, pi) {
            Some((pc, pl)) if pc == '?' || pc == tc => {
                pi += pl;
                ti += tl;
            }
            Some(('*', _)) => {
                star = Some((pi, ti));
                pi += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    let next = st + at(text, st).map_or(1, |c| c.1);
                    pi = sp + 1;
                    ti = next;
                    star = Some((sp, next));
                }
                None => return false,
            },
        }
    }
    pattern
        .get(pi..)
        .is_some_and(|rest| rest.chars().all(|c| c == '*'))
}

/// Message: module list snapshot (`key u64, count u32, modules`); `key` is its order
/// key (see [`ORDER_MARGIN`]).
pub const MSG_MODULES: u8 = 1;
/// Message: records of one thread (`tid u32, records`).
pub const MSG_BATCH: u8 = 2;
/// Message: the process called `exit` or `_exit` (`status i32`).
pub const MSG_EXIT: u8 = 3;
/// Message: the last message of a cleanly ending image (no payload).
pub const MSG_END: u8 = 4;
/// Message: the process is about to die of a signal (`signo i32`).
pub const MSG_KILLED: u8 = 5;
/// Message: every record of the process with an order key below `key u64` has been sent,
/// in a batch or module list before this message (protocol version 5; see
/// [`ORDER_MARGIN`]).
pub const MSG_WATERMARK: u8 = 7;
/// Message: the main executable's imported functions the agent traces, numbered from 0
/// in this order (`count u32`, then per function `flags u8`, `len u16`, name bytes). Sent
/// once, before any record that uses the numbers.
pub const MSG_IMPORTS: u8 = 6;

/// Import flag: each call gets an exit record (the agent sets it for every import, `void`
/// ones too, so that calls made inside them nest).
pub const IMPORT_RETURNS: u8 = 1;
/// Longest import name sent.
pub const MAX_NAME: usize = 1024;

/// Thread record: a stack definition (`id u32, n u16, n × u64`); ids are unique in the
/// stream (a thread that records again after its state was retired keeps them apart).
pub const REC_STACK: u8 = 1;
// Thread record 2, a finished call in plain varints, was protocol version 5's; version 6
// sends `REC_CODED` instead.
/// Thread record: entry into an imported function (`import u16, ts u64, stack u32,
/// nargs u8, nargs × u64, ndata u8`, then per captured argument `arg u8, truncated u8,
/// len u16, bytes`).
pub const REC_ENTER: u8 = 3;
/// Thread record: return from the thread's innermost open import call (`ts u64,
/// flags u8, ret u64`); flag [`CALL_RET`] clear means it never returned (unwound past, or
/// longjmp'ed over).
pub const REC_EXIT: u8 = 4;
/// Thread record: a [`REC_EXIT`] that returned a string (protocol version 4): its fields,
/// then the string as one capture of [`REC_ENTER`]'s (`arg u8` 0, `truncated u8, len u16,
/// bytes`).
pub const REC_EXIT_DATA: u8 = 5;
/// Thread record: a finished allocator call coded against its thread's previous calls
/// (protocol version 6; see [`coded::put_coded`]), which the recorder stores as it is.
pub const REC_CODED: u8 = 6;
/// Most captures per entry record.
pub const MAX_DATA_ARGS: usize = protos::MAX_CAPTURES;
/// Most bytes captured per argument.
pub const MAX_DATA: usize = 4096;

/// How far behind the time stamp counter read at the start of a drain pass the watermark
/// the agent sends after the pass stays, in counter ticks (about 0.3 ms at 3 GHz).
///
/// Records are ordered across threads by an *order key*: the time stamp counter, read at
/// the point that orders a call against other threads': with `rdtsc` before what the
/// thread does next (the real `free`, an import's entry), with `rdtscp` (which waits for
/// the loads before it) after what it just did (the real allocation: a [`Call`]'s
/// `ts_out`; an import's return; reading a module list). A block freed by one thread and
/// returned to another by `malloc` is then never seen allocated twice, as with the
/// process-wide counter the keys replace (whose cache line moved between the cores at
/// every call: nearly half of what the agent cost). A thread
/// marks itself busy before it reads a key and idle once the record is in its ring; the
/// drainer reads the counter, then every ring's mark, so a record it did not find has a
/// key above the counter it read, less the time a store takes to become visible, which
/// the margin covers many times over.
pub const ORDER_MARGIN: u64 = 1 << 20;

/// Call flag: the return value is meaningful.
pub const CALL_RET: u8 = 1;
/// Call flag: `out` holds the value an out-pointer received (`posix_memalign`).
pub const CALL_OUT: u8 = 2;
/// Stack id meaning "no stack captured".
pub const NO_STACK: u32 = u32::MAX;

/// Largest message payload either side accepts.
pub const MAX_MESSAGE: usize = 1 << 20;
/// Largest number of frames in a stack record.
pub const MAX_FRAMES: usize = 1024;
/// Largest number of arguments in an import entry record, and of a prototype the
/// recorder sends: six integer and eight vector registers.
pub const MAX_ARGS: usize = protos::MAX_VALUES;
/// Largest number of arguments in a call record: the allocator family takes at most three
/// (`reallocarray`, `posix_memalign`), and a smaller record is cheaper to queue.
pub const CALL_ARGS: usize = 3;

/// A finished call as the agent reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Call {
    /// Index into the allocator family table.
    pub func: u8,
    /// [`CALL_RET`] | [`CALL_OUT`].
    pub flags: u8,
    /// Number of meaningful entries in `args`.
    pub nargs: u8,
    /// Integer arguments.
    pub args: [u64; CALL_ARGS],
    /// Return value.
    pub ret: u64,
    /// Out-pointer value.
    pub out: u64,
    /// Time stamp counter at entry (the recorder converts it to recording time).
    pub ts_in: u64,
    /// Time stamp counter at return (at entry for a call recorded there, such as `free`):
    /// the call's order key.
    pub ts_out: u64,
    /// Thread-local stack id, or [`NO_STACK`].
    pub stack: u32,
}

/// Why an unsigned LEB128 varint does not decode, with the bytes looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VarintError {
    /// The bytes ended first.
    Short(usize),
    /// The tenth byte holds more than the 64th bit.
    Overflow(usize),
    /// More than ten bytes.
    TooLong(usize),
}

/// Writes `v` as an unsigned LEB128 varint (1 to 10 bytes), a byte at a time to `put`.
/// The one encoding of varints, for the agent's wire and the recording format alike.
#[inline(always)]
pub fn put_varint(mut v: u64, mut put: impl FnMut(u8)) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            put(b);
            return;
        }
        put(b | 0x80);
    }
}

/// Bytes an unsigned LEB128 varint of `v` takes: the significant bits divided by seven,
/// rounded up, computed with a multiply and a shift (the division by seven was a quarter
/// of the agent's call encoding).
#[inline(always)]
pub fn varint_len(v: u64) -> usize {
    let log2 = 63 - (v | 1).leading_zeros() as usize;
    (log2 * 9 + 73) >> 6
}

/// `v` as an unsigned LEB128 varint in the low bytes of a little-endian word, and its
/// length, if it takes eight bytes or fewer (below 2^56): written without a branch per
/// byte, as [`varint_in_word`] reads it.
#[inline(always)]
pub fn varint_word(v: u64) -> Option<(u64, usize)> {
    if v >> 56 != 0 {
        return None;
    }
    let n = varint_len(v);
    // The seven-bit groups spread a byte each: halves, quads, then pairs.
    let m = ((v << 4) & 0x0fff_ffff_0000_0000) | (v & 0x0000_0000_0fff_ffff);
    let m = ((m << 2) & 0x3fff_0000_3fff_0000) | (m & 0x0000_3fff_0000_3fff);
    let m = ((m << 1) & 0x7f00_7f00_7f00_7f00) | (m & 0x007f_007f_007f_007f);
    // A continuation bit on every byte but the last.
    let more = 0x8080_8080_8080_8080 & ((1u64 << (8 * (n - 1))) - 1);
    Some((m | more, n))
}

/// Reads an unsigned LEB128 varint at the start of `b`: its value and length.
#[inline]
pub fn get_varint(b: &[u8]) -> Result<(u64, usize), VarintError> {
    let mut v = 0u64;
    for i in 0..10 {
        let Some(&byte) = b.get(i) else {
            return Err(VarintError::Short(i));
        };
        let low = u64::from(byte & 0x7f);
        if i == 9 && low > 1 {
            return Err(VarintError::Overflow(10));
        }
        v |= low << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((v, i + 1));
        }
    }
    Err(VarintError::TooLong(10))
}

/// The varint at the start of eight bytes read as a little-endian word, if it ends within
/// them: its value and length.
#[inline(always)]
pub fn varint_in_word(x: u64) -> Option<(u64, usize)> {
    let ends = !x & 0x8080_8080_8080_8080;
    if ends == 0 {
        return None;
    }
    let n = (ends.trailing_zeros() as usize + 1) / 8;
    // The n bytes' low seven bits, then packed together: pairs, quads, then the halves.
    let m = x & (u64::MAX >> (64 - 8 * n)) & 0x7f7f_7f7f_7f7f_7f7f;
    let m = ((m & 0x7f00_7f00_7f00_7f00) >> 1) | (m & 0x007f_007f_007f_007f);
    let m = ((m & 0x3fff_0000_3fff_0000) >> 2) | (m & 0x0000_3fff_0000_3fff);
    let m = ((m & 0x0fff_ffff_0000_0000) >> 4) | (m & 0x0000_0000_0fff_ffff);
    Some((m, n))
}

/// Bounded little-endian writer over a slice the caller sized.
pub struct Put<'a> {
    /// Destination.
    pub buf: &'a mut [u8],
    /// Bytes written so far.
    pub at: usize,
}

impl Put<'_> {
    /// Appends bytes (ignored past the end of the buffer: callers size it first).
    #[inline]
    pub fn bytes(&mut self, b: &[u8]) {
        if let Some(dst) = self.buf.get_mut(self.at..self.at + b.len()) {
            dst.copy_from_slice(b);
            self.at += b.len();
        }
    }
    /// Appends a byte.
    #[inline]
    pub fn u8(&mut self, v: u8) {
        if let Some(b) = self.buf.get_mut(self.at) {
            *b = v;
            self.at += 1;
        }
    }
    /// Appends a u16.
    #[inline]
    pub fn u16(&mut self, v: u16) {
        self.bytes(&v.to_le_bytes());
    }
    /// Appends a u32.
    #[inline]
    pub fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }
    /// Appends a u64.
    #[inline]
    pub fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
    /// Appends an unsigned LEB128 varint (at most 10 bytes).
    #[inline(always)]
    pub fn uvar(&mut self, v: u64) {
        // Most codes of a coded call are below 128 (inlined, each call site's branch
        // predicts well): one byte, without spreading the groups.
        if v < 0x80 {
            self.u8(v as u8);
            return;
        }
        if let Some((w, n)) = varint_word(v) {
            // Eight bytes stored at once, of which the varint's count: the rest is room
            // the caller sized for later fields.
            if let Some(dst) = self.buf.get_mut(self.at..self.at + 8) {
                dst.copy_from_slice(&w.to_le_bytes());
                self.at += n;
                return;
            }
        }
        put_varint(v, |b| self.u8(b));
    }
}

/// Where a decode stopped being possible.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Truncated {
    /// Offset in the buffer being decoded.
    pub at: usize,
}

/// Bounded little-endian reader for the recorder.
pub struct Get<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Get<'a> {
    /// Reads from the start of `buf`.
    #[inline]
    pub fn new(buf: &'a [u8]) -> Self {
        Get { buf, at: 0 }
    }
    /// Offset of the next byte.
    #[inline]
    pub fn offset(&self) -> usize {
        self.at
    }
    /// True when every byte was consumed.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.at >= self.buf.len()
    }
    /// Takes `n` bytes.
    #[inline]
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], Truncated> {
        let end = self.at.checked_add(n).ok_or(Truncated { at: self.at })?;
        let s = self
            .buf
            .get(self.at..end)
            .ok_or(Truncated { at: self.at })?;
        self.at = end;
        Ok(s)
    }
    /// Takes a byte.
    #[inline]
    pub fn u8(&mut self) -> Result<u8, Truncated> {
        Ok(self.bytes(1)?[0])
    }
    /// Takes a u16.
    #[inline]
    pub fn u16(&mut self) -> Result<u16, Truncated> {
        let b = self.bytes(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    /// Takes a u32.
    #[inline]
    pub fn u32(&mut self) -> Result<u32, Truncated> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// Takes a u64.
    #[inline]
    pub fn u64(&mut self) -> Result<u64, Truncated> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    /// Takes an unsigned LEB128 varint; one longer than 10 bytes or past 64 bits is
    /// refused at its first byte.
    #[inline(always)]
    pub fn uvar(&mut self) -> Result<u64, Truncated> {
        // Without a branch on each byte: varints on the wire are 1 to 7 bytes long in no
        // predictable order (flags, sizes, pointers, numbers), and the byte loop's
        // mispredicted exits were most of the recorder's decoding time.
        if let Some(word) = self.buf.get(self.at..self.at + 8) {
            let mut a = [0u8; 8];
            a.copy_from_slice(word);
            if let Some((v, n)) = varint_in_word(u64::from_le_bytes(a)) {
                self.at += n;
                return Ok(v);
            }
        }
        let rest = self.buf.get(self.at..).unwrap_or_default();
        let (v, n) = get_varint(rest).map_err(|_| Truncated { at: self.at })?;
        self.at += n;
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_indices_name_their_functions() {
        let named = [
            (func::MALLOC, "malloc"),
            (func::CALLOC, "calloc"),
            (func::REALLOC, "realloc"),
            (func::REALLOCARRAY, "reallocarray"),
            (func::FREE, "free"),
            (func::POSIX_MEMALIGN, "posix_memalign"),
            (func::MEMALIGN, "memalign"),
            (func::ALIGNED_ALLOC, "aligned_alloc"),
            (func::VALLOC, "valloc"),
            (func::PVALLOC, "pvalloc"),
        ];
        for (i, name) in named {
            assert_eq!(FUNCTIONS[i as usize], name);
        }
    }

    #[test]
    fn globs() {
        assert!(glob("*setjmp", "__sigsetjmp"));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxbyy"));
        assert!(glob("?rite", "write"));
        assert!(glob("é?", "éà"));
        assert!(glob("*", ""));
        assert!(!glob("exit", "_exit"));
    }

    #[test]
    fn varints_decode_alike_in_a_word_and_byte_by_byte() {
        // Every length from 1 to 10 bytes, at every boundary, and noise after the end.
        let check = |v: u64| {
            let mut buf = [0xffu8; 24];
            let mut w = Put {
                buf: &mut buf,
                at: 0,
            };
            w.uvar(v);
            let n = w.at;
            // The same bytes as the byte loop writes, in a buffer with room and in one
            // without (the byte loop then).
            let mut plain = [0u8; 10];
            let mut len = 0;
            put_varint(v, |b| {
                plain[len] = b;
                len += 1;
            });
            assert_eq!(&buf[..n], &plain[..len], "{v:#x}");
            assert_eq!(varint_len(v), len, "{v:#x}");
            let mut tight = [0u8; 10];
            let mut t = Put {
                buf: &mut tight[..len],
                at: 0,
            };
            t.uvar(v);
            assert_eq!((t.at, &tight[..len]), (len, &plain[..len]));
            assert_eq!(get_varint(&buf), Ok((v, n)));
            let mut a = [0u8; 8];
            a.copy_from_slice(&buf[..8]);
            let word = varint_in_word(u64::from_le_bytes(a));
            assert_eq!(word, (n <= 8).then_some((v, n)), "{v:#x}");
            assert_eq!(Get::new(&buf[..n]).uvar(), Ok(v));
            assert_eq!(Get::new(&buf).uvar(), Ok(v));
        };
        for v in [0, 1, 0x7f, 0x80, u64::MAX, u64::MAX >> 1] {
            check(v);
        }
        for bits in 1..64 {
            check((1u64 << bits) - 1);
            check(1u64 << bits);
            check((1u64 << bits) | 0x55);
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            check(x >> (x % 64));
        }
        // A run of continuation bytes decodes as before: refused at its first byte.
        let long = [0x80u8; 16];
        assert_eq!(Get::new(&long).uvar(), Err(Truncated { at: 0 }));
    }

    #[test]
    fn overlong_varints_are_refused() {
        let mut g = Get::new(&[0xff; 11]);
        assert_eq!(g.uvar(), Err(Truncated { at: 0 }));
        let mut g = Get::new(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]);
        assert_eq!(g.uvar(), Err(Truncated { at: 0 }));
    }
}

/// A cheap multiplicative hasher for small integer keys (stack frames, thread and stack
/// ids), which both sides hash once per call: SipHash's flood resistance is not needed
/// for keys a program hands its own recorder, and costs a good part of a call.
#[derive(Clone, Copy, Default)]
pub struct FastHasher(u64);

impl core::hash::Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(*b as u64);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(v as u64);
    }
    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }
}
