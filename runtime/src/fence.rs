//! The reader-side fence and its asymmetric partner.
//!
//! A quiescent-state (QS) report is a store by the reader (a worker switching tasks, or a
//! registered thread calling `quiescent()`), followed in program order by loads of patch
//! sites when the reader next calls into JIT code. The grace-period (GP) side stores a new
//! site target and then loads the readers' QS cells. That is the store-buffering pattern:
//! without a full barrier on *both* sides, the GP side could read a reader's new QS value
//! while that reader still loads the old site target, and the old trampoline would be freed
//! under it.
//!
//! Two ways to provide both barriers:
//!
//! 1. **membarrier** (preferred): the process registers for
//!    `MEMBARRIER_CMD_PRIVATE_EXPEDITED` once. The GP side calls
//!    [`heavy_barrier`], which makes every running thread of the process execute a full
//!    memory barrier before it returns (threads that are not running pass one when they are
//!    scheduled). Readers then only need a compiler barrier ([`light_barrier`]).
//! 2. **fenced fallback**: when membarrier is unavailable (old kernel, seccomp, or forced by
//!    `TRAMWAY_FORCE_FENCE=1` for tests), [`light_barrier`] is a `SeqCst` fence and
//!    [`heavy_barrier`] is a `SeqCst` fence too.
//!
//! The mode is chosen once per process, before the first reader can skip its fence, and
//! never changes: a reader that skipped the fence always pairs with a GP side that issued
//! the membarrier.

use std::sync::atomic::{AtomicU8, Ordering};

use crate::primitive::fence;

const UNDECIDED: u8 = 0;
const MEMBARRIER: u8 = 1;
const FENCED: u8 = 2;

static MODE: AtomicU8 = AtomicU8::new(UNDECIDED);

/// Which barrier pairing this process uses; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarrierMode {
    /// Readers use a compiler barrier; the GP side calls `membarrier(PRIVATE_EXPEDITED)`.
    Membarrier,
    /// Readers and the GP side both use a `SeqCst` fence.
    Fenced,
}

/// Returns the process-wide barrier mode, deciding it on first use.
#[inline]
pub fn mode() -> BarrierMode {
    match MODE.load(Ordering::Acquire) {
        MEMBARRIER => BarrierMode::Membarrier,
        FENCED => BarrierMode::Fenced,
        _ => decide(),
    }
}

#[cold]
fn decide() -> BarrierMode {
    let chosen = if std::env::var_os("TRAMWAY_FORCE_FENCE").is_some_and(|v| v == "1") {
        FENCED
    } else if register_membarrier() {
        MEMBARRIER
    } else {
        FENCED
    };
    // Several threads may race here; the first decision wins and every caller returns it.
    let _ = MODE.compare_exchange(UNDECIDED, chosen, Ordering::AcqRel, Ordering::Acquire);
    match MODE.load(Ordering::Acquire) {
        MEMBARRIER => BarrierMode::Membarrier,
        _ => BarrierMode::Fenced,
    }
}

fn register_membarrier() -> bool {
    use crate::os::{membarrier, membarrier_supports, MembarrierCmd};
    membarrier_supports(MembarrierCmd::PrivateExpedited)
        && membarrier(MembarrierCmd::RegisterPrivateExpedited).is_ok()
}

/// The reader half: issued after a QS report and before the reader may load a patch site.
#[inline]
pub fn light_barrier() {
    #[cfg(loom)]
    {
        // Loom models the fenced pairing only (it cannot model membarrier).
        fence(Ordering::SeqCst);
    }
    #[cfg(not(loom))]
    light_barrier_for_mode();
}

#[cfg(not(loom))]
#[inline]
fn light_barrier_for_mode() {
    if MODE.load(Ordering::Relaxed) == MEMBARRIER {
        // The GP side's membarrier supplies the hardware barrier; only keep the compiler
        // from moving the site loads above the QS store.
        std::sync::atomic::compiler_fence(Ordering::SeqCst);
    } else {
        // Fenced fallback (or mode not yet decided, which is treated as fenced).
        fence(Ordering::SeqCst);
    }
}

/// The GP half: issued after sites were re-pointed and before QS cells are read.
pub fn heavy_barrier() {
    #[cfg(loom)]
    {
        fence(Ordering::SeqCst);
    }
    #[cfg(not(loom))]
    heavy_barrier_for_mode();
}

#[cfg(not(loom))]
fn heavy_barrier_for_mode() {
    match mode() {
        BarrierMode::Membarrier => {
            fence(Ordering::SeqCst);
            if !membarrier_expedited() {
                // Registration succeeded earlier, so this should not fail; if it does, we
                // cannot downgrade readers that already skip fences. Abort loudly rather
                // than free code early.
                panic!("membarrier(PRIVATE_EXPEDITED) failed after successful registration");
            }
        }
        BarrierMode::Fenced => fence(Ordering::SeqCst),
    }
}

#[cfg(not(loom))]
fn membarrier_expedited() -> bool {
    crate::os::membarrier(crate::os::MembarrierCmd::PrivateExpedited).is_ok()
}
