//! Grace-period sequencing: GP numbers, who runs a GP, and the driver thread's loop.
//!
//! # Numbers
//!
//! GPs are numbered from 1 and run one at a time, in order. `started` is the number of the
//! last GP started; `running` says whether it is still in progress; `requested` is the
//! highest number somebody waits for; `completed` (an atomic, so that `poll` takes no lock) is
//! the last GP that ended and `callbacks_done` the last whose callbacks have all run. A caller
//! that needs "a full GP from now" asks for `started + 1`: the GP in progress, if any, may have
//! snapshotted the readers before the caller's updates, so only the next one counts.
//!
//! # Who runs a GP
//!
//! Whoever claims it under the state lock: the **driver** thread (one per domain), for
//! callbacks and for tasks that wait; or an **OS thread** waiting in `synchronize` (or a
//! cookie, or `barrier`) whose GP has not started and no GP is running: it runs the GP itself,
//! as liburcu's `synchronize_rcu` does, instead of paying two thread wake-ups. A task never
//! runs one (it would hold its worker); it parks and the driver runs it. Claiming takes the
//! pending callbacks as the GP's batch, so everything queued before a GP starts rides on it.
//! A GP that unwinds on its inline runner (a panicking tracing subscriber of the caller's)
//! never completes: releasing its claim leaks its batch (no `barrier` waits for it) and
//! requests the next GP, which serves its waiters. (The driver aborts the process instead: it
//! has no caller to unwind to.)
//!
//! # Batches and the driver loop
//!
//! Callbacks always run on the driver (they `munmap`; an inline runner must return to its
//! caller). When a GP ends, its runner stores `completed`, releases `synchronize`/cookie
//! waiters, and hands a non-empty batch to the driver in `ready` (GP order); `callbacks_done`
//! advances when the driver has run it, or at once when the batch is empty and nothing is
//! queued before it. The driver loop, under the state lock: run the oldest ready batch; else,
//! if no GP is running, start one when a request is beyond `started` or when pending
//! callbacks have waited `callback_delay` (or fill a batch, or the domain shuts down); else
//! sleep until woken. Callbacks queued by an updater after its swap are taken under the same
//! lock, so the swap happens-before the GP's heavy barrier.
//!
//! Wake-ups cost system calls, so they go only to somebody asleep: the driver is notified
//! only while it waits (`driver_idle`), the `done` condition variable only while threads wait
//! on it (`sleepers`).
//!
//! Lock order: the state lock is taken alone; the reader registry's leaf locks may be taken
//! while a GP runs, which is always without the state lock.

use std::cell::Cell;
use std::collections::VecDeque;
use std::mem::ManuallyDrop;
use std::sync::atomic::Ordering;

use super::callbacks::{Callback, HeldCallbacks, PendingCallbacks};
use super::tasks::SnapshotBuffers;
use super::waiters::{TaskWaiter, Until};
use super::{rude, stall, tasks, Flavor, GraceConfig, GraceStats};
use crate::primitive::{
    self, const_thread_local, lock, thread, Arc, AtomicU64, Condvar, Mutex, MutexGuard,
};
use crate::qs::QsRegistry;
use crate::Runtime;

