//! A grace period run inline by an OS thread allocates nothing once the engine's snapshot
//! buffers have grown to the number of readers (`grace/tasks.rs`, `SnapshotBuffers`): after
//! a pause, the allocator's cold cache lines were a quarter of a GP's cost before its wait.
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

/// With `readers` registered threads online and reporting in a loop, runs 200 warm-up GPs
/// and then 1000 more on this (unregistered) thread; returns how many allocations the 1000
/// made here and how many of all ran inline.
fn allocations_of_inline_grace_periods(flavor: Flavor, readers: usize) -> (u64, u64) {
    // No stall report in the counted GPs (it allocates), however slow the machine.
    let config = GraceConfig::default()
        .flavor(flavor)
        .stall_timeout(Duration::from_secs(3600));
    let gp = GraceDomain::for_threads(config).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (online_tx, online) = std::sync::mpsc::channel();
    let threads: Vec<_> = (0..readers)
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
    for _ in 0..readers {
        online.recv().unwrap();
    }
    for _ in 0..200 {
        gp.synchronize();
    }
    // A GP that has to park registers this thread's handle with the readers' waker; make
    // sure the handle exists before counting (it is created once per thread).
    drop(std::thread::current());
    let (before, inline_before) = (
        allocations_on_this_thread(),
        gp.stats().inline_grace_periods,
    );
    for _ in 0..1000 {
        gp.synchronize();
    }
    let counted = allocations_on_this_thread() - before;
    let inline = gp.stats().inline_grace_periods - inline_before;
    stop.store(true, Ordering::Relaxed);
    threads.into_iter().for_each(|t| t.join().unwrap());
    (counted, inline)
}

#[test]
fn inline_grace_periods_allocate_nothing_once_warm() {
    for (flavor, readers) in [(Flavor::Tasks, 1), (Flavor::Tasks, 2), (Flavor::Rude, 1)] {
        let (allocations, inline) = allocations_of_inline_grace_periods(flavor, readers);
        assert_eq!(
            inline, 1000,
            "{flavor:?}: every GP ran on the caller (nobody else requests one)"
        );
        assert_eq!(
            allocations, 0,
            "{flavor:?}, {readers} readers: 1000 inline GPs allocated on the caller's thread"
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
