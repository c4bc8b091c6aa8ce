//! `tw_grace_domain_t`: grace periods, deferred callbacks, barrier and polling.
//!
//! # Cookies as integers
//! The Rust `Cookie` is opaque (no conversion to or from an integer), while C wants a plain
//! `uint64_t`. A domain handle therefore numbers the cookies it hands out (`Cookies`): C sees
//! the number, the handle keeps the `Cookie`s. Cookies are non-decreasing in the order they
//! are taken (each names "the grace period after the one started last"), so the numbers map
//! onto runs of equal cookies, and only runs whose grace period has not ended are kept: at
//! most a couple at any time (the grace period in flight and the one after), whatever the
//! caller does with its numbers. A number below every kept run is complete.

use std::collections::VecDeque;
use std::ffi::c_void;
use std::sync::Mutex;

use tramway_runtime::grace::{Cookie, GraceDomain};

use crate::boundary::{catch, delete, handle, put, put_value};
use crate::config::{self, tw_grace_config_t};
use crate::error::{tw_error_t, Error};
use crate::runtime::tw_runtime_t;

/// A callback queued with `tw_call`: `fn(user)`.
pub type tw_callback_t = Option<unsafe extern "C" fn(user: *mut c_void)>;

/// A grace-period domain: over a runtime's workers and registered threads
/// (`tw_grace_domain_new`), or over registered threads alone
/// (`tw_grace_domain_new_threads_only`). Its driver thread stops, after running every queued
/// callback, when the handle and every jit using it are deleted.
pub struct tw_grace_domain_t {
    pub(crate) domain: GraceDomain,
    cookies: Mutex<Cookies>,
}

/// The cookies a domain handle numbered (see the module docs).
#[derive(Default)]
struct Cookies {
    /// The number the next `start_poll` returns; numbers start at 1.
    next: u64,
    /// `(first number, cookie)` of every run of equal cookies whose grace period may not have
    /// ended, in increasing order: number `n` belongs to the last run whose first number is
    /// `<= n`.
    pending: VecDeque<(u64, Cookie)>,
}

impl Cookies {
    fn start(&mut self, domain: &GraceDomain) -> u64 {
        self.prune(domain, u64::MAX);
        // Taken under the lock, so cookies are stored in the order they were taken.
        let cookie = domain.start_poll();
        self.next = self.next.max(1);
        let number = self.next;
        self.next += 1;
        if self.pending.back().is_none_or(|&(_, last)| last != cookie) {
            self.pending.push_back((number, cookie));
        }
        number
    }

    fn poll(&mut self, domain: &GraceDomain, number: u64) -> Result<bool, Error> {
        if number == 0 || number >= self.next.max(1) {
            return Err(Error::invalid(format!(
                "cookie {number} was not returned by tw_start_poll on this domain"
            )));
        }
        Ok(self.prune(domain, number))
    }

    /// Drops the runs whose grace period has ended, from the oldest, stopping at the first
    /// pending one or after the run of `number`; returns whether `number`'s has ended.
    fn prune(&mut self, domain: &GraceDomain, number: u64) -> bool {
        while let Some(&(first, cookie)) = self.pending.front() {
            if first > number {
                return true; // number's run was dropped already: complete
            }
            if !domain.poll(&cookie) {
                return false;
            }
            self.pending.pop_front();
        }
        true
    }
}

fn new_domain(domain: GraceDomain) -> tw_grace_domain_t {
    tw_grace_domain_t {
        domain,
        cookies: Mutex::new(Cookies::default()),
    }
}

