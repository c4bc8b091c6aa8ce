//! The scheduler reports switches as the `qs` transitions say: worker cells, holdouts,
//! offline scopes, pinned tasks. These tests read the reader registry, which is private to
//! the crate.

use std::sync::Arc;
use std::time::Duration;

use super::scheduler::current_worker;
use crate::qs::QsRegistry;
use crate::{
    channel, non_yielding, offline, yield_now, Event, RegisterError, Runtime, SpawnError,
    YieldInNonYielding,
};

/// Polls `cond` for up to 5 s.
fn eventually(cond: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !cond() {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    true
}

fn registry(rt: &Runtime) -> Arc<QsRegistry> {
    Arc::clone(rt.qs_registry())
}

fn worker_index() -> Option<usize> {
    current_worker().map(|(_, i)| i)
}

#[test]
fn worker_cell_advances_on_every_voluntary_switch() {
    let rt = Runtime::builder().workers(1).build().unwrap();
    let reg = registry(&rt);
    let r2 = reg.clone();
    rt.block_on(move || {
        let w = r2.worker(0);
        assert!(w.is_active(), "cell is active while a task runs");
        assert_eq!(w.current_task(), crate::current().unwrap().id);
        for _ in 0..10 {
            let before = w.snapshot();
            let switches = w.voluntary_switches();
            yield_now();
            assert!(
                w.passed_since(before),
                "cell did not advance across a yield"
            );
            assert_ne!(w.snapshot(), before);
            assert_eq!(w.voluntary_switches(), switches + 1);
        }
    })
    .unwrap();
    let w = reg.worker(0);
    // The join handle is completed from inside the task, just before its final switch-out.
    assert!(eventually(|| !w.is_active()), "idle worker is inactive");
    assert_eq!(w.current_task(), 0);
    assert_eq!(rt.stats().workers[0].involuntary_switches, 0);
}

#[test]
fn involuntary_switch_makes_a_holdout_until_the_next_voluntary_yield() {
    let rt = Runtime::builder()
        .workers(1)
        .yield_in_non_yielding(YieldInNonYielding::RecordInvoluntary)
        .build()
        .unwrap();
    let reg = registry(&rt);
    let switched = Arc::new(Event::new());
    let (tx, rx) = channel();

    // The observer runs while the reader is switched out inside its non-yielding section.
    let (r, s) = (reg.clone(), switched.clone());
    let observer = rt
        .spawn(move || {
            s.wait();
            let holdouts = r.holdout_set();
            let ids: Vec<u64> = holdouts.iter().map(|t| t.id).collect();
            let yields: Vec<u64> = holdouts.iter().map(|t| t.voluntary_yields()).collect();
            (ids, yields, holdouts.first().cloned())
        })
        .unwrap();
    let (r, s) = (reg.clone(), switched.clone());
    let reader = rt
        .spawn(move || {
            let me = crate::current().unwrap().id;
            let vol_before = r.worker(0).voluntary_switches();
            non_yielding(|| {
                s.notify_one(); // wakes the observer; no yield here
                yield_now(); // a yield point inside a non-yielding section: involuntary
            });
            // Switched back in: involuntary switches are not voluntary ones.
            assert_eq!(
                r.worker(0).voluntary_switches(),
                vol_before + 1,
                "only the observer's end counted"
            );
            let is_holdout = |r: &QsRegistry| r.holdout_set().iter().any(|t| t.id == me);
            assert!(is_holdout(&r), "still a holdout before a voluntary yield");
            yield_now(); // voluntary: passes a QS
            assert!(!is_holdout(&r), "holdout removed at the voluntary yield");
            tx.send(me).unwrap();
        })
        .unwrap();
    let (ids, yields, task) = observer.join().unwrap();
    reader.join().unwrap();
    let reader_id = rx.recv().unwrap();
    assert_eq!(
        ids,
        vec![reader_id],
        "the reader is the only holdout while switched out"
    );
    assert_eq!(
        yields,
        vec![0],
        "an involuntary switch does not count as a voluntary yield"
    );
    let task = task.unwrap();
    assert_eq!(task.id, reader_id);
    // One voluntary yield inside the task, plus its end (which follows the join completion).
    assert!(eventually(|| task.voluntary_yields() == 2));
    assert!(reg.holdout_set().is_empty());
    assert_eq!(rt.stats().workers[0].involuntary_switches, 1);
}

#[test]
fn yield_inside_non_yielding_panics_in_panic_mode() {
    let rt = Runtime::builder()
        .workers(1)
        .yield_in_non_yielding(YieldInNonYielding::Panic)
        .build()
        .unwrap();
    let err = rt
        .spawn(|| non_yielding(yield_now))
        .unwrap()
        .join()
        .unwrap_err();
    assert!(err
        .panic_message()
        .unwrap()
        .contains("yield inside a non-yielding section"));
    // The depth counter was restored by unwinding: yielding afterwards is fine.
    rt.block_on(|| {
        let _ = std::panic::catch_unwind(|| non_yielding(|| panic!("inner")));
        yield_now();
    })
    .unwrap();
    assert!(registry(&rt).holdout_set().is_empty());
}

#[test]
fn registered_thread_reports_quiescent_states_and_goes_offline() {
    let rt = Runtime::builder().workers(1).build().unwrap();
    let reg = registry(&rt);
    let guard = rt.register_thread().unwrap();
    assert_eq!(
        rt.register_thread().unwrap_err(),
        RegisterError::AlreadyRegistered
    );
    assert_eq!(reg.thread_count(), 1);
    let reader = guard.reader();
    assert!(reader.is_active(), "online on creation");
    let snap = reader.snapshot();
    assert!(!reader.passed_since(snap));
    guard.quiescent();
    assert!(reader.passed_since(snap), "quiescent() advances the cell");
    assert!(reader.is_active(), "quiescent() keeps the thread online");
    guard.offline();
    assert!(!reader.is_active(), "an offline thread is inactive");
    guard.online();
    assert!(reader.is_active());
    drop(guard);
    assert_eq!(reg.thread_count(), 0, "drop unregisters");
    // Tasks cannot register.
    let rt2 = rt.clone();
    let inside = rt
        .block_on(move || rt2.register_thread().map(|_| ()))
        .unwrap();
    assert_eq!(inside, Err(RegisterError::InRuntime));
}

#[test]
fn offline_scope_makes_the_worker_and_registered_thread_quiescent() {
    let rt = Runtime::builder().workers(1).build().unwrap();
    let reg = registry(&rt);
    let r2 = reg.clone();
    rt.block_on(move || {
        let w = r2.worker(0);
        assert!(w.is_active());
        let inside = offline(|| w.is_active());
        assert!(!inside, "worker cell is inactive during offline()");
        assert!(w.is_active(), "and active again after it");
    })
    .unwrap();
    let guard = rt.register_thread().unwrap();
    assert!(!offline(|| guard.is_online()));
    assert!(guard.is_online());
}

#[test]
fn offline_blocking_call_lets_other_workers_run_this_workers_tasks() {
    let rt = Runtime::builder().workers(2).build().unwrap();
    let rt2 = rt.clone();
    let got = rt
        .block_on(move || {
            let (tx, rx) = std::sync::mpsc::channel();
            // Spawned from this worker: queued on its local queue.
            let helper = rt2.spawn(move || tx.send(crate::current().unwrap().id));
            // Block this worker; the helper must run elsewhere for the call to return.
            let r = offline(|| rx.recv_timeout(Duration::from_secs(10)));
            helper.unwrap().join().unwrap().unwrap();
            r.is_ok()
        })
        .unwrap();
    assert!(
        got,
        "the queued task was not run by the other worker during offline()"
    );
}

#[test]
fn pinned_task_only_ever_runs_on_its_worker() {
    let rt = Runtime::builder().workers(2).build().unwrap();
    let handles: Vec<_> = (0..8)
        .map(|_| {
            rt.spawn_pinned(1, || {
                (0..200).all(|_| {
                    yield_now();
                    worker_index() == Some(1)
                })
            })
            .unwrap()
        })
        .collect();
    // Unpinned load that would otherwise be balanced across both workers.
    let others: Vec<_> = (0..8)
        .map(|_| rt.spawn(|| (0..200).for_each(|_| yield_now())).unwrap())
        .collect();
    for h in handles {
        assert!(h.join().unwrap(), "a pinned task ran on another worker");
    }
    for h in others {
        h.join().unwrap();
    }
}

#[test]
fn pinned_to_a_missing_worker_is_an_error() {
    let rt = Runtime::builder().workers(1).build().unwrap();
    assert!(matches!(
        rt.spawn_pinned(1, || ()),
        Err(SpawnError::NoSuchWorker {
            index: 1,
            workers: 1
        })
    ));
}

#[test]
fn tasks_and_registered_threads_know_what_reader_they_are() {
    let rt = Runtime::builder().workers(1).build().unwrap();
    assert!(!crate::qs::in_task());
    assert!(rt.block_on(crate::qs::in_task).unwrap());
    assert!(rt.block_on(|| worker_index() == Some(0)).unwrap());
    let reg = rt.register_thread().unwrap();
    assert!(!crate::qs::in_task());
    drop(reg);
}
