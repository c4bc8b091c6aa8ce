//! A grace domain that raises a flag at its first stall report: a test waits for the flag to
//! know that a grace period has started and is waiting (its batch taken, its wake-ups asked
//! for), instead of sleeping for a time that a loaded machine may exceed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tramway_runtime::grace::{Flavor, GraceConfig, GraceDomain};
use tramway_runtime::Runtime;

/// A Tasks-flavor domain over `rt` that reports stalls after 20 ms and sets the returned flag
/// at every report.
pub fn domain_flagging_stalls(rt: &Runtime) -> (GraceDomain, Arc<AtomicBool>) {
    let stalled = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stalled);
    let config = GraceConfig::default()
        .flavor(Flavor::Tasks)
        .stall_timeout(Duration::from_millis(20))
        .on_stall(move |_| flag.store(true, Ordering::SeqCst));
    let domain = GraceDomain::new(rt, config).expect("grace domain");
    (domain, stalled)
}
