//! Aggregation of rounds into rows, the markdown table, the target check and the CSV.

use std::fmt::Write as _;
use std::time::Duration;

use tramway_harness::bench::histogram::Counts;
use tramway_harness::bench::workload::{CellRun, Strategy};

/// One cell of the grid (strategy aside).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cell {
    pub workers: usize,
    pub tasks: usize,
    pub rate: u64,
}

impl std::fmt::Display for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "workers={} tasks/worker={} rate={}/s",
            self.workers, self.tasks, self.rate
        )
    }
}

/// One strategy in one cell, aggregated over rounds.
#[derive(Clone, Debug)]
pub struct Row {
    pub cell: Cell,
    pub strategy: Strategy,
    /// Median over rounds.
    pub calls: f64,
    /// Min and max over rounds (spread).
    pub calls_min: f64,
    pub calls_max: f64,
    /// Median over rounds.
    pub swaps: f64,
    pub gp: Counts,
    pub peak_retired: u64,
    pub peak_retired_bytes: u64,
    pub peak_mapped_bytes: u64,
    /// `calls / leak's calls` in the same cell (floors: leak at rate 0).
    pub vs_leak: Option<f64>,
    /// Median calls per second of worker CPU time.
    pub cpu_calls: f64,
    /// Median worker CPU share.
    pub cpu_share: f64,
    /// `cpu_calls / leak's cpu_calls` in the same cell.
    pub cpu_vs_leak: Option<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

impl Row {
    /// Aggregates the rounds of one strategy in one cell.
    pub fn aggregate(cell: Cell, strategy: Strategy, runs: &[CellRun]) -> Row {
        let calls: Vec<f64> = runs.iter().map(|r| r.calls_per_sec_per_worker).collect();
        let mut gp = Counts::default();
        for r in runs {
            gp.merge(&r.finish.gp);
        }
        let max = |f: fn(&CellRun) -> u64| runs.iter().map(f).max().unwrap_or(0);
        Row {
            cell,
            strategy,
            calls_min: calls.iter().copied().fold(f64::INFINITY, f64::min),
            calls_max: calls.iter().copied().fold(0.0, f64::max),
            calls: median(calls),
            swaps: median(runs.iter().map(|r| r.swaps_per_sec).collect()),
            gp,
            peak_retired: max(|r| r.finish.peak_retired),
            peak_retired_bytes: max(|r| r.finish.peak_retired_bytes),
            peak_mapped_bytes: max(|r| r.finish.peak_mapped_bytes),
            vs_leak: None,
            cpu_calls: median(runs.iter().map(|r| r.calls_per_cpu_sec).collect()),
            cpu_share: median(runs.iter().map(|r| r.cpu_share).collect()),
            cpu_vs_leak: None,
        }
    }
}

/// Sets [`Row::vs_leak`].
pub fn fill_ratios(rows: &mut [Row]) {
    let leak: Vec<(Cell, f64, f64)> = rows
        .iter()
        .filter(|r| r.strategy == Strategy::Leak)
        .map(|r| (r.cell, r.calls, r.cpu_calls))
        .collect();
    for r in rows.iter_mut() {
        let base = leak.iter().find(|(c, _, _)| *c == r.cell);
        r.vs_leak = base.filter(|b| b.1 > 0.0).map(|b| r.calls / b.1);
        r.cpu_vs_leak = base
            .filter(|b| b.2 > 0.0 && r.cpu_calls > 0.0)
            .map(|b| r.cpu_calls / b.2);
    }
}

fn si(v: f64) -> String {
    if v >= 1e9 {
        format!("{:.2} G", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.1} M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1} k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn dur(d: Option<Duration>) -> String {
    match d {
        None => "n/a".into(),
        Some(d) if d < Duration::from_micros(10) => format!("{:.1} µs", d.as_nanos() as f64 / 1e3),
        Some(d) if d < Duration::from_millis(10) => format!("{:.0} µs", d.as_nanos() as f64 / 1e3),
        Some(d) => format!("{:.1} ms", d.as_secs_f64() * 1e3),
    }
}

fn kib(b: u64) -> String {
    format!("{:.1}", b as f64 / 1024.0)
}

fn gp_cell(r: &Row, q: f64) -> String {
    if r.strategy.reclaims() {
        dur(r.gp.quantile(q))
    } else {
        "n/a".into()
    }
}

/// The table.
pub fn markdown(rows: &[Row], rounds: usize, measure: Duration, burst: u32) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Median of {rounds} round(s) x {} ms per cell; bursts of {burst} calls, `yield_now()` \
         between bursts; spread = min..max over rounds. `per CPU-s` divides calls by the \
         CPU time the workers actually got (from `/proc/self/task/*/schedstat`), which \
         removes time taken by other processes; `CPU share` = worker CPU time / (wall time x \
         workers).\n",
        measure.as_millis()
    );
    s.push_str(
        "| workers | tasks/worker | swaps/s target | strategy | calls/s per worker | spread | \
         vs leak | calls per worker CPU-s | vs leak (CPU) | CPU share | swaps/s achieved | GP p50 | GP p99 | peak retired (count) | \
         peak retired KiB | peak mapped KiB |\n",
    );
    s.push_str(
        "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let swaps = r.strategy.swaps();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {}..{} | {} | {} | {} | {:.2} | {} | {} | {} | {} | {} | {} |",
            r.cell.workers,
            r.cell.tasks,
            if swaps {
                si(r.cell.rate as f64)
            } else {
                "-".into()
            },
            r.strategy.name(),
            si(r.calls),
            si(r.calls_min),
            si(r.calls_max),
            r.vs_leak.map_or("-".into(), |v| format!("{v:.3}")),
            si(r.cpu_calls),
            r.cpu_vs_leak.map_or("-".into(), |v| format!("{v:.3}")),
            r.cpu_share,
            if swaps { si(r.swaps) } else { "-".into() },
            gp_cell(r, 0.5),
            gp_cell(r, 0.99),
            if swaps {
                r.peak_retired.to_string()
            } else {
                "-".into()
            },
            if swaps {
                kib(r.peak_retired_bytes)
            } else {
                "-".into()
            },
            if r.strategy == Strategy::Direct {
                "-".into()
            } else {
                kib(r.peak_mapped_bytes)
            },
        );
    }
    s
}

