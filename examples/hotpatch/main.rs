//! `hotpatch`: a live service whose machine code is replaced while it runs.
//!
//! ```text
//! cargo run --release --example hotpatch -- [--seconds N] [--workers N] [--tasks N] [--sites N]
//!                                           [--swap-interval T] [--flavor tasks|rude]
//! ```
//!
//! `--tasks` green threads (default 1000) on `--workers` workers handle "requests": bursts of calls
//! through a handful of patch sites (`pricing`, `scoring`, `shipping`, `discount`, ...), each an
//! `extern "C" fn(u64) -> u64` implemented by JIT'd code, with a yield or a short sleep between
//! requests. Meanwhile a patcher OS thread, every `--swap-interval`, either re-JITs a site (new
//! constants, sometimes a new formula) and hot-swaps it, or attaches / detaches a tracing probe (a
//! forwarding trampoline with a counting hook in front of the current implementation, as ftrace
//! does). Retired code is unmapped only after a grace period of the chosen flavor.
//!
//! Once a second a status line shows throughput, probes, the trampoline lifecycle, mapped code and
//! grace-period latency. At the end a summary checks that
//! - every call returned the value of a valid version (each result encodes its version's tag;
//!   see `versions.rs`) whose grace period had not ended,
//! - the jit's counters balanced (`emitted == live + retired + reclaimed`) and everything was
//!   reclaimed once the sites were dropped,
//! - no code memory is mapped after the `Jit` is dropped,
//!
//! and exits with 0 (`OK: ...`) or 1 (`FAILED: ...`); bad flags exit with 2.
//!
//! Modules: `cli` (flags), `versions` (what each version computes, its code, the tag table),
//! `service` (the caller tasks), `patcher` (re-JIT and probes), `report` (histogram, formatting).

mod cli;
mod patcher;
mod report;
mod service;
mod versions;

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tramway::jit::{JitStats, JitStatsHandle, SiteKind};
use tramway::runtime::grace::{GraceConfig, GraceDomain, GraceStats};

use crate::cli::Options;
use crate::patcher::{PatchCounters, Patcher, ProbeCounter, Rng};
use crate::report::{group, kib, nanos, rate, si, Histogram, StatusLine};
use crate::service::{Service, SiteFn, SITE_NAMES};
use crate::versions::VersionTable;

