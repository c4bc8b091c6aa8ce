//! Probe costs: the per-call overhead of entry and exit probes, and teardown under load.
//!
//! Per call (`probe_call/*`, throughput in calls per second), three probed sites in the same run,
//! each over the same implementation (a forwarding trampoline to `extern "C" fn(u64) -> u64`),
//! called in a loop from a task of a 1-worker runtime:
//!
//! * `probe_call/none`: no probe attached (the site points at the implementation; the baseline);
//! * `probe_call/entry`: one entry probe (the probe trampoline calls the dispatcher, then
//!   tail-jumps);
//! * `probe_call/exit`: one exit probe (a call-through trampoline: `yielding_code_enter`, a real
//!   call, two `rdtsc`, `yielding_code_leave`, the exit dispatcher).
//!
//! The probes' closures only `black_box` what they receive. A summary after criterion's output
//! prints ns/call, calls/s and the overhead over `none` for each, with the load average.
//!
//! Probe teardown under load (see `tramway_harness::probe_teardown`), each timed until every
//! replaced trampoline is reclaimed:
//!
//! * `probe_teardown/sequential/N`: detach N probes one at a time, `jit.barrier()` after each
//!   (one grace period per probe; the baseline). Measured for N = 100 and 1000 only: at ~0.3 to
//!   1 ms per grace period, 10k sequential detaches take 3 to 10 s per iteration; the example
//!   measures it once (or extrapolates it, labelled) and prints the table.
//! * `probe_teardown/batched/N`: one `detach_all` of N probes, then one `jit.barrier()`.
//!
//! N probes are spread round-robin over 1000 sites while 2 reader tasks call random sites on a
//! 2-worker runtime. After criterion's output, a summary prints the median of each case and the
//! ratio sequential / batched measured in this run.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use tramway::jit::{ForwardingSpec, ProbeHook, Probes, SiteKind, Target};
use tramway_harness::probe_teardown::Scenario;

const SITES: usize = 1000;
const READERS: usize = 2;

thread_local! {
    /// Per-iteration teardown times by (mode, N), for the summary.
    static SAMPLES: RefCell<BTreeMap<(&'static str, usize), Vec<Duration>>> =
        const { RefCell::new(BTreeMap::new()) };
}

fn record(mode: &'static str, n: usize, d: Duration) {
    SAMPLES.with(|s| s.borrow_mut().entry((mode, n)).or_default().push(d));
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

extern "C" fn add_one(x: u64) -> u64 {
    x.wrapping_add(1)
}

type AddFn = extern "C" fn(u64) -> u64;

/// The three per-call cases, in the order they are measured and summarized.
const CALL_CASES: [&str; 3] = ["none", "entry", "exit"];

thread_local! {
    /// Per-sample ns/call by case, for the summary.
    static CALL_SAMPLES: RefCell<BTreeMap<&'static str, Vec<f64>>> =
        const { RefCell::new(BTreeMap::new()) };
}

fn calls(c: &mut Criterion) {
    let tw = tramway::Builder::new()
        .workers(1)
        .build()
        .expect("a runtime, a grace domain and a Jit");
    let probes = Probes::new(&tw.jit);
    let implementation = tw
        .jit
        .forwarding(ForwardingSpec::new(Target::Address(add_one as *const u8)))
        .unwrap();
    let site = || probes.site(SiteKind::Indirect, &implementation).unwrap();
    let (none, entry, exit) = (site(), site(), site());
    probes
        .attach(
            &entry,
            ProbeHook::new(|args| {
                black_box(args);
            }),
        )
        .unwrap();
    probes
        .attach(
            &exit,
            ProbeHook::on_exit(|args, ret| {
                black_box((args, ret));
            }),
        )
        .unwrap();
    // SAFETY: every site's implementation forwards to `add_one`; the sites outlive the calls
    // (every `block_on` below returns before they drop), which run in tasks of the runtime the
    // Jit's grace domain tracks.
    let fns: [AddFn; 3] = unsafe { [none.as_fn(), entry.as_fn(), exit.as_fn()] };

    let mut g = c.benchmark_group("probe_call");
    g.throughput(Throughput::Elements(1))
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for (case, f) in CALL_CASES.into_iter().zip(fns) {
        g.bench_function(case, |b| {
            b.iter_custom(|iters| {
                let elapsed = tw
                    .runtime
                    .block_on(move || {
                        let t = Instant::now();
                        let mut x = 0u64;
                        for _ in 0..iters {
                            x = f(black_box(x));
                        }
                        black_box(x);
                        t.elapsed()
                    })
                    .unwrap();
                let ns = elapsed.as_secs_f64() * 1e9 / iters.max(1) as f64;
                CALL_SAMPLES.with(|s| s.borrow_mut().entry(case).or_default().push(ns));
                elapsed
            })
        });
    }
    g.finish();

    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!(
        "\nprobe call overhead, median ns/call of all samples in this run (load average: {}):",
        load.trim()
    );
    eprintln!(
        "{:>6} | {:>9} | {:>12} | {:>14}",
        "probe", "ns/call", "Mcalls/s", "over none (ns)"
    );
    CALL_SAMPLES.with(|samples| {
        let samples = samples.borrow();
        let med = |case: &str| {
            samples.get(case).map(|v| {
                let mut v = v.clone();
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            })
        };
        let base = med("none");
        for case in CALL_CASES {
            let Some(ns) = med(case) else {
                eprintln!("{case:>6} | not run");
                continue;
            };
            let over = base.map_or("-".to_string(), |b| format!("{:+.2}", ns - b));
            eprintln!("{case:>6} | {ns:>9.2} | {:>12.1} | {over:>14}", 1e3 / ns);
        }
    });
}

fn teardown(c: &mut Criterion) {
    let s = Scenario::new(SITES, READERS);
    let mut g = c.benchmark_group("probe_teardown");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5));
    for n in [100usize, 1_000, 10_000] {
        g.bench_function(format!("batched/{n}"), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        let probes = s.attach(n);
                        let t = s.detach_batched(&probes).elapsed;
                        record("batched", n, t);
                        t
                    })
                    .sum()
            })
        });
        if n <= 1_000 {
            g.bench_function(format!("sequential/{n}"), |b| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| {
                            let probes = s.attach(n);
                            let t = s.detach_sequential(&probes).elapsed;
                            record("sequential", n, t);
                            t
                        })
                        .sum()
                })
            });
        }
    }
    g.finish();
    s.stop();

    eprintln!("\nprobe teardown, median of all iterations (incl. warm-up) in this run:");
    eprintln!(
        "{:>6} | {:>14} | {:>12} | {:>8}",
        "N", "(a) sequential", "(b) batched", "(a)/(b)"
    );
    SAMPLES.with(|samples| {
        let samples = samples.borrow();
        for n in [100usize, 1_000, 10_000] {
            let b = samples.get(&("batched", n)).map(|v| median(v));
            let a = samples.get(&("sequential", n)).map(|v| median(v));
            let ms = |d: Option<Duration>| {
                d.map_or("not run".to_string(), |d| {
                    format!("{:.2} ms", d.as_secs_f64() * 1e3)
                })
            };
            let ratio = match (a, b) {
                (Some(a), Some(b)) => format!("{:.0}x", a.as_secs_f64() / b.as_secs_f64()),
                _ => "-".into(),
            };
            eprintln!("{n:>6} | {:>14} | {:>12} | {ratio:>8}", ms(a), ms(b));
        }
    });
}

criterion_group!(benches, calls, teardown);
criterion_main!(benches);
