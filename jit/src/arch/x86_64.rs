//! x86-64 (System V): every encoding the crate emits, and why it is safe to patch.
//!
//! Implements the contract of `arch/mod.rs`. Nothing here decides where bytes go or when they
//! are published; `code_memory` and `site.rs` do.
//!
//! # Site stubs
//! ```text
//! indirect, memfd:     [0]  jmp qword [rip + 58]   ; FF 25 disp32, through the word at 64
//!                      [6]  int3 ...               ; padding up to the next cache line
//!                      [64] target address (8 bytes, aligned; the patch word)
//!                      slot: 128 bytes; the word has a cache line of its own
//! direct, memfd:       [0]  jmp rel32 ; int3 x3     ; E9 rel32 CC CC CC = the patch word
//!                      [8]  int3 x8                 ; slot: 16 bytes
//! indirect, mprotect:  page 0 (RX)  jmp qword [rip + page - 6]
//!                      page 1 (RW)  target address (the patch word, never executable)
//! direct, mprotect:    impossible (a published code page is never written again)
//! ```
//! A direct word is 8-byte aligned, so the 5-byte `jmp rel32` never straddles an 8-byte
//! boundary and the whole instruction is replaced by one atomic store. An indirect site's
//! word is kept a cache line away from its stub: a swap then stores into a line no core
//! executes from (no self-modifying-code pipeline clears on callers).
//!
//! # Why one Release store is enough here
//! Aligned 8-byte loads and stores are atomic on x86-64, so a caller reads the old or the new
//! word, never a torn one. x86 does not reorder loads with older loads, and instruction fetch
//! from a physical page is coherent with stores to it whichever virtual alias the store used
//! (the RW view), so a caller that sees the new word finds the complete code it points to:
//! [`flush_icache`] is a no-op. A direct patch is cross-modifying code: the Intel SDM asks the
//! executing processor to serialize before running modified code, which only
//! [`sync_core_policy`] with `sync_core` opted in provides (HotSpot hit an erratum with this
//! kind of patching, JDK-8223613; indirect sites avoid the question).

use dynasmrt::{dynasm, DynasmApi};

use super::{ForwardingBody, StubLayout, StubMemory, SyncCorePolicy};
use crate::site::SiteKind;

/// The assembler type handed to emit closures: a dynasm `VecAssembler` for x86-64, created at
/// the final address of the code so relocations resolve correctly.
pub type Assembler = dynasmrt::VecAssembler<dynasmrt::x64::X64Relocation>;

/// The integer argument registers of the C calling convention, as a forwarding hook sees them.
///
/// On x86-64 (System V) these are `rdi, rsi, rdx, rcx, r8, r9`, in that order.
///
/// What a forwarding trampoline preserves and clobbers (x86-64): every argument register (the
/// six above, `xmm0-7` and `al`, the vector-register count of a varargs call) and all stack
/// arguments reach the target unchanged, so it forwards any System V signature; vector
/// arguments wider than 128 bits are only preserved without a hook. Without a hook only `r11`
/// is clobbered (caller-saved, not an argument register). With a hook, also whatever a C-ABI
/// call may clobber besides the saved registers: `r10` (the static-chain register, so targets
/// that take a static chain need a hook-less trampoline), `xmm8-15` and upper vector halves.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HookArgs {
    /// `rdi, rsi, rdx, rcx, r8, r9` at the call, in that order.
    pub int_args: [u64; 6],
}

/// A reservation of at most 2 GiB keeps every target within `rel32` reach of every direct site.
pub(crate) const MAX_CODE_SPAN: usize = 2 << 30;

/// `int3`, the filler of unused and freed code bytes.
const INT3: u8 = 0xCC;

/// `ud2`, the first bytes of freed code (a clear SIGILL for a call into it).
const UD2: [u8; 2] = [0x0F, 0x0B];

/// Size of a direct stub's slot: the 8-byte word, then 8 `int3`.
const DIRECT_STUB_LEN: usize = 16;

/// Executable bytes of a memfd indirect stub: the `jmp qword [rip+disp32]` and its padding.
const INDIRECT_STUB_EXEC_LEN: usize = 16;

