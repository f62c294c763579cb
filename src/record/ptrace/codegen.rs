//! Machine code the ptrace engine places in the tracee: the layout of an injected region,
//! the per-call return stubs, out-of-line copies of displaced instructions, and the
//! SIGTRAP handler that keeps breakpoints harmless if the recorder dies while attached.
//!
//! A region is one anonymous mapping:
//!
//! ```text
//! base + 0               syscall; int3            (gadget for injected syscalls)
//! base + RESTORER_OFF    mov eax, 15; syscall     (rt_sigreturn, for the handler)
//! base + HANDLER_OFF     SIGTRAP handler emulating the breakpoints of the trap table
//! base + TRAMP_OFF ..    trampolines, TRAMP_SIZE bytes each: the instruction a
//!                        breakpoint displaced, relocated, then a jump back
//! base + STUB_OFF ..     SLOTS return stubs, STUB_SIZE bytes each        (r-x)
//! base + DATA_OFF        u64 sequence counter shared by all stubs        (rw-)
//! base + SIGACT_NEW_OFF  kernel sigaction installing the handler
//! base + SIGACT_OLD_OFF  the program's SIGTRAP action, restored at detach
//! base + SLOT_OFF ..     SLOTS slots of SLOT_SIZE bytes: the data of stub i
//! base + TABLE_OFF       trap table: u64 count, then TABLE_CAP entries of
//!                        (breakpoint address, trampoline, original byte)
//! ```
//!
//! A slot holds `retaddr` (the real return address, written by the tracer), `arg` (an
//! address the stub dereferences: the out-pointer of `posix_memalign`, otherwise the slot
//! itself), `seq` (u64::MAX until the stub runs), `ret` (rax), `out` (`*arg`) and `xmm0`
//! (its low 64 bits: a `float` or `double` result).
//!
//! While a tracer is attached it sees every SIGTRAP first and the handler never runs. If
//! the tracer dies (SIGKILL), the kernel detaches it and the `int3`s stay: the handler then
//! sends each thread that hits one to its trampoline, so the program runs on untraced
//! instead of dying of SIGTRAP.

use iced_x86::{
    BlockEncoder, BlockEncoderOptions, Code, Decoder, DecoderOptions, Instruction, InstructionBlock,
};

/// Offset of the `rt_sigreturn` restorer.
pub const RESTORER_OFF: u64 = 8;
/// Offset of the SIGTRAP handler.
pub const HANDLER_OFF: u64 = 16;
/// Offset of the first trampoline.
pub const TRAMP_OFF: u64 = 256;
/// Bytes reserved per trampoline.
pub const TRAMP_SIZE: u64 = 64;
/// Number of trampolines a region holds.
pub const TRAMPS: u64 = 1020;
/// Offset of the stubs.
pub const STUB_OFF: u64 = TRAMP_OFF + TRAMPS * TRAMP_SIZE;
/// Bytes per stub.
pub const STUB_SIZE: u64 = 128;
/// Number of return slots (calls in flight at once, across all threads of a process).
pub const SLOTS: u64 = 2048;
/// Offset of the data part (page-aligned).
pub const DATA_OFF: u64 = STUB_OFF + SLOTS * STUB_SIZE;
/// Offset of the kernel `sigaction` that installs the handler (32 bytes).
pub const SIGACT_NEW_OFF: u64 = DATA_OFF + 32;
/// Offset of the saved SIGTRAP action of the program (32 bytes).
pub const SIGACT_OLD_OFF: u64 = DATA_OFF + 64;
/// Offset of the first slot.
pub const SLOT_OFF: u64 = DATA_OFF + 128;
/// Bytes per slot.
pub const SLOT_SIZE: u64 = 128;
/// Offset of the trap table.
pub const TABLE_OFF: u64 = SLOT_OFF + SLOTS * SLOT_SIZE;
/// Offset of the first trap table entry.
pub const TABLE_ENTRIES_OFF: u64 = TABLE_OFF + 24;
/// Bytes per trap table entry.
pub const TABLE_ENTRY: u64 = 24;
/// Breakpoints the trap table can hold.
pub const TABLE_CAP: u64 = 4096;
/// Total size of a region.
pub const REGION_LEN: u64 = (TABLE_ENTRIES_OFF + TABLE_CAP * TABLE_ENTRY + 4095) & !4095;

