//! Grace-period latency: `synchronize()` from an OS thread, against the number of workers,
//! the number of tasks parked at a yield point, and the flavor.
//!
//! IDs are `grace/<flavor>/workers=<n>/parked=<tasks>`. The Tasks flavor snapshots
//! O(workers + registered threads) cells, so its latency should be flat in `parked`; Rude
//! runs a no-op task on every worker. Parked tasks wait on one [`Event`] and are created
//! once per (workers, parked) parameter, not per iteration, with 32 KiB stacks.
//!
//! Each task stack is two memory mappings (guard page + stack), so the number of parked
//! tasks is capped by `vm.max_map_count` (65530 by default: about 32k tasks). The largest
//! parameter is 100k tasks when the limit allows it and otherwise the largest count that
//! fits; the bench prints which.
//!
//! Under `cargo test` (criterion's test mode) only 1 worker and 100 parked tasks run.

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use tramway::runtime::grace::{Flavor, GraceConfig, GraceDomain};
use tramway::runtime::{Event, Runtime};

/// Whether criterion measures (`cargo bench`) rather than runs once (`cargo test`).
fn benchmarking() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test")
}

/// The largest number of parked tasks this process can map, up to `want`.
fn parked_cap(want: usize) -> usize {
    let limit = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .unwrap_or(65_530);
    let used = std::fs::read_to_string("/proc/self/maps")
        .map(|s| s.lines().count())
        .unwrap_or(1_000);
    // Two mappings per stack, plus headroom for the runtime, criterion and the allocator.
    let fit = limit.saturating_sub(used + 4_000) / 2;
    want.min(fit / 1_000 * 1_000)
}

/// A runtime with `parked` tasks waiting on one event; releases them on drop.
struct Parked {
    rt: Runtime,
    event: Arc<Event>,
    handles: Vec<tramway::runtime::JoinHandle<()>>,
}

impl Parked {
    fn new(workers: usize, parked: usize) -> Parked {
        let rt = Runtime::builder()
            .workers(workers)
            .stack_size(32 * 1024)
            .build()
            .expect("runtime");
        let event = Arc::new(Event::new());
        let handles = (0..parked)
            .map(|_| {
                let e = event.clone();
                rt.spawn(move || e.wait()).expect("spawn a parked task")
            })
            .collect();
        // Wait until every task has parked (or the runtime is idle), so that spawning is
        // not part of the measurement.
        while event.waiters() < parked {
            std::thread::sleep(Duration::from_millis(1));
        }
        Parked { rt, event, handles }
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        self.event.notify_all();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
        self.rt.shutdown();
    }
}

fn grace(c: &mut Criterion) {
    let full = benchmarking();
    let (workers, parked): (&[usize], Vec<usize>) = if full {
        let big = parked_cap(100_000);
        if big < 100_000 {
            eprintln!(
                "grace: vm.max_map_count allows {big} parked tasks, not 100000 (2 mappings per \
                 task stack); using {big}"
            );
        }
        (&[1, 2], vec![100, 10_000, big])
    } else {
        (&[1], vec![100])
    };
    let mut g = c.benchmark_group("grace");
    for &w in workers {
        for &n in &parked {
            let env = Parked::new(w, n);
            for flavor in [Flavor::Tasks, Flavor::Rude] {
                let domain = GraceDomain::new(&env.rt, GraceConfig::default().flavor(flavor))
                    .expect("grace domain");
                let name = flavor.name();
                g.bench_function(
                    BenchmarkId::new(name, format!("workers={w}/parked={n}")),
                    |b| b.iter(|| domain.synchronize()),
                );
            }
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);
    targets = grace
}
criterion_main!(benches);
