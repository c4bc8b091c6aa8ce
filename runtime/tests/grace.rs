//! Grace periods: synchronize from every kind of caller, deferred callbacks, batching,
//! polled cookies, stalls and holdouts. Each test states the behaviour it pins down.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tramway_runtime::grace::{Flavor, GraceConfig, GraceDomain, Holdout, StallReport};
use tramway_runtime::{non_yielding, yield_now, Runtime, YieldInNonYielding};

use tramway_harness::spinner::Spinner;

fn runtime(workers: usize) -> Runtime {
    Runtime::builder()
        .workers(workers)
        .build()
        .expect("runtime")
}

fn domain(rt: &Runtime, flavor: Flavor) -> GraceDomain {
    GraceDomain::new(rt, GraceConfig::default().flavor(flavor)).expect("grace domain")
}

/// Spins (without yielding) until `flag` is set. Inside a task this holds its worker.
fn spin_until(flag: &AtomicBool) {
    while !flag.load(Ordering::Acquire) {
        std::hint::spin_loop();
    }
}

/// Sets the flag when dropped, so that a failing assertion releases a spinning task
/// instead of leaving the runtime's shutdown waiting for it.
struct ReleaseOnDrop(Arc<AtomicBool>);
impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Waits (sleeping, outside the runtime) until `cond` holds or panics after 10 s.
fn eventually(what: &str, cond: impl Fn() -> bool) {
    assert!(
        tramway_harness::wait::within(Duration::from_secs(10), cond),
        "timed out waiting for: {what}"
    );
}

#[test]
fn synchronize_from_a_task_completes_for_both_flavors() {
    for flavor in [Flavor::Tasks, Flavor::Rude] {
        let rt = runtime(2);
        let gp = domain(&rt, flavor);
        let gp2 = gp.clone();
        let h = rt
            .spawn(move || {
                for _ in 0..10 {
                    gp2.synchronize();
                }
            })
            .unwrap();
        h.join().unwrap();
        assert!(gp.stats().completed >= 10, "{flavor:?}");
    }
}

