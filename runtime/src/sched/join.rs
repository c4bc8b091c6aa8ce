//! Join handles: the one-shot slot a task publishes its result (or panic) into.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::api::TaskInfo;
use super::waiter::{self, Waiter};
use crate::error::JoinError;

struct SlotState<T> {
    result: Option<Result<T, JoinError>>,
    waiter: Option<Waiter>,
}

/// Where a task's outcome goes; shared by the task body and its [`JoinHandle`].
pub(crate) struct JoinSlot<T> {
    state: Mutex<SlotState<T>>,
    cancelling: AtomicBool,
}

/// Type-erased view of a [`JoinSlot`] used by cancellation.
pub(crate) trait Completion: Send + Sync {
    /// Called before the coroutine is dropped, so the body rethrows the forced unwind.
    fn mark_cancelling(&self);
    /// Called after the coroutine is dropped: completes with `Cancelled` unless completed.
    fn cancelled(&self);
}

impl<T> JoinSlot<T> {
    pub(crate) fn new() -> Self {
        JoinSlot {
            state: Mutex::new(SlotState {
                result: None,
                waiter: None,
            }),
            cancelling: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SlotState<T>> {
        // A poisoned slot still holds consistent data (we never panic while holding it).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn is_cancelling(&self) -> bool {
        self.cancelling.load(Ordering::Acquire)
    }

    /// Publishes the outcome (first one wins) and wakes the joiner.
    pub(crate) fn complete(&self, r: Result<T, JoinError>) {
        let waiter = {
            let mut s = self.lock();
            if s.result.is_none() {
                s.result = Some(r);
            }
            s.waiter.take()
        };
        if let Some(w) = waiter {
            w.wake();
        }
    }

    fn is_complete(&self) -> bool {
        self.lock().result.is_some()
    }

    fn wait(&self) -> Result<T, JoinError> {
        loop {
            {
                let mut s = self.lock();
                if let Some(r) = s.result.take() {
                    return r;
                }
                s.waiter = Some(waiter::current());
            }
            waiter::park();
        }
    }
}

impl<T: Send> Completion for JoinSlot<T> {
    fn mark_cancelling(&self) {
        self.cancelling.store(true, Ordering::Release);
    }

    fn cancelled(&self) {
        self.complete(Err(JoinError::Cancelled));
    }
}

/// Owned permission to wait for a task's result. Joining consumes the handle, so a task can
/// be joined at most once; dropping the handle detaches the task (it keeps running).
pub struct JoinHandle<T> {
    slot: Arc<JoinSlot<T>>,
    info: TaskInfo,
}

impl<T> JoinHandle<T> {
    pub(crate) fn new(slot: Arc<JoinSlot<T>>, info: TaskInfo) -> Self {
        JoinHandle { slot, info }
    }

    /// Waits for the task and returns its value, its panic payload, or `Cancelled` if the
    /// runtime shut down first. From a task this parks the task (a yield point); from an OS
    /// thread it blocks the thread.
    pub fn join(self) -> Result<T, JoinError> {
        self.slot.wait()
    }

    /// Whether the task has finished (returned, panicked or was cancelled).
    pub fn is_finished(&self) -> bool {
        self.slot.is_complete()
    }

    /// The task's id and name.
    pub fn info(&self) -> &TaskInfo {
        &self.info
    }
}

impl<T> std::fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinHandle")
            .field("task", &self.info)
            .finish()
    }
}
