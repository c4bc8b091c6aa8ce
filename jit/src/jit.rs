//! The [`Jit`] facade and its [`JitBuilder`]: configuration, and the factory methods of
//! trampolines and sites.
//!
//! The state every handle shares is `JitCore` (`jit_core.rs`: code memory plus retirement);
//! this file only builds it and forwards to the modules that own each idea: `forwarding.rs`,
//! `trampoline.rs`, `site.rs`, `reclaim/`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::arch;
use crate::assembler::Assembler;
use crate::code_memory::{CodeMemory, CodeMemoryConfig};
use crate::error::JitError;
use crate::forwarding::{self, ForwardingSpec};
use crate::jit_core::JitCore;
use crate::profiling::{self, Profiling, ProfilingConfig};
use crate::reclaim::{LeakUntilDrop, Reclaim, Retirement, DEFAULT_MAX_RETIRED_BYTES};
use crate::site::{Site, SiteKind};
use crate::stats::{JitStats, JitStatsHandle};
use crate::trampoline::{CodeData, Trampoline};

/// Default size of the address reservation: 1 GiB.
pub const DEFAULT_RESERVATION: usize = 1 << 30;
/// Default chunk size: 64 KiB.
pub const DEFAULT_CHUNK_SIZE: usize = 64 << 10;
/// How many empty chunks each slot size class keeps mapped for reuse whatever their age (a
/// patch storm empties and refills chunks with every batch of frees). Further empty chunks
/// stay mapped for [`JitBuilder::spare_chunk_decay`]. Spare chunks hold only traps, count in
/// [`JitStats::mapped_bytes`] and are unmapped first when the reservation is full.
pub const SPARE_CHUNKS_PER_CLASS: usize = 4;
/// Default of [`JitBuilder::spare_chunk_decay`]: one second.
pub const DEFAULT_SPARE_CHUNK_DECAY: Duration = Duration::from_secs(1);

static NEXT_JIT_ID: AtomicU64 = AtomicU64::new(1);

/// Configures and builds a [`Jit`].
#[must_use]
pub struct JitBuilder {
    cfg: CodeMemoryConfig,
    reclaimer: Option<Arc<dyn Reclaim>>,
    max_retired_bytes: usize,
    profiling: ProfilingConfig,
    unwind_info: bool,
}

impl JitBuilder {
    /// Appends a `START SIZE name` line to `/tmp/perf-<pid>.map` for every code object this
    /// `Jit` emits, so `perf report` names JIT code (off by default; see [`Jit::perf_map_path`]
    /// and the crate docs on profiling).
    pub fn perf_map(mut self, yes: bool) -> Self {
        self.profiling.perf_map = yes;
        self
    }

    /// Writes a jitdump file (`dir/jit-<pid>.dump`, one per process, shared by every `Jit`
    /// that asks) with a timestamped load record per code object, for `perf record -k mono`
    /// and `perf inject --jit`, which names code correctly even where slots are reused (off by
    /// default; see [`Jit::jitdump_path`]). The first `Jit` that asks decides the directory.
    pub fn jitdump(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.profiling.jitdump_dir = Some(dir.into());
        self
    }

    /// Registers DWARF unwind information for every trampoline that calls a hook (a forwarding
    /// trampoline with an entry hook, a call-through trampoline, a probe trampoline), so that
    /// a backtrace taken inside a hook, or inside the target of a call-through trampoline,
    /// walks through the trampoline into its caller. It serves in-process unwinders built on
    /// libgcc (`std::backtrace::Backtrace`, glibc's `backtrace(3)`), not those that read
    /// unwind tables from files (`perf --call-graph dwarf`, gdb). Off by default.
    ///
    /// Each such trampoline gets an `.eh_frame` buffer (one CIE and one FDE, 80 bytes of heap,
    /// plus libgcc's own record of it) registered with libgcc's `__register_frame` before the trampoline can be
    /// reached, and deregistered when its code is freed, before the slot can be reused; the
    /// number registered is [`JitStats::unwind_registered`]. Unwinding *through* a trampoline
    /// stays impossible: its personality routine stops a panic or a forced unwind there, so
    /// it aborts as before (the design and its ordering argument: `jit/src/unwind.rs`).
    ///
    /// Why off: the registrations slow the rest of the process, not just this `Jit`. Before
    /// GCC 13, libgcc keeps registered objects in a list that every unwinder lookup walks
    /// under one global mutex, once per frame of every panic and backtrace on every thread,
    /// and each deregistration searches the same list. Measured with Debian 12's libgcc
    /// (GCC 12.2) on a shared 2-vCPU guest (`cargo bench --bench unwind`, four runs, load
    /// average 1-4): a caught panic 20 frames deep costs about 18 µs with nothing
    /// registered, 9-15x that with 1000 registered trampolines and 120-310x with 10 000 (a
    /// `Backtrace::force_capture()`: 16 µs, 17-27x, 240-510x). Emitting, swapping in and
    /// retiring a hooked trampoline costs about 1.2 µs off and 2.2-3.5x that on; in a
    /// profile, libgcc's deregistration is the largest single cost (a quarter of the samples:
    /// each free searches the list, which holds every registration still waiting for its
    /// grace period). GCC 13's libgcc uses a b-tree instead (logarithmic lookups and
    /// removals), but a library cannot choose the libgcc it runs with.
    ///
    /// Every hook-calling trampoline also keeps a frame record (`rbp` chain) whether or not
    /// this is on, so frame-pointer unwinders (`perf -g`) walk through it for free.
    pub fn unwind_info(mut self, yes: bool) -> Self {
        self.unwind_info = yes;
        self
    }

