//! Typed, owning call handles: calling JIT code without `unsafe`.
//!
//! A raw entry address ([`Site::entry`], [`Site::as_fn`], [`Trampoline::addr`]) can only be
//! called with `unsafe`, because three things are unchecked: that the code implements the
//! signature the caller uses, that the memory stays mapped while the call runs, and that the
//! calling thread is one the reclaimer waits for before it frees retired code. The typed layer
//! checks all three (wasmtime's `TypedFunc` is the model):
//!
//! - **Signature.** A [`TypedTrampoline<F>`] is made from a value of `F` (a forwarding
//!   trampoline to an `extern "C" fn`, [`Jit::forward`]), so its code implements `F`; a
//!   [`TypedSite<F>`] only ever holds `TypedTrampoline<F>`s. Over custom code the type is a
//!   promise: [`TypedTrampoline::assume`] is `unsafe`. Arguments and results are plain C
//!   scalars ([`AbiValue`]), which forwarding trampolines pass through unchanged.
//! - **Lifetime.** A [`SiteFn<F>`] (from [`TypedSite::handle`], cheap to clone into every
//!   task) holds the site: its stub, its current trampoline and the `Jit`'s code memory stay
//!   mapped while any handle exists, whatever else was dropped. The memory is unmapped after
//!   the last handle that can reach it is gone and a grace period has passed.
//! - **Caller.** [`SiteFn::call`] first asks the `Jit`'s reclaimer whether it tracks the
//!   calling thread ([`Reclaim::tracks_current_thread`](crate::Reclaim::tracks_current_thread):
//!   for a grace domain, a task of its runtime or an online registered thread) and returns
//!   [`CallError::NotAReader`] otherwise, instead of running code that a grace period might
//!   free under it.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use tramway_jit::{Jit, SiteKind};
//!
//! extern "C" fn add_one(x: u64) -> u64 { x + 1 }
//! extern "C" fn add_two(x: u64) -> u64 { x + 2 }
//!
//! let jit = Jit::new()?; // reclaimer: LeakUntilDrop (any thread may call)
//! let site = jit.typed_site(SiteKind::Indirect, &jit.forward(add_one as extern "C" fn(u64) -> u64)?)?;
//! let f = site.handle(); // owns what it calls
//! assert_eq!(f.call((41,))?, 42);
//! let _old = site.swap(&jit.forward(add_two as extern "C" fn(u64) -> u64)?)?;
//! drop(site);
//! drop(jit);
//! assert_eq!(f.call((41,))?, 43); // the handle keeps the site and its code mapped
//! # Ok(()) }
//! ```

use std::any::Any;
use std::marker::PhantomData;
use std::sync::Arc;

use crate::error::JitError;
use crate::forwarding::{ForwardingSpec, Target};
use crate::jit::Jit;
use crate::jit_core::JitCore;
use crate::site::{Site, SiteKind};
use crate::trampoline::{Retired, Trampoline};

/// A plain C scalar that JIT code receives and returns in registers exactly as a C function
/// would: integers, `bool`, `f32`, `f64`, raw pointers.
///
/// # Safety
/// Implemented only for types passed in one general-purpose or one vector register (at most
/// 8 bytes) under the platform's C calling convention, which forwarding trampolines preserve.
pub unsafe trait AbiValue: Copy + 'static {}

macro_rules! abi_values {
    ($($t:ty),*) => {$(
        // SAFETY: a C scalar of at most 8 bytes, passed in one register.
        unsafe impl AbiValue for $t {}
    )*};
}
abi_values!(u8, u16, u32, u64, usize, i8, i16, i32, i64, isize, bool, f32, f64);
// SAFETY: a pointer is one general-purpose register.
unsafe impl<T: 'static> AbiValue for *const T {}
// SAFETY: as above.
unsafe impl<T: 'static> AbiValue for *mut T {}

/// An `extern "C"` function pointer type whose signature a typed handle calls: up to six
/// [`AbiValue`] arguments and an [`AbiValue`] or `()` result, e.g. `extern "C" fn(u64) -> u64`.
///
/// # Safety
/// Implemented (here, for every such type) only for `extern "C"` function pointers, so that
/// [`call_at`](Self::call_at) calls an address with exactly that signature.
pub unsafe trait AbiFn: Copy + Send + Sync + 'static {
    /// The arguments, as a tuple (`(u64,)` for one argument, `()` for none).
    type Args;
    /// The result.
    type Output;

    /// The function's address.
    fn addr(self) -> *const u8;

    /// Calls the code at `entry` with `args`.
    ///
    /// # Safety
    /// `entry` must be code implementing this signature, mapped for the whole call.
    unsafe fn call_at(entry: *const u8, args: Self::Args) -> Self::Output;
}

