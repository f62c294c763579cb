//! Binary flavours, modules loaded at run time, and the recorder's own lifecycle.

mod common;

use std::io::BufRead;
use std::os::unix::process::CommandExt;
use std::time::Duration;

use common::*;

fn fixture_groups(report: &str, file: &str) -> Vec<(u64, u64, String, String)> {
    parse_leaks(report)
        .into_iter()
        .filter(|g| g.at.starts_with(file))
        .map(|g| (g.bytes, g.blocks, g.func, g.at))
        .collect()
}

#[test]
fn every_binary_flavour_gives_the_same_leaks() {
    let dir = scratch("flavours");
    let baseline = {
        let rec = dir.join("base.rlt");
        record(&rec, leaks_c(), &[]);
        fixture_groups(&replay(&rec, &["--leaks"]), "leaks.c:")
    };
    assert_eq!(baseline.len(), 6);
    let flavours: [(&str, &[&str]); 5] = [
        ("now", &["-Wl,-z,now"]),
        ("noplt", &["-fno-plt"]),
        ("ibt", &["-fcf-protection", "-Wl,-z,ibt,-z,now"]),
        ("static", &["-static"]),
        ("static-pie", &["-static-pie"]),
    ];
    for (name, flags) in flavours {
        let mut all = vec!["-O1", "-g"];
        all.extend_from_slice(flags);
        let bin = build_c(&format!("leaks-{name}"), "leaks.c", &all);
        let rec = dir.join(format!("{name}.rlt"));
        let o = record(&rec, &bin, &[]);
        assert!(
            o.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let got = fixture_groups(&replay(&rec, &["--leaks"]), "leaks.c:");
        assert_eq!(got, baseline, "{name}");
    }
}

#[test]
fn dlopened_library_is_tracked_and_symbolized_after_dlclose() {
    let (main, lib) = dl_c();
    let dir = scratch("dlopen");
    let rec = dir.join("dl.rlt");
    let o = record(&rec, main, &[lib.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report = replay(&rec, &["--leaks", "-v"]);
    let src = repo().join("tests/fixtures/c/leaky.c");
    let line = marker_line(&src, "LEAK: in-lib");
    let g = parse_leaks(&report)
        .into_iter()
        .find(|g| g.at == format!("leaky.c:{line}"))
        .unwrap_or_else(|| panic!("{report}"));
    assert_eq!(
        (g.blocks, g.bytes, g.caller_fn.as_str()),
        (4, 224, "leak_in_lib")
    );
    let call_line = marker_line(&repo().join("tests/fixtures/c/dl_main.c"), "CALL: lib");
    assert!(
        g.text.contains(&format!("dl_main.c:{call_line}:")),
        "stack reaches main: {}",
        g.text
    );
}

#[test]
fn interrupt_from_the_terminal_leaves_a_complete_recording() {
    let dir = scratch("ctrl-c");
    let rec = dir.join("int.rlt");
    // Its own process group, like a shell job; the "terminal" signals the whole group.
    let (mut child, _out) = start_forever_with(&rec, |c| {
        c.process_group(0);
    });
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(128 + 2));
    let o = rltrace().args(["replay"]).arg(&rec).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let trace = String::from_utf8(o.stdout).unwrap();
    assert!(trace.contains("+++ killed by SIGINT +++"), "{trace}");
    assert!(trace.matches("malloc(64)").count() > 10);
}

#[test]
fn killed_recorder_leaves_a_readable_prefix_and_no_orphan() {
    let dir = scratch("sigkill");
    let rec = dir.join("killed.rlt");
    let (mut child, mut out) = start_forever(&rec);
    // Past the recorder's one-second sealing interval.
    std::thread::sleep(Duration::from_millis(1500));
    child.kill().unwrap();
    child.wait().unwrap();
    // The tracee goes with its tracer: its stdout pipe closes.
    let mut rest = String::new();
    let closed = std::thread::spawn(move || out.read_line(&mut rest).unwrap());
    let t0 = std::time::Instant::now();
    while !closed.is_finished() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        closed.is_finished(),
        "the tracee outlived its killed recorder"
    );
    let o = rltrace().args(["replay"]).arg(&rec).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "incomplete, but replayed");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no end marker") || err.contains("truncated"),
        "{err}"
    );
    assert!(
        String::from_utf8_lossy(&o.stdout)
            .matches("malloc(64)")
            .count()
            > 10
    );
}

