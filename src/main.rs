use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use rltrace::format::ExitHow;
use rltrace::pack::{self, PackOptions, PackSummary};
use rltrace::record::{self, RecordRequest};
use rltrace::replay::{self, OutputFormat, ReplayOptions};
use rltrace::symbolize::SymbolizeOptions;

/// Record library calls with their stacks; replay them symbolized; find leaks.
#[derive(Parser)]
#[command(name = "rltrace", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum EngineArg {
    Auto,
    Agent,
    Ptrace,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a command (or attach to a running process with -p) and record its allocator
    /// calls with their stacks.
    Record {
        /// Output file (default: rltrace-<cmd>-<pid>.rlt).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Most frames kept per stack.
        #[arg(long, default_value_t = 64)]
        max_depth: usize,
        /// Resolution of the stored times, in nanoseconds (1 to 1000000000): the default,
        /// 1000, is what ltrace's -tt, -r and -T show; 1 keeps every nanosecond, at about
        /// a byte and a half per call.
        #[arg(long, value_name = "NS", default_value_t = rltrace::record::DEFAULT_TIME_UNIT,
              value_parser = clap::value_parser!(u64).range(1..=rltrace::format::MAX_TIME_UNIT))]
        time_resolution: u64,
        /// Do not follow child processes (forks, vforks, clones that are not threads); the
        /// command's own execs are still followed.
        #[arg(long)]
        no_follow: bool,
        /// Pack the recording when done, so it replays on another machine (see `pack`).
        #[arg(long)]
        pack: bool,
        /// With --pack: also store the source lines the symbols point at.
        #[arg(long, requires = "pack")]
        sources: bool,
        /// Also trace these functions, in whichever module defines them (ltrace's filter
        /// syntax: `write+send+str*-strlen`, `sym@libc.so*`, `/^str/`, `sym@MAIN`); repeatable.
        /// Their arguments are shown as integer registers in hex.
        #[arg(short = 'x', value_name = "FILTER")]
        extra: Vec<String>,
        /// Trace the program's calls to functions the library LIB defines (a glob on its
        /// file name, `libssl.so*`), as ltrace's -l: with no -e, only those; repeatable.
        /// `-x @LIB` traces every call into LIB, from every caller.
        #[arg(short = 'l', value_name = "LIB")]
        libs: Vec<String>,
        /// Most bytes of each string or buffer argument to record (ltrace's -s).
        #[arg(short = 's', value_name = "N", default_value_t = 32)]
        string_limit: usize,
        /// Record only the allocator family (and what -x selects), not every call the
        /// program makes into shared libraries: the lightest recording for a leak hunt
        /// (ltrace's -L: no default @MAIN).
        #[arg(short = 'L', long, conflicts_with = "calls")]
        no_imports: bool,
        /// Also record system calls (ltrace's -S), as `SYS_write(1, "hi\n", 3) = 3`, shown
        /// whatever library call they are made in. Uses the ptrace engine.
        #[arg(short = 'S')]
        syscalls: bool,
        /// Trace only the program's calls into libraries that this chain selects (ltrace's
        /// -e: `write+send+str*`, `-puts`, `/^mem/`, `sym@MAIN`); repeatable, a call any
        /// chain selects is traced. The allocator family is recorded regardless, for the
        /// leak report.
        #[arg(short = 'e', value_name = "FILTER")]
        calls: Vec<String>,
        /// Load prototypes from an ltrace.conf(5) file (`int puts(string);`); they take
        /// precedence over the built-in ones and are stored in the recording; repeatable.
        #[arg(short = 'F', long = "config", value_name = "FILE")]
        configs: Vec<PathBuf>,
        /// Attach to this running process (all its threads) instead of running a command;
        /// Ctrl-C, SIGTERM or SIGHUP detach and leave it running as it was.
        #[arg(
            short = 'p',
            long = "pid",
            value_name = "PID",
            conflicts_with = "command"
        )]
        attach: Option<u32>,
        /// With -p: detach after this many seconds (fractions allowed).
        #[arg(long, value_name = "SECS", requires = "attach")]
        duration: Option<f64>,
        /// Recording engine: `agent` (in-process via LD_PRELOAD, fast; dynamically linked
        /// programs, allocator functions), `ptrace` (any program, any symbol, attach), or
        /// `auto`: the agent when it can record what is asked, ptrace otherwise.
        #[arg(long, value_enum, default_value = "auto")]
        engine: EngineArg,
        /// The command and its arguments.
        #[arg(
            required_unless_present = "attach",
            trailing_var_arg = true,
            allow_hyphen_values = true
        )]
        command: Vec<OsString>,
    },
    /// Print the recorded calls, symbolized, or the leak report.
    Replay {
        /// The recording.
        file: PathBuf,
        /// List blocks never freed, grouped by allocation stack.
        #[arg(long)]
        leaks: bool,
        /// Print every frame of each call's stack.
        #[arg(long)]
        stack: bool,
        /// Also show calls made inside another traced call (an allocator calling itself).
        #[arg(long)]
        all: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
        /// Only this process (calls, or leak groups).
        #[arg(long)]
        pid: Option<u32>,
        /// With --leaks: also draw live bytes by allocation stack as an SVG flame graph.
        #[arg(long, value_name = "FILE", requires = "leaks")]
        svg: Option<PathBuf>,
        /// With --leaks: show each group's live blocks over the run, so a leak that grows
        /// with the workload stands out from a cache filled once.
        #[arg(long, requires = "leaks")]
        growth: bool,
        /// With --leaks: print the full stack of each group.
        #[arg(short, long)]
        verbose: bool,
        /// Also look for debug files here (by build-id and debuglink name).
        #[arg(long = "debug-dir", value_name = "DIR")]
        debug_dirs: Vec<PathBuf>,
        /// Prefix lines with the time of day (UTC); -tt adds microseconds, -ttt prints
        /// seconds since the epoch.
        #[arg(short = 't', action = clap::ArgAction::Count, conflicts_with = "leaks")]
        clock: u8,
        /// Prefix lines with the time since the previous line.
        #[arg(short = 'r', conflicts_with = "leaks")]
        relative: bool,
        /// Show the time spent in each call, from its entry to its return.
        #[arg(short = 'T', conflicts_with = "leaks")]
        durations: bool,
        /// Print calls and time per function instead of the trace.
        #[arg(short = 'c', conflicts_with = "leaks")]
        summary: bool,
        /// Show the return address of each call (`[module+offset]`).
        #[arg(short = 'i', conflicts_with = "leaks")]
        return_address: bool,
        /// Show traced functions' C++ and Rust names demangled (`_Znwm` as `operator
        /// new(unsigned long)`), as ltrace's -C does.
        #[arg(short = 'C', long)]
        demangle: bool,
        /// Indent each call by N spaces per level of nesting (with --all).
        #[arg(
            short = 'n',
            value_name = "N",
            default_value_t = 0,
            conflicts_with = "leaks"
        )]
        indent: usize,
        /// Write the output to FILE instead of standard output.
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Store the symbols (and with --sources the source lines) a recording references, so
    /// that it replays identically on a machine without the recorded binaries.
    Pack {
        /// The recording.
        file: PathBuf,
        /// Write the packed recording here instead of replacing FILE.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Also store the source lines the symbols point at.
        #[arg(long)]
        sources: bool,
        /// Also look for debug files here (by build-id and debuglink name).
        #[arg(long = "debug-dir", value_name = "DIR")]
        debug_dirs: Vec<PathBuf>,
    },
    /// Show what a recording holds: command, processes, threads, modules with build-ids,
    /// call counts, time span, and whether it was cut short.
    Info {
        /// The recording.
        file: PathBuf,
    },
    /// Dump the raw records of a recording (debugging aid).
    Dump {
        /// The recording.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        // `rltrace replay x.rlt | head`: the reader went away, which is not an error.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rltrace: error: {}", error_chain(&e));
            ExitCode::from(2)
        }
    }
}

