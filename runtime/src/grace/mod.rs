//! Tasks-style grace periods (RCU Tasks in user space) and deferred callbacks.
//!
//! # What a grace period guarantees
//!
//! A grace period (GP) that starts after code was unpublished (a patch site re-pointed away
//! from a trampoline) ends only when every task that might have been executing that code has
//! since passed a *voluntary yield point*, and every registered thread that was online has
//! reported a quiescent state or gone offline. Trampoline code never yields, so after the GP
//! no reader can still be inside the old trampoline, and its pages can be unmapped.
//!
//! # Algorithm (flavor [`Flavor::Tasks`], the default; `tasks.rs`)
//!
//! Readers are workers (whatever task they run) and registered OS threads (see the
//! [`qs`](crate::qs) docs for the reader side and the ordering argument). One GP:
//!
//! 1. the heavy barrier: orders the updater's site stores before the snapshot loads;
//! 2. snapshot every worker cell and every registered thread cell. Inactive readers (idle
//!    workers, offline threads) are quiescent already. Tasks parked at yield points are not
//!    looked at: the cost is O(workers + registered threads + holdouts), not O(tasks);
//! 3. wait until every active reader's cell has changed (a switch, a QS report, offline);
//! 4. read the holdout set (tasks switched out involuntarily) and wait until each has passed
//!    a voluntary yield point;
//! 5. a `SeqCst` fence; ranged callbacks ([`GraceDomain::call_for_code`]) whose code a task
//!    parked inside yielding code still references are held back (see [`code`](crate::code)),
//!    and the rest of the GP's callbacks run.
//!
//! Waiting never burns a core: the waiter parks with exponential backoff, and while a caller
//! is blocked on the GP, the readers it still waits for (while holdouts are waited for, any
//! reader) unpark it on their next transition; a wait for registered threads alone parks
//! until one does (10 ms at most, a safety net), as their wake-ups cannot be lost
//! (`qs/waker.rs`). A GP that waits
//! longer than [`GraceConfig::stall_timeout`] reports who holds it up through `tracing` and
//! [`GraceConfig::on_stall`], and keeps waiting: it never ends early (`stall.rs`).
//!
//! # Flavor [`Flavor::Rude`] (`rude.rs`)
//!
//! The per-worker alternative from the LKML discussion that led to RCU Tasks: run a no-op
//! task pinned to every worker and wait until all have run. A worker that runs the no-op has
//! switched away from whatever it was running. This is correct **only while every switch is
//! voluntary**: a task switched out inside a trampoline (a holdout) is not waited for. Kept
//! for comparison and tests. Registered threads are waited for as in the Tasks flavor.
//!
//! # Sequencing and callbacks (`driver.rs`, `callbacks.rs`, `waiters.rs`)
//!
//! GPs are numbered and run one at a time, back to back while there is demand, on one driver
//! thread per domain (`tramway-gp`): workers stay free for tasks while a GP sleeps, issues
//! `membarrier` and runs callbacks (which `munmap`). Callbacks are **batched**: every callback
//! queued before a GP starts runs after that GP, so N callbacks cost one GP. A GP needed only
//! by callbacks starts [`GraceConfig::callback_delay`] after the first of them (or at once
//! when a batch is full), so a patch storm costs a few hundred GPs per second instead of one
//! per swap; [`GraceDomain::synchronize`], cookies and [`GraceDomain::barrier`] start their GP
//! at once. An updater that defers many small items queues one open batch instead of a
//! callback per item ([`GraceDomain::call_batch`]; the [`batch`] module gives the protocol and
//! why sealing the batch when its GP is claimed is enough). A caller that waits parks: a task
//! on an event (its park is its own quiescent state), a registered thread offline, any other
//! thread on a condition variable.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::atomic::{AtomicBool, Ordering};
//! use std::sync::Arc;
//! use tramway_runtime::grace::{Flavor, GraceConfig, GraceDomain};
//! use tramway_runtime::Runtime;
//!
//! let rt = Runtime::builder().workers(2).build()?;
//! for flavor in [Flavor::Tasks, Flavor::Rude] {
//!     let gp = GraceDomain::new(&rt, GraceConfig::default().flavor(flavor))?;
//!     let freed = Arc::new(AtomicBool::new(false));
//!     let f = freed.clone();
//!     gp.call(move || f.store(true, Ordering::SeqCst)); // after a grace period
//!     let cookie = gp.start_poll();
//!     gp.synchronize(); // a full grace period from here
//!     assert!(gp.poll(&cookie));
//!     gp.barrier(); // every callback queued so far has run
//!     assert!(freed.load(Ordering::SeqCst));
//! }
//! # Ok(()) }
//! ```

pub mod batch;
mod callbacks;
mod driver;
#[cfg(all(test, loom))]
mod loom_tests;
mod rude;
mod stall;
mod tasks;
mod waiters;

