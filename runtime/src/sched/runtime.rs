//! [`Runtime`]: the user-facing handle (spawn, block_on, shutdown, stats, thread registration).
//!
//! The shutdown policy is documented on [`Runtime`] (its `# Shutdown` section).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crossbeam_deque::Worker as LocalQueue;

use super::api::TaskInfo;
use super::builder::{Builder, Config};
use super::join::JoinHandle;
use super::scheduler::Scheduler;
use super::task::{Schedule, Task};
use super::worker;
use crate::error::{BuildError, JoinError, RegisterError, SpawnError};
use crate::qs::{QsRegistry, ThreadRegistration};

/// Why [`Runtime::block_on`] produced no value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlockOnError {
    /// The task could not be spawned.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// The task panicked or was cancelled.
    #[error(transparent)]
    Join(#[from] JoinError),
}

/// Switch counters of one worker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerStats {
    /// Voluntary switches (task yielded, parked or ended).
    pub voluntary_switches: u64,
    /// Involuntary switches (yield inside a non-yielding section).
    pub involuntary_switches: u64,
}

/// A snapshot of the runtime's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RuntimeStats {
    /// Per worker, indexed by worker index.
    pub workers: Vec<WorkerStats>,
    /// Tasks accepted by `spawn`.
    pub tasks_spawned: u64,
    /// Tasks that returned or panicked.
    pub tasks_finished: u64,
    /// Tasks dropped by shutdown.
    pub tasks_cancelled: u64,
    /// Tasks spawned and neither finished nor cancelled.
    pub tasks_live: u64,
    /// Asynchronous preemption (all zero when it is off).
    pub preempt: crate::preempt::PreemptStats,
    /// Stack scans of tasks parking inside yielding code (see [`code`](crate::code)).
    pub stack_scans: u64,
    /// Tasks whose code references hold retired code back right now: parked inside yielding
    /// code, or resumed from there and not parked again yet.
    pub tasks_with_code_refs: u64,
}

struct Handle {
    shared: Arc<Scheduler>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        shutdown(&self.shared);
    }
}

/// A green-thread runtime: M tasks on N worker threads. Cloning is cheap (shared handle); the
/// runtime shuts down on [`shutdown`](Self::shutdown) or when the last clone is dropped.
///
/// # Shutdown
/// Shutdown happens on [`Runtime::shutdown`] or when the last `Runtime` handle is dropped:
///
/// 1. new spawns fail with [`SpawnError::ShutDown`];
/// 2. every worker finishes the task slice it is running (up to that task's next yield point;
///    a task that never yields delays shutdown) and leaves its loop;
/// 3. the last worker out *cancels* every task that has not finished (queued, parked,
///    sleeping, never started): its coroutine is dropped, which unwinds its stack on that
///    worker thread (corosensei's forced unwind runs the destructors of everything on the
///    task's stack), and its join handle returns [`JoinError::Cancelled`]. A task whose stack
///    may hold JIT frames (preempted inside JIT code, or parked inside
///    [`in_yielding_code`](crate::in_yielding_code)) is never unwound, since JIT frames have no
///    unwind information: its coroutine and stack are leaked, and its join handle still
///    returns `Cancelled`;
/// 4. `shutdown` joins every worker thread, so no thread outlives it.
///
/// Called from inside one of this runtime's own tasks, `shutdown` only starts the sequence
/// (a worker cannot join itself); the workers still exit on their own. A task that owns a
/// `Runtime` clone keeps the runtime alive until it finishes or `shutdown` is called.
///
/// Cancellation and panic capture need `panic = "unwind"` (the default): under
/// `panic = "abort"` a task panic aborts the process and dropping a suspended coroutine is
/// impossible (corosensei panics, which aborts).
#[derive(Clone)]
pub struct Runtime {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("workers", &self.workers())
            .field("shut_down", &self.is_shut_down())
            .finish()
    }
}

