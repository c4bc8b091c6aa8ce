//! `tw_runtime_t`: a green-thread runtime, for grace domains whose readers include its
//! workers (`tw_grace_domain_new`). Programs whose readers are only their own threads need
//! none: `tw_grace_domain_new_threads_only` starts no worker thread.

use tramway_runtime::Runtime;

use crate::boundary::{catch, delete, put};
use crate::config::{self, tw_runtime_config_t};
use crate::error::tw_error_t;

/// A green-thread runtime (worker threads running tasks). Shuts down when its handle and
/// every grace domain made over it are deleted.
pub struct tw_runtime_t {
    pub(crate) runtime: Runtime,
}

/// Starts a runtime configured by `cfg` (NULL: the defaults) and stores it in `*out`.
///
/// Errors: `TW_ERROR_INVALID_ARGUMENT` (NULL `out`, a bad config: no workers, a stack size
/// out of range), `TW_ERROR_OS` (a worker thread could not be started).
///
/// # Safety
/// `cfg` is NULL or a config filled by `tw_runtime_config_init`; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn tw_runtime_new(
    cfg: *const tw_runtime_config_t,
    out: *mut *mut tw_runtime_t,
) -> *mut tw_error_t {
    catch("tw_runtime_new", || {
        let make = || {
            // SAFETY: a NULL-or-initialized config (the caller's contract).
            let cfg = unsafe { config::read(cfg) }?;
            Ok(tw_runtime_t {
                runtime: cfg.builder().build()?,
            })
        };
        // SAFETY: `out` is NULL or writable (the caller's contract).
        unsafe { put(out, "out", make) }
    })
}

/// Releases the handle. The runtime shuts down (its workers stop) once no grace domain over
/// it is left either. NULL is ignored.
///
/// # Safety
/// `rt` is NULL or a runtime from `tw_runtime_new`, not deleted before.
#[no_mangle]
pub unsafe extern "C" fn tw_runtime_delete(rt: *mut tw_runtime_t) {
    // SAFETY: forwarded from the caller.
    unsafe { delete("tw_runtime_delete", rt) }
}

/// The number of worker threads; 0 for NULL.
///
/// # Safety
/// `rt` is NULL or a live runtime.
#[no_mangle]
pub unsafe extern "C" fn tw_runtime_workers(rt: *const tw_runtime_t) -> libc::size_t {
    crate::boundary::catch_or_abort("tw_runtime_workers", || {
        // SAFETY: the caller passes NULL or a live runtime.
        unsafe { rt.as_ref() }.map_or(0, |rt| rt.runtime.workers())
    })
}
