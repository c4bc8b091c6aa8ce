//! Probe teardown: detaching N probes one at a time (a grace period each) vs in one batch.
//!
//! ```text
//! cargo run --release --example probe-teardown [-- --sites S --readers R --sequential-max N]
//! ```
//!
//! For N in {100, 1000, 10000} probes over S sites (default 1000) while R reader tasks
//! (default 2) call the sites, prints (a) sequential teardown, (b) batched teardown, both
//! until every old trampoline is reclaimed, and the ratio (a)/(b). Sequential runs above
//! `--sequential-max` probes (default 10000: all measured) are *extrapolated* from the largest
//! measured per-probe cost and marked as such.

use std::time::Duration;

use tramway_harness::probe_teardown::Scenario;

struct Args {
    sites: usize,
    readers: usize,
    sequential_max: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        sites: 1000,
        readers: 2,
        sequential_max: 10_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| -> Result<usize, String> {
            let v = it.next().ok_or(format!("{name} needs a value"))?;
            v.parse()
                .map_err(|_| format!("{name}: expected a number, got {v:?}"))
        };
        match flag.as_str() {
            "--sites" => args.sites = value("--sites")?.max(1),
            "--readers" => args.readers = value("--readers")?,
            "--sequential-max" => args.sequential_max = value("--sequential-max")?,
            "-h" | "--help" => {
                return Err("usage: probe-teardown [--sites S] [--readers R] \
                            [--sequential-max N]"
                    .into())
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(args)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let s = Scenario::new(args.sites, args.readers);
    println!(
        "probe teardown: {} sites, {} reader tasks, 2 workers, Tasks grace periods",
        args.sites, args.readers
    );
    println!(
        "{:>6} | {:>16} {:>8} {:>10} | {:>12} {:>12} {:>5} | {:>8}",
        "N", "(a) sequential", "GPs", "per probe", "(b) batched", "(b) detach", "GPs", "(a)/(b)"
    );
    let mut per_probe = None;
    for n in [100, 1_000, 10_000] {
        let (a, a_gps, a_note) = if n <= args.sequential_max {
            let probes = s.attach(n);
            let t = s.detach_sequential(&probes);
            per_probe = Some(t.elapsed / n as u32);
            (t.elapsed, t.gps.to_string(), "")
        } else {
            let Some(pp) = per_probe else {
                println!(
                    "{n:>6} | (sequential not measured: --sequential-max {})",
                    args.sequential_max
                );
                continue;
            };
            (pp * n as u32, "-".into(), " (extrapolated)")
        };
        let probes = s.attach(n);
        let b = s.detach_batched(&probes);
        println!(
            "{n:>6} | {:>13.1} ms {a_gps:>8} {:>7.1} us | {:>9.2} ms {:>9.2} ms {:>5} | {:>7.0}x{a_note}",
            ms(a),
            a.as_secs_f64() * 1e6 / n as f64,
            ms(b.elapsed),
            ms(b.detach),
            b.gps,
            a.as_secs_f64() / b.elapsed.as_secs_f64(),
        );
    }
    let calls = s.calls.load(std::sync::atomic::Ordering::Relaxed);
    let hits = s.hits.load(std::sync::atomic::Ordering::Relaxed);
    println!("reader calls during the run: {calls}, hook invocations: {hits}");
    s.stop();
}
