//! How each kind of caller waits for a grace period: a task, a registered thread, any other
//! thread.
//!
//! * A **task** parks on its own [`Event`](crate::Event): its worker switches away, which is
//!   the task's quiescent state, so a task never waits on itself. The driver notifies the
//!   event when the task's target is reached.
//! * A **registered thread** that is online goes offline while it blocks (an offline guard),
//!   so the grace period it waits for does not wait for it.
//! * **Any OS thread** then blocks on the engine's `done` condition variable.
//!
//! A waiter registers its target GP under the state lock together with the request that
//! computes it, so the driver sees the request and the blocked caller at once and expedites
//! the GP (it then arms the readers' waker). The counters are stored before the driver takes
//! the lock to release waiters, so a waiter either sees its counter or is registered and
//! woken.

use std::sync::atomic::Ordering;

use super::driver::{Engine, SeqState};
#[cfg(not(loom))]
use std::time::{Duration, Instant};

use crate::primitive::{self, AtomicU64};
use crate::qs::{in_non_yielding, in_task, OfflineGuard};

/// How long an OS thread blocked on a grace period spins before it sleeps.
#[cfg(not(loom))]
const WAITER_SPIN: Duration = Duration::from_micros(50);

/// Which counter a waiter waits on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Until {
    /// The grace period ended (`synchronize`, cookies).
    Completed,
    /// Its callbacks have run too (`barrier`).
    CallbacksDone,
}

/// A task blocked on a GP number.
pub(super) struct TaskWaiter {
    until: Until,
    target: u64,
    event: std::sync::Arc<crate::Event>,
}

impl Engine {
    fn counter(&self, until: Until) -> &AtomicU64 {
        match until {
            Until::Completed => &self.completed,
            Until::CallbacksDone => &self.callbacks_done,
        }
    }

    /// Waits until the `until` counter reaches the target that `target` computes under the
    /// state lock (see the module docs).
    pub(super) fn wait_for(&self, until: Until, target: impl FnOnce(&mut SeqState) -> u64) {
        assert!(
            !self.on_own_driver(),
            "GraceDomain: waiting for a grace period from one of its own callbacks would wait \
             for itself"
        );
        assert!(
            !in_non_yielding(),
            "GraceDomain: waiting for a grace period inside a non-yielding section (e.g. a JIT \
             hook) would wait for itself"
        );
        let counter = self.counter(until);
        let event = in_task().then(|| std::sync::Arc::new(crate::Event::new()));
        let target = {
            let mut seq = self.lock();
            let target = target(&mut seq);
            if counter.load(Ordering::Acquire) >= target {
                return;
            }
            seq.blocked_callers += 1;
            if let Some(event) = &event {
                seq.task_waiters.push(TaskWaiter {
                    until,
                    target,
                    event: std::sync::Arc::clone(event),
                });
            }
            target
        };
        self.work.notify_one();
        // Undo the registration even if the wait unwinds (a task cancelled at shutdown).
        let _blocked = BlockedCaller(self);
        if let Some(event) = event {
            while counter.load(Ordering::Acquire) < target {
                event.wait();
            }
            return;
        }
        let _offline = OfflineGuard::new();
        // A grace period over idle or briskly switching workers ends in tens of µs; spinning
        // that long first saves the waiter's own wake-up (on a VM an idle vCPU takes tens of
        // µs to wake) without holding the core for long. Then block.
        #[cfg(not(loom))]
        {
            let spin_until = Instant::now() + WAITER_SPIN;
            while counter.load(Ordering::Acquire) < target && Instant::now() < spin_until {
                std::hint::spin_loop();
            }
        }
        let mut seq = self.lock();
        while counter.load(Ordering::Acquire) < target {
            seq = primitive::wait(&self.done, seq);
        }
    }

    /// Wakes the waiters on `until` whose target is `gp` or older. The counter was stored
    /// before this takes the lock (module docs).
    pub(super) fn release_waiters(&self, until: Until, gp: u64) {
        let mut seq = self.lock();
        seq.task_waiters.retain(|w| {
            let due = w.until == until && w.target <= gp;
            if due {
                // One event per waiter: `notify_one` stores a permit if the task has not
                // reached `wait()` yet, so this wake-up cannot be lost.
                w.event.notify_one();
            }
            !due
        });
        drop(seq);
        self.done.notify_all();
    }
}

/// Decrements `blocked_callers` when a waiter leaves, however it leaves.
struct BlockedCaller<'a>(&'a Engine);

impl Drop for BlockedCaller<'_> {
    fn drop(&mut self) {
        self.0.lock().blocked_callers -= 1;
    }
}
