//! The monitor thread: every quantum, signal the workers that have run one task for a whole
//! quantum (see "Delivery" in the `preempt` module docs).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::qs::QsSnapshot;
use crate::sched::scheduler::Scheduler;

/// The running monitor of one runtime; [`stop_and_join`](Self::stop_and_join) ends it.
#[derive(Debug, Default)]
pub(crate) struct Monitor {
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Monitor {
    /// Starts the monitor of `scheduler` (whose preemption state must be set).
    pub(crate) fn start(&self, scheduler: &Arc<Scheduler>) -> std::io::Result<()> {
        let sched = Arc::clone(scheduler);
        let handle = std::thread::Builder::new()
            .name("tramway-preempt".into())
            .spawn(move || watch(&sched))?;
        *self.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(())
    }

    /// Wakes the monitor so that it sees shutdown, and joins it (call after the workers have
    /// stopped: it runs until they have).
    pub(crate) fn stop_and_join(&self) {
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            h.thread().unpark();
            let _ = h.join();
        }
    }
}

fn watch(sched: &Scheduler) {
    let Some(preempt) = sched.preempt.as_ref() else {
        return;
    };
    let registry = &*sched.registry;
    let workers = preempt.slots.len();
    let mut last: Vec<Option<QsSnapshot>> = vec![None; workers];
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    // Until shutdown *and* every worker has left its loop: at shutdown a worker may still be
    // running a task spinning in JIT code (one it resumed from its preempted queue), which
    // only another preemption hands back to the worker so that it can stop.
    let running = || {
        !sched.shutdown.load(Ordering::Acquire)
            || preempt
                .slots
                .iter()
                .any(|s| s.tid.load(Ordering::Acquire) != 0)
    };
    while running() {
        std::thread::park_timeout(preempt.config.quantum);
        for (i, slot) in preempt.slots.iter().enumerate() {
            let snap = registry.worker_snapshot(i);
            let stuck = snap.was_active() && last[i] == Some(snap);
            last[i] = Some(snap);
            let tid = slot.tid.load(Ordering::Acquire);
            if !stuck || tid == 0 || slot.requested.load(Ordering::Acquire) {
                continue;
            }
            slot.requested.store(true, Ordering::Release);
            // SAFETY: tgkill takes plain integers; the thread is one of this process's
            // workers, which clears its `tid` before it exits (a signal that races with that
            // reaches a thread of this process whose handler passes it on; SIGURG is ignored
            // by default).
            let sent = unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, preempt.config.signal) };
            if sent == 0 {
                preempt
                    .counters
                    .signals_sent
                    .fetch_add(1, Ordering::Relaxed);
            } else {
                slot.requested.store(false, Ordering::Release);
            }
        }
    }
}
