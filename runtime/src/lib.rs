//! tramway-runtime: green threads whose yield points are quiescent states, and the
//! tasks-style grace periods built on them.
#![warn(missing_docs)]

pub mod fence;
pub mod qs;
