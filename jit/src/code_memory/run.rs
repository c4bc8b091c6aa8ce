//! Runs of free slots: an emitter takes the slots of its size class several at a time.
//!
//! # Algorithm
//! An allocation under the allocator lock costs about 120 instructions (of a retire's 780
//! under callgrind, `benches/retire_path.rs`), and most of it does not depend on how many
//! slots are taken: the lock, the class's chunk choice, the full check, the spare and
//! `available` bookkeeping. A [`SlotRun`] therefore takes up to [`RUN_SLOTS`] free slots of one
//! class from one chunk under one lock ([`CodeMemory::take_slots`]: each slot popped from the
//! chunk's free list or bumped, `used` raised once) and hands them out one by one from a plain
//! array. When it is empty, or asked for another class, it gives back what it holds and takes
//! a new run, under the same lock.
//!
//! A slot in a run counts as used, so a run pins its chunk: the chunk cannot empty, become a
//! spare or be unmapped while the run holds part of it. Runs are only taken in classes whose
//! chunks hold at least [`MIN_SLOTS_PER_CHUNK`] slots, so a run holds at most a quarter of a
//! chunk (and a class of chunk-sized objects, whose every chunk is one object, never pins
//! one). The slots of a run hold traps (freshly mapped, or trap-filled when they were freed),
//! and no site or handle refers to them, so handing them out later, or giving them back
//! unwritten, is what allocating and freeing them at once would have done.
//!
//! # Ownership and ordering
//! A run is plain data owned by one emitter at a time (`emitter.rs`: the `Jit`'s cached
//! emitter is handed to exactly one emission by an atomic swap), so handing out a slot needs
//! no synchronization; taking and giving back runs happen under the allocator lock like every
//! other slot movement. A run holds an `Arc` of its code memory and gives its slots back when
//! it drops: whether its emitter loses a race to be cached, is dropped by an emission that
//! unwinds, or goes with the `Jit`. Nothing is thread-local, so an emission on a green thread
//! that migrates keeps nothing of the worker it started on.

use std::sync::Arc;

use super::{AllocState, CodeMemory, Slot};
use crate::arch;
use crate::error::JitError;
use crate::lock;

/// The most slots a run takes at once.
pub(crate) const RUN_SLOTS: usize = 16;
/// The fewest slots per chunk of a class in which runs are taken (module docs).
pub(super) const MIN_SLOTS_PER_CHUNK: usize = 4 * RUN_SLOTS;

/// Free slots of one class in one chunk, handed out one at a time (module docs).
pub(crate) struct SlotRun {
    mem: Arc<CodeMemory>,
    /// The class the slots belong to (meaningless while `len` is 0).
    class: usize,
    chunk: usize,
    /// The chunk's first byte in the executable view and where it is written.
    exec_base: usize,
    write_base: usize,
    /// The slot size of `class`.
    size: usize,
    /// How many of `offsets` are held; the next slot handed out is `offsets[len - 1]`.
    len: usize,
    /// Offsets of the held slots in their chunk.
    offsets: [u32; RUN_SLOTS],
}

impl SlotRun {
    /// An empty run over `mem`.
    pub(crate) fn new(mem: Arc<CodeMemory>) -> SlotRun {
        SlotRun {
            mem,
            class: 0,
            chunk: 0,
            exec_base: 0,
            write_base: 0,
            size: 0,
            len: 0,
            offsets: [0; RUN_SLOTS],
        }
    }

    /// [`CodeMemory::alloc`], from this run where it holds a slot of the class.
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

    #[inline]
    fn alloc_in(&mut self, len: usize, may_map: bool) -> Result<Option<Slot>, JitError> {
        let ci = self.mem.class_of(len)?;
        if self.len == 0 || self.class != ci {
            if ci >= self.mem.run_classes {
                return self.mem.alloc_in(len, may_map);
            }
            if !self.refill(ci, may_map)? {
                return Ok(None);
            }
        }
        self.len -= 1;
        let slot = self.slot(self.len);
        // As in `CodeMemory::alloc_in`: the slot is written next.
        arch::prefetch_for_write(slot.write_addr);
        Ok(Some(slot))
    }

    /// The `i`th held slot.
    fn slot(&self, i: usize) -> Slot {
        let offset = self.offsets[i] as usize;
        Slot {
            addr: self.exec_base + offset,
            write_addr: self.write_base + offset,
            size: self.size,
            chunk: self.chunk,
        }
    }

