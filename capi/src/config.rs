//! Versioned configurations: `#[repr(C)]` structs that begin with their own `size`.
//!
//! # Versioning (the rule of Linux's `copy_struct_from_user`, as `clone3` and `openat2` use)
//! A caller fills a config with its `*_init` function, which writes `size = sizeof(struct)` as
//! the caller's header knows it and every default. Fields are only ever appended. Reading a
//! config (`read`):
//! - `size` smaller than the first version of the struct: rejected
//!   (`TW_ERROR_INVALID_ARGUMENT`);
//! - `size` up to what this library knows: the caller's fields are taken, any later field
//!   keeps its default (an older program with a newer library);
//! - `size` larger (a newer program with an older library): accepted only if every byte this
//!   library does not know is zero, i.e. the caller left the new fields at "not set".
//!
//! Every field is an integer, so any bytes copied in form a valid value; enum-like fields
//! (`flavor`) are checked when the config is converted.

use std::mem::size_of;

use libc::size_t;
use std::time::Duration;

use tramway_jit::{
    Jit, JitBuilder, DEFAULT_CHUNK_SIZE, DEFAULT_MAX_RETIRED_BYTES, DEFAULT_RESERVATION,
};
use tramway_runtime::grace::{Flavor, GraceConfig};
use tramway_runtime::{Builder, Runtime, DEFAULT_STACK_SIZE};

use crate::boundary::catch_or_abort;
use crate::error::Error;

/// A grace-period algorithm (the `flavor` of `tw_grace_config_t`).
pub type tw_flavor_t = u32;
/// RCU Tasks semantics (the default): waits for every task and every online registered
/// thread.
pub const TW_FLAVOR_TASKS: tw_flavor_t = 0;
/// Forces each runtime worker through its scheduler; for comparison and tests only (see the
/// Rust docs of `Flavor::Rude`).
pub const TW_FLAVOR_RUDE: tw_flavor_t = 1;

/// Configuration of `tw_runtime_new`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct tw_runtime_config_t {
    /// `sizeof(tw_runtime_config_t)`, set by `tw_runtime_config_init`.
    pub size: size_t,
    /// Worker threads, at least 1 (default: one per available core).
    pub workers: size_t,
    /// Usable stack size of each green thread in bytes (default 256 KiB; 16 KiB to 1 GiB).
    pub stack_size: size_t,
}

/// Configuration of `tw_grace_domain_new` and `tw_grace_domain_new_threads_only`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct tw_grace_config_t {
    /// `sizeof(tw_grace_config_t)`, set by `tw_grace_config_init`.
    pub size: size_t,
    /// `TW_FLAVOR_TASKS` (default) or `TW_FLAVOR_RUDE`.
    pub flavor: tw_flavor_t,
    /// After how many milliseconds a waiting grace period reports who holds it up (to the
    /// log), and again every such interval (default 1000). It never ends early.
    pub stall_timeout_ms: u64,
    /// How many microseconds callbacks (and code retired by swaps) may wait for more to join
    /// their batch before a grace period starts for them (default 1000).
    pub callback_delay_us: u64,
}

/// Configuration of `tw_jit_new`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct tw_jit_config_t {
    /// `sizeof(tw_jit_config_t)`, set by `tw_jit_config_init`.
    pub size: size_t,
    /// Bytes of address space reserved for code (default 1 GiB; a multiple of `chunk_size`,
    /// at most 2 GiB).
    pub reservation_size: size_t,
    /// Bytes per chunk, also the largest code object (default 64 KiB; a multiple of the page
    /// size, at least two pages).
    pub chunk_size: size_t,
    /// Bound on retired but not yet freed code: a swap that leaves more waits for grace
    /// periods before it returns (default 1 MiB).
    pub max_retired_bytes: size_t,
    /// Nonzero: append `START SIZE name` for every code object to `/tmp/perf-<pid>.map`, so
    /// `perf report` names JIT code (default 0). Added after the first version of the
    /// struct: a caller built against that version gets the default.
    pub perf_map: u32,
    /// Nonzero: register DWARF unwind information for every trampoline that calls a hook
    /// with libgcc, so a backtrace taken inside a hook reaches the code that called the site
    /// (default 0: libgcc before GCC 13 walks a list of registrations on every unwind in the
    /// process; the cost is measured in the README's profiling section). Added after the
    /// first version of the struct.
    pub unwind_info: u32,
}

