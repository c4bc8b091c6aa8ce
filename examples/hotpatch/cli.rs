//! Command-line flags. Hand-rolled: every bad flag or value is a message, never a panic.

use std::time::Duration;

use tramway::jit::SiteKind;
use tramway::runtime::grace::Flavor;

/// Printed for `--help` (stdout) and after a bad flag (stderr).
pub const USAGE: &str = "\
usage: hotpatch [--seconds N] [--workers N] [--tasks N] [--sites N] [--swap-interval T]
                [--flavor tasks|rude] [--site-kind indirect|direct]

A live service: green-thread tasks call JIT'd patch sites while a patcher thread re-JITs them and
attaches/detaches tracing probes; retired code is unmapped after RCU Tasks-style grace periods.

  --seconds N         how long to run, may be fractional (default 10)
  --workers N         runtime worker threads, 1..=1024 (default: available cores)
  --tasks N           green threads calling the sites, 1..=20000 (default 1000)
  --sites N           patch sites (services), 1..=16 (default 4)
  --swap-interval T   time between swaps: milliseconds (`2`, `0.25`) or with a unit
                      (`500us`, `2ms`, `1s`); 0 = back to back; at most 10s (default 2)
  --flavor F          grace periods: `tasks` (default) or `rude` (force every worker through
                      its scheduler; correct only while every switch is voluntary)
  --site-kind K       `indirect` (default; jmp through a data slot) or `direct` (patched jmp rel32)
  -h, --help          this message

Exit status: 0 if every call returned a value of a valid version, the counters balanced and all
code was unmapped at the end; 1 if a check failed; 2 for bad flags.";

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
}

/// `Some(options)`, or `None` for `--help`.
pub fn parse(args: &[String]) -> Result<Option<Options>, String> {
    let mut o = Options {
        duration: Duration::from_secs(10),
        workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
        tasks: 1000,
        sites: 4,
        swap_interval: Duration::from_millis(2),
        flavor: Flavor::Tasks,
        site_kind: SiteKind::Indirect,
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
        let known = [
            "--seconds",
            "--workers",
            "--tasks",
            "--sites",
            "--swap-interval",
            "--flavor",
            "--site-kind",
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
            "--swap-interval" => o.swap_interval = interval(value)?,
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
    Ok(Some(o))
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

fn interval(s: &str) -> Result<Duration, String> {
    let (number, scale) = [("us", 1e-6), ("µs", 1e-6), ("ms", 1e-3), ("s", 1.0)]
        .iter()
        .find_map(|&(unit, scale)| s.strip_suffix(unit).map(|n| (n, scale)))
        .unwrap_or((s, 1e-3));
    match number.trim().parse::<f64>() {
        Ok(v) if (0.0..=10.0).contains(&(v * scale)) => Ok(Duration::from_secs_f64(v * scale)),
        Ok(_) => Err(format!("--swap-interval: {s} is not between 0 and 10s")),
        Err(_) => Err(format!(
            "--swap-interval: `{s}` is not a duration (e.g. `2`, `0.5ms`, `500us`)"
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
        let ms = |s: &str| interval(s).map(|d| d.as_secs_f64() * 1e3);
        assert_eq!(ms("2"), Ok(2.0));
        assert_eq!(ms("500us"), Ok(0.5));
        assert_eq!(ms("1s"), Ok(1000.0));
        assert!(interval("-1").is_err());
        assert!(interval("NaN").is_err());
        assert!(interval("fast").is_err());
    }

    #[test]
    fn flags() {
        let o = parse(&args("--workers=3 --tasks 7 --flavor rude"))
            .unwrap()
            .unwrap();
        assert_eq!((o.workers, o.tasks, o.flavor), (3, 7, Flavor::Rude));
        assert!(parse(&args("--workers zero")).is_err());
        assert!(parse(&args("--workers 0")).is_err());
        assert!(parse(&args("--bogus")).is_err());
        assert!(parse(&args("--seconds")).is_err());
        assert!(parse(&args("--help")).unwrap().is_none());
    }
}
