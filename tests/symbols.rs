//! Symbolization: C++ and Rust v0 demangling, separate debug files, build-id checks.

mod common;

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

use common::*;

#[test]
fn cpp_names_are_demangled_and_exceptions_pass_through() {
    for engine in ENGINES {
        cpp_with(engine);
    }
}

fn cpp_with(engine: &str) {
    let bin = widgets_cpp();
    let dir = scratch(&format!("cpp-{engine}"));
    let rec = dir.join("w.rlt");
    let o = record_with(engine, &rec, bin, &[]);
    // Two exceptions thrown through frames that called malloc were caught normally.
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let report = replay(&rec, &["--leaks", "-v"]);
    let src = repo().join("tests/fixtures/cpp/widgets.cpp");
    let line = marker_line(&src, "LEAK: new");
    let g = parse_leaks(&report)
        .into_iter()
        .find(|g| g.at == format!("widgets.cpp:{line}"))
        .unwrap_or_else(|| panic!("{report}"));
    assert_eq!((g.blocks, g.func.as_str()), (5, "malloc"), "{report}");
    assert_eq!(g.bytes, 5 * 56);
    assert_eq!(
        g.caller_fn, "demo::Factory<demo::Widget>::create(int)",
        "{report}"
    );
    // operator new sits between malloc and the factory, demangled.
    assert!(g.text.contains("operator new(unsigned long)"), "{}", g.text);
    assert!(!g.text.contains("_ZN"), "{}", g.text);
    if engine == "agent" {
        // The throws went through the import trampoline's frame (its unwind information
        // let the exception pass) and show as calls that never returned, each followed
        // by the catch in main.
        let trace = replay(&rec, &[]);
        let throws: Vec<&str> = trace
            .lines()
            .filter(|l| l.contains("] __cxa_throw("))
            .collect();
        assert_eq!(throws.len(), 2, "{trace}");
        assert!(
            throws.iter().all(|l| l.contains(" <no return ...>  ")),
            "{trace}"
        );
        assert_eq!(trace.matches("] __cxa_begin_catch(").count(), 2, "{trace}");
    }
}

#[test]
fn rust_v0_mangling_is_demangled() {
    let bin = build_rust_server("rust-server-v0", Some("-C symbol-mangling-version=v0"));
    let nm = Command::new("nm").arg(&bin).output().unwrap();
    assert!(
        String::from_utf8_lossy(&nm.stdout).contains(" _RNv"),
        "the build really uses v0 symbols"
    );
    let dir = scratch("v0");
    let rec = dir.join("v0.rlt");
    let (mut child, addr) = start_server(&rec, &bin);
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    std::io::Write::write_all(&mut s, b"quit\n").unwrap();
    std::io::Read::read_to_string(&mut s, &mut String::new()).unwrap();
    assert!(child.wait().unwrap().success());
    let out = replay(&rec, &["--stack"]);
    assert!(out.contains("std::rt::lang_start_internal"), "{out}");
    assert!(
        !out.contains("_RNv") && !out.contains("_ZN"),
        "mangled names left:\n{out}"
    );
}

fn objcopy(args: &[&OsStr]) {
    require_tool("objcopy");
    run_ok("objcopy", args);
}

/// The leak groups of the leaks fixture, as (bytes, blocks, caller line).
fn groups_of(rec: &Path, extra: &[&str]) -> Vec<(u64, u64, String)> {
    let mut args = vec!["--leaks"];
    args.extend_from_slice(extra);
    parse_leaks(&replay(rec, &args))
        .into_iter()
        .map(|g| (g.bytes, g.blocks, g.at))
        .collect()
}

#[test]
fn debug_info_is_found_through_debuglink_and_build_id_directories() {
    let dir = scratch("debuglink");
    let bin = dir.join("leaks");
    std::fs::copy(leaks_c(), &bin).unwrap();
    let full = dir.join("full.rlt");
    record(&full, &bin, &[]);
    let want = groups_of(&full, &[]);
    assert!(want.iter().all(|g| g.2.starts_with("leaks.c:")), "{want:?}");

    // Split the debug info out and link it back by name.
    let debug = dir.join("leaks.debug");
    objcopy(&[
        "--only-keep-debug".as_ref(),
        bin.as_os_str(),
        debug.as_os_str(),
    ]);
    objcopy(&["--strip-debug".as_ref(), bin.as_os_str()]);
    let link = format!("--add-gnu-debuglink={}", debug.display());
    objcopy(&[link.as_ref(), bin.as_os_str()]);
    let stripped = dir.join("stripped.rlt");
    record(&stripped, &bin, &[]);
    assert_eq!(
        groups_of(&stripped, &[]),
        want,
        "found through .gnu_debuglink"
    );

    // Move it into a build-id tree elsewhere: found with --debug-dir.
    let id = build_id_hex(&bin);
    let tree = dir.join("debug-root");
    let sub = tree.join(".build-id").join(&id[..2]);
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::rename(&debug, sub.join(format!("{}.debug", &id[2..]))).unwrap();
    let without = groups_of(&stripped, &[]);
    assert!(
        without.iter().all(|g| !g.2.starts_with("leaks.c:")),
        "no debug info left: {without:?}"
    );
    let tree_arg = tree.display().to_string();
    assert_eq!(
        groups_of(&stripped, &["--debug-dir", &tree_arg]),
        want,
        "found by build-id"
    );
}

#[test]
fn a_rebuilt_binary_is_not_trusted() {
    let dir = scratch("build-id");
    let bin = dir.join("leaks");
    std::fs::copy(leaks_c(), &bin).unwrap();
    let rec = dir.join("r.rlt");
    record(&rec, &bin, &[]);
    // Rebuild at the same path with other flags: a different build-id.
    let src = repo().join("tests/fixtures/c/leaks.c");
    run_ok(
        "cc",
        &[
            "-O2".as_ref(),
            "-g".as_ref(),
            src.as_os_str(),
            "-o".as_ref(),
            bin.as_os_str(),
        ],
    );
    let o = rltrace()
        .args(["replay", "--leaks"])
        .arg(&rec)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("{}: build-id", bin.display()))
            && err.contains("differs from the recorded"),
        "{err}"
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        !out.contains("leaks.c:"),
        "lines from the wrong binary: {out}"
    );
}

#[test]
fn default_output_name() {
    let dir = scratch("default-name");
    let o = rltrace()
        .current_dir(&dir)
        .args(["record", "--"])
        .arg(leaks_c())
        .output()
        .unwrap();
    assert!(o.status.success());
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    let n = &names[0];
    let pid = n
        .strip_prefix("rltrace-leaks-")
        .and_then(|r| r.strip_suffix(".rlt"))
        .unwrap_or_else(|| panic!("{n}"));
    assert!(pid.parse::<u32>().is_ok(), "{n}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(n.as_str()),
        "the name is reported"
    );
}
