//! The recording reader and the analyses behind replay must turn any byte string into
//! records or a clean error: no panic, no unbounded allocation, no hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rltrace::analyze::leaks::LeakAnalysis;
use rltrace::analyze::{CallPairer, Defs};
use rltrace::format::Reader;

fuzz_target!(|data: &[u8]| {
    let Ok(mut reader) = Reader::new(data) else { return };
    let mut defs = Defs::default();
    let mut pairer = CallPairer::default();
    let mut leaks = LeakAnalysis::default();
    while let Ok(Some(rec)) = reader.next_record() {
        defs.learn(&rec);
        if let Some(step) = pairer.step(&rec, &defs) {
            leaks.step(&step, &defs);
        }
    }
    let _ = leaks.finish();
});