/// Length of the `jmp qword [rip+disp32]` instruction.
const INDIRECT_JMP_LEN: usize = 6;

/// Cache-line size assumed for keeping an indirect site's word away from its code.
const CACHE_LINE: usize = 64;

/// The layout table of the module docs.
pub(crate) fn site_stub_layout(kind: SiteKind, memory: StubMemory) -> Option<StubLayout> {
    Some(match (kind, memory) {
        (SiteKind::Indirect, StubMemory::DoubleMapped) => StubLayout {
            len: 2 * CACHE_LINE,
            word_offset: CACHE_LINE,
            exec_len: INDIRECT_STUB_EXEC_LEN,
        },
        (SiteKind::Direct, StubMemory::DoubleMapped) => StubLayout {
            len: DIRECT_STUB_LEN,
            word_offset: 0,
            exec_len: DIRECT_STUB_LEN,
        },
        (SiteKind::Indirect, StubMemory::PageProtected { page_size }) => StubLayout {
            len: 2 * page_size,
            word_offset: page_size,
            exec_len: page_size,
        },
        (SiteKind::Direct, StubMemory::PageProtected { .. }) => return None,
    })
}

/// A fresh stub: the jump (indirect: through the word; direct: the word itself) and the word.
pub(crate) fn site_stub_image(kind: SiteKind, layout: &StubLayout, word: u64) -> Vec<u8> {
    let mut bytes = vec![INT3; layout.word_offset + 8];
    if kind == SiteKind::Indirect {
        bytes[..INDIRECT_JMP_LEN].copy_from_slice(&indirect_jmp(layout.word_offset));
    }
    bytes[layout.word_offset..].copy_from_slice(&word.to_le_bytes());
    bytes
}

/// The patch word pointing the stub at `entry` to `target`.
pub(crate) fn site_patch_word(kind: SiteKind, entry: usize, target: usize) -> Option<u64> {
    match kind {
        SiteKind::Indirect => Some(target as u64),
        SiteKind::Direct => direct_word(entry, target),
    }
}

/// `jmp qword [rip + word_offset - 6]` at offset 0, jumping through the word at `word_offset`.
fn indirect_jmp(word_offset: usize) -> [u8; INDIRECT_JMP_LEN] {
    let disp = (word_offset - INDIRECT_JMP_LEN) as i32;
    let d = disp.to_le_bytes();
    [0xFF, 0x25, d[0], d[1], d[2], d[3]]
}

/// The 8-byte word of a direct stub at `entry`: `jmp rel32` to `target`, then three `int3`, as a
/// little-endian `u64` for one aligned atomic store. `None` if `target` is out of rel32 range.
fn direct_word(entry: usize, target: usize) -> Option<u64> {
    let rel = (target as i64).wrapping_sub(entry as i64 + 5);
    let rel = i32::try_from(rel).ok()?;
    let r = rel.to_le_bytes();
    Some(u64::from_le_bytes([
        0xE9, r[0], r[1], r[2], r[3], INT3, INT3, INT3,
    ]))
}

/// Fills freed code with traps: `ud2` at the start, `int3` after it.
pub(crate) fn fill_traps(buf: &mut [u8]) {
    buf.fill(INT3);
    if buf.len() >= UD2.len() {
        buf[..UD2.len()].copy_from_slice(&UD2);
    }
}

/// Fills the bytes after emitted code with `int3`.
pub(crate) fn fill_padding(buf: &mut [u8]) {
    buf.fill(INT3);
}

/// Instruction fetch is coherent with stores on x86-64 (module docs): nothing to do.
#[inline]
pub(crate) fn flush_icache(addr: usize, len: usize) {
    let _ = (addr, len);
}

/// x86-64 needs no core serialization for code at addresses no thread can have fetched since
/// they were last written (which the grace period guarantees), so it is only done when the
/// user opts in (`JitBuilder::sync_core`): after new code, and after a direct patch, the one
/// real cross-modifying store. An aarch64 port would return `true` for new code regardless
/// (after `dc cvau; dsb ish; ic ivau; dsb ish` in its `flush_icache`).
pub(crate) fn sync_core_policy(opted_in: bool) -> SyncCorePolicy {
    SyncCorePolicy {
        after_new_code: opted_in,
        after_direct_patch: opted_in,
    }
}

