//! A grace period that unwinds on the thread that runs it inline must not leave later
//! waiters behind it. The panics come from a tracing subscriber of the caller's, whose hooks
//! run inside the grace period on the caller's thread: when its span opens, at its "grace
//! period ended" event, and when its span is left. Before the fix the unwound GP kept its
//! number, never completed, and nothing asked for another one: a `barrier()` (which, with no
//! callback pending, waits for the last GP started) slept forever. A panic in the end event
//! or the span's exit, after the claim had been disarmed, left the GP `running` for good.
//!
//! The same subscriber also panics at the error event that reports a user batch's own panic
//! (two faults at once): a batch that panicked in `seal` (logged while the GP was being
//! claimed, before anything would release the claim) and one that panicked in
//! `split_referenced` (logged while the GP's callbacks were out of its claim).

use std::fmt::Debug;
use std::hint::black_box;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

use tramway::runtime::code::{in_yielding_code, CodeRange};
use tramway::runtime::grace::{CallbackBatch, GraceConfig, GraceDomain};
use tramway::runtime::{Event as TaskEvent, Runtime};

/// Where the subscriber panics.
#[derive(Clone, Copy, Debug)]
enum PanicAt {
    /// When the `grace_period` span is created (before the GP waits).
    SpanCreated,
    /// When the `grace_period` span is left.
    SpanExit,
    /// At the event whose message contains this text ("grace period ended": after the GP has
    /// waited).
    EventSaying(&'static str),
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
        if let PanicAt::EventSaying(text) = self.0 {
            if message.0.contains(text) {
                panic!("the subscriber panics at the event {:?}", message.0);
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
    assert_later_waiters_are_served(&gp, &format!("{at:?}"));
}

/// A barrier, a synchronize and a cookie on another thread all return, and their grace
/// periods complete. On a hang the domain is leaked: dropping it would wait too.
fn assert_later_waiters_are_served(gp: &GraceDomain, what: &str) {
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
    if done.recv_timeout(Duration::from_secs(30)).is_err() {
        std::mem::forget(gp.clone());
        panic!("{what}: a barrier, a synchronize and a cookie after the unwound grace period hung (30 s)");
    }
    assert!(
        gp.stats().completed >= completed + 2,
        "{what}: the waiters' grace periods completed"
    );
}

#[test]
fn a_grace_period_that_unwinds_as_its_span_opens_does_not_hang_later_waiters() {
    later_waiters_are_served_after_a_panic(PanicAt::SpanCreated);
}

#[test]
fn a_grace_period_that_unwinds_at_its_end_event_does_not_hang_later_waiters() {
    later_waiters_are_served_after_a_panic(PanicAt::EventSaying("grace period ended"));
}

#[test]
fn a_grace_period_that_unwinds_as_its_span_is_left_does_not_hang_later_waiters() {
    later_waiters_are_served_after_a_panic(PanicAt::SpanExit);
}

/// What became of a callback: whether it ran, and whether it was dropped (a leaked one is
/// neither).
#[derive(Default)]
struct Fate {
    ran: AtomicBool,
    dropped: AtomicBool,
}

impl Fate {
    fn ran(&self) -> bool {
        self.ran.load(Ordering::SeqCst)
    }
    fn dropped(&self) -> bool {
        self.dropped.load(Ordering::SeqCst)
    }
}

/// Sets its fate's `dropped` when dropped.
struct Tracked(Arc<Fate>);

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.dropped.store(true, Ordering::SeqCst);
    }
}

/// A user batch that panics in `seal` or in `split_referenced`.
struct FaultyBatch {
    panics_in_seal: bool,
    fate: Tracked,
}

impl CallbackBatch for FaultyBatch {
    fn seal(&mut self) {
        if self.panics_in_seal {
            panic!("the batch panics in seal");
        }
    }
    fn split_referenced(
        &mut self,
        _referenced: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Option<Box<dyn CallbackBatch>> {
        panic!("the batch panics in split_referenced");
    }
    fn run(self: Box<Self>) {
        self.fate.0.ran.store(true, Ordering::SeqCst);
    }
}

/// Runs `gp.synchronize()` inline on this thread under a subscriber that panics at the event
/// saying `text`, and asserts that it unwound. Returns the number of inline GPs after it, for
/// the caller to check once later waiters were served (a failed check that dropped the domain
/// now would hang on the stuck grace period).
fn synchronize_under_a_subscriber_panicking_at(gp: &GraceDomain, text: &'static str) -> u64 {
    let unwound = catch_unwind(AssertUnwindSafe(|| {
        tracing::subscriber::with_default(PanicsInGracePeriod(PanicAt::EventSaying(text)), || {
            gp.synchronize()
        })
    }));
    assert!(unwound.is_err(), "the subscriber panicked at {text:?}");
    gp.stats().inline_grace_periods
}

/// Before the fix, the seal failure was logged under the state lock with the GP already
/// marked running and no guard to release it: every later grace period hung.
#[test]
fn a_batch_panicking_in_seal_under_a_panicking_subscriber_is_leaked_and_gps_go_on() {
    let gp =
        GraceDomain::for_threads(GraceConfig::default().callback_delay(Duration::from_secs(3600)))
            .unwrap();
    let fate = Arc::new(Fate::default());
    gp.call_batch(Box::new(FaultyBatch {
        panics_in_seal: true,
        fate: Tracked(fate.clone()),
    }));
    let inline = synchronize_under_a_subscriber_panicking_at(&gp, "panicked in seal");
    assert_later_waiters_are_served(&gp, "seal");
    assert!(!fate.ran() && !fate.dropped(), "the batch was leaked");
    assert_eq!(inline, 1, "the GP ran inline");
}

/// Stands for JIT code that a parked task references.
static BODY: [u8; 64] = [0; 64];

/// Before the fix, the split failure was logged with the GP's callbacks out of its claim (and
/// the failed batch not yet forgotten): the unwind dropped the batch and the callback held
/// back for the parked task, which in a JIT frees the code under that task.
#[test]
fn a_batch_panicking_in_split_under_a_panicking_subscriber_leaks_what_was_held() {
    let body = BODY.as_ptr() as usize..BODY.as_ptr() as usize + BODY.len();
    let _registered = CodeRange::register(body.start, BODY.len()).unwrap();
    let rt = Runtime::builder().workers(2).build().unwrap();
    let gp = GraceDomain::new(
        &rt,
        GraceConfig::default().callback_delay(Duration::from_secs(3600)),
    )
    .unwrap();
    // A task parks inside yielding code with a word pointing into BODY on its stack.
    let (inside, release) = (Arc::new(AtomicBool::new(false)), Arc::new(TaskEvent::new()));
    let (i, r) = (inside.clone(), release.clone());
    let task = rt
        .spawn(move || {
            let return_address = black_box(BODY.as_ptr() as usize + 8);
            in_yielding_code(|| {
                i.store(true, Ordering::SeqCst);
                r.wait();
            });
            black_box(return_address)
        })
        .unwrap();
    assert!(tramway_harness::wait::within(
        Duration::from_secs(20),
        || { inside.load(Ordering::SeqCst) && rt.stats().tasks_with_code_refs == 1 }
    ));

    let frees_body = Arc::new(Fate::default());
    let tracked = Tracked(frees_body.clone());
    gp.call_for_code(&[body], move || tracked.0.ran.store(true, Ordering::SeqCst));
    let batch = Arc::new(Fate::default());
    gp.call_batch(Box::new(FaultyBatch {
        panics_in_seal: false,
        fate: Tracked(batch.clone()),
    }));
    let inline = synchronize_under_a_subscriber_panicking_at(&gp, "panicked in split_referenced");
    assert!(
        !frees_body.ran() && !frees_body.dropped(),
        "the free held back for the parked task was leaked"
    );
    assert!(!batch.ran() && !batch.dropped(), "the batch was leaked");

    release.notify_one();
    task.join().unwrap();
    assert_later_waiters_are_served(&gp, "split_referenced");
    assert!(!frees_body.ran() && !frees_body.dropped());
    assert_eq!(inline, 1, "the GP ran inline");
}
