//! Typed errors of the green-thread runtime.

use std::any::Any;
use std::fmt;

/// Why [`crate::Builder::build`] refused a configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    /// Preemption was asked for and cannot work here (see [`crate::preempt`]).
    #[error(transparent)]
    Preempt(#[from] crate::preempt::PreemptError),
    /// The preemption signal handler or monitor thread could not be set up.
    #[error("failed to set up preemption: {0}")]
    PreemptSetup(#[source] std::io::Error),
}

/// Why [`crate::Runtime::spawn`] refused a task.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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

/// Why [`crate::JoinHandle::join`] produced no value. `Send + Sync`, so it converts into
/// boxed error types such as `anyhow::Error` with `?`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// The task panicked; [`PanicPayload`] holds the payload and its message.
    #[error("the task panicked{}", .0.message().map(|m| format!(": {m}")).unwrap_or_default())]
    Panicked(PanicPayload),
    /// The task was dropped before finishing (runtime shutdown).
    #[error("the task was cancelled by runtime shutdown")]
    Cancelled,
}

impl JoinError {
    /// The panic message, when the task panicked with a string payload.
    pub fn panic_message(&self) -> Option<&str> {
        match self {
            JoinError::Panicked(p) => p.message(),
            JoinError::Cancelled => None,
        }
    }
}

/// The payload of a task's panic, as `std::panic::catch_unwind` returned it.
///
/// Its string message (a `&str` or `String` payload) is copied out when the task panics; the
/// payload itself is reachable only by value ([`into_inner`](Self::into_inner), e.g. for
/// `std::panic::resume_unwind`), which is what makes the wrapper `Sync` although payloads
/// need not be.
pub struct PanicPayload {
    message: Option<String>,
    payload: Box<dyn Any + Send + 'static>,
}

// SAFETY: no `&self` method gives access to `payload` (only `into_inner(self)` does, which
// needs ownership), so sharing a `&PanicPayload` between threads shares only `message`,
// a `String`.
unsafe impl Sync for PanicPayload {}

impl PanicPayload {
    pub(crate) fn new(payload: Box<dyn Any + Send + 'static>) -> Self {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned());
        PanicPayload { message, payload }
    }

    /// The panic message, when the payload was a `&str` or a `String`.
    pub fn message(&self) -> Option<&str> {
        self.message.as_deref()
    }

    /// The payload itself.
    pub fn into_inner(self) -> Box<dyn Any + Send + 'static> {
        self.payload
    }
}

impl fmt::Debug for PanicPayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PanicPayload")
            .field(&self.message.as_deref().unwrap_or("<non-string payload>"))
            .finish()
    }
}

/// Why [`crate::Runtime::register_thread`] refused to register the calling thread.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
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
#[non_exhaustive]
pub enum TryRecvError {
    /// No message right now; senders remain.
    #[error("channel is empty")]
    Empty,
    /// No message and every sender dropped.
    #[error("channel is empty and disconnected")]
    Disconnected,
}

/// Why [`GraceDomain::new`](crate::grace::GraceDomain::new) could not start a domain.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DomainError {
    /// The runtime was built without quiescent-state reporting (a benchmark knob): every
    /// grace period over it would end at once.
    #[error("grace periods need a runtime that reports quiescent states")]
    NoQsReporting,
    /// The driver thread could not be started.
    #[error("failed to spawn the grace-period driver thread: {0}")]
    SpawnDriver(#[source] std::io::Error),
}
