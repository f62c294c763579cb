//! Rendering for people: ltrace-style call lines, stacks, leak reports.

use std::collections::HashMap;
use std::io::{self, Write};

use crate::analyze::leaks::LeakReport;
use crate::analyze::Defs;
use crate::format::{Enter, Exit, ExitHow, FnClass, Frame};
use crate::symbolize::{SymFrame, Symbolizer};

pub mod info;
pub mod machine;

/// How an argument is shown.
#[derive(Clone, Copy)]
enum Arg {
    Size,
    Ptr,
}

fn arg_kinds(class: FnClass) -> &'static [Arg] {
    match class {
        FnClass::Malloc | FnClass::Valloc | FnClass::Pvalloc => &[Arg::Size],
        FnClass::Calloc => &[Arg::Size, Arg::Size],
        FnClass::Realloc => &[Arg::Ptr, Arg::Size],
        FnClass::ReallocArray => &[Arg::Ptr, Arg::Size, Arg::Size],
        FnClass::Free => &[Arg::Ptr],
        FnClass::PosixMemalign => &[Arg::Ptr, Arg::Size, Arg::Size],
        FnClass::AlignedAlloc => &[Arg::Size, Arg::Size],
        FnClass::Other => &[],
    }
}

/// A pointer as ltrace shows an `addr`: hex, a null one as `0`.
pub fn ptr(v: u64) -> String {
    if v == 0 {
        "0".to_string()
    } else {
        format!("{v:#x}")
    }
}

/// A string's pointer when its text was not captured, as ltrace shows a `string`: hex, a
/// null one as `nil`.
fn str_ptr(v: u64) -> String {
    if v == 0 {
        "nil".to_string()
    } else {
        format!("{v:#x}")
    }
}

/// The prototype to show a call of `e.func` by, if it has one the call's recorded values
/// fit: a call recorded before its function had a prototype with `float`/`double` values
/// (six integer registers) is shown by those registers instead.
fn proto_of(defs: &Defs, e: &Enter) -> Option<&'static crate::protos::Proto> {
    if defs.class(e.func) != FnClass::Other {
        return None;
    }
    let p = crate::protos::lookup(defs.name(e.func))?;
    let vector = p.ret.is_vector() || p.args.iter().any(|t| t.is_vector());
    let fits = match p.varargs() {
        Some((first, _)) => e.args.len() >= first.min(p.nargs()),
        None => e.args.len() == p.nargs(),
    };
    (fits || !vector).then_some(p)
}

/// `name(arg, arg` without the closing parenthesis.
pub fn call_head(defs: &Defs, e: &Enter) -> String {
    format!("{}({}", defs.shown(e.func), call_args(defs, e).join(", "))
}

/// A call's arguments as the trace shows them.
pub fn call_args(defs: &Defs, e: &Enter) -> Vec<String> {
    if let Some(p) = proto_of(defs, e) {
        return typed_args(p, &e.args, &e.data);
    }
    let kinds = arg_kinds(defs.class(e.func));
    e.args
        .iter()
        .enumerate()
        .map(|(i, &a)| match kinds.get(i) {
            Some(Arg::Size) => a.to_string(),
            Some(Arg::Ptr) => ptr(a),
            // No prototype: integer registers in hex, never a guess at their type.
            None => format!("{a:#x}"),
        })
        .collect()
}

/// The arguments of a call of `p` with recorded `values` and captures `data`, as the
/// trace shows them.
pub fn typed_args(
    p: &crate::protos::Proto,
    values: &[u64],
    data: &[crate::format::ArgData],
) -> Vec<String> {
    let data = |i: usize| data.iter().find(|d| usize::from(d.arg) == i);
    let mut args: Vec<String> = values
        .iter()
        .enumerate()
        .take(p.args.len())
        .map(|(i, &a)| typed(p.args.get(i).copied(), a, data(i)))
        .collect();
    if args.len() < p.args.len() && p.nargs() < p.args.len() {
        // The rest were passed on the stack.
        args.push("...".to_string());
    }
    if let Some(fmt) = p.format_arg().and_then(data) {
        varargs(&mut args, fmt, p, values, &data);
    }
    args
}

