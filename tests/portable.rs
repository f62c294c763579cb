//! Recordings that replay anywhere: packed symbols and sources.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;

use common::*;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            if e.file_name() != "target" {
                copy_dir(&e.path(), &dest);
            }
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

#[test]
fn packed_recording_replays_without_binaries_or_sources() {
    // A private copy of the server crate, so that deleting it harms no other test.
    let dir = scratch("pack");
    let krate = dir.join("crate");
    copy_dir(&repo().join("tests/fixtures/rust-server"), &krate);
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "--quiet",
            "--locked",
            "--manifest-path",
        ])
        .arg(krate.join("Cargo.toml"))
        .status()
        .unwrap();
    assert!(status.success());
    let server = krate.join("target/release/rust-server");
    let boxed_line = marker_line(&krate.join("src/main.rs"), "LEAK: boxed");

    let rec = dir.join("server.rlt");
    let (mut child, addr) = start_server(&rec, &server);
    for i in 0..10 {
        let mut s = TcpStream::connect(&addr).unwrap();
        writeln!(s, "{i}").unwrap();
        s.read_to_string(&mut String::new()).unwrap();
    }
    terminate(&child);
    child.wait().unwrap();
    let before = replay(&rec, &["--leaks", "-v"]);

    let o = rltrace()
        .args(["pack", "--sources"])
        .arg(&rec)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let said = String::from_utf8_lossy(&o.stderr);
    assert!(
        said.contains("packed ") && said.contains(" source lines into "),
        "{said}"
    );

    let elsewhere = scratch("pack-elsewhere");
    let moved = elsewhere.join("bug-report.rlt");
    std::fs::copy(&rec, &moved).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    let o = rltrace()
        .current_dir(&elsewhere)
        .args(["replay", "--leaks", "-v"])
        .arg(&moved)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && err.is_empty(), "{err}");
    let after = String::from_utf8(o.stdout).unwrap();
    let top = &parse_leaks(&after)[0];
    assert_eq!((top.blocks, top.bytes), (10, 320), "{after}");
    assert_eq!(top.at, format!("main.rs:{boxed_line}"));
    assert!(
        top.text.contains(".boxed(); // LEAK: boxed"),
        "source text from the pack: {}",
        top.text
    );
    // Identical to the report made where the binaries were.
    assert_eq!(after, before);
}

#[test]
fn packing_twice_keeps_the_symbols() {
    let dir = scratch("repack");
    let bin = dir.join("leaks");
    std::fs::copy(leaks_c(), &bin).unwrap();
    let rec = dir.join("r.rlt");
    record(&rec, &bin, &[]);
    let want = replay(&rec, &["--leaks"]);
    let once = dir.join("once.rlt");
    let o = rltrace()
        .args(["pack", "-o"])
        .arg(&once)
        .arg(&rec)
        .output()
        .unwrap();
    assert!(o.status.success());
    std::fs::remove_file(&bin).unwrap();
    // Packing again without the binary keeps what the first pack stored.
    let o = rltrace().args(["pack"]).arg(&once).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(replay(&once, &["--leaks"]), want);
}

/// Kills the server when the test ends, however it ends.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn debug_info_is_fetched_from_a_debuginfod_server() {
    require_tool("debuginfod");
    let dir = scratch("debuginfod");
    let bin = dir.join("leaks");
    std::fs::copy(leaks_c(), &bin).unwrap();
    let baseline = {
        let rec = dir.join("full.rlt");
        record(&rec, &bin, &[]);
        parse_leaks(&replay(&rec, &["--leaks"]))
            .into_iter()
            .map(|g| (g.bytes, g.blocks, g.at))
            .collect::<Vec<_>>()
    };
    // The server holds the debug file; the binary keeps none.
    let files = dir.join("files");
    std::fs::create_dir_all(&files).unwrap();
    let debug = files.join("leaks.debug");
    run_ok(
        "objcopy",
        &[
            "--only-keep-debug".as_ref(),
            bin.as_os_str(),
            debug.as_os_str(),
        ],
    );
    run_ok("objcopy", &["--strip-debug".as_ref(), bin.as_os_str()]);
    let id = build_id_hex(&bin);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _server = Server(
        Command::new("debuginfod")
            .args(["-F", "-p", &port.to_string(), "-d"])
            .arg(dir.join("db.sqlite"))
            .arg(&files)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = format!("http://127.0.0.1:{port}");
    let ready = (0..200).any(|_| {
        let ok = ureq::get(format!("{url}/buildid/{id}/debuginfo"))
            .call()
            .is_ok();
        if !ok {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        ok
    });
    assert!(ready, "debuginfod did not index the debug file");

    let rec = dir.join("stripped.rlt");
    record(&rec, &bin, &[]);
    let cache = dir.join("cache");
    let without = parse_leaks(&replay(&rec, &["--leaks"]));
    assert!(
        without.iter().all(|g| !g.at.starts_with("leaks.c:")),
        "no local debug info"
    );
    let o = rltrace()
        .args(["replay", "--leaks"])
        .arg(&rec)
        .env("DEBUGINFOD_URLS", &url)
        .env("DEBUGINFOD_CACHE_PATH", &cache)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got: Vec<_> = parse_leaks(&String::from_utf8_lossy(&o.stdout))
        .into_iter()
        .map(|g| (g.bytes, g.blocks, g.at))
        .collect();
    assert_eq!(got, baseline);
    assert!(
        cache.join(&id).join("debuginfo").is_file(),
        "fetched into the elfutils cache layout"
    );
}

#[test]
fn record_pack_makes_a_portable_recording_in_one_step() {
    let dir = scratch("record-pack");
    let bin = dir.join("leaks");
    std::fs::copy(leaks_c(), &bin).unwrap();
    let rec = dir.join("r.rlt");
    let o = rltrace()
        .args(["record", "--pack", "--sources", "-o"])
        .arg(&rec)
        .arg("--")
        .arg(&bin)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("rltrace: packed "));
    let want = replay(&rec, &["--leaks", "-v"]);
    std::fs::remove_file(&bin).unwrap();
    assert_eq!(replay_clean(&rec, &["--leaks", "-v"]), want);
    let info = String::from_utf8(rltrace().arg("info").arg(&rec).output().unwrap().stdout).unwrap();
    assert!(info.contains("packed:    symbols for"), "{info}");
}
