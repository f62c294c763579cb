//! Appends records to a recording, one self-contained compressed chunk at a time.

use std::io::Write;

use super::codec::Encoder;
use super::predict::{put_times, Threads, SLOT_RET};
use super::*;

/// Record tags inside a records chunk (see docs/FORMAT.md).
pub(crate) mod tag {
    pub const MODULE: u8 = 1;
    pub const MODULE_UNLOAD: u8 = 2;
    pub const FUNCTION: u8 = 3;
    pub const THREAD: u8 = 4;
    pub const STACK: u8 = 5;
    pub const ENTER: u8 = 6;
    pub const EXIT: u8 = 7;
    pub const PROCESS_START: u8 = 8;
    pub const PROCESS_EXIT: u8 = 9;
    pub const NOTE: u8 = 10;
    pub const SIGNAL: u8 = 11;
    pub const ENTER_DATA: u8 = 12;
    pub const EXIT_AT: u8 = 13;
    pub const CALL: u8 = 14;
    pub const THREAD_CALL: u8 = 15;
    pub const EXIT_DATA: u8 = 16;
    pub const CODED_CALL: u8 = 17;
    pub const CODER: u8 = 18;
    pub const STACK_ALIAS: u8 = 19;
}

/// Bits of a thread-coded call's shape byte above its argument count.
pub(crate) use rltrace_wire::coded::shape;

/// Raw payload size at which a records chunk is sealed.
const CHUNK_TARGET: usize = 1 << 20;
/// zstd level: fast enough for the recorder's hot loop, far smaller than lz4.
const ZSTD_LEVEL: i32 = 1;

/// A finished call, entry and return written as one thread-coded record (tag 15): what
/// the agent engine reports for an allocator call.
pub struct CallRecord<'a> {
    /// Thread number.
    pub thread: u32,
    /// Function id.
    pub func: u32,
    /// Integer arguments.
    pub args: &'a [u64],
    /// Stack id.
    pub stack: Option<u32>,
    /// Entry time, nanoseconds since the recording started.
    pub ts_in: u64,
    /// Return time, nanoseconds since the recording started.
    pub ts_out: u64,
    /// Return value.
    pub ret: Option<u64>,
    /// Out-pointer value read at return.
    pub out: Option<u64>,
}

/// Writes a recording. Every sealed chunk is complete on disk, so a recorder killed
/// mid-way leaves a file that reads up to the last sealed chunk.
pub struct Writer<W: Write> {
    out: W,
    enc: Encoder,
    /// The running timestamp of the chunk, in `unit`s.
    last_ts: u64,
    /// The stored time unit (the `time-unit-ns` metadata).
    unit: Unit,
    /// What the chunk's thread-coded calls are predicted from.
    threads: Threads,
    /// The chunk's coders of coded calls (tag 17), each with its last time.
    coders: Threads,
    /// The chunk's time column: the time codes of its thread-coded calls, in order.
    times: Encoder,
    summary: Summary,
    /// Kept from one call chunk to the next, with the buffers below: a context and
    /// buffers made afresh for every megabyte sealed were page faults in the recorder's
    /// busiest thread.
    zstd: Option<zstd::bulk::Compressor<'static>>,
    /// The call chunk being sealed, uncompressed.
    sealing: Vec<u8>,
    /// Its compressed form.
    compressed: Vec<u8>,
}

impl<W: Write> Writer<W> {
    /// Writes the file header and the metadata chunk. Times are stored in units of the
    /// metadata's `time-unit-ns` (1 when absent).
    pub fn new(mut out: W, meta: &Meta) -> Result<Self, FormatError> {
        let unit = meta.time_unit()?;
        let mut header = [0u8; FILE_HEADER_LEN];
        header[..8].copy_from_slice(MAGIC);
        header[8..10].copy_from_slice(&VERSION.to_le_bytes());
        out.write_all(&header)?;
        let mut enc = Encoder::default();
        enc.uvar(meta.pairs.len() as u64);
        for (k, v) in &meta.pairs {
            enc.str(k);
            enc.str(v);
        }
        write_chunk(&mut out, CHUNK_META, &enc.buf)?;
        out.flush()?;
        Ok(Writer {
            out,
            enc: Encoder::default(),
            last_ts: 0,
            unit: Unit::new(unit),
            threads: Threads::default(),
            coders: Threads::default(),
            times: Encoder::default(),
            summary: Summary::default(),
            zstd: None,
            sealing: Vec::new(),
            compressed: Vec::new(),
        })
    }

