//! What yielding JIT code costs (issue 14's bench): the depth marks, the stack scan at a
//! park, and grace periods while many tasks are parked inside yielding code.
//!
//! ```sh
//! cargo bench --bench yielding                 # 7 rounds
//! cargo bench --bench yielding -- --quick      # 3 short rounds (CI smoke)
//! ```
//!
//! # Scenarios
//! - `marks`: ns per enter/leave pair of the yielding-code depth, in a task: the scoped
//!   `in_yielding_code(|| ())` and the C-ABI `yielding_code_enter(); yielding_code_leave()` pair
//!   JIT code calls, against an empty loop (the baseline, same loop shape).
//! - `park`: ns per `yield_now()` of a task that is alone on its worker, with the task's stack
//!   used to depth D (a recursion of 256-byte frames), outside yielding code (no scan) and inside
//!   it (a scan of D bytes per park). The scan's cost is the difference; it grows with D.
//! - `gp`: `synchronize()` latency from an OS thread, and the time from `call_for_code` to its
//!   callback, while N tasks are parked (on an event) outside yielding code vs inside it (each
//!   holding a code reference into a registered range the callbacks do not touch), for N = 10
//!   and 1000. Grace periods cost O(workers + threads + holdouts + references): parked tasks
//!   are never visited, but their published references are read once per GP that has ranged
//!   callbacks.
//!
//! # Method
//! Settings alternate within each round, in an order that rotates; a cell is the median of
//! the rounds with their range. The load average is printed before and after. Nothing here
//! asserts a time; under `cargo test` (no `--bench` argument) it only prints what it would do.

#![warn(clippy::undocumented_unsafe_blocks)]

use std::hint::black_box;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tramway::runtime::code::{
    in_yielding_code, yielding_code_enter, yielding_code_leave, CodeRange,
};
use tramway::runtime::grace::{GraceConfig, GraceDomain};
use tramway::runtime::{yield_now, Event, Runtime};
use tramway_harness::bench::rounds::{cell, loadavg, machine_before, median, RoundArgs as Opts};

const USAGE: &str = "\
usage: cargo bench --bench yielding -- [--quick] [--rounds N] [marks|park|gp]

  --quick      3 rounds, shorter runs (CI smoke)
  --rounds N   rounds (default 7)
  marks | park | gp   run one scenario only
";

fn main() -> ExitCode {
    let opts = match Opts::from_env(
        "yielding",
        USAGE,
        &["marks", "park", "gp"],
        Opts::defaults(Duration::ZERO),
    ) {
        Ok(o) => o,
        Err(code) => return code,
    };
    println!("yielding: {} rounds; {}", opts.rounds, machine_before());
    if opts.wants("marks") {
        marks(&opts);
    }
    if opts.wants("park") {
        park(&opts);
    }
    if opts.wants("gp") {
        gp(&opts);
    }
    println!("load after: {}", loadavg());
    ExitCode::SUCCESS
}

/// Runs `f` on a task of a one-worker runtime and returns its result.
fn in_task<T: Send + 'static>(rt: &Runtime, f: impl FnOnce() -> T + Send + 'static) -> T {
    rt.spawn(f).expect("spawn").join().expect("the bench task")
}

fn marks(opts: &Opts) {
    let rt = Runtime::builder().workers(1).build().expect("runtime");
    let iters: u64 = if opts.quick { 2_000_000 } else { 20_000_000 };
    let names = [
        "empty loop (baseline)",
        "in_yielding_code(|| ())",
        "C-ABI enter + leave",
    ];
    let mut ns: [Vec<f64>; 3] = Default::default();
    for round in 0..opts.rounds {
        for k in (0..3).map(|i| (i + round) % 3) {
            let t = in_task(&rt, move || {
                let start = Instant::now();
                for i in 0..iters {
                    match k {
                        0 => {
                            black_box(i);
                        }
                        1 => in_yielding_code(|| {
                            black_box(i);
                        }),
                        _ => {
                            yielding_code_enter();
                            black_box(i);
                            yielding_code_leave();
                        }
                    }
                }
                start.elapsed()
            });
            ns[k].push(t.as_secs_f64() * 1e9 / iters as f64);
        }
    }
    println!("\nmarks: ns per iteration in a task ({iters} iterations per round)");
    println!("{:<28} {:>22} {:>14}", "", "ns/iter", "minus baseline");
    for (k, name) in names.iter().enumerate() {
        println!(
            "{:<28} {:>22} {:>14.2}",
            name,
            cell(&ns[k], 2),
            median(&ns[k]) - median(&ns[0])
        );
    }
}

/// Recurses `frames` times with a 256-byte frame each, then runs `f` at that depth.
#[inline(never)]
fn at_depth(frames: usize, f: &mut dyn FnMut()) {
    let pad = black_box([0u8; 256]);
    if frames == 0 {
        f();
    } else {
        at_depth(frames - 1, f);
    }
    black_box(&pad);
}