/// Appends the variadic arguments of a `printf`-family call `p` as its format's
/// conversions say, each from where the ABI passed it (see [`rltrace_wire::protos::places`]):
/// an integer register, a vector register recorded after them, or a captured stack word.
/// An argument not recorded (a recording without vector registers or stack words, more
/// stack words than captured) ends the list with `...`.
fn varargs<'a>(
    out: &mut Vec<String>,
    fmt: &crate::format::ArgData,
    p: &crate::protos::Proto,
    values: &[u64],
    data: &dyn Fn(usize) -> Option<&'a crate::format::ArgData>,
) {
    use rltrace_wire::protos::{places, Conv, Place, STACK_STRINGS, STACK_WORDS};
    let Some((first, count)) = p.varargs() else {
        return;
    };
    let vectors = values.get(first + count..).unwrap_or(&[]);
    let stack = data(usize::from(STACK_WORDS));
    let word = |w: usize| {
        let b = stack?.bytes.get(8 * w..8 * w + 8)?;
        Some(u64::from_le_bytes(b.try_into().ok()?))
    };
    let mut more = false;
    places(
        &fmt.bytes,
        (first, count),
        p.vector_varargs(),
        |c, place| {
            if more {
                return;
            }
            let (v, captured) = match place {
                Place::Value(i) => (values.get(i).copied(), data(i)),
                Place::Vector(k) => (vectors.get(k).copied(), None),
                Place::Stack(w) => (word(w), data(usize::from(STACK_STRINGS) + w)),
                Place::Lost => (None, None),
            };
            let shown = v.and_then(|v| {
                Some(match c {
                    Conv::Float => float_text(f64::from_bits(v)),
                    Conv::Int(n) => sign_extend(v, n).to_string(),
                    Conv::Uint(n) => truncate(v, n).to_string(),
                    Conv::Hex(n) => format!("{:#x}", truncate(v, n)),
                    Conv::Octal(n) => format!("0{:o}", truncate(v, n)),
                    Conv::Char => typed(Some(crate::protos::Ty::Char), v, None),
                    Conv::Str => typed(Some(crate::protos::Ty::Str), v, captured),
                    Conv::Ptr => ptr(v),
                    Conv::Unknown => return None,
                })
            });
            match shown {
                Some(s) => out.push(s),
                None => {
                    out.push("...".to_string());
                    more = true;
                }
            }
        },
    );
}

/// A floating-point value in the fewest digits that read back as it (`2.5`, `1e-9`,
/// `40.0`): exact, unlike ltrace's `%f`, which shows 1e-9 as `0.000000`.
pub fn float_text(v: f64) -> String {
    if v.is_nan() {
        return "nan".to_string();
    }
    format!("{v:?}")
}

fn float32_text(v: f32) -> String {
    if v.is_nan() {
        return "nan".to_string();
    }
    format!("{v:?}")
}

fn truncate(v: u64, bytes: u8) -> u64 {
    match bytes {
        1 => v as u8 as u64,
        2 => v as u16 as u64,
        4 => v as u32 as u64,
        _ => v,
    }
}

fn sign_extend(v: u64, bytes: u8) -> i64 {
    match bytes {
        1 => v as u8 as i8 as i64,
        2 => v as u16 as i16 as i64,
        4 => v as u32 as i32 as i64,
        _ => v as i64,
    }
}

/// One value shown as its prototype's type says (hex when there is no prototype).
fn typed(ty: Option<crate::protos::Ty>, v: u64, data: Option<&crate::format::ArgData>) -> String {
    use crate::protos::{quote, Ty};
    match (ty, data) {
        (Some(Ty::Str | Ty::Buf(_) | Ty::Format), Some(d)) => quote(&d.bytes, d.truncated),
        (Some(Ty::Int), _) => (v as u32 as i32).to_string(),
        (Some(Ty::Long), _) => (v as i64).to_string(),
        (Some(Ty::Size), _) => v.to_string(),
        (Some(Ty::Char), _) => match v as u8 {
            b @ 0x20..=0x7e if b != b'\'' && b != b'\\' => format!("'{}'", b as char),
            b => format!("'\\{b:03o}'"),
        },
        (Some(Ty::Ptr), _) => ptr(v),
        (Some(Ty::Str | Ty::Buf(_) | Ty::Format), _) => str_ptr(v),
        (Some(Ty::Hex) | None, _) => format!("{v:#x}"),
        (Some(Ty::Void), _) => String::new(),
        (Some(Ty::Float), _) => float32_text(f32::from_bits(v as u32)),
        (Some(Ty::Double), _) => float_text(f64::from_bits(v)),
    }
}

