//! Typed call handles: safe calls only from tracked readers, and a handle keeps everything it
//! can reach mapped until it drops.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tramway_jit::{CallError, Jit, ProbeHook, Probes, SiteKind};
use tramway_runtime::grace::GraceDomain;
use tramway_runtime::{offline, Runtime};

extern "C" fn add_one(x: u64) -> u64 {
    x + 1
}

extern "C" fn add_two(x: u64) -> u64 {
    x + 2
}

extern "C" fn mix(a: u64, b: f64, c: i32) -> f64 {
    a as f64 * b + f64::from(c)
}

type AddFn = extern "C" fn(u64) -> u64;

/// A runtime, a Tasks grace domain and a `Jit` reclaiming through it (the facade).
fn grace_jit(workers: usize) -> (Runtime, GraceDomain, Jit) {
    let tw = tramway::Builder::new().workers(workers).build().unwrap();
    (tw.runtime, tw.grace, tw.jit)
}

#[test]
fn a_typed_site_forwards_every_argument_kind_of_its_signature() {
    let jit = Jit::new().unwrap();
    let site = jit
        .typed_site(
            SiteKind::Indirect,
            &jit.forward(mix as extern "C" fn(u64, f64, i32) -> f64)
                .unwrap(),
        )
        .unwrap();
    // `LeakUntilDrop` (the default reclaimer) frees nothing while a handle lives: any thread.
    assert_eq!(site.handle().call((3, 0.5, -2)), Ok(-0.5));
}

#[test]
fn with_a_grace_domain_only_tracked_readers_may_call() {
    let (rt, gp, jit) = grace_jit(1);
    let site = jit
        .typed_site(SiteKind::Indirect, &jit.forward(add_one as AddFn).unwrap())
        .unwrap();
    let f = site.handle();

    // An unregistered OS thread is invisible to grace periods.
    assert_eq!(f.call((1,)), Err(CallError::NotAReader));
    assert!(!gp.tracks_current_thread());

    // A task is a reader, except inside an offline scope.
    let g = f.clone();
    let in_task = rt
        .block_on(move || (g.call((1,)), offline(|| g.call((1,)))))
        .unwrap();
    assert_eq!(in_task, (Ok(2), Err(CallError::NotAReader)));

    // A registered thread is a reader while online.
    let reg = rt.register_thread().unwrap();
    assert_eq!(f.call((1,)), Ok(2));
    reg.offline();
    assert_eq!(f.call((1,)), Err(CallError::NotAReader));
    reg.online();
    assert_eq!(site.call((2,)), Ok(3));
    drop(reg);

    // A registered thread of another runtime is not a reader of this domain.
    let other = Runtime::builder().workers(1).build().unwrap();
    let g = f.clone();
    let foreign = std::thread::spawn(move || {
        let _reg = other.register_thread().unwrap();
        g.call((1,))
    })
    .join()
    .unwrap();
    assert_eq!(foreign, Err(CallError::NotAReader));
}

#[test]
fn a_handle_keeps_the_site_and_its_code_mapped_after_everything_else_dropped() {
    let (rt, gp, jit) = grace_jit(2);
    let stats = jit.stats_handle();
    let site = jit
        .typed_site(SiteKind::Indirect, &jit.forward(add_one as AddFn).unwrap())
        .unwrap();
    let f = site.handle();
    drop(site.swap(&jit.forward(add_two as AddFn).unwrap()).unwrap());
    drop(site);
    drop(jit);
    gp.barrier();
    assert_eq!(stats.get().sites, 1, "the handle keeps the site's stub");
    assert!(stats.get().mapped_bytes > 0);
    let g = f.clone();
    let results = rt
        .block_on(move || {
            (0..1000)
                .map(|x| g.call((x,)).unwrap() - x)
                .collect::<Vec<_>>()
        })
        .unwrap();
    assert!(
        results.iter().all(|&d| d == 2),
        "calls run the current code"
    );
    drop(f);
    // The last handle is gone: the stub and its trampoline retire, and once their grace
    // period has passed and the callbacks ran, the code memory is unmapped.
    for _ in 0..3 {
        gp.barrier();
    }
    let end = stats.get();
    assert_eq!(
        (end.sites, end.mapped_bytes, end.live),
        (0, 0, 0),
        "{end:?}"
    );
}

#[test]
fn a_typed_probed_site_keeps_its_probes_for_its_handles() {
    let (rt, gp, jit) = grace_jit(1);
    let probes = Probes::new(&jit);
    let site = probes
        .typed_site(SiteKind::Indirect, &jit.forward(add_one as AddFn).unwrap())
        .unwrap();
    let seen = Arc::new(AtomicU64::new(0));
    let s = seen.clone();
    let probe = probes
        .attach(
            &site,
            ProbeHook::new(move |args| {
                s.fetch_add(args.int_args[0], Ordering::Relaxed);
            }),
        )
        .unwrap();
    let f = site.handle();
    site.swap_impl(&jit.forward(add_two as AddFn).unwrap())
        .unwrap();
    drop(site);
    let g = f.clone();
    let r = rt.block_on(move || g.call((5,))).unwrap();
    assert_eq!(r, Ok(7), "the new implementation, behind the probe");
    assert_eq!(seen.load(Ordering::Relaxed), 5, "the probe still runs");
    assert!(
        probe.is_attached(),
        "the handle keeps the probed site alive"
    );
    probes.detach(&probe).unwrap();
    let g = f.clone();
    assert_eq!(rt.block_on(move || g.call((5,))).unwrap(), Ok(7));
    assert_eq!(
        seen.load(Ordering::Relaxed),
        5,
        "detached: no more hook calls"
    );
    drop(f);
    gp.barrier();
}

#[test]
fn under_the_rude_flavor_typed_calls_are_refused() {
    use tramway_runtime::grace::{Flavor, GraceConfig};
    let tw = tramway::Builder::new()
        .workers(1)
        .grace(GraceConfig::default().flavor(Flavor::Rude))
        .build()
        .unwrap();
    let site = tw
        .jit
        .typed_site(
            SiteKind::Indirect,
            &tw.jit.forward(add_one as AddFn).unwrap(),
        )
        .unwrap();
    let f = site.handle();
    // Rude does not wait for tasks switched out inside a hook, so it tracks no caller.
    let r = tw.runtime.block_on(move || f.call((1,))).unwrap();
    assert_eq!(r, Err(CallError::NotAReader));
}
