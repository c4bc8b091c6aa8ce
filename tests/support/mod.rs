//! Harnesses shared by integration tests and examples.
#![allow(dead_code)]
pub mod example_bin;
pub mod rng;
pub mod spinner;
pub mod torture;
pub mod wait;
