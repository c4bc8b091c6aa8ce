//! Every reader a grace period must consider, and the read API grace periods use.
//!
//! The registry holds one [`WorkerReader`] per worker, the [`ThreadReader`]s of registered OS
//! threads, the holdout set (tasks switched out involuntarily, as [`TaskReader`]s) and the
//! code references of tasks parked inside yielding code (see `crate::code`). Its
//! fields are private: readers change them only through the transitions of
//! `transitions.rs`, grace periods read them only through the methods below.
//!
//! Lock order: `threads`, `holdouts` and `code_refs` are leaf locks, never held while taking
//! another lock or calling out.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use crossbeam_utils::CachePadded;

use super::cell::{QsCell, QsSnapshot};
use super::waker::GpWaker;
use crate::code::{CodeRefs, RefSet};
use crate::primitive::{lock, Arc, AtomicBool, AtomicU32, AtomicU64, Mutex};

/// Reader state of one worker thread, whatever task it runs.
#[derive(Debug)]
pub(crate) struct WorkerReader {
    pub(super) cell: QsCell,
    /// Id of the task running on the worker, 0 when none (for stall reports only).
    pub(super) current_task: AtomicU64,
    /// Voluntary switches performed on this worker (statistics).
    pub(super) voluntary_switches: AtomicU64,
    /// Involuntary switches performed on this worker (statistics).
    pub(super) involuntary_switches: AtomicU64,
    /// The worker is idle and parked (or about to park): set by `worker_sleeps`, cleared with
    /// a `SeqCst` swap before it runs anything again (see "Ordering" in the `qs` docs for why a
    /// grace period may then skip the membarrier for it). The scheduler's wake-ups use it too.
    pub(super) asleep: AtomicBool,
}

impl WorkerReader {
    fn new() -> Self {
        WorkerReader {
            cell: QsCell::new(),
            current_task: AtomicU64::new(0),
            voluntary_switches: AtomicU64::new(0),
            involuntary_switches: AtomicU64::new(0),
            asleep: AtomicBool::new(false),
        }
    }
}

/// Reader state of one task; it travels with the task from worker to worker.
///
/// Written only by the task's current owner (the worker running it, or the canceller), except
/// `voluntary_yields`, which grace periods read.
#[derive(Debug)]
pub(crate) struct TaskReader {
    /// Task id (never 0).
    pub(crate) id: u64,
    /// Task name, if any (stall reports).
    pub(crate) name: Option<std::sync::Arc<str>>,
    /// Incremented each time the task passes a voluntary yield point.
    pub(super) voluntary_yields: AtomicU64,
    /// Depth of nested non-yielding sections (owner only).
    pub(super) non_yielding: AtomicU32,
    /// Whether the task is in the holdout set (owner only).
    pub(super) holdout: AtomicBool,
    /// Whether its last involuntary switch was a preemption (for statistics).
    pub(super) preempted: AtomicBool,
    /// Depth of nested preemptible scopes (owner only; the preemption handler reads it on the
    /// task's own thread).
    pub(super) preemptible: AtomicU32,
    /// Depth of nested yielding-code scopes (owner only; see `crate::code`).
    pub(super) yielding_code: AtomicU32,
    /// Whether the registry holds code references for the task (owner only).
    pub(super) has_code_refs: AtomicBool,
}

impl TaskReader {
    /// The reader state of a new task.
    pub(crate) fn new(id: u64, name: Option<std::sync::Arc<str>>) -> Self {
        TaskReader {
            id,
            name,
            voluntary_yields: AtomicU64::new(0),
            non_yielding: AtomicU32::new(0),
            holdout: AtomicBool::new(false),
            preempted: AtomicBool::new(false),
            preemptible: AtomicU32::new(0),
            yielding_code: AtomicU32::new(0),
            has_code_refs: AtomicBool::new(false),
        }
    }

    /// Whether the task is inside yielding code (owner only): a park must scan its stack, and
    /// it must never be unwound.
    #[inline]
    pub(crate) fn in_yielding_code(&self) -> bool {
        self.yielding_code.load(Ordering::Relaxed) > 0
    }

    /// Whether the task is inside a preemptible scope (owner only, or its own thread's signal
    /// handler).
    #[inline]
    pub(crate) fn in_preemptible(&self) -> bool {
        self.preemptible.load(Ordering::Relaxed) > 0
    }

