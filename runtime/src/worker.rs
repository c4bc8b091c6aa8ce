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
//! Idle protocol: a worker sets its `sleeping` flag, issues a `SeqCst` fence and re-checks
//! every queue before parking; a producer pushes, issues a `SeqCst` fence and then looks for
//! a set flag to clear and unpark. One of the two always sees the other.
//!
//! # QS protocol (what the grace-period engine relies on)
//!
//! Each worker `i` owns `registry.workers[i]`:
//!
//! * **before resuming a task**: `current_task = id`, then `cell.enter()` (which issues the
//!   reader-side barrier of `fence.rs` before the task can load a patch site);
//! * **when the task comes back at a voluntary yield point** (yield, sleep, park, channel
//!   wait, join wait) **or ends**: bump the task's `voluntary_yields`, remove it from
//!   `registry.holdouts` if it was there, `cell.exit()`, bump `voluntary_switches`,
//!   `current_task = 0`, `registry.waker.notify()`;
//! * **when it comes back involuntarily** (a yield point inside [`crate::non_yielding`], in
//!   `RecordInvoluntary` mode): insert the task's `TaskQs` into `registry.holdouts` *before*
//!   touching the cell, then `cell.exit()`, bump `involuntary_switches` (not the task's
//!   `voluntary_yields`), `current_task = 0`, notify. The cell store is `Release`, so a GP
//!   that acquires the new cell value also sees the holdout.
//!
//! The worker's cell is therefore inactive whenever no task runs on it (idle, between tasks,
//! or inside [`crate::offline`]), and a parked task holds no pointer into trampolines: it is
//! quiescent and never scanned. All QS writes are skipped when the hidden
//! `Builder::qs_reporting(false)` benchmark knob is used.

use std::cell::Cell;
use std::ptr;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::thread;

use corosensei::CoroutineResult;
use crossbeam_deque::{Steal, Worker as LocalQueue};

use crate::qs::WorkerQs;
use crate::scheduler::Shared;
use crate::task::{self, SwitchKind, Task, DONE, RUNNING, SCHEDULED};

/// Check the global injector before the local queue once every this many tasks, so that
/// tasks spawned from outside are not starved by locally yielding ones.
pub const INJECTOR_EVERY: u32 = 61;
/// Queue polls before an idle worker parks (short: the machine may be shared).
const SPIN_ROUNDS: u32 = 32;

/// A worker's own state; lives on the worker thread's stack for the thread's lifetime.
pub(crate) struct WorkerCtx {
    pub(crate) shared: Arc<Shared>,
    pub(crate) index: usize,
    /// `&shared.registry.workers[index]`, cached for the switch path.
    wq: *const WorkerQs,
    local: LocalQueue<Arc<Task>>,
    tick: Cell<u32>,
}

thread_local! {
    static WORKER: Cell<*const WorkerCtx> = const { Cell::new(ptr::null()) };
}

/// Runs `f` with the calling thread's worker context, if it is a worker.
///
/// `inline(never)` so a task that migrated between workers reads its new thread's TLS.
#[inline(never)]
pub(crate) fn with_worker<R>(f: impl FnOnce(&WorkerCtx) -> R) -> Option<R> {
    let p = WORKER.with(Cell::get);
    if p.is_null() {
        None
    } else {
        // SAFETY: set by `run` to a `WorkerCtx` on the worker's stack and cleared before that
        // frame returns; only this thread reads it.
        Some(f(unsafe { &*p }))
    }
}

/// The runtime whose worker the calling thread is, if any (as an address for comparison).
pub(crate) fn current_shared() -> Option<*const Shared> {
    with_worker(|w| Arc::as_ptr(&w.shared))
}

/// Pushes to the calling worker's local queue if it belongs to `shared`.
pub(crate) fn push_local(shared: &Shared, task: Arc<Task>) -> Result<(), Arc<Task>> {
    let mut task = Some(task);
    let pushed = with_worker(|w| {
        if ptr::eq(Arc::as_ptr(&w.shared), shared) {
            if let Some(t) = task.take() {
                w.local.push(t);
            }
        }
    });
    match (pushed, task) {
        (_, None) => Ok(()),
        (_, Some(t)) => Err(t),
    }
}

/// Body of worker thread `index`.
pub(crate) fn run(shared: Arc<Shared>, index: usize, local: LocalQueue<Arc<Task>>) {
    let wq: *const WorkerQs = &*shared.registry.workers[index];
    let ctx = WorkerCtx {
        shared,
        index,
        wq,
        local,
        tick: Cell::new(0),
    };
    WORKER.with(|w| w.set(&ctx));
    ctx.main_loop();
    WORKER.with(|w| w.set(ptr::null()));
    let WorkerCtx { shared, local, .. } = ctx;
    drop(local);
    if shared.running_workers.fetch_sub(1, Ordering::AcqRel) == 1 {
        // Last one out: no task is running anywhere, so every unfinished task can be dropped.
        shared.cancel_all();
    }
}

impl WorkerCtx {
    #[inline]
    fn qs(&self) -> &WorkerQs {
        // SAFETY: `wq` points into the registry owned (through `Arc`s) by `self.shared`, which
        // lives as long as `self`; the registry's worker slice is never reallocated.
        unsafe { &*self.wq }
    }

