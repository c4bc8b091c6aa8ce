//! Probes: entry hooks attached and detached in batches, one grace period per batch. Each test
//! names the behaviour it pins down.

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tramway::jit::dynasmrt::{dynasm, DynasmApi};
use tramway::jit::{
    ForwardingSpec, HookArgs, Jit, JitError, Probe, ProbeError, ProbeHook, ProbedSite, Probes,
    SiteKind, Target, Trampoline,
};
use tramway::runtime::grace::GraceDomain;
use tramway::runtime::{yield_now, Runtime, YieldInNonYielding};

use tramway_harness::rng::Rng;
use tramway_harness::spinner::Spinner;

type SiteFn = extern "C" fn(u64, u64) -> u64;

fn runtime(workers: usize) -> Runtime {
    Runtime::builder()
        .workers(workers)
        .build()
        .expect("runtime")
}

/// A runtime with `workers` workers, a Tasks grace domain over it, and a `Jit` reclaiming
/// through the domain (the facade's composition).
fn tramway(workers: usize) -> (Runtime, GraceDomain, Jit) {
    let tw = tramway::Builder::new()
        .workers(workers)
        .build()
        .expect("tramway");
    (tw.runtime, tw.grace, tw.jit)
}

/// An implementation `f(x, _) = x + k`.
fn adder(jit: &Jit, k: u64) -> Trampoline {
    let k = i32::try_from(k).expect("k fits in imm32");
    // SAFETY: `lea rax, [rdi + k]; ret` implements `extern "C" fn(u64, u64) -> u64`, never
    // yields and touches no memory.
    unsafe {
        jit.custom(|ops| {
            dynasm!(ops
                ; .arch x64
                ; lea rax, [rdi + k]
                ; ret
            );
        })
    }
    .expect("emit adder")
}

/// A hook counting its calls.
fn counting(counter: &Arc<AtomicU64>) -> ProbeHook {
    let c = counter.clone();
    ProbeHook::new(move |_| {
        c.fetch_add(1, Ordering::Relaxed);
    })
}

/// Calls `f(x, 0)` for `x` in `xs` from a task and returns the results.
fn call_from_task(rt: &Runtime, f: SiteFn, xs: std::ops::Range<u64>) -> Vec<u64> {
    rt.block_on(move || xs.map(|x| f(x, 0)).collect())
        .expect("block_on")
}

#[test]
fn hooks_observe_every_call_while_attached_and_none_after_detach() {
    let rt = runtime(2);
    let jit = Jit::new().unwrap();
    let probes = Probes::new(&jit);
    let site = probes.site(SiteKind::Indirect, &adder(&jit, 1)).unwrap();
    // SAFETY: every implementation of this site is an adder (`fn(u64, u64) -> u64`).
    let f: SiteFn = unsafe { site.as_fn() };
    let hits = Arc::new(AtomicU64::new(0));
    let args_ok = Arc::new(AtomicBool::new(true));
    let (h, ok) = (hits.clone(), args_ok.clone());
    let probe = probes
        .attach(
            &site,
            ProbeHook::new(move |a: &HookArgs| {
                // Every call below passes x in [0, 1000) and 0 as the second argument.
                if a.int_args[0] >= 1000 || a.int_args[1] != 0 {
                    ok.store(false, Ordering::Relaxed);
                }
                h.fetch_add(1, Ordering::Relaxed);
            }),
        )
        .unwrap();
    let r = call_from_task(&rt, f, 0..1000);
    assert!(r.iter().enumerate().all(|(x, &r)| r == x as u64 + 1));
    assert_eq!(hits.load(Ordering::Relaxed), 1000);
    assert!(args_ok.load(Ordering::Relaxed), "hook saw wrong arguments");
    probes.detach(&probe).unwrap();
    assert!(!probe.is_attached());
    let r = call_from_task(&rt, f, 0..1000);
    assert!(r.iter().enumerate().all(|(x, &r)| r == x as u64 + 1));
    assert_eq!(hits.load(Ordering::Relaxed), 1000, "hook ran after detach");
}