/// Offset of `rip` in the `ucontext_t` a SA_SIGINFO handler receives (x86-64:
/// uc_flags, uc_link, uc_stack, then gregs with REG_RIP = 16).
const UC_RIP: i32 = 40 + 16 * 8;

/// Field offsets inside a slot.
pub mod slot {
    /// Real return address.
    pub const RETADDR: u64 = 0;
    /// Address the stub dereferences into `OUT`.
    pub const ARG: u64 = 8;
    /// Sequence number taken at return, u64::MAX while the call is running.
    pub const SEQ: u64 = 16;
    /// rax at return.
    pub const RET: u64 = 24;
    /// `*ARG` at return.
    pub const OUT: u64 = 32;
    /// One byte, set to 1 after everything else: a byte cannot be read torn, so a reader
    /// that sees it set (and reads the other fields after it) sees them whole.
    pub const DONE: u64 = 40;
    /// Time stamp counter at return.
    pub const TSC: u64 = 48;
    /// The low 64 bits of xmm0 at return.
    pub const XMM0: u64 = 56;
    /// rdx, saved while `rdtsc` uses it (it may hold the upper half of a return value).
    pub const RDX: u64 = 64;
    /// Bytes the tracer writes when it hands the slot to a call.
    pub const INIT_LEN: usize = 48;
}

const _: () = assert!(DATA_OFF % 4096 == 0, "data must start on a page boundary");
// The agent reads stubs and slots by the wire crate's copy of their layout.
const _: () = assert!(
    STUB_OFF == rltrace_wire::region::STUB_OFF
        && STUB_SIZE == rltrace_wire::region::STUB_SIZE
        && SLOTS == rltrace_wire::region::SLOTS
        && SLOT_OFF == rltrace_wire::region::SLOT_OFF
        && SLOT_SIZE == rltrace_wire::region::SLOT_SIZE
        && slot::RETADDR == 0
);
const _: () = assert!(STUB_OFF == TRAMP_OFF + TRAMPS * TRAMP_SIZE);

/// The gadget at the start of every region: `syscall; int3`.
pub const GADGET: [u8; 3] = [0x0f, 0x05, 0xcc];

fn rel32(next_ip: u64, target: u64) -> [u8; 4] {
    let d = target.wrapping_sub(next_ip) as i64;
    debug_assert!(d >= i32::MIN as i64 && d <= i32::MAX as i64);
    (d as i32).to_le_bytes()
}

/// The code of stub `i` of a region at `base`.
pub fn stub(base: u64, i: u64) -> Vec<u8> {
    let at = base + STUB_OFF + i * STUB_SIZE;
    let s = base + SLOT_OFF + i * SLOT_SIZE;
    let seq_counter = base + DATA_OFF;
    let mut c: Vec<u8> = Vec::with_capacity(STUB_SIZE as usize);
    // Each rip-relative instruction is pushed with its displacement computed from the
    // address just past it.
    let rip_rel = |c: &mut Vec<u8>, prefix: &[u8], target: u64, suffix: &[u8]| {
        let next = at + (c.len() + prefix.len() + 4 + suffix.len()) as u64;
        c.extend_from_slice(prefix);
        c.extend_from_slice(&rel32(next, target));
        c.extend_from_slice(suffix);
    };
    rip_rel(&mut c, &[0x48, 0x89, 0x05], s + slot::RET, &[]); // mov [rip+ret], rax
    rip_rel(&mut c, &[0x48, 0x89, 0x15], s + slot::RDX, &[]); // mov [rip+rdx], rdx
    c.extend_from_slice(&[0x0f, 0x31]); // rdtsc
    c.extend_from_slice(&[0x48, 0xc1, 0xe2, 0x20]); // shl rdx, 32
    c.extend_from_slice(&[0x48, 0x09, 0xd0]); // or rax, rdx
    rip_rel(&mut c, &[0x48, 0x89, 0x05], s + slot::TSC, &[]); // mov [rip+tsc], rax
    rip_rel(&mut c, &[0x48, 0x8b, 0x05], s + slot::RET, &[]); // mov rax, [rip+ret]
    rip_rel(&mut c, &[0x48, 0x8b, 0x15], s + slot::RDX, &[]); // mov rdx, [rip+rdx]
    rip_rel(&mut c, &[0x4c, 0x8b, 0x1d], s + slot::ARG, &[]); // mov r11, [rip+arg]
    c.extend_from_slice(&[0x4d, 0x8b, 0x1b]); // mov r11, [r11]
    rip_rel(&mut c, &[0x4c, 0x89, 0x1d], s + slot::OUT, &[]); // mov [rip+out], r11
    c.extend_from_slice(&[0x41, 0xbb, 1, 0, 0, 0]); // mov r11d, 1
    rip_rel(&mut c, &[0xf0, 0x4c, 0x0f, 0xc1, 0x1d], seq_counter, &[]); // lock xadd [rip+seq], r11
    rip_rel(&mut c, &[0x4c, 0x89, 0x1d], s + slot::SEQ, &[]); // mov [rip+slot.seq], r11
    rip_rel(&mut c, &[0x66, 0x0f, 0xd6, 0x05], s + slot::XMM0, &[]); // movq [rip+xmm0], xmm0
    rip_rel(&mut c, &[0xc6, 0x05], s + slot::DONE, &[1]); // mov byte [rip+slot.done], 1
    rip_rel(&mut c, &[0xff, 0x25], s + slot::RETADDR, &[]); // jmp [rip+retaddr]
    debug_assert!(c.len() as u64 <= STUB_SIZE);
    c.resize(STUB_SIZE as usize, 0xcc);
    c
}

