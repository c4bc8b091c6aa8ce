//! The updater's own cost of one retire: emit a trampoline (the `urcu_compare` body), swap
//! it into a site, drop what the swap returned. This is the loop behind the retire rows of
//! `benches/urcu_compare`, without liburcu and without timing clocks inside it, so that a
//! profiler or an instruction counter sees only the retire path:
//!
//! ```sh
//! cargo bench --bench retire_path                        # both scenarios, 7 rounds
//! cargo bench --bench retire_path -- --rounds 3 alone
//! # instructions per retire (repeatable, unlike time on a shared host):
//! valgrind --tool=callgrind target/release/deps/retire_path-<hash> --bench --quick alone
//! ```
//!
//! Valgrind runs one thread at a time, so under it the grace-period driver runs rarely: its
//! batches are larger and the allocator maps fresh chunks more often than in a native run.
//! Its counts compare two builds run the same way, not a native profile.
//!
//! # Scenarios
//! - `alone`: no reader; the grace-period driver frees the batches.
//! - `reader`: one registered OS thread calls the site in a loop (K=100 calls per quiescent
//!   state), as `urcu_compare`'s `retire` rows do.
//!
//! # Method
//! A round is [`RETIRES`] retires (a tenth with `--quick`) followed by `Jit::barrier`; the
//! cells are the medians of the rounds with their range: wall time per retire, and the
//! updater thread's CPU time per retire (`CLOCK_THREAD_CPUTIME_ID`). Nothing is asserted
//! about time. Before and after, it prints the load average and the host's cross-core
//! line-transfer time (`tramway_harness::bench::line_transfer`; not with `--quick`). Under
//! `cargo test` (no `--bench` argument) it prints that it does not measure.

use std::hint::black_box;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tramway::jit::SiteKind;
use tramway_harness::bench::line_transfer;
use tramway_harness::bench::rounds::{cell, clock_ns, loadavg, machine_before, RoundArgs};
use tramway_harness::bench::workload::emit_body;

const USAGE: &str = "\
usage: cargo bench --bench retire_path -- [--quick] [--rounds N] [alone|reader]

  --quick      a tenth of the retires per round (3 rounds)
  --rounds N   rounds (default 7)
";

/// Retires per round.
const RETIRES: u64 = 1_000_000;
/// Calls per quiescent state of the reader.
const K: u64 = 100;

type BodyFn = extern "C" fn(u64) -> u64;

/// Runs the rounds of one scenario; returns (wall ns per retire, updater CPU ns per retire)
/// per round.
fn run(reader: bool, rounds: usize, retires: u64) -> (Vec<f64>, Vec<f64>) {
    let tw = tramway::Builder::new()
        .workers(1)
        .build()
        .expect("build tramway");
    let jit = &tw.jit;
    let site = jit
        .site(SiteKind::Indirect, &emit_body(jit, 0).expect("emit a body"))
        .expect("a site");
    let stop = AtomicBool::new(false);
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    std::thread::scope(|s| {
        if reader {
            s.spawn(|| {
                let reg = tw.runtime.register_thread().expect("register the reader");
                // SAFETY: every trampoline installed in `site` is an `emit_body` body, which
                // implements `BodyFn`; this thread calls it only while registered and online
                // (it never goes offline), and `site` outlives the scope.
                let f: BodyFn = unsafe { site.as_fn() };
                let mut acc = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..K {
                        acc = f(acc);
                    }
                    reg.quiescent();
                }
                black_box(acc);
            });
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut gen = 1u64;
        for _ in 0..rounds {
            let (start, cpu_start) = (Instant::now(), clock_ns(libc::CLOCK_THREAD_CPUTIME_ID));
            for _ in 0..retires {
                let fresh = emit_body(jit, gen).expect("emit a body");
                gen += 1;
                drop(site.swap(&fresh).expect("swap"));
            }
            jit.barrier();
            wall.push(start.elapsed().as_nanos() as f64 / retires as f64);
            cpu.push((clock_ns(libc::CLOCK_THREAD_CPUTIME_ID) - cpu_start) as f64 / retires as f64);
        }
        stop.store(true, Ordering::Relaxed);
    });
    drop(site);
    jit.barrier();
    (wall, cpu)
}

fn main() -> ExitCode {
    let opts = match RoundArgs::from_env(
        "retire_path",
        USAGE,
        &["alone", "reader"],
        RoundArgs::defaults(Duration::ZERO),
    ) {
        Ok(o) => o,
        Err(code) => return code,
    };
    let retires = if opts.quick { RETIRES / 10 } else { RETIRES };
    // The probe spins two threads against each other: under valgrind (which runs one thread
    // at a time, and is why `--quick` exists) it would only add noise to the counts.
    let host = || match opts.quick {
        true => String::from("cross-core line transfer: not measured (--quick)"),
        false => line_transfer::describe(),
    };
    println!("retire_path: {}; {}", machine_before(), host());
    println!(
        "{} rounds of {retires} retires (emit + swap + drop) and a barrier; cell: median [min-max]\n",
        opts.rounds
    );
    println!("| scenario | wall ns per retire | updater CPU ns per retire |");
    println!("|---|---|---|");
    for (id, reader) in [("alone", false), ("reader", true)] {
        if !opts.wants(id) {
            continue;
        }
        let (wall, cpu) = run(reader, opts.rounds, retires);
        println!("| {id} | {} | {} |", cell(&wall, 1), cell(&cpu, 1));
    }
    println!("\nload after: {}; {}", loadavg(), host());
    ExitCode::SUCCESS
}
