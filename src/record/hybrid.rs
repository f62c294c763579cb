//! Recording with both engines at once, for a dynamically linked program whose `-x`
//! selection names functions the agent does not interpose: the agent records what it can
//! in-process (the allocator family, the program's calls through its imports, every
//! process image), the ptrace engine only the selected functions, from every caller, at a
//! stop each. A program that allocates a million times a minute then pays ptrace's price
//! only for the calls asked for.
//!
//! The ptrace engine starts the command (a tracer thread of its own: ptrace requests come
//! from the thread that started the tracee) with the agent's environment; the agent's
//! recorder runs on this thread. Each writes a recording of its own next to the output,
//! timed in raw counter ticks, and src/record/combine.rs merges them into the output by
//! those readings, then they are removed.

use std::ffi::OsString;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::{
    add_request_meta, agent, allocator_origin, call_selection, funcs, metadata, select, Engine,
    RecordError, RecordOutcome, RecordRequest,
};
use crate::format::{ExitHow, Origin};
use crate::record::clock::{rdtsc, TscClock};
use crate::record::ptrace::tracer::{self, TraceError, Tracer};
use crate::record::sink::Sink;

/// Signals blocked on the calling thread until dropped.
struct Blocked(libc::sigset_t);

impl Blocked {
    fn signals(sigs: &[libc::c_int]) -> Blocked {
        // SAFETY: sigemptyset/sigaddset fill a local set; pthread_sigmask changes only the
        // calling thread's mask and saves the old one in `old`.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for &s in sigs {
                libc::sigaddset(&mut set, s);
            }
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
            Blocked(old)
        }
    }
}

impl Drop for Blocked {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved when the signals were blocked.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) };
    }
}

/// The two partial recordings of a run, removed when dropped.
struct Parts {
    agent: PathBuf,
    traced: PathBuf,
}

impl Drop for Parts {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.agent);
        let _ = std::fs::remove_file(&self.traced);
    }
}

