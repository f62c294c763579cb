//! Leak finding and tracing on a C program with known leaks at known lines.

mod common;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};

use common::*;

fn source() -> std::path::PathBuf {
    repo().join("tests/fixtures/c/leaks.c")
}

fn at(marker: &str) -> String {
    format!("leaks.c:{}", marker_line(&source(), marker))
}

#[test]
fn leak_groups_are_exact() {
    for engine in ENGINES {
        leak_groups_are_exact_with(engine);
    }
}

fn leak_groups_are_exact_with(engine: &str) {
    let dir = scratch(&format!("c-leaks-{engine}"));
    let rec = dir.join("leaks.rlt");
    let o = record_with(engine, &rec, leaks_c(), &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&format!("rltrace: engine: {engine} (")),
        "the recorder says which engine it used"
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "done\n",
        "tracee stdout must pass through"
    );
    let report = replay(&rec, &["--leaks"]);
    let got: Vec<(u64, u64, String, String)> = parse_leaks(&report)
        .into_iter()
        .map(|g| (g.bytes, g.blocks, g.func, g.at))
        .collect();
    let want = vec![
        // Repeated leaks first, then single blocks by size.
        (72, 3, "malloc".to_string(), at("LEAK: loop")),
        (256, 1, "realloc".to_string(), at("LEAK: realloc")),
        (
            200,
            1,
            "posix_memalign".to_string(),
            at("LEAK: posix_memalign"),
        ),
        (120, 1, "calloc".to_string(), at("LEAK: calloc")),
        (40, 1, "malloc".to_string(), at("LEAK: inline-helper")),
        (14, 1, "malloc".to_string(), at("LEAK: strdup")),
    ];
    assert_eq!(got, want, "{engine} report:\n{report}");
    // Source text is quoted under the line.
    assert!(
        report.contains("sink(calloc(10, 12)); /* LEAK: calloc */"),
        "{report}"
    );
}

#[test]
fn inlined_helper_shows_its_chain() {
    let dir = scratch("c-inline");
    let rec = dir.join("leaks.rlt");
    record(&rec, leaks_c(), &[]);
    let report = replay(&rec, &["--leaks", "-v"]);
    let group = parse_leaks(&report)
        .into_iter()
        .find(|g| g.bytes == 40)
        .expect("the inline-helper group");
    assert_eq!(group.caller_fn, "make_block");
    let helper = format!("/{}:", at("LEAK: inline-helper"));
    let main_line = marker_line(&source(), "sink(make_block(40))");
    let caller = format!("/leaks.c:{main_line}:");
    let lines: Vec<&str> = group.text.lines().collect();
    let hi = lines
        .iter()
        .position(|l| l.contains("#0  make_block at ") && l.contains(&helper))
        .unwrap_or_else(|| panic!("{}", group.text));
    assert!(lines[hi + 1].contains("#1  main at "), "{}", group.text);
    assert!(lines[hi].contains("(inlined)"), "{}", group.text);
    assert!(lines[hi + 1].contains(&caller), "{}", group.text);
}

/// Parses valgrind's definitely-lost records: (bytes, blocks, first leaks.c location).
fn valgrind_leaks(bin: &std::path::Path) -> BTreeSet<(u64, u64, String)> {
    require_tool("valgrind");
    let o = Command::new("valgrind")
        .args(["--leak-check=full", "--show-leak-kinds=definite"])
        .arg(bin)
        .stdout(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stderr);
    let mut out = BTreeSet::new();
    let mut cur: Option<(u64, u64)> = None;
    for line in text.lines() {
        let body = line.split_once("== ").map_or(line, |x| x.1).trim();
        if body.contains("are definitely lost in loss record") {
            let w: Vec<&str> = body.split_whitespace().collect();
            cur = Some((
                w[0].replace(',', "").parse().unwrap(),
                w[3].replace(',', "").parse().unwrap(),
            ));
        } else if let Some((bytes, blocks)) = cur {
            if let Some(i) = body.find("(leaks.c:") {
                let loc = body[i + 1..].trim_end_matches(')').to_string();
                out.insert((bytes, blocks, loc));
                cur = None;
            }
        }
    }
    out
}

