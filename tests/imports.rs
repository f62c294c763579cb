//! The default recording: every call the main executable makes into a shared library,
//! found through its imports, as ltrace shows them, on binaries ltrace cannot see; under
//! the agent (GOT slots redirected) and under ptrace (defining functions' entries, or PLT
//! entries while the loader has not bound them) alike.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// `name(args) = ret` of each traced call, from a replay line (`[pid tid] call  where`).
fn call_of(line: &str) -> Option<String> {
    let body = line.split_once("] ")?.1;
    if body.starts_with("+++") {
        return None;
    }
    Some(unaddress(body.split("  ").next()?))
}

/// What ltrace prints for `bin` with `args`, as `name(args) = ret` with addresses hidden.
/// `_setjmp` is left out: rltrace does not trace it (it returns twice, so no trampoline
/// may stand between it and its caller).
fn ltrace_calls(bin: &Path, args: &[&str], out: &Path) -> Vec<String> {
    ltrace_run(bin, args, &[], out)
}

/// Like [`ltrace_calls`], with arguments for the program.
fn ltrace_run(bin: &Path, args: &[&str], prog: &[&str], out: &Path) -> Vec<String> {
    let lt = std::process::Command::new("ltrace")
        .args(args)
        .arg("-o")
        .arg(out)
        .arg(bin)
        .args(prog)
        .output()
        .unwrap();
    assert!(lt.status.success(), "{lt:?}");
    std::fs::read_to_string(out)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("+++") && !l.contains("_setjmp"))
        .map(|l| {
            // `imp->write(1, ...)` when ltrace names the caller module (with -e).
            let l = l.split_once("->").map_or(l, |(_, c)| c);
            match l.rsplit_once(" = ") {
                Some((call, ret)) => unaddress(&format!("{} = {}", call.trim_end(), ret.trim())),
                None => unaddress(l.trim_end()), // `<unfinished ...>`
            }
        })
        .collect()
}

fn build(name: &str, flags: &[&str]) -> PathBuf {
    let mut all = vec!["-O1", "-g"];
    all.extend_from_slice(flags);
    build_c(name, "imports.c", &all)
}

/// Runs `rltrace record OPTS -o REC -- BIN ARGS`, which must succeed.
fn record_opts(opts: &[&str], rec: &Path, bin: &Path, args: &[&str]) -> std::process::Output {
    let o = rltrace()
        .arg("record")
        .args(opts)
        .arg("-o")
        .arg(rec)
        .arg("--")
        .arg(bin)
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o
}

/// Records with the default options, which must choose the agent; returns stderr.
fn record_default(bin: &Path, rec: &Path, args: &[&str]) -> String {
    let o = record_opts(&[], rec, bin, args);
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(stderr.contains("engine: agent"), "{stderr}");
    stderr
}

/// Records with `--engine ENGINE`; returns stderr.
fn record_engine(engine: &str, bin: &Path, rec: &Path, args: &[&str]) -> String {
    let o = record_opts(&["--engine", engine], rec, bin, args);
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(stderr.contains(&format!("engine: {engine}")), "{stderr}");
    stderr
}

/// The names of the traced calls, in order.
fn traced_names(rec: &Path) -> Vec<String> {
    traced_calls(rec, &[])
        .iter()
        .map(|c| c.split('(').next().unwrap_or_default().to_string())
        .collect()
}

fn traced_calls(rec: &Path, args: &[&str]) -> Vec<String> {
    replay_clean(rec, args)
        .lines()
        .filter_map(call_of)
        .collect()
}

#[test]
fn default_trace_equals_ltraces_on_a_lazily_bound_binary() {
    require_tool("ltrace");
    let bin = build("imports_lazy_lt", &["-Wl,-z,lazy"]);
    let dir = scratch("imports-ltrace");
    let ltrace = ltrace_calls(&bin, &[], &dir.join("ltrace.txt"));
    let rec = dir.join("i.rlt");
    record_default(&bin, &rec, &[]);
    let ours = traced_calls(&rec, &[]);
    assert_eq!(ours, ltrace);
    // The ptrace engine hooks the PLT entries of the slots the loader has not bound yet.
    record_engine("ptrace", &bin, &rec, &[]);
    assert_eq!(traced_calls(&rec, &[]), ltrace, "ptrace engine");
    // The calls are those of the fixture's marked lines, so the comparison is not empty.
    assert_eq!(ours.len(), 12, "{ours:#?}");
    assert_eq!(ours[0], "strdup(\"imported\") = PTR");
    assert!(ours.contains(&"write(1, \"wrote\\n\", 6) = 6".to_string()));
    // printf's variadic arguments, as its format says.
    assert!(
        ours.contains(
            &"printf(\"%s: %zu, %c, %#lx\\n\", \"imported\", 8, 'k', 0xbeef) = 23".to_string()
        ),
        "{ours:#?}"
    );
}

#[test]
fn the_trace_is_the_same_whatever_the_binding_plt_and_engine() {
    let dir = scratch("imports-binding");
    let mut traces = Vec::new();
    for ((name, flags), engine) in [
        ("imports_lazy", &["-Wl,-z,lazy"][..]),
        ("imports_now", &["-Wl,-z,now"][..]),
        ("imports_noplt", &["-fno-plt"][..]),
        ("imports_ibt", &["-fcf-protection", "-Wl,-z,ibt,-z,now"][..]),
        ("imports_nopie", &["-no-pie"][..]),
    ]
    .into_iter()
    .flat_map(|b| [(b, "agent"), (b, "ptrace")])
    {
        let bin = build(name, flags);
        let rec = dir.join(format!("{name}-{engine}.rlt"));
        record_engine(engine, &bin, &rec, &["escape"]);
        let name = format!("{name} ({engine})");
        let src = repo().join("tests/fixtures/c/imports.c");
        let line = format!("imports.c:{}", marker_line(&src, "IMPORTS: strlen"));
        let trace = replay_clean(&rec, &[]);
        assert!(
            trace
                .lines()
                .any(|l| l.contains("strlen(\"imported\") = 8") && l.contains(&line)),
            "{name}: the IFUNC strlen by name, at its line:\n{trace}"
        );
        // A non-PIE program's heap and code have short addresses.
        let calls: Vec<String> = traced_calls(&rec, &[])
            .iter()
            .map(|c| unaddress_from(c, 5))
            .collect();
        traces.push((name, calls));
    }
    assert_eq!(traces.len(), 10);
    assert_eq!(traces[0].1.len(), 15, "{:#?}", traces[0].1);
    for (name, t) in &traces[1..] {
        assert_eq!(t, &traces[0].1, "{name} against {}", traces[0].0);
    }
}

