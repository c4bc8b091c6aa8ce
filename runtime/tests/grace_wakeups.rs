//! Who wakes a grace period that waits for registered threads: only the late reader, and
//! every domain's waiter, including a driver that ran another domain's grace period inline.
//! Each test states the behaviour it pins down; none asserts a time.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tramway_runtime::grace::{Flavor, GraceConfig, GraceDomain};
use tramway_runtime::Runtime;

/// How long a test waits for what must happen before it fails.
const PATIENCE: Duration = Duration::from_secs(10);

/// A thread that reports all the time while a grace period waits for another one must not
/// wake the waiter at every report: only the late thread's report ends the wait. (Before,
/// every report woke it; on two CPUs the waiter then kept taking the CPU the late reader
/// needed, and cold grace periods with two readers took twice liburcu's time.)
///
/// The busy thread may still wake the waiter a few times, and the bound is tight (given the
/// hardware's ordering: x86-TSO, or ARMv8's multi-copy atomicity): at most
/// once before it passes (a snapshot taken inside a report, between the cell's return to
/// active and the report's re-check behind its fence, sees it late, and that re-check takes
/// the request), and at most twice after (a request the waiter stores just after its last
/// read of the busy cell, and one taken since; any later read sees the pass). A run under
/// load showed the first case (two wake-ups), which a bound of one had reported as a
/// failure. Nothing here is timed: the test waits for a stall report, which proves the GP
/// waits and has asked for wake-ups, then for the busy thread's next 10 000 reports.
#[test]
fn only_the_reader_a_grace_period_waits_for_wakes_it() {
    const REPORTS: u64 = 10_000;
    let rt = Runtime::builder().workers(1).build().expect("runtime");
    let (gp, stalled) = tramway_harness::stall_flag::domain_flagging_stalls(&rt);
    let stop = Arc::new(AtomicBool::new(false));
    let reports = Arc::new(AtomicU64::new(0));
    let (release_late, late_rx) = std::sync::mpsc::channel::<()>();
    let (registered_tx, registered) = std::sync::mpsc::channel::<()>();
    let (rt_late, stop_late, tx) = (rt.clone(), stop.clone(), registered_tx.clone());
    let late = std::thread::spawn(move || {
        let reg = rt_late.register_thread().unwrap();
        tx.send(()).unwrap();
        late_rx.recv().unwrap(); // online without a report until released
        while !stop_late.load(Ordering::SeqCst) {
            reg.quiescent();
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    let (rt_busy, stop_busy, busy_reports) = (rt.clone(), stop.clone(), reports.clone());
    let busy = std::thread::spawn(move || {
        let reg = rt_busy.register_thread().unwrap();
        registered_tx.send(()).unwrap();
        while !stop_busy.load(Ordering::SeqCst) {
            reg.quiescent();
            busy_reports.fetch_add(1, Ordering::SeqCst);
        }
    });
    registered.recv().unwrap();
    registered.recv().unwrap();
    let before = gp.stats();
    let waiter_gp = gp.clone();
    let waiter = std::thread::spawn(move || waiter_gp.synchronize());
    let stall_reported = || stalled.load(Ordering::SeqCst);
    assert!(
        tramway_harness::wait::within(PATIENCE, stall_reported),
        "no stall report of the waiting grace period"
    );
    let from = reports.load(Ordering::SeqCst);
    let reported_more = || reports.load(Ordering::SeqCst) >= from + REPORTS;
    assert!(
        tramway_harness::wait::within(PATIENCE, reported_more),
        "the busy thread stopped reporting"
    );
    let while_late = gp.stats();
    assert_eq!(
        while_late.completed, before.completed,
        "the grace period ended while a registered thread was online without a report"
    );
    let woke = while_late.reader_wakeups - before.reader_wakeups;
    assert!(
        woke <= 3,
        "a thread that reported {REPORTS}+ times while the GP waited for another woke it {woke} times"
    );
    release_late.send(()).unwrap();
    waiter.join().unwrap();
    let after = gp.stats();
    assert!(after.completed > before.completed);
    assert!(
        after.reader_wakeups > while_late.reader_wakeups,
        "the late reader's report woke the waiter"
    );
    stop.store(true, Ordering::SeqCst);
    late.join().unwrap();
    busy.join().unwrap();
}

/// A driver that runs another domain's grace period inline (a callback of domain A
/// synchronizing on domain B over the same runtime) must keep its own registration with the
/// readers' waker. Before the fix, B's wait removed every registration of the thread, and no
/// reader woke A's next grace periods that waited for a registered thread: only the waiter's
/// safety-net timeout ended them (before the net existed, the 1 s stall timeout, without a
/// stall report since the reader had long passed), and `lost_wakeups` counts that.
#[test]
fn a_driver_that_ran_another_domains_grace_period_inline_is_still_woken() {
    let rt = Runtime::builder().workers(1).build().expect("runtime");
    let a =
        GraceDomain::new(&rt, GraceConfig::default().flavor(Flavor::Tasks)).expect("grace domain");
    let b =
        GraceDomain::new(&rt, GraceConfig::default().flavor(Flavor::Tasks)).expect("grace domain");
    let stop = Arc::new(AtomicBool::new(false));
    let (rt_reader, stop_reader) = (rt.clone(), stop.clone());
    let (registered_tx, registered) = std::sync::mpsc::channel::<()>();
    // Reports every 5 ms: grace periods waiting for it spin out and park.
    let reader = std::thread::spawn(move || {
        let reg = rt_reader.register_thread().unwrap();
        registered_tx.send(()).unwrap();
        while !stop_reader.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
            reg.quiescent();
        }
    });
    registered.recv().unwrap();
    let b_inline = b.stats().inline_grace_periods;
    let on_a_driver = b.clone();
    a.call(move || on_a_driver.synchronize());
    a.barrier();
    assert!(
        b.stats().inline_grace_periods > b_inline,
        "B's grace period ran inline on A's driver"
    );
    // Let A's driver go idle, so that the tasks below have switched out (their worker is then
    // quiescent) by the time the driver snapshots: each grace period waits for the
    // registered thread alone, the wait that parks expecting the thread's wake-up.
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(20));
        let a_for_task = a.clone();
        rt.spawn(move || a_for_task.synchronize())
            .unwrap()
            .join()
            .unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    reader.join().unwrap();
    assert_eq!(
        a.stats().lost_wakeups,
        0,
        "A's grace periods were ended by their safety-net timeout, not by the reader's report"
    );
    assert_eq!(b.stats().lost_wakeups, 0);
}
