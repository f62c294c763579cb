//! `rltrace replay`: read → symbolize → analyze → render, streaming the recording once.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;

use crate::analyze::leaks::{LeakAnalysis, LeakReport};
use crate::analyze::{CallPairer, Defs, Step};
use crate::format::{open_file, FnClass, FormatError, OpenError, Origin, Record};
use crate::render::machine::{
    call_json, leak_json, leak_summary_json, process_exit_json, signal_json, write_json, write_svg,
    Folded,
};
use crate::render::{self, call_head, caller, caller_text, ret_text, write_stack};
use crate::symbolize::{SymbolizeOptions, Symbolizer};

/// How replay writes its output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// ltrace-style lines; the leak report as text.
    #[default]
    Text,
    /// One JSON object per line: calls and process ends, or leak groups and a summary.
    Json,
    /// Folded stacks for flame graph tools: calls per stack, or live bytes per stack.
    Folded,
}

/// What to show.
#[derive(Clone, Debug, Default)]
pub struct ReplayOptions {
    /// Output format.
    pub format: OutputFormat,
    /// Only this process.
    pub pid: Option<u32>,
    /// With `leaks`: also draw live bytes by stack as an SVG flame graph into this file.
    pub svg: Option<std::path::PathBuf>,
    /// Show the leak report instead of the call trace.
    pub leaks: bool,
    /// Show every frame of each call's stack.
    pub stack: bool,
    /// Leak report: show full stacks.
    pub verbose: bool,
    /// Leak report: show live blocks of each group over the run.
    pub growth: bool,
    /// Trace: also show calls made while another traced call of the same thread was
    /// running (an allocator calling itself, `realloc(NULL, n)` calling `malloc`).
    pub all: bool,
    /// Where to find debug info.
    pub symbolize: SymbolizeOptions,
    /// Trace: prefix each line with the wall-clock time (ltrace's `-t`, `-tt`, `-ttt`:
    /// 1 seconds, 2 microseconds, 3 seconds since the epoch); 0 for none.
    pub clock: u8,
    /// Trace: prefix each line with the time since the previous line (`-r`).
    pub relative: bool,
    /// Trace: show the time spent in each call (`-T`).
    pub durations: bool,
    /// Print a table of calls and time per function instead of the trace (`-c`).
    pub summary: bool,
    /// Trace: show each call's return address (`-i`).
    pub return_address: bool,
    /// Show function names demangled (`-C`).
    pub demangle: bool,
    /// Trace: spaces of indentation per level of nesting (`-n`).
    pub indent: usize,
}

/// Errors of replay.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The recording could not be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The flame graph file could not be created.
    #[error("cannot create {path}: {source}")]
    Create {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The recording is unreadable past its header.
    #[error("{path}: {source}")]
    Format {
        /// The path.
        path: String,
        /// The cause.
        source: FormatError,
    },
    /// Writing the output failed.
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
}

/// What replay has to tell besides its output.
#[derive(Debug, Default)]
pub struct ReplayReport {
    /// Warnings for the user: truncation, missing binaries, the recorder's own notes.
    pub warnings: Vec<String>,
    /// True if the output is incomplete: the recording was cut short, or a module's
    /// binary was missing or different, leaving its frames unsymbolized.
    pub incomplete: bool,
}

/// What replay learns from the stream besides the events themselves.
struct Context {
    defs: Defs,
    sym: Symbolizer,
    sources: render::SourceCache,
    exe_of: HashMap<u32, String>,
    /// Processes recorded from an attach (`-p`): their leak reports cover a window.
    attached: std::collections::HashSet<u32>,
    notes: Vec<String>,
    /// The fatal signal of each process that crashed.
    crashes: HashMap<u32, crate::format::SignalRec>,
}