#[test]
fn several_probes_on_one_site_all_see_each_call_in_attach_order() {
    let rt = runtime(1);
    let jit = Jit::new().unwrap();
    let probes = Probes::new(&jit);
    let site = probes.site(SiteKind::Direct, &adder(&jit, 5)).unwrap();
    // SAFETY: adders only.
    let f: SiteFn = unsafe { site.as_fn() };
    let order = Arc::new(Mutex::new(Vec::new()));
    let attached: Vec<Probe> = probes
        .batch(|b| {
            (0..3u64)
                .map(|i| {
                    let o = order.clone();
                    b.attach(&site, ProbeHook::new(move |_| o.lock().unwrap().push(i)))
                })
                .collect()
        })
        .unwrap();
    assert_eq!(site.probe_count(), 3);
    assert_eq!(call_from_task(&rt, f, 10..12), [15, 16]);
    assert_eq!(*order.lock().unwrap(), [0, 1, 2, 0, 1, 2]);
    probes.detach(&attached[1]).unwrap();
    order.lock().unwrap().clear();
    assert_eq!(call_from_task(&rt, f, 10..11), [15]);
    assert_eq!(*order.lock().unwrap(), [0, 2]);
}

#[test]
fn swap_impl_keeps_probes_and_detaching_keeps_the_implementation() {
    let (rt, _gp, jit) = tramway(1);
    let probes = Probes::new(&jit);
    let first = adder(&jit, 1);
    let site = probes.site(SiteKind::Indirect, &first).unwrap();
    // SAFETY: adders only.
    let f: SiteFn = unsafe { site.as_fn() };
    let hits = Arc::new(AtomicU64::new(0));
    let probe = probes.attach(&site, counting(&hits)).unwrap();
    assert!(
        !first.is_retired(),
        "attaching must not retire the implementation"
    );
    let second = adder(&jit, 2);
    site.swap_impl(&second).unwrap();
    assert!(first.is_retired());
    assert_eq!(call_from_task(&rt, f, 0..10), (2..12).collect::<Vec<_>>());
    assert_eq!(hits.load(Ordering::Relaxed), 10, "probe lost by swap_impl");
    probes.detach(&probe).unwrap();
    assert!(!second.is_retired());
    assert!(site.implementation().ptr_eq(&second));
    assert_eq!(call_from_task(&rt, f, 0..10), (2..12).collect::<Vec<_>>());
    assert_eq!(hits.load(Ordering::Relaxed), 10);
    // Swapping without probes, and re-attaching after, work the same way.
    site.swap_impl(&adder(&jit, 3)).unwrap();
    probes.attach(&site, counting(&hits)).unwrap();
    assert_eq!(call_from_task(&rt, f, 0..10), (3..13).collect::<Vec<_>>());
    assert_eq!(hits.load(Ordering::Relaxed), 20);
    drop((first, second, site));
    jit.barrier();
    let s = jit.stats();
    assert_eq!((s.live, s.retired, s.sites), (0, 0, 0), "{s:?}");
    assert_eq!(probes.stats().attached, 0);
}

#[test]
fn misuse_is_reported_as_typed_errors() {
    let jit = Jit::new().unwrap();
    let other_jit = Jit::new().unwrap();
    let probes = Probes::new(&jit);
    let other = Probes::new(&jit);
    let site = probes.site(SiteKind::Indirect, &adder(&jit, 1)).unwrap();
    let other_site = other.site(SiteKind::Indirect, &adder(&jit, 1)).unwrap();
    let hook = ProbeHook::new(|_| {});
    let p = probes.attach(&site, hook.clone()).unwrap();

    assert!(matches!(
        other.detach(&p),
        Err(ProbeError::ForeignProbe { probe }) if probe == p.id()
    ));
    assert!(matches!(
        probes.attach(&other_site, hook.clone()),
        Err(ProbeError::ForeignSite { .. })
    ));
    probes.detach(&p).unwrap();
    assert!(matches!(
        probes.detach(&p),
        Err(ProbeError::NotAttached { probe }) if probe == p.id()
    ));
    assert!(matches!(
        site.swap_impl(&adder(&other_jit, 1)),
        Err(ProbeError::Jit(JitError::ForeignTrampoline { .. }))
    ));
    assert!(matches!(
        probes.site(SiteKind::Indirect, &adder(&other_jit, 1)),
        Err(ProbeError::Jit(JitError::ForeignTrampoline { .. }))
    ));

    // A failing batch changes nothing: `q` stays attached although it was queued first.
    let q = probes.attach(&site, hook.clone()).unwrap();
    let err = probes.batch(|b| {
        b.detach(&q)?;
        b.detach(&p)
    });
    assert!(matches!(err, Err(ProbeError::NotAttached { .. })));
    assert!(q.is_attached());
    // Detaching the same probe twice in one batch is detaching twice.
    assert!(matches!(
        probes.detach_all([&q, &q]),
        Err(ProbeError::NotAttached { .. })
    ));
    assert!(q.is_attached());

    drop(site);
    assert!(matches!(
        probes.detach(&q),
        Err(ProbeError::SiteDropped { probe }) if probe == q.id()
    ));
    assert!(!q.is_attached());
    assert_eq!(probes.stats().attached, 0);
    assert_eq!(probes.stats().sites, 0);
}

