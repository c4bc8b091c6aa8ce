//! How each kind of caller waits for a grace period: a task, a registered thread, any other
//! thread.
//!
//! * A **task** parks on its own [`Event`](crate::Event): its worker switches away, which is
//!   the task's quiescent state, so a task never waits on itself. The driver runs the GP and
//!   notifies the event when the task's target is reached.
//! * An **OS thread** (registered or not) runs the GP itself when it has not started and no
//!   other GP is running (see `driver.rs`, "Who runs a GP"); otherwise it blocks on the
//!   engine's `done` condition variable until the GP it needs has ended (and, for `barrier`,
//!   until the driver has run its callbacks). A registered thread that is online goes offline
//!   for the whole wait (an offline guard), so the GP it waits for, or runs, does not wait for
//!   it.
//!
//! A waiter computes its target GP under the state lock together with its registration (a
//! task from the start, a thread whenever it sleeps), so a runner that claims the GP sees the
//! request and the blocked caller at once and expedites the GP (it then asks the readers it
//! waits for to wake it: `qs/waker.rs`). The counters are stored before a runner takes the
//! lock to release waiters, so a waiter either sees its counter or is registered and woken.
//!
//! A thread that runs the GP itself takes the state lock twice when nothing delays it: once
//! to claim the GP, and once when it ends it, which is also where it sees its counter.

use std::sync::atomic::Ordering;

use super::driver::{Engine, SeqState};
use crate::primitive::{self, AtomicU64};
use crate::qs::{in_non_yielding, in_task, OfflineGuard};

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
        if in_task() {
            self.task_waits(until, target);
        } else {
            self.thread_waits(until, target);
        }
    }

    fn task_waits(&self, until: Until, target: impl FnOnce(&mut SeqState) -> u64) {
        let counter = self.counter(until);
        let event = std::sync::Arc::new(crate::Event::new());
        let target = {
            let mut seq = self.lock();
            let target = target(&mut seq);
            if counter.load(Ordering::Acquire) >= target {
                return;
            }
            seq.blocked_callers += 1;
            seq.task_waiters.push(TaskWaiter {
                until,
                target,
                event: std::sync::Arc::clone(&event),
            });
            self.wake_driver(&seq);
            target
        };
        // Undo the registration even if the wait unwinds (a task cancelled at shutdown).
        let _blocked = BlockedCaller(self);
        while counter.load(Ordering::Acquire) < target {
            event.wait();
        }
    }

    fn thread_waits(&self, until: Until, target: impl FnOnce(&mut SeqState) -> u64) {
        let counter = self.counter(until);
        let _offline = OfflineGuard::new();
        let mut seq = self.lock();
        let target = target(&mut seq);
        if counter.load(Ordering::Acquire) >= target {
            return;
        }
        while counter.load(Ordering::Acquire) < target {
            if !seq.running && seq.started < target {
                // The GP this caller needs has not started and none is running: run it here
                // (expedited: its caller waits). Finishing it hands the lock back.
                let claimed = self.claim(&mut seq);
                seq.inline_grace_periods += 1;
                drop(seq);
                seq = self.run_claimed(claimed, true);
                continue;
            }
            // Counted as blocked only while it sleeps: only then can somebody else claim the
            // GP it needs, and the count makes them expedite it. Both changes are made under
            // the lock that the wait releases and retakes (the wait does not unwind: a
            // poisoned lock is taken anyway).
            seq.blocked_callers += 1;
            seq.sleepers += 1;
            seq = primitive::wait(&self.done, seq);
            seq.sleepers -= 1;
            seq.blocked_callers -= 1;
        }
    }

    /// Wakes the task waiters on `until` whose target is `gp` or older (state lock held;
    /// `done` sleepers are woken by the caller). The counter was stored before.
    pub(super) fn release_task_waiters(&self, seq: &mut SeqState, until: Until, gp: u64) {
        seq.task_waiters.retain(|w| {
            let due = w.until == until && w.target <= gp;
            if due {
                // One event per waiter: `notify_one` stores a permit if the task has not
                // reached `wait()` yet, so this wake-up cannot be lost.
                w.event.notify_one();
            }
            !due
        });
    }
}

/// Decrements `blocked_callers` when a waiter leaves, however it leaves.
struct BlockedCaller<'a>(&'a Engine);

impl Drop for BlockedCaller<'_> {
    fn drop(&mut self) {
        self.0.lock().blocked_callers -= 1;
    }
}
