//! A green thread: its coroutine, its scheduling state and its park/unpark token.
//!
//! # States
//!
//! ```text
//!            spawn                 pop (CAS)                      Yield
//!   ──────────────▶ SCHEDULED ─────────────────▶ RUNNING ───────────────────▶ SCHEDULED
//!                    ▲   │                         │  │ Park                     
//!        unpark (CAS)│   │ cancel (CAS)            │  ▼                          
//!                    │   ▼                         │ PARKED ──cancel (CAS)──▶ CANCELLED
//!                 PARKED CANCELLED                 ▼
//!                                                 DONE
//! ```
//!
//! Exactly one party owns a task at a time: the worker that won `SCHEDULED -> RUNNING`
//! (it alone resumes the coroutine and touches [`TaskLocal`]), or the canceller that won
//! `PARKED|SCHEDULED -> CANCELLED` (it alone drops the coroutine). Cancellation happens only
//! after every worker has left its loop, so it never races with a `RUNNING` task.
//!
//! # Park protocol (no lost wake-ups)
//!
//! Parking is token based, like `std::thread::park`. The task consumes the token
//! (`notified.swap(false)`) or suspends with [`SwitchKind::Park`]. After the switch the worker
//! stores `PARKED` and then loads `notified`; an unparker stores `notified = true` and then
//! CASes `PARKED -> SCHEDULED`. All four accesses are `SeqCst`, so at least one side sees the
//! other's store: either the worker sees the token and reschedules, or the unparker sees
//! `PARKED` and reschedules. The CAS makes sure only one of them does. Callers loop on their
//! own condition, so a stale token only causes a spurious wake-up.

use std::cell::{Cell, UnsafeCell};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Weak};

use corosensei::stack::{DefaultStack, Stack};
use corosensei::{Coroutine, Yielder};

use super::builder::YieldInNonYielding;
use super::join::{Completion, JoinSlot};
use crate::code::CodeRefs;
use crate::qs::{self, QsRegistry, TaskReader};

pub(crate) const SCHEDULED: u8 = 0;
pub(crate) const RUNNING: u8 = 1;
pub(crate) const PARKED: u8 = 2;
pub(crate) const DONE: u8 = 3;
pub(crate) const CANCELLED: u8 = 4;

/// Why a task gave its worker back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SwitchKind {
    /// Runnable again at once (`yield_now`).
    Yield,
    /// Waiting for an unpark (sleep, event, channel, join).
    Park,
    /// Switched out by asynchronous preemption inside JIT code (`crate::preempt`): runnable
    /// again, on the same worker only.
    Preempted,
}

/// The value a task hands to its worker when it suspends.
#[derive(Debug)]
pub(crate) struct Switch {
    pub(crate) kind: SwitchKind,
    /// The yield point was reached inside a non-yielding section.
    pub(crate) involuntary: bool,
    /// A voluntary yield point inside yielding code: the task's stack scan (`crate::code`).
    pub(crate) code_refs: Option<CodeRefs>,
}

pub(crate) type TaskYielder = Yielder<(), Switch>;
pub(crate) type Coro = Coroutine<(), Switch, (), DefaultStack>;

/// What a task needs from its scheduler: the seam that keeps `task.rs` from naming the
/// scheduler (tokio's `Schedule` habit). Implemented by `scheduler::Scheduler`.
pub(crate) trait Schedule: Send + Sync {
    /// Makes a runnable task visible to workers; `wake`: also wake an idle worker.
    fn schedule(&self, task: Arc<Task>, wake: bool);
    /// Unparks `task` at `deadline`.
    fn unpark_at(&self, deadline: std::time::Instant, task: Arc<Task>);
}

/// Fields touched only by the current owner of the task (see the module docs).
pub(crate) struct TaskLocal {
    /// The coroutine's yielder; set on first resume, valid while the coroutine lives.
    pub(crate) yielder: Cell<*const TaskYielder>,
}

/// A green thread.
pub(crate) struct Task {
    /// Unique id (never 0).
    pub(crate) id: u64,
    /// Reader state shared with grace periods (holds the name too; travels with the task).
    pub(crate) reader: Arc<TaskReader>,
    pub(crate) state: AtomicU8,
    notified: AtomicBool,
    /// Worker this task is pinned to, if any (its queue is never stolen from).
    pub(crate) pinned: Option<usize>,
    pub(crate) yield_mode: YieldInNonYielding,
    /// Weak: the scheduler's queues hold tasks, so a strong reference would be a cycle.
    pub(crate) scheduler: Weak<dyn Schedule>,
    pub(crate) coro: UnsafeCell<Option<Coro>>,
    pub(crate) local: TaskLocal,
    /// Lowest address of the stack mapping (its guard page); for overflow reports.
    pub(crate) guard: usize,
    /// Lowest usable stack address (above the guard page) and the stack's top, for the
    /// preemption handler's room check.
    pub(crate) stack_limit: usize,
    pub(crate) stack_base: usize,
    completion: Arc<dyn Completion>,
}

