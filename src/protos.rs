//! Prototypes: the built-in table (in the `wire` crate, which the agent shares), those
//! users load from ltrace.conf files (`record -F`), which take precedence and travel in
//! the recording, and how replay quotes captured strings.

use std::collections::HashMap;
use std::sync::RwLock;

pub use rltrace_wire::protos::{Proto, Ty};

/// Prototypes loaded from ltrace.conf files, by name (leaked: loaded once per process).
static USER: RwLock<Option<HashMap<String, &'static Proto>>> = RwLock::new(None);

/// The prototype of `name`: a loaded one, else the built-in one.
pub fn lookup(name: &str) -> Option<&'static Proto> {
    let user = USER.read().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = user.as_ref().and_then(|u| u.get(name)) {
        return Some(p);
    }
    rltrace_wire::protos::lookup(name)
}

/// A prototype loaded from an ltrace.conf file (not a built-in one).
pub fn loaded(name: &str) -> Option<&'static Proto> {
    let user = USER.read().unwrap_or_else(|p| p.into_inner());
    user.as_ref().and_then(|u| u.get(name).copied())
}

/// A prototype read at run time: from an ltrace.conf file, DWARF, or a recording.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loaded {
    /// Symbol name.
    pub name: String,
    /// Argument types, in declaration order.
    pub args: Vec<Ty>,
    /// Return type.
    pub ret: Ty,
}

/// Prototypes as stored in a recording's metadata: one per line, `name ret arg...`.
pub fn to_text(protos: &[Loaded]) -> String {
    let mut out = String::new();
    for p in protos {
        out.push_str(&p.name);
        for t in std::iter::once(&p.ret).chain(&p.args) {
            out.push(' ');
            out.push_str(&token(*t));
        }
        out.push('\n');
    }
    out
}

/// Reads what [`to_text`] wrote; lines that do not parse are left out.
pub fn from_text(text: &str) -> Vec<Loaded> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(name), Some(ret)) = (words.next(), words.next().and_then(untoken)) else {
            continue;
        };
        let args: Option<Vec<Ty>> = words.map(untoken).collect();
        match args {
            Some(args) if rltrace_wire::protos::fits_registers(&args) => out.push(Loaded {
                name: name.to_string(),
                args,
                ret,
            }),
            _ => {}
        }
    }
    out
}

fn token(t: Ty) -> String {
    match t {
        Ty::Int => "int".into(),
        Ty::Long => "long".into(),
        Ty::Size => "size".into(),
        Ty::Hex => "hex".into(),
        Ty::Ptr => "ptr".into(),
        Ty::Str => "str".into(),
        Ty::Buf(n) => format!("buf{n}"),
        Ty::Char => "char".into(),
        Ty::Format => "format".into(),
        Ty::Void => "void".into(),
        Ty::Float => "float".into(),
        Ty::Double => "double".into(),
    }
}

fn untoken(w: &str) -> Option<Ty> {
    Some(match w {
        "int" => Ty::Int,
        "long" => Ty::Long,
        "size" => Ty::Size,
        "hex" => Ty::Hex,
        "ptr" => Ty::Ptr,
        "str" => Ty::Str,
        "char" => Ty::Char,
        "format" => Ty::Format,
        "void" => Ty::Void,
        "float" => Ty::Float,
        "double" => Ty::Double,
        b => match b.strip_prefix("buf")?.parse::<u8>().ok()? {
            n if n < 6 => Ty::Buf(n),
            _ => return None,
        },
    })
}

/// Makes `protos` take precedence over the built-in table in [`lookup`], for the rest of
/// the process (they are leaked: a handful, loaded once).
pub fn install(protos: &[Loaded]) {
    let mut user = USER.write().unwrap_or_else(|p| p.into_inner());
    let map = user.get_or_insert_with(HashMap::new);
    for p in protos {
        let proto = Proto {
            name: Box::leak(p.name.clone().into_boxed_str()),
            args: Box::leak(p.args.clone().into_boxed_slice()),
            ret: p.ret,
        };
        map.insert(p.name.clone(), Box::leak(Box::new(proto)));
    }
}

