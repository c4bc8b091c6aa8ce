//! x86-64 trampoline bodies: forwarding (tail jump), call-through (exit hooks) and constant
//! return. A body's length depends only on its shape (which parts it has, how many
//! stack-argument bytes it copies), never on its address or the addresses it embeds.
//!
//! The two bodies that call out (the entry-hook call of a forwarding body, and the
//! call-through body) set up a frame record (`push rbp; mov rbp, rsp`: `rbp` points at the
//! saved `rbp`, the return address into the caller is right above it), so frame-pointer
//! unwinders walk through them, and record where their frame changes ([`FrameRows`],
//! `cfi.rs`), so DWARF unwinders do too once the rows are registered (`unwind.rs`).

use std::mem::{offset_of, size_of};

use dynasmrt::{dynasm, DynasmApi};

use super::cfi::FrameRows;
use super::{HookArgs, ReturnValues, INT3};
use crate::arch::{CallThrough, ForwardingBody};
use crate::assembler::Assembler;

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

/// The recommended 8-byte `nop` (`nop dword [rax + rax + 0]`), which pads a near `call rel32`
/// (5) to the length of `mov r11, imm64` + `call r11` (13).
const NOP8: [u8; 8] = [0x0F, 0x1F, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00];

/// Length of a forwarding body (see the module docs: it depends only on the body's shape).
pub(crate) fn forwarding_len(body: &ForwardingBody) -> usize {
    if body.call_through.is_some() {
        // Measured by assembling it once at address 0 (only the target's encoding depends on
        // the address, and both encodings have the same length). Exit-hooked bodies are rare
        // enough that this second assembly does not matter.
        let mut ops = Assembler::new(0);
        emit_forwarding(&mut ops, body, 0, &mut FrameRows::default());
        return ops.offset().0;
    }
    /// The hook call's length, measured once by assembling it (it depends on no address).
    static HOOK_LEN: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let hook = *HOOK_LEN.get_or_init(|| {
        let mut ops = Assembler::new(0);
        emit_hook_call(&mut ops, 0, 0, &mut FrameRows::default());
        ops.offset().0
    });
    TAIL_JUMP_LEN
        + if body.counter.is_some() { COUNT_LEN } else { 0 }
        + if body.hook.is_some() { hook } else { 0 }
}

/// The forwarding trampoline body, emitted to run at address `at`: a tail jump (below) or,
/// with `body.call_through`, a call-through ([`emit_call_through`]). The rows of its frame
/// (for unwind information) are recorded into `rows` as it is assembled.
///
/// ```text
/// [counted:] mov r11, counter ; lock inc qword [r11]   ; the counter lives in heap memory
/// [hook:]    push rbp ; mov rbp, rsp                   ; a frame record (rsp was 8 mod 16 at entry)
///            push rax, r9, r8, rcx, rdx, rsi, rdi      ; rsp now 8 mod 16
///            sub rsp, 136 ; movdqu [rsp+16*i], xmm_i   ; xmm0-7 (float args); rsp 0 mod 16
///            mov rdi, user ; lea rsi, [rsp+136]        ; HookArgs = saved rdi, rsi, rdx, rcx, r8, r9
///            mov rax, hook ; call rax                  ; rsp is 16-byte aligned at the call
///            restore xmm0-7, rdi..r9, rax ; pop rbp    ; al = vector-register count of a varargs call
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
pub(crate) fn emit_forwarding(
    ops: &mut Assembler,
    body: &ForwardingBody,
    at: usize,
    rows: &mut FrameRows,
) {
    if let Some(counter) = body.counter {
        dynasm!(ops
            ; .arch x64
            ; mov r11, QWORD counter as i64
            ; lock inc QWORD [r11]
        );
    }
    match &body.call_through {
        None => {
            if let Some((func, user)) = body.hook {
                emit_hook_call(ops, func, user, rows);
            }
            emit_tail_jump(ops, body.target, at);
        }
        Some(ct) => emit_call_through(ops, body.hook, ct, body.target, at, rows),
    }
}

/// `jmp rel32` padded with `int3`, or `mov r11, imm64; jmp r11` ([`TAIL_JUMP_LEN`] either way).
fn emit_tail_jump(ops: &mut Assembler, target: u64, at: usize) {
    let jmp_at = at as i64 + ops.offset().0 as i64;
    match i32::try_from((target as i64).wrapping_sub(jmp_at + 5)) {
        Ok(rel) => {
            let r = rel.to_le_bytes();
            ops.extend([0xE9, r[0], r[1], r[2], r[3]]);
            ops.extend([INT3; TAIL_JUMP_LEN - 5]);
        }
        Err(_) => dynasm!(ops
            ; .arch x64
            ; mov r11, QWORD target as i64
            ; jmp r11
        ),
    }
}

