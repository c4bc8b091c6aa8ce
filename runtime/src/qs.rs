//! Quiescent-state (QS) tracking: what the grace-period engine reads.
//!
//! # Cells
//!
//! Every *reader context* that may execute JIT code owns one [`QsCell`]: each worker thread
//! has one, and so has each registered OS thread. A cell is one `AtomicU64` written only by
//! its owner and read by the grace-period (GP) engine:
//!
//! ```text
//! state = (transitions << 1) | active
//! ```
//!
//! * `active == 0`: the owner is not running reader code (a worker between tasks or idle, a
//!   registered thread that is offline). It holds no pointer into trampoline code.
//! * every owner transition (`enter`, `exit`, `quiescent`) increments `transitions`.
//!
//! A GP snapshots every cell. A cell has *passed* a QS since snapshot `s` when `s` was
//! inactive, or when the cell's value differs from `s`: the owner has gone through at least
//! one voluntary switch (a worker only calls `exit` when its task yields voluntarily or ends)
//! or QS report since the snapshot. This costs O(workers + registered threads): tasks parked
//! at yield points are quiescent by construction and are never scanned.
//!
//! # Holdouts
//!
//! A task that is switched out *involuntarily* (it yielded inside a non-yielding section)
//! may still hold a pointer into a trampoline. The scheduler records it in
//! [`QsRegistry::holdouts`] *before* its worker's cell changes, and removes it when the task
//! next passes a voluntary yield point. After the GP has seen every cell pass, it reads the
//! holdout set (the cell load was `Acquire`, the cell store `Release` after the insertion,
//! so the insertion is visible) and waits for each holdout's voluntary-switch count to
//! advance.
//!
//! # Ordering
//!
//! `enter` and `quiescent` are followed by [`crate::fence::light_barrier`] before the owner can
//! load a patch site; the GP engine issues [`crate::fence::heavy_barrier`] after re-pointing
//! sites and before snapshotting. See `fence.rs` for why this pairing is required and enough.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::Thread;

use crossbeam_utils::CachePadded;

use crate::fence;

/// A reader context's QS state; see the module docs.
#[derive(Debug)]
pub struct QsCell {
    state: crate::primitive::AtomicU64,
}

impl Default for QsCell {
    fn default() -> Self {
        QsCell::new()
    }
}

/// A GP's view of one cell, taken by [`QsCell::snapshot`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QsSnapshot(u64);

impl QsSnapshot {
    /// Whether the owner was running reader code when the snapshot was taken.
    pub fn was_active(self) -> bool {
        self.0 & 1 == 1
    }
}

impl QsCell {
    /// A cell whose owner is inactive (offline).
    pub fn new() -> Self {
        QsCell {
            state: crate::primitive::AtomicU64::new(0),
        }
    }

    #[inline]
    fn advance(&self, active: u64) {
        // Only the owner writes, so a load/store pair is enough (no RMW).
        let old = self.state.load(Ordering::Relaxed);
        let new = ((old >> 1).wrapping_add(1) << 1) | active;
        // Release: everything the owner did before (e.g. the scheduler's holdout insertion)
        // is visible to a GP that acquires this value.
        self.state.store(new, Ordering::Release);
    }

    /// The owner starts running reader code (a task is switched in, a thread goes online).
    #[inline]
    pub fn enter(&self) {
        self.advance(1);
        // Keep the owner's later site loads after this store (store-buffering; see fence.rs).
        fence::light_barrier();
    }

    /// The owner stops running reader code (voluntary switch-out, task end, idle, offline).
    #[inline]
    pub fn exit(&self) {
        // No barrier: the owner loads no site until its next `enter`, which has one.
        self.advance(0);
    }

    /// An online owner reports a QS without going offline (registered threads).
    #[inline]
    pub fn quiescent(&self) {
        self.advance(1);
        fence::light_barrier();
    }

    /// Reads the cell for a GP snapshot.
    #[inline]
    pub fn snapshot(&self) -> QsSnapshot {
        QsSnapshot(self.state.load(Ordering::Acquire))
    }

    /// Whether the owner has passed a QS since `snap` (see the module docs).
    #[inline]
    pub fn passed_since(&self, snap: QsSnapshot) -> bool {
        !snap.was_active() || self.state.load(Ordering::Acquire) != snap.0
    }