    /// Appends a finished call as one thread-coded record (tag 15: coded against the
    /// thread's previous calls in the chunk, its times in the chunk's time column); seals
    /// the chunk when it is large enough.
    pub fn call(&mut self, c: &CallRecord) -> Result<(), FormatError> {
        if self.threads.is_full_for(c.thread) {
            self.seal()?;
        }
        // Both ends quantised on the absolute clock: durations average out right.
        let ts_in = self.unit.of(c.ts_in);
        let ts_out = self.unit.of(c.ts_out);
        // Beyond the format's limit the reader would refuse the record anyway.
        let args = &c.args[..c.args.len().min(MAX_ARGS)];
        let exits = c.ret.is_some() || c.out.is_some();
        let e = &mut self.enc;
        e.u8(tag::THREAD_CALL);
        let t = self.threads.put_thread(e, c.thread);
        let duration = if exits { ts_out.wrapping_sub(ts_in) } else { 0 };
        put_times(&mut self.times, ts_in.wrapping_sub(t.ts), duration);
        t.ts = ts_in.wrapping_add(duration);
        e.uvar(c.func.into());
        e.u8(args.len() as u8
            | if exits { shape::EXIT } else { 0 }
            | if c.ret.is_some() { shape::RET } else { 0 }
            | if c.out.is_some() { shape::OUT } else { 0 });
        for (i, &a) in args.iter().enumerate() {
            t.put_value(e, c.func, i, a);
        }
        t.put_stack(e, c.stack);
        if let Some(r) = c.ret {
            t.put_value(e, c.func, SLOT_RET, r);
        }
        if let Some(o) = c.out {
            t.put_value(e, c.func, SLOT_RET, o);
        }
        self.counted()
    }

    /// Defines (or starts afresh) coder `coder`, whose coded calls are thread `thread`'s
    /// (tag 18): the agent's coding state of one thread, which runs on from chunk to chunk.
    pub fn coder(&mut self, coder: u32, thread: u32) -> Result<(), FormatError> {
        self.enc.u8(tag::CODER);
        self.enc.uvar(coder.into());
        self.enc.uvar(thread.into());
        self.grown()
    }

    /// Says that coder `coder`'s stack `local` is the recording's stack `stack` (tag 19).
    pub fn stack_alias(
        &mut self,
        coder: u32,
        local: u32,
        stack: Option<u32>,
    ) -> Result<(), FormatError> {
        self.enc.u8(tag::STACK_ALIAS);
        self.enc.uvar(coder.into());
        self.enc.uvar(local.into());
        self.enc.uvar(stack.map_or(0, |s| u64::from(s) + 1));
        self.grown()
    }

    /// Appends a finished call that the agent coded against coder `coder`'s state (tag
    /// 17): `from[..n]`, its body's length byte and its body, is stored as it is; its
    /// times (nanoseconds) go to the time column. `from` may run on past them: a short
    /// body is then copied in one 16-byte move (through a buffer on the stack, the move
    /// waited for the stores that filled it). The body is not checked here: a reader
    /// skips one that does not decode.
    pub fn coded_call(
        &mut self,
        coder: u32,
        ts_in: u64,
        ts_out: u64,
        exits: bool,
        from: &[u8],
        n: usize,
    ) -> Result<(), FormatError> {
        if self.coders.is_full_for(coder) {
            self.seal()?;
        }
        let ts_in = self.unit.of(ts_in);
        let ts_out = self.unit.of(ts_out);
        let e = &mut self.enc;
        e.u8(tag::CODED_CALL);
        let t = self.coders.put_thread(e, coder);
        let duration = if exits { ts_out.wrapping_sub(ts_in) } else { 0 };
        put_times(&mut self.times, ts_in.wrapping_sub(t.ts), duration);
        t.ts = ts_in.wrapping_add(duration);
        let n = n.min(from.len());
        match from.first_chunk::<16>() {
            Some(w) if n <= 16 => {
                let at = e.buf.len();
                e.buf.extend_from_slice(w);
                e.buf.truncate(at + n);
            }
            _ => e.buf.extend_from_slice(&from[..n]),
        }
        self.counted()
    }

    /// Counts the record just encoded; seals the chunk when it is large enough.
    fn counted(&mut self) -> Result<(), FormatError> {
        self.summary.records += 1;
        self.grown()
    }

    /// Seals the chunk when it is large enough (after a record readers do not hand out).
    fn grown(&mut self) -> Result<(), FormatError> {
        if self.enc.buf.len() + self.times.buf.len() >= CHUNK_TARGET {
            self.seal()?;
        }
        Ok(())
    }