/// How a function's return value says that it failed (`-c` counts those calls as errors).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// -1 (`errno` set): the system call wrappers, and `EOF` from stdio.
    MinusOne,
    /// A null pointer: functions returning what they allocate or open.
    Null,
    /// Any value but 0: an error number (`pthread_*`) or code (`getaddrinfo`).
    Nonzero,
}

/// Functions whose failure their return value tells, by name (sorted). Not those for
/// which the same value is an ordinary answer (`getenv`'s null, `strcmp`'s -1).
const FAILURES: &[(&str, Failure)] = {
    use Failure::*;
    &[
        ("accept", MinusOne),
        ("accept4", MinusOne),
        ("access", MinusOne),
        ("bind", MinusOne),
        ("chdir", MinusOne),
        ("clock_gettime", MinusOne),
        ("close", MinusOne),
        ("close_range", MinusOne),
        ("connect", MinusOne),
        ("dlclose", Nonzero),
        ("dlopen", Null),
        ("dup", MinusOne),
        ("dup2", MinusOne),
        ("epoll_create1", MinusOne),
        ("epoll_ctl", MinusOne),
        ("epoll_wait", MinusOne),
        ("eventfd", MinusOne),
        ("execv", MinusOne),
        ("execve", MinusOne),
        ("execvp", MinusOne),
        ("fclose", MinusOne),
        ("fcntl", MinusOne),
        ("fdopen", Null),
        ("fflush", MinusOne),
        ("fileno", MinusOne),
        ("fopen", Null),
        ("fopen64", Null),
        ("fork", MinusOne),
        ("fputc", MinusOne),
        ("fputs", MinusOne),
        ("fstat", MinusOne),
        ("fsync", MinusOne),
        ("getaddrinfo", Nonzero),
        ("getcwd", Null),
        ("getrandom", MinusOne),
        ("gettimeofday", MinusOne),
        ("ioctl", MinusOne),
        ("kill", MinusOne),
        ("listen", MinusOne),
        ("lseek", MinusOne),
        ("lstat", MinusOne),
        ("madvise", MinusOne),
        ("mkdir", MinusOne),
        ("mmap", MinusOne),
        ("mmap64", MinusOne),
        ("mprotect", MinusOne),
        ("munmap", MinusOne),
        ("nanosleep", MinusOne),
        ("open", MinusOne),
        ("open64", MinusOne),
        ("openat", MinusOne),
        ("opendir", Null),
        ("pipe", MinusOne),
        ("pipe2", MinusOne),
        ("poll", MinusOne),
        ("pread", MinusOne),
        ("pthread_cancel", Nonzero),
        ("pthread_cond_broadcast", Nonzero),
        ("pthread_cond_signal", Nonzero),
        ("pthread_cond_wait", Nonzero),
        ("pthread_create", Nonzero),
        ("pthread_detach", Nonzero),
        ("pthread_join", Nonzero),
        ("pthread_key_create", Nonzero),
        ("pthread_kill", Nonzero),
        ("pthread_mutex_destroy", Nonzero),
        ("pthread_mutex_init", Nonzero),
        ("pthread_mutex_lock", Nonzero),
        ("pthread_mutex_trylock", Nonzero),
        ("pthread_mutex_unlock", Nonzero),
        ("pthread_once", Nonzero),
        ("pthread_rwlock_rdlock", Nonzero),
        ("pthread_rwlock_unlock", Nonzero),
        ("pthread_rwlock_wrlock", Nonzero),
        ("pthread_setspecific", Nonzero),
        ("pwrite", MinusOne),
        ("raise", Nonzero),
        ("read", MinusOne),
        ("readlink", MinusOne),
        ("realpath", Null),
        ("recv", MinusOne),
        ("recvfrom", MinusOne),
        ("remove", MinusOne),
        ("rename", MinusOne),
        ("rmdir", MinusOne),
        ("select", MinusOne),
        ("send", MinusOne),
        ("sendto", MinusOne),
        ("setenv", MinusOne),
        ("setsockopt", MinusOne),
        ("shutdown", MinusOne),
        ("sigaction", MinusOne),
        ("sigaltstack", MinusOne),
        ("sigprocmask", MinusOne),
        ("socket", MinusOne),
        ("socketpair", MinusOne),
        ("stat", MinusOne),
        ("strdup", Null),
        ("strndup", Null),
        ("system", MinusOne),
        ("unlink", MinusOne),
        ("unsetenv", MinusOne),
        ("usleep", MinusOne),
        ("waitpid", MinusOne),
        ("write", MinusOne),
        ("writev", MinusOne),
    ]
};

