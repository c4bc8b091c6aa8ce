//! Probes from C: hooks, finalizers, and what a hook must not do.

use std::ffi::c_void;
use std::ptr::null_mut;
use std::sync::atomic::{AtomicU64, Ordering};

use super::*;

/// A probe's user data: calls seen, the last first argument, finalizer runs.
#[derive(Default)]
struct Counter {
    calls: AtomicU64,
    last_arg: AtomicU64,
    finalized: AtomicU64,
}

unsafe extern "C" fn count(user: *mut c_void, args: *const tw_hook_args_t) {
    // SAFETY: the tests pass a `Counter` that outlives its finalizer, and valid args.
    let (c, args) = unsafe { (&*(user as *const Counter), &*args) };
    c.calls.fetch_add(1, Ordering::SeqCst);
    c.last_arg.store(args.int_args[0], Ordering::SeqCst);
}

unsafe extern "C" fn finalize(user: *mut c_void) {
    // SAFETY: as in `count`.
    unsafe { &*(user as *const Counter) }
        .finalized
        .fetch_add(1, Ordering::SeqCst);
}

struct ProbeFixture {
    f: Fixture,
    probes: *mut tw_probes_t,
    implementation: *mut tw_code_t,
    site: *mut tw_site_t,
}

impl ProbeFixture {
    fn new() -> ProbeFixture {
        ProbeFixture::on(Fixture::new())
    }

    fn on(f: Fixture) -> ProbeFixture {
        let implementation = f.forward(add_one);
        let (mut probes, mut site) = (null_mut(), null_mut());
        // SAFETY: live handles, valid out-parameters.
        unsafe {
            ok(tw_register_thread(f.domain));
            ok(tw_probes_new(f.jit, &mut probes));
            ok(tw_probes_site(
                probes,
                TW_SITE_INDIRECT,
                implementation,
                &mut site,
            ));
        }
        ProbeFixture {
            f,
            probes,
            implementation,
            site,
        }
    }

    fn attach(&self, counter: &Counter) -> *mut tw_probe_t {
        let mut probe = null_mut();
        let user = counter as *const Counter as *mut c_void;
        // SAFETY: live handles; `counter` outlives the finalizer (the tests wait for it).
        ok(unsafe {
            tw_probe_attach(
                self.probes,
                self.site,
                Some(count),
                user,
                Some(finalize),
                &mut probe,
            )
        });
        probe
    }
}

impl Drop for ProbeFixture {
    fn drop(&mut self) {
        let _ = code(tw_unregister_thread());
        // SAFETY: made in `new`, deleted once (the site may be deleted already: NULL).
        unsafe {
            tw_site_delete(self.site);
            tw_probes_delete(self.probes);
            tw_code_delete(self.implementation);
        }
    }
}

#[test]
fn a_probe_counts_calls_and_its_finalizer_runs_only_after_detach_and_a_grace_period() {
    let p = ProbeFixture::new();
    let counter = Counter::default();
    let probe = p.attach(&counter);
    assert_eq!(call(p.site, 41), 42);
    assert_eq!(counter.calls.load(Ordering::SeqCst), 1);
    assert_eq!(counter.last_arg.load(Ordering::SeqCst), 41);
    // SAFETY: live handles.
    unsafe {
        ok(tw_probe_detach(p.probes, probe));
        assert_eq!(call(p.site, 1), 2);
        assert_eq!(counter.calls.load(Ordering::SeqCst), 1);
        // Online and not quiescent since the detach: no grace period can have ended.
        assert_eq!(counter.finalized.load(Ordering::SeqCst), 0);
        assert!(tw_quiescent());
        ok(tw_jit_barrier(p.f.jit));
        assert_eq!(counter.finalized.load(Ordering::SeqCst), 1);
        assert_eq!(
            code(tw_probe_detach(p.probes, probe)).0,
            tw_error_code_t::TW_ERROR_NOT_ATTACHED
        );
        tw_probe_delete(probe);
    }
}

#[test]
fn deleting_a_probed_site_finalizes_its_probes_after_a_grace_period() {
    let mut p = ProbeFixture::new();
    let counter = Counter::default();
    let probe = p.attach(&counter);
    assert_eq!(call(p.site, 1), 2);
    // SAFETY: live handles; the site is deleted once (and cleared for the fixture).
    unsafe {
        tw_site_delete(std::mem::replace(&mut p.site, null_mut()));
        assert!(tw_quiescent());
        ok(tw_jit_barrier(p.f.jit));
        assert_eq!(counter.finalized.load(Ordering::SeqCst), 1);
        assert_eq!(
            code(tw_probe_detach(p.probes, probe)).0,
            tw_error_code_t::TW_ERROR_SITE_DELETED
        );
        tw_probe_delete(probe);
    }
}

