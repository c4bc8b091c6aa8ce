//! The Rude flavor's wait: force every worker through its scheduler once.
//!
//! A no-op task pinned to each worker runs only once that worker has switched away from
//! whatever it was running, so when all of them have finished, every task that was running
//! at the start has reached a yield point. Tasks that were switched out *involuntarily*
//! (holdouts) are not waited for: that is the flavor's documented weakness (see the `grace`
//! module docs). It waits through the same [`Backoff`] as the Tasks flavor, so a worker that
//! never reaches its scheduler is reported as a stall like any other.

use std::time::Duration;

use super::stall::{Backoff, Holdout};
use crate::{Runtime, SpawnError};

pub(super) fn force_every_worker_through_scheduler(backoff: &mut Backoff<'_>, runtime: &Runtime) {
    let engine = backoff.engine();
    let mut pending: Vec<(usize, crate::JoinHandle<()>)> = (0..runtime.workers())
        .filter_map(|w| loop {
            match runtime.spawn_pinned(w, || {}) {
                Ok(h) => break Some((w, h)),
                // Shut down: no worker runs any task any more.
                Err(SpawnError::ShutDown) => break None,
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
    backoff.wait_until(|describe| {
        pending.retain(|(_, h)| !h.is_finished());
        if pending.is_empty() {
            return None;
        }
        let late = pending.iter().filter(|_| describe).map(|(w, _)| {
            let task_id = engine.registry.task_on_worker(*w);
            Holdout::Worker {
                worker: *w,
                task_id,
                task_name: engine.task_name(task_id),
            }
        });
        Some(late.collect())
    });
}