impl Context {
    /// Absorbs definitions, packed symbols and notes.
    fn learn(&mut self, rec: &Record) {
        self.defs.learn(rec);
        match rec {
            Record::Module(m) => self.sym.add_module(m.clone()),
            Record::ProcessStart(p) => {
                self.exe_of.insert(p.pid, p.path.clone());
                if p.cause == crate::format::StartCause::Attach {
                    self.attached.insert(p.pid);
                }
            }
            Record::Note(n) => self
                .notes
                .push(format!("recorder (pid {}): {}", n.pid, n.text)),
            Record::Signal(x) => {
                self.crashes.insert(self.defs.thread(x.thread).0, x.clone());
            }
            Record::Packed(p) => self.sym.add_packed(p.clone()),
            Record::Prototypes(text) => crate::protos::install(&crate::protos::from_text(text)),
            Record::Source(l) => self.sources.add_packed(l.clone()),
            _ => {}
        }
    }
}

/// The call trace in the chosen format.
enum TraceOut {
    Text(TraceWriter),
    Json,
    Folded(Folded),
}

impl TraceOut {
    fn new(opts: &ReplayOptions, start_unix_ns: u128) -> Self {
        match opts.format {
            OutputFormat::Text => TraceOut::Text(TraceWriter {
                times: Times {
                    clock: opts.clock,
                    relative: opts.relative,
                    durations: opts.durations,
                    start_unix_ns,
                    last: None,
                },
                indent: opts.indent,
                return_address: opts.return_address,
                ..TraceWriter::default()
            }),
            OutputFormat::Json => TraceOut::Json,
            OutputFormat::Folded => TraceOut::Folded(Folded::default()),
        }
    }

    fn record(
        &mut self,
        out: &mut dyn Write,
        rec: &Record,
        step: Option<Step<'_>>,
        cx: &mut Context,
        opts: &ReplayOptions,
    ) -> std::io::Result<()> {
        let (defs, sym) = (&cx.defs, &mut cx.sym);
        match self {
            TraceOut::Text(t) => t.record(out, rec, step, defs, sym, opts.stack),
            TraceOut::Json => match (step, rec) {
                (
                    Some(Step::Began {
                        enter,
                        void: true,
                        depth,
                        ..
                    }),
                    _,
                ) => write_json(out, &call_json(defs, sym, enter, None, depth, opts.stack)),
                (
                    Some(Step::Ended {
                        enter, exit, depth, ..
                    }),
                    _,
                ) => write_json(
                    out,
                    &call_json(defs, sym, &enter, Some(exit), depth, opts.stack),
                ),
                (None, Record::ProcessExit(p)) => write_json(out, &process_exit_json(p)),
                (None, Record::Signal(x)) => write_json(out, &signal_json(defs, sym, x)),
                _ => Ok(()),
            },
            TraceOut::Folded(f) => {
                if let Some(Step::Began { enter, .. }) = step {
                    f.add(enter.stack, enter.func, 1);
                }
                Ok(())
            }
        }
    }

    fn finish(
        self,
        out: &mut dyn Write,
        cx: &mut Context,
        pairer: &CallPairer,
        opts: &ReplayOptions,
    ) -> std::io::Result<()> {
        match self {
            TraceOut::Text(mut t) => t.flush(out, &cx.defs),
            TraceOut::Json => {
                // Calls the recording ended inside of.
                for (_, calls) in pairer.open_calls() {
                    for (depth, enter) in calls.iter().enumerate() {
                        if opts.all || depth == 0 {
                            write_json(
                                out,
                                &call_json(&cx.defs, &mut cx.sym, enter, None, depth, opts.stack),
                            )?;
                        }
                    }
                }
                Ok(())
            }
            TraceOut::Folded(f) => {
                for l in f.lines(&cx.defs, &mut cx.sym) {
                    writeln!(out, "{l}")?;
                }
                Ok(())
            }
        }
    }
}

