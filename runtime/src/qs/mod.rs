//! The reader side of grace periods: who may be inside JIT code, and how each reader says it
//! is not.
//!
//! # Readers
//!
//! A *reader* is an execution context that may run JIT code:
//!
//! * a **worker** thread, whatever task it runs: one cell per worker. Tasks themselves have
//!   no cell: a task parked at a voluntary yield point holds no pointer into trampoline code
//!   (trampolines never yield), so it is quiescent and grace periods never look at it. This
//!   is what makes a grace period cost O(workers + registered threads), not O(tasks).
//! * a **registered OS thread** ([`ThreadRegistration`]): one cell per registration.
//!
//! Everything else (unregistered threads, grace-period drivers) is invisible to grace
//! periods and must not call patch sites.
//!
//! # Cells
//!
//! A reader's cell is one word, `(transitions << 1) | active`, written only by its owner.
//! `active == 0` means the owner runs no reader code (a worker between tasks or idle, an
//! offline thread). Every transition increments `transitions`. A grace period snapshots every
//! cell; a cell has *passed a quiescent state* since its snapshot when the snapshot was
//! inactive or the value has changed since.
//!
//! # Transitions
//!
//! Reader state is written only by the named transitions of `transitions.rs`, each of which
//! fuses the cell store, the holdout bookkeeping, the barrier and the waker notification:
//!
//! | transition | caller | cell | holdout set | then |
//! |---|---|---|---|---|
//! | switch-in | worker, before resuming a task | active, `+1` | | reader barrier |
//! | voluntary switch-out | worker: task yielded, parked or ended | inactive, `+1` | task removed; code references replaced (park inside yielding code) or withdrawn, **before** the cell store | wake waiters |
//! | involuntary switch-out | worker: yield inside a non-yielding section | inactive, `+1` | task inserted **before** the cell store | wake waiters |
//! | quiescent | registered thread | inactive, then active, `+2` | | wake waiters, full fence, wake waiters again |
//! | offline / online | registered thread | inactive / active, `+1` | | full fence, wake waiters / full fence |
//! | sleep / wake | idle worker before parking / after | (inactive) | | `SeqCst` flag store / swap |
//! | offline guard | task or registered thread around a blocking call | inactive, then active | | wake waiters (a thread: after a full fence) / reader barrier |
//! | forget a cancelled holdout | the canceller of a task at shutdown | | task and its code references removed | |
//!
//! "Wake waiters" means: wake the grace periods that asked this reader to (or, while holdout
//! tasks are waited for, asked any reader: `waker.rs`). A registered thread reads the request
//! behind a full fence after its cell store, so none of its wake-ups can be lost and its
//! waiter needs no timer; a worker's switch-out has no fence, so a waiter for workers keeps
//! short backoff sleeps (`grace/stall.rs`).
//!
//! Inside a [`non_yielding`] section (every JIT hook runs in one) the caller is inside a
//! trampoline, so the transitions that would report a quiescent state (quiescent, offline,
//! the offline guard) do nothing; a yield point there is an involuntary switch.
//!
//! # Holdouts
//!
//! A task switched out *involuntarily* may still hold a pointer into a trampoline. It is
//! inserted into the registry's holdout set before its worker's cell store (`Release`), and
//! removed when it next passes a voluntary yield point. A grace period reads the holdout set
//! after it has seen every cell pass (`Acquire` loads of values stored after the insertion),
//! so every insertion that made a worker look quiescent is visible to that read, and waits
//! until each holdout's voluntary-yield count has moved on.
//!
//! The read skips the set's lock when the set's size, an atomic changed only under that lock,
//! reads 0. Both halves of the locked read's argument still hold:
//! - **insertions:** each one the read must see happens-before it (through the cell loads
//!   above), so the load returns that insertion's increment or a later value, and 0 means
//!   every such holdout was removed again, at a voluntary yield point (or when cancelled);
//! - **removals:** the decrement is `Release` and the load `Acquire`, and every change of the
//!   count is a read-modify-write (one release sequence), so a removed holdout's reads of old
//!   code happen-before the end of the grace period, as the lock's unlock and lock ordered
//!   them before. A `Relaxed` decrement lost that edge: the loom model
//!   `loom_a_migrated_holdout_reads_its_code_before_the_free` catches it.
//!
//! # Code references
//!
//! A task parked at a voluntary yield point *inside yielding JIT code* (a compiled body that
//! called a runtime helper that parks) is quiescent for every callback but the ones queued
//! with a code range its stack points into. The registry keeps those tasks' stack-scan
//! results; the algorithm and its ordering argument are in the [`code`](crate::code) docs.
//!
//! # Ordering
//!
//! The one argument every reader barrier and grace-period barrier in tramway relies on,
//! written only here.
//!
//! A reader's transition that can end a grace period's wait (switch-in of the next task after
//! a switch-out, `quiescent`, `online`) is a **store** to its cell, followed in program order
//! by **loads** of patch sites when it next calls JIT code. The updater's side is a store (it
//! re-points a site) followed, in the grace period, by loads of every cell. That is the
//! store-buffering pattern: without a full barrier on *both* sides, the grace period could
//! read the reader's new cell value while the reader's site load still returns the old
//! target; the grace period would end, the old trampoline would be freed, and the reader
//! would jump into it.
//!
//! So the reader issues a barrier after its cell store and before its next site load, and
//! the grace period issues the *heavy* barrier after the site stores (which happen-before it:
//! the updater queues its callback or calls `synchronize` after swapping) and before its first
//! cell load. Either way, of the two loads at least one sees the other side's store: the
//! reader loads the new target, or the grace period sees the reader still active (or not yet
//! changed) and keeps waiting. Which barriers:
//!
//! * **Workers** switch tasks millions of times per second, so their barrier is *light*:
//!   with `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)` ([`BarrierMode::Membarrier`], chosen
//!   once per process) it is a compiler barrier, and the heavy half makes every running
//!   thread execute a full barrier; without membarrier both halves are `SeqCst` fences.
//! * **Registered threads** report rarely (like liburcu's QSBR readers, which they mirror), so
//!   they always issue a full `SeqCst` fence, and need nothing from the grace period but its
//!   own fence.
//! * **Asleep workers.** The heavy half is a `SeqCst` fence, plus the membarrier only if some
//!   worker is awake. An idle worker sets its asleep flag (`SeqCst`) before it parks and
//!   clears it with a `SeqCst` swap followed by a `SeqCst` fence after, before it can switch a
//!   task in. If the grace period, after its fence, reads the flag set, the worker's swap
//!   comes later in the flag's modification order, so the grace period's fence precedes the
//!   swap, and so the worker's fence, in the single total order of `SeqCst` operations; then
//!   every load the worker makes after its fence sees the site stores that precede the grace
//!   period's fence. (The swap alone would do on x86, where it is a full barrier, but not in
//!   the language's memory model: the loom model found the execution.) A grace period over idle workers and offline threads is then a few
//!   loads and fences, with no system call.
//!
//! Going *inactive* needs no barrier: an inactive reader loads no site until its next
//! switch-in or online transition, which has one. At its end a grace period issues a
//! `SeqCst` fence so that its cell observations are ordered before the callbacks' frees.