fn find(rows: &[Row], cell: Cell, s: Strategy) -> Option<&Row> {
    rows.iter().find(|r| r.cell == cell && r.strategy == s)
}

/// Checks the targets against the measured rows; reports, never asserts.
pub fn targets(rows: &[Row]) -> String {
    let mut s = String::from("\n### Targets\n\n");
    let tasks: Vec<&Row> = rows
        .iter()
        .filter(|r| r.strategy == Strategy::Tasks)
        .collect();
    if tasks.is_empty() {
        s.push_str("(no `tasks` rows: nothing to check)\n");
        return s;
    }
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };

    type Metric = (&'static str, fn(&Row) -> f64, fn(&Row) -> Option<f64>);
    let metrics: [Metric; 2] = [
        ("wall calls/s", |r| r.calls, |r| r.vs_leak),
        ("calls per worker CPU-s", |r| r.cpu_calls, |r| r.cpu_vs_leak),
    ];
    for (label, value, vs_leak) in metrics {
        let ratios: Vec<(Cell, f64)> = tasks
            .iter()
            .filter_map(|r| Some((r.cell, vs_leak(r)?)))
            .collect();
        if let Some((worst_cell, worst)) = ratios.iter().copied().min_by(|a, b| a.1.total_cmp(&b.1))
        {
            let ok = ratios.iter().filter(|(_, v)| *v >= 0.98).count();
            let med = median(ratios.iter().map(|r| r.1).collect());
            let _ = writeln!(
                s,
                "- tasks within 2% of leak ({label}) in every cell: **{}** ({ok}/{} cells; \
                 median {med:.3}, worst {worst:.3} at {worst_cell})",
                verdict(ok == ratios.len()),
                ratios.len()
            );
        }
        for other in [Strategy::EpochPin, Strategy::Refcount] {
            let v: Vec<(Cell, f64)> = tasks
                .iter()
                .filter(|r| r.cell.workers == 2)
                .filter_map(|t| {
                    let o = find(rows, t.cell, other)?;
                    (value(o) > 0.0).then(|| (t.cell, value(t) / value(o)))
                })
                .collect();
            if let Some((c, min)) = v.iter().copied().min_by(|a, b| a.1.total_cmp(&b.1)) {
                let ok = v.iter().filter(|(_, x)| *x >= 3.0).count();
                let med = median(v.iter().map(|r| r.1).collect());
                let _ = writeln!(
                    s,
                    "- tasks >= 3x {} at 2 workers ({label}): **{}** ({ok}/{} cells; median \
                     {med:.2}x, min {min:.2}x at {c})",
                    other.name(),
                    verdict(ok == v.len()),
                    v.len()
                );
            }
        }
    }

    let peak = tasks
        .iter()
        .map(|r| r.peak_retired_bytes)
        .max()
        .unwrap_or(0);
    let leak_peak = rows
        .iter()
        .filter(|r| r.strategy == Strategy::Leak)
        .map(|r| r.peak_retired_bytes)
        .max()
        .unwrap_or(0);
    let bound = tramway::jit::DEFAULT_MAX_RETIRED_BYTES as u64;
    let _ = writeln!(
        s,
        "- bounded peak retired bytes: **{}** (tasks max {} KiB over all cells; leak max {} KiB \
         and growing with run time; the jit's backlog bound is {} KiB)",
        verdict(peak <= bound),
        kib(peak),
        kib(leak_peak),
        kib(bound)
    );

    let mut gp = Counts::default();
    for r in &tasks {
        gp.merge(&r.gp);
    }
    match gp.quantile(0.5) {
        Some(p50) => {
            let _ = writeln!(
                s,
                "- tasks GP p50 <= 50 µs (retire -> free, all cells with swaps): **{}** \
                 (p50 {}, p99 {}, {} samples)",
                verdict(p50 <= Duration::from_micros(50)),
                dur(Some(p50)),
                dur(gp.quantile(0.99)),
                gp.len()
            );
        }
        None => s.push_str("- tasks GP latency: no samples (no swaps in this run)\n"),
    }
    s
}

