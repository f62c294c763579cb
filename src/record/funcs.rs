//! The functions the recorder hooks, with what the analyses need to know about them.

use crate::format::FnClass;

/// A function the engines know how to record.
#[derive(Clone, Copy, Debug)]
pub struct TracedFn {
    /// Symbol name as defined in the library.
    pub name: &'static str,
    /// What it does with its arguments.
    pub class: FnClass,
    /// How many integer-register arguments to capture.
    pub nargs: u8,
    /// False for `void` functions.
    pub returns: bool,
}

/// The allocator family, in the order that names aliases (glibc defines `memalign` and
/// `aligned_alloc` at one address; the first name listed, the traditional one, wins).
pub const ALLOCATOR_FAMILY: &[TracedFn] = &[
    TracedFn {
        name: "malloc",
        class: FnClass::Malloc,
        nargs: 1,
        returns: true,
    },
    TracedFn {
        name: "calloc",
        class: FnClass::Calloc,
        nargs: 2,
        returns: true,
    },
    TracedFn {
        name: "realloc",
        class: FnClass::Realloc,
        nargs: 2,
        returns: true,
    },
    TracedFn {
        name: "reallocarray",
        class: FnClass::ReallocArray,
        nargs: 3,
        returns: true,
    },
    TracedFn {
        name: "free",
        class: FnClass::Free,
        nargs: 1,
        returns: false,
    },
    TracedFn {
        name: "posix_memalign",
        class: FnClass::PosixMemalign,
        nargs: 3,
        returns: true,
    },
    TracedFn {
        name: "memalign",
        class: FnClass::AlignedAlloc,
        nargs: 2,
        returns: true,
    },
    TracedFn {
        name: "aligned_alloc",
        class: FnClass::AlignedAlloc,
        nargs: 2,
        returns: true,
    },
    TracedFn {
        name: "valloc",
        class: FnClass::Valloc,
        nargs: 1,
        returns: true,
    },
    TracedFn {
        name: "pvalloc",
        class: FnClass::Pvalloc,
        nargs: 1,
        returns: true,
    },
];

/// Integer-register argument count and whether it returns, for common C library functions
/// selected with `-x`; other functions get all six argument registers and a return value.
/// (Argument types and decoding are not known here: replay shows these in hex.)
pub fn signature(name: &str) -> (u8, bool) {
    const KNOWN: &[(&str, u8, bool)] = &[
        ("abort", 0, false),
        ("accept", 3, true),
        ("accept4", 4, true),
        ("atoi", 1, true),
        ("bind", 3, true),
        ("close", 1, true),
        ("connect", 3, true),
        ("dlclose", 1, true),
        ("dlopen", 2, true),
        ("dlsym", 2, true),
        ("dup2", 2, true),
        ("epoll_wait", 4, true),
        ("execve", 3, true),
        ("exit", 1, false),
        ("_exit", 1, false),
        ("fclose", 1, true),
        ("fflush", 1, true),
        ("fopen", 2, true),
        ("fork", 0, true),
        ("fputs", 2, true),
        ("fread", 4, true),
        ("freeaddrinfo", 1, false),
        ("fwrite", 4, true),
        ("getaddrinfo", 4, true),
        ("getenv", 1, true),
        ("getpid", 0, true),
        ("listen", 2, true),
        ("longjmp", 2, false),
        ("lseek", 3, true),
        ("memcmp", 3, true),
        ("memcpy", 3, true),
        ("memmove", 3, true),
        ("memset", 3, true),
        ("mmap", 6, true),
        ("munmap", 2, true),
        ("nanosleep", 2, true),
        ("pipe", 1, true),
        ("poll", 3, true),
        ("pthread_create", 4, true),
        ("pthread_exit", 1, false),
        ("pthread_join", 2, true),
        ("pthread_mutex_lock", 1, true),
        ("pthread_mutex_unlock", 1, true),
        ("puts", 1, true),
        ("qsort", 4, false),
        ("read", 3, true),
        ("recv", 4, true),
        ("recvfrom", 6, true),
        ("send", 4, true),
        ("sendto", 6, true),
        ("setenv", 3, true),
        ("sleep", 1, true),
        ("socket", 3, true),
        ("srand", 1, false),
        ("strchr", 2, true),
        ("strcmp", 2, true),
        ("strcpy", 2, true),
        ("strdup", 1, true),
        ("strlen", 1, true),
        ("strncmp", 3, true),
        ("strndup", 2, true),
        ("strtol", 3, true),
        ("usleep", 1, true),
        ("write", 3, true),
    ];
    KNOWN
        .iter()
        .find(|k| k.0 == name)
        .map_or((6, true), |k| (k.1, k.2))
}
