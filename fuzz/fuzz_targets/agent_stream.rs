//! The recorder decodes what the preload agent sends, and a program can send anything to
//! its own socket: any message must decode or fail cleanly, without panic or unbounded
//! allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rltrace::record::agent::check_message;

fuzz_target!(|data: &[u8]| {
    if let Some((&kind, payload)) = data.split_first() {
        let _ = check_message(kind, payload);
    }
});
