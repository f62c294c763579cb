//! The connection to the recorder: hello, module snapshots, and the drain of the rings
//! (by the agent's writer thread, or by a producer that finds its ring full).

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};

use rltrace_wire as wire;

use crate::modules::ModuleInfo;
use crate::ring;
use crate::sync::RwSpin;

/// Socket to the recorder, or -1.
static FD: AtomicI32 = AtomicI32::new(-1);
/// Serialises writes to the socket; taken by fork's prepare handler too.
pub static SOCK: RwSpin = RwSpin::new();
/// Serialises draining (the rings have one consumer at a time).
pub static DRAIN: RwSpin = RwSpin::new();
/// The highest order key anything sent so far may carry (the counter after a drain pass
/// that sent a batch, a module list's key): watermarks are sent until one passes it.
static ACTIVITY: AtomicU64 = AtomicU64::new(0);
/// The last watermark sent (only the drain-lock holder sends them).
static SENT_MARK: AtomicU64 = AtomicU64::new(0);
/// Set while a writer thread runs in this process.
static WRITER: AtomicBool = AtomicBool::new(false);

/// Where the recorder listens (a path), copied from the environment at start.
pub struct Path(pub UnsafeCell<[u8; 108]>);
// SAFETY: written once in the constructor before any other thread of the agent exists.
unsafe impl Sync for Path {}
/// The socket path.
pub static PATH: Path = Path(UnsafeCell::new([0; 108]));

/// A lower bound for the socket's descriptor, out of the way of programs that `dup2` onto
/// small numbers.
const FD_FLOOR: i32 = 700;

/// Connects and says hello; false if the recorder cannot be reached.
pub fn connect(cause: u8, parent: u32, exe: &[u8]) -> bool {
    // SAFETY: plain socket/connect/fcntl/close calls on a descriptor this function owns.
    let fd = unsafe {
        let s = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if s < 0 {
            return false;
        }
        let mut addr: libc::sockaddr_un = std::mem::zeroed();
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let path = &*PATH.0.get();
        for (d, s) in addr.sun_path.iter_mut().zip(path.iter()) {
            *d = *s as libc::c_char;
        }
        if libc::connect(
            s,
            (&addr as *const libc::sockaddr_un).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        ) != 0
        {
            libc::close(s);
            return false;
        }
        let high = libc::fcntl(s, libc::F_DUPFD_CLOEXEC, FD_FLOOR);
        if high >= 0 {
            libc::close(s);
            high
        } else {
            s
        }
    };
    FD.store(fd, Ordering::Release);
    let mut m = Vec::with_capacity(64 + exe.len());
    m.extend_from_slice(&wire::MAGIC);
    m.extend_from_slice(&wire::VERSION.to_le_bytes());
    // SAFETY: getpid/getppid have no preconditions.
    let pid = unsafe { libc::getpid() } as u32;
    m.extend_from_slice(&pid.to_le_bytes());
    m.extend_from_slice(&parent.to_le_bytes());
    m.push(cause);
    m.extend_from_slice(&(exe.len() as u16).to_le_bytes());
    m.extend_from_slice(exe);
    SOCK.write();
    let ok = send_all(&m);
    SOCK.write_unlock();
    ok
}

/// Forgets the inherited connection without touching it (the child of `fork`).
pub fn abandon() {
    let fd = FD.swap(-1, Ordering::AcqRel);
    if fd >= 0 {
        // SAFETY: closing the child's copy of the descriptor leaves the parent's intact.
        unsafe { libc::close(fd) };
    }
    WRITER.store(false, Ordering::Release);
    ACTIVITY.store(0, Ordering::Relaxed);
    SENT_MARK.store(0, Ordering::Relaxed);
}

/// The socket's descriptor, or -1.
pub fn fd() -> i32 {
    FD.load(Ordering::Acquire)
}

/// True while connected.
pub fn connected() -> bool {
    FD.load(Ordering::Acquire) >= 0
}

