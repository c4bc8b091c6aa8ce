//! How readers wake a grace period that somebody is blocked on.
//!
//! A grace period sleeps between checks. While a caller is blocked on it (`synchronize`,
//! `barrier`, a cookie), it asks to be woken before it sleeps, in one of two ways:
//! - **per reader** (waiting for reader cells): it sets the wake request of each cell it still
//!   waits for (`cell.rs`), as liburcu's `synchronize_rcu` sets each late reader's `waiting`
//!   flag. The next transition of such a reader wakes it; readers that have already passed
//!   never do. A reader that reports often would otherwise wake the waiter at every report:
//!   on two CPUs with three runnable threads the waiter then took the CPU from the very
//!   reader it waited for, again and again (cold grace periods with two readers took twice
//!   liburcu's time);
//! - **armed** (waiting for holdout tasks, which pass their yield points on whatever worker
//!   runs them): it increments the armed count, and the next transition of any reader wakes
//!   it.
//!
//! A reader reads requests after its cell store. A registered thread reads them behind a full
//! fence (`quiescent()` once more after it), so a request stored before the waiter's fenced
//! re-check of the cell is always seen and the waiter parks without a short timer, as long as
//! it is registered here (registrations are counted: see [`GpWaker::remove_waiter`]); a worker
//! may miss one, and its waiter keeps short backoff sleeps (the `qs` module docs,
//! "Transitions").
//!
//! A wake unparks every registered waiter thread: several grace-period domains may share one
//! registry, so the waker keeps all their threads (a spurious unpark only makes a waiter
//! re-check).

use std::sync::atomic::Ordering;

use super::cell::QsCell;
use crate::primitive::{lock, thread, AtomicU64, AtomicUsize, Mutex};

#[cfg(all(loom, test))]
std::thread_local! {
    /// Fault injection for a loom control: a wake unparks only the first registered waiter.
    pub(crate) static WAKE_ONLY_FIRST_WAITER: std::cell::Cell<bool> =
        const { std::cell::Cell::new(false) };
}

/// See the module docs.
#[derive(Debug, Default)]
pub(super) struct GpWaker {
    armed: AtomicUsize,
    waiters: Mutex<Vec<thread::Thread>>,
    /// Reader transitions that woke the waiters (statistics).
    wakes: AtomicU64,
}

impl GpWaker {
    /// Called by a reader after a transition of `cell`: two relaxed loads when nobody waits.
    #[inline]
    pub(super) fn notify(&self, cell: &QsCell) {
        let requested = cell.take_wake_request();
        if requested || self.armed.load(Ordering::Relaxed) != 0 {
            self.wake(requested);
        }
    }

    #[cold]
    fn wake(&self, requested: bool) {
        #[cfg(all(test, not(loom)))]
        if crate::primitive::fault_injection::drops_wakes() {
            return;
        }
        // Of the readers that see an armed wait, only the first pays for the unparks.
        if self.armed.swap(0, Ordering::AcqRel) != 0 || requested {
            self.wakes.fetch_add(1, Ordering::Relaxed);
            // Unpark outside the lock: an unpark is a system call when its thread sleeps,
            // and the first thing a woken inline runner does after its GP is to deregister
            // under this lock (it would block on the notifier, and wake it again on unlock).
            #[allow(unused_mut)]
            let mut waiters = lock(&self.waiters).clone();
            #[cfg(all(loom, test))]
            if WAKE_ONLY_FIRST_WAITER.with(std::cell::Cell::get) {
                waiters.truncate(1); // the injected bug
            }
            for t in &waiters {
                t.unpark();
            }
            // When every core runs a busy worker, the freshly woken waiter may wait for a
            // whole scheduler time slice (milliseconds) before it gets a CPU, and the grace
            // period with it. A worker offers its CPU now (cheap: at most once per `arm` or
            // request, and a no-op when the waiter already runs elsewhere). A registered thread does not:
            // it is an application thread whose time is its own, and liburcu's readers do not.
            if super::reader::on_worker_thread() {
                thread::yield_now();
            }
        }
    }

    /// Registers `t` as a thread readers unpark. A thread may be registered more than once
    /// (a domain's driver for good, and again while it runs another domain's grace period
    /// inline, from a callback), and stays registered until each registration is removed.
    pub(super) fn add_waiter(&self, t: thread::Thread) {
        lock(&self.waiters).push(t);
    }

    /// Removes one registration of the calling thread: removing all of them let a driver that
    /// had run another domain's grace period inline lose its own, and its later waits for
    /// registered threads (which park without a short timer) were then woken only by their
    /// safety-net timeout (`grace/stall.rs`).
    pub(super) fn remove_waiter(&self) {
        let me = thread::current().id();
        let mut waiters = lock(&self.waiters);
        if let Some(i) = waiters.iter().rposition(|t| t.id() == me) {
            waiters.remove(i);
        }
    }

    /// Whether the calling thread is registered as a waiter (readers' wakes unpark it).
    pub(super) fn has_waiter(&self) -> bool {
        let me = thread::current().id();
        lock(&self.waiters).iter().any(|t| t.id() == me)
    }

    /// Reader transitions that woke the waiters so far.
    pub(super) fn wakes(&self) -> u64 {
        self.wakes.load(Ordering::Relaxed)
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