    /// Whether the task became a holdout by preemption (rather than by a yield inside a
    /// non-yielding section).
    pub(crate) fn was_preempted(&self) -> bool {
        self.preempted.load(Ordering::Relaxed)
    }

    /// Whether the task is inside a non-yielding section (owner only).
    #[inline]
    pub(crate) fn in_non_yielding(&self) -> bool {
        self.non_yielding.load(Ordering::Relaxed) > 0
    }

    /// Its non-yielding depth (owner only; for messages).
    pub(crate) fn non_yielding_depth(&self) -> u32 {
        self.non_yielding.load(Ordering::Relaxed)
    }
}

/// Reader state of one registered OS thread.
#[derive(Debug)]
pub(crate) struct ThreadReader {
    pub(super) cell: QsCell,
    /// The thread's name, if any (stall reports).
    pub(crate) name: Option<String>,
}

impl ThreadReader {
    pub(super) fn new(name: Option<String>) -> Self {
        ThreadReader {
            cell: QsCell::new(),
            name,
        }
    }

    /// Whether the thread has passed a quiescent state since `snap`.
    pub(crate) fn passed_since(&self, snap: QsSnapshot) -> bool {
        self.cell.passed_since(snap)
    }

    /// Grace-period waiter: ask the thread to unpark the registered waiters at its next
    /// transition (waker docs: "per reader").
    pub(crate) fn request_wake(&self) {
        self.cell.request_wake();
    }
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct QsRegistry {
    workers: Box<[CachePadded<WorkerReader>]>,
    threads: Mutex<Vec<Arc<ThreadReader>>>,
    holdouts: Mutex<HashMap<u64, std::sync::Arc<TaskReader>>>,
    /// The holdout set's size, changed under its lock, so that a grace period can see an
    /// empty set without taking the lock (`holdouts`).
    holdout_count: AtomicU64,
    /// Code references of tasks parked (or resumed, not yet parked again) inside yielding
    /// code, by task id.
    code_refs: Mutex<HashMap<u64, CodeRefs>>,
    /// Bumped after every change to `code_refs` (held callbacks are rechecked when it moves).
    code_refs_version: AtomicU64,
    /// Stack scans published so far (statistics).
    stack_scans: AtomicU64,
    pub(super) waker: GpWaker,
}

impl QsRegistry {
    /// A registry for `workers` workers (0 for a domain of registered threads only).
    pub(crate) fn new(workers: usize) -> Self {
        QsRegistry {
            workers: (0..workers)
                .map(|_| CachePadded::new(WorkerReader::new()))
                .collect(),
            threads: Mutex::new(Vec::new()),
            holdouts: Mutex::new(HashMap::new()),
            holdout_count: AtomicU64::new(0),
            code_refs: Mutex::new(HashMap::new()),
            code_refs_version: AtomicU64::new(0),
            stack_scans: AtomicU64::new(0),
            waker: GpWaker::default(),
        }
    }

    /// Worker `index`'s reader state (the scheduler keeps the reference for its switch path).
    pub(crate) fn worker(&self, index: usize) -> &WorkerReader {
        &self.workers[index]
    }

    // ---- grace periods: snapshots and checks -------------------------------------------

    /// Snapshots of every worker that is running a task now (the others are quiescent), into
    /// `into` (emptied first).
    pub(crate) fn active_workers_into(&self, into: &mut Vec<(usize, QsSnapshot)>) {
        into.clear();
        into.extend(
            self.workers
                .iter()
                .enumerate()
                .map(|(i, w)| (i, w.cell.snapshot()))
                .filter(|(_, s)| s.was_active()),
        );
    }

    #[cfg_attr(all(loom, not(test)), allow(dead_code))]
    /// Whether some worker may be running (not asleep): only then does a grace period's heavy
    /// barrier need `membarrier` (qs docs, "Ordering"). Read after the grace period's fence.
    pub(crate) fn any_worker_awake(&self) -> bool {
        self.workers
            .iter()
            .any(|w| !w.asleep.load(Ordering::SeqCst))
    }

    /// A snapshot of worker `index`'s cell (inactive ones have passed already).
    pub(crate) fn worker_snapshot(&self, index: usize) -> QsSnapshot {
        self.workers[index].cell.snapshot()
    }

