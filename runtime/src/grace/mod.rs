//! Tasks-style grace periods (RCU Tasks in user space) and deferred callbacks.
//!
//! # What a grace period guarantees
//!
//! A grace period (GP) that starts after code was unpublished (a patch site re-pointed away
//! from a trampoline) ends only when every task that might have been executing that code
//! has since passed a *voluntary yield point*. Trampoline code never yields, so after the GP
//! no task can still be inside the old trampoline, and its pages can be unmapped.
//!
//! # Algorithm (flavor [`Flavor::Tasks`], the default)
//!
//! Readers are workers (whatever task they run) and registered OS threads; each owns a
//! [`QsCell`](crate::qs::QsCell) (see `qs.rs`). One GP:
//!
//! 1. `heavy_barrier()`: orders the updater's site stores before the snapshot loads.
//! 2. Snapshot every worker cell and every registered thread cell. Inactive readers (idle
//!    workers, offline threads) are quiescent already. Tasks parked at yield points are not
//!    scanned at all: the cost is O(workers + registered threads + holdouts), not O(tasks).
//! 3. Wait until every active reader's cell has changed (a voluntary switch, a QS report,
//!    going offline).
//! 4. Read the holdout set (tasks switched out involuntarily, e.g. a yield inside a
//!    non-yielding section) and wait until each has passed a voluntary yield point.
//! 5. A `SeqCst` fence, then the GP's callbacks run.
//!
//! Waiting never burns a core: the driver parks with exponential backoff (5 µs to 1 ms
//! when a caller is blocked in [`GraceDomain::synchronize`], 100 µs to 1 ms otherwise).
//! While a caller is blocked, readers also unpark it on their next QS transition
//! (`GpWaker`, and the waking reader yields its CPU once so that the driver runs at once
//! even when every core is busy); a GP that only serves callbacks just sleeps, so workers
//! never pay for waking it. A GP that waits
//! longer than [`GraceConfig::stall_timeout`] reports its holdouts through `tracing` and the
//! [`GraceConfig::on_stall`] callback, and keeps waiting: it never ends early.
//!
//! # Flavor [`Flavor::Rude`]
//!
//! The per-worker alternative from the LKML discussion: run a no-op task pinned to every
//! worker and wait until all have run. A worker that runs the no-op has switched away from
//! whatever it was running. This is correct **only while every switch is voluntary**: a task
//! switched out inside a trampoline (a holdout) is not waited for. Kept for comparison and
//! tests. Registered threads are waited for as in the Tasks flavor.
//!
//! # Memory ordering
//!
//! A reader's QS report is a store followed by loads of patch sites; the updater's swap is
//! a store followed (in the GP) by loads of QS cells. That is store buffering: if neither
//! side had a full barrier, the GP could observe a reader's QS while the reader still loads
//! the old site target after it. Readers issue `light_barrier()` after `enter`/`quiescent`
//! and the GP issues `heavy_barrier()` before its snapshot; with
//! `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)` the reader half is only a compiler
//! barrier and the GP half forces a full barrier on every running thread; without it both
//! halves are `SeqCst` fences (see `fence.rs`). Callbacks queued by an updater after its
//! swap are taken by the driver under the state mutex, so the swap happens-before the GP's
//! barrier.
//!
//! # The driver
//!
//! One dedicated OS thread per domain (`tramway-gp`) runs GPs back to back while there is
//! demand. Workers stay free for tasks: a GP sleeps, calls `membarrier` and runs callbacks
//! (which `munmap`), none of which should stall green threads. Callbacks are **batched**:
//! every callback queued before a GP starts is run after that GP, so N callbacks cost one
//! GP, not N. A GP needed only by callbacks starts [`GraceConfig::callback_delay`] (1 ms)
//! after the first of them, or at once when 4096 are queued, so that a patch storm costs a
//! few hundred GPs per second instead of one per swap: in the 2-worker bench-report cells
//! this took `tasks` from 0.63x to 0.93x of `leak` at 100k swaps/s. `synchronize`, cookies
//! and `barrier` start their GP at once.

mod stall;
mod wait;

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use stall::{Holdout, StallReport};

use crate::qs::QsRegistry;
use crate::Runtime;

/// Which grace-period algorithm a [`GraceDomain`] runs; see the module docs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Flavor {
    /// RCU Tasks semantics: per-worker switch counters, registered threads, holdouts.
    #[default]
    Tasks,
    /// Force each worker through its scheduler once. Correct only while every switch is
    /// voluntary.
    Rude,
}

