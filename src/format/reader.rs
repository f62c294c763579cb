//! Streams records out of a recording, validating every chunk; never trusts a size it reads.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Read;

use super::codec::Decoder;
use super::predict::{get_stack, get_times, get_value, Coder, Threads, SLOT_RET};
use super::writer::{shape, tag};
use super::*;

/// Errors opening a recording file, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The file could not be opened.
    #[error("cannot open {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a readable recording.
    #[error("{path}: {source}")]
    Format {
        /// The file.
        path: String,
        /// The cause.
        source: FormatError,
    },
}

/// Opens a recording file and reads its header and metadata.
pub fn open_file(
    path: &std::path::Path,
) -> Result<Reader<std::io::BufReader<std::fs::File>>, OpenError> {
    let shown = path.display().to_string();
    let f = std::fs::File::open(path).map_err(|source| OpenError::Io {
        path: shown.clone(),
        source,
    })?;
    Reader::new(std::io::BufReader::with_capacity(1 << 20, f)).map_err(|source| OpenError::Format {
        path: shown,
        source,
    })
}

/// Reads a recording chunk by chunk, in bounded memory.
pub struct Reader<R: Read> {
    r: R,
    offset: u64,
    meta: Meta,
    pending: VecDeque<Record>,
    /// The records chunk being read, one record at a time.
    records: Option<Records>,
    /// Nanoseconds per stored time unit.
    unit: u64,
    finished: bool,
    summary: Option<Summary>,
    warnings: Vec<String>,
    /// The coders of coded calls, whose state runs on across chunks.
    stream: StreamState,
}

/// Most coders a recording may define (each keeps its state to the end of the file).
const MAX_CODERS: usize = 1 << 20;
/// Most stack aliases a recording may define.
const MAX_ALIASES: usize = 1 << 24;

/// Most coders whose dropped calls get a warning each.
const MAX_DROPPED_CODER_WARNINGS: usize = 16;

/// What coded calls (tag 17) are decoded against: the state of each coder, from its
/// definition (tag 18) to the end of the recording, and the stacks its ids stand for.
#[derive(Default)]
struct StreamState {
    /// Per coder: its thread and its coding state.
    coders: HashMap<u32, (u32, Coder)>,
    /// (coder, the coder's stack id) to the recording's stack.
    aliases: HashMap<(u32, u32), Option<u32>>,
    /// Coders one of whose calls did not decode: their state is not the agent's any
    /// more, so their later calls are dropped.
    dropped: HashSet<u32>,
    /// How many times a coder's calls were dropped: only the first few get a warning.
    drops: usize,
    /// What the agent sent that could not be read: the recording itself is whole.
    notes: Vec<String>,
}

impl StreamState {
    /// Drops coder `coder`'s calls from here on, since this one did not decode (`why`).
    fn drop_coder(&mut self, coder: u32, why: FormatError) {
        if !self.dropped.insert(coder) {
            return;
        }
        self.drops += 1;
        let n = self.drops;
        if n <= MAX_DROPPED_CODER_WARNINGS {
            self.notes.push(format!(
                "{why}: a call the agent coded does not decode; the calls of coder {coder} \
                 (one thread's) from there on are dropped"
            ));
        } else if n == MAX_DROPPED_CODER_WARNINGS + 1 {
            self.notes
                .push("more coders' calls that do not decode are dropped".to_string());
        }
    }
}

enum Fill {
    Full,
    Eof(usize),
}

fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<Fill> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => return Ok(Fill::Eof(got)),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Fill::Full)
}

/// One chunk as read from the file, payload still in its stored form.
pub struct RawChunk {
    /// Chunk type.
    pub kind: u8,
    /// Chunk flags.
    pub flags: u8,
    /// Decompressed length.
    pub raw: u32,
    /// File offset of its header.
    pub offset: u64,
    /// Stored payload.
    pub payload: Vec<u8>,
}

