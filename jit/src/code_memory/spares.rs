//! Which empty chunks stay mapped: a size class's spares, kept for reuse and given back by age.
//!
//! A patcher that retires as fast as it emits empties and refills chunks with every batch of
//! frees: a grace period frees its whole backlog at once (with the default 16 MiB bound on
//! retired bytes, up to 256 chunks), and the next emissions need as many again. A chunk that
//! is unmapped when it empties costs, at its next use, a map, an unmap (a TLB shootdown on
//! every core) and a page fault per page of fresh memory: with only four spares kept, that
//! churn was about a fifth of a retire's CPU in `benches/retire_path` (122.8 -> 97.8 ns
//! alone, alternated runs, BENCHMARKS.md). So a class keeps:
//! - its `keep` most recently emptied chunks for good ([`SPARE_CHUNKS_PER_CLASS`]), and
//! - any further empty chunk while it emptied less than `decay` ago
//!   ([`JitBuilder::spare_chunk_decay`]). Older ones are unmapped, oldest first, when the
//!   class empties another chunk, when any chunk is mapped, and at every 64th allocation
//!   (a run of slots, `run.rs`, counts as one) or group of frees of any class (the clock is
//!   read there, not per allocation); at most 8 of a class per check, as each unmap is a
//!   TLB shootdown under the allocator lock.
//!
//! So the memory kept beyond `keep` is what the classes emptied within `decay` before the
//! allocator's latest check (less what the 8-per-check cap has not yet unmapped): while the
//! `Jit` emits or frees anything, at most `decay`'s worth of its recent use. A `Jit` that does
//! neither keeps its spares until it does, or is dropped. A `decay` too long to reach
//! (`Duration::MAX`) keeps every empty chunk until the reservation is full. A chunk is reused
//! from its class's `available` set before any chunk is mapped, and when the reservation is
//! full the spare that has been empty longest, of any class, is unmapped to make room, so
//! spares never cause `CodeSpaceExhausted`. Spares hold only traps (freed slots are
//! trap-filled), so a stale call into one faults.
//!
//! Ordering: spares live under the allocator's lock (`AllocState`), like every other piece of
//! chunk bookkeeping; nothing here is shared.
//!
//! [`SPARE_CHUNKS_PER_CLASS`]: crate::SPARE_CHUNKS_PER_CLASS
//! [`JitBuilder::spare_chunk_decay`]: crate::JitBuilder::spare_chunk_decay

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{AllocState, CodeMemory};

/// How many empty chunks a class keeps, and for how long (module docs).
#[derive(Clone, Copy, Debug)]
pub(super) struct SparePolicy {
    /// Empty chunks kept whatever their age.
    pub(super) keep: usize,
    /// How long a further empty chunk stays mapped.
    pub(super) decay: Duration,
}

/// One size class's empty chunks, oldest first, each with when it emptied.
#[derive(Debug, Default)]
pub(super) struct Spares {
    emptied: VecDeque<(usize, Instant)>,
}

impl Spares {
    /// Chunk `idx` of this class has just emptied.
    pub(super) fn insert(&mut self, idx: usize, now: Instant) {
        self.emptied.push_back((idx, now));
    }

    /// Chunk `idx` is being allocated from again: it is no spare any more. Whether it was one.
    pub(super) fn take(&mut self, idx: usize) -> bool {
        let found = self.emptied.iter().rposition(|&(c, _)| c == idx);
        if let Some(i) = found {
            self.emptied.remove(i);
        }
        found.is_some()
    }

    /// When the oldest spare emptied.
    pub(super) fn oldest(&self) -> Option<Instant> {
        self.emptied.front().map(|&(_, emptied)| emptied)
    }

    /// The oldest spare, removed (for a full reservation that needs its room).
    pub(super) fn pop_oldest(&mut self) -> Option<usize> {
        self.emptied.pop_front().map(|(c, _)| c)
    }

    /// The oldest spare, removed, if the policy no longer keeps it at `now`.
    pub(super) fn pop_expired(&mut self, policy: SparePolicy, now: Instant) -> Option<usize> {
        let &(idx, emptied) = self.emptied.front()?;
        let expired = self.emptied.len() > policy.keep
            && now.saturating_duration_since(emptied) >= policy.decay;
        expired.then(|| {
            self.emptied.pop_front();
            idx
        })
    }

