//! Reporting for the interleaved-round benches (`benches/preempt.rs`, `yielding.rs`,
//! `tracing_cost.rs`, `urcu_compare/`): each setting is measured once per round, settings
//! alternate within a round, and a cell is the median of the rounds with their range, printed
//! beside the load average.

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

/// The 1, 5 and 15 minute load averages (`/proc/loadavg`), or "unknown".
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    #[test]
    fn median_and_cell() {
        assert_eq!(super::median(&[3.0, 1.0, 2.0]), 2.0);
        assert!(super::median(&[]).is_nan());
        assert_eq!(super::cell(&[3.0, 1.0, 2.0], 1), "2.0 [1.0-3.0]");
    }
}