#[test]
fn synchronize_from_every_task_of_a_single_worker_does_not_wait_on_itself() {
    // One worker: if a task blocked its worker while waiting, the GP could never see the
    // worker switch and this would hang.
    let rt = runtime(1);
    let gp = domain(&rt, Flavor::Tasks);
    let handles: Vec<_> = (0..20)
        .map(|_| {
            let gp = gp.clone();
            rt.spawn(move || gp.synchronize()).unwrap()
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn synchronize_from_a_registered_online_thread_goes_offline_while_waiting() {
    let rt = runtime(2);
    let gp = domain(&rt, Flavor::Tasks);
    let reg = rt.register_thread().unwrap();
    // The thread is online; if synchronize did not take it offline, the GP would wait for
    // this very thread's QS forever.
    gp.synchronize();
    gp.synchronize();
    reg.quiescent();
    drop(reg);
}

#[test]
fn a_grace_period_waits_for_an_online_registered_thread_until_it_reports_a_qs() {
    let rt = runtime(1);
    let gp = domain(&rt, Flavor::Tasks);
    let ran = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let (to_reader, reader_rx) = std::sync::mpsc::channel::<()>();
    let (registered_tx, registered) = std::sync::mpsc::channel::<()>();
    let (rt2, d) = (rt.clone(), done.clone());
    let reader = std::thread::spawn(move || {
        let reg = rt2.register_thread().unwrap();
        registered_tx.send(()).unwrap();
        reader_rx.recv().unwrap(); // stays online, no QS, until told
                                   // Then reports until the barrier returned: a report made before a grace period
                                   // snapshotted this thread does not count for that grace period.
        while !d.load(Ordering::SeqCst) {
            reg.quiescent();
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    registered.recv().unwrap();
    let r = ran.clone();
    gp.call(move || r.store(true, Ordering::SeqCst));
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        !ran.load(Ordering::SeqCst),
        "GP ended while a registered thread was online without a QS"
    );
    to_reader.send(()).unwrap();
    gp.barrier();
    assert!(ran.load(Ordering::SeqCst));
    done.store(true, Ordering::SeqCst);
    reader.join().unwrap();
}

#[test]
fn an_offline_registered_thread_does_not_hold_up_a_grace_period() {
    let rt = runtime(1);
    let gp = domain(&rt, Flavor::Tasks);
    let reg = rt.register_thread().unwrap();
    reg.offline();
    let g = gp.clone();
    // Another thread synchronizes while this one is offline and idle.
    std::thread::spawn(move || g.synchronize()).join().unwrap();
    reg.online();
}

#[test]
fn a_task_that_never_yields_stalls_the_gp_is_named_and_nothing_runs_until_it_yields() {
    let rt = runtime(2);
    let reports: Arc<Mutex<Vec<StallReport>>> = Arc::default();
    let sink = reports.clone();
    let gp = GraceDomain::new(
        &rt,
        GraceConfig::default()
            .flavor(Flavor::Tasks)
            .stall_timeout(Duration::from_millis(50))
            .on_stall(move |r: &StallReport| sink.lock().unwrap().push(r.clone())),
    )
    .unwrap();
    let spinner = Spinner::start_named(&rt, "spinner");

    let freed = Arc::new(AtomicBool::new(false));
    let f = freed.clone();
    gp.call(move || f.store(true, Ordering::SeqCst));
    eventually("a stall report", || !reports.lock().unwrap().is_empty());
    assert!(
        !freed.load(Ordering::SeqCst),
        "callback ran while the spinner had not yielded"
    );
    let report = reports.lock().unwrap()[0].clone();
    assert!(
        report.holdouts.iter().any(|h| matches!(h,
            Holdout::Worker { task_name: Some(n), .. } if &**n == "spinner")),
        "the report names the spinner: {report}"
    );
    assert!(report.waited >= Duration::from_millis(50));
    assert!(gp.stats().stalls >= 1);

    spinner.release();
    gp.barrier();
    assert!(freed.load(Ordering::SeqCst));
}

#[test]
fn polled_cookie_turns_true_only_after_a_full_grace_period() {
    let rt = runtime(1);
    let gp = domain(&rt, Flavor::Tasks);
    let spinner = Spinner::start(&rt);
    let cookie = gp.start_poll();
    std::thread::sleep(Duration::from_millis(30));
    assert!(
        !gp.poll(&cookie),
        "cookie completed while the only worker never switched"
    );
    spinner.release();
    gp.wait(&cookie);
    assert!(gp.poll(&cookie));
    // A cookie taken now needs another GP, which an idle runtime completes at once.
    let later = gp.start_poll();
    gp.wait(&later);
    assert!(later > cookie);
}

/// GP #1 starts with the first callback and waits on a spinning task; the 1000 callbacks
/// queued while it waits all share GP #2. GP #1's stall report shows it has started (its batch
/// taken) before the 1000 are queued: a fixed sleep did not, on a loaded machine, and all
/// 1001 then shared one GP.
#[test]
fn callbacks_queued_before_a_gp_starts_share_it() {
    let rt = runtime(1);
    let (gp, stalled) = tramway_harness::stall_flag::domain_flagging_stalls(&rt);
    let spinner = Spinner::start(&rt);
    let before = gp.stats().completed;
    let ran = Arc::new(AtomicUsize::new(0));
    let r0 = ran.clone();
    gp.call(move || {
        r0.fetch_add(1, Ordering::SeqCst);
    });
    eventually("GP #1's stall report", || stalled.load(Ordering::SeqCst));
    for _ in 0..1000 {
        let r = ran.clone();
        gp.call(move || {
            r.fetch_add(1, Ordering::SeqCst);
        });
    }
    spinner.release();
    gp.barrier();
    assert_eq!(ran.load(Ordering::SeqCst), 1001);
    let gps = gp.stats().completed - before;
    assert_eq!(gps, 2, "1001 callbacks needed {gps} grace periods");
}

#[test]
fn barrier_runs_callbacks_queued_by_callbacks_only_if_queued_before_it() {
    let rt = runtime(1);
    let gp = domain(&rt, Flavor::Tasks);
    let ran = Arc::new(AtomicUsize::new(0));
    for _ in 0..100 {
        let r = ran.clone();
        gp.call(move || {
            r.fetch_add(1, Ordering::SeqCst);
        });
    }
    gp.barrier();
    assert_eq!(ran.load(Ordering::SeqCst), 100);
    assert_eq!(gp.stats().callbacks_run, 100);
}

#[test]
fn a_panicking_callback_is_counted_and_the_others_still_run() {
    let rt = runtime(1);
    let gp = domain(&rt, Flavor::Tasks);
    let ran = Arc::new(AtomicUsize::new(0));
    gp.call(|| panic!("callback failure (expected by this test)"));
    let r = ran.clone();
    gp.call(move || {
        r.fetch_add(1, Ordering::SeqCst);
    });
    gp.barrier();
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    assert_eq!(gp.stats().callbacks_panicked, 1);
}

/// A task that yields inside a non-yielding section is switched out involuntarily: its
/// worker's cell moves on, but the task may still hold a trampoline pointer.
fn holdout_scenario(flavor: Flavor) -> bool {
    let rt = Runtime::builder()
        .workers(1)
        .yield_in_non_yielding(YieldInNonYielding::RecordInvoluntary)
        .build()
        .unwrap();
    let gp = domain(&rt, flavor);
    let inside = Arc::new(AtomicBool::new(false));
    let release = Arc::new(AtomicBool::new(false));
    let _release_on_panic = ReleaseOnDrop(release.clone());
    let (i, r) = (inside.clone(), release.clone());
    let task = rt
        .spawn(move || {
            non_yielding(|| {
                i.store(true, Ordering::Release);
                while !r.load(Ordering::Acquire) {
                    yield_now(); // involuntary: we are "inside a trampoline"
                }
            });
            yield_now(); // the first voluntary yield point after the section
        })
        .unwrap();
    eventually("task inside its non-yielding section", || {
        inside.load(Ordering::Acquire)
    });
    let freed = Arc::new(AtomicBool::new(false));
    let f = freed.clone();
    gp.call(move || f.store(true, Ordering::SeqCst));
    std::thread::sleep(Duration::from_millis(100));
    let freed_early = freed.load(Ordering::SeqCst);
    release.store(true, Ordering::Release);
    task.join().unwrap();
    gp.barrier();
    assert!(freed.load(Ordering::SeqCst));
    freed_early
}

#[test]
fn tasks_flavor_waits_for_a_holdout_to_pass_a_voluntary_yield_point() {
    assert!(
        !holdout_scenario(Flavor::Tasks),
        "the GP ended while a holdout was inside"
    );
}

#[test]
fn control_rude_flavor_ignores_holdouts_as_documented() {
    // The rude flavor only forces workers through their schedulers, so the same scenario
    // ends its GP early. This shows the holdout test above can fail.
    assert!(
        holdout_scenario(Flavor::Rude),
        "rude flavor unexpectedly waited for the holdout"
    );
}

#[test]
fn gp_with_many_parked_tasks_completes() {
    let rt = runtime(2);
    let gp = domain(&rt, Flavor::Tasks);
    let ev = Arc::new(tramway_runtime::Event::new());
    let go = Arc::new(AtomicBool::new(false));
    let parked: Vec<_> = (0..2000)
        .map(|_| {
            let (ev, go) = (ev.clone(), go.clone());
            rt.spawn(move || {
                while !go.load(Ordering::Acquire) {
                    ev.wait();
                }
            })
            .unwrap()
        })
        .collect();
    for _ in 0..5 {
        gp.synchronize();
    }
    go.store(true, Ordering::Release);
    eventually("all parked tasks woken", || {
        ev.notify_all();
        parked.iter().all(|h| h.is_finished())
    });
    for h in parked {
        h.join().unwrap();
    }
}

#[test]
fn callbacks_wait_for_their_batch_but_barrier_and_synchronize_do_not() {
    let rt = runtime(1);
    let gp = GraceDomain::new(
        &rt,
        GraceConfig::default().callback_delay(Duration::from_secs(3600)),
    )
    .unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    gp.call(move || {
        r.fetch_add(1, Ordering::SeqCst);
    });
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        ran.load(Ordering::SeqCst),
        0,
        "a lazy callback ran before its batching delay"
    );
    gp.barrier(); // expedites the batch instead of waiting an hour
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    let r = ran.clone();
    gp.call(move || {
        r.fetch_add(1, Ordering::SeqCst);
    });
    gp.synchronize(); // an urgent GP takes the pending batch along
    gp.barrier();
    assert_eq!(ran.load(Ordering::SeqCst), 2);
}

#[test]
fn a_cancelled_holdout_does_not_hold_up_later_grace_periods() {
    let rt = Runtime::builder()
        .workers(1)
        .yield_in_non_yielding(YieldInNonYielding::RecordInvoluntary)
        .build()
        .unwrap();
    let gp = domain(&rt, Flavor::Tasks);
    let parked = Arc::new(AtomicBool::new(false));
    let p = parked.clone();
    let _task = rt
        .spawn(move || {
            non_yielding(|| {
                p.store(true, Ordering::Release);
                // Parked inside a non-yielding section: an involuntary switch, a holdout.
                tramway_runtime::sleep(Duration::from_secs(3600));
            })
        })
        .unwrap();
    eventually("task parked", || parked.load(Ordering::Acquire));
    rt.shutdown(); // cancels the parked holdout
    gp.synchronize(); // must not wait for a task that no longer exists
}

#[test]
fn dropping_a_domain_from_an_online_registered_thread_does_not_deadlock() {
    let rt = runtime(1);
    let gp = domain(&rt, Flavor::Tasks);
    let reg = rt.register_thread().unwrap();
    gp.call(|| ());
    drop(gp); // runs the pending callback's GP, which must not wait for this thread
    assert!(reg.is_online());
}

#[test]
fn waiting_leaves_an_offline_registered_thread_offline() {
    let rt = runtime(1);
    let gp = domain(&rt, Flavor::Tasks);
    let reg = rt.register_thread().unwrap();
    reg.offline();
    gp.synchronize();
    gp.barrier();
    assert!(
        !reg.is_online(),
        "synchronize brought an offline thread back online"
    );
    reg.online();
    gp.synchronize();
    assert!(reg.is_online());
}

#[test]
fn a_domain_needs_quiescent_state_reporting() {
    let rt = Runtime::builder()
        .workers(1)
        .qs_reporting(false)
        .build()
        .unwrap();
    assert!(matches!(
        GraceDomain::new(&rt, GraceConfig::default()),
        Err(tramway_runtime::DomainError::NoQsReporting)
    ));
}

#[test]
fn an_offline_scope_inside_a_hook_does_not_end_a_grace_period() {
    // A hook runs inside `non_yielding` on behalf of a trampoline: its return path runs
    // through trampoline code, so `offline` there must not report a quiescent state.
    let rt = runtime(1);
    let gp = domain(&rt, Flavor::Tasks);
    let (inside, release) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let _release_on_panic = ReleaseOnDrop(release.clone());
    let (i, r) = (inside.clone(), release.clone());
    let hook = rt
        .spawn(move || {
            non_yielding(|| {
                tramway_runtime::offline(|| {
                    i.store(true, Ordering::Release);
                    spin_until(&r); // "blocking I/O" inside the hook
                })
            })
        })
        .unwrap();
    eventually("hook inside its offline scope", || {
        inside.load(Ordering::Acquire)
    });
    let ran = Arc::new(AtomicBool::new(false));
    let r2 = ran.clone();
    gp.call(move || r2.store(true, Ordering::SeqCst));
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        !ran.load(Ordering::SeqCst),
        "a GP ended while a hook was inside its trampoline"
    );
    release.store(true, Ordering::Release);
    hook.join().unwrap();
    gp.barrier();
    assert!(ran.load(Ordering::SeqCst));
}
