//! The wake-up model (see the parent module's docs): liveness of the protocol by which a
//! registered thread's report wakes a grace period that waits for it. The grace period parks
//! expecting the wake-up, a plain `park` under loom, so a lost wake-up is a deadlock loom
//! reports. The thread ends the wait by `quiescent()`, `offline()`, an offline guard
//! (`crate::offline`) or unregistering; in the two-domain variant, one `offline()` ends the
//! waits of two grace periods of two domains over the same readers.

use std::sync::atomic::Ordering;

use super::{model_builder, model_domain, model_engine};
use crate::grace::waiters::Until;
use crate::primitive::{Arc, AtomicBool, AtomicUsize};
use crate::qs;

std::thread_local! {
    /// The wake-up model runs (per test, as the fault-injection flags): the hook below then
    /// signals its reader.
    static WAKE_MODEL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

loom::lazy_static! {
    /// How many of the wake-up model's grace periods have snapshotted the readers (fresh in
    /// every execution).
    static ref SNAPSHOTS_TAKEN: AtomicUsize = AtomicUsize::new(0);
}

/// The hook `tasks::wait_for_readers` calls right after its reader snapshot.
pub(in crate::grace) fn snapshot_taken() {
    if WAKE_MODEL.with(std::cell::Cell::get) {
        SNAPSHOTS_TAKEN.fetch_add(1, Ordering::Release);
    }
}

/// Spins (yielding to loom) until `n` grace periods have snapshotted the readers.
fn wait_for_snapshots(n: usize) {
    while SNAPSHOTS_TAKEN.load(Ordering::Acquire) < n {
        loom::thread::yield_now();
    }
}

/// A one-way handshake between the models' threads: set once, waited for by blocking.
type Flag = (crate::primitive::Mutex<bool>, crate::primitive::Condvar);

/// A flag not set yet.
fn flag() -> Arc<Flag> {
    Arc::new((
        crate::primitive::Mutex::new(false),
        crate::primitive::Condvar::new(),
    ))
}

/// Sets `flag` and wakes whoever blocks on it.
fn set(flag: &Flag) {
    *crate::primitive::lock(&flag.0) = true;
    flag.1.notify_all();
}

/// Blocks until `flag` is set.
fn block_until(flag: &Flag) {
    let mut finished = crate::primitive::lock(&flag.0);
    while !*finished {
        finished = crate::primitive::wait(&flag.1, finished);
    }
}

/// How the wake-up model's thread ends the grace period's wait for it.
#[derive(Clone, Copy)]
enum Report {
    /// `quiescent()`, then it blocks online.
    Quiescent,
    /// `offline()`, then it blocks offline.
    Offline,
    /// It blocks inside `crate::offline` (the offline guard), and comes back online after.
    OfflineGuard,
    /// It unregisters (drops its registration), then blocks.
    Unregister,
}

/// The wake-up protocol, for liveness: a registered thread that the grace period has
/// snapshotted online reports once (`quiescent()` or `offline()`) and then blocks until the
/// updater's `synchronize()` returns. The updater's grace period waits for that one report;
/// its reader is a registered thread, so it parks expecting the thread's wake-up
/// (`primitive::thread::park_expecting_unpark`, a plain `park` under loom). A wake-up the
/// protocol can lose is a deadlock, which loom reports.
fn wake_model(report: Report) {
    WAKE_MODEL.with(|on| on.set(true));
    let mut builder = model_builder();
    builder.max_branches = 100_000;
    builder.check(move || {
        let (registry, domain) = model_domain(1);
        let registered = Arc::new(AtomicBool::new(false));
        let done = flag();
        let reader = {
            let (registry, registered, done) = (
                Arc::clone(&registry),
                Arc::clone(&registered),
                Arc::clone(&done),
            );
            loom::thread::spawn(move || {
                let reg = crate::qs::ThreadRegistration::register(&registry).expect("register");
                registered.store(true, Ordering::Release);
                wait_for_snapshots(1);
                let block_until_done = || block_until(&done);
                match report {
                    Report::Quiescent => {
                        reg.quiescent();
                        block_until_done();
                    }
                    Report::Offline => {
                        reg.offline();
                        block_until_done();
                    }
                    Report::OfflineGuard => {
                        crate::offline(block_until_done);
                        assert!(reg.is_online(), "back online after the guard");
                    }
                    Report::Unregister => {
                        drop(reg);
                        block_until_done();
                        return;
                    }
                }
                drop(reg);
            })
        };
        while !registered.load(Ordering::Acquire) {
            loom::thread::yield_now();
        }
        domain.synchronize();
        set(&done);
        reader.join().expect("reader");
        drop(domain);
    });
}

/// Two domains over one registry (the waker and its list of waiter threads are the
/// registry's): each waits, in a grace period run inline by its own updater thread, for the
/// same registered thread, which goes offline once. That one transition must wake both
/// waiters, whichever of them registered with the waker first and whenever the other
/// deregisters. Going offline needs no wait for the snapshots (a grace period that snapshots
/// the thread offline does not wait for it), and neither domain has a driver (their grace
/// periods run only inline): with spin-waits for the snapshots, or with the drivers, the model
/// did not finish in ten minutes.
fn two_domain_wake_model() {
    WAKE_MODEL.with(|on| on.set(true));
    let mut builder = model_builder();
    builder.max_branches = 100_000;
    builder.check(|| {
        let registry = Arc::new(crate::qs::QsRegistry::new(0));
        let (a, b) = (model_engine(&registry), model_engine(&registry));
        let (registered, done) = (flag(), flag());
        let reader = {
            let (registry, registered, done) = (
                Arc::clone(&registry),
                Arc::clone(&registered),
                Arc::clone(&done),
            );
            loom::thread::spawn(move || {
                let reg = crate::qs::ThreadRegistration::register(&registry).expect("register");
                set(&registered);
                reg.offline();
                block_until(&done);
                drop(reg);
            })
        };
        block_until(&registered);
        let second = {
            let b = Arc::clone(&b);
            loom::thread::spawn(move || b.wait_for(Until::Completed, |seq| seq.request_next()))
        };
        a.wait_for(Until::Completed, |seq| seq.request_next());
        second.join().expect("second updater");
        set(&done);
        reader.join().expect("reader");
        drop((a, b));
    });
}

#[test]
fn loom_one_report_wakes_the_grace_periods_of_two_domains() {
    two_domain_wake_model();
}

/// The control for two domains: a wake that unparks only the first registered waiter
/// leaves the other domain's grace period asleep for good.
#[test]
fn loom_control_a_wake_that_unparks_one_waiter_loses_the_other() {
    expect_deadlock_in_child("grace::loom_tests::wake::faulty_two_domain_model_in_a_child_process");
}

/// The faulty model of the control above (run only as its child process).
#[test]
#[ignore = "run by loom_control_a_wake_that_unparks_one_waiter_loses_the_other"]
fn faulty_two_domain_model_in_a_child_process() {
    qs::WAKE_ONLY_FIRST_WAITER.with(|f| f.set(true));
    two_domain_wake_model();
}

#[test]
fn loom_a_grace_period_waiting_for_a_registered_thread_is_always_woken() {
    wake_model(Report::Quiescent);
}

#[test]
fn loom_a_grace_period_waiting_for_a_thread_that_goes_offline_is_always_woken() {
    wake_model(Report::Offline);
}

#[test]
fn loom_a_grace_period_waiting_for_a_thread_in_an_offline_guard_is_always_woken() {
    wake_model(Report::OfflineGuard);
}

#[test]
fn loom_a_grace_period_waiting_for_a_thread_that_unregisters_is_always_woken() {
    wake_model(Report::Unregister);
}

/// Runs the ignored test `child` (a faulty wake-up model) in a child process, which must die
/// of the deadlock loom reports (loom aborts while unwinding through the deadlocked threads'
/// state, so a faulty model cannot run in this process).
fn expect_deadlock_in_child(child: &str) {
    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            child,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .output()
        .expect("run the faulty model");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("deadlock; threads"),
        "the model checker must find the lost wake-up (status {:?}):\n{stderr}",
        out.status
    );
}