/// ` = value` for a return.
pub fn ret_text(defs: &Defs, e: &Enter, x: &Exit) -> String {
    if let (Some(p), Some(r)) = (proto_of(defs, e), x.ret) {
        // The agent records a return for `void` imports too (for nesting).
        if p.ret == crate::protos::Ty::Void {
            return " = <void>".to_string();
        }
        // A returned string, if the engine read it at the return (index 0).
        let text = x.data.iter().find(|d| d.arg == 0);
        return format!(" = {}", typed(Some(p.ret), r, text));
    }
    match (defs.class(e.func), x.ret) {
        (_, None) => " = <no return ...>".to_string(),
        (FnClass::PosixMemalign, Some(r)) => match x.out {
            Some(p) if r == 0 => format!(" = 0 [*memptr={}]", ptr(p)),
            _ => format!(" = {}", r as i32),
        },
        (FnClass::Other, Some(r)) => format!(" = {r:#x}"),
        (_, Some(r)) => format!(" = {}", ptr(r)),
    }
}

/// A signal's name and description: `SIGSEGV (Segmentation fault)`.
pub fn signal_text(signo: i32) -> String {
    let name = nix::sys::signal::Signal::try_from(signo)
        .map_or_else(|_| format!("signal {signo}"), |s| s.as_str().to_string());
    let what = match signo {
        libc::SIGSEGV => "Segmentation fault",
        libc::SIGBUS => "Bus error",
        libc::SIGILL => "Illegal instruction",
        libc::SIGFPE => "Floating point exception",
        libc::SIGABRT => "Aborted",
        libc::SIGSYS => "Bad system call",
        libc::SIGTRAP => "Trace/breakpoint trap",
        _ => return name,
    };
    format!("{name} ({what})")
}

/// Picks the frame to name for a crash: the first with a source location outside the
/// runtimes, as for calls, but starting at the faulting instruction.
pub fn crash_site(sym: &mut Symbolizer, frames: &[Frame]) -> Option<SymFrame> {
    let all = expand(sym, frames, true);
    all.iter()
        .find(|f| !f.is_runtime() && f.file.is_some())
        .or_else(|| all.iter().find(|f| f.function.is_some()))
        .cloned()
}

/// Symbolizes a stack and picks the caller to show: the first frame outside the
/// allocator, the runtimes and dependencies that has a source location; failing that,
/// the first such frame at all (a stripped or vanished binary is shown as module+offset);
/// failing that, the first named frame.
pub fn caller(sym: &mut Symbolizer, frames: &[Frame]) -> Option<SymFrame> {
    let mut first_named = None;
    let mut first_user = None;
    for f in frames {
        for sf in sym.frames(f, true) {
            let named = sf.function.is_some() || sf.file.is_some();
            if first_named.is_none() && named {
                first_named = Some(sf.clone());
            }
            if sf.is_runtime() || (!named && sf.module.is_empty()) {
                continue;
            }
            if sf.file.is_some() {
                return Some(sf);
            }
            if first_user.is_none() {
                first_user = Some(sf);
            }
        }
    }
    first_user.or(first_named)
}

/// `file:line:col function` (or what is known of it).
pub fn caller_text(sf: &SymFrame) -> String {
    let func = sf.function.as_deref().map(short_name).unwrap_or_default();
    match sf.location() {
        Some(loc) => format!("{} {}", shorten_path(&loc), func)
            .trim_end()
            .to_string(),
        None if func.is_empty() => format!("{}+{:#x}", module_name(&sf.module), sf.addr),
        None => format!("{func} ({}+{:#x})", module_name(&sf.module), sf.addr),
    }
}

/// Drops the hash suffix rustc adds to legacy-mangled names.
fn short_name(f: &str) -> String {
    f.to_string()
}

pub fn module_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Paths inside the current directory are shown relative to it.
fn shorten_path(p: &str) -> String {
    if let Ok(cwd) = std::env::current_dir() {
        if let Ok(rest) = std::path::Path::new(p).strip_prefix(&cwd) {
            return rest.display().to_string();
        }
    }
    p.to_string()
}

