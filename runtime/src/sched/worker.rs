//! Worker threads: the scheduling loop and the quiescent-state (QS) protocol.
//!
//! # Scheduler
//!
//! A runtime runs N workers (OS threads). Each worker owns a FIFO local queue
//! (`crossbeam_deque::Worker`) whose other end other workers may steal from, and a *pinned*
//! queue that only it pops (tasks pinned with `spawn_pinned` always return there). Tasks
//! spawned from outside a worker go to the global injector. One loop iteration:
//!
//! 1. leave if shutdown was requested;
//! 2. fire due timers (unpark sleeping tasks);
//! 3. take a task: pinned queue, local queue (the injector first every
//!    [`INJECTOR_EVERY`] ticks, for fairness), the injector, then steal from other workers;
//! 4. resume it until it reaches a yield point or ends (see below);
//! 5. with no work: spin briefly, then park (with a timeout equal to the earliest timer).
//!
//! Idle protocol: a worker sets its asleep flag (kept by `qs`, which grace periods read too),
//! issues a `SeqCst` fence and re-checks
//! every queue before parking; a producer pushes, issues a `SeqCst` fence and then looks for
//! a set flag to clear and unpark. One of the two always sees the other.
//!
//! # Quiescent states
//!
//! The loop reports every switch through the `qs` transitions (see the [`qs`](crate::qs)
//! docs for what each one does and why): *switch-in* before resuming a task, *voluntary
//! switch-out* when it comes back at a yield point or ends, *involuntary switch-out* when it
//! comes back from a yield point inside a non-yielding section (`RecordInvoluntary` mode). The
//! worker's cell is therefore inactive whenever no task runs on it. With the
//! `qs_reporting(false)` benchmark knob only the reader context is kept.

use std::cell::Cell;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::thread;

use corosensei::CoroutineResult;
use crossbeam_deque::{Steal, Worker as LocalQueue};

use super::scheduler::{self, Scheduler};
use super::task::{self, SwitchKind, Task, DONE, RUNNING, SCHEDULED};
use crate::qs::{self, WorkerReader};

/// Check the global injector before the local queue once every this many tasks, so that
/// tasks spawned from outside are not starved by locally yielding ones.
pub const INJECTOR_EVERY: u32 = 61;
/// Queue polls before an idle worker parks (short: the machine may be shared).
const SPIN_ROUNDS: u32 = 32;

/// A worker's own state; lives on the worker thread's stack for the thread's lifetime.
struct WorkerCtx {
    scheduler: Arc<Scheduler>,
    index: usize,
    local: LocalQueue<Arc<Task>>,
    tick: Cell<u32>,
    /// Whether the next pick should be a preempted task (they alternate with other work).
    preempted_turn: Cell<bool>,
}

/// Body of worker thread `index`.
pub(crate) fn run(scheduler: Arc<Scheduler>, index: usize, local: LocalQueue<Arc<Task>>) {
    let ctx = WorkerCtx {
        scheduler,
        index,
        local,
        tick: Cell::new(0),
        preempted_turn: Cell::new(false),
    };
    scheduler::enter_worker(&ctx.scheduler, index, &ctx.local);
    qs::worker_started(&ctx.scheduler.registry, index);
    if let Some(preempt) = &ctx.scheduler.preempt {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        preempt.slots[index].tid.store(tid, Ordering::Release);
    }
    ctx.main_loop();
    if let Some(preempt) = &ctx.scheduler.preempt {
        // The monitor signals this thread no more (it stops once every worker has left).
        preempt.slots[index].tid.store(0, Ordering::Release);
    }
    scheduler::leave_worker();
    let WorkerCtx {
        scheduler, local, ..
    } = ctx;
    drop(local);
    if scheduler.running_workers.fetch_sub(1, Ordering::AcqRel) == 1 {
        // Last one out: no task is running anywhere, so every unfinished task can be dropped.
        // Still a worker thread as a reader context: what the cancelled tasks' destructors
        // drop (a grace domain, say) must not block this thread on the runtime.
        scheduler.cancel_all();
    }
    qs::worker_stopped();
}

impl WorkerCtx {
    #[inline]
    fn reader(&self) -> &WorkerReader {
        self.scheduler.registry.worker(self.index)
    }

    fn main_loop(&self) {
        loop {
            if self.scheduler.shutdown.load(Ordering::Acquire) {
                return;
            }
            self.scheduler.timers.fire_due();
            if let Some(t) = self.find_task() {
                self.run_task(t);
                continue;
            }
            if !self.spin() {
                self.idle();
            }
        }
    }

    fn find_task(&self) -> Option<Arc<Task>> {
        let sh = &*self.scheduler;
        // `is_empty` first: `Injector::steal` issues a SeqCst fence even when empty.
        let pinned = &sh.pinned[self.index];
        if !pinned.is_empty() {
            if let Some(t) = steal(|| pinned.steal()) {
                return Some(t);
            }
        }
        // Preempted tasks resume only here, taking every other turn: they neither starve
        // behind tasks that keep yielding nor shut them out.
        let preempted = &sh.preempted[self.index];
        if !preempted.is_empty() {
            let turn = self.preempted_turn.replace(false);
            if turn {
                if let Some(t) = steal(|| preempted.steal()) {
                    return Some(t);
                }
            }
            if let Some(t) = self.find_other_task() {
                self.preempted_turn.set(true);
                return Some(t);
            }
            return steal(|| preempted.steal());
        }
        self.find_other_task()
    }