// SAFETY: `coro` and `local` are only accessed by the task's unique owner (the worker that
// holds it `RUNNING`, or the canceller that won the CAS to `CANCELLED`), and ownership is
// handed over through the `state` atomic with acquire/release ordering. The closure that
// created the coroutine is `Send`. Values the task keeps on its own stack across a yield point
// move with it to whichever worker resumes it; that is the documented contract of `spawn`
// (do not keep thread-bound values such as `Rc` shared with thread-locals across yields).
unsafe impl Send for Task {}
// SAFETY: see `Send`; all other fields are atomics or immutable.
unsafe impl Sync for Task {}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static CURRENT_TASK: Cell<*const Task> = const { Cell::new(ptr::null()) };
}

/// The task running on this thread, or null.
///
/// `inline(never)`: a task may resume on another thread after any yield point, so the TLS
/// address must be recomputed on every call rather than cached by the optimizer across one.
#[inline(never)]
pub(crate) fn current_task_ptr() -> *const Task {
    CURRENT_TASK.with(Cell::get)
}

#[inline(never)]
pub(crate) fn set_current_task(t: *const Task) -> *const Task {
    CURRENT_TASK.with(|c| c.replace(t))
}

/// Runs `f` with a reference to the current task, if the caller is one.
#[inline]
pub(crate) fn with_current<R>(f: impl FnOnce(&Task) -> R) -> Option<R> {
    let p = current_task_ptr();
    if p.is_null() {
        None
    } else {
        // SAFETY: the pointer is set by the owner of the task right before resuming it and
        // cleared right after; the owner holds an `Arc<Task>` for the whole resume, so the
        // task outlives this call, which runs on the task's own stack.
        Some(f(unsafe { &*p }))
    }
}

/// A new strong reference to the current task.
pub(crate) fn current_arc() -> Option<Arc<Task>> {
    let p = current_task_ptr();
    if p.is_null() {
        return None;
    }
    // SAFETY: `p` comes from `Arc::as_ptr` of an `Arc<Task>` that the owner keeps alive for
    // the whole resume (see `with_current`), so the strong count is at least one.
    unsafe {
        Arc::increment_strong_count(p);
        Some(Arc::from_raw(p))
    }
}

