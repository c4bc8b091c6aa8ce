//! `hotpatch`: a live service whose machine code is replaced while it runs.
//!
//! ```text
//! cargo run --release --example hotpatch -- [--seconds N] [--workers N] [--tasks N] [--sites N]
//!     [--swap-interval T] [--flavor tasks|rude] [--site-kind indirect|direct]
//!     [--callback-delay T] [--preempt T] [--csv FILE] [--plot FILE.svg] [--explain] [--help]
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
//! Once a second a status line shows rates (calls, swaps, probe hits), current values (probes,
//! live and retired trampolines, mapped code), running totals, and two latencies: retire -> free
//! (one grace period plus the callback batching delay) and one `synchronize()` timed by a side
//! thread (a grace period alone). `--explain` describes every column; `--csv` and `--plot` save
//! the series. At the end a summary checks that
//! - every call returned the value of a valid version (each result encodes its version's tag;
//!   see `versions.rs`) whose grace period had not ended,
//! - the jit's counters balanced (`emitted == live + retired + reclaimed`) and everything was
//!   reclaimed once the sites were dropped,
//! - no code memory is mapped after the `Jit` is dropped,
//!
//! and exits with 0 (`OK: ...`) or 1 (`FAILED: ...`); bad flags (or an output file that cannot be
//! created) exit with 2.
//!
//! With `--preempt T` the runtime preempts tasks inside JIT code every `T`, and every
//! implementation spins a few microseconds in its own code, so tasks are switched out
//! involuntarily in the middle of retired code: the Tasks flavor must keep that code until they
//! resume. `--flavor rude --preempt T` demonstrates why the Rude flavor is not enough: the run
//! happens in a child process (`rude_child.rs`), which is expected to crash on freed code or to
//! see a stale call, and the parent reports that outcome.
//!
//! Modules: `cli` (flags), `versions` (what each version computes, its code, the tag table),
//! `service` (the caller tasks), `patcher` (re-JIT and probes), `monitor` (the status line and
//! the `synchronize()` timer), `report` (histogram, columns, formatting, CSV), `plot` (the SVG).

mod cli;
mod monitor;
mod patcher;
mod plot;
mod report;
mod rude_child;
mod service;
mod versions;

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tramway::jit::{JitStats, SiteKind};
use tramway::runtime::grace::{GraceConfig, GraceStats};
use tramway::runtime::preempt::PreemptStats;

use crate::cli::{Command, Options};
use crate::monitor::{monitor, time_synchronize, Watch};
use crate::patcher::{PatchCounters, Patcher, ProbeCounter, Rng};
use crate::report::{group, kib, nanos, rate, si, Histogram, Latencies, Second};
use crate::service::{Service, SiteFn, SITE_NAMES};
use crate::versions::VersionTable;