/// How `name`'s return value tells a failure, if it does.
pub fn failure(name: &str) -> Option<Failure> {
    FAILURES
        .binary_search_by(|(n, _)| n.cmp(&name))
        .ok()
        .map(|i| FAILURES[i].1)
}

/// True if `ret`, returned by a call of `name`, says that the call failed; `ret_ty` is
/// the width its prototype gives the value.
pub fn failed(name: &str, ret_ty: Ty, ret: u64) -> bool {
    let minus_one = match ret_ty {
        Ty::Int | Ty::Char => ret as u32 == u32::MAX,
        _ => ret == u64::MAX,
    };
    match failure(name) {
        Some(Failure::MinusOne) => minus_one,
        Some(Failure::Null) => ret == 0,
        Some(Failure::Nonzero) => match ret_ty {
            Ty::Int => ret as u32 != 0,
            _ => ret != 0,
        },
        None => false,
    }
}

/// Why an ltrace.conf file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfError {
    /// The file cannot be read.
    #[error("cannot read prototype file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// What an ltrace.conf file gave.
#[derive(Debug, Default)]
pub struct Conf {
    /// The prototypes understood.
    pub protos: Vec<Loaded>,
    /// Declarations skipped, with their line numbers and why.
    pub skipped: Vec<(usize, String)>,
}

/// Reads prototypes in ltrace.conf(5) syntax (`int puts(string);`, `long write(int,
/// string[arg3], ulong);`, `typedef`s). Types are mapped to what rltrace captures and
/// shows: integers, flags (`hex`, `octal`, `enum`) in hex, `string`s (bounded by an
/// argument with `string[argN]`), `format`, `char`, `float` and `double` (from the vector
/// registers); pointers, structs, arrays and `file` as addresses. A declaration rltrace
/// cannot parse is skipped, as is one with arguments passed on the stack.
pub fn parse_conf(text: &str) -> Conf {
    let mut conf = Conf::default();
    let mut typedefs: HashMap<String, Ty> = HashMap::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with(';') {
            continue;
        }
        let Some(decl) = declaration(line) else {
            conf.skipped
                .push((n + 1, "no declaration ending in ';'".into()));
            continue;
        };
        if let Some(rest) = decl.strip_prefix("typedef ") {
            match rest.split_once('=') {
                Some((name, ty)) => match conf_type(ty.trim(), &typedefs) {
                    Ok(t) => {
                        typedefs.insert(name.trim().to_string(), t);
                    }
                    Err(why) => conf.skipped.push((n + 1, why)),
                },
                None => conf.skipped.push((n + 1, "typedef without '='".into())),
            }
            continue;
        }
        match function(decl, &typedefs) {
            Ok(p) => conf.protos.push(p),
            Err(why) => conf.skipped.push((n + 1, why)),
        }
    }
    conf
}

