//! The `.rlt` recording format: records, and the chunked container that holds them.
//!
//! `docs/FORMAT.md` is the specification; this module is its implementation.

pub mod codec;
mod predict;
pub mod reader;
pub mod writer;

pub use reader::{open_file, OpenError, Reader};
pub use writer::{CallRecord, Writer};

/// First eight bytes of every recording.
pub const MAGIC: &[u8; 8] = b"RLTRACE\0";
/// The format version this build writes and the newest it reads (version 2 added the
/// signal record, version 3 the attach start cause, version 4 the enter record with
/// argument data and the timed exit record, version 5 the unknown exit status, version 6
/// the call record and the time unit, version 7 the thread-coded call record, version 8 the
/// exit record with data, version 9 the agent's coded calls; older files
/// read unchanged).
pub const VERSION: u16 = 9;
/// Metadata key: nanoseconds per stored time unit (version 6; 1 when absent).
pub const META_TIME_UNIT: &str = "time-unit-ns";
/// Metadata key: the `-l` patterns, one per line.
pub const META_TRACE_LIBRARIES: &str = "trace-libraries";
/// Metadata key: the allocator functions `-x` selected, one per line.
pub const META_X_ALLOCATORS: &str = "x-allocators";
/// The largest time unit a recording may state (one second).
pub const MAX_TIME_UNIT: u64 = 1_000_000_000;
/// Size of the file header: magic, version, reserved, feature bits.
pub const FILE_HEADER_LEN: usize = 16;
/// Size of a chunk header.
pub const CHUNK_HEADER_LEN: usize = 16;
/// Largest stored or decompressed chunk payload a reader accepts.
pub const MAX_CHUNK_LEN: u32 = 64 << 20;
/// Largest string (path, name, note) a reader accepts.
pub const MAX_STRING: usize = 64 << 10;
/// Largest prototypes chunk text readers accept.
pub const MAX_PROTOTYPES: usize = 1 << 20;
/// Largest number of frames in one stack.
pub const MAX_FRAMES: usize = 1024;
/// Largest number of arguments in one call record.
pub const MAX_ARGS: usize = 16;
/// Largest argument capture (string or buffer bytes) in one call record.
pub const MAX_ARG_DATA: usize = 4096;

/// Chunk type: metadata key/value pairs.
pub const CHUNK_META: u8 = 1;
/// Chunk type: a batch of records.
pub const CHUNK_RECORDS: u8 = 2;
/// Chunk type: end marker written when the recorder finished cleanly.
pub const CHUNK_END: u8 = 3;
/// Chunk type (optional): symbolized frames stored by `rltrace pack`.
pub const CHUNK_SYMBOLS: u8 = 4;
/// Chunk type (optional): source lines stored by `rltrace pack --sources`.
pub const CHUNK_SOURCES: u8 = 5;
/// Chunk type: prototypes found while recording (optional).
pub const CHUNK_PROTOTYPES: u8 = 6;
/// Chunk type: records with a time column (version 7; what the writer writes).
pub const CHUNK_CALLS: u8 = 7;
/// Chunk flag: payload is zstd-compressed.
pub const CHUNK_FLAG_ZSTD: u8 = 1;
/// Chunk flag: readers that do not know the chunk type may skip it.
pub const CHUNK_FLAG_OPTIONAL: u8 = 0x80;

/// Errors reading or writing a recording.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// An I/O error from the underlying file.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The file does not start with the rltrace magic.
    #[error("not an rltrace recording (bad magic at offset 0)")]
    BadMagic,
    /// The file is shorter than its header.
    #[error("not an rltrace recording: file is only {0} bytes long")]
    TooShort(u64),
    /// The file was written by a newer rltrace.
    #[error("recording format version {found} is newer than this rltrace supports (version {VERSION}); upgrade rltrace")]
    NewerVersion {
        /// Version found in the header.
        found: u16,
    },
    /// The header asks for features this build does not know.
    #[error("recording uses unknown required features {0:#x} (offset 12); upgrade rltrace")]
    UnknownFeatures(u32),
    /// A chunk failed its checksum.
    #[error("chunk at offset {offset} is corrupt: checksum mismatch")]
    BadChecksum {
        /// File offset of the chunk header.
        offset: u64,
    },
    /// A chunk header is impossible.
    #[error("chunk at offset {offset} is corrupt: {what}")]
    BadChunk {
        /// File offset of the chunk header.
        offset: u64,
        /// What is wrong.
        what: String,
    },
    /// A record inside a chunk is malformed.
    #[error("corrupt record in chunk at offset {offset} (byte {within} of its payload): {what}")]
    Corrupt {
        /// File offset of the chunk header.
        offset: u64,
        /// Position inside the decompressed payload.
        within: u64,
        /// What is wrong.
        what: String,
    },
}

