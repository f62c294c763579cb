//! Built-in prototypes of common C library functions: what is captured at a call's entry
//! (strings, buffers, vector registers) and how replay shows arguments and return values.
//! Shared by the agent (which captures in-process) and the recorder and replay. Functions
//! not listed have no prototype: their integer registers are shown in hex.
//!
//! A call's recorded values follow its prototype's declaration order, each argument taken
//! from the register the System V ABI passes it in: integer-class ones from the next of
//! the six integer registers, `float` and `double` from the next of the eight vector
//! registers (low 32 or 64 bits), up to the first passed on the stack. A function with a
//! `printf` format then has the integer registers left, then as many vector registers as
//! `al` says hold variadic doubles (see [`Proto::values`]). A `float` or `double` return
//! is recorded as the low bits of xmm0.

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
    /// A `printf` format string, captured at entry; the variadic arguments after it are
    /// shown as its conversions say (see [`conversions`]).
    Format,
    /// No value (`void` returns).
    Void,
    /// `float`: the low 32 bits of a vector register.
    Float,
    /// `double`: the low 64 bits of a vector register.
    Double,
}

/// Most values recorded for one call: six integer and eight vector registers.
pub const MAX_VALUES: usize = 14;

/// A function's prototype: argument types and return type.
#[derive(Clone, Copy, Debug)]
pub struct Proto {
    /// Symbol name.
    pub name: &'static str,
    /// Argument types, in ABI order (integer registers).
    pub args: &'static [Ty],
    /// Return type; `Void` for functions that return nothing, and for those that never
    /// return (`exit`), which is what the recorder needs to know. `Str` where ltrace's
    /// table says `string`: the agent captures the text at the return
    /// ([`capture_return`]); uncaptured, it shows as a pointer, a null one as ltrace shows
    /// it, `nil` (an `addr` shows as `0`).
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
    "_ZdaPv"(Ptr) -> Void;
    "_ZdaPvm"(Ptr, Size) -> Void;
    "_ZdlPv"(Ptr) -> Void;
    "_ZdlPvm"(Ptr, Size) -> Void;
    "_Znam"(Size) -> Ptr;
    "_Znwm"(Size) -> Ptr;
    "__cxa_allocate_exception"(Size) -> Ptr;
    "__cxa_atexit"(Ptr, Ptr, Ptr) -> Int;
    "__cxa_begin_catch"(Ptr) -> Ptr;
    "__cxa_end_catch"() -> Void;
    "__cxa_free_exception"(Ptr) -> Void;
    "__errno_location"() -> Ptr;
    "__fprintf_chk"(Ptr, Int, Format) -> Int;
    "__printf_chk"(Int, Format) -> Int;
    "__snprintf_chk"(Ptr, Size, Int, Size, Format) -> Int;
    "__sprintf_chk"(Ptr, Int, Size, Format) -> Int;
    "_exit"(Int) -> Void;
    "abort"() -> Void;
    "accept"(Int, Ptr, Ptr) -> Int;
    "accept4"(Int, Ptr, Ptr, Hex) -> Int;
    "access"(Str, Hex) -> Int;
    "acos"(Double) -> Double;
    "asin"(Double) -> Double;
    "atan"(Double) -> Double;
    "atan2"(Double, Double) -> Double;
    "atof"(Str) -> Double;
    "atoi"(Str) -> Int;
    "atol"(Str) -> Long;
    "bcmp"(Ptr, Ptr, Size) -> Int;
    "bind"(Int, Ptr, Size) -> Int;
    "cbrt"(Double) -> Double;
    "ceil"(Double) -> Double;
    "ceilf"(Float) -> Float;
    "chdir"(Str) -> Int;
    "clock_gettime"(Int, Ptr) -> Int;
    "close"(Int) -> Int;
    "close_range"(Size, Size, Hex) -> Int;
    "closedir"(Ptr) -> Int;
    "closefrom"(Int) -> Void;
    "connect"(Int, Ptr, Size) -> Int;
    "copysign"(Double, Double) -> Double;
    "cos"(Double) -> Double;
    "cosf"(Float) -> Float;
    "cosh"(Double) -> Double;
    "difftime"(Long, Long) -> Double;
    "dlclose"(Ptr) -> Int;
    "dlopen"(Str, Hex) -> Ptr;
    "dlsym"(Ptr, Str) -> Ptr;
    "dprintf"(Int, Format) -> Int;
    "drand48"() -> Double;
    "dup"(Int) -> Int;
    "dup2"(Int, Int) -> Int;
    "epoll_create1"(Hex) -> Int;
    "epoll_ctl"(Int, Int, Int, Ptr) -> Int;
    "epoll_wait"(Int, Ptr, Int, Int) -> Int;
    "erand48"(Ptr) -> Double;
    "eventfd"(Size, Hex) -> Int;
    "execv"(Str, Ptr) -> Int;
    "execve"(Str, Ptr, Ptr) -> Int;
    "execvp"(Str, Ptr) -> Int;
    "exit"(Int) -> Void;
    "exp"(Double) -> Double;
    "exp2"(Double) -> Double;
    "expf"(Float) -> Float;
    "expm1"(Double) -> Double;
    "fabs"(Double) -> Double;
    "fabsf"(Float) -> Float;
    "fclose"(Ptr) -> Int;
    "fcntl"(Int, Int, Hex) -> Int;
    "fdopen"(Int, Str) -> Ptr;
    "fflush"(Ptr) -> Int;
    "fgets"(Ptr, Int, Ptr) -> Ptr;
    "fileno"(Ptr) -> Int;
    "floor"(Double) -> Double;
    "floorf"(Float) -> Float;
    "fmax"(Double, Double) -> Double;
    "fmin"(Double, Double) -> Double;
    "fmod"(Double, Double) -> Double;
    "fopen"(Str, Str) -> Ptr;
    "fopen64"(Str, Str) -> Ptr;
    "fork"() -> Int;
    "fprintf"(Ptr, Format) -> Int;
    "fputc"(Char, Ptr) -> Int;
    "fputs"(Str, Ptr) -> Int;
    "fread"(Ptr, Size, Size, Ptr) -> Size;
    "freeaddrinfo"(Ptr) -> Void;
    "frexp"(Double, Ptr) -> Double;
    "fstat"(Int, Ptr) -> Int;
    "fsync"(Int) -> Int;
    "fwrite"(Buf(1), Size, Size, Ptr) -> Size;
    "getaddrinfo"(Str, Str, Ptr, Ptr) -> Int;
    "getauxval"(Size) -> Hex;
    "getcwd"(Ptr, Size) -> Str;
    "getenv"(Str) -> Str;
    "getline"(Ptr, Ptr, Ptr) -> Long;
    "getpid"() -> Int;
    "getppid"() -> Int;
    "getrandom"(Ptr, Size, Hex) -> Long;
    "gettid"() -> Int;
    "gettimeofday"(Ptr, Ptr) -> Int;
    "getuid"() -> Int;
    "hypot"(Double, Double) -> Double;
    "ioctl"(Int, Hex, Ptr) -> Int;
    "isatty"(Int) -> Int;
    "kill"(Int, Int) -> Int;
    "ldexp"(Double, Int) -> Double;
    "listen"(Int, Int) -> Int;
    "llround"(Double) -> Long;
    "log"(Double) -> Double;
    "log10"(Double) -> Double;
    "log1p"(Double) -> Double;
    "log2"(Double) -> Double;
    "logf"(Float) -> Float;
    "longjmp"(Ptr, Int) -> Void;
    "lround"(Double) -> Long;
    "lseek"(Int, Long, Int) -> Long;
    "lstat"(Str, Ptr) -> Int;
    "madvise"(Ptr, Size, Int) -> Int;
    "memchr"(Ptr, Char, Size) -> Ptr;
    "memcmp"(Ptr, Ptr, Size) -> Int;
    "memcpy"(Ptr, Buf(2), Size) -> Ptr;
    "memmove"(Ptr, Buf(2), Size) -> Ptr;
    "memset"(Ptr, Int, Size) -> Ptr;
    "mkdir"(Str, Hex) -> Int;
    "mmap"(Ptr, Size, Hex, Hex, Int, Long) -> Ptr;
    "mmap64"(Ptr, Size, Hex, Hex, Int, Long) -> Ptr;
    "modf"(Double, Ptr) -> Double;
    "mprotect"(Ptr, Size, Hex) -> Int;
    "munmap"(Ptr, Size) -> Int;
    "nan"(Str) -> Double;
    "nanosleep"(Ptr, Ptr) -> Int;
    "nextafter"(Double, Double) -> Double;
    "open"(Str, Hex, Hex) -> Int;
    "open64"(Str, Hex, Hex) -> Int;
    "openat"(Int, Str, Hex, Hex) -> Int;
    "opendir"(Str) -> Ptr;
    "pipe"(Ptr) -> Int;
    "pipe2"(Ptr, Hex) -> Int;
    "poll"(Ptr, Size, Int) -> Int;
    "pow"(Double, Double) -> Double;
    "powf"(Float, Float) -> Float;
    "pread"(Int, Ptr, Size, Long) -> Long;
    "printf"(Format) -> Int;
    "pthread_cancel"(Hex) -> Int;
    "pthread_cond_broadcast"(Ptr) -> Int;
    "pthread_cond_signal"(Ptr) -> Int;
    "pthread_cond_wait"(Ptr, Ptr) -> Int;
    "pthread_create"(Ptr, Ptr, Ptr, Ptr) -> Int;
    "pthread_detach"(Hex) -> Int;
    "pthread_exit"(Ptr) -> Void;
    "pthread_getspecific"(Size) -> Ptr;
    "pthread_join"(Size, Ptr) -> Int;
    "pthread_key_create"(Ptr, Ptr) -> Int;
    "pthread_kill"(Hex, Int) -> Int;
    "pthread_mutex_destroy"(Ptr) -> Int;
    "pthread_mutex_init"(Ptr, Ptr) -> Int;
    "pthread_mutex_lock"(Ptr) -> Int;
    "pthread_mutex_trylock"(Ptr) -> Int;
    "pthread_mutex_unlock"(Ptr) -> Int;
    "pthread_once"(Ptr, Ptr) -> Int;
    "pthread_rwlock_rdlock"(Ptr) -> Int;
    "pthread_rwlock_unlock"(Ptr) -> Int;
    "pthread_rwlock_wrlock"(Ptr) -> Int;
    "pthread_self"() -> Hex;
    "pthread_setspecific"(Size, Ptr) -> Int;
    "putchar"(Char) -> Int;
    "puts"(Str) -> Int;
    "pwrite"(Int, Buf(2), Size, Long) -> Long;
    "qsort"(Ptr, Size, Size, Ptr) -> Void;
    "raise"(Int) -> Int;
    "read"(Int, Ptr, Size) -> Long;
    "readdir"(Ptr) -> Ptr;
    "readlink"(Str, Ptr, Size) -> Long;
    "realpath"(Str, Ptr) -> Ptr;
    "recv"(Int, Ptr, Size, Hex) -> Long;
    "recvfrom"(Int, Ptr, Size, Hex, Ptr, Ptr) -> Long;
    "remainder"(Double, Double) -> Double;
    "remove"(Str) -> Int;
    "rename"(Str, Str) -> Int;
    "rint"(Double) -> Double;
    "rmdir"(Str) -> Int;
    "round"(Double) -> Double;
    "roundf"(Float) -> Float;
    "scalbn"(Double, Int) -> Double;
    "sched_yield"() -> Int;
    "select"(Int, Ptr, Ptr, Ptr, Ptr) -> Int;
    "send"(Int, Buf(2), Size, Hex) -> Long;
    "sendto"(Int, Buf(2), Size, Hex, Ptr, Size) -> Long;
    "setenv"(Str, Str, Int) -> Int;
    "setlocale"(Int, Str) -> Str;
    "setsockopt"(Int, Int, Int, Ptr, Size) -> Int;
    "shutdown"(Int, Int) -> Int;
    "sigaction"(Int, Ptr, Ptr) -> Int;
    "sigaltstack"(Ptr, Ptr) -> Int;
    "signal"(Int, Ptr) -> Ptr;
    "sigprocmask"(Int, Ptr, Ptr) -> Int;
    "sin"(Double) -> Double;
    "sincos"(Double, Ptr, Ptr) -> Void;
    "sinf"(Float) -> Float;
    "sinh"(Double) -> Double;
    "sleep"(Size) -> Size;
    "snprintf"(Ptr, Size, Format) -> Int;
    "socket"(Int, Int, Int) -> Int;
    "socketpair"(Int, Int, Int, Ptr) -> Int;
    "sprintf"(Ptr, Format) -> Int;
    "sqrt"(Double) -> Double;
    "sqrtf"(Float) -> Float;
    "srand"(Size) -> Void;
    "stat"(Str, Ptr) -> Int;
    "strcasecmp"(Str, Str) -> Int;
    "strcat"(Ptr, Str) -> Str;
    "strchr"(Str, Char) -> Str;
    "strcmp"(Str, Str) -> Int;
    "strcpy"(Ptr, Str) -> Ptr;
    "strdup"(Str) -> Ptr;
    "strerror"(Int) -> Str;
    "strlen"(Str) -> Size;
    "strncmp"(Str, Str, Size) -> Int;
    "strncpy"(Ptr, Str, Size) -> Ptr;
    "strndup"(Str, Size) -> Ptr;
    "strrchr"(Str, Char) -> Str;
    "strstr"(Str, Str) -> Str;
    "strtod"(Str, Ptr) -> Double;
    "strtof"(Str, Ptr) -> Float;
    "strtol"(Str, Ptr, Int) -> Long;
    "strtoul"(Str, Ptr, Int) -> Size;
    "sysconf"(Int) -> Long;
    "system"(Str) -> Int;
    "tan"(Double) -> Double;
    "tanf"(Float) -> Float;
    "tanh"(Double) -> Double;
    "time"(Ptr) -> Long;
    "trunc"(Double) -> Double;
    "truncf"(Float) -> Float;
    "unlink"(Str) -> Int;
    "unsetenv"(Str) -> Int;
    "usleep"(Size) -> Int;
    "waitpid"(Int, Ptr, Hex) -> Int;
    "write"(Int, Buf(2), Size) -> Long;
    "writev"(Int, Ptr, Int) -> Long;
};