impl<R: Read> Reader<R> {
    /// Checks the file header and reads the metadata chunk.
    pub fn new(mut r: R) -> Result<Self, FormatError> {
        let mut header = [0u8; FILE_HEADER_LEN];
        if let Fill::Eof(n) = read_full(&mut r, &mut header)? {
            if n >= 8 && &header[..8] != MAGIC || n < 8 && header[..n] != MAGIC[..n] {
                return Err(FormatError::BadMagic);
            }
            return Err(FormatError::TooShort(n as u64));
        }
        if &header[..8] != MAGIC {
            return Err(FormatError::BadMagic);
        }
        let version = u16::from_le_bytes([header[8], header[9]]);
        if version > VERSION || version == 0 {
            return Err(FormatError::NewerVersion { found: version });
        }
        let features = u32::from_le_bytes([header[12], header[13], header[14], header[15]]);
        if features != 0 {
            return Err(FormatError::UnknownFeatures(features));
        }
        let mut reader = Reader {
            r,
            offset: FILE_HEADER_LEN as u64,
            meta: Meta::default(),
            pending: VecDeque::new(),
            records: None,
            unit: 1,
            finished: false,
            summary: None,
            warnings: Vec::new(),
            stream: StreamState::default(),
        };
        let chunk = match reader.read_chunk()? {
            Some(c) if c.kind == CHUNK_META => c,
            Some(c) => {
                return Err(FormatError::BadChunk {
                    offset: c.offset,
                    what: format!("expected the metadata chunk first, found type {}", c.kind),
                });
            }
            None => {
                return Err(FormatError::BadChunk {
                    offset: reader.offset,
                    what: "recording ends before its metadata chunk".into(),
                });
            }
        };
        let data = decompress(&chunk)?;
        let mut d = Decoder::new(&data, chunk.offset);
        let n = d.uvar()?;
        for _ in 0..n {
            let k = d.str(MAX_STRING)?;
            let v = d.str(MAX_STRING)?;
            reader.meta.pairs.push((k, v));
        }
        reader.unit = reader.meta.time_unit()?;
        Ok(reader)
    }

    /// Records decoded but not yet returned (the Exit half of a Call).
    #[cfg(test)]
    pub(crate) fn pending_len_for_test(&self) -> usize {
        self.pending.len()
    }

    /// The recording's metadata.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// Totals from the end chunk, once reading has reached it.
    pub fn summary(&self) -> Option<&Summary> {
        self.summary.as_ref()
    }

    /// Problems that did not stop reading: a truncated tail, a missing end chunk.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Problems in what an engine sent, found while reading a recording that is itself
    /// whole: calls the agent coded that do not decode, skipped with their thread's later
    /// calls (a malformed agent stream that the recorder found is a Note record instead).
    pub fn notes(&self) -> &[String] {
        &self.stream.notes
    }