/// `mov rax, imm64; ret`.
pub(crate) fn emit_constant_return(ops: &mut Assembler, value: u64) {
    dynasm!(ops
        ; .arch x64
        ; mov rax, QWORD value as i64
        ; ret
    );
}

/// Length of [`emit_constant_return`]'s body: `mov rax, imm64` (10) + `ret` (1).
pub(crate) const CONSTANT_RETURN_LEN: usize = 11;

/// Length of the tail jump: `jmp rel32` (5) padded with 8 `int3`, or `mov r11, imm64` (10) +
/// `jmp r11` (3); the same either way, so a body's length never depends on its address.
const TAIL_JUMP_LEN: usize = 13;

/// Length of the counting prologue: `mov r11, imm64` (10) + `lock inc qword [r11]` (4).
const COUNT_LEN: usize = 14;

/// Length of a forwarding body with (`counted`) a call counter and (`hooked`) a hook call.
pub(crate) fn forwarding_len(counted: bool, hooked: bool) -> usize {
    /// The hook call's length, measured once by assembling it (it depends on no address).
    static HOOK_LEN: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let hook = *HOOK_LEN.get_or_init(|| {
        let mut ops = Assembler::new(0);
        emit_hook_call(&mut ops, 0, 0);
        ops.offset().0
    });
    TAIL_JUMP_LEN + if counted { COUNT_LEN } else { 0 } + if hooked { hook } else { 0 }
}

/// The forwarding trampoline body, emitted to run at address `at`.
///
/// ```text
/// [counted:] mov r11, counter ; lock inc qword [r11]   ; the counter lives in heap memory
/// [hook:]    push rax, r9, r8, rcx, rdx, rsi, rdi      ; rsp was 8 mod 16 at entry, now 0 mod 16
///            sub rsp, 128 ; movdqu [rsp+16*i], xmm_i   ; xmm0-7 (float args)
///            mov rdi, user ; lea rsi, [rsp+128]        ; HookArgs = saved rdi, rsi, rdx, rcx, r8, r9
///            mov rax, hook ; call rax                  ; rsp is 16-byte aligned at the call
///            restore xmm0-7, rdi..r9, rax              ; al = vector-register count of a varargs call
/// jmp rel32 target ; int3 x8                           ; tail jump within +-2 GiB, else:
/// mov r11, target ; jmp r11                            ;   the caller's frame is untouched
/// ```
///
/// The trampoline itself clobbers only r11 (caller-saved, not an argument register), so every
/// C-ABI argument register reaches the target unchanged, whatever the signature; stack arguments
/// are untouched. A hook, being a C-ABI call, may also clobber r10 and the non-argument vector
/// state (xmm8-15, upper halves), which no System V argument lives in. Without a counter or a
/// hook the body is just the tail jump: from JIT code in the same reservation, one extra
/// direct jump over a bare site.
pub(crate) fn emit_forwarding(ops: &mut Assembler, body: &ForwardingBody, at: usize) {
    if let Some(counter) = body.counter {
        dynasm!(ops
            ; .arch x64
            ; mov r11, QWORD counter as i64
            ; lock inc QWORD [r11]
        );
    }
    if let Some((func, user)) = body.hook {
        emit_hook_call(ops, func, user);
    }
    let jmp_at = at as i64 + ops.offset().0 as i64;
    match i32::try_from((body.target as i64).wrapping_sub(jmp_at + 5)) {
        Ok(rel) => {
            let r = rel.to_le_bytes();
            ops.extend([0xE9, r[0], r[1], r[2], r[3]]);
            ops.extend([INT3; TAIL_JUMP_LEN - 5]);
        }
        Err(_) => dynasm!(ops
            ; .arch x64
            ; mov r11, QWORD body.target as i64
            ; jmp r11
        ),
    }
}

