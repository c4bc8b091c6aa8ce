//! Deferred callbacks: the queue, lazy batching, and running a batch.
//!
//! Every callback queued before a GP starts joins that GP's batch (the driver takes the whole
//! queue when it starts the GP), so a burst of N callbacks costs one GP. A batch that nobody
//! waits for is *lazy*: its GP starts only once the oldest callback has waited
//! [`GraceConfig::callback_delay`](super::GraceConfig::callback_delay), or at once when
//! [`LAZY_BATCH_MAX`] are queued. The driver is woken for the first callback of a batch (it
//! then waits out the delay by itself) and for a full batch, not for every callback. An open
//! batch ([`GraceDomain::call_batch`]) counts as one callback here, whatever the number of its
//! items: a storm of frees into one open batch waits out the delay rather than starting its
//! GP early.
//! `barrier` waits for `callbacks_done` (see `driver.rs`).
//!
//! A callback may carry a **code range** ([`GraceDomain::call_for_code`]): it then also waits
//! until no task parked inside yielding code references the range. At the end of each GP,
//! [`Engine::hold_referenced`] moves such callbacks out of the batch into the engine's *held*
//! list; the driver rechecks that list whenever the registry's code references change (the
//! algorithm and its ordering argument are in the [`code`](crate::code) docs).
//!
//! [`GraceDomain::call_for_code`]: super::GraceDomain::call_for_code
//! [`GraceDomain::call_batch`]: super::GraceDomain::call_batch

use std::mem::ManuallyDrop;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::batch::CallbackBatch;
use super::driver::Engine;

/// A deferred callback.
pub(super) enum Callback {
    /// One closure, and the code it frees, if any (it waits for parked tasks' references
    /// too).
    Closure {
        f: Box<dyn FnOnce() + Send>,
        code: CodeSpan,
    },
    /// An open batch of items (`batch.rs`), sealed when the GP that takes it is claimed.
    Batch(Box<dyn CallbackBatch>),
}

impl Callback {
    /// A closure that frees the code in `code` (plain GP semantics without a range).
    pub(super) fn closure(f: Box<dyn FnOnce() + Send>, code: CodeSpan) -> Callback {
        Callback::Closure { f, code }
    }

    /// Closes an open batch (the GP that takes it is being claimed: `batch.rs`). Returns
    /// false if the batch's `seal` panicked: the caller leaks it (its items' state is unknown,
    /// so it may neither run nor drop them).
    pub(super) fn seal(&mut self) -> bool {
        match self {
            Callback::Batch(b) => catch_unwind(AssertUnwindSafe(|| b.seal())).is_ok(),
            Callback::Closure { .. } => true,
        }
    }

    /// Whether the callback is an open batch.
    pub(super) fn is_batch(&self) -> bool {
        matches!(self, Callback::Batch(_))
    }

    /// Whether the callback may free code a parked task references.
    fn may_free_code(&self) -> bool {
        match self {
            Callback::Closure { code, .. } => !code.is_none(),
            Callback::Batch(_) => true,
        }
    }

    /// Splits the callback by the references in `refs`: `(part to run, part to hold)`.
    fn split_referenced(self, refs: &crate::code::RefSet) -> (Option<Callback>, Option<Callback>) {
        match self {
            Callback::Closure { ref code, .. } if code.referenced_by(refs) => (None, Some(self)),
            Callback::Closure { .. } => (Some(self), None),
            Callback::Batch(b) => split_batch(b, refs),
        }
    }

    fn run(mut self) {
        if seal_at_run() {
            let _ = self.seal(); // the injected bug (see `seal_at_run`)
        }
        match self {
            Callback::Closure { f, .. } => f(),
            Callback::Batch(b) => b.run(),
        }
    }
}

