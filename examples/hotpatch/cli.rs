//! Command-line flags. Hand-rolled: every bad flag or value is a message, never a panic.

use std::path::PathBuf;
use std::time::Duration;

use tramway::jit::SiteKind;
use tramway::runtime::grace::{Flavor, DEFAULT_CALLBACK_DELAY};

/// Printed for `--help` (stdout) and after a bad flag (stderr).
pub const USAGE: &str = "\
usage: hotpatch [--seconds N] [--workers N] [--tasks N] [--sites N] [--swap-interval T]
                [--flavor tasks|rude] [--site-kind indirect|direct] [--callback-delay T]
                [--preempt T] [--csv FILE] [--plot FILE.svg] [--perf-map] [--jitdump DIR]
                [--explain]

A live service: green-thread tasks call JIT'd patch sites while a patcher thread re-JITs them and
attaches/detaches tracing probes; retired code is unmapped after RCU Tasks-style grace periods.
Once a second it prints a status line (`--explain` says what every column means).

  --seconds N          how long to run, may be fractional (default 10)
  --workers N          runtime worker threads, 1..=1024 (default: available cores)
  --tasks N            green threads calling the sites, 1..=20000 (default 1000)
  --sites N            patch sites (services), 1..=16 (default 4)
  --swap-interval T    time between swaps: milliseconds (`2`, `0.25`) or with a unit
                       (`500us`, `2ms`, `1s`); 0 = back to back; at most 10s (default 2)
  --flavor F           grace periods: `tasks` (default) or `rude` (force every worker through
                       its scheduler; correct only while every switch is voluntary)
  --site-kind K        `indirect` (default; jmp through a data slot) or `direct` (patched jmp rel32)
  --callback-delay T   how long a retired version's free callback may wait for others to batch
                       with it before its grace period starts (GraceConfig::callback_delay),
                       same units as --swap-interval, at most 1s (default 1ms)
  --preempt T          preempt tasks inside JIT code every T (e.g. `100us`, `1ms`; at least 10us,
                       at most 1s): every implementation then spins a few microseconds in its
                       JIT code, inside a preemptible scope, and the summary counts preemptions.
                       With `--flavor rude` the run is a demonstration of the failure that RCU
                       Tasks exists for: it runs in a child process, which is expected to crash
                       or to see a stale call, and the parent reports that outcome
  --csv FILE           also write the per-second series as CSV to FILE
  --plot FILE.svg      also draw calls/s, swaps/s and GP latency over time as an SVG chart
  --perf-map           name JIT code for `perf report` in /tmp/perf-<pid>.map
  --jitdump DIR        write DIR/jit-<pid>.dump for `perf record -k mono` + `perf inject --jit`
                       (names reused code slots correctly; see the README's profiling section)
  --explain            print what each status-line column and summary row means, and exit
  -h, --help           this message

Exit status: 0 if every call returned a value of a valid version, the counters balanced and all
code was unmapped at the end; 1 if a check failed; 2 for bad flags or an output file that cannot
be created.";

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Run time.
    pub duration: Duration,
    /// Worker threads.
    pub workers: usize,
    /// Caller tasks.
    pub tasks: usize,
    /// Patch sites.
    pub sites: usize,
    /// Time between two swaps.
    pub swap_interval: Duration,
    /// Grace-period flavor.
    pub flavor: Flavor,
    /// Site kind.
    pub site_kind: SiteKind,
    /// `GraceConfig::callback_delay` of the demo's grace domain.
    pub callback_delay: Duration,
    /// Preemption quantum (`Builder::preempt`), or none.
    pub preempt: Option<Duration>,
    /// Where to write the per-second series as CSV.
    pub csv: Option<PathBuf>,
    /// Write the perf map (`JitBuilder::perf_map`).
    pub perf_map: bool,
    /// Where to write the jitdump file (`JitBuilder::jitdump`).
    pub jitdump: Option<PathBuf>,
    /// Where to write the SVG chart.
    pub plot: Option<PathBuf>,
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    /// Run the demo.
    Run(Options),
    /// `--help`: print [`USAGE`].
    Help,
    /// `--explain`: print what the columns mean.
    Explain,
}