/// Writes every frame of a stack, inlined frames included, one per line.
pub fn write_stack(
    out: &mut dyn Write,
    sym: &mut Symbolizer,
    frames: &[Frame],
    indent: &str,
) -> io::Result<()> {
    write_frames(out, &expand(sym, frames, false), indent)
}

/// Symbolizes a stack, inlined frames expanded, innermost first. With `first_is_ip` the
/// first frame is the instruction a signal struck, not a return address.
pub fn expand(sym: &mut Symbolizer, frames: &[Frame], first_is_ip: bool) -> Vec<SymFrame> {
    frames
        .iter()
        .enumerate()
        .flat_map(|(i, f)| sym.frames(f, !(first_is_ip && i == 0)))
        .collect()
}

/// Writes symbolized frames, one per line.
pub fn write_frames(out: &mut dyn Write, frames: &[SymFrame], indent: &str) -> io::Result<()> {
    for (n, sf) in frames.iter().enumerate() {
        {
            let func = sf.function.clone().unwrap_or_else(|| "??".into());
            let loc = sf
                .location()
                .map(|l| format!(" at {}", shorten_path(&l)))
                .unwrap_or_default();
            let m = if sf.module.is_empty() {
                format!("[{:#x}]", sf.addr)
            } else {
                format!("[{}+{:#x}]", module_name(&sf.module), sf.addr)
            };
            let inl = if sf.inlined { " (inlined)" } else { "" };
            writeln!(out, "{indent}#{n:<2} {func}{loc}{inl} {m}")?;
        }
    }
    Ok(())
}

/// Largest source file read to quote a line.
const MAX_SOURCE_FILE: u64 = 64 << 20;

/// Lines of source files: packed in the recording, or read from disk once per file.
#[derive(Default)]
pub struct SourceCache {
    files: HashMap<String, Option<Vec<String>>>,
    packed: HashMap<(String, u32), String>,
}

impl SourceCache {
    /// Learns a line stored in a packed recording.
    pub fn add_packed(&mut self, l: crate::format::SourceLine) {
        self.packed.insert((l.file, l.line), l.text);
    }

    /// Line `line` (1-based) of `file`, if packed or readable.
    pub fn line(&mut self, file: &str, line: u32) -> Option<&str> {
        if self.packed.contains_key(&(file.to_string(), line)) {
            return self
                .packed
                .get(&(file.to_string(), line))
                .map(String::as_str);
        }
        let lines = self.files.entry(file.to_string()).or_insert_with(|| {
            // The path may come from a recording: only regular files of sane size are read
            // (a FIFO would block, a device could be endless).
            let meta = std::fs::metadata(file).ok()?;
            if !meta.is_file() || meta.len() > MAX_SOURCE_FILE {
                return None;
            }
            let bytes = std::fs::read(file).ok()?;
            Some(
                String::from_utf8_lossy(&bytes)
                    .lines()
                    .map(str::to_string)
                    .collect(),
            )
        });
        lines
            .as_ref()?
            .get(line.checked_sub(1)? as usize)
            .map(String::as_str)
    }
}

/// How a process ended, as ltrace shows it.
pub fn exit_text(how: ExitHow) -> String {
    match how {
        ExitHow::Code(c) => format!("+++ exited (status {c}) +++"),
        ExitHow::Signal(s) => {
            let name = nix::sys::signal::Signal::try_from(s)
                .map_or_else(|_| format!("signal {s}"), |s| s.as_str().to_string());
            format!("+++ killed by {name} +++")
        }
        ExitHow::Running => "+++ still running when recording stopped +++".to_string(),
        ExitHow::Unknown => "+++ ended (its exit status was not seen) +++".to_string(),
    }
}

fn sizes(min: u64, max: u64) -> String {
    if min == max {
        format!("{min} bytes each")
    } else {
        format!("{min} to {max} bytes")
    }
}

/// What the leak report needs to know besides the groups.
#[derive(Clone, Copy)]
pub struct LeakView<'a> {
    /// Definitions from the recording.
    pub defs: &'a Defs,
    /// Executable of each process.
    pub exe_of: &'a HashMap<u32, String>,
    /// Processes recorded from an attach: their reports cover the attach window.
    pub attached: &'a std::collections::HashSet<u32>,
    /// The fatal signal of each process that crashed.
    pub crashes: &'a HashMap<u32, crate::format::SignalRec>,
    /// Print full stacks.
    pub verbose: bool,
    /// Print live blocks over time.
    pub growth: bool,
}