/// Default [`GraceConfig::callback_delay`].
pub const DEFAULT_CALLBACK_DELAY: Duration = Duration::from_millis(1);

/// Called with a report whenever a grace period has waited past the stall timeout.
pub type StallCallback = Arc<dyn Fn(&StallReport) + Send + Sync>;

/// Configuration of a [`GraceDomain`].
#[derive(Clone)]
pub struct GraceConfig {
    /// The algorithm.
    pub flavor: Flavor,
    /// After how long a waiting GP reports its holdouts (again every such interval).
    pub stall_timeout: Duration,
    /// Receives stall reports (they also go to `tracing` at WARN level).
    pub on_stall: Option<StallCallback>,
    /// How long callbacks queued with [`GraceDomain::call`] may wait for more to join their
    /// batch before a grace period starts for them (like Linux's lazy `call_rcu`). Longer
    /// means fewer grace periods (fewer `membarrier`s and driver wake-ups stealing CPU from
    /// workers) during a patch storm, at the cost of later frees. `synchronize`, cookies and
    /// `barrier` never wait for it.
    pub callback_delay: Duration,
}

impl Default for GraceConfig {
    fn default() -> Self {
        GraceConfig {
            flavor: Flavor::Tasks,
            stall_timeout: Duration::from_secs(1),
            on_stall: None,
            callback_delay: DEFAULT_CALLBACK_DELAY,
        }
    }
}

impl fmt::Debug for GraceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GraceConfig")
            .field("flavor", &self.flavor)
            .field("stall_timeout", &self.stall_timeout)
            .field("on_stall", &self.on_stall.as_ref().map(|_| "<callback>"))
            .field("callback_delay", &self.callback_delay)
            .finish()
    }
}

/// A grace period that had not completed when the cookie was taken; see
/// [`GraceDomain::start_poll`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[must_use]
pub struct Cookie(u64);

/// Counters of a [`GraceDomain`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GraceStats {
    /// Grace periods completed.
    pub completed: u64,
    /// Callbacks queued with [`GraceDomain::call`].
    pub callbacks_queued: u64,
    /// Callbacks run (including ones that panicked).
    pub callbacks_run: u64,
    /// Callbacks that panicked (the panic is logged and the driver goes on).
    pub callbacks_panicked: u64,
    /// Stall reports issued.
    pub stalls: u64,
}

type Callback = Box<dyn FnOnce() + Send>;

/// A batch of callbacks this large starts its grace period without waiting out
/// [`GraceConfig::callback_delay`].
const LAZY_BATCH_MAX: usize = 4096;

/// How long an OS thread blocked in `synchronize`/`barrier` spins before it sleeps.
const WAITER_SPIN: Duration = Duration::from_micros(50);

#[derive(Default)]
struct State {
    /// GPs started so far; GP number `started` is the one in progress (if > completed).
    started: u64,
    /// Highest GP number somebody waits for.
    requested: u64,
    /// Callbacks for the next GP to start.
    pending: Vec<Callback>,
    /// When the oldest of `pending` was queued (batching delay).
    first_pending_at: Option<Instant>,
    /// Tasks blocked in synchronize()/barrier(): (GP number, event to notify).
    task_waiters: Vec<(Until, u64, Arc<crate::Event>)>,
    /// Callers currently blocked in synchronize()/barrier(): expedites GPs.
    blocked_callers: usize,
    shutdown: bool,
}

struct Shared {
    registry: Arc<QsRegistry>,
    runtime: Runtime,
    config: GraceConfig,
    state: Mutex<State>,
    /// Wakes the driver when work arrives.
    work: Condvar,
    /// Wakes OS threads waiting for a GP number to complete.
    done: Condvar,
    /// Highest GP number that has ended (GP numbers complete in order).
    completed: AtomicU64,
    /// Highest GP number whose callbacks have all run.
    callbacks_done: AtomicU64,
    callbacks_queued: AtomicU64,
    callbacks_run: AtomicU64,
    callbacks_panicked: AtomicU64,
    stalls: AtomicU64,
}

