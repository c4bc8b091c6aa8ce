//! Typed errors of the green-thread runtime.

use std::any::Any;
use std::fmt;

/// Why [`crate::Builder::build`] refused a configuration.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// `workers(0)` was requested: a runtime needs at least one worker.
    #[error("a runtime needs at least one worker thread")]
    ZeroWorkers,
    /// The requested task stack size is outside the accepted range.
    #[error("task stack size {requested} bytes is outside the accepted range {min}..={max}")]
    StackSize {
        /// The requested size in bytes.
        requested: usize,
        /// Smallest accepted size.
        min: usize,
        /// Largest accepted size.
        max: usize,
    },
    /// A worker thread could not be started.
    #[error("failed to spawn worker thread: {0}")]
    SpawnWorker(#[source] std::io::Error),
}

/// Why [`crate::Runtime::spawn`] refused a task.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The runtime is shutting down or has shut down.
    #[error("the runtime has been shut down")]
    ShutDown,
    /// The task's stack could not be allocated.
    #[error("failed to allocate a task stack: {0}")]
    Stack(#[source] std::io::Error),
    /// `spawn_pinned` named a worker that does not exist.
    #[error("worker index {index} out of range (runtime has {workers} workers)")]
    NoSuchWorker {
        /// Requested worker index.
        index: usize,
        /// Number of workers.
        workers: usize,
    },
}

/// Why [`crate::JoinHandle::join`] produced no value.
#[derive(thiserror::Error)]
pub enum JoinError {
    /// The task panicked; the payload is the panic's.
    #[error("the task panicked")]
    Panicked(Box<dyn Any + Send + 'static>),
    /// The task was dropped before finishing (runtime shutdown).
    #[error("the task was cancelled by runtime shutdown")]
    Cancelled,
}

impl fmt::Debug for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JoinError::Panicked(p) => {
                let msg = p
                    .downcast_ref::<&str>()
                    .copied()
                    .or_else(|| p.downcast_ref::<String>().map(String::as_str));
                f.debug_tuple("Panicked")
                    .field(&msg.unwrap_or("<non-string payload>"))
                    .finish()
            }
            JoinError::Cancelled => f.write_str("Cancelled"),
        }
    }
}

impl JoinError {
    /// The panic message, when the task panicked with a string payload.
    pub fn panic_message(&self) -> Option<&str> {
        match self {
            JoinError::Panicked(p) => p
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| p.downcast_ref::<String>().map(String::as_str)),
            JoinError::Cancelled => None,
        }
    }
}

/// Why [`crate::Runtime::register_thread`] refused to register the calling thread.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegisterError {
    /// The calling thread already holds a registration.
    #[error("this thread is already registered")]
    AlreadyRegistered,
    /// Green threads and worker threads report QS through the scheduler; they cannot register.
    #[error("a runtime worker or task cannot register as an OS thread")]
    InRuntime,
}

/// A message could not be sent: the receiver is gone. Carries the message back.
#[derive(PartialEq, Eq, thiserror::Error)]
#[error("sending on a channel whose receiver was dropped")]
pub struct SendError<T>(pub T);

impl<T> fmt::Debug for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SendError(..)")
    }
}

/// `recv` found the channel empty and every sender dropped.
#[derive(Debug, PartialEq, Eq, Clone, Copy, thiserror::Error)]
#[error("receiving on an empty channel whose senders were all dropped")]
pub struct RecvError;

/// Why `try_recv` returned no message.
#[derive(Debug, PartialEq, Eq, Clone, Copy, thiserror::Error)]
pub enum TryRecvError {
    /// No message right now; senders remain.
    #[error("channel is empty")]
    Empty,
    /// No message and every sender dropped.
    #[error("channel is empty and disconnected")]
    Disconnected,
}