/// A config struct as [`read`] handles it.
pub(crate) trait Config: Copy {
    /// The struct's name, for messages.
    const NAME: &'static str;
    /// `size` of the first version of the struct: no caller can pass less.
    const FIRST_SIZE: usize;
    /// The defaults, with `size` set to what this library knows.
    fn defaults() -> Self;
}

impl Config for tw_runtime_config_t {
    const NAME: &'static str = "tw_runtime_config_t";
    const FIRST_SIZE: usize = size_of::<Self>();
    fn defaults() -> Self {
        tw_runtime_config_t {
            size: size_of::<Self>(),
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            stack_size: DEFAULT_STACK_SIZE,
        }
    }
}

impl Config for tw_grace_config_t {
    const NAME: &'static str = "tw_grace_config_t";
    const FIRST_SIZE: usize = size_of::<Self>();
    fn defaults() -> Self {
        let rust = GraceConfig::default();
        tw_grace_config_t {
            size: size_of::<Self>(),
            flavor: TW_FLAVOR_TASKS,
            stall_timeout_ms: rust.stall_timeout.as_millis() as u64,
            callback_delay_us: rust.callback_delay.as_micros() as u64,
        }
    }
}

impl Config for tw_jit_config_t {
    const NAME: &'static str = "tw_jit_config_t";
    /// The first version ended with `max_retired_bytes`.
    const FIRST_SIZE: usize = std::mem::offset_of!(tw_jit_config_t, perf_map);
    fn defaults() -> Self {
        tw_jit_config_t {
            size: size_of::<Self>(),
            reservation_size: DEFAULT_RESERVATION,
            chunk_size: DEFAULT_CHUNK_SIZE,
            max_retired_bytes: DEFAULT_MAX_RETIRED_BYTES,
            perf_map: 0,
            unwind_info: 0,
        }
    }
}

/// Reads a caller's config by the versioning rule of the module docs; NULL means the
/// defaults.
///
/// # Safety
/// `p` is NULL or points to a config whose `size` field is correct: `size` bytes from `p` are
/// readable.
pub(crate) unsafe fn read<T: Config>(p: *const T) -> Result<T, Error> {
    let mut cfg = T::defaults();
    if p.is_null() {
        return Ok(cfg);
    }
    // SAFETY: every config begins with a `size_t size` field (checked by `first_field_is_size`
    // below) and `p` points to a config, so its first word is readable and aligned.
    let size = unsafe { p.cast::<usize>().read() };
    if size < T::FIRST_SIZE {
        return Err(Error::invalid(format!(
            "{}: size {size} is smaller than the first version of the struct ({} bytes): \
             initialize it with its _init function",
            T::NAME,
            T::FIRST_SIZE
        )));
    }
    let known = size_of::<T>();
    if size > known {
        // SAFETY: the caller promises `size` readable bytes from `p`; this reads those past
        // the part this library knows.
        let unknown =
            unsafe { std::slice::from_raw_parts(p.cast::<u8>().add(known), size - known) };
        if unknown.iter().any(|&b| b != 0) {
            return Err(Error::invalid(format!(
                "{}: the caller set fields this library does not know (size {size}, known \
                 {known}): link against a newer tramway",
                T::NAME
            )));
        }
    }
    // SAFETY: `min(size, known)` bytes are readable from `p` (the caller's promise) and
    // writable in `cfg`; every field is an integer, so the bytes form a valid `T`.
    unsafe {
        std::ptr::copy_nonoverlapping(
            p.cast::<u8>(),
            (&mut cfg as *mut T).cast::<u8>(),
            size.min(known),
        )
    };
    Ok(cfg)
}

/// Writes the defaults into `*p` (nothing for NULL).
///
/// # Safety
/// `p` is NULL or valid for writing a `T`.
unsafe fn init<T: Config>(p: *mut T) {
    if !p.is_null() {
        // SAFETY: non-NULL and writable (the caller's promise).
        unsafe { p.write(T::defaults()) };
    }
}

// Every config's first field is its `size` (`read` relies on it).
const _: () = {
    assert!(std::mem::offset_of!(tw_runtime_config_t, size) == 0);
    assert!(std::mem::offset_of!(tw_grace_config_t, size) == 0);
    assert!(std::mem::offset_of!(tw_jit_config_t, size) == 0);
};