/// Starts a domain over `rt`'s workers and registered threads (it keeps the runtime alive).
///
/// Errors: `TW_ERROR_INVALID_ARGUMENT` (NULL `rt` or `out`, a bad config), `TW_ERROR_OS` (the
/// driver thread could not be started).
///
/// # Safety
/// `rt` is NULL or a live runtime; `cfg` is NULL or a config filled by `tw_grace_config_init`;
/// `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn tw_grace_domain_new(
    rt: *const tw_runtime_t,
    cfg: *const tw_grace_config_t,
    out: *mut *mut tw_grace_domain_t,
) -> *mut tw_error_t {
    catch("tw_grace_domain_new", || {
        let make = || {
            // SAFETY: a NULL-or-live handle (the caller's contract).
            let rt = unsafe { handle(rt, "rt") }?;
            // SAFETY: a NULL-or-initialized config (the caller's contract).
            let cfg = unsafe { config::read(cfg) }?.to_rust()?;
            Ok(new_domain(GraceDomain::new(&rt.runtime, cfg)?))
        };
        // SAFETY: `out` is NULL or writable (the caller's contract).
        unsafe { put(out, "out", make) }
    })
}

/// Starts a domain whose readers are registered threads only (liburcu QSBR's model): one
/// driver thread for callbacks, no worker thread.
///
/// Errors: `TW_ERROR_INVALID_ARGUMENT` (NULL `out`, a bad config), `TW_ERROR_OS`.
///
/// # Safety
/// `cfg` is NULL or a config filled by `tw_grace_config_init`; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn tw_grace_domain_new_threads_only(
    cfg: *const tw_grace_config_t,
    out: *mut *mut tw_grace_domain_t,
) -> *mut tw_error_t {
    catch("tw_grace_domain_new_threads_only", || {
        let make = || {
            // SAFETY: a NULL-or-initialized config (the caller's contract).
            let cfg = unsafe { config::read(cfg) }?.to_rust()?;
            Ok(new_domain(GraceDomain::for_threads(cfg)?))
        };
        // SAFETY: `out` is NULL or writable (the caller's contract).
        unsafe { put(out, "out", make) }
    })
}

/// Releases the handle; the domain lives on while a jit uses it. NULL is ignored.
///
/// # Safety
/// `domain` is NULL or a domain from a `tw_grace_domain_new*` function, not deleted before.
#[no_mangle]
pub unsafe extern "C" fn tw_grace_domain_delete(domain: *mut tw_grace_domain_t) {
    // SAFETY: forwarded from the caller.
    unsafe { delete("tw_grace_domain_delete", domain) }
}

/// Waits for a full grace period: every reader online when it is called has since reported a
/// quiescent state or gone offline. A registered caller goes offline while it waits.
///
/// Errors: `TW_ERROR_INVALID_ARGUMENT` (NULL), `TW_ERROR_IN_HOOK`, `TW_ERROR_PANICKED` when
/// called where it would wait for itself forever (a finalizer or a `tw_call` callback).
///
/// # Safety
/// `domain` is NULL or a live domain.
#[no_mangle]
pub unsafe extern "C" fn tw_synchronize(domain: *const tw_grace_domain_t) -> *mut tw_error_t {
    catch("tw_synchronize", || {
        crate::thread::forbid_in_hook("tw_synchronize")?;
        // SAFETY: forwarded from the caller.
        unsafe { handle(domain, "domain") }?.domain.synchronize();
        Ok(())
    })
}

/// The user pointer of a `tw_call` callback, which runs on the driver thread.
struct SendPtr(*mut c_void);
// SAFETY: `tw_call`'s contract: the callback may be run with `user` on another thread.
unsafe impl Send for SendPtr {}

/// Queues `callback(user)` to run once, on the domain's driver thread, after a grace period.
/// Callbacks queued close together share one grace period. The callback must not wait for a
/// grace period; it may queue more callbacks.
///
/// Errors: `TW_ERROR_INVALID_ARGUMENT` (NULL `domain` or `callback`).
///
/// # Safety
/// `domain` is NULL or a live domain; `callback(user)` must be sound to run on another thread
/// at any later time (it runs even if the domain is deleted first).
#[no_mangle]
pub unsafe extern "C" fn tw_call(
    domain: *const tw_grace_domain_t,
    callback: tw_callback_t,
    user: *mut c_void,
) -> *mut tw_error_t {
    catch("tw_call", || {
        // SAFETY: forwarded from the caller.
        let domain = unsafe { handle(domain, "domain") }?;
        let callback = callback.ok_or_else(|| Error::invalid("callback is NULL"))?;
        let user = SendPtr(user);
        domain.domain.call(move || {
            let user = user;
            // SAFETY: the caller of `tw_call` promised this call is sound here.
            unsafe { callback(user.0) }
        });
        Ok(())
    })
}

