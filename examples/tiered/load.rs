//! Phase 2: redefinitions under load, with code reclaimed by grace periods.
//!
//! A tramway runtime runs `tasks` green threads on `workers` workers. Each task calls
//! `work(n) = scale(n) + poly(n)` (both compiled after tier-up, `work` calling `scale` through
//! `scale`'s site) in a loop, yielding every few calls. `scale` itself yields for one argument
//! in eight and sleeps a millisecond for one in a thousand (the `yield` and `sleep` builtins,
//! from compiled code): those tasks park *inside* `scale`'s and `work`'s code. Meanwhile the main thread redefines `scale` about once a millisecond with a
//! new constant `K` (in two spellings, so the code really changes): every redefinition emits
//! new code, swaps `scale`'s site and retires the old code, which the runtime's grace domain
//! reclaims once every task that might have been inside it has passed a yield point **and** no
//! parked task's stack still points into it (the runtime scans the stacks of tasks that park
//! inside yielding code; see `tramway::runtime::code`).
//!
//! Checks: every result equals `poly(n) + n * K` for one of the versions' `K` (computed by the
//! reference interpreter, not by the code under test); after the tasks are joined and the engine
//! is dropped, every emitted trampoline is reclaimed and no code memory stays mapped. The
//! summary also counts the frees held back because a parked task was inside the code.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tramway::jit::JitStats;
use tramway::runtime::yield_now;

use crate::ast::{resolve, resolve_redefinition, Module};
use crate::engine::{Engine, FuncStats};
use crate::interp::{Caller, Direct, MAX_DEPTH};
use crate::parser::{parse_def, parse_program};
use crate::DEFAULT_PROGRAM;

/// The constants `scale` cycles through.
const KS: std::ops::RangeInclusive<i64> = 1..=9;
/// Arguments `n` the tasks use (`1..=N_MAX`).
const N_MAX: i64 = 1000;
/// Calls a task makes between two voluntary yields.
const CALLS_PER_YIELD: u64 = 32;

/// Parameters of the load phase.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// How long the patcher redefines `scale`.
    pub seconds: f64,
    /// Runtime workers.
    pub workers: usize,
    /// Green threads calling `work`.
    pub tasks: usize,
    /// Tier-up threshold.
    pub threshold: u64,
}

/// What the load phase observed.
#[derive(Clone, Debug)]
pub struct LoadReport {
    /// Calls of `work` made by the tasks.
    pub calls: u64,
    /// Redefinitions of `scale`.
    pub redefinitions: u64,
    /// Results that matched no version of `scale` (must be 0).
    pub invalid: u64,
    /// Grace periods the domain completed.
    pub grace_periods: u64,
    /// Frees of retired code held back at the end of their grace period because a task parked
    /// inside `yield` still had a frame in that code.
    pub frees_held: u64,
    /// Stack scans of tasks parking inside compiled code.
    pub stack_scans: u64,
    /// Jit counters just before shutdown.
    pub before_shutdown: JitStats,
    /// Jit counters after the engine, the jit and the runtime are gone.
    pub after_shutdown: JitStats,
    /// Wall time of the loaded part.
    pub elapsed: Duration,
    /// Configuration used.
    pub config: LoadConfig,
    /// Counters of `scale`.
    pub scale: Option<FuncStats>,
}

impl LoadReport {
    /// Whether every check passed.
    pub fn ok(&self) -> bool {
        self.invalid == 0
            && self.calls > 0
            && self.after_shutdown.mapped_bytes == 0
            && self.after_shutdown.live == 0
            && self.after_shutdown.retired == 0
            && self.after_shutdown.reclaimed == self.after_shutdown.emitted
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.before_shutdown;
        let a = &self.after_shutdown;
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        writeln!(
            f,
            "load: {} tasks on {} workers for {:.2?}: {} calls ({:.2} M/s), {} redefinitions of scale, {} grace periods",
            self.config.tasks,
            self.config.workers,
            self.elapsed,
            self.calls,
            self.calls as f64 / secs / 1e6,
            self.redefinitions,
            self.grace_periods,
        )?;
        if let Some(s) = &self.scale {
            writeln!(
                f,
                "scale: {} interpreted calls, compiled {} times, redefined {} times, now {:?}",
                s.interpreted_calls, s.compilations, s.redefinitions, s.tier
            )?;
        }
        writeln!(
            f,
            "parked inside compiled code: {} stack scans; {} frees held back until the parked task left the code",
            self.stack_scans, self.frees_held
        )?;
        writeln!(
            f,
            "trampolines before shutdown: emitted {} live {} retired {} reclaimed {}, mapped {} bytes",
            b.emitted, b.live, b.retired, b.reclaimed, b.mapped_bytes
        )?;
        writeln!(
            f,
            "trampolines after shutdown:  emitted {} live {} retired {} reclaimed {}, mapped {} bytes",
            a.emitted, a.live, a.retired, a.reclaimed, a.mapped_bytes
        )?;
        write!(
            f,
            "summary: calls={} redefinitions={} invalid={} frees_held={} emitted={} retired={} reclaimed={} mapped_bytes_after_shutdown={} result={}",
            self.calls,
            self.redefinitions,
            self.invalid,
            self.frees_held,
            a.emitted,
            b.retired + b.reclaimed,
            a.reclaimed,
            a.mapped_bytes,
            if self.ok() { "OK" } else { "FAILED" }
        )
    }
}

