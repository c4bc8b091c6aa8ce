//! The C API exercised from Rust, one behaviour per test (unit tests: the crate has no rlib
//! for integration tests to link; see Cargo.toml). `tests/c_example.rs` runs the C example.

use std::ffi::{c_void, CStr};
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::config::*;
use crate::emit::*;
use crate::error::*;
use crate::grace::*;
use crate::jit::*;
use crate::probes::*;
use crate::runtime::*;
use crate::site::*;
use crate::thread::*;

/// Panics with the error's message unless `err` is NULL.
fn ok(err: *mut tw_error_t) {
    if !err.is_null() {
        // SAFETY: a live error returned by the library.
        let msg = unsafe { CStr::from_ptr(tw_error_message(err)) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: as above, deleted once.
        unsafe { tw_error_delete(err) };
        panic!("unexpected error: {msg}");
    }
}

/// The error's code and message (deleting it); `TW_OK` for NULL.
fn code(err: *mut tw_error_t) -> (tw_error_code_t, String) {
    // SAFETY: NULL or a live error returned by the library, deleted once here.
    unsafe {
        let c = tw_error_code(err);
        let msg = CStr::from_ptr(tw_error_message(err))
            .to_string_lossy()
            .into_owned();
        tw_error_delete(err);
        (c, msg)
    }
}

/// A threads-only domain and a jit over it (small reservation).
struct Fixture {
    domain: *mut tw_grace_domain_t,
    jit: *mut tw_jit_t,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture::with(|_| {})
    }

    /// A fixture whose jit config `adjust` changes (after the defaults and a 16 MiB
    /// reservation).
    fn with(adjust: impl FnOnce(&mut tw_jit_config_t)) -> Fixture {
        let mut domain = null_mut();
        let mut jit = null_mut();
        let mut cfg = std::mem::MaybeUninit::<tw_jit_config_t>::uninit();
        // SAFETY: valid out-parameters; `cfg` is initialized by its _init function.
        unsafe {
            ok(tw_grace_domain_new_threads_only(null(), &mut domain));
            tw_jit_config_init(cfg.as_mut_ptr());
            let mut cfg = cfg.assume_init();
            cfg.reservation_size = 16 << 20;
            adjust(&mut cfg);
            ok(tw_jit_new(domain, &cfg, &mut jit));
        }
        Fixture { domain, jit }
    }

    fn forward(&self, f: extern "C" fn(u64) -> u64) -> *mut tw_code_t {
        let mut code = null_mut();
        // SAFETY: a live jit; `f` is a C function that lives forever.
        ok(unsafe { tw_jit_forward(self.jit, transmute_fn(f), &mut code) });
        code
    }

    fn site(&self, code: *const tw_code_t) -> *mut tw_site_t {
        let mut site = null_mut();
        // SAFETY: live handles, a valid out-parameter.
        ok(unsafe { tw_site_new(self.jit, TW_SITE_INDIRECT, code, &mut site) });
        site
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // SAFETY: made in `new`, deleted once.
        unsafe {
            tw_jit_delete(self.jit);
            tw_grace_domain_delete(self.domain);
        }
    }
}

fn transmute_fn(f: extern "C" fn(u64) -> u64) -> crate::tw_fn_t {
    // SAFETY: any C function pointer may be carried as `tw_fn_t` and cast back.
    Some(unsafe { std::mem::transmute::<extern "C" fn(u64) -> u64, unsafe extern "C" fn()>(f) })
}

/// Calls a site's entry as `fn(u64) -> u64`.
fn call(site: *const tw_site_t, x: u64) -> u64 {
    // SAFETY: a live site whose code implements `extern "C" fn(u64) -> u64`; the caller is
    // a registered online thread.
    unsafe {
        let f: extern "C" fn(u64) -> u64 = std::mem::transmute(tw_site_entry(site));
        f(x)
    }
}

extern "C" fn add_one(x: u64) -> u64 {
    x + 1
}

extern "C" fn add_two(x: u64) -> u64 {
    x + 2
}

#[test]
fn null_error_reads_as_success() {
    let (c, msg) = code(null_mut());
    assert_eq!((c, msg.as_str()), (tw_error_code_t::TW_OK, "no error"));
    // SAFETY: NULL is allowed.
    assert_eq!(unsafe { tw_error_errno(null()) }, 0);
}

