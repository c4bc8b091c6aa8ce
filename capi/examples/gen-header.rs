//! Regenerates `capi/include/tramway.h` from the crate's source (`tests/header.rs` fails
//! while the checked-in header differs from what this writes):
//!
//! ```text
//! cargo run -p tramway-capi --example gen-header
//! ```

#[path = "../tests/common/generate_header.rs"]
mod generate_header;

fn main() {
    let header = generate_header::generate();
    let path = generate_header::header_path();
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    if old == header {
        println!("{} is up to date", path.display());
        return;
    }
    std::fs::write(&path, header).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    println!("wrote {}", path.display());
}