impl Ty {
    /// Two bytes for the agent protocol: kind, parameter.
    pub fn code(self) -> [u8; 2] {
        match self {
            Int => [0, 0],
            Long => [1, 0],
            Size => [2, 0],
            Hex => [3, 0],
            Ptr => [4, 0],
            Str => [5, 0],
            Buf(n) => [6, n],
            Char => [7, 0],
            Format => [8, 0],
            Void => [9, 0],
            Float => [10, 0],
            Double => [11, 0],
        }
    }

    /// The type [`Ty::code`] gave, if the bytes are one.
    pub fn from_code(c: [u8; 2]) -> Option<Ty> {
        Some(match c {
            [0, _] => Int,
            [1, _] => Long,
            [2, _] => Size,
            [3, _] => Hex,
            [4, _] => Ptr,
            [5, _] => Str,
            [6, n] if n < 6 => Buf(n),
            [7, _] => Char,
            [8, _] => Format,
            [9, _] => Void,
            [10, _] => Float,
            [11, _] => Double,
            _ => return None,
        })
    }
}

/// True if arguments of these types all travel in registers: at most six integer-class
/// and eight `float`/`double` ones.
pub fn fits_registers(args: &[Ty]) -> bool {
    let vecs = args.iter().filter(|t| t.is_vector()).count();
    vecs <= 8 && args.len() - vecs <= 6
}