    /// Size of the reserved code range in bytes (default 1 GiB). Must be a multiple of the chunk
    /// size and at most 2 GiB, so that a direct site reaches every piece of code in it.
    pub fn reservation_size(mut self, bytes: usize) -> Self {
        self.cfg.reservation = bytes;
        self
    }

    /// Size of a chunk in bytes (default 64 KiB): a multiple of the page size, at least two pages.
    /// It is also the largest code object. Up to [`SPARE_CHUNKS_PER_CLASS`] empty chunks per
    /// slot size class stay mapped for reuse, and more for a while
    /// ([`spare_chunk_decay`](Self::spare_chunk_decay)).
    pub fn chunk_size(mut self, bytes: usize) -> Self {
        self.cfg.chunk_size = bytes;
        self
    }

    /// How long an empty chunk beyond the [`SPARE_CHUNKS_PER_CLASS`] a size class keeps stays
    /// mapped for reuse (default [`DEFAULT_SPARE_CHUNK_DECAY`]). A grace period frees a patch
    /// storm's whole backlog at once and the next emissions need as many chunks again;
    /// unmapping them in between cost about a fifth of a retire's CPU (BENCHMARKS.md). Older
    /// empty chunks are unmapped at the allocator's next check (when a chunk empties or is
    /// mapped, and every 64 allocations or groups of frees, where emissions of small code
    /// allocate a run of up to 16 slots at once): while the `Jit` is used, what
    /// stays mapped beyond the fixed spares is what it emptied within the last `decay`; a
    /// `Jit` that neither emits nor frees keeps it until it does. `Duration::ZERO` keeps only
    /// the fixed spares; `Duration::MAX` keeps every empty chunk until the reservation is
    /// full (spares then give way, oldest first). See `jit/src/code_memory/spares.rs`.
    pub fn spare_chunk_decay(mut self, decay: Duration) -> Self {
        self.cfg.spare_decay = decay;
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

    /// Use the `mprotect` fallback even if memfds are available (for tests). See
    /// `code_memory/mod.rs`.
    pub fn force_fallback(mut self, yes: bool) -> Self {
        self.cfg.force_fallback = yes;
        self
    }

    /// After writing new code, and after patching a direct site, make every thread of the
    /// process serialize its instruction stream
    /// (`membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE)`, registered at build). Off by
    /// default on x86-64: it costs an IPI to every CPU running the process per emission, and
    /// the patch protocol (`site.rs`) does not rely on it there. `build` fails with
    /// [`JitError::Os`] if the kernel does not support it.
    pub fn sync_core(mut self, yes: bool) -> Self {
        self.cfg.sync_core = yes;
        self
    }

    /// Reserves the code range and creates the `Jit`.
    ///
    /// Fails with [`JitError::InvalidConfig`] for bad sizes, and [`JitError::Os`] if a system
    /// call fails.
    pub fn build(self) -> Result<Jit, JitError> {
        let id = NEXT_JIT_ID.fetch_add(1, Ordering::Relaxed);
        let mem = Arc::new(CodeMemory::new(id, &self.cfg)?);
        let reclaimer = self
            .reclaimer
            .unwrap_or_else(|| Arc::new(LeakUntilDrop::new()));
        let retirement = Retirement::new(reclaimer, self.max_retired_bytes, Arc::clone(&mem));
        let profiling = Profiling::open(&self.profiling)?;
        let (base, len) = mem.range();
        tracing::debug!(
            target: "tramway::jit",
            jit = id,
            base,
            reservation = len,
            chunk_size = self.cfg.chunk_size,
            "jit built"
        );
        Ok(Jit {
            core: Arc::new(JitCore::new(mem, retirement, profiling, self.unwind_info)),
        })
    }
}

/// A code reservation with its allocator, counters and reclaimer.
///
/// Trampolines and sites keep the shared state alive, so their memory stays valid while handles
/// exist. Dropping the `Jit` runs [`barrier`](Jit::barrier); once every trampoline and site is gone
/// and reclaimed, all chunks are unmapped, the memfd is closed and the reservation released.
pub struct Jit {
    core: Arc<JitCore>,
}

impl Jit {
    /// A builder with the defaults (1 GiB reservation, 64 KiB chunks, [`LeakUntilDrop`]).
    pub fn builder() -> JitBuilder {
        JitBuilder {
            cfg: CodeMemoryConfig {
                reservation: DEFAULT_RESERVATION,
                chunk_size: DEFAULT_CHUNK_SIZE,
                force_fallback: false,
                sync_core: false,
                spare_decay: DEFAULT_SPARE_CHUNK_DECAY,
            },
            reclaimer: None,
            max_retired_bytes: DEFAULT_MAX_RETIRED_BYTES,
            profiling: ProfilingConfig::default(),
            unwind_info: false,
        }
    }

