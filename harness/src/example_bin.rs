//! Locating (and building) an example binary for black-box tests.
//!
//! `cargo test` without `--all-targets` builds examples as plain binaries before it runs
//! integration tests, but `cargo test --all-targets` (the README's command) builds them only
//! as test harnesses. So the test builds the example itself, once per test process, into the
//! same target directory and profile as the test (cargo does nothing if it is up to date).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

static BUILT: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);

/// Path of example `name` of the `tramway` package, built with the test's profile if needed.
pub fn example_binary(name: &str) -> PathBuf {
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let built = built.get_or_insert_with(HashMap::new);
    if let Some(p) = built.get(name) {
        return p.clone();
    }
    let profile_dir = cargo_build(&["--package", "tramway", "--example", name]);
    let bin = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(bin.exists(), "{} missing after cargo build", bin.display());
    built.insert(name.to_string(), bin.clone());
    bin
}

/// Runs `cargo build --quiet ARGS` for the calling test's profile into its target directory
/// (cargo does nothing if the artifacts are up to date) and returns `target/<profile>`, where
/// the artifacts are.
pub fn cargo_build(args: &[&str]) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test>-<hash>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable in target/<profile>/deps")
        .to_path_buf();
    let target_dir = profile_dir.parent().expect("target dir").to_path_buf();
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(other) => other,
        None => panic!("unexpected target layout: {}", profile_dir.display()),
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_string());
    let status = Command::new(cargo)
        .args(["build", "--quiet"])
        .args(args)
        .args(["--profile", profile, "--target-dir"])
        .arg(&target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("run cargo build");
    assert!(status.success(), "cargo build {} failed", args.join(" "));
    profile_dir
}