#[test]
fn dropping_a_site_releases_its_hooks_after_a_grace_period() {
    let (_rt, _gp, jit) = tramway(1);
    let probes = Probes::new(&jit);
    let site = probes.site(SiteKind::Indirect, &adder(&jit, 1)).unwrap();
    let state = Arc::new(AtomicU64::new(0));
    probes.attach(&site, counting(&state)).unwrap();
    probes.attach(&site, counting(&state)).unwrap();
    // The site's snapshot and its retired predecessor both hold the hook state.
    assert!(Arc::strong_count(&state) > 1);
    drop(site);
    jit.barrier();
    assert_eq!(Arc::strong_count(&state), 1, "hook state outlived the site");
    assert_eq!(jit.stats().retired, 0);
}

#[test]
fn a_batch_is_reclaimed_after_one_grace_period() {
    const SITES: usize = 100;
    const PROBES: usize = 1000;
    let (rt, gp, jit) = tramway(1);
    let probes = Probes::new(&jit);
    let sites: Vec<ProbedSite> = (0..SITES)
        .map(|i| {
            probes
                .site(SiteKind::Indirect, &adder(&jit, i as u64))
                .unwrap()
        })
        .collect();
    let attached: Vec<Probe> = probes
        .batch(|b| {
            (0..PROBES)
                .map(|i| b.attach(&sites[i % SITES], ProbeHook::new(|_| {})))
                .collect()
        })
        .unwrap();
    jit.barrier();
    assert_eq!(jit.stats().retired, 0);

    // Hold grace period #1 with a task spinning on the only worker, so that everything the
    // batch queues waits for grace period #2 (deterministically, as in tests/grace.rs).
    let spinner = Spinner::start(&rt);
    let before = gp.stats();
    gp.call(|| {});
    std::thread::sleep(Duration::from_millis(20));
    let detach = probes.detach_all(&attached);
    // Nothing can be reclaimed while the spinner holds the worker.
    let retired = jit.stats().retired;
    spinner.release();
    detach.unwrap();
    assert_eq!(retired, SITES as u64, "one probe trampoline per site");
    jit.barrier();
    let after = gp.stats();
    assert_eq!(jit.stats().retired, 0);
    let queued = after.callbacks_queued - before.callbacks_queued;
    assert_eq!(
        queued, 2,
        "the held GP's callback plus one for the whole batch"
    );
    let gps = after.completed - before.completed;
    assert_eq!(gps, 2, "the held GP plus {} for {PROBES} probes", gps - 1);
    assert_eq!(probes.stats().attached, 0);
}

/// Per-probe state of the stress test: rcutorture's pipe count for hooks.
struct ProbeState {
    site: u64,
    /// 0 attached, 1 detached, 2 a grace period has passed since the detach.
    age: AtomicU64,
}

#[derive(Default)]
struct Observed {
    stale: AtomicU64,
    wrong_site: AtomicU64,
}

fn stress_hook(p: Arc<ProbeState>, obs: Arc<Observed>) -> ProbeHook {
    ProbeHook::new(move |a: &HookArgs| {
        if p.age.load(Ordering::Acquire) >= 2 {
            obs.stale.fetch_add(1, Ordering::Relaxed);
        }
        if a.int_args[1] != p.site {
            obs.wrong_site.fetch_add(1, Ordering::Relaxed);
        }
    })
}

