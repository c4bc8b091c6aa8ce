//! Runs of free slots: an emitter takes the slots of each small size class several at a time.
//!
//! # Algorithm
//! An allocation under the allocator lock costs about 120 instructions (of a retire's 760
//! under callgrind, `benches/retire_path.rs`), and most of it does not depend on how many
//! slots are taken: the lock, the class's chunk choice, the full check, the spare and
//! `available` bookkeeping. [`SlotRuns`] therefore keeps, per *run class*, a run: up to
//! [`RUN_SLOTS`] free slots of that class from one chunk, taken under one lock
//! ([`CodeMemory::take_slots`]: each slot popped from the chunk's free list or bumped, `used`
//! raised once) and handed out one by one from a plain array. An empty run is refilled; runs
//! of different classes do not disturb each other, so code that alternates between classes
//! (a forwarder, then a body) refills each run once per [`RUN_SLOTS`] of its emissions.
//!
//! A slot in a run counts as used, so a run pins its chunk: the chunk cannot empty, become a
//! spare or be unmapped while the run holds part of it. The run classes are those whose
//! chunks hold at least [`MIN_SLOTS_PER_CHUNK`] slots, so a run holds at most a quarter of a
//! chunk (a class of chunk-sized objects, whose every chunk is one object, never pins one);
//! with the default 64 KiB chunks they are the 64- to 1024-byte classes. Where the reservation
//! is full, an allocation that fails gives every run back and tries once more, so runs never
//! cause `CodeSpaceExhausted`. The slots of a run hold traps (freshly mapped, or trap-filled
//! when they were freed), and no site or handle refers to them, so handing them out later, or
//! giving them back unwritten, is what allocating and freeing them at once would have done.
//!
//! # Ownership and ordering
//! Runs are plain data owned by one emitter at a time (`emitter.rs`: the `Jit`'s cached
//! emitter is handed to exactly one emission by an atomic swap), so handing out a slot needs
//! no synchronization; taking and giving back runs happen under the allocator lock like every
//! other slot movement. [`SlotRuns`] holds an `Arc` of its code memory and gives its slots back
//! when it drops: whether its emitter loses a race to be cached, is dropped by an emission that
//! unwinds, or goes with the `Jit`. Nothing is thread-local, so an emission on a green thread
//! that migrates keeps nothing of the worker it started on.

use std::sync::Arc;

use super::slots::ChunkBases;
use super::{AllocState, CodeMemory, Slot};
use crate::arch;
use crate::error::JitError;
use crate::lock;

/// The most slots a run takes at once.
pub(crate) const RUN_SLOTS: usize = 16;
/// The fewest slots per chunk of a class in which runs are taken (module docs).
pub(super) const MIN_SLOTS_PER_CHUNK: usize = 4 * RUN_SLOTS;

/// Free slots of one class in one chunk (module docs).
#[derive(Clone, Copy, Default)]
struct Run {
    /// The chunk the slots are in.
    bases: ChunkBases,
    /// The class's slot size.
    size: usize,
    /// How many of `offsets` are held; the next slot handed out is `offsets[len - 1]`.
    len: usize,
    /// Offsets of the held slots in their chunk.
    offsets: [u32; RUN_SLOTS],
}

/// One run per run class of a code memory (module docs).
pub(crate) struct SlotRuns {
    mem: Arc<CodeMemory>,
    /// Indexed by class; as many as the memory has run classes.
    runs: Box<[Run]>,
}

impl SlotRuns {
    /// Empty runs over `mem`.
    pub(crate) fn new(mem: Arc<CodeMemory>) -> SlotRuns {
        let runs = vec![Run::default(); mem.run_classes].into_boxed_slice();
        SlotRuns { mem, runs }
    }

    /// [`CodeMemory::alloc`], from the run of the object's class where it has one.
    #[inline]
    pub(crate) fn alloc(&mut self, len: usize) -> Result<Slot, JitError> {
        self.alloc_in(len, true)
            .map(|slot| slot.expect("allowed to map a chunk"))
    }

    /// [`alloc`](Self::alloc), but only from a chunk that is mapped already: `None` when the
    /// class has no room without mapping one, or `len` is too large (for a speculative slot,
    /// which must not map memory nobody may use).
    #[inline]
    pub(crate) fn alloc_mapped(&mut self, len: usize) -> Option<Slot> {
        self.alloc_in(len, false).ok().flatten()
    }

    #[inline(always)] // into both callers: the run's pop is a few instructions
    fn alloc_in(&mut self, len: usize, may_map: bool) -> Result<Option<Slot>, JitError> {
        let ci = self.mem.class_of(len)?;
        if ci >= self.runs.len() {
            return self.alloc_alone(len, may_map);
        }
        if self.runs[ci].len == 0 && !self.refill(ci, may_map)? {
            return Ok(None);
        }
        let run = &mut self.runs[ci];
        run.len -= 1;
        let slot = run.bases.slot(run.offsets[run.len], run.size);
        // As in `CodeMemory::alloc_in`: the slot is written next.
        arch::prefetch_for_write(slot.write_addr);
        Ok(Some(slot))
    }

