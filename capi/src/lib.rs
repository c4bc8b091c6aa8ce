#![doc = include_str!("overview.md")]
//!
//! # Layout
//! - `boundary.rs`: the panic boundary every entry point goes through, and the checks that
//!   turn NULL pointers into errors;
//! - `error.rs`: `tw_error_t` and its codes; `config.rs`: the versioned configurations;
//! - `runtime.rs`, `grace.rs`, `thread.rs`: the green-thread runtime, grace domains, and the
//!   thread-local registration;
//! - `jit.rs`, `emit.rs`, `site.rs`, `probes.rs`: code memory, custom emission, patch sites,
//!   probes.
//!
//! `include/tramway.h` is generated from these files by cbindgen
//! (`TRAMWAY_BLESS_HEADER=1 cargo test -p tramway-capi --test header`); without the variable
//! that test fails when the header is stale.
// The C names (`tw_jit_t`, `TW_ERROR_RETIRED`) are the API.
#![allow(non_camel_case_types)]
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

mod boundary;
pub mod config;
pub mod emit;
pub mod error;
pub mod grace;
pub mod jit;
pub mod probes;
pub mod runtime;
pub mod site;
pub mod thread;

#[cfg(test)]
mod tests;

/// A C function pointer of unspecified signature: cast it to the function type it has (as
/// `dlsym` results are), e.g. `((uint64_t (*)(uint64_t))tw_site_entry(site))(41)`.
pub type tw_fn_t = Option<unsafe extern "C" fn()>;