/// Saves the argument registers, calls `func(user, &saved)`, restores them.
fn emit_hook_call(ops: &mut Assembler, func: u64, user: u64) {
    dynasm!(ops
        ; .arch x64
        ; push rax
        ; push r9
        ; push r8
        ; push rcx
        ; push rdx
        ; push rsi
        ; push rdi
        ; sub rsp, 128
        ; movdqu [rsp], xmm0
        ; movdqu [rsp + 16], xmm1
        ; movdqu [rsp + 32], xmm2
        ; movdqu [rsp + 48], xmm3
        ; movdqu [rsp + 64], xmm4
        ; movdqu [rsp + 80], xmm5
        ; movdqu [rsp + 96], xmm6
        ; movdqu [rsp + 112], xmm7
        ; mov rdi, QWORD user as i64
        ; lea rsi, [rsp + 128]
        ; mov rax, QWORD func as i64
        ; call rax
        ; movdqu xmm0, [rsp]
        ; movdqu xmm1, [rsp + 16]
        ; movdqu xmm2, [rsp + 32]
        ; movdqu xmm3, [rsp + 48]
        ; movdqu xmm4, [rsp + 64]
        ; movdqu xmm5, [rsp + 80]
        ; movdqu xmm6, [rsp + 96]
        ; movdqu xmm7, [rsp + 112]
        ; add rsp, 128
        ; pop rdi
        ; pop rsi
        ; pop rdx
        ; pop rcx
        ; pop r8
        ; pop r9
        ; pop rax
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_lengths_do_not_depend_on_the_address() {
        for (counted, hooked) in [(false, false), (true, false), (false, true), (true, true)] {
            for (at, target) in [(0x1000usize, 0x2000u64), (0x1000, 1 << 40)] {
                let body = ForwardingBody {
                    counter: counted.then_some(0x5000),
                    hook: hooked.then_some((0x6000, 0x7000)),
                    target,
                };
                let mut ops = Assembler::new(at);
                emit_forwarding(&mut ops, &body, at);
                assert_eq!(ops.offset().0, forwarding_len(counted, hooked));
            }
        }
        let mut ops = Assembler::new(0);
        emit_constant_return(&mut ops, u64::MAX);
        assert_eq!(ops.offset().0, CONSTANT_RETURN_LEN);
    }

    #[test]
    fn a_near_tail_jump_is_rel32() {
        let body = ForwardingBody {
            counter: None,
            hook: None,
            target: 0x1000 + 0x40,
        };
        let mut ops = Assembler::new(0x1000);
        emit_forwarding(&mut ops, &body, 0x1000);
        let bytes = ops.finalize().unwrap();
        assert_eq!(bytes[..5], [0xE9, 0x3B, 0, 0, 0]);
    }

    #[test]
    fn direct_word_encodes_jmp_rel32_and_checks_range() {
        let w = site_patch_word(SiteKind::Direct, 0x1000, 0x1000 + 5 + 0x10).unwrap();
        assert_eq!(w.to_le_bytes(), [0xE9, 0x10, 0, 0, 0, 0xCC, 0xCC, 0xCC]);
        assert!(site_patch_word(SiteKind::Direct, 0x1000, 0x1000 + (3usize << 30)).is_none());
    }

    #[test]
    fn indirect_stub_jumps_through_its_word() {
        let layout = site_stub_layout(SiteKind::Indirect, StubMemory::DoubleMapped).unwrap();
        let image = site_stub_image(SiteKind::Indirect, &layout, 0x1122_3344);
        assert_eq!(image[..6], [0xFF, 0x25, 58, 0, 0, 0]);
        assert_eq!(image[64..], 0x1122_3344u64.to_le_bytes());
        assert_eq!(indirect_jmp(8), [0xFF, 0x25, 2, 0, 0, 0]);
    }

    #[test]
    fn direct_stubs_need_the_double_mapping() {
        let memory = StubMemory::PageProtected { page_size: 4096 };
        assert_eq!(site_stub_layout(SiteKind::Direct, memory), None);
    }

    #[test]
    fn trap_fill_starts_with_ud2() {
        let mut b = [0u8; 5];
        fill_traps(&mut b);
        assert_eq!(b, [0x0F, 0x0B, 0xCC, 0xCC, 0xCC]);
    }
}
