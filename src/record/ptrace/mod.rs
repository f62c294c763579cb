//! The ptrace engine: breakpoints at the entry of traced functions in the library that
//! defines them, one stop per call, return values collected through per-call stubs.

pub mod codegen;
pub mod mem;
pub mod space;
pub mod syscalls;
pub mod tracer;