    /// Whether this class keeps chunk `idx` as a spare.
    #[cfg(test)]
    pub(super) fn contains(&self, idx: usize) -> bool {
        self.emptied.iter().any(|&(c, _)| c == idx)
    }
}

/// Allocations (a run of slots counts as one) and groups of frees between two checks of
/// every class's spares for age: the clock is read once per this many, not per allocation.
const SPARE_CHECK_INTERVAL: u32 = 64;
/// Spares of one class unmapped at most per check.
const MAX_UNMAPS_PER_CHECK: usize = 8;

/// The allocator's side of the policy: when spares are checked and how they are unmapped.
impl CodeMemory {
    /// Counts one allocation or group of frees, and every `SPARE_CHECK_INTERVAL` of them
    /// gives back the spares of every class that the policy no longer keeps (so a class that
    /// stopped emptying chunks still loses its old spares while any other class is used).
    #[inline]
    pub(super) fn tick_spare_check(&self, st: &mut AllocState) {
        st.since_spare_check += 1;
        if st.since_spare_check >= SPARE_CHECK_INTERVAL {
            self.unmap_all_expired_spares(st);
        }
    }

    /// Gives back every class's spares that the policy no longer keeps (a check).
    #[cold]
    pub(super) fn unmap_all_expired_spares(&self, st: &mut AllocState) {
        st.since_spare_check = 0;
        let now = Instant::now();
        for c in 0..st.classes.len() {
            self.unmap_expired_spares(st, c, now);
        }
    }

    /// Unmaps the spares of class `ci` that its policy no longer keeps at `now`, at most
    /// `MAX_UNMAPS_PER_CHECK` (each is a TLB shootdown under the allocator lock; the rest go
    /// at later checks).
    pub(super) fn unmap_expired_spares(&self, st: &mut AllocState, ci: usize, now: Instant) {
        for _ in 0..MAX_UNMAPS_PER_CHECK {
            let Some(idx) = st.classes[ci].spares.pop_expired(self.spare_policy, now) else {
                return;
            };
            self.unmap_spare(st, ci, idx);
        }
    }

    /// Unmaps the spare that has been empty longest, of any class (a full reservation needs
    /// its room).
    pub(super) fn unmap_oldest_spare(&self, st: &mut AllocState) {
        let oldest = (st.classes.iter().enumerate())
            .filter_map(|(c, class)| Some((class.spares.oldest()?, c)))
            .min();
        if let Some((_, c)) = oldest {
            let spare = st.classes[c]
                .spares
                .pop_oldest()
                .expect("the class has a spare");
            self.unmap_spare(st, c, spare);
        }
    }

    /// Unmaps chunk `idx`, a spare of class `ci` just taken off its list.
    fn unmap_spare(&self, st: &mut AllocState, ci: usize, idx: usize) {
        st.classes[ci].available.remove(&idx);
        self.stats.spare_removed();
        self.unmap_chunk(st, idx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: SparePolicy = SparePolicy {
        keep: 2,
        decay: Duration::from_secs(1),
    };

    #[test]
    fn the_newest_keep_stay_and_older_ones_expire_oldest_first() {
        let t0 = Instant::now();
        let mut s = Spares::default();
        for idx in 0..4 {
            s.insert(idx, t0 + Duration::from_millis(idx as u64));
        }
        assert_eq!(s.pop_expired(POLICY, t0 + Duration::from_millis(999)), None);
        let later = t0 + Duration::from_secs(2);
        assert_eq!(s.pop_expired(POLICY, later), Some(0));
        assert_eq!(s.pop_expired(POLICY, later), Some(1));
        assert_eq!(s.pop_expired(POLICY, later), None, "two are kept for good");
        assert!(s.contains(2) && s.contains(3));
    }

    #[test]
    fn a_reused_chunk_is_no_spare_and_a_zero_decay_keeps_only_keep() {
        let now = Instant::now();
        let mut s = Spares::default();
        (0..3).for_each(|idx| s.insert(idx, now));
        s.take(1);
        assert!(!s.contains(1));
        let zero = SparePolicy {
            keep: 1,
            decay: Duration::ZERO,
        };
        assert_eq!(s.pop_expired(zero, now), Some(0));
        assert_eq!(s.pop_expired(zero, now), None);
        assert_eq!(s.pop_oldest(), Some(2));
        assert_eq!(s.pop_oldest(), None);
    }
}