use std::fmt;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::time::Duration;

pub use batch::CallbackBatch;
pub use stall::{Holdout, StallReport};

use self::callbacks::{Callback, CodeSpan};
use self::driver::Engine;
use self::waiters::Until;
use crate::error::DomainError;
use crate::primitive::Arc;
use crate::qs::QsRegistry;
use crate::Runtime;

/// Which grace-period algorithm a [`GraceDomain`] runs (the algorithms, their costs and an
/// example with each: the [module docs](self)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Flavor {
    /// RCU Tasks semantics: per-worker switch counters, registered threads, holdouts.
    #[default]
    Tasks,
    /// Force each worker through its scheduler once. Correct only while every switch is
    /// voluntary: a task switched out inside a non-yielding section (a hook that reached a
    /// yield point) or preempted inside JIT code ([`crate::preempt`]) is not waited for, so
    /// safe typed call handles refuse to run under it ([`GraceDomain::tracks_current_thread`]
    /// is false); kept for comparison and tests.
    Rude,
}

impl Flavor {
    /// The flavor's lower-case name (`"tasks"`, `"rude"`).
    pub fn name(self) -> &'static str {
        match self {
            Flavor::Tasks => "tasks",
            Flavor::Rude => "rude",
        }
    }
}

impl fmt::Display for Flavor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Default [`GraceConfig::callback_delay`].
pub const DEFAULT_CALLBACK_DELAY: Duration = Duration::from_millis(1);

/// Called with a report whenever a grace period has waited past the stall timeout.
pub type StallCallback = std::sync::Arc<dyn Fn(&StallReport) + Send + Sync>;

/// Configuration of a [`GraceDomain`].
#[derive(Clone)]
#[non_exhaustive]
pub struct GraceConfig {
    /// The algorithm.
    pub flavor: Flavor,
    /// After how long a waiting GP reports its holdouts (again every such interval). Every
    /// flavor reports.
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

/// Chainable setters (the struct is `#[non_exhaustive]`, so it is built from
/// [`GraceConfig::default`] and these rather than with a struct literal).
impl GraceConfig {
    /// Sets [`flavor`](Self::flavor).
    #[must_use]
    pub fn flavor(mut self, flavor: Flavor) -> Self {
        self.flavor = flavor;
        self
    }

    /// Sets [`stall_timeout`](Self::stall_timeout).
    #[must_use]
    pub fn stall_timeout(mut self, timeout: Duration) -> Self {
        self.stall_timeout = timeout;
        self
    }

    /// Sets [`on_stall`](Self::on_stall).
    #[must_use]
    pub fn on_stall(mut self, callback: impl Fn(&StallReport) + Send + Sync + 'static) -> Self {
        self.on_stall = Some(std::sync::Arc::new(callback));
        self
    }

