//! Retirement through grace periods: the jit's frees wait for the runtime's grace period,
//! and `Jit::barrier` drains whole forwarding chains.

use std::time::Duration;

use tramway::jit::{ForwardingSpec, Jit, SiteKind, Target};
use tramway::runtime::grace::{GraceConfig, GraceDomain};
use tramway::runtime::Runtime;

use tramway_harness::spinner::Spinner;

/// A runtime, a Tasks grace domain over it and a `Jit` reclaiming through it (the facade).
fn setup(workers: usize) -> (Runtime, GraceDomain, Jit) {
    let tw = tramway::Builder::new().workers(workers).build().unwrap();
    (tw.runtime, tw.grace, tw.jit)
}

#[test]
fn retired_trampoline_is_not_freed_before_the_grace_period_ends() {
    let (rt, _gp, jit) = setup(1);
    let one = jit.constant_return(1).unwrap();
    let site = jit.site(SiteKind::Indirect, &one).unwrap();
    drop(one);

    // Hold every grace period: the only worker runs a task that never yields.
    let spinner = Spinner::start(&rt);

    drop(site.swap(&jit.constant_return(2).unwrap()).unwrap());
    std::thread::sleep(Duration::from_millis(50));
    let held = jit.stats();
    spinner.release();
    assert_eq!(held.retired, 1, "{held:?}");
    assert_eq!(
        held.reclaimed, 0,
        "freed while a task had not passed a QS: {held:?}"
    );
    assert!(held.retired_bytes > 0);

    jit.barrier();
    let after = jit.stats();
    assert_eq!(
        (after.retired, after.reclaimed, after.retired_bytes),
        (0, 1, 0),
        "{after:?}"
    );
}

#[test]
fn one_barrier_reclaims_a_whole_forwarding_chain() {
    let (_rt, gp, jit) = setup(2);
    // site -> fwd3 -> fwd2 -> fwd1 -> constant: each link keeps the next alive. The links
    // behind fwd3 were reachable only through it, so their frees may share its grace period;
    // either way one barrier must leave nothing of the chain.
    let mut target = jit.constant_return(7).unwrap();
    for _ in 0..3 {
        target = jit
            .forwarding(ForwardingSpec::new(Target::Trampoline(target)))
            .unwrap();
    }
    let site = jit.site(SiteKind::Indirect, &target).unwrap();
    drop(target);
    // SAFETY: the chain ends in `constant_return`, an `extern "C" fn() -> u64`.
    let f: extern "C" fn() -> u64 = unsafe { site.as_fn() };
    assert_eq!(f(), 7);
    let before = gp.stats().completed;
    drop(site.swap(&jit.constant_return(8).unwrap()).unwrap());
    assert_eq!(f(), 8);
    jit.barrier();
    let s = jit.stats();
    assert_eq!(s.retired, 0, "one barrier left part of the chain: {s:?}");
    assert_eq!(s.reclaimed, 4);
    assert!(s.balanced());
    assert!(
        gp.stats().completed > before,
        "freed without a grace period"
    );
}

/// A patch storm while a task holds the grace period: its 1000 frees join the `Jit`'s open
/// batch, one callback for all of them (two at most: the first grace period may be claimed,
/// and seal the batch, during the storm), and every one is reclaimed after the grace period.
#[test]
fn a_patch_storm_during_one_grace_period_costs_at_most_two_callbacks() {
    let (rt, gp, jit) = setup(1);
    let site = jit
        .site(SiteKind::Indirect, &jit.constant_return(0).unwrap())
        .unwrap();
    let spinner = Spinner::start(&rt);
    let before = gp.stats();
    for v in 1..=1000 {
        drop(site.swap(&jit.constant_return(v).unwrap()).unwrap());
    }
    let during = gp.stats();
    let held = jit.stats();
    spinner.release();
    assert_eq!((held.retired, held.reclaimed), (1000, 0), "{held:?}");
    let queued = during.callbacks_queued - before.callbacks_queued;
    assert!(queued <= 2, "1000 frees took {queued} callbacks");
    jit.barrier();
    let after = jit.stats();
    assert_eq!((after.retired, after.reclaimed), (0, 1000), "{after:?}");
    assert!(gp.stats().completed > before.completed);
}

#[test]
fn dropping_the_jit_unmaps_everything_through_grace_periods() {
    let (_rt, _gp, jit) = setup(2);
    let stats = jit.stats_handle();
    let site = jit
        .site(SiteKind::Direct, &jit.constant_return(1).unwrap())
        .unwrap();
    for v in 2..100 {
        drop(site.swap(&jit.constant_return(v).unwrap()).unwrap());
    }
    drop(site);
    drop(jit);
    let s = stats.get();
    assert_eq!(
        (s.mapped_bytes, s.chunks, s.sites, s.retired),
        (0, 0, 0, 0),
        "{s:?}"
    );
    assert_eq!(s.reclaimed, s.emitted);
}

