//! The `tiered` example end to end: its binary's runs, exit codes and messages. (The
//! language modules have their own tests inside the example: `examples/tiered/tests.rs`.)

use std::path::PathBuf;
use std::process::{Command, Output};

// ---------------------------------------------------------------------------------------------
// Helpers

/// The example binary (built on demand by the harness).
fn example_binary() -> PathBuf {
    tramway_harness::example_bin::example_binary("tiered")
}

fn run_example(args: &[&str]) -> Output {
    let bin = example_binary();
    Command::new(&bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()))
}

/// Runs `src` as a script (no load phase) and returns its stderr, after checking that the
/// run failed with exit code 1 and did not panic.
fn script_error(name: &str, src: &str) -> String {
    let path = temp_file(name, src);
    let out = run_example(&[
        "--script",
        path.to_str().expect("utf-8 path"),
        "--seconds",
        "0",
    ]);
    let _ = std::fs::remove_file(&path);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

fn temp_file(name: &str, contents: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("tiered-test-{}-{name}", std::process::id()));
    std::fs::write(&path, contents).expect("write temp file");
    path
}

// ---------------------------------------------------------------------------------------------
// The binary

#[test]
fn example_redefines_under_load_with_no_invalid_results() {
    let out = run_example(&["--seconds", "1", "--tasks", "8", "--workers", "2"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "status {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("summary:"))
        .unwrap_or_else(|| panic!("no summary line in:\n{stdout}"));
    assert!(summary.contains(" invalid=0 "), "{summary}");
    assert!(
        summary.contains("mapped_bytes_after_shutdown=0 "),
        "{summary}"
    );
    // Tasks sleep inside `scale` (the `sleep` builtin, from compiled code) for a millisecond
    // while `scale` is redefined every millisecond: some frees were held back until the
    // sleeping task had left the old code, and still nothing was invalid and all was unmapped.
    let held: u64 = summary
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("frees_held="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no frees_held in {summary}"));
    assert!(held > 0, "no free was ever held back: {summary}");
    assert!(summary.ends_with("result=OK"), "{summary}");
    assert!(stdout.contains("speedup:"), "{stdout}");
}

#[test]
fn bad_program_reports_line_and_column_and_exits_1() {
    let stderr = script_error("bad.tw", "def f(x) = x + 1\n\ndef g(y) = f(y,\n  )\n");
    assert!(
        stderr.contains("error at 4:3: expected an expression, found `)`"),
        "{stderr}"
    );
}

#[test]
fn unknown_function_in_script_is_reported_at_the_call() {
    let stderr = script_error("unknown.tw", "def f(x) = x\nrun f(1) + h(2)\n");
    assert!(
        stderr.contains("error at 2:12: unknown function `h`"),
        "{stderr}"
    );
}

#[test]
fn script_runs_and_both_tiers_agree() {
    let path = temp_file(
        "ok.tw",
        "def sq(x) = x * x\ndef f(n) = if n == 0 then 0 else sq(n) + f(n - 1)\nrun f(100)\n",
    );
    let out = run_example(&[
        "--script",
        path.to_str().expect("utf-8 path"),
        "--seconds",
        "0",
    ]);
    let _ = std::fs::remove_file(&path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("338350"), "{stdout}");
}

#[test]
fn runaway_recursion_is_an_error_not_a_crash() {
    let stderr = script_error("deep.tw", "def f(n) = f(n + 1) + 1\nrun f(0)\n");
    assert!(stderr.contains("error at 2:1"), "{stderr}");
    assert!(stderr.contains("recursion too deep"), "{stderr}");
}

/// A recursion `depth` calls deep whose recursive call sits `nesting` levels inside its body.
fn nested_recursion(depth: u64, nesting: usize) -> String {
    let mut e = "f(n - 1)".to_string();
    for _ in 0..nesting {
        e = format!("({e} + 1)");
    }
    format!("def f(n) = if n == 0 then 0 else {e}\nrun f({depth})\n")
}

#[test]
fn nesting_inside_a_deep_recursion_is_an_error_not_a_stack_overflow() {
    // Within both documented limits (nesting <= 200, call depth <= 2000), but their product
    // used to overflow the main thread's stack (SIGABRT).
    let stderr = script_error("nested.tw", &nested_recursion(1990, 40));
    assert!(stderr.contains("recursion too deep"), "{stderr}");
}

#[test]
fn recursions_of_every_shape_within_the_limits_never_crash() {
    for (depth, nesting) in [(1999, 0), (1999, 3), (600, 12), (100, 150), (40, 190)] {
        let path = temp_file("shape.tw", &nested_recursion(depth, nesting));
        let out = run_example(&["--script", path.to_str().unwrap(), "--seconds", "0"]);
        let _ = std::fs::remove_file(&path);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            matches!(out.status.code(), Some(0 | 1)) && !stderr.contains("panicked"),
            "depth {depth}, nesting {nesting}: {}\n{stderr}",
            out.status
        );
    }
}

#[test]
fn bad_flags_print_usage_and_exit_2() {
    for args in [
        &["--bogus"][..],
        &["--tasks"],
        &["--tasks", "zero"],
        &["--workers", "0"],
        &["--seconds", "-1"],
    ] {
        let out = run_example(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("usage: tiered"), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn missing_script_file_exits_1() {
    let out = run_example(&["--script", "/nonexistent/tiered.tw"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}