impl Ty {
    /// True for the types passed and returned in vector registers.
    pub fn is_vector(self) -> bool {
        matches!(self, Float | Double)
    }
}

impl Proto {
    /// Most values recorded for a call (fewer for a variadic one whose `al` says fewer
    /// vector registers are used): see [`Proto::values`].
    pub fn nargs(&self) -> usize {
        let mut ints = 0;
        let mut vecs = 0;
        for t in self.args {
            match t.is_vector() {
                true if vecs < 8 => vecs += 1,
                false if ints < 6 => ints += 1,
                _ => break,
            }
        }
        if self.format_arg().is_some() {
            6 + 8
        } else {
            ints + vecs
        }
    }

    /// True if a call with `al` (rax at entry) needs the vector registers read: it has a
    /// `float`/`double` argument, or is variadic with vector registers in use.
    pub fn needs_vector(&self, al: u64) -> bool {
        self.args.iter().any(|t| t.is_vector()) || (self.format_arg().is_some() && al as u8 != 0)
    }

    /// Fills `out` with the values of a call's arguments from its integer registers
    /// `gpr` (rdi, rsi, rdx, rcx, r8, r9), vector registers `xmm` (their low 64 bits)
    /// and `al`; returns how many. Declared arguments come first, each from its class's
    /// next register, up to the first passed on the stack; then, for a variadic function,
    /// the integer registers left and the `min(al, 8)` vector registers left.
    pub fn values(
        &self,
        gpr: &[u64; 6],
        xmm: &[u64; 8],
        al: u64,
        out: &mut [u64; MAX_VALUES],
    ) -> usize {
        let (mut ints, mut vecs, mut n) = (0, 0, 0);
        for t in self.args {
            let v = if t.is_vector() {
                let Some(&v) = xmm.get(vecs) else { break };
                vecs += 1;
                v
            } else {
                let Some(&v) = gpr.get(ints) else { break };
                ints += 1;
                v
            };
            out[n] = v;
            n += 1;
        }
        if n == self.args.len() && self.format_arg().is_some() {
            for &v in &gpr[ints..] {
                out[n] = v;
                n += 1;
            }
            let used = usize::from(al as u8).min(8);
            for &v in xmm.get(vecs..used).unwrap_or(&[]) {
                out[n] = v;
                n += 1;
            }
        }
        n
    }

