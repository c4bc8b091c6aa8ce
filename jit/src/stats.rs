//! Counters of a [`Jit`](crate::Jit): mapped memory and the trampoline lifecycle.
//!
//! The counters are kept under one small mutex (updates happen on emission, retirement and
//! reclamation, never on calls), so every snapshot is consistent and balanced.

use std::sync::{Arc, Mutex};

use crate::lock;

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
}

impl JitStats {
    /// Whether `emitted == live + retired + reclaimed`.
    pub fn balanced(&self) -> bool {
        self.emitted == self.live + self.retired + self.reclaimed
    }
}

/// A handle on a [`Jit`](crate::Jit)'s counters that stays usable after the `Jit` and all its
/// trampolines are gone (then `mapped_bytes` and `chunks` read 0).
#[derive(Clone, Debug)]
pub struct JitStatsHandle(Arc<Mutex<JitStats>>);

impl JitStatsHandle {
    pub(crate) fn new(inner: Arc<Mutex<JitStats>>) -> Self {
        JitStatsHandle(inner)
    }

    /// The current counters.
    pub fn get(&self) -> JitStats {
        *lock(&self.0)
    }
}