fn write_leak_report(
    out: &mut dyn Write,
    report: &LeakReport,
    cx: &mut Context,
    opts: &ReplayOptions,
) -> Result<(), ReplayError> {
    let mut live = Folded::default();
    for g in &report.groups {
        live.add(g.stack, g.func, g.bytes);
    }
    match opts.format {
        OutputFormat::Text => {
            let view = render::LeakView {
                defs: &cx.defs,
                exe_of: &cx.exe_of,
                attached: &cx.attached,
                crashes: &cx.crashes,
                verbose: opts.verbose,
                growth: opts.growth,
            };
            render::write_leaks(out, report, &view, &mut cx.sym, &mut cx.sources)?
        }
        OutputFormat::Json => {
            for g in &report.groups {
                write_json(out, &leak_json(g, &cx.defs, &mut cx.sym, &mut cx.sources))?;
            }
            let mut summary = leak_summary_json(report);
            let mut window: Vec<u32> = cx.attached.iter().copied().collect();
            window.sort_unstable();
            summary["attach_window_pids"] = serde_json::json!(window);
            write_json(out, &summary)?;
        }
        OutputFormat::Folded => {
            for l in live.lines(&cx.defs, &mut cx.sym) {
                writeln!(out, "{l}")?;
            }
        }
    }
    if let Some(path) = &opts.svg {
        let lines = live.lines(&cx.defs, &mut cx.sym);
        let file = File::create(path).map_err(|source| ReplayError::Create {
            path: path.display().to_string(),
            source,
        })?;
        let mut w = std::io::BufWriter::new(file);
        write_svg(
            &mut w,
            &lines,
            "rltrace: live bytes by allocation stack",
            "bytes",
        )?;
        w.flush()?;
    }
    Ok(())
}

/// The file name of the executable a thread's process runs (what `-e` library patterns
/// match for the calls it makes).
fn main_name(cx: &Context, thread: u32) -> &str {
    let pid = cx.defs.thread(thread).0;
    cx.exe_of
        .get(&pid)
        .map_or("", |p| p.rsplit('/').next().unwrap_or(p))
}

/// False for a call (of an imported function, hooked where every caller reaches it) whose
/// return address lies outside its process's main executable: a call made inside a
/// library. `unknown` when that cannot be told (no stack).
fn called_from_main(cx: &Context, e: &crate::format::Enter, unknown: bool) -> bool {
    let Some(first) = e
        .stack
        .and_then(|s| cx.defs.stacks.get(&s)?.first().copied())
    else {
        return unknown;
    };
    let pid = cx.defs.thread(e.thread).0;
    match (first.module, cx.exe_of.get(&pid)) {
        (Some(m), Some(exe)) => cx.sym.module(m).is_some_and(|m| &m.path == exe),
        _ => false,
    }
}

/// True for a call nested in one whose return address it shares: the enclosing function
/// jumped to it as its last act (glibc's `realloc(NULL, n)` into `malloc`), so the library
/// made it, not the program at the shared call site.
fn tail_called(cx: &Context, e: &crate::format::Enter, outer: Option<u32>) -> bool {
    let first = |s: Option<u32>| s.and_then(|s| cx.defs.stacks.get(&s)?.first().copied());
    match (first(e.stack), first(outer)) {
        (Some(a), Some(b)) => a.addr == b.addr,
        _ => false,
    }
}

