//! Machine-readable output: JSON lines for calls and leak groups, folded stacks for flame
//! graph tools, and an SVG flame graph of live bytes.

use std::collections::HashMap;
use std::io::{self, Write};

use serde_json::{json, Value};

use super::{caller, SourceCache};
use crate::analyze::leaks::{LeakGroup, LeakReport};
use crate::analyze::Defs;
use crate::format::{Enter, Exit, ExitHow, FnClass, Frame, ProcessExit};
use crate::symbolize::{SymFrame, Symbolizer};

/// One symbolized frame as a JSON object.
pub fn frame_json(sf: &SymFrame) -> Value {
    json!({
        "function": sf.function,
        "file": sf.file,
        "line": sf.line,
        "column": sf.column,
        "inlined": sf.inlined,
        "module": (!sf.module.is_empty()).then_some(&sf.module),
        "address": format!("{:#x}", sf.addr),
    })
}

/// Every frame of a stack, inlined ones included, innermost first.
pub fn stack_json(sym: &mut Symbolizer, frames: &[Frame]) -> Value {
    Value::Array(
        frames
            .iter()
            .flat_map(|f| sym.frames(f, true))
            .map(|sf| frame_json(&sf))
            .collect(),
    )
}

/// A call as one JSON object; `exit` is `None` for `void` functions and calls still open
/// at the end of the recording.
pub fn call_json(
    defs: &Defs,
    sym: &mut Symbolizer,
    enter: &Enter,
    exit: Option<&Exit>,
    depth: usize,
    with_stack: bool,
) -> Value {
    let (pid, tid) = defs.thread(enter.thread);
    let frames = defs.frames_of(enter.stack);
    let def = defs.functions.get(&enter.func);
    let void = def.is_some_and(|f| !f.returns);
    // Whether `args` are the function's arguments by a prototype, or the six integer
    // registers of a function rltrace knows no prototype of.
    let prototype = defs.class(enter.func) != FnClass::Other
        || crate::protos::lookup(defs.name(enter.func)).is_some();
    let origin = match def.map(|f| f.origin) {
        Some(crate::format::Origin::Imported) => "imported",
        Some(crate::format::Origin::Syscall) => "syscall",
        _ => "hooked",
    };
    let mut v = json!({
        "type": "call",
        "pid": pid,
        "tid": tid,
        "ts_ns": enter.ts,
        "function": defs.name(enter.func),
        "args": enter.args,
        "arg_text": super::call_args(defs, enter),
        "prototype": prototype,
        "origin": origin,
        "void": void,
        "returned": void || exit.is_some_and(|x| x.ret.is_some()),
        "return": exit.and_then(|x| x.ret),
        "return_text": exit
            .filter(|x| x.ret.is_some())
            .map(|x| super::ret_text(defs, enter, x).trim_start_matches(" = ").to_string()),
        "depth": depth,
        "caller": caller(sym, &frames).map(|sf| frame_json(&sf)),
    });
    if defs.class(enter.func) == FnClass::PosixMemalign {
        v["out"] = json!(exit.and_then(|x| x.out));
    }
    if !enter.data.is_empty() {
        // Captured strings and buffers: raw bytes (as an array, since they need not be
        // UTF-8) and the quoted form the text trace shows.
        v["arg_data"] = enter
            .data
            .iter()
            .map(|d| {
                json!({
                    "arg": d.arg,
                    "bytes": d.bytes,
                    "truncated": d.truncated,
                    "text": crate::protos::quote(&d.bytes, d.truncated),
                })
            })
            .collect();
    }
    if with_stack {
        v["stack"] = stack_json(sym, &frames);
    }
    v
}

/// A fatal signal as a JSON object, with the stack from the faulting instruction.
pub fn signal_json(defs: &Defs, sym: &mut Symbolizer, x: &crate::format::SignalRec) -> Value {
    let (pid, tid) = defs.thread(x.thread);
    let frames = defs.frames_of(x.stack);
    let stack: Vec<Value> = super::expand(sym, &frames, true)
        .iter()
        .map(frame_json)
        .collect();
    json!({
        "type": "signal",
        "pid": pid,
        "tid": tid,
        "ts_ns": x.ts,
        "signal": x.signo,
        "name": super::signal_text(x.signo),
        "code": x.code,
        "address": format!("{:#x}", x.addr),
        "stack": stack,
    })
}

