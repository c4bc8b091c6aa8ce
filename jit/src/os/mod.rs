//! The operating-system interface of the jit: every system call it makes, behind one file per OS.
//!
//! `linux.rs` holds the memfd, the `PROT_NONE` reservation and the placeholders that keep
//! unmapped chunks reserved, `MAP_FIXED` chunk mappings, `madvise(MADV_DONTFORK)`, hole
//! punching, `mprotect` and the page size. Core serialization goes through the runtime's one
//! `membarrier` wrapper (`tramway_runtime::os`); this module only names the two commands the
//! jit uses. What the mappings are *for* (the W^X argument) is written in `code_memory`.
//!
//! A port to another OS is one new file with the same functions, selected here.

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub(crate) use self::linux::*;

#[cfg(not(target_os = "linux"))]
compile_error!(
    "tramway-jit needs Linux (memfd_create, MAP_FIXED over a PROT_NONE reservation, \
     fallocate hole punching, membarrier). A port is one new file, jit/src/os/<os>.rs, with the \
     functions of jit/src/os/linux.rs, selected in jit/src/os/mod.rs."
);
