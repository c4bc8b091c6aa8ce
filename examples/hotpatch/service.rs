//! The service: green-thread tasks handling "requests", each a burst of calls through the patch
//! sites, with a yield or a short sleep between requests (both are quiescent states).
//!
//! Every result is checked against the [`VersionTable`] right after the call returns, before the
//! task reaches a yield point, so a task that sees a `RECLAIMED` tag proves a grace period ended
//! while it could still have been inside the retired code.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::patcher::Rng;
use crate::versions::VersionTable;

/// The signature of every implementation.
pub type SiteFn = extern "C" fn(u64) -> u64;

/// State shared by the caller tasks (and read by the status line).
pub struct Service {
    /// One entry per site.
    pub fns: Vec<SiteFn>,
    /// Site names, for messages.
    pub names: Vec<&'static str>,
    /// Every version ever emitted.
    pub table: Arc<VersionTable>,
    /// Set to stop the tasks and the patcher.
    pub stop: AtomicBool,
    /// Calls made.
    pub calls: AtomicU64,
    /// Results that came from no valid version.
    pub invalid: AtomicU64,
    /// The first invalid result, described.
    pub first_invalid: Mutex<Option<String>>,
    /// Calls run inside a preemptible scope (`--preempt`): no lock is held across them.
    pub preemptible: bool,
}

impl Service {
    /// A task's body: handle requests until told to stop.
    pub fn run_task(&self, seed: u64) {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        while !self.stop.load(Ordering::Relaxed) {
            let burst = rng.range(8, 72);
            let mut invalid = 0;
            for _ in 0..burst {
                let r = rng.next();
                let site = (r >> 40) as usize % self.fns.len();
                let x = rng.next();
                let f = self.fns[site];
                let result = if self.preemptible {
                    tramway::runtime::preemptible(|| f(x))
                } else {
                    f(x)
                };
                if let Err(e) = self.table.check(site, x, result) {
                    invalid += 1;
                    let mut first = self.first_invalid.lock().unwrap_or_else(|e| e.into_inner());
                    first.get_or_insert_with(|| format!("{}({x}): {e}", self.names[site]));
                }
            }
            self.calls.fetch_add(burst, Ordering::Relaxed);
            if invalid > 0 {
                self.invalid.fetch_add(invalid, Ordering::Relaxed);
            }
            // Between requests: mostly a yield; sometimes the task waits for "I/O".
            if rng.next() % 8 == 0 {
                tramway::runtime::sleep(Duration::from_micros(rng.range(100, 1000)));
            } else {
                tramway::runtime::yield_now();
            }
        }
    }
}

/// Names of the sites, in order.
pub const SITE_NAMES: [&str; 16] = [
    "pricing",
    "scoring",
    "shipping",
    "discount",
    "tax",
    "ranking",
    "quota",
    "routing",
    "fraud",
    "loyalty",
    "currency",
    "inventory",
    "billing",
    "search",
    "ads",
    "geo",
];
