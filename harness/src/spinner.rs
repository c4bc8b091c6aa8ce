//! A task that holds its worker: it spins without a yield point until released, so every
//! grace period that needs that worker to switch waits for it. Dropping the spinner releases
//! it too, so a failing assertion does not leave the runtime's shutdown waiting forever.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tramway_runtime::{JoinHandle, Runtime};

/// See the module docs.
pub struct Spinner {
    release: Arc<AtomicBool>,
    task: Option<JoinHandle<()>>,
}

impl Spinner {
    /// Spawns the spinner and returns once it runs.
    pub fn start(rt: &Runtime) -> Spinner {
        Self::spawn(|f| rt.spawn(f))
    }

    /// [`start`](Self::start) with a task name (for stall reports).
    pub fn start_named(rt: &Runtime, name: &str) -> Spinner {
        Self::spawn(|f| rt.spawn_named(name, f))
    }

    fn spawn(
        spawn: impl FnOnce(
            Box<dyn FnOnce() + Send>,
        ) -> Result<JoinHandle<()>, tramway_runtime::SpawnError>,
    ) -> Spinner {
        let (started, release) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let (s, r) = (started.clone(), release.clone());
        let task = spawn(Box::new(move || {
            s.store(true, Ordering::Release);
            while !r.load(Ordering::Acquire) {
                std::hint::spin_loop();
            }
        }))
        .expect("spawn spinner");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !started.load(Ordering::Acquire) {
            assert!(Instant::now() < deadline, "spinner never started");
            std::thread::sleep(Duration::from_millis(1));
        }
        Spinner {
            release,
            task: Some(task),
        }
    }

    /// Lets the spinner finish and joins it.
    pub fn release(mut self) {
        self.release.store(true, Ordering::Release);
        if let Some(t) = self.task.take() {
            t.join().expect("spinner task");
        }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.release.store(true, Ordering::Release);
    }
}
