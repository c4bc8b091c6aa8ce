//! Probes: C hooks run on entry to a site, with a finalizer for their user data.
//!
//! A C hook is a `ProbeHook` closure that owns a `CHook` (`hook`, `user`, `finalizer`). The
//! jit drops a closure hook's captured state only after the last probe trampoline that can
//! call it is past a grace period (see `tramway_jit`'s `probe/mod.rs`): after the probe is
//! detached or its site deleted, and a grace period. `CHook`'s `Drop` calls the finalizer,
//! so the finalizer runs exactly then, once, and never while a call can still be inside the
//! hook. If attaching fails, nothing could have called the hook, and the finalizer runs
//! before `tw_probe_attach` returns.

use std::ffi::c_void;

use tramway_jit::{ProbeHook, Probes};

use crate::boundary::{catch, delete, handle, put};
use crate::error::{tw_error_t, Error};
use crate::jit::{tw_code_t, tw_jit_t};
use crate::site::{self, tw_site_kind_t, tw_site_t, SiteInner};
use crate::thread::forbid_in_hook;

/// The integer argument registers of the call a hook sees (x86-64 System V: `rdi, rsi, rdx,
/// rcx, r8, r9`, in that order).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct tw_hook_args_t {
    /// The first six integer (or pointer) arguments of the call.
    pub int_args: [u64; 6],
}

/// A probe hook: called as `hook(user, args)` on the calling thread, before the site's
/// implementation runs. It must not block, wait for a grace period, unwind, or attach,
/// detach or swap.
pub type tw_hook_fn = Option<unsafe extern "C" fn(user: *mut c_void, args: *const tw_hook_args_t)>;

/// Releases a hook's user data: called once as `finalizer(user)` after the probe is detached
/// (or its site deleted) and a grace period has passed.
pub type tw_finalizer_fn = Option<unsafe extern "C" fn(user: *mut c_void)>;

/// A probe manager over one jit: it creates probed sites and attaches and detaches probes on
/// them, each change at the cost of one grace period for what it replaces.
pub struct tw_probes_t {
    probes: Probes,
}

/// A handle naming one attached (or once attached) probe. Deleting it does not detach the
/// probe.
pub struct tw_probe_t {
    probe: tramway_jit::Probe,
}

/// A C hook as the probe owns it (see the module docs).
struct CHook {
    hook: unsafe extern "C" fn(*mut c_void, *const tw_hook_args_t),
    user: *mut c_void,
    finalizer: tw_finalizer_fn,
}

// SAFETY: `tw_probe_attach`'s contract: `hook(user, ..)` may run concurrently on any
// registered thread, and `finalizer(user)` on any thread; nothing else touches `user`.
unsafe impl Send for CHook {}
// SAFETY: as above (the hook is only called through `&CHook`).
unsafe impl Sync for CHook {}

impl CHook {
    fn call(&self, args: &tw_hook_args_t) {
        crate::thread::in_hook(|| {
            // SAFETY: the contract of `tw_probe_attach`: `hook(user, ..)` may be called from
            // any registered thread until the finalizer runs, which only `drop` (after the last
            // call) does; `args` is a live reference.
            unsafe { (self.hook)(self.user, args) }
        })
    }
}

impl Drop for CHook {
    fn drop(&mut self) {
        if let Some(finalizer) = self.finalizer {
            // SAFETY: runs once (drop), after the last call into the hook (module docs);
            // the contract of `tw_probe_attach` allows it on this thread.
            unsafe { finalizer(self.user) }
        }
    }
}

/// Creates a probe manager for `jit`'s sites (it keeps the jit's code memory alive).
///
/// Errors: `TW_ERROR_INVALID_ARGUMENT` (NULL).
///
/// # Safety
/// `jit` is NULL or a live jit; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn tw_probes_new(
    jit: *const tw_jit_t,
    out: *mut *mut tw_probes_t,
) -> *mut tw_error_t {
    catch("tw_probes_new", || {
        let make = || {
            // SAFETY: a NULL-or-live handle (the caller's contract).
            let jit = unsafe { handle(jit, "jit") }?;
            Ok(tw_probes_t {
                probes: Probes::new(&jit.jit),
            })
        };
        // SAFETY: `out` is NULL or writable (the caller's contract).
        unsafe { put(out, "out", make) }
    })
}

/// Releases the manager handle; its sites and probes stay as they are. NULL is ignored.
///
/// # Safety
/// `probes` is NULL or a manager from `tw_probes_new`, not deleted before.
#[no_mangle]
pub unsafe extern "C" fn tw_probes_delete(probes: *mut tw_probes_t) {
    // SAFETY: forwarded from the caller.
    unsafe { delete("tw_probes_delete", probes) }
}