    /// Appends one record; seals the chunk when it is large enough.
    pub fn push(&mut self, rec: &Record) -> Result<(), FormatError> {
        if matches!(rec, Record::Packed(_) | Record::Source(_)) {
            // These live in their own chunks, written by `write_packed`.
            return Ok(());
        }
        if let Record::Prototypes(text) = rec {
            // Their own (optional) chunk, after the records before them.
            self.seal()?;
            let mut enc = Encoder::default();
            enc.str(text);
            write_chunk_flags(
                &mut self.out,
                CHUNK_PROTOTYPES,
                CHUNK_FLAG_OPTIONAL,
                &enc.buf,
            )?;
            return Ok(());
        }
        encode_record(&mut self.enc, &mut self.last_ts, self.unit, rec);
        self.counted()
    }

    /// Counts calls the recorder saw but could not record.
    pub fn add_dropped(&mut self, n: u64) {
        self.summary.dropped += n;
    }

    /// Writes the pending records as a chunk, so that they survive a crash of the recorder.
    pub fn seal(&mut self) -> Result<(), FormatError> {
        if self.enc.buf.is_empty() {
            return Ok(());
        }
        // The record section's length, the records, then the time column.
        let mut payload = Encoder {
            buf: std::mem::take(&mut self.sealing),
        };
        payload.buf.clear();
        payload
            .buf
            .reserve(self.enc.buf.len() + self.times.buf.len() + 10);
        payload.uvar(self.enc.buf.len() as u64);
        payload.buf.extend_from_slice(&self.enc.buf);
        payload.buf.extend_from_slice(&self.times.buf);
        let raw = payload.buf;
        let z = match &mut self.zstd {
            Some(z) => z,
            None => self.zstd.insert(zstd::bulk::Compressor::new(ZSTD_LEVEL)?),
        };
        self.compressed.clear();
        self.compressed
            .reserve(zstd::zstd_safe::compress_bound(raw.len()));
        z.compress_to_buffer(&raw, &mut self.compressed)?;
        let (flags, stored) = if self.compressed.len() < raw.len() {
            (CHUNK_FLAG_ZSTD, self.compressed.as_slice())
        } else {
            (0, raw.as_slice())
        };
        write_stored_chunk(&mut self.out, CHUNK_CALLS, flags, stored, raw.len() as u32)?;
        self.sealing = raw;
        self.out.flush()?;
        self.enc.buf.clear();
        self.times.buf.clear();
        self.last_ts = 0;
        self.threads.clear();
        self.coders.clear();
        Ok(())
    }

    /// Seals pending records and writes the end chunk; returns the underlying writer.
    pub fn finish(mut self) -> Result<(W, Summary), FormatError> {
        self.seal()?;
        let mut enc = Encoder::default();
        enc.uvar(self.summary.records);
        enc.uvar(self.summary.dropped);
        write_chunk(&mut self.out, CHUNK_END, &enc.buf)?;
        self.out.flush()?;
        Ok((self.out, self.summary))
    }
}

/// The captures of an EnterData or ExitData record.
fn put_captures(e: &mut Encoder, data: &[ArgData]) {
    e.uvar(data.len() as u64);
    for d in data {
        e.u8(d.arg);
        e.u8(u8::from(d.truncated));
        e.bytes(&d.bytes);
    }
}

/// A stored time unit, chosen once: the usual units divide by a constant, which the
/// compiler turns into a multiply (a 64-bit division per time was a sixth of coding a
/// call). A `match` on the unit's value instead let LLVM fold every arm back into one
/// division.
#[derive(Clone, Copy, Debug)]
enum Unit {
    Ns,
    Us,
    Ms,
    Other(u64),
}

impl Unit {
    fn new(unit: u64) -> Self {
        match unit {
            1 => Unit::Ns,
            1_000 => Unit::Us,
            1_000_000 => Unit::Ms,
            u => Unit::Other(u.max(1)),
        }
    }

    /// `ns` in this unit, rounded down.
    #[inline]
    fn of(self, ns: u64) -> u64 {
        match self {
            Unit::Ns => ns,
            Unit::Us => ns / 1_000,
            Unit::Ms => ns / 1_000_000,
            Unit::Other(u) => ns / u,
        }
    }
}

fn write_chunk<W: Write>(out: &mut W, kind: u8, raw: &[u8]) -> Result<(), FormatError> {
    write_chunk_flags(out, kind, 0, raw)
}