    /// Whether the owner is currently running reader code.
    pub fn is_active(&self) -> bool {
        self.snapshot().was_active()
    }
}

/// Per-worker state the GP engine reads.
#[derive(Debug, Default)]
pub struct WorkerQs {
    /// The worker's QS cell.
    pub cell: QsCell,
    /// Id of the task running on the worker, 0 when none (for stall reports only).
    pub current_task: AtomicU64,
    /// Voluntary switches performed on this worker (statistics and tests).
    pub voluntary_switches: AtomicU64,
    /// Involuntary switches performed on this worker (statistics and tests).
    pub involuntary_switches: AtomicU64,
}

/// Per-task state kept only while a task is a holdout, plus its voluntary-yield count.
#[derive(Debug, Default)]
pub struct TaskQs {
    /// Task id.
    pub id: u64,
    /// Optional task name (stall reports).
    pub name: Option<Arc<str>>,
    /// Incremented each time the task passes a voluntary yield point.
    pub voluntary_yields: AtomicU64,
}

/// A registered OS thread's QS state.
#[derive(Debug)]
pub struct ThreadQs {
    /// Thread's cell.
    pub cell: QsCell,
    /// The thread's name, if any, for stall reports.
    pub name: Option<String>,
}

/// Wakes GP drivers when a QS event happens while an expedited GP is waiting.
///
/// Several [`GraceDomain`](crate::grace::GraceDomain)s may share one runtime, so the waker
/// keeps every driver thread and a count of armed waits; the first reader to notice an armed
/// wait unparks all drivers (a spurious unpark only makes a driver re-check).
#[derive(Debug, Default)]
pub struct GpWaker {
    armed: AtomicUsize,
    drivers: Mutex<Vec<Thread>>,
}

impl GpWaker {
    /// Called by readers after a QS transition: cheap when no GP waits (one relaxed load).
    #[inline]
    pub fn notify(&self) {
        if self.armed.load(Ordering::Relaxed) != 0 {
            self.wake();
        }
    }

    #[cold]
    fn wake(&self) {
        // Only the first notifier after an `arm` pays for the unparks.
        if self.armed.swap(0, Ordering::AcqRel) != 0 {
            for t in self
                .drivers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
            {
                t.unpark();
            }
            // When every core runs a busy worker, the freshly woken driver may wait for a
            // whole scheduler time slice (milliseconds) before it gets a CPU, and the grace
            // period with it. Offer this CPU now: cheap (at most once per `arm`), and a no-op
            // when the driver already runs elsewhere.
            std::thread::yield_now();
        }
    }

    /// GP driver: register the calling thread as one to unpark.
    pub fn add_driver(&self, t: Thread) {
        self.drivers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(t);
    }

    /// GP driver: unregister the calling thread (when the driver exits).
    pub fn remove_driver(&self, id: std::thread::ThreadId) {
        self.drivers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|t| t.id() != id);
    }

    /// GP driver: ask readers to wake it on their next QS event.
    pub fn arm(&self) {
        self.armed.fetch_add(1, Ordering::SeqCst);
    }

    /// GP driver: stop asking (if no reader has consumed the request yet).
    pub fn disarm(&self) {
        let _ = self
            .armed
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }
}

/// Everything a GP reads, shared by the scheduler (writer) and the GP engine (reader).
#[derive(Debug)]
pub struct QsRegistry {
    /// One entry per worker, indexed by worker index.
    pub workers: Box<[CachePadded<WorkerQs>]>,
    /// Registered OS threads.
    pub threads: Mutex<Vec<Arc<ThreadQs>>>,
    /// Tasks switched out involuntarily that have not yet passed a voluntary yield point.
    pub holdouts: Mutex<HashMap<u64, Arc<TaskQs>>>,
    /// Wake-up channel from readers to the GP driver.
    pub waker: GpWaker,
}

impl QsRegistry {
    /// A registry for `workers` workers, no threads, no holdouts.
    pub fn new(workers: usize) -> Self {
        QsRegistry {
            workers: (0..workers)
                .map(|_| CachePadded::new(WorkerQs::default()))
                .collect(),
            threads: Mutex::new(Vec::new()),
            holdouts: Mutex::new(HashMap::new()),
            waker: GpWaker::default(),
        }
    }
}