fn park(opts: &Opts) {
    // A registered range, as a Jit registers its reservation, so that the scan has something
    // to look for (an empty table short-cuts it).
    let _range = CodeRange::register(PARKED_IN.as_ptr() as usize, PARKED_IN.len()).expect("range");
    let rt = Runtime::builder().workers(1).build().expect("runtime");
    let yields: u32 = if opts.quick { 20_000 } else { 200_000 };
    let depths = [0usize, 16, 64, 256]; // x 256 bytes: 0, 4 KiB, 16 KiB, 64 KiB
    println!("\npark: ns per yield_now() of a task alone on its worker ({yields} per round)");
    println!(
        "{:<12} {:>22} {:>22} {:>12}",
        "stack", "outside (no scan)", "inside (scan)", "scan cost"
    );
    for frames in depths {
        let mut v: [Vec<f64>; 2] = Default::default();
        for round in 0..opts.rounds {
            for inside in [round % 2 == 0, round % 2 != 0] {
                let t = in_task(&rt, move || {
                    let mut elapsed = Duration::ZERO;
                    at_depth(frames, &mut || {
                        let start = Instant::now();
                        if inside {
                            in_yielding_code(|| (0..yields).for_each(|_| yield_now()));
                        } else {
                            (0..yields).for_each(|_| yield_now());
                        }
                        elapsed = start.elapsed();
                    });
                    elapsed
                });
                v[usize::from(inside)].push(t.as_secs_f64() * 1e9 / f64::from(yields));
            }
        }
        println!(
            "{:<12} {:>22} {:>22} {:>12.0}",
            format!("{} KiB", frames * 256 / 1024),
            cell(&v[0], 0),
            cell(&v[1], 0),
            median(&v[1]) - median(&v[0])
        );
    }
}

/// A stand-in for JIT code the parked tasks point into (registered, never freed).
static PARKED_IN: [u8; 4096] = [0; 4096];
/// What the measured callbacks free (registered; no parked task points into it).
static RETIRED: [u8; 64] = [0; 64];

fn gp(opts: &Opts) {
    let base = PARKED_IN.as_ptr() as usize;
    let _parked_range = CodeRange::register(base, PARKED_IN.len()).expect("register a range");
    let retired = RETIRED.as_ptr() as usize..RETIRED.as_ptr() as usize + RETIRED.len();
    let _retired_range = CodeRange::register(retired.start, RETIRED.len()).expect("register");
    let samples: u32 = if opts.quick { 100 } else { 500 };
    println!(
        "\ngp: N tasks parked on 2 workers; synchronize() and call_for_code -> callback (us, \
         median of {samples} per round)"
    );
    println!(
        "{:<26} {:>20} {:>20} {:>10}",
        "parked tasks", "synchronize", "call_for_code->run", "scans"
    );
    for n in [10usize, 1000] {
        let mut sync: [Vec<f64>; 2] = Default::default();
        let mut cb: [Vec<f64>; 2] = Default::default();
        let mut scans = [0u64; 2];
        for round in 0..opts.rounds {
            for inside in [round % 2 == 0, round % 2 != 0] {
                let rt = Runtime::builder().workers(2).build().expect("runtime");
                let domain =
                    GraceDomain::new(&rt, GraceConfig::default().callback_delay(Duration::ZERO))
                        .expect("domain");
                let release = Arc::new(Event::new());
                let parked = Arc::new(AtomicUsize::new(0));
                let tasks: Vec<_> = (0..n)
                    .map(|i| {
                        let (release, parked) = (release.clone(), parked.clone());
                        rt.spawn(move || {
                            // A word into the parked-in range, live across the park.
                            let word = black_box(base + (i * 8) % 4096);
                            let wait = || {
                                parked.fetch_add(1, Ordering::SeqCst);
                                release.wait();
                            };
                            if inside {
                                in_yielding_code(wait);
                            } else {
                                wait();
                            }
                            black_box(word)
                        })
                        .expect("spawn")
                    })
                    .collect();
                while parked.load(Ordering::SeqCst) < n {
                    std::thread::sleep(Duration::from_millis(1));
                }
                let mut s = Vec::new();
                let mut c = Vec::new();
                for _ in 0..samples {
                    let t = Instant::now();
                    domain.synchronize();
                    s.push(t.elapsed().as_secs_f64() * 1e6);
                    let done = Arc::new(AtomicBool::new(false));
                    let d = done.clone();
                    let t = Instant::now();
                    domain.call_for_code(std::slice::from_ref(&retired), move || {
                        d.store(true, Ordering::Release)
                    });
                    domain.barrier();
                    assert!(
                        done.load(Ordering::Acquire),
                        "the unrelated free was held back"
                    );
                    c.push(t.elapsed().as_secs_f64() * 1e6);
                }
                scans[usize::from(inside)] = rt.stats().stack_scans;
                release.notify_all();
                for t in tasks {
                    t.join().expect("a parked task");
                }
                sync[usize::from(inside)].push(median(&s));
                cb[usize::from(inside)].push(median(&c));
            }
        }
        for inside in [false, true] {
            println!(
                "{:<26} {:>20} {:>20} {:>10}",
                format!(
                    "{n} {}",
                    if inside {
                        "inside yielding code"
                    } else {
                        "outside"
                    }
                ),
                cell(&sync[usize::from(inside)], 1),
                cell(&cb[usize::from(inside)], 1),
                scans[usize::from(inside)]
            );
        }
    }
}