/// Task stack size: 1000 tasks fit in 64 MiB of address space (pages are committed on touch).
const STACK_SIZE: usize = 64 * 1024;
/// With `--preempt`, every implementation spins this many loop iterations in its own JIT code
/// first (microseconds), so that preemption lands inside implementations.
const PREEMPT_SPIN: u32 = 20_000;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match cli::parse(&args) {
        Ok(Command::Run(o)) => o,
        Ok(Command::Help) => {
            println!("{}", cli::USAGE);
            return ExitCode::SUCCESS;
        }
        Ok(Command::Explain) => {
            println!("{}", report::EXPLAIN);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let synopsis = cli::USAGE.split("\n\n").next().unwrap_or(cli::USAGE);
            eprintln!("hotpatch: {e}\n\n{synopsis}\n(--help describes every flag)");
            return ExitCode::from(2);
        }
    };
    if rude_child::is_demonstration(&opts) {
        return rude_child::demonstrate(&args);
    }
    // Created before the run, so a path that cannot be written costs no run.
    let mut outputs = match Outputs::create(&opts) {
        Ok(files) => files,
        Err(e) => {
            eprintln!("hotpatch: {e}");
            return ExitCode::from(2);
        }
    };
    println!(
        "hotpatch: {}, for {:.1} s\n",
        describe(&opts),
        opts.duration.as_secs_f64()
    );
    match run(&opts) {
        Ok(mut outcome) => {
            outcome.print_summary(&opts);
            outcome
                .failures
                .extend(outputs.write(&outcome.series, &opts));
            outcome.print_verdict();
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

/// `1000 tasks on 2 workers, 4 indirect sites, tasks grace periods, ...`.
fn describe(o: &Options) -> String {
    let preempt = o.preempt.map_or(String::new(), |q| {
        format!(", preempted {}", report::interval(q))
    });
    format!(
        "{} tasks on {} workers, {} {} sites, {} grace periods ({}), swaps {}{preempt}",
        o.tasks,
        o.workers,
        o.sites,
        match o.site_kind {
            SiteKind::Indirect => "indirect",
            SiteKind::Direct => "direct",
        },
        o.flavor.name(),
        match o.callback_delay.as_nanos() {
            0 => "no callback delay".to_string(),
            ns => format!("callback delay {}", nanos(ns as u64)),
        },
        report::interval(o.swap_interval),
    )
}

/// The `--csv` and `--plot` files, open from the start.
struct Outputs {
    csv: Option<(PathBuf, File)>,
    plot: Option<(PathBuf, File)>,
}

impl Outputs {
    fn create(o: &Options) -> Result<Outputs, String> {
        let open =
            |flag: &str, path: &Option<PathBuf>| -> Result<Option<(PathBuf, File)>, String> {
                path.as_ref()
                    .map(|p| {
                        File::create(p)
                            .map(|f| (p.clone(), f))
                            .map_err(|e| format!("{flag}: cannot create `{}`: {e}", p.display()))
                    })
                    .transpose()
            };
        Ok(Outputs {
            csv: open("--csv", &o.csv)?,
            plot: open("--plot", &o.plot)?,
        })
    }

    /// Writes the series; returns what failed.
    fn write(&mut self, series: &[Second], o: &Options) -> Vec<String> {
        let mut failures = Vec::new();
        let mut put = |path: &Path, file: &mut File, text: &str, what: &str| match file
            .write_all(text.as_bytes())
            .and_then(|()| file.flush())
        {
            Ok(()) => println!("  wrote {what} to {}", path.display()),
            Err(e) => failures.push(format!("writing {}: {e}", path.display())),
        };
        if let Some((path, file)) = &mut self.csv {
            let mut text = String::from(report::CSV_HEADER);
            text.push('\n');
            for s in series {
                text.push_str(&report::csv_row(s));
                text.push('\n');
            }
            put(
                path,
                file,
                &text,
                &format!("{} rows of per-second series", series.len()),
            );
        }
        if let Some((path, file)) = &mut self.plot {
            let title = "hotpatch: calls, swaps and grace-period latency per second";
            match plot::svg(series, title, &describe(o)) {
                Ok(svg) => put(path, file, &svg, "the chart (calls/s, swaps/s, GP latency)"),
                Err(e) => failures.push(e),
            }
        }
        failures
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
    free: Histogram,
    sync: Histogram,
    series: Vec<Second>,
    gp: GraceStats,
    preempt: PreemptStats,
    peak_mapped: usize,
    after_teardown: JitStats,
    mapped_after_drop: usize,
    final_versions: Vec<String>,
    failures: Vec<String>,
}

fn run(o: &Options) -> Result<Outcome, String> {
    let tramway::Tramway {
        runtime: rt,
        grace: gp,
        jit,
    } = tramway::Builder::new()
        .runtime(|b| {
            let b = b.workers(o.workers).stack_size(STACK_SIZE);
            match o.preempt {
                Some(quantum) => b.preempt(quantum),
                None => b,
            }
        })
        .grace(
            GraceConfig::default()
                .flavor(o.flavor)
                .callback_delay(o.callback_delay),
        )
        .jit(|b| {
            let b = b.perf_map(o.perf_map);
            match &o.jitdump {
                Some(dir) => b.jitdump(dir),
                None => b,
            }
        })
        .build()
        .map_err(|e| e.to_string())?;
    let stats = jit.stats_handle();
    let table = Arc::new(VersionTable::new());
    // Probe hooks point into this array: it outlives the Jit (dropped at the end of `run`).
    let probes: Arc<[ProbeCounter]> = (0..o.sites).map(|_| ProbeCounter::default()).collect();
    let latency = Arc::new(Mutex::new(Latencies::default()));
    let sync = Mutex::new(Latencies::default());
    let counters = PatchCounters::default();
    let patcher = Patcher {
        jit: &jit,
        gp: &gp,
        table: &table,
        probes: &probes,
        latency: &latency,
        counters: &counters,
        stats: stats.clone(),
        spin: if o.preempt.is_some() { PREEMPT_SPIN } else { 0 },
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
        preemptible: o.preempt.is_some(),
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

    let start = std::time::Instant::now();
    let stop = &service.stop;
    let (patched, monitored) = std::thread::scope(|s| {
        let patcher_thread = std::thread::Builder::new()
            .name("hotpatch-patcher".into())
            .spawn_scoped(s, || patcher.run(&mut sites, o.swap_interval, stop, 0x5eed));
        let sync_thread = std::thread::Builder::new()
            .name("hotpatch-sync".into())
            .spawn_scoped(s, || time_synchronize(&gp, &sync, start, stop));
        let monitored = monitor(Watch {
            o,
            start,
            service: &service,
            counters: &counters,
            probes: &probes,
            free: &latency,
            sync: &sync,
            stats: &stats,
            gp: &gp,
        });
        stop.store(true, Ordering::Relaxed);
        let mut monitored = monitored;
        match sync_thread.map(|h| h.join()) {
            Ok(Ok(())) => {}
            Ok(Err(_)) => monitored
                .failures
                .push("the synchronize() timer panicked".into()),
            Err(e) => monitored
                .failures
                .push(format!("spawning the synchronize() timer: {e}")),
        }
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
    failures.extend(monitored.failures);
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
    let preempt = rt.stats().preempt;
    drop(gp);
    drop(rt);
    let mapped_after_drop = stats.get().mapped_bytes;
    if mapped_after_drop != 0 {
        failures.push(format!(
            "{} of code still mapped after the Jit dropped",
            kib(mapped_after_drop)
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
    let free = latency
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .all()
        .clone();
    let sync = sync.lock().unwrap_or_else(|e| e.into_inner()).all().clone();
    Ok(Outcome {
        elapsed,
        calls,
        invalid,
        versions: table.published(),
        hits: probes.iter().map(|p| p.0.load(Ordering::Relaxed)).sum(),
        peak_mapped: counters
            .peak_mapped
            .load(Ordering::Relaxed)
            .max(monitored.peak_mapped),
        counters,
        free,
        sync,
        series: monitored.series,
        gp: gp_stats,
        preempt,
        after_teardown,
        mapped_after_drop,
        final_versions,
        failures,
    })
}

impl Outcome {
    fn print_summary(&self, o: &Options) {
        let c = &self.counters;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let swaps = load(&c.swaps);
        println!("\nsummary after {secs:.1} s: {}", describe(o));
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
        let q = |h: &Histogram, q| h.quantile(q).map_or_else(|| "-".into(), nanos);
        row(
            "retire->free p50",
            q(&self.free, 0.5),
            format!(
                "retired version to its free: one GP + up to {} callback delay; {} samples",
                nanos(o.callback_delay.as_nanos() as u64),
                group(self.free.count())
            ),
        );
        row(
            "retire->free p99",
            q(&self.free, 0.99),
            format!("max {}", nanos(self.free.max())),
        );
        row(
            "synchronize() p50",
            q(&self.sync, 0.5),
            format!(
                "a grace period alone, timed once a second; {} samples, max {}",
                self.sync.count(),
                nanos(self.sync.max())
            ),
        );
        row("stalls", group(g.stalls), "GP stall reports".into());
        if o.preempt.is_some() {
            let p = &self.preempt;
            row(
                "preemptions",
                group(p.preemptions),
                format!(
                    "tasks switched out inside JIT code ({} signals; ignored: {} outside code, \
                     {} in hooks, {} outside a scope)",
                    group(p.signals_sent),
                    group(p.ignored_outside_code),
                    group(p.ignored_non_yielding),
                    group(p.ignored_no_scope)
                ),
            );
            row(
                "preempted holdouts",
                group(g.preempted_holdouts),
                "grace periods that waited for a task preempted inside JIT code".into(),
            );
        }
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
            kib(self.mapped_after_drop),
            "code mapped after the Jit dropped (must be 0)".into(),
        );
        if self.counters.tags_exhausted.load(Ordering::Relaxed) {
            println!("  note: version tags ran out; the patcher only toggled probes afterwards");
        }
    }

    fn print_verdict(&self) {
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let (swaps, s) = (load(&self.counters.swaps), &self.after_teardown);
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
