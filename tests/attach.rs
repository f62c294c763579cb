//! `rltrace record -p PID`: attach to a running process, record a window, detach and leave
//! the process exactly as it was; survive a recorder killed with SIGKILL.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Starts the Rust server fixture directly (not under rltrace); returns it and its address.
fn spawn_server() -> (Child, String) {
    let mut child = Command::new(rust_server())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = listen_addr(child.stdout.take().unwrap());
    (child, addr)
}

/// One request: sends `n`, returns the answer line.
fn ask(addr: &str, n: u64) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    writeln!(s, "{n}").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer.trim().to_string()
}

fn ask_many(addr: &str, from: u64, count: u64) {
    for i in from..from + count {
        assert_eq!(ask(addr, i), (i + 1).to_string(), "request {i}");
    }
}

/// `rltrace record -p PID -o REC EXTRA...`, with stderr piped.
fn start_attach(pid: u32, rec: &Path, extra: &[&str]) -> Child {
    rltrace()
        .args(["record", "-p", &pid.to_string(), "-o"])
        .arg(rec)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Reads the recorder's stderr until it says it attached; returns the reader for the rest.
fn wait_attached(rec: &mut Child) -> BufReader<std::process::ChildStderr> {
    let mut err = BufReader::new(rec.stderr.take().unwrap());
    let mut said = String::new();
    loop {
        let start = said.len();
        assert!(
            err.read_line(&mut said).unwrap() > 0,
            "the recorder ended before attaching: {said}"
        );
        if said[start..].contains("attached to process") {
            return err;
        }
    }
}

/// Waits for the recorder and returns (exit code, rest of stderr).
fn finish(mut rec: Child, mut err: BufReader<std::process::ChildStderr>) -> (i32, String) {
    let status = rec.wait().unwrap();
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    (status.code().unwrap_or(-1), rest)
}

/// What a detach must leave unchanged: anonymous executable mappings (rltrace's injected
/// pages), the set of caught signals, and the tracer.
fn footprint(pid: u32) -> (usize, String, String) {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let anon_exec = maps
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() == 5 && f[1].contains('x')
        })
        .count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(!status.contains("zombie"), "process {pid} died");
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap()
            .to_string()
    };
    (anon_exec, field("SigCgt:"), field("TracerPid:"))
}

fn boxed_line() -> u32 {
    marker_line(
        &repo().join("tests/fixtures/rust-server/src/main.rs"),
        "LEAK: boxed",
    )
}

fn stop_server(mut server: Child, addr: &str) {
    let mut s = TcpStream::connect(addr).unwrap();
    writeln!(s, "quit").unwrap();
    let mut bye = String::new();
    s.read_to_string(&mut bye).unwrap();
    assert_eq!(bye.trim(), "bye");
    assert!(server.wait().unwrap().success());
}

#[test]
fn attach_window_holds_exactly_the_requests_made_in_it() {
    let (server, addr) = spawn_server();
    let pid = server.id();
    ask_many(&addr, 0, 20); // leaks from before the attach, not to be reported
    let before = footprint(pid);
    let dir = scratch("attach-exact");
    let rec = dir.join("window.rlt");
    let mut r = start_attach(pid, &rec, &[]);
    let err = wait_attached(&mut r);
    ask_many(&addr, 100, 30);
    kill(Pid::from_raw(r.id() as i32), Signal::SIGINT).unwrap();
    let (code, rest) = finish(r, err);
    assert_eq!(code, 0, "{rest}");
    assert!(rest.contains("detaching from process"), "{rest}");

    let report = replay_clean(&rec, &["--leaks"]);
    assert!(report.contains("(attach window: "), "{report}");
    let groups = parse_leaks(&report);
    let top = &groups[0];
    assert_eq!(top.blocks, 30, "{report}");
    assert_eq!(top.bytes, 30 * 32, "{report}");
    assert_eq!(top.at, format!("main.rs:{}", boxed_line()), "{report}");
    let info = String::from_utf8(rltrace().arg("info").arg(&rec).output().unwrap().stdout).unwrap();
    assert!(info.contains("complete:  yes"), "{info}");
    assert!(info.contains("(attached to while running)"), "{info}");
    assert!(
        info.contains("still running when recording stopped"),
        "{info}"
    );

    // Left exactly as it was, and serving.
    assert_eq!(footprint(pid), before);
    ask_many(&addr, 1000, 1000);
    stop_server(server, &addr);
}

