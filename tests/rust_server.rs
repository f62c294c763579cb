//! The story: a Rust release server (PIE, BIND_NOW, no frame pointers) leaking one boxed
//! future per request; rltrace must name the `.boxed()` line.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::*;

const REQUESTS: u64 = 50;

#[test]
fn leak_points_at_the_boxed_call() {
    for engine in ENGINES {
        boxed_leak_with(engine);
    }
}

fn boxed_leak_with(engine: &str) {
    let server = rust_server();
    let src = repo().join("tests/fixtures/rust-server/src/main.rs");
    let boxed_line = marker_line(&src, "LEAK: boxed");
    let dir = scratch(&format!("rust-server-{engine}"));
    let rec = dir.join("server.rlt");
    let (mut child, addr) = start_server_with(engine, &rec, server);
    for i in 0..REQUESTS {
        let mut s = TcpStream::connect(&addr).unwrap();
        writeln!(s, "{i}").unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        assert_eq!(
            answer.trim(),
            (i + 1).to_string(),
            "the server answers correctly while traced"
        );
    }
    // Stop it as a service manager would: SIGTERM to the recorder, which passes it on.
    terminate(&child);
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(128 + 15), "{err}");

    let o = rltrace()
        .args(["replay", "--leaks", "-v"])
        .arg(&rec)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        o.stderr.is_empty(),
        "a complete recording replays without warnings: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let report = String::from_utf8(o.stdout).unwrap();
    let groups = parse_leaks(&report);
    let top = &groups[0];
    assert_eq!(top.blocks, REQUESTS, "{report}");
    assert_eq!(top.bytes, 32 * REQUESTS, "{report}");
    assert_eq!(top.func, "malloc");
    assert_eq!(top.at, format!("main.rs:{boxed_line}"), "{report}");
    assert!(
        top.text.contains(".boxed(); // LEAK: boxed"),
        "source line quoted: {}",
        top.text
    );
    // The inlined chain: Box::pin and FutureExt::boxed inlined, down to the handler line.
    let stack: Vec<&str> = top
        .text
        .lines()
        .skip_while(|l| !l.contains("stack:"))
        .collect();
    let boxed = stack
        .iter()
        .position(|l| l.contains("FutureExt") && l.contains("boxed") && l.contains("(inlined)"))
        .unwrap_or_else(|| panic!("no inlined boxed frame: {}", top.text));
    let handler = stack
        .iter()
        .position(|l| l.contains(&format!("main.rs:{boxed_line}:")))
        .unwrap_or_else(|| panic!("no handler frame: {}", top.text));
    assert_eq!(handler, boxed + 1, "{}", top.text);
    assert!(stack[handler].contains("rust_server::"), "{}", top.text);
}