/// Every row as CSV.
pub fn csv(rows: &[Row]) -> String {
    let mut s = String::from(
        "workers,tasks_per_worker,swap_rate,strategy,calls_per_sec_per_worker,calls_min,\
         calls_max,vs_leak,calls_per_worker_cpu_sec,cpu_vs_leak,cpu_share,swaps_per_sec,gp_p50_ns,gp_p99_ns,gp_samples,peak_retired,\
         peak_retired_bytes,peak_mapped_bytes\n",
    );
    let ns = |d: Option<Duration>| d.map_or(String::new(), |d| d.as_nanos().to_string());
    for r in rows {
        let _ = writeln!(
            s,
            "{},{},{},{},{:.0},{:.0},{:.0},{},{:.0},{},{:.3},{:.0},{},{},{},{},{},{}",
            r.cell.workers,
            r.cell.tasks,
            if r.strategy.swaps() { r.cell.rate } else { 0 },
            r.strategy.name(),
            r.calls,
            r.calls_min,
            r.calls_max,
            r.vs_leak.map_or(String::new(), |v| format!("{v:.4}")),
            r.cpu_calls,
            r.cpu_vs_leak.map_or(String::new(), |v| format!("{v:.4}")),
            r.cpu_share,
            r.swaps,
            ns(r.gp.quantile(0.5)),
            ns(r.gp.quantile(0.99)),
            r.gp.len(),
            r.peak_retired,
            r.peak_retired_bytes,
            r.peak_mapped_bytes
        );
    }
    s
}
