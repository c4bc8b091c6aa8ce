//! W^X code memory: one address reservation, chunks mapped by a backend, a size-class slot
//! allocator, counters.
//!
//! # Reservation
//! [`CodeMemory::new`] reserves one contiguous range (at most `arch::MAX_CODE_SPAN`, so a
//! direct site reaches any code in it) as a `PROT_NONE`, `MAP_NORESERVE` mapping. The range
//! stays reserved for the life of the `CodeMemory`, so no other mapping of the process can
//! land inside it; chunks are mapped over parts of it with `MAP_FIXED` and, when unmapped,
//! replaced by a fresh `PROT_NONE` placeholder (stale execution faults at once). Free chunk
//! indices are reused.
//!
//! # W^X: no page is ever writable and executable at once
//! How bytes get into a chunk is a [`CodeBackend`]'s business; both keep the rule:
//! - **memfd double mapping** (`double_map.rs`, preferred). One memfd (named
//!   `tramway-code-<jit id>`, sparse, as large as the reservation) backs all code. A chunk is
//!   the memfd range at the same offset as its place in the reservation, mapped twice: the
//!   **RX view** at its place in the reservation, and an **RW view** at an address the kernel
//!   picks, never executable. Every write (new code, trap fill, a site's patch word) goes
//!   through the RW view, every execution through the RX view, and nothing is ever
//!   `mprotect`ed. Both views map the same physical pages, so a store through the RW view is
//!   what a load or instruction fetch through the RX view observes (what the architecture
//!   must add for instruction fetch is `arch::flush_icache`).
//! - **mprotect fallback** (`mprotect.rs`), when `memfd_create` is unavailable (`ENOSYS`,
//!   `EPERM`, ...) or `force_fallback` is set. A chunk is private anonymous memory whose pages
//!   are flipped: `PROT_NONE` while free, `PROT_READ | PROT_WRITE` while a slot is being
//!   written, `PROT_READ | PROT_EXEC` after. A page can therefore only be written while
//!   nothing executes it, so every slot is a whole number of pages (the smallest class is one
//!   page) and code, once published, is never written again. Indirect sites keep their patch
//!   word in a separate RW data page of the stub's slot; direct sites need to rewrite code and
//!   are refused (`arch::site_stub_layout`).
//!
//! The allocator below never asks which backend it has; the site layout asks
//! [`CodeMemory::stub_memory`].
//!
//! # Slots
//! Objects are placed in size classes, a chunk holds slots of one class, and freed slots are
//! filled with traps: `slots.rs` (taking and returning slots), `classes.rs` (the sizes),
//! `run.rs` (emissions take slots a run at a time), `spares.rs` (which empty chunks stay
//! mapped).
//!
//! # Counters
//! [`StatCounters`] (lock-free event counters, `stats.rs`) counts mapped chunks here and the
//! trampoline lifecycle in `trampoline.rs`.

mod classes;
mod double_map;
mod mprotect;
mod run;
mod slots;
mod spares;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use self::classes::SizeClasses;
use self::double_map::DoubleMap;
use self::mprotect::Mprotect;
use crate::arch::{self, StubMemory, SyncCorePolicy};
use crate::error::JitError;
use crate::jit::SPARE_CHUNKS_PER_CLASS;
use crate::os;
use crate::stats::{JitStatsHandle, StatCounters};
pub(crate) use run::SlotRuns;
use spares::{SparePolicy, Spares};

/// Parameters of a [`CodeMemory`].
#[derive(Clone, Debug)]
pub(crate) struct CodeMemoryConfig {
    pub reservation: usize,
    pub chunk_size: usize,
    pub force_fallback: bool,
    pub sync_core: bool,
    /// How long an empty chunk beyond [`SPARE_CHUNKS_PER_CLASS`] stays mapped (`spares.rs`).
    pub spare_decay: std::time::Duration,
}

/// One allocated object: where it executes, where it is written, and its slot size.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Slot {
    /// Address in the executable view (inside the reservation).
    pub addr: usize,
    /// Address of the same bytes where they are written: the RW view (double mapping), or
    /// `addr` itself (mprotect fallback, writable only while the backend allows it).
    pub write_addr: usize,
    /// Size of the slot (its class), at least the object's length.
    pub size: usize,
    chunk: usize,
}