#[test]
fn attach_while_serving_then_twenty_more_cycles() {
    let (server, addr) = spawn_server();
    let pid = server.id();
    let before = footprint(pid);
    // A client serving nonstop through every attach and detach, checking each answer.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let client = {
        let (stop, served, addr) = (stop.clone(), served.clone(), addr.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                assert_eq!(ask(&addr, i), (i + 1).to_string(), "request {i}");
                served.fetch_add(1, Ordering::SeqCst);
                i += 1;
            }
        })
    };
    let dir = scratch("attach-cycles");
    let mut windows = Vec::new();
    for cycle in 0..21 {
        let rec = dir.join(format!("cycle{cycle}.rlt"));
        let secs = if cycle == 0 { "3" } else { "0.2" };
        let mut r = start_attach(pid, &rec, &["--duration", secs]);
        let err = wait_attached(&mut r);
        let (code, rest) = finish(r, err);
        assert_eq!(code, 0, "cycle {cycle}: {rest}");
        assert_eq!(
            footprint(pid),
            before,
            "cycle {cycle} left something behind"
        );
        windows.push(rec);
    }
    let during = served.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    client.join().expect("every answer was right");
    assert!(during > 100, "only {during} requests were served");

    // The 3-second window shows the per-request leak at the `.boxed()` line.
    let report = replay_clean(&windows[0], &["--leaks"]);
    let top = &parse_leaks(&report)[0];
    assert_eq!(top.at, format!("main.rs:{}", boxed_line()), "{report}");
    assert!(top.blocks >= 10, "{report}");
    assert_eq!(top.bytes, 32 * top.blocks, "{report}");
    for w in &windows[1..] {
        // Every short window replays cleanly too.
        replay_clean(w, &["--leaks"]);
    }
    ask_many(&addr, 1_000_000, 1000);
    stop_server(server, &addr);
}

#[test]
fn killed_recorder_leaves_the_process_running_and_a_new_attach_recovers() {
    let (server, addr) = spawn_server();
    let pid = server.id();
    let before = footprint(pid);
    let dir = scratch("attach-kill");
    let mut r = start_attach(pid, &dir.join("killed.rlt"), &[]);
    let _err = wait_attached(&mut r);
    ask_many(&addr, 0, 10);
    r.kill().unwrap(); // SIGKILL: no chance to detach
    r.wait().unwrap();
    // Untraced now, breakpoints still in place, and the server serves on.
    ask_many(&addr, 100, 200);
    assert_eq!(footprint(pid).2, "TracerPid:\t0");

    // A new attach undoes the dead recorder's breakpoints and records normally.
    let rec = dir.join("again.rlt");
    let mut r = start_attach(pid, &rec, &[]);
    let err = wait_attached(&mut r);
    ask_many(&addr, 1000, 25);
    kill(Pid::from_raw(r.id() as i32), Signal::SIGINT).unwrap();
    let (code, rest) = finish(r, err);
    assert_eq!(code, 0, "{rest}");
    let out = rltrace()
        .args(["replay", "--leaks"])
        .arg(&rec)
        .output()
        .unwrap();
    let report = String::from_utf8(out.stdout).unwrap();
    let notes = String::from_utf8(out.stderr).unwrap();
    assert!(
        notes.contains("breakpoints left by an rltrace that was killed"),
        "{notes}"
    );
    let top = &parse_leaks(&report)[0];
    assert_eq!((top.blocks, top.bytes), (25, 25 * 32), "{report}");
    // The dead recorder's pages stay (a stub of a call then running may still be on a
    // stack); the SIGTRAP action is the program's again.
    let after = footprint(pid);
    assert_eq!(after.0, before.0 + 1);
    assert_eq!((&after.1, &after.2), (&before.1, &before.2));
    ask_many(&addr, 5000, 200);
    stop_server(server, &addr);
}

/// Starts a fixture that says "ready" once running; returns it and its stdout after that.
fn start_ready(bin: &Path, stdin: Stdio) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut prog = Command::new(bin)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(prog.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    (prog, out)
}

fn mt_forever() -> &'static Path {
    static P: OnceLock<std::path::PathBuf> = OnceLock::new();
    P.get_or_init(|| build_c("mt_forever", "mt_forever.c", &["-O1", "-g", "-pthread"]))
}