    /// A task from the local queue, the injector, or another worker.
    fn find_other_task(&self) -> Option<Arc<Task>> {
        let sh = &*self.scheduler;
        let tick = self.tick.get();
        if tick == 0 {
            self.tick.set(INJECTOR_EVERY);
            if !sh.injector.is_empty() {
                if let Some(t) = steal(|| sh.injector.steal_batch_and_pop(&self.local)) {
                    return Some(t);
                }
            }
        } else {
            self.tick.set(tick - 1);
        }
        if let Some(t) = self.local.pop() {
            return Some(t);
        }
        if !sh.injector.is_empty() {
            if let Some(t) = steal(|| sh.injector.steal_batch_and_pop(&self.local)) {
                return Some(t);
            }
        }
        let n = sh.stealers.len();
        (1..n).find_map(|k| {
            let s = &sh.stealers[(self.index + k) % n];
            if s.is_empty() {
                None
            } else {
                steal(|| s.steal_batch_and_pop(&self.local))
            }
        })
    }

    fn has_work(&self) -> bool {
        let sh = &*self.scheduler;
        !sh.pinned[self.index].is_empty()
            || !sh.preempted[self.index].is_empty()
            || !self.local.is_empty()
            || !sh.injector.is_empty()
            || sh.stealers.iter().any(|s| !s.is_empty())
    }

    fn spin(&self) -> bool {
        for _ in 0..SPIN_ROUNDS {
            std::hint::spin_loop();
            if self.has_work() || self.scheduler.timers.any_due() {
                return true;
            }
        }
        false
    }

    fn idle(&self) {
        let sh = &*self.scheduler;
        let me = self.reader();
        sh.num_sleeping.fetch_add(1, Ordering::SeqCst);
        qs::worker_sleeps(me);
        // Pairs with the fence in `Scheduler::schedule` (see the module docs).
        fence(Ordering::SeqCst);
        let wake_now = self.has_work() || sh.shutdown.load(Ordering::SeqCst) || sh.timers.any_due();
        if !wake_now {
            match sh.timers.time_to_next() {
                Some(d) => thread::park_timeout(d),
                None => thread::park(),
            }
        }
        // Also the full barrier a grace period that saw this worker asleep relies on.
        if qs::worker_wakes(me) {
            sh.num_sleeping.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Resumes `task` until its next yield point, then requeues, parks or retires it.
    fn run_task(&self, task: Arc<Task>) {
        if task
            .state
            .compare_exchange(SCHEDULED, RUNNING, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return; // cancelled meanwhile
        }
        let qs_on = self.scheduler.config.qs_reporting;
        let registry = &*self.scheduler.registry;
        let reader = self.reader();
        // SAFETY: winning SCHEDULED -> RUNNING makes this worker the task's unique owner
        // (task.rs module docs); the coroutine is `Some` until the task is done or cancelled.
        let coro = unsafe { &mut *task.coro.get() };
        loop {
            let Some(c) = coro.as_mut() else { return };
            if qs_on {
                qs::switch_in(registry, reader, &task.reader);
            } else {
                qs::switch_in_untracked(registry, reader, &task.reader);
            }
            let prev = task::set_current_task(Arc::as_ptr(&task));
            let result = c.resume(());
            task::set_current_task(prev);
            match result {
                CoroutineResult::Yield(sw) => {
                    let preempted = sw.kind == SwitchKind::Preempted;
                    match (qs_on, sw.involuntary) {
                        (true, false) => {
                            qs::switch_out_voluntary(registry, reader, &task.reader, sw.code_refs)
                        }
                        (true, true) => {
                            qs::switch_out_involuntary(registry, reader, &task.reader, preempted)
                        }
                        (false, _) => qs::switch_out_untracked(registry, reader),
                    }
                    match sw.kind {
                        SwitchKind::Yield if self.nothing_else_to_run(&task) => {
                            // Fast path: the task would be the next one popped anyway; resume
                            // it without the queue round trip (the QS exit/enter still happen).
                            continue;
                        }
                        SwitchKind::Yield => {
                            task.state.store(SCHEDULED, Ordering::Release);
                            self.requeue(task);
                        }
                        SwitchKind::Park => {
                            if task.finish_park() {
                                self.requeue(task);
                            }
                        }
                        SwitchKind::Preempted => {
                            if let Some(p) = &self.scheduler.preempt {
                                p.counters.preemptions.fetch_add(1, Ordering::Relaxed);
                            }
                            task.state.store(SCHEDULED, Ordering::Release);
                            self.scheduler.preempted[self.index].push(task);
                        }
                    }
                }
                CoroutineResult::Return(()) => {
                    if qs_on {
                        qs::switch_out_voluntary(registry, reader, &task.reader, None);
                    } else {
                        qs::switch_out_untracked(registry, reader);
                    }
                    task.state.store(DONE, Ordering::Release);
                    if let Some(c) = coro.take() {
                        self.scheduler.recycle_stack(c.into_stack());
                    }
                    self.scheduler.unregister_task(task.id);
                }
            }
            return;
        }
    }

    /// Whether a task that just yielded would be the next task this worker runs anyway: no
    /// other work queued here or globally, no timer due, no shutdown pending.
    #[inline]
    fn nothing_else_to_run(&self, task: &Task) -> bool {
        let sh = &*self.scheduler;
        self.local.is_empty()
            && sh.pinned[self.index].is_empty()
            && sh.preempted[self.index].is_empty()
            && sh.injector.is_empty()
            && task.pinned.is_none_or(|w| w == self.index)
            && !sh.timers.any_due()
            && !sh.shutdown.load(Ordering::Relaxed)
    }

    fn requeue(&self, task: Arc<Task>) {
        match task.pinned {
            Some(w) => self.scheduler.pinned[w].push(task),
            None => self.local.push(task),
        }
    }
}

fn steal<T>(mut f: impl FnMut() -> Steal<T>) -> Option<T> {
    loop {
        match f() {
            Steal::Success(t) => return Some(t),
            Steal::Empty => return None,
            Steal::Retry => continue,
        }
    }
}