fn send_all(mut b: &[u8]) -> bool {
    let fd = FD.load(Ordering::Acquire);
    if fd < 0 {
        return false;
    }
    while !b.is_empty() {
        // SAFETY: writes from a valid slice; MSG_NOSIGNAL keeps a vanished recorder from
        // killing the program with SIGPIPE.
        let n = unsafe { libc::send(fd, b.as_ptr().cast(), b.len(), libc::MSG_NOSIGNAL) };
        if n < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            // The recorder is gone: stop recording, let the program run on.
            FD.store(-1, Ordering::Release);
            crate::disable();
            return false;
        }
        b = &b[n as usize..];
    }
    true
}

fn message(kind: u8, payload: &[&[u8]]) -> bool {
    let len: usize = payload.iter().map(|p| p.len()).sum();
    let mut head = [0u8; HEAD];
    put_head(&mut head, kind, len);
    SOCK.write();
    let mut ok = send_all(&head);
    for p in payload {
        ok = ok && send_all(p);
    }
    SOCK.write_unlock();
    ok
}

/// Sends a message whose first [`HEAD`] bytes of `buf` are left for its header, which is
/// filled in here: one system call (and one wake-up of the recorder's reader) per
/// message, where a header sent on its own took two.
fn message_framed(kind: u8, buf: &mut [u8]) -> bool {
    let Some(len) = buf.len().checked_sub(HEAD) else {
        return false;
    };
    put_head(buf, kind, len);
    SOCK.write();
    let ok = send_all(buf);
    SOCK.write_unlock();
    ok
}

/// Bytes of a message header: kind, then the payload's length.
const HEAD: usize = 5;

/// Writes a message header at the start of `out`, which holds at least [`HEAD`] bytes.
fn put_head(out: &mut [u8], kind: u8, len: usize) {
    out[0] = kind;
    out[1..HEAD].copy_from_slice(&(len as u32).to_le_bytes());
}

/// Sends the names of the traced imports (before any record that numbers them).
pub fn send_imports(hooks: &[crate::imports::Hook]) {
    let mut m = Vec::with_capacity(4 + hooks.len() * 24);
    m.extend_from_slice(&(hooks.len() as u32).to_le_bytes());
    for h in hooks {
        // Every import call gets an exit record (see `import_exit`).
        m.push(wire::IMPORT_RETURNS);
        m.extend_from_slice(&(h.name.len() as u16).to_le_bytes());
        m.extend_from_slice(&h.name);
    }
    message(wire::MSG_IMPORTS, &[&m]);
}

/// Reads exactly `buf.len()` bytes from the recorder.
fn recv_exact(buf: &mut [u8]) -> bool {
    let fd = FD.load(Ordering::Acquire);
    let mut got = 0;
    while fd >= 0 && got < buf.len() {
        // SAFETY: reads into the unfilled tail of `buf`, which is valid for its length.
        let r = unsafe { libc::recv(fd, buf[got..].as_mut_ptr().cast(), buf.len() - got, 0) };
        if r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        if r <= 0 {
            return false;
        }
        got += r as usize;
    }
    got == buf.len()
}

/// The recorder's answer to the import list.
pub struct Choice {
    /// One bit per import, set to trace it.
    pub traced: Vec<u8>,
    /// Prototypes the user loaded, by import number: return type, then arguments.
    pub protos: Vec<(usize, wire::protos::Ty, Vec<wire::protos::Ty>)>,
}