/// State under the engine's lock.
#[derive(Default)]
pub(super) struct SeqState {
    /// GPs started so far; GP number `started` is in progress while `running`.
    pub(super) started: u64,
    /// A GP is in progress (on the driver, or inline in a waiting thread).
    pub(super) running: bool,
    /// Highest GP number somebody waits for (or the one after a GP that unwound, which
    /// serves that GP's waiters).
    pub(super) requested: u64,
    /// Callbacks for the next GP to start.
    pub(super) callbacks: PendingCallbacks,
    /// GPs that ended whose callbacks the driver has not run yet, oldest first.
    ready: VecDeque<(u64, Vec<Callback>)>,
    /// Ranged callbacks whose GP ended while parked tasks referenced their code.
    held: HeldCallbacks,
    /// The driver is running a batch from `ready`.
    draining: bool,
    /// Tasks blocked in synchronize()/barrier()/wait().
    pub(super) task_waiters: Vec<TaskWaiter>,
    /// Callers blocked on a GP (tasks from their registration on, threads while they sleep
    /// on `done`; `waiters.rs`): a GP the driver claims while any is counted is expedited.
    pub(super) blocked_callers: usize,
    /// OS threads waiting on `done`.
    pub(super) sleepers: usize,
    /// The driver waits on `work`.
    driver_idle: bool,
    /// GPs run inline by waiting OS threads (the rest ran on the driver); counted here, under
    /// the lock the claim holds anyway, rather than with one more atomic add per GP.
    pub(super) inline_grace_periods: u64,
    pub(super) shutdown: bool,
    /// The vectors the next GP snapshots its readers into: the claim takes them, `finish`
    /// gives them back.
    snapshot: Option<Box<SnapshotBuffers>>,
}

impl SeqState {
    /// Asks for a full GP from now and returns its number.
    pub(super) fn request_next(&mut self) -> u64 {
        #[cfg(all(loom, test))]
        if super::loom_tests::WAIT_FOR_CURRENT_GP.with(std::cell::Cell::get) {
            return self.started; // the injected bug: the GP in progress may predate the caller
        }
        let target = self.started + 1;
        self.requested = self.requested.max(target);
        target
    }

    /// The GP whose callbacks a `barrier` must wait for: the next one if callbacks are
    /// pending (requested at once: somebody waits for them), else the last one started.
    pub(super) fn request_for_callbacks(&mut self) -> u64 {
        if self.callbacks.is_empty() {
            self.started
        } else {
            self.request_next()
        }
    }

    /// Whether the driver has something to do now.
    fn driver_has_work(&self) -> bool {
        !self.ready.is_empty() || self.requested > self.started || !self.callbacks.is_empty()
    }
}

/// Counters that only statistics read.
#[derive(Default)]
pub(super) struct Counters {
    pub(super) callbacks_queued: std::sync::atomic::AtomicU64,
    pub(super) callbacks_run: std::sync::atomic::AtomicU64,
    pub(super) callbacks_panicked: std::sync::atomic::AtomicU64,
    pub(super) stalls: std::sync::atomic::AtomicU64,
    /// Assured waits (`stall.rs`) that only their safety-net timeout ended.
    pub(super) lost_wakeups: std::sync::atomic::AtomicU64,
    /// Holdouts GPs waited for that had been preempted (in JIT code).
    pub(super) preempted_holdouts: std::sync::atomic::AtomicU64,
    /// Times a ranged callback was held back (at a GP's end or a recheck).
    pub(super) callbacks_held: std::sync::atomic::AtomicU64,
}

/// A GP claimed by [`Engine::claim`], for [`Engine::run_claimed`]: its number, its callback
/// batch, how many open batches panicked in `seal` (leaked; the runner logs them), and the
/// engine's snapshot buffers (`tasks.rs`), which `finish` puts back.
pub(super) struct ClaimedGp {
    gp: u64,
    batch: Vec<Callback>,
    seal_panics: u64,
    /// Boxed, so that handing the buffers from the state to the runner and back moves one
    /// pointer (moving the vectors themselves cost a GP with nothing to wait for a fifth).
    snapshot: Option<Box<SnapshotBuffers>>,
}

/// A domain's engine: its readers, configuration, sequencing state and counters.
pub(super) struct Engine {
    pub(super) registry: Arc<QsRegistry>,
    /// The runtime whose workers the readers are (`None` in the loom model). The Rude flavor
    /// spawns on it; stall reports look task names up in it.
    pub(super) runtime: Option<Runtime>,
    pub(super) config: GraceConfig,
    pub(super) state: Mutex<SeqState>,
    /// Wakes the driver when work arrives.
    work: Condvar,
    /// Wakes OS threads waiting for a GP number to complete.
    pub(super) done: Condvar,
    /// Highest GP number that has ended (GP numbers complete in order).
    pub(super) completed: AtomicU64,
    /// Highest GP number whose callbacks have all run.
    pub(super) callbacks_done: AtomicU64,
    pub(super) counters: Counters,
}

