//! Built-in prototypes of common C library functions: what is captured at a call's entry
//! (strings, buffers) and how replay shows arguments and return values. Shared by the
//! agent (which captures in-process) and the recorder and replay. Functions not listed
//! have no prototype: their integer registers are shown in hex.

/// How one argument (or a return value) is captured and shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ty {
    /// `int` and other 32-bit signed values: decimal.
    Int,
    /// `long`, `ssize_t`, `off_t`: signed decimal.
    Long,
    /// `size_t` and other unsigned values: decimal.
    Size,
    /// Flags and modes: hex.
    Hex,
    /// A pointer shown as an address (`nil` for null).
    Ptr,
    /// A NUL-terminated string, captured at entry.
    Str,
    /// A buffer whose length is the argument with this index, captured at entry.
    Buf(u8),
    /// A `char` passed as `int`: `'c'`.
    Char,
    /// No value (`void` returns).
    Void,
}

/// A function's prototype: argument types and return type.
#[derive(Clone, Copy, Debug)]
pub struct Proto {
    /// Symbol name.
    pub name: &'static str,
    /// Argument types, in ABI order (integer registers).
    pub args: &'static [Ty],
    /// Return type; `Void` for functions that return nothing, and for those that never
    /// return (`exit`), which is what the recorder needs to know.
    pub ret: Ty,
}

use Ty::*;

macro_rules! protos {
    ($($name:literal ($($a:expr),*) -> $r:expr;)*) => {
        &[$(Proto { name: $name, args: &[$($a),*], ret: $r }),*]
    };
}

