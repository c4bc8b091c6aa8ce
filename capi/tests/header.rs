//! The checked-in C header is what cbindgen generates from the source now. After changing the
//! API, regenerate it with
//!
//! ```text
//! TRAMWAY_BLESS_HEADER=1 cargo test -p tramway-capi --test header
//! ```
//!
//! and commit the result; without the variable the test fails while the header is stale.

use std::path::{Path, PathBuf};

/// The crate directory (`capi/`).
fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The checked-in header's path.
fn header_path() -> PathBuf {
    crate_dir().join("include").join("tramway.h")
}

/// The header as cbindgen generates it now: `src/overview.md` as its opening comment, then
/// every `tw_` item with its docs.
fn generate() -> String {
    let dir = crate_dir();
    let mut config = cbindgen::Config::from_file(dir.join("cbindgen.toml"))
        .unwrap_or_else(|e| panic!("reading cbindgen.toml: {e}"));
    config.header = Some(c_comment(&read(&dir.join("src").join("overview.md"))));
    let bindings = cbindgen::Builder::new()
        .with_crate(&dir)
        .with_config(config)
        .generate()
        .unwrap_or_else(|e| panic!("cbindgen: {e}"));
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).expect("cbindgen writes UTF-8")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// `text` as one C block comment.
fn c_comment(text: &str) -> String {
    assert!(!text.contains("*/"), "the overview must not contain `*/`");
    let mut out = String::from("/*\n");
    for line in text.lines() {
        if line.is_empty() {
            out.push_str(" *\n");
        } else {
            out.push_str(" * ");
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str(" */");
    out
}

/// The environment variable that makes the test write the header instead of comparing it.
const BLESS: &str = "TRAMWAY_BLESS_HEADER";

#[test]
fn checked_in_header_matches_the_source() {
    let fresh = generate();
    let path = header_path();
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    if checked_in == fresh {
        return;
    }
    if std::env::var_os(BLESS).is_some_and(|v| v == "1") {
        std::fs::write(&path, &fresh).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        println!("wrote {}", path.display());
        return;
    }
    let first_difference = checked_in
        .lines()
        .zip(fresh.lines())
        .position(|(a, b)| a != b)
        .map_or_else(
            || "one is a prefix of the other".to_string(),
            |i| format!("first difference at line {}", i + 1),
        );
    panic!(
        "{} is stale ({first_difference}): run `{BLESS}=1 cargo test -p tramway-capi --test \
         header` to regenerate it, and commit the result",
        path.display()
    );
}