    /// How many vector registers a variadic function's doubles may use (those its fixed
    /// arguments leave).
    pub fn vector_varargs(&self) -> usize {
        8usize.saturating_sub(self.args.iter().filter(|t| t.is_vector()).count())
    }

    /// For a variadic function: the index among a call's values of its first variadic
    /// integer register, and how many there are; its variadic vector registers follow.
    pub fn varargs(&self) -> Option<(usize, usize)> {
        self.format_arg()?;
        let ints = self.args.iter().filter(|t| !t.is_vector()).count();
        Some((self.args.len(), 6usize.saturating_sub(ints)))
    }

    /// The index of the format argument, if the function takes one.
    pub fn format_arg(&self) -> Option<usize> {
        self.args.iter().position(|&t| t == Format)
    }
}

/// What one `printf` conversion takes from the variadic arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conv {
    /// `%d`, `%i` (and `*` widths): signed, of this many bytes.
    Int(u8),
    /// `%u`: unsigned, of this many bytes.
    Uint(u8),
    /// `%x`, `%X`: hex, of this many bytes.
    Hex(u8),
    /// `%o`: octal, of this many bytes.
    Octal(u8),
    /// `%c`.
    Char,
    /// `%s`: a string, captured at entry.
    Str,
    /// `%p`, `%n`, `%S`: a pointer.
    Ptr,
    /// `%f`, `%e`, `%g`, `%a`: a double, passed in a vector register.
    Float,
    /// A conversion this parser does not follow (`%1$d` positional arguments, `%Lf`): the
    /// remaining arguments cannot be attributed.
    Unknown,
}

