//! The agent engine: processes it follows, the engine choice, and a hostile stream.

mod common;

use common::*;

fn forks_c() -> std::path::PathBuf {
    build_c("forks", "forks.c", &["-O1", "-g"])
}

/// (pid, start cause shown by info, bytes, blocks, line) of each process's leak group.
fn per_process(rec: &std::path::Path) -> Vec<(String, u64, u64, String)> {
    let info = rltrace().arg("info").arg(rec).output().unwrap();
    let info = String::from_utf8(info.stdout).unwrap();
    let report = replay_clean(rec, &["--leaks"]);
    let mut out = Vec::new();
    for section in report.split("process ").skip(1) {
        let pid = section.split_whitespace().next().unwrap().to_string();
        let how = info
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{pid} ")))
            .and_then(|l| l.split_once('(').map(|(_, r)| r.to_string()))
            .unwrap_or_default();
        let how = how.split([',', ')']).next().unwrap().to_string();
        for g in parse_leaks(&format!("process {section}")) {
            out.push((how.clone(), g.bytes, g.blocks, g.at));
        }
    }
    out.sort();
    out
}

#[test]
fn fork_exec_and_vfork_children_report_their_own_leaks() {
    let bin = forks_c();
    let src = repo().join("tests/fixtures/c/forks.c");
    let at = |m: &str| format!("forks.c:{}", marker_line(&src, m));
    let base = vec![
        ("started by rltrace".to_string(), 11, 1, at("LEAK: parent")),
        (
            "started by rltrace".to_string(),
            66,
            1,
            at("LEAK: after-failed-vfork"),
        ),
        ("forked from".to_string(), 33, 1, at("LEAK: exec")),
        ("vforked from".to_string(), 44, 1, at("LEAK: vexec")),
        ("forked from".to_string(), 55, 1, at("LEAK: exit-child")),
    ];
    let mut by_engine = Vec::new();
    for engine in ENGINES {
        let rec = scratch(&format!("forks-{engine}")).join("f.rlt");
        let o = record_with(engine, &rec, &bin, &[]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let got: Vec<_> = per_process(&rec)
            .into_iter()
            .map(|(how, b, n, at)| {
                let how = how.split(" from").next().unwrap().to_string();
                let how = if how == "started by rltrace" {
                    how
                } else {
                    format!("{how} from")
                };
                (how, b, n, at)
            })
            .collect();
        let mut want = base.clone();
        // The block the forked child still held when it exec'd. The ptrace engine
        // collects return values at a later stop: the one at the entry of the exec call,
        // which it traces as one of the program's imports.
        want.push(("forked from".to_string(), 22, 1, at("LEAK: child")));
        want.sort();
        assert_eq!(got, want, "{engine}");
        let info = rltrace().arg("info").arg(&rec).output().unwrap();
        let info = String::from_utf8(info.stdout).unwrap();
        // The _exit(3) child's status and the exec'd child's second image are known.
        assert!(info.contains("exited (status 3)"), "{engine}: {info}");
        assert_eq!(info.matches("2 images").count(), 2, "{engine}: {info}");
        // Every call the children made before exec is in the trace too.
        let trace = replay_clean(&rec, &[]);
        by_engine.push(
            trace
                .lines()
                .filter(|l| l.contains("malloc(") || l.contains("free("))
                .count(),
        );
        assert!(
            trace.contains("malloc(22) = "),
            "{engine}: the forked child's call just before exec: {trace}"
        );
    }
    assert_eq!(by_engine[0], by_engine[1], "same calls under both engines");
}

#[test]
fn the_engine_is_chosen_and_explained() {
    let dir = scratch("engine-choice");
    let engine_line = |o: &std::process::Output| {
        String::from_utf8_lossy(&o.stderr)
            .lines()
            .find(|l| l.starts_with("rltrace: engine: "))
            .unwrap_or_default()
            .to_string()
    };
    let o = record(&dir.join("a.rlt"), leaks_c(), &[]);
    assert_eq!(
        engine_line(&o),
        "rltrace: engine: agent (dynamically linked program: no -x selection)"
    );
    let stat = build_c("leaks-static-engine", "leaks.c", &["-O1", "-g", "-static"]);
    let o = record(&dir.join("s.rlt"), &stat, &[]);
    assert!(o.status.success());
    assert_eq!(
        engine_line(&o),
        format!(
            "rltrace: engine: ptrace ({} is statically linked: nothing can be preloaded into it)",
            stat.display()
        )
    );
    let groups = parse_leaks(&replay(&dir.join("s.rlt"), &["--leaks"]));
    assert_eq!(
        groups
            .iter()
            .filter(|g| g.at.starts_with("leaks.c:"))
            .count(),
        6
    );
    let o = rltrace()
        .args(["record", "-x", "strdup", "-o"])
        .arg(dir.join("x.rlt"))
        .arg("--")
        .arg(leaks_c())
        .output()
        .unwrap();
    assert_eq!(
        engine_line(&o),
        "rltrace: engine: agent+ptrace (dynamically linked program: the agent records the \
         allocator family and the program's calls, ptrace the other functions -x selects)"
    );
    // The leak report of that run is the agent's alone, block for block.
    let leaks = |f: &str| {
        let mut g: Vec<(u64, u64, String)> = parse_leaks(&replay(&dir.join(f), &["--leaks"]))
            .into_iter()
            .map(|g| (g.blocks, g.bytes, g.at))
            .collect();
        g.sort();
        g
    };
    assert_eq!(leaks("x.rlt"), leaks("a.rlt"));
    // A glob or a library part could select names beyond the allocator family.
    for x in ["mall*", "malloc@libc.so.6", "malloc+strdup"] {
        let o = record_opts(&["-x", x], &dir.join("glob.rlt"), leaks_c());
        assert!(
            engine_line(&o).starts_with("rltrace: engine: agent+ptrace ("),
            "{x}"
        );
    }
    let o = record_opts(
        &["--engine", "ptrace", "-x", "strdup"],
        &dir.join("p.rlt"),
        leaks_c(),
    );
    assert_eq!(
        engine_line(&o),
        "rltrace: engine: ptrace (asked for with --engine)"
    );
    let err = agent_refusal(&dir.join("bad.rlt"), &stat);
    assert!(err.contains("--engine agent cannot record this: "), "{err}");
}

/// On a machine whose kernel has withdrawn `tsc` from its clocksources (faked here by
/// mounting another list over the kernel's, in a mount namespace of the test's own), the
/// agent's order keys would not compare across CPUs: ptrace records instead, with the
/// reason, and `--engine agent` refuses.
#[test]
fn an_untrusted_time_stamp_counter_keeps_the_agent_out() {
    let dir = scratch("untrusted-tsc");
    let fake = dir.join("available_clocksource");
    std::fs::write(&fake, "hpet acpi_pm \n").unwrap();
    let rec = dir.join("t.rlt");
    let script = format!(
        "mount --bind '{}' /sys/devices/system/clocksource/clocksource0/available_clocksource \
         && RLTRACE='{}' && \"$RLTRACE\" record -o '{}' -- '{}' && \
         ! \"$RLTRACE\" record --engine agent -o '{}' -- '{}'",
        fake.display(),
        env!("CARGO_BIN_EXE_rltrace"),
        rec.display(),
        leaks_c().display(),
        dir.join("refused.rlt").display(),
        leaks_c().display(),
    );
    let o = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env_remove("DEBUGINFOD_URLS")
        .output()
        .expect("run unshare (util-linux)");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let why = "the kernel's clocksources are hpet, acpi_pm, not tsc: it does not trust the \
               time stamp counter, by which the agent orders threads' calls";
    assert!(
        err.contains(&format!("rltrace: engine: ptrace ({why})")),
        "{err}"
    );
    assert!(
        err.contains(&format!("--engine agent cannot record this: {why}")),
        "{err}"
    );
    assert!(!dir.join("refused.rlt").exists());
    let groups = parse_leaks(&replay(&rec, &["--leaks"]));
    assert_eq!(
        groups
            .iter()
            .filter(|g| g.at.starts_with("leaks.c:"))
            .count(),
        6,
        "{groups:?}"
    );
}

/// `rltrace record --engine agent` on `cmd`: asserts it refuses (status 2); its stderr.
fn agent_refusal(out: &std::path::Path, cmd: &std::path::Path) -> String {
    let o = rltrace()
        .args(["record", "--engine", "agent", "-o"])
        .arg(out)
        .arg("--")
        .arg(cmd)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn malformed_agent_streams_are_reported_not_trusted() {
    let bin = build_c("hostile", "hostile.c", &["-O1", "-g"]);
    let rec = scratch("hostile").join("h.rlt");
    let o = record_with("agent", &rec, &bin, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = rltrace().arg("replay").arg(&rec).output().unwrap();
    assert!(r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    for what in [
        "bad magic at offset 0",
        // 17 bytes of hello, 5 of message header, 16 of batch header.
        "unknown record kind at offset 38",
        "stack too deep at offset 38",
        // After the kind byte, time, flags and return value.
        "returned string out of bounds at offset 56",
        // Stored by the recorder as it came; the reader skips it and says so.
        "coded call of function 10, not of the allocator family",
        "message of 2147483647 bytes at offset 17",
    ] {
        assert!(err.contains(what), "{what}: {err}");
    }
    // The program's own calls are still recorded, through its real agent connection.
    let trace = String::from_utf8_lossy(&r.stdout);
    assert!(trace.contains("malloc(7) = 0x"), "{trace}");
}

#[test]
fn allocations_before_main_and_after_thread_and_process_teardown_are_seen() {
    let bin = build_c("lifecycle", "lifecycle.c", &["-O1", "-g", "-pthread"]);
    let src = repo().join("tests/fixtures/c/lifecycle.c");
    let at = |m: &str| format!("lifecycle.c:{}", marker_line(&src, m));
    let create = at("pthread_create(&t");
    let mut want = vec![
        (71, at("LEAK: constructor")),
        (72, at("LEAK: destructor")),
        (73, at("LEAK: atexit")),
        (74, at("LEAK: tls-destructor")),
    ];
    want.sort();
    for engine in ENGINES {
        let rec = scratch(&format!("lifecycle-{engine}")).join("l.rlt");
        let o = record_with(engine, &rec, &bin, &[]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let report = replay_clean(&rec, &["--leaks"]);
        let mut got: Vec<(u64, String)> = parse_leaks(&report)
            .into_iter()
            // glibc's per-thread block allocated inside pthread_create is its own business.
            .filter(|g| g.at.starts_with("lifecycle.c:") && g.at != create)
            .map(|g| (g.bytes, g.at))
            .collect();
        got.sort();
        assert_eq!(got, want, "{engine}:\n{report}");
    }
}

#[test]
fn a_fatal_signal_at_its_default_action_loses_no_call() {
    let bin = build_c("sigterm", "sigterm.c", &["-O1", "-g"]);
    let src = repo().join("tests/fixtures/c/sigterm.c");
    let rec = scratch("agent-sigterm").join("t.rlt");
    let o = record_with("agent", &rec, &bin, &[]);
    assert_eq!(
        o.status.code(),
        Some(128 + 15),
        "the status is the program's"
    );
    let report = replay_clean(&rec, &["--leaks"]);
    let g = &parse_leaks(&report)[0];
    assert_eq!((g.blocks, g.bytes), (500, 20_000), "{report}");
    assert_eq!(
        g.at,
        format!("sigterm.c:{}", marker_line(&src, "LEAK: before-sigterm"))
    );
    assert!(replay_clean(&rec, &[]).contains("+++ killed by SIGTERM +++"));

    // A descendant killed by SIGPIPE at the end of a pipeline: its status is known too.
    let rec = scratch("agent-sigpipe").join("p.rlt");
    let o = record_with(
        "agent",
        &rec,
        std::path::Path::new("/bin/sh"),
        &["-c", "yes | head -c 100000 > /dev/null"],
    );
    assert!(o.status.success());
    let info = rltrace().arg("info").arg(&rec).output().unwrap();
    let info = String::from_utf8(info.stdout).unwrap();
    assert!(
        info.lines()
            .any(|l| l.contains("/yes (forked from") && l.ends_with("killed by SIGPIPE")),
        "{info}"
    );
}

#[test]
fn dlopen_by_name_through_the_programs_runpath_still_works() {
    // glibc resolves a bare name against the RUNPATH of the object calling dlopen; the
    // agent must not stand in between (it does not interpose dlopen).
    let (_, lib) = dl_c();
    let main = build_c(
        "dl_main_runpath",
        "dl_main.c",
        &["-O1", "-g", "-Wl,-rpath,$ORIGIN", "-Wl,--enable-new-dtags"],
    );
    assert_eq!(
        main.parent(),
        lib.parent(),
        "the library sits next to the program"
    );
    let src = repo().join("tests/fixtures/c/leaky.c");
    let at = format!("leaky.c:{}", marker_line(&src, "LEAK: in-lib"));
    for engine in ENGINES {
        let rec = scratch(&format!("runpath-{engine}")).join("r.rlt");
        let o = record_with(engine, &rec, &main, &["libleaky.so"]);
        assert!(
            o.status.success(),
            "{engine}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let report = replay_clean(&rec, &["--leaks"]);
        let g = parse_leaks(&report)
            .into_iter()
            .find(|g| g.at == at)
            .unwrap_or_else(|| panic!("{engine}: {report}"));
        assert_eq!((g.blocks, g.bytes), (4, 224), "{engine}");
    }
}

#[test]
fn a_program_that_closes_every_descriptor_is_still_recorded() {
    let bin = build_c("closer", "closer.c", &["-O1", "-g"]);
    let src = repo().join("tests/fixtures/c/closer.c");
    let at = format!("closer.c:{}", marker_line(&src, "LEAK: after-closing"));
    let rec = scratch("closer").join("c.rlt");
    let o = record_with("agent", &rec, &bin, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report = replay_clean(&rec, &["--leaks"]);
    let got: Vec<(u64, String)> = parse_leaks(&report)
        .into_iter()
        .filter(|g| g.at.starts_with("closer.c:"))
        .map(|g| (g.bytes, g.at))
        .collect();
    assert_eq!(got, [(77, at)], "{report}");
    // The calls themselves are in the trace, and the process ended cleanly.
    let trace = replay_clean(&rec, &[]);
    assert!(trace.contains("closefrom(3) = <void>"), "{trace}");
    assert!(trace.contains("+++ exited (status 0) +++"), "{trace}");
}

/// The agent reuses an unwind while the stack words it read are unchanged: two callers
/// that reach the same allocating leaf with the same stack pointer, in turn, differ only
/// in a return address further out, and each keeps its own blocks (a cache that checked
/// too little gave all 1520 bytes to the first caller).
#[test]
fn callers_that_share_a_stack_pointer_keep_their_own_leaks() {
    let bin = build_c("twocallers", "twocallers.c", &["-O1", "-g"]);
    for engine in ENGINES {
        let dir = scratch(&format!("twocallers-{engine}"));
        let rec = dir.join("two.rlt");
        let o = record_with(engine, &rec, &bin, &[]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let folded = replay(&rec, &["--leaks", "--format", "folded"]);
        let mut got: Vec<&str> = folded
            .lines()
            .map(|l| l.split_once(";main;").map_or(l, |(_, rest)| rest))
            .collect();
        got.sort();
        assert_eq!(
            got,
            ["via_a;leaf;malloc 720", "via_b;leaf;malloc 800"],
            "{engine}:\n{folded}"
        );
        let report = replay(&rec, &["--leaks"]);
        let groups: Vec<(u64, u64, String)> = parse_leaks(&report)
            .into_iter()
            .map(|g| (g.bytes, g.blocks, g.at))
            .collect();
        let src = repo().join("tests/fixtures/c/twocallers.c");
        let leaf = format!("twocallers.c:{}", marker_line(&src, "TWO: leaf"));
        assert_eq!(
            groups,
            [(800, 20, leaf.clone()), (720, 30, leaf)],
            "{engine}:\n{report}"
        );
    }
}

#[test]
fn a_program_with_its_own_malloc_is_recorded_by_ptrace_not_the_agent() {
    // The program exports malloc: libraries bind to it before the preloaded agent's, so
    // the agent would report no leaks at all.
    let bin = build_c("own_alloc", "own_alloc.c", &["-O1", "-g"]);
    let dir = scratch("own-alloc");
    let o = record_opts(&[], &dir.join("a.rlt"), &bin);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!(
            "rltrace: engine: ptrace ({} defines malloc itself: calls bind to it before any \
             preloaded library, so the agent would see none of them)",
            bin.display()
        )),
        "{err}"
    );
    let src = repo().join("tests/fixtures/c/own_alloc.c");
    let leaks = parse_leaks(&replay(&dir.join("a.rlt"), &["--leaks"]));
    let at = format!("own_alloc.c:{}", marker_line(&src, "OWN: leak"));
    let g = leaks
        .iter()
        .find(|g| g.at == at)
        .unwrap_or_else(|| panic!("no leak at {at}: {leaks:?}"));
    assert_eq!((g.blocks, g.bytes), (1, 40));
    let err = agent_refusal(&dir.join("b.rlt"), &bin);
    assert!(err.contains("defines malloc itself"), "{err}");
}

#[test]
fn an_allocator_only_selection_is_recorded_by_the_agent_as_ptrace_records_it() {
    // `-x malloc+free+realloc` names only functions the agent interposes for every caller:
    // no ptrace needed, and the trace (allocator calls from every caller, the imports) is
    // the ptrace engine's.
    let dir = scratch("agent-x-alloc");
    let mut traces = Vec::new();
    for engine in ["auto", "ptrace"] {
        let rec = dir.join(format!("{engine}.rlt"));
        let o = record_opts(
            &["--engine", engine, "-x", "malloc+free+realloc"],
            &rec,
            leaks_c(),
        );
        if engine == "auto" {
            assert!(
                String::from_utf8_lossy(&o.stderr).contains(
                    "rltrace: engine: agent (dynamically linked program: -x selects only \
                     allocator functions, which the agent interposes)"
                ),
                "{}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        let calls: Vec<String> = replay_clean(&rec, &[])
            .lines()
            .filter_map(|l| l.split_once("] ").map(|(_, c)| unaddress_from(c, 5)))
            .collect();
        traces.push(calls);
    }
    let (auto, ptrace) = (&traces[0], &traces[1]);
    assert_eq!(auto, ptrace, "the same calls, arguments and lines");
    let count = |f: &str| auto.iter().filter(|l| l.starts_with(f)).count();
    // leaks.c: 5 malloc/free pairs, make_block's malloc, strdup's own, three malloc(24),
    // one realloc from NULL and four that grow it. -x selected malloc, so strdup's shows
    // inside it under either engine, as under `ltrace -x malloc`.
    assert_eq!(
        (count("malloc("), count("free("), count("realloc(")),
        (10, 5, 5)
    );
    let at = auto
        .iter()
        .position(|l| l.starts_with("strdup(\"leaked string\" <unfinished ...>"))
        .unwrap_or_else(|| panic!("{auto:?}"));
    assert!(auto[at + 1].starts_with("malloc(14) = PTR"), "{auto:?}");
    assert_eq!(auto[at + 2], "<... strdup resumed> ) = PTR", "{auto:?}");
}