#[test]
fn a_call_left_by_longjmp_is_recorded_as_never_returning() {
    let bin = build("imports_lj", &[]);
    let rec = scratch("imports-longjmp").join("i.rlt");
    record_default(&bin, &rec, &["escape"]);
    let calls = traced_calls(&rec, &[]);
    let n = calls.len();
    assert!(n >= 4, "{calls:#?}");
    // The callback's longjmp is the program's call, made inside lfind: lfind's line is
    // split around it, and neither returns.
    assert_eq!(
        calls[n - 4..],
        [
            "lfind(PTR, PTR, PTR, 4, PTR <unfinished ...>",
            "longjmp(PTR, 1 <no return ...>",
            "<... lfind resumed> ) = <no return ...>",
            // The program goes on at the outer level: the abandoned call does not
            // swallow it.
            "puts(\"after\") = 6",
        ],
        "{calls:#?}"
    );
    let trace = replay_clean(&rec, &[]);
    let src = repo().join("tests/fixtures/c/imports.c");
    assert!(
        trace.lines().any(|l| l.contains("longjmp(")
            && l.contains(&format!(
                "imports.c:{}:",
                marker_line(&src, "longjmp(escape")
            ))
            && l.ends_with(" cmp_and_escape")),
        "{trace}"
    );
}

#[test]
fn x_selected_allocators_show_wherever_called_whatever_e_says_as_ltrace_shows_them() {
    require_tool("ltrace");
    let bin = build("imports_lazy_xm", &["-Wl,-z,lazy"]);
    let dir = scratch("imports-x-malloc");
    let opts = ["-x", "malloc", "-e", "strdup"];
    // ltrace names the callee's library for -x calls (`malloc@libc.so.6(9)`).
    let ltrace: Vec<String> = ltrace_run(&bin, &opts, &[], &dir.join("ltrace.txt"))
        .iter()
        .map(|c| c.replacen("@libc.so.6(", "(", 1))
        .collect();
    // strdup's own malloc inside it, then the program's two (puts's buffer is inside no
    // traced call: -e did not select puts).
    assert_eq!(
        ltrace,
        [
            "strdup(\"imported\" <unfinished ...>",
            "malloc(9) = PTR",
            "<... strdup resumed> ) = PTR",
            "malloc(64) = PTR",
            "malloc(4096) = PTR",
        ]
    );
    for engine in ["agent", "ptrace"] {
        let rec = dir.join(format!("{engine}.rlt"));
        let mut all = vec!["--engine", engine];
        all.extend_from_slice(&opts);
        record_opts(&all, &rec, &bin, &[]);
        assert_eq!(traced_calls(&rec, &[]), ltrace, "{engine}");
    }
}

#[test]
fn a_callbacks_calls_nest_inside_the_library_call_as_ltrace_shows_them() {
    require_tool("ltrace");
    let src = repo().join("tests/fixtures/c/callback.c");
    let dir = scratch("imports-callback");
    let lazy = build_c("callback_lazy", "callback.c", &["-O1", "-g", "-Wl,-z,lazy"]);
    let ltrace = ltrace_calls(&lazy, &[], &dir.join("ltrace.txt"));
    assert_eq!(
        ltrace,
        [
            "qsort(PTR, 3, 8, PTR <unfinished ...>",
            "strcmp(\"fig\", \"apple\") = 5",
            "strcmp(\"pear\", \"apple\") = 15",
            "strcmp(\"pear\", \"fig\") = 10",
            "<... qsort resumed> ) = <void>",
            "puts(\"apple\") = 6",
            // The agent records free(NULL) too, as the ptrace engine sees it.
            "free(0) = <void>",
        ]
    );
    let now = build_c("callback_now", "callback.c", &["-O1", "-g", "-Wl,-z,now"]);
    let line = format!("callback.c:{}:", marker_line(&src, "CALLBACK: strcmp"));
    for (bin, engine) in [
        (&lazy, "agent"),
        (&lazy, "ptrace"),
        (&now, "agent"),
        (&now, "ptrace"),
    ] {
        let rec = dir.join(format!("{engine}.rlt"));
        record_engine(engine, bin, &rec, &[]);
        // The ptrace engine awaits the return of a void function too, so that the
        // comparator's calls nest under qsort as under the agent.
        assert_eq!(
            traced_calls(&rec, &[]),
            ltrace,
            "{engine} {}",
            bin.display()
        );
        let trace = replay_clean(&rec, &[]);
        let at_line = trace
            .lines()
            .filter(|l| l.contains("] strcmp(") && l.contains(&line) && l.ends_with(" by_name"))
            .count();
        assert_eq!(at_line, 3, "{engine}: {trace}");
    }
}

