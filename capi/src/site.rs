//! `tw_site_t`: a stable entry point whose code is swapped atomically.
//!
//! A site is either plain (`tw_site_new`) or managed by a probe manager (`tw_probes_site`);
//! both are called and swapped the same way. Swapping a probed site replaces its
//! implementation and keeps its probes.

use tramway_jit::{ProbedSite, Site, SiteKind};

use crate::boundary::{catch, catch_or_abort, delete, handle, put};
use crate::error::{tw_error_t, Error};
use crate::jit::{tw_code_t, tw_jit_t};
use crate::tw_fn_t;

/// How a site jumps to its code (`tw_site_new`, `tw_probes_site`).
pub type tw_site_kind_t = u32;
/// Jumps through a data word holding the code's address; a swap stores only data (default).
pub const TW_SITE_INDIRECT: tw_site_kind_t = 0;
/// A direct jump instruction, rewritten by a swap (cross-modifying code; needs the memfd
/// code memory, else `TW_ERROR_UNSUPPORTED`).
pub const TW_SITE_DIRECT: tw_site_kind_t = 1;

/// A patch site. Its entry stays valid until the site is deleted; deleting it retires its
/// current code (and detaches its probes), freed after a grace period.
pub struct tw_site_t {
    pub(crate) inner: SiteInner,
}

pub(crate) enum SiteInner {
    Plain(Site),
    Probed(ProbedSite),
}

pub(crate) fn kind(kind: tw_site_kind_t) -> Result<SiteKind, Error> {
    match kind {
        TW_SITE_INDIRECT => Ok(SiteKind::Indirect),
        TW_SITE_DIRECT => Ok(SiteKind::Direct),
        other => Err(Error::invalid(format!("unknown site kind {other}"))),
    }
}

/// Creates a site of `kind` whose calls go to `code`, and stores it in `*out`.
///
/// Errors: `TW_ERROR_INVALID_ARGUMENT` (NULL, unknown kind), `TW_ERROR_FOREIGN` (code of
/// another jit), `TW_ERROR_RETIRED`, `TW_ERROR_UNSUPPORTED`, `TW_ERROR_OUT_OF_CODE_SPACE`.
///
/// # Safety
/// `jit` and `code` are NULL or live handles; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn tw_site_new(
    jit: *const tw_jit_t,
    kind: tw_site_kind_t,
    code: *const tw_code_t,
    out: *mut *mut tw_site_t,
) -> *mut tw_error_t {
    catch("tw_site_new", || {
        let make = || {
            // SAFETY: a NULL-or-live handle (the caller's contract).
            let jit = unsafe { handle(jit, "jit") }?;
            // SAFETY: a NULL-or-live handle (the caller's contract).
            let code = unsafe { handle(code, "code") }?;
            let site = jit.jit.site(self::kind(kind)?, &code.code)?;
            Ok(tw_site_t {
                inner: SiteInner::Plain(site),
            })
        };
        // SAFETY: `out` is NULL or writable (the caller's contract).
        unsafe { put(out, "out", make) }
    })
}

/// Releases the site (see `tw_site_t`). NULL is ignored.
///
/// # Safety
/// `site` is NULL or a site from this library, not deleted before; no thread may call its
/// entry any more (calls already inside may finish).
#[no_mangle]
pub unsafe extern "C" fn tw_site_delete(site: *mut tw_site_t) {
    // SAFETY: forwarded from the caller.
    unsafe { delete("tw_site_delete", site) }
}

/// The site's entry: cast it to the signature of the code installed in it and call it from
/// registered online threads only (NULL for NULL).
///
/// # Safety
/// `site` is NULL or a live site.
#[no_mangle]
pub unsafe extern "C" fn tw_site_entry(site: *const tw_site_t) -> tw_fn_t {
    catch_or_abort("tw_site_entry", || {
        // SAFETY: the caller passes NULL or a live site.
        let site = unsafe { site.as_ref() }?;
        let entry = match &site.inner {
            SiteInner::Plain(s) => s.entry(),
            SiteInner::Probed(s) => s.entry(),
        };
        // SAFETY: a site's entry is the address of executable code (its stub), non-NULL;
        // a code address and a function pointer have the same size and representation on
        // the supported target.
        Some(unsafe { std::mem::transmute::<*const u8, unsafe extern "C" fn()>(entry) })
    })
}

/// Points the site at `code` with one atomic store; calls entering afterwards run `code`.
/// The code it replaces is retired and freed after a grace period (calls still inside it
/// finish first). For a probed site this replaces the implementation and keeps the probes.
///
/// Errors: `TW_ERROR_INVALID_ARGUMENT` (NULL), `TW_ERROR_FOREIGN`, `TW_ERROR_RETIRED`,
/// `TW_ERROR_OUT_OF_RANGE`, `TW_ERROR_IN_HOOK`; on error the site is unchanged.
///
/// # Safety
/// `site` and `code` are NULL or live handles; `code` implements the signature the site's
/// callers use.
#[no_mangle]
pub unsafe extern "C" fn tw_site_swap(
    site: *const tw_site_t,
    code: *const tw_code_t,
) -> *mut tw_error_t {
    catch("tw_site_swap", || {
        crate::thread::forbid_in_hook("tw_site_swap")?;
        // SAFETY: forwarded from the caller.
        let (site, code) = unsafe { (handle(site, "site")?, handle(code, "code")?) };
        match &site.inner {
            // Dropping the `Retired` handle defers the free past a grace period.
            SiteInner::Plain(s) => drop(s.swap(&code.code)?),
            SiteInner::Probed(s) => s.swap_impl(&code.code)?,
        }
        Ok(())
    })
}
