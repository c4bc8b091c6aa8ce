//! Counters of a [`Jit`](crate::Jit): mapped memory and the trampoline lifecycle.
//!
//! The lifecycle is kept as monotonic *event* counters, one atomic add per event and no lock:
//! emitted, retired (with the retired bytes), reclaimed (split by whether the trampoline had
//! been retired), leaked. A trampoline's events happen in lifecycle order (emitted before
//! retired before reclaimed), so a snapshot that reads the later events first and the earlier
//! ones after (each `Acquire`) sees, for every later event it counts, the earlier events of
//! the same trampoline too: every derived gauge (`live`, `retired`, `retired_bytes`) is then
//! non-negative, and `emitted == live + retired + reclaimed` holds by construction. The
//! patcher's events and the reclaimer's sit on different cache lines, so a patch storm and the
//! grace-period thread freeing behind it do not contend. Mapped bytes, chunks (and the spare
//! ones among them), sites and unwind registrations are plain gauges.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_utils::CachePadded;

/// A snapshot of a [`Jit`](crate::Jit)'s counters.
///
/// Trampolines move `live -> retired -> reclaimed` (or `live -> reclaimed` when never installed);
/// `emitted == live + retired + reclaimed` in every snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct JitStats {
    /// Bytes of code memory currently mapped (RX views of all mapped chunks).
    pub mapped_bytes: usize,
    /// Chunks currently mapped.
    pub chunks: usize,
    /// Of those, empty chunks kept mapped for reuse (a size class's spares: the four it keeps
    /// for good and those younger than
    /// [`JitBuilder::spare_chunk_decay`](crate::JitBuilder::spare_chunk_decay)).
    pub spare_chunks: usize,
    /// Trampolines emitted so far.
    pub emitted: u64,
    /// Trampolines emitted and not retired.
    pub live: u64,
    /// Trampolines retired and not yet reclaimed (includes leaked ones).
    pub retired: u64,
    /// Bytes of code slots held by retired trampolines awaiting reclamation (leaked ones
    /// excluded). [`JitBuilder::max_retired_bytes`](crate::JitBuilder::max_retired_bytes) bounds it.
    pub retired_bytes: usize,
    /// Trampolines whose memory was freed.
    pub reclaimed: u64,
    /// Retired trampolines leaked with [`Retired::leak`](crate::Retired::leak) (never reclaimed).
    pub leaked: u64,
    /// Patch sites whose stubs are still allocated.
    pub sites: u64,
    /// Trampolines whose unwind information is registered with the system unwinder now
    /// ([`JitBuilder::unwind_info`](crate::JitBuilder::unwind_info): the hook-calling ones,
    /// from emission until their code is freed; leaked ones stay registered). Once frees have
    /// run ([`Jit::barrier`](crate::Jit::barrier)), it equals the number of hook-calling
    /// trampolines still alive or leaked.
    pub unwind_registered: u64,
}

impl JitStats {
    /// Whether `emitted == live + retired + reclaimed`.
    pub fn balanced(&self) -> bool {
        self.emitted == self.live + self.retired + self.reclaimed
    }
}

/// Events the emitting / swapping side counts.
#[derive(Default)]
struct Produced {
    emitted: AtomicU64,
    /// Retirements, and leaks of trampolines that were never retired (they leave `live` too).
    retired: AtomicU64,
    retired_bytes: AtomicU64,
}

/// Events the reclaiming side counts.
#[derive(Default)]
struct Consumed {
    reclaimed_retired: AtomicU64,
    reclaimed_unretired: AtomicU64,
    /// Bytes of retired trampolines reclaimed or leaked.
    retired_bytes: AtomicU64,
    leaked: AtomicU64,
}

/// The counters themselves (see the module docs).
#[derive(Default)]
pub(crate) struct StatCounters {
    produced: CachePadded<Produced>,
    consumed: CachePadded<Consumed>,
    mapped_bytes: AtomicUsize,
    chunks: AtomicUsize,
    spare_chunks: AtomicUsize,
    sites: AtomicU64,
    unwind_registered: AtomicU64,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Release);
}

impl StatCounters {
    pub(crate) fn emitted(&self) {
        add(&self.produced.emitted, 1);
    }

    /// A trampoline left its last site, holding a slot of `bytes`.
    pub(crate) fn retired(&self, bytes: usize) {
        add(&self.produced.retired_bytes, bytes as u64);
        add(&self.produced.retired, 1);
    }

    /// [`reclaimed`](Self::reclaimed) for a batch: `retired` retired trampolines of
    /// `retired_bytes` in all, and `unretired` never-retired ones.
    pub(crate) fn reclaimed_many(&self, retired: u64, retired_bytes: u64, unretired: u64) {
        if retired > 0 {
            add(&self.consumed.retired_bytes, retired_bytes);
            add(&self.consumed.reclaimed_retired, retired);
        }
        if unretired > 0 {
            add(&self.consumed.reclaimed_unretired, unretired);
        }
    }

