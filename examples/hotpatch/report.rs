//! Measurements and their presentation: a log-linear latency histogram, the once-a-second status
//! line, and number formatting.

use std::fmt::Write as _;
use std::time::Duration;

/// Sub-buckets per power of two (5 bits of mantissa: quantiles are within ~3%).
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
const BUCKETS: usize = ((64 - SUB_BITS) as usize + 1) * SUB as usize;

/// A histogram of `u64` samples (nanoseconds here) with log-linear buckets, like HdrHistogram.
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
        }
    }
}

fn bucket(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let e = 63 - v.leading_zeros(); // >= SUB_BITS
    let mantissa = v >> (e - SUB_BITS); // in SUB..2*SUB
    ((e - SUB_BITS + 1) as u64 * SUB + (mantissa - SUB)) as usize
}

fn lower_bound(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let e = (i / SUB) as u32 + SUB_BITS - 1;
    (SUB + i % SUB) << (e - SUB_BITS)
}

impl Histogram {
    /// Adds one sample.
    pub fn record(&mut self, v: u64) {
        self.counts[bucket(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Largest sample (0 if none).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The `q` quantile (`0.0..=1.0`), as its bucket's lower bound; `None` without samples.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(lower_bound(i).min(self.max));
            }
        }
        Some(self.max)
    }

    /// The samples recorded since `earlier` (a previous clone of this histogram).
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let counts: Vec<u64> = (self.counts.iter().zip(&earlier.counts))
            .map(|(a, b)| a - b)
            .collect();
        let max = counts
            .iter()
            .rposition(|&c| c > 0)
            .map_or(0, |i| lower_bound(i).min(self.max));
        Histogram {
            total: counts.iter().sum(),
            counts,
            max,
        }
    }
}

/// `1234567` -> `1,234,567`.
pub fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `38_410_000.0` -> `38.41M`.
pub fn si(x: f64) -> String {
    match x {
        x if x >= 1e9 => format!("{:.2}G", x / 1e9),
        x if x >= 1e6 => format!("{:.2}M", x / 1e6),
        x if x >= 1e3 => format!("{:.1}k", x / 1e3),
        x => format!("{x:.0}"),
    }
}

/// A rate: one decimal below 1000, else [`si`].
pub fn rate(x: f64) -> String {
    if x < 1e3 {
        format!("{x:.1}")
    } else {
        si(x)
    }
}

/// A latency in the unit that reads best.
pub fn nanos(ns: u64) -> String {
    match ns {
        n if n < 1_000 => format!("{n} ns"),
        n if n < 1_000_000 => format!("{:.1} µs", n as f64 / 1e3),
        n if n < 1_000_000_000 => format!("{:.2} ms", n as f64 / 1e6),
        n => format!("{:.2} s", n as f64 / 1e9),
    }
}

/// A byte count in KiB (or MiB when large).
pub fn kib(bytes: usize) -> String {
    if bytes >= 100 << 20 {
        format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
    } else {
        format!("{} KiB", bytes.div_ceil(1024))
    }
}

/// An interval as given on the command line.
pub fn interval(d: Duration) -> String {
    if d.is_zero() {
        "back to back".into()
    } else {
        format!("every {}", nanos(d.as_nanos() as u64))
    }
}

/// One second's worth of numbers.
pub struct StatusLine {
    /// Seconds since the start.
    pub t: f64,
    /// Calls per second.
    pub calls: f64,
    /// Swaps per second.
    pub swaps: f64,
    /// Sites traced / sites.
    pub probes: (usize, usize),
    /// Probe hits per second.
    pub hits: f64,
    /// Trampolines: live, retired, reclaimed (cumulative).
    pub tramps: (u64, u64, u64),
    /// Mapped code bytes.
    pub mapped: usize,
    /// GP latencies during the second.
    pub gp: Histogram,
    /// Stall reports so far.
    pub stalls: u64,
    /// Invalid results so far.
    pub invalid: u64,
}

/// The column header matching [`StatusLine::render`].
pub fn header() -> String {
    format!(
        "{:>6} {:>9} {:>8} {:>6} {:>8} {:>6} {:>7} {:>10} {:>8} {:>9} {:>9} {:>6} {:>7}",
        "time",
        "calls/s",
        "swaps/s",
        "probes",
        "hits/s",
        "live",
        "retired",
        "reclaimed",
        "mapped",
        "gp p50",
        "gp p99",
        "stalls",
        "invalid"
    )
}

impl StatusLine {
    /// The line, aligned with [`header`].
    pub fn render(&self) -> String {
        let q = |q| self.gp.quantile(q).map_or_else(|| "-".into(), nanos);
        let mut s = String::new();
        let _ = write!(
            s,
            "{:>5.1}s {:>9} {:>8} {:>6} {:>8} {:>6} {:>7} {:>10} {:>8} {:>9} {:>9} {:>6} {:>7}",
            self.t,
            si(self.calls),
            rate(self.swaps),
            format!("{}/{}", self.probes.0, self.probes.1),
            si(self.hits),
            self.tramps.0,
            self.tramps.1,
            group(self.tramps.2),
            kib(self.mapped),
            q(0.5),
            q(0.99),
            self.stalls,
            self.invalid
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_bounded() {
        let mut last = 0;
        for v in (0..100_000u64).chain([u64::MAX / 3, u64::MAX]) {
            let b = bucket(v);
            assert!(b >= last && b < BUCKETS);
            assert!(lower_bound(b) <= v);
            last = b;
        }
    }

    #[test]
    fn quantiles_are_close() {
        let mut h = Histogram::default();
        (1..=1000).for_each(|v| h.record(v * 1000));
        let p50 = h.quantile(0.5).unwrap() as f64;
        assert!((p50 - 500_000.0).abs() / 500_000.0 < 0.04, "{p50}");
        assert_eq!(h.since(&h.clone()).count(), 0);
    }

    #[test]
    fn grouping() {
        assert_eq!(group(0), "0");
        assert_eq!(group(1234567), "1,234,567");
    }
}
