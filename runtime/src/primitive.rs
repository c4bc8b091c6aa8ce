//! The atomics the quiescent-state protocol is built from, swappable for loom's.
//!
//! Built with `RUSTFLAGS="--cfg loom"`, the QS cell and the reader/GP barriers use loom's
//! model-checked atomics and fences, so `tests/loom_qs.rs` explores every interleaving (and
//! weak-memory outcome loom models) of the protocol argued in `fence.rs`. Everything else
//! in the crate keeps using std: only the protocol itself is modelled.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU64};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicU64};