/// Where a chunk lies: in the reservation, and in the backing file (same offset).
#[derive(Clone, Copy, Debug)]
struct ChunkPlace {
    addr: usize,
    offset: usize,
    len: usize,
}

/// What a backend's mapping of a chunk leaves with the allocator until it is unmapped.
struct ChunkViews {
    /// Address through which the chunk's first byte is written.
    write_base: usize,
    /// A second view the backend keeps mapped (the RW view), unmapped when dropped.
    _alias: Option<os::SharedView>,
}

/// How bytes get into executable memory without breaking W^X (see the module docs).
trait CodeBackend: Send + Sync {
    /// Smallest slot the backend can protect on its own.
    fn min_slot_size(&self) -> usize;

    /// What site stubs may assume about rewriting their patch word.
    fn stub_memory(&self) -> StubMemory;

    /// The backing memfd's name, if the backend has one.
    fn memfd_name(&self) -> Option<&str>;

    /// Maps a chunk over its placeholder.
    ///
    /// # Safety
    /// `place` is inside the reservation and holds only a placeholder.
    unsafe fn map_chunk(&self, place: ChunkPlace) -> Result<ChunkViews, JitError>;

    /// Unmaps a chunk (every view) and restores its placeholder.
    ///
    /// # Safety
    /// `views` come from `map_chunk(place)`, and no slot of the chunk is live.
    unsafe fn unmap_chunk(&self, place: ChunkPlace, views: ChunkViews);

    /// Writes `bytes` at the start of `slot`, pads the rest with traps and leaves the first
    /// `exec_len` bytes executable (the rest may stay writable data).
    ///
    /// # Safety
    /// `slot` is allocated and no thread can be executing it.
    unsafe fn write(&self, slot: &Slot, bytes: &[u8], exec_len: usize) -> Result<(), JitError>;

    /// Prepares a freed slot for reuse: filled with traps, and inaccessible where the backend
    /// can make it so. Every build does this: a stale call into freed code must fault, not
    /// run the old bytes (it costs about 2 ns per retired trampoline). Returns false if the
    /// slot could be made neither (then it is never reused).
    ///
    /// # Safety
    /// `slot` is allocated, and no thread can execute or reach it.
    unsafe fn release(&self, slot: &Slot) -> bool;
}

struct Chunk {
    class: usize,
    views: ChunkViews,
    free: Vec<usize>,
    bump: usize,
    used: usize,
}

/// One size class's chunks (its slot size is in `CodeMemory::classes`).
struct SizeClass {
    current: Option<usize>,
    available: BTreeSet<usize>,
    /// Empty chunks kept mapped (`spares.rs`).
    spares: Spares,
}

/// The allocator's mutable state, under one lock.
struct AllocState {
    chunks: Vec<Option<Chunk>>,
    free_indices: Vec<usize>,
    next_index: usize,
    classes: Vec<SizeClass>,
    /// Allocations (or runs of slots) and groups of frees since every class's spares were
    /// last checked for age (`spares.rs`).
    since_spare_check: u32,
}

/// The reservation, its chunks and the slot allocator. Shared (`Arc`) by the `Jit`, its
/// trampolines, sites and deferred reclamation callbacks; dropping it unmaps everything.
pub(crate) struct CodeMemory {
    id: u64,
    base: usize,
    reservation: usize,
    chunk_size: usize,
    backend: Box<dyn CodeBackend>,
    sync_cores: SyncCorePolicy,
    spare_policy: SparePolicy,
    state: Mutex<AllocState>,
    /// The slot size of each class (read without the lock).
    classes: SizeClasses,
    /// How many of the smallest classes are taken a run at a time (`run.rs`).
    run_classes: usize,
    stats: Arc<StatCounters>,
    /// The reservation registered as JIT code with the runtime (`tramway_runtime::code`):
    /// where a task may be preempted, and what a parked task's stack scan looks for. `None`
    /// only while the memory is being dropped.
    registered: Option<tramway_runtime::code::CodeRange>,
}

