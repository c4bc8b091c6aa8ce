//! The [`Jit`]: owner of one code reservation, factory of trampolines and sites.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::arch::{self, Assembler};
use crate::code_memory::{CodeMemory, Config};
use crate::error::JitError;
use crate::reclaim::{Deferred, LeakUntilDrop, Reclaim};
use crate::site::{Site, SiteKind};
use crate::stats::{JitStats, JitStatsHandle};
use crate::trampoline::{ForwardingSpec, Target, Trampoline};

/// Default size of the address reservation: 1 GiB.
pub const DEFAULT_RESERVATION: usize = 1 << 30;
/// Default chunk size: 64 KiB.
pub const DEFAULT_CHUNK_SIZE: usize = 64 << 10;

static NEXT_JIT_ID: AtomicU64 = AtomicU64::new(1);

/// State shared by a `Jit` and all its trampolines and sites.
pub(crate) struct Shared {
    pub(crate) mem: Arc<CodeMemory>,
    pub(crate) reclaimer: Arc<dyn Reclaim>,
    /// Backlog bound; see [`JitBuilder::max_retired_bytes`].
    pub(crate) max_retired_bytes: usize,
    /// Frees handed to the reclaimer that have not run yet.
    pub(crate) pending_frees: Arc<AtomicU64>,
}

/// Default bound on retired-but-unreclaimed code bytes before `swap` throttles the patcher.
pub const DEFAULT_MAX_RETIRED_BYTES: usize = 16 << 20;

/// How many barriers one throttled `swap` waits for at most. A free can defer further frees
/// (a dropped snapshot or handle releases more retired code), which the second round catches;
/// the cap keeps a patcher that holds its own `Retired` handles (which no barrier can free)
/// from waiting forever.
const MAX_THROTTLE_ROUNDS: usize = 2;

impl Shared {
    /// Hands a free of retired code to the reclaimer, counting it until it runs.
    pub(crate) fn defer_free(&self, free: Deferred) {
        let pending = Arc::clone(&self.pending_frees);
        pending.fetch_add(1, Ordering::Relaxed);
        let free: Deferred = Box::new(move || {
            free();
            pending.fetch_sub(1, Ordering::Release);
        });
        // A probe batch being committed on this thread queues its frees as one callback.
        if let Some(free) = crate::probe::try_collect(free) {
            self.reclaimer.defer(free);
        }
    }

    /// Runs reclaimer barriers until every free deferred so far has run, including the ones
    /// those frees deferred in turn (a free can release the last handle of more retired
    /// code). Stops early if a round makes no progress (other threads keep retiring code, or
    /// the reclaimer's barrier does not wait for grace periods, like `LeakUntilDrop`'s), so it
    /// cannot wait forever.
    pub(crate) fn drain(&self) {
        let mut pending = self.pending_frees.load(Ordering::Acquire);
        while pending > 0 {
            self.reclaimer.barrier();
            let now = self.pending_frees.load(Ordering::Acquire);
            if now >= pending {
                return;
            }
            pending = now;
        }
    }

    /// Blocks the patcher while retired code exceeds the bound (only with a grace-period
    /// reclaimer, whose barrier is safe while callers run).
    pub(crate) fn throttle_backlog(&self) {
        if !self.reclaimer.barrier_waits_for_grace_period() {
            return;
        }
        for _ in 0..MAX_THROTTLE_ROUNDS {
            if self.mem.stats_handle().get().retired_bytes <= self.max_retired_bytes {
                return;
            }
            self.reclaimer.barrier();
        }
    }
}

/// Configures and builds a [`Jit`].
#[must_use]
pub struct JitBuilder {
    cfg: Config,
    reclaimer: Option<Arc<dyn Reclaim>>,
    max_retired_bytes: usize,
}

impl JitBuilder {
    /// Size of the reserved code range in bytes (default 1 GiB). Must be a multiple of the chunk
    /// size and at most 2 GiB, so that a `rel32` between any two pieces of code reaches.
    pub fn reservation_size(mut self, bytes: usize) -> Self {
        self.cfg.reservation = bytes;
        self
    }

    /// Size of a chunk in bytes (default 64 KiB): a multiple of the page size, at least two pages.
    /// It is also the largest code object.
    pub fn chunk_size(mut self, bytes: usize) -> Self {
        self.cfg.chunk_size = bytes;
        self
    }