/// Live-block counts as a sparkline, scaled to the largest.
pub fn sparkline(counts: &[u64]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let max = counts.iter().copied().max().unwrap_or(0).max(1);
    counts
        .iter()
        .map(|&c| {
            if c == 0 {
                ' '
            } else {
                BARS[((c * 7).div_ceil(max)).min(7) as usize]
            }
        })
        .collect()
}

/// Writes a leak report.
pub fn write_leaks(
    out: &mut dyn Write,
    report: &LeakReport,
    view: &LeakView<'_>,
    sym: &mut Symbolizer,
    sources: &mut SourceCache,
) -> io::Result<()> {
    let LeakView {
        defs,
        exe_of,
        attached,
        crashes,
        verbose,
        growth,
    } = *view;
    if report.groups.is_empty() {
        let during = if attached.is_empty() {
            "during the recording"
        } else {
            "while rltrace was attached"
        };
        writeln!(out, "no leaks: every block allocated {during} was freed")?;
        return Ok(());
    }
    let mut pids: Vec<u32> = report.groups.iter().map(|g| g.pid).collect();
    pids.sort_unstable();
    pids.dedup();
    for pid in pids {
        let groups: Vec<_> = report.groups.iter().filter(|g| g.pid == pid).collect();
        let blocks: u64 = groups.iter().map(|g| g.blocks).sum();
        let bytes: u64 = groups.iter().map(|g| g.bytes).sum();
        let exe = exe_of.get(&pid).map(String::as_str).unwrap_or("?");
        writeln!(
            out,
            "process {pid} ({exe}): {bytes} bytes in {blocks} blocks never freed, from {} allocation stacks",
                        groups.len()
        )?;
        if attached.contains(&pid) {
            writeln!(
                out,
                "(attach window: blocks allocated while rltrace was attached and still live when \
                 it detached; blocks from before the attach are not seen, frees of them are ignored)"
            )?;
        }
        if let Some(c) = crashes.get(&pid) {
            let frames = defs.frames_of(c.stack);
            let at = crash_site(sym, &frames)
                .map(|sf| format!(" at {}", caller_text(&sf)))
                .unwrap_or_default();
            writeln!(
                out,
                "(it died of {}{at}: these are the blocks live at the crash)",
                signal_text(c.signo)
            )?;
        }
        for (i, g) in groups.iter().enumerate() {
            writeln!(out)?;
            let plural = if g.blocks == 1 { "" } else { "s" };
            writeln!(
                out,
                "#{} {} bytes in {} block{plural} ({}) allocated by {}",
                i + 1,
                g.bytes,
                g.blocks,
                sizes(g.min_size, g.max_size),
                defs.name(g.func)
            )?;
            let frames = defs.frames_of(g.stack);
            match caller(sym, &frames) {
                Some(sf) => {
                    writeln!(out, "   at {}", caller_text(&sf))?;
                    if let (Some(file), Some(line)) = (&sf.file, sf.line) {
                        if let Some(text) = sources.line(file, line) {
                            writeln!(out, "   {line:>5} | {}", text.trim_end())?;
                        }
                    }
                }
                None => writeln!(out, "   at an unknown location (no stack recorded)")?,
            }
            if growth && !g.growth.is_empty() {
                let counts: Vec<String> = g.growth.iter().map(u64::to_string).collect();
                writeln!(
                    out,
                    "   live over the run: |{}| {} (each tenth of {:.3} s)",
                    sparkline(&g.growth),
                    counts.join(" "),
                    report.span_ns as f64 / 1e9
                )?;
            }
            if verbose {
                writeln!(out, "   stack:")?;
                write_stack(out, sym, &frames, "     ")?;
            }
        }
        writeln!(out)?;
    }
    writeln!(
        out,
        "total: {} bytes in {} blocks never freed, from {} allocation stacks",
        report.bytes(),
        report.blocks(),
        report.groups.len()
    )?;
    Ok(())
}

