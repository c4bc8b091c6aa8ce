//! An emission's reusable state, cached per `Jit`: the assembler, runs of free slots and a
//! block of trampoline ids.
//!
//! # Algorithm
//! An emission takes the `Jit`'s idle [`Emitter`] from its [`EmitterCache`] (one atomic swap;
//! a fresh emitter if another emission holds it), assembles into its [`Assembler`], takes its
//! slot from the emitter's [`SlotRuns`] (`code_memory/run.rs`: the allocator lock once per run
//! of slots, not per slot), copies the bytes in and puts the emitter back (one more swap; if
//! another emission put one back meanwhile, that one is dropped, and its runs' slots go back
//! to their chunks). A cache miss therefore costs more than an assembler: concurrent
//! emissions each take runs of their own, and the loser of the race gives its back.
//!
//! # Ordering and migration
//! The cache is a single `AtomicCell` slot, so it is correct under any interleaving: a swap
//! hands the emitter to exactly one emission, which then owns the assembler and the runs
//! without further synchronization. Nothing is thread-local, so an emit closure that runs on
//! a green thread and migrates between workers keeps nothing that belongs to the worker it
//! started on. An emit closure that unwinds drops the emitter it held (its runs give their slots
//! back; the next emission makes a new emitter); one that emits again from inside itself
//! finds the cache empty and uses an emitter of its own.

use std::sync::Arc;

use crossbeam_utils::atomic::AtomicCell;

use crate::assembler::Assembler;
use crate::code_memory::{CodeMemory, SlotRuns};
use crate::trampoline::TrampolineIds;

/// The largest code buffer an idle emitter keeps: trampolines are tens of bytes, and one
/// large custom body should not hold its buffer for the life of the `Jit`.
const RETAINED_BYTES: usize = 16 << 10;

/// What one emission works with (module docs).
pub(crate) struct Emitter {
    /// The assembler the emit closure writes into.
    pub(crate) ops: Assembler,
    /// Runs of free slots, one per small size class.
    pub(crate) slots: SlotRuns,
    /// The ids the emitter gives its trampolines.
    pub(crate) ids: TrampolineIds,
}

/// A `Jit`'s idle emitter (see the module docs).
#[derive(Default)]
pub(crate) struct EmitterCache(AtomicCell<Option<Box<Emitter>>>);

impl EmitterCache {
    /// The idle emitter, or a new one over `mem` (its assembler to be
    /// [rebased](Assembler::rebase) before use).
    pub(crate) fn take(&self, mem: &Arc<CodeMemory>) -> Box<Emitter> {
        self.0.take().unwrap_or_else(|| {
            Box::new(Emitter {
                ops: Assembler::new(0),
                slots: SlotRuns::new(Arc::clone(mem)),
                ids: TrampolineIds::default(),
            })
        })
    }

    /// Keeps `emitter` for the next emission, with a fresh assembler if its code buffer grew
    /// past [`RETAINED_BYTES`] (dropping the emitter another emission put back meanwhile, if
    /// any).
    pub(crate) fn put(&self, mut emitter: Box<Emitter>) {
        if emitter.ops.buffer_capacity() > RETAINED_BYTES {
            emitter.ops = Assembler::new(0);
        }
        drop(self.0.swap(Some(emitter)));
    }
}
