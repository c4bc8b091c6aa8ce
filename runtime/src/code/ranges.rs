//! The address ranges where preemption may land: code that a JIT registered as preemptible.
//!
//! A fixed table of `(start, end)` pairs read by the signal handler with plain atomic loads
//! (async-signal-safe: no lock, no allocation). A range is published by storing its `end`,
//! then its `start` (`Release`); the handler loads `start` (`Acquire`), then `end`. It is
//! withdrawn by storing `start = 0` before `end`, and only once nothing can run the code any
//! more (its `Jit` is gone), so a handler that still matched the old range finds code that
//! nothing executes: it never gets that far, because the interrupted PC was inside it.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::PreemptError;

/// Ranges that can be registered at once (one per `Jit` in practice).
const SLOTS: usize = 64;

struct Slot {
    start: AtomicUsize,
    end: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)] // only used to build the array below
const EMPTY: Slot = Slot {
    start: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
};

static TABLE: [Slot; SLOTS] = [EMPTY; SLOTS];

/// A registered range of preemptible code; dropping it withdraws the range.
///
/// `tramway-jit` registers each `Jit`'s code reservation when the `Jit` is built, so its code
/// is where the runtime's asynchronous preemption may switch a task out (see the
/// [`preempt`](super) docs).
#[derive(Debug)]
#[must_use = "the range is withdrawn when the guard drops"]
pub struct CodeRange {
    slot: usize,
}

impl CodeRange {
    /// Registers `start .. start + len` as code a task may be preempted in. The code must not
    /// rely on running uninterrupted (JIT code: trampolines, compiled bodies) and must not be
    /// inside a non-yielding section when preempted (the handler checks that).
    ///
    /// Fails with [`PreemptError::TooManyCodeRanges`] when every slot is taken.
    pub fn register(start: usize, len: usize) -> Result<CodeRange, PreemptError> {
        if start == 0 || len == 0 {
            return Err(PreemptError::EmptyCodeRange);
        }
        for (i, slot) in TABLE.iter().enumerate() {
            // Claim a free slot by its `end` (0 = free), then publish `start`.
            if slot
                .end
                .compare_exchange(0, start + len, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                slot.start.store(start, Ordering::Release);
                return Ok(CodeRange { slot: i });
            }
        }
        Err(PreemptError::TooManyCodeRanges { max: SLOTS })
    }
}

impl Drop for CodeRange {
    fn drop(&mut self) {
        let slot = &TABLE[self.slot];
        slot.start.store(0, Ordering::Release);
        slot.end.store(0, Ordering::Release);
    }
}

/// Whether `pc` lies in a registered range (async-signal-safe).
pub(crate) fn contains(pc: usize) -> bool {
    TABLE.iter().any(|slot| {
        let start = slot.start.load(Ordering::Acquire);
        start != 0 && pc >= start && pc < slot.end.load(Ordering::Acquire)
    })
}
