//! What asynchronous preemption inside JIT code costs (issue 13's bench).
//!
//! ```sh
//! cargo bench --bench preempt                  # 7 rounds, about 30 s on 2 cores
//! cargo bench --bench preempt -- --quick       # 3 short rounds (CI smoke)
//! cargo bench --bench preempt -- --help
//! ```
//!
//! # Scenarios
//! - `spin`: throughput of a guest loop compiled to JIT code that never yields (`dec rcx;
//!   jnz`), run by one task on a one-worker runtime inside a `preemptible` scope, with
//!   preemption off, at a 1 ms quantum and at 100 µs. With preemption on, the monitor signals
//!   the worker every quantum and the task is switched out and straight back in (it is the
//!   only task): the cost of one preemption (signal, XSAVE, two switches, XRSTOR) over a
//!   quantum. The row is the loop's iterations per µs; the ratio is against preemption off.
//! - `gp`: grace-period latency while holdouts are preempted. Two tasks on one worker run
//!   1 ms chunks of the same loop in a `preemptible` scope and yield between chunks; an OS
//!   thread calls `GraceDomain::synchronize()` (Tasks flavor) every 0.7 ms, so each grace
//!   period starts at an arbitrary point of a chunk (one worker and one updater: no thread
//!   waits for a CPU on a 2-core machine). With preemption off the worker's cell holds a GP
//!   until the running chunk ends; with it on, the task switched out mid-chunk is a holdout
//!   too, until it resumes and finishes its chunk, and the two chunks now share the worker.
//!   The rows are the mean, p50 and p99 of `synchronize()`, and the preempted holdouts a GP
//!   waited for, per GP.
//!
//! # Method
//! The three settings run interleaved, in an order that rotates each round; each round builds
//! its runtime afresh. A cell is the median of its rounds, with their range. The load average
//! is printed before and after. Nothing here asserts a time; under `cargo test` (no `--bench`
//! argument) the binary only prints what it would do.

#![warn(clippy::undocumented_unsafe_blocks)]

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tramway::jit::dynasmrt::{dynasm, DynasmLabelApi};
use tramway::jit::{Jit, Trampoline};
use tramway::runtime::grace::{GraceConfig, GraceDomain};
use tramway::runtime::{preemptible, Runtime};
use tramway_harness::bench::histogram::Histogram;
use tramway_harness::bench::rounds::{cell, loadavg, machine_before, median, RoundArgs as Opts};

const USAGE: &str = "\
usage: cargo bench --bench preempt -- [--quick] [--rounds N] [--round-ms MS] [spin|gp]

  --quick        3 rounds of 133 ms (CI smoke)
  --rounds N     rounds per setting (default 7)
  --round-ms MS  measured time per round and setting (default 400)
  spin | gp      run one scenario only
";

/// Preemption settings compared in every scenario: off, then the two quanta.
const SETTINGS: [(&str, Option<Duration>); 3] = [
    ("off", None),
    ("1 ms", Some(Duration::from_millis(1))),
    ("100 us", Some(Duration::from_micros(100))),
];

/// `extern "C" fn(iterations: u64) -> u64`: counts `iterations` down to zero in JIT code.
type CountDown = extern "C" fn(u64) -> u64;

fn main() -> ExitCode {
    let opts = match Opts::from_env(
        "preempt",
        USAGE,
        &["spin", "gp"],
        Opts::defaults(Duration::from_millis(400)),
    ) {
        Ok(o) => o,
        Err(code) => return code,
    };
    let jit = Jit::new().expect("a Jit");
    let code = emit_count_down(&jit);
    // SAFETY: `code` implements `CountDown` (see `emit_count_down`); it is never retired and
    // lives until the end of main, after every task that calls it has been joined.
    let count_down: CountDown = unsafe { std::mem::transmute::<*const u8, CountDown>(code.addr()) };
    let per_ms = calibrate(count_down);
    println!(
        "preempt: {} rounds of {} ms per setting; loop: {:.0} iterations/us on this thread; {}",
        opts.rounds,
        opts.round.as_millis(),
        per_ms as f64 / 1000.0,
        machine_before()
    );
    if opts.wants("spin") {
        spin_scenario(&opts, count_down);
    }
    if opts.wants("gp") {
        gp_scenario(&opts, count_down, per_ms);
    }
    println!("load after: {}", loadavg());
    ExitCode::SUCCESS
}

fn emit_count_down(jit: &Jit) -> Trampoline {
    // SAFETY: the body counts `rdi` down in `rcx` (caller-saved) and returns 0: it implements
    // `CountDown`, never yields and touches no memory.
    unsafe {
        jit.custom(|ops| {
            dynasm!(ops
                ; .arch x64
                ; mov rcx, rdi
                ; test rcx, rcx
                ; jz >done
                ; again:
                ; dec rcx
                ; jnz <again
                ; done:
                ; xor eax, eax
                ; ret
            );
        })
    }
    .expect("emit the loop")
}

/// Loop iterations per millisecond on the calling thread (best of a few tries).
fn calibrate(f: CountDown) -> u64 {
    let n = 1u64 << 22;
    let best = (0..5)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f(std::hint::black_box(n)));
            t.elapsed()
        })
        .min()
        .unwrap_or(Duration::from_millis(1));
    (n as f64 / best.as_secs_f64() / 1000.0).max(1.0) as u64
}