    /// Returns the next record, or `None` at the end of the recording.
    pub fn next_record(&mut self) -> Result<Option<Record>, FormatError> {
        loop {
            if let Some(r) = self.pending.pop_front() {
                return Ok(Some(r));
            }
            if let Some(cur) = &mut self.records {
                if cur.pos < cur.end {
                    let mut d = Decoder::resume(&cur.data[..cur.end], cur.offset, cur.pos);
                    let mut times = cur
                        .times
                        .map(|at| Decoder::resume(&cur.data, cur.offset, at));
                    let rec = decode_record(
                        &mut d,
                        times.as_mut(),
                        &mut cur.state,
                        &mut self.stream,
                        self.unit,
                        &mut self.pending,
                    );
                    cur.pos = d.pos();
                    cur.times = times.map(|t| t.pos());
                    match rec {
                        Ok(Some(r)) => return Ok(Some(r)),
                        // A definition readers keep to themselves.
                        Ok(None) => continue,
                        Err(e) => {
                            // Nothing after a record that does not decode can be trusted.
                            cur.pos = cur.end;
                            cur.times = None;
                            return Err(e);
                        }
                    }
                }
                let left = cur.times.filter(|&at| at < cur.data.len());
                let offset = cur.offset;
                self.records = None;
                if let Some(at) = left {
                    return Err(FormatError::Corrupt {
                        offset,
                        within: at as u64,
                        what: "time column holds more than the chunk's calls".into(),
                    });
                }
            }
            if self.finished {
                return Ok(None);
            }
            let Some(chunk) = self.read_chunk()? else {
                self.finished = true;
                if self.summary.is_none() && !self.warnings.iter().any(|w| w.contains("truncated"))
                {
                    self.warnings.push(format!(
                        "recording has no end marker (offset {}): the recorder was interrupted; replaying what was written",
                        self.offset
                    ));
                }
                return Ok(None);
            };
            match chunk.kind {
                CHUNK_RECORDS | CHUNK_CALLS => {
                    let data = decompress(&chunk)?;
                    let (pos, end, times) = if chunk.kind == CHUNK_CALLS {
                        let (pos, end) = record_section(&data, chunk.offset)?;
                        (pos, end, Some(end))
                    } else {
                        (0, data.len(), None)
                    };
                    self.records = Some(Records {
                        data,
                        offset: chunk.offset,
                        pos,
                        end,
                        times,
                        state: ChunkState::default(),
                    });
                }
                CHUNK_END => {
                    let data = decompress(&chunk)?;
                    let mut d = Decoder::new(&data, chunk.offset);
                    self.summary = Some(Summary {
                        records: d.uvar()?,
                        dropped: d.uvar()?,
                    });
                    self.finished = true;
                }
                CHUNK_SYMBOLS => {
                    let data = decompress(&chunk)?;
                    decode_symbols(&data, chunk.offset, &mut self.pending)?;
                }
                CHUNK_SOURCES => {
                    let data = decompress(&chunk)?;
                    let mut d = Decoder::new(&data, chunk.offset);
                    let n = d.uvar()?;
                    for _ in 0..n {
                        let file = d.str(MAX_STRING)?;
                        let line = d.uvar32()?;
                        let text = d.str(MAX_STRING)?;
                        self.pending
                            .push_back(Record::Source(SourceLine { file, line, text }));
                    }
                }
                CHUNK_PROTOTYPES => {
                    let data = decompress(&chunk)?;
                    let mut d = Decoder::new(&data, chunk.offset);
                    self.pending
                        .push_back(Record::Prototypes(d.str(MAX_PROTOTYPES)?));
                }
                CHUNK_META => {
                    return Err(FormatError::BadChunk {
                        offset: chunk.offset,
                        what: "second metadata chunk".into(),
                    });
                }
                other if chunk.flags & CHUNK_FLAG_OPTIONAL != 0 => {
                    let _ = other;
                }
                other => {
                    return Err(FormatError::BadChunk {
                        offset: chunk.offset,
                        what: format!(
                            "unknown chunk type {other}; the recording needs a newer rltrace"
                        ),
                    });
                }
            }
        }
    }

    /// The next chunk, checked but not decoded (for copying a recording).
    pub fn next_raw_chunk(&mut self) -> Result<Option<RawChunk>, FormatError> {
        self.read_chunk()
    }

    /// Reads one chunk; `None` at end of file or at a truncated tail (with a warning).
    fn read_chunk(&mut self) -> Result<Option<RawChunk>, FormatError> {
        let offset = self.offset;
        let mut h = [0u8; CHUNK_HEADER_LEN];
        match read_full(&mut self.r, &mut h)? {
            Fill::Full => {}
            Fill::Eof(0) => return Ok(None),
            Fill::Eof(n) => {
                self.warnings.push(format!(
                    "recording truncated at offset {offset}: {n} bytes of an incomplete chunk header ignored; replaying up to the last complete chunk"
                ));
                return Ok(None);
            }
        }
        let kind = h[0];
        let flags = h[1];
        let stored = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        let raw = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
        let crc = u32::from_le_bytes([h[12], h[13], h[14], h[15]]);
        if stored > MAX_CHUNK_LEN || raw > MAX_CHUNK_LEN {
            return Err(FormatError::BadChunk {
                offset,
                what: format!("chunk claims {stored} stored / {raw} raw bytes, over the {MAX_CHUNK_LEN}-byte limit"),
            });
        }
        if flags & !(CHUNK_FLAG_ZSTD | CHUNK_FLAG_OPTIONAL) != 0 {
            return Err(FormatError::BadChunk {
                offset,
                what: format!("unknown chunk flags {flags:#x}"),
            });
        }
        if flags & CHUNK_FLAG_ZSTD == 0 && stored != raw {
            return Err(FormatError::BadChunk {
                offset,
                what: format!("uncompressed chunk with stored size {stored} != raw size {raw}"),
            });
        }
        // Grow with the data actually present: a lying size cannot force a large allocation.
        let mut payload = Vec::new();
        (&mut self.r)
            .take(u64::from(stored))
            .read_to_end(&mut payload)?;
        if payload.len() < stored as usize {
            self.warnings.push(format!(
                "recording truncated at offset {offset}: the last chunk has {} of its {stored} bytes; replaying up to the last complete chunk",
                payload.len()
            ));
            return Ok(None);
        }
        if crc32fast::hash(&payload) != crc {
            return Err(FormatError::BadChecksum { offset });
        }
        self.offset = offset + CHUNK_HEADER_LEN as u64 + u64::from(stored);
        Ok(Some(RawChunk {
            kind,
            flags,
            raw,
            offset,
            payload,
        }))
    }
}

