//! The named reader transitions: the only code that writes reader state.
//!
//! Each function fuses the cell update, the holdout bookkeeping, the reader barrier, the
//! reader-context update and the waker notification of one transition, in the order the `qs`
//! module docs argue for, so that no caller can get one of them wrong. The scheduler and
//! thread registrations call these and nothing else.

use std::sync::atomic::Ordering;
use std::sync::Arc as StdArc;

use super::barrier::{light_barrier, thread_barrier};
use super::reader::{self, in_non_yielding, Reader};
use super::registry::{QsRegistry, TaskReader, ThreadReader, WorkerReader};
use crate::code::CodeRefs;
use crate::error::RegisterError;
use crate::primitive::Arc;

/// Single-writer counter bump (the owner is the only writer; grace periods read it).
#[inline]
fn bump(c: &crate::primitive::AtomicU64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(1), Ordering::Release);
}

#[cfg(all(loom, test))]
std::thread_local! {
    /// Fault injection for a loom control: `switch_out_voluntary` publishes a parked task's
    /// code references after its worker's cell store.
    pub(crate) static PUBLISH_CODE_REFS_LATE: std::cell::Cell<bool> =
        const { std::cell::Cell::new(false) };
}

#[cfg(all(loom, test))]
std::thread_local! {
    /// Fault injection for a loom control: `thread_quiescent` reads a grace period's wake
    /// request only before its fence.
    pub(crate) static SKIP_LATE_WAKE_CHECK: std::cell::Cell<bool> =
        const { std::cell::Cell::new(false) };
    /// Fault injection for a loom control: `unregister_thread` leaves the registry without
    /// going offline first.
    pub(crate) static SKIP_OFFLINE_AT_UNREGISTER: std::cell::Cell<bool> =
        const { std::cell::Cell::new(false) };
}

// ---- workers ----------------------------------------------------------------------------

/// A worker thread starts: it is a reader context (running no task yet, cell inactive).
pub(crate) fn worker_started(registry: &QsRegistry, index: usize) {
    reader::set(Reader::Worker {
        registry,
        worker: registry.worker(index),
        task: std::ptr::null(),
    });
}

/// A worker thread leaves its loop: it is no reader any more.
pub(crate) fn worker_stopped() {
    reader::set(Reader::None);
}

/// **Switch-in**: the worker is about to resume `task`, which may then load patch sites.
#[inline]
pub(crate) fn switch_in(registry: &QsRegistry, worker: &WorkerReader, task: &TaskReader) {
    worker.current_task.store(task.id, Ordering::Relaxed);
    reader::set(Reader::Worker {
        registry,
        worker,
        task,
    });
    worker.cell.advance(true);
    // Keep the task's site loads after the cell store (qs docs, "Ordering").
    light_barrier();
}

/// **Voluntary switch-out**: `task` came back at a voluntary yield point (yield, sleep, park,
/// a blocking wait) or ended. It stops being a holdout, and the worker's cell goes inactive.
/// Outside yielding code (`code_refs` is `None`) it holds no pointer into JIT code and its
/// code references, if any, are withdrawn; inside it (`Some`: its stack scan) they are
/// replaced, **before** the cell store (Release), so a grace period that sees the cell change
/// sees them too (`crate::code` docs).
#[inline]
pub(crate) fn switch_out_voluntary(
    registry: &QsRegistry,
    worker: &WorkerReader,
    task: &TaskReader,
    code_refs: Option<CodeRefs>,
) {
    #[cfg(all(loom, test))]
    if PUBLISH_CODE_REFS_LATE.with(std::cell::Cell::get) {
        // The injected bug: the references go out after the cell store.
        bump(&task.voluntary_yields);
        worker.cell.advance(false);
        match code_refs {
            Some(refs) => {
                registry.set_code_refs(task.id, refs);
                task.has_code_refs.store(true, Ordering::Relaxed);
            }
            None if task.has_code_refs.swap(false, Ordering::Relaxed) => {
                registry.clear_code_refs(task.id)
            }
            None => {}
        }
        bump(&worker.voluntary_switches);
        finish_switch_out(registry, worker);
        return;
    }
    match code_refs {
        Some(refs) => {
            registry.set_code_refs(task.id, refs);
            task.has_code_refs.store(true, Ordering::Relaxed);
        }
        None if task.has_code_refs.load(Ordering::Relaxed) => {
            registry.clear_code_refs(task.id);
            task.has_code_refs.store(false, Ordering::Relaxed);
        }
        None => {}
    }
    bump(&task.voluntary_yields);
    if task.holdout.load(Ordering::Relaxed) {
        registry.remove_holdout(task.id);
        task.holdout.store(false, Ordering::Relaxed);
    }
    // No barrier: the worker loads no site until its next switch-in, which has one.
    worker.cell.advance(false);
    bump(&worker.voluntary_switches);
    finish_switch_out(registry, worker);
}