/// Calls `f` with each conversion of the `printf` format `fmt` that takes an argument, in
/// order; stops after [`Conv::Unknown`].
pub fn conversions(fmt: &[u8], mut f: impl FnMut(Conv)) {
    let mut i = 0;
    while i < fmt.len() {
        if fmt[i] != b'%' {
            i += 1;
            continue;
        }
        i += 1;
        if fmt.get(i) == Some(&b'%') {
            i += 1;
            continue;
        }
        while matches!(
            fmt.get(i),
            Some(b'-' | b'+' | b' ' | b'#' | b'0' | b'\'' | b'I')
        ) {
            i += 1;
        }
        let star = |i: &mut usize, f: &mut dyn FnMut(Conv)| {
            if fmt.get(*i) == Some(&b'*') {
                f(Conv::Int(4));
                *i += 1;
            }
            while fmt.get(*i).is_some_and(|c| c.is_ascii_digit()) {
                *i += 1;
            }
        };
        if fmt.get(i).is_some_and(|c| c.is_ascii_digit()) {
            let mut j = i;
            while fmt.get(j).is_some_and(|c| c.is_ascii_digit()) {
                j += 1;
            }
            if fmt.get(j) == Some(&b'$') {
                f(Conv::Unknown);
                return;
            }
        }
        star(&mut i, &mut f);
        if fmt.get(i) == Some(&b'.') {
            i += 1;
            star(&mut i, &mut f);
        }
        let mut size = 4u8;
        let mut long_double = false;
        loop {
            match fmt.get(i) {
                Some(b'h') => size = if size == 2 { 1 } else { 2 },
                Some(b'l' | b'q' | b'j' | b'z' | b'Z' | b't') => size = 8,
                Some(b'L') => long_double = true,
                _ => break,
            }
            i += 1;
        }
        let conv = match fmt.get(i) {
            Some(b'd' | b'i') => Conv::Int(size),
            Some(b'u') => Conv::Uint(size),
            Some(b'x' | b'X') => Conv::Hex(size),
            Some(b'o') => Conv::Octal(size),
            Some(b'c' | b'C') => Conv::Char,
            Some(b's') => Conv::Str,
            Some(b'p' | b'n' | b'S') => Conv::Ptr,
            // A long double travels on the stack in 16 bytes, in no register: not followed.
            Some(b'f' | b'F' | b'e' | b'E' | b'g' | b'G' | b'a' | b'A') if long_double => {
                Conv::Unknown
            }
            Some(b'f' | b'F' | b'e' | b'E' | b'g' | b'G' | b'a' | b'A') => Conv::Float,
            Some(b'm') => {
                i += 1;
                continue;
            }
            _ => Conv::Unknown,
        };
        f(conv);
        if conv == Conv::Unknown {
            return;
        }
        i += 1;
    }
}

/// Where each variadic argument of a `printf`-family call is, walking its format's
/// conversions: integer-class ones in the call's variadic integer registers while they
/// last, doubles in its vector registers while they last, the rest in stack words in
/// order (as the System V ABI passes them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// The value at this index among the call's values.
    Value(usize),
    /// Variadic vector register number (0 for the first one the variadic arguments use).
    Vector(usize),
    /// Stack word number (0 for the word at the caller's stack pointer).
    Stack(usize),
    /// Not known ([`Conv::Unknown`]: the walk ends there).
    Lost,
}

/// Calls `f` with each conversion of `fmt` and where its argument is, for a function
/// whose variadic integer registers are `count` values from `first` on (see
/// [`Proto::varargs`]) and which has `vectors` vector registers for its variadic doubles;
/// stops after [`Conv::Unknown`].
pub fn places(
    fmt: &[u8],
    (first, count): (usize, usize),
    vectors: usize,
    mut f: impl FnMut(Conv, Place),
) {
    let (mut reg, mut vec, mut word) = (0, 0, 0);
    conversions(fmt, |c| {
        let place = match c {
            Conv::Unknown => return f(c, Place::Lost),
            Conv::Float if vec < vectors => {
                vec += 1;
                Place::Vector(vec - 1)
            }
            Conv::Float => {
                word += 1;
                Place::Stack(word - 1)
            }
            _ if reg < count => {
                reg += 1;
                Place::Value(first + reg - 1)
            }
            _ => {
                word += 1;
                Place::Stack(word - 1)
            }
        };
        f(c, place)
    });
}