#[test]
fn imports_bound_to_one_function_keep_their_names_under_either_engine() {
    // memcpy and memmove lead to one implementation: the ptrace engine has one breakpoint
    // for both and names each call by its call site (`call` to the PLT entry, or through
    // the GOT slot with -fno-plt); the agent redirects each slot on its own.
    require_tool("ltrace");
    let src = repo().join("tests/fixtures/c/aliases.c");
    let dir = scratch("imports-aliases");
    let expected = [
        "memcpy(PTR, \"abcd\", 4) = PTR",
        "memmove(PTR, \"abcd\", 4) = PTR",
        "memcpy(PTR, \"aa\", 2) = PTR",
        "printf(\"%s %s\\n\", \"aabcdfgh\", \"abcdaa\") = 16",
    ];
    let lazy = build_c("aliases_lazy", "aliases.c", &["-O1", "-g", "-Wl,-z,lazy"]);
    assert_eq!(ltrace_calls(&lazy, &[], &dir.join("ltrace.txt")), expected);
    let flavours: [(&str, &[&str]); 4] = [
        ("aliases_lazy", &["-Wl,-z,lazy"]),
        ("aliases_now", &["-Wl,-z,now"]),
        ("aliases_noplt", &["-fno-plt", "-Wl,-z,now"]),
        ("aliases_ibt", &["-fcf-protection", "-Wl,-z,ibt,-z,now"]),
    ];
    for (name, flags) in flavours {
        let mut all = vec!["-O1", "-g"];
        all.extend_from_slice(flags);
        let bin = build_c(name, "aliases.c", &all);
        for engine in ["agent", "ptrace"] {
            let rec = dir.join(format!("{name}-{engine}.rlt"));
            record_engine(engine, &bin, &rec, &[]);
            assert_eq!(traced_calls(&rec, &[]), expected, "{name} {engine}");
            let trace = replay_clean(&rec, &[]);
            let line = format!("aliases.c:{}:", marker_line(&src, "ALIASES: memmove"));
            assert!(
                trace
                    .lines()
                    .any(|l| l.contains("] memmove(") && l.contains(&line)),
                "{name} {engine}: {trace}"
            );
        }
    }
}

#[test]
fn l_shows_only_the_programs_calls_into_the_library_as_ltrace_l() {
    // ltrace's -l: "display only calls to functions implemented by libraries that match";
    // the library is the one the loader binds each import to, found by its exports.
    require_tool("ltrace");
    let dir = scratch("imports-l");
    let lib_dir = dir.join("lib");
    std::fs::create_dir_all(&lib_dir).unwrap();
    let lib = build_c(
        "libgreet_l.so",
        "greet.c",
        &["-O1", "-g", "-shared", "-fPIC"],
    );
    let at = lib_dir.join("libgreet_l.so");
    std::fs::copy(&lib, &at).unwrap();
    let rpath = format!("-Wl,-rpath,{}", lib_dir.display());
    let flags = [
        "-O1",
        "-g",
        "-Wl,--no-as-needed",
        at.to_str().unwrap(),
        &rpath,
    ];
    let mut lazy = flags.to_vec();
    lazy.push("-Wl,-z,lazy");
    let bin = build_c("callee_l", "callee.c", &lazy);
    // ltrace shows the library's functions the program calls and nothing else (no
    // printf, no prototypes: only names compared).
    let names = |calls: &[String]| -> Vec<String> {
        calls
            .iter()
            .map(|c| c.split('(').next().unwrap_or("").to_string())
            .collect()
    };
    let ltrace = names(&ltrace_run(
        &bin,
        &["-l", "libgreet*"],
        &[],
        &dir.join("lt.txt"),
    ));
    assert!(
        !ltrace.is_empty()
            && ltrace
                .iter()
                .all(|n| ["greet", "scale", "twice", "mix"].contains(&n.as_str())),
        "{ltrace:?}"
    );
    let mut now = flags.to_vec();
    now.push("-Wl,-z,now");
    let bin_now = build_c("callee_l_now", "callee.c", &now);
    for (b, engine) in [
        (&bin, "agent"),
        (&bin, "ptrace"),
        (&bin_now, "agent"),
        (&bin_now, "ptrace"),
    ] {
        let rec = dir.join(format!("{engine}.rlt"));
        record_opts(&["--engine", engine, "-l", "libgreet*"], &rec, b, &[]);
        // All four, with their DWARF prototypes (ltrace misses `twice`, whose PLT slot the
        // loader binds first under lazy binding).
        assert_eq!(
            traced_calls(&rec, &[]),
            [
                "greet(\"world\", 3) = 15",
                "scale(4, 'k') = 4096",
                "twice(21) = 42",
                "mix(3, 0.5, 2.25) = 3.75",
            ],
            "{engine} {}",
            b.display()
        );
    }
    // With -e, -l adds to it; a pattern matching no library the program calls into is a
    // warning.
    let rec = dir.join("e.rlt");
    let o = record_opts(
        &["-l", "libgreet*", "-l", "libnothing*", "-e", "printf"],
        &rec,
        &bin,
        &[],
    );
    assert_eq!(
        names(&traced_calls(&rec, &[])),
        ["greet", "scale", "twice", "mix", "printf"]
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("warning: -l \"libnothing*\" matched no library the program calls into"),
        "{err}"
    );
}

/// A call's name and how it ended as `ltrace` prints it: its value, or `unfinished`
/// (ltrace never closes a call left by longjmp; rltrace says `<no return ...>`).
fn name_and_end(call: &str) -> (String, String) {
    let name = call.split('(').next().unwrap_or("").to_string();
    let end = match call.rsplit_once(") = ") {
        Some((_, r)) if r != "<no return ...>" => r.to_string(),
        _ => "unfinished".to_string(),
    };
    (name, end)
}