/// **Involuntary switch-out**: `task` was switched out while it may be inside JIT code (a
/// yield point inside a non-yielding section). It becomes a holdout *before* the cell store
/// (Release), so a grace period that sees the cell change also sees the holdout.
#[inline]
pub(crate) fn switch_out_involuntary(
    registry: &QsRegistry,
    worker: &WorkerReader,
    task: &StdArc<TaskReader>,
    preempted: bool,
) {
    task.preempted.store(preempted, Ordering::Relaxed);
    // Unconditional (idempotent) insert: correct even if the entry was removed meanwhile.
    registry.insert_holdout(task);
    task.holdout.store(true, Ordering::Relaxed);
    worker.cell.advance(false);
    bump(&worker.involuntary_switches);
    finish_switch_out(registry, worker);
}

#[inline]
fn finish_switch_out(registry: &QsRegistry, worker: &WorkerReader) {
    worker.current_task.store(0, Ordering::Relaxed);
    reader::set(Reader::Worker {
        registry,
        worker,
        task: std::ptr::null(),
    });
    registry.waker.notify(&worker.cell);
}

/// Switch-in without quiescent-state reporting (the `qs_reporting(false)` benchmark knob):
/// only the reader context is kept, so non-yielding sections still work.
#[inline]
pub(crate) fn switch_in_untracked(registry: &QsRegistry, worker: &WorkerReader, task: &TaskReader) {
    reader::set(Reader::Worker {
        registry,
        worker,
        task,
    });
}

/// Switch-out without quiescent-state reporting (see [`switch_in_untracked`]).
#[inline]
pub(crate) fn switch_out_untracked(registry: &QsRegistry, worker: &WorkerReader) {
    reader::set(Reader::Worker {
        registry,
        worker,
        task: std::ptr::null(),
    });
}

/// **Sleep**: the idle worker `worker` is about to park. `SeqCst`, paired with the `SeqCst`
/// loads of [`QsRegistry::any_worker_awake`] and of the scheduler's wake-ups.
pub(crate) fn worker_sleeps(worker: &WorkerReader) {
    worker.asleep.store(true, Ordering::SeqCst);
}

/// **Wake** (by the worker itself, after parking): clears the flag with a `SeqCst` swap and
/// issues a `SeqCst` fence before the worker loads anything (qs docs, "Ordering"; the fence
/// is what the language's memory model needs on top of the swap, which on x86 is already a
/// full barrier). Returns whether the flag was set (false if a waker cleared it first).
pub(crate) fn worker_wakes(worker: &WorkerReader) -> bool {
    let was_asleep = worker.asleep.swap(false, Ordering::SeqCst);
    crate::primitive::fence(Ordering::SeqCst);
    was_asleep
}

/// **Wake another worker**: clears `worker`'s flag if it is asleep; returns whether this call
/// did (and so must unpark it). The worker still passes its own [`worker_wakes`] swap.
pub(crate) fn wake_sleeping_worker(worker: &WorkerReader) -> bool {
    worker.asleep.load(Ordering::SeqCst) && worker.asleep.swap(false, Ordering::SeqCst)
}

/// Whether `task` is a holdout: its last switch-out was involuntary, so it may be suspended
/// inside JIT code (owner only: the canceller asks before dropping it).
pub(crate) fn was_switched_out_involuntarily(task: &TaskReader) -> bool {
    task.holdout.load(Ordering::Relaxed)
}