fn write_chunk_flags<W: Write>(
    out: &mut W,
    kind: u8,
    extra_flags: u8,
    raw: &[u8],
) -> Result<(), FormatError> {
    let compressed = zstd::bulk::compress(raw, ZSTD_LEVEL)?;
    let (flags, payload) = if compressed.len() < raw.len() {
        (CHUNK_FLAG_ZSTD, compressed.as_slice())
    } else {
        (0, raw)
    };
    write_stored_chunk(out, kind, flags | extra_flags, payload, raw.len() as u32)
}

/// Writes a chunk whose payload is already in its stored form (compressed or not).
pub(crate) fn write_stored_chunk<W: Write>(
    out: &mut W,
    kind: u8,
    flags: u8,
    payload: &[u8],
    raw_len: u32,
) -> Result<(), FormatError> {
    let mut header = [0u8; CHUNK_HEADER_LEN];
    header[0] = kind;
    header[1] = flags;
    header[4..8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    header[8..12].copy_from_slice(&raw_len.to_le_bytes());
    header[12..16].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.write_all(&header)?;
    out.write_all(payload)?;
    Ok(())
}

/// Writes a recording that copies another one's chunks, with packed symbols and sources
/// placed before them so that replay knows them before the first event.
pub fn write_packed<W: Write, R: std::io::Read>(
    mut out: W,
    mut source: super::Reader<R>,
    symbols: &[PackedAddress],
    sources: &[SourceLine],
) -> Result<W, FormatError> {
    let meta = source.meta().clone();
    let mut w = Writer::new(&mut out, &meta)?;
    let mut enc = Encoder::default();
    encode_symbols(&mut enc, symbols);
    write_chunk_flags(&mut w.out, CHUNK_SYMBOLS, CHUNK_FLAG_OPTIONAL, &enc.buf)?;
    if !sources.is_empty() {
        let mut enc = Encoder::default();
        enc.uvar(sources.len() as u64);
        for l in sources {
            enc.str(&l.file);
            enc.uvar(l.line.into());
            enc.str(&l.text);
        }
        write_chunk_flags(&mut w.out, CHUNK_SOURCES, CHUNK_FLAG_OPTIONAL, &enc.buf)?;
    }
    while let Some(c) = source.next_raw_chunk()? {
        // Symbols of an earlier pack are replaced, not kept twice.
        if c.kind == CHUNK_SYMBOLS || c.kind == CHUNK_SOURCES {
            continue;
        }
        write_stored_chunk(&mut w.out, c.kind, c.flags, &c.payload, c.raw)?;
    }
    w.out.flush()?;
    drop(w);
    Ok(out)
}

fn encode_symbols(e: &mut Encoder, symbols: &[PackedAddress]) {
    // Names and paths repeat across addresses: store each once.
    let mut strings: Vec<&str> = Vec::new();
    let mut index: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
    fn intern<'a>(
        s: &'a Option<String>,
        strings: &mut Vec<&'a str>,
        index: &mut std::collections::HashMap<&'a str, u64>,
    ) -> u64 {
        match s {
            None => 0,
            Some(s) => *index.entry(s.as_str()).or_insert_with(|| {
                strings.push(s.as_str());
                strings.len() as u64
            }),
        }
    }
    let mut body = Encoder::default();
    body.uvar(symbols.len() as u64);
    for a in symbols {
        body.uvar(a.module.into());
        body.uvar(a.addr);
        body.uvar(a.frames.len() as u64);
        for f in &a.frames {
            body.uvar(intern(&f.function, &mut strings, &mut index));
            body.uvar(intern(&f.file, &mut strings, &mut index));
            body.uvar(f.line.into());
            body.uvar(f.column.into());
            body.u8(u8::from(f.inlined));
        }
    }
    e.uvar(strings.len() as u64);
    for s in &strings {
        e.str(s);
    }
    e.buf.extend_from_slice(&body.buf);
}