    /// Whether worker `index` has passed a quiescent state since `snap`.
    pub(crate) fn worker_passed_since(&self, index: usize, snap: QsSnapshot) -> bool {
        self.workers[index].cell.passed_since(snap)
    }

    /// The task running on worker `index` now, 0 when none (stall reports).
    pub(crate) fn task_on_worker(&self, index: usize) -> u64 {
        self.workers[index].current_task.load(Ordering::Relaxed)
    }

    /// Snapshots of every registered thread that is online now, into `into` (emptied
    /// first; a handle is cloned only for a thread that is online).
    pub(crate) fn online_threads_into(&self, into: &mut Vec<(Arc<ThreadReader>, QsSnapshot)>) {
        into.clear();
        for t in lock(&self.threads).iter() {
            let snap = t.cell.snapshot();
            if snap.was_active() {
                into.push((Arc::clone(t), snap));
            }
        }
    }

    /// The holdout set with each holdout's voluntary-yield count, read after every reader
    /// cell was seen to pass; an empty set is seen through `holdout_count`, without the lock.
    /// "Holdouts" in the `qs` docs gives why both reads see every insertion made before those
    /// cell stores, and why the lock-free one still orders a removed holdout's reads of old
    /// code before the grace period ends.
    pub(crate) fn holdouts(&self) -> Vec<(std::sync::Arc<TaskReader>, u64)> {
        if self.holdout_count.load(Ordering::Acquire) == 0 {
            return Vec::new();
        }
        lock(&self.holdouts)
            .values()
            .map(|t| {
                (
                    std::sync::Arc::clone(t),
                    t.voluntary_yields.load(Ordering::Acquire),
                )
            })
            .collect()
    }

    /// Drops from `holdouts` every task that has passed a voluntary yield point since its
    /// count was read: its count moved on, or the scheduler removed it from the set (which it
    /// does only at a voluntary yield point or when cancelling it; the count may have moved
    /// before it was read, and a task that then ends never bumps it again).
    pub(crate) fn retain_holdouts(&self, holdouts: &mut Vec<(std::sync::Arc<TaskReader>, u64)>) {
        let set = lock(&self.holdouts);
        holdouts.retain(|(t, v)| {
            t.voluntary_yields.load(Ordering::Acquire) == *v && set.contains_key(&t.id)
        });
    }

    /// The union of every task's code references, read after a grace period has seen every
    /// reader cell pass and every holdout yield (see `crate::code` for why the references of
    /// every task that may still execute retired code are visible here), or when a recheck
    /// finds [`code_refs_version`](Self::code_refs_version) moved.
    pub(crate) fn code_ref_set(&self) -> RefSet {
        RefSet::union(lock(&self.code_refs).values())
    }

    /// Changes to the code references so far (`Acquire`: a caller that sees a change and then
    /// reads [`code_ref_set`](Self::code_ref_set) sees that change or a later one).
    pub(crate) fn code_refs_version(&self) -> u64 {
        self.code_refs_version.load(Ordering::Acquire)
    }

    /// Tasks with code references now (statistics).
    #[cfg_attr(loom, allow(dead_code))]
    pub(crate) fn tasks_with_code_refs(&self) -> usize {
        lock(&self.code_refs).len()
    }

    // ---- the waker -----------------------------------------------------------------------

    /// Grace-period waiter: register the calling thread as one that readers unpark.
    pub(crate) fn add_waiter_thread(&self, t: crate::primitive::thread::Thread) {
        self.waker.add_waiter(t);
    }

    /// Grace-period waiter: unregister the calling thread.
    pub(crate) fn remove_waiter_thread(&self) {
        self.waker.remove_waiter();
    }

    /// Grace-period waiter: whether the calling thread is registered, so that readers' wakes
    /// unpark it.
    pub(crate) fn is_waiter_thread(&self) -> bool {
        self.waker.has_waiter()
    }

    /// Grace-period waiter: ask worker `index` to unpark the registered waiters at its next
    /// transition (waker docs: "per reader").
    pub(crate) fn request_wake_from_worker(&self, index: usize) {
        self.workers[index].cell.request_wake();
    }