/// **Forget a cancelled holdout**: a task dropped by shutdown will never run again, so if it
/// was a holdout, or held code references, it no longer holds anything; release the grace
/// periods and callbacks waiting for it.
/// Called by the canceller, which owns the task.
pub(crate) fn forget_cancelled_holdout(registry: &QsRegistry, task: &TaskReader) {
    if task.has_code_refs.swap(false, Ordering::Relaxed) {
        registry.clear_code_refs(task.id);
    }
    if task.holdout.swap(false, Ordering::Relaxed) {
        registry.remove_holdout(task.id);
        bump(&task.voluntary_yields);
    }
}

// ---- registered threads -----------------------------------------------------------------

/// **Register**: the calling OS thread becomes an online reader of `registry`.
pub(crate) fn register_thread(
    registry: &Arc<QsRegistry>,
) -> Result<Arc<ThreadReader>, RegisterError> {
    match reader::current() {
        Reader::None => {}
        Reader::Worker { .. } => return Err(RegisterError::InRuntime),
        Reader::Thread { .. } => return Err(RegisterError::AlreadyRegistered),
    }
    let name = crate::primitive::thread::current()
        .name()
        .map(str::to_owned);
    let thread = Arc::new(ThreadReader::new(name));
    thread.cell.advance(true);
    thread_barrier();
    registry.add_thread(Arc::clone(&thread));
    reader::set(Reader::Thread {
        registry: &**registry,
        thread: &*thread,
    });
    Ok(thread)
}

/// **Unregister**: the thread goes offline and leaves the registry.
///
/// Inside a non-yielding section the thread is inside JIT code and must stay visible to grace
/// periods: it then stays registered and online until its outermost section ends, and is
/// unregistered there.
pub(crate) fn unregister_thread(registry: &Arc<QsRegistry>, thread: &Arc<ThreadReader>) {
    if in_non_yielding() {
        // The reader context keeps pointing at both; they are released with the context.
        std::mem::forget((Arc::clone(registry), Arc::clone(thread)));
        reader::defer_to_section_end(unregister_current_thread);
        return;
    }
    #[cfg(all(loom, test))]
    let skip_offline = SKIP_OFFLINE_AT_UNREGISTER.with(std::cell::Cell::get);
    #[cfg(not(all(loom, test)))]
    let skip_offline = false;
    if !skip_offline {
        thread_offline(registry, thread);
    }
    registry.remove_thread(thread);
    if matches!(reader::current(), Reader::Thread { thread: t, .. } if std::ptr::eq(t, &**thread)) {
        reader::set(Reader::None);
    }
}

/// The deferred half of [`unregister_thread`]: unregisters the thread the reader context
/// names, and releases the references that kept its registry and reader alive.
fn unregister_current_thread() {
    if let Reader::Thread { registry, thread } = reader::current() {
        // SAFETY: `unregister_thread` leaked one `Arc` of each for the context to keep
        // pointing at; these take them back, once.
        let (registry, thread) = unsafe { (Arc::from_raw(registry), Arc::from_raw(thread)) };
        unregister_thread(&registry, &thread);
    }
}

/// **Quiescent**: an online thread reports that it holds no pointer into JIT code. Inside a
/// non-yielding section it does hold one, so nothing happens there.
///
/// It passes through offline: a grace period waiting for it sees the change, and one that
/// snapshots while the waker runs (which may yield this CPU to the waiter) sees it inactive
/// and need not wait for it at all; then it is online again, behind a full barrier.
///
/// A waiter's wake request is checked twice: while offline (the usual case), and again
/// behind the barrier, which makes a lost wake-up impossible. The waiter stores its request,
/// fences, and re-reads the cell; the thread stores the cell, fences, and re-reads the
/// request. Of two `SeqCst` fences one comes first, so the waiter sees the report or the
/// thread sees the request (waker docs), and a registered thread's waiter needs no timer.
pub(crate) fn thread_quiescent(registry: &QsRegistry, thread: &ThreadReader) {
    if in_non_yielding() || !thread.cell.is_active() {
        return;
    }
    thread.cell.advance(false);
    registry.waker.notify(&thread.cell);
    thread.cell.advance(true);
    // The thread's next site loads stay after the report (qs docs, "Ordering").
    thread_barrier();
    #[cfg(all(loom, test))]
    if SKIP_LATE_WAKE_CHECK.with(std::cell::Cell::get) {
        return; // the injected bug: the request is read only before the fence
    }
    registry.waker.notify(&thread.cell);
}

