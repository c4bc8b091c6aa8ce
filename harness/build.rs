//! Builds the liburcu QSBR shim (`csrc/urcu_shim.c`) for `benches/urcu_compare/main.rs`, but only
//! where liburcu is installed.
//!
//! 1. A probe: a five-line C program against `<urcu/urcu-qsbr.h>` (the namespaced header
//!    liburcu has installed since 0.11; the old `<urcu-qsbr.h>` only maps the classic names
//!    onto it) is compiled and linked with `-lurcu-qsbr -lurcu-common` (what liburcu 0.13's
//!    pkg-config file says), else `-lurcu-qsbr` alone (releases without the common
//!    library). It is linked, never run, so cross builds probe the target's library.
//! 2. If a probe links, the shim is compiled with the `cc` crate, the same libraries are
//!    linked, and `cfg(tramway_urcu)` is set for this crate (`src/urcu.rs`). Otherwise
//!    nothing is built and the bench says how to install liburcu.
//!
//! Environment, all optional:
//! - `TRAMWAY_NO_URCU=1`: behave as if liburcu were missing (to check that the workspace
//!   builds, lints and tests clean without it).
//! - `TRAMWAY_URCU_WARN=1`: print a cargo warning, with the compiler's first error line,
//!   when the probe fails. Normal builds stay quiet: liburcu is optional.
//! - `TRAMWAY_REQUIRE_URCU=1`: fail the build when the probe fails (for CI jobs that
//!   installed liburcu and must not silently skip the comparison).
//!
//! The probe reruns when this file, the shim or one of these variables changes; after
//! installing liburcu, rebuild with `cargo clean -p tramway-harness` (or touch this file).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The probe: every liburcu entry point the shim's kinds of calls need (inline read side,
/// registration, grace period, callbacks).
const PROBE: &str = r#"#define _LGPL_SOURCE
#include <urcu/urcu-qsbr.h>
int main(void)
{
	urcu_qsbr_register_thread();
	urcu_qsbr_quiescent_state();
	urcu_qsbr_unregister_thread();
	urcu_qsbr_synchronize_rcu();
	urcu_qsbr_barrier();
	return 0;
}
"#;

/// Library sets to try, in order: liburcu 0.13's (`pkg-config --libs liburcu-qsbr`), then
/// that of releases without `liburcu-common`.
const LIB_SETS: &[&[&str]] = &[&["urcu-qsbr", "urcu-common"], &["urcu-qsbr"]];

fn main() {
    println!("cargo::rustc-check-cfg=cfg(tramway_urcu)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=csrc/urcu_shim.c");
    for var in [
        "TRAMWAY_NO_URCU",
        "TRAMWAY_URCU_WARN",
        "TRAMWAY_REQUIRE_URCU",
    ] {
        println!("cargo::rerun-if-env-changed={var}");
    }

    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let probe = if flag("TRAMWAY_NO_URCU") {
        Err("TRAMWAY_NO_URCU is set".to_string())
    } else {
        probe(&out)
    };
    match probe {
        Ok(libs) => {
            cc::Build::new()
                .file("csrc/urcu_shim.c")
                .std("c11")
                .warnings(true)
                .extra_warnings(true)
                .compile("tramway_urcu_shim");
            // After the shim's own `rustc-link-lib`, which `compile` printed: the shim's
            // archive comes first on the link line and these resolve its references.
            for lib in libs {
                println!("cargo::rustc-link-lib=dylib={lib}");
            }
            println!("cargo::rustc-cfg=tramway_urcu");
            println!("cargo::rustc-env=TRAMWAY_URCU_VERSION={}", version());
        }
        Err(why) if flag("TRAMWAY_REQUIRE_URCU") => {
            panic!(
                "TRAMWAY_REQUIRE_URCU is set but liburcu QSBR is not usable: {why} \
                 (install it: apt-get install liburcu-dev)"
            );
        }
        Err(why) if flag("TRAMWAY_URCU_WARN") => {
            println!(
                "cargo::warning=benches/urcu_compare/main.rs will skip liburcu QSBR: {why} \
                 (to compare with it: apt-get install liburcu-dev)"
            );
        }
        Err(_) => {}
    }
}

/// Whether `var` is set to something other than empty or `0`.
fn flag(var: &str) -> bool {
    env::var_os(var).is_some_and(|v| !v.is_empty() && v != "0")
}

/// Compiles and links the probe against each library set; the first that links, or why
/// none did (the compiler's first error line).
fn probe(out: &Path) -> Result<&'static [&'static str], String> {
    let src = out.join("urcu_probe.c");
    std::fs::write(&src, PROBE).map_err(|e| format!("writing the probe: {e}"))?;
    let compiler = cc::Build::new()
        .cargo_metadata(false)
        .cargo_warnings(false)
        .try_get_compiler()
        .map_err(|e| format!("no C compiler: {e}"))?;
    let mut why = String::new();
    for libs in LIB_SETS {
        let mut cmd = compiler.to_command();
        cmd.arg(&src).arg("-o").arg(out.join("urcu_probe"));
        for lib in *libs {
            cmd.arg(format!("-l{lib}"));
        }
        match cmd.output() {
            Ok(o) if o.status.success() => return Ok(libs),
            Ok(o) => {
                let stderr = String::from_utf8_lossy(&o.stderr);
                let first = stderr
                    .lines()
                    .find(|l| l.contains("error"))
                    .or_else(|| stderr.lines().next())
                    .unwrap_or("the probe did not link");
                why = first.trim().to_string();
            }
            Err(e) => why = format!("running the C compiler: {e}"),
        }
    }
    Err(why)
}

/// liburcu's version from pkg-config, for the bench's header only ("unknown" without it).
fn version() -> String {
    Command::new("pkg-config")
        .args(["--modversion", "liburcu-qsbr"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}
