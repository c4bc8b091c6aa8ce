//! Slots: taking them from their class's chunks and returning them.
//!
//! # Algorithm
//! Objects are placed in size classes (`classes.rs`: 64, 128, ... bytes up to the chunk
//! size; one page upwards in fallback mode). The smallest class is a cache line, so that no
//! two objects share one: writing new code (or trap-filling freed code) never stores into a
//! line that another core is executing, which x86 punishes as cross-modifying code. A chunk
//! holds slots of one class; a chunk that becomes full stops being its class's current
//! allocation chunk. When a chunk's last slot is freed and it is not current, it stays mapped
//! as one of its class's **spares**, reused before any chunk is mapped; `spares.rs` gives the
//! policy that unmaps them again (by number and age) and why a patch storm needs it. In every
//! build, freed slots are filled with traps and fresh chunks hold only traps before code is
//! written, so a stale call faults at once, in a spare chunk too.
//!
//! Emissions take the slots of the smaller classes a run at a time (`run.rs`: one lock and one
//! round of bookkeeping for up to 16 slots, one run per class), the rest of the crate one slot
//! at a time ([`CodeMemory::alloc`]); a run's slots count as used until they are handed out or
//! given back.
//!
//! A class's chunks with room are its `available` set; the one it allocates from is its
//! `current` chunk. Taking slots ([`CodeMemory::take_slots`]) pops them from the chunk's free
//! list, or bumps into its untouched end, and raises its `used` count once for all of them; a
//! chunk that fills up leaves `available` and stops being current, and returning a slot
//! ([`CodeMemory::free_all`]) puts the chunk back. Every step happens under the allocator lock
//! (`AllocState`); only the trap fill of freed slots runs before it, while other threads keep
//! allocating.

use std::time::Instant;

use super::{AllocState, CodeMemory, Slot};
use crate::arch;
use crate::error::JitError;
use crate::lock;

/// A chunk's index and its first byte in both views: what turns an offset into a [`Slot`].
#[derive(Clone, Copy, Default)]
pub(super) struct ChunkBases {
    chunk: usize,
    /// The chunk's first byte in the executable view.
    exec_base: usize,
    /// The chunk's first byte where it is written.
    write_base: usize,
}

impl ChunkBases {
    /// The slot of `size` bytes at `offset` in the chunk.
    #[inline]
    pub(super) fn slot(&self, offset: u32, size: usize) -> Slot {
        Slot {
            addr: self.exec_base + offset as usize,
            write_addr: self.write_base + offset as usize,
            size,
            chunk: self.chunk,
        }
    }
}

/// Where [`CodeMemory::take_slots`] took its slots: one chunk, and how many.
pub(super) struct TakenSlots {
    pub(super) bases: ChunkBases,
    /// How many offsets were written.
    pub(super) count: usize,
}

impl CodeMemory {
    /// The size class (its index) of an object of `len` bytes, or `CodeTooLarge`.
    pub(super) fn class_of(&self, len: usize) -> Result<usize, JitError> {
        self.classes.of(len).ok_or(JitError::CodeTooLarge {
            len,
            max: self.chunk_size,
        })
    }

    /// The size of the slot [`alloc`](Self::alloc) gives an object of `len` bytes.
    pub(crate) fn slot_size(&self, len: usize) -> Result<usize, JitError> {
        Ok(self.classes.size(self.class_of(len)?))
    }

    /// Allocates a slot for an object of `len` bytes.
    pub(crate) fn alloc(&self, len: usize) -> Result<Slot, JitError> {
        self.alloc_in(len, true)
            .map(|slot| slot.expect("allowed to map a chunk"))
    }

    /// [`alloc`](Self::alloc), or with `may_map` unset only from a chunk that is mapped
    /// already (`None` when the class has no room without mapping one).
    pub(super) fn alloc_in(&self, len: usize, may_map: bool) -> Result<Option<Slot>, JitError> {
        let ci = self.class_of(len)?;
        let mut offset = [0];
        let mut st = lock(&self.state);
        let Some(taken) = self.take_slots(&mut st, ci, may_map, &mut offset)? else {
            return Ok(None);
        };
        drop(st);
        let slot = taken.bases.slot(offset[0], self.classes.size(ci));
        // The slot is written next (after the code is assembled), and its line was last
        // written by the thread that trap-filled it when it was freed: start moving it here.
        arch::prefetch_for_write(slot.write_addr);
        Ok(Some(slot))
    }