#[test]
fn calls_left_by_longjmp_end_as_ltrace_shows_them_under_either_engine() {
    require_tool("ltrace");
    let bin = build("imports_lazy_lj", &["-Wl,-z,lazy"]);
    let dir = scratch("imports-longjmp-ltrace");
    let ltrace: Vec<_> = ltrace_run(&bin, &[], &["escape"], &dir.join("ltrace.txt"))
        .iter()
        .map(|c| name_and_end(c))
        .collect();
    assert_eq!(
        ltrace[ltrace.len() - 3..],
        [
            ("lfind".into(), "unfinished".into()),
            ("longjmp".into(), "unfinished".into()),
            ("puts".into(), "6".into())
        ]
    );
    for engine in ["agent", "ptrace"] {
        let rec = dir.join(format!("{engine}.rlt"));
        record_engine(engine, &bin, &rec, &["escape"]);
        // Beyond ltrace, rltrace closes the call the longjmp left.
        let ours: Vec<_> = traced_calls(&rec, &[])
            .iter()
            .filter(|c| !c.starts_with("<... lfind resumed> ) = <no return ...>"))
            .map(|c| name_and_end(c))
            .collect();
        assert_eq!(ours, ltrace, "{engine}");
    }
}

#[test]
fn calls_inside_library_calls_feed_the_leak_report_and_show_with_all() {
    let bin = build("imports_all", &[]);
    let rec = scratch("imports-all").join("i.rlt");
    record_default(&bin, &rec, &[]);
    // strdup's own malloc is inside strdup: hidden by default, shown with --all.
    let calls = traced_calls(&rec, &[]);
    assert!(
        !calls.iter().any(|c| c.starts_with("malloc(9)")),
        "{calls:#?}"
    );
    let all = traced_calls(&rec, &["--all"]);
    let i = all.iter().position(|c| c.starts_with("malloc(9)")).unwrap();
    assert!(all[i - 1].starts_with("strdup(\"imported\""), "{all:#?}");
    // The fixture frees what it allocates; what remains is stdout's buffer, which puts
    // allocated inside the C library (valgrind's "still reachable").
    let report = replay_clean(&rec, &["--leaks"]);
    let src = repo().join("tests/fixtures/c/imports.c");
    let groups: Vec<(u64, String)> = parse_leaks(&report)
        .into_iter()
        .filter(|g| g.at.starts_with("imports.c:"))
        .map(|g| (g.blocks, g.at))
        .collect();
    assert_eq!(
        groups,
        [(
            1,
            format!("imports.c:{}", marker_line(&src, "IMPORTS: puts"))
        )],
        "{report}"
    );
}

#[test]
fn no_imports_records_the_allocator_family_alone() {
    let bin = build("imports_noimp", &[]);
    let rec = scratch("imports-none").join("i.rlt");
    record_opts(&["-L"], &rec, &bin, &[]);
    let names = traced_names(&rec);
    // strdup's malloc, the program's own, and puts's (stdout's buffer): none is inside
    // a traced call now.
    assert_eq!(
        names,
        ["malloc", "malloc", "realloc", "free", "malloc", "free"]
    );
}

