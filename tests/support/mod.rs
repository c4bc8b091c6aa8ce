//! Harnesses shared by integration tests and examples.
pub mod torture;