/// Owns the driver thread; the last [`GraceDomain`] clone drops it.
struct Driver {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// A grace-period domain over one [`Runtime`]: `synchronize`, deferred callbacks,
/// `barrier`, polled cookies. Cheap to clone; the driver thread stops (after running every
/// queued callback) when the last clone is dropped. A domain keeps its runtime alive.
#[derive(Clone)]
pub struct GraceDomain {
    shared: Arc<Shared>,
    _driver: Arc<Driver>,
}

thread_local! {
    /// The `Shared` (as an address) of the domain whose driver runs on this thread, or 0.
    static ON_DRIVER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

impl GraceDomain {
    /// Starts a domain over `runtime`'s workers and registered threads.
    ///
    /// Fails if the driver thread cannot be spawned, or (`InvalidInput`) if the runtime was
    /// built without quiescent-state reporting: every grace period would then end at once.
    pub fn new(runtime: &Runtime, config: GraceConfig) -> std::io::Result<GraceDomain> {
        if !runtime.reports_qs() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "grace periods need a runtime that reports quiescent states",
            ));
        }
        let shared = Arc::new(Shared {
            registry: Arc::clone(runtime.qs_registry()),
            runtime: runtime.clone(),
            config,
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            done: Condvar::new(),
            completed: AtomicU64::new(0),
            callbacks_done: AtomicU64::new(0),
            callbacks_queued: AtomicU64::new(0),
            callbacks_run: AtomicU64::new(0),
            callbacks_panicked: AtomicU64::new(0),
            stalls: AtomicU64::new(0),
        });
        let for_driver = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("tramway-gp".into())
            .spawn(move || {
                ON_DRIVER.with(|d| d.set(Arc::as_ptr(&for_driver) as usize));
                let waker = &for_driver.registry.waker;
                waker.add_driver(std::thread::current());
                for_driver.drive();
                waker.remove_driver(std::thread::current().id());
            })?;
        Ok(GraceDomain {
            _driver: Arc::new(Driver {
                shared: Arc::clone(&shared),
                thread: Some(thread),
            }),
            shared,
        })
    }

    /// The flavor this domain runs.
    pub fn flavor(&self) -> Flavor {
        self.shared.config.flavor
    }

    /// Waits for a full grace period. From a task it parks the task (which is itself a
    /// quiescent state, so it never waits on itself); from a registered thread it goes
    /// offline while waiting; other threads simply block.
    ///
    /// Called from a grace-period callback it would wait for itself; it panics instead.
    pub fn synchronize(&self) {
        self.wait_for(Until::Completed, |state| {
            let target = state.started + 1;
            state.requested = state.requested.max(target);
            target
        });
    }

    /// Queues `f` to run on the driver thread after a grace period. Every callback queued
    /// before a GP starts shares that GP. A panicking callback is counted and logged; the
    /// others still run.
    pub fn call(&self, f: impl FnOnce() + Send + 'static) {
        self.call_boxed(Box::new(f));
    }

    /// [`call`](Self::call) for an already boxed callback.
    pub fn call_boxed(&self, f: Box<dyn FnOnce() + Send>) {
        let mut state = self.shared.lock();
        if state.pending.is_empty() {
            state.first_pending_at = Some(Instant::now());
        }
        state.pending.push(f);
        // Wake the driver for the first callback of a batch (it then waits out the batching
        // delay by itself) and when the batch is full; not for every callback.
        let wake = state.pending.len() == 1 || state.pending.len() == LAZY_BATCH_MAX;
        self.shared.callbacks_queued.fetch_add(1, Ordering::Relaxed);
        drop(state);
        if wake {
            self.shared.work.notify_one();
        }
    }

    /// Waits until every callback queued before this call has run. Called from a callback
    /// it returns at once (it cannot wait for the driver that runs it).
    pub fn barrier(&self) {
        if self.on_own_driver() {
            return;
        }
        self.wait_for(Until::CallbacksDone, |state| {
            if state.pending.is_empty() {
                // Only the callbacks of a GP in progress (if any) remain.
                state.started
            } else {
                // Somebody waits for these: no batching delay.
                let target = state.started + 1;
                state.requested = state.requested.max(target);
                target
            }
        });
    }

    /// Returns a cookie for a grace period that starts after this call and asks the driver
    /// to run it. [`poll`](Self::poll) tells whether it has ended.
    pub fn start_poll(&self) -> Cookie {
        let mut state = self.shared.lock();
        let target = state.started + 1;
        state.requested = state.requested.max(target);
        drop(state);
        self.shared.work.notify_one();
        Cookie(target)
    }

    /// Whether a full grace period has elapsed since `cookie` was taken.
    pub fn poll(&self, cookie: &Cookie) -> bool {
        self.shared.completed.load(Ordering::Acquire) >= cookie.0
    }

    /// Waits until `cookie`'s grace period has ended (see [`synchronize`](Self::synchronize)
    /// for how each kind of caller waits).
    pub fn wait(&self, cookie: &Cookie) {
        self.wait_for(Until::Completed, |_| cookie.0);
    }

    /// Counters.
    pub fn stats(&self) -> GraceStats {
        let s = &self.shared;
        GraceStats {
            completed: s.completed.load(Ordering::Acquire),
            callbacks_queued: s.callbacks_queued.load(Ordering::Relaxed),
            callbacks_run: s.callbacks_run.load(Ordering::Relaxed),
            callbacks_panicked: s.callbacks_panicked.load(Ordering::Relaxed),
            stalls: s.stalls.load(Ordering::Relaxed),
        }
    }

    /// Whether the caller is this domain's driver thread (running one of its callbacks).
    fn on_own_driver(&self) -> bool {
        ON_DRIVER.with(|d| d.get()) == Arc::as_ptr(&self.shared) as usize
    }

    /// Waits until the `until` counter reaches the target that `target` computes. `target`
    /// runs under the state lock, together with the registration of this waiter, so the
    /// driver sees the request and the blocked caller at once (and expedites the GP).
    fn wait_for(&self, until: Until, target: impl FnOnce(&mut State) -> u64) {
        let shared = &*self.shared;
        let counter = shared.counter(until);
        let in_task = crate::in_task();
        assert!(
            !self.on_own_driver(),
            "GraceDomain: waiting for a grace period from one of its own callbacks would wait for itself"
        );
        assert!(
            !crate::context::in_non_yielding(),
            "GraceDomain: waiting for a grace period inside a non-yielding section (e.g. a JIT \
             hook) would wait for itself"
        );
        // A task parks on its own event: its worker switches away, which is its QS.
        let event = in_task.then(|| Arc::new(crate::Event::new()));
        let target = {
            let mut state = shared.lock();
            let target = target(&mut state);
            if counter.load(Ordering::Acquire) >= target {
                return;
            }
            state.blocked_callers += 1;
            if let Some(event) = &event {
                state.task_waiters.push((until, target, Arc::clone(event)));
            }
            target
        };
        shared.work.notify_one();
        // Undo the registration even if the wait unwinds (a task cancelled at shutdown).
        let _blocked = BlockedCaller(shared);
        if let Some(event) = event {
            while counter.load(Ordering::Acquire) < target {
                event.wait();
            }
            return;
        }
        // An OS thread: a registered one that is online goes offline while it blocks.
        let _offline = OfflineWhileBlocked::new(&shared.registry);
        // A grace period over idle or briskly switching workers ends in tens of µs; spinning
        // that long first saves the waiter's own wake-up (on a VM an idle vCPU takes tens of
        // µs to wake) without holding the core for long. Then block.
        let spin_until = Instant::now() + WAITER_SPIN;
        while counter.load(Ordering::Acquire) < target && Instant::now() < spin_until {
            std::hint::spin_loop();
        }
        let mut state = shared.lock();
        while counter.load(Ordering::Acquire) < target {
            state = shared.done.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Which counter a waiter waits on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Until {
    /// The grace period ended (`synchronize`, cookies).
    Completed,
    /// Its callbacks have run too (`barrier`).
    CallbacksDone,
}

/// Decrements `blocked_callers` when a waiter leaves, however it leaves.
struct BlockedCaller<'a>(&'a Shared);

impl Drop for BlockedCaller<'_> {
    fn drop(&mut self) {
        self.0.lock().blocked_callers -= 1;
    }
}

