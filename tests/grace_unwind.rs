//! A grace period that unwinds on the thread that runs it inline (here: a tracing subscriber
//! of the caller's that panics when the `grace_period` span opens) must not leave later
//! waiters behind it. Before the fix the unwound GP kept its number, never completed, and
//! nothing asked for another one: a `barrier()` (which, with no callback pending, waits for
//! the last GP started) slept forever.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::time::Duration;

use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

use tramway::runtime::grace::{GraceConfig, GraceDomain};

/// Panics when a `grace_period` span is created; ignores everything else.
struct PanicsInGracePeriod;

impl Subscriber for PanicsInGracePeriod {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        if span.metadata().name() == "grace_period" {
            panic!("the subscriber panics inside the grace period");
        }
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, _: &Event<'_>) {}
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[test]
fn a_grace_period_that_unwinds_on_its_caller_does_not_hang_later_waiters() {
    let gp = GraceDomain::for_threads(GraceConfig::default()).unwrap();
    // Nothing is pending or running, so this caller claims the GP and runs it inline, on
    // this thread, where the panicking subscriber is the default.
    let unwound = catch_unwind(AssertUnwindSafe(|| {
        tracing::subscriber::with_default(PanicsInGracePeriod, || gp.synchronize())
    }));
    assert!(unwound.is_err(), "the grace period ran on this thread");
    let inline = gp.stats().inline_grace_periods;
    assert_eq!(inline, 1, "the grace period that unwound was run inline");

    let (done_tx, done) = mpsc::channel();
    let waiter = gp.clone();
    std::thread::spawn(move || {
        waiter.barrier();
        waiter.synchronize();
        let cookie = waiter.start_poll();
        waiter.wait(&cookie);
        done_tx.send(()).unwrap();
    });
    done.recv_timeout(Duration::from_secs(30))
        .expect("a barrier, a synchronize and a cookie after the unwound grace period hung (30 s)");
    assert!(gp.stats().completed >= 2);
}
