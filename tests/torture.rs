//! The torture test and its control. See `tramway_harness::torture` for the scenario.

use std::process::Command;
use std::time::Duration;

use tramway::jit::SiteKind;
use tramway::runtime::grace::Flavor;
use tramway_harness::torture::{run, Reclaim, TortureConfig, RETIRED_BYTES_BOUND};

/// Set in the environment of the child process that runs the control scenario.
const CONTROL_ENV: &str = "TRAMWAY_TORTURE_CONTROL_CHILD";

#[test]
fn torture_tasks_grace_period_never_frees_code_in_use() {
    let cfg = TortureConfig::default();
    let report = run(&cfg);
    eprintln!("{report:#?}");
    assert_eq!(
        report.stale(),
        0,
        "a reader saw a generation freed under it"
    );
    assert_eq!(
        report.invalid_results, 0,
        "a call returned a value from no valid target"
    );
    assert!(report.calls >= cfg.min_calls, "only {} calls", report.calls);
    assert!(report.swaps >= cfg.min_swaps, "only {} swaps", report.swaps);
    assert!(
        report.ages[1] > 0,
        "no reader ever ran a retired-but-unreclaimed generation"
    );
    assert!(
        report.tasks_spawned > cfg.reader_tasks as u64,
        "no reader task exited during the run"
    );
    // The Jit throttles the patcher at the bound; the slack is what one more batch of
    // swaps (256 between samples) and the chained forwarding targets add.
    assert!(
        report.peak_retired_bytes <= 2 * RETIRED_BYTES_BOUND,
        "retired backlog grew to {} bytes",
        report.peak_retired_bytes
    );
    let s = report.final_stats;
    assert!(s.balanced(), "{s:?}");
    assert_eq!(s.retired, 0, "retired code left unreclaimed: {s:?}");
    assert_eq!(report.mapped_bytes_after_drop, 0);
}

#[test]
fn torture_direct_sites() {
    let cfg = TortureConfig {
        site_kind: SiteKind::Direct,
        min_calls: 500_000,
        min_swaps: 50_000,
        ..TortureConfig::default()
    };
    let report = run(&cfg);
    assert_eq!(report.stale(), 0);
    assert_eq!(report.invalid_results, 0);
    assert_eq!(report.final_stats.retired, 0);
    assert_eq!(report.mapped_bytes_after_drop, 0);
}

#[test]
fn control_freeing_without_a_grace_period_is_caught() {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe)
        .args([
            "--exact",
            "control_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CONTROL_ENV, "1")
        .output()
        .expect("run control child");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let detected = stderr.contains("STALE EXECUTION DETECTED");
    #[cfg(unix)]
    let crashed = {
        use std::os::unix::process::ExitStatusExt;
        matches!(
            out.status.signal(),
            Some(libc::SIGSEGV | libc::SIGILL | libc::SIGTRAP | libc::SIGBUS)
        )
    };
    #[cfg(not(unix))]
    let crashed = false;
    assert!(
        !out.status.success() && (crashed || detected),
        "the control run (no grace period) was not caught: status {:?}\n{stderr}",
        out.status
    );
}

/// The child half of the control: a no-op unless started by the test above.
#[test]
fn control_child() {
    if std::env::var_os(CONTROL_ENV).is_none() {
        return;
    }
    let report = run(&TortureConfig {
        reclaim: Reclaim::Immediate,
        min_calls: u64::MAX,
        min_swaps: u64::MAX,
        max_duration: Duration::from_secs(20),
        ..TortureConfig::default()
    });
    if report.stale() > 0 || report.invalid_results > 0 {
        eprintln!("STALE EXECUTION DETECTED: {report:?}");
        std::process::exit(3);
    }
    eprintln!("control run finished without detecting anything: {report:?}");
}

#[test]
fn torture_rude_flavor_is_safe_while_every_switch_is_voluntary() {
    let report = run(&TortureConfig {
        reclaim: Reclaim::Grace(Flavor::Rude),
        min_calls: 300_000,
        min_swaps: 20_000,
        ..TortureConfig::default()
    });
    assert_eq!(report.stale(), 0);
    assert_eq!(report.invalid_results, 0);
    assert_eq!(report.mapped_bytes_after_drop, 0);
}

/// Set in the environment of the child process that runs the Rude-under-preemption control.
const RUDE_PREEMPT_ENV: &str = "TRAMWAY_TORTURE_RUDE_PREEMPT_CHILD";

/// Readers preempted inside JIT code every 100 µs (mostly in the targets' spin loops), with a
/// grace period right behind each retirement, so that one can end while a reader is still
/// switched out (preempted readers resume within a few task slices). The Tasks run and the
/// Rude control differ in the flavor alone.
fn preempting(reclaim: Reclaim) -> TortureConfig {
    TortureConfig {
        reclaim,
        preempt: Some(Duration::from_micros(100)),
        callback_delay: Some(Duration::ZERO),
        min_calls: 1_000_000,
        min_swaps: 100_000,
        max_duration: Duration::from_secs(30),
        ..TortureConfig::default()
    }
}

#[test]
fn torture_with_preemption_tasks_grace_periods_wait_for_preempted_readers() {
    let report = run(&preempting(Reclaim::Grace(Flavor::Tasks)));
    eprintln!("{report:#?}");
    assert!(report.preemptions > 0, "no reader was preempted");
    assert_eq!(
        report.stale(),
        0,
        "a reader saw a generation freed under it"
    );
    assert_eq!(report.invalid_results, 0);
    assert_eq!(report.final_stats.retired, 0);
    assert_eq!(report.mapped_bytes_after_drop, 0);
}

/// The child half of the Rude control.
#[test]
fn rude_preempt_child() {
    if std::env::var_os(RUDE_PREEMPT_ENV).is_none() {
        return;
    }
    let report = run(&TortureConfig {
        min_calls: u64::MAX,
        min_swaps: u64::MAX,
        max_duration: Duration::from_secs(20),
        ..preempting(Reclaim::Grace(Flavor::Rude))
    });
    if report.stale() > 0 || report.invalid_results > 0 {
        eprintln!("STALE EXECUTION DETECTED: {report:?}");
        std::process::exit(3);
    }
    eprintln!("rude run finished without detecting anything: {report:?}");
}

#[test]
fn control_the_rude_flavor_fails_when_readers_are_preempted_inside_trampolines() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "rude_preempt_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(RUDE_PREEMPT_ENV, "1")
        .output()
        .expect("run the child");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let detected = stderr.contains("STALE EXECUTION DETECTED");
    let crashed = {
        use std::os::unix::process::ExitStatusExt;
        matches!(
            out.status.signal(),
            Some(libc::SIGSEGV | libc::SIGILL | libc::SIGTRAP | libc::SIGBUS)
        )
    };
    assert!(
        !out.status.success() && (crashed || detected),
        "the Rude flavor under preemption was not caught: status {:?}\n{stderr}",
        out.status
    );
}
