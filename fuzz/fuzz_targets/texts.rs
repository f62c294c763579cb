//! Text that reaches rltrace from users and recordings: ltrace.conf files (`-F`), the
//! prototypes and `-e` chains a recording's metadata carries (replay reads them from
//! untrusted files), and printf formats the program passes. Any input must parse or be
//! refused without panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = rltrace::protos::parse_conf(&text);
    let _ = rltrace::protos::from_text(&text);
    let chains: Vec<&str> = text.split('\n').collect();
    if let Ok(mut s) = rltrace::select::Selection::parse_calls(&chains) {
        let _ = s.selects("write", "prog", true);
    }
    let _ = rltrace_wire::protos::string_varargs(data, (1, 5), 8);
    rltrace_wire::protos::places(data, (2, 4), 7, |_, _| {});
});
