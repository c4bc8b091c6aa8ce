//! The runtime's timer heap: sleeping tasks are parked and woken by a worker at their deadline.
//!
//! One heap per runtime, guarded by a mutex. [`Timers::next`] caches the earliest deadline
//! (nanoseconds since the runtime's epoch, `u64::MAX` when empty) so the worker loop pays one
//! relaxed load per iteration when nothing sleeps. Workers fire due timers between tasks, and
//! an idle worker parks with a timeout equal to the earliest deadline.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::task::Task;

struct Entry {
    deadline: u64,
    seq: u64,
    task: Arc<Task>,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        (self.deadline, self.seq) == (o.deadline, o.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.deadline, self.seq).cmp(&(o.deadline, o.seq))
    }
}

#[derive(Default)]
struct Heap {
    entries: BinaryHeap<Reverse<Entry>>,
    seq: u64,
}

/// Deadline-ordered parked tasks.
pub(crate) struct Timers {
    epoch: Instant,
    next: AtomicU64,
    heap: Mutex<Heap>,
}

impl Timers {
    pub(crate) fn new() -> Self {
        Timers {
            epoch: Instant::now(),
            next: AtomicU64::new(u64::MAX),
            heap: Mutex::new(Heap::default()),
        }
    }

    fn nanos(&self, t: Instant) -> u64 {
        // Saturates: a deadline ~584 years away behaves as "never", which is fine.
        u64::try_from(t.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX - 1)
    }

    /// Registers `task` to be unparked at `deadline`. Returns true if this is the new earliest
    /// deadline (an idle worker should recompute its park timeout).
    pub(crate) fn add(&self, deadline: Instant, task: Arc<Task>) -> bool {
        let d = self.nanos(deadline);
        let mut h = self.heap.lock().unwrap_or_else(|e| e.into_inner());
        h.seq += 1;
        let seq = h.seq;
        h.entries.push(Reverse(Entry {
            deadline: d,
            seq,
            task,
        }));
        let earliest = h.entries.peek().map_or(u64::MAX, |e| e.0.deadline);
        let prev = self.next.swap(earliest, Ordering::Relaxed);
        earliest < prev
    }

    /// Whether any timer is due now (cheap when none is registered).
    #[inline]
    pub(crate) fn any_due(&self) -> bool {
        let next = self.next.load(Ordering::Relaxed);
        next != u64::MAX && next <= self.nanos(Instant::now())
    }

    /// Unparks every task whose deadline has passed.
    pub(crate) fn fire_due(&self) {
        if !self.any_due() {
            return;
        }
        let now = self.nanos(Instant::now());
        let mut due = Vec::new();
        {
            let mut h = self.heap.lock().unwrap_or_else(|e| e.into_inner());
            while h.entries.peek().is_some_and(|e| e.0.deadline <= now) {
                if let Some(Reverse(e)) = h.entries.pop() {
                    due.push(e.task);
                }
            }
            let earliest = h.entries.peek().map_or(u64::MAX, |e| e.0.deadline);
            self.next.store(earliest, Ordering::Relaxed);
        }
        for t in due {
            t.unpark();
        }
    }

    /// Time until the earliest deadline, if any.
    pub(crate) fn time_to_next(&self) -> Option<Duration> {
        let next = self.next.load(Ordering::Relaxed);
        (next != u64::MAX).then(|| {
            let now = self.nanos(Instant::now());
            Duration::from_nanos(next.saturating_sub(now))
        })
    }

    /// Drops every entry (shutdown).
    pub(crate) fn clear(&self) {
        let entries =
            std::mem::take(&mut self.heap.lock().unwrap_or_else(|e| e.into_inner()).entries);
        self.next.store(u64::MAX, Ordering::Relaxed);
        drop(entries);
    }
}
