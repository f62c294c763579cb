//! `record -x FILTER`: any function, in whichever module defines it, on binaries ltrace
//! cannot see (`-fno-plt`), with ltrace's filter syntax.

mod common;

use std::path::Path;

use common::*;

/// `name(args) = ret` of each call from `calls.c` to the functions in `names`, in order,
/// with addresses replaced by `PTR`.
fn calls_from_fixture(trace: &str, names: &[&str]) -> Vec<String> {
    trace
        .lines()
        .filter(|l| l.contains("calls.c:"))
        .filter_map(|l| {
            let body = l.split("] ").nth(1)?;
            let name = body.split('(').next()?;
            if !names.contains(&name) {
                return None;
            }
            let call = body.split("  ").next()?;
            Some(unaddress(call))
        })
        .collect()
}

/// `rltrace record -L -x FILTER`: the functions the filter selects (and the allocator
/// family), without the default trace of the program's imports (ltrace's `-L -x`).
fn record_x(bin: &Path, rec: &Path, filter: &str) -> std::process::Output {
    let o = rltrace()
        .args(["record", "-L", "-o"])
        .arg(rec)
        .args(["-x", filter, "--"])
        .arg(bin)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o
}

#[test]
fn x_traces_functions_in_every_binary_flavour_with_exact_calls() {
    let src = repo().join("tests/fixtures/c/calls.c");
    let at = |m: &str| format!("calls.c:{}:", marker_line(&src, m));
    let flavours: &[(&str, &[&str])] = &[
        ("calls_lazy", &["-O1", "-g"]),
        ("calls_now", &["-O1", "-g", "-Wl,-z,now"]),
        ("calls_noplt", &["-O1", "-g", "-fno-plt", "-Wl,-z,now"]),
        (
            "calls_ibt",
            &["-O1", "-g", "-fcf-protection", "-Wl,-z,ibt,-z,now"],
        ),
    ];
    let dir = scratch("calls");
    let mut first: Option<Vec<String>> = None;
    for (name, flags) in flavours {
        let bin = build_c(name, "calls.c", flags);
        let rec = dir.join(format!("{name}.rlt"));
        record_x(&bin, &rec, "write+strdup+strlen+puts+frob@MAIN");
        // strlen is a GNU IFUNC: its implementation is found through the program's GOT
        // once it is bound, and under lazy binding through the C library's own slot for
        // it (the one its internal calls use).
        let r = rltrace().arg("replay").arg(&rec).output().unwrap();
        assert!(r.status.success());
        let notes = String::from_utf8_lossy(&r.stderr);
        assert!(notes.is_empty(), "{name}: {notes}");
        let trace = String::from_utf8(r.stdout).unwrap();
        let seq = calls_from_fixture(
            &trace,
            &["frob", "write", "strdup", "strlen", "puts", "free"],
        );
        let mut expected: Vec<String> = Vec::new();
        for i in 0..5u64 {
            // The program's own function: its prototype comes from its DWARF
            // (`int frob(int a, int b)`).
            expected.push(format!("frob({i}, 3) = {}", i * 10 + 3));
            expected.push(r#"write(1, "x\n", 2) = 2"#.to_string());
            // strdup's own strlen is selected too, and shows inside it, as `ltrace -x`
            // shows the calls it selects wherever they are made; its caller column is
            // the program's line, the C library having no line information.
            expected.push(r#"strdup("kept on the last round" <unfinished ...>"#.to_string());
            expected.push(r#"strlen("kept on the last round") = 22"#.to_string());
            expected.push(r#"strlen("kept on the last round") = 22"#.to_string());
            if i < 4 {
                expected.push("free(PTR) = <void>".to_string());
            }
        }
        expected.push(r#"puts("done" <unfinished ...>"#.to_string());
        expected.push(r#"strlen("done") = 4"#.to_string());
        assert_eq!(seq, expected, "{name}: {trace}");
        // Each call names its caller's line.
        for (f, marker) in [("frob(", "CALLS: frob"), ("write(", "CALLS: write")] {
            let n = trace
                .lines()
                .filter(|l| l.contains(f) && l.contains(&at(marker)))
                .count();
            assert_eq!(n, 5, "{name} {f}: {trace}");
        }
        // strdup's own malloc is hidden in the trace (ltrace would not see it) but its
        // block, never freed in the last round, is a leak at the strdup line.
        assert!(!trace.contains("malloc(23"), "{trace}");
        let leaks = parse_leaks(&replay(&rec, &["--leaks"]));
        let g = leaks
            .iter()
            .find(|g| g.at == format!("calls.c:{}", marker_line(&src, "CALLS: strdup")))
            .unwrap_or_else(|| panic!("{name}: no strdup leak in {leaks:?}"));
        assert_eq!((g.blocks, g.bytes), (1, 23), "{name}");
        // frob's unused registers differ between builds; everything else is identical.
        let seq: Vec<String> = seq
            .into_iter()
            .filter(|c| !c.starts_with("frob("))
            .collect();
        match &first {
            None => first = Some(seq),
            Some(f) => assert_eq!(&seq, f, "{name} differs from the lazy-binding build"),
        }
    }
}

#[test]
fn call_sequence_matches_ltrace_where_ltrace_sees_it() {
    require_tool("ltrace");
    let bin = build_c("calls_lazy_lt", "calls.c", &["-O1", "-g"]);
    let dir = scratch("calls-ltrace");
    let out = dir.join("ltrace.txt");
    run_ok(
        "ltrace",
        &[
            "-o".as_ref(),
            out.as_os_str(),
            "-e".as_ref(),
            "write+strdup+puts".as_ref(),
            bin.as_os_str(),
        ],
    );
    // ltrace: `calls_lazy_lt->write(1, "x\n", 2)                  = 2`
    let lt: Vec<String> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let call = l.split_once("->")?.1;
            let (head, ret) = call.rsplit_once(" = ")?;
            Some(unaddress(&format!("{} = {}", head.trim_end(), ret.trim())))
        })
        .collect();
    let rec = dir.join("calls.rlt");
    record_x(&bin, &rec, "write+strdup+puts");
    let ours = calls_from_fixture(&replay_clean(&rec, &[]), &["write", "strdup", "puts"]);
    assert_eq!(ours.len(), 11);
    assert_eq!(ours, lt);
}

#[test]
fn filters_exclude_and_warn_about_rules_that_match_nothing() {
    let bin = build_c("calls_filters", "calls.c", &["-O1", "-g"]);
    let dir = scratch("calls-filters");
    let rec = dir.join("f.rlt");
    // Every str* function of libc except strdup, every function of the program except
    // main, and a rule that matches nothing.
    let o = record_x(
        &bin,
        &rec,
        "str*@libc.so*-strdup+@MAIN-main-_*+no_such_function",
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("warning: -x rule \"no_such_function\" matched no function"),
        "{err}"
    );
    let r = rltrace().arg("replay").arg(&rec).output().unwrap();
    let notes = String::from_utf8_lossy(&r.stderr);
    assert!(
        notes.contains("\"no_such_function\" matched no function"),
        "{notes}"
    );
    let trace = String::from_utf8(r.stdout).unwrap();
    let names: std::collections::BTreeSet<&str> = trace
        .lines()
        .filter_map(|l| l.split("] ").nth(1)?.split('(').next())
        .collect();
    assert!(names.contains("frob"), "{names:?}");
    assert!(!names.contains("strdup"), "{names:?}");
    assert!(!names.contains("main"), "{names:?}");
    assert!(!names.contains("write"), "{names:?}");
    assert_eq!(
        trace.lines().filter(|l| l.contains("] frob(")).count(),
        5,
        "{trace}"
    );
    // The same with regular expressions, whose `+` is not a rule separator.
    let rec = dir.join("re.rlt");
    record_x(&bin, &rec, "/^fr+ob$/@MAIN+/^(write|puts)$/@/^libc[.]so/");
    let trace = replay(&rec, &[]);
    for (f, n) in [
        ("] frob(", 5),
        ("] write(", 6),
        ("] puts(", 1),
        ("] strdup(", 0),
    ] {
        assert_eq!(
            trace.lines().filter(|l| l.contains(f)).count(),
            n,
            "{f}: {trace}"
        );
    }
    let o = rltrace()
        .args(["record", "-x", "/(/", "--", "/bin/true"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("bad regular expression /(/"));
}

#[test]
fn a_rust_server_shows_its_socket_calls_with_decoded_arguments() {
    // Selected with -x (the ptrace engine beside the agent), and in the default trace of
    // every call the program makes into libraries, by either engine.
    rust_socket_calls(
        "calls-rust",
        &["-L", "-x", "send+recv+write+accept4"],
        "agent+ptrace",
    );
    rust_socket_calls("calls-rust-default", &[], "agent");
    rust_socket_calls("calls-rust-ptrace", &["--engine", "ptrace"], "ptrace");
}

fn rust_socket_calls(name: &str, select: &[&str], engine: &str) {
    use std::io::{Read, Write};
    let dir = scratch(name);
    let rec = dir.join("server.rlt");
    let err = dir.join("stderr.txt");
    let mut child = rltrace()
        .arg("record")
        .args(select)
        .arg("-o")
        .arg(&rec)
        .arg("--")
        .arg(rust_server())
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let addr = listen_addr(child.stdout.take().unwrap());
    let first = format!("listening on {addr}\n");
    for msg in ["41", "quit"] {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        // One write: the server then reads the line in one recv.
        s.write_all(format!("{msg}\n").as_bytes()).unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
    }
    assert!(child.wait().unwrap().success());
    let stderr = std::fs::read_to_string(&err).unwrap();
    assert!(stderr.contains(&format!("engine: {engine}")), "{stderr}");
    let trace = replay_clean(&rec, &[]);
    let src = repo().join("tests/fixtures/rust-server/src/main.rs");
    let line = |m: &str| format!("main.rs:{}:", marker_line(&src, m));
    let calls: Vec<String> = trace
        .lines()
        .filter(|l| {
            ["write(", "accept4(", "recv(", "send("]
                .iter()
                .any(|f| l.contains(f))
        })
        .map(|l| {
            let (call, caller) = l.split_once("] ").unwrap().1.split_once("  ").unwrap();
            format!("{} @{}", unaddress(call), caller.split(' ').next().unwrap())
        })
        .collect();
    assert!(
        calls[0].starts_with(&format!(
            "write(1, \"{}\\n\", {}) = {}",
            first.trim_end(),
            first.len(),
            first.len()
        )),
        "{calls:?}"
    );
    let accept_at = line("for stream in listener.incoming()");
    let recv_at = line("read_line(&mut line)");
    let answer_at = line("writeln!(stream, \"{answer}\")");
    let bye_at = line("writeln!(stream, \"bye\")");
    // `call @dir/main.rs:LINE:COL` -> `call @main.rs:LINE`, the connection's fd as FD.
    let rest: Vec<String> = calls[1..]
        .iter()
        .map(|c| {
            let (call, at) = c.split_once(" @").unwrap();
            let at = at.rsplit_once(':').unwrap().0;
            let at = at.rsplit('/').next().unwrap();
            let call = if call.starts_with("accept4(") {
                call.replace(" = 4", " = FD")
            } else {
                call.replacen("(4, ", "(FD, ", 1)
            };
            format!("{call} @{at}")
        })
        .collect();
    let strip = |s: String| s.trim_end_matches(':').to_string();
    assert_eq!(
        rest,
        vec![
            format!(
                "accept4(3, PTR, PTR, 0x80000) = FD @{}",
                strip(accept_at.clone())
            ),
            format!("recv(FD, PTR, 8192, 0x0) = 3 @{}", strip(recv_at.clone())),
            format!(
                "send(FD, \"42\", 2, 0x4000) = 2 @{}",
                strip(answer_at.clone())
            ),
            format!("send(FD, \"\\n\", 1, 0x4000) = 1 @{}", strip(answer_at)),
            format!("accept4(3, PTR, PTR, 0x80000) = FD @{}", strip(accept_at)),
            format!("recv(FD, PTR, 8192, 0x0) = 5 @{}", strip(recv_at)),
            format!("send(FD, \"bye\\n\", 4, 0x4000) = 4 @{}", strip(bye_at)),
        ],
        "{trace}"
    );
}

#[test]
fn call_durations_timestamps_and_the_summary_table() {
    let bin = build_c("calls_times", "calls.c", &["-O1", "-g"]);
    let dir = scratch("calls-times");
    let rec = dir.join("t.rlt");
    record_x(&bin, &rec, "write+strdup+puts+usleep+frob@MAIN");
    // -T: the usleep(20000) call took at least 20 ms (the stub's time stamp counter,
    // converted to recording time), and every returning call shows a duration.
    let trace = replay_clean(&rec, &["-T"]);
    let secs = |l: &str| -> f64 {
        let d = l.rsplit_once(" <").unwrap().1.split_once('>').unwrap().0;
        d.parse().unwrap()
    };
    let sleep = trace.lines().find(|l| l.contains("usleep(20000)")).unwrap();
    assert!(sleep.contains("usleep(20000) = 0 <"), "{sleep}");
    assert!((0.020..1.0).contains(&secs(sleep)), "{sleep}");
    for l in trace
        .lines()
        .filter(|l| l.contains(") = ") && !l.contains("<void>"))
    {
        assert!(secs(l) < 1.0, "{l}");
    }
    // -ttt: seconds since the epoch, non-decreasing; -r: the gap before the first line
    // after usleep is at least its 20 ms.
    let t3 = replay_clean(&rec, &["-ttt"]);
    let stamps: Vec<f64> = t3
        .lines()
        .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    assert!(stamps.windows(2).all(|w| w[0] <= w[1]), "{t3}");
    assert!(stamps[0] > 1.7e9, "{t3}");
    let rel = replay_clean(&rec, &["-r"]);
    let after = rel
        .lines()
        .skip_while(|l| !l.contains("usleep("))
        .nth(1)
        .unwrap();
    let gap: f64 = after.split_whitespace().next().unwrap().parse().unwrap();
    assert!(gap >= 0.020, "{rel}");
    // -c: exact calls per function.
    let table = replay_clean(&rec, &["-c"]);
    let calls = |f: &str| -> u64 {
        table
            .lines()
            .find(|l| l.split_whitespace().last() == Some(f))
            .unwrap_or_else(|| panic!("no {f} row: {table}"))
            .split_whitespace()
            .nth(3)
            .unwrap()
            .parse()
            .unwrap()
    };
    // write: five from the loop and stdio's flush of "done" at exit.
    assert_eq!(
        [
            calls("frob"),
            calls("write"),
            calls("strdup"),
            calls("free"),
            calls("usleep"),
            calls("puts")
        ],
        [5, 6, 5, 4, 1, 1],
        "{table}"
    );
    let top = table.lines().nth(2).unwrap();
    assert!(top.ends_with(" usleep"), "the sleep dominates: {table}");
}

#[test]
fn x_at_lib_traces_a_library_loaded_later_and_replay_options_i_n_o() {
    let (main, lib) = dl_c();
    let dir = scratch("calls-l");
    let rec = dir.join("l.rlt");
    // Every function of a library, from every caller, one loaded with dlopen included
    // (ltrace's -l would show nothing: the program calls it through a pointer).
    let o = rltrace()
        .args(["record", "-x", "@libleaky.so", "-o"])
        .arg(&rec)
        .arg("--")
        .arg(main)
        .arg(lib)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The library's one function, called once from main, with its four mallocs inside
    // (shown with --all, indented one level by -n 2, return addresses with -i).
    let call_line = marker_line(&repo().join("tests/fixtures/c/dl_main.c"), "CALL: lib");
    let trace = replay(&rec, &["--all", "-n", "2", "-i"]);
    let lib_calls: Vec<&str> = trace
        .lines()
        .filter(|l| l.contains("leak_in_lib("))
        .collect();
    assert_eq!(lib_calls.len(), 1, "{trace}");
    assert!(
        lib_calls[0].contains("] [dl_main+0x")
            && lib_calls[0].contains(&format!("dl_main.c:{call_line}:")),
        "{trace}"
    );
    let inner: Vec<&str> = trace
        .lines()
        .filter(|l| l.contains("malloc(56)") && l.contains("leaky.c:"))
        .collect();
    assert_eq!(inner.len(), 4, "{trace}");
    assert!(
        inner.iter().all(|l| l.contains("]   [libleaky.so+0x")),
        "{trace}"
    );
    // -o writes exactly what standard output gets.
    let file = dir.join("trace.txt");
    let r = rltrace()
        .args(["replay", "--all", "-n", "2", "-i", "-o"])
        .arg(&file)
        .arg(&rec)
        .output()
        .unwrap();
    assert!(r.status.success() && r.stdout.is_empty());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), trace);
}

#[test]
fn ifuncs_only_the_programs_plt_leads_to_are_traced_there_and_said_so() {
    let dir = scratch("calls-ifuncs");
    let src = repo().join("tests/fixtures/c/ifuncs.c");
    for (name, flags, lazy) in [
        ("ifuncs_lazy", &["-O1", "-g", "-Wl,-z,lazy"][..], true),
        ("ifuncs_now", &["-O1", "-g", "-Wl,-z,now"][..], false),
    ] {
        let bin = build_c(name, "ifuncs.c", flags);
        let rec = dir.join(format!("{name}.rlt"));
        record_x(&bin, &rec, "strstr+gettimeofday");
        let r = rltrace().arg("replay").arg(&rec).output().unwrap();
        assert!(r.status.success());
        let trace = String::from_utf8_lossy(&r.stdout);
        let notes = String::from_utf8_lossy(&r.stderr);
        for (f, marker) in [
            ("strstr(", "IFUNCS: strstr"),
            ("gettimeofday(", "IFUNCS: gettimeofday"),
        ] {
            let at = format!("ifuncs.c:{}:", marker_line(&src, marker));
            assert_eq!(
                trace
                    .lines()
                    .filter(|l| l.contains(&format!("] {f}")) && l.contains(&at))
                    .count(),
                1,
                "{name}: {trace}"
            );
        }
        // Lazily bound, strstr is hooked at the program's PLT entry, which the recording
        // says; bound, at its implementation. (gettimeofday's implementation is the
        // vDSO's, outside the C library: the PLT entry either way.)
        let partial = |f: &str| {
            notes
                .lines()
                .filter(|l| l.contains(&format!("{f} in ")))
                .filter(|l| l.contains("only the program's own calls are traced"))
                .count()
        };
        assert_eq!(partial("strstr"), usize::from(lazy), "{name}: {notes}");
        assert_eq!(partial("gettimeofday"), 1, "{name}: {notes}");
    }
}

/// `function -> (calls, errors)` from a `-c` table (rltrace's or strace's: the same
/// columns, errors blank when none).
fn summary_rows(table: &str) -> std::collections::BTreeMap<String, (u64, u64)> {
    table
        .lines()
        .skip(2)
        .take_while(|l| !l.starts_with("---"))
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let name = w.last()?.to_string();
            let calls = w.get(3)?.parse().ok()?;
            let errors = match w.len() {
                6 => w[4].parse().ok()?,
                _ => 0,
            };
            Some((name, (calls, errors)))
        })
        .collect()
}

#[test]
fn c_counts_the_calls_that_failed_by_their_return_values() {
    let bin = build_c("fails", "fails.c", &["-O1", "-g"]);
    let dir = scratch("calls-fails");
    let expected = [
        ("close", (2, 1)),
        ("fopen", (1, 1)),
        ("malloc", (1, 1)),
        ("open", (4, 3)),
        // -1 is an ordinary value of strtol's.
        ("strtol", (1, 0)),
    ];
    for engine in ["agent", "ptrace"] {
        let rec = dir.join(format!("{engine}.rlt"));
        record_opts(&["--engine", engine], &rec, &bin);
        let table = replay_clean(&rec, &["-c"]);
        let rows = summary_rows(&table);
        let got: Vec<(&str, (u64, u64))> = expected.iter().map(|(f, _)| (*f, rows[*f])).collect();
        assert_eq!(got, expected, "{engine}: {table}");
        assert!(
            table.lines().last().unwrap().contains(" 6 total"),
            "{table}"
        );
    }
    // System calls (-S): errors are -errno returns, counted as strace counts them.
    require_tool("strace");
    let rec = dir.join("syscalls.rlt");
    record_opts(&["-S"], &rec, &bin);
    let ours = summary_rows(&replay_clean(&rec, &["-c"]));
    let st = std::process::Command::new("strace")
        .arg("-c")
        .arg("-o")
        .arg(dir.join("strace.txt"))
        .arg(&bin)
        .output()
        .unwrap();
    assert!(st.status.success());
    let theirs = summary_rows(&std::fs::read_to_string(dir.join("strace.txt")).unwrap());
    let mut compared = 0;
    for (call, counts) in &theirs {
        // execve: strace sees it before the program exists (rltrace's starts at its stop).
        if call == "execve" {
            continue;
        }
        assert_eq!(
            ours.get(&format!("SYS_{call}")),
            Some(counts),
            "{call}: {ours:?}"
        );
        compared += counts.1;
    }
    // openat x4, close, mmap x2 (the huge malloc), access (ld.so.preload).
    assert!(compared >= 5, "{theirs:?}");
}
