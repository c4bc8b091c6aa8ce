//! The two reader/GP barrier pairings (`tramway_runtime::BarrierMode`), each shown to keep the torture test
//! clean: `membarrier(PRIVATE_EXPEDITED)` (the default where the kernel has it) and the
//! fenced fallback (forced with `TRAMWAY_FORCE_FENCE=1`, in a child process because the mode
//! is decided once per process).

use std::process::Command;
use std::time::Duration;

use tramway::runtime::os::{membarrier_supports, MembarrierCmd};
use tramway::runtime::{barrier_mode, BarrierMode};
use tramway_harness::torture::{run, TortureConfig};

const CHILD_ENV: &str = "TRAMWAY_FENCE_MODE_CHILD";

fn small_torture() {
    let report = run(&TortureConfig {
        min_calls: 300_000,
        min_swaps: 30_000,
        max_duration: Duration::from_secs(60),
        ..TortureConfig::default()
    });
    assert_eq!(
        report.stale(),
        0,
        "a reader saw a generation freed under it"
    );
    assert_eq!(report.invalid_results, 0);
    assert_eq!(report.final_stats.retired, 0);
}

#[test]
fn membarrier_pairing_is_chosen_where_available_and_keeps_readers_safe() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return; // the child runs `fenced_child` only
    }
    let expected = if membarrier_supports(MembarrierCmd::PrivateExpedited) {
        BarrierMode::Membarrier
    } else {
        BarrierMode::Fenced
    };
    assert_eq!(barrier_mode(), expected);
    small_torture();
}

#[test]
fn fenced_fallback_keeps_readers_safe() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "fenced_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .env("TRAMWAY_FORCE_FENCE", "1")
        .output()
        .expect("run child");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "fenced child failed: {stderr}");
    assert!(
        stderr.contains("barrier mode: Fenced"),
        "child did not run fenced: {stderr}"
    );
}

/// The child half of the test above: a no-op unless started by it.
#[test]
fn fenced_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    assert_eq!(barrier_mode(), BarrierMode::Fenced);
    eprintln!("barrier mode: {:?}", barrier_mode());
    small_torture();
}
