//! Every frame rltrace symbolizes in a fixture's own module must agree with
//! llvm-symbolizer on the same module offset: function, file, line, column, inlining.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

/// (function, file name, line, column) per inlined frame, innermost first.
type Chain = Vec<(String, String, u32, u32)>;

fn base(path: &str) -> String {
    Path::new(path)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Parses "path:line:col" or "path:line".
fn loc(s: &str) -> (String, u32, u32) {
    let parts: Vec<&str> = s.rsplitn(3, ':').collect();
    match parts.as_slice() {
        [col, line, file] if line.parse::<u32>().is_ok() => {
            (base(file), line.parse().unwrap(), col.parse().unwrap_or(0))
        }
        [line, file, ..] => (base(file), line.parse().unwrap_or(0), 0),
        _ => (base(s), 0, 0),
    }
}

/// Chains printed by `--stack`/`-v` for addresses in `module`, keyed by return address.
fn our_chains(output: &str, module: &str) -> BTreeMap<u64, Chain> {
    let mut out: BTreeMap<u64, Chain> = BTreeMap::new();
    for line in output.lines() {
        let t = line.trim_start();
        if !t.starts_with('#') || !t.contains(" at ") {
            continue;
        }
        let Some(open) = t.rfind(" [") else { continue };
        let tag = &t[open + 2..t.len() - 1];
        let Some((m, off)) = tag.split_once("+0x") else {
            continue;
        };
        if m != module {
            continue;
        }
        let addr = u64::from_str_radix(off, 16).unwrap();
        let body = t[..open].trim_end_matches(" (inlined)");
        let body = body.split_once(char::is_whitespace).unwrap().1.trim_start();
        let (func, at) = body.rsplit_once(" at ").unwrap();
        let (file, l, c) = loc(at);
        let chain = out.entry(addr).or_default();
        let frame = (func.to_string(), file, l, c);
        // The same address appears once per stack that contains it.
        if !chain.contains(&frame) {
            chain.push(frame);
        }
    }
    out
}

fn llvm_chain(bin: &Path, probe: u64) -> Chain {
    let o = Command::new("llvm-symbolizer")
        .arg("--inlining")
        .arg("--obj")
        .arg(bin)
        .arg(format!("{probe:#x}"))
        .stderr(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    lines
        .chunks(2)
        .map(|p| {
            let (file, l, c) = loc(p[1]);
            (p[0].to_string(), file, l, c)
        })
        .collect()
}

fn crosscheck(output: &str, bin: &Path, compare_names: bool) -> usize {
    require_tool("llvm-symbolizer");
    let module = base(&bin.display().to_string());
    let ours = our_chains(output, &module);
    assert!(!ours.is_empty(), "no frames in {module}:\n{output}");
    for (addr, chain) in &ours {
        let theirs = llvm_chain(bin, addr - 1);
        let strip = |c: &Chain| -> Vec<(String, u32, u32)> {
            c.iter().map(|f| (f.1.clone(), f.2, f.3)).collect()
        };
        assert_eq!(
            strip(chain),
            strip(&theirs),
            "locations differ at {module}+{addr:#x}"
        );
        if compare_names {
            let names = |c: &Chain| -> Vec<String> { c.iter().map(|f| f.0.clone()).collect() };
            assert_eq!(
                names(chain),
                names(&theirs),
                "functions differ at {module}+{addr:#x}"
            );
        }
    }
    ours.len()
}

#[test]
fn c_frames_agree_with_llvm_symbolizer() {
    let dir = scratch("xcheck-c");
    let rec = dir.join("leaks.rlt");
    record(&rec, leaks_c(), &[]);
    let out = replay(&rec, &["--stack"]);
    let n = crosscheck(&out, leaks_c(), true);
    assert!(n >= 8, "only {n} distinct addresses checked");
}

#[test]
fn rust_frames_agree_with_llvm_symbolizer() {
    let server = rust_server();
    let dir = scratch("xcheck-rust");
    let rec = dir.join("server.rlt");
    // No request: the startup allocations of std alone give deep inlined stacks.
    let (mut child, _) = start_server(&rec, server);
    terminate(&child);
    child.wait().unwrap();
    let out = replay(&rec, &["--stack"]);
    let n = crosscheck(&out, server, false);
    assert!(n >= 5, "only {n} distinct addresses checked");
}
