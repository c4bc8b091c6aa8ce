//! The report: rows, cells with their ranges, ratios and the percentile table.

use super::*;

impl Row {
    pub(super) fn pair(
        label: impl Into<String>,
        unit: Unit,
        tramway: Vec<f64>,
        liburcu: Vec<f64>,
    ) -> Row {
        Row {
            label: label.into(),
            unit,
            tramway,
            liburcu: Some(liburcu),
            gps: None,
        }
    }

    /// A grace-period row: the mean wait per `synchronize()`, percentiles kept aside.
    pub(super) fn gp(
        label: impl Into<String>,
        tramway: Vec<GpSample>,
        liburcu: Vec<GpSample>,
    ) -> Row {
        let means = |v: &[GpSample]| v.iter().map(|s| s.mean).collect();
        Row {
            gps: Some((tramway.clone(), liburcu.clone())),
            ..Row::pair(label, Unit::Ns, means(&tramway), means(&liburcu))
        }
    }

    pub(super) fn tramway_only(label: impl Into<String>, unit: Unit, tramway: Vec<f64>) -> Row {
        Row {
            label: label.into(),
            unit,
            tramway,
            liburcu: None,
            gps: None,
        }
    }
}

pub(super) fn print_report(
    opts: &Opts,
    rows: &[Row],
    load_before: &str,
    load_after: &str,
    ticks_per_ns: Option<f64>,
    started: Instant,
    retire_states: &[RetireStates],
) {
    let mut out = String::new();
    let cmd: Vec<String> = std::env::args().collect();
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let _ = writeln!(
        out,
        "\n## tramway vs liburcu QSBR {}\n",
        urcu::version().unwrap_or("?")
    );
    let _ = writeln!(out, "- command: `{}`", cmd.join(" "));
    let _ = writeln!(out, "- machine: nproc {nproc}, {}", cpu_model());
    let _ = writeln!(out, "- before: load average {load_before}");
    let _ = writeln!(
        out,
        "- {} rounds of {} ms per cell and side, interleaved (order alternating); cell: median \
         of the rounds [min-max]; ratio: tramway / liburcu; synchronize() rows: mean wait per \
         call (see the module docs of benches/urcu_compare/main.rs)",
        opts.rounds,
        opts.round.as_millis()
    );
    let _ = writeln!(
        out,
        "\n| scenario | tramway | liburcu | ratio |\n|---|---|---|---|"
    );
    for row in rows {
        let mut tw = row.tramway.clone();
        let tw_med = median(&mut tw);
        let (lu, ratio) = match &row.liburcu {
            Some(v) => {
                let mut v = v.clone();
                let lu_med = median(&mut v);
                (cell(row.unit, &v), format!("{:.2}x", tw_med / lu_med))
            }
            None => ("n/a".to_string(), String::new()),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            row.label,
            cell(row.unit, &tw),
            lu,
            ratio
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "- after: load average {load_after}");
    let gp_rows: Vec<_> = rows
        .iter()
        .filter_map(|r| r.gps.as_ref().map(|g| (&r.label, g)))
        .collect();
    if !gp_rows.is_empty() {
        let _ = writeln!(
            out,
            "\nPer-GP percentiles of the same runs (median over rounds):\n\n\
             | scenario | tramway p50 | tramway p99 | liburcu p50 | liburcu p99 |\n\
             |---|---|---|---|---|"
        );
        let pick = |v: &[GpSample], f: fn(&GpSample) -> f64| {
            let mut x: Vec<f64> = v.iter().map(f).collect();
            ns(median(&mut x))
        };
        for (label, (a, b)) in gp_rows {
            let _ = writeln!(
                out,
                "| {label} | {} | {} | {} | {} |",
                pick(a, |s| s.p50),
                pick(a, |s| s.p99),
                pick(b, |s| s.p50),
                pick(b, |s| s.p99)
            );
        }
        let _ = writeln!(out);
    }
    write_retire_states(&mut out, retire_states);
    if let Some(t) = ticks_per_ns {
        let _ = writeln!(
            out,
            "- TSC: {t:.3} ticks/ns (nominal; core cycles differ under frequency scaling)"
        );
    }
    let _ = writeln!(out, "- wall time: {:.1} s", started.elapsed().as_secs_f64());
    print!("{out}");
}

/// `median [min-max]` of round values, in the row's unit.
pub(super) fn cell(unit: Unit, v: &[f64]) -> String {
    let mut s = v.to_vec();
    let med = median(&mut s);
    let (lo, hi) = (s[0], s[s.len() - 1]);
    match unit {
        Unit::Ns if med >= 1000.0 => {
            format!("{:.2} us [{:.2}-{:.2}]", med / 1e3, lo / 1e3, hi / 1e3)
        }
        Unit::Ns => format!("{med:.0} ns [{lo:.0}-{hi:.0}]"),
        Unit::PerSec if med >= 1e6 => {
            format!("{:.2} M/s [{:.2}-{:.2}]", med / 1e6, lo / 1e6, hi / 1e6)
        }
        Unit::PerSec => format!("{:.0} k/s [{:.0}-{:.0}]", med / 1e3, lo / 1e3, hi / 1e3),
        Unit::Factor => format!("{med:.2}x [{lo:.2}-{hi:.2}]"),
        Unit::Ticks => format!("{med:.1} [{lo:.1}-{hi:.1}]"),
    }
}

/// A duration in ns, as `870 ns` or `8.70 us`.
pub(super) fn ns(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.2} us", v / 1e3)
    } else {
        format!("{v:.0} ns")
    }
}

/// Sorts `v` and returns its median (the mean of the middle two for an even length; 0 for
/// an empty slice).
pub(super) fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The `q` quantile of sorted `v` (nearest rank).
pub(super) fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

pub(super) fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string())
}
