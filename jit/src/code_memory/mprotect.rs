//! The mprotect fallback backend: one mapping per chunk whose pages flip between protections.
//!
//! A slot's pages are `PROT_NONE` while free, `PROT_READ | PROT_WRITE` only while it is written
//! (nothing executes it then) and `PROT_READ | PROT_EXEC` once complete; the bytes past
//! `exec_len` (a site's data page) stay `PROT_READ | PROT_WRITE`, never executable. Slots are
//! whole pages, so a protection change never touches another slot (the W^X argument is in
//! `code_memory/mod.rs`).

use super::{ChunkPlace, ChunkViews, CodeBackend, Slot};
use crate::arch::{self, StubMemory};
use crate::error::JitError;
use crate::os::{self, Protection};

/// Private anonymous chunks, written in place while their pages are writable.
pub(super) struct Mprotect {
    page_size: usize,
}

impl Mprotect {
    pub(super) fn new(page_size: usize) -> Mprotect {
        Mprotect { page_size }
    }
}

impl CodeBackend for Mprotect {
    fn min_slot_size(&self) -> usize {
        self.page_size
    }

    fn stub_memory(&self) -> StubMemory {
        StubMemory::PageProtected {
            page_size: self.page_size,
        }
    }

    fn memfd_name(&self) -> Option<&str> {
        None
    }

    unsafe fn map_chunk(&self, place: ChunkPlace) -> Result<ChunkViews, JitError> {
        // SAFETY: the caller guarantees the place holds only our placeholder.
        unsafe { os::map_anonymous_fixed(place.addr, place.len) }?;
        // SAFETY: a mapping we just created.
        unsafe { os::exclude_from_fork(place.addr, place.len) };
        Ok(ChunkViews {
            write_base: place.addr,
            _alias: None,
        })
    }

    unsafe fn unmap_chunk(&self, place: ChunkPlace, views: ChunkViews) {
        drop(views);
        // SAFETY: the caller guarantees no slot of the chunk is live.
        unsafe { os::restore_placeholder(place.addr, place.len) };
    }

    unsafe fn write(&self, slot: &Slot, bytes: &[u8], exec_len: usize) -> Result<(), JitError> {
        // SAFETY: the slot's pages are ours and nobody executes them (caller contract).
        unsafe { os::protect(slot.addr, slot.size, Protection::ReadWrite) }?;
        // SAFETY: the slot's pages are now RW and owned by us (caller contract).
        let dst = unsafe { std::slice::from_raw_parts_mut(slot.write_addr as *mut u8, slot.size) };
        dst[..bytes.len()].copy_from_slice(bytes);
        arch::fill_padding(&mut dst[bytes.len()..]);
        let exec = exec_len.div_ceil(self.page_size).max(1) * self.page_size;
        // SAFETY: complete code, not yet reachable; from now on it is never written again.
        unsafe { os::protect(slot.addr, exec.min(slot.size), Protection::ReadExec) }
    }

    unsafe fn release(&self, slot: &Slot) -> bool {
        // SAFETY: nobody executes or reaches the slot (caller contract).
        if unsafe { os::protect(slot.addr, slot.size, Protection::ReadWrite) }.is_ok() {
            // SAFETY: the slot's pages are RW now and nobody executes them.
            let dst =
                unsafe { std::slice::from_raw_parts_mut(slot.write_addr as *mut u8, slot.size) };
            arch::fill_traps(dst);
        }
        // Inaccessible: a stale call faults, trap-filled or not. If even this fails (say
        // `ENOMEM` at the mapping-count limit), the old code may stay executable, so the slot
        // is never reused: a stale call then runs the old code, never newer code.
        // SAFETY: as above.
        unsafe { os::protect(slot.addr, slot.size, Protection::None) }.is_ok()
    }
}
