//! Generates `include/tramway.h` from the crate's source with cbindgen: shared by the
//! regenerating example (`examples/gen-header.rs`) and the staleness test (`tests/header.rs`).

use std::path::{Path, PathBuf};

/// The crate directory (`capi/`).
pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The checked-in header's path.
pub fn header_path() -> PathBuf {
    crate_dir().join("include").join("tramway.h")
}

/// The header as cbindgen generates it now: `src/overview.md` as its opening comment, then
/// every `tw_` item with its docs.
pub fn generate() -> String {
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