/// Reads the recorder's answer to a list of `n` imports. Without an answer (a vanished
/// recorder) every import is traced, with the built-in prototypes.
pub fn read_choice(n: usize) -> Choice {
    use wire::protos::Ty;
    let mut choice = Choice {
        traced: vec![0xffu8; n.div_ceil(8)],
        protos: Vec::new(),
    };
    let mut head = vec![0u8; 4 + n.div_ceil(8) + 2];
    if !recv_exact(&mut head) || head[..4] != (n as u32).to_le_bytes() {
        return choice;
    }
    choice.traced = head[4..4 + n.div_ceil(8)].to_vec();
    let count = u16::from_le_bytes([head[head.len() - 2], head[head.len() - 1]]) as usize;
    for _ in 0..count.min(n) {
        let mut e = [0u8; 5];
        if !recv_exact(&mut e) {
            return choice;
        }
        let index = u16::from_le_bytes([e[0], e[1]]) as usize;
        let nargs = (e[4] as usize).min(wire::MAX_ARGS);
        let mut codes = [0u8; 2 * wire::MAX_ARGS];
        if !recv_exact(&mut codes[..2 * nargs]) {
            return choice;
        }
        let ret = Ty::from_code([e[2], e[3]]);
        let args: Option<Vec<Ty>> = codes[..2 * nargs]
            .chunks(2)
            .map(|c| Ty::from_code([c[0], c[1]]))
            .collect();
        if let (Some(ret), Some(args), true) = (ret, args, index < n) {
            choice.protos.push((index, ret, args));
        }
    }
    choice
}

/// Sends the module list, ordered among the calls by its order key, which is read while
/// the socket is held: a watermark sent before the list is below the key, and one sent
/// after it comes after the list.
pub fn send_modules(mods: &[ModuleInfo]) {
    let mut m = Vec::with_capacity(HEAD + 16 + mods.len() * 128);
    m.extend_from_slice(&[0; HEAD]);
    m.extend_from_slice(&0u64.to_le_bytes());
    m.extend_from_slice(&(mods.len() as u32).to_le_bytes());
    for md in mods {
        m.extend_from_slice(&md.bias.to_le_bytes());
        m.extend_from_slice(&md.start.to_le_bytes());
        m.extend_from_slice(&md.end.to_le_bytes());
        let id = &md.build_id[..md.build_id.len().min(255)];
        m.push(id.len() as u8);
        m.extend_from_slice(id);
        let path = &md.path[..md.path.len().min(4096)];
        m.extend_from_slice(&(path.len() as u16).to_le_bytes());
        m.extend_from_slice(path);
    }
    let len = m.len() - HEAD;
    put_head(&mut m, wire::MSG_MODULES, len);
    SOCK.write();
    let key = crate::order_now();
    m[HEAD..HEAD + 8].copy_from_slice(&key.to_le_bytes());
    ACTIVITY.fetch_max(key, Ordering::Relaxed);
    send_all(&m);
    SOCK.write_unlock();
}

/// Sends the exit status the program asked for.
pub fn send_exit(status: i32) {
    message(wire::MSG_EXIT, &[&status.to_le_bytes()]);
}

/// Says the process is about to die of signal `sig`.
pub fn send_killed(sig: i32) {
    message(wire::MSG_KILLED, &[&sig.to_le_bytes()]);
}

/// Says the stream is complete.
pub fn send_end() {
    message(wire::MSG_END, &[]);
}

struct Scratch(UnsafeCell<Vec<u8>>);
// SAFETY: only the DRAIN holder touches it.
unsafe impl Sync for Scratch {}
static SCRATCH: Scratch = Scratch(UnsafeCell::new(Vec::new()));

/// Sends what every ring holds; returns the most bytes one ring held. Blocks for the
/// drain lock.
pub fn drain_all() -> usize {
    DRAIN.write();
    let n = drain_locked();
    DRAIN.write_unlock();
    n
}

/// Drains unless someone else is already draining.
pub fn try_drain() {
    if DRAIN.try_write() {
        drain_locked();
        DRAIN.write_unlock();
    }
}

