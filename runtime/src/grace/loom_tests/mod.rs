//! Model checking of the real grace-period engine with loom, over fake readers.
//!
//! Run with:
//! `RUSTFLAGS="--cfg loom" cargo test -p tramway-runtime --lib --release loom`
//!
//! The engine (driver thread, sequencing, callbacks, waiters, backoff, the Tasks flavor's
//! wait) and the reader transitions are the crate's own code, built on loom's primitives
//! (`primitive.rs`). Only the scheduler is replaced: a loom thread plays a worker that runs a
//! task inside "old code", switches, and runs it again, calling the same `qs` transitions the
//! worker loop calls. A registered thread is played the same way.
//!
//! The property, checked by the reader itself: whenever it has loaded the old target of the
//! patch site and is still "inside" it, the updater has not freed it. The updater re-points
//! the site, then frees the old target after `synchronize()` returns, or in a callback
//! (`call`) after which it waits with `barrier()`.
//!
//! A second model checks liveness of the wake-up protocol: a grace period that waits for a
//! registered thread parks expecting its wake-up, which under loom is a plain `park`, so a
//! lost wake-up is a deadlock loom reports (`wake.rs`, with a thread that reports
//! `quiescent()`, goes `offline()`, blocks in an offline guard or unregisters; without the
//! fence before `offline()` reads the request, or with an unregistration that does not go
//! offline first, loom finds the deadlock too). A two-domain variant has two updaters wait,
//! each in its own domain's grace period over the same registry, for one thread that goes
//! offline once: that one transition must wake both (with a wake that unparks only the first
//! registered waiter, loom finds the deadlock).
//!
//! Controls inject a fault and must be caught: the thread's second read of a wake request
//! dropped, and an unregistration that does not go offline (both in `qs/transitions.rs`), a
//! wake that unparks one waiter (`qs/waker.rs`; the three run in a child process, as loom
//! aborts after reporting a deadlock), the reader's barrier dropped (in
//! `qs/barrier.rs`), an open batch sealed when it runs instead of when its GP is claimed (in
//! `callbacks.rs`), `synchronize` waiting for the grace period in progress instead of the
//! next one (in `driver.rs`), the holdout wait skipped, an inactive cell trusted without the
//! asleep flag, and a parked task's code references published after its cell store (in
//! `qs/transitions.rs`). loom also checks for leaks: the yielding-code model found a driver
//! that exited at shutdown with a held callback that had just become free (fixed: after a
//! recheck, which releases the state lock, the driver looks at everything again).

use std::sync::atomic::Ordering;
use std::time::Duration;

mod wake;

pub(in crate::grace) use self::wake::snapshot_taken;

use super::driver::Engine;
use super::{GraceConfig, GraceDomain};
use crate::primitive::{Arc, AtomicBool, AtomicU64};
use crate::qs::{self, QsRegistry, TaskReader};

/// Preemptions per execution loom explores (its default is unbounded, which does not end for
/// a model with a driver thread). `LOOM_MAX_PREEMPTIONS` overrides it.
const PREEMPTION_BOUND: usize = 3;

const OLD: u64 = 1;
const NEW: u64 = 2;

/// How the updater waits before it frees the old target.
#[derive(Clone, Copy)]
enum Free {
    AfterSynchronize,
    InCallbackThenBarrier,
    /// `call_for_code` with the old target's code range.
    InCodeCallback,
    /// Pushed into an open batch (`batch.rs`) that an earlier item already queued, so that
    /// its GP may be claimed, and run, around the push.
    InOpenBatch,
}

/// The open batch of the `InOpenBatch` model: items are flags to set when the batch runs.
#[derive(Default)]
struct OpenItems {
    items: Vec<Arc<AtomicBool>>,
    queued: bool,
}

/// A queued batch over [`OpenItems`], the protocol of `batch.rs` as an owner follows it.
struct ModelBatch {
    open: Arc<crate::primitive::Mutex<OpenItems>>,
    items: Vec<Arc<AtomicBool>>,
}

