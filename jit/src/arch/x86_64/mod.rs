//! x86-64 (System V): every encoding the crate emits, and why it is safe to patch.
//!
//! Implements the contract of `arch/mod.rs`. Nothing here decides where bytes go or when they
//! are published; `code_memory` and `site.rs` do. This file holds the site stubs, the patch
//! words, traps and the register blocks hooks see ([`HookArgs`], [`ReturnValues`]);
//! `bodies.rs` the trampoline bodies (forwarding, call-through, constant return),
//! `cfi.rs` the call-frame information of the bodies that call hooks, and `clock.rs` the
//! timestamp counter exit hooks time calls with.
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

mod bodies;
mod cfi;
mod clock;

pub(crate) use self::bodies::{
    emit_constant_return, emit_forwarding, forwarding_len, CONSTANT_RETURN_LEN,
};
pub(crate) use self::cfi::{cfa_program, FrameRows, CIE};
pub(crate) use self::clock::{init_tick_clock, ticks_to_ns};

use std::time::Duration;

use super::{StubLayout, StubMemory, SyncCorePolicy};
use crate::site::SiteKind;

/// dynasm's relocation type for x86-64, which the [`Assembler`](crate::Assembler) resolves.
pub(crate) type Relocation = dynasmrt::x64::X64Relocation;

/// The integer argument registers of the C calling convention, as a forwarding hook sees them.
///
/// On x86-64 (System V) these are `rdi, rsi, rdx, rcx, r8, r9`, in that order. An exit hook
/// sees the values they had when the call entered the trampoline.
///
/// What a forwarding trampoline preserves and clobbers (x86-64): every argument register (the
/// six above, `xmm0-7` and `al`, the vector-register count of a varargs call) and all stack
/// arguments reach the target unchanged, so it forwards any System V signature; vector
/// arguments wider than 128 bits are only preserved without a hook. Without a hook only `r11`
/// is clobbered (caller-saved, not an argument register). With a hook, also whatever a C-ABI
/// call may clobber besides the saved registers: `r10` (the static-chain register, so targets
/// that take a static chain need a hook-less trampoline), `xmm8-15` and upper vector halves.
///
/// A **call-through** trampoline (one with an exit hook, see [`ReturnValues`]) clobbers the
/// same as a hooked one on the way in, passes only the declared number of stack-argument
/// bytes (`ForwardingSpec::stack_arg_bytes`; the rest of the target's stack-argument area is
/// the trampoline's frame), and on the way out preserves `rax`, `rdx`, `xmm0` and `xmm1`
/// (every System V return register but the x87 ones: `long double` results are not
/// supported, and `__m256` results lose their upper halves) and every callee-saved register.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HookArgs {
    /// `rdi, rsi, rdx, rcx, r8, r9` at the call, in that order.
    pub int_args: [u64; 6],
}

/// What an exit hook sees of a call that returned: its return registers and its duration.
///
/// On x86-64 (System V) an integer or pointer result is in `rax` (`int_rets[0]`), a 128-bit
/// or two-word struct result in `rax:rdx`, a `float`/`double` result in the low lane of
/// `xmm0` (`vec_rets[0][0]`), a two-float struct in `xmm0` and `xmm1`. A result wider than
/// 16 bytes is returned in memory: `rax` then holds the address of the caller's buffer.
///
/// The call-through trampoline reads the timestamp counter (`rdtsc`) just before it calls the
/// target and just after the target returned, so [`duration_ns`](Self::duration_ns) covers the
/// target alone (not the entry hooks), including the time a task spent parked inside it. The
/// counter is converted to nanoseconds with a frequency calibrated once against the monotonic
/// clock (`std::time::Instant`) when the first call-through trampoline is emitted. On CPUs
/// with an invariant, synchronized TSC (`constant_tsc` and `nonstop_tsc` in
/// `/proc/cpuinfo`), as on every x86-64 CPU of the last decade, a call that parks on one
/// worker and resumes on another is timed correctly; elsewhere the duration is approximate
/// (and 0 if the counter appears to run backwards).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReturnValues {
    /// `rax, rdx` after the call, in that order.
    pub int_rets: [u64; 2],
    /// `xmm0, xmm1` after the call, each as its low and high 64-bit lane.
    pub vec_rets: [[u64; 2]; 2],
    /// Timestamp-counter value just before the call.
    pub start_ticks: u64,
    /// Timestamp-counter value just after the call returned.
    pub end_ticks: u64,
    /// `end_ticks - start_ticks` in nanoseconds (filled in before the exit hook runs).
    pub duration_ns: u64,
}

