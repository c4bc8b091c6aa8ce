//! Every concurrency primitive the quiescent-state protocol and the grace-period engine use,
//! swappable for loom's.
//!
//! Built with `RUSTFLAGS="--cfg loom"`, `qs/` and `grace/` run on loom's model-checked
//! atomics, fences, mutexes, condition variables, threads and thread-locals, so the loom tests
//! (`grace/loom_tests.rs`) explore the interleavings of the *real* grace-period sequencer and
//! reader transitions, with fake readers instead of a scheduler. The scheduler (`sched/`) is
//! not modelled and keeps using std directly.
//!
//! What loom cannot model is mapped to its closest sound equivalent: a timed park or timed
//! condition-variable wait returns at once (a sleep of unknown length: every caller re-checks
//! its condition in a loop), and `membarrier` is not available (`qs/barrier.rs` uses the
//! fenced pairing under loom).

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize};

#[cfg(loom)]
pub(crate) use loom::sync::{Arc, Condvar, Mutex, MutexGuard};
#[cfg(not(loom))]
pub(crate) use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// `thread_local!` with a `const` initializer: std's (no lazy initialization, no destructor,
/// readable from a signal handler), or loom's per-model-thread one under loom.
macro_rules! const_thread_local {
    ($(#[$attr:meta])* $vis:vis static $name:ident: $t:ty = $init:expr;) => {
        #[cfg(not(loom))]
        std::thread_local! { $(#[$attr])* $vis static $name: $t = const { $init }; }
        #[cfg(loom)]
        loom::thread_local! { $(#[$attr])* $vis static $name: $t = $init; }
    };
}
pub(crate) use const_thread_local;

/// Locks `m`, ignoring poisoning: every structure guarded by these mutexes is kept consistent
/// before any call that can panic.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Threads: spawn, identity, park/unpark.
pub(crate) mod thread {
    use std::time::Duration;

    #[cfg(loom)]
    pub(crate) use loom::thread::{current, yield_now, Builder, JoinHandle, Thread};
    #[cfg(not(loom))]
    pub(crate) use std::thread::{current, yield_now, Builder, JoinHandle, Thread};

    /// A spin-wait hint (under loom: a yield, which loom needs in every spin loop).
    pub(crate) fn spin_hint() {
        #[cfg(loom)]
        loom::thread::yield_now();
        #[cfg(not(loom))]
        std::hint::spin_loop();
    }

    /// Parks the calling thread for at most `dur` (may return early), where the caller's
    /// protocol owes it an unpark for what it waits for: the timeout is only a safety net
    /// (and paces stall reports). Under loom it parks until unparked, so a lost wake-up is a
    /// deadlock the model checker reports.
    pub(crate) fn park_expecting_unpark(dur: Duration) {
        #[cfg(loom)]
        {
            let _ = dur;
            loom::thread::park();
        }
        #[cfg(not(loom))]
        {
            #[cfg(test)]
            if super::fault_injection::ignores_unparks() {
                std::thread::sleep(dur);
                return;
            }
            std::thread::park_timeout(dur);
        }
    }

    /// Parks the calling thread for at most `dur` (may return early).
    pub(crate) fn park_timeout(dur: Duration) {
        #[cfg(loom)]
        {
            let _ = dur;
            loom::thread::yield_now();
        }
        #[cfg(not(loom))]
        std::thread::park_timeout(dur);
    }
}

/// Waits on `cv` (paired with `mutex`, whose guard is `guard`) for at most `dur`; may return
/// early (callers re-check their condition).
pub(crate) fn wait_timeout<'a, T>(
    cv: &Condvar,
    mutex: &'a Mutex<T>,
    guard: MutexGuard<'a, T>,
    dur: std::time::Duration,
) -> MutexGuard<'a, T> {
    #[cfg(loom)]
    {
        // loom cannot time out a wait: model it as an immediate time-out that lets other
        // threads take the lock in between.
        let _ = (cv, dur);
        drop(guard);
        loom::thread::yield_now();
        lock(mutex)
    }
    #[cfg(not(loom))]
    {
        let _ = mutex;
        cv.wait_timeout(guard, dur)
            .unwrap_or_else(|e| e.into_inner())
            .0
    }
}

/// Waits on `cv` until notified (spurious wake-ups possible).
pub(crate) fn wait<'a, T>(cv: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    cv.wait(guard).unwrap_or_else(|e| e.into_inner())
}

/// Per-thread faults the crate's own tests inject into the wake-up protocol (tests only).
#[cfg(all(test, not(loom)))]
pub(crate) mod fault_injection {
    use std::cell::Cell;

    std::thread_local! {
        static IGNORE_UNPARKS: Cell<bool> = const { Cell::new(false) };
        static DROP_WAKES: Cell<bool> = const { Cell::new(false) };
        static DELAY_AFTER_TIMEOUT: Cell<std::time::Duration> =
            const { Cell::new(std::time::Duration::ZERO) };
    }

    /// Makes this thread's [`park_expecting_unpark`](super::thread::park_expecting_unpark)
    /// sleep its whole timeout whatever unparks it gets: a waiter that was woken but got no
    /// CPU until its timeout had passed.
    pub(crate) fn set_ignore_unparks(yes: bool) {
        IGNORE_UNPARKS.with(|c| c.set(yes));
    }

    pub(crate) fn ignores_unparks() -> bool {
        IGNORE_UNPARKS.with(Cell::get)
    }

    /// Makes this reader thread's transitions drop the wake-ups they owe (a lost wake-up).
    pub(crate) fn set_drop_wakes(yes: bool) {
        DROP_WAKES.with(|c| c.set(yes));
    }

    pub(crate) fn drops_wakes() -> bool {
        DROP_WAKES.with(Cell::get)
    }

    /// Makes this thread, as a grace period's waiter whose assured park ran into its
    /// safety-net timeout, sleep `delay` before it re-checks its readers: a waiter whose
    /// timeout fired but that got no CPU for that long (`grace/stall.rs`).
    pub(crate) fn set_delay_after_timeout(delay: std::time::Duration) {
        DELAY_AFTER_TIMEOUT.with(|c| c.set(delay));
    }

    pub(crate) fn delay_after_timeout() {
        let delay = DELAY_AFTER_TIMEOUT.with(Cell::get);
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
    }
}