/// Takes the calling registered thread offline for a blocking wait, if it is online, and
/// brings it back online afterwards; leaves an offline (or unregistered) thread as it was.
struct OfflineWhileBlocked(Option<Arc<crate::qs::ThreadQs>>);

impl OfflineWhileBlocked {
    fn new(registry: &QsRegistry) -> Self {
        let online = crate::current_thread_qs().filter(|t| t.cell.is_active());
        if let Some(t) = &online {
            t.cell.exit();
            registry.waker.notify();
        }
        OfflineWhileBlocked(online)
    }
}

impl Drop for OfflineWhileBlocked {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            t.cell.enter();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The driver loop: run GPs while somebody needs one; exit on shutdown once every queued
    /// callback has run.
    fn drive(&self) {
        loop {
            let (gp, batch, expedited) = {
                let mut state = self.lock();
                loop {
                    if state.requested > state.started {
                        break; // somebody waits: synchronize, a cookie, barrier
                    }
                    if !state.pending.is_empty() {
                        // Only callbacks wait: let more join the batch, up to the delay
                        // (not at shutdown, and not once the batch is full).
                        let age = state
                            .first_pending_at
                            .map_or(Duration::MAX, |t| t.elapsed());
                        let delay = self.config.callback_delay;
                        if state.shutdown || age >= delay || state.pending.len() >= LAZY_BATCH_MAX {
                            break;
                        }
                        state = self
                            .work
                            .wait_timeout(state, delay - age)
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                        continue;
                    }
                    if state.shutdown {
                        return;
                    }
                    state = self.work.wait(state).unwrap_or_else(|e| e.into_inner());
                }
                state.started += 1;
                (
                    state.started,
                    std::mem::take(&mut state.pending),
                    state.blocked_callers > 0,
                )
            };
            self.run_grace_period(gp, expedited);
            // `synchronize` and cookie waiters go as soon as the GP ends, before the batch
            // of callbacks (possibly thousands of munmaps) runs; `barrier` waiters after it.
            self.completed.store(gp, Ordering::Release);
            self.release_waiters(Until::Completed, gp);
            self.run_callbacks(batch);
            self.callbacks_done.store(gp, Ordering::Release);
            self.release_waiters(Until::CallbacksDone, gp);
        }
    }