fn encode_record(e: &mut Encoder, last_ts: &mut u64, unit: Unit, rec: &Record) {
    match rec {
        Record::Module(m) => {
            e.u8(tag::MODULE);
            e.uvar(m.id.into());
            e.uvar(m.pid.into());
            e.str(&m.path);
            e.bytes(&m.build_id);
            e.uvar(m.bias);
            e.uvar(m.start);
            e.uvar(m.end);
        }
        Record::ModuleUnload(id) => {
            e.u8(tag::MODULE_UNLOAD);
            e.uvar((*id).into());
        }
        Record::Function(f) => {
            e.u8(tag::FUNCTION);
            e.uvar(f.id.into());
            e.str(&f.name);
            e.u8(f.class.code() | f.origin.bits());
            e.u8(u8::from(f.returns));
        }
        Record::Thread(t) => {
            e.u8(tag::THREAD);
            e.uvar(t.num.into());
            e.uvar(t.pid.into());
            e.uvar(t.tid.into());
        }
        Record::Stack(s) => {
            e.u8(tag::STACK);
            e.uvar(s.id.into());
            e.uvar(s.frames.len() as u64);
            for f in &s.frames {
                match f.module {
                    Some(m) => e.uvar(u64::from(m) + 1),
                    None => e.uvar(0),
                }
                e.uvar(f.addr);
            }
        }
        Record::Enter(en) => {
            e.u8(if en.data.is_empty() {
                tag::ENTER
            } else {
                tag::ENTER_DATA
            });
            let ts = unit.of(en.ts);
            e.uvar(en.thread.into());
            e.svar(ts.wrapping_sub(*last_ts) as i64);
            *last_ts = ts;
            e.uvar(en.func.into());
            e.uvar(en.args.len() as u64);
            for &a in &en.args {
                e.uvar(a);
            }
            e.uvar(en.stack.map_or(0, |s| u64::from(s) + 1));
            if !en.data.is_empty() {
                put_captures(e, &en.data);
            }
        }
        Record::Exit(x) => {
            let t = match (x.ts, x.data.is_empty()) {
                (Some(_), false) => tag::EXIT_DATA,
                (Some(_), true) => tag::EXIT_AT,
                (None, _) => tag::EXIT,
            };
            e.u8(t);
            e.uvar(x.thread.into());
            if let Some(ts) = x.ts {
                let ts = unit.of(ts);
                e.svar(ts.wrapping_sub(*last_ts) as i64);
                *last_ts = ts;
            }
            e.u8(u8::from(x.ret.is_some()) | (u8::from(x.out.is_some()) << 1));
            if let Some(r) = x.ret {
                e.uvar(r);
            }
            if let Some(o) = x.out {
                e.uvar(o);
            }
            if t == tag::EXIT_DATA {
                put_captures(e, &x.data);
            }
        }
        Record::ProcessStart(p) => {
            e.u8(tag::PROCESS_START);
            e.uvar(p.pid.into());
            e.uvar(p.parent.into());
            e.uvar(unit.of(p.ts));
            e.u8(match p.cause {
                StartCause::Spawn => 0,
                StartCause::Fork => 1,
                StartCause::Vfork => 2,
                StartCause::Exec => 3,
                StartCause::Attach => 4,
            });
            e.str(&p.path);
        }
        Record::ProcessExit(p) => {
            e.u8(tag::PROCESS_EXIT);
            e.uvar(p.pid.into());
            e.uvar(unit.of(p.ts));
            match p.how {
                ExitHow::Code(c) => {
                    e.u8(0);
                    e.svar(c.into());
                }
                ExitHow::Signal(s) => {
                    e.u8(1);
                    e.svar(s.into());
                }
                ExitHow::Running => e.u8(2),
                ExitHow::Unknown => e.u8(3),
            }
        }
        Record::Note(n) => {
            e.u8(tag::NOTE);
            e.uvar(n.pid.into());
            e.str(&n.text);
        }
        Record::Signal(x) => {
            e.u8(tag::SIGNAL);
            e.uvar(x.thread.into());
            e.uvar(unit.of(x.ts));
            e.svar(x.signo.into());
            e.svar(x.code.into());
            e.uvar(x.addr);
            e.uvar(x.stack.map_or(0, |s| u64::from(s) + 1));
        }
        Record::Packed(_) | Record::Source(_) | Record::Prototypes(_) => {}
    }
}

/// Writes one chunk (for tests that build files by hand).
#[cfg(test)]
pub(crate) fn write_chunk_for_test(out: &mut Vec<u8>, kind: u8, raw: &[u8]) {
    write_chunk(out, kind, raw).unwrap();
}

#[cfg(test)]
impl<W: Write> Writer<W> {
    /// The output as written so far, without an end chunk (a recorder that was killed).
    pub(crate) fn into_inner_for_test(self) -> W {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::Unit;

    #[test]
    fn quantising_by_a_constant_unit_is_plain_division() {
        for ns in [0, 1, 999, 1_000, 1_999_999, 3_600_000_000_123, u64::MAX] {
            for unit in [1, 7, 1_000, 1_000_000, 1_000_000_000, u64::MAX] {
                assert_eq!(Unit::new(unit).of(ns), ns / unit, "{ns} / {unit}");
            }
        }
    }
}
