//! The strategy comparison: the same call workload under different ways of retiring code.
//!
//! # Workload
//! An [`Env`] is a tramway [`Runtime`] with `workers` workers, a hot *target* (a small JIT'd
//! body `x * 3 + gen`, emitted with `jit.custom`), and, when `swap_rate > 0`, a patcher OS
//! thread that emits a fresh body and swaps it in `swap_rate` times per second, retiring
//! the old one. Callers are green-thread tasks that call the target in bursts of `burst`
//! calls and `yield_now()` between bursts; every strategy uses the same tasks, bursts and
//! yields, and differs only in how a call is protected and how retired code is reclaimed:
//!
//! | strategy    | a call                                   | retired code is freed            |
//! |-------------|------------------------------------------|----------------------------------|
//! | `leak`      | through an indirect site                 | never (`LeakUntilDrop`)          |
//! | `epoch-pin` | `crossbeam_epoch::pin()` + site call     | `defer_unchecked` after 2 epochs |
//! | `refcount`  | inc/re-check/call/dec on a record        | when its count reads zero        |
//! | `rude`      | through an indirect site                 | after a `Flavor::Rude` GP        |
//! | `tasks`     | through an indirect site                 | after a `Flavor::Tasks` GP       |
//! | `fn-ptr`    | a plain `extern "C" fn` pointer (floor)  | (no swaps)                       |
//! | `direct`    | a direct `#[inline(never)]` Rust call    | (no swaps)                       |
//!
//! GP latency is measured from the moment the patcher drops the retired handle to the moment
//! the code is freed: for tramway a callback queued right behind the free (callbacks of one
//! GP run in order), for epoch when the deferred closure runs (it hands the handle to the
//! patcher, which frees it within ~20 µs), for refcount when the patcher frees.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tramway_jit::dynasmrt::{dynasm, DynasmApi};
use tramway_jit::{ImmediateReclaim, Jit, JitError, Reclaim, SiteKind, Trampoline};
use tramway_runtime::grace::{Flavor, GraceConfig, GraceDomain};
use tramway_runtime::{
    yield_now, BlockOnError, BuildError, DomainError, JoinError, Runtime, SpawnError,
};

use super::histogram::Counts;
use super::patcher::{patch_loop, Metrics, Swapper};
use super::refcount::{BodyFn, RcPatcher, RcShared};

/// How calls are protected and retired code reclaimed (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Never free retired code: the speed ceiling.
    Leak,
    /// `crossbeam_epoch::pin()` around every call.
    EpochPin,
    /// Per-record atomic reference count around every call.
    Refcount,
    /// tramway, `Flavor::Rude` grace periods.
    Rude,
    /// tramway, `Flavor::Tasks` grace periods (the default).
    Tasks,
    /// Floor: a plain function-pointer call to the same JIT'd body (no swaps).
    FnPtr,
    /// Floor: a direct call to an `#[inline(never)]` Rust function (no swaps).
    Direct,
}

impl Strategy {
    /// Every strategy, in report order.
    pub const ALL: [Strategy; 7] = [
        Strategy::Leak,
        Strategy::EpochPin,
        Strategy::Refcount,
        Strategy::Rude,
        Strategy::Tasks,
        Strategy::FnPtr,
        Strategy::Direct,
    ];

    /// The name used in tables and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Leak => "leak",
            Strategy::EpochPin => "epoch-pin",
            Strategy::Refcount => "refcount",
            Strategy::Rude => "rude",
            Strategy::Tasks => "tasks",
            Strategy::FnPtr => "fn-ptr",
            Strategy::Direct => "direct",
        }
    }

    /// Parses [`name`](Self::name).
    pub fn parse(s: &str) -> Option<Strategy> {
        Strategy::ALL.into_iter().find(|st| st.name() == s)
    }

    /// Whether the strategy patches its target (the floors do not).
    pub fn swaps(self) -> bool {
        !matches!(self, Strategy::FnPtr | Strategy::Direct)
    }

    /// Whether retired code is ever reclaimed during the run (has a GP latency).
    pub fn reclaims(self) -> bool {
        matches!(
            self,
            Strategy::EpochPin | Strategy::Refcount | Strategy::Rude | Strategy::Tasks
        )
    }
}