#[test]
fn detaching_from_busy_threads_mid_call_is_harmless() {
    let (mut prog, mut out) = start_ready(mt_forever(), Stdio::piped());
    let pid = prog.id();
    let before = footprint(pid);
    let dir = scratch("attach-mt");
    for cycle in 0..20 {
        let rec = dir.join(format!("mt{cycle}.rlt"));
        // Every other cycle with -S: threads then also stop at system calls, where the
        // detach must not borrow their registers.
        let extra: &[&str] = if cycle % 2 == 1 {
            &["--duration", "0.2", "-S"]
        } else {
            &["--duration", "0.2"]
        };
        let mut r = start_attach(pid, &rec, extra);
        let err = wait_attached(&mut r);
        let (code, rest) = finish(r, err);
        assert_eq!(code, 0, "cycle {cycle}: {rest}");
        assert_eq!(
            footprint(pid),
            before,
            "cycle {cycle} left something behind"
        );
        let trace = replay_clean(&rec, &["--format", "json"]);
        let reallocs = trace.lines().filter(|l| l.contains("\"realloc\"")).count();
        assert!(reallocs > 0, "cycle {cycle} recorded no realloc");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(prog.stdin.take()); // EOF: the threads stop and the program reports
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let status = prog.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(rest.starts_with("ok "), "{rest}");
}

#[test]
fn attach_errors_are_clear() {
    let o = rltrace()
        .args(["record", "-p", "999999999", "-o", "/dev/null"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("cannot attach to process 999999999: no such process"),
        "{err}"
    );
    // A process already traced (by another rltrace) is refused, not shared.
    let (server, addr) = spawn_server();
    let dir = scratch("attach-twice");
    let mut first = start_attach(server.id(), &dir.join("one.rlt"), &[]);
    let err1 = wait_attached(&mut first);
    let o = rltrace()
        .args(["record", "-p", &server.id().to_string(), "-o"])
        .arg(dir.join("two.rlt"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("already being traced"), "{err}");
    kill(Pid::from_raw(first.id() as i32), Signal::SIGTERM).unwrap();
    let (code, rest) = finish(first, err1);
    assert_eq!(code, 0, "{rest}");
    ask_many(&addr, 0, 10);
    stop_server(server, &addr);
}

#[test]
fn attach_with_s_records_system_calls_and_leaves_the_process_as_it_was() {
    let (mut prog, _out) = start_ready(forever_c(), Stdio::null());
    let pid = prog.id();
    let before = footprint(pid);
    let rec = scratch("attach-s").join("s.rlt");
    let mut r = start_attach(pid, &rec, &["--duration", "0.3", "-S"]);
    let err = wait_attached(&mut r);
    let (code, rest) = finish(r, err);
    assert_eq!(code, 0, "{rest}");
    assert_eq!(footprint(pid), before, "the attach left something behind");
    // replay_clean: no warning (the clean-up ran, nothing was cut short).
    let trace = replay_clean(&rec, &[]);
    // nanosleep(1 ms) in a loop: the C library's call and the kernel's, inside it.
    let sleeps = trace
        .lines()
        .filter(|l| l.contains("] SYS_clock_nanosleep("))
        .count();
    assert!(sleeps > 10, "{trace}");
    let _ = prog.kill();
    let _ = prog.wait();
}

#[test]
fn attached_the_programs_calls_are_traced_when_e_asks_for_them() {
    let (mut prog, _out) = start_ready(forever_c(), Stdio::null());
    let pid = prog.id();
    let dir = scratch("attach-e");
    let names = |extra: &[&str], rec: &Path| -> std::collections::BTreeSet<String> {
        let mut args = vec!["--duration", "0.3"];
        args.extend_from_slice(extra);
        let mut r = start_attach(pid, rec, &args);
        let err = wait_attached(&mut r);
        let (code, rest) = finish(r, err);
        assert_eq!(code, 0, "{rest}");
        replay_clean(rec, &[])
            .lines()
            .filter_map(|l| Some(l.split_once("] ")?.1.split('(').next()?.to_string()))
            .filter(|n| !n.starts_with("+++"))
            .collect()
    };
    // By default an attach records the allocator family (and -x): the leak hunt.
    let plain = names(&[], &dir.join("plain.rlt"));
    assert_eq!(
        plain,
        ["free", "malloc"].iter().map(|s| s.to_string()).collect(),
        "{plain:?}"
    );
    // -e adds the program's calls through its imports, as it selects them.
    let with_e = names(&["-e", "nanosleep"], &dir.join("e.rlt"));
    assert!(with_e.contains("nanosleep"), "{with_e:?}");
    let all = names(&["-e", "@MAIN"], &dir.join("main.rlt"));
    assert!(
        all.contains("nanosleep") && all.contains("malloc"),
        "{all:?}"
    );
    let _ = prog.kill();
    let _ = prog.wait();
}