/// The declaration of a line: up to the first `;` outside parentheses (the rest is a
/// comment).
fn declaration(line: &str) -> Option<&str> {
    let mut depth = 0i32;
    for (i, c) in line.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ';' if depth == 0 => return Some(line[..i].trim()),
            _ => {}
        }
    }
    None
}

/// Splits at commas outside parentheses and brackets.
fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' if depth == 0 => {
                out.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(s[start..].trim());
    out
}

fn function(decl: &str, typedefs: &HashMap<String, Ty>) -> Result<Loaded, String> {
    // `RET NAME(ARGS)`: the argument list is the last parenthesised group; the name is
    // the identifier right before it, and the return type whatever precedes the name.
    let body = decl
        .strip_suffix(')')
        .ok_or_else(|| "no argument list".to_string())?;
    let mut depth = 0i32;
    let mut open = None;
    for (i, c) in body.char_indices().rev() {
        match c {
            ')' => depth += 1,
            '(' if depth == 0 => {
                open = Some(i);
                break;
            }
            '(' => depth -= 1,
            _ => {}
        }
    }
    let open = open.ok_or_else(|| "unbalanced parentheses".to_string())?;
    let head = body[..open].trim_end();
    let name_start = head
        .char_indices()
        .rev()
        .find(|&(_, c)| !(c.is_ascii_alphanumeric() || c == '_'))
        .map_or(0, |(i, c)| i + c.len_utf8());
    let name = &head[name_start..];
    let ret = head[..name_start].trim();
    if name.is_empty() || ret.is_empty() {
        return Err("no function name or return type".into());
    }
    let ret = conf_type(ret, typedefs)?;
    let args_text = body[open + 1..].trim();
    let mut args = Vec::new();
    if !args_text.is_empty() && args_text != "void" {
        for a in split_top(args_text) {
            args.push(conf_type(a, typedefs)?);
        }
    }
    if !rltrace_wire::protos::fits_registers(&args) {
        return Err("more than six integer or eight floating-point arguments".into());
    }
    if let Some(Ty::Buf(i)) = args
        .iter()
        .find(|t| matches!(t, Ty::Buf(i) if *i as usize >= args.len()))
    {
        return Err(format!(
            "string length names argument {} of {}",
            i + 1,
            args.len()
        ));
    }
    Ok(Loaded {
        name: name.to_string(),
        args,
        ret,
    })
}

