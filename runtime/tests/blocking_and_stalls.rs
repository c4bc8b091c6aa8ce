//! Blocking waits of registered threads, registrations kept in thread-locals, and stall
//! reports of every flavor. Each test pins down one behaviour that an earlier version got
//! wrong (issue 11, items 3-5).

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use tramway_runtime::grace::{Flavor, GraceConfig, GraceDomain, Holdout, StallReport};
use tramway_runtime::{channel, Event, Runtime, ThreadRegistration};

/// Runs `f` on a fresh thread and returns its result, or `None` if it has not finished after
/// `timeout` (a deadlock; the thread is leaked).
fn finishes_within<T: Send + 'static>(
    timeout: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(timeout).ok()
}

/// A registered, online thread that blocks in `wait` while a task needs a grace period to end
/// before it can let `wait` return: the thread must count as quiescent while it blocks.
fn blocking_wait_of_an_online_registered_thread_does_not_hold_up_grace_periods(
    wait: impl FnOnce(&Runtime, GraceDomain) + Send + 'static,
) {
    let rt = Runtime::builder().workers(1).build().unwrap();
    let gp = GraceDomain::new(&rt, GraceConfig::default()).unwrap();
    let done = finishes_within(Duration::from_secs(20), move || {
        let reg = rt.register_thread().unwrap();
        assert!(reg.is_online());
        wait(&rt, gp);
        assert!(reg.is_online(), "the thread is back online after the wait");
    });
    assert!(
        done.is_some(),
        "deadlock: a grace period waited for a registered thread blocked in the runtime"
    );
}

#[test]
fn block_on_from_an_online_registered_thread_is_quiescent_while_it_blocks() {
    blocking_wait_of_an_online_registered_thread_does_not_hold_up_grace_periods(|rt, gp| {
        rt.block_on(move || gp.synchronize()).unwrap();
    });
}

#[test]
fn join_from_an_online_registered_thread_is_quiescent_while_it_blocks() {
    blocking_wait_of_an_online_registered_thread_does_not_hold_up_grace_periods(|rt, gp| {
        rt.spawn(move || gp.synchronize()).unwrap().join().unwrap();
    });
}

#[test]
fn event_wait_from_an_online_registered_thread_is_quiescent_while_it_blocks() {
    blocking_wait_of_an_online_registered_thread_does_not_hold_up_grace_periods(|rt, gp| {
        let event = Arc::new(Event::new());
        let e = event.clone();
        let _task = rt.spawn(move || {
            gp.synchronize();
            e.notify_one();
        });
        event.wait();
    });
}

#[test]
fn recv_from_an_online_registered_thread_is_quiescent_while_it_blocks() {
    blocking_wait_of_an_online_registered_thread_does_not_hold_up_grace_periods(|rt, gp| {
        let (tx, rx) = channel();
        let _task = rt.spawn(move || {
            gp.synchronize();
            tx.send(1u32).unwrap();
        });
        assert_eq!(rx.recv(), Ok(1));
    });
}

const CHILD: &str = "TRAMWAY_TLS_REGISTRATION_CHILD";

thread_local! {
    static REGISTRATION: std::cell::RefCell<Option<ThreadRegistration>> =
        const { std::cell::RefCell::new(None) };
}

/// The child: a thread keeps its registration in a thread-local and exits, so the
/// registration drops while the thread's locals are being destroyed.
#[test]
fn tls_registration_child() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let rt = Runtime::builder().workers(1).build().unwrap();
    let gp = GraceDomain::new(&rt, GraceConfig::default()).unwrap();
    let r = rt.clone();
    std::thread::spawn(move || {
        REGISTRATION.with(|slot| *slot.borrow_mut() = Some(r.register_thread().unwrap()));
    })
    .join()
    .unwrap();
    // The exited thread is gone from the registry: grace periods do not wait for it.
    gp.synchronize();
    println!("child: clean exit");
}

#[test]
fn a_registration_kept_in_a_thread_local_drops_cleanly_at_thread_exit() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "tls_registration_child", "--nocapture"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && stdout.contains("child: clean exit"),
        "child failed ({}): {stdout}\n{stderr}",
        out.status
    );
}

