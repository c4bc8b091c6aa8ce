//! Tasks parked inside yielding code (`tramway_runtime::code`), without a JIT: a registered
//! "code" range over a static buffer stands for JIT code, and a local word pointing into it,
//! live across the park, stands for a JIT frame's return address.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tramway_runtime::code::{in_yielding_code, yielding_code_depth, CodeRange};
use tramway_runtime::grace::{GraceConfig, GraceDomain};
use tramway_runtime::{Event, Runtime};

/// Stand-ins for two pieces of JIT code.
static BODY: [u8; 64] = [0; 64];
static OTHER: [u8; 64] = [0; 64];

fn range_of(code: &'static [u8; 64]) -> std::ops::Range<usize> {
    let start = code.as_ptr() as usize;
    start..start + code.len()
}

fn eventually(cond: impl Fn() -> bool) -> bool {
    tramway_harness::wait::within(Duration::from_secs(20), cond)
}

struct Parked {
    inside: AtomicBool,
    release: Event,
}

/// Spawns a task that parks inside yielding code with a word pointing into `BODY` on its
/// stack (held in a local that is used after the park).
fn park_inside_body(rt: &Runtime) -> (Arc<Parked>, tramway_runtime::JoinHandle<usize>) {
    let p = Arc::new(Parked {
        inside: AtomicBool::new(false),
        release: Event::new(),
    });
    let q = p.clone();
    let task = rt
        .spawn(move || {
            let return_address = black_box(BODY.as_ptr() as usize + 8);
            in_yielding_code(|| {
                assert_eq!(yielding_code_depth(), 1);
                q.inside.store(true, Ordering::SeqCst);
                q.release.wait();
            });
            black_box(return_address)
        })
        .unwrap();
    assert!(eventually(|| p.inside.load(Ordering::SeqCst)));
    (p, task)
}

fn flag() -> (Arc<AtomicBool>, impl FnOnce() + Send + 'static) {
    let f = Arc::new(AtomicBool::new(false));
    let g = f.clone();
    (f, move || g.store(true, Ordering::SeqCst))
}

#[test]
fn code_a_parked_task_references_is_held_until_it_leaves_and_unrelated_code_is_not() {
    let _body = CodeRange::register(range_of(&BODY).start, 64).unwrap();
    let _other = CodeRange::register(range_of(&OTHER).start, 64).unwrap();
    let rt = Runtime::builder().workers(2).build().unwrap();
    let gp = GraceDomain::new(&rt, GraceConfig::default()).unwrap();
    let (p, task) = park_inside_body(&rt);
    assert!(eventually(|| rt.stats().tasks_with_code_refs == 1));

    let (body_freed, free_body) = flag();
    gp.call_for_code(&[range_of(&BODY)], free_body);
    let (other_freed, free_other) = flag();
    gp.call_for_code(&[range_of(&OTHER)], free_other);
    let (plain_ran, plain) = flag();
    gp.call(plain);
    // The barrier waits for every callback but the held one: it neither hangs on it nor runs it.
    gp.barrier();
    gp.synchronize();
    gp.barrier();
    assert!(
        other_freed.load(Ordering::SeqCst),
        "unrelated code held back"
    );
    assert!(
        plain_ran.load(Ordering::SeqCst),
        "an unranged callback held back"
    );
    assert!(
        !body_freed.load(Ordering::SeqCst),
        "freed under the parked task"
    );
    let stats = gp.stats();
    assert_eq!(stats.callbacks_held_now, 1, "{stats:?}");
    assert!(stats.callbacks_held >= 1);

    // The task leaves the code and ends: its references go, and the held free runs without
    // waiting for another grace period to be requested.
    p.release.notify_one();
    assert_eq!(task.join().unwrap(), BODY.as_ptr() as usize + 8);
    assert!(eventually(|| body_freed.load(Ordering::SeqCst)));
    assert_eq!(gp.stats().callbacks_held_now, 0);
    assert_eq!(rt.stats().tasks_with_code_refs, 0);
}