/// The indices among a call's values of the `%s` arguments its format `fmt` takes, as a
/// bit set, and of its stack words that are `%s` arguments, as another; and how many
/// stack words the format takes (see [`places`]).
pub fn string_varargs(fmt: &[u8], at: (usize, usize), vectors: usize) -> (u16, u16, usize) {
    let (mut regs, mut stack, mut words) = (0u16, 0u16, 0usize);
    places(fmt, at, vectors, |c, p| match p {
        Place::Stack(w) if w < MAX_STACK_WORDS => {
            words = w + 1;
            if c == Conv::Str {
                stack |= 1 << w;
            }
        }
        Place::Value(i) if c == Conv::Str && i < 16 => regs |= 1 << i,
        _ => {}
    });
    (regs, stack, words)
}

/// Capture index of a variadic call's stack words: those its format takes past the
/// registers, 8 bytes each from the caller's stack pointer at the call.
pub const STACK_WORDS: u8 = 15;
/// Capture index of the string stack word `k` points to is `STACK_STRINGS + k`.
pub const STACK_STRINGS: u8 = 16;
/// Most stack words captured.
pub const MAX_STACK_WORDS: usize = 16;
/// Most captures per call (the recording format's limit).
pub const MAX_CAPTURES: usize = 16;
/// Capture indices are below this.
pub const CAPTURE_INDICES: usize = STACK_STRINGS as usize + MAX_STACK_WORDS;

/// Reads what a call's prototype says its values `args` point to (strings, buffers, a
/// `printf` format and the strings and stack words its conversions take), with `limit`
/// bytes kept per string or buffer; `stack` is where the caller's stack arguments start
/// (the entry stack pointer + 8). `read(addr, dst)` copies readable bytes at `addr` into
/// `dst` and returns how many; `buf` holds one capture (at least [`FORMAT_LIMIT`] + 1
/// bytes); `emit(index, truncated, bytes)` receives each capture.
pub fn capture(
    proto: &Proto,
    args: &[u64],
    stack: u64,
    limit: usize,
    buf: &mut [u8],
    mut read: impl FnMut(u64, &mut [u8]) -> usize,
    mut emit: impl FnMut(u8, bool, &[u8]),
) {
    let mut count = 0;
    let mut strings = 0u16;
    let mut stack_strings = 0u16;
    let mut words = 0;
    for i in 0..args.len() {
        if count == MAX_CAPTURES {
            return;
        }
        let Some(c) = Capture::plan(proto, i, args, limit, strings) else {
            continue;
        };
        let want = c.want.min(buf.len());
        let got = read(c.addr, &mut buf[..want]);
        let Some((len, truncated)) = c.keep(&buf[..got]) else {
            continue;
        };
        if let (true, Some(at)) = (c.format, proto.varargs()) {
            (strings, stack_strings, words) =
                string_varargs(&buf[..len], at, proto.vector_varargs());
        }
        emit(i as u8, truncated, &buf[..len]);
        count += 1;
    }
    if words == 0 || count == MAX_CAPTURES {
        return;
    }
    let mut w = [0u8; 8 * MAX_STACK_WORDS];
    let got = read(stack, &mut w[..8 * words]) / 8 * 8;
    if got == 0 {
        return;
    }
    emit(STACK_WORDS, got < 8 * words, &w[..got]);
    count += 1;
    for k in 0..got / 8 {
        if count == MAX_CAPTURES {
            return;
        }
        let addr = u64::from_le_bytes([
            w[8 * k],
            w[8 * k + 1],
            w[8 * k + 2],
            w[8 * k + 3],
            w[8 * k + 4],
            w[8 * k + 5],
            w[8 * k + 6],
            w[8 * k + 7],
        ]);
        if stack_strings & (1 << k) == 0 || addr == 0 {
            continue;
        }
        let c = Capture {
            addr,
            want: limit + 1,
            is_str: true,
            limit,
            format: false,
        };
        let want = c.want.min(buf.len());
        let got = read(addr, &mut buf[..want]);
        if let Some((len, truncated)) = c.keep(&buf[..got]) {
            emit(STACK_STRINGS + k as u8, truncated, &buf[..len]);
            count += 1;
        }
    }
}

/// Most bytes of a `printf` format captured, whatever `-s` says: its conversions say
/// how to show the arguments.
pub const FORMAT_LIMIT: usize = 512;

/// What to read for one argument at a call's entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capture {
    /// Where the string or buffer is.
    pub addr: u64,
    /// Bytes to read at most (a string one more than it keeps, to tell whether it ends).
    pub want: usize,
    /// A NUL-terminated string (else a buffer of known length).
    pub is_str: bool,
    /// Bytes kept at most.
    pub limit: usize,
    /// The `printf` format: its `%s` conversions name more strings to capture.
    pub format: bool,
}