/// Errors while setting up or running a cell.
#[derive(Debug)]
pub enum BenchError {
    /// The runtime did not start.
    Build(BuildError),
    /// A caller task could not be spawned.
    Spawn(SpawnError),
    /// A caller task panicked or was cancelled.
    Join(JoinError),
    /// A `block_on` caller task failed.
    BlockOn(BlockOnError),
    /// Code emission, a site or a swap failed.
    Jit(JitError),
    /// A thread (patcher) could not be started.
    Io(std::io::Error),
    /// The grace-period domain could not be started.
    Domain(DomainError),
    /// The patcher thread panicked.
    PatcherPanicked,
}

impl std::fmt::Display for BenchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BenchError::Build(e) => write!(f, "runtime: {e}"),
            BenchError::Spawn(e) => write!(f, "spawn: {e}"),
            BenchError::Join(e) => write!(f, "caller task: {e}"),
            BenchError::BlockOn(e) => write!(f, "caller task: {e}"),
            BenchError::Jit(e) => write!(f, "jit: {e}"),
            BenchError::Io(e) => write!(f, "thread: {e}"),
            BenchError::Domain(e) => write!(f, "grace domain: {e}"),
            BenchError::PatcherPanicked => write!(f, "the patcher thread panicked"),
        }
    }
}

impl std::error::Error for BenchError {}

macro_rules! from_err {
    ($($t:ty => $v:ident),*) => {$(
        impl From<$t> for BenchError {
            fn from(e: $t) -> Self { BenchError::$v(e) }
        }
    )*};
}
from_err!(BuildError => Build, SpawnError => Spawn, JoinError => Join, BlockOnError => BlockOn, JitError => Jit,
    std::io::Error => Io, DomainError => Domain);

/// The Rust twin of the JIT'd body, for the `direct` floor.
#[inline(never)]
pub extern "C" fn direct_body(x: u64) -> u64 {
    x.wrapping_mul(3).wrapping_add(1)
}

/// Emits `rax = rdi * 3 + gen; ret` (an `extern "C" fn(u64) -> u64`).
pub fn emit_body(jit: &Jit, gen: u64) -> Result<Trampoline, JitError> {
    let imm = (gen & 0x3fff_ffff) as i32;
    // SAFETY: the code implements `extern "C" fn(u64) -> u64`, touches no memory, never
    // yields and has no position-dependent parts.
    unsafe {
        jit.custom(|ops| {
            dynasm!(ops
                ; .arch x64
                ; imul rax, rdi, 3
                ; add rax, imm
                ; ret
            );
        })
    }
}

/// What a caller task calls.
#[derive(Clone)]
enum Call {
    /// A site entry or a plain function pointer (also used, pinned, by epoch).
    Ptr(BodyFn),
    Epoch(BodyFn),
    Refcount(Arc<RcShared>),
    Direct,
}

impl Call {
    /// `n` dependent calls starting from `acc`. One match per burst; each arm's loop is
    /// specialized, so the strategies differ only in the per-call protection.
    #[inline(never)]
    fn burst(&self, mut acc: u64, n: u32) -> u64 {
        match self {
            Call::Ptr(f) => {
                let f = std::hint::black_box(*f);
                for _ in 0..n {
                    acc = f(acc);
                }
            }
            Call::Epoch(f) => {
                let f = std::hint::black_box(*f);
                for _ in 0..n {
                    let guard = crossbeam_epoch::pin();
                    acc = f(acc);
                    drop(guard);
                }
            }
            Call::Refcount(rc) => {
                for _ in 0..n {
                    acc = rc.call(acc);
                }
            }
            Call::Direct => {
                let f = std::hint::black_box(direct_body as BodyFn);
                for _ in 0..n {
                    acc = f(acc);
                }
            }
        }
        acc
    }
}

