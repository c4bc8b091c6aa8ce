//! Reporting for the interleaved-round benches (`benches/preempt.rs`, `yielding.rs`,
//! `tracing_cost.rs`, `retire_path.rs`, `urcu_compare/`): each setting is measured once per
//! round, settings alternate within a round, and a cell is the median of the rounds with their
//! range, printed beside the load average; and the CPU-time clock those benches read.

/// The median of `v` (the upper one for an even count; NaN when empty).
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// `median [min-max]` of `v`, with `digits` decimals.
pub fn cell(v: &[f64], digits: usize) -> String {
    let (lo, hi) = v
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        });
    format!("{:.d$} [{:.d$}-{:.d$}]", median(v), lo, hi, d = digits)
}

/// `nproc N; load before: L`, the machine facts a bench prints before it measures.
pub fn machine_before() -> String {
    format!(
        "nproc {}; load before: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg()
    )
}

/// The 1, 5 and 15 minute load averages (`/proc/loadavg`), or "unknown".
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// `clock`'s time in ns (`CLOCK_THREAD_CPUTIME_ID` for the calling thread's CPU time, or a
/// clock from `pthread_getcpuclockid` for another thread's).
pub fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; a clock that is not valid (a thread that exited)
    // only makes the call fail, which is checked.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime({clock}) failed");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The command line of an interleaved-round bench: `--quick` (CI smoke; an explicit
/// `--rounds` or `--round-ms` overrides its values), `--rounds N`,
/// `--round-ms MS`, `-h`/`--help`, and at most one scenario name from the bench's list.
#[derive(Clone, Debug)]
pub struct RoundArgs {
    /// Rounds per setting.
    pub rounds: usize,
    /// Measured time per round and setting (for benches whose rounds are timed).
    pub round: std::time::Duration,
    /// `--quick` was given: shorter runs.
    pub quick: bool,
    /// The one scenario to run, if one was named.
    pub only: Option<String>,
}

impl RoundArgs {
    /// The defaults: 7 rounds of `round` (3 rounds of `round / 3` with `--quick`); a zero
    /// `round` for a bench whose rounds are counted, not timed (it refuses `--round-ms`).
    pub fn defaults(round: std::time::Duration) -> RoundArgs {
        RoundArgs {
            rounds: 7,
            round,
            quick: false,
            only: None,
        }
    }

    /// Whether scenario `id` runs (every scenario when none was named).
    pub fn wants(&self, id: &str) -> bool {
        self.only.as_deref().is_none_or(|o| o == id)
    }

    /// Parses the process's arguments for bench `name`. Under `cargo test` (no `--bench`
    /// argument) it prints that it does not measure; for `--help` it prints `usage`; for a bad
    /// argument it prints the reason and `usage`. In those cases it returns the exit code the
    /// bench should return (success, success, 2).
    pub fn from_env(
        name: &str,
        usage: &str,
        scenarios: &[&str],
        defaults: RoundArgs,
    ) -> Result<RoundArgs, std::process::ExitCode> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        if !args.iter().any(|a| a == "--bench") {
            println!("{name}: not measuring under cargo test; run `cargo bench --bench {name}`");
            return Err(std::process::ExitCode::SUCCESS);
        }
        match Self::parse(&args, scenarios, defaults) {
            Ok(Some(o)) => Ok(o),
            Ok(None) => {
                print!("{usage}");
                Err(std::process::ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{name}: {e}\n{usage}");
                Err(std::process::ExitCode::from(2))
            }
        }
    }

    /// Parses `args`; `Ok(None)` for `--help`.
    pub fn parse(
        args: &[String],
        scenarios: &[&str],
        mut o: RoundArgs,
    ) -> Result<Option<RoundArgs>, String> {
        // An explicit `--rounds` or `--round-ms` wins over `--quick`'s, in either order.
        let (mut rounds, mut round) = (None, None);
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--bench" => {}
                "--help" | "-h" => return Ok(None),
                "--quick" => o.quick = true,
                "--round-ms" if o.round.is_zero() => {
                    return Err(
                        "this bench's rounds are not timed: --round-ms does not apply".into(),
                    )
                }
                "--rounds" | "--round-ms" => {
                    let v: u64 = it
                        .next()
                        .and_then(|v| v.parse().ok())
                        .filter(|v| *v > 0)
                        .ok_or_else(|| format!("{a} needs a positive integer"))?;
                    if a == "--rounds" {
                        rounds = Some(v as usize);
                    } else {
                        round = Some(std::time::Duration::from_millis(v));
                    }
                }
                s if scenarios.contains(&s) => o.only = Some(s.to_string()),
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        if o.quick {
            o.rounds = 3;
            o.round /= 3;
        }
        o.rounds = rounds.unwrap_or(o.rounds);
        o.round = round.unwrap_or(o.round);
        Ok(Some(o))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn arguments() {
        use super::RoundArgs;
        use std::time::Duration;
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let d = RoundArgs::defaults(Duration::from_millis(300));
        let o = RoundArgs::parse(&args(&["--bench", "--quick", "gp"]), &["gp"], d.clone())
            .unwrap()
            .unwrap();
        assert!(o.quick && o.rounds == 3 && o.round == Duration::from_millis(100));
        assert!(o.wants("gp") && !o.wants("spin"));
        let o = RoundArgs::parse(&args(&["--rounds", "5", "--quick"]), &[], d.clone())
            .unwrap()
            .unwrap();
        assert!(o.quick && o.rounds == 5 && o.round == Duration::from_millis(100));
        let o = RoundArgs::parse(&args(&["--quick", "--round-ms", "50"]), &[], d.clone())
            .unwrap()
            .unwrap();
        assert!(o.quick && o.rounds == 3 && o.round == Duration::from_millis(50));
        assert!(RoundArgs::parse(&args(&["--rounds", "0"]), &[], d.clone()).is_err());
        assert!(RoundArgs::parse(&args(&["spin"]), &["gp"], d.clone()).is_err());
        assert!(RoundArgs::parse(&args(&["-h"]), &[], d).unwrap().is_none());
        let counted = RoundArgs::defaults(Duration::ZERO);
        assert!(RoundArgs::parse(&args(&["--round-ms", "5"]), &[], counted).is_err());
    }

    #[test]
    fn median_and_cell() {
        assert_eq!(super::median(&[3.0, 1.0, 2.0]), 2.0);
        assert!(super::median(&[]).is_nan());
        assert_eq!(super::cell(&[3.0, 1.0, 2.0], 1), "2.0 [1.0-3.0]");
    }
}
