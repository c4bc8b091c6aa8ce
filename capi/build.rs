//! Link flags of `libtramway.so`.
//!
//! `-Bsymbolic`: the library binds references to its own global symbols to its own
//! definitions. Without it, a symbol the library defines with default visibility (such as a
//! `#[no_mangle]` static that hand-written assembly addresses `rip`-relatively) would be
//! preemptible by another object, and the linker rejects a PC-relative reference to it in a
//! shared object. No embedder may interpose tramway's internals anyway.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-Bsymbolic");
}
