//! The event loop: one stop per traced call, threads/forks/execs followed, return values
//! collected from the stubs' slots at later stops, events released in causal order.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::io::{self, Write};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::ptrace::{self, Options as PtOptions};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::codegen::slot;
use super::mem::{self, Regs};
use super::space::{BpKind, Space, SpaceError};
use crate::format::{ArgData, ExitHow, FnClass, FormatError, Origin, StartCause};
use crate::record::clock::{rdtsc, TscClock};
use crate::record::funcs::{self, TracedFn};
use crate::record::procfs;
use crate::record::select::{glob, Selection};
use crate::record::sink::{Event, Sink};

mod attach;
mod imports;
mod syscalls;

/// Errors that end a recording.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The command could not be started.
    #[error("cannot run {cmd}: {source}")]
    Spawn {
        /// The command.
        cmd: String,
        /// The cause.
        source: io::Error,
    },
    /// A ptrace or wait call failed.
    #[error("{what}: {source}")]
    Ptrace {
        /// What was being done.
        what: String,
        /// The cause.
        source: nix::Error,
    },
    /// `-p`: the process cannot be attached to.
    #[error("cannot attach to process {pid}: {why}")]
    Attach {
        /// The process.
        pid: u32,
        /// Why, with advice.
        why: String,
    },
    /// Setting up an address space failed.
    #[error(transparent)]
    Space(#[from] SpaceError),
    /// Writing the recording failed.
    #[error("writing the recording: {0}")]
    Format(#[from] FormatError),
}

fn pt(what: impl Into<String>) -> impl FnOnce(nix::Error) -> TraceError {
    let what = what.into();
    move |source| TraceError::Ptrace { what, source }
}

/// Stored time resolution: microseconds, what ltrace's `-tt`, `-r` and `-T` show. Finer
/// times are mostly noise in a recording's size (each nanosecond timestamp costs about
/// a byte and a half after compression), and both ends of a call are rounded on the
/// absolute clock, so durations summed over many calls (`-c`) stay right.
pub const DEFAULT_TIME_UNIT: u64 = 1000;

/// Knobs of the ptrace engine.
#[derive(Clone, Debug)]
pub struct TraceOptions {
    /// Most return addresses kept per stack.
    pub max_depth: usize,
    /// Stack bytes copied at a thread's first stop; afterwards each thread reads as deep
    /// as its previous unwind needed, and re-reads up to `max_stack_bytes` if that was short.
    pub stack_bytes: usize,
    /// Most stack bytes copied for one unwind.
    pub max_stack_bytes: usize,
    /// Follow child processes (forks, vforks, clones that are not threads).
    pub follow: bool,
    /// Most bytes captured per string or buffer argument (ltrace's `-s`).
    pub string_limit: usize,
    /// Trace every call the main executable makes into shared libraries.
    pub imports: bool,
    /// Trace system calls (`-S`).
    pub syscalls: bool,
    /// Nanoseconds per stored time unit (`record --time-resolution`).
    pub time_unit: u64,
    /// Hook the allocator family (the functions given to [`Tracer::new`]); off when the
    /// preload agent records them in the same run.
    pub allocators: bool,
    /// A module whose functions `-x` never hooks, by file name: the preload agent's, in a
    /// run it records too (its interposers forward to the functions hooked anyway).
    pub skip_module: Option<String>,
}

impl Default for TraceOptions {
    fn default() -> Self {
        TraceOptions {
            max_depth: 64,
            stack_bytes: 4 << 10,
            max_stack_bytes: 256 << 10,
            follow: true,
            string_limit: 32,
            imports: true,
            syscalls: false,
            time_unit: DEFAULT_TIME_UNIT,
            allocators: true,
            skip_module: None,
        }
    }
}

/// A selected GNU IFUNC in one process's module: its symbol is the resolver, and the
/// implementation is whatever a bound GOT slot naming it holds.
struct Ifunc {
    /// The defining module's mapped range.
    lo: u64,
    hi: u64,
    path: String,
    /// The module's own `IRELATIVE` slots whose resolver is this one: bound when the
    /// module was relocated, they lead to the implementation its own calls reach.
    irelative: Vec<u64>,
}

/// A call whose return the tracer has not collected yet.
#[derive(Clone, Copy, Debug)]
struct Pending {
    slot: u32,
    entry_seq: u64,
    entry_rsp: u64,
    has_out: bool,
    /// Returns a `float` or `double`: its value is xmm0's, not rax's.
    vector_ret: bool,
    /// An allocator call: later events wait for its return, so that a free never precedes
    /// the allocation it undoes. Other calls (`-x`) may block for ever (`accept`).
    holds: bool,
}

struct Thread {
    pid: u32,
    pending: Vec<Pending>,
    /// Inside a system call whose entry was recorded (`-S`).
    in_syscall: bool,
    /// Stack bytes to copy at the next stop.
    stack_read: usize,
}

impl Thread {
    fn new(pid: u32, pending: Vec<Pending>) -> Self {
        Thread {
            pid,
            pending,
            in_syscall: false,
            stack_read: 0,
        }
    }
}

/// Most pending calls polled at one stop: two iovecs each, plus the counter and up to 64
/// stack pages, must stay under the kernel's 1024 iovecs per `process_vm_readv`.
const MAX_POLLED: usize = 400;

/// Functions never hooked, even when selected: redirecting their return address or
/// running them from a breakpoint breaks them (they save or replace the caller's stack,
/// return twice, or are entered without a return address on the stack).
/// Beyond [`rltrace_wire::NEVER_HOOKED`]: functions whose return address a stub may not
/// replace (they unwind or jump past it) or that are entered without one.
const UNHOOKABLE: &[&str] = &[
    "clone",
    "clone3",
    "__clone*",
    "_start",
    "__restore_rt",
    "_Unwind_*",
    "__cxa_throw",
    "__cxa_rethrow",
    "__morestack",
];

/// Most events buffered per process while waiting for a running call's return.
const MAX_REORDER: usize = 1 << 16;

/// What a slot held when its stub had run: (seq, rax, out-pointer value, tsc).
type Returned = Option<(u64, u64, u64, u64)>;

/// Ordering key of a buffered event: the tracee-wide sequence number, 0 for entries and
/// abandoned calls and 1 for returns, then arrival order.
type Key = (u64, u8, u64);

struct Proc {
    space: Rc<RefCell<Space>>,
    /// Handled but not recorded: a vfork child under `--no-follow`, until it execs.
    quiet: bool,
    tids: Vec<u32>,
    reorder: BTreeMap<Key, Event>,
    ctr: u64,
    last_seq: u64,
}

impl Proc {
    /// Buffers an event under the ordering key (seq, kind); ties keep arrival order.
    fn buffer(&mut self, seq: u64, kind: u8, ev: Event) {
        self.reorder.insert((seq, kind, self.ctr), ev);
        self.ctr += 1;
    }
}

enum NewTask {
    Thread {
        pid: u32,
    },
    Process {
        parent_tid: u32,
        shared: bool,
        cause: StartCause,
    },
}

/// A thread held stopped while the tracer stops the world (to attach or detach).
#[derive(Default, Debug)]
struct Held {
    /// Signals to deliver when it runs again.
    sigs: Vec<Signal>,
    /// Stopped where registers may be borrowed for an injected system call (a signal,
    /// breakpoint, step or interrupt stop, not the middle of a system call's event).
    clean: bool,
    /// In a group-stop (seized tracee): it stays stopped until SIGCONT.
    group_stop: bool,
}

/// Progress reported to whoever runs the engine.
#[derive(Clone, Copy, Debug)]
pub enum Progress {
    /// Attached to a running process: its pid and how many threads it had.
    Attached {
        /// Process id.
        pid: u32,
        /// Threads seized.
        threads: usize,
    },
    /// Detaching (Ctrl-C, SIGTERM, SIGHUP or the duration elapsed).
    Detaching {
        /// Process id.
        pid: u32,
    },
}

static SIGINTS: AtomicUsize = AtomicUsize::new(0);
static SIGTERMS: AtomicUsize = AtomicUsize::new(0);
static SIGHUPS: AtomicUsize = AtomicUsize::new(0);
static SIGALRMS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    let counter = match sig {
        libc::SIGINT | libc::SIGQUIT => &SIGINTS,
        libc::SIGHUP => &SIGHUPS,
        libc::SIGALRM => &SIGALRMS,
        _ => &SIGTERMS,
    };
    counter.fetch_add(1, Ordering::SeqCst);
    // The signal may have come while the event loop was busy rather than blocked in
    // waitpid, and an idle tracee sends no event to wake it: keep interrupting the wait
    // until the loop has seen the request (it disarms this timer when it does).
    set_timer(Duration::from_millis(20), true);
}