/// [`Callback::split_referenced`] for a batch. A batch that panics in `split_referenced` or
/// `is_empty` is leaked with anything it split off (the `CallbackBatch` contract: a part held
/// back may free code a parked task still runs in), before the log, as a subscriber may panic
/// in it.
fn split_batch(
    mut b: Box<dyn CallbackBatch>,
    refs: &crate::code::RefSet,
) -> (Option<Callback>, Option<Callback>) {
    let split = catch_unwind(AssertUnwindSafe(|| {
        b.split_referenced(&mut |s, e| refs.hits(s, e))
    }));
    let Ok(held) = split else {
        std::mem::forget(b);
        tracing::error!(
            target: "tramway::grace",
            "a callback batch panicked in split_referenced: it is leaked"
        );
        return (None, None);
    };
    let Some(held) = held else {
        return (Some(Callback::Batch(b)), None);
    };
    // Not dropped until the batch says whether anything is left in it.
    let held = ManuallyDrop::new(held);
    let Ok(emptied) = catch_unwind(AssertUnwindSafe(|| b.is_empty())) else {
        std::mem::forget(b);
        tracing::error!(
            target: "tramway::grace",
            "a callback batch panicked in is_empty: it is leaked"
        );
        return (None, None);
    };
    let held = Some(Callback::Batch(ManuallyDrop::into_inner(held)));
    if !emptied {
        return (Some(Callback::Batch(b)), held);
    }
    // Everything was held: the empty part is dropped here, not run or counted.
    if catch_unwind(AssertUnwindSafe(move || drop(b))).is_err() {
        tracing::error!(
            target: "tramway::grace",
            "an emptied callback batch panicked when dropped"
        );
    }
    (None, held)
}

/// Fault injection for the open-batch control (`loom_tests.rs`): batches are sealed when
/// they run instead of when their GP is claimed, so items pushed during the GP ride on it.
pub(super) fn seal_at_run() -> bool {
    #[cfg(all(loom, test))]
    return super::loom_tests::SEAL_AT_RUN.with(std::cell::Cell::get);
    #[cfg(not(all(loom, test)))]
    false
}

/// Splits `list` by the references in `refs`: `(callbacks to run, callbacks to hold)`, each
/// in queueing order (a batch may contribute to both).
///
/// If this unwinds (a tracing subscriber that panics at the event logging a batch's own
/// panic), every callback in it is leaked, never dropped: a held one may free code a parked
/// task still runs in.
pub(super) fn split_referenced(
    list: Vec<Callback>,
    refs: &crate::code::RefSet,
) -> (Vec<Callback>, Vec<Callback>) {
    let mut free = ManuallyDrop::new(Vec::with_capacity(list.len()));
    let mut held = ManuallyDrop::new(Vec::new());
    let mut rest = ManuallyDrop::new(list.into_iter());
    for cb in rest.by_ref() {
        let (run, hold) = cb.split_referenced(refs);
        free.extend(run);
        held.extend(hold);
    }
    drop(ManuallyDrop::into_inner(rest)); // empty
    (
        ManuallyDrop::into_inner(free),
        ManuallyDrop::into_inner(held),
    )
}

/// The code ranges a callback frees (one in the common case, without an allocation).
pub(super) enum CodeSpan {
    /// None: plain grace-period semantics.
    None,
    /// `start..end`.
    One(usize, usize),
    /// Several `(start, end)` ranges (a batch of frees merged into one callback).
    Many(Box<[(usize, usize)]>),
}

impl CodeSpan {
    /// The non-empty ranges of `code`.
    pub(super) fn new(code: &[std::ops::Range<usize>]) -> CodeSpan {
        let mut ranges = code
            .iter()
            .filter(|r| r.start < r.end)
            .map(|r| (r.start, r.end));
        match (ranges.next(), ranges.next()) {
            (None, _) => CodeSpan::None,
            (Some((s, e)), None) => CodeSpan::One(s, e),
            (Some(a), Some(b)) => CodeSpan::Many([a, b].into_iter().chain(ranges).collect()),
        }
    }

    fn is_none(&self) -> bool {
        matches!(self, CodeSpan::None)
    }

    /// Whether some reference in `refs` lies in one of the ranges.
    pub(super) fn referenced_by(&self, refs: &crate::code::RefSet) -> bool {
        match self {
            CodeSpan::None => false,
            CodeSpan::One(s, e) => refs.hits(*s, *e),
            CodeSpan::Many(r) => r.iter().any(|&(s, e)| refs.hits(s, e)),
        }
    }
}

