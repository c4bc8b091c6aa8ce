//! The collection scope: this thread's deferred frees, gathered into one reclaimer callback.
//!
//! Dropping many retired trampolines at once (a probe batch that swapped 1000 sites) defers
//! one free per trampoline through `Retirement::defer_free`. Queued one by one, they share a
//! grace period only if the grace-period driver does not start one while the burst is being
//! queued, and on a loaded machine (the dropping thread preempted mid-burst) it does: a
//! 1000-site batch was seen spread over dozens of GPs. Inside [`collect`] the frees are
//! instead taken into a thread-local list, which `Retirement::retire_together` queues as
//! **one** callback: one grace period per scope, deterministically, and one driver wake-up
//! instead of one per trampoline.
//!
//! Safety of the merge: every collected free was deferred by this thread inside the scope,
//! i.e. after whatever unpublished its code (the caller does every swap before the scope), and
//! the merged callback is queued after all of them, so its grace period starts after every
//! collected trampoline was unpublished, as each individual one would have.

use std::cell::RefCell;
use std::ops::Range;

use super::Deferred;

/// A collected free and the range of the code it frees.
pub(super) type CodeFree = (Range<usize>, Deferred);

thread_local! {
    static COLLECTOR: RefCell<Option<Vec<CodeFree>>> = const { RefCell::new(None) };
}

/// Runs `f` with deferred frees of this thread collected; returns them in queueing order.
/// Not reentrant: a nested call collects into the outer list and returns an empty one.
pub(super) fn collect(f: impl FnOnce()) -> Vec<CodeFree> {
    let outer = COLLECTOR.with(|c| {
        let mut c = c.borrow_mut();
        let outer = c.is_some();
        if !outer {
            *c = Some(Vec::new());
        }
        outer
    });
    /// Ends the scope if `f` unwinds. The frees collected so far are leaked, neither run
    /// (that would free code without a grace period) nor dropped (a free owns memory that
    /// live code still uses, such as a trampoline's call counter): their code stays mapped.
    struct End(bool);
    impl Drop for End {
        fn drop(&mut self) {
            if !self.0 && std::thread::panicking() {
                std::mem::forget(COLLECTOR.with(|c| c.borrow_mut().take()));
            }
        }
    }
    let end = End(outer);
    f();
    std::mem::forget(end);
    if outer {
        return Vec::new();
    }
    COLLECTOR
        .with(|c| c.borrow_mut().take())
        .unwrap_or_default()
}

/// Whether a collection scope is active on this thread (false while its locals are being
/// destroyed).
pub(super) fn is_collecting() -> bool {
    COLLECTOR
        .try_with(|c| c.borrow().is_some())
        .unwrap_or(false)
}

/// Takes `f` into the current thread's collection if one is active; otherwise returns it.
pub(super) fn try_collect(code: Range<usize>, f: Deferred) -> Option<CodeFree> {
    // `try_with`: a `Retired` may be dropped while this thread's locals are being destroyed
    // (e.g. from a crossbeam deferred function at thread exit); no scope is active then.
    let mut f = Some((code, f));
    let _ = COLLECTOR.try_with(|c| {
        if let Some(list) = c.borrow_mut().as_mut() {
            list.extend(f.take());
        }
    });
    f
}
