//! The `hotpatch` example as a black box: short runs must end with `OK`, every call valid and no
//! code mapped; bad flags must exit with 2 and a usage message, without a panic.
//!
//! The binary is built on demand (`tramway_harness::example_bin`).

use std::path::PathBuf;
use std::process::{Command, Output};

fn example() -> PathBuf {
    tramway_harness::example_bin::example_binary("hotpatch")
}

fn run(args: &[&str]) -> Output {
    Command::new(example())
        .args(args)
        .output()
        .expect("spawn the hotpatch example")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The number in the summary row `label` (e.g. `  invalid results    0   ...`).
fn summary_value(stdout: &str, label: &str) -> u64 {
    let line = stdout
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(label))
        .unwrap_or_else(|| panic!("no `{label}` row in the summary:\n{stdout}"));
    let value = line.split_whitespace().next().unwrap_or("");
    value
        .replace(',', "")
        .parse()
        .unwrap_or_else(|_| panic!("`{label}` row has no number: {line:?}"))
}

/// Runs a short demo and checks its verdict and summary.
fn assert_ok_run(args: &[&str]) -> String {
    let out = run(args);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "hotpatch {args:?} exited with {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert!(!stderr.contains("panicked"), "stderr:\n{stderr}");
    assert!(
        stdout.lines().any(|l| l.starts_with("OK: ")),
        "no OK verdict:\n{stdout}"
    );
    assert_eq!(summary_value(&stdout, "invalid results"), 0, "{stdout}");
    assert_eq!(summary_value(&stdout, "mapped after drop"), 0, "{stdout}");
    assert!(summary_value(&stdout, "calls") > 0, "{stdout}");
    assert!(summary_value(&stdout, "swaps") > 0, "{stdout}");
    let emitted = summary_value(&stdout, "trampolines emitted");
    assert!(emitted > 0, "{stdout}");
    stdout
}

fn assert_usage_error(args: &[&str], mentions: &str) {
    let out = run(args);
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "hotpatch {args:?}: stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("usage: hotpatch"),
        "no usage message:\n{stderr}"
    );
    assert!(
        stderr.contains(mentions),
        "stderr does not mention `{mentions}`:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "stderr:\n{stderr}");
}

#[test]
fn short_run_with_tasks_flavor_is_ok_and_unmaps_everything() {
    let stdout = assert_ok_run(&[
        "--seconds",
        "1",
        "--tasks",
        "50",
        "--workers",
        "2",
        "--swap-interval",
        "1",
    ]);
    // One status line per second, with the column header.
    assert!(stdout.lines().any(|l| l.contains("calls/s")), "{stdout}");
    // The reclaim callbacks ran: some trampolines were reclaimed during the run.
    assert!(summary_value(&stdout, "grace periods") > 0, "{stdout}");
}

#[test]
fn short_run_with_rude_flavor_and_direct_sites_is_ok() {
    assert_ok_run(&[
        "--seconds=0.5",
        "--tasks=20",
        "--workers=2",
        "--swap-interval=500us",
        "--flavor=rude",
        "--site-kind=direct",
        "--sites=2",
    ]);
}

#[test]
fn bad_flags_exit_with_usage_and_code_2() {
    assert_usage_error(&["--workers", "zero"], "--workers");
    assert_usage_error(&["--workers", "0"], "--workers");
    assert_usage_error(&["--bogus"], "--bogus");
    assert_usage_error(&["--seconds"], "needs a value");
    assert_usage_error(&["--flavor", "sloppy"], "--flavor");
    assert_usage_error(&["--swap-interval", "soon"], "--swap-interval");
}

#[test]
fn help_prints_usage_and_exits_0() {
    let out = run(&["--help"]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("usage: hotpatch"));
}