/// A result type of an [`AbiFn`]: an [`AbiValue`] or `()`.
///
/// # Safety
/// As [`AbiValue`] (or no value at all).
pub unsafe trait AbiResult: 'static {}
// SAFETY: no value.
unsafe impl AbiResult for () {}
// SAFETY: an `AbiValue` is returned in one register.
unsafe impl<T: AbiValue> AbiResult for T {}

macro_rules! abi_fn {
    ($($a:ident),*) => {
        // SAFETY: an `extern "C"` function pointer; `call_at` transmutes the entry to exactly
        // this type.
        unsafe impl<R: AbiResult, $($a: AbiValue),*> AbiFn for extern "C" fn($($a),*) -> R {
            type Args = ($($a,)*);
            type Output = R;

            fn addr(self) -> *const u8 {
                self as *const u8
            }

            #[allow(non_snake_case)]
            unsafe fn call_at(entry: *const u8, args: Self::Args) -> R {
                // SAFETY: the caller guarantees that `entry` implements this signature.
                let f: extern "C" fn($($a),*) -> R = unsafe { std::mem::transmute(entry) };
                let ($($a,)*) = args;
                f($($a),*)
            }
        }
    };
}
abi_fn!();
abi_fn!(A1);
abi_fn!(A1, A2);
abi_fn!(A1, A2, A3);
abi_fn!(A1, A2, A3, A4);
abi_fn!(A1, A2, A3, A4, A5);
abi_fn!(A1, A2, A3, A4, A5, A6);

/// Why a call through a typed handle did not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The calling thread is not one the `Jit`'s reclaimer waits for (for a grace domain: not
    /// a task of its runtime, not an online registered thread, or inside an `offline` scope),
    /// so code could be freed while it runs.
    #[error(
        "the calling thread is not a reader this Jit's reclaimer tracks (register it, or call \
         from a task; not from inside offline())"
    )]
    NotAReader,
}

/// A trampoline whose code implements `F` (see the [module docs](self)).
pub struct TypedTrampoline<F: AbiFn> {
    tramp: Trampoline,
    _f: PhantomData<F>,
}

impl<F: AbiFn> Clone for TypedTrampoline<F> {
    fn clone(&self) -> Self {
        TypedTrampoline {
            tramp: self.tramp.clone(),
            _f: PhantomData,
        }
    }
}

impl<F: AbiFn> TypedTrampoline<F> {
    /// Declares that `tramp`'s code implements `F`.
    ///
    /// # Safety
    /// The code must implement `F` under the platform's C calling convention, and everything
    /// [`Jit::custom`] requires of custom code.
    pub unsafe fn assume(tramp: Trampoline) -> Self {
        TypedTrampoline {
            tramp,
            _f: PhantomData,
        }
    }

    /// The untyped handle (calling its address still needs `unsafe`).
    pub fn trampoline(&self) -> &Trampoline {
        &self.tramp
    }
}

impl<F: AbiFn> std::fmt::Debug for TypedTrampoline<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("TypedTrampoline").field(&self.tramp).finish()
    }
}

/// A patch site whose every trampoline implements `F`: swap it, and hand out [`SiteFn`]s.
pub struct TypedSite<F: AbiFn> {
    site: Site,
    _f: PhantomData<F>,
}

impl<F: AbiFn> TypedSite<F> {
    /// The stable entry address (calling it directly needs `unsafe`; use [`handle`](Self::handle)).
    pub fn entry(&self) -> *const u8 {
        self.site.entry()
    }

    /// The site's kind.
    pub fn kind(&self) -> SiteKind {
        self.site.kind()
    }

    /// The trampoline currently installed.
    pub fn current(&self) -> TypedTrampoline<F> {
        TypedTrampoline {
            tramp: self.site.current(),
            _f: PhantomData,
        }
    }

    /// Points the site at `new` (see [`Site::swap`] for the protocol and the errors).
    pub fn swap(&self, new: &TypedTrampoline<F>) -> Result<Retired, JitError> {
        self.site.swap(&new.tramp)
    }

    /// A callable handle that keeps the site (and the code it reaches) alive.
    pub fn handle(&self) -> SiteFn<F> {
        let inner = Arc::clone(self.site.inner());
        SiteFn {
            core: Arc::clone(&inner.core),
            entry: self.site.entry(),
            _keep: inner,
            _f: PhantomData,
        }
    }

    /// Calls the site once (see [`SiteFn::call`]).
    pub fn call(&self, args: F::Args) -> Result<F::Output, CallError> {
        check_caller(&self.site.inner().core)?;
        // SAFETY: every trampoline of a `TypedSite<F>` implements `F`; `self` keeps the site
        // and its code mapped for the call; the caller is tracked by the reclaimer.
        Ok(unsafe { F::call_at(self.site.entry(), args) })
    }
}

