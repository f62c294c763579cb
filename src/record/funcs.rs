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

/// Integer-register argument count and whether its return is awaited, for a traced
/// function: the count from its prototype if one is known, otherwise all six argument
/// registers. Every call but those of functions that never return (`exit`, `longjmp`) is
/// awaited, `void` ones too, as the agent's are: the calls made inside one (a `qsort`
/// comparator's) nest under it, and replay shows `<void>` by the prototype.
pub fn signature(name: &str) -> (u8, bool) {
    let nargs = crate::protos::lookup(name).map_or(6, |p| p.nargs() as u8);
    (nargs, !rltrace_wire::protos::never_returns(name))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_table_is_in_the_agents_order() {
        let names: Vec<&str> = super::ALLOCATOR_FAMILY.iter().map(|f| f.name).collect();
        assert_eq!(names, rltrace_wire::FUNCTIONS);
    }
}
