//! Every path from "unreachable" to "unmapped": retirement, deferral, grace periods, freeing.
//!
//! The jit crate never decides by itself when code is unreachable. Retired code is freed only
//! through a [`Reclaim`] implementation, which the runtime provides with its grace periods (RCU
//! Tasks semantics), after every task that might have been inside the code has passed a
//! quiescent state.
//!
//! # The retire chain
//! ```text
//!  Site::swap(B)                     site.rs: one Release store of the patch word; A is
//!    |                               uninstalled, and retired once it is in no site
//!    v
//!  Retired(A)                        trampoline.rs: the handle `swap` returns
//!    |  dropped, and so is every other handle of A (a site's, a forwarding trampoline's
//!    |  keepalive, a probe manager's pin)
//!    v
//!  TrampolineInner::drop             trampoline.rs: never reachable, or `reclaim_now`:
//!    |                               CodeFree::run at once; `leak`: kept forever
//!    v
//!  Retirement::defer_free(CodeFree)  retirement.rs: counted in `pending_frees` until it runs;
//!    |                               the free is data (free.rs: slot, referenced memory)
//!    |
//!    +-- a collection scope is active on this thread (a probe batch commit)?
//!    |     collect.rs: the free joins the scope's list, and Retirement::retire_together
//!    |     queues the whole list as ONE callback when the scope ends
//!    +-- the reclaimer keeps batches open (GraceDomain)?
//!    |     free.rs: pushed into the Jit's open batch; the push that finds it empty queues
//!    |     it once (Reclaim::defer_batch -> GraceDomain::call_batch); the GP that takes it
//!    |     seals it when it is claimed (tramway_runtime::grace::batch)
//!    v
//!  Reclaim::defer_code(code, free)   otherwise: one boxed callback per free, e.g.
//!    |                               LeakUntilDrop's queue
//!    v
//!  grace period                      every task that might have been inside A when the
//!    |                               free was queued (or its batch sealed) has since passed a
//!    |                               quiescent state, and no task parked inside yielding code
//!    |                               has a stack word in A's code (tramway_runtime::code; a
//!    |                               batch splits off only the frees such a task references)
//!    v
//!  the callback or batch runs        on the grace-period driver thread
//!    |
//!    v
//!  CodeMemory::free_all(slots)       code_memory: trap fill, slots back to their chunks under
//!    |                               one lock; the call counters and hook cells the code
//!    |                               referenced drop after
//!    |  a chunk's last slot, the chunk is not its class's current one, and the class
//!    |  already keeps SPARE_CHUNKS_PER_CLASS empty chunks
//!    v
//!  chunk unmapped                    code_memory backend: views dropped, PROT_NONE
//!                                    placeholder restored, memfd hole punched
//! ```
//! Side paths feed the same chain: dropping a [`Site`](crate::Site) defers its stub's free
//! with `defer_free` (callers may still be inside the stub); a forwarding trampoline keeps its
//! target trampoline alive and drops it after deferring its own free, so the target's free is
//! queued after (`retire_together` merges the two when a scope is active). `Jit::barrier` is
//! `Retirement::drain` (barriers until every counted free has run), and `Site::swap` ends with
//! `Retirement::throttle_backlog` (waits for a barrier while too many retired bytes wait).
//!
//! # Reclaimers shipped here
//! - [`LeakUntilDrop`] (the default): deferred frees are queued and run only when the reclaimer
//!   itself drops, i.e. once the `Jit` and every site and trampoline handle are gone. Retired
//!   code therefore stays mapped for as long as anything could call it; this is also the
//!   "leak" baseline of the benchmarks.
//! - [`ImmediateReclaim`]: runs every callback at once. It is unsound as soon as a thread may
//!   still be executing retired code, so its constructor is `unsafe`; it exists for the control
//!   test that must crash.
//! - `impl Reclaim for GraceDomain`: frees after a grace period of the domain's flavor.

mod collect;
mod free;
mod retirement;

pub(crate) use self::free::CodeFree;

pub(crate) use self::retirement::Retirement;
pub use self::retirement::DEFAULT_MAX_RETIRED_BYTES;

use std::ops::Range;
use std::sync::Mutex;

use crate::lock;

/// A deferred callback.
pub type Deferred = Box<dyn FnOnce() + Send>;