/// The `-c` table, in ltrace's layout: share of the time, seconds, microseconds per call,
/// calls, function. Time is from entry to return of calls whose return time is known.
pub fn write_call_table(
    out: &mut dyn Write,
    rows: &[crate::analyze::calltable::Row],
) -> io::Result<()> {
    let total_ns = rows.iter().fold(0u64, |t, r| t.saturating_add(r.ns));
    let total_calls = rows.iter().fold(0u64, |t, r| t.saturating_add(r.calls));
    let total_errors = rows.iter().fold(0u64, |t, r| t.saturating_add(r.errors));
    let rule = "------ ----------- ----------- --------- --------- --------------------";
    // strace's layout: an errors column, blank where there were none.
    let errors = |n: u64| if n == 0 { String::new() } else { n.to_string() };
    writeln!(
        out,
        "% time     seconds  usecs/call     calls    errors function"
    )?;
    writeln!(out, "{rule}")?;
    for r in rows {
        let pct = if total_ns > 0 {
            r.ns as f64 * 100.0 / total_ns as f64
        } else {
            0.0
        };
        let per = r.ns.checked_div(r.timed).unwrap_or(0) / 1000;
        writeln!(
            out,
            "{pct:6.2} {:4}.{:06} {per:11} {:9} {:>9} {}",
            r.ns / 1_000_000_000,
            r.ns % 1_000_000_000 / 1000,
            r.calls,
            errors(r.errors),
            r.name
        )?;
    }
    writeln!(out, "{rule}")?;
    writeln!(
        out,
        "100.00 {:4}.{:06} {:11} {total_calls:9} {:>9} total",
        total_ns / 1_000_000_000,
        total_ns % 1_000_000_000 / 1000,
        "",
        errors(total_errors)
    )
}

#[cfg(test)]
mod tests {
    use super::typed_args;
    use crate::format::ArgData;
    use crate::protos::lookup;

    fn capture(arg: u8, bytes: &[u8]) -> ArgData {
        ArgData {
            arg,
            truncated: false,
            bytes: bytes.to_vec(),
        }
    }

    #[test]
    fn variadic_arguments_come_from_registers_then_the_stack() {
        let printf = lookup("printf").unwrap();
        let fmt = capture(0, b"%d %d %d %d %d %d %s %f %f\n");
        // Five integer registers after the format, two vector registers (al = 2), then
        // the stack: 6 and a string pointer.
        let values = [0x1000, 1, 2, 3, 4, 5, 1.5f64.to_bits(), 0.25f64.to_bits()];
        let mut stack = Vec::new();
        for w in [6u64, 0x2000] {
            stack.extend_from_slice(&w.to_le_bytes());
        }
        let full = [fmt.clone(), capture(15, &stack), capture(17, b"seven")];
        assert_eq!(
            typed_args(printf, &values, &full).join(", "),
            "\"%d %d %d %d %d %d %s %f %f\\n\", 1, 2, 3, 4, 5, 6, \"seven\", 1.5, 0.25"
        );
        // Stack words cut short, and a recording without them or the vector registers
        // (made before they were recorded), or a call passing fewer doubles than its
        // format reads: what is missing ends the list.
        let data = [fmt.clone(), capture(15, &stack[..8])];
        assert_eq!(typed_args(printf, &values, &data)[6..], ["6", "..."]);
        assert_eq!(typed_args(printf, &values[..7], &full)[8..], ["1.5", "..."]);
        assert_eq!(
            typed_args(printf, &values[..6], &[fmt])[6..],
            ["...".to_string()]
        );
    }

    #[test]
    fn floating_point_values_are_exact_and_short() {
        let ldexp = lookup("ldexp").unwrap();
        assert_eq!(
            typed_args(ldexp, &[0.1f64.to_bits(), (-3i32) as u32 as u64], &[]),
            ["0.1", "-3"]
        );
        let sqrtf = lookup("sqrtf").unwrap();
        assert_eq!(
            typed_args(sqrtf, &[10.0f32.to_bits() as u64], &[]),
            ["10.0"]
        );
        let pow = lookup("pow").unwrap();
        let vals = [f64::NAN.to_bits(), f64::NEG_INFINITY.to_bits()];
        assert_eq!(typed_args(pow, &vals, &[]), ["nan", "-inf"]);
        assert_eq!(super::float_text(1e-9), "1e-9");
        assert_eq!(super::float_text(1e300), "1e300");
    }
}