#[test]
fn e_selects_calls_as_ltrace_does_and_warns_about_rules_that_match_nothing() {
    require_tool("ltrace");
    let bin = build("imports_e", &["-Wl,-z,lazy"]);
    let dir = scratch("imports-e");
    for chain in ["write+str*", "@MAIN-puts-printf-malloc-free-realloc-fflush"] {
        let ltrace = ltrace_calls(&bin, &["-e", chain], &dir.join("ltrace.txt"));
        let rec = dir.join("e.rlt");
        record_opts(&["-e", chain], &rec, &bin, &[]);
        let ours = traced_calls(&rec, &[]);
        assert!(!ours.is_empty(), "{chain}");
        assert_eq!(ours, ltrace, "-e {chain}");
    }
    // A chain that starts with an exclusion selects everything else (ltrace's implicit
    // `@` rule; the agent traces the executable's calls only), and a `+` inside a
    // /regex/ belongs to it (ltrace's own parser splits it there).
    for (chain, want) in [
        (
            "-puts-printf-malloc-free-realloc-fflush",
            &["strdup", "strlen", "strcmp", "write"][..],
        ),
        ("/^str[a-z]+$/", &["strdup", "strlen", "strcmp"][..]),
    ] {
        let rec = dir.join("c.rlt");
        record_opts(&["-e", chain], &rec, &bin, &[]);
        assert_eq!(traced_names(&rec), want, "-e {chain}");
    }
    // The allocator family is recorded whatever -e says: the leak report still finds the
    // buffer puts allocated, though neither puts nor malloc is in the trace.
    let rec = dir.join("w.rlt");
    let o = record_opts(&["-e", "write", "-e", "nosuch"], &rec, &bin, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("warning: -e rule \"nosuch\" matched no call"),
        "{err}"
    );
    assert!(!err.contains("\"write\""), "{err}");
    assert_eq!(traced_names(&rec), ["write"]);
    let info = rltrace().arg("info").arg(&rec).output().unwrap();
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains("filter:    -e write -e nosuch"), "{info}");
    let report = replay_clean(&rec, &["--leaks"]);
    let src = repo().join("tests/fixtures/c/imports.c");
    let at = format!("imports.c:{}", marker_line(&src, "IMPORTS: puts"));
    assert!(parse_leaks(&report).iter().any(|g| g.at == at), "{report}");
    // The ptrace engine hooks only the imports the chains select, and warns alike.
    let o = record_opts(
        &["--engine", "ptrace", "-e", "write+str*", "-e", "nosuch"],
        &rec,
        &bin,
        &[],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("warning: -e rule \"nosuch\" matched no call"),
        "{err}"
    );
    // The recording says so too, and replay passes it on.
    let r = rltrace().arg("replay").arg(&rec).output().unwrap();
    let notes = String::from_utf8_lossy(&r.stderr);
    assert!(
        notes.contains("-e rule \"nosuch\" matched no call the program makes"),
        "{notes}"
    );
    let names = |args: &[&str]| -> Vec<String> {
        replay(&rec, args)
            .lines()
            .filter_map(call_of)
            .map(|c| c.split('(').next().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(names(&[]), ["strdup", "strlen", "strcmp", "write"]);
    // Only the selected imports were hooked: no puts even among the library's calls.
    let all = names(&["--all"]);
    assert!(all.iter().any(|n| n == "malloc"), "{all:#?}");
    assert!(!all.iter().any(|n| n == "puts"), "{all:#?}");
}

#[test]
fn ltrace_conf_prototypes_are_loaded_stored_and_used_by_both_engines() {
    let bin = build("imports_conf", &[]);
    let dir = scratch("imports-conf");
    let conf = dir.join("my.conf");
    std::fs::write(
        &conf,
        "; prototypes in ltrace.conf(5) syntax\n\
         addr lfind(addr, addr, +ulong*, ulong, addr);\n\
         void puts(string);    ; as ltrace's own file has it\n\
         int seven(int, int, int, int, int, int, int);\n\
         double sqrt(double);\n",
    )
    .unwrap();
    for (engine, extra) in [
        ("agent", &[][..]),
        ("ptrace", &["--engine", "ptrace", "-x", "lfind+puts"][..]),
        // The selected functions by ptrace, beside the agent.
        ("agent+ptrace", &["-x", "lfind+puts"][..]),
    ] {
        let rec = dir.join(format!("{engine}.rlt"));
        let mut opts = vec!["-F", conf.to_str().unwrap()];
        opts.extend_from_slice(extra);
        let o = record_opts(&opts, &rec, &bin, &["escape"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("1 declarations skipped (first at line 4: more than six integer"),
            "{err}"
        );
        assert!(err.contains(&format!("engine: {engine} (")), "{err}");
        // Replay runs without -F: the prototypes travel in the recording. Five typed
        // arguments instead of six registers in hex; puts returns nothing.
        let calls = traced_calls(&rec, &[]);
        assert!(
            calls.contains(&"lfind(PTR, PTR, PTR, 4, PTR <unfinished ...>".to_string())
                && calls.contains(&"<... lfind resumed> ) = <no return ...>".to_string()),
            "{engine}: {calls:#?}"
        );
        assert!(
            calls.contains(&"puts(\"after\") = <void>".to_string()),
            "{engine}: {calls:#?}"
        );
        let info = rltrace().arg("info").arg(&rec).output().unwrap();
        let info = String::from_utf8_lossy(&info.stdout);
        assert!(info.contains("prototypes: 3 loaded"), "{info}");
    }
}

#[test]
fn functions_called_through_the_programs_own_pointers_are_traced_once() {
    let dir = scratch("imports-fnptr");
    for (name, flags) in [
        ("fnptr_pie", &["-Wl,-z,lazy"][..]),
        (
            "fnptr_nopie_lazy",
            &["-fno-pic", "-no-pie", "-Wl,-z,lazy"][..],
        ),
        (
            "fnptr_nopie_now",
            &["-fno-pic", "-no-pie", "-Wl,-z,now"][..],
        ),
    ] {
        let mut all = vec!["-O1", "-g"];
        all.extend_from_slice(flags);
        let bin = build_c(name, "fnptr.c", &all);
        let rec = dir.join(format!("{name}.rlt"));
        // A slot resolved to the program's own PLT entry would make the call loop.
        record_default(&bin, &rec, &[]);
        let calls = traced_calls(&rec, &[]);
        assert_eq!(
            calls,
            ["puts(\"via pointer\") = 12", "strlen(\"four\") = 4"],
            "{name}"
        );
    }
}

#[test]
fn a_coroutine_on_a_small_stack_next_to_an_unmapped_page_runs_correctly() {
    let bin = build_c("coroutine", "coroutine.c", &["-O1", "-g"]);
    let rec = scratch("imports-coroutine").join("c.rlt");
    // Neither the trampoline's copy of stack arguments nor the unwinder may read past the
    // coroutine's stack, nor may the unwinder overflow it (the run succeeds); printf's
    // stack arguments reach printf intact.
    let o = record_opts(&[], &rec, &bin, &[]);
    // (printf is buffered into a pipe until the fflush; write is not.)
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "co\n1 2 3 4 5 6 7 eight\n"
    );
    let calls = traced_calls(&rec, &[]);
    assert!(
        calls.contains(
            // The last three from the stack, the string one read where it points.
            &"printf(\"%d %d %d %d %d %d %d %s\\n\", 1, 2, 3, 4, 5, 6, 7, \"eight\") = 20"
                .to_string()
        ),
        "{calls:#?}"
    );
    assert!(
        calls.contains(&"write(1, \"co\\n\", 3) = 3".to_string()),
        "{calls:#?}"
    );
}

#[test]
fn ptrace_engine_tells_the_programs_calls_from_the_libraries_by_return_address() {
    // Bound at startup: the ptrace engine hooks the defining functions' entries, which
    // every caller reaches, and the return address tells whose call it is.
    let bin = build("imports_callers", &["-Wl,-z,now"]);
    let rec = scratch("imports-callers").join("i.rlt");
    record_engine("ptrace", &bin, &rec, &[]);
    let shown = traced_calls(&rec, &[]);
    assert_eq!(shown.len(), 12, "{shown:#?}");
    assert_eq!(shown[11], "puts(\"after\") = 6");
    // stdout is a pipe here, so the C library writes "after" out at exit, from its own
    // code and inside no traced call: a call made inside a library, shown with --all.
    let all = traced_calls(&rec, &["--all"]);
    assert_eq!(
        all.last().map(String::as_str),
        Some("write(1, \"after\\n\", 6) = 6"),
        "{all:#?}"
    );
    assert!(!shown.iter().any(|c| c.starts_with("write(1, \"after")));
    // strlen, called by the program and by strdup, puts and printf inside the library:
    // the first only in the default view.
    let strlens = |v: &[String]| v.iter().filter(|c| c.starts_with("strlen(")).count();
    assert_eq!(strlens(&shown), 1, "{shown:#?}");
    assert!(strlens(&all) >= 4, "{all:#?}");
}

#[test]
fn s_records_system_calls_as_strace_sees_them_inside_the_calls_that_make_them() {
    require_tool("strace");
    let bin = build("imports_sys", &["-Wl,-z,now"]);
    let dir = scratch("imports-syscalls");
    let rec = dir.join("s.rlt");
    let o = record_opts(&["-S"], &rec, &bin, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("engine: ptrace (-S records system calls"),
        "{err}"
    );
    let trace = replay_clean(&rec, &[]);
    let ours: Vec<&str> = trace
        .lines()
        .filter_map(|l| l.split_once("] SYS_")?.1.split('(').next())
        .collect();
    // strace on the same program: the same system calls in the same order, but for the
    // execve strace sees before the program exists (rltrace takes it at its exec stop).
    let out = dir.join("strace.txt");
    run_ok("strace", &["-o".as_ref(), out.as_os_str(), bin.as_os_str()]);
    let theirs: Vec<String> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("+++"))
        .filter_map(|l| Some(l.split_once('(')?.0.to_string()))
        .collect();
    assert_eq!(theirs.first().map(String::as_str), Some("execve"));
    assert_eq!(ours, theirs[1..], "{trace}");
    assert!(ours.len() > 20, "{ours:?}");
    // Decoded like the C library's wrappers, nested in the library call that made them,
    // attributed to the program's line, and exit_group never returns.
    let src = repo().join("tests/fixtures/c/imports.c");
    let line = format!("imports.c:{}", marker_line(&src, "IMPORTS: write"));
    let lines: Vec<&str> = trace.lines().collect();
    let i = lines
        .iter()
        .position(|l| l.contains("] SYS_write(1, \"wrote\\n\", 6) = 6") && l.contains(&line))
        .unwrap_or_else(|| panic!("{trace}"));
    assert!(
        lines[i - 1].contains("] write(1, \"wrote\\n\", 6 <unfinished ...>"),
        "{trace}"
    );
    assert!(
        lines[i + 1].contains("] <... write resumed> ) = 6"),
        "{trace}"
    );
    assert!(
        trace.contains("SYS_openat(-100, \"/etc/ld.so.cache\", 0x80000, 0x0) = 3"),
        "{trace}"
    );
    let last = lines.iter().rev().find(|l| l.contains("] SYS_")).unwrap();
    assert!(
        last.contains("SYS_exit_group(0x0") && last.contains("= <no return ...>"),
        "{last}"
    );
    // The agent cannot see system calls.
    let o = rltrace()
        .args(["record", "--engine", "agent", "-S", "-o"])
        .arg(&rec)
        .arg("--")
        .arg(&bin)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{o:?}");
}

