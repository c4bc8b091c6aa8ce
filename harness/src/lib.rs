//! What tramway's tests, benches and examples share, in one place instead of `#[path]`
//! includes: the rcutorture-style torture harness, helpers for tests (a deterministic rng, a
//! worker-holding spinner, polling waits, locating example binaries, the deliberately unsound
//! reclaimers of the controls). Not published; nothing
//! here is product API.
#![warn(missing_docs)]

pub mod baseline;
pub mod bench;
pub mod example_bin;
pub mod probe_teardown;
pub mod rng;
pub mod spinner;
pub mod stall_flag;
pub mod torture;
pub mod unsound;
pub mod urcu;
pub mod wait;
