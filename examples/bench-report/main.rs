//! `bench-report`: the strategy comparison, side by side in one run, as a markdown table.
//!
//! For every (workers, tasks per worker, swap rate) cell, each strategy of
//! `tramway_harness::bench::workload` runs the same workload (caller tasks calling a JIT'd body
//! in bursts, yielding between bursts, while a patcher swaps the code); the floors
//! (`fn-ptr`, `direct`) run once per (workers, tasks) at swap rate 0. Strategies of a cell
//! are interleaved round by round (with a rotating order), so slow drift of a shared
//! machine hits them alike; each figure is the median over rounds.
//!
//! ```text
//! cargo run --release --example bench-report -- [--quick] [--csv PATH] [...]
//! ```
//! Run with `--help` for every flag. Timing targets are reported, never asserted.

mod report;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use tramway_harness::bench::workload::{run_cell, CellConfig, Strategy};

use report::{Cell, Row};

const USAGE: &str = "\
usage: bench-report [options]

Runs the reclamation-strategy comparison and prints a markdown table.

options:
  --quick               CI smoke run: 1 round, 20 ms warm-up, 100 ms per cell
  --csv PATH            also write every row as CSV to PATH
  --rounds N            rounds per cell, interleaved across strategies (default 3)
  --warmup-ms N         warm-up before each measurement (default 50)
  --measure-ms N        measurement window per round (default 200)
  --burst N             calls between yields (default 256)
  --workers LIST        runtime workers, e.g. 1,2 (default 1,2)
  --tasks LIST          caller tasks per worker (default 1,2,4)
  --rates LIST          swaps per second, k/M suffixes allowed (default 0,1k,100k)
  --strategies LIST     subset of leak,epoch-pin,refcount,rude,tasks,fn-ptr,direct
  -h, --help            this text
";

/// Parsed command line.
struct Options {
    csv: Option<String>,
    rounds: usize,
    warmup: Duration,
    measure: Duration,
    burst: u32,
    workers: Vec<usize>,
    tasks: Vec<usize>,
    rates: Vec<u64>,
    strategies: Vec<Strategy>,
}

fn parse_count(s: &str) -> Option<u64> {
    let (digits, mult) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 1_000),
        b'M' => (&s[..s.len() - 1], 1_000_000),
        _ => (s, 1),
    };
    digits.parse::<u64>().ok()?.checked_mul(mult)
}

fn parse_list<T>(s: &str, f: impl Fn(&str) -> Option<T>) -> Option<Vec<T>> {
    let v: Option<Vec<T>> = s.split(',').map(|x| f(x.trim())).collect();
    v.filter(|v| !v.is_empty())
}

