//! The Tasks flavor's wait (RCU Tasks semantics): every reader that was active at the
//! snapshot must pass a quiescent state, then every holdout a voluntary yield point. The
//! steps and their cost are in the `grace` module docs; the ordering argument in the `qs`
//! module docs.

use std::sync::atomic::{fence, Ordering};

use super::stall::{Ask, Backoff, Holdout, Late, WakeBy};
use crate::primitive::Arc;
use crate::qs::{heavy_barrier, QsRegistry, QsSnapshot, ThreadReader};

/// The vectors a grace period snapshots its readers into. The engine keeps one set from
/// one GP to the next (only one GP runs at a time: the claim takes it, the end of the GP
/// gives it back), so that the snapshot allocates nothing once they have grown to the
/// number of readers (they never shrink: 16 bytes per reader at the largest count seen). A
/// GP that follows a pause (the "cold" rows of `benches/urcu_compare`) finds the
/// allocator's cache lines cold: `malloc` and `free` of the snapshot were about a sixth of
/// such a GP (`runtime/tests/gp_allocations.rs` checks that none is left in an inline GP;
/// holdouts, stall reports and the Rude flavor's tasks on a runtime still allocate). Both
/// vectors are empty between GPs: every entry is removed as its reader passes. A GP that
/// unwinds drops its set, and the next one starts with empty vectors.
#[derive(Default)]
pub(super) struct SnapshotBuffers {
    workers: Vec<(usize, QsSnapshot)>,
    threads: Vec<(Arc<ThreadReader>, QsSnapshot)>,
}

/// Waits until every worker and registered thread that was active at the snapshot has passed
/// a quiescent state, then until every holdout has passed a voluntary yield point.
pub(super) fn wait_for_readers(
    backoff: &mut Backoff<'_>,
    registry: &QsRegistry,
    snapshot: &mut SnapshotBuffers,
) {
    // Sites were re-pointed before this GP was requested; order those stores before the
    // snapshot loads (the heavy half of the pairing).
    heavy_barrier(registry);

    // Workers that were between tasks or idle at the snapshot are already quiescent.
    let engine = backoff.engine();
    let SnapshotBuffers { workers, threads } = snapshot;
    registry.active_workers_into(workers);
    registry.online_threads_into(threads);
    #[cfg(all(loom, test))]
    super::loom_tests::snapshot_taken();
    backoff.wait_until(WakeBy::LateReaders, |ask| {
        workers.retain(|(i, s)| !registry.worker_passed_since(*i, *s));
        threads.retain(|(t, s)| !t.passed_since(*s));
        if workers.is_empty() && threads.is_empty() {
            return None;
        }
        if ask == Ask::RequestWakes {
            workers
                .iter()
                .for_each(|(i, _)| registry.request_wake_from_worker(*i));
            threads.iter().for_each(|(t, _)| t.request_wake());
        }
        let mut late = Vec::new();
        if ask == Ask::Describe {
            late.extend(workers.iter().map(|(i, _)| {
                let task_id = registry.task_on_worker(*i);
                Holdout::Worker {
                    worker: *i,
                    task_id,
                    task_name: engine.task_name(task_id),
                }
            }));
            late.extend(describe_threads(threads));
        }
        Some(Late {
            holdouts: late,
            wakes_assured: workers.is_empty(),
        })
    });

    // Every cell load above was Acquire and saw a value stored (Release) after the scheduler
    // inserted any holdout it switched out involuntarily, so those insertions are visible to
    // this read (qs docs, "Holdouts").
    let mut holdouts = registry.holdouts();
    if !holdouts.is_empty() {
        wait_for_holdouts(backoff, registry, &mut holdouts);
    }
    // Order the quiescent-state observations before the callbacks' frees.
    fence(Ordering::SeqCst);
}

/// Waits until every holdout in `holdouts` (none yet seen to pass) has passed a voluntary
/// yield point.
fn wait_for_holdouts(
    backoff: &mut Backoff<'_>,
    registry: &QsRegistry,
    holdouts: &mut Vec<(std::sync::Arc<crate::qs::TaskReader>, u64)>,
) {
    let preempted = holdouts.iter().filter(|(t, _)| t.was_preempted()).count();
    tracing::trace!(
        target: "tramway::grace",
        holdouts = holdouts.len(),
        preempted,
        "waiting for holdouts (tasks switched out inside JIT code)"
    );
    backoff
        .engine()
        .counters
        .preempted_holdouts
        .fetch_add(preempted as u64, std::sync::atomic::Ordering::Relaxed);
    #[cfg(all(loom, test))]
    if super::loom_tests::SKIP_HOLDOUT_WAIT.with(std::cell::Cell::get) {
        holdouts.clear(); // the injected bug: holdouts are not waited for
    }
    backoff.wait_until(WakeBy::AnyTransition, |ask| {
        registry.retain_holdouts(holdouts);
        if holdouts.is_empty() {
            return None;
        }
        let late = holdouts
            .iter()
            .filter(|_| ask == Ask::Describe)
            .map(|(t, _)| Holdout::Task {
                task_id: t.id,
                task_name: t.name.clone(),
            });
        Some(Late {
            holdouts: late.collect(),
            wakes_assured: false,
        })
    });
}

/// Waits until every registered thread that was online at the snapshot has passed a
/// quiescent state (the Rude flavor's wait for threads; Tasks does it with its workers).
pub(super) fn wait_for_threads(
    backoff: &mut Backoff<'_>,
    registry: &QsRegistry,
    snapshot: &mut SnapshotBuffers,
) {
    heavy_barrier(registry);
    let threads = &mut snapshot.threads;
    registry.online_threads_into(threads);
    backoff.wait_until(WakeBy::LateReaders, |ask| {
        threads.retain(|(t, s)| !t.passed_since(*s));
        if threads.is_empty() {
            return None;
        }
        if ask == Ask::RequestWakes {
            threads.iter().for_each(|(t, _)| t.request_wake());
        }
        Some(Late {
            holdouts: match ask {
                Ask::Describe => describe_threads(threads),
                _ => Vec::new(),
            },
            wakes_assured: true,
        })
    });
    fence(Ordering::SeqCst);
}

fn describe_threads(threads: &[(Arc<ThreadReader>, QsSnapshot)]) -> Vec<Holdout> {
    threads
        .iter()
        .map(|(t, _)| Holdout::Thread {
            name: t.name.clone(),
        })
        .collect()
}