/// Task stack size: 1000 tasks fit in 64 MiB of address space (pages are committed on touch).
const STACK_SIZE: usize = 64 * 1024;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match cli::parse(&args) {
        Ok(Some(o)) => o,
        Ok(None) => {
            println!("{}", cli::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("hotpatch: {e}\n\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    match run(&opts) {
        Ok(outcome) => {
            outcome.print(&opts);
            if outcome.failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("hotpatch: {e}");
            println!("FAILED: {e}");
            ExitCode::from(1)
        }
    }
}

/// Everything the summary reports.
struct Outcome {
    elapsed: Duration,
    calls: u64,
    invalid: u64,
    counters: PatchCounters,
    versions: u64,
    hits: u64,
    latency: Histogram,
    gp: GraceStats,
    peak_mapped: usize,
    after_teardown: JitStats,
    mapped_after_drop: usize,
    final_versions: Vec<String>,
    failures: Vec<String>,
}

/// Counters sampled once a second.
struct Sample {
    at: Instant,
    calls: u64,
    swaps: u64,
    hits: u64,
    latency: Histogram,
}

fn run(o: &Options) -> Result<Outcome, String> {
    let tramway::Tramway {
        runtime: rt,
        grace: gp,
        jit,
    } = tramway::Builder::new()
        .runtime(|b| b.workers(o.workers).stack_size(STACK_SIZE))
        .grace(GraceConfig::default().flavor(o.flavor))
        .build()
        .map_err(|e| e.to_string())?;
    let stats = jit.stats_handle();
    let table = Arc::new(VersionTable::new());
    // Probe hooks point into this array: it outlives the Jit (dropped at the end of `run`).
    let probes: Arc<[ProbeCounter]> = (0..o.sites).map(|_| ProbeCounter::default()).collect();
    let latency = Arc::new(Mutex::new(Histogram::default()));
    let counters = PatchCounters::default();
    let patcher = Patcher {
        jit: &jit,
        gp: &gp,
        table: &table,
        probes: &probes,
        latency: &latency,
        counters: &counters,
        stats: stats.clone(),
    };
    let mut sites = patcher.install(o.sites, o.site_kind, &mut Rng(0x2545_f491_4f6c_dd1d))?;
    let service = Arc::new(Service {
        // SAFETY: every implementation and probe installed in these sites implements
        // `extern "C" fn(u64) -> u64`; only green threads call them, and they are joined
        // before the sites drop.
        fns: sites
            .iter()
            .map(|s| unsafe { s.site.as_fn::<SiteFn>() })
            .collect(),
        names: SITE_NAMES[..o.sites].to_vec(),
        table: table.clone(),
        stop: Default::default(),
        calls: Default::default(),
        invalid: Default::default(),
        first_invalid: Mutex::new(None),
    });
    let mut failures = Vec::new();
    let mut tasks = Vec::with_capacity(o.tasks);
    for i in 0..o.tasks {
        let svc = service.clone();
        match rt.spawn(move || svc.run_task(i as u64 + 1)) {
            Ok(h) => tasks.push(h),
            Err(e) => {
                failures.push(format!("spawning task {i}: {e}"));
                service.stop.store(true, Ordering::Relaxed);
                break;
            }
        }
    }

    let start = Instant::now();
    let stop = &service.stop;
    let (patched, monitored) = std::thread::scope(|s| {
        let patcher_thread = std::thread::Builder::new()
            .name("hotpatch-patcher".into())
            .spawn_scoped(s, || patcher.run(&mut sites, o.swap_interval, stop, 0x5eed));
        let monitored = monitor(Watch {
            o,
            start,
            service: &service,
            counters: &counters,
            probes: &probes,
            latency: &latency,
            stats: &stats,
            gp: &gp,
        });
        stop.store(true, Ordering::Relaxed);
        let patched = match patcher_thread {
            Ok(h) => h
                .join()
                .unwrap_or_else(|_| Err("the patcher panicked".into())),
            Err(e) => Err(format!("spawning the patcher: {e}")),
        };
        (patched, monitored)
    });
    let elapsed = start.elapsed();
    failures.extend(patched.err());
    failures.extend(monitored.1);
    for h in tasks {
        if let Err(e) = h.join() {
            failures.push(format!("a service task failed: {e}"));
        }
    }

    // Teardown: nobody calls the sites any more. Freeing a probe defers its target's free, so
    // barrier until nothing is left.
    let final_versions = (sites.iter().zip(SITE_NAMES))
        .map(|(s, name)| format!("{name} {}", s.describe()))
        .collect();
    drop(sites);
    for _ in 0..16 {
        gp.barrier();
        let s = stats.get();
        if s.live == 0 && s.retired == 0 && s.sites == 0 {
            break;
        }
    }
    let after_teardown = stats.get();
    if !after_teardown.balanced() {
        failures.push(format!("jit counters do not balance: {after_teardown:?}"));
    }
    if after_teardown.live + after_teardown.retired + after_teardown.sites > 0 {
        failures.push(format!(
            "code left unreclaimed after teardown: {after_teardown:?}"
        ));
    }
    drop(jit);
    gp.barrier();
    let gp_stats = gp.stats();
    drop(gp);
    drop(rt);
    let mapped_after_drop = stats.get().mapped_bytes;
    if mapped_after_drop != 0 {
        failures.push(format!(
            "{mapped_after_drop} bytes of code still mapped after the Jit dropped"
        ));
    }
    if gp_stats.callbacks_panicked > 0 {
        failures.push(format!(
            "{} grace-period callbacks panicked",
            gp_stats.callbacks_panicked
        ));
    }

    let calls = service.calls.load(Ordering::Relaxed);
    let invalid = service.invalid.load(Ordering::Relaxed);
    if invalid > 0 {
        let first = service
            .first_invalid
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        failures.push(format!(
            "{invalid} calls returned no valid version's value (first: {})",
            first.as_deref().unwrap_or("?")
        ));
    }
    if calls == 0 {
        failures.push("no calls were made".into());
    }
    if counters.swaps.load(Ordering::Relaxed) == 0 {
        failures.push("no swaps were made".into());
    }
    let latency = latency.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(Outcome {
        elapsed,
        calls,
        invalid,
        versions: table.published(),
        hits: probes.iter().map(|p| p.0.load(Ordering::Relaxed)).sum(),
        peak_mapped: counters
            .peak_mapped
            .load(Ordering::Relaxed)
            .max(monitored.0),
        counters,
        latency,
        gp: gp_stats,
        after_teardown,
        mapped_after_drop,
        final_versions,
        failures,
    })
}

/// What the status line reads.
struct Watch<'a> {
    o: &'a Options,
    start: Instant,
    service: &'a Service,
    counters: &'a PatchCounters,
    probes: &'a [ProbeCounter],
    latency: &'a Mutex<Histogram>,
    stats: &'a JitStatsHandle,
    gp: &'a GraceDomain,
}

/// Prints a status line every second until the run time is over or `stop` is set. Returns the
/// peak mapped size it saw and any failed check.
fn monitor(w: Watch<'_>) -> (usize, Vec<String>) {
    let Watch {
        o,
        start,
        service,
        counters,
        probes,
        latency,
        stats,
        gp,
    } = w;
    let take = || Sample {
        at: Instant::now(),
        calls: service.calls.load(Ordering::Relaxed),
        swaps: counters.swaps.load(Ordering::Relaxed),
        hits: probes.iter().map(|p| p.0.load(Ordering::Relaxed)).sum(),
        latency: latency.lock().unwrap_or_else(|e| e.into_inner()).clone(),
    };
    let (mut failures, mut peak_mapped) = (Vec::new(), 0);
    let mut prev = take();
    let deadline = start + o.duration;
    let mut tick = start + Duration::from_secs(1);
    println!("{}", report::header());
    loop {
        let wake = tick.min(deadline);
        while Instant::now() < wake && !service.stop.load(Ordering::Relaxed) {
            std::thread::sleep((wake - Instant::now()).min(Duration::from_millis(20)));
        }
        let now = Instant::now();
        let done = now >= deadline || service.stop.load(Ordering::Relaxed);
        let partial = now.duration_since(prev.at) >= Duration::from_millis(100);
        if now >= tick || (done && partial) {
            let cur = take();
            let s = stats.get();
            peak_mapped = peak_mapped.max(s.mapped_bytes);
            if !s.balanced() && failures.is_empty() {
                failures.push(format!("jit counters do not balance: {s:?}"));
            }
            let dt = cur.at.duration_since(prev.at).as_secs_f64().max(1e-9);
            let line = StatusLine {
                t: now.duration_since(start).as_secs_f64(),
                calls: (cur.calls - prev.calls) as f64 / dt,
                swaps: (cur.swaps - prev.swaps) as f64 / dt,
                probes: (counters.attached_now.load(Ordering::Relaxed), o.sites),
                hits: (cur.hits - prev.hits) as f64 / dt,
                tramps: (s.live, s.retired, s.reclaimed),
                mapped: s.mapped_bytes,
                gp: cur.latency.since(&prev.latency),
                stalls: gp.stats().stalls,
                invalid: service.invalid.load(Ordering::Relaxed),
            };
            println!("{}", line.render());
            prev = cur;
            tick += Duration::from_secs(1);
        }
        if done {
            return (peak_mapped, failures);
        }
    }
}

impl Outcome {
    fn print(&self, o: &Options) {
        let c = &self.counters;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let swaps = load(&c.swaps);
        let flavor = o.flavor.name();
        println!(
            "\nsummary: {:.1} s, {} workers, {} tasks, {} sites ({}), {flavor} grace periods, swaps {}",
            secs,
            o.workers,
            o.tasks,
            o.sites,
            match o.site_kind {
                SiteKind::Indirect => "indirect",
                SiteKind::Direct => "direct",
            },
            report::interval(o.swap_interval)
        );
        println!("  final versions: {}", self.final_versions.join(", "));
        let row = |label: &str, value: String, note: String| {
            println!(
                "{}",
                format!("  {label:<20}{value:>15}   {note}").trim_end()
            );
        };
        let pct = |part: u64, whole: u64| 100.0 * part as f64 / whole.max(1) as f64;
        row(
            "calls",
            group(self.calls),
            format!("{}/s, every result checked", si(self.calls as f64 / secs)),
        );
        row(
            "invalid results",
            self.invalid.to_string(),
            "results from no valid version (must be 0)".into(),
        );
        row(
            "swaps",
            group(swaps),
            format!("{}/s", rate(swaps as f64 / secs)),
        );
        row(
            "  re-JITs",
            group(load(&c.rejits)),
            format!("{} versions emitted in all", group(self.versions)),
        );
        row("  probe attaches", group(load(&c.attaches)), String::new());
        row(
            "  probe detaches",
            group(load(&c.detaches)),
            format!(
                "{} still attached at the end",
                c.attached_now.load(Ordering::Relaxed)
            ),
        );
        row(
            "probe hits",
            group(self.hits),
            format!(
                "{:.2}% of calls went through a probe",
                pct(self.hits, self.calls)
            ),
        );
        let g = &self.gp;
        row(
            "grace periods",
            group(g.completed),
            format!(
                "{:.1} callbacks per GP ({} callbacks)",
                g.callbacks_run as f64 / g.completed.max(1) as f64,
                group(g.callbacks_run)
            ),
        );
        let q = |q| self.latency.quantile(q).map_or_else(|| "-".into(), nanos);
        row(
            "GP latency p50",
            q(0.5),
            format!(
                "call() to callback, {} samples",
                group(self.latency.count())
            ),
        );
        row(
            "GP latency p99",
            q(0.99),
            format!("max {}", nanos(self.latency.max())),
        );
        row("stalls", group(g.stalls), "GP stall reports".into());
        row(
            "backlog waits",
            group(load(&c.throttles)),
            "patcher waited for reclamation".into(),
        );
        row(
            "peak retired",
            group(load(&c.peak_retired)),
            "trampolines awaiting a grace period".into(),
        );
        row("peak mapped", kib(self.peak_mapped), "code memory".into());
        let s = &self.after_teardown;
        row(
            "trampolines emitted",
            group(s.emitted),
            format!(
                "= {} live + {} retired + {} reclaimed after teardown",
                s.live,
                s.retired,
                group(s.reclaimed)
            ),
        );
        row(
            "mapped after drop",
            self.mapped_after_drop.to_string(),
            "bytes of code mapped after the Jit dropped (must be 0)".into(),
        );
        if self.counters.tags_exhausted.load(Ordering::Relaxed) {
            println!("  note: version tags ran out; the patcher only toggled probes afterwards");
        }
        if self.failures.is_empty() {
            println!(
                "OK: {} calls, each from a valid version; {} swaps; {} trampolines emitted, all reclaimed; no code left mapped",
                group(self.calls),
                group(swaps),
                group(s.emitted)
            );
        } else {
            println!("FAILED: {}", self.failures.join("; "));
        }
    }
}