/// How often the driver looks at the code references while callbacks are held back.
const HELD_RECHECK: std::time::Duration = std::time::Duration::from_millis(2);

const_thread_local! {
    /// The engine (as an address) whose driver runs on this thread, or 0.
    static ON_DRIVER: Cell<usize> = Cell::new(0);
}

impl Engine {
    pub(super) fn new(
        registry: Arc<QsRegistry>,
        runtime: Option<Runtime>,
        config: GraceConfig,
    ) -> Engine {
        Engine {
            registry,
            runtime,
            config,
            state: Mutex::new(SeqState::default()),
            work: Condvar::new(),
            done: Condvar::new(),
            completed: AtomicU64::new(0),
            callbacks_done: AtomicU64::new(0),
            counters: Counters::default(),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, SeqState> {
        lock(&self.state)
    }

    /// Wakes the driver if it sleeps (call with the state lock held, after changing it).
    pub(super) fn wake_driver(&self, seq: &SeqState) {
        if seq.driver_idle {
            self.work.notify_one();
        }
    }

    /// Wakes the OS threads waiting on `done`, if any (state lock held).
    pub(super) fn wake_sleepers(&self, seq: &SeqState) {
        if seq.sleepers > 0 {
            self.done.notify_all();
        }
    }

    /// Asks the driver for a full GP from now (a cookie) and returns its number.
    pub(super) fn request_next(&self) -> u64 {
        let mut seq = self.lock();
        let target = seq.request_next();
        self.wake_driver(&seq);
        target
    }

    /// Whether the caller is this engine's driver thread (running one of its callbacks).
    pub(super) fn on_own_driver(&self) -> bool {
        ON_DRIVER.with(Cell::get) == self as *const Engine as usize
    }

    /// The name of live task `id`, if the domain's runtime knows it (stall reports).
    pub(super) fn task_name(&self, id: u64) -> Option<std::sync::Arc<str>> {
        self.runtime.as_ref().and_then(|rt| rt.task_name(id))
    }

    pub(super) fn stats(&self) -> GraceStats {
        let c = &self.counters;
        let (inline_grace_periods, callbacks_held_now) = {
            let seq = self.lock();
            (seq.inline_grace_periods, seq.held.list.len() as u64)
        };
        GraceStats {
            completed: self.completed.load(Ordering::Acquire),
            callbacks_queued: c.callbacks_queued.load(Ordering::Relaxed),
            callbacks_run: c.callbacks_run.load(Ordering::Relaxed),
            callbacks_panicked: c.callbacks_panicked.load(Ordering::Relaxed),
            stalls: c.stalls.load(Ordering::Relaxed),
            inline_grace_periods,
            preempted_holdouts: c.preempted_holdouts.load(Ordering::Relaxed),
            callbacks_held: c.callbacks_held.load(Ordering::Relaxed),
            callbacks_held_now,
            reader_wakeups: self.registry.reader_wakes(),
            lost_wakeups: c.lost_wakeups.load(Ordering::Relaxed),
        }
    }

    /// Claims the next GP (no GP may be running): its number, its callback batch and the
    /// snapshot buffers.
    pub(super) fn claim(&self, seq: &mut SeqState) -> ClaimedGp {
        debug_assert!(!seq.running);
        seq.running = true;
        seq.started += 1;
        let mut batch = seq.callbacks.take();
        let mut seal_panics = 0;
        // Under the state lock, before the GP's barrier: open batches close here (`batch.rs`).
        // A batch whose `seal` panicked is leaked, never run nor dropped. It is logged by the
        // runner, not here: under the state lock, and before the runner's claim guard exists,
        // a subscriber that panicked in the event would leave the GP running for good.
        if !super::callbacks::seal_at_run() && batch.iter().any(Callback::is_batch) {
            let mut sealed = Vec::with_capacity(batch.len());
            for mut cb in batch {
                if cb.seal() {
                    sealed.push(cb);
                } else {
                    seal_panics += 1;
                    std::mem::forget(cb);
                }
            }
            batch = sealed;
            self.counters
                .callbacks_panicked
                .fetch_add(seal_panics, Ordering::Relaxed);
        }
        ClaimedGp {
            gp: seq.started,
            batch,
            seal_panics,
            snapshot: seq.snapshot.take(),
        }
    }

    /// Runs GP `gp` (claimed by the caller) without the state lock and finishes it; returns
    /// the state lock, which finishing took, so that the caller goes on without retaking it.
    pub(super) fn run_claimed(
        &self,
        claimed: ClaimedGp,
        expedited: bool,
    ) -> MutexGuard<'_, SeqState> {
        let ClaimedGp {
            gp,
            batch,
            seal_panics,
            snapshot,
        } = claimed;
        // Only the first GP (or the first after one that unwound) allocates the box.
        let mut snapshot = snapshot.unwrap_or_default();
        /// Releases the claim if the GP unwinds (nothing of ours in it should; the stall
        /// callback's panics are caught, but a tracing subscriber's hooks run in it on the
        /// caller's thread, up to the end of its span), so that later GPs are not blocked
        /// behind a dead runner. The batch, and what was held back of it, are then leaked:
        /// running them early would free code under readers, and dropping them would free
        /// memory the code references. The GP never completes, so the next one is
        /// requested: it serves whoever waits for the unwound one (a cookie, a `barrier`, a
        /// caller that asked for it before this runner claimed it), as it starts later.
        struct Claim<'a> {
            engine: &'a Engine,
            batch: Option<Vec<Callback>>,
            held: Option<(Vec<Callback>, u64)>,
        }
        impl Drop for Claim<'_> {
            fn drop(&mut self) {
                if let Some(batch) = self.batch.take() {
                    std::mem::forget(batch);
                    std::mem::forget(self.held.take());
                    let mut seq = self.engine.lock();
                    seq.running = false;
                    seq.requested = seq.requested.max(seq.started + 1);
                    self.engine.wake_driver(&seq);
                    self.engine.wake_sleepers(&seq);
                }
            }
        }
        let mut claim = Claim {
            engine: self,
            batch: Some(batch),
            held: None,
        };
        // A span per grace period (a disabled callsite costs one relaxed load when nobody
        // listens); its end event carries the outcome.
        let span = tracing::debug_span!(target: "tramway::grace", "grace_period", gp, expedited);
        let entered = span.enter();
        if seal_panics > 0 {
            tracing::error!(
                target: "tramway::grace",
                batches = seal_panics,
                "a callback batch panicked in seal: it is leaked"
            );
        }
        // The clock is read only for a listener (a disabled check is one relaxed load).
        let start = tracing::enabled!(target: "tramway::grace", tracing::Level::DEBUG)
            .then(std::time::Instant::now);
        self.run_grace_period(gp, expedited, &mut snapshot);
        let batch = claim
            .batch
            .as_mut()
            .expect("the claim holds the batch until finish");
        let held = self.hold_referenced(batch);
        let callbacks = batch.len();
        let held_count = held.0.len();
        claim.held = Some(held);
        tracing::debug!(
            target: "tramway::grace",
            gp,
            duration_us = start.map_or(0, |t| t.elapsed().as_micros() as u64),
            callbacks,
            held = held_count,
            "grace period ended"
        );
        // Leave the span before `finish` takes the state lock: a subscriber's exit and close
        // hooks (which may write, or call into the domain) never run under it.
        drop(entered);
        drop(span);
        // Disarm the claim only now, past the last subscriber hook; its drop at the end of
        // this function then does not take the lock that `finish` returns.
        let batch = claim.batch.take().unwrap_or_default();
        let held = claim.held.take().unwrap_or_default();
        self.finish(gp, batch, held, snapshot)
    }

    /// Ends GP `gp`: stores `completed`, releases its waiters, hands its batch on (module docs)
    /// and keeps `held` back. Returns with the state lock held.
    fn finish(
        &self,
        gp: u64,
        batch: Vec<Callback>,
        (held, version): (Vec<Callback>, u64),
        snapshot: Box<SnapshotBuffers>,
    ) -> MutexGuard<'_, SeqState> {
        // Stored before the lock is taken: a waiter either sees it or is registered and woken.
        self.completed.store(gp, Ordering::Release);
        let mut seq = self.lock();
        seq.running = false;
        seq.snapshot = Some(snapshot);
        let newly_held = !held.is_empty();
        seq.held.add(held, version);
        if newly_held {
            // An idle driver waits without a timeout while nothing is held: wake it, so that it
            // rechecks held callbacks from now on (a GP run inline by an OS thread ends here
            // while the driver sleeps; without this the held callbacks waited for unrelated
            // work, up to forever).
            self.wake_driver(&seq);
        }
        self.release_task_waiters(&mut seq, Until::Completed, gp);
        if batch.is_empty() && seq.ready.is_empty() && !seq.draining {
            self.callbacks_done.store(gp, Ordering::Release);
            self.release_task_waiters(&mut seq, Until::CallbacksDone, gp);
        } else {
            seq.ready.push_back((gp, batch));
        }
        self.wake_sleepers(&seq);
        if seq.driver_has_work() {
            self.wake_driver(&seq);
        }
        seq
    }

    /// The driver loop (module docs): returns on shutdown once nothing is left to run.
    fn drive(&self) {
        let mut seq = self.lock();
        loop {
            if !seq.held.list.is_empty() && self.registry.code_refs_version() != seq.held.version {
                // The state lock was released meanwhile: look at everything again (the loom
                // model found a shutdown that slipped in here leaking a callback that had
                // become free).
                seq = self.recheck_held(seq);
                continue;
            }
            if let Some((gp, batch)) = seq.ready.pop_front() {
                seq.draining = true;
                drop(seq);
                self.run_callbacks(batch);
                self.callbacks_done.store(gp, Ordering::Release);
                seq = self.lock();
                seq.draining = false;
                self.release_task_waiters(&mut seq, Until::CallbacksDone, gp);
                self.wake_sleepers(&seq);
                continue;
            }
            let start = if seq.running {
                false
            } else if seq.requested > seq.started {
                true // somebody waits: synchronize, a cookie, barrier
            } else if seq.callbacks.is_empty() {
                false
            } else {
                match seq.callbacks.time_left(self.config.callback_delay) {
                    // Only callbacks wait: let more join the batch (not at shutdown).
                    Some(left) if !seq.shutdown => {
                        seq.driver_idle = true;
                        seq = primitive::wait_timeout(&self.work, &self.state, seq, left);
                        seq.driver_idle = false;
                        continue;
                    }
                    _ => true,
                }
            };
            if start {
                let expedited = seq.blocked_callers > 0;
                let claimed = self.claim(&mut seq);
                drop(seq);
                seq = self.run_claimed(claimed, expedited);
                continue;
            }
            if seq.shutdown && !seq.running && !seq.driver_has_work() {
                if !seq.held.list.is_empty() {
                    // Tasks parked inside that code still reference it, and nothing will run
                    // these callbacks once the domain is gone: leak them (the code stays
                    // mapped), never run them early.
                    tracing::warn!(
                        target: "tramway::grace",
                        held = seq.held.list.len(),
                        "grace domain dropped while tasks parked inside yielding code still \
                         reference retired code: it is leaked"
                    );
                    std::mem::forget(std::mem::take(&mut seq.held.list));
                }
                return;
            }
            seq.driver_idle = true;
            seq = if seq.held.list.is_empty() {
                primitive::wait(&self.work, seq)
            } else {
                // Held callbacks wait for parked tasks to move on; nothing wakes the driver
                // for that, so it looks again every `HELD_RECHECK`.
                primitive::wait_timeout(&self.work, &self.state, seq, HELD_RECHECK)
            };
            seq.driver_idle = false;
        }
    }

    /// Rechecks the held callbacks against the code references now (they changed since the
    /// last check); the ones nothing references any more become a ready batch. No new GP is
    /// needed (`code` docs). Takes the registry's lock without the state lock.
    fn recheck_held<'a>(&'a self, mut seq: MutexGuard<'a, SeqState>) -> MutexGuard<'a, SeqState> {
        let version = self.registry.code_refs_version();
        let list = std::mem::take(&mut seq.held.list);
        drop(seq);
        let refs = self.registry.code_ref_set();
        let (free, held) = super::callbacks::split_referenced(list, &refs);
        // Order the reference reads before the frees (as at the end of a GP).
        std::sync::atomic::fence(Ordering::SeqCst);
        // Leaked, not dropped, if a subscriber panics in the event (the driver then aborts).
        let (free, held) = (ManuallyDrop::new(free), ManuallyDrop::new(held));
        tracing::debug!(
            target: "tramway::grace",
            freed = free.len(),
            still_held = held.len(),
            "rechecked callbacks held back by parked tasks' code references"
        );
        let (free, held) = (
            ManuallyDrop::into_inner(free),
            ManuallyDrop::into_inner(held),
        );
        let mut seq = self.lock();
        seq.held.add(held, version);
        if !free.is_empty() {
            // Tagged with the last completed GP: `callbacks_done` never moves backwards, and a
            // barrier waiting for a later GP still waits for that GP's own batch.
            let gp = self.completed.load(Ordering::Acquire);
            seq.ready.push_back((gp, free));
        }
        seq
    }

    fn run_grace_period(&self, gp: u64, expedited: bool, snapshot: &mut SnapshotBuffers) {
        let mut backoff = stall::Backoff::new(self, gp, expedited);
        match self.config.flavor {
            Flavor::Tasks => tasks::wait_for_readers(&mut backoff, &self.registry, snapshot),
            Flavor::Rude => {
                if let Some(runtime) = &self.runtime {
                    rude::force_every_worker_through_scheduler(&mut backoff, runtime);
                }
                tasks::wait_for_threads(&mut backoff, &self.registry, snapshot);
            }
        }
    }
}