    /// Whether `addr` lies in this `Jit`'s code reservation (its code, live or retired, and
    /// its unused space). Async-signal-safe: two loads of immutable fields, no lock, no
    /// allocation, so an in-process sampler may call it from a signal handler to tell JIT
    /// frames from others.
    pub fn contains(&self, addr: usize) -> bool {
        let (base, len) = self.core.mem.range();
        addr.wrapping_sub(base) < len
    }

    /// This process's perf map (written by `Jit`s built with [`JitBuilder::perf_map`]).
    pub fn perf_map_path() -> std::path::PathBuf {
        profiling::perf_map_path()
    }

    /// This process's jitdump file in `dir` (see [`JitBuilder::jitdump`]).
    pub fn jitdump_path(dir: &std::path::Path) -> std::path::PathBuf {
        profiling::jitdump_path(dir)
    }

    /// A `Jit` with the default configuration.
    pub fn new() -> Result<Jit, JitError> {
        Jit::builder().build()
    }

    /// Emits a forwarding trampoline: count the call (if the spec asks), call the entry hook (if
    /// any), then tail-jump to the target; or, with an
    /// [`exit_hook`](ForwardingSpec::exit_hook), call the target and run the exit hook with its
    /// return values before returning to the caller (a call-through trampoline: see the
    /// [`forwarding`](crate::forwarding) module for its frame and why it is safe to retire while
    /// a task is parked inside the target).
    ///
    /// Every argument of the platform's C calling convention (argument registers and stack
    /// arguments) reaches the target unchanged, so it forwards any C signature. Without a hook
    /// the trampoline clobbers only a scratch register the C ABI does not use for arguments;
    /// with one, also what a C-ABI call may clobber outside the argument registers. The hook
    /// runs inside a [`tramway_runtime::non_yielding`] section. The registers by name, and the
    /// limits that follow from them, are on [`HookArgs`](crate::HookArgs).
    ///
    /// Errors: [`JitError::NullTarget`]; for `Target::Trampoline`,
    /// [`JitError::ForeignTrampoline`] and [`JitError::Retired`]; [`JitError::InvalidConfig`]
    /// for a bad [`ForwardingSpec::stack_arg_bytes`].
    pub fn forwarding(&self, spec: ForwardingSpec) -> Result<Trampoline, JitError> {
        forwarding::emit(&self.core, spec)
    }

