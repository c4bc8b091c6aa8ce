//! A parked party: a green thread or an OS thread. Every blocking wait of the runtime (join,
//! `block_on`, `Event`, channels) parks through here, so this is where a wait becomes a
//! quiescent state.
//!
//! * A task parks through the scheduler: a voluntary yield point.
//! * An OS thread parks with `std::thread::park`. If it is a registered thread that is
//!   online, it goes offline for the wait (an [`OfflineGuard`]): a thread blocked in the
//!   runtime holds no pointer into JIT code (unless it waits inside a non-yielding section,
//!   where the guard does nothing), and a grace period must not wait for a thread that may be
//!   waiting for that very grace period.

use std::sync::Arc;
use std::thread::{self, Thread};

use super::task::{self, Task};
use crate::qs::OfflineGuard;

/// Something that can be woken: a task or an OS thread.
pub(crate) enum Waiter {
    Task(Arc<Task>),
    Thread(Thread),
}

impl Waiter {
    /// Wakes the waiter (or leaves it a token if it is not parked yet).
    pub(crate) fn wake(self) {
        match self {
            Waiter::Task(t) => t.unpark(),
            Waiter::Thread(t) => t.unpark(),
        }
    }
}

/// The calling context as a waiter.
pub(crate) fn current() -> Waiter {
    match task::current_arc() {
        Some(t) => Waiter::Task(t),
        None => Waiter::Thread(thread::current()),
    }
}

/// Parks the calling context until woken (spurious wake-ups possible).
pub(crate) fn park() {
    if task::with_current(Task::park).is_none() {
        let _offline = OfflineGuard::new();
        thread::park();
    }
}
