//! `tw_jit_t` (code memory reclaimed through a grace domain) and `tw_code_t` (a handle to
//! emitted code: forwarding trampolines here, custom code in `emit.rs`).

use std::ffi::c_void;
use std::sync::Arc;

use tramway_jit::{ForwardingSpec, Jit, Target, Trampoline};

use crate::boundary::{catch, catch_or_abort, delete, handle, put};
use crate::config::{self, tw_jit_config_t};
use crate::error::{tw_error_t, Error};
use crate::grace::tw_grace_domain_t;
use crate::tw_fn_t;

/// A code reservation whose retired code is freed after grace periods of one domain.
/// Deleting it waits for the code retired so far to be freed (`tw_jit_barrier`); code and
/// sites still alive keep its memory mapped until they are deleted.
pub struct tw_jit_t {
    pub(crate) jit: Jit,
}

/// A handle to emitted code (a "trampoline"). Deleting the handle of code installed in a
/// site changes nothing for the site: the site keeps the code until it is swapped out, and
/// swapped-out code is freed after a grace period.
pub struct tw_code_t {
    pub(crate) code: Trampoline,
}

/// Creates a jit whose reclaimer is `domain` (the jit keeps the domain alive), configured by
/// `cfg` (NULL: the defaults).
///
/// Errors: `TW_ERROR_INVALID_ARGUMENT` (NULL `domain` or `out`, bad sizes), `TW_ERROR_OS`
/// (the reservation or the memfd failed).
///
/// # Safety
/// `domain` is NULL or a live domain; `cfg` is NULL or a config filled by
/// `tw_jit_config_init`; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn tw_jit_new(
    domain: *const tw_grace_domain_t,
    cfg: *const tw_jit_config_t,
    out: *mut *mut tw_jit_t,
) -> *mut tw_error_t {
    catch("tw_jit_new", || {
        let make = || {
            // SAFETY: a NULL-or-live handle (the caller's contract).
            let domain = unsafe { handle(domain, "domain") }?;
            // SAFETY: a NULL-or-initialized config (the caller's contract).
            let cfg = unsafe { config::read(cfg) }?;
            let jit = cfg
                .builder()
                .reclaimer(Arc::new(domain.domain.clone()))
                .build()?;
            Ok(tw_jit_t { jit })
        };
        // SAFETY: `out` is NULL or writable (the caller's contract).
        unsafe { put(out, "out", make) }
    })
}

/// Releases the jit after waiting, like `tw_jit_barrier`, until code retired so far is
/// freed. Must not be called inside a hook or a callback (it would wait for itself: the
/// process aborts with a message). NULL is ignored.
///
/// # Safety
/// `jit` is NULL or a jit from `tw_jit_new`, not deleted before.
#[no_mangle]
pub unsafe extern "C" fn tw_jit_delete(jit: *mut tw_jit_t) {
    // SAFETY: forwarded from the caller.
    unsafe { delete("tw_jit_delete", jit) }
}

/// Waits until all code retired so far (swapped out of sites, or in deleted sites) is freed,
/// and with it every probe hook finalizer that was due. A registered caller goes offline
/// while it waits.
///
/// Errors: `TW_ERROR_INVALID_ARGUMENT` (NULL), `TW_ERROR_IN_HOOK`, `TW_ERROR_PANICKED` inside
/// a callback or finalizer.
///
/// # Safety
/// `jit` is NULL or a live jit.
#[no_mangle]
pub unsafe extern "C" fn tw_jit_barrier(jit: *const tw_jit_t) -> *mut tw_error_t {
    catch("tw_jit_barrier", || {
        crate::thread::forbid_in_hook("tw_jit_barrier")?;
        // SAFETY: forwarded from the caller.
        unsafe { handle(jit, "jit") }?.jit.barrier();
        Ok(())
    })
}

/// Emits a forwarding trampoline to the C function `target`: code that jumps to `target`
/// with every argument register and stack argument unchanged, so it implements `target`'s
/// signature, whatever it is. A site made over it calls `target`.
///
/// Errors: `TW_ERROR_INVALID_ARGUMENT` (NULL), `TW_ERROR_OUT_OF_CODE_SPACE`, `TW_ERROR_OS`.
///
/// # Safety
/// `jit` is NULL or a live jit; `out` is NULL or writable; `target` must stay callable as
/// long as the code may run (until it is freed).
#[no_mangle]
pub unsafe extern "C" fn tw_jit_forward(
    jit: *const tw_jit_t,
    target: tw_fn_t,
    out: *mut *mut tw_code_t,
) -> *mut tw_error_t {
    catch("tw_jit_forward", || {
        let make = || {
            // SAFETY: a NULL-or-live handle (the caller's contract).
            let jit = unsafe { handle(jit, "jit") }?;
            let target = target.ok_or_else(|| Error::invalid("target is NULL"))?;
            let spec = ForwardingSpec::new(Target::Address(target as *const u8));
            Ok(tw_code_t {
                code: jit.jit.forwarding(spec)?,
            })
        };
        // SAFETY: `out` is NULL or writable (the caller's contract).
        unsafe { put(out, "out", make) }
    })
}

/// Releases a code handle (see `tw_code_t` for what happens to the code). NULL is ignored.
///
/// # Safety
/// `code` is NULL or a handle from this library, not deleted before.
#[no_mangle]
pub unsafe extern "C" fn tw_code_delete(code: *mut tw_code_t) {
    // SAFETY: forwarded from the caller.
    unsafe { delete("tw_code_delete", code) }
}

/// The code's entry address (NULL for NULL). For inspection (disassembly, tests): calling it
/// directly is only sound while the code cannot be retired; callers that race with swaps
/// call a site's entry instead.
///
/// # Safety
/// `code` is NULL or a live code handle.
#[no_mangle]
pub unsafe extern "C" fn tw_code_addr(code: *const tw_code_t) -> *const c_void {
    catch_or_abort("tw_code_addr", || {
        // SAFETY: the caller passes NULL or a live handle.
        unsafe { code.as_ref() }.map_or(std::ptr::null(), |c| c.code.addr().cast())
    })
}

/// The code's length in bytes (0 for NULL).
///
/// # Safety
/// `code` is NULL or a live code handle.
#[no_mangle]
pub unsafe extern "C" fn tw_code_len(code: *const tw_code_t) -> libc::size_t {
    catch_or_abort("tw_code_len", || {
        // SAFETY: the caller passes NULL or a live handle.
        unsafe { code.as_ref() }.map_or(0, |c| c.code.len())
    })
}

/// Whether the code was retired (swapped out of the last site it was in): it can no longer
/// be installed. False for NULL.
///
/// # Safety
/// `code` is NULL or a live code handle.
#[no_mangle]
pub unsafe extern "C" fn tw_code_is_retired(code: *const tw_code_t) -> bool {
    catch_or_abort("tw_code_is_retired", || {
        // SAFETY: the caller passes NULL or a live handle.
        unsafe { code.as_ref() }.is_some_and(|c| c.code.is_retired())
    })
}
