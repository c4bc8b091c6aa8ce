//! W^X code memory, dynasm-emitted trampolines and hot-swappable patch sites.
//!
//! A [`Jit`] reserves one address range (<= 2 GiB) and maps code into it in chunks backed by a
//! memfd that is mapped twice: an RX view where code runs and an RW view where it is written, so no
//! page is ever writable and executable at once (`code_memory/`). Code is emitted with dynasm at
//! its final address and copied in complete before anything can jump to it.
//!
//! - A [`Trampoline`] is a handle to emitted code: a forwarding trampoline (count, optional
//!   entry [`Hook`], then a tail-jump to a [`Target`]; or, with an [`ExitHook`], a call of the
//!   target and the exit hook on the way back: the [`forwarding`] module), custom code
//!   ([`Jit::custom`]) or [`Jit::constant_return`]. Lifecycle: the [`trampoline`] module.
//! - A [`Site`] is a stable entry callers call; [`Site::swap`] re-points it with one atomic store
//!   (the patch protocol: the [`site`] module) and returns the old trampoline as [`Retired`].
//!   [`TypedSite`] and [`SiteFn`] call it without `unsafe` (the [`typed`] module says what they
//!   check).
//! - Retired code is freed only through a [`Reclaim`] implementation (the runtime's grace periods;
//!   [`LeakUntilDrop`] by default here), never while a caller may still be inside it (the
//!   whole retire chain is drawn in the [`reclaim`] module).
//! - [`Probes`] attach and detach entry and exit hooks on many sites with one grace period per
//!   batch (the [`probe`] module).
//!
//! Trampoline code never yields: hooks and custom code must not contain yield points, because the
//! runtime's grace periods treat every yield point as a quiescent state. Every hook runs inside a
//! [`tramway_runtime::non_yielding`] section, so nothing it calls reports a quiescent state.
//! Code that does yield (a compiled body that calls into the runtime and parks) is declared with
//! [`tramway_runtime::in_yielding_code`]; its frees carry their code range
//! ([`Reclaim::defer_code`]), and a grace period holds any range a parked task's stack points
//! into.
//!
//! # Layout
//! Public modules hold the design explanations of the items they define (each item is also
//! re-exported here). Private ones:
//! - `arch/`: every byte of machine code behind one contract (`arch/mod.rs`), one file per
//!   architecture; `os/`: every system call, one file per OS.
//! - `code_memory/`: the allocator over two W^X backends (memfd double mapping, mprotect).
//! - `assembler.rs`: the assembler emit closures write into; `emitter.rs`: it and a run of
//!   free slots, reused from one emission to the next.
//! - `jit_core.rs`: the state every handle shares; `jit.rs`: the builder and facade;
//!   `profiling.rs`: naming code for perf (perf map, jitdump); `unwind.rs`: DWARF unwind
//!   information for hook-calling trampolines, so backtraces walk through them (opt-in).
//!
//! ```
//! # fn main() -> Result<(), tramway_jit::JitError> {
//! use tramway_jit::{Jit, SiteKind};
//! let jit = Jit::new()?;
//! let one = jit.constant_return(1)?;
//! let site = jit.site(SiteKind::Indirect, &one)?;
//! // SAFETY: constant_return code implements `extern "C" fn() -> u64`.
//! let f: extern "C" fn() -> u64 = unsafe { site.as_fn() };
//! assert_eq!(f(), 1);
//! let retired = site.swap(&jit.constant_return(2)?)?;
//! assert_eq!(f(), 2);
//! drop(retired); // freed after a grace period (here: at the Jit's barrier)
//! # Ok(()) }
//! ```
//!
//! Only x86-64 Linux is supported; on other targets the crate does not compile, with a message
//! saying what a port adds (one `arch/<arch>.rs`, one `os/<os>.rs`).

#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

mod arch;
mod assembler;
mod code_memory;
mod emitter;
mod error;
pub mod forwarding;
mod jit;
mod jit_core;
mod os;
pub mod probe;
mod profiling;
pub mod reclaim;
mod recycled;
pub mod site;
mod stats;
pub mod trampoline;
pub mod typed;
mod unwind;

pub use crate::arch::{HookArgs, ReturnValues};
pub use crate::assembler::Assembler;
pub use crate::error::JitError;
pub use crate::forwarding::{ExitHook, ForwardingSpec, Hook, Target, MAX_STACK_ARG_BYTES};
pub use crate::jit::{
    Jit, JitBuilder, DEFAULT_CHUNK_SIZE, DEFAULT_RESERVATION, DEFAULT_SPARE_CHUNK_DECAY,
    SPARE_CHUNKS_PER_CLASS,
};
pub use crate::probe::{
    AttachTarget, Batch, FromReturn, Probe, ProbeError, ProbeHook, ProbeStats, ProbedSite,
    ProbedSiteRef, Probes, TypedProbedSite,
};
pub use crate::reclaim::{
    Deferred, ImmediateReclaim, LeakUntilDrop, Reclaim, DEFAULT_MAX_RETIRED_BYTES,
};
pub use crate::site::{Site, SiteKind};
pub use crate::stats::{JitStats, JitStatsHandle};
pub use crate::trampoline::{Retired, Trampoline};
pub use crate::typed::{AbiFn, AbiResult, AbiValue, CallError, SiteFn, TypedSite, TypedTrampoline};

/// Re-export of `dynasmrt`, so that [`Jit::custom`] users can name its traits and macros.
pub use dynasmrt;

/// Locks a mutex, ignoring poisoning (the protected state is kept consistent before any call
/// that can panic).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests;