/// Callbacks held back at the end of a GP because parked tasks' stacks point into their code.
#[derive(Default)]
pub(super) struct HeldCallbacks {
    pub(super) list: Vec<Callback>,
    /// The registry's code-reference version (read before the references) at the oldest
    /// check of anything in `list`: a different current version means recheck.
    pub(super) version: u64,
}

impl HeldCallbacks {
    /// Adds callbacks checked against the references of `version`.
    pub(super) fn add(&mut self, held: Vec<Callback>, version: u64) {
        if held.is_empty() {
            return;
        }
        self.version = if self.list.is_empty() {
            version
        } else {
            self.version.min(version)
        };
        self.list.extend(held);
    }
}

/// A batch this large starts its grace period without waiting out the callback delay
/// (smaller under test, to exercise the full-batch path).
#[cfg(not(test))]
const LAZY_BATCH_MAX: usize = 4096;
#[cfg(test)]
const LAZY_BATCH_MAX: usize = 16;

/// Callbacks queued for the next GP to start.
#[derive(Default)]
pub(super) struct PendingCallbacks {
    list: Vec<Callback>,
    /// When the oldest of `list` was queued.
    first_at: Option<Instant>,
}

impl PendingCallbacks {
    pub(super) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Queues `f`; returns whether the driver must be woken (first of a batch, or full).
    fn push(&mut self, f: Callback) -> bool {
        if self.list.is_empty() {
            self.first_at = Some(Instant::now());
        }
        self.list.push(f);
        self.list.len() == 1 || self.list.len() == LAZY_BATCH_MAX
    }

    /// How much longer the batch may wait for more callbacks; `None` when its GP is due.
    pub(super) fn time_left(&self, delay: Duration) -> Option<Duration> {
        if self.list.len() >= LAZY_BATCH_MAX {
            return None;
        }
        let age = self.first_at.map_or(Duration::MAX, |t| t.elapsed());
        delay.checked_sub(age).filter(|left| !left.is_zero())
    }

    /// Takes the whole batch (the driver, when it starts a GP).
    pub(super) fn take(&mut self) -> Vec<Callback> {
        self.first_at = None;
        std::mem::take(&mut self.list)
    }
}

impl Engine {
    /// Queues `f` for the next GP to start (see the module docs).
    pub(super) fn queue_callback(&self, f: Callback) {
        let mut seq = self.lock();
        if seq.callbacks.push(f) {
            self.wake_driver(&seq);
        }
        drop(seq);
        self.counters
            .callbacks_queued
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Moves the ranged callbacks of `batch` that parked tasks' code references hit out of it
    /// and returns them (read after a GP ended: see the `code` docs for why that is enough),
    /// with the reference version read *before* the references: the held callbacks must be
    /// rechecked once the version differs from it (a change between the two reads must not
    /// look already seen).
    pub(super) fn hold_referenced(&self, batch: &mut Vec<Callback>) -> (Vec<Callback>, u64) {
        let version = self.registry.code_refs_version();
        if !batch.iter().any(Callback::may_free_code) {
            return (Vec::new(), version);
        }
        let refs = self.registry.code_ref_set();
        if refs.is_empty() {
            return (Vec::new(), version);
        }
        let (free, held) = split_referenced(std::mem::take(batch), &refs);
        *batch = free;
        self.counters
            .callbacks_held
            .fetch_add(held.len() as u64, Ordering::Relaxed);
        (held, version)
    }

    /// Runs a GP's batch in queueing order. A panicking callback is counted and logged; the
    /// others still run.
    pub(super) fn run_callbacks(&self, batch: Vec<Callback>) {
        for cb in batch {
            if catch_unwind(AssertUnwindSafe(|| cb.run())).is_err() {
                self.counters
                    .callbacks_panicked
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(target: "tramway::grace", "a grace-period callback panicked");
            }
            self.counters.callbacks_run.fetch_add(1, Ordering::Relaxed);
        }
    }
}