fn parse_args(args: &[String]) -> Result<Option<Options>, String> {
    let mut o = Options {
        csv: None,
        rounds: 3,
        warmup: Duration::from_millis(50),
        measure: Duration::from_millis(200),
        burst: 256,
        workers: vec![1, 2],
        tasks: vec![1, 2, 4],
        rates: vec![0, 1_000, 100_000],
        strategies: Strategy::ALL.to_vec(),
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if matches!(arg.as_str(), "-h" | "--help") {
            return Ok(None);
        }
        // Both `--flag value` and `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v)),
            _ => (arg.as_str(), None),
        };
        if flag == "--quick" && inline.is_none() {
            o.rounds = 1;
            o.warmup = Duration::from_millis(20);
            o.measure = Duration::from_millis(100);
            continue;
        }
        const VALUED: [&str; 9] = [
            "--csv",
            "--rounds",
            "--warmup-ms",
            "--measure-ms",
            "--burst",
            "--workers",
            "--tasks",
            "--rates",
            "--strategies",
        ];
        if !VALUED.contains(&flag) {
            return Err(format!("unknown flag `{arg}`"));
        }
        let value = match inline {
            Some(v) => v,
            None => it
                .next()
                .ok_or_else(|| format!("{flag} needs a value"))?
                .as_str(),
        };
        // Why a value is refused, per flag.
        let expected = match flag {
            "--rounds" => "a number in 1..=100".to_string(),
            "--warmup-ms" => "a whole number of milliseconds".to_string(),
            "--measure-ms" => "milliseconds in 1..=60000".to_string(),
            "--burst" => "a number of calls in 1..=1048576".to_string(),
            "--workers" => "a comma-separated list of numbers in 1..=64".to_string(),
            "--tasks" => "a comma-separated list of numbers in 1..=1024".to_string(),
            "--rates" => {
                "a comma-separated list of swap rates in 0..=10M (k/M suffixes)".to_string()
            }
            "--strategies" => format!(
                "a comma-separated subset of {}",
                Strategy::ALL.map(|s| s.name()).join(",")
            ),
            _ => "a value".to_string(),
        };
        let bad = || format!("{flag}: `{value}` is not {expected}");
        let small = |max: u64| {
            move |x: &str| {
                parse_count(x)
                    .filter(|&n| (1..=max).contains(&n))
                    .map(|n| n as usize)
            }
        };
        match flag {
            "--csv" if value.is_empty() => return Err("--csv needs a file name".into()),
            "--csv" => o.csv = Some(value.to_string()),
            "--rounds" => o.rounds = small(100)(value).ok_or_else(bad)?,
            "--warmup-ms" => {
                o.warmup = Duration::from_millis(value.parse::<u64>().map_err(|_| bad())?)
            }
            "--measure-ms" => {
                o.measure = Duration::from_millis(small(60_000)(value).ok_or_else(bad)? as u64)
            }
            "--burst" => o.burst = small(1 << 20)(value).ok_or_else(bad)? as u32,
            "--workers" => o.workers = parse_list(value, small(64)).ok_or_else(bad)?,
            "--tasks" => o.tasks = parse_list(value, small(1024)).ok_or_else(bad)?,
            "--rates" => {
                o.rates = parse_list(value, |x| parse_count(x).filter(|&r| r <= 10_000_000))
                    .ok_or_else(bad)?
            }
            "--strategies" => o.strategies = parse_list(value, Strategy::parse).ok_or_else(bad)?,
            _ => return Err(format!("unknown flag {flag:?}")),
        }
    }
    Ok(Some(o))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match parse_args(&args) {
        Ok(Some(o)) => o,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let synopsis = USAGE.lines().next().unwrap_or(USAGE);
            eprintln!("bench-report: {e}\n{synopsis}\n(--help describes every flag)");
            return ExitCode::from(2);
        }
    };
    // Fail before the run, not after it, when the CSV cannot be written.
    if let Some(path) = &opts.csv {
        if let Err(e) = std::fs::File::create(path) {
            eprintln!("bench-report: --csv: cannot create `{path}`: {e}");
            return ExitCode::from(2);
        }
    }
    match run(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-report: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(o: &Options) -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let mut rows = Vec::new();
    for &workers in &o.workers {
        for &tasks in &o.tasks {
            for &rate in &o.rates {
                let strategies: Vec<Strategy> = o
                    .strategies
                    .iter()
                    .copied()
                    .filter(|s| s.swaps() || rate == 0)
                    .collect();
                if strategies.is_empty() {
                    continue;
                }
                let cell = Cell {
                    workers,
                    tasks,
                    rate,
                };
                eprintln!(
                    "[{:5.1}s] workers={workers} tasks/worker={tasks} rate={rate}/s",
                    started.elapsed().as_secs_f64()
                );
                let mut runs: Vec<Vec<_>> = vec![Vec::new(); strategies.len()];
                for round in 0..o.rounds {
                    for k in 0..strategies.len() {
                        let i = (k + round) % strategies.len();
                        let cfg = CellConfig {
                            strategy: strategies[i],
                            workers,
                            tasks_per_worker: tasks,
                            swap_rate: rate,
                            burst: o.burst,
                            warmup: o.warmup,
                            measure: o.measure,
                        };
                        let r = run_cell(&cfg)
                            .map_err(|e| format!("{} in {cell}: {e}", strategies[i].name()))?;
                        runs[i].push(r);
                    }
                }
                for (s, r) in strategies.iter().zip(runs) {
                    rows.push(Row::aggregate(cell, *s, &r));
                }
            }
        }
    }
    report::fill_ratios(&mut rows);
    let elapsed = started.elapsed();
    print!("{}", report::markdown(&rows, o.rounds, o.measure, o.burst));
    print!("{}", report::targets(&rows));
    println!("\n(total run time {:.1} s)", elapsed.as_secs_f64());
    if let Some(path) = &o.csv {
        std::fs::write(path, report::csv(&rows)).map_err(|e| format!("writing {path}: {e}"))?;
        eprintln!("wrote {path}");
    }
    Ok(())
}