    /// How retired code is reclaimed (default: a fresh [`LeakUntilDrop`]).
    pub fn reclaimer(mut self, reclaimer: Arc<dyn Reclaim>) -> Self {
        self.reclaimer = Some(reclaimer);
        self
    }

    /// Bound on retired-but-unreclaimed code (default [`DEFAULT_MAX_RETIRED_BYTES`]).
    ///
    /// When a [`Site::swap`](crate::Site::swap) leaves more retired bytes than this, it waits
    /// for the reclaimer's barrier (at most twice) before returning, so a patch storm is slowed
    /// to the pace of grace periods instead of growing the backlog without limit. The backlog
    /// then stays below `max_retired_bytes` plus what other threads retire during one barrier
    /// plus the forwarding targets freed one grace period later — unless the caller keeps
    /// `Retired` handles alive, which nothing can free. Only applies to reclaimers whose
    /// barrier waits for a grace period (not to [`LeakUntilDrop`]).
    pub fn max_retired_bytes(mut self, bytes: usize) -> Self {
        self.max_retired_bytes = bytes;
        self
    }

    /// Use the `mprotect` fallback even if memfds are available (for tests). See `code_memory.rs`.
    pub fn force_fallback(mut self, yes: bool) -> Self {
        self.cfg.force_fallback = yes;
        self
    }

    /// Fill freed slots with traps (`ud2`, `int3`). Always on by default in debug builds.
    pub fn trap_fill(mut self, yes: bool) -> Self {
        self.cfg.trap_fill = yes;
        self
    }

    /// After writing new code, make every thread of the process serialize its instruction stream
    /// (`membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE)`, registered at build). Off by
    /// default on x86-64: it costs an IPI to every CPU running the process per emission, and the
    /// patch protocol (`site.rs`) does not rely on it. `build` fails with [`JitError::Os`] if the
    /// kernel does not support it.
    pub fn sync_core(mut self, yes: bool) -> Self {
        self.cfg.sync_core = yes;
        self
    }

    /// Reserves the code range and creates the `Jit`.
    ///
    /// Fails with [`JitError::Unsupported`] on targets other than x86-64 Linux,
    /// [`JitError::InvalidConfig`] for bad sizes, and [`JitError::Os`] if a system call fails.
    pub fn build(self) -> Result<Jit, JitError> {
        if !arch::SUPPORTED {
            return Err(JitError::Unsupported(
                "tramway-jit emits x86-64 code for Linux only",
            ));
        }
        let id = NEXT_JIT_ID.fetch_add(1, Ordering::Relaxed);
        let mem = Arc::new(CodeMemory::new(id, &self.cfg)?);
        let reclaimer = self
            .reclaimer
            .unwrap_or_else(|| Arc::new(LeakUntilDrop::new()));
        Ok(Jit {
            shared: Arc::new(Shared {
                mem,
                reclaimer,
                max_retired_bytes: self.max_retired_bytes,
                pending_frees: Arc::new(AtomicU64::new(0)),
            }),
        })
    }
}

/// A code reservation with its allocator, counters and reclaimer.
///
/// Trampolines and sites keep the shared state alive, so their memory stays valid while handles
/// exist. Dropping the `Jit` runs [`barrier`](Jit::barrier); once every trampoline and site is gone
/// and reclaimed, all chunks are unmapped, the memfd is closed and the reservation released.
pub struct Jit {
    shared: Arc<Shared>,
}

impl Jit {
    /// A builder with the defaults (1 GiB reservation, 64 KiB chunks, [`LeakUntilDrop`]).
    pub fn builder() -> JitBuilder {
        JitBuilder {
            cfg: Config {
                reservation: DEFAULT_RESERVATION,
                chunk_size: DEFAULT_CHUNK_SIZE,
                force_fallback: false,
                trap_fill: cfg!(debug_assertions),
                sync_core: false,
            },
            reclaimer: None,
            max_retired_bytes: DEFAULT_MAX_RETIRED_BYTES,
        }
    }

    /// A `Jit` with the default configuration.
    pub fn new() -> Result<Jit, JitError> {
        Jit::builder().build()
    }

