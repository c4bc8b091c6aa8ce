//! Thread registration, liburcu style: no handle, the registration lives in this thread's
//! thread-local storage.
//!
//! `REGISTRATION` holds the calling thread's `ThreadRegistration` (it is `!Send`: it names
//! this thread's reader cell). Only the owning thread touches it, through these functions; a
//! thread that exits registered drops it in its thread-local destructor, which takes the
//! thread offline and out of the registry (the runtime tests that path). Once the destructor
//! has run (a C thread-exit hook calling in late), the thread counts as not registered.
//!
//! `tw_quiescent`, `tw_thread_offline` and `tw_thread_online` are on readers' hot paths: they
//! return a `bool` (was the thread registered?) instead of allocating an error object.
//!
//! `HOOK_DEPTH` counts the C probe hooks running on this thread (`probes.rs` wraps each call
//! in `in_hook`), so calls a hook must not make fail with `TW_ERROR_IN_HOOK`
//! (`forbid_in_hook`) instead of unregistering a thread that is inside a trampoline or
//! waiting for a grace period that waits for the hook.

use std::cell::{Cell, RefCell};

use tramway_runtime::ThreadRegistration;

use crate::boundary::{catch, catch_or_abort, handle};
use crate::error::{tw_error_code_t, tw_error_t, Error};
use crate::grace::tw_grace_domain_t;

thread_local! {
    static REGISTRATION: RefCell<Option<ThreadRegistration>> = const { RefCell::new(None) };
    static HOOK_DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Runs the C hook call `f`, counted in `HOOK_DEPTH` (restored also if `f` unwinds).
pub(crate) fn in_hook<R>(f: impl FnOnce() -> R) -> R {
    struct Leave;
    impl Drop for Leave {
        fn drop(&mut self) {
            let _ = HOOK_DEPTH.try_with(|d| d.set(d.get() - 1));
        }
    }
    let _ = HOOK_DEPTH.try_with(|d| d.set(d.get() + 1));
    let _leave = Leave;
    f()
}

/// `TW_ERROR_IN_HOOK` naming `what` if the calling thread is running a probe hook.
pub(crate) fn forbid_in_hook(what: &str) -> Result<(), Error> {
    if HOOK_DEPTH.try_with(Cell::get).unwrap_or(0) > 0 {
        return Err(Error::new(
            tw_error_code_t::TW_ERROR_IN_HOOK,
            format!("{what} must not be called inside a probe hook"),
        ));
    }
    Ok(())
}

/// Runs `f` on the calling thread's registration; `None` if it has none (or its thread-local
/// storage is gone).
fn with_registration<R>(f: impl FnOnce(&ThreadRegistration) -> R) -> Option<R> {
    REGISTRATION
        .try_with(|r| r.borrow().as_ref().map(f))
        .ok()
        .flatten()
}

/// Registers the calling thread as a reader of `domain`, online: from now on grace periods
/// wait for its quiescent states (see `tw_quiescent`). Only registered online threads may
/// call JIT code.
///
/// Errors: `TW_ERROR_INVALID_ARGUMENT` (NULL), `TW_ERROR_ALREADY_REGISTERED` (with any
/// domain), `TW_ERROR_IN_RUNTIME` (a runtime worker thread), `TW_ERROR_IN_HOOK`.
///
/// # Safety
/// `domain` is NULL or a live domain.
#[no_mangle]
pub unsafe extern "C" fn tw_register_thread(domain: *const tw_grace_domain_t) -> *mut tw_error_t {
    catch("tw_register_thread", || {
        forbid_in_hook("tw_register_thread")?;
        // SAFETY: forwarded from the caller.
        let domain = unsafe { handle(domain, "domain") }?;
        REGISTRATION
            .try_with(|slot| {
                if slot.borrow().is_some() {
                    return Err(Error::new(
                        tw_error_code_t::TW_ERROR_ALREADY_REGISTERED,
                        "this thread is already registered",
                    ));
                }
                let registration = domain.domain.register_thread()?;
                *slot.borrow_mut() = Some(registration);
                Ok(())
            })
            .map_err(|_| Error::invalid("the thread is exiting (thread-local storage is gone)"))?
    })
}

/// Ends the calling thread's registration: it goes offline and grace periods stop waiting
/// for it. It must not call JIT code afterwards.
///
/// Errors: `TW_ERROR_NOT_A_READER` if the thread is not registered, `TW_ERROR_IN_HOOK`.
#[no_mangle]
pub extern "C" fn tw_unregister_thread() -> *mut tw_error_t {
    catch("tw_unregister_thread", || {
        forbid_in_hook("tw_unregister_thread")?;
        let registration = REGISTRATION
            .try_with(|slot| slot.borrow_mut().take())
            .ok()
            .flatten()
            .ok_or_else(not_registered)?;
        drop(registration); // outside the borrow: offline and out of the registry
        Ok(())
    })
}

fn not_registered() -> Error {
    Error::new(
        tw_error_code_t::TW_ERROR_NOT_A_READER,
        "this thread is not registered (tw_register_thread)",
    )
}

/// Reports a quiescent state: the calling thread holds no pointer into JIT code and is not
/// executing any. Call it regularly (between iterations of the thread's loop); a grace
/// period waits until every online thread has. Does nothing inside a hook. Returns false if
/// the thread is not registered.
#[no_mangle]
pub extern "C" fn tw_quiescent() -> bool {
    catch_or_abort("tw_quiescent", || {
        with_registration(|r| r.quiescent()).is_some()
    })
}

/// Takes the calling thread offline: it is quiescent until `tw_thread_online` and must not
/// call JIT code meanwhile (use it around blocking waits). Does nothing inside a hook.
/// Returns false if the thread is not registered.
#[no_mangle]
pub extern "C" fn tw_thread_offline() -> bool {
    catch_or_abort("tw_thread_offline", || {
        with_registration(|r| r.offline()).is_some()
    })
}

/// Brings the calling thread back online (no-op if online). Returns false if it is not
/// registered.
#[no_mangle]
pub extern "C" fn tw_thread_online() -> bool {
    catch_or_abort("tw_thread_online", || {
        with_registration(|r| r.online()).is_some()
    })
}

/// Whether the calling thread is registered and online.
#[no_mangle]
pub extern "C" fn tw_thread_is_online() -> bool {
    catch_or_abort("tw_thread_is_online", || {
        with_registration(|r| r.is_online()).unwrap_or(false)
    })
}
