//! A grace domain over registered OS threads alone (liburcu QSBR's model): no runtime, no
//! worker threads, the same grace-period semantics.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use tramway_runtime::grace::{GraceConfig, GraceDomain};
use tramway_runtime::RegisterError;

/// Names of this process's threads.
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect()
}

#[test]
fn a_threads_only_domain_starts_its_driver_and_no_worker() {
    let gp = GraceDomain::for_threads(GraceConfig::default()).unwrap();
    // A new thread names itself once it runs: look until it has (bounded).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut names = thread_names();
    while !names.iter().any(|n| n == "tramway-gp") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
        names = thread_names();
    }
    assert!(names.iter().any(|n| n == "tramway-gp"), "{names:?}");
    assert!(
        !names.iter().any(|n| n.starts_with("tramway-worker")),
        "no worker threads: {names:?}"
    );
    gp.synchronize();
}

#[test]
fn a_grace_period_waits_for_an_online_thread_until_it_reports() {
    let gp = GraceDomain::for_threads(GraceConfig::default()).unwrap();
    let (registered, report) = (mpsc::channel(), mpsc::channel::<()>());
    let (reg_tx, reg_rx) = registered;
    let (report_tx, report_rx) = report;
    let done = Arc::new(AtomicBool::new(false));
    let (g, d) = (gp.clone(), done.clone());
    let reader = std::thread::spawn(move || {
        let reg = g.register_thread().unwrap();
        assert_eq!(
            g.register_thread().map(drop),
            Err(RegisterError::AlreadyRegistered)
        );
        reg_tx.send(()).unwrap();
        report_rx.recv().unwrap();
        // Report until the grace period has ended: under load its driver may start it (and
        // snapshot this thread) only after a first report, which it must not count; found
        // when CI hung here with the reader online after its one report.
        while !d.load(Ordering::SeqCst) {
            reg.quiescent();
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    reg_rx.recv().unwrap();
    let cookie = gp.start_poll();
    std::thread::sleep(Duration::from_millis(30));
    assert!(
        !gp.poll(&cookie),
        "the reader is online and has not reported"
    );
    report_tx.send(()).unwrap();
    gp.wait(&cookie);
    done.store(true, Ordering::SeqCst);
    reader.join().unwrap();
}

#[test]
fn callbacks_barrier_and_offline_threads_work_without_a_runtime() {
    let gp = GraceDomain::for_threads(GraceConfig::default()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (g, s) = (gp.clone(), stop.clone());
    // A thread that is registered but offline for good does not hold anything up.
    let idle = std::thread::spawn(move || {
        let reg = g.register_thread().unwrap();
        reg.offline();
        while !s.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    gp.call(move || r.store(true, Ordering::SeqCst));
    gp.barrier();
    assert!(ran.load(Ordering::SeqCst));
    for _ in 0..100 {
        gp.synchronize();
    }
    assert!(gp.stats().completed >= 100);
    stop.store(true, Ordering::Relaxed);
    idle.join().unwrap();
}
