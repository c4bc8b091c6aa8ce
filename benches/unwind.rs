//! What `JitBuilder::unwind_info` costs: on the `Jit` that registers (emitting, swapping in and
//! retiring hooked trampolines), and on the rest of the process (every unwind walks libgcc's
//! registered objects).
//!
//! ```sh
//! cargo bench --bench unwind                 # 7 rounds
//! cargo bench --bench unwind -- --quick      # 3 short rounds (CI smoke)
//! ```
//!
//! # Scenarios
//! - `churn`: ns per emit + swap + retire of a forwarding trampoline with an entry hook, on a
//!   `Jit` with unwind information off and one with it on (same grace domain, one worker).
//!   With it on, each emission builds and registers an `.eh_frame` buffer and each free
//!   deregisters it (on the grace-period thread, behind the loop).
//! - `panic`: ns per caught panic 20 frames deep (`resume_unwind` inside a recursion, caught by
//!   `catch_unwind`, no panic hook) and per `Backtrace::force_capture()` (capture only, no
//!   symbol resolution) at the same depth, while N hooked trampolines are registered, for
//!   N = 0, 1000, 10 000. The unwinder looks up every frame it walks; libgcc before GCC 13
//!   first walks its list of registered objects, so the cost grows with N.
//!
//! # Method
//! Settings alternate within each round, in an order that rotates (for `panic`, the number of
//! registered trampolines is adjusted before each measurement, outside the timing); a cell is
//! the median of the rounds with their range. The load average is printed before and after.
//! Nothing here asserts a time; under `cargo test` (no `--bench` argument) it only prints what
//! it would do.

use std::backtrace::Backtrace;
use std::ffi::c_void;
use std::hint::black_box;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tramway::jit::{ForwardingSpec, Hook, HookArgs, Jit, SiteKind, Target, Trampoline};
use tramway_harness::bench::rounds::{cell, loadavg, machine_before, median, RoundArgs as Opts};

const USAGE: &str = "\
usage: cargo bench --bench unwind -- [--quick] [--rounds N] [churn|panic]

  --quick      3 rounds, shorter runs (CI smoke)
  --rounds N   rounds (default 7)
  churn | panic   run one scenario only
";

fn main() -> ExitCode {
    let opts = match Opts::from_env(
        "unwind",
        USAGE,
        &["churn", "panic"],
        Opts::defaults(Duration::ZERO),
    ) {
        Ok(o) => o,
        Err(code) => return code,
    };
    println!("unwind: {} rounds; {}", opts.rounds, machine_before());
    if opts.wants("churn") {
        churn(&opts);
    }
    if opts.wants("panic") {
        panic_cost(&opts);
    }
    println!("load after: {}", loadavg());
    ExitCode::SUCCESS
}

type Fn1 = extern "C" fn(u64) -> u64;

extern "C" fn plus_one(x: u64) -> u64 {
    x + 1
}

unsafe extern "C" fn noop_hook(_: *mut c_void, _: *const HookArgs) {}

/// A forwarding trampoline to `plus_one` with an entry hook (one FDE when unwind info is on).
fn hooked(jit: &Jit) -> Trampoline {
    let hook = Hook {
        func: noop_hook,
        user: std::ptr::null_mut(),
    };
    let spec = ForwardingSpec::new(Target::Address(plus_one as Fn1 as *const u8)).hook(hook);
    jit.forwarding(spec).expect("emit")
}

