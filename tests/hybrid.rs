//! Runs recorded by both engines: `-x` naming functions the agent does not interpose
//! sends those to ptrace, and the agent records the rest, in one recording (src/record/
//! hybrid.rs). The trace and the leak report must be what the ptrace engine alone gives.

mod common;
use common::*;

use std::collections::BTreeMap;
use std::path::Path;

/// The fixture, built once for every test here (building it again while another test
/// runs it would replace the file under that run).
fn hybrid_c() -> &'static Path {
    static BIN: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| build_c("hybrid", "hybrid.c", &["-O1", "-g", "-pthread"]))
}

/// The `step` calls of each process's threads, in each thread's order, without addresses
/// (a call split by other threads' lines, `step(1 <unfinished ...>` and `<... step
/// resumed> ) = 0`, joined): the threads of a process sorted, since their ids differ
/// between runs.
fn steps(trace: &str) -> BTreeMap<u32, Vec<Vec<String>>> {
    let mut by_thread: BTreeMap<(u32, u32), Vec<String>> = BTreeMap::new();
    let mut split: BTreeMap<(u32, u32), String> = BTreeMap::new();
    for l in trace.lines() {
        let Some((ids, rest)) = l.strip_prefix('[').and_then(|l| l.split_once("] ")) else {
            continue;
        };
        let mut ids = ids.split_whitespace().map(|n| n.parse::<u32>().unwrap());
        let who = (ids.next().unwrap(), ids.next().unwrap());
        let call = rest.split("  ").next().unwrap();
        let call = if let Some(open) = call.strip_suffix(" <unfinished ...>") {
            if open.starts_with("step(") {
                split.insert(who, open.to_string());
            }
            continue;
        } else if let Some(ret) = call.strip_prefix("<... step resumed> )") {
            format!("{}){ret}", split.remove(&who).unwrap())
        } else if call.starts_with("step(") {
            call.to_string()
        } else {
            continue;
        };
        by_thread.entry(who).or_default().push(unaddress(&call));
    }
    assert!(split.is_empty(), "calls never resumed: {split:?}");
    // Processes numbered in order of appearance, as pids differ too.
    let mut pids: Vec<u32> = Vec::new();
    let mut out: BTreeMap<u32, Vec<Vec<String>>> = BTreeMap::new();
    for ((pid, _), calls) in by_thread {
        let n = match pids.iter().position(|&p| p == pid) {
            Some(n) => n,
            None => {
                pids.push(pid);
                pids.len() - 1
            }
        } as u32;
        out.entry(n).or_default().push(calls);
    }
    for v in out.values_mut() {
        v.sort();
    }
    out
}

/// (blocks, bytes, where) of each leak group, per process report, in report order.
fn leak_groups(report: &str) -> Vec<Vec<(u64, u64, String)>> {
    let mut out: Vec<Vec<(u64, u64, String)>> = Vec::new();
    for part in report.split("\nprocess ").filter(|p| !p.trim().is_empty()) {
        let mut g: Vec<(u64, u64, String)> = parse_leaks(part)
            .into_iter()
            .map(|g| (g.blocks, g.bytes, g.at))
            .collect();
        g.sort();
        out.push(g);
    }
    out.sort();
    out
}

