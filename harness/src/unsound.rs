//! Deliberately unsound reclaimers for the controls that must crash (a safety test that
//! cannot fail proves nothing).

use std::ops::Range;

use tramway_jit::{Deferred, Reclaim};
use tramway_runtime::grace::GraceDomain;

/// A grace domain that ignores code ranges: every ranged free is queued as a plain callback,
/// so a task parked inside yielding JIT code (or inside the implementation behind an exit
/// hook) is treated as quiescent for everything, as on the plain Tasks flavor. Everything
/// else is the domain's own.
pub struct IgnoresCodeRanges(pub GraceDomain);

// SAFETY: NOT sound, on purpose: `defer_code` does not wait for tasks parked inside the code.
// Only the controls use it, in child processes that must crash.
unsafe impl Reclaim for IgnoresCodeRanges {
    fn defer(&self, f: Deferred) {
        self.0.call_boxed(f);
    }
    fn defer_code(&self, _code: &[Range<usize>], f: Deferred) {
        self.0.call_boxed(f);
    }
    fn barrier(&self) {
        self.0.barrier();
    }
    fn barrier_waits_for_grace_period(&self) -> bool {
        true
    }
    fn tracks_current_thread(&self) -> bool {
        self.0.tracks_current_thread()
    }
}