#[test]
fn programs_started_by_a_shell_are_followed_through_fork_and_exec() {
    let dir = scratch("sh-exec");
    let rec = dir.join("sh.rlt");
    let leaks = leaks_c().display().to_string();
    // sh forks and execs the first, and execs the second in place of itself.
    let script = format!("{leaks} | cat; exec {leaks}");
    let o = record(&rec, std::path::Path::new("/bin/sh"), &["-c", &script]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "done\ndone\n");
    let report = replay(&rec, &["--leaks"]);
    // Both runs of the fixture report their six groups, each in its own process.
    let sections: Vec<&str> = report
        .split("process ")
        .filter(|s| s.contains(&leaks))
        .collect();
    assert_eq!(sections.len(), 2, "{report}");
    for s in sections {
        let groups = fixture_groups(&format!("process {s}"), "leaks.c:");
        assert_eq!(groups.len(), 6, "{s}");
        assert_eq!((groups[0].0, groups[0].1), (72, 3), "{s}");
    }
}

#[test]
fn a_program_that_refuses_injection_runs_unrecorded_with_a_note() {
    let sandbox = build_c("sandbox", "sandbox.c", &["-O1", "-g"]);
    let dir = scratch("seccomp");
    let rec = dir.join("s.rlt");
    // Injection is the ptrace engine's business.
    let o = record_with("ptrace", &rec, &sandbox, &[leaks_c().to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "done\n",
        "the program ran normally"
    );
    let r = rltrace()
        .args(["replay", "--leaks"])
        .arg(&rec)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.contains(&format!(
            "calls of {} are not recorded",
            leaks_c().display()
        )) && err.contains("mprotect"),
        "{err}"
    );
    assert!(!String::from_utf8_lossy(&r.stdout).contains("leaks.c:"));
}

#[test]
fn posix_spawned_children_are_recorded_as_their_own_processes() {
    let spawn = spawn_c();
    let dir = scratch("posix-spawn");
    let rec = dir.join("p.rlt");
    let o = record(&rec, spawn, &[leaks_c().to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "done\n");
    let report = replay(&rec, &["--leaks"]);
    let src = repo().join("tests/fixtures/c/spawn.c");
    let parent: Vec<(u64, u64, String, String)> = fixture_groups(&report, "spawn.c:");
    assert_eq!(
        parent,
        vec![
            (
                99,
                1,
                "malloc".into(),
                format!("spawn.c:{}", marker_line(&src, "LEAK: after-child"))
            ),
            (
                88,
                1,
                "malloc".into(),
                format!("spawn.c:{}", marker_line(&src, "LEAK: parent"))
            ),
        ],
        "{report}"
    );
    let child = report
        .split("process ")
        .find(|s| s.contains(&leaks_c().display().to_string()))
        .unwrap_or_else(|| panic!("{report}"));
    assert_eq!(
        fixture_groups(&format!("process {child}"), "leaks.c:").len(),
        6,
        "{report}"
    );
}

#[test]
fn hangup_sent_to_the_recorder_reaches_the_program() {
    let dir = scratch("sighup");
    let rec = dir.join("hup.rlt");
    let (mut child, _out) = start_forever(&rec);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(128 + 1));
    assert!(replay(&rec, &[]).contains("+++ killed by SIGHUP +++"));
}

#[test]
fn info_lists_processes_and_replay_selects_one() {
    let dir = scratch("info-pid");
    let rec = dir.join("sh.rlt");
    let leaks = leaks_c().display().to_string();
    let o = record(
        &rec,
        std::path::Path::new("/bin/sh"),
        &["-c", &format!("{leaks} | cat")],
    );
    assert!(o.status.success());
    let info = rltrace().arg("info").arg(&rec).output().unwrap();
    assert!(
        info.status.success(),
        "{}",
        String::from_utf8_lossy(&info.stderr)
    );
    let text = String::from_utf8(info.stdout).unwrap();
    assert!(text.contains("complete:  yes"), "{text}");
    assert!(
        text.contains(&format!("command:   /bin/sh -c {leaks} | cat")),
        "{text}"
    );
    let procs: Vec<&str> = text
        .lines()
        .skip_while(|l| *l != "processes:")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .collect();
    assert_eq!(procs.len(), 3, "sh, the fixture and cat: {text}");
    let fixture = procs.iter().find(|l| l.contains(&leaks)).unwrap();
    assert!(
        fixture.contains("exited (status 0)") && fixture.contains("forked from"),
        "{fixture}"
    );
    let pid: u32 = fixture.split_whitespace().next().unwrap().parse().unwrap();
    // Its modules are listed with build-ids.
    assert!(text
        .lines()
        .any(|l| l.contains(&leaks) && l.trim_start().starts_with(&pid.to_string())));

    let only = replay(&rec, &["--leaks", "--pid", &pid.to_string()]);
    assert!(only.starts_with(&format!("process {pid} ")), "{only}");
    assert_eq!(only.matches("process ").count(), 1, "{only}");
    assert_eq!(fixture_groups(&only, "leaks.c:").len(), 6);
    let trace = replay(&rec, &["--pid", &pid.to_string()]);
    assert!(
        trace.lines().all(|l| l.starts_with(&format!("[{pid} "))),
        "{trace}"
    );
}