/// What an allocator-family function does with its arguments; analyses key on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FnClass {
    /// Not an allocator function.
    Other,
    /// `malloc(size)`.
    Malloc,
    /// `calloc(n, size)`.
    Calloc,
    /// `realloc(ptr, size)`.
    Realloc,
    /// `reallocarray(ptr, n, size)`.
    ReallocArray,
    /// `free(ptr)`.
    Free,
    /// `posix_memalign(&ptr, align, size)`: the block comes back through the first argument.
    PosixMemalign,
    /// `aligned_alloc(align, size)` and `memalign(align, size)`.
    AlignedAlloc,
    /// `valloc(size)`.
    Valloc,
    /// `pvalloc(size)`: size rounded up to whole pages.
    Pvalloc,
}

impl FnClass {
    /// The code stored in function records.
    pub fn code(self) -> u8 {
        match self {
            FnClass::Other => 0,
            FnClass::Malloc => 1,
            FnClass::Calloc => 2,
            FnClass::Realloc => 3,
            FnClass::ReallocArray => 4,
            FnClass::Free => 5,
            FnClass::PosixMemalign => 6,
            FnClass::AlignedAlloc => 7,
            FnClass::Valloc => 8,
            FnClass::Pvalloc => 9,
        }
    }

    /// Decodes a stored code; unknown codes read as `Other` so newer classes degrade gracefully.
    pub fn from_code(c: u8) -> FnClass {
        match c {
            1 => FnClass::Malloc,
            2 => FnClass::Calloc,
            3 => FnClass::Realloc,
            4 => FnClass::ReallocArray,
            5 => FnClass::Free,
            6 => FnClass::PosixMemalign,
            7 => FnClass::AlignedAlloc,
            8 => FnClass::Valloc,
            9 => FnClass::Pvalloc,
            _ => FnClass::Other,
        }
    }
}

/// Set in a function record's class byte for [`Origin::Imported`]; older readers see an
/// unknown class, which reads as "other".
pub const IMPORTED_BIT: u8 = 0x80;
/// Set in a function record's class byte for [`Origin::Syscall`].
pub const SYSCALL_BIT: u8 = 0x40;

/// Why a function is traced, where that changes what replay shows of its calls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Origin {
    /// Hooked for itself (the allocator family, `-x`, the agent's imports): every call
    /// of it is the trace's business.
    #[default]
    Hooked,
    /// Traced because the main executable imports it, and hooked where every caller
    /// reaches it: a call whose return address lies outside the main executable was made
    /// inside a library (ltrace would not show it).
    Imported,
    /// A system call (`-S`), named `SYS_<name>`: shown whatever call it is made in.
    Syscall,
}

impl Origin {
    /// The bits it sets in a function record's class byte.
    pub fn bits(self) -> u8 {
        match self {
            Origin::Hooked => 0,
            Origin::Imported => IMPORTED_BIT,
            Origin::Syscall => SYSCALL_BIT,
        }
    }

    /// The origin a class byte says, and the class code without its origin bits.
    pub fn split(class: u8) -> (Origin, u8) {
        let origin = if class & IMPORTED_BIT != 0 {
            Origin::Imported
        } else if class & SYSCALL_BIT != 0 {
            Origin::Syscall
        } else {
            Origin::Hooked
        };
        (origin, class & !(IMPORTED_BIT | SYSCALL_BIT))
    }
}