/// Owns the driver thread; the last [`GraceDomain`](super::GraceDomain) clone drops it.
pub(super) struct Driver {
    engine: Arc<Engine>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Driver {
    /// Starts the driver thread of `engine`.
    pub(super) fn spawn(engine: &Arc<Engine>) -> std::io::Result<Driver> {
        let for_driver = Arc::clone(engine);
        let thread = thread::Builder::new()
            .name("tramway-gp".into())
            .spawn(move || {
                ON_DRIVER.with(|d| d.set(Arc::as_ptr(&for_driver) as usize));
                for_driver.registry.add_waiter_thread(thread::current());
                let drove = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    for_driver.drive();
                }));
                if drove.is_err() {
                    // Nothing in a GP panics short of a broken invariant (a failed membarrier
                    // after registration). Without its driver a domain would hang every later
                    // waiter and never free retired code: stop the process instead.
                    eprintln!(
                        "tramway: the grace-period driver panicked; aborting (a grace period \
                         that failed part-way cannot be trusted)"
                    );
                    std::process::abort();
                }
                for_driver.registry.remove_waiter_thread();
            })?;
        Ok(Driver {
            engine: Arc::clone(engine),
            thread: Some(thread),
        })
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        {
            let mut seq = self.engine.lock();
            seq.shutdown = true;
            self.engine.wake_driver(&seq);
        }
        if let Some(t) = self.thread.take() {
            if t.thread().id() == thread::current().id() || crate::qs::on_worker_thread() {
                // Dropped from one of our own callbacks, or on a worker thread (from a task, or
                // while the last worker cancels tasks at shutdown): joining would block the
                // worker, and the driver's last GPs may wait for it. The driver exits by itself
                // once every queued callback has run.
                return;
            }
            // The driver's last GPs may wait for this very thread if it is a registered,
            // online one: stay offline while joining.
            let _offline = crate::qs::OfflineGuard::new();
            let _ = t.join();
        }
    }
}
