//! Recording engines. They capture events and hand them to the recording writer; they
//! never format output for people.

pub mod funcs;
pub mod procfs;
pub mod ptrace;
pub mod select;
pub mod sink;

use std::ffi::OsString;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::format::{ExitHow, Meta};
pub use ptrace::tracer::Progress;
use ptrace::tracer::{TraceError, TraceOptions, Tracer};
use sink::Sink;

/// What to record.
#[derive(Clone, Debug)]
pub enum Target {
    /// Run this command (and its arguments).
    Command(Vec<OsString>),
    /// Attach to this running process.
    Pid(u32),
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
}

/// Errors of `rltrace record`.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Tracing failed.
    #[error(transparent)]
    Trace(#[from] TraceError),
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

/// Runs the command (or attaches to the process) under the ptrace engine and writes the
/// recording.
pub fn record(req: &RecordRequest) -> Result<RecordOutcome, RecordError> {
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
    let mut meta = Meta::default();
    let mut put = |k: &str, v: String| meta.pairs.push((k.to_string(), v));
    put("rltrace-version", env!("CARGO_PKG_VERSION").to_string());
    put("engine", "ptrace".to_string());
    if !spawned {
        put("attach", "1".to_string());
    }
    for a in &words {
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
    put("pid", pid.to_string());
    let funcs = funcs::ALLOCATOR_FAMILY;
    let mut sink = Sink::new(BufWriter::with_capacity(1 << 20, file), &meta, funcs)
        .map_err(TraceError::from)?;
    let mut select = req.select.clone();
    let mut tracer = Tracer::new(&mut sink, funcs, req.trace.clone());
    if let Some(f) = req.progress {
        tracer = tracer.with_progress(f);
    }
    if let Some(sel) = select.as_mut() {
        tracer = tracer.with_selection(sel);
    }
    let exit = if spawned {
        tracer.run(pid)
    } else {
        tracer.run_attached(pid, req.duration.map(|d| Instant::now() + d))
    };
    let unmatched = select.map(|s| s.unmatched()).unwrap_or_default();
    for rule in &unmatched {
        // In the recording too, so whoever replays it knows the trace is not missing calls.
        sink.note(pid, format!("filter rule {rule:?} matched no function"))
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
    })
}