    /// Gives back what the run holds and takes a run of class `ci`; false if the class has
    /// no room without mapping a chunk and `may_map` is not set.
    #[inline(never)]
    fn refill(&mut self, ci: usize, may_map: bool) -> Result<bool, JitError> {
        let mem = Arc::clone(&self.mem);
        let mut st = lock(&mem.state);
        self.give_back(&mut st);
        let Some(taken) = mem.take_slots(&mut st, ci, may_map, &mut self.offsets)? else {
            return Ok(false);
        };
        drop(st);
        self.class = ci;
        self.chunk = taken.chunk;
        self.exec_base = taken.exec_base;
        self.write_base = taken.write_base;
        self.size = mem.classes.size(ci);
        // Handed out from the end: in the order the chunk gave them.
        self.offsets[..taken.count].reverse();
        self.len = taken.count;
        Ok(true)
    }

    /// Returns every held slot to its chunk (unwritten: they still hold traps).
    fn give_back(&mut self, st: &mut AllocState) {
        while self.len > 0 {
            self.len -= 1;
            let slot = self.slot(self.len);
            self.mem.return_slot(st, &slot);
        }
    }
}

impl Drop for SlotRun {
    fn drop(&mut self) {
        if self.len > 0 {
            let mem = Arc::clone(&self.mem);
            let mut st = lock(&mem.state);
            self.give_back(&mut st);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::code_memory::CodeMemoryConfig;
    use std::collections::HashSet;
    use std::time::Duration;

    fn memory(chunk_size: usize) -> Arc<CodeMemory> {
        let cfg = CodeMemoryConfig {
            reservation: 64 * chunk_size,
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

    /// A run and the allocator's own path, interleaved with frees, never hand out a slot
    /// that is live, and the chunk counts the run's unissued slots as used.
    #[test]
    fn runs_and_single_allocations_never_share_a_live_slot() {
        let mem = memory(1 << 16);
        let mut run = SlotRun::new(mem.clone());
        let mut live: Vec<Slot> = Vec::new();
        let mut addrs = HashSet::new();
        for i in 0..10 * RUN_SLOTS {
            let slot = if i % 3 == 0 {
                mem.alloc(40).unwrap()
            } else {
                run.alloc(40).unwrap()
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
        assert_eq!(used(&mem, chunk), live.len() + run.len);
        // SAFETY: as above.
        unsafe { mem.free_all(&live) };
        assert_eq!(used(&mem, chunk), run.len, "only the run's slots are left");
        drop(run);
        assert_eq!(used(&mem, chunk), 0, "a dropped run gives its slots back");
    }

    /// A run asked for another class gives back the first class's slots; classes with few
    /// slots per chunk are never taken as runs.
    #[test]
    fn another_class_gives_the_run_back_and_large_classes_take_no_run() {
        let mem = memory(1 << 16);
        let mut run = SlotRun::new(mem.clone());
        let small = run.alloc(10).unwrap();
        assert_eq!(run.len, RUN_SLOTS - 1);
        let larger = run.alloc(100).unwrap();
        assert_eq!(larger.size, 128);
        assert_eq!(used(&mem, small.chunk), 1, "the 64-byte run went back");
        assert_eq!(run.len, RUN_SLOTS - 1);
        // 2 KiB slots: 32 per 64 KiB chunk, fewer than a run needs.
        let big = run.alloc(2000).unwrap();
        assert_eq!(big.size, 2048);
        assert_eq!(used(&mem, big.chunk), 1, "taken alone");
        assert_eq!(run.len, RUN_SLOTS - 1, "the 128-byte run is kept");
        // SAFETY: never written or reachable.
        unsafe { mem.free_all(&[small, larger, big]) };
    }

    /// A run takes what its chunk has left (a partial run) and the chunk then leaves the
    /// class's rotation; `alloc_mapped` never maps a chunk for a run.
    #[test]
    fn a_run_takes_a_chunks_last_slots_and_alloc_mapped_maps_none() {
        // 128-byte slots, exactly `MIN_SLOTS_PER_CHUNK` per chunk of two pages.
        const LEN: usize = 100;
        let mem = memory(MIN_SLOTS_PER_CHUNK * 128);
        let mut run = SlotRun::new(mem.clone());
        assert!(run.alloc_mapped(LEN).is_none(), "no chunk is mapped yet");
        let first: Vec<_> = (0..MIN_SLOTS_PER_CHUNK - 3)
            .map(|_| mem.alloc(LEN).unwrap())
            .collect();
        let a = run
            .alloc_mapped(LEN)
            .expect("the chunk has three slots left");
        assert_eq!(run.len, 2, "a partial run of three");
        let rest = [run.alloc(LEN).unwrap(), run.alloc(LEN).unwrap()];
        assert!(
            run.alloc_mapped(LEN).is_none(),
            "the chunk is full, none is mapped"
        );
        let b = run.alloc(LEN).unwrap();
        assert_ne!(b.chunk, a.chunk, "a fresh chunk");
        assert_eq!(used(&mem, a.chunk), MIN_SLOTS_PER_CHUNK);
        // SAFETY: never written or reachable.
        unsafe {
            mem.free_all(&first);
            mem.free_all(&rest);
            mem.free_all(&[a, b]);
        }
    }
}