/// A call of `target` whose return address directly follows it: `nop8; call rel32`, or
/// `mov r11, imm64; call r11` (13 bytes either way).
fn emit_call(ops: &mut Assembler, target: u64, at: usize) {
    let call_at = at as i64 + ops.offset().0 as i64 + NOP8.len() as i64;
    match i32::try_from((target as i64).wrapping_sub(call_at + 5)) {
        Ok(rel) => {
            let r = rel.to_le_bytes();
            ops.extend(NOP8);
            ops.extend([0xE8, r[0], r[1], r[2], r[3]]);
        }
        Err(_) => dynasm!(ops
            ; .arch x64
            ; mov r11, QWORD target as i64
            ; call r11
        ),
    }
}

/// `push rbp; mov rbp, rsp`: the frame record both hook-calling bodies open with, its two CFA
/// rows recorded right after each instruction.
fn emit_frame_record(ops: &mut Assembler, rows: &mut FrameRows) {
    dynasm!(ops
        ; .arch x64
        ; push rbp
    );
    rows.pushed_rbp(ops.offset().0);
    dynasm!(ops
        ; .arch x64
        ; mov rbp, rsp
    );
    rows.frame_pointer_set(ops.offset().0);
}

/// Sets up a frame record, saves the argument registers, calls `func(user, &saved)`,
/// restores them and pops the frame record (the layout is in [`emit_forwarding`]'s docs).
fn emit_hook_call(ops: &mut Assembler, func: u64, user: u64, rows: &mut FrameRows) {
    emit_frame_record(ops, rows);
    dynasm!(ops
        ; .arch x64
        ; push rax
        ; push r9
        ; push r8
        ; push rcx
        ; push rdx
        ; push rsi
        ; push rdi
        ; sub rsp, 136
        ; movdqu [rsp], xmm0
        ; movdqu [rsp + 16], xmm1
        ; movdqu [rsp + 32], xmm2
        ; movdqu [rsp + 48], xmm3
        ; movdqu [rsp + 64], xmm4
        ; movdqu [rsp + 80], xmm5
        ; movdqu [rsp + 96], xmm6
        ; movdqu [rsp + 112], xmm7
        ; mov rdi, QWORD user as i64
        ; lea rsi, [rsp + 136]
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
        ; add rsp, 136
        ; pop rdi
        ; pop rsi
        ; pop rdx
        ; pop rcx
        ; pop r8
        ; pop r9
        ; pop rax
        ; pop rbp
    );
    rows.popped_rbp(ops.offset().0);
}

const fn round_up_16(n: i32) -> i32 {
    (n + 15) & !15
}

/// The call-through frame below the saved `rbp`, as offsets from `rsp` after the prologue
/// (`rsp` is 16-byte aligned there and at every call; the frame's size is a multiple of 16):
///
/// ```text
/// rbp + 16 ..            the caller's stack arguments
/// rbp + 8                return address into the caller
/// rbp                    saved rbp                       <- rbp (0 mod 16)
///   [pad to 16]
/// ret  .. ret + 72       ReturnValues: rax, rdx, xmm0, xmm1, start/end ticks, duration
///   [pad to 16]
/// rax                    saved rax (al: vector-register count of a varargs call)
/// args .. args + 48      HookArgs: saved rdi, rsi, rdx, rcx, r8, r9
/// xmm(0) .. + 128        saved xmm0-7
/// 0 .. stack_args        copy of the caller's first stack-argument bytes  <- rsp at the call
/// ```
///
/// Nothing is ever stored below `rsp`: the trampoline does not use a red zone (a callee's
/// frame, or a signal frame, may overwrite it at any time).
struct Frame {
    /// The copied stack-argument bytes, rounded up to 16.
    stack_args: i32,
}

impl Frame {
    fn new(stack_arg_bytes: usize) -> Frame {
        let bytes = i32::try_from(stack_arg_bytes).expect("bounded by MAX_STACK_ARG_BYTES");
        Frame {
            stack_args: round_up_16(bytes),
        }
    }

    /// Where `xmm_i` is saved.
    fn xmm(&self, i: i32) -> i32 {
        self.stack_args + 16 * i
    }

    /// The saved integer argument registers ([`HookArgs`]).
    fn args(&self) -> i32 {
        self.xmm(8)
    }

    /// The saved `rax`.
    fn rax(&self) -> i32 {
        self.args() + size_of::<HookArgs>() as i32
    }

    /// The [`ReturnValues`] block.
    fn ret(&self) -> i32 {
        round_up_16(self.rax() + 8)
    }

    /// Bytes `sub rsp` allocates below the saved `rbp` (a multiple of 16).
    fn size(&self) -> i32 {
        round_up_16(self.ret() + size_of::<ReturnValues>() as i32)
    }
}