fn decompress(chunk: &RawChunk) -> Result<Vec<u8>, FormatError> {
    if chunk.flags & CHUNK_FLAG_ZSTD == 0 {
        return Ok(chunk.payload.clone());
    }
    // The declared raw size was checked against MAX_CHUNK_LEN when the header was read,
    // and zstd refuses to write past it, so a bomb cannot inflate beyond that bound.
    let data = zstd::bulk::decompress(&chunk.payload, chunk.raw as usize).map_err(|e| {
        FormatError::BadChunk {
            offset: chunk.offset,
            what: format!("zstd payload does not decompress to its declared size: {e}"),
        }
    })?;
    if data.len() != chunk.raw as usize {
        return Err(FormatError::BadChunk {
            offset: chunk.offset,
            what: format!(
                "payload decompresses to {} bytes, header says {}",
                data.len(),
                chunk.raw
            ),
        });
    }
    Ok(data)
}

fn decode_symbols(data: &[u8], offset: u64, out: &mut VecDeque<Record>) -> Result<(), FormatError> {
    let mut d = Decoder::new(data, offset);
    let nstrings = d.uvar()?;
    // Every string takes at least its length byte: a count beyond the payload is a lie.
    if nstrings > data.len() as u64 {
        return Err(d.error(format!(
            "{nstrings} strings cannot fit in {} bytes",
            data.len()
        )));
    }
    let mut strings = Vec::with_capacity(nstrings as usize);
    for _ in 0..nstrings {
        strings.push(d.str(MAX_STRING)?);
    }
    let get = |d: &Decoder<'_>, i: u64| -> Result<Option<String>, FormatError> {
        if i == 0 {
            return Ok(None);
        }
        strings
            .get((i - 1) as usize)
            .cloned()
            .map(Some)
            .ok_or_else(|| d.error(format!("string index {i} out of range")))
    };
    let n = d.uvar()?;
    for _ in 0..n {
        let module = d.uvar32()?;
        let addr = d.uvar()?;
        let nframes = d.uvar()?;
        if nframes > MAX_FRAMES as u64 {
            return Err(d.error(format!(
                "{nframes} inlined frames exceed the limit of {MAX_FRAMES}"
            )));
        }
        let mut frames = Vec::with_capacity(nframes as usize);
        for _ in 0..nframes {
            let f = d.uvar()?;
            let file = d.uvar()?;
            frames.push(PackedFrame {
                function: get(&d, f)?,
                file: get(&d, file)?,
                line: d.uvar32()?,
                column: d.uvar32()?,
                inlined: d.u8()? != 0,
            });
        }
        out.push_back(Record::Packed(PackedAddress {
            module,
            addr,
            frames,
        }));
    }
    Ok(())
}

/// A records chunk being read one record at a time, so that a chunk never takes more
/// memory than its payload however small its records are.
struct Records {
    data: Vec<u8>,
    offset: u64,
    /// Where the next record starts.
    pos: usize,
    /// Where the records end (the time column, if any, follows).
    end: usize,
    /// Where the next time code starts, in a calls chunk (type 7): its thread-coded calls
    /// take their times from the column after the records.
    times: Option<usize>,
    state: ChunkState,
}

/// Where a calls chunk's record section starts and ends: after its length, which must fit
/// the payload.
fn record_section(data: &[u8], offset: u64) -> Result<(usize, usize), FormatError> {
    let mut d = Decoder::new(data, offset);
    let len = d.uvar()?;
    let pos = d.pos();
    let end = usize::try_from(len)
        .ok()
        .and_then(|l| l.checked_add(pos))
        .filter(|&e| e <= data.len())
        .ok_or_else(|| {
            d.error(format!(
                "record section of {len} bytes overruns the chunk's {}",
                data.len()
            ))
        })?;
    Ok((pos, end))
}

