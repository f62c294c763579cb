//! The extent of the stack a hook runs on, so that the unwinder and the trampoline read
//! only mapped memory. A thread's own stack is not the only one: coroutines (`makecontext`,
//! hand-rolled context switches) and signal alternate stacks are mappings of their own,
//! possibly small and next to unmapped pages. The mapping containing the stack pointer is
//! looked up in `/proc/self/maps` and cached per thread (a few at a time, for programs that
//! switch between coroutines).
//!
//! The lookup reads the file with raw system calls into a small buffer: hooks may run in
//! signal handlers and on small stacks.

use std::cell::Cell;

/// Mappings remembered per thread.
const CACHED: usize = 4;

thread_local! {
    static CACHE: Cell<[(u64, u64); CACHED]> = const { Cell::new([(0, 0); CACHED]) };
}

/// The mapped range `[start, end)` that holds `addr`, if any.
pub fn bounds(addr: u64) -> Option<(u64, u64)> {
    let mut cache = CACHE.with(|c| c.get());
    if let Some(&r) = cache.iter().find(|(s, e)| (*s..*e).contains(&addr)) {
        return Some(r);
    }
    let r = lookup(addr)?;
    // Most recent first; the oldest falls off.
    cache.copy_within(0..CACHED - 1, 1);
    cache[0] = r;
    CACHE.with(|c| c.set(cache));
    Some(r)
}

/// Scans `/proc/self/maps` for the line whose range holds `addr`. Adjacent readable
/// mappings are joined, since a read may cross from one into the next.
fn lookup(addr: u64) -> Option<(u64, u64)> {
    // SAFETY: open with a NUL-terminated path; the descriptor is closed below.
    let fd = unsafe {
        libc::open(
            c"/proc/self/maps".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    let mut buf = [0u8; 512];
    let mut p = Parser::default();
    let mut found: Option<(u64, u64)> = None;
    'read: loop {
        // SAFETY: reads into `buf`, valid for its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        for &b in &buf[..n as usize] {
            if let Some((s, e, readable)) = p.feed(b) {
                match found {
                    // A readable mapping that continues the one found extends it.
                    Some((fs, fe)) if s == fe && readable => found = Some((fs, e)),
                    Some(_) => break 'read,
                    None if (s..e).contains(&addr) && readable => found = Some((s, e)),
                    None => {}
                }
            }
        }
    }
    // SAFETY: closes the descriptor opened above (the raw call, not the agent's `close`).
    unsafe { libc::syscall(libc::SYS_close, fd) };
    found
}

/// A streaming parser of maps lines: `start-end perms ...`.
#[derive(Default)]
struct Parser {
    field: u8,
    start: u64,
    end: u64,
    readable: bool,
}

impl Parser {
    /// Takes one byte; at the end of a line, returns its range and whether it is readable.
    fn feed(&mut self, b: u8) -> Option<(u64, u64, bool)> {
        if b == b'\n' {
            let r = (self.start, self.end, self.readable);
            *self = Parser::default();
            return Some(r);
        }
        match (self.field, b) {
            (0, b'-') => self.field = 1,
            (1, b' ') => self.field = 2,
            (2, b'r') => {
                self.readable = true;
                self.field = 3;
            }
            (2, _) => self.field = 3,
            (0, _) => self.start = self.start.wrapping_shl(4) | hex(b),
            (1, _) => self.end = self.end.wrapping_shl(4) | hex(b),
            _ => {}
        }
        None
    }
}

fn hex(b: u8) -> u64 {
    match b {
        b'0'..=b'9' => (b - b'0') as u64,
        b'a'..=b'f' => (b - b'a' + 10) as u64,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines_parse() {
        let mut p = Parser::default();
        let mut got = Vec::new();
        for &b in
            b"7ffd1000-7ffd3000 rw-p 00000000 00:00 0   [stack]\n55aa0000-55aa1000 ---p 0 0:0 0\n"
        {
            got.extend(p.feed(b));
        }
        assert_eq!(
            got,
            [
                (0x7ffd1000, 0x7ffd3000, true),
                (0x55aa0000, 0x55aa1000, false)
            ]
        );
    }

    #[test]
    fn the_current_stack_is_found() {
        let x = 0u64;
        let a = &x as *const u64 as u64;
        let (s, e) = bounds(a).unwrap();
        assert!(s <= a && a < e);
        // Cached: the same answer without a lookup.
        assert_eq!(bounds(a), Some((s, e)));
    }
}
