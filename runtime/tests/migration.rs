//! Tasks migrate between workers at yield points, so a thread-local's *address* taken before a
//! yield may belong to another worker after it. This test keeps such an address on purpose (as
//! an optimizer may, when it hoists the address computation of `LOCAL.with` out of a loop that
//! yields) and shows that after a migration it names another worker's copy: the hazard the
//! crate docs warn about ("Migration"), and the reason the torture harness records what its
//! hooks saw in a per-call slot instead of a thread-local. The runtime's own accessors re-read
//! their thread-local on every call and stay right.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tramway_runtime::{yield_now, Runtime};

thread_local! {
    /// An atomic, so that reading another thread's copy through a stale address is a race of
    /// atomics (defined), not a data race.
    static LOCAL: AtomicU64 = const { AtomicU64::new(0) };
}

/// `LOCAL`'s address on the calling thread, recomputed on every call. Called through an
/// opaque function pointer: the optimizer infers that the function reads no memory (only the
/// thread pointer) and, in a release build, would otherwise merge the two calls around the
/// yield into one, which is the very hazard this test shows.
fn local_addr() -> usize {
    #[inline(never)]
    fn addr() -> usize {
        LOCAL.with(|l| l as *const AtomicU64 as usize)
    }
    let addr: fn() -> usize = std::hint::black_box(addr);
    addr()
}

#[test]
fn a_thread_local_address_kept_across_a_yield_names_another_workers_copy_after_migration() {
    let rt = Runtime::builder().workers(2).build().unwrap();
    let (migrations, stale) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (migrations, stale) = (migrations.clone(), stale.clone());
            rt.spawn(move || {
                for _ in 0..20_000 {
                    let kept = local_addr(); // as a hoisted address would be
                    let thread = std::thread::current().id();
                    yield_now();
                    if std::thread::current().id() != thread {
                        migrations.fetch_add(1, Ordering::Relaxed);
                        if kept != local_addr() {
                            stale.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
            .unwrap()
        })
        .collect();
    for t in tasks {
        t.join().unwrap();
    }
    let (migrations, stale) = (
        migrations.load(Ordering::Relaxed),
        stale.load(Ordering::Relaxed),
    );
    assert!(
        migrations > 0,
        "no task migrated: the scenario did not happen"
    );
    assert_eq!(
        stale, migrations,
        "after every migration the kept address is another worker's copy"
    );
}
