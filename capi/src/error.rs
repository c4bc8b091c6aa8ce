//! `tw_error_t`: what a failed call returns, with a code and a message.
//!
//! Every Rust error the wrapped crates return maps to one [`tw_error_code_t`] here and
//! nowhere else, so C callers can branch on the kind and print the message.

use std::ffi::{c_char, CStr, CString};

use tramway_jit::{JitError, ProbeError};
use tramway_runtime::{BuildError, DomainError, RegisterError};

use crate::boundary::{catch_or_abort, delete};

/// What kind of failure a `tw_error_t` reports. New codes may be added: treat an unknown one
/// like `TW_ERROR_OTHER`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum tw_error_code_t {
    /// No error (what `tw_error_code(NULL)` returns).
    TW_OK = 0,
    /// A NULL handle or out-parameter, a bad configuration value or size, an unknown enum
    /// value.
    TW_ERROR_INVALID_ARGUMENT = 1,
    /// The jit's reserved code range is full.
    TW_ERROR_OUT_OF_CODE_SPACE = 2,
    /// The code is larger than one chunk (the largest object the jit can place).
    TW_ERROR_CODE_TOO_LARGE = 3,
    /// A direct site cannot reach the code.
    TW_ERROR_OUT_OF_RANGE = 4,
    /// The code was retired (swapped out of its last site) and cannot be installed again.
    TW_ERROR_RETIRED = 5,
    /// The code, site or probe belongs to another jit or probe manager.
    TW_ERROR_FOREIGN = 6,
    /// Not possible on this platform or in this mode (e.g. direct sites without memfd).
    TW_ERROR_UNSUPPORTED = 7,
    /// Custom emission failed: the callback returned 0 or more than its capacity, returned
    /// different lengths in its two calls, or the assembler refused the code.
    TW_ERROR_EMIT_FAILED = 8,
    /// The probe is not attached (already detached).
    TW_ERROR_NOT_ATTACHED = 9,
    /// The probe's site was deleted (its probes went with it).
    TW_ERROR_SITE_DELETED = 10,
    /// The calling thread is already registered.
    TW_ERROR_ALREADY_REGISTERED = 11,
    /// The calling thread is not a registered reader.
    TW_ERROR_NOT_A_READER = 12,
    /// A runtime worker thread cannot register as an OS thread.
    TW_ERROR_IN_RUNTIME = 13,
    /// A system call failed (`tw_error_errno` tells which errno).
    TW_ERROR_OS = 14,
    /// The library panicked (a bug, or a call made where it is not allowed, such as
    /// `tw_synchronize` inside a hook); the message says why.
    TW_ERROR_PANICKED = 15,
    /// Anything else.
    TW_ERROR_OTHER = 16,
    /// Called inside a probe hook, where it is not allowed (registering, unregistering,
    /// waiting for grace periods, attaching, detaching, swapping).
    TW_ERROR_IN_HOOK = 17,
}

/// An error: a code, a message and, for `TW_ERROR_OS`, an errno. Owned by the caller that
/// received it; release it with `tw_error_delete`.
pub struct tw_error_t {
    code: tw_error_code_t,
    message: CString,
    errno: i32,
}

/// The Rust side of a `tw_error_t` before it is boxed for C.
#[derive(Debug)]
pub(crate) struct Error {
    pub(crate) code: tw_error_code_t,
    pub(crate) message: String,
    pub(crate) errno: i32,
}

impl Error {
    pub(crate) fn new(code: tw_error_code_t, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
            errno: 0,
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Error::new(tw_error_code_t::TW_ERROR_INVALID_ARGUMENT, message)
    }

    fn os(message: String, source: &std::io::Error) -> Self {
        Error {
            code: tw_error_code_t::TW_ERROR_OS,
            message,
            errno: source.raw_os_error().unwrap_or(0),
        }
    }

    /// Boxes the error for C. The message loses interior NUL bytes (C strings cannot hold
    /// them).
    pub(crate) fn into_raw(self) -> *mut tw_error_t {
        let message =
            CString::new(self.message.replace('\0', "")).expect("interior NUL bytes were removed");
        Box::into_raw(Box::new(tw_error_t {
            code: self.code,
            message,
            errno: self.errno,
        }))
    }
}

