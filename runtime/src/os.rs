//! The operating-system calls tramway's two crates share: `membarrier(2)`.
//!
//! One wrapper, used by the reader/grace-period barrier pairing of [`crate::qs`] (the
//! `PRIVATE_EXPEDITED` commands) and by `tramway-jit` when it must serialize every core
//! after writing code (the `SYNC_CORE` commands). It knows nothing about what either caller
//! does with the barrier. Not a stable API: it is public only so that `tramway-jit` can reach
//! it.

use std::io;

/// A `membarrier(2)` command (`linux/membarrier.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MembarrierCmd {
    /// `MEMBARRIER_CMD_QUERY`: the bit mask of supported commands.
    Query,
    /// `MEMBARRIER_CMD_PRIVATE_EXPEDITED`: every running thread of the process executes a full
    /// memory barrier before the call returns.
    PrivateExpedited,
    /// `MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED`: needed once before `PrivateExpedited`.
    RegisterPrivateExpedited,
    /// `MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE`: as `PrivateExpedited`, and every thread
    /// executes a core-serializing instruction before it next runs user code.
    PrivateExpeditedSyncCore,
    /// `MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE`: needed once before
    /// `PrivateExpeditedSyncCore`.
    RegisterPrivateExpeditedSyncCore,
}

impl MembarrierCmd {
    /// The command's bit, as `Query` reports support for it.
    pub const fn bit(self) -> i64 {
        match self {
            MembarrierCmd::Query => 0,
            MembarrierCmd::PrivateExpedited => 1 << 3,
            MembarrierCmd::RegisterPrivateExpedited => 1 << 4,
            MembarrierCmd::PrivateExpeditedSyncCore => 1 << 5,
            MembarrierCmd::RegisterPrivateExpeditedSyncCore => 1 << 6,
        }
    }
}

/// Issues `membarrier(cmd, 0, 0)`, retrying on `EINTR`. Returns the system call's value (the
/// support mask for [`MembarrierCmd::Query`], 0 otherwise).
#[cfg(target_os = "linux")]
pub fn membarrier(cmd: MembarrierCmd) -> io::Result<i64> {
    loop {
        // SAFETY: membarrier takes plain integer arguments and touches no memory of ours; an
        // unknown or unregistered command fails with EINVAL or EPERM.
        let r = unsafe { libc::syscall(libc::SYS_membarrier, cmd.bit(), 0, 0) };
        if r >= 0 {
            return Ok(r);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

/// `membarrier(2)` exists only on Linux.
#[cfg(not(target_os = "linux"))]
pub fn membarrier(_cmd: MembarrierCmd) -> io::Result<i64> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// Whether the kernel supports `cmd` (asks `MEMBARRIER_CMD_QUERY`).
pub fn membarrier_supports(cmd: MembarrierCmd) -> bool {
    membarrier(MembarrierCmd::Query).is_ok_and(|mask| mask & cmd.bit() != 0)
}
