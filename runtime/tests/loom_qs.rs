//! Model checking of the quiescent-state protocol with loom (fenced pairing).
//!
//! Run with: `RUSTFLAGS="--cfg loom" cargo test -p tramway-runtime --test loom_qs --release`
//!
//! The property: if a grace period concludes that a reader has passed a quiescent state
//! since its snapshot (and would therefore free the old trampoline), the reader's next load
//! of the patch site after that QS returns the new target.
#![cfg(loom)]

use loom::sync::atomic::{AtomicU64, Ordering};
use loom::sync::Arc;
use loom::thread;
use tramway_runtime::fence::heavy_barrier;
use tramway_runtime::qs::QsCell;

const OLD: u64 = 1;
const NEW: u64 = 2;

/// One updater + one reader that is inside old code when the model starts, then passes a
/// voluntary switch (exit + enter) and loads the site again.
fn model_switch(reader_qs: impl Fn(&QsCell, &AtomicU64) -> u64 + Send + Sync + 'static) {
    // A std Arc: loom's own types may only be created inside the model.
    let reader_qs = std::sync::Arc::new(reader_qs);
    loom::model(move || {
        let site = Arc::new(AtomicU64::new(OLD));
        let cell = Arc::new(QsCell::new());
        cell.enter(); // the reader is running (inside old code) at the start
        let reader = {
            let (site, cell, qs) = (site.clone(), cell.clone(), reader_qs.clone());
            thread::spawn(move || qs(&cell, &site))
        };
        // Updater: re-point the site, then one GP check.
        site.store(NEW, Ordering::Release);
        heavy_barrier();
        let snap = cell.snapshot();
        let would_free = cell.passed_since(snap);
        let seen_after_qs = reader.join().unwrap();
        assert!(
            !(would_free && seen_after_qs == OLD),
            "the GP freed OLD although the reader loaded it after its quiescent state"
        );
    });
}

#[test]
fn a_reader_past_its_quiescent_state_never_loads_the_old_target() {
    model_switch(|cell, site| {
        cell.exit(); // task switched out at a yield point
        cell.enter(); // next task switched in (barrier inside)
        site.load(Ordering::Acquire)
    });
}

#[test]
fn a_registered_thread_reporting_quiescent_never_loads_the_old_target() {
    model_switch(|cell, site| {
        cell.quiescent();
        site.load(Ordering::Acquire)
    });
}

/// The control: the same protocol with the reader's barrier left out (a bare store to the
/// cell) must be caught by the model checker, which shows the two tests above can fail.
#[test]
#[should_panic(expected = "the GP freed OLD")]
fn control_without_the_reader_barrier_the_model_finds_the_bug() {
    loom::model(|| {
        let site = Arc::new(AtomicU64::new(OLD));
        let cell = Arc::new(AtomicU64::new(1)); // active, count 0
        let reader = {
            let (site, cell) = (site.clone(), cell.clone());
            thread::spawn(move || {
                cell.store(3, Ordering::Release); // count 1, active: a QS report, no fence
                site.load(Ordering::Acquire)
            })
        };
        site.store(NEW, Ordering::Release);
        heavy_barrier();
        let snap = cell.load(Ordering::Acquire);
        let would_free = snap & 1 == 0 || cell.load(Ordering::Acquire) != snap;
        let seen = reader.join().unwrap();
        assert!(
            !(would_free && seen == OLD),
            "the GP freed OLD although the reader loaded it"
        );
    });
}
