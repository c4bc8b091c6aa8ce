//! Measurements and their presentation: a log-linear latency histogram, exact per-second
//! samples, the once-a-second status line (its header, legend and `--explain` text), the CSV
//! series, and number formatting (`µs`, KiB/MiB, SI rates).

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

    /// The `q` quantile (`0.0..=1.0`), as the middle of its bucket (within ~1.6%, the half
    /// width of a bucket); `None` without samples.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let lo = lower_bound(i);
                let hi = if i + 1 < BUCKETS {
                    lower_bound(i + 1)
                } else {
                    self.max
                };
                return Some((lo + (hi - lo) / 2).min(self.max));
            }
        }
        Some(self.max)
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

/// Latency samples (ns): every one in a histogram for the summary, and the latest ones, exact,
/// for the next status line.
#[derive(Default)]
pub struct Latencies {
    all: Histogram,
    recent: Vec<u64>,
}

impl Latencies {
    /// Adds one sample.
    pub fn record(&mut self, ns: u64) {
        self.all.record(ns);
        self.recent.push(ns);
    }

    /// The samples recorded since the last call, sorted.
    pub fn take_recent(&mut self) -> Vec<u64> {
        let mut v = std::mem::take(&mut self.recent);
        v.sort_unstable();
        v
    }

    /// Every sample so far.
    pub fn all(&self) -> &Histogram {
        &self.all
    }
}

/// The nearest-rank `q` quantile of `sorted` samples; `None` without samples.
pub fn exact_quantile(sorted: &[u64], q: f64) -> Option<u64> {
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
    Some(sorted[rank - 1])
}

/// One second of the run: a status line, a CSV row and a point of each plotted series.
#[derive(Clone, Debug, Default)]
pub struct Second {
    /// Seconds since the start (the end of this second).
    pub t: f64,
    /// Calls per second during the second.
    pub calls_per_s: f64,
    /// Swaps per second.
    pub swaps_per_s: f64,
    /// Probe hook invocations per second.
    pub hits_per_s: f64,
    /// Sites traced right now.
    pub traced: usize,
    /// Sites.
    pub sites: usize,
    /// Trampolines emitted and not retired, now.
    pub live: u64,
    /// Trampolines retired and not yet reclaimed, now.
    pub retired: u64,
    /// Code memory mapped now (bytes).
    pub mapped: usize,
    /// Calls since the start.
    pub calls: u64,
    /// Trampolines reclaimed since the start.
    pub reclaimed: u64,
    /// Stall reports since the start.
    pub stalls: u64,
    /// Invalid results since the start.
    pub invalid: u64,
    /// Retire -> free latencies during the second (ns, sorted).
    pub free: Vec<u64>,
    /// `synchronize()` latencies during the second (ns, sorted; about one).
    pub sync: Vec<u64>,
}

/// The status line's columns: group, header, width.
const COLUMNS: [(&str, &str, usize); 15] = [
    ("", "time", 6),
    ("rate", "calls/s", 7),
    ("rate", "swaps/s", 7),
    ("rate", "hits/s", 7),
    ("now", "probes", 6),
    ("now", "live", 5),
    ("now", "retired", 7),
    ("now", "mapped", 8),
    ("total", "calls", 7),
    ("total", "reclaimed", 9),
    ("total", "stalls", 6),
    ("total", "invalid", 7),
    ("latency", "free p50", 8),
    ("latency", "free p99", 8),
    ("latency", "sync()", 8),
];

/// Lays out one cell per column: right-aligned, one space inside a group, ` | ` between groups.
fn layout(cells: &[String]) -> String {
    let mut line = String::new();
    for (i, ((group, _, width), cell)) in COLUMNS.iter().zip(cells).enumerate() {
        if i > 0 {
            line.push_str(if COLUMNS[i - 1].0 == *group {
                " "
            } else {
                " | "
            });
        }
        let _ = write!(line, "{cell:>width$}");
    }
    line
}

/// Printed once before the first status line: what the groups and the latency columns mean.
pub fn legend(callback_delay: Duration) -> String {
    format!(
        "One line per second. rate: per second, over that second; now: at its end; total: since \
         the start.\n\
         free p50/p99: retire -> free, from retiring a version until its free callback ran: one \
         grace period plus up to\n  \
         {} of callback batching (--callback-delay). sync(): one GraceDomain::synchronize() per \
         second from a side thread,\n  \
         a grace period alone. `-`: no sample that second. --explain describes every column.",
        nanos(callback_delay.as_nanos() as u64)
    )
}

/// Printed for `--explain`.
pub const EXPLAIN: &str = "\
hotpatch prints one status line per second, then a summary. Status-line columns, by group:

time         seconds since the start (the end of the second the line covers)
rate         per second, over the second the line covers
  calls/s    calls through the patch sites, all tasks together; every result is checked
  swaps/s    site swaps: re-JITs plus probe attaches and detaches
  hits/s     calls that went through a tracing probe's hook
