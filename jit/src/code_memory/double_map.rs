//! The memfd double-mapping backend: each chunk mapped RX in the reservation and RW elsewhere.
//!
//! Every write goes through the RW view and every execution through the RX view, so no page is
//! ever writable and executable and nothing is `mprotect`ed (the W^X argument is in
//! `code_memory/mod.rs`). Unmapping a chunk drops its RW view, restores the placeholder over its
//! RX view and punches its range out of the memfd.

use std::fs::File;

use super::{ChunkPlace, ChunkViews, CodeBackend, Slot};
use crate::arch::{self, StubMemory};
use crate::error::JitError;
use crate::os::{self, Protection};

/// One memfd, as large as the reservation, backing every chunk at the same offset.
pub(super) struct DoubleMap {
    memfd: File,
    name: String,
}

impl DoubleMap {
    /// Creates the memfd `tramway-code-<id>`, or `Ok(None)` if memfds are unavailable.
    pub(super) fn new(id: u64, len: usize) -> Result<Option<DoubleMap>, JitError> {
        let name = format!("tramway-code-{id}");
        Ok(os::create_memfd(&name, len)?.map(|memfd| DoubleMap { memfd, name }))
    }
}

impl CodeBackend for DoubleMap {
    fn min_slot_size(&self) -> usize {
        64
    }

    fn stub_memory(&self) -> StubMemory {
        StubMemory::DoubleMapped
    }

    fn memfd_name(&self) -> Option<&str> {
        Some(&self.name)
    }

    unsafe fn map_chunk(&self, place: ChunkPlace) -> Result<ChunkViews, JitError> {
        // SAFETY: the caller guarantees the place holds only our placeholder.
        unsafe {
            os::map_file_fixed(
                place.addr,
                place.len,
                &self.memfd,
                place.offset,
                Protection::ReadExec,
            )
        }?;
        let rw = match os::map_shared_view(&self.memfd, place.offset, place.len) {
            Ok(rw) => rw,
            Err(e) => {
                // SAFETY: the RX view was just mapped and holds no slot yet.
                unsafe { os::restore_placeholder(place.addr, place.len) };
                os::punch_hole(&self.memfd, place.offset, place.len);
                return Err(e);
            }
        };
        // Both views are shared mappings of one memfd: a `fork`ed child would share the pages
        // and could write (trap fills, site words) into the parent's live code. Keep code
        // mappings out of children altogether.
        // SAFETY: both ranges are mappings we just created.
        unsafe {
            os::exclude_from_fork(place.addr, place.len);
            os::exclude_from_fork(rw.addr(), place.len);
        }
        // Fresh memfd pages read as zeros, which decode as instructions: fill the chunk with
        // traps before any slot is handed out, so a stray jump into unused bytes faults.
        // SAFETY: the RW view was just mapped over `place.len` bytes that nothing executes.
        arch::fill_traps(unsafe {
            std::slice::from_raw_parts_mut(rw.addr() as *mut u8, place.len)
        });
        Ok(ChunkViews {
            write_base: rw.addr(),
            _alias: Some(rw),
        })
    }

    unsafe fn unmap_chunk(&self, place: ChunkPlace, views: ChunkViews) {
        drop(views);
        // SAFETY: the caller guarantees no slot of the chunk is live; the RX range becomes a
        // placeholder again, so stale execution faults.
        unsafe { os::restore_placeholder(place.addr, place.len) };
        // No view of this range remains: release its memory.
        os::punch_hole(&self.memfd, place.offset, place.len);
    }

    unsafe fn write(&self, slot: &Slot, bytes: &[u8], _exec_len: usize) -> Result<(), JitError> {
        // SAFETY: `slot.write_addr` is the RW alias of `slot.size` bytes we own, which no
        // thread executes (caller contract).
        let dst = unsafe { std::slice::from_raw_parts_mut(slot.write_addr as *mut u8, slot.size) };
        dst[..bytes.len()].copy_from_slice(bytes);
        arch::fill_padding(&mut dst[bytes.len()..]);
        Ok(())
    }

    unsafe fn release(&self, slot: &Slot) -> bool {
        // SAFETY: the RW alias of a slot we own and nobody executes (caller contract).
        let dst = unsafe { std::slice::from_raw_parts_mut(slot.write_addr as *mut u8, slot.size) };
        arch::fill_traps(dst);
        true
    }
}
