//! What the demo watches while it runs: the once-a-second status line (and the series `--csv`
//! and `--plot` write), and a side thread that times one `GraceDomain::synchronize()` a second.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tramway::jit::JitStatsHandle;
use tramway::runtime::grace::GraceDomain;

use crate::cli::Options;
use crate::patcher::{PatchCounters, ProbeCounter};
use crate::report::{self, Latencies, Second};
use crate::service::Service;

/// What the status line reads.
pub struct Watch<'a> {
    /// The flags.
    pub o: &'a Options,
    /// When the run started.
    pub start: Instant,
    /// The caller tasks' counters (and the stop flag).
    pub service: &'a Service,
    /// The patcher's counters.
    pub counters: &'a PatchCounters,
    /// Probe hit counters.
    pub probes: &'a [ProbeCounter],
    /// Retire -> free latencies.
    pub free: &'a Mutex<Latencies>,
    /// `synchronize()` latencies.
    pub sync: &'a Mutex<Latencies>,
    /// The jit's counters.
    pub stats: &'a JitStatsHandle,
    /// The grace domain (for its stall count).
    pub gp: &'a GraceDomain,
}

/// What the monitor saw.
pub struct Watched {
    /// The largest mapped code size seen.
    pub peak_mapped: usize,
    /// Failed checks.
    pub failures: Vec<String>,
    /// One entry per status line.
    pub series: Vec<Second>,
}

/// Counters sampled once a second.
struct Sample {
    at: Instant,
    calls: u64,
    swaps: u64,
    hits: u64,
}

fn take<T>(m: &Mutex<T>, f: impl FnOnce(&mut T) -> Vec<u64>) -> Vec<u64> {
    f(&mut m.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Prints the legend, the header and a status line every second until the run time is over or
/// the service's stop flag is set.
pub fn monitor(w: Watch<'_>) -> Watched {
    let Watch {
        o,
        start,
        service,
        counters,
        probes,
        free,
        sync,
        stats,
        gp,
    } = w;
    let sample = || Sample {
        at: Instant::now(),
        calls: service.calls.load(Ordering::Relaxed),
        swaps: counters.swaps.load(Ordering::Relaxed),
        hits: probes.iter().map(|p| p.0.load(Ordering::Relaxed)).sum(),
    };
    let mut out = Watched {
        peak_mapped: 0,
        failures: Vec::new(),
        series: Vec::new(),
    };
    let mut prev = sample();
    let deadline = start + o.duration;
    let mut tick = start + Duration::from_secs(1);
    println!("{}\n", report::legend(o.callback_delay));
    println!("{}", report::header());
    loop {
        let wake = tick.min(deadline);
        while Instant::now() < wake && !service.stop.load(Ordering::Relaxed) {
            std::thread::sleep((wake - Instant::now()).min(Duration::from_millis(20)));
        }
        let now = Instant::now();
        let done = now >= deadline || service.stop.load(Ordering::Relaxed);
        let partial = now.duration_since(prev.at) >= Duration::from_millis(100);
        if now >= tick || (done && partial) {
            let cur = sample();
            let s = stats.get();
            out.peak_mapped = out.peak_mapped.max(s.mapped_bytes);
            if !s.balanced() && out.failures.is_empty() {
                out.failures
                    .push(format!("jit counters do not balance: {s:?}"));
            }
            let dt = cur.at.duration_since(prev.at).as_secs_f64().max(1e-9);
            let second = Second {
                t: now.duration_since(start).as_secs_f64(),
                calls_per_s: (cur.calls - prev.calls) as f64 / dt,
                swaps_per_s: (cur.swaps - prev.swaps) as f64 / dt,
                hits_per_s: (cur.hits - prev.hits) as f64 / dt,
                traced: counters.attached_now.load(Ordering::Relaxed),
                sites: o.sites,
                live: s.live,
                retired: s.retired,
                mapped: s.mapped_bytes,
                calls: cur.calls,
                reclaimed: s.reclaimed,
                stalls: gp.stats().stalls,
                invalid: service.invalid.load(Ordering::Relaxed),
                free: take(free, Latencies::take_recent),
                sync: take(sync, Latencies::take_recent),
            };
            println!("{}", second.render());
            out.series.push(second);
            prev = cur;
            tick += Duration::from_secs(1);
        }
        if done {
            return out;
        }
    }
}

/// Times one `gp.synchronize()` a second (half a second off the status line's ticks, so each
/// line gets one sample) until `stop` is set. An unregistered OS thread simply blocks in it.
pub fn time_synchronize(
    gp: &GraceDomain,
    sync: &Mutex<Latencies>,
    start: Instant,
    stop: &AtomicBool,
) {
    let mut next = start + Duration::from_millis(500);
    loop {
        while Instant::now() < next {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep((next - Instant::now()).min(Duration::from_millis(20)));
        }
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let t = Instant::now();
        gp.synchronize();
        let ns = t.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
        sync.lock().unwrap_or_else(|e| e.into_inner()).record(ns);
        next += Duration::from_secs(1);
        let now = Instant::now();
        while next <= now {
            next += Duration::from_secs(1); // a grace period took over a second: skip ahead
        }
    }
}
