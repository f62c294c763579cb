//! Built-in prototypes (the table lives in the `wire` crate, which the agent shares) and
//! how replay quotes captured strings.

pub use rltrace_wire::protos::{lookup, Proto, Ty};

/// `bytes` as a C string literal, ltrace-style (`"x\n"`), with `...` if `truncated`.
pub fn quote(bytes: &[u8], truncated: bool) -> String {
    let mut s = String::with_capacity(bytes.len() + 2);
    s.push('"');
    for &b in bytes {
        match b {
            b'"' => s.push_str("\\\""),
            b'\\' => s.push_str("\\\\"),
            b'\n' => s.push_str("\\n"),
            b'\t' => s.push_str("\\t"),
            b'\r' => s.push_str("\\r"),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\{b:03o}")),
        }
    }
    s.push('"');
    if truncated {
        s.push_str("...");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use rltrace_wire::protos::PROTOS;
    use Ty::*;

    #[test]
    fn table_is_sorted_and_consistent() {
        for w in PROTOS.windows(2) {
            assert!(w[0].name < w[1].name, "{} before {}", w[0].name, w[1].name);
        }
        for p in PROTOS {
            assert!(p.args.len() <= 6, "{}", p.name);
            for a in p.args {
                if let Buf(i) = a {
                    assert!((*i as usize) < p.args.len(), "{}", p.name);
                }
            }
        }
        assert_eq!(lookup("write").unwrap().args, &[Int, Buf(2), Size]);
        assert!(lookup("no_such").is_none());
    }

    #[test]
    fn quoting_is_ltrace_like() {
        assert_eq!(quote(b"x\n", false), "\"x\\n\"");
        assert_eq!(quote(b"a\"b\\\x01", true), "\"a\\\"b\\\\\\001\"...");
    }
}
