//! Quiescent-state reporting: worker cells, holdouts, registered threads, offline scopes.

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tramway::runtime::{
    channel, non_yielding, offline, yield_now, Event, RegisterError, Runtime, YieldInNonYielding,
};

/// Polls `cond` for up to 5 s.
fn eventually(cond: impl Fn() -> bool) -> bool {
    support::wait::within(std::time::Duration::from_secs(5), cond)
}

#[test]
fn worker_cell_advances_on_every_voluntary_switch() {
    let rt = Runtime::builder().workers(1).build().unwrap();
    let reg = rt.qs_registry_for_tests();
    let r2 = reg.clone();
    rt.block_on(move || {
        let w = &r2.workers[0];
        assert!(w.cell.is_active(), "cell is active while a task runs");
        assert_eq!(
            w.current_task.load(Ordering::Relaxed),
            tramway::runtime::current().unwrap().id
        );
        for _ in 0..10 {
            let before = w.cell.snapshot();
            let switches = w.voluntary_switches.load(Ordering::Relaxed);
            yield_now();
            assert!(
                w.cell.passed_since(before),
                "cell did not advance across a yield"
            );
            assert_ne!(w.cell.snapshot(), before);
            assert_eq!(w.voluntary_switches.load(Ordering::Relaxed), switches + 1);
        }
    })
    .unwrap();
    let w = &reg.workers[0];
    // The join handle is completed from inside the task, just before its final switch-out.
    assert!(
        eventually(|| !w.cell.is_active()),
        "idle worker is inactive"
    );
    assert_eq!(w.current_task.load(Ordering::Relaxed), 0);
    assert_eq!(w.involuntary_switches.load(Ordering::Relaxed), 0);
}

#[test]
fn involuntary_switch_makes_a_holdout_until_the_next_voluntary_yield() {
    let rt = Runtime::builder()
        .workers(1)
        .yield_in_non_yielding(YieldInNonYielding::RecordInvoluntary)
        .build()
        .unwrap();
    let reg = rt.qs_registry_for_tests();
    let switched = Arc::new(Event::new());
    let (tx, rx) = channel();

    // The observer runs while the reader is switched out inside its non-yielding section.
    let (r, s) = (reg.clone(), switched.clone());
    let observer = rt
        .spawn(move || {
            s.wait();
            let holdouts = r.holdouts.lock().unwrap();
            let ids: Vec<u64> = holdouts.keys().copied().collect();
            let yields = holdouts
                .values()
                .map(|t| t.voluntary_yields.load(Ordering::Relaxed))
                .collect::<Vec<_>>();
            let w = &r.workers[0];
            (
                ids,
                yields,
                w.involuntary_switches.load(Ordering::Relaxed),
                holdouts.values().next().cloned(),
            )
        })
        .unwrap();
    let (r, s) = (reg.clone(), switched.clone());
    let reader = rt
        .spawn(move || {
            let me = tramway::runtime::current().unwrap().id;
            let w = &r.workers[0];
            let vol_before = w.voluntary_switches.load(Ordering::Relaxed);
            non_yielding(|| {
                s.notify_one(); // wakes the observer; no yield here
                yield_now(); // a yield point inside a non-yielding section: involuntary
            });
            // Switched back in: involuntary switches are not voluntary ones.
            assert_eq!(
                w.voluntary_switches.load(Ordering::Relaxed),
                vol_before + 1,
                "only the observer's end counted"
            );
            assert!(
                r.holdouts.lock().unwrap().contains_key(&me),
                "still a holdout before a voluntary yield"
            );
            yield_now(); // voluntary: passes a QS
            assert!(
                !r.holdouts.lock().unwrap().contains_key(&me),
                "holdout removed at the voluntary yield"
            );
            tx.send(me).unwrap();
        })
        .unwrap();
    let (ids, yields, involuntary, task_qs) = observer.join().unwrap();
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
    assert_eq!(involuntary, 1);
    let task_qs = task_qs.unwrap();
    assert_eq!(task_qs.id, reader_id);
    // One voluntary yield inside the task, plus its end (which follows the join completion).
    assert!(eventually(|| task_qs
        .voluntary_yields
        .load(Ordering::Relaxed)
        == 2));
    assert!(reg.holdouts.lock().unwrap().is_empty());
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
    assert!(rt
        .qs_registry_for_tests()
        .holdouts
        .lock()
        .unwrap()
        .is_empty());
}

#[test]
fn registered_thread_reports_quiescent_states_and_goes_offline() {
    let rt = Runtime::builder().workers(1).build().unwrap();
    let reg = rt.qs_registry_for_tests();
    let guard = rt.register_thread().unwrap();
    assert_eq!(
        rt.register_thread().unwrap_err(),
        RegisterError::AlreadyRegistered
    );
    assert_eq!(reg.threads.lock().unwrap().len(), 1);
    let cell = &guard.qs().cell;
    assert!(cell.is_active(), "online on creation");
    let snap = cell.snapshot();
    assert!(!cell.passed_since(snap));
    guard.quiescent();
    assert!(cell.passed_since(snap), "quiescent() advances the cell");
    assert!(cell.is_active(), "quiescent() keeps the thread online");
    guard.offline();
    assert!(!cell.is_active(), "an offline thread is inactive");
    guard.online();
    assert!(cell.is_active());
    drop(guard);
    assert!(reg.threads.lock().unwrap().is_empty(), "drop unregisters");
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
    let reg = rt.qs_registry_for_tests();
    let r2 = reg.clone();
    rt.block_on(move || {
        let cell = &r2.workers[0].cell;
        assert!(cell.is_active());
        let inside = offline(|| cell.is_active());
        assert!(!inside, "worker cell is exited during offline()");
        assert!(cell.is_active(), "and entered again after it");
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
            let helper = rt2.spawn(move || tx.send(tramway::runtime::current().unwrap().id));
            // Block this worker; the helper must run elsewhere for the call to return.
            let r = offline(|| rx.recv_timeout(std::time::Duration::from_secs(10)));
            helper.unwrap().join().unwrap().unwrap();
            r.is_ok()
        })
        .unwrap();
    assert!(
        got,
        "the queued task was not run by the other worker during offline()"
    );
}
