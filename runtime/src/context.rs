//! Free functions for code running inside tasks (and their fallbacks on plain OS threads).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::task::{self, SwitchKind};
use crate::thread_reg;
use crate::worker;

/// Identity of a task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskInfo {
    /// Unique id within the process (never 0).
    pub id: u64,
    /// Name given at spawn, if any.
    pub name: Option<Arc<str>>,
}

/// Whether the caller is a green thread of some runtime.
pub(crate) fn in_task() -> bool {
    !task::current_task_ptr().is_null()
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
    let Some(shared) = task.shared.upgrade() else {
        std::thread::sleep(dur);
        return;
    };
    let deadline = Instant::now() + dur;
    if shared.timers.add(deadline, task.clone()) {
        // New earliest deadline: let a sleeping worker recompute its park timeout.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        shared.wake_one();
    }
    drop(shared);
    while Instant::now() < deadline {
        task.park();
    }
}

/// Runs `f` as a non-yielding section (JIT hooks run inside one). A yield point reached
/// inside it panics (the default in debug builds) or is recorded as an **involuntary** switch
/// that makes the task a grace-period holdout (see [`crate::YieldInNonYielding`]).
/// Sections nest. On an OS thread it only makes [`offline`] a no-op inside it.
pub fn non_yielding<R>(f: impl FnOnce() -> R) -> R {
    let depth = task::with_current(|t| &t.local.depth as *const std::cell::Cell<u32>);
    let depth = depth.unwrap_or_else(|| THREAD_NON_YIELDING.with(|d| d as *const _));
    struct Leave(*const std::cell::Cell<u32>);
    impl Drop for Leave {
        fn drop(&mut self) {
            // SAFETY: the cell lives in the current task, which outlives every frame on its
            // own stack, or (outside tasks) in this thread's TLS, which outlives every frame
            // of the thread; only the thread running this frame (the task's owner) touches it.
            let d = unsafe { &*self.0 };
            d.set(d.get() - 1);
        }
    }
    // SAFETY: as in `Leave::drop`.
    let d = unsafe { &*depth };
    d.set(d.get() + 1);
    let _leave = Leave(depth);
    f()
}

thread_local! {
    /// Non-yielding depth of an OS thread (tasks keep theirs in the task).
    static THREAD_NON_YIELDING: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Whether the caller is inside a [`non_yielding`] section (e.g. a JIT hook): it may then
/// be executing on behalf of a trampoline and is *not* quiescent.
pub(crate) fn in_non_yielding() -> bool {
    task::with_current(|t| t.local.depth.get() > 0)
        .unwrap_or_else(|| THREAD_NON_YIELDING.with(|d| d.get() > 0))
}

/// Runs a blocking call while the caller counts as quiescent (an *extended* QS).
///
/// * In a task: `f` runs on the current worker thread with the worker's QS cell exited for the
///   duration (`exit()` before, `enter()` after). The worker runs no other task meanwhile,
///   but idle workers are woken and may steal the tasks queued on it (pinned tasks wait).
/// * On a registered OS thread that is online: goes offline around `f`.
/// * Elsewhere: just runs `f`.
///
/// `f` must not call into JIT code (it is quiescent by contract). It should not reach yield
/// points; if it does, the QS state stays consistent (the resuming worker enters its cell).
///
/// Inside a [`non_yielding`] section (a JIT hook: the caller's return path runs through a
/// trampoline) the caller is not quiescent, so `offline` then just runs `f`.
pub fn offline<R>(f: impl FnOnce() -> R) -> R {
    struct Online<G: FnMut()>(G);
    impl<G: FnMut()> Drop for Online<G> {
        fn drop(&mut self) {
            (self.0)();
        }
    }
    if in_non_yielding() {
        return f();
    }
    if in_task() {
        if worker::with_worker(|w| w.go_offline()) == Some(true) {
            let _back = Online(|| {
                worker::with_worker(|w| w.go_online());
            });
            return f();
        }
        return f();
    }
    if let Some(reg) = thread_reg::current_registration() {
        if reg.qs.cell.is_active() {
            reg.qs.cell.exit();
            reg.registry.waker.notify();
            let _back = Online(|| reg.qs.cell.enter());
            return f();
        }
    }
    f()
}
