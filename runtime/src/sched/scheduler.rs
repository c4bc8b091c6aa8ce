//! The [`Scheduler`]: state shared by all workers of one runtime (queues, the live-task
//! table, idle workers, timers, the stack pool, the reader registry) and the identity of the
//! calling worker thread. The worker loop itself is in `worker.rs`; tasks reach the scheduler
//! only through the [`Schedule`] seam.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::Instant;

use corosensei::stack::DefaultStack;
use crossbeam_deque::{Injector, Stealer, Worker as LocalQueue};

use super::builder::Config;
use super::task::{Schedule, Task};
use super::timer::Timers;
use crate::error::SpawnError;
use crate::qs::QsRegistry;

/// Shards of the live-task table (fewer lock collisions between concurrent spawns).
const TASK_SHARDS: usize = 16;
/// Finished tasks' stacks kept for reuse (saves an mmap/mprotect/munmap per spawn).
const STACK_POOL_MAX: usize = 256;

/// One shard of the live-task table.
type TaskShard = Mutex<HashMap<u64, Arc<Task>>>;

/// Per-runtime shared state.
pub(crate) struct Scheduler {
    pub(crate) config: Config,
    /// The readers (a `primitive` Arc: the `qs` side is what loom models).
    pub(crate) registry: crate::primitive::Arc<QsRegistry>,
    /// Tasks spawned from outside the runtime and overflow from local queues.
    pub(crate) injector: Injector<Arc<Task>>,
    /// Stealing ends of every worker's local queue.
    pub(crate) stealers: Box<[Stealer<Arc<Task>>]>,
    /// Per-worker queues of pinned tasks; only their worker pops them.
    pub(crate) pinned: Box<[Injector<Arc<Task>>]>,
    /// Per-worker queues of preempted tasks; only their worker pops them (a preempted task
    /// resumes where it was switched out; see `crate::preempt`).
    pub(crate) preempted: Box<[Injector<Arc<Task>>]>,
    /// Asynchronous preemption, if on.
    pub(crate) preempt: Option<crate::preempt::PreemptState>,
    /// Every task that has not finished yet (cancelled at shutdown).
    tasks: Box<[TaskShard]>,
    /// Workers parked (or about to park) that want an unpark on new work; each one's flag is
    /// its `qs::WorkerReader`'s asleep flag.
    pub(crate) num_sleeping: AtomicUsize,
    pub(crate) threads: Box<[OnceLock<Thread>]>,
    pub(crate) join_handles: Mutex<Vec<JoinHandle<()>>>,
    pub(crate) timers: Timers,
    /// Set by `shutdown`: no more spawns, workers leave their loop at the next iteration.
    pub(crate) shutdown: AtomicBool,
    /// Set by the last worker before it cancels the remaining tasks.
    closed: AtomicBool,
    pub(crate) running_workers: AtomicUsize,
    stacks: Mutex<Vec<DefaultStack>>,
    pub(crate) spawned: AtomicU64,
    pub(crate) finished: AtomicU64,
    pub(crate) cancelled: AtomicU64,
}

impl Scheduler {
    pub(crate) fn new(config: Config, stealers: Vec<Stealer<Arc<Task>>>) -> Self {
        let n = config.workers;
        Scheduler {
            registry: crate::primitive::Arc::new(QsRegistry::new(n)),
            injector: Injector::new(),
            stealers: stealers.into_boxed_slice(),
            pinned: (0..n).map(|_| Injector::new()).collect(),
            preempted: (0..n).map(|_| Injector::new()).collect(),
            preempt: config
                .preempt
                .map(|c| crate::preempt::PreemptState::new(c, n)),
            tasks: (0..TASK_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            num_sleeping: AtomicUsize::new(0),
            threads: (0..n).map(|_| OnceLock::new()).collect(),
            join_handles: Mutex::new(Vec::new()),
            timers: Timers::new(),
            shutdown: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            running_workers: AtomicUsize::new(n),
            stacks: Mutex::new(Vec::new()),
            spawned: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            config,
        }
    }

    fn shard(&self, id: u64) -> &TaskShard {
        &self.tasks[(id as usize) % TASK_SHARDS]
    }

    /// A stack for a new task: from the pool, or freshly mapped (with a guard page).
    pub(crate) fn take_stack(&self) -> Result<DefaultStack, SpawnError> {
        if let Some(s) = self.stacks.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Ok(s);
        }
        DefaultStack::new(self.config.stack_size).map_err(SpawnError::Stack)
    }

