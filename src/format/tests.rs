use super::*;

fn sample_records() -> Vec<Record> {
    vec![
        Record::ProcessStart(ProcessStart {
            pid: 42,
            parent: 0,
            ts: 5,
            cause: StartCause::Spawn,
            path: "/bin/true".into(),
        }),
        Record::Module(ModuleDef {
            id: 0,
            pid: 42,
            path: "/lib/libc.so.6".into(),
            build_id: vec![1, 2, 3],
            bias: 0x7f00_0000_0000,
            start: 0x7f00_0000_0000,
            end: 0x7f00_0020_0000,
        }),
        Record::Function(FunctionDef {
            id: 0,
            name: "malloc".into(),
            class: FnClass::Malloc,
            returns: true,
            origin: Default::default(),
        }),
        Record::Function(FunctionDef {
            id: 1,
            name: "strlen".into(),
            class: FnClass::Other,
            returns: true,
            origin: Origin::Imported,
        }),
        Record::Function(FunctionDef {
            id: 2,
            name: "SYS_exit_group".into(),
            class: FnClass::Other,
            returns: true,
            origin: Origin::Syscall,
        }),
        Record::Thread(ThreadDef {
            num: 0,
            pid: 42,
            tid: 42,
        }),
        Record::Stack(StackDef {
            id: 0,
            frames: vec![
                Frame {
                    module: Some(0),
                    addr: 0x1234,
                },
                Frame {
                    module: None,
                    addr: 0xdead_beef,
                },
            ],
        }),
        Record::Enter(Enter {
            thread: 0,
            ts: 1000,
            func: 0,
            args: vec![32],
            stack: Some(0),
            data: Vec::new(),
        }),
        Record::Exit(Exit {
            thread: 0,
            ret: Some(0x5555_0000_1000),
            out: None,
            ts: None,
        }),
        Record::Enter(Enter {
            thread: 0,
            ts: 900,
            func: 0,
            args: vec![],
            stack: None,
            data: Vec::new(),
        }),
        Record::Enter(Enter {
            thread: 0,
            ts: 950,
            func: 0,
            args: vec![1, 0x5555_0000_2000, 2],
            stack: Some(0),
            data: vec![
                ArgData {
                    arg: 1,
                    truncated: false,
                    bytes: b"x\n".to_vec(),
                },
                ArgData {
                    arg: 2,
                    truncated: true,
                    bytes: vec![0, 255],
                },
            ],
        }),
        Record::Exit(Exit {
            thread: 0,
            ret: None,
            out: Some(7),
            ts: None,
        }),
        Record::Signal(SignalRec {
            thread: 0,
            ts: 1500,
            signo: 11,
            code: 1,
            addr: 0,
            stack: Some(0),
        }),
        Record::ModuleUnload(0),
        Record::Note(Note {
            pid: 42,
            text: "hello".into(),
        }),
        Record::ProcessExit(ProcessExit {
            pid: 42,
            ts: 2000,
            how: ExitHow::Signal(9),
        }),
    ]
}

fn write(records: &[Record], finish: bool) -> Vec<u8> {
    let meta = Meta {
        pairs: vec![("command".into(), "true".into())],
    };
    let mut w = Writer::new(Vec::new(), &meta).unwrap();
    for r in records {
        w.push(r).unwrap();
    }
    if finish {
        w.finish().unwrap().0
    } else {
        w.seal().unwrap();
        // Reach into the writer's buffer: a recorder killed after sealing.
        w.into_inner_for_test()
    }
}

fn read_all(bytes: &[u8]) -> Result<(Vec<Record>, Vec<String>), FormatError> {
    let mut r = Reader::new(bytes)?;
    let mut out = Vec::new();
    while let Some(rec) = r.next_record()? {
        out.push(rec);
    }
    Ok((out, r.warnings().to_vec()))
}

#[test]
fn round_trip() {
    let recs = sample_records();
    let bytes = write(&recs, true);
    let mut r = Reader::new(bytes.as_slice()).unwrap();
    assert_eq!(r.meta().get("command"), Some("true"));
    let mut got = Vec::new();
    while let Some(rec) = r.next_record().unwrap() {
        got.push(rec);
    }
    assert_eq!(got, recs);
    assert!(r.warnings().is_empty());
    assert_eq!(r.summary().unwrap().records, recs.len() as u64);
}

#[test]
fn unfinished_recording_reads_with_warning() {
    let recs = sample_records();
    let bytes = write(&recs, false);
    let (got, warnings) = read_all(&bytes).unwrap();
    assert_eq!(got, recs);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("no end marker"));
}

#[test]
fn every_truncation_is_an_error_or_a_warning_never_a_panic() {
    let recs = sample_records();
    let bytes = write(&recs, true);
    for cut in 0..bytes.len() {
        match read_all(&bytes[..cut]) {
            Ok((got, warnings)) => {
                assert!(!warnings.is_empty(), "cut at {cut} read silently");
                assert!(got.len() <= recs.len());
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
}

#[test]
fn every_flipped_byte_is_detected_or_harmless() {
    let recs = sample_records();
    let bytes = write(&recs, true);
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x41;
        // Must not panic; header bytes may legitimately change only reserved fields.
        let _ = read_all(&b);
    }
}

#[test]
fn newer_version_is_named() {
    let mut bytes = write(&sample_records(), true);
    bytes[8] = 9;
    let err = Reader::new(bytes.as_slice()).err().unwrap().to_string();
    assert!(err.contains("version 9"), "{err}");
}

#[test]
fn not_a_recording() {
    let err = Reader::new(&b"#!/bin/sh\necho hi\n"[..]).err().unwrap();
    assert!(matches!(err, FormatError::BadMagic), "{err}");
}

#[test]
fn version_one_files_still_read() {
    let recs: Vec<Record> = sample_records()
        .into_iter()
        .filter(|r| !matches!(r, Record::Signal(_)))
        .collect();
    let mut bytes = write(&recs, true);
    bytes[8] = 1;
    let (got, warnings) = read_all(&bytes).unwrap();
    assert_eq!(got, recs);
    assert!(warnings.is_empty());
}