#[test]
fn a_task_that_parks_again_outside_yielding_code_releases_what_it_held() {
    let _body = CodeRange::register(range_of(&BODY).start, 64).unwrap();
    let rt = Runtime::builder().workers(1).build().unwrap();
    let gp = GraceDomain::new(&rt, GraceConfig::default()).unwrap();
    let p = Arc::new(Parked {
        inside: AtomicBool::new(false),
        release: Event::new(),
    });
    let second_park = Arc::new(Event::new());
    let (q, s) = (p.clone(), second_park.clone());
    let task = rt
        .spawn(move || {
            let return_address = black_box(BODY.as_ptr() as usize);
            in_yielding_code(|| {
                q.inside.store(true, Ordering::SeqCst);
                q.release.wait();
            });
            black_box(return_address);
            // Parked again at depth 0: holds nothing.
            s.wait();
        })
        .unwrap();
    assert!(eventually(|| p.inside.load(Ordering::SeqCst)));
    let (freed, free) = flag();
    gp.call_for_code(&[range_of(&BODY)], free);
    gp.barrier();
    assert!(!freed.load(Ordering::SeqCst));
    p.release.notify_one();
    assert!(eventually(|| freed.load(Ordering::SeqCst)));
    assert_eq!(rt.stats().tasks_with_code_refs, 0);
    second_park.notify_one();
    task.join().unwrap();
}

#[test]
fn only_parks_inside_yielding_code_scan_the_stack() {
    let rt = Runtime::builder().workers(1).build().unwrap();
    let before = rt.stats().stack_scans;
    rt.spawn(|| {
        for _ in 0..100 {
            tramway_runtime::yield_now();
        }
    })
    .unwrap()
    .join()
    .unwrap();
    assert_eq!(
        rt.stats().stack_scans,
        before,
        "a park outside yielding code scanned"
    );
    rt.spawn(|| {
        in_yielding_code(|| {
            for _ in 0..10 {
                tramway_runtime::yield_now();
            }
        })
    })
    .unwrap()
    .join()
    .unwrap();
    assert_eq!(rt.stats().stack_scans, before + 10);
}

#[test]
fn the_depth_nests_and_is_zero_outside_tasks() {
    assert_eq!(yielding_code_depth(), 0);
    in_yielding_code(|| assert_eq!(yielding_code_depth(), 0)); // an OS thread: non-yielding
    let rt = Runtime::builder().workers(1).build().unwrap();
    rt.spawn(|| {
        in_yielding_code(|| {
            in_yielding_code(|| assert_eq!(yielding_code_depth(), 2));
            tramway_runtime::yield_now();
            assert_eq!(yielding_code_depth(), 1);
        });
        assert_eq!(yielding_code_depth(), 0);
        // The C-ABI marks, as JIT code calls them.
        tramway_runtime::code::yielding_code_enter();
        assert_eq!(yielding_code_depth(), 1);
        tramway_runtime::code::yielding_code_leave();
        tramway_runtime::code::yielding_code_leave(); // unbalanced: saturates
        assert_eq!(yielding_code_depth(), 0);
        // A scope restores the depth it entered with, also past an unbalanced C-ABI enter.
        in_yielding_code(|| tramway_runtime::code::yielding_code_enter());
        assert_eq!(yielding_code_depth(), 0);
    })
    .unwrap()
    .join()
    .unwrap();
}

#[test]
fn on_a_registered_thread_yielding_code_is_not_quiescent() {
    let rt = Runtime::builder().workers(1).build().unwrap();
    let gp = GraceDomain::new(&rt, GraceConfig::default()).unwrap();
    let reg = rt.register_thread().unwrap();
    let cookie = gp.start_poll();
    in_yielding_code(|| {
        reg.quiescent(); // ignored: the thread is inside yielding code
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            !gp.poll(&cookie),
            "a grace period ended under yielding code"
        );
    });
    // Report until the grace period ends (a report made before it snapshotted this thread
    // does not count for it).
    assert!(eventually(|| {
        reg.quiescent();
        gp.poll(&cookie)
    }));
}

