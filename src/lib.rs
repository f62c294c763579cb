//! rltrace: record library calls with their stacks, replay them symbolized, find leaks.
//!
//! Data flows one way: [`record`] engines capture events into a recording ([`format`]);
//! replay reads it back, [`symbolize`]s addresses, runs [`analyze`] passes and
//! [`render`]s text.

pub mod analyze;
pub mod elf;
pub mod format;
pub mod pack;
pub mod protos;
pub mod record;
pub mod render;
pub mod replay;
pub mod select;
pub mod symbolize;
pub mod unwind;
