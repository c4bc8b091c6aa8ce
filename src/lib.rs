#![doc = include_str!("../README.md")]
//!
//! # How the crates meet
//!
//! * [`runtime`] (`tramway-runtime`) runs green threads and knows nothing about machine code.
//!   Its [`qs`](runtime::qs) module is the reader side: who may be inside JIT code (workers,
//!   registered OS threads) and how each says it is not (a voluntary yield point, a quiescent
//!   state). Its [`grace`](runtime::grace) module turns those reports into grace periods and
//!   deferred callbacks.
//! * [`jit`] (`tramway-jit`) owns W^X code memory, trampolines and patch sites, and frees
//!   retired code only through a [`Reclaim`](jit::Reclaim) implementation.
//! * This crate composes the two the way the product is meant to be used: a [`Builder`] that
//!   returns a [`Tramway`], holding a runtime, a grace domain over it, and a `Jit` whose
//!   reclaimer is that domain. Retired code is then unmapped after a Tasks grace period.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use tramway::jit::SiteKind;
//!
//! extern "C" fn add_one(x: u64) -> u64 { x + 1 }
//! extern "C" fn add_two(x: u64) -> u64 { x + 2 }
//! type AddFn = extern "C" fn(u64) -> u64;
//!
//! let tw = tramway::Builder::new().workers(2).build()?;
//! let site = tw.jit.typed_site(SiteKind::Indirect, &tw.jit.forward(add_one as AddFn)?)?;
//! let call = site.handle(); // safe to call from tasks; keeps what it calls mapped
//! let task = tw.runtime.spawn(move || call.call((41,)))?;
//! let retired = site.swap(&tw.jit.forward(add_two as AddFn)?)?;
//! drop(retired); // unmapped after a grace period
//! let r = task.join()??;
//! assert!(r == 42 || r == 43);
//! tw.grace.synchronize();
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub use tramway_jit as jit;
pub use tramway_runtime as runtime;

use std::sync::Arc;

use tramway_jit::{Jit, JitBuilder, JitError};
use tramway_runtime::grace::{GraceConfig, GraceDomain};
use tramway_runtime::{DomainError, Runtime};

/// Configures a runtime, a grace domain over it and a `Jit` that reclaims through it.
#[must_use]
pub struct Builder {
    runtime: runtime::Builder,
    grace: GraceConfig,
    jit: JitBuilder,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            runtime: Runtime::builder(),
            grace: GraceConfig::default(),
            jit: Jit::builder(),
        }
    }
}

impl Builder {
    /// The defaults of each part: one worker per core, a Tasks grace domain, a 1 GiB code
    /// reservation.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of worker threads (see [`runtime::Builder::workers`]).
    pub fn workers(mut self, n: usize) -> Self {
        self.runtime = self.runtime.workers(n);
        self
    }

    /// Adjusts the runtime's configuration.
    pub fn runtime(mut self, f: impl FnOnce(runtime::Builder) -> runtime::Builder) -> Self {
        self.runtime = f(self.runtime);
        self
    }

    /// The grace domain's configuration (flavor, stall reports, callback batching).
    pub fn grace(mut self, config: GraceConfig) -> Self {
        self.grace = config;
        self
    }

    /// Adjusts the `Jit`'s configuration. Its reclaimer is always the grace domain.
    pub fn jit(mut self, f: impl FnOnce(JitBuilder) -> JitBuilder) -> Self {
        self.jit = f(self.jit);
        self
    }

    /// Starts the runtime and the grace domain and creates the `Jit`.
    pub fn build(self) -> Result<Tramway, BuildError> {
        let runtime = self.runtime.build()?;
        let grace = GraceDomain::new(&runtime, self.grace)?;
        let jit = self.jit.reclaimer(Arc::new(grace.clone())).build()?;
        Ok(Tramway {
            runtime,
            grace,
            jit,
        })
    }
}

/// A runtime, a grace domain over its readers, and a `Jit` whose retired code that domain
/// reclaims.
///
/// The parts are independent handles: each may be cloned out (the runtime, the domain) or
/// dropped in any order. Code stays mapped while a handle that can reach it lives, and
/// dropping the runtime shuts it down (tasks still running are cancelled).
#[derive(Debug)]
pub struct Tramway {
    /// The green-thread runtime (its tasks, and threads registered with it, are the readers).
    pub runtime: Runtime,
    /// The grace-period domain over the runtime's readers; the `Jit` reclaims through it.
    pub grace: GraceDomain,
    /// The code memory, trampolines and sites.
    pub jit: Jit,
}

/// Why [`Builder::build`] failed, and in which part.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The runtime did not start.
    #[error("runtime: {0}")]
    Runtime(#[from] runtime::BuildError),
    /// The grace domain did not start.
    #[error("grace domain: {0}")]
    Grace(#[from] DomainError),
    /// The `Jit` could not be created.
    #[error("jit: {0}")]
    Jit(#[from] JitError),
}