fn runtime(workers: usize, quantum: Option<Duration>) -> Runtime {
    let mut b = Runtime::builder().workers(workers);
    if let Some(q) = quantum {
        b = b.preempt(q);
    }
    b.build().expect("a runtime")
}

/// The settings in this round's order (rotating, so none always runs first).
fn round_order(round: usize) -> impl Iterator<Item = usize> {
    (0..SETTINGS.len()).map(move |i| (i + round) % SETTINGS.len())
}

fn spin_scenario(opts: &Opts, f: CountDown) {
    let mut rates: [Vec<f64>; 3] = Default::default();
    let mut preemptions: [Vec<f64>; 3] = Default::default();
    for round in 0..opts.rounds {
        for s in round_order(round) {
            let rt = runtime(1, SETTINGS[s].1);
            let round_len = opts.round;
            let task = rt
                .spawn(move || {
                    // Warm up, then count chunks of 2^22 iterations for the round's length.
                    preemptible(|| f(1 << 22));
                    let (start, mut done) = (Instant::now(), 0u64);
                    while start.elapsed() < round_len {
                        preemptible(|| f(1 << 22));
                        done += 1 << 22;
                    }
                    done as f64 / start.elapsed().as_secs_f64() / 1e6
                })
                .expect("spawn");
            rates[s].push(task.join().expect("the loop task"));
            preemptions[s].push(rt.stats().preempt.preemptions as f64);
            rt.shutdown();
        }
    }
    println!("\nspin: a JIT loop that never yields, 1 task on 1 worker (iterations/us)");
    println!(
        "{:<10} {:>22} {:>9} {:>14}",
        "quantum", "iterations/us", "vs off", "preemptions"
    );
    let off = median(&rates[0]);
    for (s, (name, _)) in SETTINGS.iter().enumerate() {
        println!(
            "{:<10} {:>22} {:>8.3}x {:>14.0}",
            name,
            cell(&rates[s], 1),
            median(&rates[s]) / off,
            median(&preemptions[s])
        );
    }
}

fn gp_scenario(opts: &Opts, f: CountDown, per_ms: u64) {
    const TASKS: usize = 2;
    let mut mean: [Vec<f64>; 3] = Default::default();
    let mut p50: [Vec<f64>; 3] = Default::default();
    let mut p99: [Vec<f64>; 3] = Default::default();
    let mut preempted: [Vec<f64>; 3] = Default::default();
    for round in 0..opts.rounds {
        for s in round_order(round) {
            let rt = runtime(1, SETTINGS[s].1);
            let gp = GraceDomain::new(&rt, GraceConfig::default()).expect("a grace domain");
            let stop = Arc::new(AtomicBool::new(false));
            let chunks = Arc::new(AtomicU64::new(0));
            let tasks: Vec<_> = (0..TASKS)
                .map(|_| {
                    let (stop, chunks) = (stop.clone(), chunks.clone());
                    rt.spawn(move || {
                        while !stop.load(Ordering::Relaxed) {
                            preemptible(|| f(per_ms));
                            chunks.fetch_add(1, Ordering::Relaxed);
                            tramway::runtime::yield_now();
                        }
                    })
                    .expect("spawn")
                })
                .collect();
            while chunks.load(Ordering::Relaxed) < TASKS as u64 {
                std::thread::sleep(Duration::from_millis(1));
            }
            let hist = Histogram::new();
            let (start, mut total, mut n) = (Instant::now(), Duration::ZERO, 0u32);
            while start.elapsed() < opts.round {
                // A cold grace period: it starts at an arbitrary point of the tasks' chunks.
                std::thread::sleep(Duration::from_micros(700));
                let t = Instant::now();
                gp.synchronize();
                let d = t.elapsed();
                hist.record(d);
                total += d;
                n += 1;
            }
            stop.store(true, Ordering::Relaxed);
            for t in tasks {
                t.join().expect("a loop task");
            }
            let counts = hist.snapshot();
            let us = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e6);
            mean[s].push(total.as_secs_f64() * 1e6 / f64::from(n.max(1)));
            p50[s].push(us(counts.quantile(0.5)));
            p99[s].push(us(counts.quantile(0.99)));
            preempted[s].push(gp.stats().preempted_holdouts as f64 / f64::from(n.max(1)));
            drop(gp);
            rt.shutdown();
        }
    }
    println!(
        "\ngp: synchronize() latency, 0.7 ms apart, while {TASKS} tasks on 1 worker run 1 ms \
         JIT chunks (us)"
    );
    println!(
        "{:<10} {:>22} {:>22} {:>22} {:>9} {:>16}",
        "quantum", "mean", "p50", "p99", "mean/off", "preempted/GP"
    );
    let off = median(&mean[0]);
    for (s, (name, _)) in SETTINGS.iter().enumerate() {
        println!(
            "{:<10} {:>22} {:>22} {:>22} {:>8.3}x {:>16.2}",
            name,
            cell(&mean[s], 0),
            cell(&p50[s], 0),
            cell(&p99[s], 0),
            median(&mean[s]) / off,
            median(&preempted[s])
        );
    }
}