#[test]
fn null_handles_and_out_parameters_are_invalid_arguments() {
    let f = Fixture::new();
    let code_ = f.forward(add_one);
    let mut out = null_mut();
    // SAFETY: every pointer is NULL or live; NULLs are what is tested.
    let errors = unsafe {
        [
            tw_jit_new(null(), null(), &mut out),
            tw_jit_new(f.domain, null(), null_mut()),
            tw_jit_forward(f.jit, None, &mut null_mut()),
            tw_site_new(f.jit, TW_SITE_INDIRECT, null(), &mut null_mut()),
            tw_site_swap(null(), code_),
            tw_synchronize(null()),
            tw_call(f.domain, None, null_mut()),
            tw_start_poll(f.domain, null_mut()),
            tw_register_thread(null()),
            tw_probe_detach(null(), null()),
        ]
    };
    for (i, err) in errors.into_iter().enumerate() {
        assert_eq!(
            code(err).0,
            tw_error_code_t::TW_ERROR_INVALID_ARGUMENT,
            "call {i}"
        );
    }
    assert!(out.is_null());
    // SAFETY: made above, deleted once.
    unsafe { tw_code_delete(code_) };
}

#[test]
fn a_config_smaller_than_its_first_version_is_rejected_by_new() {
    let f = Fixture::new();
    let mut cfg = std::mem::MaybeUninit::<tw_jit_config_t>::uninit();
    let mut jit = null_mut();
    // SAFETY: initialized by _init; valid out-parameter.
    let (c, msg) = code(unsafe {
        tw_jit_config_init(cfg.as_mut_ptr());
        let mut cfg = cfg.assume_init();
        cfg.size = 4;
        tw_jit_new(f.domain, &cfg, &mut jit)
    });
    assert_eq!(c, tw_error_code_t::TW_ERROR_INVALID_ARGUMENT, "{msg}");
    assert!(msg.contains("smaller than the first version"), "{msg}");
    assert!(jit.is_null());
}

#[test]
fn a_config_of_the_first_version_gets_the_defaults_of_later_fields() {
    // A caller built against the first version passes its smaller size and never wrote
    // `perf_map` or `unwind_info`: garbage there must not be read.
    let f = Fixture::with(|cfg| {
        cfg.size = std::mem::offset_of!(tw_jit_config_t, perf_map);
        cfg.perf_map = 0xdead;
        cfg.unwind_info = 0xbeef;
    });
    // SAFETY: a live jit handle.
    let jit = unsafe { &(*f.jit).jit };
    let code = f.forward(add_one);
    assert_eq!(jit.stats().unwind_registered, 0);
    // SAFETY: made above, deleted once.
    unsafe { tw_code_delete(code) };
}

#[test]
fn perf_map_writes_the_code_to_the_perf_map() {
    let f = Fixture::with(|cfg| cfg.perf_map = 1);
    let code = f.forward(add_one);
    // SAFETY: a live code handle.
    let addr = unsafe { tw_code_addr(code) } as usize;
    let map = std::fs::read_to_string(tramway_jit::Jit::perf_map_path()).expect("the perf map");
    assert!(
        map.lines().any(|l| l.starts_with(&format!("{addr:x} "))),
        "no line for {addr:#x}"
    );
    // SAFETY: made above, deleted once.
    unsafe { tw_code_delete(code) };
}

#[test]
fn an_unknown_flavor_is_rejected() {
    let mut cfg = std::mem::MaybeUninit::<tw_grace_config_t>::uninit();
    let mut domain = null_mut();
    // SAFETY: initialized by _init; valid out-parameter.
    let (c, msg) = code(unsafe {
        tw_grace_config_init(cfg.as_mut_ptr());
        let mut cfg = cfg.assume_init();
        cfg.flavor = 7;
        tw_grace_domain_new_threads_only(&cfg, &mut domain)
    });
    assert_eq!(c, tw_error_code_t::TW_ERROR_INVALID_ARGUMENT);
    assert!(msg.contains("unknown flavor 7"), "{msg}");
}

