//! A raw forwarding hook ([`Hook`] in a [`ForwardingSpec`]) runs inside a non-yielding section.
//!
//! While a hook runs, its caller is inside the forwarding trampoline (the hook returns into
//! it), so nothing the hook calls may report a quiescent state: not an `offline` scope, not
//! `ThreadRegistration::quiescent()` / `offline()`, and `GraceDomain::synchronize()` must
//! refuse (it would wait for the hook's own caller). Each test observes the difference
//! directly: the hook takes a grace-period cookie after it entered and watches, for up to
//! [`WATCH`], whether that grace period ends while the hook is still running. It must not.

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tramway_jit::{ForwardingSpec, Hook, HookArgs, Jit, Site, SiteKind, Target};
use tramway_runtime::grace::GraceDomain;
use tramway_runtime::{Runtime, ThreadRegistration};

/// How long a hook watches for a grace period to end while it is inside.
const WATCH: Duration = Duration::from_millis(200);

/// What the hook does while its caller is inside the trampoline.
#[derive(Clone, Copy)]
enum Attempt {
    /// `tramway_runtime::offline(|| watch)`: "blocking I/O" inside the hook.
    OfflineScope,
    /// `GraceDomain::synchronize()`.
    Synchronize,
    /// `ThreadRegistration::quiescent()` on the registered thread that called the site,
    /// repeated while watching.
    ThreadQuiescent,
    /// `ThreadRegistration::offline()`, watch, `online()`.
    ThreadOffline,
}

/// The hook's `user` data: what to attempt, and what it saw.
struct Watch {
    gp: GraceDomain,
    attempt: Attempt,
    /// The calling thread's registration (thread attempts only; that thread calls the site).
    registration: Option<*const ThreadRegistration>,
    entered: AtomicBool,
    /// A grace period that started after the hook entered ended before the hook returned.
    gp_ended_inside: AtomicBool,
    /// `synchronize()` panicked (refused) instead of waiting.
    synchronize_refused: AtomicBool,
}

// SAFETY: `registration` is dereferenced only by the hook, on the thread that owns the
// registration (the thread attempts call the site from that thread).
unsafe impl Sync for Watch {}

/// Watches the grace period of `cookie` until it ends or [`WATCH`] passes; also runs `each`
/// on every round. Returns whether it ended.
fn watch(
    gp: &GraceDomain,
    cookie: &tramway_runtime::grace::Cookie,
    mut each: impl FnMut(),
) -> bool {
    let deadline = Instant::now() + WATCH;
    while Instant::now() < deadline {
        each();
        if gp.poll(cookie) {
            return true;
        }
        std::hint::spin_loop();
    }
    false
}

/// The raw hook under test. It must not unwind (it is `extern "C"`), so it only records.
unsafe extern "C" fn attempt_a_quiescent_state(user: *mut c_void, _args: *const HookArgs) {
    // SAFETY: `user` is the test's `Watch`, which outlives every call through the site.
    let w = unsafe { &*(user as *const Watch) };
    w.entered.store(true, Ordering::Release);
    let cookie = w.gp.start_poll();
    let ended = match w.attempt {
        Attempt::OfflineScope => tramway_runtime::offline(|| watch(&w.gp, &cookie, || ())),
        Attempt::Synchronize => {
            let refused = catch_unwind(AssertUnwindSafe(|| w.gp.synchronize())).is_err();
            w.synchronize_refused.store(refused, Ordering::Release);
            w.gp.poll(&cookie)
        }
        Attempt::ThreadQuiescent => {
            // SAFETY: set for thread attempts; this is the registration's own thread.
            let reg = unsafe { &*w.registration.expect("thread attempt") };
            watch(&w.gp, &cookie, || reg.quiescent())
        }
        Attempt::ThreadOffline => {
            // SAFETY: as above.
            let reg = unsafe { &*w.registration.expect("thread attempt") };
            reg.offline();
            let ended = watch(&w.gp, &cookie, || ());
            reg.online();
            ended
        }
    };
    w.gp_ended_inside.store(ended, Ordering::Release);
}

