//! Architecture-specific encoding behind one small interface.
//!
//! `x86_64.rs` holds the only encodings this crate emits: site stubs, the forwarding trampoline
//! body, the constant-return body and the trap fill. The encoders are plain byte/dynasm code and
//! compile on every host (dynasm's x64 backend is portable); only [`SUPPORTED`] decides whether a
//! [`Jit`](crate::Jit) can be built, so on other architectures construction returns
//! [`JitError::Unsupported`](crate::JitError::Unsupported).

mod x86_64;

pub(crate) use self::x86_64::{
    direct_word, emit_constant_return, emit_forwarding, fill_traps, indirect_stub,
    INDIRECT_STUB_LEN, INT3, SITE_STUB_LEN,
};

/// Whether this target can execute the code the crate emits.
pub(crate) const SUPPORTED: bool = cfg!(all(target_arch = "x86_64", target_os = "linux"));

/// The assembler type handed to emit closures: a dynasm `VecAssembler` for x86-64, created at the
/// final address of the code so relocations resolve correctly.
pub type Assembler = dynasmrt::VecAssembler<dynasmrt::x64::X64Relocation>;

/// Makes newly written code at `addr..addr + len` visible to instruction fetch.
///
/// On x86-64 instruction fetch is coherent with data stores (including stores through another
/// virtual alias of the same physical page), so this is a no-op; the publishing Release store of a
/// site orders the code bytes before the pointer to them. An aarch64 port must clean the data cache
/// and invalidate the instruction cache here (`dc cvau; dsb ish; ic ivau; dsb ish`) and then use
/// `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE)`, as DESIGN.md describes.
#[inline]
pub(crate) fn flush_icache(addr: usize, len: usize) {
    let _ = (addr, len);
}

/// `membarrier` commands from `linux/membarrier.h`.
const MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE: libc::c_int = 1 << 5;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE: libc::c_int = 1 << 6;

fn membarrier(cmd: libc::c_int) -> std::io::Result<()> {
    // SAFETY: membarrier takes no pointers; an unknown command fails with EINVAL.
    if unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0, 0) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Registers the process for [`sync_all_cores`] (needed once, before the first use).
pub(crate) fn register_sync_core() -> std::io::Result<()> {
    membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE)
}

/// Makes every thread of the process execute a core-serializing instruction before it next runs
/// user code: the executing side of the Intel SDM cross-modifying-code protocol (and what aarch64
/// needs after the cache maintenance of [`flush_icache`]). Opt-in on x86-64 through
/// `JitBuilder::sync_core`: the publishing protocol does not need it for code at addresses that no
/// thread can have fetched since they were last written, which the grace period guarantees.
pub(crate) fn sync_all_cores() -> std::io::Result<()> {
    membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE)
}
