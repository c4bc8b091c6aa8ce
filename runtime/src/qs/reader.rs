//! The reader context of the calling thread, and non-yielding sections.
//!
//! Each OS thread knows which reader it is right now: none (a plain thread), a worker (with
//! the task it runs, if any), or a registered thread. The transitions set it; everything that
//! must ask "am I a reader, and may I be inside JIT code right now?" reads it here: the
//! offline guard, `quiescent()`, grace-period waits, blocking waits, and later the preemption
//! signal handler (the context is a `const` thread-local of plain pointers: reading it is
//! async-signal-safe).
//!
//! **Migration.** A task may resume on another worker after any yield point, so the accessors
//! are `#[inline(never)]`: the thread-local's address is recomputed on every call, never kept
//! across a yield point. Per-task state (the non-yielding depth) lives in the task's
//! [`TaskReader`], which travels with it, never in a thread-local.

use std::cell::Cell;
use std::sync::atomic::Ordering;

use super::registry::{QsRegistry, TaskReader, ThreadReader, WorkerReader};
use crate::primitive::{const_thread_local, AtomicU32};

/// What the calling thread is, as a reader. The pointers are valid while the context is set:
/// the owner of each pointee clears the context before the pointee can go away.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Reader {
    /// Not a reader (a plain OS thread, or a grace-period driver).
    None,
    /// A worker thread; `task` is null between tasks.
    Worker {
        registry: *const QsRegistry,
        worker: *const WorkerReader,
        task: *const TaskReader,
    },
    /// A registered OS thread.
    Thread {
        registry: *const QsRegistry,
        thread: *const ThreadReader,
    },
}

const_thread_local! {
    static CURRENT: Cell<Reader> = Cell::new(Reader::None);
}
const_thread_local! {
    /// Non-yielding depth of an OS thread (a task keeps its own in its `TaskReader`).
    static THREAD_NON_YIELDING: AtomicU32 = AtomicU32::new(0);
}
const_thread_local! {
    /// A thread registration dropped inside a non-yielding section, to unregister when the
    /// outermost section ends (see `transitions::unregister_thread`).
    static PENDING_UNREGISTER: Cell<Option<fn()>> = Cell::new(None);
}

/// Runs `f` when the calling OS thread leaves its outermost non-yielding section.
pub(super) fn defer_to_section_end(f: fn()) {
    let _ = PENDING_UNREGISTER.try_with(|p| p.set(Some(f)));
}

/// The calling thread's reader context. `inline(never)`: see the module docs.
#[inline(never)]
pub(crate) fn current() -> Reader {
    // `try_with`: the context holds no destructor, so it stays readable while the thread's
    // other locals are destroyed; this only guards against platforms where it would not.
    CURRENT.try_with(Cell::get).unwrap_or(Reader::None)
}

/// Sets the calling thread's reader context (transitions only).
#[inline(never)]
pub(super) fn set(reader: Reader) {
    let _ = CURRENT.try_with(|c| c.set(reader));
}

/// The task the calling worker runs, if any.
#[inline]
pub(crate) fn current_task() -> Option<*const TaskReader> {
    let task = current_task_or_null();
    (!task.is_null()).then_some(task)
}

/// The task the calling worker runs, or null: [`current`] narrowed to one pointer inside the
/// non-inlined accessor (the depth marks' hot path). `inline(never)`: see the module docs.
#[inline(never)]
fn current_task_or_null() -> *const TaskReader {
    CURRENT
        .try_with(|c| match c.get() {
            Reader::Worker { task, .. } => task,
            _ => std::ptr::null(),
        })
        .unwrap_or(std::ptr::null())
}

/// Whether the calling OS thread is a worker of some runtime (running a task or not).
pub(crate) fn on_worker_thread() -> bool {
    matches!(current(), Reader::Worker { .. })
}

/// Whether the caller is a green thread.
pub(crate) fn in_task() -> bool {
    current_task().is_some()
}

/// Whether the caller is, right now, a reader that grace periods over `registry` wait for:
/// a task running on one of its workers (not inside an offline scope), or one of its
/// registered threads that is online. Only such a caller may call JIT code safely.
pub(crate) fn is_active_reader_of(registry: &QsRegistry) -> bool {
    match current() {
        Reader::Worker {
            registry: r,
            worker,
            task,
        } if !task.is_null() && std::ptr::eq(r, registry) => {
            // SAFETY: a worker's context points into its registry, which the worker keeps
            // alive while the context is set (and `registry` is that registry).
            unsafe { &*worker }.cell.is_active()
        }
        Reader::Thread {
            registry: r,
            thread,
        } if std::ptr::eq(r, registry) => {
            // SAFETY: the registration clears the context before its reader drops.
            unsafe { &*thread }.cell.is_active()
        }
        _ => false,
    }
}

/// Runs `f` with the non-yielding depth counter of the caller: its task's, or its thread's.
fn with_depth<R>(f: impl FnOnce(&AtomicU32) -> R) -> R {
    match current_task() {
        // SAFETY: the task's `TaskReader` is kept alive by the task, which outlives every
        // frame on its own stack, including this one.
        Some(task) => f(unsafe { &(*task).non_yielding }),
        None => THREAD_NON_YIELDING.with(f),
    }
}

/// Whether the caller is inside a [`non_yielding`] section (for example a JIT hook): it may
/// then be executing on behalf of a trampoline and is *not* quiescent.
pub(crate) fn in_non_yielding() -> bool {
    with_depth(|d| d.load(Ordering::Relaxed) > 0)
}