/// Creates a probed site of `kind` whose implementation is `code`, and stores it in `*out`:
/// a `tw_site_t` like any other (`tw_site_entry`, `tw_site_swap`, `tw_site_delete`) on which
/// `tw_probe_attach` can attach hooks. With no probe attached, calls go straight to the
/// implementation.
///
/// Errors: as `tw_site_new`.
///
/// # Safety
/// `probes` and `code` are NULL or live handles; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn tw_probes_site(
    probes: *const tw_probes_t,
    kind: tw_site_kind_t,
    code: *const tw_code_t,
    out: *mut *mut tw_site_t,
) -> *mut tw_error_t {
    catch("tw_probes_site", || {
        let make = || {
            // SAFETY: a NULL-or-live handle (the caller's contract).
            let probes = unsafe { handle(probes, "probes") }?;
            // SAFETY: a NULL-or-live handle (the caller's contract).
            let code = unsafe { handle(code, "code") }?;
            let site = probes.probes.site(site::kind(kind)?, &code.code)?;
            Ok(tw_site_t {
                inner: SiteInner::Probed(site),
            })
        };
        // SAFETY: `out` is NULL or writable (the caller's contract).
        unsafe { put(out, "out", make) }
    })
}

/// Attaches `hook(user, args)` to `site`, a site made by this manager's `tw_probes_site`:
/// calls entering the site after this returns run the hook first (hooks run in attach
/// order). `finalizer(user)` (may be NULL) runs once, after the probe is detached (or the
/// site deleted) and a grace period has passed; if attaching fails it runs before this
/// returns.
///
/// Errors: `TW_ERROR_INVALID_ARGUMENT` (NULL, or a site not made by `tw_probes_site`),
/// `TW_ERROR_FOREIGN` (a site of another manager), `TW_ERROR_OUT_OF_CODE_SPACE`,
/// `TW_ERROR_IN_HOOK`.
///
/// # Safety
/// `probes` and `site` are NULL or live handles; `out` is NULL or writable. `hook(user, ..)`
/// must be sound to call concurrently from any registered thread until the finalizer runs,
/// and `finalizer(user)` from any thread; neither may unwind.
#[no_mangle]
pub unsafe extern "C" fn tw_probe_attach(
    probes: *const tw_probes_t,
    site: *const tw_site_t,
    hook: tw_hook_fn,
    user: *mut c_void,
    finalizer: tw_finalizer_fn,
    out: *mut *mut tw_probe_t,
) -> *mut tw_error_t {
    catch("tw_probe_attach", || {
        forbid_in_hook("tw_probe_attach")?;
        // Owned first, so the finalizer runs on every failure path below (drop).
        let owned = hook.map(|hook| CHook {
            hook,
            user,
            finalizer,
        });
        let make = || {
            let c = owned.ok_or_else(|| Error::invalid("hook is NULL"))?;
            // SAFETY: a NULL-or-live handle (the caller's contract).
            let probes = unsafe { handle(probes, "probes") }?;
            // SAFETY: a NULL-or-live handle (the caller's contract).
            let SiteInner::Probed(site) = &unsafe { handle(site, "site") }?.inner else {
                return Err(Error::invalid(
                    "site was not made by tw_probes_site: only probed sites take probes",
                ));
            };
            let hook = ProbeHook::new(move |args| {
                let args = tw_hook_args_t {
                    int_args: args.int_args,
                };
                c.call(&args)
            });
            Ok(tw_probe_t {
                probe: probes.probes.attach(site, hook)?,
            })
        };
        // SAFETY: `out` is NULL or writable (the caller's contract).
        unsafe { put(out, "out", make) }
    })
}

/// Detaches `probe`: calls entering its site after this returns do not run its hook; calls
/// already inside may, until a grace period has passed, after which its finalizer runs
/// (`tw_jit_barrier` waits for that). The `probe` handle stays valid (delete it with
/// `tw_probe_delete`).
///
/// Errors: `TW_ERROR_INVALID_ARGUMENT` (NULL), `TW_ERROR_NOT_ATTACHED` (detached before),
/// `TW_ERROR_SITE_DELETED`, `TW_ERROR_FOREIGN` (a probe of another manager),
/// `TW_ERROR_IN_HOOK`.
///
/// # Safety
/// `probes` and `probe` are NULL or live handles.
#[no_mangle]
pub unsafe extern "C" fn tw_probe_detach(
    probes: *const tw_probes_t,
    probe: *const tw_probe_t,
) -> *mut tw_error_t {
    catch("tw_probe_detach", || {
        forbid_in_hook("tw_probe_detach")?;
        // SAFETY: forwarded from the caller.
        let (probes, probe) = unsafe { (handle(probes, "probes")?, handle(probe, "probe")?) };
        probes.probes.detach(&probe.probe)?;
        Ok(())
    })
}

/// Whether the probe is attached (false for NULL).
///
/// # Safety
/// `probe` is NULL or a live probe handle.
#[no_mangle]
pub unsafe extern "C" fn tw_probe_is_attached(probe: *const tw_probe_t) -> bool {
    crate::boundary::catch_or_abort("tw_probe_is_attached", || {
        // SAFETY: the caller passes NULL or a live handle.
        unsafe { probe.as_ref() }.is_some_and(|p| p.probe.is_attached())
    })
}

/// Releases the probe handle; the probe stays attached. NULL is ignored.
///
/// # Safety
/// `probe` is NULL or a handle from `tw_probe_attach`, not deleted before.
#[no_mangle]
pub unsafe extern "C" fn tw_probe_delete(probe: *mut tw_probe_t) {
    // SAFETY: forwarded from the caller.
    unsafe { delete("tw_probe_delete", probe) }
}