fn drain_locked() -> usize {
    // SAFETY: the caller holds DRAIN, which is the only way to reach SCRATCH.
    let buf = unsafe { &mut *SCRATCH.0.get() };
    // Sized once for the largest batch, so that a drain from a fatal signal's handler
    // never needs the allocator.
    if buf.capacity() < ring::RING_BYTES + 16 + HEAD {
        buf.reserve(ring::RING_BYTES + 16 + HEAD);
    }
    // Read before any ring's state or mark: a record not found below has a key above it,
    // less what `ORDER_MARGIN` covers (the fence keeps the loads from starting early).
    let start = crate::order_now();
    // SAFETY: lfence only orders instructions; it has no memory effects.
    unsafe { std::arch::x86_64::_mm_lfence() };
    let mut mark = start.saturating_sub(wire::ORDER_MARGIN);
    let mut sent = false;
    let mut most = 0;
    for r in ring::iter() {
        let state = r.state.load(Ordering::Acquire);
        if state == ring::FREE {
            continue;
        }
        // Before the ring is read: a thread seen idle had its records in the ring.
        let busy = r.busy.load(Ordering::Acquire);
        if busy != 0 {
            mark = mark.min(busy);
        }
        buf.clear();
        buf.extend_from_slice(&[0; HEAD]);
        buf.extend_from_slice(&r.tid.load(Ordering::Acquire).to_le_bytes());
        buf.extend_from_slice(&r.coder.load(Ordering::Acquire).to_le_bytes());
        buf.extend_from_slice(&r.sent_key().to_le_bytes());
        let Some((n, key)) = r.peek(buf) else {
            // Its owner was pushing all along: next pass. Nothing above the records
            // left behind may be promised.
            mark = 1;
            continue;
        };
        if n == 0 {
            if state == ring::DEAD {
                r.state.store(ring::FREE, Ordering::Release);
            } else if r.idle.fetch_add(1, Ordering::Relaxed) % 256 == 255 && !thread_alive(r) {
                // A thread that exited after its last destructor ran never said so.
                r.state.store(ring::DEAD, Ordering::Release);
            }
            continue;
        }
        r.idle.store(0, Ordering::Relaxed);
        if !message_framed(wire::MSG_BATCH, buf) {
            // Nobody listens any more: discard so producers never wait for ever.
            r.consume(n, key);
            continue;
        }
        r.consume(n, key);
        sent = true;
        most = most.max(n);
    }
    if sent {
        // Records pushed during the pass may have gone with it.
        ACTIVITY.fetch_max(crate::order_now(), Ordering::Relaxed);
    }
    // Until a watermark passes everything sent, each pass sends one (the recorder holds
    // the records above the last until then).
    let last = SENT_MARK.load(Ordering::Relaxed);
    if mark > last && last <= ACTIVITY.load(Ordering::Relaxed) {
        SENT_MARK.store(mark, Ordering::Relaxed);
        message(wire::MSG_WATERMARK, &[&mark.to_le_bytes()]);
    }
    most
}

fn thread_alive(r: &ring::Ring) -> bool {
    // SAFETY: signal 0 only checks that the thread exists.
    unsafe {
        libc::syscall(
            libc::SYS_tgkill,
            libc::getpid(),
            r.tid.load(Ordering::Acquire) as libc::pid_t,
            0,
        ) == 0
    }
}

extern "C" fn writer_main(_: *mut libc::c_void) -> *mut libc::c_void {
    crate::mark_agent_thread();
    crate::signals::block_in_this_thread();
    while WRITER.load(Ordering::Acquire) {
        // Drain again at once only while a ring fills fast (an eighth of it since the last
        // pass, which keeps a millisecond's sleep far from filling it); otherwise a thread
        // making a call every few microseconds had each pass find a record or two, and
        // every such message woke the recorder's two threads (five system calls and
        // three context switches for a handful of records).
        if drain_all() < ring::RING_BYTES / 8 {
            // SAFETY: plain sleep.
            unsafe { libc::usleep(1000) };
        }
    }
    std::ptr::null_mut()
}

/// Starts the writer thread of this process.
pub fn start_writer() {
    WRITER.store(true, Ordering::Release);
    // SAFETY: attr is initialised before use and destroyed after; the thread runs a
    // function that takes no argument.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        libc::pthread_attr_init(&mut attr);
        libc::pthread_attr_setdetachstate(&mut attr, libc::PTHREAD_CREATE_DETACHED);
        let mut th: libc::pthread_t = 0;
        if libc::pthread_create(&mut th, &attr, writer_main, std::ptr::null_mut()) != 0 {
            WRITER.store(false, Ordering::Release);
        }
        libc::pthread_attr_destroy(&mut attr);
    }
}
