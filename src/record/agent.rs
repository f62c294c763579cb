//! The agent engine, recorder side: starts the command with the preload agent, accepts
//! one connection per process image, puts each image's calls back in the order of the
//! keys the agent gave them, and writes them to the recording.
//!
//! The agent's stream is untrusted: a program can write anything to its own socket. A
//! malformed stream ends that connection with a note; it never panics the recorder.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::hash::BuildHasherDefault;
use std::io::{self, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::time::Duration;

use std::sync::{Arc, Mutex};

use rltrace_wire as wire;

use crate::record::select::Selection;

use crate::format::{ArgData, ExitHow, FnClass, FormatError, Frame, StartCause};
use crate::record::clock::{rdtsc, TscClock};
use crate::record::merge::{Merge, Run, VecRun};
use crate::record::procfs;
use crate::record::sink::Sink;

/// File name of the agent library.
pub const AGENT_FILE: &str = "librltrace_agent.so";
/// Environment variable that overrides where the agent library is.
pub const AGENT_ENV: &str = "RLTRACE_AGENT";

/// Errors of the agent engine.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The command could not be started.
    #[error("cannot run {cmd}: {source}")]
    Spawn {
        /// The command.
        cmd: String,
        /// The cause.
        source: io::Error,
    },
    /// The recorder's socket could not be set up.
    #[error("cannot set up the agent socket in {dir}: {source}")]
    Socket {
        /// The directory.
        dir: String,
        /// The cause.
        source: io::Error,
    },
    /// Writing the recording failed.
    #[error(transparent)]
    Format(#[from] FormatError),
}

/// Finds the agent library: `$RLTRACE_AGENT`, else next to the running executable (and
/// its parent directory, where `cargo test` puts test binaries' siblings).
pub fn find_agent() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(AGENT_ENV) {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [dir.join(AGENT_FILE), dir.parent()?.join(AGENT_FILE)]
        .into_iter()
        .find(|p| p.is_file())
}

/// Knobs of the agent engine.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// The agent library.
    pub library: PathBuf,
    /// Most return addresses kept per stack.
    pub max_depth: usize,
    /// Record child processes too (their images connect on their own; without this
    /// they are ignored).
    pub follow: bool,
    /// Bytes captured from each string or buffer argument.
    pub strlen: usize,
    /// Trace every call the main executable makes into shared libraries.
    pub imports: bool,
    /// Which of those calls (`-e`); `None` for all. Shared by the connection readers,
    /// which answer each image's list of imports, and counts each rule's hits.
    pub calls: Option<Arc<Mutex<Selection>>>,
    /// Functions the ptrace engine traces in the same run (`-x`), from every caller: the
    /// agent leaves the program's calls to them alone, which would record them twice.
    pub traced: Option<Arc<Selection>>,
}