    /// Reader transitions that woke grace-period waiters so far.
    pub(crate) fn reader_wakes(&self) -> u64 {
        self.waker.wakes()
    }

    /// Grace-period waiter: ask every reader to unpark the registered waiters on its next
    /// quiescent-state transition (waker docs: "armed").
    pub(crate) fn arm_waker(&self) {
        self.waker.arm();
    }

    /// Grace-period waiter: withdraw the request (if no reader consumed it yet).
    pub(crate) fn disarm_waker(&self) {
        self.waker.disarm();
    }

    // ---- statistics ------------------------------------------------------------------------

    /// `(voluntary, involuntary)` switch counts of every worker, by index.
    pub(crate) fn switch_counts(&self) -> Vec<(u64, u64)> {
        self.workers
            .iter()
            .map(|w| {
                (
                    w.voluntary_switches.load(Ordering::Relaxed),
                    w.involuntary_switches.load(Ordering::Relaxed),
                )
            })
            .collect()
    }

    // ---- for the transitions ---------------------------------------------------------------

    pub(super) fn insert_holdout(&self, task: &std::sync::Arc<TaskReader>) {
        let mut set = lock(&self.holdouts);
        if set.insert(task.id, std::sync::Arc::clone(task)).is_none() {
            self.holdout_count.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(super) fn remove_holdout(&self, id: u64) {
        let mut set = lock(&self.holdouts);
        if set.remove(&id).is_some() {
            // Release: a grace period that reads the count instead of taking the lock must see
            // this task's earlier reads of old code as done (`holdouts`).
            self.holdout_count.fetch_sub(1, Ordering::Release);
        }
    }

    /// Publishes `id`'s references; a task parking again at the same place publishes the same
    /// ones, which changes nothing (no version bump, no recheck).
    pub(super) fn set_code_refs(&self, id: u64, refs: CodeRefs) {
        self.stack_scans.fetch_add(1, Ordering::Relaxed);
        let mut map = lock(&self.code_refs);
        if map.get(&id) != Some(&refs) {
            map.insert(id, refs);
            self.code_refs_version.fetch_add(1, Ordering::Release);
        }
    }

    /// Stack scans published so far.
    pub(crate) fn stack_scans(&self) -> u64 {
        self.stack_scans.load(Ordering::Relaxed)
    }

    pub(super) fn clear_code_refs(&self, id: u64) {
        lock(&self.code_refs).remove(&id);
        self.code_refs_version.fetch_add(1, Ordering::Release);
    }

    pub(super) fn add_thread(&self, t: Arc<ThreadReader>) {
        lock(&self.threads).push(t);
    }

    pub(super) fn remove_thread(&self, t: &Arc<ThreadReader>) {
        lock(&self.threads).retain(|x| !Arc::ptr_eq(x, t));
    }
}

/// Read access for the crate's own tests.
#[cfg(all(test, not(loom)))]
impl WorkerReader {
    pub(crate) fn is_active(&self) -> bool {
        self.cell.is_active()
    }
    pub(crate) fn snapshot(&self) -> QsSnapshot {
        self.cell.snapshot()
    }
    pub(crate) fn passed_since(&self, snap: QsSnapshot) -> bool {
        self.cell.passed_since(snap)
    }
    pub(crate) fn current_task(&self) -> u64 {
        self.current_task.load(Ordering::Relaxed)
    }
    pub(crate) fn voluntary_switches(&self) -> u64 {
        self.voluntary_switches.load(Ordering::Relaxed)
    }
}

#[cfg(all(test, not(loom)))]
impl TaskReader {
    pub(crate) fn voluntary_yields(&self) -> u64 {
        self.voluntary_yields.load(Ordering::Relaxed)
    }
}

#[cfg(all(test, not(loom)))]
impl ThreadReader {
    pub(crate) fn is_active(&self) -> bool {
        self.cell.is_active()
    }
    pub(crate) fn snapshot(&self) -> QsSnapshot {
        self.cell.snapshot()
    }
}

#[cfg(all(test, not(loom)))]
impl QsRegistry {
    pub(crate) fn holdout_set(&self) -> Vec<std::sync::Arc<TaskReader>> {
        lock(&self.holdouts).values().cloned().collect()
    }
    pub(crate) fn thread_count(&self) -> usize {
        lock(&self.threads).len()
    }
}