#[test]
fn batched_attach_and_detach_under_load_is_safe() {
    const SITES: usize = 8;
    const READERS: usize = 4;
    const ROUNDS: usize = 5000;
    let (rt, gp, jit) = tramway(2);
    let stats = jit.stats_handle();
    let probes = Probes::new(&jit);
    let imp = |site: usize, gen: u64| adder(&jit, (site as u64 + 1) * 1_000_000 + gen);
    let sites: Vec<ProbedSite> = (0..SITES)
        .map(|i| probes.site(SiteKind::Indirect, &imp(i, 0)).unwrap())
        .collect();
    // One probe per site stays attached for the whole run: it must see exactly every call.
    let witnesses: Vec<Arc<AtomicU64>> = (0..SITES).map(|_| Arc::default()).collect();
    let witness_probes: Vec<Probe> = probes
        .batch(|b| {
            (0..SITES)
                .map(|i| b.attach(&sites[i], counting(&witnesses[i])))
                .collect()
        })
        .unwrap();

    // SAFETY: every implementation of these sites is an adder.
    let fns: Arc<Vec<SiteFn>> = Arc::new(sites.iter().map(|s| unsafe { s.as_fn() }).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let calls: Arc<Vec<AtomicU64>> = Arc::new((0..SITES).map(|_| AtomicU64::new(0)).collect());
    let invalid = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..READERS)
        .map(|t| {
            let (fns, stop, calls, invalid) =
                (fns.clone(), stop.clone(), calls.clone(), invalid.clone());
            rt.spawn(move || {
                let mut rng = Rng(t as u64 * 7919 + 1);
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..64 {
                        let s = rng.next_u64() as usize % SITES;
                        let x = rng.next_u64() >> 40;
                        let r = fns[s](x, s as u64);
                        if r.wrapping_sub(x) / 1_000_000 != s as u64 + 1 {
                            invalid.fetch_add(1, Ordering::Relaxed);
                        }
                        calls[s].fetch_add(1, Ordering::Relaxed);
                    }
                    yield_now();
                }
            })
            .unwrap()
        })
        .collect();

    let obs = Arc::new(Observed::default());
    let mut rng = Rng(0x5eed);
    let mut live: Vec<(Probe, Arc<ProbeState>)> = Vec::new();
    let (mut attaches, mut detaches) = (0u64, 0u64);
    let started = Instant::now();
    for round in 0..ROUNDS {
        let n_attach = rng.next_u64() as usize % 4;
        let n_detach = (rng.next_u64() as usize % 4).min(live.len());
        let mut gone = Vec::new();
        for _ in 0..n_detach {
            gone.push(live.swap_remove(rng.next_u64() as usize % live.len()));
        }
        let swap_site = (round % 16 == 0).then(|| rng.next_u64() as usize % SITES);
        let new_impl = swap_site.map(|s| imp(s, round as u64));
        let added = probes
            .batch(|b| {
                for (p, _) in &gone {
                    b.detach(p)?;
                }
                if let (Some(s), Some(t)) = (swap_site, &new_impl) {
                    b.swap_impl(&sites[s], t)?;
                }
                (0..n_attach)
                    .map(|_| {
                        let s = rng.next_u64() as usize % SITES;
                        let st = Arc::new(ProbeState {
                            site: s as u64,
                            age: AtomicU64::new(0),
                        });
                        let p = b.attach(&sites[s], stress_hook(st.clone(), obs.clone()))?;
                        Ok((p, st))
                    })
                    .collect::<Result<Vec<_>, ProbeError>>()
            })
            .expect("batch");
        attaches += added.len() as u64;
        detaches += gone.len() as u64;
        live.extend(added);
        let ages: Vec<Arc<ProbeState>> = gone.into_iter().map(|(_, s)| s).collect();
        ages.iter().for_each(|s| s.age.store(1, Ordering::Release));
        gp.call(move || ages.iter().for_each(|s| s.age.store(2, Ordering::Release)));
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().expect("reader");
    }
    let (all, _): (Vec<Probe>, Vec<_>) = live.into_iter().unzip();
    probes
        .detach_all(all.iter().chain(&witness_probes))
        .unwrap();
    jit.barrier();

    let total_calls: u64 = calls.iter().map(|c| c.load(Ordering::Relaxed)).sum();
    eprintln!(
        "{ROUNDS} batches ({attaches} attaches, {detaches} detaches) in {elapsed:?}, \
         {total_calls} calls, {} GPs",
        gp.stats().completed
    );
    assert!(total_calls > 0);
    assert_eq!(
        invalid.load(Ordering::Relaxed),
        0,
        "calls returned invalid results"
    );
    assert_eq!(
        obs.stale.load(Ordering::Relaxed),
        0,
        "hook ran a GP after detach"
    );
    assert_eq!(
        obs.wrong_site.load(Ordering::Relaxed),
        0,
        "hook saw another site's call"
    );
    for i in 0..SITES {
        assert_eq!(
            witnesses[i].load(Ordering::Relaxed),
            calls[i].load(Ordering::Relaxed),
            "site {i}: the always-attached probe missed calls"
        );
    }
    assert_eq!(probes.stats().attached, 0);
    let s = stats.get();
    assert!(s.balanced(), "{s:?}");
    assert_eq!(s.retired, 0, "{s:?}");
    // Sites and probe managers keep the code memory alive, like trampoline handles.
    drop((sites, probes));
    drop(jit);
    assert_eq!(stats.get().mapped_bytes, 0);
}

