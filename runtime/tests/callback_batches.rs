//! Open callback batches (`grace::batch`) from the outside: a batch collects items until the
//! grace period that covers it is claimed, and a batch that panics does not take the domain
//! down with it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use tramway_runtime::grace::{CallbackBatch, GraceConfig, GraceDomain};

/// Items are counters to bump when the batch runs; `seal` moves them out of the shared list.
#[derive(Default)]
struct Shared {
    items: Vec<Arc<AtomicUsize>>,
    queued: bool,
}

struct Batch {
    shared: Arc<Mutex<Shared>>,
    items: Vec<Arc<AtomicUsize>>,
}

impl Batch {
    fn push(gp: &GraceDomain, shared: &Arc<Mutex<Shared>>, item: Arc<AtomicUsize>) {
        let mut st = shared.lock().unwrap();
        st.items.push(item);
        let queue = !std::mem::replace(&mut st.queued, true);
        drop(st);
        if queue {
            gp.call_batch(Box::new(Batch {
                shared: shared.clone(),
                items: Vec::new(),
            }));
        }
    }
}

impl CallbackBatch for Batch {
    fn seal(&mut self) {
        let mut st = self.shared.lock().unwrap();
        self.items = std::mem::take(&mut st.items);
        st.queued = false;
    }

    fn split_referenced(
        &mut self,
        _referenced: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Option<Box<dyn CallbackBatch>> {
        None
    }

    fn run(self: Box<Self>) {
        for item in &self.items {
            item.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[test]
fn items_pushed_before_a_barrier_run_once_and_cost_one_callback() {
    let gp = GraceDomain::for_threads(GraceConfig::default()).unwrap();
    let shared = Arc::new(Mutex::new(Shared::default()));
    let before = gp.stats();
    let items: Vec<_> = (0..100).map(|_| Arc::new(AtomicUsize::new(0))).collect();
    for item in &items {
        Batch::push(&gp, &shared, item.clone());
    }
    gp.barrier();
    assert!(items.iter().all(|i| i.load(Ordering::SeqCst) == 1));
    let after = gp.stats();
    assert_eq!(after.callbacks_queued - before.callbacks_queued, 1);
    // The batch was sealed: the next item opens (and queues) a new one.
    let late = Arc::new(AtomicUsize::new(0));
    Batch::push(&gp, &shared, late.clone());
    gp.barrier();
    assert_eq!(late.load(Ordering::SeqCst), 1);
    assert_eq!(gp.stats().callbacks_queued - after.callbacks_queued, 1);
}

/// A batch whose `seal` panics (under the domain's state lock, while a grace period is
/// being claimed).
struct PanicsInSeal(Arc<AtomicBool>);

impl CallbackBatch for PanicsInSeal {
    fn seal(&mut self) {
        panic!("seal fails");
    }

    fn split_referenced(
        &mut self,
        _referenced: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Option<Box<dyn CallbackBatch>> {
        None
    }

    fn run(self: Box<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Found in review: a panicking `seal` used to unwind out of the claim with the grace period
/// marked running, so every later grace period waited forever (or the driver died). Now the
/// batch is leaked (neither run nor dropped) and counted as panicked, and grace periods go on.
#[test]
fn a_batch_that_panics_in_seal_is_leaked_and_grace_periods_go_on() {
    let gp =
        GraceDomain::for_threads(GraceConfig::default().callback_delay(Duration::ZERO)).unwrap();
    let ran = Arc::new(AtomicBool::new(false));
    gp.call_batch(Box::new(PanicsInSeal(ran.clone())));
    let (tx, rx) = mpsc::channel();
    let waiter = gp.clone();
    std::thread::spawn(move || {
        waiter.synchronize();
        let later = Arc::new(AtomicBool::new(false));
        let l = later.clone();
        waiter.call(move || l.store(true, Ordering::SeqCst));
        waiter.barrier();
        let _ = tx.send(later.load(Ordering::SeqCst));
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(later_ran) => assert!(later_ran, "a later callback did not run"),
        Err(_) => {
            std::mem::forget(gp); // dropping it would wait for the stuck grace period too
            panic!("grace periods stopped after a batch panicked in seal");
        }
    }
    assert!(
        !ran.load(Ordering::SeqCst),
        "a batch that failed to seal ran"
    );
    assert!(gp.stats().callbacks_panicked >= 1);
}