#[test]
fn the_rude_flavor_reports_a_worker_that_does_not_reach_its_scheduler() {
    let rt = Runtime::builder().workers(1).build().unwrap();
    let reports = Arc::new(AtomicUsize::new(0));
    let named = Arc::new(AtomicBool::new(false));
    let (sink, sink_named) = (reports.clone(), named.clone());
    let gp = GraceDomain::new(
        &rt,
        GraceConfig::default()
            .flavor(Flavor::Rude)
            .stall_timeout(Duration::from_millis(20))
            .on_stall(move |r: &StallReport| {
                sink.fetch_add(1, Ordering::SeqCst);
                if r.holdouts
                    .iter()
                    .any(|h| matches!(h, Holdout::Worker { worker: 0, .. }))
                {
                    sink_named.store(true, Ordering::SeqCst);
                }
            }),
    )
    .unwrap();
    let release = Arc::new(AtomicBool::new(false));
    let (started, r) = (Arc::new(AtomicBool::new(false)), release.clone());
    let s = started.clone();
    // Holds the only worker without a yield point (as a task stuck inside a trampoline would).
    let spinner = rt
        .spawn_named("stuck", move || {
            s.store(true, Ordering::Release);
            while !r.load(Ordering::Acquire) {
                std::hint::spin_loop();
            }
        })
        .unwrap();
    while !started.load(Ordering::Acquire) {
        std::thread::yield_now();
    }
    let cookie = gp.start_poll();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while reports.load(Ordering::SeqCst) < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let seen = reports.load(Ordering::SeqCst);
    let ended_early = gp.poll(&cookie);
    release.store(true, Ordering::Release);
    spinner.join().unwrap();
    gp.wait(&cookie);
    assert!(!ended_early, "the rude GP ended while the worker was held");
    assert!(seen >= 2, "stall reports while the worker was held: {seen}");
    assert!(named.load(Ordering::SeqCst), "the report names worker 0");
    assert!(gp.stats().stalls >= 2);
}

#[test]
fn a_panicking_stall_callback_does_not_take_the_grace_period_down() {
    let rt = Runtime::builder().workers(1).build().unwrap();
    let gp = GraceDomain::new(
        &rt,
        GraceConfig::default()
            .stall_timeout(Duration::from_millis(10))
            .on_stall(|_: &StallReport| panic!("a buggy stall callback")),
    )
    .unwrap();
    let release = Arc::new(AtomicBool::new(false));
    let (started, r) = (Arc::new(AtomicBool::new(false)), release.clone());
    let s = started.clone();
    let spinner = rt
        .spawn(move || {
            s.store(true, Ordering::Release);
            while !r.load(Ordering::Acquire) {
                std::hint::spin_loop();
            }
        })
        .unwrap();
    while !started.load(Ordering::Acquire) {
        std::thread::yield_now();
    }
    let ran = Arc::new(AtomicBool::new(false));
    let ran2 = ran.clone();
    gp.call(move || ran2.store(true, Ordering::SeqCst));
    let cookie = gp.start_poll();
    std::thread::sleep(Duration::from_millis(60)); // several stall reports, each panicking
    assert!(!gp.poll(&cookie), "the grace period waits for the spinner");
    release.store(true, Ordering::Release);
    spinner.join().unwrap();
    let gp2 = gp.clone();
    let done = finishes_within(Duration::from_secs(10), move || {
        gp2.barrier();
        gp2.synchronize();
    });
    assert!(
        done.is_some(),
        "grace periods still end after the callback panicked"
    );
    assert!(
        ran.load(Ordering::SeqCst),
        "the callback of the stalled grace period ran"
    );
    assert!(gp.stats().stalls >= 1);
}

#[test]
fn a_registration_dropped_inside_a_non_yielding_section_unregisters_when_it_ends() {
    let rt = Runtime::builder().workers(1).build().unwrap();
    let gp = GraceDomain::new(&rt, GraceConfig::default()).unwrap();
    let r = rt.clone();
    std::thread::spawn(move || {
        let reg = r.register_thread().unwrap();
        tramway_runtime::non_yielding(|| {
            drop(reg); // e.g. a hook taking the thread's registration out of a thread-local
            assert_eq!(
                r.register_thread().map(drop),
                Err(tramway_runtime::RegisterError::AlreadyRegistered),
                "still registered (and online) while inside the section"
            );
        });
        // The section ended: the thread is unregistered, and may register again.
        let again = r
            .register_thread()
            .expect("unregistered at the end of the section");
        drop(again);
    })
    .join()
    .unwrap();
    let done = finishes_within(Duration::from_secs(10), move || gp.synchronize());
    assert!(
        done.is_some(),
        "a grace period does not wait for the exited thread"
    );
}