fn conf_type(t: &str, typedefs: &HashMap<String, Ty>) -> Result<Ty, String> {
    // `+` marks an out-parameter (shown at return by ltrace): its value at entry is shown.
    let t = t.trim().trim_start_matches('+').trim();
    if t.ends_with('*') {
        return Ok(Ty::Ptr);
    }
    let (word, inner) = match t.split_once(['(', '[']) {
        Some((w, rest)) => (w.trim(), Some(rest)),
        None => (t, None),
    };
    Ok(match word {
        "void" => Ty::Void,
        "int" | "short" | "bool" | "enum" => Ty::Int,
        "long" => Ty::Long,
        "uint" | "ushort" | "ulong" | "size_t" => Ty::Size,
        "hex" | "octal" | "oct" => Ty::Hex,
        "char" => Ty::Char,
        "addr" | "file" | "struct" | "array" => Ty::Ptr,
        "format" => Ty::Format,
        "float" => Ty::Float,
        "double" => Ty::Double,
        "string" | "string0" => match inner.map(|r| r.trim_end_matches([')', ']']).trim()) {
            Some(len) if len.starts_with("arg") => match len[3..].parse::<u8>() {
                Ok(n) if (1..=6).contains(&n) => Ty::Buf(n - 1),
                _ => return Err(format!("string length {len:?}")),
            },
            _ => Ty::Str,
        },
        other => match typedefs.get(other) {
            Some(&ty) => ty,
            None => return Err(format!("unknown type {other:?}")),
        },
    })
}

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
    fn ltrace_conf_declarations_are_read() {
        let conf = parse_conf(
            "; a comment\n\
             typedef in_addr = struct(hex(uint));\n\
             int inet_aton(string, +in_addr*);\n\
             hex(uint) inet_addr(string);   ; trailing comment\n\
             long write(int, string[arg3], ulong);\n\
             int open(string,int,octal);\n\
             int mvprintw(int, int, format);\n\
             void bfd_init();\n\
             double pow(double, double);\n\
             int broken(\n\
             addr lfind(addr, addr, addr, ulong, addr);\n",
        );
        let got: Vec<(&str, Vec<Ty>, Ty)> = conf
            .protos
            .iter()
            .map(|p| (p.name.as_str(), p.args.clone(), p.ret))
            .collect();
        assert_eq!(
            got,
            vec![
                ("inet_aton", vec![Str, Ptr], Int),
                ("inet_addr", vec![Str], Hex),
                ("write", vec![Int, Buf(2), Size], Long),
                ("open", vec![Str, Int, Hex], Int),
                ("mvprintw", vec![Int, Int, Format], Int),
                ("bfd_init", vec![], Void),
                ("pow", vec![Double, Double], Double),
                ("lfind", vec![Ptr, Ptr, Ptr, Size, Ptr], Ptr),
            ]
        );
        let lines: Vec<usize> = conf.skipped.iter().map(|s| s.0).collect();
        assert_eq!(lines, [10], "{:?}", conf.skipped);
        // Seven integer arguments: the seventh is on the stack. Seven integers and eight
        // doubles fit no better; six and eight do.
        let conf = parse_conf(
            "int f(int,int,int,int,int,int,int);
             int g(int,int,int,int,int,int,int,double,double,double,double,double,double,double,double);
             int h(int,int,int,int,int,int,double,double,double,double,double,double,double,double);
",
        );
        assert_eq!(conf.skipped.iter().map(|s| s.0).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(conf.protos[0].args.len(), 14);
        // The stored text form keeps floating-point types.
        assert_eq!(from_text(&to_text(&conf.protos)), conf.protos);
        // Not ASCII before the name: refused, not a panic on a char boundary.
        assert_eq!(parse_conf("int é(int);\nint «x»(int);\n").skipped.len(), 2);
    }

    #[test]
    fn the_systems_ltrace_conf_parses_if_present() {
        // Debian's /etc/ltrace.conf: almost every declaration is understood.
        let Ok(text) = std::fs::read_to_string("/etc/ltrace.conf") else {
            return;
        };
        let conf = parse_conf(&text);
        assert!(conf.protos.len() > 300, "{}", conf.protos.len());
        assert!(
            conf.skipped.len() * 10 < conf.protos.len(),
            "{:?}",
            conf.skipped
        );
    }

    #[test]
    fn table_is_sorted_and_consistent() {
        for w in PROTOS.windows(2) {
            assert!(w[0].name < w[1].name, "{} before {}", w[0].name, w[1].name);
        }
        for p in PROTOS {
            assert!(rltrace_wire::protos::fits_registers(p.args), "{}", p.name);
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
    fn failures_are_known_for_prototyped_functions_only() {
        assert!(FAILURES.windows(2).all(|w| w[0].0 < w[1].0));
        for (name, _) in FAILURES {
            assert!(lookup(name).is_some(), "{name}");
        }
        assert!(failed("open", Int, u32::MAX as u64));
        assert!(!failed("open", Int, 3));
        assert!(failed("read", Long, u64::MAX));
        assert!(failed("fopen", Ptr, 0));
        assert!(failed("pthread_join", Int, 3));
        assert!(!failed("strcmp", Int, u32::MAX as u64));
        assert!(!failed("getenv", Ptr, 0));
    }

    #[test]
    fn quoting_is_ltrace_like() {
        assert_eq!(quote(b"x\n", false), "\"x\\n\"");
        assert_eq!(quote(b"a\"b\\\x01", true), "\"a\\\"b\\\\\\001\"...");
    }
}