impl From<JitError> for Error {
    fn from(e: JitError) -> Self {
        use tw_error_code_t::*;
        let code = match &e {
            JitError::CodeTooLarge { .. } => TW_ERROR_CODE_TOO_LARGE,
            JitError::CodeSpaceExhausted { .. } => TW_ERROR_OUT_OF_CODE_SPACE,
            JitError::TargetOutOfRange { .. } => TW_ERROR_OUT_OF_RANGE,
            JitError::Retired { .. } => TW_ERROR_RETIRED,
            JitError::ForeignTrampoline { .. } => TW_ERROR_FOREIGN,
            JitError::NullTarget | JitError::InvalidConfig(_) => TW_ERROR_INVALID_ARGUMENT,
            JitError::Unsupported(_) => TW_ERROR_UNSUPPORTED,
            JitError::Os { source, .. } => return Error::os(e.to_string(), source),
            JitError::Assemble(_) | JitError::EmitLengthChanged { .. } => TW_ERROR_EMIT_FAILED,
            _ => TW_ERROR_OTHER,
        };
        Error::new(code, e.to_string())
    }
}

impl From<ProbeError> for Error {
    fn from(e: ProbeError) -> Self {
        use tw_error_code_t::*;
        let code = match e {
            ProbeError::Jit(e) => return e.into(),
            ProbeError::NotAttached { .. } => TW_ERROR_NOT_ATTACHED,
            ProbeError::ForeignProbe { .. } | ProbeError::ForeignSite { .. } => TW_ERROR_FOREIGN,
            ProbeError::SiteDropped { .. } => TW_ERROR_SITE_DELETED,
            _ => TW_ERROR_OTHER,
        };
        Error::new(code, e.to_string())
    }
}

impl From<BuildError> for Error {
    fn from(e: BuildError) -> Self {
        use tw_error_code_t::*;
        let code = match &e {
            BuildError::ZeroWorkers | BuildError::StackSize { .. } => TW_ERROR_INVALID_ARGUMENT,
            BuildError::SpawnWorker(source) => return Error::os(e.to_string(), source),
            _ => TW_ERROR_OTHER,
        };
        Error::new(code, e.to_string())
    }
}

impl From<DomainError> for Error {
    fn from(e: DomainError) -> Self {
        match &e {
            DomainError::SpawnDriver(source) => Error::os(e.to_string(), source),
            _ => Error::new(tw_error_code_t::TW_ERROR_OTHER, e.to_string()),
        }
    }
}

impl From<RegisterError> for Error {
    fn from(e: RegisterError) -> Self {
        use tw_error_code_t::*;
        let code = match e {
            RegisterError::AlreadyRegistered => TW_ERROR_ALREADY_REGISTERED,
            RegisterError::InRuntime => TW_ERROR_IN_RUNTIME,
            _ => TW_ERROR_OTHER,
        };
        Error::new(code, e.to_string())
    }
}

/// The error's code; `TW_OK` for NULL.
///
/// # Safety
/// `err` is NULL or an error returned by this library and not yet deleted.
#[no_mangle]
pub unsafe extern "C" fn tw_error_code(err: *const tw_error_t) -> tw_error_code_t {
    catch_or_abort("tw_error_code", || {
        // SAFETY: the caller passes NULL or a live error; `as_ref` maps NULL to `None`.
        unsafe { err.as_ref() }.map_or(tw_error_code_t::TW_OK, |err| err.code)
    })
}

/// The error's message, a NUL-terminated UTF-8 string owned by the error: valid until
/// `tw_error_delete(err)`. For NULL, a static "no error".
///
/// # Safety
/// `err` is NULL or an error returned by this library and not yet deleted.
#[no_mangle]
pub unsafe extern "C" fn tw_error_message(err: *const tw_error_t) -> *const c_char {
    const NO_ERROR: &CStr = c"no error";
    catch_or_abort("tw_error_message", || {
        // SAFETY: the caller passes NULL or a live error.
        unsafe { err.as_ref() }.map_or(NO_ERROR.as_ptr(), |err| err.message.as_ptr())
    })
}

/// The operating system's error number behind a `TW_ERROR_OS` error; 0 if there is none
/// (other codes, NULL).
///
/// # Safety
/// `err` is NULL or an error returned by this library and not yet deleted.
#[no_mangle]
pub unsafe extern "C" fn tw_error_errno(err: *const tw_error_t) -> i32 {
    catch_or_abort("tw_error_errno", || {
        // SAFETY: the caller passes NULL or a live error.
        unsafe { err.as_ref() }.map_or(0, |err| err.errno)
    })
}

/// Releases an error. NULL is ignored.
///
/// # Safety
/// `err` is NULL or an error returned by this library, not deleted before.
#[no_mangle]
pub unsafe extern "C" fn tw_error_delete(err: *mut tw_error_t) {
    // SAFETY: the caller passes NULL or an error made by `Error::into_raw` (a `Box`) that
    // it owns and has not deleted.
    unsafe { delete("tw_error_delete", err) }
}
