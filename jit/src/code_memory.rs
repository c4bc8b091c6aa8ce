//! W^X code memory: one address reservation, chunks mapped twice, a size-class slot allocator, counters.
//!
//! # Reservation
//! [`CodeMemory::new`] reserves one contiguous range (at most 2 GiB, so a `rel32` between any two pieces
//! of code always reaches) with `mmap(PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE)`. The range
//! stays reserved for the life of the `CodeMemory`, so no other mapping of the process can land inside it.
//!
//! # Chunks and the two views (the W^X argument)
//! One memfd (named `tramway-code-<jit id>`, sparse, as large as the reservation) backs all code. A chunk
//! is the memfd range at the same offset as its place in the reservation, mapped twice:
//! - the **RX view** at its place in the reservation, `MAP_FIXED | MAP_SHARED`, `PROT_READ | PROT_EXEC`;
//! - the **RW view** at an address the kernel picks (memmap2 `map_raw`), never executable.
//!
//! Every write (new code, trap fill, a site's slot or `jmp rel32` word) goes through the RW view, and
//! every execution through the RX view. No page is ever writable and executable at once, and nothing
//! is ever `mprotect`ed in this mode. Both views map the same physical pages, so a store through the
//! RW view is what a load or instruction fetch through the RX view observes (x86 keeps instruction
//! fetch coherent with stores on physical addresses).
//!
//! ## Fallback without memfd
//! If `memfd_create` is unavailable (`ENOSYS`, `EPERM`, ...) or [`Config::force_fallback`] is set, a
//! chunk is a private anonymous mapping whose pages are flipped with `mprotect`: `PROT_NONE` while
//! free, `PROT_READ | PROT_WRITE` while a slot is being written, `PROT_READ | PROT_EXEC` after. A page
//! can therefore only be written while nothing executes it, so in this mode every slot is a whole
//! number of pages (the smallest class is one page) and code, once published, is never written again.
//! Indirect sites keep their 8-byte target slot in a separate RW data page of the stub's slot (see
//! `site.rs`); direct sites need to rewrite code and are refused with `JitError::Unsupported`.
//!
//! # Unmapping a chunk
//! The RW view is unmapped, the RX range is replaced by a fresh `PROT_NONE` anonymous `MAP_NORESERVE`
//! mapping (the address stays reserved and stale execution faults at once), and the memfd range is
//! released with `fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)`. Free chunk indices are reused.
//!
//! # Slots
//! Objects are placed in size classes (16, 32, 64, ... bytes up to the chunk size; one page upwards in
//! fallback mode). A chunk holds slots of one class. A chunk is unmapped when its last slot is freed
//! and it is not the class's current allocation chunk; a chunk that becomes full stops being current.
//! Freed slots are filled with traps (`ud2`, then `int3`) when trap filling is on (always in debug builds).
//!
//! # Counters
//! [`JitStats`] is kept under one small mutex so that snapshots are consistent: the invariant
//! `emitted == live + retired + reclaimed` holds in every snapshot (checked by a debug assertion on
//! every update).

use std::collections::BTreeSet;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::ptr;
use std::sync::{Arc, Mutex, MutexGuard};

use memmap2::{MmapOptions, MmapRaw};

use crate::arch;
use crate::error::JitError;
use crate::stats::{JitStats, JitStatsHandle};

/// Locks a mutex, ignoring poisoning (the protected state is kept consistent before any call that can panic).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Parameters of a [`CodeMemory`].
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub reservation: usize,
    pub chunk_size: usize,
    pub force_fallback: bool,
    pub trap_fill: bool,
    pub sync_core: bool,
}

/// One allocated object: where it executes, where it is written, and its slot size.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Slot {
    /// Address in the RX view (inside the reservation).
    pub addr: usize,
    /// Address of the same bytes in the RW view; 0 in fallback mode.
    pub rw: usize,
    /// Size of the slot (its class), at least the object's length.
    pub size: usize,
    chunk: usize,
}

struct Chunk {
    class: usize,
    rw: Option<MmapRaw>,
    free: Vec<usize>,
    bump: usize,
    used: usize,
}

struct Class {
    size: usize,
    current: Option<usize>,
    available: BTreeSet<usize>,
}

struct State {
    chunks: Vec<Option<Chunk>>,
    free_indices: Vec<usize>,
    next_index: usize,
    classes: Vec<Class>,
}

