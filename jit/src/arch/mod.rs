//! The architecture contract: every byte of machine code the crate emits, behind one interface.
//!
//! The portable modules (`site`, `trampoline`, `forwarding`, `code_memory`, `reclaim`,
//! `probe`, `jit`) decide *where* code goes, *when* it is published and *when* it is freed;
//! they never name a register or an instruction encoding. Everything that does lives in
//! exactly one `arch/<arch>` module (`x86_64/`: stubs and register blocks in `mod.rs`,
//! bodies, clock), selected below by `target_arch`. Porting the crate to a new architecture
//! is one new module that defines every item of this contract (the compile-time check at the
//! bottom of this file names each one with its signature).
//!
//! # The contract
//! **Site stubs.** A patch site is a small stub in a code slot plus one 8-byte aligned
//! *patch word* that a swap replaces with a single atomic Release store (the protocol is in
//! `site.rs`).
//! - [`site_stub_layout`]`(kind, memory)` -> [`StubLayout`] `{ len, word_offset, exec_len }`:
//!   the slot size to allocate, where the patch word lies in it, and how many leading bytes
//!   must be executable. It depends on the site kind (indirect: the stub jumps through the
//!   word; direct: the word *is* the jump instruction) and on the code-memory backend
//!   ([`StubMemory`]): with the memfd double mapping the word can be rewritten in place
//!   through the RW view; with the mprotect fallback code pages are never written once
//!   published, so an indirect stub's word needs a data page of its own and a direct stub is
//!   impossible (`None`).
//! - [`site_stub_image`]`(kind, layout, word)`: the bytes of a fresh stub whose patch word is
//!   `word` (`layout.word_offset + 8` bytes; code memory pads the slot's rest with
//!   [`fill_padding`]).
//! - [`site_patch_word`]`(kind, entry, target)`: the word that points a stub at `entry` to
//!   `target`: the address itself for indirect stubs, the encoded jump for direct ones, or
//!   `None` if a direct stub cannot reach `target` (the caller reports
//!   `JitError::TargetOutOfRange`). [`MAX_CODE_SPAN`] bounds the reservation so that every
//!   target in it is reachable.
//!
//! **Bodies.** [`emit_forwarding`] (optionally count the call, optionally call a hook with
//! the saved argument registers as [`HookArgs`], tail-jump to the target, leaving every
//! argument of the platform's C calling convention intact) and [`emit_constant_return`].
//! With [`ForwardingBody::call_through`] the forwarding body *calls* the target instead
//! (the protocol is in `forwarding.rs`): it saves the argument registers, calls the entry
//! hook if any, calls `enter` (`yielding_code_enter`), copies the declared stack-argument
//! bytes, reads the [tick counter](ticks_to_ns), calls the target with its return address
//! on the caller's stack, saves the return registers as [`ReturnValues`], reads the counter,
//! calls `leave`, calls the exit hook with the saved arguments and return values, restores
//! the return registers and returns; stack 16-byte aligned at every call, nothing stored
//! below the stack pointer, callee-saved registers preserved.
//! Each body's length depends only on its shape, never on the address it is emitted at
//! ([`forwarding_len`], [`CONSTANT_RETURN_LEN`]), so the portable side allocates its slot
//! first and assembles once, at the final address.
//!
//! **Unwind information.** [`emit_forwarding`] records, into a [`FrameRows`], where the
//! canonical frame address is at every instruction of a body that calls a hook (those bodies
//! set up a frame record, so frame-pointer unwinders walk through them too);
//! [`cfa_program`] encodes the rows as DWARF CFA instructions for the body's FDE, and
//! [`CIE`] holds the architecture's CIE parameters (alignment factors, return-address
//! column, initial rules). The `.eh_frame` framing and the registration are portable
//! (`unwind.rs`). Like a body's length, its rows depend only on its shape.
//!
//! **Hook arguments.** [`HookArgs`] is the block of saved integer argument registers a hook
//! receives, and its docs are the public statement of what a forwarding trampoline clobbers.
//! [`ReturnValues`] is what an exit hook receives: the return registers and the tick counter
//! at both ends of the call; [`init_tick_clock`] prepares the conversion and
//! [`ticks_to_ns`] converts.
//!
//! **Assembler.** `Relocation` is dynasm's relocation type for the architecture, which the
//! portable [`Assembler`] (`assembler.rs`) resolves.
//!
//! **Traps.** [`fill_traps`] fills freed code (a call into it faults at once);
//! [`fill_padding`] fills the unused bytes after emitted code.
//!
//! **Writes.** [`prefetch_for_write`] asks for a cache line the caller is about to write
//! (the allocator's new slot) in a writable state, a hint that may do nothing.
//!
//! **Instruction-stream coherence.** [`flush_icache`] makes written code visible to
//! instruction fetch (a no-op where fetch is coherent with stores), and
//! [`sync_core_policy`] is the one place that decides when every core must also be
//! serialized (`membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE)`, issued by
//! `code_memory` through `os`): after writing new code, and after patching a direct site.

use crate::site::SiteKind;
use crate::unwind::CieParams;

#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
use self::x86_64 as imp;