impl ModelBatch {
    /// Pushes `item` and queues a batch if none is queued (the owner's side).
    fn push(
        domain: &GraceDomain,
        open: &Arc<crate::primitive::Mutex<OpenItems>>,
        item: Arc<AtomicBool>,
    ) {
        let mut st = crate::primitive::lock(open);
        st.items.push(item);
        let queue = !std::mem::replace(&mut st.queued, true);
        drop(st);
        if queue {
            domain.call_batch(Box::new(ModelBatch {
                open: Arc::clone(open),
                items: Vec::new(),
            }));
        }
    }
}

impl super::CallbackBatch for ModelBatch {
    fn seal(&mut self) {
        let mut st = crate::primitive::lock(&self.open);
        self.items = std::mem::take(&mut st.items);
        st.queued = false;
    }

    fn split_referenced(
        &mut self,
        _referenced: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Option<Box<dyn super::CallbackBatch>> {
        None
    }

    fn run(self: Box<Self>) {
        for item in &self.items {
            item.store(true, Ordering::Release);
        }
    }
}

/// Which kind of reader the model runs.
#[derive(Clone, Copy)]
enum ReaderKind {
    /// A worker runs a task inside old code, switches (voluntarily) and runs it again.
    Worker,
    /// A registered thread runs old code, reports `quiescent()` and runs it again.
    RegisteredThread,
    /// A registered thread runs old code, blocks offline (the offline guard) and runs again.
    OfflineGuard,
    /// A task inside old code is switched out *involuntarily* on worker 0 (a yield inside a
    /// non-yielding section), resumes on worker 1 still inside it, and only then yields
    /// voluntarily: the holdout wait is what keeps the code alive meanwhile.
    Holdout,
    /// A task inside old *yielding* code parks voluntarily on worker 0 with a code reference
    /// into it (its stack scan), resumes on worker 1 still inside it, and only then parks
    /// again at depth 0: the reference is what keeps the code alive meanwhile (`crate::code`).
    ParkedInCode,
}

/// The address a `ParkedInCode` reader's stack points at, inside the old target's range.
const OLD_CODE: (usize, usize) = (0x1000, 0x1040);

/// A model checker bounded to [`PREEMPTION_BOUND`] preemptions (unless
/// `LOOM_MAX_PREEMPTIONS` says otherwise).
pub(super) fn model_builder() -> loom::model::Builder {
    let mut builder = loom::model::Builder::new();
    if std::env::var_os("LOOM_MAX_PREEMPTIONS").is_none() {
        builder.preemption_bound = Some(PREEMPTION_BOUND);
    }
    builder
}

/// A registry of `workers` fake workers and a grace domain over it, with its driver: no
/// callback delay, and no stall report within a model.
pub(super) fn model_domain(workers: usize) -> (Arc<QsRegistry>, GraceDomain) {
    let registry = Arc::new(QsRegistry::new(workers));
    let engine = model_engine(&registry);
    (registry, GraceDomain::start(engine).expect("driver"))
}

/// A grace-period engine over `registry` without a driver (its grace periods run only inline,
/// in the OS threads that wait for them): no callback delay, and no stall report.
pub(super) fn model_engine(registry: &Arc<QsRegistry>) -> Arc<Engine> {
    let config = GraceConfig::default()
        .callback_delay(Duration::ZERO)
        .stall_timeout(Duration::from_secs(3600));
    Arc::new(Engine::new(Arc::clone(registry), None, config))
}

fn model(reader_kind: ReaderKind, free: Free) {
    let builder = model_builder();
    builder.check(move || {
        let (registry, domain) = model_domain(2);
        let site = Arc::new(AtomicU64::new(OLD));
        let freed = Arc::new(AtomicBool::new(false));

        // Inside code: if it is the old target, it must not have been freed, on entry nor on
        // the way out (`inside` runs while the reader is still inside it).
        let run_site = {
            let (site, freed) = (Arc::clone(&site), Arc::clone(&freed));
            move |inside: &dyn Fn()| {
                let old = site.load(Ordering::Acquire) == OLD;
                let check = || {
                    assert!(
                        !(old && freed.load(Ordering::Acquire)),
                        "a grace period ended while a reader was inside the old target"
                    );
                };
                check();
                inside();
                check();
            }
        };
        let reader = {
            let registry = Arc::clone(&registry);
            loom::thread::spawn(move || match reader_kind {
                ReaderKind::Worker => {
                    qs::worker_started(&registry, 0);
                    let worker = registry.worker(0);
                    let task = std::sync::Arc::new(TaskReader::new(1, None));
                    for _ in 0..2 {
                        qs::switch_in(&registry, worker, &task);
                        run_site(&|| {});
                        qs::switch_out_voluntary(&registry, worker, &task, None);
                    }
                    qs::worker_stopped();
                }
                ReaderKind::RegisteredThread => {
                    let reg = crate::qs::ThreadRegistration::register(&registry).expect("register");
                    run_site(&|| {});
                    reg.quiescent();
                    run_site(&|| {});
                    drop(reg);
                }
                ReaderKind::OfflineGuard => {
                    let reg = crate::qs::ThreadRegistration::register(&registry).expect("register");
                    run_site(&|| {});
                    drop(qs::OfflineGuard::new()); // a blocking call, quiescent
                    run_site(&|| {});
                    drop(reg);
                }
                ReaderKind::Holdout => {
                    // One OS thread plays both workers in turn (a task migrates between them).
                    let task = std::sync::Arc::new(TaskReader::new(1, None));
                    let (w0, w1) = (registry.worker(0), registry.worker(1));
                    qs::worker_started(&registry, 0);
                    qs::switch_in(&registry, w0, &task);
                    run_site(&|| {
                        qs::switch_out_involuntary(&registry, w0, &task, false);
                        qs::worker_started(&registry, 1);
                        qs::switch_in(&registry, w1, &task);
                    });
                    qs::switch_out_voluntary(&registry, w1, &task, None);
                    qs::worker_stopped();
                }
                ReaderKind::ParkedInCode => {
                    let task = std::sync::Arc::new(TaskReader::new(1, None));
                    let (w0, w1) = (registry.worker(0), registry.worker(1));
                    qs::worker_started(&registry, 0);
                    qs::switch_in(&registry, w0, &task);
                    run_site(&|| {
                        let refs = crate::code::CodeRefs::Words(Box::new([OLD_CODE.0 + 8]));
                        qs::switch_out_voluntary(&registry, w0, &task, Some(refs));
                        qs::worker_started(&registry, 1);
                        qs::switch_in(&registry, w1, &task);
                    });
                    qs::switch_out_voluntary(&registry, w1, &task, None);
                    qs::worker_stopped();
                }
            })
        };

        let open = Arc::new(crate::primitive::Mutex::new(OpenItems::default()));
        if let Free::InOpenBatch = free {
            // An earlier retire: it queues the batch, whose GP may start at once.
            ModelBatch::push(&domain, &open, Arc::new(AtomicBool::new(false)));
        }
        site.store(NEW, Ordering::Release);
        match free {
            Free::AfterSynchronize => {
                domain.synchronize();
                freed.store(true, Ordering::Release);
            }
            Free::InCallbackThenBarrier => {
                let f = Arc::clone(&freed);
                domain.call(move || f.store(true, Ordering::Release));
                domain.barrier();
                assert!(freed.load(Ordering::Acquire), "barrier ran the callback");
            }
            Free::InCodeCallback => {
                // Ranged: it may be held back (then the barrier does not wait for it). The
                // reader checks that it never runs while the reader is inside the old code.
                let f = Arc::clone(&freed);
                let old_code = std::slice::from_ref(&(OLD_CODE.0..OLD_CODE.1));
                domain.call_for_code(old_code, move || f.store(true, Ordering::Release));
                domain.barrier();
            }
            Free::InOpenBatch => {
                ModelBatch::push(&domain, &open, Arc::clone(&freed));
                domain.barrier();
                assert!(freed.load(Ordering::Acquire), "barrier ran the batch");
            }
        }
        reader.join().expect("reader");
        drop(domain);
    });
}

#[test]
fn loom_a_worker_past_its_switch_never_runs_code_freed_after_synchronize() {
    model(ReaderKind::Worker, Free::AfterSynchronize);
}

#[test]
fn loom_a_worker_past_its_switch_never_runs_code_freed_by_a_callback() {
    model(ReaderKind::Worker, Free::InCallbackThenBarrier);
}

#[test]
fn loom_a_worker_past_its_switch_never_runs_code_freed_by_an_open_batch() {
    model(ReaderKind::Worker, Free::InOpenBatch);
}

std::thread_local! {
    /// Fault injection for the open-batch control: batches are sealed when they run instead
    /// of when their GP is claimed (`callbacks::seal_at_run`).
    pub(super) static SEAL_AT_RUN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The control for open batches: a batch sealed when it runs, not when its GP is claimed,
/// takes items pushed while the GP ran, whose code the GP's snapshot may have missed.
#[test]
#[should_panic(expected = "a grace period ended while a reader was inside the old target")]
fn loom_control_a_batch_sealed_when_it_runs_frees_code_under_a_reader() {
    SEAL_AT_RUN.with(|f| f.set(true));
    model(ReaderKind::Worker, Free::InOpenBatch);
}

#[test]
fn loom_a_registered_thread_past_quiescent_never_runs_freed_code() {
    model(ReaderKind::RegisteredThread, Free::AfterSynchronize);
}

#[test]
fn loom_a_registered_thread_back_from_an_offline_guard_never_runs_freed_code() {
    model(ReaderKind::OfflineGuard, Free::AfterSynchronize);
}

#[test]
fn loom_a_holdout_keeps_its_code_until_its_voluntary_yield() {
    model(ReaderKind::Holdout, Free::AfterSynchronize);
}

#[test]
fn loom_a_task_parked_inside_yielding_code_keeps_the_code_its_stack_points_into() {
    model(ReaderKind::ParkedInCode, Free::InCodeCallback);
}

/// The control for the code-reference ordering: references published *after* the worker's
/// cell store (instead of before) let a grace period see the switch but not the references.
#[test]
#[should_panic(expected = "a grace period ended while a reader was inside the old target")]
fn loom_control_code_references_published_after_the_cell_store_are_missed() {
    qs::PUBLISH_CODE_REFS_LATE.with(|f| f.set(true));
    model(ReaderKind::ParkedInCode, Free::InCodeCallback);
}

std::thread_local! {
    /// Fault injection for the holdout control: the Tasks wait skips its holdout phase.
    pub(super) static SKIP_HOLDOUT_WAIT: std::cell::Cell<bool> =
        const { std::cell::Cell::new(false) };
}

/// A control for the holdout phase: without it the model finds the code freed under a task
/// that was switched out inside it.
#[test]
#[should_panic(expected = "a grace period ended while a reader was inside the old target")]
fn loom_control_without_the_holdout_wait_a_grace_period_ends_under_a_holdout() {
    SKIP_HOLDOUT_WAIT.with(|f| f.set(true));
    model(ReaderKind::Holdout, Free::AfterSynchronize);
}

std::thread_local! {
    /// Fault injection for the sequencer control: `request_next` returns the GP in progress
    /// (or the last one) instead of the next one. Per test thread, as `SKIP_READER_BARRIER`.
    pub(super) static WAIT_FOR_CURRENT_GP: std::cell::Cell<bool> =
        const { std::cell::Cell::new(false) };
}

/// A control for the sequencer itself: a `synchronize` that waits for the grace period in
/// progress instead of the next one returns before the readers were waited for.
#[test]
#[should_panic(expected = "a grace period ended while a reader was inside the old target")]
fn loom_control_waiting_for_the_current_instead_of_the_next_grace_period_is_caught() {
    WAIT_FOR_CURRENT_GP.with(|f| f.set(true));
    model(ReaderKind::Worker, Free::AfterSynchronize);
}

/// The control: without the reader's barrier the model checker finds the store-buffering
/// execution in which the grace period ends under the reader.
#[test]
#[should_panic(expected = "a grace period ended while a reader was inside the old target")]
fn loom_control_without_the_reader_barrier_a_grace_period_ends_under_the_reader() {
    qs::SKIP_READER_BARRIER.with(|skip| skip.set(true));
    model(ReaderKind::Worker, Free::AfterSynchronize);
}

/// The asleep skip of the heavy barrier (qs docs, "Ordering", "Asleep workers"), in the
/// membarrier mode where a worker's switch-in has no fence at all (the reader barrier is
/// dropped, as `light_barrier` is a compiler barrier there). A grace period that reads the
/// worker's asleep flag set after its fence may skip the membarrier: the worker's wake-up swap
/// then orders its next site load after the grace period's site store. `check_asleep: false`
/// is the control, a grace period that trusts an inactive cell alone: the model checker must
/// find the reader running the old target after the grace period freed it.
fn asleep_model(check_asleep: bool) {
    let builder = model_builder();
    builder.check(move || {
        qs::SKIP_READER_BARRIER.with(|skip| skip.set(true));
        let registry = Arc::new(QsRegistry::new(1));
        let site = Arc::new(AtomicU64::new(OLD));
        let freed = Arc::new(AtomicBool::new(false));
        // The worker starts idle and asleep (cell inactive, flag set), then wakes and runs a
        // task that calls the site.
        qs::worker_sleeps(registry.worker(0));
        let reader = {
            let (registry, site, freed) = (registry.clone(), site.clone(), freed.clone());
            loom::thread::spawn(move || {
                qs::worker_started(&registry, 0);
                let worker = registry.worker(0);
                qs::worker_wakes(worker);
                let task = std::sync::Arc::new(TaskReader::new(1, None));
                qs::switch_in(&registry, worker, &task);
                if site.load(Ordering::Acquire) == OLD {
                    assert!(
                        !freed.load(Ordering::Acquire),
                        "a grace period ended while a reader was inside the old target"
                    );
                }
                qs::switch_out_voluntary(&registry, worker, &task, None);
                qs::worker_stopped();
            })
        };
        site.store(NEW, Ordering::Release);
        // The grace period: the heavy barrier's fence, then the skip decision and the check.
        crate::primitive::fence(Ordering::SeqCst);
        let skip_membarrier = !check_asleep || !registry.any_worker_awake();
        let mut active = Vec::new();
        registry.active_workers_into(&mut active);
        if skip_membarrier && active.is_empty() {
            freed.store(true, Ordering::Release); // nobody to wait for: the GP ends at once
        }
        reader.join().expect("reader");
    });
}

#[test]
fn loom_a_grace_period_may_skip_the_membarrier_for_an_asleep_worker() {
    asleep_model(true);
}

#[test]
#[should_panic(expected = "a grace period ended while a reader was inside the old target")]
fn loom_control_trusting_an_inactive_cell_without_the_asleep_flag_is_caught() {
    asleep_model(false);
}

/// The holdout model with the old code as a causality-tracked cell: a task that loaded the old
/// target is switched out inside it, resumes on a worker the grace period does not wait for,
/// still reads the code, and leaves the holdout set at its voluntary yield. The updater's write
/// after `synchronize` stands for the free; loom reports a causality violation unless the read
/// happens-before it, which the holdout removal must provide to a grace period that skips the
/// set's lock (review of 93ed332: with a `Relaxed` decrement of the holdout count it failed).
#[test]
fn loom_a_migrated_holdout_reads_its_code_before_the_free() {
    model_builder().check(|| {
        let (registry, domain) = model_domain(2);
        let code = Arc::new(loom::cell::UnsafeCell::new(0u64));
        let site = Arc::new(AtomicU64::new(OLD));
        let reader = {
            let (registry, code, site) = (registry.clone(), code.clone(), site.clone());
            loom::thread::spawn(move || {
                let task = std::sync::Arc::new(TaskReader::new(1, None));
                let (w0, w1) = (registry.worker(0), registry.worker(1));
                qs::worker_started(&registry, 0);
                qs::switch_in(&registry, w0, &task);
                let old = site.load(Ordering::Acquire) == OLD;
                qs::switch_out_involuntary(&registry, w0, &task, false);
                qs::worker_started(&registry, 1);
                qs::switch_in(&registry, w1, &task);
                if old {
                    // SAFETY: loom checks this read against the updater's write below.
                    code.with(|p| unsafe { *p }); // still inside the old code
                }
                qs::switch_out_voluntary(&registry, w1, &task, None);
                qs::worker_stopped();
            })
        };
        site.store(NEW, Ordering::Release);
        domain.synchronize();
        // SAFETY: as above; this is the write the grace period must order after the read.
        code.with_mut(|p| unsafe { *p = 1 }); // the free
        reader.join().expect("reader");
        drop(domain);
    });
}