fn engine_of(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr)
        .lines()
        .find_map(|l| l.strip_prefix("rltrace: engine: "))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn threads_forks_and_leaks_inside_a_traced_function_match_the_ptrace_engine() {
    let bin = hybrid_c();
    let dir = scratch("hybrid-threads");
    let src = repo().join("tests/fixtures/c/hybrid.c");
    let line = |m: &str| format!("hybrid.c:{}", marker_line(&src, m));
    let both = dir.join("both.rlt");
    let o = record_opts(&["-x", "step@MAIN"], &both, bin);
    assert!(
        engine_of(&o).starts_with("agent+ptrace ("),
        "{}",
        engine_of(&o)
    );
    let alone = dir.join("ptrace.rlt");
    let o = record_opts(&["--engine", "ptrace", "-x", "step@MAIN"], &alone, bin);
    assert!(engine_of(&o).starts_with("ptrace ("), "{}", engine_of(&o));

    let trace = replay_clean(&both, &[]);
    let got = steps(&trace);
    // Three threads of 40 steps, 0 to 39 in order, and the child's one.
    let thread: Vec<String> = (0..40)
        .map(|i| {
            let ret = if i % 10 == 9 { "PTR" } else { "0" };
            format!("step({i}) = {ret}")
        })
        .collect();
    assert_eq!(got.get(&0), Some(&vec![thread.clone(); 3]), "{trace}");
    assert_eq!(
        got.get(&1),
        Some(&vec![vec!["step(9) = PTR".to_string()]]),
        "{trace}"
    );
    assert_eq!(got, steps(&replay_clean(&alone, &[])));
    // Each step's allocation nests inside it, from the line in step.
    let all = replay_clean(&both, &["--all"]);
    let inside = all
        .lines()
        .filter(|l| l.contains("] malloc(") && l.contains(&format!("{}:", line("HYBRID: malloc"))))
        .count();
    assert_eq!(inside, 121, "{all}");

    // The leaks, block for block, by the same stacks as the agent alone finds them (with
    // the agent loaded, pthread_create's thread blocks are a little larger than under
    // ptrace alone): the agent unwinds through the ptrace engine's return stub to step's
    // caller.
    let report = replay(&both, &["--leaks", "-v"]);
    let groups = leak_groups(&report);
    let agent = dir.join("agent.rlt");
    record_opts(&["--engine", "agent"], &agent, bin);
    assert_eq!(groups, leak_groups(&replay(&agent, &["--leaks", "-v"])));
    let steps_only = |g: &Vec<Vec<(u64, u64, String)>>| -> Vec<Vec<(u64, u64, String)>> {
        g.iter()
            .map(|p| {
                p.iter()
                    .filter(|l| l.2 == line("HYBRID: malloc"))
                    .cloned()
                    .collect()
            })
            .collect()
    };
    assert_eq!(
        steps_only(&groups),
        steps_only(&leak_groups(&replay(&alone, &["--leaks", "-v"])))
    );
    let at = line("HYBRID: malloc");
    // Parent: four blocks a thread; child: one.
    assert_eq!(
        steps_only(&groups),
        [
            vec![(1, 33, at.clone())],
            vec![(12, 3 * (33 + 43 + 53 + 63), at)]
        ],
        "{report}"
    );
    assert!(
        report
            .lines()
            .any(|l| l.contains(" worker at ") && l.contains(&format!("{}:", line("HYBRID: step")))),
        "{report}"
    );
    assert!(
        report.contains(&format!("{}:", line("HYBRID: child step"))),
        "{report}"
    );
}

#[test]
fn calls_the_agent_makes_itself_are_not_in_the_trace() {
    // The agent opens and reads /proc/self/maps, maps its rings and sends to the
    // recorder: none of it is the program's. The program's own write is.
    let bin = hybrid_c();
    let dir = scratch("hybrid-own");
    let rec = dir.join("own.rlt");
    let o = record_opts(
        &[
            "-L",
            "-x",
            "open+open64+openat+read+close+mmap+munmap+send+sendmsg+write",
        ],
        &rec,
        bin,
    );
    assert!(
        engine_of(&o).starts_with("agent+ptrace ("),
        "{}",
        engine_of(&o)
    );
    let trace = replay_clean(&rec, &["--all", "--stack"]);
    for agents in [
        "/proc/self/maps",
        "] send(",
        "] sendmsg(",
        "rltrace_agent",
        "agent/src/",
    ] {
        assert!(!trace.contains(agents), "{agents}: {trace}");
    }
    // The program's own: one thread stack mapped by each pthread_create, as ptrace alone
    // sees them (the agent's writer thread's is the agent's).
    let alone = dir.join("alone.rlt");
    record_opts(&["--engine", "ptrace", "-L", "-x", "mmap"], &alone, bin);
    let stacks = |t: &str| {
        t.lines()
            .filter(|l| l.contains("] mmap(0, 8392704,"))
            .count()
    };
    assert_eq!(stacks(&trace), 3, "{trace}");
    assert_eq!(stacks(&replay_clean(&alone, &["--all"])), 3);
    let writes = trace
        .lines()
        .filter(|l| l.contains("] write(1, \"done\\n\", 5) = 5"))
        .count();
    assert_eq!(writes, 1, "{trace}");
}

#[test]
fn the_recording_of_a_run_with_both_engines_replays_without_its_parts() {
    let bin = hybrid_c();
    let dir = scratch("hybrid-parts");
    let rec = dir.join("r.rlt");
    record_opts(&["-x", "step@MAIN"], &rec, bin);
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["r.rlt"], "the partial recordings are removed");
    let info = rltrace().arg("info").arg(&rec).output().unwrap();
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains("agent+ptrace"), "{info}");
    assert!(Path::new(&rec).metadata().unwrap().len() > 0);
}