impl Capture {
    /// What argument `i` of a call to `proto` points to and should be captured, with
    /// `limit` bytes kept (`-s`) and `strings` the `%s` arguments of its format so far
    /// (see [`string_varargs`]); `args` are the call's values ([`Proto::values`]); `None`
    /// if nothing.
    pub fn plan(proto: &Proto, i: usize, args: &[u64], limit: usize, strings: u16) -> Option<Self> {
        let addr = *args.get(i)?;
        if addr == 0 {
            return None;
        }
        let ty = proto.args.get(i).copied();
        let (want, is_str) = match ty {
            _ if i < 16 && strings & (1 << i) != 0 => (limit + 1, true),
            Some(Str) => (limit + 1, true),
            Some(Format) => (limit.max(FORMAT_LIMIT) + 1, true),
            Some(Buf(n)) => (
                (*args.get(n as usize)?).min(limit as u64 + 1) as usize,
                false,
            ),
            _ => return None,
        };
        Some(Capture {
            addr,
            want,
            is_str,
            limit: if is_str { want - 1 } else { limit },
            format: ty == Some(Format),
        })
    }

    /// Of the bytes `read` (a short read stops at an unmapped page), how many to keep
    /// and whether the value was cut; `None` if nothing was readable (shown as a pointer).
    pub fn keep(&self, read: &[u8]) -> Option<(usize, bool)> {
        if read.is_empty() && self.want > 0 {
            return None;
        }
        let got = read.len();
        Some(if self.is_str {
            match read.iter().position(|&b| b == 0) {
                Some(end) => (end, false),
                None => (got.min(self.limit), true),
            }
        } else {
            (got.min(self.limit), got > self.limit || got < self.want)
        })
    }
}

/// The string a call of `proto` returned (`ret`, when its prototype returns `Str`), read
/// into `buf` with `read`, `limit` bytes kept: its length in `buf` and whether it was cut;
/// `None` for any other return type, a null pointer, or unreadable memory.
pub fn capture_return(
    proto: &Proto,
    ret: u64,
    limit: usize,
    buf: &mut [u8],
    read: impl FnOnce(u64, &mut [u8]) -> usize,
) -> Option<(usize, bool)> {
    if proto.ret != Str || ret == 0 {
        return None;
    }
    let c = Capture {
        addr: ret,
        want: (limit + 1).min(buf.len()),
        is_str: true,
        limit,
        format: false,
    };
    let got = read(ret, &mut buf[..c.want]);
    c.keep(&buf[..got.min(c.want)])
}

/// The prototype of `name`, if the table has one.
pub fn lookup(name: &str) -> Option<&'static Proto> {
    if let Some(call) = name.strip_prefix("SYS_") {
        // A system call recorded with `-S`: decoded like its C library wrapper where the
        // two take and return the same values (the kernel returns -errno, not -1).
        return SYSCALLS_AS_LIBC
            .binary_search(&call)
            .ok()
            .and_then(|_| lookup(call));
    }
    PROTOS
        .binary_search_by(|p| p.name.cmp(name))
        .ok()
        .map(|i| &PROTOS[i])
}

/// Functions that never return to their caller (sorted): ltrace shows their calls as
/// `<no return ...>`.
const NEVER_RETURN: &[&str] = &[
    "_Exit",
    "_Unwind_Resume",
    "__assert_fail",
    "__cxa_rethrow",
    "__cxa_throw",
    "__fortify_fail",
    "__longjmp_chk",
    "__stack_chk_fail",
    "_exit",
    "_longjmp",
    "abort",
    "err",
    "errx",
    "exit",
    "longjmp",
    "pthread_exit",
    "quick_exit",
    "siglongjmp",
    "verr",
    "verrx",
];

/// True if `name` never returns to its caller (`exit`, `longjmp`, `__cxa_throw`).
pub fn never_returns(name: &str) -> bool {
    NEVER_RETURN.binary_search(&name).is_ok()
}