/// Dropped when a task's stack is unwound.
struct SetOnDrop(Arc<AtomicU64>);
impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn shutdown_leaks_a_task_parked_inside_yielding_code_instead_of_unwinding_it() {
    let unwound_inside = Arc::new(AtomicU64::new(0));
    let unwound_outside = Arc::new(AtomicU64::new(0));
    let rt = Runtime::builder().workers(1).build().unwrap();
    let (i, o) = (unwound_inside.clone(), unwound_outside.clone());
    let parked = Arc::new(AtomicU64::new(0));
    let (p1, p2) = (parked.clone(), parked.clone());
    let _inside = rt
        .spawn(move || {
            let _guard = SetOnDrop(i);
            in_yielding_code(|| {
                p1.fetch_add(1, Ordering::SeqCst);
                Event::new().wait(); // never notified
            })
        })
        .unwrap();
    let _outside = rt
        .spawn(move || {
            let _guard = SetOnDrop(o);
            p2.fetch_add(1, Ordering::SeqCst);
            Event::new().wait();
        })
        .unwrap();
    assert!(eventually(|| parked.load(Ordering::SeqCst) == 2));
    rt.shutdown();
    // JIT frames have no unwind information: a task parked inside yielding code is leaked.
    assert_eq!(unwound_inside.load(Ordering::SeqCst), 0);
    assert_eq!(unwound_outside.load(Ordering::SeqCst), 1);
}

#[test]
fn offline_inside_yielding_code_keeps_the_task_online() {
    let rt = Runtime::builder().workers(1).build().unwrap();
    let gp = GraceDomain::new(&rt, GraceConfig::default()).unwrap();
    let (inside, release) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let (i, r) = (inside.clone(), release.clone());
    let task = rt
        .spawn(move || {
            in_yielding_code(|| {
                // A blocking call inside yielding code: JIT frames may be on this stack, which
                // no scan has seen, so the task must not go offline.
                tramway_runtime::offline(|| {
                    i.store(true, Ordering::SeqCst);
                    while !r.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                })
            })
        })
        .unwrap();
    assert!(eventually(|| inside.load(Ordering::SeqCst)));
    let cookie = gp.start_poll();
    std::thread::sleep(Duration::from_millis(50));
    let ended_while_inside = gp.poll(&cookie);
    // Release the task before asserting, so a failure reports instead of hanging the drop.
    release.store(true, Ordering::SeqCst);
    task.join().unwrap();
    assert!(
        !ended_while_inside,
        "a grace period ended while the task was offline inside yielding code"
    );
    assert!(eventually(|| gp.poll(&cookie)));
}

/// A sealed batch of code frees: `(range, ran)` items; the part a parked task references is
/// split off and held.
struct CodeBatch(Vec<(std::ops::Range<usize>, Arc<AtomicBool>)>);

impl tramway_runtime::grace::CallbackBatch for CodeBatch {
    fn seal(&mut self) {}