/// A mapped object file (executable, shared library) in one process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleDef {
    /// Recording-wide module id.
    pub id: u32,
    /// Process that mapped it.
    pub pid: u32,
    /// Path of the file as the tracee saw it.
    pub path: String,
    /// GNU build-id note, empty if the file has none.
    pub build_id: Vec<u8>,
    /// Load bias: runtime address minus the address stated in the ELF file.
    pub bias: u64,
    /// Lowest mapped address.
    pub start: u64,
    /// One past the highest mapped address.
    pub end: u64,
}

/// A traced function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionDef {
    /// Recording-wide function id.
    pub id: u32,
    /// Symbol name.
    pub name: String,
    /// What the function does, for the analyses.
    pub class: FnClass,
    /// False for `void` functions: no exit record follows their enter record.
    pub returns: bool,
    /// Why it is traced.
    pub origin: Origin,
}

/// A thread, numbered compactly for the event records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadDef {
    /// Recording-wide thread number.
    pub num: u32,
    /// Process id.
    pub pid: u32,
    /// Kernel thread id.
    pub tid: u32,
}

/// One frame of a stored stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frame {
    /// Module the address lies in, if any.
    pub module: Option<u32>,
    /// Module-relative address (ELF stated address) if `module` is set, else absolute.
    pub addr: u64,
}

/// A call stack of return addresses, innermost (the traced function's caller) first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StackDef {
    /// Recording-wide stack id.
    pub id: u32,
    /// Return addresses.
    pub frames: Vec<Frame>,
}

/// Entry into a traced function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enter {
    /// Thread number.
    pub thread: u32,
    /// Nanoseconds since the recording started.
    pub ts: u64,
    /// Function id.
    pub func: u32,
    /// Integer arguments in ABI order.
    pub args: Vec<u64>,
    /// Stack id, if the stack was captured.
    pub stack: Option<u32>,
    /// Memory captured at entry for some arguments (strings, buffers).
    pub data: Vec<ArgData>,
}

/// Bytes an argument pointed to at a call's entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArgData {
    /// Index of the argument.
    pub arg: u8,
    /// The string or buffer was longer than what was captured.
    pub truncated: bool,
    /// The bytes (without a string's terminating NUL).
    pub bytes: Vec<u8>,
}

/// Return from the innermost open call of a thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exit {
    /// Thread number.
    pub thread: u32,
    /// Return value; `None` when the call never returned (thread or process died in it,
    /// or its frame was unwound by `longjmp` or an exception).
    pub ret: Option<u64>,
    /// Value stored through an out-pointer argument (`posix_memalign`), read at return.
    pub out: Option<u64>,
    /// When it returned (nanoseconds since the recording started), if known.
    pub ts: Option<u64>,
    /// Memory captured at return: index 0 the string the return value points to (a
    /// function whose prototype returns a string); kept only with `ts` (version 8).
    pub data: Vec<ArgData>,
}

/// How a process came to be recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartCause {
    /// Started by `rltrace record`.
    Spawn,
    /// Created by `fork` (or a `clone` without a shared address space).
    Fork,
    /// Created by `vfork` or a `clone` sharing the address space.
    Vfork,
    /// Replaced its image with `execve`.
    Exec,
    /// Already running; `rltrace record -p` attached to it (version 3).
    Attach,
}

/// A process begins (or begins a new image).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessStart {
    /// Process id.
    pub pid: u32,
    /// Parent process id, 0 if none is recorded.
    pub parent: u32,
    /// Nanoseconds since the recording started.
    pub ts: u64,
    /// Why it appears.
    pub cause: StartCause,
    /// Executable path, when known.
    pub path: String,
}

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitHow {
    /// Exited with a status code.
    Code(i32),
    /// Killed by a signal.
    Signal(i32),
    /// Still running when recording stopped (detached or recorder interrupted).
    Running,
    /// Ended, but how is not known: the agent engine sees a descendant's end only when
    /// its stream closes (version 5).
    Unknown,
}