fn report_pack(path: &std::path::Path, s: &PackSummary) {
    for w in &s.warnings {
        eprintln!("rltrace: warning: {w}");
    }
    eprintln!(
        "rltrace: packed {} addresses ({} frames) and {} source lines into {}: {} bytes ({:+} bytes)",
        s.addresses,
        s.frames,
        s.source_lines,
        path.display(),
        s.size_after,
        s.size_after as i64 - s.size_before as i64
    );
}

/// The error and its causes on one line, skipping a cause its parent already quotes.
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

fn show_progress(p: &record::Progress) {
    match *p {
        record::Progress::Attached { pid, threads } => eprintln!(
            "rltrace: attached to process {pid} ({threads} thread{}); Ctrl-C detaches",
            if threads == 1 { "" } else { "s" }
        ),
        record::Progress::Detaching { pid } => {
            eprintln!("rltrace: detaching from process {pid}")
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Cmd::Record {
            output,
            max_depth,
            time_resolution,
            no_follow,
            pack,
            sources,
            attach,
            duration,
            extra,
            libs,
            string_limit,
            no_imports,
            syscalls,
            calls,
            configs,
            engine,
            command,
        } => {
            let mut protos = Vec::new();
            for path in &configs {
                let text = std::fs::read_to_string(path).map_err(|source| {
                    rltrace::protos::ConfError::Read {
                        path: path.display().to_string(),
                        source,
                    }
                })?;
                let conf = rltrace::protos::parse_conf(&text);
                if let Some((line, why)) = conf.skipped.first() {
                    eprintln!(
                        "rltrace: {}: {} declarations skipped (first at line {line}: {why})",
                        path.display(),
                        conf.skipped.len()
                    );
                }
                protos.extend(conf.protos);
            }
            let duration = match duration {
                Some(s) if !(s.is_finite() && s > 0.0 && s < 1e9) => {
                    anyhow::bail!("--duration must be a positive number of seconds, not {s}")
                }
                d => d.map(std::time::Duration::from_secs_f64),
            };
            let mut req = RecordRequest {
                target: match attach {
                    Some(pid) => record::Target::Pid(pid),
                    None => record::Target::Command(command),
                },
                output,
                trace: Default::default(),
                duration,
                progress: Some(show_progress),
                select: if extra.is_empty() {
                    None
                } else {
                    Some(record::select::Selection::parse(&extra)?)
                },
                protos: Vec::new(),
                calls: {
                    // Checked here, so a typo fails before the program starts.
                    if !calls.is_empty() || !libs.is_empty() {
                        record::select::Selection::parse_calls(&calls)?.add_libraries(&libs)?;
                    }
                    calls
                },
                libraries: libs,
                engine: match engine {
                    EngineArg::Auto => record::Engine::Auto,
                    EngineArg::Agent => record::Engine::Agent,
                    EngineArg::Ptrace => record::Engine::Ptrace,
                },
            };
            req.trace.max_depth = max_depth.clamp(1, rltrace::format::MAX_FRAMES);
            req.trace.time_unit = time_resolution;
            req.trace.follow = !no_follow;
            req.trace.imports = !no_imports;
            req.trace.syscalls = syscalls;
            req.protos = protos;
            req.trace.string_limit = string_limit.min(rltrace::format::MAX_ARG_DATA);
            let out = record::record(&req)?;
            eprintln!(
                "rltrace: engine: {} ({})",
                match out.engine.0 {
                    record::Engine::Agent => "agent",
                    record::Engine::Both => "agent+ptrace",
                    _ => "ptrace",
                },
                out.engine.1
            );
            eprintln!(
                "rltrace: recorded {} records to {}{}",
                out.records,
                out.path.display(),
                if out.dropped > 0 {
                    format!(" ({} calls could not be recorded)", out.dropped)
                } else {
                    String::new()
                }
            );
            for rule in &out.unmatched_calls {
                eprintln!(
                    "rltrace: warning: {}",
                    record::select::unmatched_call_text(rule)
                );
            }
            for rule in &out.unmatched {
                eprintln!("rltrace: warning: -x rule {rule:?} matched no function in any module");
            }
            if pack {
                let opts = PackOptions {
                    sources,
                    ..Default::default()
                };
                report_pack(&out.path, &pack::pack(&out.path, &out.path, &opts)?);
            }
            Ok(match out.exit {
                ExitHow::Code(c) => ExitCode::from(c as u8),
                ExitHow::Signal(s) => ExitCode::from(128u8.wrapping_add(s as u8)),
                ExitHow::Running | ExitHow::Unknown => ExitCode::SUCCESS,
            })
        }
        Cmd::Replay {
            file,
            leaks,
            stack,
            all,
            format,
            pid,
            svg,
            growth,
            verbose,
            debug_dirs,
            clock,
            relative,
            durations,
            summary,
            return_address,
            demangle,
            indent,
            output,
        } => {
            let opts = ReplayOptions {
                return_address,
                demangle,
                indent: indent.min(64),
                clock: clock.min(3),
                relative,
                durations,
                summary,
                format,
                pid,
                svg,
                leaks,
                stack,
                all,
                verbose,
                growth,
                symbolize: SymbolizeOptions { debug_dirs },
            };
            let report = match &output {
                Some(path) => {
                    let f = std::fs::File::create(path)
                        .with_context(|| format!("cannot create {}", path.display()))?;
                    let mut out = std::io::BufWriter::new(f);
                    replay::replay(&file, &opts, &mut out)?
                }
                None => {
                    let stdout = std::io::stdout();
                    let mut out = std::io::BufWriter::new(stdout.lock());
                    replay::replay(&file, &opts, &mut out)?
                }
            };
            for w in &report.warnings {
                eprintln!("rltrace: warning: {w}");
            }
            // 1: the output was printed but is incomplete (cut-short recording, missing binary).
            Ok(if report.incomplete {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Cmd::Pack {
            file,
            output,
            sources,
            debug_dirs,
        } => {
            let opts = PackOptions {
                sources,
                symbolize: SymbolizeOptions { debug_dirs },
            };
            let out = output.unwrap_or_else(|| file.clone());
            let summary = pack::pack(&file, &out, &opts)?;
            report_pack(&out, &summary);
            Ok(if summary.warnings.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Cmd::Info { file } => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let report = replay::info(&file, &mut out)?;
            Ok(if report.incomplete {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Cmd::Dump { file } => {
            let mut r = rltrace::format::open_file(&file)?;
            println!("{:?}", r.meta());
            while let Some(rec) = r
                .next_record()
                .with_context(|| file.display().to_string())?
            {
                println!("{rec:?}");
            }
            for w in r.warnings().iter().chain(r.notes()) {
                eprintln!("rltrace: warning: {w}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