mod barrier;
mod cell;
mod reader;
mod registration;
mod registry;
mod transitions;
mod waker;

pub use barrier::{barrier_mode, BarrierMode};
pub use reader::non_yielding;
pub use registration::ThreadRegistration;

pub(crate) use barrier::heavy_barrier;
#[cfg(all(loom, test))]
pub(crate) use barrier::SKIP_READER_BARRIER;
pub(crate) use cell::QsSnapshot;
pub(crate) use reader::{
    in_non_yielding, in_task, is_active_reader_of, on_worker_thread, preemptible,
    task_yielding_depth, thread_non_yielding_enter, thread_non_yielding_leave, yielding_code_depth,
    yielding_code_enter, yielding_code_leave, yielding_code_restore,
};
pub(crate) use registry::{QsRegistry, TaskReader, ThreadReader, WorkerReader};
pub(crate) use transitions::{
    forget_cancelled_holdout, switch_in, switch_in_untracked, switch_out_involuntary,
    switch_out_untracked, switch_out_voluntary, wake_sleeping_worker,
    was_switched_out_involuntarily, worker_sleeps, worker_started, worker_stopped, worker_wakes,
    OfflineGuard,
};
#[cfg(all(loom, test))]
pub(crate) use transitions::{
    PUBLISH_CODE_REFS_LATE, SKIP_LATE_WAKE_CHECK, SKIP_OFFLINE_AT_UNREGISTER,
};
#[cfg(all(loom, test))]
pub(crate) use waker::WAKE_ONLY_FIRST_WAITER;