#[test]
fn agrees_with_valgrind() {
    let theirs = valgrind_leaks(leaks_c());
    assert_eq!(theirs.len(), 6, "valgrind found {theirs:?}");
    for engine in ENGINES {
        let dir = scratch(&format!("c-valgrind-{engine}"));
        let rec = dir.join("leaks.rlt");
        record_with(engine, &rec, leaks_c(), &[]);
        let ours: BTreeSet<(u64, u64, String)> = parse_leaks(&replay(&rec, &["--leaks"]))
            .into_iter()
            .map(|g| (g.bytes, g.blocks, g.at))
            .collect();
        assert_eq!(ours, theirs, "{engine}");
    }
}

/// Replaces every hex pointer by `P`: addresses differ from run to run.
fn hide_pointers(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("0x") {
        out.push_str(&rest[..i]);
        out.push('P');
        rest = rest[i + 2..].trim_start_matches(|c: char| c.is_ascii_hexdigit());
    }
    out.push_str(rest);
    out
}

#[test]
fn trace_lists_every_call_from_the_program_in_order() {
    for engine in ENGINES {
        trace_in_order_with(engine);
    }
}

fn trace_in_order_with(engine: &str) {
    let dir = scratch(&format!("c-trace-{engine}"));
    let rec = dir.join("leaks.rlt");
    record_with(engine, &rec, leaks_c(), &[]);
    let trace = replay(&rec, &[]);
    // The calls whose caller is the fixture, in order, as "name(args) = kind".
    let calls: Vec<String> = trace
        .lines()
        .filter(|l| l.contains("leaks.c:"))
        .map(|l| {
            let body = l.split_once("] ").unwrap().1;
            hide_pointers(body.split(" = ").next().unwrap())
        })
        .collect();
    let mut want: Vec<String> = Vec::new();
    for i in 0..5 {
        want.push(format!("malloc({})", 100 + i));
        want.push("free(P)".to_string());
    }
    want.push("malloc(40)".into());
    want.push("calloc(10, 12)".into());
    want.push("realloc(0, 16)".into());
    for n in [32, 64, 128, 256] {
        want.push(format!("realloc(P, {n})"));
    }
    // Every call into a library is traced, as ltrace does, by both engines; strdup's own
    // malloc is made inside it, so it is not a call of the program's.
    want.push("strdup(\"leaked string\")".into());
    for _ in 0..3 {
        want.push("malloc(24)".into());
    }
    want.push("posix_memalign(P, 64, 200)".into());
    want.push("write(1, \"done\\n\", 5)".into());
    assert_eq!(calls, want, "{engine} trace:\n{trace}");
    let all = replay(&rec, &["--all"]);
    if engine == "ptrace" {
        // With --all, realloc(NULL, 16)'s own call to malloc shows up too.
        assert!(all.contains("realloc(0, 16 <unfinished ...>"), "{all}");
    } else {
        // The agent does not record allocator calls made inside allocator calls.
        assert!(all.contains("realloc(0, 16) = 0x"), "{all}");
    }
    // strdup's own malloc is attributed to the line that called strdup.
    let strdup_line = all.lines().find(|l| l.contains("malloc(14)")).unwrap();
    assert!(strdup_line.contains(&at("LEAK: strdup")), "{strdup_line}");
    assert!(trace.contains("+++ exited (status 0) +++"), "{trace}");
}

#[test]
fn exit_status_and_stdio_pass_through() {
    let dir = scratch("c-exit");
    let rec = dir.join("sh.rlt");
    let o = record(
        &rec,
        std::path::Path::new("/bin/sh"),
        &["-c", "echo out; echo err >&2; exit 7"],
    );
    assert_eq!(o.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "out\n");
    assert!(String::from_utf8_lossy(&o.stderr).starts_with("err\n"));
    let trace = replay(&rec, &[]);
    assert!(trace.contains("+++ exited (status 7) +++"), "{trace}");
    assert!(trace.contains("malloc("), "sh allocates: {trace}");

    // stdin reaches the tracee.
    let mut child = rltrace()
        .args(["record", "-o"])
        .arg(dir.join("cat.rlt"))
        .args(["--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"through the tracer\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    assert_eq!(o.stdout, b"through the tracer\n");
}

#[test]
fn killed_by_a_signal_is_reported_and_propagated() {
    let dir = scratch("c-signal");
    let rec = dir.join("kill.rlt");
    let o = record(
        &rec,
        std::path::Path::new("/bin/sh"),
        &["-c", "kill -TERM $$"],
    );
    assert_eq!(o.status.code(), Some(128 + 15));
    let trace = replay(&rec, &[]);
    assert!(trace.contains("+++ killed by SIGTERM +++"), "{trace}");
}