    /// Emits a forwarding trampoline: count the call, call the hook (if any), tail-jump to the target.
    ///
    /// All C-ABI argument registers (6 integer, 8 vector `xmm0-7`, `al` for varargs) and stack
    /// arguments reach the target unchanged, so it forwards any System V signature (vector
    /// arguments wider than 128 bits are only preserved without a hook). Without a hook only
    /// `r11` is clobbered; with one, also whatever the hook (a C-ABI function) may clobber
    /// besides the saved argument registers: `r10` (the static-chain register, so targets
    /// that take a static chain need a hook-less trampoline), `xmm8-15` and upper vector
    /// halves.
    pub fn forwarding(&self, spec: ForwardingSpec) -> Result<Trampoline, JitError> {
        let (target, keepalive) = match spec.target {
            Target::Address(p) if p.is_null() => return Err(JitError::NullTarget),
            Target::Address(p) => (p as u64, None),
            Target::Trampoline(t) => {
                t.check_owner(self.shared.mem.id())?;
                t.mark_reachable()?;
                (t.addr() as u64, Some(t))
            }
        };
        let counter = Box::new(AtomicU64::new(0));
        // The counter lives in heap memory (never in code pages); the code embeds its address and
        // the deferred free keeps the box alive as long as the code.
        let counter_addr = &*counter as *const AtomicU64 as u64;
        let hook = spec.hook.map(|h| (h.func as usize as u64, h.user as u64));
        Trampoline::emit(
            &self.shared,
            &|ops| arch::emit_forwarding(ops, counter_addr, hook, target),
            Some(counter),
            keepalive,
        )
    }

    /// Emits custom code.
    ///
    /// `emit` is called twice, with assemblers based at a provisional and at the final address;
    /// both passes must produce the same length ([`JitError::EmitLengthChanged`] otherwise).
    ///
    /// # Safety
    /// The code must implement the signature its callers use and:
    /// - never yield or block on the runtime (grace periods rely on trampolines having no yield point);
    /// - never write to code memory, and reference only memory that outlives the trampoline's reclamation;
    /// - be position-dependent only through dynasm relocations (they are resolved at the final address).
    pub unsafe fn custom<F: Fn(&mut Assembler)>(&self, emit: F) -> Result<Trampoline, JitError> {
        Trampoline::emit(&self.shared, &emit, None, None)
    }

    /// Emits `mov rax, value; ret`: a function `extern "C" fn(..) -> u64` returning `value`.
    pub fn constant_return(&self, value: u64) -> Result<Trampoline, JitError> {
        Trampoline::emit(
            &self.shared,
            &|ops| arch::emit_constant_return(ops, value),
            None,
            None,
        )
    }

    /// Creates a patch site pointing at `initial` (see [`Site`]).
    pub fn site(&self, kind: SiteKind, initial: &Trampoline) -> Result<Site, JitError> {
        Site::new(&self.shared, kind, initial)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> JitStats {
        self.stats_handle().get()
    }

    /// A handle on the counters that stays valid after the `Jit` drops.
    pub fn stats_handle(&self) -> JitStatsHandle {
        self.shared.mem.stats_handle()
    }

    /// Waits until every free deferred so far has run, including frees those frees defer in
    /// turn, so that afterwards nothing retired before the call is still mapped. Runs the
    /// reclaimer's `barrier` as many times as needed; stops early if other threads keep
    /// retiring code faster than it drains. With [`LeakUntilDrop`] it frees nothing: that
    /// reclaimer frees only when it drops.
    pub fn barrier(&self) {
        self.shared.drain();
    }

    /// Whether code memory uses the `mprotect` fallback instead of the memfd double mapping.
    pub fn is_fallback(&self) -> bool {
        self.shared.mem.is_fallback()
    }

    /// `(base address, length)` of the reserved code range.
    pub fn code_range(&self) -> (usize, usize) {
        self.shared.mem.range()
    }

    /// The chunk size (largest code object).
    pub fn chunk_size(&self) -> usize {
        self.shared.mem.chunk_size()
    }

    /// A process-unique id of this `Jit`.
    pub fn id(&self) -> u64 {
        self.shared.mem.id()
    }

    /// The state shared with trampolines and sites (for `probe.rs`).
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The name of the backing memfd as it appears in `/proc/self/maps` (`/memfd:<name> (deleted)`),
    /// or `None` in fallback mode.
    pub fn memfd_name(&self) -> Option<String> {
        (!self.is_fallback()).then(|| format!("tramway-code-{}", self.id()))
    }
}

impl std::fmt::Debug for Jit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jit")
            .field("id", &self.id())
            .field("fallback", &self.is_fallback())
            .field("stats", &self.stats())
            .finish()
    }
}

impl Drop for Jit {
    fn drop(&mut self) {
        self.barrier();
    }
}
