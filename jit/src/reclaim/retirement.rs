//! The retirement state of one `Jit`: its reclaimer, the count of frees it has not run yet, and
//! the backlog bound.
//!
//! Every free of code that may have been reachable enters the reclaimer here ([`defer_free`]),
//! counted until it runs, so that [`drain`] (`Jit::barrier`) knows when everything deferred so
//! far has run, and [`throttle_backlog`] (`Site::swap`) can slow a patcher down to the pace of
//! grace periods. The whole chain is drawn in `reclaim/mod.rs`.
//!
//! [`defer_free`]: Retirement::defer_free
//! [`drain`]: Retirement::drain
//! [`throttle_backlog`]: Retirement::throttle_backlog

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::free::{run_each, CodeFree, LowerOnDrop, OpenFrees, QueuedFrees};
use super::{collect, Deferred, Reclaim};
use crate::code_memory::CodeMemory;

/// Default bound on retired-but-unreclaimed code bytes before `swap` throttles the patcher.
pub const DEFAULT_MAX_RETIRED_BYTES: usize = 16 << 20;

/// How many barriers one throttled `swap` waits for at most. A free can defer further frees
/// (a dropped snapshot or handle releases more retired code), which the second round catches;
/// the cap keeps a patcher that holds its own `Retired` handles (which no barrier can free)
/// from waiting forever.
const MAX_THROTTLE_ROUNDS: usize = 2;

/// The reclaimer of a `Jit` with the bookkeeping around it.
pub(crate) struct Retirement {
    reclaimer: Arc<dyn Reclaim>,
    /// Backlog bound; see `JitBuilder::max_retired_bytes`.
    max_retired_bytes: u64,
    /// Whether the backlog throttle may wait (`Reclaim::barrier_waits_for_grace_period`,
    /// asked once).
    may_throttle: bool,
    /// The reclaimed retired bytes (`StatCounters::retired_bytes_consumed`) as the backlog
    /// throttle last read them: a lower bound of the count (see `throttle_backlog`).
    consumed_seen: AtomicU64,
    /// Frees handed to the reclaimer that have not run yet.
    pending_frees: Arc<AtomicU64>,
    /// What the frees free into; `retired_bytes` is read from its counters.
    mem: Arc<CodeMemory>,
    /// The open batch of frees (`free.rs`), when the reclaimer keeps batches open.
    open: Option<Arc<Mutex<OpenFrees>>>,
    /// Pushes that opened a batch and have not queued it with the reclaimer yet (raised
    /// under the batch's lock, lowered once it is queued). [`drain`](Self::drain) waits for
    /// none before each barrier: a free pushed into a batch that another thread opened, but
    /// has not queued yet, is not covered by a barrier that starts before the batch is queued.
    queuing: AtomicU64,
}

impl Retirement {
    pub(crate) fn new(
        reclaimer: Arc<dyn Reclaim>,
        max_retired_bytes: usize,
        mem: Arc<CodeMemory>,
    ) -> Self {
        let open = reclaimer
            .keeps_batches_open()
            .then(|| Arc::new(Mutex::new(OpenFrees::default())));
        Retirement {
            may_throttle: reclaimer.barrier_waits_for_grace_period(),
            reclaimer,
            max_retired_bytes: max_retired_bytes as u64,
            consumed_seen: AtomicU64::new(0),
            pending_frees: Arc::new(AtomicU64::new(0)),
            mem,
            open,
            queuing: AtomicU64::new(0),
        }
    }

    /// Hands a free of possibly reachable code to the reclaimer, counted until it runs.
    /// Inside a collection scope ([`retire_together`](Self::retire_together)) on this thread
    /// the free joins the scope's single callback; with a reclaimer that keeps batches open
    /// it joins the open batch (`free.rs`: no allocation); otherwise it is boxed once and
    /// deferred on its own.
    ///
    /// A task parked inside yielding code whose stack points into the freed code holds the
    /// free back (`Reclaim::defer_code`).
    pub(crate) fn defer_free(&self, free: CodeFree) {
        self.pending_frees.fetch_add(1, Ordering::Relaxed);
        if collect::is_collecting() {
            let code = free.code();
            if let Some((code, free)) = collect::try_collect(code, self.boxed(free)) {
                self.reclaimer.defer_code(std::slice::from_ref(&code), free);
            }
            return;
        }
        match &self.open {
            Some(open) => {
                if OpenFrees::push(open, free, &self.queuing) {
                    // Lowers `queuing` once the batch is queued (or the queueing unwound).
                    let _queued = LowerOnDrop(&self.queuing, 1);
                    #[cfg(test)]
                    crate::tests::before_queueing_a_batch();
                    let batch = QueuedFrees::new(
                        Arc::clone(open),
                        Arc::clone(&self.mem),
                        Arc::clone(&self.pending_frees),
                    );
                    self.reclaimer.defer_batch(Box::new(batch));
                }
            }
            None => {
                let code = free.code();
                self.reclaimer
                    .defer_code(std::slice::from_ref(&code), self.boxed(free));
            }
        }
    }