    fn counter(&self, until: Until) -> &AtomicU64 {
        match until {
            Until::Completed => &self.completed,
            Until::CallbacksDone => &self.callbacks_done,
        }
    }

    /// Wakes the waiters on `until` whose target is `gp` or older. The counter was stored
    /// before this takes the lock, so a waiter either saw it or is registered and woken here.
    fn release_waiters(&self, until: Until, gp: u64) {
        let mut state = self.lock();
        state.task_waiters.retain(|(u, target, event)| {
            let due = *u == until && *target <= gp;
            if due {
                // One event per waiter: `notify_one` stores a permit if the task has not
                // reached `wait()` yet, so this wake-up cannot be lost.
                event.notify_one();
            }
            !due
        });
        drop(state);
        self.done.notify_all();
    }

    fn run_grace_period(&self, gp: u64, expedited: bool) {
        let mut backoff =
            wait::Backoff::new(&self.registry, &self.config, gp, expedited, &self.stalls);
        match self.config.flavor {
            Flavor::Tasks => {
                let runtime = &self.runtime;
                let names = |id: u64| runtime.task_name(id);
                wait::wait_tasks(&mut backoff, &self.registry, &names);
            }
            Flavor::Rude => {
                self.force_every_worker_through_scheduler();
                wait::wait_threads(&mut backoff, &self.registry);
            }
        }
    }

    fn force_every_worker_through_scheduler(&self) {
        let handles: Vec<_> = (0..self.runtime.workers())
            .filter_map(|w| loop {
                match self.runtime.spawn_pinned(w, || {}) {
                    Ok(h) => break Some(h),
                    // Shut down: no worker runs any task any more.
                    Err(crate::SpawnError::ShutDown) => break None,
                    // E.g. no memory for a stack: never skip a worker (that would end the GP
                    // early); try again.
                    Err(e) => {
                        tracing::warn!(target: "tramway::grace", "rude GP: cannot spawn on worker {w}: {e}; retrying");
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            })
            .collect();
        for h in handles {
            // A no-op cannot panic; a cancelled one means shutdown, where no worker runs.
            let _ = h.join();
        }
    }

    fn run_callbacks(&self, batch: Vec<Callback>) {
        for cb in batch {
            if catch_unwind(AssertUnwindSafe(cb)).is_err() {
                self.callbacks_panicked.fetch_add(1, Ordering::Relaxed);
                tracing::error!(target: "tramway::grace", "a grace-period callback panicked");
            }
            self.callbacks_run.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.work.notify_one();
        if let Some(t) = self.thread.take() {
            if t.thread().id() == std::thread::current().id() || crate::in_task() {
                // Dropped from one of our own callbacks, or from a task (joining would block
                // its worker, and the driver's last GP may wait for that worker): the driver
                // exits by itself once every queued callback has run.
                return;
            }
            // The driver's last GPs may wait for this very thread if it is a registered,
            // online one: stay offline while joining.
            let _offline = OfflineWhileBlocked::new(&self.shared.registry);
            let _ = t.join();
        }
    }
}
