//! Recording engines. They capture events and hand them to the recording writer; they
//! never format output for people.

pub mod funcs;
pub mod procfs;
pub mod ptrace;