/// `mov eax, 15 (rt_sigreturn); syscall`.
pub const RESTORER: [u8; 7] = [0xb8, 15, 0, 0, 0, 0x0f, 0x05];

/// The SIGTRAP handler of a region at `base` (System V: rdi = signal, rsi = siginfo,
/// rdx = ucontext). A trap at a table entry's breakpoint moves the thread to its
/// trampoline; a thread already at a trampoline (the tracer died after redirecting it)
/// just returns; any other trap is the program's own: the default action is put back and
/// the signal raised again, so it ends the process as it would have without rltrace.
/// Every register is restored by `rt_sigreturn`, so the handler may clobber any but rsp.
pub fn trap_handler(base: u64) -> Result<Vec<u8>, iced_x86::IcedError> {
    use iced_x86::code_asm::*;
    let mut a = CodeAssembler::new(64)?;
    let mut next = a.create_label();
    let mut found = a.create_label();
    let mut foreign = a.create_label();
    a.mov(rax, qword_ptr(rdx + UC_RIP))?;
    a.lea(r9, qword_ptr(rax - 1))?;
    a.mov(rcx, base + TABLE_OFF)?;
    a.mov(r8, qword_ptr(rcx))?;
    a.set_label(&mut next)?;
    a.test(r8, r8)?;
    a.jz(foreign)?;
    a.add(rcx, TABLE_ENTRY as i32)?;
    a.dec(r8)?;
    a.cmp(qword_ptr(rcx), r9)?;
    a.je(found)?;
    a.cmp(qword_ptr(rcx + 8), rax)?;
    a.jne(next)?;
    a.ret()?;
    a.set_label(&mut found)?;
    a.mov(rax, qword_ptr(rcx + 8))?;
    a.mov(qword_ptr(rdx + UC_RIP), rax)?;
    a.ret()?;
    a.set_label(&mut foreign)?;
    // rt_sigaction(SIGTRAP, {SIG_DFL}, NULL, 8), then tgkill(getpid(), gettid(), SIGTRAP):
    // blocked while the handler runs, it is delivered at its return.
    a.sub(rsp, 32)?;
    a.xor(eax, eax)?;
    for off in [0, 8, 16, 24] {
        a.mov(qword_ptr(rsp + off), rax)?;
    }
    a.mov(eax, libc::SYS_rt_sigaction as u32)?;
    a.mov(edi, libc::SIGTRAP as u32)?;
    a.mov(rsi, rsp)?;
    a.xor(edx, edx)?;
    a.mov(r10d, 8u32)?;
    a.syscall()?;
    a.mov(eax, libc::SYS_getpid as u32)?;
    a.syscall()?;
    a.mov(r8, rax)?;
    a.mov(eax, libc::SYS_gettid as u32)?;
    a.syscall()?;
    a.mov(rsi, rax)?;
    a.mov(rdi, r8)?;
    a.mov(edx, libc::SIGTRAP as u32)?;
    a.mov(eax, libc::SYS_tgkill as u32)?;
    a.syscall()?;
    a.add(rsp, 32)?;
    a.ret()?;
    a.assemble(base + HANDLER_OFF)
}