    /// Emits custom code.
    ///
    /// `emit` is usually called once, with an assembler based at the address the code will
    /// run at: a slot sized by a guess (the length of this `Jit`'s previous custom code). It
    /// is called a second time, at the final address, when the code needs a slot of another
    /// size, or when no slot of the guessed size is free without mapping memory (the first
    /// pass then runs at the reservation's base, only to size the code); both passes must
    /// produce the same length ([`JitError::EmitLengthChanged`] otherwise).
    /// The assembler is dynasm's, re-exported as [`dynasmrt`](crate::dynasmrt) (so an embedder
    /// needs no direct dependency of its own); start every `dynasm!` block with `.arch x64`.
    ///
    /// ```
    /// # fn main() -> Result<(), tramway_jit::JitError> {
    /// use tramway_jit::dynasmrt::{dynasm, DynasmApi};
    /// use tramway_jit::{Jit, SiteKind};
    ///
    /// let jit = Jit::new()?;
    /// // SAFETY: the code below implements `extern "C" fn(u64) -> u64`, does not yield and
    /// // references no memory.
    /// let double = unsafe {
    ///     jit.custom(|ops| {
    ///         dynasm!(ops
    ///             ; .arch x64
    ///             ; lea rax, [rdi + rdi]
    ///             ; ret
    ///         );
    ///     })?
    /// };
    /// let site = jit.site(SiteKind::Indirect, &double)?;
    /// // SAFETY: the site's only trampoline implements this signature, and `site` (which keeps
    /// // it mapped) outlives the call.
    /// let f: extern "C" fn(u64) -> u64 = unsafe { site.as_fn() };
    /// assert_eq!(f(21), 42);
    /// # Ok(()) }
    /// ```
    ///
    /// # Safety
    /// The code must implement the signature its callers use and:
    /// - never yield or block on the runtime (grace periods rely on trampolines having no yield
    ///   point), unless every call of it runs inside
    ///   [`tramway_runtime::in_yielding_code`] and the `Jit`'s reclaimer is a grace domain, whose
    ///   grace periods then hold the code while a parked task's stack points into it;
    /// - never write to code memory, and reference only memory that outlives the trampoline's reclamation;
    /// - be position-dependent only through dynasm relocations (they are resolved at the final address).
    pub unsafe fn custom<F: Fn(&mut Assembler)>(&self, emit: F) -> Result<Trampoline, JitError> {
        Trampoline::emit(
            &self.core,
            &|ops, _, _| emit(ops),
            None,
            CodeData::default(),
            None,
        )
    }

    /// [`custom`](Self::custom), with the address each pass assembles at passed to `emit`
    /// (for code that encodes its own address, or bytes produced outside dynasm, such as a C
    /// embedder's code generator). The second pass's address is where the code runs.
    ///
    /// # Safety
    /// As [`custom`](Self::custom).
    pub unsafe fn custom_at<F: Fn(&mut Assembler, usize)>(
        &self,
        emit: F,
    ) -> Result<Trampoline, JitError> {
        Trampoline::emit(
            &self.core,
            &|ops, at, _| emit(ops, at),
            None,
            CodeData::default(),
            None,
        )
    }

    /// Emits a function `extern "C" fn(..) -> u64` that returns `value`.
    pub fn constant_return(&self, value: u64) -> Result<Trampoline, JitError> {
        Trampoline::emit(
            &self.core,
            &|ops, _, _| arch::emit_constant_return(ops, value),
            Some(arch::CONSTANT_RETURN_LEN),
            CodeData::default(),
            None,
        )
    }

    /// Creates a patch site pointing at `initial` (see [`Site`]).
    pub fn site(&self, kind: SiteKind, initial: &Trampoline) -> Result<Site, JitError> {
        Site::new(&self.core, kind, initial)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> JitStats {
        self.stats_handle().get()
    }

    /// A handle on the counters that stays valid after the `Jit` drops.
    pub fn stats_handle(&self) -> JitStatsHandle {
        self.core.mem.stats_handle()
    }

    /// Waits until every free deferred so far has run, including frees those frees defer in
    /// turn, so that afterwards no code retired before the call remains: its slots hold traps
    /// and are free (their chunks unmapped, or kept as spares, which hold only traps). Runs the
    /// reclaimer's `barrier` as many times as needed; stops early if other threads keep
    /// retiring code faster than it drains. With [`LeakUntilDrop`] it frees nothing: that
    /// reclaimer frees only when it drops.
    pub fn barrier(&self) {
        self.core.retirement.drain();
    }

    /// Whether code memory uses the `mprotect` fallback instead of the memfd double mapping.
    pub fn is_fallback(&self) -> bool {
        self.core.mem.is_fallback()
    }

    /// `(base address, length)` of the reserved code range.
    pub fn code_range(&self) -> (usize, usize) {
        self.core.mem.range()
    }

    /// The chunk size (largest code object).
    pub fn chunk_size(&self) -> usize {
        self.core.mem.chunk_size()
    }

    /// A process-unique id of this `Jit`.
    pub fn id(&self) -> u64 {
        self.core.id()
    }

    /// The state shared with trampolines and sites (for the probe managers).
    pub(crate) fn core(&self) -> &Arc<JitCore> {
        &self.core
    }

    /// The name of the backing memfd as it appears in `/proc/self/maps` (`/memfd:<name> (deleted)`),
    /// or `None` in fallback mode.
    pub fn memfd_name(&self) -> Option<String> {
        self.core.mem.memfd_name()
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