fn churn(o: &Opts) {
    let tw = tramway::Builder::new().workers(1).build().expect("tramway");
    let names = ["off", "on"];
    let jits = [false, true].map(|on| {
        Jit::builder()
            .reclaimer(Arc::new(tw.grace.clone()))
            .unwind_info(on)
            .build()
            .expect("jit")
    });
    let sites: Vec<_> = jits
        .iter()
        .map(|j| j.site(SiteKind::Indirect, &hooked(j)).expect("site"))
        .collect();
    let swaps = if o.quick { 2_000 } else { 20_000 };
    let mut ns: [Vec<f64>; 2] = Default::default();
    for round in 0..o.rounds {
        for k in (0..2).map(|i| (i + round) % 2) {
            let start = Instant::now();
            for _ in 0..swaps {
                // A retired trampoline is never installed again: emit a fresh one; the retired
                // one's free (and deregistration) is deferred behind a grace period.
                let next = hooked(&jits[k]);
                drop(sites[k].swap(&next).expect("swap"));
            }
            ns[k].push(start.elapsed().as_nanos() as f64 / swaps as f64);
            jits[k].barrier();
        }
    }
    assert_eq!(
        jits[1].stats().unwind_registered,
        1,
        "only the installed one"
    );
    println!("\nchurn: emit + swap + retire of a hooked forwarding trampoline, {swaps} per cell");
    println!(
        "{:<14} {:>26} {:>10}",
        "unwind_info", "ns per emit+swap+retire", "ratio"
    );
    for k in 0..2 {
        println!(
            "{:<14} {:>26} {:>9.3}x",
            names[k],
            cell(&ns[k], 0),
            median(&ns[k]) / median(&ns[0])
        );
    }
    println!("ratio: against `off` (medians)");
}

/// Frames between `catch_unwind` and the panic.
const DEPTH: u32 = 20;

#[inline(never)]
fn dive(depth: u32, capture: bool) -> u32 {
    if depth == 0 {
        if capture {
            drop(black_box(Backtrace::force_capture()));
            return 0;
        }
        // No panic hook runs for `resume_unwind`: the unwind alone is measured.
        std::panic::resume_unwind(Box::new(()));
    }
    black_box(dive(black_box(depth - 1), capture)) + 1
}

/// ns per call of `f`, run for about `budget` (at least 3 times) after one warm-up call.
fn per_call(budget: Duration, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    let mut n = 0u64;
    while n < 3 || start.elapsed() < budget {
        f();
        n += 1;
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

fn panic_cost(o: &Opts) {
    let counts = [0usize, 1_000, 10_000];
    let budget = Duration::from_millis(if o.quick { 20 } else { 100 });
    let jit = Jit::builder().unwind_info(true).build().expect("jit");
    // Never installed: dropping one frees (and deregisters) it at once.
    let mut held: Vec<Trampoline> = Vec::new();
    let mut panic_ns: [Vec<f64>; 3] = Default::default();
    let mut capture_ns: [Vec<f64>; 3] = Default::default();
    for round in 0..o.rounds {
        for k in (0..3).map(|i| (i + round) % 3) {
            held.truncate(counts[k]);
            while held.len() < counts[k] {
                held.push(hooked(&jit));
            }
            assert_eq!(jit.stats().unwind_registered, counts[k] as u64);
            panic_ns[k].push(per_call(budget, || {
                let r = std::panic::catch_unwind(|| dive(DEPTH, false));
                assert!(black_box(r).is_err());
            }));
            capture_ns[k].push(per_call(budget, || {
                black_box(dive(DEPTH, true));
            }));
        }
    }
    drop(held);
    println!(
        "\npanic: a caught panic / a backtrace capture {DEPTH} frames deep, N hooked \
         trampolines registered"
    );
    println!(
        "{:<10} {:>24} {:>9} {:>24} {:>9}",
        "N", "ns per caught panic", "ratio", "ns per capture", "ratio"
    );
    for k in 0..3 {
        println!(
            "{:<10} {:>24} {:>8.2}x {:>24} {:>8.2}x",
            counts[k],
            cell(&panic_ns[k], 0),
            median(&panic_ns[k]) / median(&panic_ns[0]),
            cell(&capture_ns[k], 0),
            median(&capture_ns[k]) / median(&capture_ns[0]),
        );
    }
    println!("ratios: against N = 0 (medians)");
}