#[test]
fn a_failed_attach_runs_the_finalizer_before_returning() {
    let p = ProbeFixture::new();
    let plain = p.f.site(p.implementation);
    let counter = Counter::default();
    let user = &counter as *const Counter as *mut c_void;
    let mut probe = null_mut();
    // SAFETY: live handles; a plain site is refused.
    let err = unsafe {
        tw_probe_attach(
            p.probes,
            plain,
            Some(count),
            user,
            Some(finalize),
            &mut probe,
        )
    };
    assert_eq!(code(err).0, tw_error_code_t::TW_ERROR_INVALID_ARGUMENT);
    assert!(probe.is_null());
    assert_eq!(counter.finalized.load(Ordering::SeqCst), 1);
    // SAFETY: made above, deleted once.
    unsafe { tw_site_delete(plain) };
}

/// A hook that tries what hooks must not do, recording each error code in its `Vec`.
unsafe extern "C" fn misbehave(user: *mut c_void, _args: *const tw_hook_args_t) {
    // SAFETY: the test passes a `Misbehaving` that outlives the probe.
    let m = unsafe { &*(user as *const Misbehaving) };
    // SAFETY: the handles outlive the probe.
    let errors = unsafe {
        [
            tw_synchronize(m.domain),
            tw_jit_barrier(m.jit),
            tw_unregister_thread(),
            tw_site_swap(m.site, m.code),
        ]
    };
    let codes = errors.into_iter().map(|e| code(e).0).collect();
    *m.codes.lock().unwrap() = codes;
}

struct Misbehaving {
    domain: *const tw_grace_domain_t,
    jit: *const tw_jit_t,
    site: *const tw_site_t,
    code: *const tw_code_t,
    codes: std::sync::Mutex<Vec<tw_error_code_t>>,
}

#[test]
fn what_a_hook_must_not_do_fails_with_in_hook() {
    let p = ProbeFixture::new();
    let other = p.f.forward(add_two);
    let m = Misbehaving {
        domain: p.f.domain,
        jit: p.f.jit,
        site: p.site,
        code: other,
        codes: Default::default(),
    };
    let mut probe = null_mut();
    let user = &m as *const Misbehaving as *mut c_void;
    // SAFETY: live handles; `m` outlives the probe (detached and waited for below).
    unsafe {
        ok(tw_probe_attach(
            p.probes,
            p.site,
            Some(misbehave),
            user,
            None,
            &mut probe,
        ));
        assert_eq!(call(p.site, 1), 2);
        ok(tw_probe_detach(p.probes, probe));
        assert!(tw_quiescent());
        ok(tw_jit_barrier(p.f.jit));
        tw_probe_delete(probe);
        tw_code_delete(other);
    }
    let codes = m.codes.lock().unwrap().clone();
    assert_eq!(codes, vec![tw_error_code_t::TW_ERROR_IN_HOOK; 4]);
    assert!(
        tw_thread_is_online(),
        "the hook's unregister attempt changed nothing"
    );
}

#[test]
fn unwind_info_registers_the_probe_trampolines_unwind_information() {
    let p = ProbeFixture::on(Fixture::with(|cfg| cfg.unwind_info = 1));
    // SAFETY: a live jit handle.
    let jit = unsafe { &(*p.f.jit).jit };
    assert_eq!(jit.stats().unwind_registered, 0);
    let counter = Counter::default();
    let probe = p.attach(&counter);
    // The probe trampoline calls the dispatcher: it carries unwind information.
    assert!(jit.stats().unwind_registered >= 1, "{:?}", jit.stats());
    // SAFETY: live handles; the probe is detached and deleted once.
    unsafe {
        ok(tw_probe_detach(p.probes, probe));
        assert!(tw_quiescent());
        ok(tw_jit_barrier(p.f.jit));
        tw_probe_delete(probe);
    }
    // Deregistered when its trampoline was freed, after the grace period.
    assert_eq!(jit.stats().unwind_registered, 0, "{:?}", jit.stats());
    assert_eq!(counter.finalized.load(Ordering::SeqCst), 1);
}
