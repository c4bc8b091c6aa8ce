//! Detaching an exit probe while a task is parked inside the implementation it called: the
//! task returns through the retired dispatcher, whose state is freed only after it left; and
//! the control, where a reclaimer that ignores code ranges frees it under the task (in a child
//! process, which dies returning into freed code).

use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tramway_jit::{Jit, ProbeHook, Probes, Reclaim, SiteKind};
use tramway_runtime::grace::{GraceConfig, GraceDomain};
use tramway_runtime::Runtime;

use super::forward_to;
use tramway_harness::unsound::IgnoresCodeRanges;
use tramway_harness::wait::within;

/// What the implementation below and the test share.
#[derive(Default)]
struct Gate {
    inside: AtomicBool,
    release: AtomicBool,
    parks: AtomicU64,
}

/// The probed implementation: sleeps (parks its task) until released, then returns `x + 1`.
extern "C" fn sleeps_until_released(gate: *const Gate, x: u64) -> u64 {
    // SAFETY: the caller passes a `Gate` it keeps alive for the call.
    let gate = unsafe { &*gate };
    gate.inside.store(true, Ordering::SeqCst);
    while !gate.release.load(Ordering::SeqCst) {
        tramway_runtime::sleep(Duration::from_millis(1));
        gate.parks.fetch_add(1, Ordering::SeqCst);
    }
    x + 1
}

type GateFn = extern "C" fn(*const Gate, u64) -> u64;

/// Counts drops of the state an exit probe's closure captures.
struct DropCount(Arc<AtomicU64>);
impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// What [`detach_while_parked`] observed.
#[derive(Debug)]
struct Parked {
    /// The probe's state was dropped while the task was still parked inside the old dispatcher.
    freed_while_parked: bool,
    /// An unrelated retired trampoline was reclaimed while the task was parked.
    unrelated_reclaimed_while_parked: bool,
    /// The task's result.
    result: u64,
    /// The result the exit hook saw (the detached probe still ran for the call in flight).
    exit_saw: u64,
    /// The probe's state was dropped (within a bounded wait) after the task had returned.
    freed_after_return: bool,
}

/// A task calls an exit-probed site and parks inside the implementation; the probe is
/// detached (its dispatcher retired) and grace periods pass; then the task is released and
/// returns through the retired dispatcher. `reclaimer` turns the grace domain into the `Jit`'s
/// reclaimer.
fn detach_while_parked(reclaimer: fn(&GraceDomain) -> Arc<dyn Reclaim>) -> Parked {
    let rt = Runtime::builder().workers(2).build().unwrap();
    let gp = GraceDomain::new(&rt, GraceConfig::default()).unwrap();
    let jit = Jit::builder().reclaimer(reclaimer(&gp)).build().unwrap();
    let probes = Probes::new(&jit);
    let site = probes
        .site(
            SiteKind::Indirect,
            &forward_to(&jit, sleeps_until_released as *const u8),
        )
        .unwrap();
    let drops = Arc::new(AtomicU64::new(0));
    let exit_saw = Arc::new(AtomicU64::new(0));
    let (state, saw) = (DropCount(drops.clone()), exit_saw.clone());
    let probe = probes
        .attach(
            &site,
            ProbeHook::on_exit(move |_, ret| {
                let _keep = &state;
                saw.store(ret.int_rets[0], Ordering::SeqCst);
            }),
        )
        .unwrap();
    // SAFETY: the implementation is `sleeps_until_released`; the caller is a task of the
    // runtime the domain tracks; the site outlives the task (joined below).
    let f: GateFn = unsafe { site.as_fn() };
    let gate = Arc::new(Gate::default());
    let g = gate.clone();
    let task = rt.spawn(move || f(&*g, 41)).unwrap();
    // Parked inside the implementation at least once (so its stack was scanned).
    assert!(within(Duration::from_secs(20), || gate
        .parks
        .load(Ordering::SeqCst)
        >= 1));
    probes.detach(&probe).unwrap();

    // Unrelated code retired meanwhile.
    let other = jit
        .site(SiteKind::Indirect, &jit.constant_return(1).unwrap())
        .unwrap();
    let reclaimed_before = jit.stats().reclaimed;
    drop(other.swap(&jit.constant_return(2).unwrap()).unwrap());
    for _ in 0..3 {
        gp.synchronize();
        jit.barrier();
    }
    let unrelated_reclaimed_while_parked = jit.stats().reclaimed > reclaimed_before;
    let freed_while_parked = drops.load(Ordering::SeqCst) != 0;
    println!("child: freed while parked: {freed_while_parked}");

    gate.release.store(true, Ordering::SeqCst);
    let result = task.join().unwrap();
    let freed_after_return = within(Duration::from_secs(20), || {
        jit.barrier();
        drops.load(Ordering::SeqCst) == 1
    });
    Parked {
        freed_while_parked,
        unrelated_reclaimed_while_parked,
        result,
        exit_saw: exit_saw.load(Ordering::SeqCst),
        freed_after_return,
    }
}

fn sound(gp: &GraceDomain) -> Arc<dyn Reclaim> {
    Arc::new(gp.clone())
}

#[test]
fn a_task_parked_inside_the_implementation_returns_through_its_detached_dispatcher() {
    let p = detach_while_parked(sound);
    assert_eq!(
        p.result, 42,
        "the task returned through the retired dispatcher: {p:?}"
    );
    assert_eq!(
        p.exit_saw, 42,
        "the call in flight still ran the exit hook: {p:?}"
    );
}

#[test]
fn a_detached_exit_probe_state_is_freed_only_after_the_parked_task_left() {
    let p = detach_while_parked(sound);
    assert!(!p.freed_while_parked, "freed under the parked task: {p:?}");
    assert!(
        p.freed_after_return,
        "never freed after the task left: {p:?}"
    );
}

#[test]
fn a_parked_call_holds_back_only_its_own_dispatcher() {
    let p = detach_while_parked(sound);
    assert!(p.unrelated_reclaimed_while_parked, "{p:?}");
}

fn unsound(gp: &GraceDomain) -> Arc<dyn Reclaim> {
    Arc::new(IgnoresCodeRanges(gp.clone()))
}

const CHILD: &str = "TRAMWAY_EXIT_HOOKS_UNSOUND_CHILD";

/// The child of the control: the same scenario without the code-range check.
#[test]
fn unsound_child() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let p = detach_while_parked(unsound);
    println!("child: survived: {p:?}");
}

#[test]
fn control_without_the_code_range_check_the_parked_task_crashes() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "parked::unsound_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The dispatcher (and the probe's state) was freed during the park; the task then returned
    // into trap-filled or unmapped code.
    let signal = out.status.signal();
    assert!(
        matches!(
            signal,
            Some(libc::SIGTRAP | libc::SIGSEGV | libc::SIGILL | libc::SIGBUS)
        ),
        "the child was expected to die returning into freed code: {} {stdout}",
        out.status
    );
    assert!(
        stdout.contains("freed while parked: true"),
        "the child crashed, but not after an early free: {stdout}"
    );
}
