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
            data: Vec::new(),
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
            data: Vec::new(),
        }),
        Record::Enter(Enter {
            thread: 0,
            ts: 1200,
            func: 0,
            args: vec![],
            stack: None,
            data: Vec::new(),
        }),
        // A returned string (version 8's ExitData).
        Record::Exit(Exit {
            thread: 0,
            ret: Some(0x7ffc_0000_0010),
            out: None,
            ts: Some(1300),
            data: vec![ArgData {
                arg: 0,
                truncated: true,
                bytes: b"/root".to_vec(),
            }],
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
    bytes[8] = 10;
    let err = Reader::new(bytes.as_slice()).err().unwrap().to_string();
    assert!(err.contains("version 10"), "{err}");
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
                data: Vec::new(),
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

/// A xorshift generator: the same calls in every run, without a dependency.
fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}

/// Calls of many interleaved threads, with the patterns the prediction codes (pointers
/// freed after their allocation, reused, small values that repeat and step) and the cases
/// it must not lose (void calls, out values, no stack, huge values, times out of order).
fn thread_coded_calls(threads: u32, n: u64) -> Vec<(CallRecord<'static>, Vec<u64>)> {
    let mut out = Vec::new();
    let mut rand = xorshift(0x2545_f491_4f6c_dd1du64);
    for i in 0..n {
        let thread = (rand() % u64::from(threads)) as u32;
        let base = 0x7f00_0000_0000 + u64::from(thread) * 0x10_0000;
        let ptr = base + (rand() % 6) * 0x40;
        let (func, args, ret, out_value) = match rand() % 6 {
            0 => (1, vec![16 + i % 64], Some(ptr), None),
            1 => (5, vec![ptr], None, None),
            2 => (6, vec![0x7ffc_0000_0010, 64, 4096], Some(0), Some(ptr)),
            3 => (3, vec![ptr, rand() % 100_000], Some(ptr + 0x40), None),
            4 => (9, vec![u64::MAX, 1 << 63, rand()], Some(u64::MAX - 1), None),
            _ => (2, vec![], None, None),
        };
        let ts_in = i * 370 + rand() % 5_000;
        let ts_out = if i % 97 == 0 {
            ts_in - 5
        } else {
            ts_in + rand() % 3_000
        };
        let stack = match rand() % 4 {
            0 => None,
            1 => Some(u32::MAX),
            _ => Some((rand() % 12) as u32),
        };
        let c = CallRecord {
            thread,
            func,
            args: &[],
            stack,
            ts_in,
            ts_out,
            ret,
            out: out_value,
        };
        out.push((c, args));
    }
    out
}

fn write_calls(calls: &[(CallRecord<'static>, Vec<u64>)]) -> Vec<u8> {
    let mut w = Writer::new(Vec::new(), &Meta::default()).unwrap();
    for (i, (c, args)) in calls.iter().enumerate() {
        w.call(&CallRecord { args, ..*c }).unwrap();
        if i % 1000 == 999 {
            // A record of another kind between calls, in the same chunk.
            w.push(&Record::Note(Note {
                pid: 1,
                text: "between".into(),
            }))
            .unwrap();
        }
    }
    w.finish().unwrap().0
}

fn expected_calls(calls: &[(CallRecord<'static>, Vec<u64>)]) -> Vec<Record> {
    let mut out = Vec::new();
    for (i, (c, args)) in calls.iter().enumerate() {
        out.push(Record::Enter(Enter {
            thread: c.thread,
            ts: c.ts_in,
            func: c.func,
            args: args.clone(),
            stack: c.stack,
            data: Vec::new(),
        }));
        if c.ret.is_some() || c.out.is_some() {
            out.push(Record::Exit(Exit {
                thread: c.thread,
                ret: c.ret,
                out: c.out,
                ts: Some(c.ts_out),
                data: Vec::new(),
            }));
        }
        if i % 1000 == 999 {
            out.push(Record::Note(Note {
                pid: 1,
                text: "between".into(),
            }));
        }
    }
    out
}

#[test]
fn thread_coded_calls_round_trip() {
    // 1500 threads: more than one chunk may code, so the writer seals early.
    for (threads, n) in [(1, 2_000), (4, 60_000), (1_500, 6_000)] {
        let calls = thread_coded_calls(threads, n);
        let bytes = write_calls(&calls);
        let (got, warnings) = read_all(&bytes).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(got, expected_calls(&calls), "{threads} threads");
    }
}

#[test]
fn repeated_calls_of_interleaved_threads_cost_less_than_plain_records() {
    // Two threads each alternating malloc/free of their own blocks, interleaved at
    // random: the repeats are there per thread, not in the file's order, so zstd alone
    // does not see them.
    let mut calls = Vec::new();
    let mut done = [0u64; 2];
    let mut rand = xorshift(0x9e37_79b9_7f4a_7c15);
    for i in 0..200_000u64 {
        let seed = rand();
        let thread = (seed >> 40) as usize % 2;
        let k = done[thread];
        done[thread] += 1;
        let block = 0x7f00_0000_0000 + thread as u64 * 0x1000 + (k / 2 % 3) * 0x40;
        let allocates = k % 2 == 0;
        let c = CallRecord {
            thread: thread as u32,
            func: u32::from(!allocates),
            args: &[],
            stack: Some(u32::from(!allocates)),
            // Times as short as microseconds are for calls this fast.
            ts_in: i,
            ts_out: i + 1,
            ret: allocates.then_some(block),
            out: None,
        };
        let args = if allocates { vec![32] } else { vec![block] };
        calls.push((c, args));
    }
    let bytes = write_calls(&calls);
    let expected = expected_calls(&calls);
    // The same records as separate entries and timed exits, coded without prediction.
    let mut w = Writer::new(Vec::new(), &Meta::default()).unwrap();
    for r in &expected {
        w.push(r).unwrap();
    }
    let plain = w.finish().unwrap().0;
    // Random interleaving costs both the same; the rest is what prediction saves.
    assert!(
        bytes.len() * 3 < plain.len() * 2,
        "{} bytes thread-coded against {} plain",
        bytes.len(),
        plain.len()
    );
    assert_eq!(read_all(&bytes).unwrap().0, expected);
}

#[test]
fn damaged_thread_coded_chunks_are_errors_or_harmless_never_panics() {
    let bytes = write_calls(&thread_coded_calls(3, 300));
    for cut in 0..bytes.len() {
        let _ = read_all(&bytes[..cut]);
    }
    for i in FILE_HEADER_LEN..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x41;
        let _ = read_all(&b);
    }
}

/// A file whose one records chunk of `kind` holds `payload`.
fn file_with_chunk(kind: u8, payload: &[u8]) -> Vec<u8> {
    let empty = Writer::new(Vec::new(), &Meta::default()).unwrap();
    let head = empty.finish().unwrap().0;
    // Header and metadata chunk: everything before the end chunk, whose payload is two
    // one-byte varints.
    let mut file = head[..head.len() - CHUNK_HEADER_LEN - 2].to_vec();
    writer::write_chunk_for_test(&mut file, kind, payload);
    file
}

#[test]
fn malformed_call_chunks_are_errors_naming_the_problem() {
    let call = |e: &mut codec::Encoder| {
        e.u8(writer::tag::THREAD_CALL);
        e.uvar(8 + 3); // thread 3, not a recent one
        e.uvar(1); // function
        e.u8(writer::shape::EXIT | writer::shape::RET | 1);
        e.uvar(4 * 48); // argument: 48 from 0, zigzag, then the small-value bit
        e.uvar(8); // no stack
        e.uvar(4 * 7); // return value 7
    };
    let chunk = |records: &codec::Encoder, len: u64, times: &[u8]| {
        let mut p = codec::Encoder::default();
        p.uvar(len);
        p.buf.extend_from_slice(&records.buf);
        p.buf.extend_from_slice(times);
        p.buf
    };
    let mut one = codec::Encoder::default();
    call(&mut one);
    let n = one.buf.len() as u64;
    // The well-formed chunk reads.
    let good = file_with_chunk(CHUNK_CALLS, &chunk(&one, n, &[15 + 2]));
    let (got, _) = read_all(&good).unwrap();
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(matches!(&got[1], Record::Exit(x) if x.ret == Some(7) && x.ts == Some(3)));
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            file_with_chunk(CHUNK_RECORDS, &one.buf),
            "thread-coded call outside a call chunk",
        ),
        (
            file_with_chunk(CHUNK_CALLS, &chunk(&one, n + 1, &[])),
            "overruns",
        ),
        (
            file_with_chunk(CHUNK_CALLS, &chunk(&one, n, &[17, 0])),
            "time column holds more",
        ),
        (file_with_chunk(CHUNK_CALLS, &chunk(&one, n, &[])), "offset"),
    ];
    for (file, what) in cases {
        let err = read_all(&file)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains(what), "expected {what:?}, got {err:?}");
    }
    // More threads than one chunk may code.
    let mut many = codec::Encoder::default();
    for t in 0..=1024u64 {
        many.u8(writer::tag::THREAD_CALL);
        many.uvar(8 + t);
        many.uvar(1);
        many.u8(0);
        many.uvar(8);
    }
    let n = many.buf.len() as u64;
    let file = file_with_chunk(CHUNK_CALLS, &chunk(&many, n, &[0; 1025]));
    let err = read_all(&file).err().unwrap().to_string();
    assert!(err.contains("more than 1024 threads"), "{err}");
    // A call without a return whose time code gives it a duration.
    let mut void = codec::Encoder::default();
    void.u8(writer::tag::THREAD_CALL);
    void.uvar(8);
    void.uvar(1);
    void.u8(0);
    void.uvar(8);
    let n = void.buf.len() as u64;
    let file = file_with_chunk(CHUNK_CALLS, &chunk(&void, n, &[1]));
    let err = read_all(&file).err().unwrap().to_string();
    assert!(err.contains("without a return"), "{err}");
}

#[test]
fn version_six_call_records_still_read() {
    // Recorded by the agent engine of format version 6 (Call records, tag 14).
    let bytes = include_bytes!("../../fuzz/seeds/leaks-agent-v6.rlt");
    assert_eq!(u16::from_le_bytes([bytes[8], bytes[9]]), 6);
    let (got, warnings) = read_all(bytes).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let enters = got.iter().filter(|r| matches!(r, Record::Enter(_))).count();
    let outs = got
        .iter()
        .filter(|r| matches!(r, Record::Exit(Exit { out: Some(_), .. })))
        .count();
    // `rltrace info` of that file: 24 calls, one of them posix_memalign.
    assert_eq!((enters, outs), (24, 1));
}

/// Agent-coded calls of `coders` coders (each a thread's coding state; the last two are
/// one thread's, as after its ring changed hands), coded as the agent codes them, with
/// the records a reader must give back for them. Local stacks 0..6 are aliased (5 to no
/// stack), 7 never is.
fn agent_coded(n: u64, coders: u32) -> (Vec<u8>, Vec<Record>) {
    use rltrace_wire::coded::{get_coded_head, put_coded, Coder as AgentCoder, CODED_LEN};
    let mut w = Writer::new(Vec::new(), &Meta::default()).unwrap();
    let thread_of = |c: u32| c.min(coders.saturating_sub(2));
    let alias = |c: u32, local: u32| (local != 5).then_some(c * 10 + local);
    let mut states: Vec<(AgentCoder, u64, u64)> =
        (0..coders).map(|_| (AgentCoder::default(), 0, 0)).collect();
    for c in 0..coders {
        w.coder(c, thread_of(c)).unwrap();
        for local in 0..7 {
            w.stack_alias(c, local, alias(c, local)).unwrap();
        }
    }
    let mut rand = xorshift(0x5851_f42d_4c95_7f2du64);
    let mut expected = Vec::new();
    let mut ts = 1_000u64;
    for i in 0..n {
        let c = (rand() % u64::from(coders)) as u32;
        let (coder, last_key, _) = &mut states[c as usize];
        let ptr = 0x7f00_0000_0000 + u64::from(c) * 0x10_0000 + (rand() % 6) * 0x40;
        let (func, args, ret, out): (u8, Vec<u64>, Option<u64>, Option<u64>) = match rand() % 5 {
            0 => (0, vec![16 + i % 64], Some(ptr), None),
            1 => (4, vec![ptr], None, None),
            2 => (5, vec![0x7ffc_0000_0010, 64, 4096], Some(0), Some(ptr)),
            3 => (2, vec![ptr, rand() % 100_000], Some(ptr + 0x40), None),
            _ => (1, vec![u64::MAX, 1 << 63], Some(u64::MAX - 1), None),
        };
        let local = match rand() % 9 {
            8 => rltrace_wire::NO_STACK,
            l => l as u32,
        };
        ts += 1 + rand() % 400;
        let ts_in = ts;
        ts += rand() % 300;
        let mut a = [0; rltrace_wire::CALL_ARGS];
        a[..args.len()].copy_from_slice(&args);
        let call = rltrace_wire::Call {
            func,
            flags: ret.map_or(0, |_| rltrace_wire::CALL_RET)
                | out.map_or(0, |_| rltrace_wire::CALL_OUT),
            nargs: args.len() as u8,
            args: a,
            ret: ret.unwrap_or(0),
            out: out.unwrap_or(0),
            ts_in,
            ts_out: ts,
            stack: local,
        };
        let mut buf = [0u8; CODED_LEN];
        let len = put_coded(&mut buf, &call, coder, last_key);
        let h = get_coded_head(&buf[..len], states[c as usize].2).unwrap();
        states[c as usize].2 = h.key;
        w.coded_call(c, h.ts_in, h.key, h.exits, &buf[h.body - 1..], h.len + 1)
            .unwrap();
        let thread = thread_of(c);
        let stack = (local != rltrace_wire::NO_STACK)
            .then(|| alias(c, local).filter(|_| local < 7))
            .flatten();
        expected.push(Record::Enter(Enter {
            thread,
            ts: ts_in,
            func: u32::from(func),
            args,
            stack,
            data: Vec::new(),
        }));
        if h.exits {
            expected.push(Record::Exit(Exit {
                thread,
                ret,
                out,
                ts: Some(ts),
                data: Vec::new(),
            }));
        }
    }
    (w.finish().unwrap().0, expected)
}

#[test]
fn agent_coded_calls_read_back_across_chunks() {
    // 300,000 calls are about 3 MB before compression, so several sealed chunks: the
    // coders' states and the stack aliases carry over from one chunk to the next.
    let (bytes, expected) = agent_coded(300_000, 4);
    let mut r = Reader::new(bytes.as_slice()).unwrap();
    let mut got = Vec::new();
    while let Some(rec) = r.next_record().unwrap() {
        got.push(rec);
    }
    assert!(r.warnings().is_empty(), "{:?}", r.warnings());
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "records differ");
    // Definitions are not records: the summary counts only the calls.
    assert_eq!(r.summary().unwrap().records, 300_000);
}