impl<F: AbiFn> std::fmt::Debug for TypedSite<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("TypedSite").field(&self.site).finish()
    }
}

/// A callable handle on a typed site: safe to call, cheap to clone, `Send + Sync`.
///
/// While it exists, the site's stub, its current trampoline and the `Jit`'s code memory stay
/// mapped (see the [module docs](self)).
pub struct SiteFn<F: AbiFn> {
    core: Arc<JitCore>,
    entry: *const u8,
    /// Whatever keeps the entry callable: the site, or a probed site with its probe set.
    _keep: Arc<dyn Any + Send + Sync>,
    _f: PhantomData<F>,
}

// SAFETY: `entry` is the address of immutable-until-retired code that `_keep` keeps mapped;
// calling it from any thread is what the handle is for (the call checks the thread).
unsafe impl<F: AbiFn> Send for SiteFn<F> {}
// SAFETY: as above; the handle is never mutated.
unsafe impl<F: AbiFn> Sync for SiteFn<F> {}

impl<F: AbiFn> Clone for SiteFn<F> {
    fn clone(&self) -> Self {
        SiteFn {
            core: Arc::clone(&self.core),
            entry: self.entry,
            _keep: Arc::clone(&self._keep),
            _f: PhantomData,
        }
    }
}

impl<F: AbiFn> SiteFn<F> {
    /// A handle on `entry`, kept callable by `keep`.
    ///
    /// # Safety
    /// Every trampoline `entry` can reach while `keep` lives implements `F`, and `keep` keeps
    /// `entry` and everything it reaches mapped (deferring frees through `core`'s reclaimer).
    pub(crate) unsafe fn new(
        core: Arc<JitCore>,
        entry: *const u8,
        keep: Arc<dyn Any + Send + Sync>,
    ) -> Self {
        SiteFn {
            core,
            entry,
            _keep: keep,
            _f: PhantomData,
        }
    }

    /// Calls the site with `args`, if the calling thread is one the `Jit`'s reclaimer tracks
    /// ([`CallError::NotAReader`] otherwise: see the [module docs](self)).
    #[inline]
    pub fn call(&self, args: F::Args) -> Result<F::Output, CallError> {
        check_caller(&self.core)?;
        // SAFETY: the handle's invariant (every reachable trampoline implements `F`, `_keep`
        // keeps it mapped) and the caller check (no grace period frees the code under us).
        Ok(unsafe { F::call_at(self.entry, args) })
    }

    /// The entry as a plain function pointer, for callers that check the conditions
    /// themselves (for example in a hot loop).
    ///
    /// # Safety
    /// The pointer may only be called while this handle (or a clone) lives, and only from a
    /// thread the `Jit`'s reclaimer tracks (see [`call`](Self::call)).
    pub unsafe fn as_fn(&self) -> F {
        // SAFETY: `F` is an `extern "C"` function pointer type (`AbiFn`'s contract), the same
        // size as an address; the caller upholds the calling conditions.
        unsafe { std::mem::transmute_copy(&self.entry) }
    }

    /// The entry address.
    pub fn entry(&self) -> *const u8 {
        self.entry
    }
}

impl<F: AbiFn> std::fmt::Debug for SiteFn<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiteFn")
            .field("entry", &self.entry)
            .finish()
    }
}

#[inline]
fn check_caller(core: &JitCore) -> Result<(), CallError> {
    if core.retirement.tracks_current_thread() {
        Ok(())
    } else {
        Err(CallError::NotAReader)
    }
}

impl Jit {
    /// Emits a forwarding trampoline to the `extern "C"` function `f`: typed by `f`'s own
    /// signature, so sites holding it can be called safely (see [`TypedSite`]).
    ///
    /// ```
    /// # fn main() -> Result<(), tramway_jit::JitError> {
    /// # let jit = tramway_jit::Jit::new()?;
    /// extern "C" fn twice(x: u64) -> u64 { 2 * x }
    /// let t = jit.forward(twice as extern "C" fn(u64) -> u64)?;
    /// # let _ = t; Ok(()) }
    /// ```
    pub fn forward<F: AbiFn>(&self, f: F) -> Result<TypedTrampoline<F>, JitError> {
        let tramp = self.forwarding(ForwardingSpec::new(Target::Address(f.addr())))?;
        Ok(TypedTrampoline {
            tramp,
            _f: PhantomData,
        })
    }

    /// Creates a typed patch site pointing at `initial` (see [`Jit::site`]).
    pub fn typed_site<F: AbiFn>(
        &self,
        kind: SiteKind,
        initial: &TypedTrampoline<F>,
    ) -> Result<TypedSite<F>, JitError> {
        Ok(TypedSite {
            site: self.site(kind, &initial.tramp)?,
            _f: PhantomData,
        })
    }
}