/// The kernel `sigaction` (handler, flags, restorer, mask) installing the region's handler.
pub fn handler_sigaction(base: u64) -> [u8; 32] {
    let mut b = [0u8; 32];
    let flags = (libc::SA_SIGINFO | libc::SA_RESTART) as u64 | 0x0400_0000; // SA_RESTORER
    b[0..8].copy_from_slice(&(base + HANDLER_OFF).to_le_bytes());
    b[8..16].copy_from_slice(&flags.to_le_bytes());
    b[16..24].copy_from_slice(&(base + RESTORER_OFF).to_le_bytes());
    b
}

/// Call frame information for the stubs of a region at `base`, as an `.eh_frame` section
/// (one CIE, an FDE per stub, the zero terminator) for the C++ runtime's unwinder
/// (`__register_frame_info`): an exception thrown through a traced call finds the call's
/// return address pointing at a stub, and without this the unwinder stops there and the
/// program ends in `std::terminate`. Each stub is a frame that has pushed nothing: the
/// caller's stack pointer is the stub's, and the return address is the real one, saved
/// in the stub's slot. Its CFA is put 8 bytes higher (with the caller's stack pointer at
/// CFA - 8): the unwinder tells frames apart by their CFA, and with the traced
/// function's CFA repeated it took the stub's frame for the handler's and aborted. FDEs
/// cover each stub from one byte before it, since the unwinder looks up a return
/// address less one.
pub fn stub_eh_frame(base: u64) -> Vec<u8> {
    let pad = |b: &mut Vec<u8>, start: usize| {
        // Lengths exclude their own 4 bytes; entries stay 8-aligned (DW_CFA_nop = 0).
        while (b.len() - start) % 8 != 0 {
            b.push(0);
        }
        let len = (b.len() - start - 4) as u32;
        b[start..start + 4].copy_from_slice(&len.to_le_bytes());
    };
    let mut b = Vec::with_capacity(48 * SLOTS as usize + 32);
    // CIE: id 0, version 1, no augmentation (addresses are absolute 8-byte pointers),
    // code alignment 1, data alignment -8, return address column 16 (rip); rules:
    // CFA = rsp + 8 (DW_CFA_def_cfa), rsp = CFA - 8 (DW_CFA_val_offset, factored).
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&[1, 0, 1, 0x78, 16, 0x0c, 7, 8, 0x14, 7, 1]);
    pad(&mut b, 0);
    for i in 0..SLOTS {
        let start = b.len();
        let stub = base + STUB_OFF + i * STUB_SIZE;
        b.extend_from_slice(&[0; 4]);
        // Distance back to the CIE, from this field.
        b.extend_from_slice(&((start + 4) as u32).to_le_bytes());
        b.extend_from_slice(&(stub - 1).to_le_bytes());
        b.extend_from_slice(&STUB_SIZE.to_le_bytes());
        // DW_CFA_expression r16: the return address is at the slot's first word
        // (DW_OP_addr).
        b.extend_from_slice(&[0x10, 16, 9, 0x03]);
        b.extend_from_slice(&(base + SLOT_OFF + i * SLOT_SIZE + slot::RETADDR).to_le_bytes());
        pad(&mut b, start);
    }
    b.extend_from_slice(&0u32.to_le_bytes());
    b
}

/// All the code of a region at `base`: gadget, restorer, handler, empty trampoline
/// area, stubs. Fails only if the handler cannot be assembled or outgrows its room (a bug
/// the unit test catches); a region is then never injected with a broken handler.
pub fn region_code(base: u64) -> Result<Vec<u8>, String> {
    let mut code = vec![0xccu8; DATA_OFF as usize];
    code[..GADGET.len()].copy_from_slice(&GADGET);
    let r = RESTORER_OFF as usize;
    code[r..r + RESTORER.len()].copy_from_slice(&RESTORER);
    let h = trap_handler(base).map_err(|e| format!("cannot assemble the SIGTRAP handler: {e}"))?;
    if h.len() > (TRAMP_OFF - HANDLER_OFF) as usize {
        return Err(format!("the SIGTRAP handler needs {} bytes", h.len()));
    }
    let at = HANDLER_OFF as usize;
    code[at..at + h.len()].copy_from_slice(&h);
    for i in 0..SLOTS {
        let off = (STUB_OFF + i * STUB_SIZE) as usize;
        code[off..off + STUB_SIZE as usize].copy_from_slice(&stub(base, i));
    }
    Ok(code)
}

