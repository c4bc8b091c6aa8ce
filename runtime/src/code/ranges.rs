//! The table of registered JIT code ranges.
//!
//! A fixed table of `(start, end)` pairs read with plain atomic loads (async-signal-safe: no
//! lock, no allocation), by the preemption signal handler and by stack scans. A range is
//! published by storing its `end`, then its `start` (`Release`); readers load `start`
//! (`Acquire`), then `end`. It is withdrawn by storing `start = 0` before `end`, and only once
//! nothing can run the code any more (its `Jit` is gone), so a reader that still matched the
//! old range finds code that nothing executes.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::CodeRangeError;

/// Ranges that can be registered at once (one per live `Jit` in practice).
pub const MAX_CODE_RANGES: usize = 256;
const SLOTS: usize = MAX_CODE_RANGES;

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
/// One past the highest slot ever claimed: readers look no further.
static HIGH_WATER: AtomicUsize = AtomicUsize::new(0);

/// The slots that may be in use.
#[inline]
fn used() -> &'static [Slot] {
    &TABLE[..HIGH_WATER.load(Ordering::Acquire).min(SLOTS)]
}

/// A registered range of JIT code; dropping it withdraws the range.
///
/// `tramway-jit` registers each `Jit`'s code reservation when the `Jit` is built. The runtime
/// then knows that addresses in it are JIT code: asynchronous preemption may switch a task out
/// there (see [`preempt`](crate::preempt)), and the stack scan of a task parked inside yielding
/// code records the words that point into it (see the [module docs](super)).
#[derive(Debug)]
#[must_use = "the range is withdrawn when the guard drops"]
pub struct CodeRange {
    slot: usize,
}

impl CodeRange {
    /// Registers `start .. start + len` as JIT code. The code must not rely on running
    /// uninterrupted (a task may be preempted in it inside a preemptible scope, never inside a
    /// non-yielding section), and code addresses it computes must live only in registers and
    /// stack frames (what a stack scan can see), never in the heap.
    ///
    /// Fails with [`CodeRangeError::TooMany`] when [`MAX_CODE_RANGES`] ranges are registered,
    /// and with [`CodeRangeError::Empty`] for a range of length 0 or at address 0.
    pub fn register(start: usize, len: usize) -> Result<CodeRange, CodeRangeError> {
        if start == 0 || len == 0 || start.checked_add(len).is_none() {
            return Err(CodeRangeError::Empty);
        }
        for (i, slot) in TABLE.iter().enumerate() {
            // Claim a free slot by its `end` (0 = free), then publish `start`.
            if slot
                .end
                .compare_exchange(0, start + len, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                // Raised before `start` is published, so a reader that sees the range also
                // looks at its slot.
                HIGH_WATER.fetch_max(i + 1, Ordering::AcqRel);
                slot.start.store(start, Ordering::Release);
                return Ok(CodeRange { slot: i });
            }
        }
        Err(CodeRangeError::TooMany { max: SLOTS })
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
    used().iter().any(|slot| {
        let start = slot.start.load(Ordering::Acquire);
        start != 0 && pc >= start && pc < slot.end.load(Ordering::Acquire)
    })
}

/// The registered ranges now, as `(start, end)` pairs (allocates; not for signal handlers).
pub(crate) fn snapshot() -> Vec<(usize, usize)> {
    used()
        .iter()
        .filter_map(|slot| {
            let start = slot.start.load(Ordering::Acquire);
            let end = slot.end.load(Ordering::Acquire);
            (start != 0 && end > start).then_some((start, end))
        })
        .collect()
}
