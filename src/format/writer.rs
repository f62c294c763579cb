//! Appends records to a recording, one self-contained compressed chunk at a time.

use std::io::Write;

use super::codec::Encoder;
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
}

/// Raw payload size at which a records chunk is sealed.
const CHUNK_TARGET: usize = 1 << 20;
/// zstd level: fast enough for the recorder's hot loop, far smaller than lz4.
const ZSTD_LEVEL: i32 = 3;

/// Writes a recording. Every sealed chunk is complete on disk, so a recorder killed
/// mid-way leaves a file that reads up to the last sealed chunk.
pub struct Writer<W: Write> {
    out: W,
    enc: Encoder,
    last_ts: u64,
    summary: Summary,
}

impl<W: Write> Writer<W> {
    /// Writes the file header and the metadata chunk.
    pub fn new(mut out: W, meta: &Meta) -> Result<Self, FormatError> {
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
            summary: Summary::default(),
        })
    }

    /// Appends one record; seals the chunk when it is large enough.
    pub fn push(&mut self, rec: &Record) -> Result<(), FormatError> {
        encode_record(&mut self.enc, &mut self.last_ts, rec);
        self.summary.records += 1;
        if self.enc.buf.len() >= CHUNK_TARGET {
            self.seal()?;
        }
        Ok(())
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
        write_chunk(&mut self.out, CHUNK_RECORDS, &self.enc.buf)?;
        self.out.flush()?;
        self.enc.buf.clear();
        self.last_ts = 0;
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

fn write_chunk<W: Write>(out: &mut W, kind: u8, raw: &[u8]) -> Result<(), FormatError> {
    let compressed = zstd::bulk::compress(raw, ZSTD_LEVEL)?;
    let (flags, payload) = if compressed.len() < raw.len() {
        (CHUNK_FLAG_ZSTD, compressed.as_slice())
    } else {
        (0, raw)
    };
    let mut header = [0u8; CHUNK_HEADER_LEN];
    header[0] = kind;
    header[1] = flags;
    header[4..8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    header[8..12].copy_from_slice(&(raw.len() as u32).to_le_bytes());
    header[12..16].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.write_all(&header)?;
    out.write_all(payload)?;
    Ok(())
}

fn encode_record(e: &mut Encoder, last_ts: &mut u64, rec: &Record) {
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
            e.u8(f.class.code());
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
            e.u8(tag::ENTER);
            e.uvar(en.thread.into());
            e.svar(en.ts.wrapping_sub(*last_ts) as i64);
            *last_ts = en.ts;
            e.uvar(en.func.into());
            e.uvar(en.args.len() as u64);
            for &a in &en.args {
                e.uvar(a);
            }
            e.uvar(en.stack.map_or(0, |s| u64::from(s) + 1));
        }
        Record::Exit(x) => {
            e.u8(tag::EXIT);
            e.uvar(x.thread.into());
            let flags = u8::from(x.ret.is_some()) | (u8::from(x.out.is_some()) << 1);
            e.u8(flags);
            if let Some(r) = x.ret {
                e.uvar(r);
            }
            if let Some(o) = x.out {
                e.uvar(o);
            }
        }
        Record::ProcessStart(p) => {
            e.u8(tag::PROCESS_START);
            e.uvar(p.pid.into());
            e.uvar(p.parent.into());
            e.uvar(p.ts);
            e.u8(match p.cause {
                StartCause::Spawn => 0,
                StartCause::Fork => 1,
                StartCause::Vfork => 2,
                StartCause::Exec => 3,
            });
            e.str(&p.path);
        }
        Record::ProcessExit(p) => {
            e.u8(tag::PROCESS_EXIT);
            e.uvar(p.pid.into());
            e.uvar(p.ts);
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
            }
        }
        Record::Note(n) => {
            e.u8(tag::NOTE);
            e.uvar(n.pid.into());
            e.str(&n.text);
        }
    }
}

#[cfg(test)]
impl<W: Write> Writer<W> {
    /// The output as written so far, without an end chunk (a recorder that was killed).
    pub(crate) fn into_inner_for_test(self) -> W {
        self.out
    }
}