impl Task {
    /// Builds a task whose coroutine runs `f` and publishes its result to `slot`.
    pub(crate) fn new<F, T>(
        scheduler: Weak<dyn Schedule>,
        yield_mode: YieldInNonYielding,
        name: Option<Arc<str>>,
        pinned: Option<usize>,
        stack: DefaultStack,
        f: F,
    ) -> (Arc<Task>, Arc<JoinSlot<T>>)
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let guard = stack.limit().get();
        let stack_base = stack.base().get();
        let stack_limit = guard + page_size();
        let slot = Arc::new(JoinSlot::<T>::new());
        let body_slot = slot.clone();
        let coro = Coroutine::with_stack(stack, move |yielder: &TaskYielder, ()| {
            // SAFETY-relevant invariant: the resuming owner set CURRENT_TASK to this task.
            with_current(|t| t.local.yielder.set(yielder as *const TaskYielder));
            match catch_unwind(AssertUnwindSafe(f)) {
                Ok(v) => body_slot.complete(Ok(v)),
                // A forced unwind (cancellation) must reach corosensei's root to be recognised.
                Err(p) if body_slot.is_cancelling() => resume_unwind(p),
                Err(p) => body_slot.complete(Err(crate::JoinError::Panicked(
                    crate::error::PanicPayload::new(p),
                ))),
            }
        });
        let task = Arc::new(Task {
            id,
            reader: Arc::new(TaskReader::new(id, name)),
            state: AtomicU8::new(SCHEDULED),
            notified: AtomicBool::new(false),
            pinned,
            yield_mode,
            scheduler,
            coro: UnsafeCell::new(Some(coro)),
            local: TaskLocal {
                yielder: Cell::new(ptr::null()),
            },
            guard,
            stack_limit,
            stack_base,
            completion: slot.clone(),
        });
        (task, slot)
    }

    /// The task's name, if it has one.
    pub(crate) fn name(&self) -> Option<&Arc<str>> {
        self.reader.name.as_ref()
    }

    /// Makes a parked task runnable, or leaves a token if it is not parked (any thread).
    pub(crate) fn unpark(self: &Arc<Self>) {
        self.notified.store(true, Ordering::SeqCst);
        if self
            .state
            .compare_exchange(PARKED, SCHEDULED, Ordering::SeqCst, Ordering::Relaxed)
            .is_ok()
        {
            if let Some(scheduler) = self.scheduler.upgrade() {
                scheduler.schedule(self.clone(), true);
            }
        }
    }

    /// Worker side of the park protocol, after the coroutine suspended with `Park`.
    /// Returns true when the task must be rescheduled at once (a token arrived meanwhile).
    pub(crate) fn finish_park(&self) -> bool {
        self.state.store(PARKED, Ordering::SeqCst);
        self.notified.load(Ordering::SeqCst)
            && self
                .state
                .compare_exchange(PARKED, SCHEDULED, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
    }

    /// Task side: parks until unparked (may wake spuriously). Call only on the current task.
    pub(crate) fn park(&self) {
        while !self.notified.swap(false, Ordering::SeqCst) {
            self.switch_out(SwitchKind::Park);
        }
    }

    /// Task side: gives the worker back. Call only on the current task, from its own stack.
    pub(crate) fn switch_out(&self, kind: SwitchKind) {
        let involuntary = self.reader.in_non_yielding();
        if involuntary && self.yield_mode == YieldInNonYielding::Panic {
            panic!(
                "yield inside a non-yielding section (e.g. a trampoline hook): task {} reached a \
                 yield point with non_yielding depth {}",
                self.id,
                self.reader.non_yielding_depth()
            );
        }
        // Parked inside yielding code: what its stack points into holds that code back.
        let code_refs = (!involuntary && self.reader.in_yielding_code())
            .then(|| crate::code::scan_own_stack(self.stack_base));
        let y = self.local.yielder.get();
        debug_assert!(!y.is_null());
        // SAFETY: `yielder` was set by the coroutine body on first resume and points to the
        // coroutine's parent link, valid while the coroutine exists; we are running on that
        // coroutine's stack (only the current task calls this).
        unsafe {
            (*y).suspend(Switch {
                kind,
                involuntary,
                code_refs,
            })
        };
    }

    /// Task side of a preemption (called by the preemption stub's entry, on the task's own
    /// stack): gives the worker back as an involuntary switch.
    pub(crate) fn preempt_out(&self) {
        let y = self.local.yielder.get();
        debug_assert!(!y.is_null());
        // SAFETY: as in `switch_out`: the yielder is valid while the coroutine exists, and we
        // run on its stack (the stub was injected into this task's code).
        unsafe {
            (*y).suspend(Switch {
                kind: SwitchKind::Preempted,
                involuntary: true,
                code_refs: None,
            })
        };
    }

    /// Cancels a task that is parked or queued (never running): drops its coroutine, which
    /// unwinds its stack on this thread, and completes its join handle with `Cancelled`.
    /// Returns false if the task is running, done or already cancelled.
    pub(crate) fn cancel(self: &Arc<Self>, registry: &QsRegistry) -> bool {
        let won = [PARKED, SCHEDULED].into_iter().any(|from| {
            self.state
                .compare_exchange(from, CANCELLED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        });
        if !won {
            return false;
        }
        // SAFETY: winning the CAS to CANCELLED makes us the unique owner of `coro`.
        let coro = unsafe { (*self.coro.get()).take() };
        if qs::was_switched_out_involuntarily(&self.reader) || self.reader.in_yielding_code() {
            // Its stack may hold frames of JIT code (a hook, a trampoline, a yielding body),
            // which have no unwind information and must not be unwound through. It never runs
            // again: leak the coroutine and its stack (their destructors do not run) instead.
            tracing::warn!(
                task = self.id,
                "cancelling a task switched out inside JIT code: its stack is leaked, not \
                 unwound"
            );
            std::mem::forget(coro);
            qs::forget_cancelled_holdout(registry, &self.reader);
            self.completion.cancelled();
            return true;
        }
        self.completion.mark_cancelling();
        // Yield points reached while unwinding must see this task as current, so that they
        // suspend (and corosensei restarts the forced unwind) instead of blocking this thread.
        let prev = set_current_task(Arc::as_ptr(self));
        let dropped = catch_unwind(AssertUnwindSafe(move || drop(coro)));
        set_current_task(prev);
        if dropped.is_err() {
            tracing::warn!(
                task = self.id,
                "a destructor panicked while cancelling a task"
            );
        }
        // A cancelled task will never run again: if it was a grace-period holdout, release
        // the grace periods waiting for it. (We own the task.)
        qs::forget_cancelled_holdout(registry, &self.reader);
        self.completion.cancelled();
        true
    }
}

/// The system page size.
fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}
