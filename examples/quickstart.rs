//! The smallest complete use of tramway: green threads call a patch site while the main
//! thread hot-swaps its implementation; the old trampoline is unmapped after a grace period.
//!
//! `cargo run --release --example quickstart`

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tramway::jit::{ForwardingSpec, Jit, SiteKind, Target};
use tramway::runtime::grace::{GraceConfig, GraceDomain};
use tramway::runtime::{yield_now, Runtime};

extern "C" fn add_one(x: u64) -> u64 {
    x + 1
}

extern "C" fn add_two(x: u64) -> u64 {
    x + 2
}

fn forward_to(jit: &Jit, f: extern "C" fn(u64) -> u64) -> tramway::jit::Trampoline {
    let spec = ForwardingSpec {
        target: Target::Address(f as *const u8),
        hook: None,
    };
    jit.forwarding(spec).expect("emit trampoline")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rt = Runtime::builder().workers(2).build()?; // green-thread workers
    let gp = GraceDomain::new(&rt, GraceConfig::default())?; // tasks-style grace periods
    let jit = Jit::builder().reclaimer(Arc::new(gp.clone())).build()?; // W^X code memory
    let site = jit.site(SiteKind::Indirect, &forward_to(&jit, add_one))?; // stable entry
                                                                          // SAFETY: every trampoline installed in `site` forwards to an `extern "C" fn(u64) -> u64`.
    let call: extern "C" fn(u64) -> u64 = unsafe { site.as_fn() };

    let stop = Arc::new(AtomicBool::new(false));
    let (calls, odd) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, calls, odd) = (stop.clone(), calls.clone(), odd.clone());
            rt.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    for x in 0..1000 {
                        let r = call(x);
                        if r != x + 1 && r != x + 2 {
                            odd.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    calls.fetch_add(1000, Ordering::Relaxed);
                    yield_now(); // a quiescent state
                }
            })
        })
        .collect::<Result<_, _>>()?;

    for i in 0..10_000 {
        let f = if i % 2 == 0 { add_two } else { add_one };
        let retired = site.swap(&forward_to(&jit, f))?; // hot swap
        drop(retired); // freed after a grace period
    }
    stop.store(true, Ordering::Relaxed);
    for c in callers {
        c.join()?;
    }
    let stats = jit.stats_handle();
    drop(site);
    jit.barrier(); // every retired trampoline reclaimed...
    jit.barrier(); // ...including the site stub, retired when the site dropped
    drop(jit);
    let end = stats.get();
    println!(
        "{} calls during 10000 swaps, {} unexpected results; {} trampolines emitted, {} reclaimed, \
         {} code bytes still mapped; {} grace periods",
        calls.load(Ordering::Relaxed),
        odd.load(Ordering::Relaxed),
        end.emitted,
        end.reclaimed,
        end.mapped_bytes,
        gp.stats().completed,
    );
    if odd.load(Ordering::Relaxed) != 0 || end.mapped_bytes != 0 {
        std::process::exit(1);
    }
    Ok(())
}