/// Set in the environment of the child processes below.
const CHILD_ENV: &str = "TRAMWAY_PROBES_CHILD";

fn run_child(mode: &str) -> (std::process::ExitStatus, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "hook_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, mode)
        .output()
        .expect("run child");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_aborted(status: std::process::ExitStatus, stderr: &str) {
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}\n{stderr}");
    assert!(stderr.contains("hook panicked"), "{stderr}");
    assert!(
        stderr.contains("must not unwind through trampoline code"),
        "{stderr}"
    );
}

#[test]
fn yield_inside_a_hook_is_detected_and_aborts_with_a_clear_message() {
    let (status, stderr) = run_child("yield");
    assert_aborted(status, &stderr);
    assert!(
        stderr.contains("yield inside a non-yielding section"),
        "{stderr}"
    );
}

#[test]
fn a_panicking_hook_aborts_instead_of_unwinding_through_jit_code() {
    let (status, stderr) = run_child("panic");
    assert_aborted(status, &stderr);
    assert!(stderr.contains("probe hook failure"), "{stderr}");
}

/// The child half of the two tests above: a no-op unless started by them.
#[test]
fn hook_child() {
    let Some(mode) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let rt = Runtime::builder()
        .workers(1)
        .yield_in_non_yielding(YieldInNonYielding::Panic)
        .build()
        .unwrap();
    let jit = Jit::new().unwrap();
    let probes = Probes::new(&jit);
    let site = probes.site(SiteKind::Indirect, &adder(&jit, 1)).unwrap();
    let hook = match mode.to_str() {
        Some("yield") => ProbeHook::new(|_| yield_now()),
        _ => ProbeHook::new(|_| panic!("probe hook failure")),
    };
    probes.attach(&site, hook).unwrap();
    // SAFETY: adders only.
    let f: SiteFn = unsafe { site.as_fn() };
    let _ = rt.block_on(move || f(1, 0));
    eprintln!("the hook returned normally");
    std::process::exit(0);
}

#[test]
fn forwarding_targets_of_probed_sites_are_plain_trampolines() {
    // An implementation may itself be a forwarding trampoline to a Rust function.
    extern "C" fn triple(x: u64, _: u64) -> u64 {
        3 * x
    }
    let rt = runtime(1);
    let jit = Jit::new().unwrap();
    let probes = Probes::new(&jit);
    let imp = jit
        .forwarding(ForwardingSpec::new(Target::Address(triple as SiteFn as *const u8)).counted())
        .unwrap();
    let site = probes.site(SiteKind::Indirect, &imp).unwrap();
    let hits = Arc::new(AtomicU64::new(0));
    probes.attach(&site, counting(&hits)).unwrap();
    // SAFETY: the implementation forwards to `triple`.
    let f: SiteFn = unsafe { site.as_fn() };
    assert_eq!(call_from_task(&rt, f, 1..4), [3, 6, 9]);
    assert_eq!(imp.calls(), 3);
    assert_eq!(hits.load(Ordering::Relaxed), 3);
}
