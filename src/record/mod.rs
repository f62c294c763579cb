//! Recording engines. They capture events and hand them to the recording writer; they
//! never format output for people.

pub mod agent;
pub mod clock;
pub mod combine;
pub mod funcs;
mod hybrid;
pub mod merge;
pub mod procfs;
pub mod ptrace;
/// ltrace filter chains (`-x`, `-e`), shared with replay.
pub use crate::select;
pub mod sink;

use std::ffi::OsString;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::format::{ExitHow, Meta, Origin};
pub use ptrace::tracer::{Progress, DEFAULT_TIME_UNIT};
use ptrace::tracer::{TraceError, TraceOptions, Tracer};
use select::C_LIBRARY;
use sink::Sink;

/// What to record.
#[derive(Clone, Debug)]
pub enum Target {
    /// Run this command (and its arguments).
    Command(Vec<OsString>),
    /// Attach to this running process.
    Pid(u32),
}

/// Which engine records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// The agent where it can record the request, ptrace otherwise.
    Auto,
    /// The in-process preload agent.
    Agent,
    /// The ptrace engine.
    Ptrace,
    /// Both in one run: the agent for what it records, ptrace for the functions `-x`
    /// selects beyond that (chosen by `Auto` only).
    Both,
}

/// What `rltrace record` was asked to do.
#[derive(Clone, Debug)]
pub struct RecordRequest {
    /// What to record.
    pub target: Target,
    /// Output path; `None` for `rltrace-<cmd>-<pid>.rlt` in the current directory.
    pub output: Option<PathBuf>,
    /// Engine knobs.
    pub trace: TraceOptions,
    /// With [`Target::Pid`]: detach after this long.
    pub duration: Option<Duration>,
    /// Called when the engine attaches or starts detaching.
    pub progress: Option<fn(&Progress)>,
    /// Functions to trace besides the allocator family (`-x`).
    pub select: Option<select::Selection>,
    /// Which of the program's calls through its imports to trace (`-e` chains; empty:
    /// all, ltrace's `@MAIN`, unless `libraries` is not).
    pub calls: Vec<String>,
    /// `-l` patterns: also (with no `-e`: only) the program's calls to functions the
    /// libraries they match define.
    pub libraries: Vec<String>,
    /// Prototypes loaded from ltrace.conf files (`-F`), before the built-in ones.
    pub protos: Vec<crate::protos::Loaded>,
    /// Which engine records.
    pub engine: Engine,
}

/// What a finished recording reports.
#[derive(Debug)]
pub struct RecordOutcome {
    /// The file written.
    pub path: PathBuf,
    /// How the command ended.
    pub exit: ExitHow,
    /// Records written.
    pub records: u64,
    /// Calls seen but not recorded.
    pub dropped: u64,
    /// `-x` rules that selected no function.
    pub unmatched: Vec<String>,
    /// `-e` rules that selected no call through the program's imports.
    pub unmatched_calls: Vec<String>,
    /// The engine that recorded, and why it was chosen.
    pub engine: (Engine, String),
}

