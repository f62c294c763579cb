//! DWARF CFI stack unwinding of another process from a register snapshot and a copy of
//! its stack, with framehop's per-module rule cache. Frame pointers are used only where
//! framehop falls back to them; no assumption is made that they exist.

use std::ops::Range;

use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{FrameAddress, Module, Unwinder};

use crate::elf::FileSlice;

/// Unwinds stacks of one address space.
pub struct StackUnwinder {
    unwinder: UnwinderX86_64<FileSlice>,
    cache: CacheX86_64,
}

impl Default for StackUnwinder {
    fn default() -> Self {
        StackUnwinder {
            unwinder: UnwinderX86_64::new(),
            cache: CacheX86_64::new(),
        }
    }
}

impl Clone for StackUnwinder {
    fn clone(&self) -> Self {
        StackUnwinder {
            unwinder: self.unwinder.clone(),
            cache: CacheX86_64::new(),
        }
    }
}

impl StackUnwinder {
    /// Registers a module mapped at `avma` with load bias `bias`.
    pub fn add_module(
        &mut self,
        name: String,
        avma: Range<u64>,
        bias: u64,
        info: framehop::ExplicitModuleSectionInfo<FileSlice>,
    ) {
        self.unwinder
            .add_module(Module::new(name, avma, bias, info));
    }

    /// Forgets the module whose range starts at `start`.
    pub fn remove_module(&mut self, start: u64) {
        self.unwinder.remove_module(start);
    }

    /// Unwinds from a thread stopped at `pc` with stack pointer `sp` and frame pointer
    /// `bp`, appending up to `max` return addresses (the caller of `pc` first) to `out`.
    /// `read` returns the stack word at an address, or `Err` if it was not captured.
    /// Returns true if the unwinder reached the outermost frame.
    pub fn unwind<F>(
        &mut self,
        pc: u64,
        sp: u64,
        bp: u64,
        max: usize,
        read: &mut F,
        out: &mut Vec<u64>,
    ) -> bool
    where
        F: FnMut(u64) -> Result<u64, ()>,
    {
        let regs = UnwindRegsX86_64::new(pc, sp, bp);
        let mut iter = self.unwinder.iter_frames(pc, regs, &mut self.cache, read);
        loop {
            match iter.next() {
                Ok(Some(FrameAddress::InstructionPointer(_))) => {}
                Ok(Some(FrameAddress::ReturnAddress(ra))) => {
                    if out.len() >= max {
                        return false;
                    }
                    out.push(ra.get());
                }
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    }
}
