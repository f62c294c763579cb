//! Reading `/proc/PID/maps` and friends.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

/// One line of `/proc/PID/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// Start address.
    pub start: u64,
    /// End address (exclusive).
    pub end: u64,
    /// Readable.
    pub read: bool,
    /// Writable.
    pub write: bool,
    /// Executable.
    pub exec: bool,
    /// File offset of `start`.
    pub offset: u64,
    /// Device and inode identify the file even when its path is reused.
    pub dev_inode: (String, u64),
    /// Path or pseudo-name (`[stack]`, `[vdso]`), empty for anonymous memory.
    pub path: String,
}

impl Mapping {
    /// True for mappings of a regular file.
    pub fn is_file(&self) -> bool {
        self.dev_inode.1 != 0 && self.path.starts_with('/')
    }

    /// The `/proc/PID/map_files` entry that opens exactly the mapped file, even if the
    /// path on disk was replaced or deleted since.
    pub fn map_file(&self, pid: u32) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{pid}/map_files/{:x}-{:x}",
            self.start, self.end
        ))
    }
}

/// Parses the text of a maps file; malformed lines are skipped.
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Mapping> {
    let mut it = line.splitn(6, ' ');
    let range = it.next()?;
    let perms = it.next()?.as_bytes();
    let offset = u64::from_str_radix(it.next()?, 16).ok()?;
    let dev = it.next()?.to_string();
    let inode = it.next()?.parse().ok()?;
    let path = it.next().unwrap_or("").trim_start().to_string();
    let (s, e) = range.split_once('-')?;
    Some(Mapping {
        start: u64::from_str_radix(s, 16).ok()?,
        end: u64::from_str_radix(e, 16).ok()?,
        read: perms.first() == Some(&b'r'),
        write: perms.get(1) == Some(&b'w'),
        exec: perms.get(2) == Some(&b'x'),
        offset,
        dev_inode: (dev, inode),
        path,
    })
}

/// Reads and parses `/proc/PID/maps`.
pub fn read_maps(pid: u32) -> std::io::Result<Vec<Mapping>> {
    Ok(parse_maps(&std::fs::read_to_string(format!(
        "/proc/{pid}/maps"
    ))?))
}

/// The command line of a process, one word per argument (empty if unreadable).
pub fn cmdline(pid: u32) -> Vec<OsString> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|w| !w.is_empty())
                .map(|w| OsString::from_vec(w.to_vec()))
                .collect()
        })
        .unwrap_or_default()
}

/// The thread-group id of a task, from `/proc/TID/status`.
pub fn tgid_of(tid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The program's entry point (`AT_ENTRY` in `/proc/PID/auxv`).
pub fn auxv_entry(pid: u32) -> Option<u64> {
    let auxv = std::fs::read(format!("/proc/{pid}/auxv")).ok()?;
    auxv.chunks_exact(16).find_map(|kv| {
        let word = |b: &[u8]| {
            let mut w = [0u8; 8];
            w.copy_from_slice(b);
            u64::from_le_bytes(w)
        };
        (word(&kv[..8]) == libc::AT_ENTRY).then(|| word(&kv[8..]))
    })
}

/// True if `sig` is pending for thread `tid` itself (`SigPnd` in `/proc/TID/status`).
pub fn thread_signal_pending(tid: u32, sig: i32) -> bool {
    signal_mask_has(tid, "SigPnd:", sig)
}

/// True if process `pid` has a handler installed for signal `sig` (from `SigCgt` in
/// `/proc/PID/status`); false if not or unknown.
pub fn catches_signal(pid: u32, sig: i32) -> bool {
    signal_mask_has(pid, "SigCgt:", sig)
}

/// Whether the signal mask `field` of `/proc/TASK/status` has `sig` (false if unknown).
fn signal_mask_has(task: u32, field: &str, sig: i32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{task}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .is_some_and(|mask| (1..=64).contains(&sig) && mask & (1 << (sig - 1)) != 0)
}

/// True once a process no longer runs (gone, or a zombie awaiting its parent).
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_none_or(|state| state == 'Z' || state == 'X'),
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_file_and_anonymous_lines() {
        let text = "55d0c0a00000-55d0c0a01000 r-xp 00001000 fe:01 1234                       /usr/bin/true\n\
                    7ffd1000-7ffd2000 rw-p 00000000 00:00 0                          [stack]\n\
                    7f0000000000-7f0000001000 ---p 00000000 00:00 0 \n";
        let m = parse_maps(text);
        assert_eq!(m.len(), 3);
        assert!(m[0].exec && m[0].is_file());
        assert_eq!(m[0].offset, 0x1000);
        assert_eq!(m[0].path, "/usr/bin/true");
        assert_eq!(m[1].path, "[stack]");
        assert!(!m[1].is_file());
        assert_eq!(m[2].path, "");
    }

    #[test]
    fn own_maps_have_an_executable_file() {
        let m = read_maps(std::process::id()).unwrap();
        assert!(m.iter().any(|m| m.exec && m.is_file()));
        assert_eq!(tgid_of(std::process::id()), Some(std::process::id()));
    }
}
