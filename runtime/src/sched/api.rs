//! The task-facing API: free functions for code running inside tasks, and their fallbacks on
//! plain OS threads. Every wait here is a voluntary yield point, a quiescent state.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::scheduler;
use super::task::{self, SwitchKind};
use crate::qs::OfflineGuard;

/// Identity of a task.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TaskInfo {
    /// Unique id within the process (never 0).
    pub id: u64,
    /// Name given at spawn, if any.
    pub name: Option<Arc<str>>,
}

/// The current task's id and name; `None` on a plain OS thread.
pub fn current() -> Option<TaskInfo> {
    task::with_current(|t| TaskInfo {
        id: t.id,
        name: t.name().cloned(),
    })
}

/// Gives the worker to other runnable tasks: a voluntary yield point (a quiescent state).
///
/// Outside a task this is `std::thread::yield_now`.
pub fn yield_now() {
    if task::with_current(|t| t.switch_out(SwitchKind::Yield)).is_none() {
        std::thread::yield_now();
    }
}

/// Parks the current task for at least `dur` (a voluntary yield point); the worker runs other
/// tasks meanwhile. `sleep(Duration::ZERO)` is `yield_now()`.
///
/// Outside a task this is `std::thread::sleep`.
pub fn sleep(dur: Duration) {
    let Some(task) = task::current_arc() else {
        std::thread::sleep(dur);
        return;
    };
    if dur.is_zero() {
        task.switch_out(SwitchKind::Yield);
        return;
    }
    let Some(scheduler) = task.scheduler.upgrade() else {
        std::thread::sleep(dur);
        return;
    };
    let deadline = Instant::now() + dur;
    scheduler.unpark_at(deadline, task.clone());
    drop(scheduler);
    while Instant::now() < deadline {
        task.park();
    }
}

/// Runs a blocking call while the caller counts as quiescent (an *extended* quiescent state).
///
/// * In a task: `f` runs on the current worker thread with the worker's quiescent-state cell
///   inactive for the duration. The worker runs no other task meanwhile, but idle workers are
///   woken and may steal the tasks queued on it (pinned tasks wait).
/// * On a registered OS thread that is online: it goes offline around `f`.
/// * Elsewhere: just runs `f`.
///
/// `f` must not call into JIT code (it is quiescent by contract). It should not reach yield
/// points; if it does, the quiescent-state bookkeeping stays consistent (the worker that
/// resumes the task is brought back online).
///
/// Inside a [`non_yielding`](crate::non_yielding) section (a JIT hook: the caller's return
/// path runs through a trampoline), and inside yielding code
/// ([`in_yielding_code`](crate::in_yielding_code): JIT frames may be on the task's stack), the
/// caller is not quiescent, so `offline` then just runs `f` (grace periods wait for it).
pub fn offline<R>(f: impl FnOnce() -> R) -> R {
    let guard = OfflineGuard::new();
    if guard.took_worker_offline() {
        // Let an idle worker steal this worker's queued tasks while it blocks.
        scheduler::with_current_scheduler(|s| {
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            s.wake_one();
        });
    }
    let r = f();
    drop(guard);
    r
}
