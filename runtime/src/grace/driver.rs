//! Grace-period sequencing: GP numbers, the driver thread and its loop.
//!
//! # Numbers
//!
//! GPs are numbered from 1 and run one at a time, in order. `started` is the number of the
//! last GP started (in progress while `started > completed`); `requested` is the highest
//! number somebody waits for; `completed` (an atomic, so that `poll` takes no lock) is the
//! last GP that ended and `callbacks_done` the last whose callbacks have all run. A caller
//! that needs "a full GP from now" asks for `started + 1`: the GP in progress, if any, may
//! have snapshotted the readers before the caller's updates, so only the next one counts.
//!
//! # The driver loop
//!
//! One thread per domain. Under the state lock it waits for demand: a request beyond
//! `started` (synchronize, a cookie, barrier) starts a GP at once; pending callbacks alone
//! start one when the oldest has waited `callback_delay`, the batch is full, or the domain
//! shuts down. It takes the pending callbacks as the GP's batch (everything queued before the
//! GP starts shares it), runs the flavor's wait without the lock, stores `completed` and
//! releases `synchronize`/cookie waiters, runs the batch, stores `callbacks_done` and releases
//! `barrier` waiters. Callbacks queued by an updater after its swap are taken under the same
//! lock, so the swap happens-before the GP's heavy barrier.
//!
//! Lock order: the state lock is taken alone; the reader registry's leaf locks may be taken
//! while the driver runs a GP, which it does without the state lock.

use std::cell::Cell;
use std::sync::atomic::Ordering;

use super::callbacks::{Callback, PendingCallbacks};
use super::waiters::TaskWaiter;
use super::{rude, stall, tasks, Flavor, GraceConfig, GraceStats};
use crate::primitive::{
    self, const_thread_local, lock, thread, Arc, AtomicU64, Condvar, Mutex, MutexGuard,
};
use crate::qs::QsRegistry;
use crate::Runtime;

/// State under the engine's lock.
#[derive(Default)]
pub(super) struct SeqState {
    /// GPs started so far; GP number `started` is the one in progress (if > completed).
    pub(super) started: u64,
    /// Highest GP number somebody waits for.
    pub(super) requested: u64,
    /// Callbacks for the next GP to start.
    pub(super) callbacks: PendingCallbacks,
    /// Tasks blocked in synchronize()/barrier()/wait().
    pub(super) task_waiters: Vec<TaskWaiter>,
    /// Callers currently blocked on a GP: their GPs are expedited.
    pub(super) blocked_callers: usize,
    pub(super) shutdown: bool,
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
    /// pending (requested at once: somebody waits for them), else the one in progress.
    pub(super) fn request_for_callbacks(&mut self) -> u64 {
        if self.callbacks.is_empty() {
            self.started
        } else {
            self.request_next()
        }
    }
}

/// Counters that only statistics read.
#[derive(Default)]
pub(super) struct Counters {
    pub(super) callbacks_queued: std::sync::atomic::AtomicU64,
    pub(super) callbacks_run: std::sync::atomic::AtomicU64,
    pub(super) callbacks_panicked: std::sync::atomic::AtomicU64,
    pub(super) stalls: std::sync::atomic::AtomicU64,
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
    pub(super) work: Condvar,
    /// Wakes OS threads waiting for a GP number to complete.
    pub(super) done: Condvar,
    /// Highest GP number that has ended (GP numbers complete in order).
    pub(super) completed: AtomicU64,
    /// Highest GP number whose callbacks have all run.
    pub(super) callbacks_done: AtomicU64,
    pub(super) counters: Counters,
}

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

    /// Asks the driver for a full GP from now (a cookie) and returns its number.
    pub(super) fn request_next(&self) -> u64 {
        let target = self.lock().request_next();
        self.work.notify_one();
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
        GraceStats {
            completed: self.completed.load(Ordering::Acquire),
            callbacks_queued: c.callbacks_queued.load(Ordering::Relaxed),
            callbacks_run: c.callbacks_run.load(Ordering::Relaxed),
            callbacks_panicked: c.callbacks_panicked.load(Ordering::Relaxed),
            stalls: c.stalls.load(Ordering::Relaxed),
        }
    }

    /// The driver loop (module docs): run GPs while somebody needs one; return on shutdown
    /// once every queued callback has run.
    fn drive(&self) {
        while let Some((gp, batch, expedited)) = self.next_grace_period() {
            self.run_grace_period(gp, expedited);
            // `synchronize` and cookie waiters go as soon as the GP ends, before the batch
            // of callbacks (possibly thousands of munmaps) runs; `barrier` waiters after it.
            self.completed.store(gp, Ordering::Release);
            self.release_waiters(super::waiters::Until::Completed, gp);
            self.run_callbacks(batch);
            self.callbacks_done.store(gp, Ordering::Release);
            self.release_waiters(super::waiters::Until::CallbacksDone, gp);
        }
    }

    /// Waits for demand and starts the next GP: `(number, its callback batch, expedited)`.
    /// `None` at shutdown with nothing left to run.
    fn next_grace_period(&self) -> Option<(u64, Vec<Callback>, bool)> {
        let mut seq = self.lock();
        loop {
            if seq.requested > seq.started {
                break; // somebody waits: synchronize, a cookie, barrier
            }
            if !seq.callbacks.is_empty() {
                // Only callbacks wait: let more join the batch (not at shutdown).
                match seq.callbacks.time_left(self.config.callback_delay) {
                    Some(left) if !seq.shutdown => {
                        seq = primitive::wait_timeout(&self.work, &self.state, seq, left);
                        continue;
                    }
                    _ => break,
                }
            }
            if seq.shutdown {
                return None;
            }
            seq = primitive::wait(&self.work, seq);
        }
        seq.started += 1;
        Some((seq.started, seq.callbacks.take(), seq.blocked_callers > 0))
    }

    fn run_grace_period(&self, gp: u64, expedited: bool) {
        let mut backoff = stall::Backoff::new(self, gp, expedited);
        match self.config.flavor {
            Flavor::Tasks => tasks::wait_for_readers(&mut backoff, &self.registry),
            Flavor::Rude => {
                if let Some(runtime) = &self.runtime {
                    rude::force_every_worker_through_scheduler(&mut backoff, runtime);
                }
                tasks::wait_for_threads(&mut backoff, &self.registry);
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
                for_driver.drive();
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
        self.engine.lock().shutdown = true;
        self.engine.work.notify_one();
        if let Some(t) = self.thread.take() {
            if t.thread().id() == thread::current().id() || crate::qs::in_task() {
                // Dropped from one of our own callbacks, or from a task (joining would block
                // its worker, and the driver's last GPs may wait for that worker): the driver
                // exits by itself once every queued callback has run.
                return;
            }
            // The driver's last GPs may wait for this very thread if it is a registered,
            // online one: stay offline while joining.
            let _offline = crate::qs::OfflineGuard::new();
            let _ = t.join();
        }
    }
}