impl tw_runtime_config_t {
    pub(crate) fn builder(&self) -> Builder {
        Runtime::builder()
            .workers(self.workers)
            .stack_size(self.stack_size)
    }
}

impl tw_grace_config_t {
    pub(crate) fn to_rust(self) -> Result<GraceConfig, Error> {
        let flavor = match self.flavor {
            TW_FLAVOR_TASKS => Flavor::Tasks,
            TW_FLAVOR_RUDE => Flavor::Rude,
            other => {
                return Err(Error::invalid(format!(
                    "tw_grace_config_t: unknown flavor {other}"
                )))
            }
        };
        Ok(GraceConfig::default()
            .flavor(flavor)
            .stall_timeout(Duration::from_millis(self.stall_timeout_ms))
            .callback_delay(Duration::from_micros(self.callback_delay_us)))
    }
}

impl tw_jit_config_t {
    pub(crate) fn builder(&self) -> JitBuilder {
        Jit::builder()
            .reservation_size(self.reservation_size)
            .chunk_size(self.chunk_size)
            .max_retired_bytes(self.max_retired_bytes)
            .perf_map(self.perf_map != 0)
            .unwind_info(self.unwind_info != 0)
    }
}

/// Fills `*cfg` with the defaults and `size = sizeof(tw_runtime_config_t)`. NULL is ignored.
///
/// # Safety
/// `cfg` is NULL or valid for writing a `tw_runtime_config_t`.
#[no_mangle]
pub unsafe extern "C" fn tw_runtime_config_init(cfg: *mut tw_runtime_config_t) {
    // SAFETY: forwarded from the caller.
    catch_or_abort("tw_runtime_config_init", || unsafe { init(cfg) })
}

/// Fills `*cfg` with the defaults and `size = sizeof(tw_grace_config_t)`. NULL is ignored.
///
/// # Safety
/// `cfg` is NULL or valid for writing a `tw_grace_config_t`.
#[no_mangle]
pub unsafe extern "C" fn tw_grace_config_init(cfg: *mut tw_grace_config_t) {
    // SAFETY: forwarded from the caller.
    catch_or_abort("tw_grace_config_init", || unsafe { init(cfg) })
}

/// Fills `*cfg` with the defaults and `size = sizeof(tw_jit_config_t)`. NULL is ignored.
///
/// # Safety
/// `cfg` is NULL or valid for writing a `tw_jit_config_t`.
#[no_mangle]
pub unsafe extern "C" fn tw_jit_config_init(cfg: *mut tw_jit_config_t) {
    // SAFETY: forwarded from the caller.
    catch_or_abort("tw_jit_config_init", || unsafe { init(cfg) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_smaller_than_its_first_version_is_rejected() {
        let mut cfg = tw_jit_config_t::defaults();
        cfg.size = size_of::<usize>();
        // SAFETY: `cfg` is a whole config (more bytes than its `size` claims).
        let err = unsafe { read(&cfg) }.unwrap_err();
        assert!(
            err.message.contains("smaller than the first version"),
            "{err:?}"
        );
    }

    #[test]
    fn a_larger_config_is_accepted_only_with_zero_unknown_fields() {
        #[repr(C)]
        #[derive(Clone, Copy)]
        struct Newer {
            known: tw_grace_config_t,
            added: u64,
        }
        let mut newer = Newer {
            known: tw_grace_config_t::defaults(),
            added: 0,
        };
        newer.known.size = size_of::<Newer>();
        newer.known.stall_timeout_ms = 7;
        let p = (&newer as *const Newer).cast::<tw_grace_config_t>();
        // SAFETY: `size` bytes are readable from `p`.
        let cfg = unsafe { read(p) }.unwrap();
        assert_eq!(cfg.stall_timeout_ms, 7);
        newer.added = 1;
        let p = (&newer as *const Newer).cast::<tw_grace_config_t>();
        // SAFETY: as above.
        assert!(unsafe { read(p) }.is_err());
    }

    #[test]
    fn a_null_config_means_the_defaults() {
        // SAFETY: NULL is allowed.
        let cfg = unsafe { read::<tw_runtime_config_t>(std::ptr::null()) }.unwrap();
        assert_eq!(cfg.stack_size, DEFAULT_STACK_SIZE);
    }
}