/// The reservation, its chunks and the slot allocator. Shared (`Arc`) by the `Jit`, its trampolines,
/// sites and deferred reclamation callbacks; dropping it unmaps everything.
pub(crate) struct CodeMemory {
    id: u64,
    base: usize,
    reservation: usize,
    chunk_size: usize,
    page_size: usize,
    memfd: Option<File>,
    trap_fill: bool,
    sync_core: bool,
    state: Mutex<State>,
    stats: Arc<Mutex<JitStats>>,
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

/// Creates the backing memfd, or `Ok(None)` when memfds are unavailable (the caller falls back).
fn create_memfd(id: u64, len: usize) -> Result<Option<File>, JitError> {
    let name = format!("tramway-code-{id}\0");
    // SAFETY: `name` is a NUL-terminated string that outlives the call.
    let fd = unsafe { libc::memfd_create(name.as_ptr().cast(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ENOSYS | libc::EPERM | libc::EACCES | libc::EINVAL) => Ok(None),
            _ => Err(JitError::Os {
                op: "memfd_create",
                source: err,
            }),
        };
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(len as u64).map_err(|source| JitError::Os {
        op: "ftruncate",
        source,
    })?;
    Ok(Some(file))
}

impl CodeMemory {
    /// Reserves the address range and creates the memfd (or selects the fallback).
    pub(crate) fn new(id: u64, cfg: &Config) -> Result<CodeMemory, JitError> {
        let page_size = page_size();
        let Config {
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
        if reservation > (2usize << 30) {
            return Err(JitError::InvalidConfig(
                "reservation must be at most 2 GiB (rel32 reach)",
            ));
        }
        if cfg.sync_core {
            arch::register_sync_core().map_err(|source| JitError::Os {
                op: "membarrier (register sync-core)",
                source,
            })?;
        }
        let memfd = if cfg.force_fallback {
            None
        } else {
            create_memfd(id, reservation)?
        };
        // SAFETY: a fresh PROT_NONE mapping at an address the kernel chooses aliases nothing.
        let base = unsafe {
            libc::mmap(
                ptr::null_mut(),
                reservation,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(JitError::last_os("mmap (reservation)"));
        }
        let min_class = if memfd.is_some() { 16 } else { page_size };
        let mut classes = Vec::new();
        let mut size = min_class;
        while size < chunk_size {
            classes.push(size);
            size *= 2;
        }
        classes.push(chunk_size);
        let classes = classes
            .into_iter()
            .map(|size| Class {
                size,
                current: None,
                available: BTreeSet::new(),
            })
            .collect();
        Ok(CodeMemory {
            id,
            base: base as usize,
            reservation,
            chunk_size,
            page_size,
            memfd,
            trap_fill: cfg.trap_fill,
            sync_core: cfg.sync_core,
            state: Mutex::new(State {
                chunks: (0..reservation / chunk_size).map(|_| None).collect(),
                free_indices: Vec::new(),
                next_index: 0,
                classes,
            }),
            stats: Arc::new(Mutex::new(JitStats::default())),
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

    /// The system page size.
    pub(crate) fn page_size(&self) -> usize {
        self.page_size
    }

    /// Whether this is the mprotect fallback (no memfd double mapping).
    pub(crate) fn is_fallback(&self) -> bool {
        self.memfd.is_none()
    }

    /// Whether `JitBuilder::sync_core` was requested (and registered).
    pub(crate) fn sync_core(&self) -> bool {
        self.sync_core
    }

    /// A handle on the counters.
    pub(crate) fn stats_handle(&self) -> JitStatsHandle {
        JitStatsHandle::new(self.stats.clone())
    }

    /// Applies `f` to the counters under their lock and checks the balance invariant.
    pub(crate) fn update_stats(&self, f: impl FnOnce(&mut JitStats)) {
        let mut s = lock(&self.stats);
        f(&mut s);
        debug_assert!(s.balanced(), "unbalanced counters: {s:?}");
    }

    /// Allocates a slot for an object of `len` bytes.
    pub(crate) fn alloc(&self, len: usize) -> Result<Slot, JitError> {
        if len > self.chunk_size {
            return Err(JitError::CodeTooLarge {
                len,
                max: self.chunk_size,
            });
        }
        let mut st = lock(&self.state);
        let ci = st
            .classes
            .iter()
            .position(|c| c.size >= len.max(1))
            .expect("the last class is the chunk size");
        let class = &st.classes[ci];
        let size = class.size;
        let idx = match class.current.or_else(|| class.available.first().copied()) {
            Some(idx) => idx,
            None => self.map_chunk(&mut st, ci)?,
        };
        let chunk = st.chunks[idx]
            .as_mut()
            .expect("available chunks are mapped");
        let offset = chunk.free.pop().unwrap_or_else(|| {
            let o = chunk.bump;
            chunk.bump += size;
            o
        });
        chunk.used += 1;
        let full = chunk.free.is_empty() && chunk.bump + size > self.chunk_size;
        let rw = chunk
            .rw
            .as_ref()
            .map_or(0, |m| m.as_mut_ptr() as usize + offset);
        let class = &mut st.classes[ci];
        if full {
            class.available.remove(&idx);
            class.current = None;
        } else {
            class.available.insert(idx);
            class.current = Some(idx);
        }
        Ok(Slot {
            addr: self.base + idx * self.chunk_size + offset,
            rw,
            size,
            chunk: idx,
        })
    }

    /// Maps a fresh chunk for class `ci` and returns its index.
    #[cold]
    fn map_chunk(&self, st: &mut State, ci: usize) -> Result<usize, JitError> {
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
        let addr = self.base + idx * self.chunk_size;
        let offset = idx * self.chunk_size;
        let (prot, flags, fd) = match &self.memfd {
            Some(f) => (
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_FIXED | libc::MAP_SHARED,
                f.as_raw_fd(),
            ),
            None => (
                libc::PROT_NONE,
                libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
            ),
        };
        let off = if fd >= 0 { offset as libc::off_t } else { 0 };
        // SAFETY: `addr..addr + chunk_size` lies inside our reservation and holds no live chunk
        // (its index was free), so MAP_FIXED replaces only our own PROT_NONE placeholder.
        let p = unsafe {
            libc::mmap(
                addr as *mut libc::c_void,
                self.chunk_size,
                prot,
                flags,
                fd,
                off,
            )
        };
        if p == libc::MAP_FAILED {
            st.free_indices.push(idx);
            return Err(JitError::last_os("mmap (chunk RX view)"));
        }
        let rw = match &self.memfd {
            Some(f) => match MmapOptions::new()
                .offset(offset as u64)
                .len(self.chunk_size)
                .map_raw(f)
            {
                Ok(m) => Some(m),
                Err(source) => {
                    self.release_range(idx);
                    st.free_indices.push(idx);
                    return Err(JitError::Os {
                        op: "mmap (chunk RW view)",
                        source,
                    });
                }
            },
            None => None,
        };
        // Both views are shared mappings of one memfd: a `fork`ed child would share the pages
        // and could write (trap fills, site words) into the parent's live code. Keep code
        // mappings out of children altogether (best effort: the advice cannot fail on a valid
        // mapping, and a failure only matters to processes that fork).
        // SAFETY: both ranges are mappings we just created; madvise changes no memory.
        unsafe {
            libc::madvise(
                addr as *mut libc::c_void,
                self.chunk_size,
                libc::MADV_DONTFORK,
            );
            if let Some(m) = &rw {
                libc::madvise(m.as_mut_ptr().cast(), self.chunk_size, libc::MADV_DONTFORK);
            }
        }
        st.chunks[idx] = Some(Chunk {
            class: ci,
            rw,
            free: Vec::new(),
            bump: 0,
            used: 0,
        });
        self.update_stats(|s| {
            s.mapped_bytes += self.chunk_size;
            s.chunks += 1;
        });
        Ok(idx)
    }

    /// Replaces chunk `idx`'s RX range with a `PROT_NONE` placeholder and punches its memfd range out.
    fn release_range(&self, idx: usize) {
        let addr = self.base + idx * self.chunk_size;
        // SAFETY: the range is inside our reservation and no slot in it is live; replacing it with
        // a PROT_NONE mapping keeps the address reserved and makes stale execution fault.
        let p = unsafe {
            libc::mmap(
                addr as *mut libc::c_void,
                self.chunk_size,
                libc::PROT_NONE,
                libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            // SAFETY: as above; if even this fails the code stays mapped but is never handed out
            // while it is still reachable, because the index is reused only through `map_chunk`.
            unsafe { libc::mprotect(addr as *mut libc::c_void, self.chunk_size, libc::PROT_NONE) };
        }
        if let Some(f) = &self.memfd {
            // SAFETY: punching a hole in our own memfd; no view of this range remains.
            // Failure (e.g. EOPNOTSUPP) only means the memory is released later, at close.
            unsafe {
                libc::fallocate(
                    f.as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    (idx * self.chunk_size) as libc::off_t,
                    self.chunk_size as libc::off_t,
                )
            };
        }
    }

    /// Unmaps chunk `idx` (both views) and frees its index.
    #[cold]
    fn unmap_chunk(&self, st: &mut State, idx: usize) {
        let chunk = st.chunks[idx].take().expect("unmapping a mapped chunk");
        drop(chunk.rw);
        self.release_range(idx);
        st.free_indices.push(idx);
        self.update_stats(|s| {
            s.mapped_bytes -= self.chunk_size;
            s.chunks -= 1;
        });
    }

    /// `mprotect`s a fallback slot range.
    fn protect(&self, addr: usize, len: usize, prot: libc::c_int) -> Result<(), JitError> {
        // SAFETY: the range is a page-aligned part of a slot we own inside our reservation.
        if unsafe { libc::mprotect(addr as *mut libc::c_void, len, prot) } != 0 {
            return Err(JitError::last_os("mprotect"));
        }
        Ok(())
    }

    /// Writes `bytes` at the start of `slot` and fills the rest of the slot with traps.
    ///
    /// In fallback mode the first `exec_len` bytes (rounded up to pages) end up `PROT_READ | PROT_EXEC`
    /// and the rest of the slot stays `PROT_READ | PROT_WRITE` (a data page); in memfd mode `exec_len`
    /// is ignored. The code is complete when this returns; a site may then be pointed at it (the
    /// publishing store is a Release store, ordering these writes before it).
    ///
    /// # Safety
    /// `slot` must come from [`alloc`](Self::alloc) on `self`, not yet freed, and no thread may be
    /// executing it (it is not reachable from any site yet).
    pub(crate) unsafe fn write(
        &self,
        slot: &Slot,
        bytes: &[u8],
        exec_len: usize,
    ) -> Result<(), JitError> {
        assert!(bytes.len() <= slot.size);
        if self.memfd.is_some() {
            // SAFETY: `slot.rw` is the RW alias of `slot.size` bytes we own (caller contract).
            let dst = unsafe { std::slice::from_raw_parts_mut(slot.rw as *mut u8, slot.size) };
            dst[..bytes.len()].copy_from_slice(bytes);
            dst[bytes.len()..].fill(arch::INT3);
        } else {
            self.protect(slot.addr, slot.size, libc::PROT_READ | libc::PROT_WRITE)?;
            // SAFETY: the slot's pages are now RW and owned by us (caller contract).
            let dst = unsafe { std::slice::from_raw_parts_mut(slot.addr as *mut u8, slot.size) };
            dst[..bytes.len()].copy_from_slice(bytes);
            dst[bytes.len()..].fill(arch::INT3);
            let exec = exec_len.div_ceil(self.page_size).max(1) * self.page_size;
            self.protect(
                slot.addr,
                exec.min(slot.size),
                libc::PROT_READ | libc::PROT_EXEC,
            )?;
        }
        arch::flush_icache(slot.addr, bytes.len());
        if self.sync_core {
            arch::sync_all_cores().map_err(|source| JitError::Os {
                op: "membarrier (sync-core)",
                source,
            })?;
        }
        Ok(())
    }

    /// Frees `slot`: fills it with traps (if enabled) and returns it to its chunk, unmapping the
    /// chunk when it became empty and is not its class's current chunk.
    ///
    /// # Safety
    /// `slot` must come from [`alloc`](Self::alloc) on `self`, be freed only once, and no thread may
    /// be executing it or be able to reach it (a grace period has passed since it became unreachable).
    pub(crate) unsafe fn free(&self, slot: Slot) {
        if self.memfd.is_some() {
            if self.trap_fill {
                // SAFETY: the RW alias of a slot we own and nobody executes (caller contract).
                let dst = unsafe { std::slice::from_raw_parts_mut(slot.rw as *mut u8, slot.size) };
                arch::fill_traps(dst);
            }
        } else if self
            .protect(slot.addr, slot.size, libc::PROT_READ | libc::PROT_WRITE)
            .is_ok()
        {
            if self.trap_fill {
                // SAFETY: the slot's pages are RW now and nobody executes them (caller contract).
                let dst =
                    unsafe { std::slice::from_raw_parts_mut(slot.addr as *mut u8, slot.size) };
                arch::fill_traps(dst);
            }
            let _ = self.protect(slot.addr, slot.size, libc::PROT_NONE);
        }
        let mut st = lock(&self.state);
        let chunk = st.chunks[slot.chunk]
            .as_mut()
            .expect("freeing into a mapped chunk");
        let offset = slot.addr - self.base - slot.chunk * self.chunk_size;
        debug_assert!(
            chunk.used > 0 && !chunk.free.contains(&offset),
            "double free of code slot {:#x}",
            slot.addr
        );
        chunk.free.push(offset);
        chunk.used -= 1;
        let (ci, empty) = (chunk.class, chunk.used == 0);
        let class = &mut st.classes[ci];
        if empty && class.current != Some(slot.chunk) {
            class.available.remove(&slot.chunk);
            self.unmap_chunk(&mut st, slot.chunk);
        } else {
            class.available.insert(slot.chunk);
        }
    }
}

impl Drop for CodeMemory {
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        for chunk in st.chunks.iter_mut() {
            // Dropping the RW views unmaps them.
            drop(chunk.take());
        }
        // SAFETY: the reservation is ours; nothing references it any more (every handle that could
        // reach code held an `Arc` of `self`). Unmapping it also removes every RX view inside it.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.reservation) };
        let mut s = lock(&self.stats);
        s.mapped_bytes = 0;
        s.chunks = 0;
        // The memfd closes when `self.memfd` drops, after this.
    }
}
