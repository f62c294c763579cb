//! `rltrace replay`: read → symbolize → analyze → render, streaming the recording once.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Write};
use std::path::Path;

use crate::analyze::leaks::LeakAnalysis;
use crate::analyze::{CallPairer, Defs, Step};
use crate::format::{FormatError, Reader, Record};
use crate::render::{self, call_head, caller, caller_text, ret_text, write_stack};
use crate::symbolize::{SymbolizeOptions, Symbolizer};

/// What to show.
#[derive(Clone, Debug, Default)]
pub struct ReplayOptions {
    /// Show the leak report instead of the call trace.
    pub leaks: bool,
    /// Show every frame of each call's stack.
    pub stack: bool,
    /// Leak report: show full stacks.
    pub verbose: bool,
    /// Trace: also show calls made while another traced call of the same thread was
    /// running (an allocator calling itself, `realloc(NULL, n)` calling `malloc`).
    pub all: bool,
    /// Where to find debug info.
    pub symbolize: SymbolizeOptions,
}

/// Errors of replay.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The recording could not be opened.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The recording is unreadable.
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

/// Replays `path` to `out`.
pub fn replay(
    path: &Path,
    opts: &ReplayOptions,
    out: &mut dyn Write,
) -> Result<ReplayReport, ReplayError> {
    let shown = path.display().to_string();
    let file = File::open(path).map_err(|source| ReplayError::Open {
        path: shown.clone(),
        source,
    })?;
    let fmt = |source| ReplayError::Format {
        path: shown.clone(),
        source,
    };
    let mut reader = Reader::new(BufReader::with_capacity(1 << 20, file)).map_err(fmt)?;
    let mut defs = Defs::default();
    let mut sym = Symbolizer::new(opts.symbolize.clone());
    let mut pairer = CallPairer::default();
    let mut leaks = LeakAnalysis::default();
    let mut trace = TraceWriter::default();
    let mut exe_of: HashMap<u32, String> = HashMap::new();
    let mut sources = render::SourceCache::default();
    let mut warnings = Vec::new();
    while let Some(rec) = reader.next_record().map_err(fmt)? {
        defs.learn(&rec);
        match &rec {
            Record::Module(m) => sym.add_module(m.clone()),
            Record::ProcessStart(p) => {
                exe_of.insert(p.pid, p.path.clone());
            }
            Record::Note(n) => warnings.push(format!("recorder (pid {}): {}", n.pid, n.text)),
            Record::Packed(p) => sym.add_packed(p.clone()),
            Record::Source(l) => sources.add_packed(l.clone()),
            _ => {}
        }
        let step = pairer.step(&rec, &defs);
        if opts.leaks {
            if let Some(s) = &step {
                leaks.step(s, &defs);
            }
        } else {
            let nested = matches!(step, Some(Step::Began { depth, .. } | Step::Ended { depth, .. }) if depth > 0);
            if opts.all || !nested {
                trace.record(out, &rec, step, &defs, &mut sym, opts.stack)?;
            }
        }
    }
    if opts.leaks {
        let report = leaks.finish();
        render::write_leaks(
            out,
            &report,
            &defs,
            &mut sym,
            opts.verbose,
            &exe_of,
            &mut sources,
        )?;
    } else {
        trace.flush(out, &defs)?;
    }
    out.flush()?;
    let mut incomplete = !reader.warnings().is_empty();
    warnings.extend(reader.warnings().iter().cloned());
    let sym_warnings = sym.take_warnings();
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
    callers: HashMap<u32, String>,
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
        if let Some((thread, head, caller, _)) = self.pending.take() {
            let (pid, tid) = defs.thread(thread);
            if caller.is_empty() {
                writeln!(out, "[{pid} {tid}] {head} <unfinished ...>")?;
            } else {
                writeln!(out, "[{pid} {tid}] {head} <unfinished ...>  {caller}")?;
            }
        }
        Ok(())
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
            let frames = stack
                .and_then(|s| defs.stacks.get(&s))
                .cloned()
                .unwrap_or_default();
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
            Some(Step::Began {
                enter, void: true, ..
            }) => {
                self.flush(out, defs)?;
                let (pid, tid) = defs.thread(enter.thread);
                let c = self.caller_of(enter.stack, defs, sym);
                let line = format!("[{pid} {tid}] {}) = <void>", call_head(defs, enter));
                Self::write_line(out, line, &c, enter.stack, defs, sym, show_stack)
            }
            Some(Step::Began { enter, .. }) => {
                self.flush(out, defs)?;
                let c = self.caller_of(enter.stack, defs, sym);
                self.pending = Some((enter.thread, call_head(defs, enter), c, enter.stack));
                Ok(())
            }
            Some(Step::Ended { enter, exit, .. }) => {
                let (pid, tid) = defs.thread(enter.thread);
                let ret = ret_text(defs, &enter, exit);
                match self.pending.take() {
                    Some((thread, head, c, stack)) if thread == exit.thread => {
                        let line = format!("[{pid} {tid}] {head}){ret}");
                        Self::write_line(out, line, &c, stack, defs, sym, show_stack)
                    }
                    other => {
                        self.pending = other;
                        self.flush(out, defs)?;
                        writeln!(
                            out,
                            "[{pid} {tid}] <... {} resumed> ){ret}",
                            defs.name(enter.func)
                        )
                    }
                }
            }
            None => match rec {
                Record::ProcessExit(p) => {
                    self.flush(out, defs)?;
                    writeln!(out, "[{} {}] {}", p.pid, p.pid, render::exit_text(p.how))
                }
                _ => Ok(()),
            },
        }
    }
}
