//! Blocking primitives that park a green thread or block an OS thread, whichever calls them.
//!
//! All of them are built on `waiter`: a waiter is either a task (parked through the
//! scheduler, a voluntary yield point and therefore a quiescent state) or an OS thread
//! (`std::thread::park`). Both are token based and may wake spuriously, so every primitive
//! re-checks its condition in a loop.

pub mod channel;
pub mod event;
