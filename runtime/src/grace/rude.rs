//! The Rude flavor's wait: force every worker through its scheduler once.
//!
//! A no-op task pinned to each worker runs only once that worker has switched away from
//! whatever it was running, so when all of them have finished, every task that was running
//! at the start has reached a yield point. Tasks that were switched out *involuntarily*
//! (holdouts) are not waited for: that is the flavor's documented weakness (see the `grace`
//! module docs). It waits through the same [`Backoff`] as the Tasks flavor, so a worker that
//! never reaches its scheduler is reported as a stall like any other.

use std::time::Duration;

use super::stall::{Ask, Backoff, Holdout, Late, WakeBy};
use crate::qs::{heavy_barrier, QsSnapshot};
use crate::{JoinHandle, Runtime, SpawnError};

/// How a GP learns that one worker has switched away from what it ran at the start.
enum Passage {
    /// The no-op pinned to it has run.
    NoOp(JoinHandle<()>),
    /// The runtime is shutting down and takes no spawns; the worker may still be finishing
    /// its last task slice: wait for its quiescent-state cell instead (as the Tasks flavor).
    Cell(QsSnapshot),
}

pub(super) fn force_every_worker_through_scheduler(backoff: &mut Backoff<'_>, runtime: &Runtime) {
    let engine = backoff.engine();
    let registry = &*engine.registry;
    let mut cells_needed = false;
    let mut pending: Vec<(usize, Passage)> = (0..runtime.workers())
        .map(|w| loop {
            match runtime.spawn_pinned(w, || {}) {
                Ok(h) => break (w, Passage::NoOp(h)),
                Err(SpawnError::ShutDown) => {
                    cells_needed = true;
                    break (w, Passage::Cell(registry.worker_snapshot(w)));
                }
                // E.g. no memory for a stack: never skip a worker (that would end the GP
                // early); try again.
                Err(e) => {
                    tracing::warn!(
                        target: "tramway::grace",
                        worker = w,
                        error = %e,
                        "rude grace period: cannot spawn on a worker; retrying"
                    );
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        })
        .collect();
    if cells_needed {
        // Order the updater's site stores before the cell loads (qs docs, "Ordering"), and
        // take the snapshots again after the barrier.
        heavy_barrier(registry);
        for (w, passage) in &mut pending {
            if let Passage::Cell(snap) = passage {
                *snap = registry.worker_snapshot(*w);
            }
        }
    }
    // Any transition wakes it: a no-op task's end is a transition of whichever worker ran it.
    backoff.wait_until(WakeBy::AnyTransition, |ask| {
        pending.retain(|(w, passage)| match passage {
            Passage::NoOp(h) => !h.is_finished(),
            Passage::Cell(snap) => !registry.worker_passed_since(*w, *snap),
        });
        if pending.is_empty() {
            return None;
        }
        let late = pending
            .iter()
            .filter(|_| ask == Ask::Describe)
            .map(|(w, _)| {
                let task_id = registry.task_on_worker(*w);
                Holdout::Worker {
                    worker: *w,
                    task_id,
                    task_name: engine.task_name(task_id),
                }
            });
        Some(Late {
            holdouts: late.collect(),
            wakes_assured: false,
        })
    });
}