/// Defers frees of retired code until no task can be executing it.
///
/// # Safety
/// Safe code relies on an implementation for memory safety (a typed handle calls JIT code
/// without `unsafe`), so implementing it is a promise:
/// - each deferred callback runs exactly once (or is leaked), never before the grace period
///   described on [`defer`](Reclaim::defer) has ended, and for
///   [`defer_code`](Reclaim::defer_code) never while a parked task references its code;
/// - a batch queued with [`defer_batch`](Reclaim::defer_batch) is sealed before the grace
///   period that lets it run starts (a grace period that may have snapshotted its readers
///   before the seal does not count), and runs once after it, without the frees that a
///   parked task references (those are split off, and run once it no longer does);
/// - [`barrier_waits_for_grace_period`](Reclaim::barrier_waits_for_grace_period) returns true
///   only if [`barrier`](Reclaim::barrier) runs nothing early, and then for the reclaimer's
///   whole life (a `Jit` asks once, when it is built);
/// - [`tracks_current_thread`](Reclaim::tracks_current_thread) returns true only for a calling
///   thread that every later grace period waits for while it is inside JIT code;
/// - [`barrier`](Reclaim::barrier) also waits for batches queued before it.
pub unsafe trait Reclaim: Send + Sync + 'static {
    /// Run `f` once every task that might be executing code retired before this call has passed a
    /// quiescent state.
    fn defer(&self, f: Box<dyn FnOnce() + Send>);
    /// As [`defer`](Reclaim::defer), for `f` that frees the code in the ranges `code`, which may
    /// be on the stack of a task parked inside yielding code (a compiled body that called into
    /// the runtime, an exit-hook trampoline around a call that parks): `f` must also wait until
    /// no such task's stack references the ranges (`tramway_runtime::code`).
    fn defer_code(&self, code: &[Range<usize>], f: Box<dyn FnOnce() + Send>);
    /// Block until every callback deferred before this call has run.
    fn barrier(&self);

    /// Whether [`barrier`](Reclaim::barrier) may be called while other threads still run code
    /// of the `Jit`, i.e. whether it only runs callbacks whose grace period has ended. True for
    /// grace-period reclaimers; false (the default) for [`LeakUntilDrop`], whose barrier does
    /// nothing. A `Jit` only throttles patchers (see
    /// [`JitBuilder::max_retired_bytes`](crate::JitBuilder::max_retired_bytes)) when it is true,
    /// and asks once, when it is built: the answer is a property of the reclaimer.
    fn barrier_waits_for_grace_period(&self) -> bool {
        false
    }

    /// Whether code retired through this reclaimer cannot be freed while the *calling thread*
    /// is inside it, i.e. whether the caller may call the `Jit`'s code right now. Typed call
    /// handles ([`SiteFn::call`](crate::SiteFn::call)) check it before every call. False by
    /// default (such reclaimers' code is callable only through the `unsafe` raw entry).
    fn tracks_current_thread(&self) -> bool {
        false
    }

    /// Whether the `Jit` should hand its frees to [`defer_batch`](Reclaim::defer_batch) in
    /// open batches instead of one [`defer_code`](Reclaim::defer_code) callback per free.
    /// Asked once, when the `Jit` is built. False by default; true for `GraceDomain`, whose
    /// grace periods seal a batch when they are claimed (`tramway_runtime::grace::batch`).
    fn keeps_batches_open(&self) -> bool {
        false
    }

    /// Queues an open batch of frees: it collects frees until [`CallbackBatch::seal`], which
    /// must be called before the grace period that covers the batch starts, and runs after
    /// it (with the frees a parked task references split off and held back). Called only if
    /// [`keeps_batches_open`](Reclaim::keeps_batches_open) is true. The default seals the
    /// batch at once and defers it as one callback over the whole address space (so that any
    /// parked code reference holds it): sound, never used by the reclaimers shipped here.
    ///
    /// [`CallbackBatch::seal`]: tramway_runtime::grace::CallbackBatch::seal
    fn defer_batch(&self, mut batch: Box<dyn tramway_runtime::grace::CallbackBatch>) {
        batch.seal();
        let everything = 0..usize::MAX;
        self.defer_code(
            std::slice::from_ref(&everything),
            Box::new(move || batch.run()),
        );
    }
}

/// Queues deferred callbacks and runs them only when it drops (its `barrier` returns at once).
///
/// The `Jit`, its sites and trampolines hold the reclaimer, so it drops only after all of them:
/// no handle remains through which code could still be called.
#[derive(Default)]
pub struct LeakUntilDrop {
    queue: Mutex<Vec<Deferred>>,
}