/// The source of version `i` of `scale`: two spellings of `x * K`, where the task yields
/// inside it for one argument in eight and sleeps a millisecond inside it (longer than a
/// redefinition takes to come) for one in a thousand.
fn scale_source(i: u64) -> (i64, String) {
    let ks: Vec<i64> = KS.collect();
    let k = ks[(i % ks.len() as u64) as usize];
    let parks = "if x % 1000 == 0 then sleep(1) + x else if x % 8 == 0 then yield(x) else x";
    let src = if i % 2 == 0 {
        format!("def scale(x) = ({parks}) * {k}")
    } else {
        format!("def scale(x) = ({parks}) * {} + x", k - 1)
    };
    (k, src)
}

/// For every `n` in `1..=N_MAX`, the results `work(n)` has under each version of `scale`,
/// computed by the reference interpreter.
fn valid_results(base: &Module) -> Result<Vec<Vec<i64>>, String> {
    let work = base
        .lookup("work")
        .ok_or("built-in program has no `work`")?;
    let mut per_k = Vec::new();
    for k in KS {
        let mut module = base.clone();
        let def = parse_def(&format!("def scale(x) = x * {k}")).map_err(|e| e.to_string())?;
        let (id, func) = resolve_redefinition(&module, &def).map_err(|e| e.to_string())?;
        module.funcs[id] = func;
        let direct = Direct {
            funcs: &module.funcs,
        };
        per_k.push(
            (1..=N_MAX)
                .map(|n| direct.call(work, [n, 0, 0, 0], MAX_DEPTH))
                .collect::<Vec<_>>(),
        );
    }
    Ok((0..N_MAX as usize)
        .map(|i| per_k.iter().map(|v| v[i]).collect())
        .collect())
}

/// Runs the load phase.
pub fn run(cfg: &LoadConfig) -> Result<LoadReport, String> {
    let module = parse_program(DEFAULT_PROGRAM)
        .and_then(|p| resolve(&p))
        .map_err(|e| e.to_string())?;
    let valid = Arc::new(valid_results(&module)?);

    // Retired code is freed after a grace period of the domain (tasks flavor).
    let tramway::Tramway {
        runtime: rt,
        grace: domain,
        jit,
    } = tramway::Builder::new()
        .workers(cfg.workers)
        .build()
        .map_err(|e| format!("tiered: cannot start: {e}"))?;
    let stats = jit.stats_handle();
    let engine =
        Arc::new(Engine::new(jit, module, cfg.threshold).map_err(|e| format!("tiered: {e}"))?);

    let work = engine
        .lookup("work")
        .ok_or("built-in program has no `work`")?;
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let invalid = Arc::new(AtomicU64::new(0));
    let stop_all = stop.clone();
    let mut handles = Vec::new();
    for t in 0..cfg.tasks {
        let (engine, stop, calls, invalid, valid) = (
            engine.clone(),
            stop.clone(),
            calls.clone(),
            invalid.clone(),
            valid.clone(),
        );
        let h = rt.spawn(move || {
            let mut i = t as u64;
            let mut mine = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..CALLS_PER_YIELD {
                    let n = (i.wrapping_mul(7919) % N_MAX as u64) as i64 + 1;
                    i += 1;
                    let ok = match engine.call(work, [n, 0, 0, 0]) {
                        Ok(r) => valid[(n - 1) as usize].contains(&r),
                        Err(_) => false,
                    };
                    if !ok {
                        invalid.fetch_add(1, Ordering::Relaxed);
                    }
                    mine += 1;
                }
                // A voluntary yield point: a quiescent state for the grace periods.
                yield_now();
            }
            calls.fetch_add(mine, Ordering::Relaxed);
        });
        match h {
            Ok(h) => handles.push(h),
            Err(e) => {
                // Stop and join the tasks already running before giving up.
                stop_all.store(true, Ordering::Relaxed);
                for h in handles {
                    let _ = h.join();
                }
                return Err(format!("tiered: cannot spawn task {t}: {e}"));
            }
        }
    }

    // The patcher: this (unregistered) thread only swaps sites, it never calls them.
    let start = Instant::now();
    let deadline = Duration::from_secs_f64(cfg.seconds);
    let mut redefinitions = 0u64;
    let mut failure = None;
    while start.elapsed() < deadline {
        let (_k, src) = scale_source(redefinitions + 1);
        if let Err(e) = engine.redefine(&src) {
            failure = Some(format!("tiered: redefinition `{src}` failed: {e}"));
            break;
        }
        redefinitions += 1;
        std::thread::sleep(Duration::from_millis(1));
    }
    stop.store(true, Ordering::Relaxed);
    let mut panicked = 0;
    for h in handles {
        if h.join().is_err() {
            panicked += 1;
        }
    }
    let elapsed = start.elapsed();
    let before_shutdown = engine.jit().stats();
    let funcs = engine.func_stats();

    // Shutdown: the engine (sites, code, jit) goes first; its frees go through the domain.
    let engine = Arc::try_unwrap(engine).map_err(|_| "tiered: engine still shared after join")?;
    drop(engine);
    let stack_scans = rt.stats().stack_scans;
    domain.barrier();
    let grace_periods = domain.stats().completed;
    let frees_held = domain.stats().callbacks_held;
    drop(domain);
    drop(rt);
    let after_shutdown = stats.get();

    if let Some(f) = failure {
        return Err(f);
    }
    if panicked > 0 {
        return Err(format!("tiered: {panicked} tasks panicked"));
    }
    Ok(LoadReport {
        calls: calls.load(Ordering::Relaxed),
        redefinitions,
        invalid: invalid.load(Ordering::Relaxed),
        grace_periods,
        frees_held,
        stack_scans,
        before_shutdown,
        after_shutdown,
        elapsed,
        config: cfg.clone(),
        scale: funcs.into_iter().find(|f| f.name == "scale"),
    })
}