#[cfg(not(target_arch = "x86_64"))]
compile_error!(
    "tramway-jit emits machine code for x86-64 only. A port is one new module, \
     jit/src/arch/<arch>.rs (or <arch>/mod.rs), that implements the contract documented in \
     jit/src/arch/mod.rs (site stubs and patch words, forwarding, call-through and \
     constant-return bodies and their frame rows (CFI), HookArgs, ReturnValues and the tick \
     counter, the relocation type, trap fill, icache flush and the core-serialization policy), \
     selected here with \
     #[cfg(target_arch = ...)]."
);

pub(crate) use self::imp::{
    cfa_program, emit_constant_return, emit_forwarding, fill_padding, fill_traps, flush_icache,
    forwarding_len, init_tick_clock, prefetch_for_write, site_patch_word, site_stub_image,
    site_stub_layout, sync_core_policy, ticks_to_ns, FrameRows, Relocation, CIE,
    CONSTANT_RETURN_LEN, MAX_CODE_SPAN,
};
pub use self::imp::{HookArgs, ReturnValues};

use crate::assembler::Assembler;

/// How the code-memory backend lets a site's patch word be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StubMemory {
    /// memfd double mapping: any byte can be rewritten through the RW view at any time.
    DoubleMapped,
    /// mprotect fallback: executable pages are never written again, and protections change
    /// per page of `page_size` bytes.
    PageProtected {
        /// The system page size.
        page_size: usize,
    },
}

/// Where a site's pieces lie in its slot (see [`site_stub_layout`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StubLayout {
    /// Bytes to allocate for the stub.
    pub(crate) len: usize,
    /// Offset of the 8-byte aligned patch word from the slot's start.
    pub(crate) word_offset: usize,
    /// Leading bytes that must be executable (the rest may stay writable data).
    pub(crate) exec_len: usize,
}

/// When every core of the process must execute a core-serializing instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SyncCorePolicy {
    /// After new code is written, before it is published.
    pub(crate) after_new_code: bool,
    /// After a direct site's patch word (an instruction) is replaced.
    pub(crate) after_direct_patch: bool,
}

impl SyncCorePolicy {
    /// Whether the process must register for sync-core membarriers at all.
    pub(crate) fn needed(self) -> bool {
        self.after_new_code || self.after_direct_patch
    }
}

/// What a forwarding trampoline embeds (all of it by address; nothing is read from code).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ForwardingBody {
    /// Address of the `AtomicU64` call counter (heap memory, never code), if calls are counted.
    pub(crate) counter: Option<u64>,
    /// `(function, first argument)` of the (entry) hook call, if any: the function is called
    /// as `extern "C" fn(user, *const HookArgs)`.
    pub(crate) hook: Option<(u64, u64)>,
    /// Call the target instead of tail-jumping to it, with an exit hook (`None`: tail jump).
    pub(crate) call_through: Option<CallThrough>,
    /// The target.
    pub(crate) target: u64,
}

/// What a call-through body embeds besides a forwarding body's parts.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CallThrough {
    /// `(function, first argument)` of the exit hook call: the function is called as
    /// `extern "C" fn(user, *const HookArgs, *mut ReturnValues)`.
    pub(crate) exit_hook: (u64, u64),
    /// `extern "C" fn()` called before the target (`yielding_code_enter`).
    pub(crate) enter: u64,
    /// `extern "C" fn()` called after the target returned (`yielding_code_leave`).
    pub(crate) leave: u64,
    /// Bytes of stack arguments to copy for the target: a multiple of 8, bounded by the
    /// portable side (`forwarding::MAX_STACK_ARG_BYTES`).
    pub(crate) stack_arg_bytes: usize,
}

/// Every arch file defines the same items with the same signatures; this names each one, so
/// a port that misses or changes one fails to compile here rather than somewhere portable.
const _: () = {
    let _: fn(SiteKind, StubMemory) -> Option<StubLayout> = site_stub_layout;
    let _: fn(SiteKind, &StubLayout, u64) -> Vec<u8> = site_stub_image;
    let _: fn(SiteKind, usize, usize) -> Option<u64> = site_patch_word;
    let _: fn(&mut Assembler, &ForwardingBody, usize, &mut FrameRows) = emit_forwarding;
    let _: fn() -> FrameRows = FrameRows::default;
    let _: fn(&FrameRows) -> Vec<u8> = cfa_program;
    let _: CieParams = CIE;
    let _: fn(&ForwardingBody) -> usize = forwarding_len;
    let _: fn() = init_tick_clock;
    let _: fn(u64) -> u64 = ticks_to_ns;
    let _: fn(&mut Assembler, u64) = emit_constant_return;
    let _: usize = CONSTANT_RETURN_LEN;
    let _: fn(&mut [u8]) = fill_traps;
    let _: fn(&mut [u8]) = fill_padding;
    let _: fn(usize, usize) = flush_icache;
    let _: fn(usize) = prefetch_for_write;
    let _: fn(bool) -> SyncCorePolicy = sync_core_policy;
    let _: usize = MAX_CODE_SPAN;
    let _: fn(&HookArgs) -> &[u64] = |args| &args.int_args;
    let _: fn(&ReturnValues) -> (u64, u64, u64) = |r| (r.start_ticks, r.end_ticks, r.duration_ns);
};