impl LeakUntilDrop {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of callbacks waiting for the next barrier.
    pub fn pending(&self) -> usize {
        lock(&self.queue).len()
    }
}

impl std::fmt::Debug for LeakUntilDrop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeakUntilDrop")
            .field("pending", &self.pending())
            .finish()
    }
}

impl LeakUntilDrop {
    /// Runs every queued free (and the frees those defer in turn).
    fn run_all(&self) {
        // Callbacks may defer more work; run until the queue stays empty. The lock is not held
        // while a callback runs, so a callback may call `defer`.
        loop {
            let batch = std::mem::take(&mut *lock(&self.queue));
            if batch.is_empty() {
                return;
            }
            for f in batch {
                f();
            }
        }
    }
}

// SAFETY: callbacks run only when the reclaimer drops, after every `Jit`, site, trampoline
// and call handle that holds it (module docs); so every thread may call code while it can
// reach it, and the barrier runs nothing.
unsafe impl Reclaim for LeakUntilDrop {
    fn defer(&self, f: Deferred) {
        lock(&self.queue).push(f);
    }

    fn defer_code(&self, _code: &[Range<usize>], f: Deferred) {
        self.defer(f);
    }

    /// Returns at once: nothing is freed before the reclaimer itself drops, because without
    /// grace periods no moment before that is known to be safe.
    fn barrier(&self) {}

    /// Any thread: nothing is freed while a handle that can reach the code exists.
    fn tracks_current_thread(&self) -> bool {
        true
    }
}

impl Drop for LeakUntilDrop {
    fn drop(&mut self) {
        // The last handle is gone: every `Jit`, trampoline and site that used this reclaimer has
        // dropped, so no handle remains through which code could be called.
        self.run_all();
    }
}

/// Runs deferred callbacks at once, without any grace period.
#[derive(Debug)]
pub struct ImmediateReclaim {
    _private: (),
}

impl ImmediateReclaim {
    /// Creates the immediate reclaimer.
    ///
    /// # Safety
    /// Retired code is freed (trap-filled, possibly unmapped) as soon as its last handle drops.
    /// The caller must guarantee that no thread can be executing or about to execute retired code
    /// at that point (for example, because all callers are joined before swapping). Violating
    /// this makes callers execute freed memory; the control test uses exactly that to crash.
    pub unsafe fn new_unchecked() -> Self {
        ImmediateReclaim { _private: () }
    }
}

// SAFETY: the contract of `new_unchecked` makes its caller promise that nothing executes
// retired code when it is freed, which is what every method here relies on.
unsafe impl Reclaim for ImmediateReclaim {
    fn defer(&self, f: Deferred) {
        f();
    }

    fn defer_code(&self, _code: &[Range<usize>], f: Deferred) {
        f();
    }

    fn barrier(&self) {}

    /// Any thread, by the promise made to [`ImmediateReclaim::new_unchecked`].
    fn tracks_current_thread(&self) -> bool {
        true
    }
}

/// Frees retired code after a grace period of the domain's flavor.
// SAFETY: `call_boxed` runs each callback once, after a grace period that waits for every
// reader that `tracks_current_thread` accepts (the domain's tasks and online registered
// threads); `call_boxed_for_code` also waits for parked tasks' code references; `call_batch`
// seals a batch when the grace period that covers it is claimed, runs it after that grace
// period and splits off the frees a parked task references (`tramway_runtime::grace::batch`);
// `barrier` waits for those grace periods and batches.
unsafe impl Reclaim for tramway_runtime::grace::GraceDomain {
    fn defer(&self, f: Deferred) {
        self.call_boxed(f);
    }

    fn defer_code(&self, code: &[Range<usize>], f: Deferred) {
        self.call_boxed_for_code(code, f);
    }

    fn barrier(&self) {
        tramway_runtime::grace::GraceDomain::barrier(self);
    }

    fn barrier_waits_for_grace_period(&self) -> bool {
        true
    }

    fn tracks_current_thread(&self) -> bool {
        tramway_runtime::grace::GraceDomain::tracks_current_thread(self)
    }

    fn keeps_batches_open(&self) -> bool {
        true
    }

    fn defer_batch(&self, batch: Box<dyn tramway_runtime::grace::CallbackBatch>) {
        self.call_batch(batch);
    }
}
