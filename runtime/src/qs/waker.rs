//! How readers wake a grace period that somebody is blocked on.
//!
//! A grace period sleeps between checks. While a caller is blocked on it (`synchronize`,
//! `barrier`, a cookie), it *arms* the waker, and the next reader transition that can end its
//! wait unparks every registered waiter thread. Several grace-period domains may share one
//! registry, so the waker keeps all their threads and a count of armed waits; the first reader
//! to notice an armed wait unparks them all (a spurious unpark only makes a waiter re-check).

use std::sync::atomic::Ordering;

use crate::primitive::{lock, thread, AtomicUsize, Mutex};

/// See the module docs.
#[derive(Debug, Default)]
pub(super) struct GpWaker {
    armed: AtomicUsize,
    waiters: Mutex<Vec<thread::Thread>>,
}

impl GpWaker {
    /// Called by readers after a transition: one relaxed load when nobody waits.
    #[inline]
    pub(super) fn notify(&self) {
        if self.armed.load(Ordering::Relaxed) != 0 {
            self.wake();
        }
    }

    #[cold]
    fn wake(&self) {
        // Only the first notifier after an `arm` pays for the unparks.
        if self.armed.swap(0, Ordering::AcqRel) != 0 {
            for t in lock(&self.waiters).iter() {
                t.unpark();
            }
            // When every core runs a busy worker, the freshly woken waiter may wait for a
            // whole scheduler time slice (milliseconds) before it gets a CPU, and the grace
            // period with it. A worker offers its CPU now (cheap: at most once per `arm`, and
            // a no-op when the waiter already runs elsewhere). A registered thread does not:
            // it is an application thread whose time is its own, and liburcu's readers do not.
            if super::reader::on_worker_thread() {
                thread::yield_now();
            }
        }
    }

    pub(super) fn add_driver(&self, t: thread::Thread) {
        lock(&self.waiters).push(t);
    }

    pub(super) fn remove_driver(&self) {
        let me = thread::current().id();
        lock(&self.waiters).retain(|t| t.id() != me);
    }

    pub(super) fn arm(&self) {
        self.armed.fetch_add(1, Ordering::SeqCst);
    }

    pub(super) fn disarm(&self) {
        let _ = self
            .armed
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }
}