/// Parses the flags (without the program name).
pub fn parse(args: &[String]) -> Result<Command, String> {
    let mut o = Options {
        duration: Duration::from_secs(10),
        workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
        tasks: 1000,
        sites: 4,
        swap_interval: Duration::from_millis(2),
        flavor: Flavor::Tasks,
        site_kind: SiteKind::Indirect,
        callback_delay: DEFAULT_CALLBACK_DELAY,
        preempt: None,
        csv: None,
        perf_map: false,
        jitdump: None,
        plot: None,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(Command::Help);
        }
        if arg == "--explain" {
            return Ok(Command::Explain);
        }
        if arg == "--perf-map" {
            o.perf_map = true;
            continue;
        }
        // Both `--flag value` and `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v)),
            _ => (arg.as_str(), None),
        };
        let known = [
            "--seconds",
            "--workers",
            "--tasks",
            "--sites",
            "--swap-interval",
            "--flavor",
            "--site-kind",
            "--callback-delay",
            "--preempt",
            "--jitdump",
            "--csv",
            "--plot",
        ];
        if !known.contains(&flag) {
            return Err(format!("unknown argument `{arg}`"));
        }
        let value = match inline {
            Some(v) => v,
            None => it.next().ok_or_else(|| format!("{flag} needs a value"))?,
        };
        match flag {
            "--seconds" => o.duration = seconds(value)?,
            "--workers" => o.workers = integer(flag, value, 1, 1024)?,
            "--tasks" => o.tasks = integer(flag, value, 1, 20_000)?,
            "--sites" => o.sites = integer(flag, value, 1, 16)?,
            "--swap-interval" => o.swap_interval = duration(flag, value, 10.0)?,
            "--callback-delay" => o.callback_delay = duration(flag, value, 1.0)?,
            "--preempt" => {
                let q = duration(flag, value, 1.0)?;
                if q < Duration::from_micros(10) {
                    return Err(format!("--preempt: {value} is shorter than 10us"));
                }
                o.preempt = Some(q);
            }
            "--csv" => o.csv = Some(path(flag, value)?),
            "--jitdump" => o.jitdump = Some(path(flag, value)?),
            "--plot" => o.plot = Some(path(flag, value)?),
            "--flavor" => {
                o.flavor = match value {
                    "tasks" => Flavor::Tasks,
                    "rude" => Flavor::Rude,
                    _ => return Err(format!("--flavor: `{value}` is not `tasks` or `rude`")),
                }
            }
            _ => {
                o.site_kind = match value {
                    "indirect" => SiteKind::Indirect,
                    "direct" => SiteKind::Direct,
                    _ => {
                        return Err(format!(
                            "--site-kind: `{value}` is not `indirect` or `direct`"
                        ))
                    }
                }
            }
        }
    }
    Ok(Command::Run(o))
}

fn path(flag: &str, s: &str) -> Result<PathBuf, String> {
    if s.is_empty() {
        return Err(format!("{flag} needs a file name"));
    }
    Ok(PathBuf::from(s))
}

fn integer(flag: &str, s: &str, min: usize, max: usize) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        Ok(_) => Err(format!("{flag}: {s} is not in {min}..={max}")),
        Err(_) => Err(format!("{flag}: `{s}` is not a whole number")),
    }
}

fn seconds(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 86_400.0 => Ok(Duration::from_secs_f64(v)),
        Ok(_) => Err(format!("--seconds: {s} is not in (0, 86400]")),
        Err(_) => Err(format!("--seconds: `{s}` is not a number")),
    }
}

/// A duration in `0..=max_s` seconds: milliseconds without a unit, or with `us`/`µs`/`ms`/`s`.
fn duration(flag: &str, s: &str, max_s: f64) -> Result<Duration, String> {
    let (number, scale) = [("us", 1e-6), ("µs", 1e-6), ("ms", 1e-3), ("s", 1.0)]
        .iter()
        .find_map(|&(unit, scale)| s.strip_suffix(unit).map(|n| (n, scale)))
        .unwrap_or((s, 1e-3));
    match number.trim().parse::<f64>() {
        Ok(v) if (0.0..=max_s).contains(&(v * scale)) => Ok(Duration::from_secs_f64(v * scale)),
        Ok(_) => Err(format!("{flag}: {s} is not between 0 and {max_s}s")),
        Err(_) => Err(format!(
            "{flag}: `{s}` is not a duration (e.g. `2`, `0.5ms`, `500us`)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn intervals() {
        let interval = |s: &str| duration("--swap-interval", s, 10.0);
        let ms = |s: &str| interval(s).map(|d| d.as_secs_f64() * 1e3);
        assert_eq!(ms("2"), Ok(2.0));
        assert_eq!(ms("500us"), Ok(0.5));
        assert_eq!(ms("1s"), Ok(1000.0));
        assert!(interval("-1").is_err());
        assert!(interval("NaN").is_err());
        assert!(interval("fast").is_err());
        assert!(duration("--callback-delay", "2s", 1.0).is_err());
    }

    #[test]
    fn flags() {
        let Ok(Command::Run(o)) = parse(&args("--workers=3 --tasks 7 --flavor rude --csv a.csv"))
        else {
            panic!("flags rejected")
        };
        assert_eq!((o.workers, o.tasks, o.flavor), (3, 7, Flavor::Rude));
        assert_eq!(o.csv, Some(PathBuf::from("a.csv")));
        assert!(parse(&args("--workers zero")).is_err());
        assert!(parse(&args("--workers 0")).is_err());
        assert!(parse(&args("--bogus")).is_err());
        assert!(parse(&args("--seconds")).is_err());
        assert!(parse(&args("--csv=")).is_err());
        assert!(parse(&args("--preempt 1us")).is_err());
        assert!(parse(&args("--preempt 2s")).is_err());
        let Ok(Command::Run(o)) = parse(&args("--preempt 100us")) else {
            panic!("--preempt 100us")
        };
        assert_eq!(o.preempt, Some(Duration::from_micros(100)));
        assert!(matches!(parse(&args("--help")), Ok(Command::Help)));
        assert!(matches!(parse(&args("--explain")), Ok(Command::Explain)));
    }
}
