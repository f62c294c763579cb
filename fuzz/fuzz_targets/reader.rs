//! The recording reader and the analyses behind replay must turn any byte string into
//! records or a clean error: no panic, no unbounded allocation, no hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rltrace::analyze::leaks::analyze;
use rltrace::format::Reader;

fuzz_target!(|data: &[u8]| {
    let Ok(mut reader) = Reader::new(data) else { return };
    let _ = analyze(&mut reader);
});