/// The environment of one measurement: runtime, target, patcher. See the module docs.
pub struct Env {
    rt: Runtime,
    /// Name prefix of this runtime's worker threads (to read their CPU time).
    worker_prefix: String,
    call: Call,
    metrics: Arc<Metrics>,
    stop_patcher: Arc<AtomicBool>,
    patcher: Option<std::thread::JoinHandle<Result<Swapper, JitError>>>,
    /// Keeps the swapper (site, jit, domain) when nothing patches.
    idle: Option<Swapper>,
    /// Keeps the floor's code alive.
    _code: Option<(Arc<Jit>, Trampoline)>,
}

impl Env {
    /// Starts a runtime with `workers` workers, the strategy's target and (if `swap_rate > 0`
    /// and the strategy swaps) the patcher.
    pub fn new(strategy: Strategy, workers: usize, swap_rate: u64) -> Result<Env, BenchError> {
        static NEXT_ENV: AtomicU64 = AtomicU64::new(0);
        let worker_prefix = format!("bw{}-", NEXT_ENV.fetch_add(1, Ordering::Relaxed) % 10_000);
        let rt = Runtime::builder()
            .workers(workers)
            .stack_size(64 * 1024)
            .thread_name(worker_prefix.clone())
            .build()?;
        let metrics = Arc::new(Metrics::default());
        let mut code = None;
        let (call, swapper) = match strategy {
            Strategy::Direct => (Call::Direct, None),
            Strategy::FnPtr => {
                let jit = Arc::new(Jit::new()?);
                let t = emit_body(&jit, 1)?;
                // SAFETY: the body implements `BodyFn`; `_code` keeps it alive as long as
                // the `Env`, and callers are joined before the `Env` drops.
                let f = unsafe { std::mem::transmute::<*const u8, BodyFn>(t.addr()) };
                code = Some((jit, t));
                (Call::Ptr(f), None)
            }
            Strategy::Refcount => {
                let jit = Arc::new(Jit::new()?);
                let (rc, shared) = RcPatcher::new(emit_body(&jit, 1)?);
                (Call::Refcount(shared), Some(Swapper::Refcount { jit, rc }))
            }
            _ => {
                let (reclaimer, domain): (Arc<dyn Reclaim>, _) = match strategy {
                    Strategy::Leak => (Arc::new(tramway_jit::LeakUntilDrop::new()), None),
                    // SAFETY: every call of this strategy's site is made while pinned, and
                    // retired code is only dropped in closures deferred by `crossbeam_epoch`
                    // (see `Swapper::swap`), so the immediate free runs after a grace period
                    // of the epoch scheme.
                    Strategy::EpochPin => {
                        (Arc::new(unsafe { ImmediateReclaim::new_unchecked() }), None)
                    }
                    _ => {
                        let flavor = if strategy == Strategy::Rude {
                            Flavor::Rude
                        } else {
                            Flavor::Tasks
                        };
                        let d = GraceDomain::new(&rt, GraceConfig::default().flavor(flavor))?;
                        (Arc::new(d.clone()) as Arc<dyn Reclaim>, Some(d))
                    }
                };
                let jit = Arc::new(Jit::builder().reclaimer(reclaimer).build()?);
                let site = Arc::new(jit.site(SiteKind::Indirect, &emit_body(&jit, 1)?)?);
                // SAFETY: every body installed in the site implements `BodyFn`; callers are
                // tasks of `rt` (tracked by the domain) and are joined before the site drops.
                let f: BodyFn = unsafe { site.as_fn() };
                let is_epoch = strategy == Strategy::EpochPin;
                let call = if is_epoch {
                    Call::Epoch(f)
                } else {
                    Call::Ptr(f)
                };
                let epoch = is_epoch.then(|| Arc::new(Mutex::new(Vec::new())));
                (
                    call,
                    Some(Swapper::Site {
                        jit,
                        site,
                        domain,
                        epoch,
                    }),
                )
            }
        };
        if let Some(Swapper::Site { jit, .. } | Swapper::Refcount { jit, .. }) = &swapper {
            metrics
                .peak_mapped_bytes
                .store(jit.stats().mapped_bytes as u64, Ordering::Relaxed);
        }
        let stop_patcher = Arc::new(AtomicBool::new(false));
        let (patcher, idle) = match swapper {
            Some(sw) if swap_rate > 0 => {
                let (stop, m) = (stop_patcher.clone(), metrics.clone());
                let h = std::thread::Builder::new()
                    .name("bench-patcher".into())
                    .spawn(move || patch_loop(sw, swap_rate, &stop, &m))?;
                (Some(h), None)
            }
            other => (None, other),
        };
        Ok(Env {
            rt,
            worker_prefix,
            call,
            metrics,
            stop_patcher,
            patcher,
            idle,
            _code: code,
        })
    }