/// System calls whose arguments and result mean what their C library wrapper's do (not
/// `brk` or `getcwd`, whose kernel results differ). Sorted.
const SYSCALLS_AS_LIBC: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "bind",
    "chdir",
    "close",
    "connect",
    "dup",
    "dup2",
    "epoll_create1",
    "epoll_ctl",
    "epoll_wait",
    "eventfd",
    "execve",
    "fcntl",
    "fstat",
    "fsync",
    "getpid",
    "getppid",
    "getrandom",
    "gettid",
    "getuid",
    "ioctl",
    "kill",
    "listen",
    "lseek",
    "lstat",
    "madvise",
    "mkdir",
    "mmap",
    "mprotect",
    "munmap",
    "nanosleep",
    "open",
    "openat",
    "pipe",
    "pipe2",
    "poll",
    "read",
    "readlink",
    "recvfrom",
    "rename",
    "rmdir",
    "sched_yield",
    "select",
    "sendto",
    "setsockopt",
    "shutdown",
    "socket",
    "socketpair",
    "stat",
    "unlink",
    "write",
    "writev",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn functions_that_never_return_are_known() {
        assert!(NEVER_RETURN.windows(2).all(|w| w[0] < w[1]));
        assert!(never_returns("_exit") && never_returns("longjmp"));
        assert!(!never_returns("execvp"), "returns when it fails");
    }

    #[test]
    fn system_calls_borrow_only_matching_wrapper_prototypes() {
        assert!(SYSCALLS_AS_LIBC.windows(2).all(|w| w[0] < w[1]));
        assert!(
            SYSCALLS_AS_LIBC.iter().all(|c| lookup(c).is_some()),
            "{SYSCALLS_AS_LIBC:?}"
        );
        assert!(core::ptr::eq(
            lookup("SYS_write").unwrap(),
            lookup("write").unwrap()
        ));
        assert!(lookup("SYS_brk").is_none());
        assert!(lookup("SYS_getcwd").is_none());
    }

    fn convs(fmt: &str) -> ([Option<Conv>; 8], usize) {
        let mut out = [None; 8];
        let mut n = 0;
        conversions(fmt.as_bytes(), |c| {
            if n < out.len() {
                out[n] = Some(c);
            }
            n += 1;
        });
        (out, n)
    }

    #[test]
    fn printf_conversions_are_followed() {
        let (c, n) = convs("%s: %zu%% %c %#lx %hhd %5.2f %*d %-08.3x %m %p\n");
        assert_eq!(n, 10);
        assert_eq!(
            c,
            [
                Some(Conv::Str),
                Some(Conv::Uint(8)),
                Some(Conv::Char),
                Some(Conv::Hex(8)),
                Some(Conv::Int(1)),
                Some(Conv::Float),
                Some(Conv::Int(4)),
                Some(Conv::Int(4)),
            ]
        );
        // Positional arguments stop the walk.
        let (c, n) = convs("%2$s %1$d");
        assert_eq!((c[0], n), (Some(Conv::Unknown), 1));
        // A format ending inside a conversion.
        let (_, n) = convs("%l");
        assert_eq!(n, 1);
    }

    #[test]
    fn captures_are_planned_and_cut_by_type() {
        let write = lookup("write").unwrap();
        // write(1, buf, 100) with -s 32: read 33 bytes of the buffer, keep 32, cut.
        let c = Capture::plan(write, 1, &[1, 0x1000, 100], 32, 0).unwrap();
        assert_eq!(
            (c.want, c.is_str, c.limit, c.format),
            (33, false, 32, false)
        );
        assert_eq!(c.keep(&[7; 33]), Some((32, true)));
        // A short read of a buffer is cut too; nothing readable is no capture.
        assert_eq!(c.keep(&[7; 10]), Some((10, true)));
        assert_eq!(c.keep(&[]), None);
        // Integers and null pointers are not captured.
        assert_eq!(Capture::plan(write, 0, &[1, 0x1000, 100], 32, 0), None);
        assert_eq!(Capture::plan(write, 1, &[1, 0, 100], 32, 0), None);
        let puts = lookup("puts").unwrap();
        let s = Capture::plan(puts, 0, &[0x1000], 4, 0).unwrap();
        assert_eq!(s.keep(b"ab\0cd"), Some((2, false)));
        assert_eq!(s.keep(b"abcde"), Some((4, true)));
        // A format is read whole (up to FORMAT_LIMIT), and its %s arguments as strings.
        let printf = lookup("printf").unwrap();
        let f = Capture::plan(printf, 0, &[0x1000, 0x2000], 4, 0).unwrap();
        assert!(f.format && f.want == FORMAT_LIMIT + 1);
        assert_eq!(Capture::plan(printf, 1, &[0x1000, 0x2000], 4, 0), None);
        assert!(Capture::plan(printf, 1, &[0x1000, 0x2000], 4, 0b10).is_some_and(|c| c.is_str));
    }

    #[test]
    fn string_arguments_of_a_format_are_found() {
        // printf(fmt, ...): the format is argument 0, so %s values are in registers 1..5;
        // a double takes a vector register, not one of these.
        let printf = lookup("printf").unwrap().varargs().unwrap();
        assert_eq!(printf, (1, 5));
        assert_eq!(
            string_varargs(b"%s %d %s %f %s", printf, 8),
            (0b1_1010, 0, 0)
        );
        // Past the sixth register the arguments are on the stack, in order, doubles
        // among them once the vector registers are used up.
        assert_eq!(
            string_varargs(b"%d %d %d %d %d %s %f %f %s", printf, 1),
            (0, 0b101, 3)
        );
        let mut seen = [None; 10];
        let mut n = 0;
        places(b"%d %f %f %s %d %d %d %d", printf, 1, |c, p| {
            seen[n] = Some((c, p));
            n += 1;
        });
        assert_eq!(
            seen[..n],
            [
                Some((Conv::Int(4), Place::Value(1))),
                Some((Conv::Float, Place::Vector(0))),
                Some((Conv::Float, Place::Stack(0))),
                Some((Conv::Str, Place::Value(2))),
                Some((Conv::Int(4), Place::Value(3))),
                Some((Conv::Int(4), Place::Value(4))),
                Some((Conv::Int(4), Place::Value(5))),
                Some((Conv::Int(4), Place::Stack(1))),
            ]
        );
    }
}
