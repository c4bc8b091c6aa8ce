//! Typed probed sites: a [`ProbedSite`] whose implementations all implement `F`, callable
//! through safe [`SiteFn`] handles (see `typed.rs` for what a typed handle checks).
//!
//! Probe trampolines forward every signature unchanged, so attaching and detaching probes
//! keeps a site's type; only replacing the implementation could break it, and
//! [`TypedProbedSite::swap_impl`] takes only `TypedTrampoline<F>`. A handle keeps the whole
//! probed site alive (the site, its implementation, its probe set and the snapshot the current
//! probe trampoline reads), so dropping the `TypedProbedSite` while handles exist changes
//! nothing for callers.

use std::marker::PhantomData;
use std::sync::Arc;

use super::{ProbeError, ProbedSite, Probes, SiteCell};
use crate::site::SiteKind;
use crate::typed::{AbiFn, SiteFn, TypedTrampoline};

mod sealed {
    /// Keeps [`AttachTarget`](super::AttachTarget) implemented by this crate's types only.
    pub trait Sealed {}
    impl Sealed for super::ProbedSite {}
    impl<F: super::AbiFn> Sealed for super::TypedProbedSite<F> {}
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

/// A probed site whose every implementation implements `F` (see the module docs).
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