impl CodeMemory {
    /// Reserves the address range and selects the backend (the memfd double mapping, or the
    /// mprotect fallback).
    pub(crate) fn new(id: u64, cfg: &CodeMemoryConfig) -> Result<CodeMemory, JitError> {
        let page_size = os::page_size();
        let CodeMemoryConfig {
            reservation,
            chunk_size,
            ..
        } = *cfg;
        if chunk_size == 0 || chunk_size % page_size != 0 {
            return Err(JitError::InvalidConfig(
                "chunk size must be a non-zero multiple of the page size",
            ));
        }
        if chunk_size < 2 * page_size {
            return Err(JitError::InvalidConfig(
                "chunk size must be at least two pages",
            ));
        }
        if reservation == 0 || reservation % chunk_size != 0 {
            return Err(JitError::InvalidConfig(
                "reservation must be a non-zero multiple of the chunk size",
            ));
        }
        if reservation > arch::MAX_CODE_SPAN {
            return Err(JitError::InvalidConfig(
                "reservation is larger than a direct site can reach (2 GiB on x86-64)",
            ));
        }
        let sync_cores = arch::sync_core_policy(cfg.sync_core);
        if sync_cores.needed() {
            os::register_core_serialization()?;
        }
        let double_map = match cfg.force_fallback {
            true => None,
            false => DoubleMap::new(id, reservation)?,
        };
        let backend: Box<dyn CodeBackend> = match double_map {
            Some(d) => Box::new(d),
            None => Box::new(Mprotect::new(page_size)),
        };
        // Before the reservation, so that nothing is left to release if it panics.
        let size_classes = SizeClasses::new(backend.min_slot_size(), chunk_size);
        let base = os::reserve(reservation)?;
        let registered = match tramway_runtime::code::CodeRange::register(base, reservation) {
            Ok(r) => r,
            Err(e) => {
                // SAFETY: the reservation was made just above and nothing uses it yet.
                unsafe { os::release_reservation(base, reservation) };
                return Err(e.into());
            }
        };
        let classes = (0..size_classes.count())
            .map(|_| SizeClass {
                current: None,
                available: BTreeSet::new(),
                spares: Spares::default(),
            })
            .collect();
        Ok(CodeMemory {
            id,
            base,
            reservation,
            chunk_size,
            backend,
            sync_cores,
            spare_policy: SparePolicy {
                keep: SPARE_CHUNKS_PER_CLASS,
                decay: cfg.spare_decay,
            },
            state: Mutex::new(AllocState {
                chunks: (0..reservation / chunk_size).map(|_| None).collect(),
                free_indices: Vec::new(),
                next_index: 0,
                classes,
                since_spare_check: 0,
            }),
            run_classes: (0..size_classes.count())
                .take_while(|&ci| chunk_size / size_classes.size(ci) >= run::MIN_SLOTS_PER_CHUNK)
                .count(),
            classes: size_classes,
            stats: Arc::new(StatCounters::default()),
            registered: Some(registered),
        })
    }

    /// Id of the owning `Jit`.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// `(base, length)` of the reservation.
    pub(crate) fn range(&self) -> (usize, usize) {
        (self.base, self.reservation)
    }

    /// The chunk size, which is also the largest object size.
    pub(crate) fn chunk_size(&self) -> usize {
        self.chunk_size
    }

    /// What site stubs may assume about rewriting their patch word.
    pub(crate) fn stub_memory(&self) -> StubMemory {
        self.backend.stub_memory()
    }

    /// Whether this is the mprotect fallback (no memfd double mapping).
    pub(crate) fn is_fallback(&self) -> bool {
        self.backend.memfd_name().is_none()
    }

    /// The backing memfd's name, or `None` in fallback mode.
    pub(crate) fn memfd_name(&self) -> Option<String> {
        self.backend.memfd_name().map(str::to_owned)
    }

    /// A handle on the counters.
    pub(crate) fn stats_handle(&self) -> JitStatsHandle {
        JitStatsHandle::new(self.stats.clone())
    }

    /// The counters, for the lifecycle events `trampoline.rs` and `site.rs` count.
    pub(crate) fn stats(&self) -> &StatCounters {
        &self.stats
    }

    fn place(&self, idx: usize) -> ChunkPlace {
        ChunkPlace {
            addr: self.base + idx * self.chunk_size,
            offset: idx * self.chunk_size,
            len: self.chunk_size,
        }
    }

