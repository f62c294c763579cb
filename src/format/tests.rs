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

fn meta_with_unit(unit: &str) -> Meta {
    Meta {
        pairs: vec![(META_TIME_UNIT.into(), unit.into())],
    }
}

#[test]
fn a_call_record_reads_as_its_entry_and_return() {
    let mut w = Writer::new(Vec::new(), &Meta::default()).unwrap();
    w.call(&CallRecord {
        thread: 3,
        func: 1,
        args: &[48],
        stack: Some(7),
        ts_in: 1_000,
        ts_out: 1_250,
        ret: Some(0x5555_0000_1000),
        out: None,
    })
    .unwrap();
    let bytes = w.finish().unwrap().0;
    let (got, warnings) = read_all(&bytes).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        got,
        vec![
            Record::Enter(Enter {
                thread: 3,
                ts: 1_000,
                func: 1,
                args: vec![48],
                stack: Some(7),
                data: Vec::new(),
            }),
            Record::Exit(Exit {
                thread: 3,
                ret: Some(0x5555_0000_1000),
                out: None,
                ts: Some(1_250),
            }),
        ]
    );
}

#[test]
fn times_are_stored_in_the_recordings_unit_and_rounded_on_the_clock() {
    let mut w = Writer::new(Vec::new(), &meta_with_unit("1000")).unwrap();
    // 0.4 us each: the first call's ends fall in one microsecond, the second's in two.
    for (i, ts) in [10_100u64, 10_700].into_iter().enumerate() {
        w.call(&CallRecord {
            thread: 0,
            func: 0,
            args: &[i as u64],
            stack: None,
            ts_in: ts,
            ts_out: ts + 400,
            ret: Some(1),
            out: None,
        })
        .unwrap();
    }
    w.push(&Record::ProcessExit(ProcessExit {
        pid: 1,
        ts: 123_456,
        how: ExitHow::Code(0),
    }))
    .unwrap();
    let bytes = w.finish().unwrap().0;
    let (got, _) = read_all(&bytes).unwrap();
    let times: Vec<u64> = got
        .iter()
        .filter_map(|r| match r {
            Record::Enter(e) => Some(e.ts),
            Record::Exit(x) => x.ts,
            Record::ProcessExit(p) => Some(p.ts),
            _ => None,
        })
        .collect();
    // Durations of 0 and 1 us for two calls of 0.4 us: over many calls the mean is right.
    assert_eq!(times, [10_000, 10_000, 10_000, 11_000, 123_000]);
}

#[test]
fn a_time_unit_out_of_range_is_an_error_naming_it() {
    for bad in ["0", "-3", "1.5", "2000000000", "us"] {
        let meta = meta_with_unit(bad);
        assert!(Writer::new(Vec::new(), &meta).is_err(), "writer took {bad}");
        // A file header, then a metadata chunk that states the bad unit.
        let empty = Writer::new(Vec::new(), &Meta::default()).unwrap();
        let mut file = empty.finish().unwrap().0[..FILE_HEADER_LEN].to_vec();
        let mut enc = codec::Encoder::default();
        enc.uvar(meta.pairs.len() as u64);
        for (k, v) in &meta.pairs {
            enc.str(k);
            enc.str(v);
        }
        writer::write_chunk_for_test(&mut file, CHUNK_META, &enc.buf);
        let err = Reader::new(file.as_slice()).err().unwrap().to_string();
        assert!(err.contains(META_TIME_UNIT), "{bad}: {err}");
    }
}

#[test]
fn a_chunk_of_small_records_is_read_one_record_at_a_time() {
    let mut w = Writer::new(Vec::new(), &Meta::default()).unwrap();
    let n = 50_000u64;
    for i in 0..n {
        w.call(&CallRecord {
            thread: 0,
            func: 0,
            args: &[16],
            stack: None,
            ts_in: i,
            ts_out: i,
            ret: Some(i),
            out: None,
        })
        .unwrap();
    }
    let bytes = w.finish().unwrap().0;
    let mut r = Reader::new(bytes.as_slice()).unwrap();
    let mut count = 0u64;
    while let Some(rec) = r.next_record().unwrap() {
        // Never more than the one Exit of the Call just read waits in the queue.
        assert!(r.pending_len_for_test() <= 1);
        if matches!(rec, Record::Exit(_)) {
            count += 1;
        }
    }
    assert_eq!(count, n);
}