/// A process end as a JSON object.
pub fn process_exit_json(p: &ProcessExit) -> Value {
    let status = match p.how {
        ExitHow::Code(c) => json!({ "code": c }),
        ExitHow::Signal(s) => json!({ "signal": s }),
        ExitHow::Running => json!("running"),
        ExitHow::Unknown => json!("unknown"),
    };
    json!({ "type": "process_exit", "pid": p.pid, "ts_ns": p.ts, "status": status })
}

/// A leak group as a JSON object, with its caller (and source line, when known) and frames.
pub fn leak_json(
    g: &LeakGroup,
    defs: &Defs,
    sym: &mut Symbolizer,
    sources: &mut SourceCache,
) -> Value {
    let frames = defs.frames_of(g.stack);
    let caller = caller(sym, &frames).map(|sf| {
        let mut c = frame_json(&sf);
        if let (Some(file), Some(line)) = (&sf.file, sf.line) {
            c["source"] = json!(sources.line(file, line));
        }
        c
    });
    json!({
        "type": "leak_group",
        "pid": g.pid,
        "function": defs.name(g.func),
        "blocks": g.blocks,
        "bytes": g.bytes,
        "min_size": g.min_size,
        "max_size": g.max_size,
                "first_ts_ns": g.first_ts,
        "last_ts_ns": g.last_ts,
        "growth": g.growth,
        "caller": caller,
        "frames": stack_json(sym, &frames),
    })
}

/// The totals of a leak report as a JSON object.
pub fn leak_summary_json(r: &LeakReport) -> Value {
    json!({
        "type": "leak_summary",
        "groups": r.groups.len(),
        "blocks": r.blocks(),
        "bytes": r.bytes(),
        "span_ns": r.span_ns,
        "growth_slices": crate::analyze::leaks::GROWTH_SLICES,
    })
}

/// Writes one JSON value on its own line.
pub fn write_json(out: &mut dyn Write, v: &Value) -> io::Result<()> {
    serde_json::to_writer(&mut *out, v).map_err(io::Error::other)?;
    writeln!(out)
}

/// A stack in folded form, outermost frame first, ending with the traced function.
pub fn folded_stack(sym: &mut Symbolizer, frames: &[Frame], function: &str) -> String {
    let mut names: Vec<String> = vec![function.to_string()];
    for f in frames {
        for sf in sym.frames(f, true) {
            let name = match (&sf.function, sf.module.rsplit('/').next()) {
                (Some(func), _) => func.clone(),
                (None, Some(m)) if !m.is_empty() => format!("{m}+{:#x}", sf.addr),
                _ => format!("{:#x}", sf.addr),
            };
            // ';' separates frames and the last space separates the count.
            names.push(name.replace(';', ":").replace(['\n', '\r'], " "));
        }
    }
    names.reverse();
    names.join(";")
}

/// Sums values per folded stack; equal stacks from different ids merge.
#[derive(Default)]
pub struct Folded {
    by_key: HashMap<(Option<u32>, u32), u64>,
}

impl Folded {
    /// Adds `value` to the stack `stack` of calls to `func`.
    pub fn add(&mut self, stack: Option<u32>, func: u32, value: u64) {
        *self.by_key.entry((stack, func)).or_default() += value;
    }

    /// The folded lines, sorted.
    pub fn lines(&self, defs: &Defs, sym: &mut Symbolizer) -> Vec<String> {
        let mut merged: HashMap<String, u64> = HashMap::new();
        for (&(stack, func), &v) in &self.by_key {
            let frames = defs.frames_of(stack);
            *merged
                .entry(folded_stack(sym, &frames, defs.name(func)))
                .or_default() += v;
        }
        let mut lines: Vec<String> = merged
            .into_iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        lines.sort();
        lines
    }
}

/// Draws folded lines as an SVG flame graph.
pub fn write_svg(out: &mut dyn Write, lines: &[String], title: &str, unit: &str) -> io::Result<()> {
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = title.to_string();
    opts.count_name = unit.to_string();
    inferno::flamegraph::from_lines(&mut opts, lines.iter().map(String::as_str), out)
        .map_err(io::Error::other)
}
