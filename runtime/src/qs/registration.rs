//! [`ThreadRegistration`]: an OS thread as a reader, liburcu-QSBR style.

use std::marker::PhantomData;

use super::registry::{QsRegistry, ThreadReader};
use super::transitions;
use crate::error::RegisterError;
use crate::primitive::Arc;

/// The guard of a registered OS thread: while it lives, the thread is a reader that grace
/// periods wait for (see the [`qs`](crate::qs) docs for the protocol).
///
/// Only green threads and registered threads may call JIT patch sites: an unregistered thread
/// is invisible to grace periods and could run freed code. A registration is **online** from
/// creation: grace periods then wait until the thread reports a quiescent state with
/// [`quiescent`](Self::quiescent) (a point where it holds no pointer into JIT code, typically
/// between two iterations of its main loop) or goes [`offline`](Self::offline). An offline
/// thread is quiescent for as long as it stays offline and must not call patch sites until
/// [`online`](Self::online).
///
/// Blocking waits of the runtime ([`Runtime::block_on`](crate::Runtime::block_on),
/// [`JoinHandle::join`](crate::JoinHandle::join), [`Event::wait`](crate::Event::wait), a
/// channel's `recv`, [`GraceDomain::synchronize`](crate::grace::GraceDomain::synchronize))
/// take an online thread offline while they block and bring it back online afterwards, so a
/// grace period never waits for a thread that is itself waiting. Inside a
/// [`non_yielding`](crate::non_yielding) section (a JIT hook: the thread is inside a
/// trampoline) none of this happens: the thread stays online.
///
/// Dropping the guard takes the thread offline and out of the registry. A thread holds at most
/// one registration; the guard is `!Send`. It may be kept in a `thread_local!`: it then drops
/// cleanly while the thread exits.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use tramway_runtime::grace::{GraceConfig, GraceDomain};
/// use tramway_runtime::Runtime;
///
/// let rt = Runtime::builder().workers(1).build()?;
/// let gp = GraceDomain::new(&rt, GraceConfig::default())?;
/// let reader = std::thread::spawn({
///     let rt = rt.clone();
///     move || {
///         let reg = rt.register_thread().expect("a plain OS thread can register");
///         for _ in 0..100 {
///             // ... call patch sites ...
///             reg.quiescent(); // between calls: no pointer into JIT code is held
///         }
///     } // dropped: offline and unregistered
/// });
/// gp.synchronize(); // waits for the reader's next quiescent state (or its exit)
/// reader.join().unwrap();
/// # Ok(()) }
/// ```
pub struct ThreadRegistration {
    thread: Arc<ThreadReader>,
    registry: Arc<QsRegistry>,
    _not_send: PhantomData<*const ()>,
}

impl ThreadRegistration {
    pub(crate) fn register(registry: &Arc<QsRegistry>) -> Result<Self, RegisterError> {
        Ok(ThreadRegistration {
            thread: transitions::register_thread(registry)?,
            registry: Arc::clone(registry),
            _not_send: PhantomData,
        })
    }

    /// Reports a quiescent state: the thread holds no pointer into JIT code right now. Does
    /// nothing while offline or inside a [`non_yielding`](crate::non_yielding) section.
    pub fn quiescent(&self) {
        transitions::thread_quiescent(&self.registry, &self.thread);
    }

    /// Goes offline: the thread is quiescent until [`online`](Self::online) and must not call
    /// patch sites meanwhile. Does nothing inside a [`non_yielding`](crate::non_yielding)
    /// section (see [`quiescent`](Self::quiescent)).
    pub fn offline(&self) {
        transitions::thread_offline(&self.registry, &self.thread);
    }

    /// Comes back online (no-op if already online).
    pub fn online(&self) {
        transitions::thread_online(&self.thread);
    }

    /// Whether the thread is online.
    pub fn is_online(&self) -> bool {
        self.thread.cell.is_active()
    }
}

impl Drop for ThreadRegistration {
    fn drop(&mut self) {
        transitions::unregister_thread(&self.registry, &self.thread);
    }
}

impl std::fmt::Debug for ThreadRegistration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadRegistration")
            .field("name", &self.thread.name)
            .field("online", &self.is_online())
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
impl ThreadRegistration {
    /// The registration's reader state (tests).
    pub(crate) fn reader(&self) -> &ThreadReader {
        &self.thread
    }
}