/// What a chunk's records are coded against, reset at every chunk.
#[derive(Default)]
struct ChunkState {
    /// The chunk's running timestamp, in stored units.
    last_ts: u64,
    /// Per-thread prediction state of thread-coded calls.
    threads: Threads,
    /// The coders of the chunk's coded calls, by recency, with their last times.
    coders: Threads,
}

/// Decodes the record at `d`, taking a thread-coded call's times from `times` (the time
/// column of a call chunk). A call record (an entry and its return) gives its Enter and
/// queues its Exit in `then`. A definition that only the reader uses (a coder, a stack
/// alias) gives nothing.
fn decode_record(
    d: &mut Decoder,
    times: Option<&mut Decoder>,
    state: &mut ChunkState,
    stream: &mut StreamState,
    unit: u64,
    then: &mut VecDeque<Record>,
) -> Result<Option<Record>, FormatError> {
    let ns = |units: u64| units.saturating_mul(unit);
    let last_ts = &mut state.last_ts;
    let t = d.u8()?;
    Ok(Some(match t {
        tag::THREAD_CALL | tag::CODED_CALL => {
            let Some(times) = times else {
                return Err(d.error("thread-coded call outside a call chunk"));
            };
            let threads = if t == tag::THREAD_CALL {
                &mut state.threads
            } else {
                &mut state.coders
            };
            let (who, ts) = threads.get_thread(d)?;
            let (delta, duration) = get_times(times)?;
            let at = ts.ts.wrapping_add(delta);
            let back = at.wrapping_add(duration);
            ts.ts = back;
            let (thread, (call, exits), coded) = if t == tag::THREAD_CALL {
                (who, coded_call(d, &mut ts.coder, duration, false)?, None)
            } else {
                let len = usize::from(d.u8()?);
                let mut body = d.take(len)?;
                let Some((thread, coder)) = stream.coders.get_mut(&who) else {
                    return Err(d.error(format!("coded call of undefined coder {who}")));
                };
                if stream.dropped.contains(&who) {
                    return Ok(None);
                }
                // The recorder stores the agent's bodies without decoding them: one that
                // does not decode is skipped by its length, as a malformed agent stream
                // was ended, rather than making the rest of the file unreadable.
                match agent_body(&mut body, coder, duration) {
                    Ok(c) => (*thread, c, Some(who)),
                    Err(e) => {
                        stream.drop_coder(who, e);
                        return Ok(None);
                    }
                }
            };
            let stack = match coded {
                // A local stack the recorder never defined reads as none.
                Some(c) => call
                    .stack
                    .and_then(|l| stream.aliases.get(&(c, l)).copied().flatten()),
                None => call.stack,
            };
            let enter = Enter {
                thread,
                ts: ns(at),
                func: call.func,
                args: call.args,
                stack,
                data: Vec::new(),
            };
            entered(then, enter, exits.then(|| (call.ret, call.out, ns(back))))
        }
        tag::CODER => {
            let coder = d.uvar32()?;
            let thread = d.uvar32()?;
            if stream.coders.len() >= MAX_CODERS && !stream.coders.contains_key(&coder) {
                return Err(d.error(format!("more than {MAX_CODERS} coders")));
            }
            stream.coders.insert(coder, (thread, Coder::default()));
            // Defined again, it starts afresh, decodable again.
            stream.dropped.remove(&coder);
            return Ok(None);
        }
        tag::STACK_ALIAS => {
            let coder = d.uvar32()?;
            let local = d.uvar32()?;
            let stack = d.opt_id("stack")?;
            if stream.aliases.len() >= MAX_ALIASES && !stream.aliases.contains_key(&(coder, local))
            {
                return Err(d.error(format!("more than {MAX_ALIASES} stack aliases")));
            }
            stream.aliases.insert((coder, local), stack);
            return Ok(None);
        }
        tag::MODULE => Record::Module(ModuleDef {
            id: d.uvar32()?,
            pid: d.uvar32()?,
            path: d.str(MAX_STRING)?,
            build_id: d.bytes(256)?.to_vec(),
            bias: d.uvar()?,
            start: d.uvar()?,
            end: d.uvar()?,
        }),
        tag::MODULE_UNLOAD => Record::ModuleUnload(d.uvar32()?),
        tag::FUNCTION => {
            let id = d.uvar32()?;
            let name = d.str(MAX_STRING)?;
            let (origin, class) = Origin::split(d.u8()?);
            Record::Function(FunctionDef {
                id,
                name,
                class: FnClass::from_code(class),
                returns: d.u8()? != 0,
                origin,
            })
        }
        tag::THREAD => Record::Thread(ThreadDef {
            num: d.uvar32()?,
            pid: d.uvar32()?,
            tid: d.uvar32()?,
        }),
        tag::STACK => {
            let id = d.uvar32()?;
            let n = d.uvar()?;
            if n > MAX_FRAMES as u64 {
                return Err(d.error(format!(
                    "stack of {n} frames exceeds the limit of {MAX_FRAMES}"
                )));
            }
            let mut frames = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let module = d.opt_id("module")?;
                frames.push(Frame {
                    module,
                    addr: d.uvar()?,
                });
            }
            Record::Stack(StackDef { id, frames })
        }
        tag::ENTER | tag::ENTER_DATA | tag::CALL => {
            let thread = d.uvar32()?;
            let ts = last_ts.wrapping_add(d.svar()? as u64);
            *last_ts = ts;
            let func = d.uvar32()?;
            let n = d.uvar()?;
            if n > MAX_ARGS as u64 {
                return Err(d.error(format!(
                    "call with {n} arguments exceeds the limit of {MAX_ARGS}"
                )));
            }
            let mut args = Vec::with_capacity(n as usize);
            for _ in 0..n {
                args.push(d.uvar()?);
            }
            let stack = d.opt_id("stack")?;
            let data = if t == tag::ENTER_DATA {
                captures(d, "call")?
            } else {
                Vec::new()
            };
            let exit = if t == tag::CALL {
                let (ret, out) = exit_values(d)?;
                let back = last_ts.wrapping_add(d.svar()? as u64);
                *last_ts = back;
                Some((ret, out, ns(back)))
            } else {
                None
            };
            let enter = Enter {
                thread,
                ts: ns(ts),
                func,
                args,
                stack,
                data,
            };
            entered(then, enter, exit)
        }
        tag::EXIT | tag::EXIT_AT | tag::EXIT_DATA => {
            let thread = d.uvar32()?;
            let ts = if t == tag::EXIT {
                None
            } else {
                let ts = last_ts.wrapping_add(d.svar()? as u64);
                *last_ts = ts;
                Some(ns(ts))
            };
            let (ret, out) = exit_values(d)?;
            let data = if t == tag::EXIT_DATA {
                captures(d, "return")?
            } else {
                Vec::new()
            };
            Record::Exit(Exit {
                thread,
                ret,
                out,
                ts,
                data,
            })
        }
        tag::PROCESS_START => Record::ProcessStart(ProcessStart {
            pid: d.uvar32()?,
            parent: d.uvar32()?,
            ts: ns(d.uvar()?),
            cause: match d.u8()? {
                0 => StartCause::Spawn,
                1 => StartCause::Fork,
                2 => StartCause::Vfork,
                3 => StartCause::Exec,
                4 => StartCause::Attach,
                c => return Err(d.error(format!("unknown process start cause {c}"))),
            },
            path: d.str(MAX_STRING)?,
        }),
        tag::PROCESS_EXIT => {
            let pid = d.uvar32()?;
            let ts = ns(d.uvar()?);
            let how = match d.u8()? {
                0 => ExitHow::Code(d.svar()? as i32),
                1 => ExitHow::Signal(d.svar()? as i32),
                2 => ExitHow::Running,
                3 => ExitHow::Unknown,
                c => return Err(d.error(format!("unknown process exit kind {c}"))),
            };
            Record::ProcessExit(ProcessExit { pid, ts, how })
        }
        tag::NOTE => Record::Note(Note {
            pid: d.uvar32()?,
            text: d.str(MAX_STRING)?,
        }),
        tag::SIGNAL => {
            let thread = d.uvar32()?;
            let ts = ns(d.uvar()?);
            let signo = d.svar()? as i32;
            let code = d.svar()? as i32;
            let addr = d.uvar()?;
            let stack = d.opt_id("stack")?;
            Record::Signal(SignalRec {
                thread,
                ts,
                signo,
                code,
                addr,
                stack,
            })
        }
        other => return Err(d.error(format!("unknown record tag {other}"))),
    }))
}