/// Replays `path` to `out`.
pub fn replay(
    path: &Path,
    opts: &ReplayOptions,
    out: &mut dyn Write,
) -> Result<ReplayReport, ReplayError> {
    let shown = path.display().to_string();
    let mut reader = open_file(path)?;
    let fmt = |source| ReplayError::Format {
        path: shown.clone(),
        source,
    };
    let mut cx = Context {
        defs: Defs::default(),
        sym: Symbolizer::new(opts.symbolize.clone()),
        sources: render::SourceCache::default(),
        exe_of: HashMap::new(),
        attached: Default::default(),
        notes: Vec::new(),
        crashes: HashMap::new(),
    };
    let mut pairer = CallPairer::default();
    let mut leaks = LeakAnalysis::default();
    let start_unix_ns = reader
        .meta()
        .get("start-unix-ns")
        .and_then(|v| v.parse::<u128>().ok())
        .unwrap_or(0);
    let mut trace = TraceOut::new(opts, start_unix_ns);
    if let Some(text) = reader.meta().get("prototypes") {
        crate::protos::install(&crate::protos::from_text(text));
    }
    // Allocator calls recorded under `-e` chains or `-l` patterns that did not select
    // them (the family is recorded regardless, for the leak report) are shown only with
    // --all. (The other calls were recorded because they were selected.)
    let shown_calls = {
        let meta = reader.meta();
        let chains: Option<Vec<&str>> = meta.get("trace-filter").map(|f| f.split('\n').collect());
        let libs: Option<Vec<&str>> = meta
            .get(crate::format::META_TRACE_LIBRARIES)
            .map(|l| l.split('\n').collect());
        match (chains, libs) {
            (None, None) => None,
            (chains, libs) => crate::select::Selection::parse_calls(&chains.unwrap_or_default())
                .ok()
                .and_then(|mut s| s.add_libraries(&libs.unwrap_or_default()).ok().map(|()| s)),
        }
    };
    let x_allocators: Vec<String> = reader
        .meta()
        .get(crate::format::META_X_ALLOCATORS)
        .map(|v| v.split('\n').map(str::to_string).collect())
        .unwrap_or_default();
    let mut table = crate::analyze::calltable::CallTable::default();
    while let Some(rec) = reader.next_record().map_err(fmt)? {
        cx.learn(&rec);
        if let (true, Record::Function(f)) = (opts.demangle, &rec) {
            let d = addr2line::demangle_auto(std::borrow::Cow::from(f.name.as_str()), None);
            cx.defs.display.insert(f.id, d.into_owned());
        }
        let step = pairer.step(&rec, &cx.defs);
        if opts.leaks {
            if let Some(s) = &step {
                leaks.step(s, &cx.defs);
            }
            continue;
        }
        let nested = matches!(step, Some(Step::Began { depth, .. } | Step::Ended { depth, .. }) if depth > 0);
        let outer = match &step {
            Some(Step::Began { outer, .. } | Step::Ended { outer, .. }) => *outer,
            None => None,
        };
        let entry: Option<&crate::format::Enter> = match &step {
            Some(Step::Began { enter, .. }) => Some(*enter),
            Some(Step::Ended { enter, .. }) => Some(enter),
            None => None,
        };
        let filtered = match (entry, &shown_calls) {
            (Some(e), Some(f)) if cx.defs.class(e.func) != FnClass::Other => !f
                .would_select_import(
                    cx.defs.name(e.func),
                    main_name(&cx, e.thread),
                    Some(crate::select::C_LIBRARY),
                ),
            _ => false,
        };
        let origin = entry.and_then(|e| Some((e, cx.defs.functions.get(&e.func)?.origin)));
        let hidden = match origin {
            // System calls (-S) show whatever call they are made in, as ltrace -S shows them.
            Some((_, Origin::Syscall)) => false,
            // The program's own calls, nested ones included (a callback's, inside qsort),
            // as ltrace shows them. Without a stack, a call is the program's unless it is
            // nested in another (printf's malloc).
            Some((e, Origin::Imported)) => {
                filtered || !called_from_main(&cx, e, !nested) || tail_called(&cx, e, outer)
            }
            // Any other function but the allocator family was selected when recorded: by
            // -x (whose calls ltrace shows whatever -e says, and wherever they are made:
            // `ltrace -x` stops at the function's entry), or as an import the agent
            // redirected in the program's GOT, which only the program's calls go through.
            Some((e, Origin::Hooked)) if cx.defs.class(e.func) == FnClass::Other => false,
            // So are the allocator functions -x selected (ltrace -x malloc shows strdup's),
            // but for a tail call (realloc(NULL, n) jumping into malloc: the agent's
            // realloc never sees it, so neither engine shows it).
            Some((e, Origin::Hooked)) if x_allocators.iter().any(|n| n == cx.defs.name(e.func)) => {
                tail_called(&cx, e, outer)
            }
            _ => nested || filtered,
        };
        let selected = opts
            .pid
            .is_none_or(|want| record_pid(&rec, &cx.defs) == Some(want));
        if selected && (opts.all || !hidden) {
            if opts.summary {
                if let Some(s) = &step {
                    table.step(s, &cx.defs);
                }
            } else {
                trace.record(out, &rec, step, &mut cx, opts)?;
            }
        }
    }
    if opts.leaks {
        let mut report = leaks.finish();
        if let Some(want) = opts.pid {
            report.groups.retain(|g| g.pid == want);
        }
        write_leak_report(out, &report, &mut cx, opts)?;
    } else if opts.summary {
        render::write_call_table(out, &table.finish())?;
    } else {
        trace.finish(out, &mut cx, &pairer, opts)?;
    }
    out.flush()?;

    let mut warnings = std::mem::take(&mut cx.notes);
    let mut incomplete = !reader.warnings().is_empty();
    warnings.extend(reader.warnings().iter().cloned());
    warnings.extend(reader.notes().iter().cloned());
    let sym_warnings = cx.sym.take_warnings();
    incomplete |= !sym_warnings.is_empty();
    warnings.extend(sym_warnings);
    if let Some(s) = reader.summary() {
        if s.dropped > 0 {
            warnings.push(format!(
                "{} calls were seen but could not be recorded completely",
                s.dropped
            ));
        }
    }
    Ok(ReplayReport {
        warnings,
        incomplete,
    })
}