/// The control: a thread that reads the wake request only before its fence can miss it
/// while the grace period misses its report, and the waiter sleeps for good.
#[test]
fn loom_control_a_wake_request_read_only_before_the_fence_is_lost() {
    expect_deadlock_in_child("grace::loom_tests::wake::faulty_wake_model_in_a_child_process");
}

/// The faulty model of the control above (run only as its child process).
#[test]
#[ignore = "run by loom_control_a_wake_request_read_only_before_the_fence_is_lost"]
fn faulty_wake_model_in_a_child_process() {
    qs::SKIP_LATE_WAKE_CHECK.with(|f| f.set(true));
    wake_model(Report::Quiescent);
}

/// The control for unregistering: a thread that leaves the registry without going offline
/// never wakes the grace period that waits for it.
#[test]
fn loom_control_an_unregistration_that_does_not_go_offline_is_never_seen() {
    expect_deadlock_in_child("grace::loom_tests::wake::faulty_unregister_model_in_a_child_process");
}

/// The faulty model of the control above (run only as its child process).
#[test]
#[ignore = "run by loom_control_an_unregistration_that_does_not_go_offline_is_never_seen"]
fn faulty_unregister_model_in_a_child_process() {
    qs::SKIP_OFFLINE_AT_UNREGISTER.with(|f| f.set(true));
    wake_model(Report::Unregister);
}