/// Decodes the body of an agent-coded call (all of `body`) against `coder`: lenient
/// about stacks, strict about the rest, which must be a call of the allocator family
/// that ends where the body does.
fn agent_body(
    body: &mut Decoder,
    coder: &mut Coder,
    duration: u64,
) -> Result<(CodedFields, bool), FormatError> {
    let c = coded_call(body, coder, duration, true)?;
    if c.0.func as usize >= rltrace_wire::FUNCTIONS.len() {
        return Err(body.error(format!(
            "coded call of function {}, not of the allocator family",
            c.0.func
        )));
    }
    if !body.is_empty() {
        return Err(body.error("coded call ends before its length"));
    }
    Ok(c)
}

/// The fields of a thread-coded call after its thread or coder.
struct CodedFields {
    func: u32,
    args: Vec<u64>,
    stack: Option<u32>,
    ret: Option<u64>,
    out: Option<u64>,
}

/// Decodes a thread-coded call's fields from its function id on, against `coder`; with
/// `lenient`, a stack code naming a recent stack the coder does not have reads as none.
/// Returns them and whether the call returned.
fn coded_call(
    d: &mut Decoder,
    coder: &mut Coder,
    duration: u64,
    lenient: bool,
) -> Result<(CodedFields, bool), FormatError> {
    let func = d.uvar32()?;
    let form = d.u8()?;
    let n = usize::from(form & shape::ARGS);
    if n > MAX_ARGS {
        return Err(d.error(format!(
            "call with {n} arguments exceeds the limit of {MAX_ARGS}"
        )));
    }
    let exits = form & shape::EXIT != 0;
    if !exits && (form & (shape::RET | shape::OUT) != 0 || duration != 0) {
        return Err(d.error(format!(
            "call of shape {form:#x} without a return has a return value or duration"
        )));
    }
    let mut args = Vec::with_capacity(n);
    for i in 0..n {
        args.push(get_value(coder, d, func, i)?);
    }
    let stack = if lenient {
        let code = d.uvar()?;
        match coder.get_stack(code) {
            Ok(s) => s,
            Err(rltrace_wire::coded::CodeError::NoRecentStack(_)) => None,
            Err(e) => return Err(d.error(e.to_string())),
        }
    } else {
        get_stack(coder, d)?
    };
    let mut value = |present: bool| -> Result<Option<u64>, FormatError> {
        Ok(if present {
            Some(get_value(coder, d, func, SLOT_RET)?)
        } else {
            None
        })
    };
    let ret = value(form & shape::RET != 0)?;
    let out = value(form & shape::OUT != 0)?;
    Ok((
        CodedFields {
            func,
            args,
            stack,
            ret,
            out,
        },
        exits,
    ))
}

