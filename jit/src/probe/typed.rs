//! Typed probed sites: a [`ProbedSite`] whose implementations all implement `F`, callable
//! through safe [`SiteFn`] handles (see `typed.rs` for what a typed handle checks).
//!
//! Probe trampolines forward every signature unchanged, so attaching and detaching probes
//! keeps a site's type; only replacing the implementation could break it, and
//! [`TypedProbedSite::swap_impl`] takes only `TypedTrampoline<F>`. A handle keeps the whole
//! probed site alive (the site, its implementation, its probe set and the snapshot the current
//! probe trampoline reads), so dropping the `TypedProbedSite` while handles exist changes
//! nothing for callers.
//!
//! Typed exit probes ([`TypedProbedSite::exit_hook`]) decode the site's result type from the
//! return registers ([`FromReturn`]).

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use super::{ProbeError, ProbeHook, ProbedSite, Probes, SiteCell};
use crate::site::SiteKind;
use crate::typed::{AbiFn, SiteFn, TypedTrampoline};
use crate::{HookArgs, ReturnValues};

mod sealed {
    /// Keeps [`AttachTarget`](super::AttachTarget) implemented by this crate's types only.
    pub trait Sealed {}
    impl Sealed for super::ProbedSite {}
    impl<F: super::AbiFn> Sealed for super::TypedProbedSite<F> {}

    /// Keeps [`FromReturn`](super::FromReturn) implemented by this crate's types only.
    pub trait SealedReturn {}
}

/// A result type a typed exit probe decodes from the [`ReturnValues`] of a call: `()` and
/// every scalar [`AbiValue`](crate::AbiValue) this crate implements (integers, `bool`, `f32`,
/// `f64`, raw pointers). Sealed.
pub trait FromReturn: sealed::SealedReturn + Sized {
    /// The value the call returned, as the platform's C calling convention returns it.
    fn from_return(ret: &ReturnValues) -> Self;
}

macro_rules! from_int_return {
    ($($t:ty),*) => {$(
        impl sealed::SealedReturn for $t {}
        impl FromReturn for $t {
            /// The first integer return register, truncated to the type (the C calling
            /// convention leaves the upper bits of narrow results unspecified).
            fn from_return(ret: &ReturnValues) -> Self {
                ret.int_rets[0] as $t
            }
        }
    )*};
}
from_int_return!(u8, u16, u32, u64, usize, i8, i16, i32, i64, isize);

impl sealed::SealedReturn for () {}
impl FromReturn for () {
    fn from_return(_: &ReturnValues) -> Self {}
}

impl sealed::SealedReturn for bool {}
impl FromReturn for bool {
    /// The low byte of the first integer return register (0 or 1 by the C ABI).
    fn from_return(ret: &ReturnValues) -> Self {
        ret.int_rets[0] as u8 != 0
    }
}

impl sealed::SealedReturn for f32 {}
impl FromReturn for f32 {
    fn from_return(ret: &ReturnValues) -> Self {
        f32::from_bits(ret.vec_rets[0][0] as u32)
    }
}

impl sealed::SealedReturn for f64 {}
impl FromReturn for f64 {
    fn from_return(ret: &ReturnValues) -> Self {
        f64::from_bits(ret.vec_rets[0][0])
    }
}

impl<T: 'static> sealed::SealedReturn for *const T {}
impl<T: 'static> FromReturn for *const T {
    fn from_return(ret: &ReturnValues) -> Self {
        ret.int_rets[0] as usize as *const T
    }
}

impl<T: 'static> sealed::SealedReturn for *mut T {}
impl<T: 'static> FromReturn for *mut T {
    fn from_return(ret: &ReturnValues) -> Self {
        ret.int_rets[0] as usize as *mut T
    }
}

/// A site [`Probes::attach`] accepts: a [`ProbedSite`] or a [`TypedProbedSite`].
///
/// Sealed (implemented by those two only), and its one method returns an opaque reference,
/// so a typed site cannot be reached as an untyped one (whose `swap_impl` would accept any
/// trampoline).
pub trait AttachTarget: sealed::Sealed {
    /// The probed site, as an opaque reference.
    fn probed(&self) -> ProbedSiteRef<'_>;
}