/// ltrace-style lines; a call is printed on one line unless another event comes between
/// its entry and its return, as in ltrace's `<unfinished ...>` / `<... resumed>`.
#[derive(Default)]
struct TraceWriter {
    /// An entered call waiting for its return: thread, line so far, caller text, stack.
    pending: Option<(u32, String, String, Option<u32>)>,
    /// Time prefix of the pending call's line.
    pending_prefix: String,
    callers: HashMap<u32, String>,
    /// Time columns (`-t`, `-r`, `-T`).
    times: Times,
    /// `-n`: spaces per nesting level.
    indent: usize,
    /// `-i`: show return addresses.
    return_address: bool,
}

/// `HH:MM:SS` (UTC) of a wall-clock time in nanoseconds since the epoch.
fn time_of_day(ns: u128) -> String {
    let s = (ns / 1_000_000_000) % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s % 3600 / 60, s % 60)
}

/// The optional time columns of the text trace.
#[derive(Default)]
struct Times {
    clock: u8,
    relative: bool,
    durations: bool,
    /// Wall-clock time of the recording's start, from its metadata.
    start_unix_ns: u128,
    /// Time of the previous line, for `-r`.
    last: Option<u64>,
}

impl Times {
    /// The prefix of a line about an event at `ts` (recording nanoseconds).
    fn prefix(&mut self, ts: u64) -> String {
        let mut p = String::new();
        if self.relative {
            let d = ts.saturating_sub(self.last.unwrap_or(ts));
            p.push_str(&format!(
                "{:3}.{:06} ",
                d / 1_000_000_000,
                d % 1_000_000_000 / 1000
            ));
        }
        self.last = Some(ts);
        if self.clock > 0 {
            let wall = self.start_unix_ns + u128::from(ts);
            let (secs, micros) = (wall / 1_000_000_000, wall % 1_000_000_000 / 1000);
            match self.clock {
                1 => p.push_str(&format!("{} ", time_of_day(wall))),
                2 => p.push_str(&format!("{}.{micros:06} ", time_of_day(wall))),
                _ => p.push_str(&format!("{secs}.{micros:06} ")),
            }
        }
        p
    }

    /// ` <0.000123>`: seconds from entry to return, when both are known.
    fn duration(&self, enter: &crate::format::Enter, exit: &crate::format::Exit) -> String {
        match exit.ts {
            Some(ts) if self.durations => {
                let d = ts.saturating_sub(enter.ts);
                format!(" <{}.{:06}>", d / 1_000_000_000, d % 1_000_000_000 / 1000)
            }
            _ => String::new(),
        }
    }
}