/// Records `cmd` with both engines (see the module comment).
pub(super) fn record(
    req: &RecordRequest,
    cmd: &[OsString],
    library: PathBuf,
    why: String,
) -> Result<RecordOutcome, RecordError> {
    let calls = call_selection(req)?;
    let Some(selected) = req.select.clone() else {
        return Err(RecordError::AgentRefused(
            "nothing is selected with -x".into(),
        ));
    };
    let first = cmd.first().cloned().unwrap_or_default();
    let (path, out) = super::create_output(req, cmd)?;
    let create = |p: &Path| {
        File::create(p).map_err(|source| RecordError::Create {
            path: p.display().to_string(),
            source,
        })
    };
    let part = |what: &str| {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        path.with_file_name(format!(".{name}.{what}.part"))
    };
    let parts = Parts {
        agent: part("agent"),
        traced: part("ptrace"),
    };
    let mut meta = metadata("agent+ptrace", cmd, 0, false);
    add_request_meta(&mut meta, req);
    // The partial recordings count time in ticks: every other pair is the output's.
    let mut part_meta = meta.clone();
    for (k, v) in &mut part_meta.pairs {
        if k == crate::format::META_TIME_UNIT {
            *v = "1".into();
        }
    }

    let start = (Instant::now(), rdtsc());
    let agent_file = create(&parts.agent)?;
    let traced_file = create(&parts.traced)?;
    let status: Arc<Mutex<Option<ExitHow>>> = Arc::new(Mutex::new(None));
    let (env_tx, env_rx) = channel::<Vec<(OsString, OsString)>>();
    let (pid_tx, pid_rx) = channel::<Result<u32, String>>();

    // The ptrace side: only the selected functions beyond the allocator family, and never
    // in the agent's own library.
    let opts = tracer::TraceOptions {
        imports: false,
        allocators: false,
        syscalls: false,
        skip_module: Some(agent::AGENT_FILE.to_string()),
        ..req.trace.clone()
    };
    let names: Vec<&str> = funcs::ALLOCATOR_FAMILY.iter().map(|f| f.name).collect();
    let mut sel: select::Selection = selected.clone().without(&names);
    let command = cmd.to_vec();
    let tracer_status = status.clone();
    let tracer_meta = part_meta.clone();
    let progress = req.progress;
    let tracer_thread = std::thread::Builder::new()
        .name("rltrace-ptrace".into())
        .spawn(move || -> Result<_, TraceError> {
            let Ok(env) = env_rx.recv() else {
                return Ok(None);
            };
            let pid = match tracer::spawn_with(&command, &env) {
                Ok(pid) => pid,
                Err(e) => {
                    let _ = pid_tx.send(Err(e.to_string()));
                    return Err(e);
                }
            };
            let mut sink = Sink::new(
                BufWriter::with_capacity(1 << 20, traced_file),
                &tracer_meta,
                funcs::ALLOCATOR_FAMILY,
                Origin::Hooked,
            )?
            .in_ticks();
            let _ = pid_tx.send(Ok(pid));
            let mut t =
                Tracer::new(&mut sink, funcs::ALLOCATOR_FAMILY, opts).with_selection(&mut sel);
            if let Some(f) = progress {
                t = t.with_progress(f);
            }
            let exit = t.run(pid);
            *tracer_status.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(*exit.as_ref().unwrap_or(&ExitHow::Unknown));
            let unmatched = sel.unmatched();
            // In the recording too, so whoever replays it knows the trace is not missing
            // calls.
            for rule in &unmatched {
                sink.note(pid, format!("filter rule {rule:?} matched no function"))?;
            }
            sink.finish()?;
            Ok(Some((exit?, unmatched)))
        })
        .map_err(|e| {
            RecordError::Trace(TraceError::Spawn {
                cmd: first.to_string_lossy().into_owned(),
                source: e,
            })
        })?;

    // The ptrace engine handles interruptions (it passes them on to the command, and
    // must be woken from waiting for its tracees to do so): only its thread takes them.
    // Threads started from here on (the agent's connection readers) block them too.
    let _blocked = Blocked::signals(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGALRM]);

    // The agent side, on this thread.
    let calls = calls.map(|s| Arc::new(Mutex::new(s)));
    let mut sink = Sink::new(
        BufWriter::with_capacity(1 << 20, agent_file),
        &part_meta,
        funcs::ALLOCATOR_FAMILY,
        allocator_origin(req),
    )
    .map_err(TraceError::from)?
    .in_ticks();
    let agent_opts = super::agent_options(req, library, calls.clone(), Some(Arc::new(selected)));
    let shown = first.to_string_lossy().into_owned();
    let launched = std::cell::Cell::new(None);
    let served = agent::serve(&mut sink, &agent_opts, |env| {
        let spawn_err = |e: String| agent::AgentError::Spawn {
            cmd: shown.clone(),
            source: std::io::Error::other(e),
        };
        env_tx
            .send(env.to_vec())
            .map_err(|_| spawn_err("the tracer thread ended".into()))?;
        match pid_rx.recv() {
            Ok(Ok(pid)) => {
                launched.set(Some(pid));
                Ok(agent::Root::Traced(pid, status.clone()))
            }
            Ok(Err(e)) => Err(spawn_err(e)),
            Err(_) => Err(spawn_err("the tracer thread ended".into())),
        }
    });
    if let (Err(_), Some(pid)) = (&served, launched.get()) {
        // The program may be blocked writing to a recorder that stopped reading: it must
        // not keep the tracer waiting for ever.
        // SAFETY: kill with a pid the tracer thread started and has not reaped.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    drop(env_tx);
    let unmatched_calls = calls
        .and_then(|c| c.lock().ok().map(|s| s.unmatched()))
        .unwrap_or_default();
    let root = launched.get().unwrap_or(0);
    for rule in &unmatched_calls {
        sink.note(root, select::unmatched_call_text(rule))
            .map_err(TraceError::from)?;
    }
    let agent_summary = sink.finish().map_err(TraceError::from);
    let traced = tracer_thread.join().unwrap_or_else(|_| {
        Err(TraceError::Spawn {
            cmd: first.to_string_lossy().into_owned(),
            source: std::io::Error::other("the tracer thread panicked"),
        })
    });
    let end = (start.0.elapsed().as_nanos() as u64, rdtsc());
    let (_, agent_exit) = match served {
        Ok(r) => r,
        Err(agent::AgentError::Spawn { cmd, source }) => {
            drop(out);
            let _ = std::fs::remove_file(&path);
            return Err(RecordError::Agent(agent::AgentError::Spawn { cmd, source }));
        }
        Err(e) => return Err(e.into()),
    };
    agent_summary?;
    let (exit, unmatched) = traced?.unwrap_or((agent_exit, Vec::new()));

    // One map from ticks to nanoseconds over the whole run.
    let clock = TscClock::between((0, start.1), end, || start.0.elapsed().as_nanos() as u64);
    let (_, summary) = super::combine::combine(
        &parts.agent,
        &parts.traced,
        BufWriter::with_capacity(1 << 20, out),
        &meta,
        &clock,
        agent::AGENT_FILE,
    )?;
    Ok(RecordOutcome {
        path,
        exit,
        records: summary.records,
        dropped: summary.dropped,
        unmatched,
        unmatched_calls,
        engine: (Engine::Both, why),
    })
}