    /// A trampoline was leaked; `retired_bytes` is its slot size if it had been retired.
    pub(crate) fn leaked(&self, retired_bytes: Option<usize>) {
        match retired_bytes {
            Some(bytes) => add(&self.consumed.retired_bytes, bytes as u64),
            None => add(&self.produced.retired, 1),
        }
        add(&self.consumed.leaked, 1);
    }

    pub(crate) fn chunk_mapped(&self, bytes: usize) {
        self.mapped_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.chunks.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn chunk_unmapped(&self, bytes: usize) {
        self.mapped_bytes.fetch_sub(bytes, Ordering::Relaxed);
        self.chunks.fetch_sub(1, Ordering::Relaxed);
    }

    /// The whole reservation is gone.
    pub(crate) fn all_unmapped(&self) {
        self.mapped_bytes.store(0, Ordering::Relaxed);
        self.chunks.store(0, Ordering::Relaxed);
        self.spare_chunks.store(0, Ordering::Relaxed);
    }

    /// An empty chunk became a spare (under the allocator's lock).
    pub(crate) fn spare_added(&self) {
        self.spare_chunks.fetch_add(1, Ordering::Relaxed);
    }

    /// A spare was reused or unmapped (under the allocator's lock).
    pub(crate) fn spare_removed(&self) {
        self.spare_chunks.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn site_created(&self) {
        self.sites.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn sites_freed(&self, n: u64) {
        if n > 0 {
            self.sites.fetch_sub(n, Ordering::Relaxed);
        }
    }

    /// A trampoline's unwind information was registered.
    pub(crate) fn unwind_registered(&self) {
        self.unwind_registered.fetch_add(1, Ordering::Relaxed);
    }

    /// A trampoline's unwind information was deregistered (before its slot was freed).
    pub(crate) fn unwind_deregistered(&self, n: u64) {
        if n > 0 {
            self.unwind_registered.fetch_sub(n, Ordering::Relaxed);
        }
    }

    /// Bytes of code retired so far (on the patchers' counter line, not the reclaimer's: the
    /// backlog throttle's per-swap read).
    pub(crate) fn retired_bytes_produced(&self) -> u64 {
        self.produced.retired_bytes.load(Ordering::Acquire)
    }

    /// Bytes of retired code reclaimed (or leaked) so far.
    pub(crate) fn retired_bytes_consumed(&self) -> u64 {
        self.consumed.retired_bytes.load(Ordering::Acquire)
    }

    /// A snapshot: later events first (module docs).
    fn snapshot(&self) -> JitStats {
        let c = &self.consumed;
        let leaked = c.leaked.load(Ordering::Acquire);
        let reclaimed_retired = c.reclaimed_retired.load(Ordering::Acquire);
        let reclaimed_unretired = c.reclaimed_unretired.load(Ordering::Acquire);
        let bytes_out = c.retired_bytes.load(Ordering::Acquire);
        let p = &self.produced;
        let retired = p.retired.load(Ordering::Acquire);
        let bytes_in = p.retired_bytes.load(Ordering::Acquire);
        let emitted = p.emitted.load(Ordering::Acquire);
        JitStats {
            mapped_bytes: self.mapped_bytes.load(Ordering::Relaxed),
            chunks: self.chunks.load(Ordering::Relaxed),
            spare_chunks: self.spare_chunks.load(Ordering::Relaxed),
            emitted,
            live: emitted.saturating_sub(retired + reclaimed_unretired),
            retired: retired.saturating_sub(reclaimed_retired),
            retired_bytes: bytes_in.saturating_sub(bytes_out) as usize,
            reclaimed: reclaimed_retired + reclaimed_unretired,
            leaked,
            sites: self.sites.load(Ordering::Relaxed),
            unwind_registered: self.unwind_registered.load(Ordering::Relaxed),
        }
    }
}

/// A handle on a [`Jit`](crate::Jit)'s counters that stays usable after the `Jit` and all its
/// trampolines are gone (then `mapped_bytes` and `chunks` read 0).
#[derive(Clone)]
pub struct JitStatsHandle(Arc<StatCounters>);

impl std::fmt::Debug for JitStatsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("JitStatsHandle").field(&self.get()).finish()
    }
}

impl JitStatsHandle {
    pub(crate) fn new(inner: Arc<StatCounters>) -> Self {
        JitStatsHandle(inner)
    }

    /// The current counters.
    pub fn get(&self) -> JitStats {
        self.0.snapshot()
    }
}
