//! The two halves of the reader/grace-period barrier pairing, and the process-wide choice
//! between `membarrier` and plain fences. Why the pairing is needed and enough is argued once,
//! in the `qs` module docs ("Ordering").
//!
//! * **membarrier** (preferred): the process registers for `MEMBARRIER_CMD_PRIVATE_EXPEDITED`
//!   once. [`heavy_barrier`] makes every running thread of the process execute a full memory
//!   barrier before it returns (threads not running pass one when they are next scheduled),
//!   so [`light_barrier`] only has to stop the compiler.
//! * **fenced** (fallback: old kernel, seccomp, or `TRAMWAY_FORCE_FENCE=1` for tests): both
//!   halves are `SeqCst` fences.
//!
//! The mode is decided once per process, before the first reader can skip its fence, and never
//! changes: a reader that skipped the fence always pairs with a grace period that issued the
//! membarrier.

use std::sync::atomic::{AtomicU8, Ordering};

use crate::primitive::fence;

const UNDECIDED: u8 = 0;
const MEMBARRIER: u8 = 1;
const FENCED: u8 = 2;

static MODE: AtomicU8 = AtomicU8::new(UNDECIDED);

/// Which barrier pairing this process uses between readers and grace periods (see the
/// "Ordering" section of the [`qs`](crate::qs) docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BarrierMode {
    /// Readers issue a compiler barrier; grace periods call `membarrier(PRIVATE_EXPEDITED)`.
    Membarrier,
    /// Readers and grace periods both issue a `SeqCst` fence.
    Fenced,
}

/// The process-wide barrier mode, decided on first use (a runtime decides it when it starts):
/// [`BarrierMode::Membarrier`] where the kernel offers it, unless `TRAMWAY_FORCE_FENCE=1`.
#[inline]
pub fn barrier_mode() -> BarrierMode {
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

#[cfg(loom)]
std::thread_local! {
    /// Loom fault injection: the control test sets it to drop the reader half, and the model
    /// checker must then find a grace period that ends under a reader. A std (not loom)
    /// thread-local: loom runs a model's threads on the test's own OS thread, so this is
    /// per test.
    pub(crate) static SKIP_READER_BARRIER: std::cell::Cell<bool> =
        const { std::cell::Cell::new(false) };
}

/// The reader half: issued after a transition that can end a grace period's wait for this
/// reader and before the reader may load a patch site. Pairs with [`heavy_barrier`].
#[inline]
pub(crate) fn light_barrier() {
    #[cfg(loom)]
    {
        // Loom models the fenced pairing only (it cannot model membarrier).
        if !SKIP_READER_BARRIER.with(std::cell::Cell::get) {
            fence(Ordering::SeqCst);
        }
    }
    #[cfg(not(loom))]
    if MODE.load(Ordering::Relaxed) == MEMBARRIER {
        // The grace period's membarrier supplies the hardware barrier; only keep the
        // compiler from moving the site loads above the cell store.
        std::sync::atomic::compiler_fence(Ordering::SeqCst);
    } else {
        // Fenced (or not yet decided, which is treated as fenced).
        fence(Ordering::SeqCst);
    }
}

/// The reader half for registered threads: always a full fence, whatever the mode (as
/// liburcu's QSBR readers do). Threads report rarely compared with task switches, and it lets
/// a grace period pair with them without `membarrier`.
#[inline]
pub(crate) fn thread_barrier() {
    fence(Ordering::SeqCst);
}

/// The grace-period half: issued after sites were re-pointed and before reader cells are
/// read. Pairs with [`light_barrier`] (workers) and [`thread_barrier`] (registered threads).
///
/// A `SeqCst` fence, plus, in membarrier mode, `membarrier(PRIVATE_EXPEDITED)` unless every
/// worker of `registry` is asleep: an asleep worker clears its flag with a `SeqCst` swap before
/// it runs anything, so it already pairs with the fence (qs docs, "Ordering").
pub(crate) fn heavy_barrier(registry: &super::QsRegistry) {
    fence(Ordering::SeqCst);
    #[cfg(loom)]
    let _ = registry;
    #[cfg(not(loom))]
    match barrier_mode() {
        BarrierMode::Membarrier if registry.any_worker_awake() => {
            let done = crate::os::membarrier(crate::os::MembarrierCmd::PrivateExpedited);
            // Registration succeeded, so this cannot fail short of a kernel bug; readers
            // already skip their fences and cannot be downgraded. Freeing code early is the
            // one outcome worse than stopping.
            assert!(
                done.is_ok(),
                "membarrier(PRIVATE_EXPEDITED) failed after successful registration: {done:?}"
            );
        }
        _ => {}
    }
}
