//! Bad input gets a one-line error naming the problem and a non-zero exit, never a panic.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;

fn run(args: &[&std::ffi::OsStr]) -> (Option<i32>, String, String) {
    let o = rltrace().args(args).output().unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn assert_clean_error(stderr: &str, needle: &str) {
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in {stderr:?}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr:?}");
}

fn recording(name: &str) -> (std::path::PathBuf, Vec<u8>) {
    let dir = scratch(name);
    let rec = dir.join("leaks.rlt");
    record(&rec, leaks_c(), &[]);
    let bytes = std::fs::read(&rec).unwrap();
    (dir, bytes)
}

#[test]
fn missing_and_unexecutable_commands() {
    let dir = scratch("bad-cmd");
    let out = dir.join("x.rlt");
    let (code, _, err) = run(&[
        "record".as_ref(),
        "-o".as_ref(),
        out.as_os_str(),
        "--".as_ref(),
        "/no/such/program".as_ref(),
    ]);
    assert_eq!(code, Some(2));
    assert_clean_error(
        &err,
        "cannot run /no/such/program: No such file or directory",
    );
    assert!(!out.exists(), "no recording for a command that never ran");

    let script = dir.join("not-executable");
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, err) = run(&["record".as_ref(), "--".as_ref(), script.as_os_str()]);
    assert_eq!(code, Some(2));
    assert_clean_error(&err, "Permission denied");
}

#[test]
fn not_a_recording() {
    let dir = scratch("bad-magic");
    let f = dir.join("notes.txt");
    std::fs::write(&f, "hello, I am text\n").unwrap();
    let (code, _, err) = run(&["replay".as_ref(), f.as_os_str()]);
    assert_eq!(code, Some(2));
    assert_clean_error(&err, "not an rltrace recording (bad magic at offset 0)");

    let (code, _, err) = run(&["replay".as_ref(), dir.join("absent.rlt").as_os_str()]);
    assert_eq!(code, Some(2));
    assert_clean_error(&err, "No such file or directory");
}

#[test]
fn truncated_recording_replays_up_to_the_last_chunk() {
    let (dir, bytes) = recording("bad-trunc");
    let cut = dir.join("cut.rlt");
    // Cut inside the last chunk (the end marker): everything before it is intact.
    std::fs::write(&cut, &bytes[..bytes.len() - 3]).unwrap();
    let (code, out, err) = run(&["replay".as_ref(), "--leaks".as_ref(), cut.as_os_str()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("truncated at offset"), "{err}");
    assert!(out.contains("72 bytes in 3 blocks"), "{out}");
    // A recording cut before its metadata is an error with the offset.
    std::fs::write(&cut, &bytes[..20]).unwrap();
    let (code, _, err) = run(&["replay".as_ref(), cut.as_os_str()]);
    assert_eq!(code, Some(2));
    assert_clean_error(&err, "offset 16");
}

#[test]
fn corrupted_chunk_names_its_offset() {
    let (dir, mut bytes) = recording("bad-crc");
    // The first records chunk starts after the header and the metadata chunk.
    let meta_len = u32::from_le_bytes(bytes[20..24].try_into().unwrap()) as usize;
    let second = 16 + 16 + meta_len;
    bytes[second + 16 + 5] ^= 0xff;
    let bad = dir.join("bad.rlt");
    std::fs::write(&bad, &bytes).unwrap();
    let (code, _, err) = run(&["replay".as_ref(), bad.as_os_str()]);
    assert_eq!(code, Some(2));
    assert_clean_error(&err, &format!("chunk at offset {second} is corrupt"));
}

#[test]
fn newer_format_version() {
    let (dir, mut bytes) = recording("bad-version");
    bytes[8] = 99;
    let f = dir.join("new.rlt");
    std::fs::write(&f, &bytes).unwrap();
    let (code, _, err) = run(&["replay".as_ref(), f.as_os_str()]);
    assert_eq!(code, Some(2));
    assert_clean_error(
        &err,
        "format version 99 is newer than this rltrace supports",
    );
}

#[test]
fn vanished_module_is_named_and_replay_goes_on() {
    let dir = scratch("bad-vanished");
    let bin = dir.join("leaks-copy");
    std::fs::copy(leaks_c(), &bin).unwrap();
    let rec = dir.join("r.rlt");
    record(&rec, &bin, &[]);
    std::fs::remove_file(&bin).unwrap();
    let (code, out, err) = run(&["replay".as_ref(), "--leaks".as_ref(), rec.as_os_str()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("{}: cannot read the module", bin.display())),
        "{err}"
    );
    assert!(!err.contains("panicked"));
    // Groups are still exact; only their symbols are missing.
    assert!(out.contains("72 bytes in 3 blocks"), "{out}");
    assert!(out.contains("leaks-copy+0x"), "{out}");
}

#[test]
fn garbage_never_panics() {
    let (dir, bytes) = recording("bad-garbage");
    let f = dir.join("g.rlt");
    // Deterministic pseudo-random corruptions of a real recording.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..200 {
        let mut b = bytes.clone();
        for _ in 0..1 + round % 8 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x as usize) % b.len();
            b[i] = (x >> 32) as u8;
        }
        if round % 5 == 0 {
            b.truncate((x as usize) % b.len());
        }
        std::fs::write(&f, &b).unwrap();
        let o = rltrace()
            .args(["replay", "--leaks"])
            .arg(&f)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("panicked"), "round {round}: {err}");
        assert!(
            o.status.code().is_some(),
            "round {round}: killed by a signal"
        );
    }
    let _ = Path::new(&f);
}

