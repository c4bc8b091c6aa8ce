//! What the crates' `tracing` instrumentation costs on the paths it sits on: a grace period
//! (`synchronize()` from an OS thread, which runs the grace period inline: its span and its
//! end event) and a site swap (emit a trampoline, swap it in: the swap's event, then the
//! retired trampoline's deferred free).
//!
//! ```sh
//! cargo bench --bench tracing_cost               # 7 rounds
//! cargo bench --bench tracing_cost -- --quick    # 3 short rounds (CI smoke)
//! ```
//!
//! # Settings
//! - `no subscriber`: nobody listens (the default for a library user): every callsite is
//!   filtered out by tracing's global max-level check.
//! - `filtered (WARN)`: a subscriber that wants warnings only; the crates' debug and trace
//!   callsites are disabled by its level hint.
//! - `recording`: a subscriber that enables every span and event and formats every field (an
//!   upper bound of what a real subscriber adds; it is the subscriber's cost, not the
//!   instrumentation's).
//!
//! # Method
//! The subscribers are installed for the measuring thread only (`with_default`), so the
//! settings alternate within each round, in an order that rotates; a cell is the median of the
//! rounds with their range, and the load average is printed before and after. Nothing here
//! asserts a time; under `cargo test` (no `--bench` argument) it only prints what it would do.

use std::fmt::Debug;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

use tramway::jit::{SiteKind, Trampoline};
use tramway_harness::bench::rounds::{cell, loadavg, machine_before, median, RoundArgs};

const USAGE: &str = "\
usage: cargo bench --bench tracing_cost -- [--quick] [--rounds N]

  --quick      3 rounds, shorter runs (CI smoke)
  --rounds N   rounds (default 7)
";

/// A subscriber at a fixed maximum level that formats every field it is given.
struct Listener {
    max: LevelFilter,
    next_span: AtomicU64,
    events: AtomicU64,
}

impl Listener {
    fn new(max: LevelFilter) -> Listener {
        Listener {
            max,
            next_span: AtomicU64::new(1),
            events: AtomicU64::new(0),
        }
    }
}

/// Formats each field into a reused buffer (what a text subscriber does per field).
struct Format(String);

impl Visit for Format {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        use std::fmt::Write;
        let _ = write!(self.0, "{}={:?} ", field.name(), value);
    }
}

impl Subscriber for Listener {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.max >= *metadata.level()
    }
    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.max)
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let mut f = Format(String::new());
        span.record(&mut f);
        std::hint::black_box(&f.0);
        Id::from_u64(self.next_span.fetch_add(1, Ordering::Relaxed))
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut f = Format(String::new());
        event.record(&mut f);
        std::hint::black_box(&f.0);
        self.events.fetch_add(1, Ordering::Relaxed);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

const SETTINGS: [&str; 3] = ["no subscriber", "filtered (WARN)", "recording"];

/// Runs `f` under setting `k`; returns its result and the events the subscriber saw.
fn under<T>(k: usize, f: impl FnOnce() -> T) -> (T, u64) {
    let max = match k {
        0 => return (f(), 0),
        1 => LevelFilter::WARN,
        _ => LevelFilter::TRACE,
    };
    let listener = std::sync::Arc::new(Listener::new(max));
    let dispatch = tracing::Dispatch::from(listener.clone());
    let out = tracing::dispatcher::with_default(&dispatch, f);
    (out, listener.events.load(Ordering::Relaxed))
}

fn main() -> ExitCode {
    let opts = match RoundArgs::from_env(
        "tracing_cost",
        USAGE,
        &[],
        RoundArgs::defaults(Duration::ZERO),
    ) {
        Ok(o) => o,
        Err(code) => return code,
    };
    let (rounds, quick) = (opts.rounds, opts.quick);
    println!("tracing_cost: {rounds} rounds; {}", machine_before());
    let tw = tramway::Builder::new().workers(1).build().expect("tramway");
    let (gps, swaps) = if quick {
        (2_000, 2_000)
    } else {
        (20_000, 20_000)
    };
    let first: Trampoline = tw.jit.constant_return(0).expect("emit");
    let site = tw.jit.site(SiteKind::Indirect, &first).expect("site");
    drop(first);

    let mut gp_ns: [Vec<f64>; 3] = Default::default();
    let mut swap_ns: [Vec<f64>; 3] = Default::default();
    let mut events = [0u64; 3];
    for round in 0..rounds {
        for k in (0..3).map(|i| (i + round) % 3) {
            let (t, n) = under(k, || {
                let start = Instant::now();
                for _ in 0..gps {
                    tw.grace.synchronize();
                }
                start.elapsed()
            });
            gp_ns[k].push(t.as_nanos() as f64 / gps as f64);
            events[k] += n;
            let (t, n) = under(k, || {
                let start = Instant::now();
                for i in 0..swaps {
                    // A retired trampoline is never installed again: emit a fresh one. The
                    // retired one's free is deferred behind a grace period.
                    let next = tw.jit.constant_return(i).expect("emit");
                    drop(site.swap(&next).expect("swap"));
                }
                start.elapsed()
            });
            swap_ns[k].push(t.as_nanos() as f64 / swaps as f64);
            events[k] += n;
        }
        // Let the deferred frees run outside the timed loops.
        tw.jit.barrier();
    }
    println!(
        "{:<18} {:>26} {:>10} {:>26} {:>10} {:>12}",
        "setting", "synchronize() ns", "ratio", "emit+swap+retire ns", "ratio", "events seen"
    );
    for k in 0..3 {
        println!(
            "{:<18} {:>26} {:>9.3}x {:>26} {:>9.3}x {:>12}",
            SETTINGS[k],
            cell(&gp_ns[k], 0),
            median(&gp_ns[k]) / median(&gp_ns[0]),
            cell(&swap_ns[k], 0),
            median(&swap_ns[k]) / median(&swap_ns[0]),
            events[k]
        );
    }
    println!(
        "ratios: against `no subscriber` (medians); load after: {}",
        loadavg()
    );
    ExitCode::SUCCESS
}