    /// Takes free slots of class `ci` from one chunk, as many as `offsets` holds or the chunk
    /// has (at least one), and writes their offsets in the chunk into `offsets`: from the
    /// class's current chunk, else one with room, else (if `may_map`) a fresh one. `None`
    /// when the class has no room without mapping a chunk. The slots count as used until each
    /// is returned (`return_slot`).
    pub(super) fn take_slots(
        &self,
        st: &mut AllocState,
        ci: usize,
        may_map: bool,
        offsets: &mut [u32],
    ) -> Result<Option<TakenSlots>, JitError> {
        self.tick_spare_check(st);
        let size = self.classes.size(ci);
        let class = &st.classes[ci];
        let (idx, fresh) = match class.current.or_else(|| class.available.first().copied()) {
            Some(idx) => (idx, false),
            None if may_map => (self.map_chunk(st, ci)?, true),
            None => return Ok(None),
        };
        let chunk = st.chunks[idx]
            .as_mut()
            .expect("available chunks are mapped");
        let mut count = 0;
        for out in offsets.iter_mut() {
            let offset = match chunk.free.pop() {
                Some(offset) => offset,
                None if chunk.bump + size <= self.chunk_size => {
                    chunk.bump += size;
                    chunk.bump - size
                }
                None => break,
            };
            // Offsets are below the chunk size, and the reservation is at most 2 GiB.
            *out = offset as u32;
            count += 1;
        }
        // Checked in every build: with none taken, the caller would hand out offset 0, which
        // may be live. A class's current and available chunks have room, a fresh one is empty.
        assert!(count > 0, "a chunk without room in its class's rotation");
        let was_empty = chunk.used == 0;
        chunk.used += count;
        let full = chunk.free.is_empty() && chunk.bump + size > self.chunk_size;
        let write_base = chunk.views.write_base;
        let class = &mut st.classes[ci];
        // Only an empty chunk can be a spare.
        if was_empty && class.spares.take(idx) {
            self.stats.spare_removed();
        }
        // `available` holds exactly the class's chunks with room: a chunk leaves it when it
        // fills up here and comes back when a free makes room (`return_slot`).
        if full {
            class.available.remove(&idx);
            class.current = None;
        } else {
            if fresh {
                class.available.insert(idx);
            }
            class.current = Some(idx);
        }
        Ok(Some(TakenSlots {
            bases: ChunkBases {
                chunk: idx,
                exec_base: self.base + idx * self.chunk_size,
                write_base,
            },
            count,
        }))
    }

    /// Frees `slot`: fills it with traps and returns it to its chunk (which may then become
    /// one of its class's spares, or be unmapped: module docs).
    ///
    /// # Safety
    /// `slot` must come from [`alloc`](Self::alloc) (or a [`SlotRuns`]) on `self`, be freed
    /// only once, and no thread may
    /// be executing it or be able to reach it (a grace period has passed since it became unreachable).
    pub(crate) unsafe fn free(&self, slot: Slot) {
        // SAFETY: the caller's contract.
        unsafe { self.free_all(std::slice::from_ref(&slot)) }
    }

    /// [`free`](Self::free) for several slots, under one lock.
    ///
    /// # Safety
    /// As [`free`](Self::free), for each slot.
    pub(crate) unsafe fn free_all(&self, slots: &[Slot]) {
        // Trap-filled before the lock (other threads keep allocating meanwhile), 64 slots at
        // a time so that which ones were released fits in one word.
        for group in slots.chunks(64) {
            let mut released = 0u64;
            for (i, slot) in group.iter().enumerate() {
                // SAFETY: the caller's contract is the backend's. A slot the backend could
                // not release is leaked: still counted as used, so its chunk stays mapped and
                // it is never handed out again (see `CodeBackend::release`).
                if unsafe { self.backend.release(slot) } {
                    released |= 1 << i;
                }
            }
            let mut st = lock(&self.state);
            self.tick_spare_check(&mut st);
            for (i, slot) in group.iter().enumerate() {
                if released & (1 << i) != 0 {
                    self.return_slot(&mut st, slot);
                }
            }
        }
    }

    /// Returns a released slot to its chunk. A chunk that became empty and is not its class's
    /// current chunk becomes one of the class's spares, and the spares the policy no longer
    /// keeps are unmapped (`spares.rs`).
    #[inline(always)] // into `free_all`'s loop: the driver's per-free cost
    pub(super) fn return_slot(&self, st: &mut AllocState, slot: &Slot) {
        let chunk = st.chunks[slot.chunk]
            .as_mut()
            .expect("freeing into a mapped chunk");
        let offset = slot.addr - self.base - slot.chunk * self.chunk_size;
        debug_assert!(
            chunk.used > 0 && !chunk.free.contains(&offset),
            "double free of code slot {:#x}",
            slot.addr
        );
        let was_full = chunk.free.is_empty() && chunk.bump + slot.size > self.chunk_size;
        chunk.free.push(offset);
        chunk.used -= 1;
        let (ci, empty) = (chunk.class, chunk.used == 0);
        let class = &mut st.classes[ci];
        if was_full {
            class.available.insert(slot.chunk);
        }
        if empty && class.current != Some(slot.chunk) {
            let now = Instant::now();
            class.spares.insert(slot.chunk, now);
            self.stats.spare_added();
            self.unmap_expired_spares(st, ci, now);
        }
    }
}