#[test]
fn a_librarys_dwarf_gives_its_functions_prototypes_under_both_engines() {
    let dir = scratch("imports-callee");
    // The library in a directory of its own: the program finds it through its RUNPATH,
    // and the test removes it before replaying.
    let lib_dir = dir.join("lib");
    std::fs::create_dir_all(&lib_dir).unwrap();
    let mut built = Vec::new();
    for (variant, debug) in [("dwarf", true), ("bare", false)] {
        let mut flags = vec!["-O1", "-shared", "-fPIC"];
        if debug {
            flags.push("-g");
        }
        let lib = build_c(&format!("libgreet_{variant}.so"), "greet.c", &flags);
        let at = lib_dir.join(format!("libgreet_{variant}.so"));
        std::fs::copy(&lib, &at).unwrap();
        let rpath = format!("-Wl,-rpath,{}", lib_dir.display());
        let bin = build_c(
            &format!("callee_{variant}"),
            "callee.c",
            &[
                "-O1",
                "-g",
                "-Wl,--no-as-needed",
                at.to_str().unwrap(),
                &rpath,
            ],
        );
        built.push((variant, bin, at));
    }
    let src = repo().join("tests/fixtures/c/callee.c");
    let at = |m: &str| format!("callee.c:{}:", marker_line(&src, m));
    for engine in ["agent", "ptrace"] {
        for (variant, bin, _) in &built {
            let rec = dir.join(format!("{variant}-{engine}.rlt"));
            record_engine(engine, bin, &rec, &[]);
            let trace = replay_clean(&rec, &[]);
            let line = |f: &str| {
                trace
                    .lines()
                    .find(|l| l.contains(&format!("] {f}(")))
                    .unwrap_or_else(|| panic!("{engine} {variant}: no {f}:\n{trace}"))
                    .to_string()
            };
            let (greet, scale, twice) = (line("greet"), line("scale"), line("twice"));
            let mix = line("mix");
            assert!(mix.contains(&at("CALLEE: mix")), "{mix}");
            assert!(greet.contains(&at("CALLEE: greet")), "{greet}");
            assert!(scale.contains(&at("CALLEE: scale")), "{scale}");
            assert!(twice.contains(&at("CALLEE: twice")), "{twice}");
            if *variant == "dwarf" {
                // `int greet(const char *who, int times)`, `unsigned long scale(unsigned
                // long v, char unit)`: a string, decimals and a character.
                assert!(
                    greet.contains("] greet(\"world\", 3) = 15  "),
                    "{engine}: {greet}"
                );
                assert!(
                    scale.contains("] scale(4, 'k') = 4096  "),
                    "{engine}: {scale}"
                );
                // The IFUNC by its implementations' `int (int)`, not its resolver's
                // `void *(void)` at the symbol's address.
                assert!(twice.contains("] twice(21) = 42  "), "{engine}: {twice}");
                // `double mix(int n, double a, float b)`: each value from its own
                // register class, the result from xmm0.
                assert!(
                    mix.contains("] mix(3, 0.5, 2.25) = 3.75  "),
                    "{engine}: {mix}"
                );
                // printf's double from the vector register `al` counts.
                assert!(
                    trace.contains("] printf(\"%d %lu %d %g\\n\", 15, 4096, 42, 3.75) = 16  "),
                    "{engine}: {trace}"
                );
                let info = rltrace().arg("info").arg(&rec).output().unwrap();
                let info = String::from_utf8_lossy(&info.stdout);
                assert!(
                    info.contains("prototypes: 4 from the DWARF of the libraries"),
                    "{info}"
                );
                let json = replay_clean(&rec, &["--format", "json"]);
                let greet_json = json
                    .lines()
                    .find(|l| l.contains("\"function\":\"greet\""))
                    .unwrap();
                assert!(greet_json.contains("\"prototype\":true"), "{greet_json}");
            } else {
                // No debug info: six registers in hex (the last four whatever the caller
                // left there), never a guess, and the JSON output says so.
                let json = replay_clean(&rec, &["--format", "json"]);
                let greet_json = json
                    .lines()
                    .find(|l| l.contains("\"function\":\"greet\""))
                    .unwrap();
                assert!(greet_json.contains("\"prototype\":false"), "{greet_json}");
                let call = unaddress(
                    greet
                        .split_once("] ")
                        .unwrap()
                        .1
                        .split("  ")
                        .next()
                        .unwrap(),
                );
                assert!(
                    call.starts_with("greet(PTR, 0x3, ")
                        && call.ends_with(") = 0xf")
                        && call.matches(", ").count() == 5,
                    "{engine}: {greet}"
                );
            }
        }
    }
    // The prototypes travel in the recording: it replays the same without the library.
    let (_, _, lib) = &built[0];
    let before = replay_clean(&dir.join("dwarf-ptrace.rlt"), &[]);
    std::fs::remove_file(lib).unwrap();
    let after = replay(&dir.join("dwarf-ptrace.rlt"), &[]);
    assert!(after.contains("greet(\"world\", 3) = 15"), "{after}");
    assert_eq!(
        before.lines().filter(|l| l.contains("greet(")).count(),
        after.lines().filter(|l| l.contains("greet(")).count()
    );
}