    /// Sets [`callback_delay`](Self::callback_delay).
    #[must_use]
    pub fn callback_delay(mut self, delay: Duration) -> Self {
        self.callback_delay = delay;
        self
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
#[non_exhaustive]
pub struct GraceStats {
    /// The number of the last grace period completed (GPs are numbered from 1; one that
    /// unwound on its inline runner never completes, and is skipped).
    pub completed: u64,
    /// Callbacks queued with [`GraceDomain::call`].
    pub callbacks_queued: u64,
    /// Callbacks run (including ones that panicked).
    pub callbacks_run: u64,
    /// Callbacks that panicked (the panic is logged and the driver goes on).
    pub callbacks_panicked: u64,
    /// Stall reports issued.
    pub stalls: u64,
    /// Grace periods run inline by an OS thread waiting for them (the others ran on the
    /// domain's driver thread).
    pub inline_grace_periods: u64,
    /// Holdouts grace periods waited for because they had been preempted inside JIT code
    /// (see [`preempt`](crate::preempt)); each counted once per grace period.
    pub preempted_holdouts: u64,
    /// Times a ranged callback ([`GraceDomain::call_for_code`]) was held back at the end of
    /// its grace period because a task parked inside yielding code referenced its code. The
    /// items a [`CallbackBatch`] split off count once per split, whatever their number.
    pub callbacks_held: u64,
    /// Ranged callbacks (and split-off parts of batches) held back right now.
    pub callbacks_held_now: u64,
    /// Reader transitions that woke waiting grace periods: a reader's report after a grace
    /// period with a blocked caller asked *that reader* to wake it (readers it does not wait
    /// for never do), or, while holdout tasks are waited for, any reader's transition.
    /// Counted over the readers this domain watches, so domains over one runtime see the same
    /// count.
    pub reader_wakeups: u64,
    /// Waits for registered threads that no reader woke although every one had passed, so
    /// that only the waiter's 10 ms safety-net timeout ended them. Their wake-ups cannot be
    /// lost by design (the `qs` transitions read a wake request behind a fence), so this
    /// stays 0; anything else is a bug, also logged at WARN. A park that times out is not
    /// counted when a reader woke the registered waiters during it and the waiter is one of
    /// them (it was woken, but got no CPU before its timeout); so a lost wake-up goes
    /// uncounted when another wake-up (another reader's, or one meant for another domain over
    /// the same readers) unparks the waiter during that park, or lands between the timeout
    /// and the end of the wait (which may include a due stall report): a report that lands
    /// after the timeout but before the waiter's re-check woke it, only late, and is not
    /// counted. One whose reader is preempted between its cell store and its wake-up can
    /// still count here, rarely.
    pub lost_wakeups: u64,
}

/// A grace-period domain over one [`Runtime`]'s readers ([`GraceDomain::new`]) or over
/// registered OS threads alone ([`GraceDomain::for_threads`]): `synchronize`, deferred
/// callbacks, `barrier`, polled cookies (see the [module docs](self) for the algorithm).
///
/// Cheap to clone. The driver thread stops (after running every queued callback) when the
/// last clone is dropped. A domain keeps its runtime alive.
#[derive(Clone)]
pub struct GraceDomain {
    engine: Arc<Engine>,
    _driver: Arc<driver::Driver>,
}

impl GraceDomain {
    /// Starts a domain over `runtime`'s workers and registered threads.
    ///
    /// Fails with [`DomainError::NoQsReporting`] if the runtime was built without
    /// quiescent-state reporting (every grace period would end at once), and with
    /// [`DomainError::SpawnDriver`] if the driver thread cannot be started.
    pub fn new(runtime: &Runtime, config: GraceConfig) -> Result<GraceDomain, DomainError> {
        if !runtime.reports_qs() {
            return Err(DomainError::NoQsReporting);
        }
        let engine = Arc::new(Engine::new(
            Arc::clone(runtime.qs_registry()),
            Some(runtime.clone()),
            config,
        ));
        GraceDomain::start(engine)
    }

    /// Starts a domain whose readers are registered OS threads only, with no green-thread
    /// runtime: liburcu QSBR's model. Threads join with
    /// [`register_thread`](Self::register_thread) and report with
    /// [`ThreadRegistration::quiescent`](crate::ThreadRegistration::quiescent), `offline` and
    /// `online`; the domain runs the same Tasks (or Rude) grace periods, with no worker to
    /// wait for. It starts one driver thread (for callbacks) and no worker thread.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use tramway_runtime::grace::{GraceConfig, GraceDomain};
    ///
    /// let gp = GraceDomain::for_threads(GraceConfig::default())?;
    /// let reader = std::thread::spawn({
    ///     let gp = gp.clone();
    ///     move || {
    ///         let reg = gp.register_thread().expect("register");
    ///         for _ in 0..1000 {
    ///             // ... read shared data or call patch sites ...
    ///             reg.quiescent();
    ///         }
    ///     }
    /// });
    /// gp.synchronize();
    /// reader.join().unwrap();
    /// # Ok(()) }
    /// ```
    pub fn for_threads(config: GraceConfig) -> Result<GraceDomain, DomainError> {
        let engine = Arc::new(Engine::new(Arc::new(QsRegistry::new(0)), None, config));
        GraceDomain::start(engine)
    }

    /// Registers the calling OS thread as a reader of this domain (for a domain over a
    /// runtime, the same as [`Runtime::register_thread`]): see [`ThreadRegistration`] for
    /// the protocol. Fails on a worker thread or inside a task, and if the thread is already
    /// registered (with any domain or runtime).
    ///
    /// [`ThreadRegistration`]: crate::ThreadRegistration
    pub fn register_thread(&self) -> Result<crate::ThreadRegistration, crate::RegisterError> {
        crate::ThreadRegistration::register(&self.engine.registry)
    }

    /// Starts the driver of `engine` (also used by the loom model with fake readers).
    fn start(engine: Arc<Engine>) -> Result<GraceDomain, DomainError> {
        let driver = driver::Driver::spawn(&engine).map_err(DomainError::SpawnDriver)?;
        Ok(GraceDomain {
            engine,
            _driver: Arc::new(driver),
        })
    }

    /// The flavor this domain runs.
    pub fn flavor(&self) -> Flavor {
        self.engine.config.flavor
    }

    /// Waits for a full grace period. From a task it parks the task (which is itself a
    /// quiescent state, so it never waits on itself); from a registered thread it goes
    /// offline while waiting; other threads simply block.
    ///
    /// # Panics
    /// Called from one of this domain's callbacks, or inside a
    /// [`non_yielding`](crate::non_yielding) section (a JIT hook), it would wait for itself
    /// forever; it panics instead.
    pub fn synchronize(&self) {
        self.engine
            .wait_for(Until::Completed, |seq| seq.request_next());
    }

    /// Queues `f` to run on the driver thread after a grace period. Every callback queued
    /// before a GP starts shares that GP. A panicking callback is counted and logged; the
    /// others still run.
    pub fn call(&self, f: impl FnOnce() + Send + 'static) {
        self.call_boxed(Box::new(f));
    }

    /// [`call`](Self::call) for an already boxed callback.
    pub fn call_boxed(&self, f: Box<dyn FnOnce() + Send>) {
        self.engine
            .queue_callback(Callback::closure(f, CodeSpan::None));
    }

    /// Queues `f`, which frees the code in the ranges `code`, to run after a grace period
    /// **and** once no task parked inside yielding code has a stack word in them (see
    /// [`code`](crate::code) for the algorithm). Use it for code that may be on a parked
    /// task's stack: a compiled body that calls into the runtime. A task parked there holds
    /// back only the callbacks whose ranges its stack points into; the others run after their
    /// grace period as usual. With no non-empty range it behaves as [`call`](Self::call).
    pub fn call_for_code(&self, code: &[Range<usize>], f: impl FnOnce() + Send + 'static) {
        self.call_boxed_for_code(code, Box::new(f));
    }

    /// [`call_for_code`](Self::call_for_code) for an already boxed callback.
    pub fn call_boxed_for_code(&self, code: &[Range<usize>], f: Box<dyn FnOnce() + Send>) {
        self.engine
            .queue_callback(Callback::closure(f, CodeSpan::new(code)));
    }

    /// Queues an open batch: it collects items until the grace period that covers it is
    /// claimed, then runs them after that GP (items whose code a parked task references are
    /// held back, as for [`call_for_code`](Self::call_for_code)). The [`batch`] module docs
    /// give the protocol an owner follows: queue a batch when its first item is pushed, and
    /// start a new one once the batch is sealed. Counts as one callback in [`GraceStats`].
    pub fn call_batch(&self, batch: Box<dyn CallbackBatch>) {
        self.engine.queue_callback(Callback::Batch(batch));
    }

    /// Waits until every callback queued before this call has run, except ranged callbacks
    /// ([`call_for_code`](Self::call_for_code)) still held back by tasks parked inside their
    /// code (those run once the tasks move on; [`GraceStats::callbacks_held_now`] counts
    /// them), and except the callbacks of a grace period that unwound on the thread running
    /// it inline (a panicking tracing subscriber of that caller's): those are leaked, never
    /// run, as running them without a completed grace period could free code under readers.
    /// Called from a callback it returns at once (it cannot wait for the driver that runs
    /// it).
    ///
    /// # Panics
    /// Inside a [`non_yielding`](crate::non_yielding) section, as
    /// [`synchronize`](Self::synchronize).
    pub fn barrier(&self) {
        if self.engine.on_own_driver() {
            return;
        }
        self.engine
            .wait_for(Until::CallbacksDone, |seq| seq.request_for_callbacks());
    }

    /// Returns a cookie for a grace period that starts after this call and asks the driver
    /// to run it. [`poll`](Self::poll) tells whether it has ended.
    pub fn start_poll(&self) -> Cookie {
        Cookie(self.engine.request_next())
    }

    /// Whether a full grace period has elapsed since `cookie` was taken.
    pub fn poll(&self, cookie: &Cookie) -> bool {
        self.engine.completed.load(Ordering::Acquire) >= cookie.0
    }

    /// Waits until `cookie`'s grace period has ended (see [`synchronize`](Self::synchronize)
    /// for how each kind of caller waits, and when it panics).
    pub fn wait(&self, cookie: &Cookie) {
        self.engine.wait_for(Until::Completed, |_| cookie.0);
    }

    /// Whether the calling thread is, right now, a reader this domain's grace periods wait
    /// for: a task of its runtime (outside an [`offline`](crate::offline) scope), or one of its
    /// registered threads that is online. Code retired through this domain is freed only
    /// after every such reader has passed a quiescent state, so only these callers may run
    /// JIT code whose reclamation this domain decides (`tramway-jit` checks this before a
    /// safe call through a typed handle).
    ///
    /// Always false for [`Flavor::Rude`]: it does not wait for tasks switched out inside a
    /// non-yielding section, so no caller is safe under it without the caller's own promise
    /// that no such switch happens (the `unsafe` raw entry of a site).
    pub fn tracks_current_thread(&self) -> bool {
        self.engine.config.flavor == Flavor::Tasks
            && crate::qs::is_active_reader_of(&self.engine.registry)
    }

    /// Counters.
    pub fn stats(&self) -> GraceStats {
        self.engine.stats()
    }
}

impl fmt::Debug for GraceDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GraceDomain")
            .field("flavor", &self.flavor())
            .field("stats", &self.stats())
            .finish()
    }
}
