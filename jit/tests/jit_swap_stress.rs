//! Callers racing with a swapper always run the old or the new trampoline, never garbage.
//!
//! Retired trampolines are reclaimed by `LeakUntilDrop`, so they stay mapped until the `Jit`
//! drops; that is what makes it safe for callers to still be inside one after a swap.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;

use tramway_jit::{ForwardingSpec, Jit, SiteKind, Target};

extern "C" fn three() -> u64 {
    3
}

fn race(jit: Jit, kind: SiteKind, swaps: u64) {
    let site = jit.site(kind, &jit.constant_return(1).unwrap()).unwrap();
    let stop = AtomicBool::new(false);
    let calls = AtomicU64::new(0);
    thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                // SAFETY: every trampoline installed below implements `extern "C" fn() -> u64`.
                let f: extern "C" fn() -> u64 = unsafe { site.as_fn() };
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) || n < 1000 {
                    let v = f();
                    assert!((1..=3).contains(&v), "garbage return value {v:#x}");
                    n += 1;
                }
                calls.fetch_add(n, Ordering::Relaxed);
            });
        }
        for i in 0..swaps {
            let next = match i % 3 {
                0 => jit.constant_return(2),
                1 => jit.forwarding(ForwardingSpec::new(Target::Address(three as *const u8))),
                _ => jit.constant_return(1),
            }
            .unwrap();
            let retired = site.swap(&next).unwrap();
            assert!(retired.trampoline().is_retired());
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert!(calls.load(Ordering::Relaxed) >= 2000);
    let s = jit.stats();
    assert!(s.balanced(), "{s:?}");
    assert_eq!(s.emitted, swaps + 1);
    assert_eq!(s.live, 1);
    assert_eq!(
        s.retired, swaps,
        "retired code waits for the barrier: {s:?}"
    );
    let stats = jit.stats_handle();
    drop(site);
    drop(jit);
    let s = stats.get();
    assert_eq!(
        (s.mapped_bytes, s.retired, s.reclaimed),
        (0, 0, swaps + 1),
        "{s:?}"
    );
}

#[test]
fn indirect_site_swapped_100k_times_under_concurrent_calls() {
    race(Jit::new().unwrap(), SiteKind::Indirect, 100_000);
}

#[test]
fn direct_site_swapped_100k_times_under_concurrent_calls() {
    race(Jit::new().unwrap(), SiteKind::Direct, 100_000);
}

#[test]
fn fallback_indirect_site_swapped_under_concurrent_calls() {
    // One page per trampoline in fallback mode: fewer swaps keep the test small.
    race(
        Jit::builder().force_fallback(true).build().unwrap(),
        SiteKind::Indirect,
        5_000,
    );
}
