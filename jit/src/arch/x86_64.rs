//! x86-64 encodings: site stubs, trampoline bodies, trap fill.
//!
//! All functions here only produce bytes; where the bytes go and how they are published is decided
//! by `code_memory.rs` and `site.rs`.

use dynasmrt::{dynasm, DynasmApi};

use super::Assembler;

/// `int3`, the filler of unused and freed code bytes.
pub(crate) const INT3: u8 = 0xCC;

/// Size of a site stub slot (memfd mode): an indirect stub (`jmp [rip+2]`, 2 `int3`, 8-byte target
/// slot) or a direct stub (8-byte word holding `jmp rel32` and 3 `int3`, then 8 `int3`).
pub(crate) const SITE_STUB_LEN: usize = 16;

/// Length of the `jmp qword [rip+disp32]` instruction of an indirect stub.
pub(crate) const INDIRECT_STUB_LEN: usize = 6;

/// Fills freed code with traps: `ud2` at the start (a clear SIGILL for a call into a freed
/// trampoline), `int3` after it.
pub(crate) fn fill_traps(buf: &mut [u8]) {
    buf.fill(INT3);
    if buf.len() >= 2 {
        buf[0] = 0x0F;
        buf[1] = 0x0B;
    }
}

/// An indirect stub: `jmp qword [rip + slot_offset - 6]` at offset 0, jumping through the 8-byte
/// slot at `slot_offset` from the stub's start.
pub(crate) fn indirect_stub(slot_offset: usize) -> [u8; INDIRECT_STUB_LEN] {
    let disp = (slot_offset - INDIRECT_STUB_LEN) as i32;
    let d = disp.to_le_bytes();
    [0xFF, 0x25, d[0], d[1], d[2], d[3]]
}

/// The 8-byte word of a direct stub at `entry`: `jmp rel32` to `target`, then three `int3`, as a
/// little-endian `u64` for one aligned atomic store. `None` if `target` is out of rel32 range.
pub(crate) fn direct_word(entry: usize, target: usize) -> Option<u64> {
    let rel = (target as i64).wrapping_sub(entry as i64 + 5);
    let rel = i32::try_from(rel).ok()?;
    let r = rel.to_le_bytes();
    Some(u64::from_le_bytes([
        0xE9, r[0], r[1], r[2], r[3], INT3, INT3, INT3,
    ]))
}

/// `mov rax, imm64; ret`.
pub(crate) fn emit_constant_return(ops: &mut Assembler, value: u64) {
    dynasm!(ops
        ; .arch x64
        ; mov rax, QWORD value as i64
        ; ret
    );
}

/// The forwarding trampoline body.
///
/// ```text
/// mov r11, counter ; lock inc qword [r11]          ; count (counter lives in heap memory, not code)
/// [hook:]  push rax, r9, r8, rcx, rdx, rsi, rdi    ; rsp was 8 mod 16 at entry, now 0 mod 16
///          sub rsp, 128 ; movdqu [rsp+16*i], xmm_i ; xmm0-7 (float args)
///          mov rdi, user ; lea rsi, [rsp+128]      ; HookArgs = saved rdi, rsi, rdx, rcx, r8, r9
///          mov rax, hook ; call rax                ; rsp is 16-byte aligned at the call
///          restore xmm0-7, rdi..r9, rax            ; al = vector-register count of a varargs call
/// mov r11, target ; jmp r11                        ; tail jump: the caller's frame is untouched
/// ```
///
/// The trampoline itself clobbers only r11 (caller-saved, not an argument register), so every
/// C-ABI argument register reaches the target unchanged, whatever the signature; stack arguments
/// are untouched. A hook, being a C-ABI call, may also clobber r10 and the non-argument vector
/// state (xmm8-15, upper halves), which no System V argument lives in.
pub(crate) fn emit_forwarding(
    ops: &mut Assembler,
    counter: u64,
    hook: Option<(u64, u64)>,
    target: u64,
) {
    dynasm!(ops
        ; .arch x64
        ; mov r11, QWORD counter as i64
        ; lock inc QWORD [r11]
    );
    if let Some((func, user)) = hook {
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
    dynasm!(ops
        ; .arch x64
        ; mov r11, QWORD target as i64
        ; jmp r11
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_word_encodes_jmp_rel32_and_checks_range() {
        let w = direct_word(0x1000, 0x1000 + 5 + 0x10).unwrap();
        assert_eq!(w.to_le_bytes(), [0xE9, 0x10, 0, 0, 0, 0xCC, 0xCC, 0xCC]);
        assert!(direct_word(0x1000, 0x1000 + (3usize << 30)).is_none());
    }

    #[test]
    fn indirect_stub_points_at_slot() {
        assert_eq!(indirect_stub(8), [0xFF, 0x25, 2, 0, 0, 0]);
    }

    #[test]
    fn trap_fill_starts_with_ud2() {
        let mut b = [0u8; 5];
        fill_traps(&mut b);
        assert_eq!(b, [0x0F, 0x0B, 0xCC, 0xCC, 0xCC]);
    }
}
