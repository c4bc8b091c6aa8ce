//! Representative cells of the strategy comparison as criterion benches (the full grid is
//! `cargo run --release --example bench-report`).
//!
//! IDs are `strategies/<strategy>/<swaps per s>`: one caller task on a 1-worker runtime
//! makes the measured calls (bursts of 256, `yield_now()` between bursts) through the
//! strategy's protection, while the patcher swaps the code at 0 ("no storm") or 100k swaps/s
//! ("patch storm") and retires the old code. The workload code is `tramway_harness::bench`, shared
//! with the report. Under `cargo test` (criterion's test mode) only the no-storm cells and
//! one storm cell run, once each.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tramway_harness::bench::workload::{Env, Strategy};

const BURST: u32 = 256;

/// Whether criterion measures (`cargo bench`) rather than runs once (`cargo test`).
fn benchmarking() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test")
}

fn strategies(c: &mut Criterion) {
    let full = benchmarking();
    let mut g = c.benchmark_group("strategies");
    g.throughput(Throughput::Elements(1));
    for rate in [0u64, 100_000] {
        for s in Strategy::ALL {
            if rate > 0 && !s.swaps() {
                continue;
            }
            if !full && rate > 0 && s != Strategy::Tasks {
                continue;
            }
            let env = Env::new(s, 1, rate).expect("bench environment");
            g.bench_function(BenchmarkId::new(s.name(), rate), |b| {
                b.iter_custom(|iters| env.timed_calls(iters, BURST).expect("caller task"))
            });
            env.finish().expect("finish");
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = strategies
}
criterion_main!(benches);