/// Runs `f` in a preemptible scope of the calling task (see `crate::preempt::preemptible`);
/// outside a task it just runs `f`.
pub(crate) fn preemptible<R>(f: impl FnOnce() -> R) -> R {
    let Some(task) = current_task() else {
        return f();
    };
    /// Leaves the scope even if `f` unwinds.
    struct Leave(*const TaskReader);
    impl Drop for Leave {
        fn drop(&mut self) {
            // SAFETY: the task's reader outlives its own stack frames (see `with_depth`);
            // the task may have migrated, but the counter is its own.
            let d = &unsafe { &*self.0 }.preemptible;
            d.store(d.load(Ordering::Relaxed) - 1, Ordering::Relaxed);
        }
    }
    // SAFETY: as in `Leave::drop`.
    let d = &unsafe { &*task }.preemptible;
    d.store(d.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    let _leave = Leave(task);
    f()
}

/// Runs `f` as a non-yielding section: the caller may be inside JIT code for its whole
/// duration (every hook a trampoline calls runs inside one), so it reports no quiescent state.
///
/// Inside it, [`offline`](crate::offline), [`ThreadRegistration::quiescent`] and
/// [`ThreadRegistration::offline`](crate::ThreadRegistration::offline) do nothing, blocking
/// waits keep the caller online, waiting for a grace period is refused (it would wait for
/// itself), and a yield point panics (the default in debug builds) or is recorded as an
/// **involuntary** switch that makes the task a grace-period holdout until its next voluntary
/// yield point (see [`YieldInNonYielding`](crate::YieldInNonYielding)). Sections nest.
///
/// [`ThreadRegistration::quiescent`]: crate::ThreadRegistration::quiescent
pub fn non_yielding<R>(f: impl FnOnce() -> R) -> R {
    /// Leaves the section even if `f` unwinds.
    struct Leave(*const AtomicU32);
    impl Drop for Leave {
        fn drop(&mut self) {
            // SAFETY: the counter is the task's (alive as long as its stack, see
            // `with_depth`) or this OS thread's (alive as long as the thread); the task may
            // have migrated, but the counter is the task's own, not a thread-local.
            leave_section(unsafe { &*self.0 });
        }
    }
    // Only the owner writes its counter (a signal handler may read it), so a load/store pair
    // is enough: no read-modify-write on the hook path.
    let depth = with_depth(|d| {
        d.store(d.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        d as *const AtomicU32
    });
    let _leave = Leave(depth);
    f()
}

/// Leaves one non-yielding level of counter `d`; at the outermost, runs a deferred
/// unregistration.
fn leave_section(d: &AtomicU32) {
    let depth = d.load(Ordering::Relaxed).saturating_sub(1);
    d.store(depth, Ordering::Relaxed);
    if depth == 0 {
        if let Some(f) = PENDING_UNREGISTER.try_with(Cell::take).ok().flatten() {
            f();
        }
    }
}

/// Enters a non-yielding section of the calling OS thread (unscoped: the C-ABI marks of
/// yielding code on a thread, see `crate::code`).
pub(crate) fn thread_non_yielding_enter() {
    let _ =
        THREAD_NON_YIELDING.try_with(|d| d.store(d.load(Ordering::Relaxed) + 1, Ordering::Relaxed));
}

/// Leaves a section [`thread_non_yielding_enter`] entered.
pub(crate) fn thread_non_yielding_leave() {
    let _ = THREAD_NON_YIELDING.try_with(leave_section);
}

// ---- yielding code (`crate::code`) ------------------------------------------------------

/// The current task's yielding-code depth counter, `None` outside a task (one thread-local
/// read). The counter is the task's own and travels with it, so the pointer stays right across
/// yield points and migrations (unlike a thread-local's address).
#[inline]
pub(crate) fn task_yielding_depth() -> Option<*const AtomicU32> {
    current_task().map(|t| {
        // SAFETY: the task's reader outlives its own stack frames (see `with_depth`).
        unsafe { &(*t).yielding_code as *const AtomicU32 }
    })
}

/// Raises the depth counter `d` (owner only: a load and a store, no read-modify-write) and
/// returns its previous value.
#[inline]
pub(crate) fn yielding_code_enter(d: &AtomicU32) -> u32 {
    let prev = d.load(Ordering::Relaxed);
    d.store(prev + 1, Ordering::Relaxed);
    prev
}

/// Leaves a scope entered with [`yielding_code_enter`] by storing back the depth it returned:
/// one store, so back-to-back scopes do not chain two store-to-load forwards each.
#[inline]
pub(crate) fn yielding_code_restore(d: &AtomicU32, prev: u32) {
    d.store(prev, Ordering::Relaxed);
}

/// Lowers it (saturating: an unbalanced leave cannot wrap the depth around).
#[inline]
pub(crate) fn yielding_code_leave(d: &AtomicU32) {
    d.store(
        d.load(Ordering::Relaxed).saturating_sub(1),
        Ordering::Relaxed,
    );
}

/// The current task's yielding-code depth, 0 outside a task.
pub(crate) fn yielding_code_depth() -> u32 {
    // SAFETY: as in `yielding_code_enter`.
    current_task().map_or(0, |t| unsafe { &*t }.yielding_code.load(Ordering::Relaxed))
}