#[test]
fn info_says_when_a_recording_was_cut_short() {
    let dir = scratch("info-cut");
    let rec = dir.join("l.rlt");
    record(&rec, leaks_c(), &[]);
    let bytes = std::fs::read(&rec).unwrap();
    std::fs::write(&rec, &bytes[..bytes.len() - 2]).unwrap();
    let o = rltrace().arg("info").arg(&rec).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout)
        .contains("complete:  no, cut short (recording truncated at offset"));
}

#[test]
fn a_crash_is_recorded_with_the_faulting_stack() {
    let bin = build_c("crash", "crash.c", &["-O1", "-g"]);
    let src = repo().join("tests/fixtures/c/crash.c");
    let segv_at = format!("crash.c:{}:", marker_line(&src, "CRASH: segv"));
    let call_at = format!("crash.c:{}:", marker_line(&src, "CALL: crash"));
    let dir = scratch("crash");
    let rec = dir.join("segv.rlt");
    // Fatal signals and their stacks are seen by the ptrace engine only.
    let o = record_with("ptrace", &rec, &bin, &[]);
    assert_eq!(
        o.status.code(),
        Some(128 + 11),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    let trace = replay(&rec, &[]);
    let lines: Vec<&str> = trace.lines().collect();
    let i = lines
        .iter()
        .position(|l| l.contains("--- SIGSEGV (Segmentation fault) at 0x0 ---"))
        .unwrap_or_else(|| panic!("{trace}"));
    assert!(
        lines[i].contains(&segv_at) && lines[i].ends_with("crash_here"),
        "{}",
        lines[i]
    );
    assert!(
        lines[i + 1].contains("#0  crash_here at") && lines[i + 1].contains(&segv_at),
        "{trace}"
    );
    assert!(
        lines[i + 2].contains("#1  main at") && lines[i + 2].contains(&call_at),
        "{trace}"
    );
    assert!(lines[i + 3..]
        .iter()
        .any(|l| l.contains("+++ killed by SIGSEGV +++")));

    let leaks = replay(&rec, &["--leaks"]);
    assert!(
        leaks.contains("(it died of SIGSEGV (Segmentation fault) at "),
        "{leaks}"
    );
    assert_eq!(
        fixture_groups(&leaks, "crash.c:"),
        vec![(
            77,
            1,
            "malloc".to_string(),
            format!("crash.c:{}", marker_line(&src, "LEAK: before-crash"))
        )]
    );
    let info = rltrace().arg("info").arg(&rec).output().unwrap();
    assert!(String::from_utf8_lossy(&info.stdout)
        .contains("crashed: SIGSEGV (Segmentation fault), killed by SIGSEGV"));
    let json = replay(&rec, &["--format", "json"]);
    let sig: serde_json::Value = json
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["type"] == "signal")
        .unwrap();
    assert_eq!(sig["signal"], 11);
    assert_eq!(sig["stack"][0]["function"], "crash_here");

    // abort(): the stack runs through libc's raise and abort to the calling line.
    let rec = dir.join("abort.rlt");
    let o = record_with("ptrace", &rec, &bin, &["abort"]);
    assert_eq!(o.status.code(), Some(128 + 6));
    let trace = replay(&rec, &[]);
    let abort_at = format!("crash.c:{}:", marker_line(&src, "CRASH: abort"));
    let line = trace
        .lines()
        .find(|l| l.contains("--- SIGABRT (Aborted) ---"))
        .unwrap_or_else(|| panic!("{trace}"));
    assert!(
        line.contains(&abort_at) && line.ends_with(" main"),
        "{line}"
    );
}