    fn main_loop(&self) {
        loop {
            if self.shared.shutdown.load(Ordering::Acquire) {
                return;
            }
            self.shared.timers.fire_due();
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
        let sh = &*self.shared;
        // `is_empty` first: `Injector::steal` issues a SeqCst fence even when empty.
        let pinned = &sh.pinned[self.index];
        if !pinned.is_empty() {
            if let Some(t) = steal(|| pinned.steal()) {
                return Some(t);
            }
        }
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
        let sh = &*self.shared;
        !sh.pinned[self.index].is_empty()
            || !self.local.is_empty()
            || !sh.injector.is_empty()
            || sh.stealers.iter().any(|s| !s.is_empty())
    }

    fn spin(&self) -> bool {
        for _ in 0..SPIN_ROUNDS {
            std::hint::spin_loop();
            if self.has_work() || self.shared.timers.any_due() {
                return true;
            }
        }
        false
    }

    fn idle(&self) {
        let sh = &*self.shared;
        let me = &sh.sleeping[self.index];
        sh.num_sleeping.fetch_add(1, Ordering::SeqCst);
        me.store(true, Ordering::SeqCst);
        // Pairs with the fence in `Shared::schedule` (see the module docs).
        fence(Ordering::SeqCst);
        let wake_now = self.has_work() || sh.shutdown.load(Ordering::SeqCst) || sh.timers.any_due();
        if !wake_now {
            match sh.timers.time_to_next() {
                Some(d) => thread::park_timeout(d),
                None => thread::park(),
            }
        }
        if me.swap(false, Ordering::SeqCst) {
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
        let qs_on = self.shared.config.qs_reporting;
        // SAFETY: winning SCHEDULED -> RUNNING makes this worker the task's unique owner
        // (task.rs module docs); the coroutine is `Some` until the task is done or cancelled.
        let coro = unsafe { &mut *task.coro.get() };
        loop {
            let Some(c) = coro.as_mut() else { return };
            if qs_on {
                let wq = self.qs();
                wq.current_task.store(task.id, Ordering::Relaxed);
                wq.cell.enter();
            }
            let prev = task::set_current_task(Arc::as_ptr(&task));
            let result = c.resume(());
            task::set_current_task(prev);
            match result {
                CoroutineResult::Yield(sw) => {
                    if qs_on {
                        self.switched_out(&task, sw.involuntary);
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
                    }
                }
                CoroutineResult::Return(()) => {
                    if qs_on {
                        self.switched_out(&task, false);
                    }
                    task.state.store(DONE, Ordering::Release);
                    if let Some(c) = coro.take() {
                        self.shared.recycle_stack(c.into_stack());
                    }
                    self.shared.unregister_task(task.id);
                }
            }
            return;
        }
    }

    /// Whether a task that just yielded would be the next task this worker runs anyway: no
    /// other work queued here or globally, no timer due, no shutdown pending.
    #[inline]
    fn nothing_else_to_run(&self, task: &Task) -> bool {
        let sh = &*self.shared;
        self.local.is_empty()
            && sh.pinned[self.index].is_empty()
            && sh.injector.is_empty()
            && task.pinned.is_none_or(|w| w == self.index)
            && !sh.timers.any_due()
            && !sh.shutdown.load(Ordering::Relaxed)
    }

    fn requeue(&self, task: Arc<Task>) {
        match task.pinned {
            Some(w) => self.shared.pinned[w].push(task),
            None => self.local.push(task),
        }
    }

    /// The QS half of a switch-out (module docs, "QS protocol").
    #[inline]
    fn switched_out(&self, task: &Task, involuntary: bool) {
        let reg = &*self.shared.registry;
        let wq = self.qs();
        if involuntary {
            // Unconditional (idempotent) insert: correct even if someone else removed the entry.
            reg.holdouts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(task.id, task.qs.clone());
            task.local.holdout.set(true);
            wq.cell.exit();
            bump(&wq.involuntary_switches);
        } else {
            bump(&task.qs.voluntary_yields);
            if task.local.holdout.get() {
                reg.holdouts
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&task.id);
                task.local.holdout.set(false);
            }
            wq.cell.exit();
            bump(&wq.voluntary_switches);
        }
        wq.current_task.store(0, Ordering::Relaxed);
        reg.waker.notify();
    }

    /// `offline` entry on this worker: the cell goes inactive; idle workers are woken so they
    /// can steal this worker's local queue meanwhile. Returns false if QS reporting is off.
    pub(crate) fn go_offline(&self) -> bool {
        if !self.shared.config.qs_reporting {
            return false;
        }
        self.qs().cell.exit();
        self.shared.registry.waker.notify();
        fence(Ordering::SeqCst);
        self.shared.wake_one();
        true
    }

    /// `offline` exit on this worker.
    pub(crate) fn go_online(&self) {
        self.qs().cell.enter();
    }
}

/// Single-writer counter bump (the owner is the only writer; readers load it).
#[inline]
fn bump(c: &std::sync::atomic::AtomicU64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(1), Ordering::Release);
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
