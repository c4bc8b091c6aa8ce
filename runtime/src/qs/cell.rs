//! A reader's quiescent-state cell: one word, written only by its owner.
//!
//! ```text
//! state = (transitions << 1) | active
//! ```
//!
//! `active == 0` means the owner runs no reader code and holds no pointer into JIT code.
//! Every owner transition increments `transitions`, so a grace period that snapshotted an
//! active cell knows the owner has passed a quiescent state once the value differs. The
//! barriers that make that inference sound are issued by the transitions (`transitions.rs`);
//! the argument is in the `qs` module docs.
//!
//! Next to the state (on the same cache line, which the owner has just written when it reads
//! it) the cell holds a **wake request**: a grace period that waits for this owner, with a
//! caller blocked on it, sets it; the owner's next transition that can end such a wait (a
//! switch-out, a report, going offline or unregistering; not a switch-in or going online)
//! clears it and wakes the waiters (`waker.rs`). Owners a grace period does not wait for are
//! never asked, so their transitions never wake it. A request can outlive its grace period
//! (the owner passed, and the grace period saw it, before the owner read the request): it
//! then costs the owner's next such transition one needless wake-up.

use std::sync::atomic::Ordering;

use crate::primitive::{AtomicBool, AtomicU64};

/// See the module docs. Private to `qs`: readers change it only through the transitions.
#[derive(Debug)]
pub(super) struct QsCell {
    state: AtomicU64,
    wake_requested: AtomicBool,
}

/// A grace period's view of one cell, taken by [`QsCell::snapshot`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct QsSnapshot(u64);

impl QsSnapshot {
    /// Whether the owner was running reader code when the snapshot was taken.
    pub(crate) fn was_active(self) -> bool {
        self.0 & 1 == 1
    }
}

impl QsCell {
    /// A cell whose owner is inactive.
    pub(super) fn new() -> Self {
        QsCell {
            state: AtomicU64::new(0),
            wake_requested: AtomicBool::new(false),
        }
    }

    /// A grace period asks the owner to wake its waiters at the next transition. The caller
    /// issues a `SeqCst` fence before it re-reads the cell, so that a transition it then
    /// misses sees the request (or, where the owner's side has no fence, is caught by the
    /// waiter's bounded sleep: `grace/stall.rs`).
    pub(super) fn request_wake(&self) {
        self.wake_requested.store(true, Ordering::Relaxed);
    }

    /// The owner, after a transition: whether a grace period asked it to wake the waiters
    /// (the request is then consumed). One load of a line the owner has just written.
    #[inline]
    pub(super) fn take_wake_request(&self) -> bool {
        self.wake_requested.load(Ordering::Relaxed)
            && self.wake_requested.swap(false, Ordering::AcqRel)
    }

    /// Records one transition, ending active or not. The caller issues the barrier.
    #[inline]
    pub(super) fn advance(&self, active: bool) {
        // Only the owner writes, so a load/store pair is enough (no RMW).
        let old = self.state.load(Ordering::Relaxed);
        let new = ((old >> 1).wrapping_add(1) << 1) | u64::from(active);
        // Release: everything the owner did before (e.g. inserting itself into the holdout
        // set) is visible to a grace period that acquires this value.
        self.state.store(new, Ordering::Release);
    }

    /// Reads the cell for a grace-period snapshot.
    #[inline]
    pub(super) fn snapshot(&self) -> QsSnapshot {
        QsSnapshot(self.state.load(Ordering::Acquire))
    }

    /// Whether the owner has passed a quiescent state since `snap`.
    #[inline]
    pub(super) fn passed_since(&self, snap: QsSnapshot) -> bool {
        !snap.was_active() || self.state.load(Ordering::Acquire) != snap.0
    }

    /// Whether the owner is running reader code now.
    #[inline]
    pub(super) fn is_active(&self) -> bool {
        self.snapshot().was_active()
    }
}