/// Arms ITIMER_REAL (SIGALRM) after `after`, repeating if `periodic`; zero disarms.
fn set_timer(after: Duration, periodic: bool) {
    let tv = |d: Duration| libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: libc::suseconds_t::from(d.subsec_micros()),
    };
    let it = libc::itimerval {
        it_interval: tv(if periodic { after } else { Duration::ZERO }),
        it_value: tv(after),
    };
    // SAFETY: setitimer is a plain system call (safe in a signal handler); it reads the
    // struct we pass and writes nothing (old value null).
    unsafe {
        libc::setitimer(libc::ITIMER_REAL, &it, std::ptr::null_mut());
    }
}

fn signals_seen() -> usize {
    [&SIGINTS, &SIGTERMS, &SIGHUPS, &SIGALRMS]
        .iter()
        .map(|c| c.load(Ordering::SeqCst))
        .sum()
}

fn install_signal_handlers() {
    for sig in [
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGTERM,
        libc::SIGHUP,
        libc::SIGALRM,
    ] {
        // SAFETY: the handler only touches atomics (async-signal-safe); no SA_RESTART, so a
        // signal interrupts waitpid and the loop reacts to it.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// Starts `cmd` stopped at its first instruction under ptrace; returns its pid.
pub fn spawn(cmd: &[OsString]) -> Result<u32, TraceError> {
    spawn_with(cmd, &[])
}

/// [`spawn`] with these variables added to the command's environment.
pub fn spawn_with(cmd: &[OsString], env: &[(OsString, OsString)]) -> Result<u32, TraceError> {
    let shown = cmd
        .first()
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut c = Command::new(cmd.first().ok_or_else(|| TraceError::Spawn {
        cmd: shown.clone(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "empty command"),
    })?);
    c.args(&cmd[1..]);
    c.envs(env.iter().map(|(k, v)| (k, v)));
    // SAFETY: runs in the forked child before exec; PTRACE_TRACEME is a single system call
    // and touches no state shared with the parent.
    unsafe {
        c.pre_exec(|| ptrace::traceme().map_err(io::Error::from));
    }
    let child = c
        .spawn()
        .map_err(|source| TraceError::Spawn { cmd: shown, source })?;
    Ok(child.id())
}

/// The ptrace engine.
pub struct Tracer<'s, W: Write> {
    sink: &'s mut Sink<W>,
    /// The allocator family, then functions selected with `-x` as they are found.
    funcs: Vec<TracedFn>,
    /// Names of the allocator family, looked up in every module.
    names: Vec<&'static str>,
    /// `-x` filters, with their hit counts.
    select: Option<&'s mut Selection>,
    /// Ids of functions selected with `-x`, by name.
    selected_ids: HashMap<String, u32>,
    /// Selected names already reported as not traceable.
    refused: HashSet<String>,
    /// Selected GNU IFUNCs: name -> defining module (start, end, path).
    ifuncs: HashMap<(u32, String), Ifunc>,
    /// `-e` chains: which of the main executable's imports are traced.
    calls: Option<&'s mut Selection>,
    /// Each process's imported functions, until its entry is reached.
    imports: HashMap<u32, imports::Imports>,
    /// Ids of the imports traced by default, by name.
    import_ids: HashMap<String, u32>,
    /// Processes whose image (started or exec'd here) has not reached its entry yet.
    before_entry: HashSet<u32>,
    /// Function ids of the system calls seen (`-S`), by number and convention.
    syscall_ids: HashMap<(u64, bool), u32>,
    opts: TraceOptions,
    threads: HashMap<u32, Thread>,
    procs: HashMap<u32, Proc>,
    expected_new: HashMap<u32, NewTask>,
    early_stopped: HashSet<u32>,
    /// Children not followed that share their parent's memory (vfork): traced until they
    /// exec or exit, since the parent's breakpoints are in that memory too.
    release_at_exec: HashSet<u32>,
    /// Processes single-stepping out of `execve`, to be set up at their next stop, with
    /// signals that arrived meanwhile.
    exec_stepping: HashMap<u32, Vec<Signal>>,
    root: u32,
    root_status: Option<ExitHow>,
    ranges: Vec<(u64, usize)>,
    buf: Vec<u8>,
    ras: Vec<u64>,
    handled_ints: usize,
    handled_terms: usize,
    handled_hups: usize,
    handled_total: usize,
    /// Processes whose reorder buffer overflowed (noted once).
    overflow_noted: HashSet<u32>,
    /// Attached to a running process (`-p`): stop requests detach instead of killing.
    attached: bool,
    /// When an attach ends by itself.
    deadline: Option<Instant>,
    detach_requested: bool,
    /// Stopping the world: threads that would be resumed are held instead.
    stopping: bool,
    held: HashMap<u32, Held>,
    /// What the stop being handled was, for `held`.
    cur_clean: bool,
    cur_group_stop: bool,
    cur_syscall: bool,
    progress: Option<fn(&Progress)>,
    /// Converts the stubs' time stamp counter values to recording time.
    clock: TscClock,
}

impl<'s, W: Write> Tracer<'s, W> {
    /// Prepares to trace the given functions.
    pub fn new(sink: &'s mut Sink<W>, funcs: &[TracedFn], opts: TraceOptions) -> Self {
        let clock = sink.clock();
        Tracer {
            sink,
            funcs: funcs.to_vec(),
            // Defined (their ids are the sink's), but hooked only if asked.
            names: funcs
                .iter()
                .filter(|_| opts.allocators)
                .map(|f| f.name)
                .collect(),
            select: None,
            selected_ids: HashMap::new(),
            refused: HashSet::new(),
            ifuncs: HashMap::new(),
            calls: None,
            imports: HashMap::new(),
            import_ids: HashMap::new(),
            before_entry: HashSet::new(),
            syscall_ids: HashMap::new(),
            opts,
            threads: HashMap::new(),
            procs: HashMap::new(),
            expected_new: HashMap::new(),
            early_stopped: HashSet::new(),
            exec_stepping: HashMap::new(),
            release_at_exec: HashSet::new(),
            root: 0,
            root_status: None,
            ranges: Vec::new(),
            buf: Vec::new(),
            ras: Vec::new(),
            handled_ints: 0,
            handled_terms: 0,
            handled_hups: 0,
            handled_total: 0,
            overflow_noted: HashSet::new(),
            attached: false,
            deadline: None,
            detach_requested: false,
            stopping: false,
            held: HashMap::new(),
            cur_clean: false,
            cur_group_stop: false,
            cur_syscall: false,
            progress: None,
            clock,
        }
    }

    /// Also traces the functions `sel` selects, in every module that defines them.
    pub fn with_selection(mut self, sel: &'s mut Selection) -> Self {
        self.select = Some(sel);
        self
    }

    /// Traces only the imports the `-e` chains `sel` select (all of them without).
    pub fn with_calls(mut self, sel: &'s mut Selection) -> Self {
        self.calls = Some(sel);
        self
    }

    /// Reports progress (attached, detaching) through `f`.
    pub fn with_progress(mut self, f: fn(&Progress)) -> Self {
        self.progress = Some(f);
        self
    }

    fn report(&self, p: Progress) {
        if let Some(f) = self.progress {
            f(&p);
        }
    }

    /// Traces a command started by [`spawn`] and its descendants to the end, and returns
    /// how the command ended.
    pub fn run(mut self, pid: u32) -> Result<ExitHow, TraceError> {
        install_signal_handlers();
        self.root = pid;
        let p = Pid::from_raw(pid as i32);
        let first = loop {
            match waitpid(p, Some(WaitPidFlag::__WALL)) {
                Err(Errno::EINTR) => continue,
                other => break other.map_err(pt("wait for the command to start"))?,
            }
        };
        match first {
            WaitStatus::Stopped(_, Signal::SIGTRAP) => {}
            WaitStatus::Exited(_, code) => return Ok(ExitHow::Code(code)),
            WaitStatus::Signaled(_, sig, _) => return Ok(ExitHow::Signal(sig as i32)),
            other => {
                return Err(TraceError::Ptrace {
                    what: format!("unexpected first stop {other:?}"),
                    source: Errno::EINVAL,
                });
            }
        }
        self.reseize(pid)?;
        self.threads.insert(pid, Thread::new(pid, Vec::new()));
        self.start_image(pid, 0, StartCause::Spawn)?;
        self.resume(pid, None)?;
        self.event_loop()?;
        self.note_unresolved_ifuncs()?;
        Ok(self.root_status.unwrap_or(ExitHow::Running))
    }

    /// Turns the `PTRACE_TRACEME` tracee, stopped at its first instruction, into a seized
    /// one, so that job control works as without a tracer (group-stops are reported and
    /// left in place with `PTRACE_LISTEN`). It is detached with SIGSTOP (it stops before
    /// running anything), seized while stopped, and sent SIGCONT.
    fn reseize(&mut self, pid: u32) -> Result<(), TraceError> {
        let p = Pid::from_raw(pid as i32);
        let options = PtOptions::PTRACE_O_TRACECLONE
            | PtOptions::PTRACE_O_TRACEFORK
            | PtOptions::PTRACE_O_TRACEVFORK
            | PtOptions::PTRACE_O_TRACEEXEC
            | PtOptions::PTRACE_O_TRACEEXIT
            | PtOptions::PTRACE_O_EXITKILL
            | self.syscall_option();
        ptrace::detach(p, Signal::SIGSTOP).map_err(pt("detach to re-seize"))?;
        let wait = |flags| loop {
            match waitpid(p, Some(flags)) {
                Err(Errno::EINTR) => continue,
                other => break other.map_err(pt("wait for the command to stop")),
            }
        };
        match wait(WaitPidFlag::WUNTRACED)? {
            WaitStatus::Stopped(_, Signal::SIGSTOP) => {}
            other => {
                return Err(TraceError::Ptrace {
                    what: format!("unexpected stop before seizing: {other:?}"),
                    source: Errno::EINVAL,
                })
            }
        }
        ptrace::seize(p, options).map_err(pt("seize the command"))?;
        // Seizing a stopped task makes it report its group-stop.
        match wait(WaitPidFlag::__WALL)? {
            WaitStatus::PtraceEvent(_, _, libc::PTRACE_EVENT_STOP) => {}
            other => {
                return Err(TraceError::Ptrace {
                    what: format!("unexpected stop after seizing: {other:?}"),
                    source: Errno::EINVAL,
                })
            }
        }
        // End the group-stop; the SIGCONT itself is delivered (and ignored) later.
        kill(p, Signal::SIGCONT).map_err(pt("continue the command"))?;
        Ok(())
    }

    fn event_loop(&mut self) -> Result<(), TraceError> {
        while !self.threads.is_empty() || !self.procs.is_empty() {
            self.on_interrupt();
            if self.attached {
                if !self.stopping
                    && (self.detach_requested || self.deadline.is_some_and(|d| Instant::now() >= d))
                {
                    self.report(Progress::Detaching { pid: self.root });
                    self.begin_stop();
                }
                if self.stopping && self.world_stopped() {
                    self.detach_all()?;
                    break;
                }
            }
            match self.wait_and_dispatch()? {
                Some(()) => {}
                None => break,
            }
        }
        set_timer(Duration::ZERO, false);
        // Anything still buffered (processes the loop lost track of) goes out in order.
        let pids: Vec<u32> = self.procs.keys().copied().collect();
        for pid in pids {
            self.drain(pid, u64::MAX)?;
        }
        Ok(())
    }

    /// Waits for one tracee event and handles it; `None` once there are no tracees.
    fn wait_and_dispatch(&mut self) -> Result<Option<()>, TraceError> {
        let status = match waitpid(None, Some(WaitPidFlag::__WALL)) {
            Ok(s) => s,
            Err(Errno::EINTR) => {
                self.on_interrupt();
                return Ok(Some(()));
            }
            Err(Errno::ECHILD) => return Ok(None),
            Err(e) => return Err(pt("wait for the tracee")(e)),
        };
        self.cur_clean = matches!(
            status,
            WaitStatus::Stopped(..) | WaitStatus::PtraceEvent(_, _, libc::PTRACE_EVENT_STOP)
        );
        self.cur_syscall = matches!(status, WaitStatus::PtraceSyscall(_));
        self.cur_group_stop = matches!(
            status,
            WaitStatus::PtraceEvent(_, sig, libc::PTRACE_EVENT_STOP) if sig != Signal::SIGTRAP
        );
        let (tid, handled) = match status {
            WaitStatus::Stopped(p, sig) => (p, self.on_stop(p.as_raw() as u32, sig)),
            WaitStatus::PtraceEvent(p, sig, ev) => (p, self.on_event(p.as_raw() as u32, sig, ev)),
            WaitStatus::PtraceSyscall(p) => (p, self.on_syscall(p.as_raw() as u32)),
            WaitStatus::Exited(p, code) => {
                (p, self.on_gone(p.as_raw() as u32, ExitHow::Code(code)))
            }
            WaitStatus::Signaled(p, sig, _) => (
                p,
                self.on_gone(p.as_raw() as u32, ExitHow::Signal(sig as i32)),
            ),
            _ => return Ok(Some(())),
        };
        match handled {
            Ok(()) => {}
            // Only a recording that cannot be written ends the run.
            Err(e @ TraceError::Format(_)) => return Err(e),
            Err(e) => {
                // One thread's trouble (it vanished mid-stop, say) must not take the
                // others down: say so in the recording and let the thread run.
                let raw = tid.as_raw() as u32;
                let pid = self.threads.get(&raw).map_or(raw, |t| t.pid);
                self.sink.note(pid, format!("thread {raw}: {e}"))?;
                let _ = self.resume(raw, None);
            }
        }
        self.sink.maybe_seal()?;
        Ok(Some(()))
    }

    /// Acts on signals sent to the recorder since the last call.
    fn on_interrupt(&mut self) {
        if signals_seen() == self.handled_total {
            return;
        }
        // Disarm before reading: a signal arriving after the read re-arms the timer.
        set_timer(Duration::ZERO, false);
        self.handled_total = signals_seen();
        if self.attached {
            // Not our process: every way of asking us to stop means "detach".
            let asked = SIGINTS.load(Ordering::SeqCst)
                + SIGTERMS.load(Ordering::SeqCst)
                + SIGHUPS.load(Ordering::SeqCst)
                + SIGALRMS.load(Ordering::SeqCst);
            self.detach_requested |= asked > 0;
            return;
        }
        for (counter, handled, sig) in [
            (&SIGTERMS, &mut self.handled_terms, Signal::SIGTERM),
            (&SIGHUPS, &mut self.handled_hups, Signal::SIGHUP),
        ] {
            let n = counter.load(Ordering::SeqCst);
            if n > *handled {
                *handled = n;
                // To the command; once it has exited, to whatever it left running.
                if self.procs.contains_key(&self.root) {
                    let _ = kill(Pid::from_raw(self.root as i32), sig);
                } else {
                    for &pid in self.procs.keys() {
                        let _ = kill(Pid::from_raw(pid as i32), sig);
                    }
                }
            }
        }
        // The terminal delivers Ctrl-C to the tracee too; only insistence kills it.
        let ints = SIGINTS.load(Ordering::SeqCst);
        if ints > self.handled_ints {
            self.handled_ints = ints;
            if ints >= 3 {
                for &pid in self.procs.keys() {
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                }
            }
        }
    }

    /// Lets a stopped thread run: to its next system call too with `-S`.
    fn restart(&self, p: Pid, sig: Option<Signal>) -> nix::Result<()> {
        if self.opts.syscalls {
            ptrace::syscall(p, sig)
        } else {
            ptrace::cont(p, sig)
        }
    }

    /// `PTRACE_O_TRACESYSGOOD` with `-S`, so that system call stops tell themselves apart.
    fn syscall_option(&self) -> PtOptions {
        if self.opts.syscalls {
            PtOptions::PTRACE_O_TRACESYSGOOD
        } else {
            PtOptions::empty()
        }
    }

    fn resume(&mut self, tid: u32, sig: Option<Signal>) -> Result<(), TraceError> {
        let mut sig = sig;
        if self.stopping && self.cur_syscall {
            // A system call stop (-S) is no place to borrow registers for the injected
            // clean-up: let the thread run to the interrupt, a stop that is.
            let p = Pid::from_raw(tid as i32);
            return match ptrace::cont(p, sig).and_then(|()| ptrace::interrupt(p)) {
                Ok(()) | Err(Errno::ESRCH) => Ok(()),
                Err(e) => Err(pt(format!("continue thread {tid} to its interrupt"))(e)),
            };
        }
        if self.stopping {
            let mut sigs: Vec<Signal> = sig.into_iter().collect();
            if let Some(p) = self.threads.get(&tid).and_then(|t| self.procs.get(&t.pid)) {
                let mut space = p.space.borrow_mut();
                space.deferred_signals.retain(|&(t, s)| {
                    if t == tid {
                        sigs.extend(Signal::try_from(s).ok());
                    }
                    t != tid
                });
            }
            let h = self.held.entry(tid).or_default();
            h.sigs.extend(sigs);
            h.clean = self.cur_clean;
            h.group_stop = self.cur_group_stop;
            return Ok(());
        }
        if let Some(t) = self.threads.get(&tid) {
            if let Some(p) = self.procs.get(&t.pid) {
                let mut space = p.space.borrow_mut();
                if let Some(i) = space.deferred_signals.iter().position(|(t, _)| *t == tid) {
                    let (_, s) = space.deferred_signals.remove(i);
                    if sig.is_none() {
                        sig = Signal::try_from(s).ok();
                    }
                }
            }
        }
        match self.restart(Pid::from_raw(tid as i32), sig) {
            // The thread may have been killed (exit_group from another thread) meanwhile.
            Ok(()) | Err(Errno::ESRCH) => Ok(()),
            Err(e) => Err(pt(format!("continue thread {tid}"))(e)),
        }
    }

    fn step(&mut self, tid: u32, sig: Option<Signal>) -> Result<(), TraceError> {
        match ptrace::step(Pid::from_raw(tid as i32), sig) {
            Ok(()) | Err(Errno::ESRCH) => Ok(()),
            Err(e) => Err(pt(format!("single-step thread {tid}"))(e)),
        }
    }

    /// Sets up a freshly exec'd image: stub region, modules, breakpoints.
    fn start_image(&mut self, pid: u32, parent: u32, cause: StartCause) -> Result<(), TraceError> {
        let mut space = Space::new(pid)?;
        // A program the kernel will not let us inject into (a seccomp filter, say) runs
        // on, followed but unrecorded, rather than ending the whole recording.
        let injected = space.inject_primary(pid);
        let path = std::fs::read_link(format!("/proc/{pid}/exe"))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        self.sink.process_start(pid, parent, cause, &path)?;
        self.before_entry.insert(pid);
        self.procs.insert(
            pid,
            Proc {
                space: Rc::new(RefCell::new(space)),
                quiet: false,
                tids: vec![pid],
                reorder: BTreeMap::new(),
                ctr: 0,
                last_seq: 0,
            },
        );
        match injected {
            Ok(()) => self.refresh_modules(pid, pid),
            Err(e) => {
                self.sink
                    .note(pid, format!("calls of {path} are not recorded: {e}"))?;
                Ok(())
            }
        }
    }

    /// Records modules that appeared or vanished and hooks the new ones.
    fn refresh_modules(&mut self, pid: u32, tid: u32) -> Result<(), TraceError> {
        let Some(proc_) = self.procs.get(&pid) else {
            return Ok(());
        };
        let space_rc = proc_.space.clone();
        let mut space = space_rc.borrow_mut();
        let (added, removed) = space.scan_modules()?;
        for id in removed {
            self.sink.module_unload(id)?;
        }
        for m in added {
            let id = self
                .sink
                .module(pid, &m.path, &m.elf.build_id, m.bias, m.start, m.end)?;
            space.register_module(id, &m);
            let is_exe = std::fs::read_link(format!("/proc/{pid}/exe"))
                .is_ok_and(|p| p.as_os_str() == m.path.as_str());
            let file = std::path::Path::new(&m.path)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            if self.opts.skip_module.as_deref() == Some(file.as_str()) {
                tell_agent(pid, &space, &m);
            }
            // The C++ runtime's unwinder (libgcc_s, or a copy linked into the program),
            // told about the stubs at the program's entry.
            if file.starts_with("libgcc_s.so") || is_exe {
                if let Some(a) = m.elf.symbol_address("__register_frame_info") {
                    space.note_unwinder(m.bias.wrapping_add(a));
                }
            }
            if !is_exe {
                self.callee_prototypes(pid, &m)?;
                // Where `-l` looks for the library defining an import, in load order.
                if self.opts.skip_module.as_deref() != Some(file.as_str()) {
                    if let Some(i) = self.imports.get_mut(&pid) {
                        i.libraries.push(m.path.clone());
                    }
                }
            }
            let mut defs = m.elf.defined_functions(&self.names, is_exe);
            // Aliases share an address; the first name in the table names the hook.
            defs.sort_by_key(|&(i, addr)| (addr, i));
            for (i, svma) in defs {
                if let Err(e) = space.insert_bp(tid, m.bias + svma, BpKind::Call(i as u32)) {
                    self.sink.note(
                        pid,
                        format!("{} in {} is not traced: {e}", self.names[i], m.path),
                    )?;
                }
            }
            if self.select.is_some() {
                self.hook_selected(pid, tid, &mut space, &m, is_exe)?;
            }
            // The imports are traced by default, and lead `-x` to the IFUNCs it selects.
            if is_exe && (self.opts.imports || self.select.is_some()) {
                let exe = std::path::Path::new(&m.path)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let (all, calls) = (self.opts.imports, &mut self.calls);
                let imports = imports::Imports::of(&m, |name| {
                    all && calls
                        .as_deref_mut()
                        .is_none_or(|s| s.selects(name, &exe, true))
                });
                if !imports.is_empty() {
                    self.imports.insert(pid, imports);
                }
            }
            if is_exe && self.imports.contains_key(&pid) {
                match procfs::auxv_entry(pid) {
                    // Attached (entry long passed): resolved at setup instead.
                    Some(entry) if self.before_entry.contains(&pid) => {
                        if let Err(e) = space.insert_bp(tid, entry, BpKind::Entry) {
                            self.sink.note(
                                pid,
                                format!(
                                    "calls through the program's imports and IFUNCs selected \
                                     with -x are not traced: {e}"
                                ),
                            )?;
                        }
                    }
                    _ => {}
                }
            }
            if let Some(a) = m.elf.symbol_address("_dl_debug_state") {
                if let Err(e) = space.insert_bp(tid, m.bias + a, BpKind::DlDebugState) {
                    self.sink.note(
                        pid,
                        format!("modules loaded later by {} are not seen: {e}", m.path),
                    )?;
                }
            }
        }
        Ok(())
    }

    /// Registers the return stubs' call frame information with process `pid`'s C++
    /// unwinder, so that exceptions pass through traced calls; says so if it cannot.
    fn describe_stubs(&mut self, pid: u32, tid: u32) -> Result<(), FormatError> {
        let Some(space) = self.procs.get(&pid).map(|p| p.space.clone()) else {
            return Ok(());
        };
        let done = space.borrow_mut().describe_stubs(tid);
        if let Err(e) = done {
            self.sink.note(
                pid,
                format!(
                    "a C++ exception thrown through a traced call will end the program: \
                     its unwinder could not be told about the return stubs ({e})"
                ),
            )?;
        }
        Ok(())
    }

    /// Places breakpoints on the functions of module `m` that the `-x` filters select.
    fn hook_selected(
        &mut self,
        pid: u32,
        tid: u32,
        space: &mut Space,
        m: &crate::record::ptrace::space::NewModule,
        is_exe: bool,
    ) -> Result<(), TraceError> {
        let Some(sel) = self.select.as_deref_mut() else {
            return Ok(());
        };
        let base = std::path::Path::new(&m.path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if self.opts.skip_module.as_deref() == Some(base.as_str()) {
            return Ok(());
        }
        let mut syms: Vec<(String, u64, bool)> = m
            .elf
            .function_symbols(is_exe)
            .into_iter()
            .filter(|(name, _, _)| sel.selects(name, &base, is_exe))
            .collect();
        // Aliases share an address: the public name (no leading underscore) names the hook.
        syms.sort_by(|a, b| {
            (a.1, a.0.starts_with('_'), &a.0).cmp(&(b.1, b.0.starts_with('_'), &b.0))
        });
        let mut irelative: Option<Vec<(u64, u64)>> = None;
        for (name, svma, ifunc) in syms {
            if self.names.contains(&name.as_str()) {
                continue; // the allocator family is hooked already
            }
            if ifunc {
                // Its symbol is the resolver; the implementation chosen at run time is
                // found in a bound GOT slot once relocations are done (at the entry).
                let irel = irelative.get_or_insert_with(|| m.elf.irelative_slots());
                self.ifuncs
                    .entry((pid, name.clone()))
                    .or_insert_with(|| Ifunc {
                        lo: m.start,
                        hi: m.end,
                        path: m.path.clone(),
                        irelative: irel
                            .iter()
                            .filter(|(_, resolver)| *resolver == svma)
                            .map(|(slot, _)| m.bias + slot)
                            .collect(),
                    });
                continue;
            }
            let why = if rltrace_wire::NEVER_HOOKED
                .iter()
                .chain(UNHOOKABLE)
                .any(|p| glob(p, &name))
            {
                Some("it manipulates its caller's stack or return address")
            } else {
                None
            };
            if let Some(why) = why {
                if self.refused.insert(name.clone()) {
                    self.sink
                        .note(pid, format!("{name} in {} is not traced: {why}", m.path))?;
                }
                continue;
            }
            let id = self.selected_id(&name)?;
            if let Err(e) = space.insert_bp(tid, m.bias + svma, BpKind::Call(id)) {
                self.sink
                    .note(pid, format!("{name} in {} is not traced: {e}", m.path))?;
            }
        }
        Ok(())
    }

    /// The function id of a name selected with `-x`, defining it on first use.
    fn selected_id(&mut self, name: &str) -> Result<u32, TraceError> {
        if let Some(&id) = self.selected_ids.get(name) {
            return Ok(id);
        }
        let id = self.define(name, Origin::Hooked)?;
        self.selected_ids.insert(name.to_string(), id);
        Ok(id)
    }

    /// Defines a function found while recording, with its prototype's signature; its id.
    fn define(&mut self, name: &str, origin: Origin) -> Result<u32, FormatError> {
        let (nargs, returns) = funcs::signature(name);
        let f = TracedFn {
            // One leaked string per distinct traced name, for the whole run.
            name: Box::leak(name.to_string().into_boxed_str()),
            class: FnClass::Other,
            nargs,
            returns,
        };
        let id = self
            .sink
            .function_named(f.name, f.class, f.returns, origin)?;
        debug_assert_eq!(id as usize, self.funcs.len());
        self.funcs.push(f);
        Ok(id)
    }

    /// At the program's entry (relocations done), hooks the implementations the selected
    /// IFUNCs resolved to: read from the program's GOT slots for them, else from their
    /// library's own `IRELATIVE` slots (which its internal calls go through). With lazy
    /// binding and neither, the program's PLT entry for it is hooked instead, which sees
    /// the program's own calls only, and the recording says so.
    fn resolve_ifuncs(&mut self, pid: u32, tid: u32) -> Result<(), TraceError> {
        let Some(space_rc) = self.procs.get(&pid).map(|p| p.space.clone()) else {
            return Ok(());
        };
        let read = |slot: u64| space_rc.borrow().read_u64(slot, "read a GOT slot").ok();
        let ifuncs = &self.ifuncs;
        let exe_slots = self.imports.get(&pid).map(|i| &i.slots[..]).unwrap_or(&[]);
        // The program's slots for the selected IFUNCs, bound into their library.
        let ifunc_of = |s: &imports::Slot| ifuncs.get(&(pid, s.name.clone()));
        let mut found =
            imports::hook_points(exe_slots.iter().filter(|s| ifunc_of(s).is_some()), |s| {
                let f = ifunc_of(s)?;
                read(s.at).filter(|t| (f.lo..f.hi).contains(t))
            });
        for ((p, name), f) in ifuncs {
            if *p != pid {
                continue;
            }
            let e = found.entry(name.clone()).or_default();
            if e.0.is_none() {
                e.0 = f
                    .irelative
                    .iter()
                    .filter_map(|&s| read(s))
                    .find(|t| (f.lo..f.hi).contains(t));
            }
        }
        for (name, (bound, plt)) in found {
            let path = self
                .ifuncs
                .get(&(pid, name.clone()))
                .map(|i| i.path.clone())
                .unwrap_or_default();
            let (at, partial) = match (bound, plt) {
                (Some(t), _) => (Some(t), false),
                (None, Some(e)) => (Some(e), true),
                (None, None) => (None, false),
            };
            let why = match at {
                Some(at) => {
                    let id = self.selected_id(&name)?;
                    space_rc
                        .borrow_mut()
                        .insert_bp(tid, at, BpKind::Call(id))
                        .err()
                }
                None => Some(
                    "it is a GNU IFUNC that neither the program's GOT nor its library's own \
                     relocations lead to (with lazy binding, LD_BIND_NOW=1 may)"
                        .to_string(),
                ),
            };
            if let Some(why) = why {
                if self.refused.insert(name.clone()) {
                    self.sink
                        .note(pid, format!("{name} in {path} is not traced: {why}"))?;
                }
            } else if partial && self.refused.insert(name.clone()) {
                self.sink.note(
                    pid,
                    format!(
                        "{name} in {path}: only the program's own calls are traced, at its PLT \
                         entry: it is a GNU IFUNC, and no bound GOT slot leads to an \
                         implementation in that library (lazy binding, or one outside it, \
                         such as the vDSO's; LD_BIND_NOW=1 may help)"
                    ),
                )?;
            }
        }
        Ok(())
    }

    /// Notes the selected IFUNCs that no GOT slot led to.
    pub(super) fn note_unresolved_ifuncs(&mut self) -> Result<(), TraceError> {
        let mut names: Vec<(String, String)> = self
            .ifuncs
            .iter()
            .filter(|((_, n), _)| !self.selected_ids.contains_key(n) && !self.refused.contains(n))
            .map(|((_, n), f)| (n.clone(), f.path.clone()))
            .collect();
        names.sort();
        names.dedup();
        for (name, path) in names {
            self.sink.note(
                self.root,
                format!(
                    "{name} in {path} is not traced: it is a GNU IFUNC, and only a bound GOT \
                     slot (the program's, or its library's own) leads to the implementation"
                ),
            )?;
        }
        Ok(())
    }

    /// First stop of a new thread or process: waits for its creator's event if needed.
    fn on_first_stop(&mut self, tid: u32) -> Result<(), TraceError> {
        if let Some(nt) = self.expected_new.remove(&tid) {
            self.attach_new(tid, nt)?;
            return self.resume(tid, None);
        }
        self.early_stopped.insert(tid);
        Ok(())
    }

    fn on_stop(&mut self, tid: u32, sig: Signal) -> Result<(), TraceError> {
        if !self.threads.contains_key(&tid) {
            return self.on_first_stop(tid);
        }
        if let Some(waiting) = self.exec_stepping.get_mut(&tid) {
            if sig != Signal::SIGTRAP {
                // A signal arrived first: deliver it once the new image is set up.
                waiting.push(sig);
                return self.step(tid, None);
            }
            let waiting = self.exec_stepping.remove(&tid).unwrap_or_default();
            self.start_image(tid, 0, StartCause::Exec)?;
            if let Some(p) = self.procs.get(&tid) {
                let mut space = p.space.borrow_mut();
                space
                    .deferred_signals
                    .extend(waiting.iter().map(|s| (tid, *s as i32)));
            }
            return self.resume(tid, None);
        }
        if sig == Signal::SIGTRAP {
            let regs = match mem::get_regs(tid) {
                Ok(r) => r,
                // Killed while stopped (exit_group from another thread): its exit follows.
                Err(Errno::ESRCH) => return Ok(()),
                Err(e) => return Err(pt(format!("registers of thread {tid}"))(e)),
            };
            let addr = regs.rip.wrapping_sub(1);
            let pid = self.threads[&tid].pid;
            let bp = self
                .procs
                .get(&pid)
                .and_then(|p| p.space.borrow().bps.get(&addr).copied());
            if let Some(bp) = bp {
                // Redirect first: a recorder killed while it handles this stop leaves the
                // thread to run on, and the kernel does not deliver it the SIGTRAP again,
                // so it must not be left just past the `int3`, mid-instruction.
                let mut r = regs;
                r.rip = bp.tramp;
                match mem::set_regs(tid, r) {
                    Ok(()) => {}
                    Err(Errno::ESRCH) => return Ok(()),
                    Err(e) => {
                        return Err(pt(format!("redirect thread {tid} to its trampoline"))(e))
                    }
                }
                match bp.kind {
                    BpKind::Call(f) => self.on_call(tid, pid, regs, addr, f)?,
                    BpKind::DlDebugState => self.refresh_modules(pid, tid)?,
                    BpKind::Entry => {
                        self.before_entry.remove(&pid);
                        self.resolve_ifuncs(pid, tid)?;
                        self.hook_imports(pid, tid)?;
                        self.describe_stubs(pid, tid)?;
                    }
                }
                return self.resume(tid, None);
            }
        }
        if matches!(
            sig,
            Signal::SIGSTOP | Signal::SIGTSTP | Signal::SIGTTIN | Signal::SIGTTOU
        ) && ptrace::getsiginfo(Pid::from_raw(tid as i32)).is_err()
        {
            // Group-stop (not a signal to deliver): let the thread go on.
            return self.resume(tid, None);
        }
        if is_crash(sig) {
            let pid = self.threads[&tid].pid;
            if !procfs::catches_signal(pid, sig as i32) {
                self.on_crash(tid, pid, sig)?;
            }
        }
        self.resume(tid, Some(sig))
    }

    /// Stack bytes to copy at thread `tid`'s stop: as deep as its last unwind needed.
    fn stack_read_len(&self, tid: u32) -> usize {
        self.threads
            .get(&tid)
            .map_or(0, |t| t.stack_read)
            .max(self.opts.stack_bytes)
    }

    /// The stack of thread `tid`, stopped at `regs.rip` (an instruction, not a function's
    /// entry), from `len` bytes of it, and the sequence counter, read together.
    fn stack_at_stop(
        &mut self,
        tid: u32,
        space: &mut Space,
        seq_addr: u64,
        regs: &Regs,
        len: usize,
    ) -> (Vec<crate::format::Frame>, Option<u64>) {
        let (got, header, seq) = self.read_polled(tid, seq_addr, space, &[], Some((regs.rsp, len)));
        let stack = self.buf.get(header..got.max(header)).unwrap_or(&[]);
        let frames = space.frames_at(
            regs.rip,
            regs.rsp,
            regs.rbp,
            self.opts.max_depth,
            stack,
            &mut self.ras,
        );
        (frames, seq)
    }

    /// Records a fatal signal with the stack of the thread it struck, unwound from the
    /// faulting instruction, before the signal is delivered and the process dies.
    fn on_crash(&mut self, tid: u32, pid: u32, sig: Signal) -> Result<(), TraceError> {
        let ts = self.sink.now();
        let p = Pid::from_raw(tid as i32);
        let (code, addr) = match ptrace::getsiginfo(p) {
            // SAFETY: si_addr reads the pointer-sized member of siginfo's union; for signals
            // without an address the kernel leaves it zero, and reading it is a plain copy.
            Ok(info) => (info.si_code, unsafe { info.si_addr() } as u64),
            Err(_) => (0, 0),
        };
        let Ok(regs) = mem::get_regs(tid) else {
            return Ok(());
        };
        let Some(proc_) = self.procs.get(&pid) else {
            return Ok(());
        };
        let space_rc = proc_.space.clone();
        let mut space = space_rc.borrow_mut();
        let Some(seq_addr) = space.seq_addr() else {
            return Ok(());
        };
        let len = self.opts.max_stack_bytes;
        let (frames, seq) = self.stack_at_stop(tid, &mut space, seq_addr, &regs, len);
        let seq = seq.unwrap_or(0);
        drop(space);
        if let Some(proc_) = self.procs.get_mut(&pid) {
            proc_.last_seq = proc_.last_seq.max(seq);
            let at = proc_.last_seq;
            proc_.buffer(
                at,
                0,
                Event::Signal {
                    pid,
                    tid,
                    ts,
                    signo: sig as i32,
                    code,
                    addr,
                    frames,
                },
            );
        }
        self.release(pid)
    }

    fn on_event(&mut self, tid: u32, sig: Signal, ev: i32) -> Result<(), TraceError> {
        let p = Pid::from_raw(tid as i32);
        match ev {
            // Seized tracees: a new task's first stop, an interrupt, or a group-stop.
            libc::PTRACE_EVENT_STOP if !self.threads.contains_key(&tid) => self.on_first_stop(tid),
            libc::PTRACE_EVENT_STOP
                if self.stopping
                    && sig == Signal::SIGTRAP
                    && procfs::thread_signal_pending(tid, libc::SIGTRAP) =>
            {
                // The interrupt overtook the SIGTRAP of a breakpoint it had just hit (the
                // kernel takes job-control traps before queued signals). Held here, it would
                // get that SIGTRAP after the detach, with no breakpoint left to explain it:
                // let it report the breakpoint first.
                match self.restart(p, None) {
                    Ok(()) | Err(Errno::ESRCH) => Ok(()),
                    Err(e) => Err(pt(format!("continue thread {tid}"))(e)),
                }
            }
            libc::PTRACE_EVENT_STOP if sig != Signal::SIGTRAP && !self.stopping => {
                // Group-stop: stay stopped (as without a tracer) until SIGCONT.
                listen(tid)
            }
            libc::PTRACE_EVENT_EXEC if self.stopping => {
                // Detaching: the new image has no breakpoints; hold it as it is.
                self.on_exec(tid)?;
                self.resume(tid, None)
            }
            libc::PTRACE_EVENT_CLONE | libc::PTRACE_EVENT_FORK | libc::PTRACE_EVENT_VFORK => {
                let new = ptrace::getevent(p).map_err(pt("read the new task id"))? as u32;
                let Some(parent) = self.threads.get(&tid) else {
                    return self.resume(tid, None);
                };
                let pid = parent.pid;
                let nt = match ev {
                    libc::PTRACE_EVENT_FORK => NewTask::Process {
                        parent_tid: tid,
                        shared: false,
                        cause: StartCause::Fork,
                    },
                    libc::PTRACE_EVENT_VFORK => NewTask::Process {
                        parent_tid: tid,
                        shared: true,
                        cause: StartCause::Vfork,
                    },
                    _ if procfs::tgid_of(new).is_none_or(|g| g == pid) => NewTask::Thread { pid },
                    _ => {
                        let shared = self.clone_shares_vm(tid);
                        NewTask::Process {
                            parent_tid: tid,
                            shared,
                            cause: if shared {
                                StartCause::Vfork
                            } else {
                                StartCause::Fork
                            },
                        }
                    }
                };
                if self.early_stopped.remove(&new) {
                    self.attach_new(new, nt)?;
                    self.resume(new, None)?;
                } else {
                    self.expected_new.insert(new, nt);
                }
                self.resume(tid, None)
            }
            libc::PTRACE_EVENT_EXEC if self.release_at_exec.remove(&tid) => {
                // A vfork child not followed: its new image has no breakpoints; let it go.
                self.on_exec(tid)?;
                self.threads.remove(&tid);
                match ptrace::detach(Pid::from_raw(tid as i32), None) {
                    Ok(()) | Err(Errno::ESRCH) => Ok(()),
                    Err(e) => Err(pt(format!("detach process {tid}"))(e)),
                }
            }
            libc::PTRACE_EVENT_EXEC => {
                self.on_exec(tid)?;
                // The exec stop is inside execve: registers changed now would be overwritten
                // by its return. Step one instruction into the new image and set it up there.
                self.exec_stepping.insert(tid, Vec::new());
                self.step(tid, None)
            }
            libc::PTRACE_EVENT_EXIT => {
                self.finish_thread_calls(tid)?;
                self.resume(tid, None)
            }
            _ => self.resume(tid, None),
        }
    }

    /// For a `clone` that made a new process: did it share the address space?
    fn clone_shares_vm(&self, tid: u32) -> bool {
        let Ok(regs) = mem::get_regs(tid) else {
            return false;
        };
        let flags = if regs.orig_rax == libc::SYS_clone as u64 {
            regs.rdi
        } else if regs.orig_rax == libc::SYS_clone3 as u64 {
            let mut b = [0u8; 8];
            match mem::readv(tid, &[(regs.rdi, 8)], &mut b) {
                Ok(8) => u64::from_le_bytes(b),
                _ => 0,
            }
        } else {
            0
        };
        flags & libc::CLONE_VM as u64 != 0
    }

    fn attach_new(&mut self, new: u32, nt: NewTask) -> Result<(), TraceError> {
        match nt {
            NewTask::Thread { pid } => {
                self.threads.insert(new, Thread::new(pid, Vec::new()));
                if let Some(p) = self.procs.get_mut(&pid) {
                    p.tids.push(new);
                }
            }
            NewTask::Process {
                parent_tid,
                shared,
                cause,
            } => {
                let Some(parent) = self.threads.get(&parent_tid) else {
                    return Ok(());
                };
                let parent_pid = parent.pid;
                if !self.opts.follow && !shared {
                    // Its memory is a copy: take our breakpoints out of it and let it go.
                    if let Some(pp) = self.procs.get(&parent_pid) {
                        pp.space.borrow().fork_for(new)?.remove_breakpoints()?;
                    }
                    return match ptrace::detach(Pid::from_raw(new as i32), None) {
                        Ok(()) | Err(Errno::ESRCH) => Ok(()),
                        Err(e) => Err(pt(format!("detach process {new}"))(e)),
                    };
                }
                let quiet = !self.opts.follow;
                if quiet {
                    self.release_at_exec.insert(new);
                }
                // A forked child returns through the same stubs as its parent thread.
                let pending = if shared {
                    Vec::new()
                } else {
                    parent.pending.clone()
                };
                let Some(pp) = self.procs.get(&parent_pid) else {
                    return Ok(());
                };
                let space = if shared {
                    pp.space.clone()
                } else {
                    Rc::new(RefCell::new(pp.space.borrow().fork_for(new)?))
                };
                let last_seq = pp.last_seq;
                self.threads.insert(new, Thread::new(new, pending));
                self.procs.insert(
                    new,
                    Proc {
                        space,
                        quiet,
                        tids: vec![new],
                        reorder: BTreeMap::new(),
                        ctr: 0,
                        last_seq,
                    },
                );
                let path = std::fs::read_link(format!("/proc/{new}/exe"))
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                if !quiet {
                    self.sink.process_start(new, parent_pid, cause, &path)?;
                }
            }
        }
        Ok(())
    }

    fn on_exec(&mut self, pid: u32) -> Result<(), TraceError> {
        // Every thread of the old image is gone; their open calls never return.
        let Some(old) = self.procs.get(&pid) else {
            return Ok(());
        };
        let tids = old.tids.clone();
        for t in &tids {
            if let Some(th) = self.threads.get_mut(t) {
                let n = th.pending.len();
                th.pending.clear();
                let p = self.procs.get_mut(&pid).expect("checked above");
                for _ in 0..n {
                    p.buffer(p.last_seq, 0, Event::never_returned(pid, *t));
                }
            }
        }
        self.drain(pid, u64::MAX)?;
        for t in &tids {
            self.threads.remove(t);
        }
        if let Some(old) = self.procs.remove(&pid) {
            if Rc::strong_count(&old.space) == 1 {
                for id in old.space.borrow_mut().clear() {
                    self.sink.module_unload(id)?;
                }
            }
        }
        self.threads.insert(pid, Thread::new(pid, Vec::new()));
        Ok(())
    }

    fn on_gone(&mut self, tid: u32, how: ExitHow) -> Result<(), TraceError> {
        self.early_stopped.remove(&tid);
        self.exec_stepping.remove(&tid);
        self.release_at_exec.remove(&tid);
        let Some(th) = self.threads.remove(&tid) else {
            return Ok(());
        };
        let pid = th.pid;
        if !th.pending.is_empty() {
            if let Some(p) = self.procs.get_mut(&pid) {
                for _ in &th.pending {
                    p.buffer(p.last_seq, 0, Event::never_returned(pid, tid));
                }
            }
        }
        if let Some(p) = self.procs.get_mut(&pid) {
            p.tids.retain(|&t| t != tid);
        }
        if tid == pid {
            self.drain(pid, u64::MAX)?;
            // Threads the kernel reaped with the leader go with it.
            let mut quiet = false;
            if let Some(p) = self.procs.remove(&pid) {
                quiet = p.quiet;
                for t in p.tids {
                    self.threads.remove(&t);
                }
            }
            if !quiet {
                self.sink.process_exit(pid, how)?;
            }
            if pid == self.root {
                self.root_status = Some(how);
            }
        }
        Ok(())
    }

    /// At a thread's exit stop, collects the returns of its calls that completed, and
    /// marks the rest as never returning.
    fn finish_thread_calls(&mut self, tid: u32) -> Result<(), TraceError> {
        let Some(pid) = self.threads.get(&tid).map(|t| t.pid) else {
            return Ok(());
        };
        let Some(p) = self.procs.get(&pid) else {
            return Ok(());
        };
        let space_rc = p.space.clone();
        let space = space_rc.borrow();
        let Some(seq_addr) = space.seq_addr() else {
            return Ok(());
        };
        let pending = std::mem::take(&mut self.threads.get_mut(&tid).expect("checked").pending);
        let (got, header, seq_now) = self.read_polled(tid, seq_addr, &space, &pending, None);
        let results = parse_poll(&self.buf[..got.min(header)], &pending);
        drop(space);
        let proc_ = self.procs.get_mut(&pid).expect("checked above");
        proc_.last_seq = proc_.last_seq.max(seq_now.unwrap_or(0));
        for (i, pc) in pending.iter().enumerate().rev() {
            let (seq, kind, ret, out, ts) = match results[i] {
                Some((seq, ret, out, tsc)) => (
                    seq,
                    1,
                    Some(ret),
                    pc.has_out.then_some(out),
                    Some(self.clock.to_ns(tsc)),
                ),
                None => (proc_.last_seq, 0, None, None, None),
            };
            proc_.buffer(
                seq,
                kind,
                Event::Exit {
                    pid,
                    tid,
                    ret,
                    out,
                    ts,
                    data: Vec::new(),
                },
            );
            space_rc.borrow_mut().free_slot(pc.slot);
        }
        self.release(pid)
    }

    /// Reads, in one `process_vm_readv`: the sequence counter, the done byte of each
    /// pending call, their (seq, ret, out) fields, the counter again, then `stack` pages.
    /// Done bytes come before the fields (the stub sets `done` last), and the counter is read
    /// twice because another thread's `lock xadd` can tear a single read; the read is retried
    /// while the two disagree. Returns (bytes read, header length, counter if consistent).
    fn read_polled(
        &mut self,
        tid: u32,
        seq_addr: u64,
        space: &Space,
        pending: &[Pending],
        stack: Option<(u64, usize)>,
    ) -> (usize, usize, Option<u64>) {
        self.ranges.clear();
        self.ranges.push((seq_addr, 8));
        for p in pending {
            self.ranges.push((space.slot_addr(p.slot) + slot::DONE, 1));
        }
        for p in pending {
            self.ranges
                .push((space.slot_addr(p.slot) + slot::SEQ, POLLED_FIELDS));
        }
        self.ranges.push((seq_addr, 8));
        let header: usize = self.ranges.iter().map(|r| r.1).sum();
        if let Some((sp, len)) = stack {
            push_stack_pages(&mut self.ranges, sp, len);
        }
        self.buf.resize(self.ranges.iter().map(|r| r.1).sum(), 0);
        let mut got = 0;
        for _ in 0..16 {
            got = mem::readv(tid, &self.ranges, &mut self.buf).unwrap_or(0);
            if got < header {
                return (got, header, None);
            }
            let (first, second) = (le(&self.buf, 0), le(&self.buf, header - 8));
            if first == second {
                return (got, header, Some(first));
            }
        }
        (got, header, None)
    }

    fn on_call(
        &mut self,
        tid: u32,
        pid: u32,
        regs: Regs,
        addr: u64,
        f: u32,
    ) -> Result<(), TraceError> {
        let Some(proc_) = self.procs.get(&pid) else {
            return Ok(());
        };
        let space_rc = proc_.space.clone();
        let mut space = space_rc.borrow_mut();
        let Some(seq_addr) = space.seq_addr() else {
            return Ok(());
        };
        // Calls still awaiting collection: this thread's, then other threads' (which lets
        // events be released sooner), within the kernel's limit of iovecs per read.
        let mut polled: Vec<(u32, Pending)> = Vec::new();
        let others = proc_.tids.iter().filter(|&&t| t != tid);
        for &t in std::iter::once(&tid).chain(others) {
            if let Some(th) = self.threads.get(&t) {
                let room = MAX_POLLED.saturating_sub(polled.len());
                polled.extend(th.pending.iter().take(room).map(|p| (t, *p)));
            }
        }
        let polled_calls: Vec<Pending> = polled.iter().map(|p| p.1).collect();
        let read_len = self.stack_read_len(tid);
        let (got, header, seq_read) = self.read_polled(
            tid,
            seq_addr,
            &space,
            &polled_calls,
            Some((regs.rsp, read_len)),
        );
        if got < header {
            // The slot area is unreadable: the tracee unmapped it. Nothing can be trusted.
            self.sink.dropped(1);
            return Ok(());
        }
        let results = parse_poll(&self.buf[..header], &polled_calls);
        let proc_ = self.procs.get_mut(&pid).expect("checked above");
        // Never consistent after retries (threads returning nonstop): the last consistent
        // value is a safe lower bound.
        let seq_now = seq_read.unwrap_or(proc_.last_seq);
        proc_.last_seq = proc_.last_seq.max(seq_now);

        // Collect returns (innermost first within a thread, which their seq order gives).
        let mut by_thread: HashMap<u32, Vec<(Pending, Returned)>> = HashMap::new();
        for ((t, p), r) in polled.iter().zip(results.iter()) {
            by_thread.entry(*t).or_default().push((*p, *r));
        }
        let stack = &self.buf[header..got];
        let ra_raw = (stack.len() >= 8).then(|| le(stack, 0));
        for (t, calls) in by_thread {
            let mut keep = Vec::new();
            for (p, r) in calls.into_iter().rev() {
                if let Some((seq, ret, out, tsc)) = r {
                    proc_.buffer(
                        seq,
                        1,
                        Event::Exit {
                            pid,
                            tid: t,
                            ret: Some(ret),
                            out: p.has_out.then_some(out),
                            ts: Some(self.clock.to_ns(tsc)),
                            data: Vec::new(),
                        },
                    );
                    space.free_slot(p.slot);
                } else if t == tid
                    && (p.entry_rsp < regs.rsp
                        || (p.entry_rsp == regs.rsp && ra_raw != Some(space.stub_addr(p.slot))))
                {
                    // Its frame is gone (longjmp, exception): it will never return.
                    proc_.buffer(seq_now, 0, Event::never_returned(pid, t));
                    space.free_slot(p.slot);
                } else {
                    keep.push(p);
                }
            }
            keep.reverse();
            if let Some(th) = self.threads.get_mut(&t) {
                th.pending = keep;
            }
        }

        // Unwind from the function entry.
        self.ras.clear();
        let u = space.unwind(
            addr,
            regs.rsp,
            regs.rbp,
            self.opts.max_depth,
            stack,
            &mut self.ras,
        );
        let mut used = u.used;
        if u.overran
            && !u.complete
            && stack.len() == read_len
            && read_len < self.opts.max_stack_bytes
        {
            // The stack goes deeper than this read: copy the rest once.
            let mut big = Vec::new();
            push_stack_pages(&mut big, regs.rsp, self.opts.max_stack_bytes);
            let mut data = vec![0u8; big.iter().map(|r| r.1).sum()];
            let n = mem::readv(tid, &big, &mut data).unwrap_or(0);
            self.ras.clear();
            used = space
                .unwind(
                    addr,
                    regs.rsp,
                    regs.rbp,
                    self.opts.max_depth,
                    &data[..n],
                    &mut self.ras,
                )
                .used;
        }
        if let Some(th) = self.threads.get_mut(&tid) {
            // Next time, read as deep as this unwind needed, plus slack.
            th.stack_read = (used + 1024)
                .next_multiple_of(4096)
                .clamp(self.opts.stack_bytes, self.opts.max_stack_bytes);
        }
        let frames = self.ras.iter().map(|&a| space.frame(a)).collect();
        // One breakpoint for several imports (memcpy and memmove): the call site names it.
        let f = ra_raw.and_then(|ra| space.alias_at(addr, ra)).unwrap_or(f);
        let func = &self.funcs[f as usize];
        let gpr = [regs.rdi, regs.rsi, regs.rdx, regs.rcx, regs.r8, regs.r9];
        let proto = match func.class {
            FnClass::Other => crate::protos::lookup(func.name),
            _ => None,
        };
        let vector = proto
            .filter(|p| p.needs_vector(regs.rax))
            .map(|_| mem::get_xmm(tid));
        let args = match (proto, vector) {
            // The vector registers are unreadable (the thread is gone): the integer
            // registers alone, which replay shows as such.
            (_, Some(Err(_))) | (None, _) => gpr[..usize::from(func.nargs).min(6)].to_vec(),
            (Some(p), xmm) => {
                let xmm = xmm.and_then(Result::ok).unwrap_or_default();
                let mut values = [0; rltrace_wire::protos::MAX_VALUES];
                let n = p.values(&gpr, &xmm, regs.rax, &mut values);
                values[..n].to_vec()
            }
        };
        let data = match proto {
            Some(p) => capture_args(tid, p, &args, regs.rsp + 8, self.opts.string_limit),
            None => Vec::new(),
        };
        // The call's start, for durations: taken as late as possible, just before the
        // thread is let go, so the time rltrace spent at this stop is not counted in it.
        let ts = self.sink.now();
        self.clock.observe(ts, rdtsc());
        proc_.buffer(
            seq_now,
            0,
            Event::Enter {
                pid,
                tid,
                ts,
                func: f,
                args,
                frames,
                data,
            },
        );

        if func.returns {
            let hooked = ra_raw.and_then(|ra| {
                let real = space.real_retaddr(ra);
                let i = space.alloc_slot(real)?;
                let out_ptr = (func.class == FnClass::PosixMemalign).then_some(regs.rdi);
                let init = space.slot_init(i, ra, out_ptr);
                let stub = space.stub_addr(i).to_le_bytes();
                match mem::writev(tid, &[(space.slot_addr(i), &init), (regs.rsp, &stub)]) {
                    Ok(()) => Some(Pending {
                        slot: i,
                        entry_seq: seq_now,
                        entry_rsp: regs.rsp,
                        has_out: out_ptr.is_some(),
                        vector_ret: proto.is_some_and(|p| p.ret.is_vector()),
                        holds: func.class != FnClass::Other,
                    }),
                    Err(_) => {
                        space.free_slot(i);
                        None
                    }
                }
            });
            match hooked {
                Some(p) => {
                    if let Some(th) = self.threads.get_mut(&tid) {
                        th.pending.push(p);
                    }
                }
                None => {
                    // No way to see the return: say so rather than invent a value.
                    proc_.buffer(seq_now, 0, Event::never_returned(pid, tid));
                    self.sink.dropped(1);
                }
            }
        }
        drop(space);
        self.release(pid)
    }

    /// Writes out the buffered events that no later event can precede.
    fn release(&mut self, pid: u32) -> Result<(), TraceError> {
        let Some(p) = self.procs.get(&pid) else {
            return Ok(());
        };
        let anomalies = p.space.borrow_mut().take_slot_anomalies();
        for a in anomalies {
            self.sink.note(pid, format!("internal: {a}"))?;
        }
        let Some(p) = self.procs.get(&pid) else {
            return Ok(());
        };
        let mut mark = p.last_seq;
        for t in &p.tids {
            if let Some(th) = self.threads.get(t) {
                for c in th.pending.iter().filter(|c| c.holds) {
                    mark = mark.min(c.entry_seq);
                }
            }
        }
        if p.reorder.len() > MAX_REORDER && mark < p.last_seq {
            // A call that does not return (a thread parked inside it, or a return the
            // tracer cannot see) would hold every later event back without bound: release
            // them, at the cost of that call's return being written after later events.
            mark = p.last_seq;
            if self.overflow_noted.insert(pid) {
                self.sink.note(
                    pid,
                    format!(
                        "more than {MAX_REORDER} events waited for a call still running; \
                         they were written before its return"
                    ),
                )?;
            }
        }
        self.drain(pid, mark)
    }

    fn drain(&mut self, pid: u32, below: u64) -> Result<(), TraceError> {
        let Some(p) = self.procs.get_mut(&pid) else {
            return Ok(());
        };
        while let Some(entry) = p.reorder.first_entry() {
            if entry.key().0 >= below && below != u64::MAX {
                break;
            }
            let ev = entry.remove();
            if !p.quiet {
                self.sink.event(ev)?;
            }
        }
        Ok(())
    }
}

/// Reads the strings and buffers that a call's prototype says its arguments (its values,
/// [`Proto::values`](rltrace_wire::protos::Proto::values)) point to, at most `limit`
/// bytes each, and what a `printf` format's conversions take, from the stack arguments
/// at `stack` on.
pub(super) fn capture_args(
    tid: u32,
    proto: &rltrace_wire::protos::Proto,
    args: &[u64],
    stack: u64,
    limit: usize,
) -> Vec<ArgData> {
    use rltrace_wire::protos::{capture, FORMAT_LIMIT};
    let limit = limit.min(crate::format::MAX_ARG_DATA);
    let mut out = Vec::new();
    let mut buf = vec![0u8; limit.max(FORMAT_LIMIT) + 1];
    let mut ranges = Vec::new();
    // A partial read (a string that ends near an unmapped page) keeps what was read.
    let read = |addr: u64, dst: &mut [u8]| {
        ranges.clear();
        push_stack_pages(&mut ranges, addr, dst.len());
        mem::readv(tid, &ranges, dst).unwrap_or(0)
    };
    capture(
        proto,
        args,
        stack,
        limit,
        &mut buf,
        read,
        |arg, truncated, bytes| {
            out.push(ArgData {
                arg,
                truncated,
                bytes: bytes.to_vec(),
            })
        },
    );
    out
}

/// Lets a seized tracee in group-stop wait for SIGCONT while staying traced.
fn listen(tid: u32) -> Result<(), TraceError> {
    // SAFETY: PTRACE_LISTEN takes no address or data; the tid is a seized tracee in a
    // group-stop, which the kernel checks (ESRCH/EIO otherwise, handled as "gone").
    let r = unsafe {
        libc::ptrace(
            libc::PTRACE_LISTEN,
            tid as libc::pid_t,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_void>(),
        )
    };
    if r == -1 {
        let e = Errno::last();
        if e != Errno::ESRCH {
            return Err(pt(format!("listen on thread {tid}"))(e));
        }
    }
    Ok(())
}

/// Sends `sig` to one thread, to deliver a second signal that arrived while it was held.
fn tgkill(pid: u32, tid: u32, sig: Signal) {
    // SAFETY: tgkill only takes integers; a thread that is gone makes it fail with ESRCH.
    unsafe {
        libc::syscall(
            libc::SYS_tgkill,
            pid as libc::c_long,
            tid as libc::c_long,
            sig as libc::c_long,
        );
    }
}

/// Signals whose default action is to dump core: a program that does not handle them
/// crashed.
fn is_crash(sig: Signal) -> bool {
    matches!(
        sig,
        Signal::SIGSEGV
            | Signal::SIGBUS
            | Signal::SIGILL
            | Signal::SIGFPE
            | Signal::SIGABRT
            | Signal::SIGSYS
            | Signal::SIGTRAP
    )
}

fn le(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Splits `[sp, sp + len)` at page boundaries so a read stops cleanly at the stack's end.
fn push_stack_pages(ranges: &mut Vec<(u64, usize)>, sp: u64, len: usize) {
    let mut at = sp;
    let end = sp.saturating_add(len as u64);
    while at < end {
        let page_end = ((at | 0xfff) + 1).min(end);
        ranges.push((at, (page_end - at) as usize));
        at = page_end;
    }
}

/// Bytes read from each polled slot, from `seq` through `xmm0`.
const POLLED_FIELDS: usize = (slot::XMM0 + 8 - slot::SEQ) as usize;

/// Parses what `read_polled` read: per call, `(seq, ret, out, tsc)` if its done byte was
/// set, `ret` being xmm0 for a call that returns a `float` or `double`.
fn parse_poll(buf: &[u8], pending: &[Pending]) -> Vec<Returned> {
    let n = pending.len();
    (0..n)
        .map(|i| {
            let done_at = 8 + i;
            let at = 8 + n + POLLED_FIELDS * i;
            if buf.len() < at + POLLED_FIELDS || buf[done_at] != 1 {
                return None;
            }
            let ret = match pending[i].vector_ret {
                true => le(buf, at + (slot::XMM0 - slot::SEQ) as usize),
                false => le(buf, at + (slot::RET - slot::SEQ) as usize),
            };
            Some((
                le(buf, at),
                ret,
                le(buf, at + (slot::OUT - slot::SEQ) as usize),
                le(buf, at + (slot::TSC - slot::SEQ) as usize),
            ))
        })
        .collect()
}

/// In a run the preload agent records too, tells its library (module `m`) where process
/// `pid`'s return stubs are, for its unwinder.
fn tell_agent(pid: u32, space: &Space, m: &crate::record::ptrace::space::NewModule) {
    if let (Some(at), Some(base)) = (
        m.elf.symbol_address(rltrace_wire::PTRACE_REGION_SYMBOL),
        space.primary(),
    ) {
        // If this fails its stacks stop at the first traced call instead: nothing else is
        // lost.
        let _ = crate::record::ptrace::mem::writev(
            pid,
            &[(m.bias.wrapping_add(at), &base.to_le_bytes())],
        );
    }
}
