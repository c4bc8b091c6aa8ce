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
//! measured per-probe cost and marked as such. Each phase announces itself on stderr (with an
//! estimate for the long sequential runs); the table goes to stdout. Bad flags exit with 2.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use tramway_harness::probe_teardown::Scenario;

const USAGE: &str = "\
usage: probe-teardown [--sites S] [--readers R] [--sequential-max N]

Detaches N = 100, 1000 and 10000 probes spread over S probed sites while R reader tasks call
them, (a) one at a time, each followed by its own grace period and reclamation, and (b) in one
batch followed by one grace period; both until every replaced trampoline is reclaimed. Prints a
table with (a), (b) and the ratio (a)/(b). Progress goes to stderr, one line per phase.

  --sites S            probed sites, 1..=100000 (default 1000)
  --readers R          reader tasks calling the sites, 0..=64 (default 2)
  --sequential-max N   measure (a) only up to N probes and extrapolate above, from the
                       per-probe cost of the largest measured N; 0..=10000 (default 10000:
                       all measured, which takes about a minute on 2 cores)
  -h, --help           this message

Exit status: 0 when done; 2 for bad flags.";

/// The probe counts measured, in order.
const SIZES: [usize; 3] = [100, 1_000, 10_000];

#[derive(Debug)]
struct Args {
    sites: usize,
    readers: usize,
    sequential_max: usize,
}

/// `Ok(None)` for `--help`.
fn parse_args(args: &[String]) -> Result<Option<Args>, String> {
    let mut a = Args {
        sites: 1000,
        readers: 2,
        sequential_max: 10_000,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(None);
        }
        // Both `--flag value` and `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v)),
            _ => (arg.as_str(), None),
        };
        let range = match flag {
            "--sites" => 1..=100_000,
            "--readers" => 0..=64,
            "--sequential-max" => 0..=10_000,
            _ => return Err(format!("unknown argument `{arg}`")),
        };
        let value: &str = match inline {
            Some(v) => v,
            None => it.next().ok_or_else(|| format!("{flag} needs a value"))?,
        };
        let n = match value.parse::<usize>() {
            Ok(n) if range.contains(&n) => n,
            Ok(_) => {
                return Err(format!(
                    "{flag}: {value} is not in {}..={}",
                    range.start(),
                    range.end()
                ))
            }
            Err(_) => return Err(format!("{flag}: `{value}` is not a whole number")),
        };
        match flag {
            "--sites" => a.sites = n,
            "--readers" => a.readers = n,
            _ => a.sequential_max = n,
        }
    }
    Ok(Some(a))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse_args(&args) {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let synopsis = USAGE.lines().next().unwrap_or(USAGE);
            eprintln!("probe-teardown: {e}\n{synopsis}\n(--help describes every flag)");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let progress = |what: String| {
        eprintln!("[{:6.1}s] {what}", started.elapsed().as_secs_f64());
    };
    progress(format!(
        "starting {} probed sites and {} reader tasks",
        args.sites, args.readers
    ));
    let s = Scenario::new(args.sites, args.readers);
    println!(
        "probe teardown: {} sites, {} reader tasks, 2 workers, Tasks grace periods",
        args.sites, args.readers
    );
    println!(
        "(a) one detach at a time, each followed by its own grace period and reclamation;\n\
         (b) one batch, then one grace period. Both end when every old trampoline is reclaimed."
    );
    println!(
        "{:>6} | {:>16} {:>8} {:>10} | {:>12} {:>12} {:>5} | {:>8}",
        "N", "(a) sequential", "GPs", "per probe", "(b) batched", "(b) detach", "GPs", "(a)/(b)"
    );
    let mut per_probe: Option<Duration> = None;
    for n in SIZES {
        progress(format!("N={n}: attaching {n} probes in one batch"));
        let (a, a_gps, a_note) = if n <= args.sequential_max {
            let probes = s.attach(n);
            progress(match per_probe {
                Some(pp) => format!(
                    "N={n}: (a) detaching one at a time, one grace period each (about {:.1} s at \
                     {:.0} µs per probe)",
                    (pp * n as u32).as_secs_f64(),
                    pp.as_secs_f64() * 1e6
                ),
                None => format!("N={n}: (a) detaching one at a time, one grace period each"),
            });
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
        if n <= args.sequential_max {
            progress(format!("N={n}: attaching {n} probes again"));
        }
        let probes = s.attach(n);
        progress(format!("N={n}: (b) detaching all {n} in one batch"));
        let b = s.detach_batched(&probes);
        println!(
            "{n:>6} | {:>13.1} ms {a_gps:>8} {:>7.1} µs | {:>9.2} ms {:>9.2} ms {:>5} | {:>7.0}x{a_note}",
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
    progress("done".into());
    s.stop();
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::parse_args;

    fn parse(s: &str) -> Result<Option<super::Args>, String> {
        parse_args(&s.split_whitespace().map(String::from).collect::<Vec<_>>())
    }

    #[test]
    fn flags_and_their_ranges() {
        let a = parse("--sites 10 --readers=0 --sequential-max 100")
            .unwrap()
            .unwrap();
        assert_eq!((a.sites, a.readers, a.sequential_max), (10, 0, 100));
        assert!(parse("--sites 0")
            .unwrap_err()
            .contains("not in 1..=100000"));
        assert!(parse("--readers 65").is_err());
        assert!(parse("--sequential-max 10001").is_err());
        assert!(parse("--sites many").unwrap_err().contains("whole number"));
        assert!(parse("--sites").unwrap_err().contains("needs a value"));
        assert!(parse("--bogus").unwrap_err().contains("unknown argument"));
        assert!(parse("--help").unwrap().is_none());
    }
}