    /// One task makes `iters` calls (bursts of `burst`, yielding between); returns the time.
    pub fn timed_calls(&self, iters: u64, burst: u32) -> Result<Duration, BenchError> {
        let call = self.call.clone();
        let t = self.rt.block_on(move || {
            let start = Instant::now();
            let mut acc = 1;
            let mut left = iters;
            while left > 0 {
                let n = left.min(u64::from(burst)) as u32;
                acc = call.burst(acc, n);
                left -= u64::from(n);
                yield_now();
            }
            std::hint::black_box(acc);
            start.elapsed()
        })?;
        Ok(t)
    }

    /// Runs `tasks` caller tasks for `warmup + measure` and reports over `measure`.
    pub fn measure(
        &self,
        tasks: usize,
        burst: u32,
        warmup: Duration,
        measure: Duration,
    ) -> Result<Window, BenchError> {
        let stop = Arc::new(AtomicBool::new(false));
        let counters: Arc<Vec<Padded>> = Arc::new((0..tasks).map(|_| Padded::default()).collect());
        let mut handles = Vec::with_capacity(tasks);
        for i in 0..tasks {
            let (call, halt, counters) = (self.call.clone(), stop.clone(), counters.clone());
            let spawned = self.rt.spawn(move || {
                let mut acc = 1u64;
                let mut calls = 0u64;
                while !halt.load(Ordering::Relaxed) {
                    acc = call.burst(acc, burst);
                    calls += u64::from(burst);
                    counters[i].0.store(calls, Ordering::Relaxed);
                    yield_now();
                }
                acc
            });
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    for h in handles {
                        let _ = h.join();
                    }
                    return Err(e.into());
                }
            }
        }
        let total = || {
            counters
                .iter()
                .map(|c| c.0.load(Ordering::Relaxed))
                .sum::<u64>()
        };
        let swaps = || self.metrics.swaps.load(Ordering::Relaxed);
        let cpu = || threads_cpu_ns(&self.worker_prefix);
        std::thread::sleep(warmup);
        let (c0, s0, u0, t0) = (total(), swaps(), cpu(), Instant::now());
        std::thread::sleep(measure);
        let (c1, s1, u1, t1) = (total(), swaps(), cpu(), Instant::now());
        stop.store(true, Ordering::Relaxed);
        let mut checksum = 0u64;
        let mut failed = None;
        for h in handles {
            match h.join() {
                Ok(acc) => checksum ^= acc,
                Err(e) => failed = Some(e),
            }
        }
        if let Some(e) = failed {
            return Err(e.into());
        }
        let secs = (t1 - t0).as_secs_f64();
        let cpu_secs = u1.saturating_sub(u0) as f64 / 1e9;
        Ok(Window {
            calls_per_sec: (c1 - c0) as f64 / secs,
            calls_per_cpu_sec: if cpu_secs > 0.0 {
                (c1 - c0) as f64 / cpu_secs
            } else {
                0.0
            },
            cpu_share: cpu_secs / (secs * self.rt.workers() as f64),
            swaps_per_sec: (s1 - s0) as f64 / secs,
            checksum,
        })
    }

    /// Stops the patcher, frees everything retired and returns the cell's metrics.
    pub fn finish(mut self) -> Result<Finish, BenchError> {
        self.stop_patcher.store(true, Ordering::Release);
        let sw = match self.patcher.take() {
            Some(h) => Some(h.join().map_err(|_| BenchError::PatcherPanicked)??),
            None => self.idle.take(),
        };
        if let Some(mut sw) = sw {
            sw.drain(&self.metrics);
        }
        let m = &self.metrics;
        Ok(Finish {
            gp: m.gp.snapshot(),
            peak_retired: m.peak_retired.load(Ordering::Relaxed),
            peak_retired_bytes: m.peak_retired_bytes.load(Ordering::Relaxed),
            peak_mapped_bytes: m.peak_mapped_bytes.load(Ordering::Relaxed),
        })
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.stop_patcher.store(true, Ordering::Release);
        if let Some(h) = self.patcher.take() {
            let _ = h.join();
        }
    }
}