extern "C" fn forty_two() -> u64 {
    42
}

/// A runtime with one worker, a Tasks grace domain and a Jit reclaiming through it.
fn setup() -> (Runtime, GraceDomain, Jit) {
    let tw = tramway::Builder::new().workers(1).build().unwrap();
    (tw.runtime, tw.grace, tw.jit)
}

fn watch_for(gp: &GraceDomain, attempt: Attempt) -> Box<Watch> {
    Box::new(Watch {
        gp: gp.clone(),
        attempt,
        registration: None,
        entered: AtomicBool::new(false),
        gp_ended_inside: AtomicBool::new(false),
        synchronize_refused: AtomicBool::new(false),
    })
}

/// A site whose forwarding trampoline calls the hook with `watch`, then `forty_two`.
fn hooked_site(jit: &Jit, watch: &Watch) -> Site {
    let t = jit
        .forwarding(
            ForwardingSpec::new(Target::Address(forty_two as *const u8)).hook(Hook {
                func: attempt_a_quiescent_state,
                user: watch as *const Watch as *mut c_void,
            }),
        )
        .unwrap();
    jit.site(SiteKind::Indirect, &t).unwrap()
}

/// Calls the site from a task on the only worker and returns what the hook saw.
fn call_from_a_task(attempt: Attempt) -> Box<Watch> {
    let (rt, gp, jit) = setup();
    let watch = watch_for(&gp, attempt);
    let site = hooked_site(&jit, &watch);
    // SAFETY: the site forwards to `forty_two`; the task calls it while the site is alive
    // (it is joined below).
    let f: extern "C" fn() -> u64 = unsafe { site.as_fn() };
    let caller = rt.spawn(move || f()).unwrap();
    assert_eq!(caller.join().unwrap(), 42);
    assert!(watch.entered.load(Ordering::Acquire), "the hook ran");
    drop(site);
    drop(jit);
    drop(rt);
    watch
}

/// Calls the site from a registered OS thread (this one) and returns what the hook saw.
fn call_from_a_registered_thread(attempt: Attempt) -> Box<Watch> {
    let (rt, gp, jit) = setup();
    let registration = rt.register_thread().unwrap();
    let mut watch = watch_for(&gp, attempt);
    watch.registration = Some(&registration);
    let site = hooked_site(&jit, &watch);
    // SAFETY: the site forwards to `forty_two`; this registered thread calls it while the
    // site is alive.
    let f: extern "C" fn() -> u64 = unsafe { site.as_fn() };
    assert_eq!(f(), 42);
    assert!(watch.entered.load(Ordering::Acquire), "the hook ran");
    // Back outside the trampoline: now the thread is quiescent.
    registration.quiescent();
    drop(site);
    drop(jit);
    drop(registration);
    watch
}

fn assert_no_gp_ended_inside(watch: &Watch) {
    assert!(
        !watch.gp_ended_inside.load(Ordering::Acquire),
        "a grace period ended while the caller was inside the hook (and so inside the trampoline)"
    );
}

#[test]
fn an_offline_scope_inside_a_raw_hook_does_not_end_a_grace_period() {
    assert_no_gp_ended_inside(&call_from_a_task(Attempt::OfflineScope));
}

#[test]
fn synchronize_inside_a_raw_hook_refuses_instead_of_waiting() {
    let watch = call_from_a_task(Attempt::Synchronize);
    assert!(
        watch.synchronize_refused.load(Ordering::Acquire),
        "GraceDomain::synchronize inside a raw hook waited (parking the caller inside the trampoline)"
    );
    assert_no_gp_ended_inside(&watch);
}

#[test]
fn thread_quiescent_inside_a_raw_hook_does_not_end_a_grace_period() {
    assert_no_gp_ended_inside(&call_from_a_registered_thread(Attempt::ThreadQuiescent));
}

#[test]
fn thread_offline_inside_a_raw_hook_does_not_end_a_grace_period() {
    assert_no_gp_ended_inside(&call_from_a_registered_thread(Attempt::ThreadOffline));
}
