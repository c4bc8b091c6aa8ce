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
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
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

criterion_group!(benches, teardown);
criterion_main!(benches);
