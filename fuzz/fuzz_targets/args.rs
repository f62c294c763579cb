//! Showing a recorded call's arguments by a prototype: the values and captures come from
//! an untrusted recording (any count, any capture index, any format text, stack words cut
//! short), and the prototype from the built-in table or a recording's metadata. Any input
//! must render without panic. Input: a byte choosing a built-in prototype (or, if 255,
//! one read from the text after the next NUL), a value count, the values, then captures
//! (index, flags, length, bytes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rltrace::format::ArgData;
use rltrace_wire::protos::{Proto, Ty, PROTOS};
use std::sync::Mutex;

/// Each distinct argument list, made `'static` once (a `Proto` holds a static slice) and
/// kept reachable, so that neither memory grows nor the leak checker objects.
fn kept(args: Vec<Ty>) -> &'static [Ty] {
    static KEPT: Mutex<Vec<&'static [Ty]>> = Mutex::new(Vec::new());
    let mut kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(k) = kept.iter().find(|k| ***k == args[..]) {
        return k;
    }
    let k: &'static [Ty] = Box::leak(args.into_boxed_slice());
    kept.push(k);
    k
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    let loaded;
    let mut rest = rest;
    let proto: &Proto = if pick == 255 {
        let Some(end) = rest.iter().position(|&b| b == 0) else { return };
        let text = String::from_utf8_lossy(&rest[..end]).into_owned();
        rest = &rest[end + 1..];
        let Some(l) = rltrace::protos::from_text(&text).into_iter().next() else { return };
        loaded = Proto {
            name: "fuzzed",
            args: kept(l.args),
            ret: l.ret,
        };
        &loaded
    } else {
        &PROTOS[usize::from(pick) % PROTOS.len()]
    };
    let Some((&n, mut rest)) = rest.split_first() else { return };
    let mut values = Vec::new();
    for _ in 0..n % 17 {
        let Some(v) = rest.get(..8) else { return };
        values.push(u64::from_le_bytes(v.try_into().unwrap_or_default()));
        rest = &rest[8..];
    }
    let mut captures = Vec::new();
    while let [arg, flags, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        captures.push(ArgData {
            arg: *arg,
            truncated: flags & 1 != 0,
            bytes: tail[..len].to_vec(),
        });
        rest = &tail[len..];
    }
    let _ = rltrace::render::typed_args(proto, &values, &captures);
});