    /// A slot outside the runs; if the reservation is full, once more after giving every run
    /// back (their slots may be what the allocator needs).
    fn alloc_alone(&mut self, len: usize, may_map: bool) -> Result<Option<Slot>, JitError> {
        match self.mem.alloc_in(len, may_map) {
            Err(JitError::CodeSpaceExhausted { .. }) => {
                self.give_all_back();
                self.mem.alloc_in(len, may_map)
            }
            other => other,
        }
    }

    /// Takes a run of class `ci` (whose run is empty); false if the class has no room without
    /// mapping a chunk and `may_map` is not set.
    #[inline(never)]
    fn refill(&mut self, ci: usize, may_map: bool) -> Result<bool, JitError> {
        let taken = {
            let mut st = lock(&self.mem.state);
            match self
                .mem
                .take_slots(&mut st, ci, may_map, &mut self.runs[ci].offsets)
            {
                Err(JitError::CodeSpaceExhausted { .. }) => {
                    // The other runs' slots may be what the allocator needs: give them back
                    // and try once more.
                    give_back(&self.mem, &mut self.runs, &mut st);
                    self.mem
                        .take_slots(&mut st, ci, may_map, &mut self.runs[ci].offsets)?
                }
                other => other?,
            }
        };
        let Some(taken) = taken else {
            return Ok(false);
        };
        let run = &mut self.runs[ci];
        run.bases = taken.bases;
        run.size = self.mem.classes.size(ci);
        // Handed out from the end: in the order the chunk gave them.
        run.offsets[..taken.count].reverse();
        run.len = taken.count;
        Ok(true)
    }

    /// [`give_back`], taking the lock if any run holds a slot.
    fn give_all_back(&mut self) {
        if self.runs.iter().any(|run| run.len > 0) {
            let mut st = lock(&self.mem.state);
            give_back(&self.mem, &mut self.runs, &mut st);
        }
    }
}

/// Returns every held slot of every run to its chunk (unwritten: they still hold traps).
fn give_back(mem: &CodeMemory, runs: &mut [Run], st: &mut AllocState) {
    for run in runs.iter_mut() {
        while run.len > 0 {
            run.len -= 1;
            let slot = run.bases.slot(run.offsets[run.len], run.size);
            mem.return_slot(st, &slot);
        }
    }
}

