//! Deferred callbacks: the queue, lazy batching, and running a batch.
//!
//! Every callback queued before a GP starts joins that GP's batch (the driver takes the whole
//! queue when it starts the GP), so a burst of N callbacks costs one GP. A batch that nobody
//! waits for is *lazy*: its GP starts only once the oldest callback has waited
//! [`GraceConfig::callback_delay`](super::GraceConfig::callback_delay), or at once when
//! [`LAZY_BATCH_MAX`] are queued. The driver is woken for the first callback of a batch (it
//! then waits out the delay by itself) and for a full batch, not for every callback.
//! `barrier` waits for `callbacks_done` (see `driver.rs`).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::driver::Engine;

/// A deferred callback.
pub(super) type Callback = Box<dyn FnOnce() + Send>;

/// A batch this large starts its grace period without waiting out the callback delay
/// (smaller under test, to exercise the full-batch path).
#[cfg(not(test))]
const LAZY_BATCH_MAX: usize = 4096;
#[cfg(test)]
const LAZY_BATCH_MAX: usize = 16;

/// Callbacks queued for the next GP to start.
#[derive(Default)]
pub(super) struct PendingCallbacks {
    list: Vec<Callback>,
    /// When the oldest of `list` was queued.
    first_at: Option<Instant>,
}

impl PendingCallbacks {
    pub(super) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Queues `f`; returns whether the driver must be woken (first of a batch, or full).
    fn push(&mut self, f: Callback) -> bool {
        if self.list.is_empty() {
            self.first_at = Some(Instant::now());
        }
        self.list.push(f);
        self.list.len() == 1 || self.list.len() == LAZY_BATCH_MAX
    }

    /// How much longer the batch may wait for more callbacks; `None` when its GP is due.
    pub(super) fn time_left(&self, delay: Duration) -> Option<Duration> {
        if self.list.len() >= LAZY_BATCH_MAX {
            return None;
        }
        let age = self.first_at.map_or(Duration::MAX, |t| t.elapsed());
        delay.checked_sub(age).filter(|left| !left.is_zero())
    }

    /// Takes the whole batch (the driver, when it starts a GP).
    pub(super) fn take(&mut self) -> Vec<Callback> {
        self.first_at = None;
        std::mem::take(&mut self.list)
    }
}

impl Engine {
    /// Queues `f` for the next GP to start (see the module docs).
    pub(super) fn queue_callback(&self, f: Callback) {
        let mut seq = self.lock();
        if seq.callbacks.push(f) {
            self.wake_driver(&seq);
        }
        drop(seq);
        self.counters
            .callbacks_queued
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Runs a GP's batch in queueing order. A panicking callback is counted and logged; the
    /// others still run.
    pub(super) fn run_callbacks(&self, batch: Vec<Callback>) {
        for cb in batch {
            if catch_unwind(AssertUnwindSafe(cb)).is_err() {
                self.counters
                    .callbacks_panicked
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(target: "tramway::grace", "a grace-period callback panicked");
            }
            self.counters.callbacks_run.fetch_add(1, Ordering::Relaxed);
        }
    }
}
