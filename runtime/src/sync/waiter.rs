//! A parked party: a green thread or an OS thread.

use std::sync::Arc;
use std::thread::{self, Thread};

use crate::task::{self, Task};

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
        thread::park();
    }
}