impl TraceWriter {
    fn caller_of(&mut self, stack: Option<u32>, defs: &Defs, sym: &mut Symbolizer) -> String {
        let Some(id) = stack else {
            return String::new();
        };
        if let Some(c) = self.callers.get(&id) {
            return c.clone();
        }
        let frames = defs.stacks.get(&id).cloned().unwrap_or_default();
        let c = caller(sym, &frames)
            .map(|sf| caller_text(&sf))
            .unwrap_or_default();
        self.callers.insert(id, c.clone());
        c
    }

    fn flush(&mut self, out: &mut dyn Write, defs: &Defs) -> std::io::Result<()> {
        self.flush_as(out, defs, "<unfinished ...>")
    }

    /// Writes the pending call's line, ended with `mark`.
    fn flush_as(&mut self, out: &mut dyn Write, defs: &Defs, mark: &str) -> std::io::Result<()> {
        if let Some((thread, head, caller, _)) = self.pending.take() {
            let (pid, tid) = defs.thread(thread);
            let t = std::mem::take(&mut self.pending_prefix);
            if caller.is_empty() {
                writeln!(out, "{t}[{pid} {tid}] {head} {mark}")?;
            } else {
                writeln!(out, "{t}[{pid} {tid}] {head} {mark}  {caller}")?;
            }
        }
        Ok(())
    }

    /// `name(args` with the `-n` indentation and the `-i` return address before it.
    fn head(
        &self,
        defs: &Defs,
        sym: &mut Symbolizer,
        enter: &crate::format::Enter,
        depth: usize,
    ) -> String {
        let mut h = " ".repeat(self.indent * depth);
        if self.return_address {
            let frames = defs.frames_of(enter.stack);
            match render::expand(sym, &frames[..frames.len().min(1)], false).first() {
                Some(sf) if !sf.module.is_empty() => h.push_str(&format!(
                    "[{}+{:#x}] ",
                    render::module_name(&sf.module),
                    sf.addr
                )),
                Some(sf) => h.push_str(&format!("[{:#x}] ", sf.addr)),
                None => h.push_str("[?] "),
            }
        }
        h.push_str(&call_head(defs, enter));
        h
    }

    /// Prefix for a line about an event at `ts`.
    fn at(&mut self, ts: Option<u64>) -> String {
        match ts {
            Some(ts) => self.times.prefix(ts),
            None if self.times.clock > 0 || self.times.relative => "? ".to_string(),
            None => String::new(),
        }
    }

    fn write_line(
        out: &mut dyn Write,
        prefix: String,
        caller: &str,
        stack: Option<u32>,
        defs: &Defs,
        sym: &mut Symbolizer,
        show_stack: bool,
    ) -> std::io::Result<()> {
        if caller.is_empty() {
            writeln!(out, "{prefix}")?;
        } else {
            writeln!(out, "{prefix}  {caller}")?;
        }
        if show_stack {
            let frames = defs.frames_of(stack);
            write_stack(out, sym, &frames, "    ")?;
        }
        Ok(())
    }