/// A process ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessExit {
    /// Process id.
    pub pid: u32,
    /// Nanoseconds since the recording started.
    pub ts: u64,
    /// Exit status.
    pub how: ExitHow,
}

/// A diagnostic the recorder wants replay to repeat (a hook it could not place, say).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// Process concerned, 0 for the recording as a whole.
    pub pid: u32,
    /// The message.
    pub text: String,
}

/// One record of the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// A module was mapped.
    Module(ModuleDef),
    /// A module was unmapped (by id).
    ModuleUnload(u32),
    /// A function definition.
    Function(FunctionDef),
    /// A thread definition.
    Thread(ThreadDef),
    /// A stack definition.
    Stack(StackDef),
    /// A call entry.
    Enter(Enter),
    /// A call return.
    Exit(Exit),
    /// A process began.
    ProcessStart(ProcessStart),
    /// A process ended.
    ProcessExit(ProcessExit),
    /// A diagnostic.
    Note(Note),
    /// A fatal signal, with the stack of the thread it hit.
    Signal(SignalRec),
    /// Symbols of one address, stored by `rltrace pack`.
    Packed(PackedAddress),
    /// One source line, stored by `rltrace pack --sources`.
    Source(SourceLine),
    /// Prototypes found while recording (from the DWARF of the library a traced import
    /// is defined in), one per line as in the `prototypes` metadata; they apply to the
    /// calls after them.
    Prototypes(String),
}

/// A fatal signal delivered to a thread (a crash), recorded before the process dies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignalRec {
    /// Thread number.
    pub thread: u32,
    /// Nanoseconds since the recording started.
    pub ts: u64,
    /// Signal number.
    pub signo: i32,
    /// `si_code` of the signal.
    pub code: i32,
    /// Faulting address (`si_addr`), 0 if the signal has none.
    pub addr: u64,
    /// The thread's stack: the first frame is the instruction where the signal struck,
    /// the rest are return addresses.
    pub stack: Option<u32>,
}

/// One frame of a packed address: what the symbolizer found for it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PackedFrame {
    /// Demangled function name.
    pub function: Option<String>,
    /// Source file.
    pub file: Option<String>,
    /// Line, 0 if unknown.
    pub line: u32,
    /// Column, 0 if unknown.
    pub column: u32,
    /// True if inlined into the next frame.
    pub inlined: bool,
}

/// The symbols of one module-relative address, innermost inlined frame first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackedAddress {
    /// Module id.
    pub module: u32,
    /// Module-relative address, as stored in stacks.
    pub addr: u64,
    /// Frames, innermost first.
    pub frames: Vec<PackedFrame>,
}

/// A line of a source file, stored so reports can quote it without the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceLine {
    /// File path as the symbols name it.
    pub file: String,
    /// Line number, 1-based.
    pub line: u32,
    /// The text, without the newline.
    pub text: String,
}

/// The metadata chunk: ordered key/value pairs (`command`, `arg`, `engine`, …).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// The pairs, in file order; keys may repeat (`arg`).
    pub pairs: Vec<(String, String)>,
}

impl Meta {
    /// First value stored under `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Nanoseconds per stored time unit (`time-unit-ns`; 1 when absent, as in files
    /// before version 6).
    pub fn time_unit(&self) -> Result<u64, FormatError> {
        let Some(v) = self.get(META_TIME_UNIT) else {
            return Ok(1);
        };
        v.parse::<u64>()
            .ok()
            .filter(|u| (1..=MAX_TIME_UNIT).contains(u))
            .ok_or_else(|| FormatError::BadChunk {
                offset: FILE_HEADER_LEN as u64,
                what: format!(
                    "metadata {META_TIME_UNIT} is {v:?}, not a whole number of nanoseconds from 1 to {MAX_TIME_UNIT}"
                ),
            })
    }

    /// Every value stored under `key`, in order.
    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Totals the recorder writes in the end chunk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Number of records written.
    pub records: u64,
    /// Calls that could not be recorded (stack unreadable, say); 0 when nothing was lost.
    pub dropped: u64,
}

#[cfg(test)]
mod tests;
