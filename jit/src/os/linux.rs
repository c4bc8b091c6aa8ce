//! Linux system calls of the jit: memfd, reservation, chunk mappings, madvise, hole punching,
//! mprotect, page size, and the two sync-core `membarrier` commands.
//!
//! Functions that map over a fixed address are `unsafe`: the caller guarantees the range is
//! its own (inside its reservation) and that nothing still uses what the mapping replaces.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::ptr;

use memmap2::{MmapOptions, MmapRaw};
use tramway_runtime::os::{membarrier, MembarrierCmd};

use crate::error::JitError;

/// Page protections the jit uses. There is deliberately no writable-and-executable value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Protection {
    /// `PROT_NONE`.
    None,
    /// `PROT_READ | PROT_WRITE`.
    ReadWrite,
    /// `PROT_READ | PROT_EXEC`.
    ReadExec,
}

impl Protection {
    fn bits(self) -> libc::c_int {
        match self {
            Protection::None => libc::PROT_NONE,
            Protection::ReadWrite => libc::PROT_READ | libc::PROT_WRITE,
            Protection::ReadExec => libc::PROT_READ | libc::PROT_EXEC,
        }
    }
}

/// The system page size.
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

/// Creates a sparse memfd of `len` bytes named `name`, or `Ok(None)` when memfds are
/// unavailable (`ENOSYS`, `EPERM`, ...: the caller falls back).
pub(crate) fn create_memfd(name: &str, len: usize) -> Result<Option<File>, JitError> {
    let name = format!("{name}\0");
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

/// Reserves `len` bytes of address space (`PROT_NONE`, `MAP_NORESERVE`) at an address the
/// kernel picks; returns its base.
pub(crate) fn reserve(len: usize) -> Result<usize, JitError> {
    // SAFETY: a fresh PROT_NONE mapping at an address the kernel chooses aliases nothing.
    let base = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(JitError::last_os("mmap (reservation)"));
    }
    Ok(base as usize)
}

/// Unmaps a whole reservation, with every mapping inside it.
///
/// # Safety
/// `base..base + len` is a reservation from [`reserve`] and nothing references it any more.
pub(crate) unsafe fn release_reservation(base: usize, len: usize) {
    // SAFETY: the caller's contract.
    unsafe { libc::munmap(base as *mut libc::c_void, len) };
}

/// Maps `file[offset..offset + len]` shared at `addr` (`MAP_FIXED`) with `prot`.
///
/// # Safety
/// `addr..addr + len` lies inside the caller's reservation and holds only a placeholder.
pub(crate) unsafe fn map_file_fixed(
    addr: usize,
    len: usize,
    file: &File,
    offset: usize,
    prot: Protection,
) -> Result<(), JitError> {
    // SAFETY: the caller's contract: MAP_FIXED replaces only the caller's own placeholder.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len,
            prot.bits(),
            libc::MAP_FIXED | libc::MAP_SHARED,
            file.as_raw_fd(),
            offset as libc::off_t,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(JitError::last_os("mmap (chunk RX view)"));
    }
    Ok(())
}

/// Maps fresh private anonymous `PROT_NONE` memory at `addr` (`MAP_FIXED`), backed by memory
/// (no `MAP_NORESERVE`): a chunk whose pages the caller will `mprotect`.
///
/// # Safety
/// As [`map_file_fixed`].
pub(crate) unsafe fn map_anonymous_fixed(addr: usize, len: usize) -> Result<(), JitError> {
    // SAFETY: the caller's contract: MAP_FIXED replaces only the caller's own placeholder.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len,
            libc::PROT_NONE,
            libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(JitError::last_os("mmap (chunk RX view)"));
    }
    Ok(())
}

/// A shared read-write view of part of a file, never executable; unmapped when dropped.
pub(crate) struct SharedView(MmapRaw);

impl SharedView {
    /// The view's first byte.
    pub(crate) fn addr(&self) -> usize {
        self.0.as_mut_ptr() as usize
    }
}

/// Maps `file[offset..offset + len]` shared, read-write, at an address the kernel picks.
pub(crate) fn map_shared_view(
    file: &File,
    offset: usize,
    len: usize,
) -> Result<SharedView, JitError> {
    MmapOptions::new()
        .offset(offset as u64)
        .len(len)
        .map_raw(file)
        .map(SharedView)
        .map_err(|source| JitError::Os {
            op: "mmap (chunk RW view)",
            source,
        })
}

/// Replaces `addr..addr + len` with a fresh `PROT_NONE` `MAP_NORESERVE` placeholder: the
/// address stays reserved and stale execution faults at once.
///
/// # Safety
/// The range lies inside the caller's reservation and nothing may execute or access it.
pub(crate) unsafe fn restore_placeholder(addr: usize, len: usize) {
    // SAFETY: the caller's contract.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len,
            libc::PROT_NONE,
            libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        // SAFETY: as above; if even this fails the code stays mapped but inaccessible, and the
        // range is handed out again only through a new MAP_FIXED mapping.
        unsafe { libc::mprotect(addr as *mut libc::c_void, len, libc::PROT_NONE) };
    }
}

/// Keeps `addr..addr + len` out of `fork`ed children (best effort: the advice cannot fail on a
/// valid mapping, and a failure only matters to processes that fork).
///
/// # Safety
/// The range is a mapping the caller owns.
pub(crate) unsafe fn exclude_from_fork(addr: usize, len: usize) {
    // SAFETY: the caller's contract; madvise changes no memory.
    unsafe { libc::madvise(addr as *mut libc::c_void, len, libc::MADV_DONTFORK) };
}

/// Releases `file[offset..offset + len]`'s memory (`FALLOC_FL_PUNCH_HOLE | KEEP_SIZE`). Best
/// effort: a failure (e.g. `EOPNOTSUPP`) only means the memory is released at close.
pub(crate) fn punch_hole(file: &File, offset: usize, len: usize) {
    // SAFETY: fallocate on our own descriptor touches no memory of the process.
    unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
}

/// `mprotect`s `addr..addr + len` to `prot`.
///
/// # Safety
/// The range is page-aligned, the caller owns it, and nothing relies on its current
/// protection (no thread executes a range made non-executable, or writes one made read-only).
pub(crate) unsafe fn protect(addr: usize, len: usize, prot: Protection) -> Result<(), JitError> {
    // SAFETY: the caller's contract.
    if unsafe { libc::mprotect(addr as *mut libc::c_void, len, prot.bits()) } != 0 {
        return Err(JitError::last_os("mprotect"));
    }
    Ok(())
}

/// Registers the process for [`serialize_all_cores`] (needed once, before the first use).
pub(crate) fn register_core_serialization() -> Result<(), JitError> {
    membarrier(MembarrierCmd::RegisterPrivateExpeditedSyncCore)
        .map(drop)
        .map_err(|source| JitError::Os {
            op: "membarrier (register sync-core)",
            source,
        })
}

/// Makes every thread of the process execute a core-serializing instruction before it next
/// runs user code (`MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE`). When that is needed is
/// decided by `arch::sync_core_policy`.
pub(crate) fn serialize_all_cores() -> Result<(), JitError> {
    membarrier(MembarrierCmd::PrivateExpeditedSyncCore)
        .map(drop)
        .map_err(|source| JitError::Os {
            op: "membarrier (sync-core)",
            source,
        })
}