/// A call's entry, its return (return value, out value, time) queued to follow it.
fn entered(
    then: &mut VecDeque<Record>,
    enter: Enter,
    exit: Option<(Option<u64>, Option<u64>, u64)>,
) -> Record {
    if let Some((ret, out, ts)) = exit {
        then.push_back(Record::Exit(Exit {
            thread: enter.thread,
            ret,
            out,
            ts: Some(ts),
            data: Vec::new(),
        }));
    }
    Record::Enter(enter)
}

/// The captures of an EnterData or ExitData record (`what` names the record in errors).
fn captures(d: &mut Decoder, what: &str) -> Result<Vec<ArgData>, FormatError> {
    let n = d.uvar()?;
    if n == 0 || n > MAX_ARGS as u64 {
        return Err(d.error(format!("{what} with {n} captures")));
    }
    let mut data = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let arg = d.u8()?;
        let truncated = match d.u8()? {
            0 => false,
            1 => true,
            f => return Err(d.error(format!("bad capture flags {f}"))),
        };
        data.push(ArgData {
            arg,
            truncated,
            bytes: d.bytes(MAX_ARG_DATA)?.to_vec(),
        });
    }
    Ok(data)
}

/// An exit's flags and the return and out values they announce.
fn exit_values(d: &mut Decoder) -> Result<(Option<u64>, Option<u64>), FormatError> {
    let flags = d.u8()?;
    if flags & !3 != 0 {
        return Err(d.error(format!("unknown exit flags {flags:#x}")));
    }
    let ret = if flags & 1 != 0 {
        Some(d.uvar()?)
    } else {
        None
    };
    let out = if flags & 2 != 0 {
        Some(d.uvar()?)
    } else {
        None
    };
    Ok((ret, out))
}
