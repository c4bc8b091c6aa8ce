//! A grace period that unwinds on the thread that runs it inline must not leave later
//! waiters behind it. The panics come from a tracing subscriber of the caller's, whose hooks
//! run inside the grace period on the caller's thread: when its span opens, at its "grace
//! period ended" event, and when its span is left. Before the fix the unwound GP kept its
//! number, never completed, and nothing asked for another one: a `barrier()` (which, with no
//! callback pending, waits for the last GP started) slept forever. A panic in the end event
//! or the span's exit, after the claim had been disarmed, left the GP `running` for good.

use std::fmt::Debug;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

use tramway::runtime::grace::{GraceConfig, GraceDomain};

/// Where the subscriber panics.
#[derive(Clone, Copy, Debug)]
enum PanicAt {
    /// When the `grace_period` span is created (before the GP waits).
    SpanCreated,
    /// At the "grace period ended" event (after the GP has waited).
    EndEvent,
    /// When the `grace_period` span is left.
    SpanExit,
}

/// The id this subscriber gives `grace_period` spans (every other span gets 1).
const GRACE_PERIOD_SPAN: u64 = 2;

struct PanicsInGracePeriod(PanicAt);

/// Finds an event's message.
struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl Subscriber for PanicsInGracePeriod {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        if span.metadata().name() != "grace_period" {
            return Id::from_u64(1);
        }
        if let PanicAt::SpanCreated = self.0 {
            panic!("the subscriber panics as the grace period's span is created");
        }
        Id::from_u64(GRACE_PERIOD_SPAN)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut message = Message(String::new());
        event.record(&mut message);
        if let PanicAt::EndEvent = self.0 {
            if message.0.contains("grace period ended") {
                panic!("the subscriber panics at the grace period's end event");
            }
        }
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, id: &Id) {
        if let PanicAt::SpanExit = self.0 {
            if id.into_u64() == GRACE_PERIOD_SPAN && !std::thread::panicking() {
                panic!("the subscriber panics as the grace period's span is left");
            }
        }
    }
}

fn later_waiters_are_served_after_a_panic(at: PanicAt) {
    let gp = GraceDomain::for_threads(GraceConfig::default()).unwrap();
    // Nothing is pending or running, so this caller claims the GP and runs it inline, on
    // this thread, where the panicking subscriber is the default.
    let unwound = catch_unwind(AssertUnwindSafe(|| {
        tracing::subscriber::with_default(PanicsInGracePeriod(at), || gp.synchronize())
    }));
    assert!(
        unwound.is_err(),
        "{at:?}: the grace period ran on this thread"
    );
    assert_eq!(
        gp.stats().inline_grace_periods,
        1,
        "{at:?}: the grace period that unwound was run inline"
    );
    let completed = gp.stats().completed;

    let (done_tx, done) = mpsc::channel();
    let waiter = gp.clone();
    std::thread::spawn(move || {
        waiter.barrier();
        waiter.synchronize();
        let cookie = waiter.start_poll();
        waiter.wait(&cookie);
        done_tx.send(()).unwrap();
    });
    done.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| {
        panic!("{at:?}: a barrier, a synchronize and a cookie after the unwound grace period hung (30 s)")
    });
    assert!(
        gp.stats().completed >= completed + 2,
        "{at:?}: the waiters' grace periods completed"
    );
}

#[test]
fn a_grace_period_that_unwinds_as_its_span_opens_does_not_hang_later_waiters() {
    later_waiters_are_served_after_a_panic(PanicAt::SpanCreated);
}

#[test]
fn a_grace_period_that_unwinds_at_its_end_event_does_not_hang_later_waiters() {
    later_waiters_are_served_after_a_panic(PanicAt::EndEvent);
}

#[test]
fn a_grace_period_that_unwinds_as_its_span_is_left_does_not_hang_later_waiters() {
    later_waiters_are_served_after_a_panic(PanicAt::SpanExit);
}