impl ReturnValues {
    /// The `i`-th integer return register (`rax`, `rdx`), or `None` past the last one.
    pub fn int(&self, i: usize) -> Option<u64> {
        self.int_rets.get(i).copied()
    }

    /// The `i`-th floating-point return register's low lane (`xmm0`, `xmm1`) as an `f64`.
    pub fn f64(&self, i: usize) -> Option<f64> {
        self.vec_rets.get(i).map(|v| f64::from_bits(v[0]))
    }

    /// The `i`-th floating-point return register's low lane (`xmm0`, `xmm1`) as an `f32`.
    pub fn f32(&self, i: usize) -> Option<f32> {
        self.vec_rets.get(i).map(|v| f32::from_bits(v[0] as u32))
    }

    /// The duration of the call ([`duration_ns`](Self::duration_ns)).
    pub fn duration(&self) -> Duration {
        Duration::from_nanos(self.duration_ns)
    }
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

/// Fills freed code with traps: `ud2` at the start, `int3` after it. With the double mapping
/// most slots are one line (its smallest size class), which is filled with a few constant-size
/// stores: the `memset` call a run-time length takes was about 9 of the driver's instructions
/// per free under callgrind (`benches/retire_path.rs`).
pub(crate) fn fill_traps(buf: &mut [u8]) {
    if let Ok(line) = <&mut [u8; CACHE_LINE]>::try_from(&mut *buf) {
        *line = [INT3; CACHE_LINE];
    } else {
        buf.fill(INT3);
    }
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

/// Asks for the cache line at `addr` in a writable state (`prefetchw`), so that a store to it
/// soon after does not wait for the line to come from another core.
#[inline]
pub(crate) fn prefetch_for_write(addr: usize) {
    // SAFETY: a prefetch never faults (an unmapped or protected address is ignored), changes
    // no memory, register or flag, and is a no-op on cores without PRFCHW (the encoding is a
    // NOP there).
    unsafe {
        std::arch::asm!(
            "prefetchw [{addr}]",
            addr = in(reg) addr,
            options(nostack, preserves_flags, readonly)
        );
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_value_accessors_read_the_right_lanes() {
        let r = ReturnValues {
            int_rets: [7, 8],
            vec_rets: [[1.5f64.to_bits(), 0], [u64::from(2.5f32.to_bits()), 0]],
            duration_ns: 1_500,
            ..ReturnValues::default()
        };
        assert_eq!((r.int(0), r.int(1), r.int(2)), (Some(7), Some(8), None));
        assert_eq!((r.f64(0), r.f32(1), r.f64(2)), (Some(1.5), Some(2.5), None));
        assert_eq!(r.duration(), Duration::from_nanos(1_500));
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
        // A one-line slot takes the constant-size fill, a page the other one.
        let mut line = [0u8; 64];
        fill_traps(&mut line);
        assert_eq!(line[..2], [0x0F, 0x0B]);
        assert!(line[2..].iter().all(|&b| b == INT3));
        let mut page = vec![0u8; 4096];
        fill_traps(&mut page);
        assert_eq!(page[..2], [0x0F, 0x0B]);
        assert!(page[2..].iter().all(|&b| b == INT3));
    }
}