/// Panics when dropped (stands for a hook's captured state with a faulty destructor).
struct PanicsOnDrop;
impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        panic!("a hook's captured state panicked in its destructor (expected by this test)");
    }
}

/// Memory that retired code referenced (a probe hook) is dropped by the batch that frees the
/// code, on the grace-period driver. If that drop panics, the code is freed all the same and
/// counted as reclaimed: no phantom retired bytes are left for the backlog bound, and
/// `Jit::barrier` does not wait for frees that ran.
#[test]
fn a_panicking_drop_of_referenced_memory_still_counts_the_free() {
    use tramway::jit::probe::{ProbeHook, Probes};
    let (_rt, gp, jit) = setup(1);
    let target = jit.constant_return(7).unwrap();
    let probes = Probes::new(&jit);
    let site = probes.site(SiteKind::Indirect, &target).unwrap();
    let guard = PanicsOnDrop;
    let probe = probes
        .attach(
            &site,
            ProbeHook::new(move |_| {
                let _ = &guard;
            }),
        )
        .unwrap();
    probes.detach(&probe).unwrap();
    drop(probe);
    let panicked_before = gp.stats().callbacks_panicked;
    jit.barrier();
    assert!(
        gp.stats().callbacks_panicked > panicked_before,
        "the hook's drop ran (and panicked) in a batch"
    );
    let stats = jit.stats();
    assert!(stats.balanced(), "{stats:?}");
    assert_eq!(stats.retired, 0, "{stats:?}");
    assert_eq!(stats.retired_bytes, 0, "{stats:?}");
}

/// The same through a probe batch, whose retirements share one callback (`detach_all`): two
/// panicking destructors in it neither abort the process (a second panic while unwinding from
/// the first) nor leave the batch's other frees unrun.
#[test]
fn panicking_drops_in_one_probe_batch_leave_no_free_unrun() {
    use tramway::jit::probe::{ProbeHook, Probes};
    let (_rt, gp, jit) = setup(1);
    let probes = Probes::new(&jit);
    let sites: Vec<_> = (0..3)
        .map(|i| {
            let target = jit.constant_return(i).unwrap();
            probes.site(SiteKind::Indirect, &target).unwrap()
        })
        .collect();
    let attached: Vec<_> = sites
        .iter()
        .enumerate()
        .map(|(i, site)| {
            // The first two hooks panic when dropped; the third does not.
            let guard = (i < 2).then(|| PanicsOnDrop);
            probes
                .attach(
                    site,
                    ProbeHook::new(move |_| {
                        let _ = &guard;
                    }),
                )
                .unwrap()
        })
        .collect();
    probes.detach_all(&attached).unwrap();
    drop(attached);
    let panicked_before = gp.stats().callbacks_panicked;
    jit.barrier();
    assert!(gp.stats().callbacks_panicked > panicked_before);
    let stats = jit.stats();
    assert!(stats.balanced(), "{stats:?}");
    assert_eq!((stats.retired, stats.retired_bytes), (0, 0), "{stats:?}");
}

/// The backlog throttle bounds retired-but-unreclaimed code when nothing else would reclaim
/// it: callbacks wait up to a minute for company, so only the throttle's barriers end grace
/// periods during the loop. A swap checks the retired count against a cached lower bound of
/// the reclaimed one (`reclaim/retirement.rs`); a cached count that ran ahead of the real one
/// would let the backlog grow here by 64 bytes a swap, to 640 KiB.
#[test]
fn the_backlog_stays_bounded_when_nothing_else_reclaims() {
    const BOUND: usize = 64 * 64;
    let tw = tramway::Builder::new()
        .workers(1)
        .grace(GraceConfig::default().callback_delay(Duration::from_secs(60)))
        .jit(|j| j.max_retired_bytes(BOUND))
        .build()
        .unwrap();
    let site = tw
        .jit
        .site(SiteKind::Indirect, &tw.jit.constant_return(0).unwrap())
        .unwrap();
    let (mut peak, throttled_before) = (0, tw.grace.stats().completed);
    for i in 1..=10_000u64 {
        drop(site.swap(&tw.jit.constant_return(i).unwrap()).unwrap());
        peak = peak.max(tw.jit.stats().retired_bytes);
    }
    // The swap that crosses the bound throttles after it retired: one slot of slack.
    assert!(peak <= BOUND + 64, "the backlog grew to {peak} bytes");
    assert!(
        tw.grace.stats().completed > throttled_before,
        "the throttle ran grace periods (the case under test happened)"
    );
}