#[test]
fn a_runtime_with_zero_workers_is_rejected_and_one_worker_serves_a_domain() {
    let mut cfg = std::mem::MaybeUninit::<tw_runtime_config_t>::uninit();
    let (mut rt, mut domain) = (null_mut(), null_mut());
    // SAFETY: initialized by _init; valid out-parameters; handles deleted once.
    unsafe {
        tw_runtime_config_init(cfg.as_mut_ptr());
        let mut cfg = cfg.assume_init();
        cfg.workers = 0;
        assert_eq!(
            code(tw_runtime_new(&cfg, &mut rt)).0,
            tw_error_code_t::TW_ERROR_INVALID_ARGUMENT
        );
        cfg.workers = 1;
        ok(tw_runtime_new(&cfg, &mut rt));
        assert_eq!(tw_runtime_workers(rt), 1);
        ok(tw_grace_domain_new(rt, null(), &mut domain));
        tw_runtime_delete(rt); // the domain keeps the runtime alive
        ok(tw_register_thread(domain));
        ok(tw_synchronize(domain));
        ok(tw_unregister_thread());
        tw_grace_domain_delete(domain);
    }
}

extern "C" fn synchronize_from_callback(user: *mut c_void) {
    // SAFETY: `user` is the `Probe` the test passes, alive until its barrier returns.
    let probe = unsafe { &*(user as *const CallbackProbe) };
    // SAFETY: the domain outlives the barrier that waits for this callback.
    let (c, msg) = code(unsafe { tw_synchronize(probe.domain) });
    probe.code.store(c as usize, Ordering::SeqCst);
    *probe.message.lock().unwrap() = msg;
}

struct CallbackProbe {
    domain: *const tw_grace_domain_t,
    code: AtomicUsize,
    message: std::sync::Mutex<String>,
}

#[test]
fn a_panic_inside_the_library_becomes_a_panicked_error() {
    let f = Fixture::new();
    let probe = CallbackProbe {
        domain: f.domain,
        code: AtomicUsize::new(0),
        message: Default::default(),
    };
    // SAFETY: `probe` outlives the barrier; the callback is sound on the driver thread.
    unsafe {
        let user = &probe as *const CallbackProbe as *mut c_void;
        ok(tw_call(f.domain, Some(synchronize_from_callback), user));
        ok(tw_barrier(f.domain));
    }
    assert_eq!(
        probe.code.load(Ordering::SeqCst),
        tw_error_code_t::TW_ERROR_PANICKED as usize
    );
    let msg = probe.message.lock().unwrap().clone();
    assert!(msg.starts_with("tw_synchronize: panicked:"), "{msg}");
}

#[test]
fn cookies_complete_after_a_grace_period_and_unknown_ones_are_rejected() {
    let f = Fixture::new();
    let (mut cookie, mut done) = (0, true);
    // SAFETY: a live domain, valid out-parameters.
    unsafe {
        ok(tw_start_poll(f.domain, &mut cookie));
        assert_ne!(cookie, 0);
        ok(tw_synchronize(f.domain));
        ok(tw_poll(f.domain, cookie, &mut done));
        assert!(done);
        let (c, _) = code(tw_poll(f.domain, cookie + 1, &mut done));
        assert_eq!(c, tw_error_code_t::TW_ERROR_INVALID_ARGUMENT);
    }
}

#[test]
fn thread_calls_report_whether_the_thread_is_registered() {
    let f = Fixture::new();
    assert!(!tw_quiescent() && !tw_thread_offline() && !tw_thread_online());
    assert_eq!(
        code(tw_unregister_thread()).0,
        tw_error_code_t::TW_ERROR_NOT_A_READER
    );
    // SAFETY: a live domain.
    ok(unsafe { tw_register_thread(f.domain) });
    // SAFETY: as above.
    let again = code(unsafe { tw_register_thread(f.domain) }).0;
    assert_eq!(again, tw_error_code_t::TW_ERROR_ALREADY_REGISTERED);
    assert!(tw_thread_is_online());
    assert!(tw_thread_offline() && !tw_thread_is_online());
    assert!(tw_thread_online() && tw_quiescent());
    ok(tw_unregister_thread());
    assert!(!tw_thread_is_online());
}

#[test]
fn a_thread_that_exits_registered_no_longer_holds_grace_periods_back() {
    let f = Fixture::new();
    let domain = f.domain as usize;
    std::thread::spawn(move || {
        // SAFETY: the domain outlives the thread (joined below).
        ok(unsafe { tw_register_thread(domain as *const tw_grace_domain_t) });
        // exits online, never quiescent: its thread-local destructor unregisters it
    })
    .join()
    .unwrap();
    // SAFETY: a live domain. Would wait forever if the exited thread were still a reader.
    ok(unsafe { tw_synchronize(f.domain) });
}

