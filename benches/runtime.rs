//! Scheduler costs, each against its baseline in the same run:
//!
//! * `switch/corosensei_bare`: one `resume` + `suspend` of a bare corosensei coroutine;
//! * `switch/yield_now_qs_on`: one `yield_now` round trip through the scheduler (1 worker),
//!   with QS reporting (the default);
//! * `switch/yield_now_qs_off`: the same with the hidden `qs_reporting(false)` knob;
//! * `switch/yield_now_two_tasks_qs_on`: per switch, two tasks alternating on one worker
//!   (every yield goes through the run queue instead of the direct-resume shortcut);
//! * `spawn_join/from_thread` and `spawn_join/from_task`: spawn a trivial task and join it.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use tramway::runtime::{yield_now, Runtime};
use tramway_harness::baseline::BareSwitch;

fn yield_loop(rt: &Runtime, iters: u64) -> Duration {
    rt.block_on(move || {
        let t = Instant::now();
        for _ in 0..iters {
            yield_now();
        }
        t.elapsed()
    })
    .unwrap()
}

fn switch(c: &mut Criterion) {
    eprintln!("barrier mode: {:?}", tramway::runtime::barrier_mode());
    let mut g = c.benchmark_group("switch");
    g.bench_function("corosensei_bare", |b| {
        let mut co = BareSwitch::new();
        b.iter(|| black_box(co.round_trip()));
    });
    let rt_on = Runtime::builder().workers(1).build().unwrap();
    g.bench_function("yield_now_qs_on", |b| {
        b.iter_custom(|iters| yield_loop(&rt_on, iters))
    });
    let rt_off = Runtime::builder()
        .workers(1)
        .qs_reporting(false)
        .build()
        .unwrap();
    g.bench_function("yield_now_qs_off", |b| {
        b.iter_custom(|iters| yield_loop(&rt_off, iters))
    });
    // General path (no direct-resume shortcut): two tasks alternate on one worker, so every
    // yield goes through the run queue. Reported per switch.
    g.bench_function("yield_now_two_tasks_qs_on", |b| {
        b.iter_custom(|iters| {
            let partner = rt_on
                .spawn(move || {
                    for _ in 0..iters {
                        yield_now();
                    }
                })
                .unwrap();
            let d = yield_loop(&rt_on, iters);
            partner.join().unwrap();
            d / 2
        })
    });
    g.finish();
}

fn spawn_join(c: &mut Criterion) {
    let mut g = c.benchmark_group("spawn_join");
    let rt = Runtime::builder().workers(1).build().unwrap();
    g.bench_function("from_thread", |b| {
        b.iter(|| rt.spawn(|| black_box(1)).unwrap().join().unwrap())
    });
    let rt2 = rt.clone();
    g.bench_function("from_task", |b| {
        b.iter_custom(|iters| {
            let rt3 = rt2.clone();
            rt2.block_on(move || {
                let t = Instant::now();
                for _ in 0..iters {
                    rt3.spawn(|| black_box(1)).unwrap().join().unwrap();
                }
                t.elapsed()
            })
            .unwrap()
        })
    });
    g.finish();
}

/// Noise-robust QS overhead: alternate blocks of yields with and without QS reporting and
/// keep the fastest block of each (the machine may be shared). Printed, not asserted.
fn qs_overhead_interleaved(_c: &mut Criterion) {
    const BLOCK: u64 = 200_000;
    let on = Runtime::builder().workers(1).build().unwrap();
    let off = Runtime::builder()
        .workers(1)
        .qs_reporting(false)
        .build()
        .unwrap();
    let bare = {
        let mut co = BareSwitch::new();
        move || {
            let t = Instant::now();
            for _ in 0..BLOCK {
                black_box(co.round_trip());
            }
            t.elapsed()
        }
    };
    let mut bare = bare;
    let (mut best_on, mut best_off, mut best_bare) = (Duration::MAX, Duration::MAX, Duration::MAX);
    for _ in 0..30 {
        best_on = best_on.min(yield_loop(&on, BLOCK));
        best_off = best_off.min(yield_loop(&off, BLOCK));
        best_bare = best_bare.min(bare());
    }
    let ns = |d: Duration| d.as_nanos() as f64 / BLOCK as f64;
    eprintln!(
        "interleaved best-of-30: bare switch {:.2} ns, yield_now qs_on {:.2} ns, qs_off {:.2} ns; \
         QS overhead {:+.1}%, scheduler/bare {:.1}x",
        ns(best_bare),
        ns(best_on),
        ns(best_off),
        (ns(best_on) / ns(best_off) - 1.0) * 100.0,
        ns(best_on) / ns(best_bare)
    );
}

criterion_group!(benches, switch, spawn_join, qs_overhead_interleaved);
criterion_main!(benches);
