//! [`Event`]: park until notified (a task parks, an OS thread blocks).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::sched::waiter::{self, Waiter};

struct Entry {
    id: u64,
    woken: Arc<AtomicBool>,
    waiter: Waiter,
}

#[derive(Default)]
struct EventState {
    /// A `notify_one` that found nobody waiting; consumed by the next `wait`.
    permit: bool,
    next_id: u64,
    waiters: VecDeque<Entry>,
}

/// A wake-up primitive.
///
/// * [`Event::wait`] returns when a notification is delivered to this waiter.
/// * [`Event::notify_one`] wakes the oldest waiter, or, if nobody waits, stores one permit
///   that the next `wait` consumes at once (so a notify that races ahead of the wait is not
///   lost). Permits do not accumulate: at most one is stored.
/// * [`Event::notify_all`] wakes every current waiter and stores no permit.
///
/// Waiting from a task is a voluntary yield point (a quiescent state).
#[derive(Default)]
pub struct Event {
    state: Mutex<EventState>,
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("Event")
            .field("permit", &s.permit)
            .field("waiters", &s.waiters.len())
            .finish()
    }
}

impl Event {
    /// A new event with no permit and no waiters.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, EventState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a notification (see the type docs).
    pub fn wait(&self) {
        let (id, woken) = {
            let mut s = self.lock();
            if std::mem::take(&mut s.permit) {
                return;
            }
            let id = s.next_id;
            s.next_id += 1;
            let woken = Arc::new(AtomicBool::new(false));
            s.waiters.push_back(Entry {
                id,
                woken: woken.clone(),
                waiter: waiter::current(),
            });
            (id, woken)
        };
        // If we unwind while waiting (cancellation at shutdown), leave no stale entry behind,
        // and pass on a notification we already received.
        let guard = Unregister {
            event: self,
            id,
            woken: &woken,
        };
        while !woken.load(Ordering::Acquire) {
            waiter::park();
        }
        std::mem::forget(guard);
    }

    /// Wakes the oldest waiter, or stores a permit if there is none.
    pub fn notify_one(&self) {
        let entry = {
            let mut s = self.lock();
            match s.waiters.pop_front() {
                Some(e) => e,
                None => {
                    s.permit = true;
                    return;
                }
            }
        };
        entry.woken.store(true, Ordering::Release);
        entry.waiter.wake();
    }

    /// Wakes every current waiter.
    pub fn notify_all(&self) {
        let entries = std::mem::take(&mut self.lock().waiters);
        for e in entries {
            e.woken.store(true, Ordering::Release);
            e.waiter.wake();
        }
    }

    /// Number of parties currently waiting (for tests and diagnostics).
    pub fn waiters(&self) -> usize {
        self.lock().waiters.len()
    }
}

struct Unregister<'a> {
    event: &'a Event,
    id: u64,
    woken: &'a AtomicBool,
}

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        let mut s = self.event.lock();
        if let Some(pos) = s.waiters.iter().position(|e| e.id == self.id) {
            s.waiters.remove(pos);
        } else if self.woken.load(Ordering::Acquire) {
            drop(s);
            self.event.notify_one();
        }
    }
}