/// Waits until every callback queued on the domain before this call has run (including code
/// frees queued by swaps). With nothing queued it returns without waiting for a grace period
/// (`tw_synchronize` waits for one). A registered caller goes offline while it waits.
///
/// Errors: as `tw_synchronize` (inside a callback it returns at once, successfully).
///
/// # Safety
/// `domain` is NULL or a live domain.
#[no_mangle]
pub unsafe extern "C" fn tw_barrier(domain: *const tw_grace_domain_t) -> *mut tw_error_t {
    catch("tw_barrier", || {
        crate::thread::forbid_in_hook("tw_barrier")?;
        // SAFETY: forwarded from the caller.
        unsafe { handle(domain, "domain") }?.domain.barrier();
        Ok(())
    })
}

/// Starts a grace period, if none is pending, and stores in `*cookie` a number that
/// `tw_poll` reports complete once a full grace period has elapsed since this call. Numbers
/// are nonzero and belong to the domain handle that returned them.
///
/// Errors: `TW_ERROR_INVALID_ARGUMENT` (NULL).
///
/// # Safety
/// `domain` is NULL or a live domain; `cookie` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn tw_start_poll(
    domain: *const tw_grace_domain_t,
    cookie: *mut u64,
) -> *mut tw_error_t {
    catch("tw_start_poll", || {
        let make = || {
            // SAFETY: a NULL-or-live handle (the caller's contract).
            let d = unsafe { handle(domain, "domain") }?;
            Ok(lock(&d.cookies).start(&d.domain))
        };
        // SAFETY: `cookie` is NULL or writable (the caller's contract).
        unsafe { put_value(cookie, "cookie", make) }
    })
}

/// Stores in `*done` whether a full grace period has elapsed since `tw_start_poll` returned
/// `cookie`. Never waits.
///
/// Errors: `TW_ERROR_INVALID_ARGUMENT` (NULL, or a cookie this domain handle did not return).
///
/// # Safety
/// `domain` is NULL or a live domain; `done` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn tw_poll(
    domain: *const tw_grace_domain_t,
    cookie: u64,
    done: *mut bool,
) -> *mut tw_error_t {
    catch("tw_poll", || {
        let make = || {
            // SAFETY: a NULL-or-live handle (the caller's contract).
            let d = unsafe { handle(domain, "domain") }?;
            lock(&d.cookies).poll(&d.domain, cookie)
        };
        // SAFETY: `done` is NULL or writable (the caller's contract).
        unsafe { put_value(done, "done", make) }
    })
}

/// Grace periods this domain has completed (0 for NULL).
///
/// # Safety
/// `domain` is NULL or a live domain.
#[no_mangle]
pub unsafe extern "C" fn tw_grace_domain_completed(domain: *const tw_grace_domain_t) -> u64 {
    crate::boundary::catch_or_abort("tw_grace_domain_completed", || {
        // SAFETY: the caller passes NULL or a live domain.
        unsafe { domain.as_ref() }.map_or(0, |d| d.domain.stats().completed)
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The cookie table is consistent between statements (a panic cannot leave it half
    // updated in a way that breaks `prune`'s invariant), so poisoning is ignored.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tramway_runtime::grace::GraceConfig;

    #[test]
    fn cookies_complete_after_a_grace_period_and_the_table_stays_small() {
        let domain = GraceDomain::for_threads(GraceConfig::default()).unwrap();
        let mut cookies = Cookies::default();
        let numbers: Vec<u64> = (0..100).map(|_| cookies.start(&domain)).collect();
        assert!(
            cookies.pending.len() <= 3,
            "{} runs kept",
            cookies.pending.len()
        );
        domain.synchronize();
        for n in numbers {
            assert!(cookies.poll(&domain, n).unwrap(), "cookie {n}");
        }
        assert!(cookies.pending.is_empty());
        assert!(cookies.poll(&domain, 0).is_err());
        assert!(cookies.poll(&domain, 1000).is_err());
    }
}