#[test]
fn hostile_paths_in_a_recording_are_not_opened() {
    use rltrace::format::{
        Enter, Exit, FnClass, Frame, FunctionDef, Meta, ModuleDef, PackedAddress, PackedFrame,
        Reader, Record, StackDef, ThreadDef, Writer,
    };
    let dir = scratch("hostile");
    let fifo = dir.join("fifo");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let fifo_s = fifo.display().to_string();
    // A module and a source file that are a FIFO, and a source file that never ends.
    let records = vec![
        Record::Module(ModuleDef {
            id: 0,
            pid: 1,
            path: fifo_s.clone(),
            build_id: vec![1; 20],
            bias: 0,
            start: 0x1000,
            end: 0x2000,
        }),
        Record::Module(ModuleDef {
            id: 1,
            pid: 1,
            path: "/dev/zero".into(),
            build_id: vec![],
            bias: 0,
            start: 0x3000,
            end: 0x4000,
        }),
        Record::Function(FunctionDef {
            id: 0,
            name: "malloc".into(),
            class: FnClass::Malloc,
            returns: true,
            origin: Default::default(),
        }),
        Record::Thread(ThreadDef {
            num: 0,
            pid: 1,
            tid: 1,
        }),
        Record::Stack(StackDef {
            id: 0,
            frames: vec![
                Frame {
                    module: Some(0),
                    addr: 0x10,
                },
                Frame {
                    module: Some(1),
                    addr: 0x20,
                },
            ],
        }),
        Record::Enter(Enter {
            thread: 0,
            ts: 1,
            func: 0,
            args: vec![8],
            stack: Some(0),
            data: Vec::new(),
        }),
        Record::Exit(Exit {
            thread: 0,
            ret: Some(0x5000),
            out: None,
            ts: None,
            data: Vec::new(),
        }),
    ];
    let plain = dir.join("plain.rlt");
    let mut w = Writer::new(std::fs::File::create(&plain).unwrap(), &Meta::default()).unwrap();
    for r in &records {
        w.push(r).unwrap();
    }
    w.finish().unwrap();
    let packed = dir.join("packed.rlt");
    let symbols = vec![PackedAddress {
        module: 1,
        addr: 0x20,
        frames: vec![PackedFrame {
            function: Some("f".into()),
            file: Some("/dev/zero".into()),
            line: 1,
            column: 1,
            inlined: false,
        }],
    }];
    rltrace::format::writer::write_packed(
        std::fs::File::create(&packed).unwrap(),
        Reader::new(std::fs::File::open(&plain).unwrap()).unwrap(),
        &symbols,
        &[],
    )
    .unwrap();
    for f in [&plain, &packed] {
        let mut child = rltrace()
            .args(["replay", "--leaks", "-v"])
            .arg(f)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let t0 = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() {
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(20),
                "replay hung on a hostile path"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let o = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("panicked"), "{err}");
        assert!(err.contains("not a regular file"), "{err}");
        assert!(String::from_utf8_lossy(&o.stdout).contains("8 bytes in 1 block"));
    }
}
