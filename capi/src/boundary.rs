//! The panic boundary and the pointer checks every entry point goes through.
//!
//! A Rust panic must never unwind into C (an `extern "C"` function that unwinds aborts, and
//! a C caller's frames could not be unwound anyway). Every `extern "C"` function of this crate
//! runs its body through [`catch`] (functions that return `tw_error_t *`: a panic becomes
//! `TW_ERROR_PANICKED`) or [`catch_or_abort`] (functions without an error return: a panic
//! prints a message and aborts). Inside the body, NULL pointers are turned into
//! `TW_ERROR_INVALID_ARGUMENT` by [`handle`] and [`put`] before anything is dereferenced.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::error::{tw_error_code_t, tw_error_t, Error};

/// Runs `f` for the entry point `what`: `Ok` becomes NULL, an error or a panic a new
/// `tw_error_t`.
///
/// `AssertUnwindSafe`: a panic is reported to C as an error; the wrapped crates keep their
/// shared state consistent across panics (their mutexes ignore poisoning for that reason),
/// and this crate mutates nothing before a call that can panic.
pub(crate) fn catch(what: &'static str, f: impl FnOnce() -> Result<(), Error>) -> *mut tw_error_t {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => std::ptr::null_mut(),
        Ok(Err(e)) => e.into_raw(),
        Err(payload) => {
            let message = format!("{what}: panicked: {}", panic_message(&*payload));
            drop_payload(payload);
            Error::new(tw_error_code_t::TW_ERROR_PANICKED, message).into_raw()
        }
    }
}

/// Runs `f` for the entry point `what`, which has no error return: a panic aborts the
/// process after printing why.
pub(crate) fn catch_or_abort<T>(what: &'static str, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(payload) => abort_after_panic(what, &*payload),
    }
}

#[cold]
fn abort_after_panic(what: &str, payload: &(dyn Any + Send)) -> ! {
    eprintln!(
        "tramway: {what}: panicked: {}\n\
         tramway: aborting: a panic must not unwind into C",
        panic_message(payload)
    );
    std::process::abort()
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("<non-string panic payload>")
}

/// Drops a panic payload; a payload whose destructor panics in turn is leaked.
fn drop_payload(payload: Box<dyn Any + Send>) {
    if let Err(again) = catch_unwind(AssertUnwindSafe(|| drop(payload))) {
        std::mem::forget(again);
    }
}

/// The handle behind `p`, or `TW_ERROR_INVALID_ARGUMENT` naming `what` if it is NULL.
///
/// # Safety
/// `p` is NULL or points to a live `T` (a handle made by this library and not deleted) that
/// stays valid for `'a`.
pub(crate) unsafe fn handle<'a, T>(p: *const T, what: &str) -> Result<&'a T, Error> {
    // SAFETY: the caller's contract: NULL or valid for `'a`.
    unsafe { p.as_ref() }.ok_or_else(|| Error::invalid(format!("{what} is NULL")))
}

/// Checks the out-parameter `out` (NULL is `TW_ERROR_INVALID_ARGUMENT`), clears it, runs `f`
/// and stores its result, boxed, in `*out`. On failure `*out` stays NULL.
///
/// # Safety
/// `out` is NULL or valid for writing one pointer.
pub(crate) unsafe fn put<T>(
    out: *mut *mut T,
    what: &str,
    f: impl FnOnce() -> Result<T, Error>,
) -> Result<(), Error> {
    if out.is_null() {
        return Err(Error::invalid(format!("{what} is NULL")));
    }
    // SAFETY: non-NULL, and the caller promises it is writable.
    unsafe { out.write(std::ptr::null_mut()) };
    let value = Box::into_raw(Box::new(f()?));
    // SAFETY: as above.
    unsafe { out.write(value) };
    Ok(())
}

/// Checks a scalar out-parameter, sets it to `T::default()` first, then to `f()`'s result.
///
/// # Safety
/// `out` is NULL or valid for writing one `T`.
pub(crate) unsafe fn put_value<T: Default>(
    out: *mut T,
    what: &str,
    f: impl FnOnce() -> Result<T, Error>,
) -> Result<(), Error> {
    if out.is_null() {
        return Err(Error::invalid(format!("{what} is NULL")));
    }
    // SAFETY: non-NULL, and the caller promises it is writable.
    unsafe { out.write(T::default()) };
    let value = f()?;
    // SAFETY: as above.
    unsafe { out.write(value) };
    Ok(())
}

/// Frees a handle made by [`put`]; NULL does nothing. Runs `T`'s destructor behind the
/// abort boundary (a destructor may wait for a grace period, and a panic there cannot be
/// reported).
///
/// # Safety
/// `p` is NULL or a handle of type `T` made by this library and not deleted before.
pub(crate) unsafe fn delete<T>(what: &'static str, p: *mut T) {
    if p.is_null() {
        return;
    }
    catch_or_abort(what, || {
        // SAFETY: made by `put` (`Box::into_raw`), owned by the caller, deleted once.
        drop(unsafe { Box::from_raw(p) });
    });
}