/// Why an instruction cannot be run out of line.
#[derive(Debug, thiserror::Error)]
pub enum RelocateError {
    /// The bytes do not decode.
    #[error("cannot decode the instruction at {0:#x}")]
    Invalid(u64),
    /// iced could not re-encode it at the new address (a rip-relative operand out of range).
    #[error("cannot relocate the instruction at {addr:#x}: {why}")]
    Encode {
        /// Original address.
        addr: u64,
        /// iced's reason.
        why: String,
    },
}

/// Relocates the first instruction of `orig` (located at `addr`) to `at`, followed by a
/// jump back to the instruction after it. Returns the code and the instruction length.
pub fn trampoline(orig: &[u8], addr: u64, at: u64) -> Result<(Vec<u8>, u64), RelocateError> {
    let mut dec = Decoder::with_ip(64, orig, addr, DecoderOptions::NONE);
    let ins = dec.decode();
    if ins.is_invalid() {
        return Err(RelocateError::Invalid(addr));
    }
    let len = ins.len() as u64;
    let back = Instruction::with_branch(Code::Jmp_rel32_64, addr + len).map_err(|e| {
        RelocateError::Encode {
            addr,
            why: e.to_string(),
        }
    })?;
    let mut back = back;
    // The block encoder resolves branch targets against the IPs of the block's own
    // instructions; an IP equal to the target would make the jump loop onto itself.
    back.set_ip(u64::MAX - 16);
    let instrs = [ins, back];
    let block = InstructionBlock::new(&instrs, at);
    let res = BlockEncoder::encode(64, block, BlockEncoderOptions::NONE).map_err(|e| {
        RelocateError::Encode {
            addr,
            why: e.to_string(),
        }
    })?;
    if res.code_buffer.len() as u64 > TRAMP_SIZE {
        return Err(RelocateError::Encode {
            addr,
            why: format!("relocated code needs {} bytes", res.code_buffer.len()),
        });
    }
    Ok((res.code_buffer, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stubs_call_frame_information_parses_and_covers_every_stub() {
        use addr2line::gimli::{
            self, BaseAddresses, CieOrFde, EhFrame, LittleEndian, UnwindSection,
        };
        let base = 0x7f00_0000_0000u64;
        let blob = stub_eh_frame(base);
        let eh = EhFrame::new(&blob, LittleEndian);
        let bases = BaseAddresses::default();
        let mut entries = eh.entries(&bases);
        let mut fdes = 0u64;
        while let Some(e) = entries.next().unwrap() {
            if let CieOrFde::Fde(partial) = e {
                let fde = partial.parse(EhFrame::cie_from_offset).unwrap();
                let stub = base + STUB_OFF + fdes * STUB_SIZE;
                assert_eq!(fde.initial_address(), stub - 1);
                assert_eq!(fde.len(), STUB_SIZE);
                // At the stub: CFA = rsp + 8, rsp = CFA - 8, the return address in the slot.
                let mut ctx = gimli::UnwindContext::new();
                let row = fde
                    .unwind_info_for_address(&eh, &bases, &mut ctx, stub)
                    .unwrap();
                assert_eq!(
                    *row.cfa(),
                    gimli::CfaRule::RegisterAndOffset {
                        register: gimli::X86_64::RSP,
                        offset: 8
                    }
                );
                assert_eq!(
                    row.register(gimli::X86_64::RSP),
                    Some(gimli::RegisterRule::ValOffset(-8))
                );
                assert!(matches!(
                    row.register(gimli::X86_64::RA),
                    Some(gimli::RegisterRule::Expression(_))
                ));
                fdes += 1;
            }
        }
        assert_eq!(fdes, SLOTS);
    }

    fn decode_all(code: &[u8], ip: u64) -> Vec<Instruction> {
        let mut d = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
        let mut v = Vec::new();
        while d.can_decode() {
            v.push(d.decode());
        }
        v
    }

    #[test]
    fn stub_decodes_to_the_intended_instructions() {
        let base = 0x7f12_3456_0000;
        let code = stub(base, 5);
        let ins = decode_all(&code, base + STUB_OFF + 5 * STUB_SIZE);
        let codes: Vec<Code> = ins.iter().take(17).map(|i| i.code()).collect();
        assert_eq!(
            codes,
            [
                Code::Mov_rm64_r64,
                Code::Mov_rm64_r64,
                Code::Rdtsc,
                Code::Shl_rm64_imm8,
                Code::Or_rm64_r64,
                Code::Mov_rm64_r64,
                Code::Mov_r64_rm64,
                Code::Mov_r64_rm64,
                Code::Mov_r64_rm64,
                Code::Mov_r64_rm64,
                Code::Mov_rm64_r64,
                Code::Mov_r32_imm32,
                Code::Xadd_rm64_r64,
                Code::Mov_rm64_r64,
                Code::Movq_xmmm64_xmm,
                Code::Mov_rm8_imm8,
                Code::Jmp_rm64,
            ]
        );
        let s = base + SLOT_OFF + 5 * SLOT_SIZE;
        assert_eq!(ins[0].ip_rel_memory_address(), s + slot::RET);
        assert_eq!(ins[1].ip_rel_memory_address(), s + slot::RDX);
        assert_eq!(ins[3].immediate8(), 32);
        assert_eq!(ins[5].ip_rel_memory_address(), s + slot::TSC);
        assert_eq!(ins[6].ip_rel_memory_address(), s + slot::RET);
        assert_eq!(ins[7].ip_rel_memory_address(), s + slot::RDX);
        let ins = &ins[7..];
        assert_eq!(ins[1].ip_rel_memory_address(), s + slot::ARG);
        assert_eq!(ins[3].ip_rel_memory_address(), s + slot::OUT);
        assert!(ins[5].has_lock_prefix());
        assert_eq!(ins[5].ip_rel_memory_address(), base + DATA_OFF);
        assert_eq!(ins[6].ip_rel_memory_address(), s + slot::SEQ);
        assert_eq!(ins[7].ip_rel_memory_address(), s + slot::XMM0);
        assert_eq!(ins[8].ip_rel_memory_address(), s + slot::DONE);
        assert_eq!(ins[8].immediate8(), 1);
        assert_eq!(ins[9].ip_rel_memory_address(), s + slot::RETADDR);
    }

    #[test]
    fn trap_handler_fits_and_reads_the_table() {
        let base = 0x7f12_3456_0000;
        let code = trap_handler(base).unwrap();
        assert!(
            code.len() as u64 <= TRAMP_OFF - HANDLER_OFF,
            "{} bytes",
            code.len()
        );
        let ins = decode_all(&code, base + HANDLER_OFF);
        assert!(ins.iter().all(|i| !i.is_invalid()));
        assert_eq!(ins[0].memory_displacement64(), 168);
        assert_eq!(ins[2].immediate64(), base + TABLE_OFF);
        let region = region_code(base).unwrap();
        assert_eq!(&region[HANDLER_OFF as usize..][..code.len()], &code[..]);
        assert_eq!(&region[RESTORER_OFF as usize..][..7], &RESTORER);
        let sa = handler_sigaction(base);
        assert_eq!(sa[0..8], (base + HANDLER_OFF).to_le_bytes());
    }

    #[test]
    fn trampoline_fixes_rip_relative_operands() {
        // mov rax, [rip+0x100] at 0x1000, relocated to 0x2000.
        let orig = [0x48, 0x8b, 0x05, 0x00, 0x01, 0x00, 0x00, 0x90];
        let (code, len) = trampoline(&orig, 0x1000, 0x2000).unwrap();
        assert_eq!(len, 7);
        let ins = decode_all(&code, 0x2000);
        assert_eq!(ins[0].ip_rel_memory_address(), 0x1107);
        assert_eq!(ins[1].near_branch_target(), 0x1007);
    }

    #[test]
    fn trampoline_reaches_far_targets() {
        // push r12, relocated 100 GiB away: the jump back must still land.
        let orig = [0x41, 0x54];
        let far = 100u64 << 30;
        let (code, len) = trampoline(&orig, 0x7f00_0000_0000, 0x7f00_0000_0000 - far).unwrap();
        assert_eq!(len, 2);
        assert!(code.len() <= TRAMP_SIZE as usize);
    }
}
