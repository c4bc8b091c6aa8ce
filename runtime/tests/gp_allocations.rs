//! A grace period run inline by an OS thread snapshots its readers without allocating once
//! the engine's snapshot buffers have grown to the number of readers (`grace/tasks.rs`,
//! `SnapshotBuffers`): after a pause, the allocator's cold cache lines were about a sixth of
//! such a GP.
//!
//! The allocator below counts, per thread, the allocations the calling thread makes; each
//! test counts only its own thread's, so the reader threads and the driver do not disturb
//! it, and neither do the other tests of this binary.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tramway_runtime::grace::{Flavor, GraceConfig, GraceDomain};

/// The system allocator, counting this thread's allocations.
struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded to `System` unchanged; the count is a const-initialized
// thread-local `Cell`, which neither allocates nor re-enters the allocator (`try_with` also
// copes with a thread that is being torn down).
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above, which is `System`'s.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: as `dealloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn allocations_on_this_thread() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// Where the readers of a measured domain come from.
#[derive(Clone, Copy, Debug)]
enum Readers {
    /// A threads-only domain with this many registered threads that report in a loop.
    Threads(usize),
    /// A domain over a one-worker runtime whose worker runs a task that yields in a loop
    /// (so snapshots find the worker active), plus one registered thread.
    WorkerAndThread,
}

/// Windows of 1000 GPs run on this (unregistered) thread until one allocates nothing here,
/// at most this many. The snapshot vectors grow once, when a GP first finds its readers
/// online (a reader passes through offline in every `quiescent()`, so no fixed warm-up
/// guarantees that), and so does the waker's list of waiting threads; a window after that
/// allocates nothing. The code before the buffers allocated about 800 times in every window.
const WINDOWS: usize = 5;

/// Runs the windows (see [`WINDOWS`]) with `readers` reporting; returns each window's count
/// of allocations on this thread and how many of all its GPs ran inline.
fn allocations_of_inline_grace_periods(flavor: Flavor, readers: Readers) -> Vec<(u64, u64)> {
    // No stall report in the counted GPs (it allocates), however slow the machine.
    let config = GraceConfig::default()
        .flavor(flavor)
        .stall_timeout(Duration::from_secs(3600));
    let runtime = match readers {
        Readers::Threads(_) => None,
        Readers::WorkerAndThread => {
            Some(tramway_runtime::Builder::new().workers(1).build().unwrap())
        }
    };
    let gp = match &runtime {
        Some(rt) => GraceDomain::new(rt, config).unwrap(),
        None => GraceDomain::for_threads(config).unwrap(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let task = runtime.as_ref().map(|rt| {
        let stop = stop.clone();
        rt.spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                tramway_runtime::yield_now();
            }
        })
        .unwrap()
    });
    let threads = match readers {
        Readers::Threads(n) => n,
        Readers::WorkerAndThread => 1,
    };
    let (online_tx, online) = std::sync::mpsc::channel();
    let threads: Vec<_> = (0..threads)
        .map(|_| {
            let (gp, stop, online_tx) = (gp.clone(), stop.clone(), online_tx.clone());
            std::thread::spawn(move || {
                let reg = gp.register_thread().unwrap();
                online_tx.send(()).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    reg.quiescent();
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    for _ in 0..threads.len() {
        online.recv().unwrap();
    }
    // A GP that has to park registers this thread's handle with the readers' waker; the
    // handle is created once per thread.
    drop(std::thread::current());
    let mut windows = Vec::new();
    while windows.len() < WINDOWS && windows.last().is_none_or(|&(n, _)| n > 0) {
        let (before, inline_before) = (
            allocations_on_this_thread(),
            gp.stats().inline_grace_periods,
        );
        for _ in 0..1000 {
            gp.synchronize();
        }
        windows.push((
            allocations_on_this_thread() - before,
            gp.stats().inline_grace_periods - inline_before,
        ));
    }
    stop.store(true, Ordering::Relaxed);
    threads.into_iter().for_each(|t| t.join().unwrap());
    if let Some(task) = task {
        task.join().unwrap();
    }
    windows
}

#[test]
fn inline_grace_periods_snapshot_their_readers_without_allocating_once_warm() {
    // Rude over a runtime is not here: it spawns a task on every worker in every GP.
    let cases = [
        (Flavor::Tasks, Readers::Threads(1)),
        (Flavor::Tasks, Readers::Threads(2)),
        (Flavor::Tasks, Readers::WorkerAndThread),
        (Flavor::Rude, Readers::Threads(1)),
    ];
    for (flavor, readers) in cases {
        let windows = allocations_of_inline_grace_periods(flavor, readers);
        assert!(
            windows.iter().all(|&(_, inline)| inline == 1000),
            "{flavor:?}, {readers:?}: every GP ran on the caller (nobody else requests one): \
             {windows:?}"
        );
        assert_eq!(
            windows.last().map(|&(n, _)| n),
            Some(0),
            "{flavor:?}, {readers:?}: allocations on the caller's thread per window of 1000 \
             inline GPs, (allocations, inline GPs): {windows:?}"
        );
    }
}

/// The control: the counter sees this thread's allocations (a test that could not fail
/// would pass with a counter that counts nothing).
#[test]
fn the_counter_sees_this_threads_allocations() {
    let before = allocations_on_this_thread();
    let v: Vec<u64> = std::hint::black_box(Vec::with_capacity(4));
    assert_eq!(allocations_on_this_thread() - before, 1);
    drop(v);
}
