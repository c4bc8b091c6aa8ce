//! Baselines that benchmarks compare tramway against, built from the same parts.

use corosensei::{Coroutine, CoroutineResult};

/// A bare corosensei coroutine that suspends forever: the cost floor of a task switch.
pub struct BareSwitch(Coroutine<(), (), ()>);

impl Default for BareSwitch {
    fn default() -> Self {
        BareSwitch(Coroutine::new(|y, ()| loop {
            y.suspend(());
        }))
    }
}

impl BareSwitch {
    /// A new coroutine on a default (1 MiB) stack.
    pub fn new() -> Self {
        Self::default()
    }

    /// One `resume` + `suspend` round trip.
    #[inline]
    pub fn round_trip(&mut self) -> bool {
        matches!(self.0.resume(()), CoroutineResult::Yield(()))
    }
}