    /// `free` as one callback that runs it and counts it as run.
    fn boxed(&self, free: CodeFree) -> Deferred {
        let mem = Arc::clone(&self.mem);
        let pending = Arc::clone(&self.pending_frees);
        Box::new(move || {
            let _ran = LowerOnDrop(&pending, 1);
            // SAFETY: a reclaimer runs a deferred callback once, after its grace period and
            // once no parked task references its range (the `Reclaim` contract).
            unsafe { free.run(&mem) };
        })
    }

    /// Runs `release` (which drops handles and so defers frees) with this thread's deferred
    /// frees collected, then queues all of them, followed by `then`, as **one** reclaimer
    /// callback: one grace period for the lot (see `collect.rs` for why that is sound).
    /// Nothing is queued if there is nothing to run.
    pub(crate) fn retire_together(&self, release: impl FnOnce(), then: Option<Deferred>) {
        let frees = collect::collect(release);
        if frees.is_empty() && then.is_none() {
            return;
        }
        let code: Vec<Range<usize>> = frees.iter().map(|(code, _)| code.clone()).collect();
        self.reclaimer.defer_code(
            &code,
            Box::new(move || {
                run_each(frees.into_iter().map(|(_, free)| free).chain(then));
            }),
        );
    }

    /// Runs reclaimer barriers until every free deferred so far has run, including the ones
    /// those frees deferred in turn (a free can release the last handle of more retired
    /// code). Stops early if a round makes no progress (other threads keep retiring code, or
    /// the reclaimer's barrier does not wait for grace periods, like `LeakUntilDrop`'s), so it
    /// cannot wait forever.
    pub(crate) fn drain(&self) {
        let mut pending = self.pending_frees.load(Ordering::Acquire);
        while pending > 0 {
            self.barrier();
            let now = self.pending_frees.load(Ordering::Acquire);
            if now >= pending {
                return;
            }
            pending = now;
        }
    }

    /// Whether the calling thread may call the `Jit`'s code now (`Reclaim::tracks_current_thread`).
    #[inline]
    pub(crate) fn tracks_current_thread(&self) -> bool {
        self.reclaimer.tracks_current_thread()
    }

    /// Blocks the patcher while retired code exceeds the bound (only with a grace-period
    /// reclaimer, whose barrier is safe while callers run).
    ///
    /// The backlog is the retired bytes less the reclaimed ones, and the reclaimed count only
    /// grows: while the retired count stays within the bound of a reclaimed count read
    /// earlier (`consumed_seen`), so does the backlog. So a swap
    /// reads only the retired count, which its own retire just wrote, and the reclaimed one
    /// (which the driver writes) only when that check fails: after the room that was left
    /// under the bound at the last such read has been retired, or on every swap while the
    /// backlog is at the bound.
    #[inline]
    pub(crate) fn throttle_backlog(&self) {
        if !self.may_throttle {
            return;
        }
        let retired = self.mem.stats().retired_bytes_produced();
        let consumed_seen = self.consumed_seen.load(Ordering::Relaxed);
        if retired.saturating_sub(consumed_seen) <= self.max_retired_bytes {
            return;
        }
        self.throttle_backlog_slow();
    }

    #[cold]
    fn throttle_backlog_slow(&self) {
        let stats = self.mem.stats();
        for round in 0..MAX_THROTTLE_ROUNDS {
            // Consumed first: the retired count read after it is at least as new, so the
            // difference never undercounts the backlog at the second read.
            let consumed = stats.retired_bytes_consumed();
            if consumed > self.consumed_seen.load(Ordering::Relaxed) {
                self.consumed_seen.fetch_max(consumed, Ordering::Relaxed);
            }
            let backlog = stats.retired_bytes_produced().saturating_sub(consumed);
            if backlog <= self.max_retired_bytes {
                return;
            }
            tracing::debug!(
                target: "tramway::jit",
                retired_bytes = backlog,
                max_retired_bytes = self.max_retired_bytes,
                round,
                "backlog throttle: waiting for reclamation"
            );
            self.barrier();
        }
    }

    /// The reclaimer's barrier, once every batch opened so far is queued (see `queuing`; the
    /// wait is the few instructions between a push and its `defer_batch`).
    fn barrier(&self) {
        while self.queuing.load(Ordering::Acquire) > 0 {
            std::thread::yield_now();
        }
        self.reclaimer.barrier();
    }
}
