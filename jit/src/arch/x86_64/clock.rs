//! The timestamp counter that call-through trampolines read (`rdtsc`, inline in the body: no
//! call, about 20 cycles), and its conversion to nanoseconds.
//!
//! The TSC's frequency is not exposed to user space in a portable way, so it is calibrated
//! once against the monotonic clock (`std::time::Instant`): two (ticks, instant) pairs about
//! [`CALIBRATION`] apart, each the tightest of a few tries (the pair whose two `rdtsc` reads
//! around the clock read are closest), so a preemption during calibration costs accuracy only
//! if it hits every try. The result is a 32.32 fixed-point scale: `ns = ticks * scale >> 32`.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long the calibration spins (once per process, at the first call-through emission).
const CALIBRATION: Duration = Duration::from_millis(2);

/// Tries per (ticks, instant) pair.
const PAIR_TRIES: usize = 5;

/// Nanoseconds per tick, 32.32 fixed point.
static SCALE: OnceLock<u64> = OnceLock::new();

/// Reads the timestamp counter, as the call-through body does.
fn read_ticks() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: `rdtsc` reads the timestamp counter into edx:eax; it touches no memory and the
    // kernel allows it in user mode on Linux (CR4.TSD is clear unless a process opts in with
    // prctl(PR_SET_TSC), which nothing in this process does).
    unsafe {
        std::arch::asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags));
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// A ticks value and an instant taken at (nearly) the same moment.
fn paired() -> (u64, Instant) {
    let mut best: Option<(u64, u64, Instant)> = None;
    for _ in 0..PAIR_TRIES {
        let before = read_ticks();
        let now = Instant::now();
        let after = read_ticks();
        let gap = after.wrapping_sub(before);
        if best.is_none_or(|(g, _, _)| gap < g) {
            best = Some((gap, before + gap / 2, now));
        }
    }
    let (_, ticks, now) = best.expect("PAIR_TRIES > 0");
    (ticks, now)
}

fn calibrate() -> u64 {
    let (t0, i0) = paired();
    while i0.elapsed() < CALIBRATION {
        std::hint::spin_loop();
    }
    let (t1, i1) = paired();
    let ticks = t1.saturating_sub(t0);
    let ns = i1.duration_since(i0).as_nanos();
    if ticks == 0 {
        return 1 << 32; // a counter that did not move: report ticks as nanoseconds
    }
    u64::try_from((ns << 32) / u128::from(ticks)).unwrap_or(u64::MAX)
}

/// Calibrates the counter now if that has not happened yet (so that no exit hook pays for it).
pub(crate) fn init_tick_clock() {
    SCALE.get_or_init(calibrate);
}

/// Converts a tick count to nanoseconds (saturating).
pub(crate) fn ticks_to_ns(ticks: u64) -> u64 {
    let scale = *SCALE.get_or_init(calibrate);
    u64::try_from((u128::from(ticks) * u128::from(scale)) >> 32).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_convert_to_roughly_the_elapsed_time() {
        init_tick_clock();
        let (t0, i0) = paired();
        std::thread::sleep(Duration::from_millis(20));
        let (t1, i1) = paired();
        let ns = ticks_to_ns(t1 - t0) as f64;
        let real = i1.duration_since(i0).as_nanos() as f64;
        // Loose: only a grossly wrong scale (a unit error) fails.
        assert!(ns > real * 0.5 && ns < real * 2.0, "{ns} ns vs {real} ns");
    }
}