    fn split_referenced(
        &mut self,
        referenced: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Option<Box<dyn tramway_runtime::grace::CallbackBatch>> {
        let (held, free) = std::mem::take(&mut self.0)
            .into_iter()
            .partition::<Vec<_>, _>(|(code, _)| referenced(code.start, code.end));
        self.0 = free;
        (!held.is_empty()).then(|| Box::new(CodeBatch(held)) as _)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn run(self: Box<Self>) {
        for (_, ran) in &self.0 {
            assert!(!ran.swap(true, Ordering::SeqCst), "an item ran twice");
        }
    }
}

/// A batch whose every item is held runs once, as its held part: no empty part is run and
/// counted besides it. A batch split in two counts two runs.
#[test]
fn a_batch_held_whole_counts_one_run_and_a_split_batch_two() {
    let _body = CodeRange::register(range_of(&BODY).start, 64).unwrap();
    let _other = CodeRange::register(range_of(&OTHER).start, 64).unwrap();
    let rt = Runtime::builder().workers(2).build().unwrap();
    let gp = GraceDomain::new(&rt, GraceConfig::default()).unwrap();
    let (p, task) = park_inside_body(&rt);
    assert!(eventually(|| rt.stats().tasks_with_code_refs == 1));

    let item = |code| (code, Arc::new(AtomicBool::new(false)));
    let whole = vec![item(range_of(&BODY)), item(range_of(&BODY))];
    let split = vec![item(range_of(&BODY)), item(range_of(&OTHER))];
    let flags: Vec<_> = whole.iter().chain(&split).map(|(_, f)| f.clone()).collect();
    let before = gp.stats();
    gp.call_batch(Box::new(CodeBatch(whole)));
    gp.call_batch(Box::new(CodeBatch(split)));
    gp.barrier();
    gp.synchronize();
    gp.barrier();
    // Only the split batch's OTHER item ran; the rest is held under the parked task.
    let ran: Vec<bool> = flags.iter().map(|f| f.load(Ordering::SeqCst)).collect();
    assert_eq!(ran, [false, false, false, true]);
    let held = gp.stats();
    assert_eq!(held.callbacks_run - before.callbacks_run, 1, "{held:?}");
    assert_eq!(held.callbacks_held_now, 2, "{held:?}");

    p.release.notify_one();
    task.join().unwrap();
    assert!(eventually(|| flags
        .iter()
        .all(|f| f.load(Ordering::SeqCst))));
    assert!(eventually(|| gp.stats().callbacks_held_now == 0));
    let after = gp.stats();
    assert_eq!(
        after.callbacks_run - before.callbacks_run,
        3,
        "whole batch once, split batch twice: {after:?}"
    );
}

/// A held part that records being dropped.
struct HeldPart(Arc<AtomicBool>);

impl tramway_runtime::grace::CallbackBatch for HeldPart {
    fn seal(&mut self) {}

    fn split_referenced(
        &mut self,
        _referenced: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Option<Box<dyn tramway_runtime::grace::CallbackBatch>> {
        None
    }

    fn run(self: Box<Self>) {}
}

impl Drop for HeldPart {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A batch that splits off a part and then panics when asked whether it is empty.
struct PanicsInIsEmpty(Option<HeldPart>);

impl tramway_runtime::grace::CallbackBatch for PanicsInIsEmpty {
    fn seal(&mut self) {}

    fn split_referenced(
        &mut self,
        _referenced: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Option<Box<dyn tramway_runtime::grace::CallbackBatch>> {
        self.0.take().map(|part| Box::new(part) as _)
    }

    fn is_empty(&self) -> bool {
        panic!("is_empty panics (expected by this test)");
    }

    fn run(self: Box<Self>) {}
}

/// A batch that panics in `is_empty` is leaked with the part it split off: that part may
/// free code a parked task runs in, so it is never dropped. The domain goes on.
#[test]
fn a_batch_that_panics_in_is_empty_leaks_the_part_it_split_off() {
    let _body = CodeRange::register(range_of(&BODY).start, 64).unwrap();
    let rt = Runtime::builder().workers(2).build().unwrap();
    let gp = GraceDomain::new(&rt, GraceConfig::default()).unwrap();
    // A parked task's reference makes the domain split batches at all.
    let (p, task) = park_inside_body(&rt);
    assert!(eventually(|| rt.stats().tasks_with_code_refs == 1));
    let dropped = Arc::new(AtomicBool::new(false));
    gp.call_batch(Box::new(PanicsInIsEmpty(Some(HeldPart(dropped.clone())))));
    gp.barrier();
    gp.synchronize();
    p.release.notify_one();
    task.join().unwrap();
    gp.barrier();
    assert!(
        !dropped.load(Ordering::SeqCst),
        "the split-off part was dropped"
    );
    let (ran, f) = flag();
    gp.call(f);
    gp.barrier();
    assert!(ran.load(Ordering::SeqCst), "the domain goes on");
}