#[test]
fn a_coded_call_of_an_undefined_coder_is_an_error_naming_it() {
    let mut w = Writer::new(Vec::new(), &Meta::default()).unwrap();
    // malloc(48) with no stack (its length byte first), for a coder never defined.
    let body = [5u8, 0, 0x61, 48, 8, 0];
    w.coded_call(7, 10, 20, true, &body, body.len()).unwrap();
    let bytes = w.finish().unwrap().0;
    let err = read_all(&bytes).unwrap_err().to_string();
    assert!(err.contains("coded call of undefined coder 7"), "{err}");
    assert!(err.contains("offset"), "{err}");
}

#[test]
fn damaged_agent_coded_chunks_are_errors_or_harmless_never_panics() {
    let (bytes, _) = agent_coded(400, 3);
    for cut in 0..bytes.len() {
        let _ = read_all(&bytes[..cut]);
    }
    for i in FILE_HEADER_LEN..bytes.len() {
        for flip in [0x01, 0x41, 0xff] {
            let mut b = bytes.clone();
            b[i] ^= flip;
            let _ = read_all(&b);
        }
    }
}

#[test]
fn a_coded_call_that_does_not_decode_drops_its_coders_later_calls_only() {
    let mut w = Writer::new(Vec::new(), &Meta::default()).unwrap();
    w.coder(0, 0).unwrap();
    w.coder(1, 1).unwrap();
    // malloc(48) returning a new pointer, with no stack: length byte, function, shape,
    // size code, stack code, the far value code and its distance.
    let good = [7u8, 0, 0x61, 96, 8, 17, 0x80, 0x40];
    let bad = [
        // No such function.
        &[5u8, 10, 0x61, 96, 8, 1][..],
        // An odd value code past the far one.
        &[4, 4, 0x01, 19, 8][..],
        // A byte left over after the stack code.
        &[5, 4, 0x01, 1, 8, 0][..],
        // Cut short: the far value's distance is missing.
        &[5, 0, 0x61, 96, 8, 17][..],
    ];
    for b in bad {
        // Coder 1's calls: fine, then this bad one, then fine again (dropped).
        w.coded_call(1, 100, 110, true, &good, good.len()).unwrap();
        w.coded_call(1, 120, 130, b[2] != 0x01, b, b.len()).unwrap();
        w.coded_call(1, 140, 150, true, &good, good.len()).unwrap();
        // Coder 0's: unaffected.
        w.coded_call(0, 200, 210, true, &good, good.len()).unwrap();
        // A new definition starts the coder afresh: its calls decode again.
        w.coder(1, 1).unwrap();
    }
    let bytes = w.finish().unwrap().0;
    let mut r = Reader::new(bytes.as_slice()).unwrap();
    let mut got = Vec::new();
    while let Some(rec) = r.next_record().unwrap() {
        got.push(rec);
    }
    // The file is whole: nothing is a warning, the skipped calls are notes.
    assert!(r.warnings().is_empty(), "{:?}", r.warnings());
    let warnings = r.notes().to_vec();
    let enters: Vec<(u32, u64)> = got
        .iter()
        .filter_map(|r| match r {
            Record::Enter(e) => Some((e.thread, e.ts)),
            _ => None,
        })
        .collect();
    let want: Vec<(u32, u64)> = (0..bad.len()).flat_map(|_| [(1, 100), (0, 200)]).collect();
    assert_eq!(enters, want);
    assert_eq!(warnings.len(), bad.len(), "{warnings:?}");
    for (w, what) in warnings.iter().zip([
        "function 10, not of the allocator family",
        "bad value code 19",
        "ends before its length",
        "runs past the end",
    ]) {
        assert!(w.contains(what), "{what}: {w}");
        assert!(w.contains("coder 1"), "{w}");
        assert!(w.contains("byte "), "{w}");
    }
}

#[test]
fn notes_of_calls_that_do_not_decode_are_capped() {
    let mut w = Writer::new(Vec::new(), &Meta::default()).unwrap();
    // One coder, defined again and again, each time with a call of no such function.
    let bad = [5u8, 10, 0x61, 96, 8, 1];
    for _ in 0..40 {
        w.coder(3, 0).unwrap();
        w.coded_call(3, 100, 110, true, &bad, bad.len()).unwrap();
    }
    let bytes = w.finish().unwrap().0;
    let mut r = Reader::new(bytes.as_slice()).unwrap();
    while r.next_record().unwrap().is_some() {}
    let notes = r.notes();
    assert_eq!(notes.len(), 17, "{notes:?}");
    assert!(notes[16].contains("more coders"), "{}", notes[16]);
}
