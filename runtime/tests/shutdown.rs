//! Shutdown, build errors, spawn errors and stack overflow.

use std::sync::Arc;
use std::time::Duration;

use tramway_runtime::{BuildError, Event, JoinError, Runtime, SpawnError, MAX_STACK_SIZE};

#[test]
fn dropping_the_last_handle_shuts_down_and_cancels() {
    let rt = Runtime::builder().workers(2).build().unwrap();
    let ev = Arc::new(Event::new());
    let e2 = ev.clone();
    let h = rt.spawn(move || e2.wait()).unwrap();
    let clone = rt.clone();
    drop(rt);
    assert!(!clone.is_shut_down(), "a clone keeps it alive");
    while ev.waiters() == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(clone);
    assert!(matches!(h.join(), Err(JoinError::Cancelled)));
}

#[test]
fn spawn_after_shutdown_is_an_error() {
    let rt = Runtime::builder().workers(1).build().unwrap();
    rt.shutdown();
    rt.shutdown(); // idempotent
    assert!(matches!(rt.spawn(|| ()), Err(SpawnError::ShutDown)));
    assert!(rt.block_on(|| ()).is_err());
}

#[test]
fn invalid_configurations_are_build_errors() {
    assert!(matches!(
        Runtime::builder().workers(0).build(),
        Err(BuildError::ZeroWorkers)
    ));
    assert!(matches!(
        Runtime::builder().stack_size(1024).build(),
        Err(BuildError::StackSize { .. })
    ));
    assert!(matches!(
        Runtime::builder().stack_size(MAX_STACK_SIZE + 1).build(),
        Err(BuildError::StackSize { .. })
    ));
    assert!(matches!(
        Runtime::builder().stack_size(usize::MAX).build(),
        Err(BuildError::StackSize { .. })
    ));
}

#[test]
fn shutdown_from_inside_a_task_does_not_deadlock() {
    let rt = Runtime::builder().workers(2).build().unwrap();
    let rt2 = rt.clone();
    let h = rt.spawn(move || rt2.shutdown()).unwrap();
    assert!(h.join().is_ok());
    assert!(rt.is_shut_down());
    rt.shutdown(); // joins the workers from outside
}

const OVERFLOW_CHILD: &str = "TRAMWAY_OVERFLOW_CHILD";

#[inline(never)]
fn recurse(n: u64) -> u64 {
    let buf = std::hint::black_box([n; 128]);
    if n == 0 {
        0
    } else {
        recurse(n - 1).wrapping_add(buf[7])
    }
}

#[test]
fn stack_overflow_in_a_task_is_reported_and_kills_the_process() {
    if std::env::var_os(OVERFLOW_CHILD).is_some() {
        let rt = Runtime::builder()
            .workers(1)
            .stack_size(64 * 1024)
            .build()
            .unwrap();
        let h = rt.spawn_named("deep", || recurse(u64::MAX >> 1)).unwrap();
        let _ = h.join();
        unreachable!("the task should have overflowed its stack");
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "stack_overflow_in_a_task_is_reported_and_kills_the_process",
            "--nocapture",
        ])
        .env(OVERFLOW_CHILD, "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGSEGV),
        "status {:?}, stderr: {stderr}",
        out.status
    );
    assert!(
        stderr.contains("('deep') has overflowed its stack"),
        "stderr: {stderr}"
    );
}

#[test]
fn shutdown_racing_with_busy_tasks_never_hangs_and_every_join_resolves() {
    use tramway_runtime::{channel, sleep, yield_now};
    for round in 0..20u64 {
        let rt = Runtime::builder().workers(2).build().unwrap();
        let ev = Arc::new(Event::new());
        let (tx, rx) = channel::<u64>();
        let mut handles = Vec::new();
        for i in 0..40u64 {
            let (ev, tx, rt2) = (ev.clone(), tx.clone(), rt.clone());
            handles.push(
                rt.spawn(move || {
                    for k in 0..50 {
                        match (i + k) % 5 {
                            0 => yield_now(),
                            1 => sleep(Duration::from_micros(200)),
                            2 => ev.notify_one(),
                            3 => drop(tx.send(k)),
                            _ => {
                                if let Ok(h) = rt2.spawn(yield_now) {
                                    let _ = h.join();
                                }
                            }
                        }
                    }
                    if i % 7 == 0 {
                        ev.wait();
                    }
                })
                .unwrap(),
            );
        }
        drop(tx);
        let consumer = rt.spawn(move || rx.iter().count()).unwrap();
        std::thread::sleep(Duration::from_micros(500 * (round % 6)));
        let t = std::time::Instant::now();
        rt.shutdown();
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "shutdown took {:?}",
            t.elapsed()
        );
        for h in handles {
            match h.join() {
                Ok(()) | Err(JoinError::Cancelled) => {}
                Err(e) => panic!("unexpected join error {e:?}"),
            }
        }
        assert!(matches!(consumer.join(), Ok(_) | Err(JoinError::Cancelled)));
        assert_eq!(rt.stats().tasks_live, 0);
    }
}
