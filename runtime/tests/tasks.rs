//! Spawning, joining, yielding and panics.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tramway_runtime::{current, yield_now, JoinError, Runtime};

/// Tasks x yields for the bulk test (full scale: ~12 s in an unoptimized build on 2 cores).
const TASKS: usize = 10_000;
const YIELDS: usize = 1_000;

/// Polls `cond` for up to 5 s.
fn eventually(cond: impl Fn() -> bool) -> bool {
    tramway_harness::wait::within(std::time::Duration::from_secs(5), cond)
}

#[test]
fn ten_thousand_tasks_each_yielding_complete() {
    let rt = Runtime::builder().workers(2).build().unwrap();
    let total = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..TASKS)
        .map(|i| {
            let total = total.clone();
            rt.spawn(move || {
                for _ in 0..YIELDS {
                    yield_now();
                }
                total.fetch_add(1, Ordering::Relaxed);
                i
            })
            .unwrap()
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.join().unwrap(), i);
    }
    assert_eq!(total.load(Ordering::Relaxed), TASKS);
    // Every yield and every task end is a voluntary switch. (A join completes just before the
    // task's final switch-out, so wait for the counters to settle.)
    let expected = (TASKS * (YIELDS + 1)) as u64;
    assert!(eventually(|| rt.stats().tasks_live == 0));
    let stats = rt.stats();
    let voluntary: u64 = stats.workers.iter().map(|w| w.voluntary_switches).sum();
    assert_eq!(voluntary, expected);
    assert_eq!(stats.tasks_finished, TASKS as u64);
    assert!(stats.workers.iter().all(|w| w.involuntary_switches == 0));
}

#[test]
fn panic_reaches_join_handle_and_workers_survive() {
    let rt = Runtime::builder().workers(2).build().unwrap();
    let panicking: Vec<_> = (0..50)
        .map(|i| {
            rt.spawn(move || -> u32 { panic!("task {i} failed") })
                .unwrap()
        })
        .collect();
    for (i, h) in panicking.into_iter().enumerate() {
        let err = h.join().unwrap_err();
        assert!(matches!(err, JoinError::Panicked(_)));
        assert_eq!(
            err.panic_message(),
            Some(format!("task {i} failed").as_str())
        );
    }
    // Both workers still run tasks afterwards.
    let ok: Vec<_> = (0..50u32)
        .map(|i| {
            rt.spawn(move || {
                yield_now();
                i * 2
            })
            .unwrap()
        })
        .collect();
    for (i, h) in ok.into_iter().enumerate() {
        assert_eq!(h.join().unwrap(), i as u32 * 2);
    }
    assert!(eventually(|| rt.stats().tasks_finished == 100));
}

#[test]
fn named_task_sees_its_info_and_outside_sees_none() {
    let rt = Runtime::builder().workers(1).build().unwrap();
    let h = rt.spawn_named("reader-7", || current().unwrap()).unwrap();
    let expected_id = h.info().id;
    let info = h.join().unwrap();
    assert_eq!(info.id, expected_id);
    assert_eq!(info.name.as_deref(), Some("reader-7"));
    assert!(current().is_none());
}

#[test]
fn task_can_join_another_task_on_a_single_worker() {
    let rt = Runtime::builder().workers(1).build().unwrap();
    let rt2 = rt.clone();
    let v = rt
        .block_on(move || {
            let inner = rt2.spawn(|| {
                yield_now();
                21
            });
            inner.unwrap().join().unwrap() * 2
        })
        .unwrap();
    assert_eq!(v, 42);
}

#[test]
fn block_on_returns_value_from_outside() {
    let rt = Runtime::builder().workers(2).build().unwrap();
    assert_eq!(rt.block_on(|| "done").unwrap(), "done");
}

#[test]
fn yield_now_outside_a_task_is_a_thread_yield() {
    yield_now(); // must not panic or block
    tramway_runtime::sleep(std::time::Duration::from_millis(1));
}