impl Drop for SlotRuns {
    fn drop(&mut self) {
        self.give_all_back();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::code_memory::CodeMemoryConfig;
    use std::collections::HashSet;
    use std::time::Duration;

    fn memory(chunk_size: usize, chunks: usize) -> Arc<CodeMemory> {
        let cfg = CodeMemoryConfig {
            reservation: chunks * chunk_size,
            chunk_size,
            force_fallback: false,
            sync_core: false,
            spare_decay: Duration::ZERO,
        };
        Arc::new(CodeMemory::new(u64::MAX - 7, &cfg).expect("code memory"))
    }

    /// Every slot counted as used in chunk `idx`.
    fn used(mem: &CodeMemory, idx: usize) -> usize {
        lock(&mem.state).chunks[idx].as_ref().map_or(0, |c| c.used)
    }

    /// Runs and the allocator's own path, interleaved with frees, never hand out a slot that
    /// is live, and the chunk counts the run's unissued slots as used.
    #[test]
    fn runs_and_single_allocations_never_share_a_live_slot() {
        let mem = memory(1 << 16, 64);
        let mut runs = SlotRuns::new(mem.clone());
        let mut live: Vec<Slot> = Vec::new();
        let mut addrs = HashSet::new();
        for i in 0..10 * RUN_SLOTS {
            let slot = if i % 3 == 0 {
                mem.alloc(40).unwrap()
            } else {
                runs.alloc(40).unwrap()
            };
            assert_eq!(slot.size, 64);
            assert!(
                addrs.insert(slot.addr),
                "slot {:#x} handed out twice",
                slot.addr
            );
            live.push(slot);
            if i % 5 == 4 {
                let freed = live.remove(i % live.len());
                addrs.remove(&freed.addr);
                // SAFETY: never written or reachable.
                unsafe { mem.free(freed) };
            }
        }
        let chunk = live[0].chunk;
        assert!(
            live.iter().all(|s| s.chunk == chunk),
            "one chunk holds them all"
        );
        assert_eq!(used(&mem, chunk), live.len() + runs.runs[0].len);
        // SAFETY: as above.
        unsafe { mem.free_all(&live) };
        assert_eq!(
            used(&mem, chunk),
            runs.runs[0].len,
            "only the run's slots are left"
        );
        drop(runs);
        assert_eq!(used(&mem, chunk), 0, "dropped runs give their slots back");
    }

    /// Each run class has a run of its own, kept while another class is used; classes with
    /// few slots per chunk are never taken as runs.
    #[test]
    fn classes_keep_their_own_runs_and_large_classes_take_none() {
        let mem = memory(1 << 16, 64);
        let mut runs = SlotRuns::new(mem.clone());
        let small = runs.alloc(10).unwrap();
        let larger = runs.alloc(100).unwrap();
        assert_eq!(larger.size, 128);
        let small_again = runs.alloc(10).unwrap();
        assert_eq!(small_again.chunk, small.chunk);
        assert_eq!(
            used(&mem, small.chunk),
            RUN_SLOTS,
            "one run of 64-byte slots"
        );
        assert_eq!(used(&mem, larger.chunk), RUN_SLOTS, "one of 128-byte slots");
        // 2 KiB slots: 32 per 64 KiB chunk, fewer than a run needs.
        let big = runs.alloc(2000).unwrap();
        assert_eq!(big.size, 2048);
        assert_eq!(used(&mem, big.chunk), 1, "taken alone");
        // SAFETY: never written or reachable.
        unsafe { mem.free_all(&[small, larger, small_again, big]) };
        drop(runs);
        assert_eq!(used(&mem, small.chunk) + used(&mem, larger.chunk), 0);
    }

    /// A run takes what its chunk has left (a partial run) and the chunk then leaves the
    /// class's rotation; `alloc_mapped` never maps a chunk for a run.
    #[test]
    fn a_run_takes_a_chunks_last_slots_and_alloc_mapped_maps_none() {
        // 128-byte slots, exactly `MIN_SLOTS_PER_CHUNK` per chunk of two pages.
        const LEN: usize = 100;
        let mem = memory(MIN_SLOTS_PER_CHUNK * 128, 64);
        let mut runs = SlotRuns::new(mem.clone());
        assert!(runs.alloc_mapped(LEN).is_none(), "no chunk is mapped yet");
        let first: Vec<_> = (0..MIN_SLOTS_PER_CHUNK - 3)
            .map(|_| mem.alloc(LEN).unwrap())
            .collect();
        let a = runs
            .alloc_mapped(LEN)
            .expect("the chunk has three slots left");
        assert_eq!(runs.runs[1].len, 2, "a partial run of three");
        let rest = [runs.alloc(LEN).unwrap(), runs.alloc(LEN).unwrap()];
        assert!(
            runs.alloc_mapped(LEN).is_none(),
            "the chunk is full, none is mapped"
        );
        let b = runs.alloc(LEN).unwrap();
        assert_ne!(b.chunk, a.chunk, "a fresh chunk");
        assert_eq!(used(&mem, a.chunk), MIN_SLOTS_PER_CHUNK);
        // SAFETY: never written or reachable.
        unsafe {
            mem.free_all(&first);
            mem.free_all(&rest);
            mem.free_all(&[a, b]);
        }
    }

    /// In a full reservation the slots runs hold are given back rather than reported as
    /// exhausted: a chunk that only a run keeps from emptying becomes a spare, and the spare
    /// gives way.
    #[test]
    fn a_full_reservation_takes_the_slots_runs_hold() {
        const CHUNK: usize = 1 << 16;
        let mem = memory(CHUNK, 2);
        let mut runs = SlotRuns::new(mem.clone());
        // Chunk 0 filled with 64-byte slots, its last 16 taken as a run (so it is no longer
        // its class's current chunk), then everything but the run freed.
        let singles: Vec<_> = (0..CHUNK / 64 - RUN_SLOTS)
            .map(|_| mem.alloc(10).unwrap())
            .collect();
        let from_run = runs.alloc(10).unwrap();
        assert_eq!(from_run.chunk, singles[0].chunk);
        // SAFETY: never written or reachable.
        unsafe {
            mem.free_all(&singles);
            mem.free(from_run);
        }
        assert_eq!(used(&mem, from_run.chunk), RUN_SLOTS - 1, "only the run's");
        // Chunk 1: a whole-chunk object; no chunk is left for a second one but chunk 0.
        let whole = runs.alloc(CHUNK).unwrap();
        let second = runs.alloc(CHUNK).expect("the run's chunk is reclaimed");
        assert_eq!(second.chunk, from_run.chunk);
        assert_eq!(runs.runs[0].len, 0, "the run was given back");
        // A 128-byte run now finds no room either, and says so.
        assert!(matches!(
            runs.alloc(100),
            Err(JitError::CodeSpaceExhausted { .. })
        ));
        // SAFETY: never written or reachable.
        unsafe { mem.free_all(&[whole, second]) };
    }
}