/// **Offline**: the thread is quiescent until it comes back online (not inside a
/// non-yielding section, where it is not quiescent).
pub(crate) fn thread_offline(registry: &QsRegistry, thread: &ThreadReader) {
    if in_non_yielding() || !thread.cell.is_active() {
        return;
    }
    thread.cell.advance(false);
    // Before the request is read, so that no wake-up is lost (see `thread_quiescent`).
    thread_barrier();
    registry.waker.notify(&thread.cell);
}

/// **Online**: the thread may load patch sites again.
pub(crate) fn thread_online(thread: &ThreadReader) {
    if !thread.cell.is_active() {
        thread.cell.advance(true);
        thread_barrier();
    }
}

// ---- the offline guard ------------------------------------------------------------------

/// **Offline guard**: the caller (a task on its worker, or an online registered thread) is
/// quiescent until the guard drops, for the length of a blocking call that runs no JIT code.
///
/// Inside a non-yielding section, or inside yielding code (`crate::code`), the caller is not
/// quiescent and the guard does nothing. The
/// guard keeps no pointer to the reader it took offline: a task may migrate to another worker
/// meanwhile (if the blocking call yields), so the drop looks up the caller's reader again and
/// brings *that* one back online if it is offline.
#[must_use = "the caller is offline only while the guard lives"]
pub(crate) struct OfflineGuard {
    took: Took,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Took {
    Nothing,
    Worker,
    Thread,
}

impl OfflineGuard {
    /// Takes the caller offline (see the type docs).
    pub(crate) fn new() -> Self {
        // Inside yielding code the task's stack may hold JIT frames: going offline without a
        // stack scan would let a grace period free them under the blocked task, so it stays
        // online (a blocking call there holds grace periods up instead).
        if in_non_yielding() || super::reader::yielding_code_depth() > 0 {
            return OfflineGuard {
                took: Took::Nothing,
            };
        }
        let took = match reader::current() {
            Reader::Worker {
                registry,
                worker,
                task,
            } if !task.is_null() => {
                // SAFETY: a worker's context points into its scheduler's registry, which the
                // worker keeps alive while the context is set.
                let (registry, worker) = unsafe { (&*registry, &*worker) };
                if worker.cell.is_active() {
                    worker.cell.advance(false);
                    registry.waker.notify(&worker.cell);
                    Took::Worker
                } else {
                    Took::Nothing
                }
            }
            Reader::Thread { registry, thread } => {
                // SAFETY: a thread's context points into its registration, which clears the
                // context before it drops.
                let (registry, thread) = unsafe { (&*registry, &*thread) };
                if thread.cell.is_active() {
                    thread_offline(registry, thread);
                    Took::Thread
                } else {
                    Took::Nothing
                }
            }
            _ => Took::Nothing,
        };
        OfflineGuard { took }
    }

    /// Whether the guard took a worker offline (its scheduler may then let idle workers
    /// steal the worker's queued tasks).
    pub(crate) fn took_worker_offline(&self) -> bool {
        self.took == Took::Worker
    }
}

impl Drop for OfflineGuard {
    fn drop(&mut self) {
        if self.took == Took::Nothing {
            return;
        }
        match reader::current() {
            Reader::Worker { worker, task, .. } if !task.is_null() => {
                // SAFETY: as in `new`; this is the worker the task runs on *now*.
                let worker = unsafe { &*worker };
                if !worker.cell.is_active() {
                    worker.cell.advance(true);
                    light_barrier();
                }
            }
            // SAFETY: as in `new`; a registration dropped meanwhile cleared the context.
            Reader::Thread { thread, .. } => thread_online(unsafe { &*thread }),
            _ => {}
        }
    }
}