now          at the end of the second
  probes     sites with a probe attached / sites
  live       trampolines emitted and not retired (installed, or reachable through a probe)
  retired    trampolines swapped out and not yet freed: waiting for a grace period
  mapped     code memory mapped (KiB, MiB)
total        since the start
  calls      calls made
  reclaimed  trampolines freed after their grace period
  stalls     grace-period stall reports (a grace period waited past the stall timeout, 1 s)
  invalid    results that came from no valid version, or from one whose grace period had
             ended (must stay 0)
latency      samples taken during the second (`-`: none)
  free p50   retire -> free latency, median and 99th percentile: from the patcher retiring a
  free p99   version (GraceDomain::call) until its callback ran and released the code. That is
             one grace period plus the callback delay (--callback-delay, GraceConfig's default
             1 ms): callbacks wait that long for others to batch with, so one grace period
             serves many retirements. With the default delay, ~1 ms is the floor of this column.
  sync()     wall time of one GraceDomain::synchronize(), called once a second from a side
             OS thread: a grace period alone, with no batching delay (the synchronize()
             latency BENCHMARKS.md measures)

Summary rows: totals over the run (calls, swaps by kind, probe hits, grace periods and
callbacks), the retire -> free and synchronize() latencies over the whole run (from a
log-linear histogram, within ~2%), backlog waits (the patcher waited for reclamation because
too many trampolines were retired), peaks, and the teardown checks: every trampoline
reclaimed, no code mapped after the Jit dropped.

--csv FILE writes the status-line series (one row per second, units in the column names);
--plot FILE.svg draws calls/s, swaps/s and both latencies over time.";

/// The two header lines (groups, then columns) matching [`Second::render`].
pub fn header() -> String {
    let mut groups = String::new();
    let mut i = 0;
    while i < COLUMNS.len() {
        let group = COLUMNS[i].0;
        let mut j = i;
        let mut width = 0;
        while j < COLUMNS.len() && COLUMNS[j].0 == group {
            width += COLUMNS[j].2 + usize::from(j > i);
            j += 1;
        }
        if i > 0 {
            groups.push_str(" | ");
        }
        if group.is_empty() {
            groups.push_str(&" ".repeat(width));
        } else {
            let label = format!(" {group} ");
            let dashes = width.saturating_sub(label.chars().count());
            let left = dashes / 2;
            groups.push_str(&"-".repeat(left));
            groups.push_str(&label);
            groups.push_str(&"-".repeat(dashes - left));
        }
        i = j;
    }
    let names: Vec<String> = COLUMNS.iter().map(|c| c.1.to_string()).collect();
    format!("{}\n{}", groups.trim_end(), layout(&names))
}

impl Second {
    /// The status line, aligned with [`header`].
    pub fn render(&self) -> String {
        let q = |v: &[u64], q| exact_quantile(v, q).map_or_else(|| "-".into(), nanos);
        layout(&[
            format!("{:.1}s", self.t),
            si(self.calls_per_s),
            rate(self.swaps_per_s),
            si(self.hits_per_s),
            format!("{}/{}", self.traced, self.sites),
            self.live.to_string(),
            self.retired.to_string(),
            kib(self.mapped),
            si(self.calls as f64),
            group(self.reclaimed),
            self.stalls.to_string(),
            self.invalid.to_string(),
            q(&self.free, 0.5),
            q(&self.free, 0.99),
            q(&self.sync, 0.5),
        ])
    }
}

/// The CSV header matching [`csv_row`].
pub const CSV_HEADER: &str = "time_s,calls_per_s,swaps_per_s,probe_hits_per_s,sites_traced,sites,\
trampolines_live,trampolines_retired,mapped_kib,calls_total,reclaimed_total,stalls_total,\
invalid_total,retire_to_free_p50_us,retire_to_free_p99_us,retire_to_free_samples,synchronize_us";

/// One CSV row (no newline); an empty cell where the second had no latency sample.
pub fn csv_row(s: &Second) -> String {
    let us = |v: Option<u64>| v.map_or_else(String::new, |ns| format!("{:.1}", ns as f64 / 1e3));
    format!(
        "{:.3},{:.0},{:.1},{:.0},{},{},{},{},{},{},{},{},{},{},{},{},{}",
        s.t,
        s.calls_per_s,
        s.swaps_per_s,
        s.hits_per_s,
        s.traced,
        s.sites,
        s.live,
        s.retired,
        s.mapped / 1024,
        s.calls,
        s.reclaimed,
        s.stalls,
        s.invalid,
        us(exact_quantile(&s.free, 0.5)),
        us(exact_quantile(&s.free, 0.99)),
        s.free.len(),
        us(exact_quantile(&s.sync, 0.5)),
    )
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
    }

    #[test]
    fn grouping() {
        assert_eq!(group(0), "0");
        assert_eq!(group(1234567), "1,234,567");
    }
}
