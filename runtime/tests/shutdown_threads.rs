//! Shutdown with parked tasks: alone in its binary, because it counts the process's OS
//! threads (/proc/self/task) and parallel tests would disturb the count.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tramway_runtime::{sleep, Event, JoinError, Runtime};

fn os_threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// The thread count once it reads `expected`, or what it reads after 5 s. A joined thread can
/// still be listed for a moment: `pthread_join` returns when the kernel clears the thread's id
/// on exit, a little before the thread is removed from `/proc/self/task`.
fn os_threads_settled_at(expected: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = os_threads();
        if n == expected || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Counts drops: shows that a cancelled task's stack was unwound.
struct DropCounter(Arc<AtomicUsize>);
impl Drop for DropCounter {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn shutdown_with_parked_tasks_cancels_them_and_joins_every_worker() {
    let before = os_threads();
    let rt = Runtime::builder().workers(4).build().unwrap();
    assert_eq!(os_threads(), before + 4);
    let never = Arc::new(Event::new());
    let dropped = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for _ in 0..20 {
        let (ev, d) = (never.clone(), DropCounter(dropped.clone()));
        handles.push(rt.spawn(move || {
            let _d = d;
            ev.wait();
        }));
    }
    for _ in 0..5 {
        let d = DropCounter(dropped.clone());
        handles.push(rt.spawn(move || {
            let _d = d;
            sleep(Duration::from_secs(3600));
        }));
    }
    while never.waiters() < 20 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let t = Instant::now();
    rt.shutdown();
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(
        os_threads_settled_at(before),
        before,
        "every worker thread was joined"
    );
    for h in handles {
        assert!(matches!(h.unwrap().join(), Err(JoinError::Cancelled)));
    }
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        25,
        "cancelled tasks' stacks were unwound"
    );
    assert_eq!(
        never.waiters(),
        0,
        "cancelled waiters unregistered themselves"
    );
    let stats = rt.stats();
    assert_eq!(stats.tasks_cancelled, 25);
    assert_eq!(stats.tasks_live, 0);
}
