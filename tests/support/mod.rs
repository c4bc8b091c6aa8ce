//! Harnesses shared by integration tests and examples.
pub mod example_bin;
pub mod spinner;
pub mod torture;
