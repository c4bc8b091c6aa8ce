//! The checked-in C header is what cbindgen generates from the source now.

#[path = "common/generate_header.rs"]
mod generate_header;

#[test]
fn checked_in_header_matches_the_source() {
    let fresh = generate_header::generate();
    let path = generate_header::header_path();
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    if checked_in != fresh {
        let first_difference = checked_in
            .lines()
            .zip(fresh.lines())
            .position(|(a, b)| a != b)
            .map_or_else(
                || "one is a prefix of the other".to_string(),
                |i| format!("first difference at line {}", i + 1),
            );
        panic!(
            "{} is stale ({first_difference}): run `cargo run -p tramway-capi --example \
             gen-header` to regenerate it, and commit the result",
            path.display()
        );
    }
}