#[test]
fn swapped_out_code_is_retired_and_code_of_another_jit_is_foreign() {
    let (f, other) = (Fixture::new(), Fixture::new());
    // SAFETY: a live domain.
    ok(unsafe { tw_register_thread(f.domain) });
    let (one, two) = (f.forward(add_one), f.forward(add_two));
    let site = f.site(one);
    assert_eq!(call(site, 1), 2);
    // SAFETY: live handles, deleted once at the end.
    unsafe {
        ok(tw_site_swap(site, two));
        assert_eq!(call(site, 1), 3);
        assert!(tw_code_is_retired(one));
        assert_eq!(
            code(tw_site_swap(site, one)).0,
            tw_error_code_t::TW_ERROR_RETIRED
        );
        let foreign = other.forward(add_one);
        assert_eq!(
            code(tw_site_swap(site, foreign)).0,
            tw_error_code_t::TW_ERROR_FOREIGN
        );
        tw_code_delete(foreign);
        ok(tw_unregister_thread());
        // Any order: the site after its jit and codes.
        tw_code_delete(one);
        tw_code_delete(two);
    }
    drop(f);
    // SAFETY: made above, deleted once.
    unsafe { tw_site_delete(site) };
}

/// `mov rax, imm64 (the final address); ret`; `user`, if not NULL, is an `AtomicU64` length
/// override.
unsafe extern "C" fn emit_own_address(
    user: *mut c_void,
    buf: *mut u8,
    cap: usize,
    at: usize,
) -> usize {
    let mut code = vec![0x48, 0xB8];
    code.extend_from_slice(&(at as u64).to_le_bytes());
    code.push(0xC3);
    let len = if user.is_null() {
        code.len()
    } else {
        // SAFETY: the tests pass an `AtomicU64` that outlives the call.
        let calls = unsafe { &*(user as *const AtomicU64) };
        // The first call returns 100 bytes, more than the slot the library guessed (the
        // previous code's size), so a second pass runs; it returns a different length.
        if calls.fetch_add(1, Ordering::SeqCst) == 0 {
            100
        } else {
            12
        }
    };
    if len > cap {
        return len; // reported as an error by the library
    }
    code.resize(len, 0xC3);
    // SAFETY: `buf` has `cap >= len` writable bytes.
    unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), buf, len) };
    len
}

#[test]
fn emitted_code_runs_at_the_address_its_callback_was_given() {
    let f = Fixture::new();
    // SAFETY: a live domain.
    ok(unsafe { tw_register_thread(f.domain) });
    let mut own = null_mut();
    // SAFETY: live handles; the callback writes within `cap`.
    unsafe {
        ok(tw_jit_emit(
            f.jit,
            Some(emit_own_address),
            null_mut(),
            64,
            &mut own,
        ));
        assert_eq!(tw_code_len(own), 11);
        let site = f.site(own);
        let entry: extern "C" fn() -> usize = std::mem::transmute(tw_site_entry(site));
        assert_eq!(entry(), tw_code_addr(own) as usize);
        tw_site_delete(site);
        tw_code_delete(own);
    }
    ok(tw_unregister_thread());
}

#[test]
fn emission_fails_for_a_bad_callback_length() {
    let f = Fixture::new();
    let changing = AtomicU64::new(0);
    let mut out = null_mut();
    // SAFETY: live handles; the callback writes within `cap`.
    let errors = unsafe {
        [
            tw_jit_emit(f.jit, Some(emit_own_address), null_mut(), 8, &mut out), // > cap
            tw_jit_emit(
                f.jit,
                Some(emit_own_address),
                &changing as *const _ as *mut _,
                256,
                &mut out,
            ),
        ]
    };
    for err in errors {
        let (c, msg) = code(err);
        assert_eq!(c, tw_error_code_t::TW_ERROR_EMIT_FAILED, "{msg}");
    }
    assert_eq!(
        changing.load(Ordering::SeqCst),
        2,
        "the length changed between two passes"
    );
    assert!(out.is_null());
    // SAFETY: as above.
    let zero = unsafe { tw_jit_emit(f.jit, Some(emit_own_address), null_mut(), 0, &mut out) };
    assert_eq!(code(zero).0, tw_error_code_t::TW_ERROR_INVALID_ARGUMENT);
}

mod probes;