#[test]
fn allocator_calls_made_by_a_library_outside_any_call_show_only_with_all_or_l() {
    let dir = scratch("imports-libctor");
    let lib = build_c(
        "libgreet_ctor.so",
        "greet.c",
        &["-O1", "-g", "-shared", "-fPIC"],
    );
    let rpath = format!("-Wl,-rpath,{}", lib.parent().unwrap().display());
    let bin = build_c(
        "callee_ctor",
        "callee.c",
        &[
            "-O1",
            "-g",
            "-Wl,--no-as-needed",
            lib.to_str().unwrap(),
            &rpath,
        ],
    );
    let greet_src = repo().join("tests/fixtures/c/greet.c");
    let ctor_line = format!("greet.c:{}:", marker_line(&greet_src, "GREET: constructor"));
    // The ptrace engine hooks the allocator before any library's constructor runs.
    let rec = dir.join("p.rlt");
    record_engine("ptrace", &bin, &rec, &[]);
    let made_in_ctor = |trace: &str| {
        trace
            .lines()
            .filter(|l| l.contains(&ctor_line) && l.contains("] malloc(7)"))
            .count()
    };
    let shown = replay_clean(&rec, &[]);
    assert_eq!(made_in_ctor(&shown), 0, "{shown}");
    assert!(shown.contains("] greet(\"world\", 3) = 15"), "{shown}");
    let all = replay_clean(&rec, &["--all"]);
    assert_eq!(made_in_ctor(&all), 1, "{all}");
    // With -L the allocator family is the whole trace: every caller's calls show.
    let rec = dir.join("l.rlt");
    record_opts(&["--engine", "ptrace", "-L"], &rec, &bin, &[]);
    assert_eq!(made_in_ctor(&replay_clean(&rec, &[])), 1);
}

#[test]
fn s_names_an_i386_system_call_by_its_own_numbering() {
    let bin = build_c("int80", "int80.c", &["-O1", "-g"]);
    let rec = scratch("imports-int80").join("s.rlt");
    let o = record_opts(&["-S"], &rec, &bin, &[]);
    let pid = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let trace = replay_clean(&rec, &[]);
    let src = repo().join("tests/fixtures/c/int80.c");
    let at = format!("int80.c:{}", marker_line(&src, "INT80: getpid"));
    // i386's 20 is getpid (x86-64's 20 is writev): named by number, returning the pid.
    let line = trace
        .lines()
        .find(|l| l.contains("] SYS_i386_20("))
        .unwrap_or_else(|| panic!("{trace}"));
    assert!(line.contains(&at), "{line}");
    let ret = line
        .split(" = ")
        .nth(1)
        .unwrap()
        .split("  ")
        .next()
        .unwrap();
    assert_eq!(
        u64::from_str_radix(ret.trim_start_matches("0x"), 16).ok(),
        pid.parse().ok()
    );
    assert!(!trace.contains("SYS_writev"), "{trace}");
}

/// Floating-point numbers in `s` written as C's `%f` writes them (six decimals), so that
/// rltrace's exact values compare with ltrace's rounded ones.
fn as_percent_f(s: &str) -> String {
    let re = regex::Regex::new(r"\b-?\d+(\.\d+)?(e-?\d+)?\b").unwrap();
    re.replace_all(s, |c: &regex::Captures| {
        let m = &c[0];
        match (c.get(1).or(c.get(2)), m.parse::<f64>()) {
            (Some(_), Ok(v)) => format!("{v:.6}"),
            _ => m.to_string(),
        }
    })
    .into_owned()
}

/// The floating-point fixture, lazily bound (so that ltrace sees its calls), its libm
/// calls kept as calls.
fn build_floats(name: &str) -> PathBuf {
    let flags = [
        "-O1",
        "-g",
        "-fno-builtin",
        "-Wl,-z,lazy,--no-as-needed",
        "-lm",
    ];
    build_c(name, "floats.c", &flags)
}

