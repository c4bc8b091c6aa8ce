//! Registered OS threads: reader contexts outside the scheduler.
//!
//! Only green threads and registered threads may call patch sites; an unregistered thread is
//! invisible to grace periods and could run freed code. A registration is online (its cell
//! active) from creation; it reports a QS with [`ThreadRegistration::quiescent`], and is
//! quiescent for as long as it is [offline](ThreadRegistration::offline). Dropping the guard
//! goes offline and removes the thread from the registry.

use std::cell::RefCell;
use std::marker::PhantomData;
use std::sync::Arc;

use crate::error::RegisterError;
use crate::qs::{QsCell, QsRegistry, ThreadQs};

#[derive(Clone)]
pub(crate) struct Current {
    pub(crate) qs: Arc<ThreadQs>,
    pub(crate) registry: Arc<QsRegistry>,
}

thread_local! {
    static CURRENT: RefCell<Option<Current>> = const { RefCell::new(None) };
}

/// The calling thread's registration, if any.
pub(crate) fn current_registration() -> Option<Current> {
    CURRENT.with(|c| c.borrow().clone())
}

/// The calling OS thread's QS state, if it holds a registration (for `synchronize()`).
#[allow(dead_code)] // used by the grace-period engine
pub(crate) fn current_thread_qs() -> Option<Arc<ThreadQs>> {
    CURRENT.with(|c| c.borrow().as_ref().map(|r| r.qs.clone()))
}

/// Guard of a registered OS thread (see the module docs). `!Send`: it belongs to its thread.
pub struct ThreadRegistration {
    qs: Arc<ThreadQs>,
    registry: Arc<QsRegistry>,
    _not_send: PhantomData<*const ()>,
}

impl ThreadRegistration {
    pub(crate) fn register(registry: &Arc<QsRegistry>) -> Result<Self, RegisterError> {
        if crate::context::in_task() || crate::worker::current_shared().is_some() {
            return Err(RegisterError::InRuntime);
        }
        if CURRENT.with(|c| c.borrow().is_some()) {
            return Err(RegisterError::AlreadyRegistered);
        }
        let qs = Arc::new(ThreadQs {
            cell: QsCell::new(),
            name: std::thread::current().name().map(str::to_owned),
        });
        qs.cell.enter();
        registry
            .threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(qs.clone());
        CURRENT.with(|c| {
            *c.borrow_mut() = Some(Current {
                qs: qs.clone(),
                registry: registry.clone(),
            })
        });
        Ok(ThreadRegistration {
            qs,
            registry: registry.clone(),
            _not_send: PhantomData,
        })
    }

    /// Reports a quiescent state: the thread holds no pointer into JIT code right now.
    ///
    /// Inside a [`non_yielding`](crate::non_yielding) section (a JIT hook, whose return path
    /// runs through a trampoline) the thread is not quiescent, so this does nothing there.
    pub fn quiescent(&self) {
        if crate::context::in_non_yielding() {
            return;
        }
        self.qs.cell.quiescent();
        self.registry.waker.notify();
    }

    /// Goes offline: the thread is quiescent until [`online`](Self::online). It must not call
    /// patch sites while offline.
    ///
    /// Inside a [`non_yielding`](crate::non_yielding) section this does nothing (see
    /// [`quiescent`](Self::quiescent)).
    pub fn offline(&self) {
        if self.qs.cell.is_active() && !crate::context::in_non_yielding() {
            self.qs.cell.exit();
            self.registry.waker.notify();
        }
    }

    /// Comes back online (no-op if already online).
    pub fn online(&self) {
        if !self.qs.cell.is_active() {
            self.qs.cell.enter();
        }
    }

    /// Whether the thread is online.
    pub fn is_online(&self) -> bool {
        self.qs.cell.is_active()
    }

    /// This registration's QS state (what grace periods read).
    pub fn qs(&self) -> &Arc<ThreadQs> {
        &self.qs
    }
}

impl Drop for ThreadRegistration {
    fn drop(&mut self) {
        self.offline();
        self.registry
            .threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|t| !Arc::ptr_eq(t, &self.qs));
        CURRENT.with(|c| *c.borrow_mut() = None);
    }
}

impl std::fmt::Debug for ThreadRegistration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadRegistration")
            .field("name", &self.qs.name)
            .field("online", &self.is_online())
            .finish()
    }
}