/// An opaque reference to a probed site (see [`AttachTarget`]).
#[derive(Clone, Copy)]
pub struct ProbedSiteRef<'a>(pub(crate) &'a Arc<SiteCell>);

impl AttachTarget for ProbedSite {
    fn probed(&self) -> ProbedSiteRef<'_> {
        ProbedSiteRef(&self.cell)
    }
}

impl<F: AbiFn> AttachTarget for TypedProbedSite<F> {
    fn probed(&self) -> ProbedSiteRef<'_> {
        ProbedSiteRef(&self.site.cell)
    }
}

/// A probed site whose every implementation implements `F` (what a typed handle checks: the
/// [`typed`](crate::typed) module docs).
pub struct TypedProbedSite<F: AbiFn> {
    site: ProbedSite,
    _f: PhantomData<F>,
}

impl Probes {
    /// Creates a typed probed site (see [`Probes::site`]).
    pub fn typed_site<F: AbiFn>(
        &self,
        kind: SiteKind,
        implementation: &TypedTrampoline<F>,
    ) -> Result<TypedProbedSite<F>, ProbeError> {
        Ok(TypedProbedSite {
            site: self.site(kind, implementation.trampoline())?,
            _f: PhantomData,
        })
    }
}

impl<F: AbiFn> TypedProbedSite<F> {
    /// A callable handle that keeps the probed site alive.
    pub fn handle(&self) -> SiteFn<F> {
        let cell = Arc::clone(&self.site.cell);
        let (core, entry) = (Arc::clone(&cell.mgr.core), cell.site.entry());
        // SAFETY: the site's implementations are all `TypedTrampoline<F>`s (`swap_impl` takes
        // nothing else) and probe trampolines forward them unchanged, so everything the entry
        // reaches implements `F`; the cell keeps the site, its implementation, its probe
        // trampoline and its snapshot mapped while the handle lives.
        unsafe { SiteFn::new(core, entry, cell) }
    }

    /// An exit hook for this site's signature (it is not attached: pass it to
    /// [`Probes::attach`]): `f` receives the call's integer arguments, its result decoded as
    /// `F`'s result type, and its duration (see [`ProbeHook::on_exit`]). Typed signatures pass
    /// no stack arguments, so nothing needs declaring.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::{Arc, Mutex};
    /// use tramway_jit::{Jit, Probes, SiteKind};
    ///
    /// extern "C" fn half(x: f64) -> f64 { x / 2.0 }
    /// let jit = Jit::new()?;
    /// let probes = Probes::new(&jit);
    /// let site = probes.typed_site(SiteKind::Indirect, &jit.forward(half as extern "C" fn(f64) -> f64)?)?;
    /// let seen = Arc::new(Mutex::new(None));
    /// let s = seen.clone();
    /// probes.attach(&site, site.exit_hook(move |_, r: f64, _| *s.lock().unwrap() = Some(r)))?;
    /// assert_eq!(site.handle().call((3.0,))?, 1.5);
    /// assert_eq!(*seen.lock().unwrap(), Some(1.5));
    /// # Ok(()) }
    /// ```
    pub fn exit_hook(
        &self,
        f: impl Fn(&HookArgs, F::Output, Duration) + Send + Sync + 'static,
    ) -> ProbeHook
    where
        F::Output: FromReturn,
    {
        ProbeHook::on_exit(move |args, ret| f(args, F::Output::from_return(ret), ret.duration()))
    }

    /// Replaces the implementation, keeping the probes (see [`ProbedSite::swap_impl`]).
    pub fn swap_impl(&self, new: &TypedTrampoline<F>) -> Result<(), ProbeError> {
        self.site.swap_impl(new.trampoline())
    }

    /// The stable entry address (calling it directly needs `unsafe`; use [`handle`](Self::handle)).
    pub fn entry(&self) -> *const u8 {
        self.site.entry()
    }

    /// An id unique within the site's manager.
    pub fn id(&self) -> u64 {
        self.site.id()
    }

    /// Number of probes attached.
    pub fn probe_count(&self) -> usize {
        self.site.probe_count()
    }
}

impl<F: AbiFn> std::fmt::Debug for TypedProbedSite<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("TypedProbedSite").field(&self.site).finish()
    }
}