/// Errors of `rltrace record`.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Tracing failed.
    #[error(transparent)]
    Trace(#[from] TraceError),
    /// The agent engine failed.
    #[error(transparent)]
    Agent(#[from] agent::AgentError),
    /// A run recorded by both engines could not be merged.
    #[error(transparent)]
    Combine(#[from] combine::CombineError),
    /// The request cannot be recorded with the engine asked for.
    #[error("--engine agent cannot record this: {0}")]
    AgentRefused(String),
    /// A `-e` chain does not parse.
    #[error(transparent)]
    Select(#[from] select::SelectError),
    /// The output file could not be created.
    #[error("cannot create {path}: {source}")]
    Create {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// Default recording name for a command and pid.
pub fn default_output(command: &Path, pid: u32) -> PathBuf {
    let base = command
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "cmd".into());
    let base: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    PathBuf::from(format!("rltrace-{base}-{pid}.rlt"))
}

/// What records a request.
enum Choice {
    /// The agent alone, with its library.
    Agent(PathBuf),
    /// The agent and ptrace together (src/record/hybrid.rs).
    Both(PathBuf),
    /// ptrace alone.
    Ptrace,
}

/// Picks the engine for a request: the agent (fast, in-process) when it can record
/// everything asked for; with `-x`/`-l` selecting other functions of a program it can
/// record, the agent and ptrace for those; ptrace otherwise. With the reason, for the user.
fn choose_engine(req: &RecordRequest) -> Result<(Choice, String), RecordError> {
    let refusal = match &req.target {
        Target::Pid(_) => Some("attaching to a running process needs ptrace".to_string()),
        Target::Command(_) if req.trace.syscalls => {
            Some("-S records system calls, which only ptrace sees".to_string())
        }
        Target::Command(cmd) => match cmd.first().and_then(|c| find_program(Path::new(c))) {
            Some(p) if !crate::elf::is_dynamic(&p) => Some(format!(
                "{} is statically linked: nothing can be preloaded into it",
                p.display()
            )),
            Some(p) => own_allocator(&p).map(|f| {
                format!(
                    "{} defines {f} itself: calls bind to it before any preloaded library, so \
                     the agent would see none of them",
                    p.display()
                )
            }),
            None => None,
        },
    };
    let library = agent::find_agent();
    let refusal = refusal.or_else(|| {
        library.is_none().then(|| {
            format!(
                "the agent library {} was not found next to rltrace (or in ${})",
                agent::AGENT_FILE,
                agent::AGENT_ENV
            )
        })
    });
    let refusal = refusal.or_else(clock::order_problem);
    let beyond = req.select.as_ref().is_some_and(|s| !agent_interposes(s));
    match (req.engine, refusal, library) {
        (Engine::Ptrace, _, _) => Ok((Choice::Ptrace, "asked for with --engine".into())),
        (Engine::Agent, _, _) if beyond => Err(RecordError::AgentRefused(
            "-x selects functions the agent does not interpose".into(),
        )),
        (Engine::Agent, Some(why), _) => Err(RecordError::AgentRefused(why)),
        (Engine::Agent, None, Some(lib)) => {
            Ok((Choice::Agent(lib), "asked for with --engine".into()))
        }
        (_, Some(why), _) => Ok((Choice::Ptrace, why)),
        (_, None, Some(lib)) if beyond => Ok((
            Choice::Both(lib),
            "dynamically linked program: the agent records the allocator family and the \
             program's calls, ptrace the other functions -x selects"
                .into(),
        )),
        (_, None, Some(lib)) if req.select.is_some() => Ok((
            Choice::Agent(lib),
            "dynamically linked program: -x selects only allocator functions, which the \
             agent interposes"
                .into(),
        )),
        (_, None, Some(lib)) => Ok((
            Choice::Agent(lib),
            "dynamically linked program: no -x selection".into(),
        )),
        (_, None, None) => Ok((Choice::Ptrace, "the agent library was not found".into())),
    }
}

/// The first allocator function the program exports itself (jemalloc or tcmalloc linked
/// in statically, a custom `malloc`): the agent's interposers would never be called, and
/// its leak report would be empty.
fn own_allocator(program: &Path) -> Option<&'static str> {
    let names: Vec<&'static str> = funcs::ALLOCATOR_FAMILY.iter().map(|f| f.name).collect();
    crate::elf::exported_functions(program, &names)
        .first()
        .copied()
}

/// Whether every function `sel` can select is one the agent interposes (`-x malloc`,
/// `-x malloc+free`): the agent records those calls from every caller, as an entry hook
/// would, so the selection needs no ptrace.
fn agent_interposes(sel: &select::Selection) -> bool {
    sel.plain_names().is_some_and(|names| {
        !names.is_empty()
            && names
                .iter()
                .all(|n| funcs::ALLOCATOR_FAMILY.iter().any(|f| f.name == *n))
    })
}

/// The file `execvp` would run for `cmd`.
fn find_program(cmd: &Path) -> Option<PathBuf> {
    if cmd.components().count() > 1 {
        return Some(cmd.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(cmd))
            .find(|p| p.is_file())
    })
}

/// Runs the command (or attaches to the process) and writes the recording.
pub fn record(req: &RecordRequest) -> Result<RecordOutcome, RecordError> {
    // Loaded prototypes decide what the engines capture (the ptrace engine here, the
    // agent through the recorder's answer to its import list). The program's own
    // functions selected with -x get theirs from its DWARF, unless the user gave one.
    let mut protos = dwarf_protos(req);
    protos.extend(req.protos.iter().cloned());
    crate::protos::install(&protos);
    let mut trace = req.trace.clone();
    if matches!(req.target, Target::Pid(_)) && req.calls.is_empty() && req.libraries.is_empty() {
        // Attached to a running (often production) process, every traced call costs a
        // stop, and a recorder killed while a thread sits in one leaves that thread past
        // its `int3` (the kernel does not deliver it the SIGTRAP again): the program's
        // calls through its imports are traced only when `-e` asks for them.
        trace.imports = false;
    }
    let req = &RecordRequest {
        protos,
        trace,
        ..req.clone()
    };
    match (choose_engine(req)?, &req.target) {
        // A refusal covers attaching, so the agent always has a command here.
        ((Choice::Agent(library), why), Target::Command(cmd)) => {
            record_agent(req, cmd, library, why)
        }
        ((Choice::Both(library), why), Target::Command(cmd)) => {
            hybrid::record(req, cmd, library, why)
        }
        ((_, why), _) => record_ptrace(req, why),
    }
}

/// Prototypes from the main executable's DWARF for its functions that `-x` selects and
/// that have none (built-in or loaded).
fn dwarf_protos(req: &RecordRequest) -> Vec<crate::protos::Loaded> {
    let Some(sel) = &req.select else {
        return Vec::new();
    };
    let exe = match &req.target {
        Target::Command(cmd) => cmd.first().and_then(|c| find_program(Path::new(c))),
        Target::Pid(pid) => std::fs::read_link(format!("/proc/{pid}/exe")).ok(),
    };
    let Some(exe) = exe else {
        return Vec::new();
    };
    let name = exe
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let given: std::collections::HashSet<&str> =
        req.protos.iter().map(|p| p.name.as_str()).collect();
    crate::symbolize::types::prototypes(&exe, &|f: &str| {
        sel.would_select(f, &name, true)
            && !given.contains(f)
            && rltrace_wire::protos::lookup(f).is_none()
    })
}

/// The `-e` chains, if any.
fn call_selection(req: &RecordRequest) -> Result<Option<select::Selection>, RecordError> {
    if req.calls.is_empty() && req.libraries.is_empty() {
        return Ok(None);
    }
    let mut sel = select::Selection::parse_calls(&req.calls)?;
    sel.add_libraries(&req.libraries)?;
    Ok(Some(sel))
}

/// How replay shows allocator calls. In the default trace of the program's calls they are
/// among them: one made by a library, outside any traced call (a constructor's, the C
/// library's at exit), is hidden unless `--all`, as ltrace would not show it. With `-L`
/// (the allocator family alone) or `-x` (ltrace's `-x malloc` shows every caller),
/// every allocator call is the trace's business.
fn allocator_origin(req: &RecordRequest) -> Origin {
    if req.trace.imports && req.select.is_none() {
        Origin::Imported
    } else {
        Origin::Hooked
    }
}

/// Stores what replay needs of the request: the loaded prototypes, so that it shows the
/// arguments as they were captured, and the `-e` chains, so that it shows the calls they
/// select (allocator calls are recorded for the leak report whatever they say).
fn add_request_meta(meta: &mut Meta, req: &RecordRequest) {
    meta.pairs.push((
        crate::format::META_TIME_UNIT.to_string(),
        req.trace.time_unit.to_string(),
    ));
    if !req.calls.is_empty() {
        meta.pairs
            .push(("trace-filter".to_string(), req.calls.join("\n")));
    }
    if !req.libraries.is_empty() {
        meta.pairs.push((
            crate::format::META_TRACE_LIBRARIES.to_string(),
            req.libraries.join("\n"),
        ));
    }
    if let Some(sel) = &req.select {
        // Allocator functions -x selects show wherever they are called and whatever -e
        // says, as ltrace -x shows them; the others are among the program's calls.
        let names: Vec<&str> = funcs::ALLOCATOR_FAMILY
            .iter()
            .map(|f| f.name)
            .filter(|f| sel.would_select(f, C_LIBRARY, false) || sel.would_select(f, "", true))
            .collect();
        if !names.is_empty() {
            meta.pairs.push((
                crate::format::META_X_ALLOCATORS.to_string(),
                names.join("\n"),
            ));
        }
    }
    if !req.protos.is_empty() {
        meta.pairs.push((
            "prototypes".to_string(),
            crate::protos::to_text(&req.protos),
        ));
    }
}

fn metadata(engine: &str, words: &[OsString], pid: u32, attached: bool) -> Meta {
    let mut meta = Meta::default();
    let mut put = |k: &str, v: String| meta.pairs.push((k.to_string(), v));
    put("rltrace-version", env!("CARGO_PKG_VERSION").to_string());
    put("engine", engine.to_string());
    if attached {
        put("attach", "1".to_string());
    }
    for a in words {
        put("arg", a.to_string_lossy().into_owned());
    }
    if let Ok(cwd) = std::env::current_dir() {
        put("cwd", cwd.display().to_string());
    }
    if let Ok(h) = nix::unistd::gethostname() {
        put("host", h.to_string_lossy().into_owned());
    }
    if let Ok(d) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        put("start-unix-ns", d.as_nanos().to_string());
    }
    if pid != 0 {
        put("pid", pid.to_string());
    }
    meta
}

/// The output of a recording started with the agent, created: the pid is not known
/// before the start, so the default name uses the recorder's.
fn create_output(req: &RecordRequest, cmd: &[OsString]) -> Result<(PathBuf, File), RecordError> {
    let first = cmd.first().cloned().unwrap_or_default();
    let path = req
        .output
        .clone()
        .unwrap_or_else(|| default_output(Path::new(&first), std::process::id()));
    let file = File::create(&path).map_err(|source| RecordError::Create {
        path: path.display().to_string(),
        source,
    })?;
    Ok((path, file))
}

/// The agent's options for a request.
fn agent_options(
    req: &RecordRequest,
    library: PathBuf,
    calls: Option<std::sync::Arc<std::sync::Mutex<select::Selection>>>,
    traced: Option<std::sync::Arc<select::Selection>>,
) -> agent::AgentOptions {
    agent::AgentOptions {
        library,
        max_depth: req.trace.max_depth,
        follow: req.trace.follow,
        strlen: req.trace.string_limit,
        imports: req.trace.imports,
        calls,
        traced,
    }
}

fn record_agent(
    req: &RecordRequest,
    cmd: &[OsString],
    library: PathBuf,
    why: String,
) -> Result<RecordOutcome, RecordError> {
    // Before anything is created: a chain that does not parse stops here.
    let calls = call_selection(req)?;
    let (path, file) = create_output(req, cmd)?;
    let mut meta = metadata("agent", cmd, 0, false);
    add_request_meta(&mut meta, req);
    let calls = calls.map(|s| std::sync::Arc::new(std::sync::Mutex::new(s)));
    let mut sink = Sink::new(
        BufWriter::with_capacity(1 << 20, file),
        &meta,
        funcs::ALLOCATOR_FAMILY,
        allocator_origin(req),
    )
    .map_err(TraceError::from)?;
    let opts = agent_options(req, library, calls.clone(), None);
    let exit = agent::run(cmd, &mut sink, &opts);
    let unmatched_calls = calls
        .and_then(|c| c.lock().ok().map(|s| s.unmatched()))
        .unwrap_or_default();
    let (_, summary) = sink.finish().map_err(TraceError::from)?;
    if let Err(agent::AgentError::Spawn { .. }) = &exit {
        // Nothing ran, so there is nothing to replay.
        let _ = std::fs::remove_file(&path);
    }
    let (_, exit) = exit?;
    Ok(RecordOutcome {
        path,
        exit,
        records: summary.records,
        dropped: summary.dropped,
        unmatched: Vec::new(),
        unmatched_calls,
        engine: (Engine::Agent, why),
    })
}

fn record_ptrace(req: &RecordRequest, why: String) -> Result<RecordOutcome, RecordError> {
    // Before the command starts: a chain that does not parse stops here.
    let mut calls = call_selection(req)?;
    let (pid, words, spawned) = match &req.target {
        Target::Command(command) => (ptrace::tracer::spawn(command)?, command.clone(), true),
        Target::Pid(pid) => {
            let pid = procfs::tgid_of(*pid).unwrap_or(*pid);
            (pid, procfs::cmdline(pid), false)
        }
    };
    let first = words.first().cloned().unwrap_or_default();
    let path = req
        .output
        .clone()
        .unwrap_or_else(|| default_output(Path::new(&first), pid));
    let file = match File::create(&path) {
        Ok(f) => f,
        Err(source) => {
            if spawned {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            return Err(RecordError::Create {
                path: path.display().to_string(),
                source,
            });
        }
    };
    let mut meta = metadata("ptrace", &words, pid, !spawned);
    add_request_meta(&mut meta, req);
    let funcs = funcs::ALLOCATOR_FAMILY;
    let mut sink = Sink::new(
        BufWriter::with_capacity(1 << 20, file),
        &meta,
        funcs,
        allocator_origin(req),
    )
    .map_err(TraceError::from)?;
    let mut select = req.select.clone();
    let mut tracer = Tracer::new(&mut sink, funcs, req.trace.clone());
    if let Some(f) = req.progress {
        tracer = tracer.with_progress(f);
    }
    if let Some(sel) = select.as_mut() {
        tracer = tracer.with_selection(sel);
    }
    if let Some(sel) = calls.as_mut() {
        tracer = tracer.with_calls(sel);
    }
    let exit = if spawned {
        tracer.run(pid)
    } else {
        tracer.run_attached(pid, req.duration.map(|d| Instant::now() + d))
    };
    let unmatched = select.map(|s| s.unmatched()).unwrap_or_default();
    let unmatched_calls = calls.map(|s| s.unmatched()).unwrap_or_default();
    // In the recording too, so whoever replays it knows the trace is not missing calls.
    for rule in &unmatched {
        sink.note(pid, format!("filter rule {rule:?} matched no function"))
            .map_err(TraceError::from)?;
    }
    for rule in &unmatched_calls {
        sink.note(pid, select::unmatched_call_text(rule))
            .map_err(TraceError::from)?;
    }
    // Whatever happened, close the file properly so it replays.
    let (_, summary) = sink.finish().map_err(TraceError::from)?;
    Ok(RecordOutcome {
        path,
        exit: exit?,
        records: summary.records,
        dropped: summary.dropped,
        unmatched,
        unmatched_calls,
        engine: (Engine::Ptrace, why),
    })
}
