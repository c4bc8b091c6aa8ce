//! The two reader/GP barrier pairings of `fence.rs`, each shown to keep the torture test
//! clean: `membarrier(PRIVATE_EXPEDITED)` (the default where the kernel has it) and the
//! fenced fallback (forced with `TRAMWAY_FORCE_FENCE=1`, in a child process because the mode
//! is decided once per process).

mod support;

use std::process::Command;
use std::time::Duration;

use support::torture::{run, TortureConfig};
use tramway::runtime::fence::{self, BarrierMode};

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

/// Whether this kernel offers `MEMBARRIER_CMD_PRIVATE_EXPEDITED`.
fn kernel_has_private_expedited_membarrier() -> bool {
    const MEMBARRIER_CMD_QUERY: libc::c_long = 0;
    const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
    // SAFETY: a query with integer arguments only.
    let mask = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_QUERY, 0, 0) };
    mask >= 0 && mask & MEMBARRIER_CMD_PRIVATE_EXPEDITED != 0
}

#[test]
fn membarrier_pairing_is_chosen_where_available_and_keeps_readers_safe() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return; // the child runs `fenced_child` only
    }
    let expected = if kernel_has_private_expedited_membarrier() {
        BarrierMode::Membarrier
    } else {
        BarrierMode::Fenced
    };
    assert_eq!(fence::mode(), expected);
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
    assert_eq!(fence::mode(), BarrierMode::Fenced);
    eprintln!("barrier mode: {:?}", fence::mode());
    small_torture();
}