impl Runtime {
    /// A builder with default settings.
    pub fn builder() -> Builder {
        Builder::new()
    }

    /// A runtime with default settings.
    pub fn new() -> Result<Runtime, BuildError> {
        Builder::new().build()
    }

    pub(crate) fn start(config: Config) -> Result<Runtime, BuildError> {
        // Decide the barrier mode before any task can run (`qs::barrier_mode`).
        crate::qs::barrier_mode();
        super::overflow::install();
        let n = config.workers;
        let locals: Vec<LocalQueue<Arc<Task>>> = (0..n).map(|_| LocalQueue::new_fifo()).collect();
        let stealers = locals.iter().map(LocalQueue::stealer).collect();
        let name = config.thread_name.clone();
        let preempt_signal = config.preempt.map(|p| p.signal);
        if let Some(signal) = preempt_signal {
            crate::preempt::install(signal).map_err(BuildError::PreemptSetup)?;
        }
        let shared = Arc::new(Scheduler::new(config, stealers));
        let rt = Runtime {
            handle: Arc::new(Handle {
                shared: shared.clone(),
            }),
        };
        for (i, local) in locals.into_iter().enumerate() {
            let sh = shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || worker::run(sh, i, local));
            match spawned {
                Ok(h) => {
                    let _ = shared.threads[i].set(h.thread().clone());
                    shared
                        .join_handles
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(h);
                }
                Err(e) => {
                    // Workers not started never decrement `running_workers`; account for them
                    // so the started ones can finish the shutdown.
                    shared.running_workers.fetch_sub(n - i, Ordering::AcqRel);
                    drop(rt); // shuts down and joins the started workers
                    return Err(BuildError::SpawnWorker(e));
                }
            }
        }
        if let Some(preempt) = &shared.preempt {
            if let Err(e) = preempt.monitor.start(&shared) {
                drop(rt); // shuts down and joins the workers
                return Err(BuildError::PreemptSetup(e));
            }
        }
        Ok(rt)
    }

    fn shared(&self) -> &Arc<Scheduler> {
        &self.handle.shared
    }

    /// Spawns a task. Its value (or panic) is delivered to the returned handle.
    ///
    /// The task may migrate between workers at any yield point: do not keep values tied to an
    /// OS thread (thread-local references, `Rc`s shared with thread-locals, held
    /// `std::sync::MutexGuard`s) across yield points.
    pub fn spawn<F, T>(&self, f: F) -> Result<JoinHandle<T>, SpawnError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.spawn_inner(None, None, f)
    }

    /// Spawns a named task (the name appears in [`crate::current`] and in stall reports).
    pub fn spawn_named<F, T>(
        &self,
        name: impl Into<Arc<str>>,
        f: F,
    ) -> Result<JoinHandle<T>, SpawnError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.spawn_inner(Some(name.into()), None, f)
    }

    /// Spawns a task that only ever runs on worker `worker` (its queue is never stolen from).
    pub(crate) fn spawn_pinned<F, T>(
        &self,
        worker: usize,
        f: F,
    ) -> Result<JoinHandle<T>, SpawnError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        if worker >= self.workers() {
            return Err(SpawnError::NoSuchWorker {
                index: worker,
                workers: self.workers(),
            });
        }
        self.spawn_inner(None, Some(worker), f)
    }

    fn spawn_inner<F, T>(
        &self,
        name: Option<Arc<str>>,
        pinned: Option<usize>,
        f: F,
    ) -> Result<JoinHandle<T>, SpawnError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let sh = self.shared();
        if sh.shutdown.load(Ordering::Acquire) {
            return Err(SpawnError::ShutDown);
        }
        let stack = sh.take_stack()?;
        let scheduler: std::sync::Weak<dyn Schedule> = Arc::downgrade(sh) as _;
        let (task, slot) = Task::new(scheduler, sh.config.yield_mode, name, pinned, stack, f);
        let info = TaskInfo {
            id: task.id,
            name: task.name().cloned(),
        };
        if let Err(e) = sh.register_task(&task) {
            // Never started: dropping it only drops the closure (no stack to unwind).
            let _ = catch_unwind(AssertUnwindSafe(move || drop(task)));
            return Err(e);
        }
        sh.schedule(task, true);
        Ok(JoinHandle::new(slot, info))
    }

    /// Runs `f` as a task and waits for it from the calling thread (spawn + join).
    pub fn block_on<F, T>(&self, f: F) -> Result<T, BlockOnError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        Ok(self.spawn(f)?.join()?)
    }

    /// Shuts the runtime down (the policy: [`Runtime`]'s `# Shutdown` section) and joins the
    /// workers.
    /// Idempotent; concurrent callers all return after the workers are joined.
    pub fn shutdown(&self) {
        shutdown(self.shared());
    }

    /// Whether shutdown has started.
    pub fn is_shut_down(&self) -> bool {
        self.shared().shutdown.load(Ordering::Acquire)
    }

    /// Number of worker threads.
    pub fn workers(&self) -> usize {
        self.shared().config.workers
    }

    /// Current counters.
    pub fn stats(&self) -> RuntimeStats {
        let sh = self.shared();
        let spawned = sh.spawned.load(Ordering::Relaxed);
        let finished = sh.finished.load(Ordering::Relaxed);
        let cancelled = sh.cancelled.load(Ordering::Relaxed);
        RuntimeStats {
            workers: sh
                .registry
                .switch_counts()
                .into_iter()
                .map(|(voluntary, involuntary)| WorkerStats {
                    voluntary_switches: voluntary,
                    involuntary_switches: involuntary,
                })
                .collect(),
            tasks_spawned: spawned,
            tasks_finished: finished,
            tasks_cancelled: cancelled,
            tasks_live: spawned.saturating_sub(finished + cancelled),
            preempt: sh
                .preempt
                .as_ref()
                .map(|p| p.counters.snapshot())
                .unwrap_or_default(),
            stack_scans: sh.registry.stack_scans(),
            tasks_with_code_refs: sh.registry.tasks_with_code_refs() as u64,
        }
    }

    /// Whether workers report quiescent states (always, except with the hidden benchmark
    /// knob `Builder::qs_reporting(false)`).
    pub(crate) fn reports_qs(&self) -> bool {
        self.shared().config.qs_reporting
    }

    /// The name of live task `id`, if it was spawned with one.
    pub(crate) fn task_name(&self, id: u64) -> Option<Arc<str>> {
        self.shared().task_name(id)
    }

    /// Registers the calling OS thread as a reader context (see [`ThreadRegistration`]).
    /// Fails on a worker thread or inside a task, and if the thread is already registered.
    pub fn register_thread(&self) -> Result<ThreadRegistration, RegisterError> {
        ThreadRegistration::register(&self.shared().registry)
    }

    /// The reader registry grace periods read.
    pub(crate) fn qs_registry(&self) -> &crate::primitive::Arc<QsRegistry> {
        &self.shared().registry
    }
}

fn shutdown(shared: &Arc<Scheduler>) {
    shared.begin_shutdown();
    if shared.is_own_worker() {
        // A worker cannot join itself; workers exit on their own, and the preemption monitor
        // after them.
        return;
    }
    // The workers' last tasks may wait for a grace period that waits for this thread if it is
    // a registered, online one: stay offline while joining.
    let _offline = crate::qs::OfflineGuard::new();
    let mut handles = shared
        .join_handles
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    for h in handles.drain(..) {
        if h.join().is_err() {
            tracing::error!("a tramway worker thread panicked");
        }
    }
    drop(handles);
    // Only now: until every worker has left, one may be spinning in JIT code that only a
    // preemption hands back to it.
    if let Some(preempt) = &shared.preempt {
        preempt.monitor.stop_and_join();
    }
}
