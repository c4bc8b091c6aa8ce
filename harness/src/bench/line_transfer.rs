//! How long one cache line takes to move between two threads' cores: a machine fact that
//! the cross-thread benches print beside their results.
//!
//! # Why
//! On the 2-vCPU KVM guests these benches run on, the cost of moving a line from one vCPU to
//! the other is not a constant of the machine: it is about 30 ns for seconds at a time and
//! about 160-190 ns at others (presumably the host placing the two vCPUs on cores that
//! share a cache, or not), and it switches between runs and inside one. Whatever moves lines
//! between an updater, a reader and a reclaiming thread (a retire with a reader, above all)
//! costs several times more in the slow state, so a result means little without it.
//!
//! # Method
//! The calling thread and one spawned thread pass a counter back and forth through one
//! cache-line-aligned atomic: each waits (spinning) for the other's increment, then adds its
//! own. Every increment is a store the other thread must load from a line the other core
//! owns, so the time per increment is one one-way transfer plus a few instructions. The
//! clock starts after one untimed round trip (so a trial does not time the partner's start),
//! and the clock is read every 64 round trips and in every long wait: a trial that takes
//! more than [`TRIAL_LIMIT`] (both threads on one CPU, taking turns by preemption, or a
//! loaded host) is abandoned, which is no measure of a transfer. Of three trials of
//! [`ROUND_TRIPS`] round trips the result is the fastest that finished: another thread that
//! takes one of the CPUs for a moment (a bench's background thread finishing its work) only
//! ever makes a trial slower.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The line the two threads pass the counter through, alone on its (pair of) cache lines.
#[repr(align(128))]
struct Line(AtomicU64);

/// Round trips per trial (about 1 ms of a 2-core machine in its slow state).
pub const ROUND_TRIPS: u64 = 3_000;

/// A trial that takes longer than this is abandoned.
pub const TRIAL_LIMIT: Duration = Duration::from_millis(50);

/// The fastest one-way transfer time of three trials, in ns; `None` if none finished within
/// [`TRIAL_LIMIT`] (see the module docs).
pub fn cross_core_transfer_ns() -> Option<f64> {
    (0..3).filter_map(|_| trial()).min_by(f64::total_cmp)
}

/// One trial: ns per one-way transfer, or `None` past the limit.
fn trial() -> Option<f64> {
    let line = Line(AtomicU64::new(0));
    let (line, stop) = (&line.0, AtomicBool::new(false));
    // One untimed round trip (values 1 and 2), then `ROUND_TRIPS` timed ones.
    let last = 2 * (ROUND_TRIPS + 1);
    std::thread::scope(|s| {
        // The partner answers every odd value with the next even one, until the last or until
        // the main thread gives up (`stop`: a flag of its own, which no answer can overwrite).
        s.spawn(|| {
            let mut seen = 0;
            while seen < last && !stop.load(Ordering::Relaxed) {
                let v = line.load(Ordering::Acquire);
                if v % 2 == 1 && v > seen {
                    seen = v + 1;
                    line.store(seen, Ordering::Release);
                } else {
                    std::hint::spin_loop();
                }
            }
        });
        let begun = Instant::now();
        let mut start = begun;
        let mut next = 1;
        while next < last {
            line.store(next, Ordering::Release);
            let mut spins = 0u32;
            while line.load(Ordering::Acquire) != next + 1 {
                std::hint::spin_loop();
                spins = spins.wrapping_add(1);
                if spins % 4096 == 0 && begun.elapsed() > TRIAL_LIMIT {
                    stop.store(true, Ordering::Relaxed);
                    return None;
                }
            }
            if next == 1 {
                start = Instant::now();
            } else if next % 128 == 1 && begun.elapsed() > TRIAL_LIMIT {
                stop.store(true, Ordering::Relaxed);
                return None;
            }
            next += 2;
        }
        Some(start.elapsed().as_nanos() as f64 / (2 * ROUND_TRIPS) as f64)
    })
}

/// `cross-core line transfer: 31 ns` or `... unknown (...)`, for a bench's header.
pub fn describe() -> String {
    match cross_core_transfer_ns() {
        Some(ns) => format!("cross-core line transfer: {ns:.0} ns"),
        None => "cross-core line transfer: unknown (every trial of the probe timed out)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A finished measurement is positive and below the trial limit per transfer (twice it:
    /// the clock is read every 64 round trips); on a machine with one CPU (or a loaded one)
    /// the probe may give up, which is allowed.
    #[test]
    fn a_measured_transfer_takes_some_time_and_finishes() {
        if let Some(ns) = cross_core_transfer_ns() {
            assert!(ns > 0.0, "{ns}");
            let per_transfer_limit = TRIAL_LIMIT.as_nanos() as f64 / (2 * ROUND_TRIPS) as f64;
            assert!(ns <= 2.0 * per_transfer_limit, "{ns} ns");
        }
        assert!(describe().starts_with("cross-core line transfer: "));
    }
}