#[test]
fn floating_point_values_come_from_vector_registers_as_ltrace_shows_them() {
    require_tool("ltrace");
    let bin = build_floats("floats_lazy");
    let dir = scratch("imports-floats");
    // Debian's ltrace.conf declares no libm function: ltrace is given the declarations
    // (and, since -F replaces its file, printf's).
    let conf = dir.join("floats.conf");
    std::fs::write(
        &conf,
        "double strtod(string, addr);\n\
         double pow(double, double);\n\
         double atan2(double, double);\n\
         double ldexp(double, int);\n\
         double frexp(double, addr);\n\
         float sqrtf(float);\n\
         long lround(double);\n\
         int printf(format);\n",
    )
    .unwrap();
    let ltrace = ltrace_calls(&bin, &["-F", conf.to_str().unwrap()], &dir.join("lt.txt"));
    // rltrace's own table has these prototypes: no -F.
    let expected = [
        "strtod(\"2.5\", 0) = 2.5",
        "strtod(\"1e-9\", 0) = 1e-9",
        "pow(2.5, 3.0) = 15.625",
        "atan2(-2.5, 0.0) = -1.5707963267948966",
        "ldexp(2.5, 4) = 40.0",
        "frexp(40.0, PTR) = 0.625",
        "sqrtf(10.0) = 3.1622777",
        "lround(-2.5) = -3",
        "printf(\"%s %f %d %g %.3e\\n\", \"2.5\", 15.625, 6, -1.5707963267948966, 1e-9) = 34",
        "printf(\"%g %g %g %g %g %g %g %g %g\\n\", 2.5, 2.5, 2.5, 2.5, 2.5, 2.5, 2.5, 2.5, 0.625) = 38",
    ];
    for engine in ["agent", "ptrace"] {
        let rec = dir.join(format!("{engine}.rlt"));
        record_engine(engine, &bin, &rec, &[]);
        let ours = traced_calls(&rec, &[]);
        assert_eq!(ours, expected, "{engine}");
        // The same values as ltrace's, which rounds them to six decimals (1e-9 is
        // 0.000000 there).
        let ours_f: Vec<String> = ours.iter().map(|c| as_percent_f(c)).collect();
        let ltrace_f: Vec<String> = ltrace.iter().map(|c| as_percent_f(c)).collect();
        assert_eq!(ours_f, ltrace_f, "{engine}");
    }
}

#[test]
fn x_selects_calls_that_e_does_not_as_ltrace_shows_them() {
    require_tool("ltrace");
    let bin = build_floats("floats_lazy_x");
    let dir = scratch("imports-x-and-e");
    let conf = dir.join("floats.conf");
    std::fs::write(
        &conf,
        "double atan2(double, double);\nint printf(format);\n",
    )
    .unwrap();
    // ltrace names a symbol entry's library: `atan2@libm.so.6(...)`.
    let ltrace: Vec<String> = ltrace_calls(
        &bin,
        &["-F", conf.to_str().unwrap(), "-e", "printf", "-x", "atan2"],
        &dir.join("lt.txt"),
    )
    .iter()
    .map(|c| as_percent_f(&c.replacen("@libm.so.6(", "(", 1)))
    .collect();
    assert_eq!(ltrace.len(), 3, "{ltrace:#?}");
    for engine in ["auto", "ptrace"] {
        let rec = dir.join(format!("{engine}.rlt"));
        record_opts(
            &["--engine", engine, "-e", "printf", "-x", "atan2"],
            &rec,
            &bin,
            &[],
        );
        let ours = traced_calls(&rec, &[]);
        assert_eq!(
            ours[0], "atan2(-2.5, 0.0) = -1.5707963267948966",
            "{engine}"
        );
        let ours: Vec<String> = ours.iter().map(|c| as_percent_f(c)).collect();
        assert_eq!(ours, ltrace, "{engine}");
    }
}

#[test]
fn returned_values_show_as_ltrace_shows_them_strings_quoted_null_pointers_0_or_nil() {
    require_tool("ltrace");
    let bin = build_c("returns", "returns.c", &["-O1", "-g"]);
    let dir = scratch("imports-returns");
    let long = "\" 0123456789012345678901234567890\"...";
    let expected = [
        "getenv(\"RLTRACE_SURELY_UNSET_VARIABLE\") = nil".to_string(),
        "strchr(\"hello world\", 'z') = nil".into(),
        "fopen(\"/nonexistent/rltrace\", \"r\") = 0".into(),
        "printf(\"%p %p %p\\n\", 0, 0, 0) = 18".into(),
        "strchr(\"hello world\", ' ') = \" world\"".into(),
        "strrchr(\"hello world\", 'o') = \"orld\"".into(),
        "strstr(\"hello world\", \"lo w\") = \"lo world\"".into(),
        "strerror(2) = \"No such file or directory\"".into(),
        format!("strchr(\"a 012345678901234567890123456789\"..., ' ') = {long}"),
        format!("strlen({long}) = 41"),
        "printf(\"%s|%s|%s|%s|%zu\\n\", \" world\", \"orld\", \"lo world\", \"No such file or directory\", 41) = 50".into(),
    ];
    assert_eq!(ltrace_calls(&bin, &[], &dir.join("lt.txt")), expected);
    let rec = dir.join("agent.rlt");
    record_engine("agent", &bin, &rec, &[]);
    assert_eq!(traced_calls(&rec, &[]), expected, "agent");
    // The ptrace engine learns a return value after the fact, from its return stub, when
    // the string may have changed: it shows the pointer.
    let rec = dir.join("ptrace.rlt");
    record_engine("ptrace", &bin, &rec, &[]);
    let pointers: Vec<String> = expected
        .iter()
        .map(|c| match c.split_once(" = \"") {
            Some((call, _)) if !c.starts_with("printf") && !c.starts_with("strlen") => {
                format!("{call} = PTR")
            }
            _ => c.clone(),
        })
        .collect();
    assert_eq!(traced_calls(&rec, &[]), pointers, "ptrace");
}
