//! Waiting (outside the runtime) for a condition that another thread or task makes true.

use std::time::{Duration, Instant};

/// Polls `cond` until it holds (true) or `timeout` passes (false).
pub fn within(timeout: Duration, cond: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    true
}