/// The call-through body (after the optional counter), emitted to run at `at`:
///
/// ```text
/// push rbp ; mov rbp, rsp ; sub rsp, size    ; rsp 0 mod 16 (8 mod 16 at entry, minus 8)
/// save rdi..r9, rax, xmm0-7 into the frame
/// [entry hook:] mov rdi, user ; lea rsi, [rsp+args] ; mov rax, hook ; call rax
/// mov rax, yielding_code_enter ; call rax    ; the task may park from here on
/// mov rax, [rbp+16+8i] ; mov [rsp+8i], rax   ; for each declared stack-argument word
/// rdtsc ; shl rdx, 32 ; or rax, rdx ; mov [rsp+ret.start_ticks], rax
/// restore xmm0-7, rdi..r9, rax
/// call target                                ; a real call: its return address is on the
///                                            ; task's stack while the target runs or parks
/// save rax, rdx, xmm0, xmm1 into ret
/// rdtsc ... ; mov [rsp+ret.end_ticks], rax
/// mov rax, yielding_code_leave ; call rax
/// mov rdi, exit_user ; lea rsi, [rsp+args] ; lea rdx, [rsp+ret] ; mov rax, exit_hook ; call rax
/// restore rax, rdx, xmm0, xmm1 from ret
/// leave ; ret                                ; rbp and rsp restored
/// ```
///
/// Only `rbp` of the callee-saved registers is touched (saved and restored); the calls are
/// C-ABI calls, which preserve the others. Frame layout: [`Frame`]; `push rbp; mov rbp, rsp`
/// makes it a frame record (`rbp` points at the saved `rbp`, the return address into the
/// caller above it), and its rows are recorded into `rows`.
fn emit_call_through(
    ops: &mut Assembler,
    hook: Option<(u64, u64)>,
    ct: &CallThrough,
    target: u64,
    at: usize,
    rows: &mut FrameRows,
) {
    let f = Frame::new(ct.stack_arg_bytes);
    let size = f.size();
    let (x0, x1, x2, x3) = (f.xmm(0), f.xmm(1), f.xmm(2), f.xmm(3));
    let (x4, x5, x6, x7) = (f.xmm(4), f.xmm(5), f.xmm(6), f.xmm(7));
    let a = f.args();
    let (a1, a2, a3, a4, a5) = (a + 8, a + 16, a + 24, a + 32, a + 40);
    let rax_slot = f.rax();
    let ret = f.ret();
    let ret_rax = ret + offset_of!(ReturnValues, int_rets) as i32;
    let ret_rdx = ret_rax + 8;
    let ret_xmm0 = ret + offset_of!(ReturnValues, vec_rets) as i32;
    let ret_xmm1 = ret_xmm0 + 16;
    let start = ret + offset_of!(ReturnValues, start_ticks) as i32;
    let end = ret + offset_of!(ReturnValues, end_ticks) as i32;

    emit_frame_record(ops, rows);
    dynasm!(ops
        ; .arch x64
        ; sub rsp, size
        ; mov [rsp + a], rdi
        ; mov [rsp + a1], rsi
        ; mov [rsp + a2], rdx
        ; mov [rsp + a3], rcx
        ; mov [rsp + a4], r8
        ; mov [rsp + a5], r9
        ; mov [rsp + rax_slot], rax
        ; movdqu [rsp + x0], xmm0
        ; movdqu [rsp + x1], xmm1
        ; movdqu [rsp + x2], xmm2
        ; movdqu [rsp + x3], xmm3
        ; movdqu [rsp + x4], xmm4
        ; movdqu [rsp + x5], xmm5
        ; movdqu [rsp + x6], xmm6
        ; movdqu [rsp + x7], xmm7
    );
    if let Some((func, user)) = hook {
        dynasm!(ops
            ; .arch x64
            ; mov rdi, QWORD user as i64
            ; lea rsi, [rsp + a]
            ; mov rax, QWORD func as i64
            ; call rax
        );
    }
    dynasm!(ops
        ; .arch x64
        ; mov rax, QWORD ct.enter as i64
        ; call rax
    );
    let words = i32::try_from(ct.stack_arg_bytes / 8).expect("bounded by MAX_STACK_ARG_BYTES");
    for i in 0..words {
        // The caller's stack arguments start above the return address and the saved rbp.
        let (src, dst) = (16 + 8 * i, 8 * i);
        dynasm!(ops
            ; .arch x64
            ; mov rax, [rbp + src]
            ; mov [rsp + dst], rax
        );
    }
    dynasm!(ops
        ; .arch x64
        ; rdtsc
        ; shl rdx, 32
        ; or rax, rdx
        ; mov [rsp + start], rax
        ; movdqu xmm0, [rsp + x0]
        ; movdqu xmm1, [rsp + x1]
        ; movdqu xmm2, [rsp + x2]
        ; movdqu xmm3, [rsp + x3]
        ; movdqu xmm4, [rsp + x4]
        ; movdqu xmm5, [rsp + x5]
        ; movdqu xmm6, [rsp + x6]
        ; movdqu xmm7, [rsp + x7]
        ; mov rdi, [rsp + a]
        ; mov rsi, [rsp + a1]
        ; mov rdx, [rsp + a2]
        ; mov rcx, [rsp + a3]
        ; mov r8, [rsp + a4]
        ; mov r9, [rsp + a5]
        ; mov rax, [rsp + rax_slot]
    );
    emit_call(ops, target, at);
    let (exit_func, exit_user) = ct.exit_hook;
    dynasm!(ops
        ; .arch x64
        ; mov [rsp + ret_rax], rax
        ; mov [rsp + ret_rdx], rdx
        ; movdqu [rsp + ret_xmm0], xmm0
        ; movdqu [rsp + ret_xmm1], xmm1
        ; rdtsc
        ; shl rdx, 32
        ; or rax, rdx
        ; mov [rsp + end], rax
        ; mov rax, QWORD ct.leave as i64
        ; call rax
        ; mov rdi, QWORD exit_user as i64
        ; lea rsi, [rsp + a]
        ; lea rdx, [rsp + ret]
        ; mov rax, QWORD exit_func as i64
        ; call rax
        ; mov rax, [rsp + ret_rax]
        ; mov rdx, [rsp + ret_rdx]
        ; movdqu xmm0, [rsp + ret_xmm0]
        ; movdqu xmm1, [rsp + ret_xmm1]
        ; leave
    );
    rows.popped_rbp(ops.offset().0);
    dynasm!(ops
        ; .arch x64
        ; ret
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(counted: bool, hooked: bool, stack: Option<usize>, target: u64) -> ForwardingBody {
        ForwardingBody {
            counter: counted.then_some(0x5000),
            hook: hooked.then_some((0x6000, 0x7000)),
            call_through: stack.map(|stack_arg_bytes| CallThrough {
                exit_hook: (0x8000, 0x9000),
                enter: 0xA000,
                leave: 0xB000,
                stack_arg_bytes,
            }),
            target,
        }
    }

    #[test]
    fn body_lengths_do_not_depend_on_the_address() {
        for stack in [None, Some(0), Some(8), Some(56), Some(256)] {
            for (counted, hooked) in [(false, false), (true, false), (false, true), (true, true)] {
                let mut lens = Vec::new();
                for (at, target) in [(0x1000usize, 0x2000u64), (0x1000, 1 << 40)] {
                    let b = body(counted, hooked, stack, target);
                    let mut ops = Assembler::new(at);
                    emit_forwarding(&mut ops, &b, at, &mut FrameRows::default());
                    assert_eq!(ops.offset().0, forwarding_len(&b), "{stack:?}");
                    lens.push(ops.offset().0);
                }
                assert_eq!(lens[0], lens[1]);
            }
        }
        let mut ops = Assembler::new(0);
        emit_constant_return(&mut ops, u64::MAX);
        assert_eq!(ops.offset().0, CONSTANT_RETURN_LEN);
    }

    #[test]
    fn a_near_tail_jump_is_rel32() {
        let b = body(false, false, None, 0x1000 + 0x40);
        let mut ops = Assembler::new(0x1000);
        emit_forwarding(&mut ops, &b, 0x1000, &mut FrameRows::default());
        ops.commit().unwrap();
        let bytes = ops.code();
        assert_eq!(bytes[..5], [0xE9, 0x3B, 0, 0, 0]);
    }

    #[test]
    fn a_near_call_is_a_padded_rel32_call() {
        let mut ops = Assembler::new(0x1000);
        emit_call(&mut ops, 0x1000 + 0x40, 0x1000);
        ops.commit().unwrap();
        let bytes = ops.code();
        assert_eq!(bytes[..8], NOP8);
        // rel32 from the end of the call (0x1000 + 13) to 0x1040.
        assert_eq!(bytes[8..], [0xE8, 0x33, 0, 0, 0]);
    }

    #[test]
    fn the_call_through_frame_is_aligned_and_disjoint() {
        for stack in [0usize, 8, 16, 24, 256] {
            let f = Frame::new(stack);
            assert_eq!(f.size() % 16, 0);
            assert!(f.stack_args >= stack as i32 && f.xmm(0) == f.stack_args);
            assert_eq!(f.args() % 8, 0);
            assert!(f.rax() + 8 <= f.ret());
            assert_eq!(f.ret() % 16, 0, "ReturnValues' xmm lanes are 16-aligned");
            assert!(f.ret() + size_of::<ReturnValues>() as i32 <= f.size());
        }
    }
}