/// Call and swap rates over a measurement window.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    /// Calls per second, all tasks together.
    pub calls_per_sec: f64,
    /// Calls per second of CPU time the workers actually got (0 if unavailable): removes the
    /// time other processes on a shared machine took from the workers.
    pub calls_per_cpu_sec: f64,
    /// Worker CPU time / (wall time x workers).
    pub cpu_share: f64,
    /// Swaps per second achieved by the patcher.
    pub swaps_per_sec: f64,
    /// XOR of the tasks' accumulators (keeps the calls observable).
    pub checksum: u64,
}

/// What an [`Env`] observed over its whole life.
#[derive(Clone, Debug, Default)]
pub struct Finish {
    /// Retire-to-free latencies.
    pub gp: Counts,
    /// Peak retired-but-unfreed trampolines, sampled after each swap.
    pub peak_retired: u64,
    /// The same in bytes (allocation slots).
    pub peak_retired_bytes: u64,
    /// Peak mapped code bytes.
    pub peak_mapped_bytes: u64,
}

#[repr(align(128))]
#[derive(Default)]
struct Padded(AtomicU64);

/// Total on-CPU time (ns, from `/proc/self/task/*/schedstat`) of this process's threads
/// whose name starts with `prefix`; 0 where unavailable.
fn threads_cpu_ns(prefix: &str) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    dir.flatten()
        .filter_map(|e| {
            let p = e.path();
            let comm = std::fs::read_to_string(p.join("comm")).ok()?;
            if !comm.trim_end().starts_with(prefix) {
                return None;
            }
            let stat = std::fs::read_to_string(p.join("schedstat")).ok()?;
            stat.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
}

/// One cell of the comparison.
#[derive(Clone, Copy, Debug)]
pub struct CellConfig {
    /// The strategy.
    pub strategy: Strategy,
    /// Runtime workers.
    pub workers: usize,
    /// Caller tasks per worker.
    pub tasks_per_worker: usize,
    /// Swaps per second (0: none).
    pub swap_rate: u64,
    /// Calls between yields.
    pub burst: u32,
    /// Time before the window.
    pub warmup: Duration,
    /// The measurement window.
    pub measure: Duration,
}

/// Result of one run of a cell.
#[derive(Clone, Debug)]
pub struct CellRun {
    /// Calls per second per worker.
    pub calls_per_sec_per_worker: f64,
    /// Calls per second of worker CPU time (see [`Window::calls_per_cpu_sec`]).
    pub calls_per_cpu_sec: f64,
    /// Worker CPU share (see [`Window::cpu_share`]).
    pub cpu_share: f64,
    /// Swaps per second achieved.
    pub swaps_per_sec: f64,
    /// Everything else.
    pub finish: Finish,
}

/// Runs one cell once in a fresh [`Env`].
pub fn run_cell(c: &CellConfig) -> Result<CellRun, BenchError> {
    let rate = if c.strategy.swaps() { c.swap_rate } else { 0 };
    let env = Env::new(c.strategy, c.workers, rate)?;
    let w = env.measure(c.workers * c.tasks_per_worker, c.burst, c.warmup, c.measure)?;
    std::hint::black_box(w.checksum);
    let finish = env.finish()?;
    Ok(CellRun {
        calls_per_sec_per_worker: w.calls_per_sec / c.workers as f64,
        calls_per_cpu_sec: w.calls_per_cpu_sec,
        cpu_share: w.cpu_share,
        swaps_per_sec: w.swaps_per_sec,
        finish,
    })
}