    fn record(
        &mut self,
        out: &mut dyn Write,
        rec: &Record,
        step: Option<Step<'_>>,
        defs: &Defs,
        sym: &mut Symbolizer,
        show_stack: bool,
    ) -> std::io::Result<()> {
        match step {
            // Its return is not shown: the call's line said so.
            Some(Step::Ended { enter, exit, .. })
                if exit.ret.is_none()
                    && rltrace_wire::protos::never_returns(defs.name(enter.func)) =>
            {
                Ok(())
            }
            Some(Step::Began {
                enter, void, depth, ..
            }) => {
                self.flush(out, defs)?;
                let c = self.caller_of(enter.stack, defs, sym);
                let t = self.at(Some(enter.ts));
                let head = self.head(defs, sym, enter, depth);
                if rltrace_wire::protos::never_returns(defs.name(enter.func)) {
                    // `exit(0 <no return ...>`, as ltrace shows it.
                    self.pending = Some((enter.thread, head, c, enter.stack));
                    self.pending_prefix = t;
                    self.flush_as(out, defs, "<no return ...>")
                } else if void {
                    let (pid, tid) = defs.thread(enter.thread);
                    let line = format!("{t}[{pid} {tid}] {head}) = <void>");
                    Self::write_line(out, line, &c, enter.stack, defs, sym, show_stack)
                } else {
                    self.pending = Some((enter.thread, head, c, enter.stack));
                    self.pending_prefix = t;
                    Ok(())
                }
            }
            Some(Step::Ended { enter, exit, .. }) => {
                let (pid, tid) = defs.thread(enter.thread);
                let ret = ret_text(defs, &enter, exit);
                let took = self.times.duration(&enter, exit);
                match self.pending.take() {
                    Some((thread, head, c, stack)) if thread == exit.thread => {
                        let t = std::mem::take(&mut self.pending_prefix);
                        let line = format!("{t}[{pid} {tid}] {head}){ret}{took}");
                        Self::write_line(out, line, &c, stack, defs, sym, show_stack)
                    }
                    other => {
                        self.pending = other;
                        self.flush(out, defs)?;
                        let t = self.at(exit.ts);
                        writeln!(
                            out,
                            "{t}[{pid} {tid}] <... {} resumed> ){ret}{took}",
                            defs.shown(enter.func)
                        )
                    }
                }
            }
            None => match rec {
                Record::Signal(x) => {
                    self.flush(out, defs)?;
                    let (pid, tid) = defs.thread(x.thread);
                    let frames = defs.frames_of(x.stack);
                    let at = render::crash_site(sym, &frames)
                        .map(|sf| format!("  {}", caller_text(&sf)))
                        .unwrap_or_default();
                    // Fault signals carry the address that faulted, NULL included.
                    let faults = [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE];
                    let addr = if faults.contains(&x.signo) {
                        format!(" at {:#x}", x.addr)
                    } else {
                        String::new()
                    };
                    let t = self.at(Some(x.ts));
                    writeln!(
                        out,
                        "{t}[{pid} {tid}] --- {}{addr} ---{at}",
                        render::signal_text(x.signo)
                    )?;
                    // A crash always shows its stack: it is what the user came for.
                    render::write_frames(out, &render::expand(sym, &frames, true), "    ")
                }
                Record::ProcessExit(p) => {
                    // A call the process ended in (a thread's) never returned.
                    let ends = |t: &(u32, String, String, Option<u32>)| defs.thread(t.0).0 == p.pid;
                    match self.pending.as_ref().is_some_and(ends) {
                        true => self.flush_as(out, defs, "<no return ...>")?,
                        false => self.flush(out, defs)?,
                    }
                    let t = self.at(Some(p.ts));
                    writeln!(out, "{t}[{} {}] {}", p.pid, p.pid, render::exit_text(p.how))
                }
                _ => Ok(()),
            },
        }
    }
}

/// The process a record is about, for `--pid`.
fn record_pid(rec: &Record, defs: &Defs) -> Option<u32> {
    match rec {
        Record::Enter(e) => Some(defs.thread(e.thread).0),
        Record::Exit(x) => Some(defs.thread(x.thread).0),
        Record::ProcessStart(p) => Some(p.pid),
        Record::ProcessExit(p) => Some(p.pid),
        Record::Signal(x) => Some(defs.thread(x.thread).0),
        _ => None,
    }
}

/// `rltrace info`: summarizes `path` to `out`.
pub fn info(path: &Path, out: &mut dyn Write) -> Result<ReplayReport, ReplayError> {
    let shown = path.display().to_string();
    let mut reader = open_file(path)?;
    let mut b = crate::analyze::summary::SummaryBuilder::default();
    while let Some(rec) = reader.next_record().map_err(|source| ReplayError::Format {
        path: shown.clone(),
        source,
    })? {
        b.add(&rec);
    }
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let mut warnings = reader.warnings().to_vec();
    let complete = warnings.is_empty();
    warnings.extend(reader.notes().iter().cloned());
    let meta = reader.meta().clone();
    render::info::write_info(out, &shown, size, &meta, &b.finish(), complete, &warnings)?;
    out.flush()?;
    Ok(ReplayReport {
        warnings: Vec::new(),
        incomplete: !complete,
    })
}