#[test]
fn an_exec_inside_a_traced_call_leaves_the_new_images_calls_whole() {
    // env calls getenv inside execvp (for PATH) and execs: the ptrace engine then reports
    // that getenv as never returned, found only in the new image; it must close nothing
    // there. Both engines alone and together agree on what returned.
    let env = Path::new("/usr/bin/env");
    let dir = scratch("hybrid-exec");
    let traces: Vec<(String, String)> = [
        &["-x", "getenv"][..],
        &["--engine", "ptrace", "-x", "getenv"],
    ]
    .iter()
    .enumerate()
    .map(|(i, opts)| {
        let rec = dir.join(format!("{i}.rlt"));
        let o = rltrace()
            .arg("record")
            .args(*opts)
            .arg("-o")
            .arg(&rec)
            .args(["--", env.to_str().unwrap(), "sh", "-c", "true"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        (replay_clean(&rec, &[]), replay_clean(&rec, &["--all"]))
    })
    .collect();
    // (How an exit function shows differs between the engines alone: `_exit(0) = <void>`
    // under ptrace, `_exit(0 <unfinished ...>` under the agent.)
    let unreturned = |t: &str| {
        t.lines()
            .filter(|l| l.contains("<no return ...>") && !l.contains("exit("))
            .map(|l| {
                l.split("] ")
                    .nth(1)
                    .unwrap_or("")
                    .split('(')
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
            .collect::<Vec<_>>()
    };
    // Every getenv is made inside another traced call (setlocale, execvp): all of them
    // show with --all only.
    let getenvs = |t: &str| t.lines().filter(|l| l.contains("] getenv(")).count();
    let (both, alone) = (&traces[0], &traces[1]);
    assert_eq!(unreturned(&both.0), unreturned(&alone.0), "{}", both.0);
    assert_eq!(getenvs(&both.0), getenvs(&alone.0), "{}", both.0);
    assert_eq!(getenvs(&both.1), getenvs(&alone.1), "{}", both.1);
    assert!(getenvs(&both.1) > 0, "{}", both.1);
}

#[test]
fn exceptions_pass_through_the_functions_x_traces_under_either_engine() {
    // risky(4) and risky(5) throw; main catches both. The traced call's return address
    // points at the ptrace engine's stub, which the C++ unwinder must pass through.
    let dir = scratch("hybrid-throw");
    for engine in ["ptrace", "auto"] {
        let rec = dir.join(format!("{engine}.rlt"));
        let o = rltrace()
            .args(["record", "--engine", engine, "-x", "_ZN4demo5riskyEi", "-o"])
            .arg(&rec)
            .arg("--")
            .arg(widgets_cpp())
            .output()
            .unwrap();
        assert_eq!(
            o.status.code(),
            Some(0),
            "{engine}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let trace = replay_clean(&rec, &["-C"]);
        // risky's own calls (operator new, from the program) split its line in two, as
        // ltrace splits it: `risky(4 <unfinished ...>` ... `<... risky resumed> ) = 0`.
        let ret_of = |c: &str| -> String {
            let ret = c.split(") = ").nth(1).unwrap_or("");
            ret.split("  ").next().unwrap_or("").to_string()
        };
        let mut calls: Vec<String> = Vec::new();
        let mut open: Option<String> = None;
        for c in trace.lines().filter_map(|l| l.split("] ").nth(1)) {
            if let Some(rest) = c.strip_prefix("demo::risky(int)(") {
                let arg = rest.split([',', ')', ' ']).next().unwrap_or("");
                match c.contains(" <unfinished ...>") {
                    true => open = Some(arg.to_string()),
                    false => calls.push(format!("{arg} {}", ret_of(c))),
                }
            } else if c.starts_with("<... demo::risky(int) resumed>") {
                let arg = open.take().unwrap_or_default();
                calls.push(format!("{arg} {}", ret_of(c)));
            }
        }
        assert_eq!(
            calls,
            [
                "0x0 0x0",
                "0x1 0x1",
                "0x2 0x2",
                "0x3 0x3",
                "0x4 <no return ...>",
                "0x5 <no return ...>"
            ],
            "{engine}: {trace}"
        );
    }
}