#[test]
fn a_signal_the_program_handles_is_not_a_crash() {
    let dir = scratch("handled");
    let rec = dir.join("h.rlt");
    // The shell traps SIGABRT (SIGABRT sent to itself), so it is no crash.
    let o = record(
        &rec,
        std::path::Path::new("/bin/sh"),
        &["-c", "trap 'echo caught' ABRT; kill -ABRT $$; echo on"],
    );
    assert!(o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stdout), "caught\non\n");
    assert!(!replay(&rec, &[]).contains("---"), "no crash recorded");
}

#[test]
fn no_follow_records_only_the_command() {
    let dir = scratch("no-follow");
    let leaks = leaks_c().display().to_string();
    // Forked children: released with their breakpoints removed.
    let rec = dir.join("sh.rlt");
    let o = rltrace()
        .args(["record", "--no-follow", "-o"])
        .arg(&rec)
        .args([
            "--",
            "/bin/sh",
            "-c",
            &format!("{leaks} | cat; {leaks} >/dev/null; echo end"),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "done\nend\n",
        "the children ran normally"
    );
    let info = String::from_utf8(rltrace().arg("info").arg(&rec).output().unwrap().stdout).unwrap();
    let procs = info
        .lines()
        .skip_while(|l| *l != "processes:")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .count();
    assert_eq!(procs, 1, "{info}");
    assert!(!replay(&rec, &["--leaks"]).contains("leaks.c:"));

    // A posix_spawn child shares its parent's memory until it execs: released then.
    let spawn = spawn_c();
    let rec = dir.join("spawn.rlt");
    let o = rltrace()
        .args(["record", "--no-follow", "-o"])
        .arg(&rec)
        .arg("--")
        .arg(spawn)
        .arg(&leaks)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "done\n");
    let report = replay(&rec, &["--leaks"]);
    assert_eq!(fixture_groups(&report, "spawn.c:").len(), 2, "{report}");
    assert!(!report.contains("leaks.c:"), "{report}");
}

#[test]
fn programs_handling_sigint_and_sigalrm_behave_unchanged() {
    let bin = build_c("signals", "signals.c", &["-O1", "-g"]);
    let dir = scratch("signals");
    let rec = dir.join("s.rlt");
    let mut child = rltrace()
        .args(["record", "-o"])
        .arg(&rec)
        .arg("--")
        .arg(&bin)
        .process_group(0)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(
        line, "ready\n",
        "50 timer signals were delivered while allocating"
    );
    // Ctrl-C from the terminal: the program's own handler runs and it exits normally.
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "interrupted after >=50 alarms\n");
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let trace = replay_clean(&rec, &[]);
    assert!(trace.contains("+++ exited (status 0) +++"));
    assert!(
        !trace.contains("<no return"),
        "no call lost its return to a signal"
    );
    assert!(!trace.contains(" --- "), "handled signals are not crashes");
}

/// The program's voluntary context switches: they stop growing while it is stopped.
fn switches(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn job_control_stops_and_continues_the_program_as_without_rltrace() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let dir = scratch("jobctl");
    let rec = dir.join("jobctl.rlt");
    // The ptrace engine sees stop signals first and must pass them on; the agent engine
    // does not come between the program and its signals at all.
    // Its own process group, like a shell job: the kernel discards SIGTSTP sent to a
    // process in an orphaned group, which the test harness's group may be.
    let (mut child, _out) = start_forever_with(&rec, |c| {
        c.args(["--engine", "ptrace"]).process_group(0);
    });
    let program = std::fs::read_to_string(format!("/proc/{}/task/{0}/children", child.id()))
        .unwrap()
        .trim()
        .parse::<u32>()
        .unwrap();
    for stop in [Signal::SIGTSTP, Signal::SIGSTOP] {
        kill(Pid::from_raw(program as i32), stop).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let a = switches(program);
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(switches(program), a, "{stop:?} did not stop the program");
        kill(Pid::from_raw(program as i32), Signal::SIGCONT).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert!(switches(program) > a + 20, "SIGCONT did not continue it");
    }
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(128 + 15));
    assert!(replay_clean(&rec, &[]).contains("+++ killed by SIGTERM +++"));
}

/// The posix_spawn fixture, built once: two tests use it, and rebuilding it while the
/// other records it leaves that recording naming a deleted file.
fn spawn_c() -> &'static std::path::Path {
    static P: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    P.get_or_init(|| build_c("spawn", "spawn.c", &["-O1", "-g"]))
}