    /// Maps a fresh chunk for class `ci` and returns its index.
    #[cold]
    fn map_chunk(&self, st: &mut AllocState, ci: usize) -> Result<usize, JitError> {
        // A chunk event: give back every class's spares the policy no longer keeps.
        self.unmap_all_expired_spares(st);
        if st.free_indices.is_empty() && st.next_index == st.chunks.len() {
            // The reservation is full: spares are only a cache.
            self.unmap_oldest_spare(st);
        }
        let idx = match st.free_indices.pop() {
            Some(i) => i,
            None if st.next_index < st.chunks.len() => {
                st.next_index += 1;
                st.next_index - 1
            }
            None => {
                return Err(JitError::CodeSpaceExhausted {
                    reservation: self.reservation,
                })
            }
        };
        // SAFETY: the place lies inside our reservation and holds no live chunk (its index
        // was free), so only our own placeholder is replaced.
        let views = match unsafe { self.backend.map_chunk(self.place(idx)) } {
            Ok(views) => views,
            Err(e) => {
                st.free_indices.push(idx);
                return Err(e);
            }
        };
        st.chunks[idx] = Some(Chunk {
            class: ci,
            views,
            free: Vec::new(),
            bump: 0,
            used: 0,
        });
        self.stats.chunk_mapped(self.chunk_size);
        Ok(idx)
    }

    /// Unmaps chunk `idx` (every view) and frees its index.
    #[cold]
    fn unmap_chunk(&self, st: &mut AllocState, idx: usize) {
        let chunk = st.chunks[idx].take().expect("unmapping a mapped chunk");
        debug_assert_eq!(chunk.used, 0, "unmapping a chunk with live slots");
        // SAFETY: the views come from mapping this place, and the chunk is empty: every slot
        // was freed after its grace period (and trap-filled), so nobody executes or reaches it.
        unsafe { self.backend.unmap_chunk(self.place(idx), chunk.views) };
        st.free_indices.push(idx);
        self.stats.chunk_unmapped(self.chunk_size);
    }

    /// Writes `bytes` at the start of `slot` and fills the rest of the slot with traps.
    ///
    /// The first `exec_len` bytes end up executable; in fallback mode the rest of the slot
    /// (rounded to pages) stays writable data. The code is complete, visible to instruction
    /// fetch and (where `arch::sync_core_policy` says so) every core serialized when this
    /// returns; a site may then be pointed at it (the publishing store is a Release store,
    /// ordering these writes before it).
    ///
    /// # Safety
    /// `slot` must come from [`alloc`](Self::alloc) (or a [`SlotRuns`]) on `self`, not yet
    /// freed, and no thread may
    /// be executing it (it is not reachable from any site yet).
    pub(crate) unsafe fn write(
        &self,
        slot: &Slot,
        bytes: &[u8],
        exec_len: usize,
    ) -> Result<(), JitError> {
        assert!(bytes.len() <= slot.size);
        // SAFETY: the caller's contract is the backend's.
        unsafe { self.backend.write(slot, bytes, exec_len) }?;
        arch::flush_icache(slot.addr, bytes.len());
        if self.sync_cores.after_new_code {
            os::serialize_all_cores()?;
        }
        Ok(())
    }

    /// Called after a direct site's patch word (an instruction) was replaced: serializes every
    /// core if `arch::sync_core_policy` asks for it. Registration succeeded at build, so this
    /// cannot fail in practice; the new word is published either way.
    pub(crate) fn direct_site_patched(&self) {
        if self.sync_cores.after_direct_patch {
            let _ = os::serialize_all_cores();
        }
    }
}

impl Drop for CodeMemory {
    fn drop(&mut self) {
        // No task can be in this code any more; withdraw it before it is unmapped.
        drop(self.registered.take());
        let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        for chunk in st.chunks.iter_mut() {
            // Dropping the views unmaps the RW aliases.
            drop(chunk.take());
        }
        // SAFETY: the reservation is ours; nothing references it any more (every handle that
        // could reach code held an `Arc` of `self`). Unmapping it also removes every
        // executable view inside it.
        unsafe { os::release_reservation(self.base, self.reservation) };
        self.stats.all_unmapped();
        // The backend (and its memfd) drops after this.
    }
}