/// What the connection readers hand to the recorder thread.
enum Msg {
    Hello {
        pid: u32,
        parent: u32,
        cause: u8,
        exe: String,
    },
    Modules(u64, Vec<AgentModule>),
    Imports(Vec<(String, bool)>),
    /// Prototypes the recorder found in the libraries' DWARF for an image's imports.
    Protos(Vec<crate::protos::Loaded>),
    Batch(RawBatch),
    Exit(ExitHow),
    /// Every record with a smaller order key has been sent.
    Watermark(u64),
    End,
    Closed(Option<String>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct AgentModule {
    bias: u64,
    start: u64,
    end: u64,
    build_id: Vec<u8>,
    path: String,
}

/// One thread's batch as it came off the wire: its records are decoded one at a time, by
/// the merge, when their turn is near (see src/record/merge.rs for why). Its coded calls
/// are not decoded: their bodies go to the recording as they are, with their lengths.
struct RawBatch {
    tid: u32,
    /// Offset in the batch of the first record not decoded yet.
    at: usize,
    /// Offset in the connection's stream of the batch's first byte, for error messages.
    base: u64,
    /// The key of the coder's last coded call before the record at `at`.
    chain: u64,
    head: Head,
    /// Order key of the last keyed record decoded: a head without one sorts there.
    last: u64,
    keyed: bool,
}

/// Bytes of a batch's header: thread id, the agent's coder number, the key its first
/// coded call is coded from.
const BATCH_HEAD: usize = 4 + 4 + 8;

impl RawBatch {
    /// The batch in `payload` (a `MSG_BATCH` message), which starts at `base` in its
    /// stream.
    fn new(payload: Vec<u8>, base: u64) -> Result<RawBatch, (&'static str, usize)> {
        let mut g = wire::Get::new(&payload);
        let short = |e: wire::Truncated| ("short batch", e.at);
        let tid = g.u32().map_err(short)?;
        let coder = g.u32().map_err(short)?;
        let chain = g.u64().map_err(short)?;
        Ok(RawBatch {
            tid,
            at: BATCH_HEAD,
            base,
            chain,
            head: Head {
                coder,
                bytes: payload,
                ..Head::default()
            },
            last: 0,
            keyed: false,
        })
    }
}

impl Run for RawBatch {
    type Item = Head;

    fn tid(&self) -> u32 {
        self.tid
    }

    fn advance(&mut self) -> Option<u64> {
        self.head.stacks.clear();
        self.head.rec = None;
        self.head.coded = None;
        loop {
            let Some(rest) = self.head.bytes.get(self.at..).filter(|r| !r.is_empty()) else {
                // Definitions after the last record still count: a later batch's records
                // may use them.
                self.keyed = false;
                return (!self.head.stacks.is_empty()).then_some(self.last);
            };
            let decoded = if rest[0] == wire::REC_CODED {
                match wire::coded::get_coded_head(rest, self.chain) {
                    Ok(h) => {
                        self.chain = h.key;
                        // The body's length byte and the body, stored as they are.
                        self.head.body = self.at + h.body - 1..self.at + h.body + h.len;
                        self.at += h.body + h.len;
                        self.head.coded = Some(Coded {
                            ts_in: h.ts_in,
                            ts_out: h.key,
                            exits: h.exits,
                        });
                        self.last = h.key;
                        self.keyed = true;
                        return Some(h.key);
                    }
                    Err(e) => Err(("short coded call", e.at)),
                }
            } else {
                decode_record(rest)
            };
            match decoded {
                Ok((Record::Stack(id, frames), n)) => {
                    self.at += n;
                    self.head.stacks.push((id, frames));
                }
                Ok((Record::Keyed(key, rec), n)) => {
                    self.at += n;
                    self.head.rec = Some(rec);
                    self.last = key;
                    self.keyed = true;
                    return Some(key);
                }
                Err((what, o)) => {
                    let at = self.at + o;
                    self.at = self.head.bytes.len();
                    self.head.rec = Some(Ordered::Corrupt(what, self.base + at as u64));
                    self.keyed = false;
                    return Some(self.last);
                }
            }
        }
    }

    fn item(&mut self) -> &mut Head {
        &mut self.head
    }

    fn keyed(&self) -> bool {
        self.keyed
    }

    fn size(&self) -> usize {
        self.head.bytes.len()
    }
}

/// A coded call's times (counter ticks); its body is the head's.
#[derive(Clone, Copy)]
struct Coded {
    ts_in: u64,
    ts_out: u64,
    exits: bool,
}

/// What an image's merge lends: a record in the agent's order, after the stack
/// definitions that came before it in its thread's stream (none at a batch's end).
#[derive(Default)]
struct Head {
    /// The coder of the batch it came from: the agent's number until the batch is
    /// queued, the file's after.
    coder: u32,
    stacks: Vec<(u32, Vec<u64>)>,
    rec: Option<Ordered>,
    coded: Option<Coded>,
    /// The batch the head lies in (a batch's head lends it, so that a coded call's body
    /// is written from where it lies), and where in it a coded call's length byte and
    /// body are.
    bytes: Vec<u8>,
    body: std::ops::Range<usize>,
}

/// The runs of an image's merge: threads' batches, and module lists (keyed too).
enum ImageRun {
    Batch(RawBatch),
    Modules(VecRun<Head>),
}

impl Run for ImageRun {
    type Item = Head;

    fn tid(&self) -> u32 {
        match self {
            ImageRun::Batch(b) => b.tid(),
            ImageRun::Modules(m) => m.tid(),
        }
    }

    #[inline]
    fn advance(&mut self) -> Option<u64> {
        match self {
            ImageRun::Batch(b) => b.advance(),
            ImageRun::Modules(m) => m.advance(),
        }
    }

    fn item(&mut self) -> &mut Head {
        match self {
            ImageRun::Batch(b) => b.item(),
            ImageRun::Modules(m) => m.item(),
        }
    }

    fn keyed(&self) -> bool {
        match self {
            ImageRun::Batch(b) => b.keyed(),
            ImageRun::Modules(m) => m.keyed(),
        }
    }

    fn size(&self) -> usize {
        match self {
            ImageRun::Batch(b) => b.size(),
            ImageRun::Modules(m) => m.size(),
        }
    }
}

/// Entry into an imported function, as the agent reported it.
struct ImportEnter {
    import: u16,
    ts: u64,
    stack: u32,
    args: Vec<u64>,
    data: Vec<ArgData>,
}

/// Return from a thread's innermost import call.
struct ImportExit {
    ts: u64,
    ret: Option<u64>,
    /// The string it returned, read at the return.
    data: Vec<ArgData>,
}

/// Items released in the agent's order.
enum Ordered {
    Enter(ImportEnter),
    Exit(ImportExit),
    Modules(Vec<AgentModule>),
    /// The rest of a batch did not decode: the problem, and its offset in the stream.
    Corrupt(&'static str, u64),
}

/// One record of a batch.
enum Record {
    /// A stack definition: the agent's id and the return addresses.
    Stack(u32, Vec<u64>),
    /// A record in the agent's order, with its order key.
    Keyed(u64, Ordered),
}

struct Stack {
    raw: Vec<u64>,
    /// The recording's stack, for the image's current modules.
    id: Option<u32>,
    /// The recording's coder whose stack ids this one is among.
    coder: u32,
}

/// Stack ids below this are looked up by index: the agent numbers its stacks from 0 for
/// the whole process, so they are dense. Larger ones (or a confused stream) use the map.
const DENSE_STACKS: u32 = 1 << 16;

/// An image's stacks by (thread, agent's stack id).
#[derive(Default)]
struct Stacks {
    dense: Vec<Option<(u32, Stack)>>,
    sparse: HashMap<(u32, u32), Stack, BuildHasherDefault<wire::FastHasher>>,
}

impl Stacks {
    fn insert(&mut self, tid: u32, sid: u32, st: Stack) {
        if sid < DENSE_STACKS {
            let i = sid as usize;
            if self.dense.len() <= i {
                self.dense.resize_with(i + 1, || None);
            }
            // A second definition under the same id for another thread: keep both.
            match self.dense[i].take() {
                Some((t, old)) if t != tid => {
                    self.sparse.insert((t, sid), old);
                }
                _ => {}
            }
            self.dense[i] = Some((tid, st));
        } else {
            self.sparse.insert((tid, sid), st);
        }
    }

    fn get_mut(&mut self, tid: u32, sid: u32) -> Option<&mut Stack> {
        match self.dense.get_mut(sid as usize) {
            Some(Some((t, st))) if *t == tid => Some(st),
            _ => self.sparse.get_mut(&(tid, sid)),
        }
    }

    /// Every stack with the agent's id of it.
    fn entries_mut(&mut self) -> impl Iterator<Item = (u32, &mut Stack)> {
        self.dense
            .iter_mut()
            .enumerate()
            .filter_map(|(i, s)| s.as_mut().map(|(_, s)| (i as u32, s)))
            .chain(self.sparse.iter_mut().map(|(&(_, sid), s)| (sid, s)))
    }
}

/// One connected process image.
#[derive(Default)]
struct Image {
    pid: u32,
    started: bool,
    /// Messages held until an earlier image of the same pid closes (exec).
    backlog: Vec<Msg>,
    blocked_by: Option<usize>,
    modules: BTreeMap<u64, (u32, AgentModule)>,
    /// Records waiting for their turn in the agent's call order.
    order: Merge<ImageRun>,
    /// Set once a batch of this image did not decode: the rest of its stream is dropped.
    corrupt: bool,
    stacks: Stacks,
    /// The recording's coder of each of the agent's coding states, by (thread, the
    /// agent's number).
    coders: HashMap<u64, u32, BuildHasherDefault<wire::FastHasher>>,
    exit: Option<ExitHow>,
    ended: bool,
    lost: u64,
    /// The recording's function id of each traced import, by the agent's number.
    imports: Vec<u32>,
}

/// Set by SIGINT/SIGTERM/SIGHUP to the signal: the recorder passes it on to the command
/// and finishes the file once the command ends.
static INTERRUPTED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    INTERRUPTED.store(sig, Ordering::Relaxed);
}

/// How the recorder learns that the command ended.
pub enum Root {
    /// Started by the agent engine itself.
    Child(Child),
    /// Started and waited for by the ptrace engine in the same run, which sets the status
    /// once the command has ended.
    Traced(u32, Arc<Mutex<Option<ExitHow>>>),
}

impl Root {
    fn pid(&self) -> u32 {
        match self {
            Root::Child(c) => c.id(),
            Root::Traced(pid, _) => *pid,
        }
    }

    /// How the command ended, once it has.
    fn ended(&mut self) -> Option<ExitHow> {
        match self {
            Root::Child(c) => match c.try_wait() {
                Ok(Some(st)) => Some(match (st.code(), st.signal()) {
                    (Some(c), _) => ExitHow::Code(c),
                    (None, Some(s)) => ExitHow::Signal(s),
                    _ => ExitHow::Unknown,
                }),
                _ => None,
            },
            Root::Traced(_, st) => *st.lock().unwrap_or_else(|p| p.into_inner()),
        }
    }
}

/// Runs `command` with the agent and records it; returns how the command ended.
pub fn run(
    command: &[OsString],
    sink: &mut Sink<impl io::Write>,
    opts: &AgentOptions,
) -> Result<(u32, ExitHow), AgentError> {
    let shown = command
        .first()
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default();
    let spawn_err = |source| AgentError::Spawn {
        cmd: shown.clone(),
        source,
    };
    let first = command
        .first()
        .ok_or_else(|| spawn_err(io::Error::new(io::ErrorKind::InvalidInput, "empty command")))?;
    serve(sink, opts, |env| {
        let mut cmd = Command::new(first);
        cmd.args(&command[1..])
            .envs(env.iter().map(|(k, v)| (k, v)));
        // SAFETY: runs in the forked child before exec; only resets signal dispositions,
        // which is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                    libc::signal(s, libc::SIG_DFL);
                }
                // A recorder killed outright takes the command with it, as with ptrace's
                // EXITKILL, rather than leaving it running unrecorded.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        install_handlers();
        cmd.spawn().map(Root::Child).map_err(spawn_err)
    })
}

/// Records a command that `launch` starts with the given variables added to its
/// environment (the agent preloaded, where to connect): the agent engine's own start, or
/// the ptrace engine's in a run that both record. Returns the command's pid and how it
/// ended.
pub fn serve(
    sink: &mut Sink<impl io::Write>,
    opts: &AgentOptions,
    launch: impl FnOnce(&[(OsString, OsString)]) -> Result<Root, AgentError>,
) -> Result<(u32, ExitHow), AgentError> {
    let dir = std::env::temp_dir().join(format!(
        "rltrace-agent-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    ));
    let sock_err = |source| AgentError::Socket {
        dir: dir.display().to_string(),
        source,
    };
    std::fs::create_dir(&dir).map_err(sock_err)?;
    let sock = dir.join("s");
    let listener = UnixListener::bind(&sock).map_err(|e| {
        let _ = std::fs::remove_dir(&dir);
        sock_err(e)
    })?;
    let result = serve_listening(sink, opts, listener, &sock, launch);
    let _ = std::fs::remove_file(&sock);
    let _ = std::fs::remove_dir(&dir);
    result
}

fn serve_listening(
    sink: &mut Sink<impl io::Write>,
    opts: &AgentOptions,
    listener: UnixListener,
    sock: &Path,
    launch: impl FnOnce(&[(OsString, OsString)]) -> Result<Root, AgentError>,
) -> Result<(u32, ExitHow), AgentError> {
    let mut preload = opts.library.as_os_str().to_owned();
    if let Some(old) = std::env::var_os("LD_PRELOAD").filter(|v| !v.is_empty()) {
        preload.push(":");
        preload.push(old);
    }
    let env: Vec<(OsString, OsString)> = [
        ("LD_PRELOAD", preload),
        (wire::ENV_SOCKET, sock.as_os_str().to_owned()),
        (wire::ENV_MAX_DEPTH, opts.max_depth.to_string().into()),
        (wire::ENV_STRLEN, opts.strlen.to_string().into()),
        (
            wire::ENV_IMPORTS,
            if opts.imports { "1" } else { "0" }.into(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (OsString::from(k), v))
    .collect();
    // Before the command starts, so that failing here leaves nothing running.
    let wake = eventfd().map_err(|e| AgentError::Socket {
        dir: sock.display().to_string(),
        source: e,
    })?;
    let mut root = launch(&env)?;
    let pid = root.pid();
    // Accepted by the recorder loop itself, so that a process that connected and then
    // exited is never missed when the loop decides everything has ended.
    listener
        .set_nonblocking(true)
        .map_err(|e| AgentError::Socket {
            dir: sock.display().to_string(),
            source: e,
        })?;
    let (tx, rx) = sync_channel::<(usize, Msg)>(16);
    let out = Outbox {
        tx,
        wake: Arc::new(wake),
    };
    let mut rec = Recorder {
        clock: sink.clock(),
        listener,
        out,
        sink,
        images: Vec::new(),
        root: pid,
        root_status: None,
        lingering: Vec::new(),
        follow: opts.follow,
        calls: opts.calls.clone(),
        traced: opts.traced.clone(),
        functions: HashMap::new(),
    };
    rec.run(&mut root, &rx).map(|s| (pid, s))
}

fn install_handlers() {
    for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(s, on_signal as *const () as libc::sighandler_t) };
    }
}

/// The pid of the process at the other end, as the kernel saw it connect (in the
/// recorder's pid namespace, unlike what a program in its own namespace would claim).
fn peer_pid(conn: &UnixStream) -> Option<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`.
    let r = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (r == 0 && cred.pid > 0).then_some(cred.pid as u32)
}

/// Reads one connection; `peer` is the pid the kernel says is at the other end.
fn read_conn(
    conn: UnixStream,
    id: usize,
    peer: Option<u32>,
    out: &Outbox,
    calls: Option<&Mutex<Selection>>,
    traced: Option<&Selection>,
) -> Result<(), String> {
    // Small: a batch larger than the buffer is read straight into its own vector.
    let mut r = BufReader::with_capacity(64 << 10, conn);
    let mut offset = 0u64;
    let mut head = [0u8; 4 + 2 + 4 + 4 + 1 + 2];
    if r.read_exact(&mut head).is_err() {
        return Ok(()); // the recorder's own wake-up connection, or a process that died
    }
    let mut g = wire::Get::new(&head);
    let bad = |what: &str, at: u64| format!("{what} at offset {at}");
    let magic = g.bytes(4).map_err(|t| bad("short hello", t.at as u64))?;
    if magic != wire::MAGIC {
        return Err(bad("bad magic", 0));
    }
    let version = g.u16().map_err(|t| bad("short hello", t.at as u64))?;
    if version != wire::VERSION {
        return Err(format!(
            "agent protocol version {version}, this recorder speaks {}",
            wire::VERSION
        ));
    }
    let (pid, parent, cause, exe_len) = (|| Ok((g.u32()?, g.u32()?, g.u8()?, g.u16()?)))()
        .map_err(|t: wire::Truncated| bad("short hello", t.at as u64))?;
    let pid = peer.unwrap_or(pid);
    let mut exe = vec![0u8; exe_len as usize];
    r.read_exact(&mut exe)
        .map_err(|_| bad("short hello", head.len() as u64))?;
    offset += (head.len() + exe.len()) as u64;
    // `-e` library patterns name the module making the calls: the main executable.
    let exe_name = String::from_utf8_lossy(&exe)
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    out.send(
        id,
        Msg::Hello {
            pid,
            parent,
            cause,
            exe: String::from_utf8_lossy(&exe).into_owned(),
        },
    )?;
    let exe_path = String::from_utf8_lossy(&exe).into_owned();
    // The image's libraries in load order (path, build-id), as its module lists say.
    let mut libraries: Vec<(String, Vec<u8>)> = Vec::new();
    let mut payload = Vec::new();
    loop {
        let mut h = [0u8; 5];
        match r.read_exact(&mut h) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(format!("read error at offset {offset}: {e}")),
        }
        let len = u32::from_le_bytes([h[1], h[2], h[3], h[4]]) as usize;
        if len > wire::MAX_MESSAGE + 8 {
            return Err(bad(&format!("message of {len} bytes"), offset));
        }
        let at = offset + 5;
        if h[0] == wire::MSG_BATCH {
            // Handed over whole, undecoded (the merge decodes it), in a buffer of its own
            // that is filled without being cleared first.
            let mut bytes = Vec::with_capacity(len);
            (&mut r)
                .take(len as u64)
                .read_to_end(&mut bytes)
                .ok()
                .filter(|&n| n == len)
                .ok_or_else(|| bad("truncated message", offset))?;
            let batch = RawBatch::new(bytes, at).map_err(|(what, o)| bad(what, at + o as u64))?;
            offset = at + len as u64;
            out.send(id, Msg::Batch(batch))?;
            continue;
        }
        payload.resize(len, 0);
        r.read_exact(&mut payload)
            .map_err(|_| bad("truncated message", offset))?;
        let msg = decode(h[0], &payload).map_err(|(what, o)| bad(what, at + o as u64))?;
        offset = at + len as u64;
        if let Msg::Modules(_, mods) = &msg {
            libraries.extend(
                mods.iter()
                    .filter(|m| m.path != exe_path && !m.path.ends_with(AGENT_FILE))
                    .map(|m| (m.path.clone(), m.build_id.clone())),
            );
        }
        if let Msg::Imports(names) = &msg {
            let found = callee_prototypes(names, &libraries);
            if !found.is_empty() {
                crate::protos::install(&found);
                out.send(id, Msg::Protos(found))?;
            }
            // The agent waits for the answer before redirecting any call.
            let by_lib =
                calls.is_some_and(|c| c.lock().unwrap_or_else(|p| p.into_inner()).has_libraries());
            let defined_in = match traced.is_some() || by_lib {
                true => definers(names, &libraries),
                false => Vec::new(),
            };
            let skip = traced.map(|t| traced_imports(names, &defined_in, t));
            let reply = import_choice(names, &exe_name, &defined_in, calls, skip.as_deref());
            r.get_mut()
                .write_all(&reply)
                .map_err(|e| format!("cannot answer the import list: {e}"))?;
        }
        out.send(id, msg)?;
    }
}

/// Prototypes, from the DWARF of the libraries (in load order: the first defining a name
/// gives it), of the imports that have none.
fn callee_prototypes(
    names: &[(String, bool)],
    libraries: &[(String, Vec<u8>)],
) -> Vec<crate::protos::Loaded> {
    let mut wanted: Vec<&str> = names
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| crate::protos::lookup(n).is_none())
        .collect();
    let mut found = Vec::new();
    for (path, build_id) in libraries {
        if wanted.is_empty() {
            break;
        }
        let got = crate::symbolize::types::for_library(path, build_id, &wanted);
        wanted.retain(|w| !got.iter().any(|g| g.name == *w));
        found.extend(got);
    }
    found
}

/// The file name of the library that defines each of an image's imports (`None`: none
/// does), by [`crate::elf::definers`].
fn definers<'a>(
    names: &[(String, bool)],
    libraries: &'a [(String, Vec<u8>)],
) -> Vec<Option<&'a str>> {
    let wanted: Vec<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
    let found = crate::elf::definers(&wanted, libraries.iter().map(|(p, _)| p.as_str()));
    wanted.iter().map(|n| found.get(n).copied()).collect()
}

/// Which of an image's imports `traced` (the ptrace engine's `-x`) selects in the library
/// that defines them: those calls are traced at the function's entry already.
fn traced_imports(
    names: &[(String, bool)],
    definers: &[Option<&str>],
    traced: &Selection,
) -> Vec<bool> {
    names
        .iter()
        .zip(definers)
        .map(|((n, _), d)| d.is_some_and(|file| traced.would_select(n, file, false)))
        .collect()
}

/// The answer to an image's import list: `count u32`, then one bit per import (set: trace
/// it), as the `-e` chains and `-l` patterns select them for calls made from the
/// executable `exe` (`-l` by the library `definers` names, when known), less those
/// `skip` marks (traced by the ptrace engine in the same run).
fn import_choice(
    names: &[(String, bool)],
    exe: &str,
    definers: &[Option<&str>],
    calls: Option<&Mutex<Selection>>,
    skip: Option<&[bool]>,
) -> Vec<u8> {
    let mut reply = (names.len() as u32).to_le_bytes().to_vec();
    let mut bits = vec![0u8; names.len().div_ceil(8)];
    let mut sel = calls.map(|m| m.lock().unwrap_or_else(|p| p.into_inner()));
    for (i, (name, _)) in names.iter().enumerate() {
        if skip.is_some_and(|s| s.get(i) == Some(&true)) {
            continue;
        }
        let on = match sel.as_mut() {
            Some(s) => s.selects_import(name, exe, definers.get(i).copied().flatten()),
            None => true,
        };
        if on {
            bits[i / 8] |= 1 << (i % 8);
        }
    }
    reply.extend_from_slice(&bits);
    // Prototypes loaded from ltrace.conf files, for the selected imports (the agent knows
    // the built-in ones): `count u16`, then `import u16, ret 2 bytes, nargs u8, args`.
    let loaded: Vec<(usize, &crate::protos::Proto)> = names
        .iter()
        .enumerate()
        .filter(|(i, _)| bits[i / 8] & (1 << (i % 8)) != 0)
        .filter_map(|(i, (name, _))| crate::protos::loaded(name).map(|p| (i, p)))
        .take(u16::MAX as usize)
        .collect();
    reply.extend_from_slice(&(loaded.len() as u16).to_le_bytes());
    for (i, p) in loaded {
        reply.extend_from_slice(&(i as u16).to_le_bytes());
        reply.extend_from_slice(&p.ret.code());
        let n = p.args.len().min(wire::MAX_ARGS);
        reply.push(n as u8);
        for a in &p.args[..n] {
            reply.extend_from_slice(&a.code());
        }
    }
    reply
}

/// How connection readers hand messages to the recorder thread: a bounded channel (its
/// back-pressure reaches the program's rings) and an eventfd that wakes the recorder,
/// which waits on it and on the listening socket together, so that a new process's
/// connection is taken at once (the agent waits for the answer to its import list
/// before the program's `main`; waking only every 20 ms made each process start 20 ms
/// later, most of a shell script's recording time).
#[derive(Clone)]
struct Outbox {
    tx: SyncSender<(usize, Msg)>,
    wake: Arc<OwnedFd>,
}

impl Outbox {
    fn send(&self, id: usize, m: Msg) -> Result<(), String> {
        self.tx
            .send((id, m))
            .map_err(|_| "recorder finished".to_string())?;
        self.wake_up();
        Ok(())
    }

    /// Wakes the recorder thread.
    fn wake_up(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to an eventfd this process owns; a
        // full counter (EAGAIN) means the recorder is awake already.
        unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }
}

/// A non-blocking eventfd for [`Outbox`].
fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes no pointers; the descriptor is owned by the returned value.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Decodes one agent message of kind `kind` and discards it; the problem and its offset if
/// it is malformed. The decoding entry point for fuzzing (`fuzz/fuzz_targets/agent_stream.rs`).
pub fn check_message(kind: u8, payload: &[u8]) -> Result<(), (&'static str, usize)> {
    if kind != wire::MSG_BATCH {
        return decode(kind, payload).map(|_| ());
    }
    // Batches are decoded by the merge, a record at a time: all the way through here.
    let mut b = RawBatch::new(payload.to_vec(), 0)?;
    while b.advance().is_some() {
        if let Some(Ordered::Corrupt(what, at)) = b.head.rec {
            return Err((what, at as usize));
        }
    }
    Ok(())
}

/// One capture of an agent record (`arg u8, truncated u8, len u16, bytes`); `short` makes
/// the error of a record cut short, `bad` names one out of bounds.
fn wire_capture(
    g: &mut wire::Get,
    short: impl Fn(wire::Truncated) -> (&'static str, usize),
    bad: &'static str,
) -> Result<ArgData, (&'static str, usize)> {
    let d_at = g.offset();
    let arg = g.u8().map_err(&short)?;
    let truncated = g.u8().map_err(&short)? != 0;
    let len = g.u16().map_err(&short)? as usize;
    if len > wire::MAX_DATA || arg as usize >= wire::protos::CAPTURE_INDICES {
        return Err((bad, d_at));
    }
    let bytes = g.bytes(len).map_err(&short)?.to_vec();
    Ok(ArgData {
        arg,
        truncated,
        bytes,
    })
}

/// Decodes the batch record at the start of `p`; with the bytes it took.
fn decode_record(p: &[u8]) -> Result<(Record, usize), (&'static str, usize)> {
    let mut g = wire::Get::new(p);
    let t = |what: &'static str| move |e: wire::Truncated| (what, e.at);
    let rec = match g.u8().map_err(t("short record"))? {
        wire::REC_STACK => {
            let id = g.u32().map_err(t("short stack"))?;
            let n = g.u16().map_err(t("short stack"))? as usize;
            if n > wire::MAX_FRAMES {
                return Err(("stack too deep", 0));
            }
            let mut frames = Vec::with_capacity(n);
            for _ in 0..n {
                frames.push(g.u64().map_err(t("short stack"))?);
            }
            Record::Stack(id, frames)
        }
        wire::REC_ENTER => {
            let short = t("short import entry");
            let import = g.u16().map_err(short)?;
            let ts = g.u64().map_err(short)?;
            let stack = g.u32().map_err(short)?;
            let n = g.u8().map_err(short)? as usize;
            if n > wire::MAX_ARGS {
                return Err(("too many arguments", 0));
            }
            let mut args = Vec::with_capacity(n);
            for _ in 0..n {
                args.push(g.u64().map_err(short)?);
            }
            let nd = g.u8().map_err(short)? as usize;
            if nd > wire::MAX_DATA_ARGS {
                return Err(("too many captured arguments", 0));
            }
            let mut data = Vec::with_capacity(nd);
            for _ in 0..nd {
                data.push(wire_capture(
                    &mut g,
                    short,
                    "captured argument out of bounds",
                )?);
            }
            Record::Keyed(
                ts,
                Ordered::Enter(ImportEnter {
                    import,
                    ts,
                    stack,
                    args,
                    data,
                }),
            )
        }
        kind @ (wire::REC_EXIT | wire::REC_EXIT_DATA) => {
            let short = t("short import return");
            let ts = g.u64().map_err(short)?;
            let flags = g.u8().map_err(short)?;
            let ret = g.u64().map_err(short)?;
            let mut data = Vec::new();
            if kind == wire::REC_EXIT_DATA {
                data.push(wire_capture(
                    &mut g,
                    short,
                    "returned string out of bounds",
                )?);
            }
            Record::Keyed(
                ts,
                Ordered::Exit(ImportExit {
                    ts,
                    ret: (flags & wire::CALL_RET != 0).then_some(ret),
                    data,
                }),
            )
        }
        _ => return Err(("unknown record kind", 0)),
    };
    Ok((rec, g.offset()))
}

fn decode(kind: u8, p: &[u8]) -> Result<Msg, (&'static str, usize)> {
    let mut g = wire::Get::new(p);
    let t = |what: &'static str| move |e: wire::Truncated| (what, e.at);
    Ok(match kind {
        wire::MSG_MODULES => {
            let key = g.u64().map_err(t("short module list"))?;
            let n = g.u32().map_err(t("short module list"))?;
            let mut mods = Vec::new();
            for _ in 0..n {
                let m = (|| {
                    let bias = g.u64()?;
                    let start = g.u64()?;
                    let end = g.u64()?;
                    let idlen = g.u8()? as usize;
                    let build_id = g.bytes(idlen)?.to_vec();
                    let plen = g.u16()? as usize;
                    let path = String::from_utf8_lossy(g.bytes(plen)?).into_owned();
                    Ok(AgentModule {
                        bias,
                        start,
                        end,
                        build_id,
                        path,
                    })
                })()
                .map_err(t("short module entry"))?;
                if m.start >= m.end {
                    return Err(("empty module range", g.offset()));
                }
                mods.push(m);
            }
            Msg::Modules(key, mods)
        }
        wire::MSG_EXIT => {
            let b = g.bytes(4).map_err(t("short exit"))?;
            Msg::Exit(ExitHow::Code(i32::from_le_bytes([b[0], b[1], b[2], b[3]])))
        }
        wire::MSG_KILLED => {
            let b = g.bytes(4).map_err(t("short signal"))?;
            Msg::Exit(ExitHow::Signal(i32::from_le_bytes([
                b[0], b[1], b[2], b[3],
            ])))
        }
        wire::MSG_END => Msg::End,
        wire::MSG_WATERMARK => Msg::Watermark(g.u64().map_err(t("short watermark"))?),
        wire::MSG_IMPORTS => {
            let short = t("short import list");
            let n = g.u32().map_err(short)? as usize;
            if n > u16::MAX as usize + 1 {
                return Err(("too many imports", 0));
            }
            let mut names = Vec::with_capacity(n.min(p.len() / 3));
            for _ in 0..n {
                let flags = g.u8().map_err(short)?;
                let at = g.offset();
                let len = g.u16().map_err(short)? as usize;
                if len == 0 || len > wire::MAX_NAME {
                    return Err(("bad import name length", at));
                }
                let name = g.bytes(len).map_err(short)?;
                let name = std::str::from_utf8(name).map_err(|_| ("import name not UTF-8", at))?;
                names.push((name.to_string(), flags & wire::IMPORT_RETURNS != 0));
            }
            Msg::Imports(names)
        }
        _ => return Err(("unknown message kind", 0)),
    })
}

struct Recorder<'a, W: io::Write> {
    /// Maps the agent's counter readings to recording time.
    clock: TscClock,
    listener: UnixListener,
    out: Outbox,
    sink: &'a mut Sink<W>,
    images: Vec<Image>,
    root: u32,
    root_status: Option<ExitHow>,
    /// Images whose process end is not written yet: the command's (until waitpid), and
    /// those that closed without saying how they ended, checked until their process is
    /// gone (it may have exec'd a program the agent is not loaded in).
    lingering: Vec<usize>,
    follow: bool,
    /// The `-e` selection, for the connection readers.
    calls: Option<Arc<Mutex<Selection>>>,
    /// What the ptrace engine traces in the same run, for the connection readers.
    traced: Option<Arc<Selection>>,
    /// Functions defined for imports, by name and whether they return.
    functions: HashMap<(String, bool), u32>,
}

impl<W: io::Write> Recorder<'_, W> {
    fn run(&mut self, root: &mut Root, rx: &Receiver<(usize, Msg)>) -> Result<ExitHow, AgentError> {
        loop {
            let sig = INTERRUPTED.swap(0, Ordering::Relaxed);
            if sig != 0 && self.root_status.is_none() {
                // SAFETY: kill with a pid this process spawned and has not reaped.
                unsafe { libc::kill(self.root as i32, sig) };
            }
            if self.root_status.is_none() {
                self.root_status = root.ended();
            }
            self.check_lingering()?;
            self.accept()?;
            self.clock.observe(self.sink.now(), rdtsc());
            let open = self.images.iter().any(|i| !i.ended);
            if self.root_status.is_some() && !open && self.lingering.is_empty() {
                break;
            }
            // The recorder holds a sender itself, so the channel never disconnects.
            match rx.try_recv() {
                Ok((id, msg)) => self.message(id, msg)?,
                Err(_) => self.wait(Duration::from_millis(20)),
            }
            self.sink.maybe_seal()?;
        }
        if !self.images.iter().any(|i| i.pid == self.root && i.started) {
            let how = self.root_status.unwrap_or(ExitHow::Unknown);
            self.sink
                .process_start(self.root, 0, StartCause::Spawn, "")?;
            self.sink.note(
                self.root,
                "the agent never connected: the program is statically linked, setuid, or \
                 cleared LD_PRELOAD; record it with --engine ptrace"
                    .to_string(),
            )?;
            self.sink.process_exit(self.root, how)?;
        }
        Ok(self.root_status.unwrap_or(ExitHow::Unknown))
    }

    /// Sleeps until a connection is waiting, a reader has sent a message, or `timeout`
    /// passed (to look at the command's process).
    fn wait(&self, timeout: Duration) {
        let mut fds = [
            libc::pollfd {
                fd: self.listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.out.wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: poll reads and writes the two entries of `fds`, which outlive the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout.as_millis() as libc::c_int) };
        if n > 0 && fds[1].revents & libc::POLLIN != 0 {
            let mut count = [0u8; 8];
            // SAFETY: reads 8 bytes into a live buffer from the eventfd, which resets it;
            // messages sent before this are in the channel already.
            unsafe { libc::read(fds[1].fd, count.as_mut_ptr().cast(), count.len()) };
        }
    }

    /// Takes every pending connection, each read by a thread of its own.
    fn accept(&mut self) -> Result<(), AgentError> {
        loop {
            let conn = match self.listener.accept() {
                Ok((c, _)) => c,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(AgentError::Socket {
                        dir: "the recorder socket".into(),
                        source: e,
                    })
                }
            };
            let id = self.images.len();
            let peer = peer_pid(&conn);
            self.image(id).pid = peer.unwrap_or(0);
            let out = self.out.clone();
            let calls = self.calls.clone();
            let traced = self.traced.clone();
            let spawned = conn.set_nonblocking(false).and_then(|()| {
                std::thread::Builder::new()
                    .name(format!("agent-conn-{id}"))
                    .spawn(move || {
                        let err =
                            read_conn(conn, id, peer, &out, calls.as_deref(), traced.as_deref())
                                .err();
                        let _ = out.send(id, Msg::Closed(err));
                    })
            });
            if let Err(e) = spawned {
                self.sink
                    .note(0, format!("an agent connection could not be read: {e}"))?;
                self.images[id].ended = true;
            }
        }
    }

    fn image(&mut self, id: usize) -> &mut Image {
        if self.images.len() <= id {
            self.images.resize_with(id + 1, Image::default);
        }
        &mut self.images[id]
    }

    fn message(&mut self, id: usize, msg: Msg) -> Result<(), AgentError> {
        if self.image(id).blocked_by.is_some() {
            self.image(id).backlog.push(msg);
            return Ok(());
        }
        match msg {
            Msg::Hello {
                pid,
                parent,
                cause,
                exe,
            } => {
                self.image(id).pid = pid;
                if pid != self.root && !self.follow {
                    // --no-follow: children connect (they inherit the environment) but
                    // are not recorded.
                    return Ok(());
                }
                // Connections are numbered in the order they were made, and an earlier
                // image of the same pid (known from the socket at accept time) may not
                // even have been read yet when an exec'd one says hello. Hold the new one
                // back until the earlier one's stream has been read to its end.
                let open_before = (0..id)
                    .rev()
                    .find(|&i| self.images[i].pid == pid && !self.images[i].ended);
                let earlier = (0..id)
                    .rev()
                    .find(|&i| self.images[i].pid == pid && self.images[i].started);
                if let Some(e) = open_before {
                    let img = self.image(id);
                    img.blocked_by = Some(e);
                    img.backlog.push(Msg::Hello {
                        pid,
                        parent,
                        cause,
                        exe,
                    });
                    return Ok(());
                }
                self.start_image(id, earlier, pid, parent, cause, &exe)?;
            }
            Msg::Modules(key, mods) => {
                let head = Head {
                    rec: Some(Ordered::Modules(mods)),
                    ..Head::default()
                };
                self.enqueue(id, ImageRun::Modules(VecRun::new(0, vec![(key, head)])))?
            }
            Msg::Protos(found) => self.sink.prototypes(&found)?,
            Msg::Imports(names) => {
                let mut ids = Vec::with_capacity(names.len());
                for (name, returns) in names {
                    ids.push(self.function(name, returns)?);
                }
                self.image(id).imports = ids;
            }
            Msg::Batch(mut batch) if !self.image(id).corrupt => {
                // Once a batch, not once a call: the file's coder for the agent's.
                batch.head.coder = self.coder(id, batch.tid, batch.head.coder)?;
                self.enqueue(id, ImageRun::Batch(batch))?
            }
            Msg::Batch(_) => {}
            Msg::Exit(s) => self.image(id).exit = Some(s),
            Msg::Watermark(w) => {
                self.image(id).order.watermark(w);
                if self.image(id).started {
                    self.release(id, false)?;
                }
            }
            Msg::End => self.close(id, true, None)?,
            Msg::Closed(err) => self.close(id, false, err)?,
        }
        Ok(())
    }

    fn start_image(
        &mut self,
        id: usize,
        earlier: Option<usize>,
        pid: u32,
        parent: u32,
        cause: u8,
        exe: &str,
    ) -> Result<(), AgentError> {
        let cause = if earlier.is_some() {
            // The previous image of this pid exec'd: it is no longer waiting to end.
            if let Some(e) = earlier {
                self.lingering.retain(|&l| l != e);
                let gone: Vec<u32> = self.images[e].modules.values().map(|(m, _)| *m).collect();
                for m in gone {
                    self.sink.module_unload(m)?;
                }
                self.images[e].modules.clear();
            }
            StartCause::Exec
        } else if cause == wire::CAUSE_FORK {
            StartCause::Fork
        } else if pid == self.root {
            StartCause::Spawn
        } else {
            // Started without the agent's fork handler (vfork, posix_spawn) and then exec'd.
            self.sink
                .process_start(pid, parent, StartCause::Vfork, "")?;
            StartCause::Exec
        };
        let parent = if cause == StartCause::Spawn {
            0
        } else {
            parent
        };
        self.sink.process_start(pid, parent, cause, exe)?;
        self.image(id).started = true;
        Ok(())
    }

    /// Queues a run of keyed records and writes whatever's turn has come.
    fn enqueue(&mut self, id: usize, run: ImageRun) -> Result<(), AgentError> {
        let img = self.image(id);
        if !img.started {
            return Ok(());
        }
        img.order.push(run);
        self.release(id, false)
    }

    /// Writes every item whose turn has come; with `all`, everything still waiting (the
    /// stream ended: no record of it can come any more).
    fn release(&mut self, id: usize, all: bool) -> Result<(), AgentError> {
        // The merge lends each record in place; it is out of the image meanwhile.
        let mut order = std::mem::take(&mut self.images[id].order);
        let mut done = Ok(());
        while let Some((tid, item)) = order.pop(all) {
            done = self.write_item(id, tid, item);
            if done.is_err() {
                break;
            }
        }
        self.images[id].order = order;
        done
    }

    fn write_item(&mut self, id: usize, tid: u32, head: &mut Head) -> Result<(), AgentError> {
        if !head.stacks.is_empty() {
            let coder = head.coder;
            for (sid, raw) in head.stacks.drain(..) {
                // Resolved at once: the coded calls that use it are not decoded here,
                // so the reader learns what the agent's id stands for first.
                let stack = self.resolve(id, &raw)?;
                self.sink.stack_alias(coder, sid, stack)?;
                let st = Stack {
                    raw,
                    id: stack,
                    coder,
                };
                self.images[id].stacks.insert(tid, sid, st);
            }
        }
        if let Some(c) = head.coded {
            let coder = head.coder;
            let (ts_in, ts_out) = (self.clock.to_ns(c.ts_in), self.clock.to_ns(c.ts_out));
            let from = head.bytes.get(head.body.start..).unwrap_or_default();
            let len = head.body.len();
            self.sink
                .coded_call(coder, ts_in, ts_out, c.exits, from, len)?;
            return Ok(());
        }
        let Some(item) = &mut head.rec else {
            return Ok(());
        };
        match item {
            Ordered::Enter(e) => {
                let pid = self.images[id].pid;
                let Some(&func) = self.images[id].imports.get(e.import as usize) else {
                    self.images[id].lost += 1;
                    return Ok(());
                };
                let stack = self.resolve_stack(id, tid, e.stack);
                self.sink.enter(
                    pid,
                    tid,
                    func,
                    std::mem::take(&mut e.args),
                    stack,
                    self.clock.to_ns(e.ts),
                    std::mem::take(&mut e.data),
                )?;
                Ok(())
            }
            Ordered::Exit(e) => {
                let pid = self.images[id].pid;
                let ts = self.clock.to_ns(e.ts);
                self.sink
                    .exit(pid, tid, e.ret, None, Some(ts), std::mem::take(&mut e.data))?;
                Ok(())
            }
            Ordered::Modules(m) => self.modules(id, std::mem::take(m)),
            Ordered::Corrupt(what, at) => {
                // As a connection that sent a malformed message would be ended: the rest
                // of this image's stream is dropped, what came before it stays.
                let (what, at) = (*what, *at);
                self.images[id].corrupt = true;
                let pid = self.images[id].pid;
                self.sink.note(
                    pid,
                    format!("agent stream of process {pid} ended early: {what} at offset {at}"),
                )?;
                Ok(())
            }
        }
    }

    /// The recording's id of a function the agent named, defining it the first time.
    fn function(&mut self, name: String, returns: bool) -> Result<u32, AgentError> {
        if let Some(&f) = self.functions.get(&(name.clone(), returns)) {
            return Ok(f);
        }
        let f = self.sink.function_named(
            &name,
            FnClass::Other,
            returns,
            crate::format::Origin::Hooked,
        )?;
        self.functions.insert((name, returns), f);
        Ok(f)
    }

    /// The recording's coder of the agent's coding state `agent` of thread `tid`,
    /// defining it the first time.
    fn coder(&mut self, id: usize, tid: u32, agent: u32) -> Result<u32, AgentError> {
        let key = u64::from(tid) << 32 | u64::from(agent);
        if let Some(&c) = self.images[id].coders.get(&key) {
            return Ok(c);
        }
        let pid = self.images[id].pid;
        let c = self.sink.coder(pid, tid)?;
        self.images[id].coders.insert(key, c);
        Ok(c)
    }

    /// The recording's stack of return addresses `raw` of image `id`.
    fn resolve(&mut self, id: usize, raw: &[u64]) -> Result<Option<u32>, AgentError> {
        let modules = &self.images[id].modules;
        let frames: Vec<Frame> = raw
            .iter()
            .map(|&a| match modules.range(..=a).next_back() {
                Some((_, (mid, m))) if a < m.end => Frame {
                    module: Some(*mid),
                    addr: a.wrapping_sub(m.bias),
                },
                _ => Frame {
                    module: None,
                    addr: a,
                },
            })
            .collect();
        Ok(self.sink.stack(frames)?)
    }

    /// The recording's id of a stack the agent defined for thread `tid`.
    fn resolve_stack(&mut self, id: usize, tid: u32, sid: u32) -> Option<u32> {
        self.images[id].stacks.get_mut(tid, sid).and_then(|s| s.id)
    }

    fn modules(&mut self, id: usize, mods: Vec<AgentModule>) -> Result<(), AgentError> {
        let pid = self.images[id].pid;
        let gone: Vec<u64> = self.images[id]
            .modules
            .iter()
            .filter(|(_, (_, m))| !mods.contains(m))
            .map(|(s, _)| *s)
            .collect();
        for s in gone {
            if let Some((mid, _)) = self.images[id].modules.remove(&s) {
                self.sink.module_unload(mid)?;
            }
        }
        for m in mods {
            if self.images[id]
                .modules
                .get(&m.start)
                .is_some_and(|(_, k)| *k == m)
            {
                continue;
            }
            let mid = self
                .sink
                .module(pid, &m.path, &m.build_id, m.bias, m.start, m.end)?;
            self.images[id].modules.insert(m.start, (mid, m));
        }
        // Stacks resolved against the old list may now resolve differently: the reader
        // learns the new meaning of each that does, before any call that uses it.
        let mut stacks = std::mem::take(&mut self.images[id].stacks);
        let mut done = Ok(());
        for (sid, st) in stacks.entries_mut() {
            let s = match self.resolve(id, &st.raw) {
                Ok(s) => s,
                Err(e) => {
                    done = Err(e);
                    break;
                }
            };
            if s != st.id {
                st.id = s;
                if let Err(e) = self.sink.stack_alias(st.coder, sid, s) {
                    done = Err(e.into());
                    break;
                }
            }
        }
        self.images[id].stacks = stacks;
        done
    }

    fn close(&mut self, id: usize, clean: bool, err: Option<String>) -> Result<(), AgentError> {
        if self.image(id).ended {
            return Ok(());
        }
        if let Some(e) = err {
            let pid = self.images[id].pid;
            let text = if pid == 0 {
                format!("an agent connection was refused: {e}")
            } else {
                format!("agent stream of process {pid} ended early: {e}")
            };
            self.sink.note(pid, text)?;
        }
        if self.images[id].started {
            self.release(id, true)?;
        }
        let img = &mut self.images[id];
        img.ended = true;
        let (pid, lost, forced, started) = (img.pid, img.lost, img.order.forced, img.started);
        if lost > 0 {
            self.sink.note(
                pid,
                format!("{lost} calls of process {pid} named an import the agent never listed"),
            )?;
        }
        if forced > 0 {
            self.sink.note(
                pid,
                format!(
                    "{forced} records of process {pid} were written before the agent said \
                     their turn had come (a thread stalled inside a hook while more than \
                     {} MiB waited): calls of other threads near them may be out of order",
                    crate::record::merge::MAX_WAITING >> 20
                ),
            )?;
        }
        if started {
            let told = clean || self.images[id].exit.is_some();
            if told && pid != self.root {
                let how = self.images[id].exit.unwrap_or(ExitHow::Unknown);
                self.sink.process_exit(pid, how)?;
            } else {
                // The command's status comes from waitpid; an image that ended without
                // saying so may have exec'd a program the agent is not loaded in.
                self.lingering.push(id);
            }
        }
        // Images of the same pid that waited for this one (exec) go on.
        let blocked: Vec<usize> = (0..self.images.len())
            .filter(|&i| self.images[i].blocked_by == Some(id))
            .collect();
        for b in blocked {
            self.images[b].blocked_by = None;
            for m in std::mem::take(&mut self.images[b].backlog) {
                self.message(b, m)?;
            }
        }
        Ok(())
    }

    fn check_lingering(&mut self) -> Result<(), AgentError> {
        let mut i = 0;
        while i < self.lingering.len() {
            let id = self.lingering[i];
            let pid = self.images[id].pid;
            let gone = if pid == self.root {
                self.root_status.is_some()
            } else {
                procfs::process_gone(pid)
            };
            if gone {
                self.lingering.remove(i);
                let how = match self.root_status {
                    Some(how) if pid == self.root => how,
                    _ => self.images[id].exit.unwrap_or(ExitHow::Unknown),
                };
                self.sink.process_exit(pid, how)?;
            } else {
                i += 1;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread's coding state and the key of its last coded call.
    type Chain = (wire::coded::Coder, u64);

    /// A malloc call record whose order key (its return time) is `key`, coded on `chain`.
    fn call(chain: &mut Chain, key: u64, stack: u32) -> Vec<u8> {
        let c = wire::Call {
            func: wire::func::MALLOC,
            flags: wire::CALL_RET,
            nargs: 1,
            args: [32, 0, 0],
            ret: 0x5555_0000 + key,
            out: 0,
            ts_in: key.saturating_sub(10),
            ts_out: key,
            stack,
        };
        let mut buf = vec![0u8; wire::coded::CODED_LEN];
        let n = wire::coded::put_coded(&mut buf, &c, &mut chain.0, &mut chain.1);
        buf.truncate(n);
        buf
    }

    fn stack(id: u32, frames: &[u64]) -> Vec<u8> {
        let mut b = vec![wire::REC_STACK];
        b.extend_from_slice(&id.to_le_bytes());
        b.extend_from_slice(&(frames.len() as u16).to_le_bytes());
        for f in frames {
            b.extend_from_slice(&f.to_le_bytes());
        }
        b
    }

    /// Thread `tid`'s batch of `records`, the first of its coded calls coded from `from`.
    fn batch(tid: u32, from: u64, records: &[Vec<u8>]) -> Vec<u8> {
        let mut b = tid.to_le_bytes().to_vec();
        b.extend_from_slice(&(tid + 100).to_le_bytes());
        b.extend_from_slice(&from.to_le_bytes());
        for r in records {
            b.extend_from_slice(r);
        }
        b
    }

    /// What the merge lends, in order: (thread, stack ids defined, call's key).
    fn drain(m: &mut Merge<ImageRun>) -> Vec<(u32, Vec<u32>, Option<u64>)> {
        let mut out = Vec::new();
        while let Some((tid, head)) = m.pop(false) {
            let defs = head.stacks.iter().map(|(id, _)| *id).collect();
            let key = head.coded.map(|c| c.ts_out);
            out.push((tid, defs, key));
        }
        out
    }

    #[test]
    fn batches_decode_in_key_order_with_their_stack_definitions() {
        let (mut t7, mut t8) = (Chain::default(), Chain::default());
        let a = batch(
            7,
            0,
            &[
                stack(0, &[0x1000, 0x2000]),
                call(&mut t7, 5, 0),
                call(&mut t7, 20, 0),
                stack(1, &[0x3000]),
            ],
        );
        let b = batch(8, 0, &[call(&mut t8, 10, wire::NO_STACK)]);
        // The second batch of thread 8 is coded on from the first, as its header says:
        // it decodes before the first one has.
        let c = batch(8, 10, &[call(&mut t8, 30, wire::NO_STACK)]);
        let mut m = Merge::default();
        m.push(ImageRun::Batch(RawBatch::new(a, 0).unwrap()));
        m.watermark(6);
        assert_eq!(drain(&mut m), [(7, vec![0], Some(5))]);
        m.push(ImageRun::Batch(RawBatch::new(b, 0).unwrap()));
        m.push(ImageRun::Batch(RawBatch::new(c, 0).unwrap()));
        assert_eq!(drain(&mut m), []);
        m.watermark(40);
        // The definition left at the end of 7's batch goes out right after its last call.
        assert_eq!(
            drain(&mut m),
            [
                (8, vec![], Some(10)),
                (7, vec![], Some(20)),
                (7, vec![1], None),
                (8, vec![], Some(30)),
            ]
        );
    }

    #[test]
    fn a_malformed_record_ends_its_batch_with_its_offset_in_the_stream() {
        let mut t = Chain::default();
        let good = call(&mut t, 1, wire::NO_STACK);
        // A return value code past the far one: stored as it is (the reader skips it).
        let mut odd = call(&mut t, 2, wire::NO_STACK);
        let last = odd.len() - 1;
        odd[last] = 19;
        // A body longer than what is left of the batch: the batch ends there.
        let mut cut = call(&mut t, 3, wire::NO_STACK);
        cut[7] += 5;
        let bytes = batch(7, 0, &[good.clone(), odd, cut.clone()]);
        // At offset 500 of its connection's stream; the cut call's body starts after its
        // kind, key distance, duration and length bytes.
        let mut m = Merge::default();
        let run = RawBatch::new(bytes.clone(), 500).unwrap();
        m.push(ImageRun::Batch(run));
        m.watermark(u64::MAX);
        let (_, first) = m.pop(false).unwrap();
        assert!(matches!(first.coded, Some(c) if c.ts_out == 1));
        let (_, second) = m.pop(false).unwrap();
        assert!(matches!(second.coded, Some(c) if c.ts_out == 2));
        let (_, third) = m.pop(false).unwrap();
        match third.rec {
            Some(Ordered::Corrupt(what, at)) => {
                assert_eq!(what, "short coded call");
                assert_eq!(at, 500 + (bytes.len() - cut.len()) as u64 + 8);
            }
            _ => panic!("not a corrupt record"),
        }
        assert!(m.pop(false).is_none());
        assert!(matches!(
            check_message(wire::MSG_BATCH, &bytes),
            Err(("short coded call", _))
        ));
        assert!(check_message(wire::MSG_BATCH, &batch(7, 0, &[good])).is_ok());
        assert!(matches!(
            check_message(wire::MSG_BATCH, &[1, 2, 3, 4, 5]),
            Err(("short batch", _))
        ));
        assert!(matches!(
            check_message(wire::MSG_BATCH, &batch(7, 0, &[vec![0xee]])),
            Err(("unknown record kind", 16))
        ));
    }
}