    /// Returns a finished task's stack to the pool.
    pub(crate) fn recycle_stack(&self, s: DefaultStack) {
        let mut pool = self.stacks.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < STACK_POOL_MAX {
            pool.push(s);
        }
    }

    /// Records a new task as live; fails once the runtime is shutting down.
    pub(crate) fn register_task(&self, task: &Arc<Task>) -> Result<(), SpawnError> {
        if self.shutdown.load(Ordering::Acquire) {
            return Err(SpawnError::ShutDown);
        }
        let mut shard = self
            .shard(task.id)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Checked under the shard lock: `cancel_all` sets `closed` before draining shards.
        if self.closed.load(Ordering::Acquire) {
            return Err(SpawnError::ShutDown);
        }
        shard.insert(task.id, task.clone());
        self.spawned.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The name of a live task, if it has one (for grace-period stall reports).
    pub(crate) fn task_name(&self, id: u64) -> Option<Arc<str>> {
        let shard = self.shard(id).lock().unwrap_or_else(|e| e.into_inner());
        shard.get(&id).and_then(|t| t.name().cloned())
    }

    /// Forgets a finished task.
    pub(crate) fn unregister_task(&self, id: u64) {
        let t = self
            .shard(id)
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        drop(t);
        self.finished.fetch_add(1, Ordering::Relaxed);
    }

    /// Makes a runnable task visible to workers. `wake`: also wake an idle worker (new work;
    /// a task that merely yielded goes back to its own worker, which is awake).
    pub(crate) fn schedule(&self, task: Arc<Task>, wake: bool) {
        if let Some(w) = task.pinned {
            self.pinned[w].push(task);
            fence(Ordering::SeqCst);
            self.wake_worker(w);
            return;
        }
        if let Err(t) = push_local(self, task) {
            self.injector.push(t);
        }
        if wake {
            // Pairs with the fence in `Worker::idle`: either we see its asleep flag or it
            // sees our push (store-buffering, so SeqCst fences on both sides).
            fence(Ordering::SeqCst);
            self.wake_one();
        }
    }

    /// Unparks one sleeping worker, if any.
    pub(crate) fn wake_one(&self) {
        if self.num_sleeping.load(Ordering::Relaxed) == 0 {
            return;
        }
        for i in 0..self.threads.len() {
            if self.wake_worker(i) {
                return;
            }
        }
    }

    /// Unparks worker `i` if it sleeps; returns whether it did.
    pub(crate) fn wake_worker(&self, i: usize) -> bool {
        if crate::qs::wake_sleeping_worker(self.registry.worker(i)) {
            self.num_sleeping.fetch_sub(1, Ordering::SeqCst);
            if let Some(t) = self.threads[i].get() {
                t.unpark();
            }
            return true;
        }
        false
    }

    /// Starts shutdown: refuses new spawns and tells every worker to leave its loop.
    pub(crate) fn begin_shutdown(&self) {
        if self.shutdown.swap(true, Ordering::AcqRel) {
            return;
        }
        for t in self.threads.iter().filter_map(OnceLock::get) {
            t.unpark();
        }
    }

    /// Run by the last worker to leave its loop: cancels (drops) every task that has not
    /// finished, so their join handles report `Cancelled`, and empties the queues.
    pub(crate) fn cancel_all(&self) {
        self.closed.store(true, Ordering::Release);
        self.timers.clear();
        loop {
            let mut batch = Vec::new();
            for shard in self.tasks.iter() {
                batch.extend(
                    shard
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .drain()
                        .map(|(_, t)| t),
                );
            }
            if batch.is_empty() {
                break;
            }
            for t in batch {
                if t.cancel(&self.registry) {
                    self.cancelled.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        while !self.injector.steal().is_empty() {}
        for q in self.pinned.iter().chain(self.preempted.iter()) {
            while !q.steal().is_empty() {}
        }
        for s in self.stealers.iter() {
            while !s.steal().is_empty() {}
        }
        self.stacks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Whether the calling thread is one of this runtime's workers.
    pub(crate) fn is_own_worker(&self) -> bool {
        CURRENT_WORKER
            .with(Cell::get)
            .is_some_and(|w| std::ptr::eq(w.scheduler, self))
    }
}

impl Schedule for Scheduler {
    fn schedule(&self, task: Arc<Task>, wake: bool) {
        Scheduler::schedule(self, task, wake);
    }

    fn unpark_at(&self, deadline: Instant, task: Arc<Task>) {
        if self.timers.add(deadline, task) {
            // New earliest deadline: let a sleeping worker recompute its park timeout.
            fence(Ordering::SeqCst);
            self.wake_one();
        }
    }
}

/// The worker a thread is, set by `worker::run` for the thread's whole life.
#[derive(Clone, Copy)]
struct CurrentWorker {
    scheduler: *const Scheduler,
    index: usize,
    local: *const LocalQueue<Arc<Task>>,
}

thread_local! {
    static CURRENT_WORKER: Cell<Option<CurrentWorker>> = const { Cell::new(None) };
}

/// Marks the calling thread as worker `index` of `scheduler`, whose local queue is `local`,
/// until [`leave_worker`]. Both must outlive that call.
pub(crate) fn enter_worker(scheduler: &Scheduler, index: usize, local: &LocalQueue<Arc<Task>>) {
    CURRENT_WORKER.with(|w| {
        w.set(Some(CurrentWorker {
            scheduler,
            index,
            local,
        }))
    });
}

/// Undoes [`enter_worker`].
pub(crate) fn leave_worker() {
    CURRENT_WORKER.with(|w| w.set(None));
}

/// Index of the calling worker thread and its scheduler, if it is one.
///
/// `inline(never)`: a task that migrated between workers must read its new thread's TLS.
#[cfg(all(test, not(loom)))]
#[inline(never)]
pub(crate) fn current_worker() -> Option<(*const Scheduler, usize)> {
    CURRENT_WORKER
        .with(Cell::get)
        .map(|w| (w.scheduler, w.index))
}

/// [`current_worker`] for the preemption signal handler: a plain read of a `const`
/// thread-local of `Copy` data (async-signal-safe; written only at worker start and exit,
/// when no signal is requested for the thread).
pub(crate) fn current_worker_for_signal() -> Option<(*const Scheduler, usize)> {
    CURRENT_WORKER
        .try_with(Cell::get)
        .ok()
        .flatten()
        .map(|w| (w.scheduler, w.index))
}

/// Runs `f` with the calling worker's scheduler, if the caller is a worker.
#[inline(never)]
pub(crate) fn with_current_scheduler<R>(f: impl FnOnce(&Scheduler) -> R) -> Option<R> {
    // SAFETY: set by `enter_worker` to a scheduler the worker thread keeps alive until
    // `leave_worker`; only this thread reads its own slot.
    CURRENT_WORKER
        .with(Cell::get)
        .map(|w| f(unsafe { &*w.scheduler }))
}

/// Pushes to the calling worker's local queue if it is a worker of `scheduler`.
#[inline(never)]
fn push_local(scheduler: &Scheduler, task: Arc<Task>) -> Result<(), Arc<Task>> {
    match CURRENT_WORKER.with(Cell::get) {
        Some(w) if std::ptr::eq(w.scheduler, scheduler) => {
            // SAFETY: `local` is the worker's own queue, alive until `leave_worker`; only its
            // thread pushes to the owner end.
            unsafe { &*w.local }.push(task);
            Ok(())
        }
        _ => Err(task),
    }
}