/// The table, sorted by name.
pub const PROTOS: &[Proto] = protos! {
    "_exit"(Int) -> Void;
    "abort"() -> Void;
    "accept"(Int, Ptr, Ptr) -> Int;
    "accept4"(Int, Ptr, Ptr, Hex) -> Int;
    "access"(Str, Hex) -> Int;
    "atoi"(Str) -> Int;
    "atol"(Str) -> Long;
    "bind"(Int, Ptr, Size) -> Int;
    "chdir"(Str) -> Int;
    "close"(Int) -> Int;
    "closedir"(Ptr) -> Int;
    "connect"(Int, Ptr, Size) -> Int;
    "dlclose"(Ptr) -> Int;
    "dlopen"(Str, Hex) -> Ptr;
    "dlsym"(Ptr, Str) -> Ptr;
    "dup"(Int) -> Int;
    "dup2"(Int, Int) -> Int;
    "epoll_wait"(Int, Ptr, Int, Int) -> Int;
    "execv"(Str, Ptr) -> Int;
    "execve"(Str, Ptr, Ptr) -> Int;
    "execvp"(Str, Ptr) -> Int;
    "exit"(Int) -> Void;
    "fclose"(Ptr) -> Int;
    "fdopen"(Int, Str) -> Ptr;
    "fflush"(Ptr) -> Int;
    "fgets"(Ptr, Int, Ptr) -> Ptr;
    "fileno"(Ptr) -> Int;
    "fopen"(Str, Str) -> Ptr;
    "fork"() -> Int;
    "fputc"(Char, Ptr) -> Int;
    "fputs"(Str, Ptr) -> Int;
    "fread"(Ptr, Size, Size, Ptr) -> Size;
    "freeaddrinfo"(Ptr) -> Void;
    "fsync"(Int) -> Int;
    "fwrite"(Buf(1), Size, Size, Ptr) -> Size;
    "getaddrinfo"(Str, Str, Ptr, Ptr) -> Int;
    "getcwd"(Ptr, Size) -> Ptr;
    "getenv"(Str) -> Ptr;
    "getpid"() -> Int;
    "getppid"() -> Int;
    "gettid"() -> Int;
    "getuid"() -> Int;
    "isatty"(Int) -> Int;
    "kill"(Int, Int) -> Int;
    "listen"(Int, Int) -> Int;
    "longjmp"(Ptr, Int) -> Void;
    "lseek"(Int, Long, Int) -> Long;
    "mkdir"(Str, Hex) -> Int;
    "mmap"(Ptr, Size, Hex, Hex, Int, Long) -> Ptr;
    "mprotect"(Ptr, Size, Hex) -> Int;
    "munmap"(Ptr, Size) -> Int;
    "nanosleep"(Ptr, Ptr) -> Int;
    "open"(Str, Hex, Hex) -> Int;
    "open64"(Str, Hex, Hex) -> Int;
    "openat"(Int, Str, Hex, Hex) -> Int;
    "opendir"(Str) -> Ptr;
    "pipe"(Ptr) -> Int;
    "pipe2"(Ptr, Hex) -> Int;
    "poll"(Ptr, Size, Int) -> Int;
    "pread"(Int, Ptr, Size, Long) -> Long;
    "pthread_create"(Ptr, Ptr, Ptr, Ptr) -> Int;
    "pthread_exit"(Ptr) -> Void;
    "pthread_join"(Size, Ptr) -> Int;
    "pthread_mutex_lock"(Ptr) -> Int;
    "pthread_mutex_unlock"(Ptr) -> Int;
    "putchar"(Char) -> Int;
    "puts"(Str) -> Int;
    "pwrite"(Int, Buf(2), Size, Long) -> Long;
    "qsort"(Ptr, Size, Size, Ptr) -> Void;
    "raise"(Int) -> Int;
    "read"(Int, Ptr, Size) -> Long;
    "readdir"(Ptr) -> Ptr;
    "readlink"(Str, Ptr, Size) -> Long;
    "recv"(Int, Ptr, Size, Hex) -> Long;
    "recvfrom"(Int, Ptr, Size, Hex, Ptr, Ptr) -> Long;
    "remove"(Str) -> Int;
    "rename"(Str, Str) -> Int;
    "rmdir"(Str) -> Int;
    "select"(Int, Ptr, Ptr, Ptr, Ptr) -> Int;
    "send"(Int, Buf(2), Size, Hex) -> Long;
    "sendto"(Int, Buf(2), Size, Hex, Ptr, Size) -> Long;
    "setenv"(Str, Str, Int) -> Int;
    "setsockopt"(Int, Int, Int, Ptr, Size) -> Int;
    "shutdown"(Int, Int) -> Int;
    "signal"(Int, Ptr) -> Ptr;
    "sleep"(Size) -> Size;
    "socket"(Int, Int, Int) -> Int;
    "srand"(Size) -> Void;
    "strcasecmp"(Str, Str) -> Int;
    "strcat"(Ptr, Str) -> Ptr;
    "strchr"(Str, Char) -> Ptr;
    "strcmp"(Str, Str) -> Int;
    "strcpy"(Ptr, Str) -> Ptr;
    "strdup"(Str) -> Ptr;
    "strerror"(Int) -> Ptr;
    "strlen"(Str) -> Size;
    "strncmp"(Str, Str, Size) -> Int;
    "strncpy"(Ptr, Str, Size) -> Ptr;
    "strndup"(Str, Size) -> Ptr;
    "strrchr"(Str, Char) -> Ptr;
    "strstr"(Str, Str) -> Ptr;
    "strtol"(Str, Ptr, Int) -> Long;
    "strtoul"(Str, Ptr, Int) -> Size;
    "system"(Str) -> Int;
    "time"(Ptr) -> Long;
    "unlink"(Str) -> Int;
    "unsetenv"(Str) -> Int;
    "usleep"(Size) -> Int;
    "waitpid"(Int, Ptr, Hex) -> Int;
    "write"(Int, Buf(2), Size) -> Long;
    "writev"(Int, Ptr, Int) -> Long;
};

/// The prototype of `name`, if the table has one.
pub fn lookup(name: &str) -> Option<&'static Proto> {
    PROTOS
        .binary_search_by(|p| p.name.cmp(name))
        .ok()
        .map(|i| &PROTOS[i])
}
