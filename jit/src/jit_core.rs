//! The state shared by a `Jit` and every handle it gave out: code memory, retirement and the
//! settings emission reads (profiling, unwind information).
//!
//! Every [`Trampoline`](crate::Trampoline), [`Site`](crate::Site) and probe manager holds an
//! `Arc<JitCore>`, so the memory its code lives in and the reclaimer that will free it outlive
//! the handle, whatever order handles drop in; the `Jit` facade is just one more holder.
//! Deferred frees hold only the `Arc<CodeMemory>` they free into (not the core, which holds
//! the reclaimer that holds them: no cycle).

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use crate::code_memory::CodeMemory;
use crate::emitter::EmitterCache;
use crate::profiling::Profiling;
use crate::reclaim::Retirement;

/// Code memory plus the retirement state of one `Jit`.
pub(crate) struct JitCore {
    /// The reservation, its chunks and counters.
    pub(crate) mem: Arc<CodeMemory>,
    /// The reclaimer and its bookkeeping (`reclaim/retirement.rs`).
    pub(crate) retirement: Retirement,
    /// Where emitted code is named for profilers (`profiling.rs`).
    pub(crate) profiling: Profiling,
    /// Whether hook-calling trampolines get registered unwind information (`unwind.rs`).
    pub(crate) unwind_info: bool,
    /// The length of the last custom code emitted: the slot size `Trampoline::emit`
    /// guesses for the next one (a hint, so relaxed and racy by design).
    pub(crate) custom_len_hint: AtomicUsize,
    /// The assembler, slot runs and ids emissions reuse (`emitter.rs`).
    pub(crate) emitter: EmitterCache,
}

impl JitCore {
    pub(crate) fn new(
        mem: Arc<CodeMemory>,
        retirement: Retirement,
        profiling: Profiling,
        unwind_info: bool,
    ) -> Self {
        JitCore {
            mem,
            retirement,
            profiling,
            unwind_info,
            custom_len_hint: AtomicUsize::new(0),
            emitter: EmitterCache::default(),
        }
    }

    /// The id of the `Jit` (and of its code memory).
    pub(crate) fn id(&self) -> u64 {
        self.mem.id()
    }
}
