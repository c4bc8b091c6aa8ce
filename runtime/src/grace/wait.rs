//! Waiting for one grace period: the per-flavor "has everyone passed a QS?" loops.

use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::stall::{Holdout, StallReport};
use super::GraceConfig;
use crate::fence::heavy_barrier;
use crate::qs::{QsRegistry, QsSnapshot, TaskQs, ThreadQs};

/// First sleep of a waiting GP when a caller is blocked in `synchronize()`.
const EXPEDITED_FIRST_SLEEP: Duration = Duration::from_micros(5);
/// First sleep of a waiting GP that only serves deferred callbacks.
const LAZY_FIRST_SLEEP: Duration = Duration::from_micros(100);
/// Longest sleep between checks. In an expedited GP readers also unpark the driver on their
/// next QS event (see `GpWaker`), so there this only bounds the cost of a wake-up lost to the
/// race between a reader's QS store and the driver's `arm()`.
const MAX_SLEEP: Duration = Duration::from_millis(1);

/// Sleeps between checks with exponential backoff and reports stalls.
pub(super) struct Backoff<'a> {
    registry: &'a QsRegistry,
    config: &'a GraceConfig,
    grace_period: u64,
    start: Instant,
    sleep: Duration,
    next_report: Duration,
    stalls: &'a AtomicU64,
    expedited: bool,
}

impl<'a> Backoff<'a> {
    pub(super) fn new(
        registry: &'a QsRegistry,
        config: &'a GraceConfig,
        grace_period: u64,
        expedited: bool,
        stalls: &'a AtomicU64,
    ) -> Self {
        Backoff {
            registry,
            config,
            grace_period,
            start: Instant::now(),
            sleep: if expedited {
                EXPEDITED_FIRST_SLEEP
            } else {
                LAZY_FIRST_SLEEP
            },
            next_report: config.stall_timeout,
            stalls,
            expedited,
        }
    }

    /// Waits until `poll` reports nothing left to wait for, sleeping in between. `poll(true)`
    /// must name who is late (for a stall report); `poll(false)` may return an empty list.
    /// Never gives up: safety over liveness.
    fn wait_until(&mut self, mut poll: impl FnMut(bool) -> Option<Vec<Holdout>>) {
        while poll(false).is_some() {
            if self.expedited {
                // Somebody is blocked on this GP: ask readers to unpark us on their next QS
                // transition, then re-check so that a transition that happened before `arm`
                // is not slept through.
                self.registry.waker.arm();
                if poll(false).is_none() {
                    self.registry.waker.disarm();
                    return;
                }
            }
            // A GP for callbacks only just sleeps: waking the driver from a worker's switch
            // path costs that worker a futex wake and a context switch, for a latency that
            // nobody waits on.
            std::thread::park_timeout(self.sleep);
            self.registry.waker.disarm();
            self.sleep = (self.sleep * 2).min(MAX_SLEEP);
            let waited = self.start.elapsed();
            if waited >= self.next_report {
                if let Some(late) = poll(true) {
                    self.report(waited, late);
                }
                self.next_report = waited + self.config.stall_timeout;
            }
        }
    }

    #[cold]
    fn report(&mut self, waited: Duration, holdouts: Vec<Holdout>) {
        if holdouts.is_empty() {
            return;
        }
        self.stalls.fetch_add(1, Ordering::Relaxed);
        let report = StallReport {
            grace_period: self.grace_period,
            waited,
            holdouts,
        };
        tracing::warn!(target: "tramway::grace", "{report}");
        if let Some(cb) = &self.config.on_stall {
            cb(&report);
        }
    }
}

/// Looks up a task's name for stall reports.
pub(super) type NameLookup<'a> = &'a dyn Fn(u64) -> Option<Arc<str>>;

/// Tasks flavor: waits until every worker and registered thread that was active at the
/// snapshot has passed a QS, then until every holdout has passed a voluntary yield point.
pub(super) fn wait_tasks(backoff: &mut Backoff<'_>, registry: &QsRegistry, names: NameLookup<'_>) {
    // Sites were re-pointed before this GP was requested; order those stores before the
    // snapshot loads (paired with the readers' light barrier; see fence.rs).
    heavy_barrier();

    // Workers that were between tasks or idle at the snapshot are already quiescent.
    let mut workers: Vec<(usize, QsSnapshot)> = registry
        .workers
        .iter()
        .enumerate()
        .map(|(i, w)| (i, w.cell.snapshot()))
        .filter(|(_, s)| s.was_active())
        .collect();
    let mut threads = active_threads(registry);

    backoff.wait_until(|describe| {
        workers.retain(|(i, s)| !registry.workers[*i].cell.passed_since(*s));
        threads.retain(|(t, s)| !t.cell.passed_since(*s));
        if workers.is_empty() && threads.is_empty() {
            return None;
        }
        let mut late = Vec::new();
        if describe {
            late.extend(workers.iter().map(|(i, _)| {
                let task_id = registry.workers[*i].current_task.load(Ordering::Relaxed);
                Holdout::Worker {
                    worker: *i,
                    task_id,
                    task_name: names(task_id),
                }
            }));
            late.extend(describe_threads(&threads));
        }
        Some(late)
    });

    // Every cell load above was Acquire and saw a value stored (Release) after the
    // scheduler inserted any holdout it switched out involuntarily, so those insertions
    // are visible to this read.
    let mut holdouts: Vec<(Arc<TaskQs>, u64)> = registry
        .holdouts
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .map(|t| (Arc::clone(t), t.voluntary_yields.load(Ordering::Acquire)))
        .collect();
    backoff.wait_until(|describe| {
        // A holdout has passed a voluntary yield point once its count moved on, or once the
        // scheduler removed it from the set (it does so only at a voluntary yield point; the
        // count may have moved before our snapshot read it, and a task that then ends never
        // bumps it again).
        let set = registry.holdouts.lock().unwrap_or_else(|e| e.into_inner());
        holdouts.retain(|(t, v)| {
            t.voluntary_yields.load(Ordering::Acquire) == *v && set.contains_key(&t.id)
        });
        drop(set);
        if holdouts.is_empty() {
            return None;
        }
        let late = holdouts
            .iter()
            .filter(|_| describe)
            .map(|(t, _)| Holdout::Task {
                task_id: t.id,
                task_name: t.name.clone(),
            });
        Some(late.collect())
    });
    // Order the QS observations before the callbacks' frees.
    fence(Ordering::SeqCst);
}

/// Registered threads wait the same way for both flavors.
pub(super) fn wait_threads(backoff: &mut Backoff<'_>, registry: &QsRegistry) {
    heavy_barrier();
    let mut threads = active_threads(registry);
    backoff.wait_until(|describe| {
        threads.retain(|(t, s)| !t.cell.passed_since(*s));
        if threads.is_empty() {
            return None;
        }
        Some(if describe {
            describe_threads(&threads)
        } else {
            Vec::new()
        })
    });
    fence(Ordering::SeqCst);
}

fn active_threads(registry: &QsRegistry) -> Vec<(Arc<ThreadQs>, QsSnapshot)> {
    registry
        .threads
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|t| (Arc::clone(t), t.cell.snapshot()))
        .filter(|(_, s)| s.was_active())
        .collect()
}

fn describe_threads(threads: &[(Arc<ThreadQs>, QsSnapshot)]) -> Vec<Holdout> {
    threads
        .iter()
        .map(|(t, _)| Holdout::Thread {
            name: t.name.clone(),
        })
        .collect()
}
