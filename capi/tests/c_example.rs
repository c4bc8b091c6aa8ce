//! The C example (`examples/embedder.c`) compiled with the system C compiler against the
//! freshly built library, statically and dynamically, and run: it must print `OK` and exit 0.
//!
//! The libraries come from `cargo build -p tramway-capi` into the test's own target directory
//! and profile (`target/<profile>/libtramway.{a,so}`; cargo does nothing if they are fresh).
//! The compiler is `$CC`, else `cc`, else `gcc` from `PATH`; only when none runs is the test
//! skipped, with a message saying so.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tramway_harness::example_bin::cargo_build;

/// How long the example may run (it takes well under a second).
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// Libraries the Rust standard library needs when linked statically (what
/// `--print native-static-libs` lists for this target, less the C library itself).
const STATIC_LIBS: &[&str] = &["-lpthread", "-ldl", "-lm", "-lrt", "-lutil"];

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The first C compiler that runs, if any.
fn c_compiler() -> Option<String> {
    let candidates = std::env::var("CC")
        .ok()
        .into_iter()
        .chain(["cc".to_string(), "gcc".to_string()]);
    for cc in candidates {
        let works = Command::new(&cc)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if works {
            return Some(cc);
        }
    }
    None
}

/// `target/<profile>`, with `libtramway.{a,so}` built for the test's profile.
fn built_library_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let profile_dir = cargo_build(&["--package", "tramway-capi", "--lib"]);
        for lib in ["libtramway.a", "libtramway.so"] {
            let path = profile_dir.join(lib);
            assert!(
                path.exists(),
                "{} missing after cargo build",
                path.display()
            );
        }
        profile_dir
    })
}

/// Compiles the example with `cc` and `link` (the library and its flags) into `name`.
fn compile(cc: &str, name: &str, link: &[String]) -> PathBuf {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let output = Command::new(cc)
        .args([
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Wpedantic",
            "-Werror",
            "-O1",
            "-g",
        ])
        .arg("-I")
        .arg(crate_dir().join("include"))
        .arg(crate_dir().join("examples").join("embedder.c"))
        .args(link)
        .arg("-o")
        .arg(&out)
        .output()
        .expect("run the C compiler");
    assert!(
        output.status.success(),
        "{cc} failed to build examples/embedder.c:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    out
}

/// Runs `exe` to completion (at most [`RUN_TIMEOUT`]) and checks it printed `OK` and exited 0.
fn run_and_check(exe: &Path) {
    let mut child = Command::new(exe)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the C example");
    let start = Instant::now();
    while child.try_wait().expect("wait for the C example").is_none() {
        if start.elapsed() > RUN_TIMEOUT {
            let _ = child.kill();
            let output = child
                .wait_with_output()
                .expect("collect the C example's output");
            panic!(
                "the C example ran longer than {RUN_TIMEOUT:?}; stderr:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let output = child
        .wait_with_output()
        .expect("collect the C example's output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the C example failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    assert!(
        stdout.lines().any(|l| l == "OK"),
        "the C example did not print OK:\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    println!("{}", stdout.trim_end());
}

macro_rules! require_compiler {
    () => {
        match c_compiler() {
            Some(cc) => cc,
            None => {
                println!("SKIPPED: no C compiler ($CC, cc or gcc) runs on this machine");
                return;
            }
        }
    };
}

#[test]
fn c_example_linked_statically_runs_and_prints_ok() {
    let cc = require_compiler!();
    let lib = built_library_dir().join("libtramway.a");
    let mut link = vec![lib.display().to_string()];
    link.extend(STATIC_LIBS.iter().map(|s| s.to_string()));
    run_and_check(&compile(&cc, "embedder-static", &link));
}

#[test]
fn c_example_linked_dynamically_runs_and_prints_ok() {
    let cc = require_compiler!();
    let dir = built_library_dir();
    let link = vec![
        format!("-L{}", dir.display()),
        format!("-Wl,-rpath,{}", dir.display()),
        "-ltramway".to_string(),
        "-lpthread".to_string(),
    ];
    run_and_check(&compile(&cc, "embedder-dynamic", &link));
}

#[test]
fn header_compiles_as_cxx() {
    let cxx = ["c++", "g++"].into_iter().find(|cxx| {
        Command::new(cxx)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    let Some(cxx) = cxx else {
        println!("SKIPPED: no C++ compiler (c++ or g++) runs on this machine");
        return;
    };
    let output = Command::new(cxx)
        .args(["-fsyntax-only", "-Wall", "-Wextra", "-Werror", "-x", "c++"])
        .arg(crate_dir().join("include").join("tramway.h"))
        .output()
        .expect("run the C++ compiler");
    assert!(
        output.status.success(),
        "include/tramway.h does not compile as C++:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
