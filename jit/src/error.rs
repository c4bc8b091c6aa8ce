//! The crate's error type.
//!
//! Every failure that user input or the operating system can cause is reported as a [`JitError`];
//! the crate does not panic on user input.

use std::io;

/// Errors returned by [`Jit`](crate::Jit), [`Site`](crate::Site) and trampoline construction.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JitError {
    /// The emitted body is larger than one chunk, the largest object the allocator can place.
    #[error("code of {len} bytes does not fit in a chunk of {max} bytes")]
    CodeTooLarge {
        /// Length of the emitted code in bytes.
        len: usize,
        /// Largest object size (the chunk size) in bytes.
        max: usize,
    },
    /// Every chunk-sized piece of the reserved code range is in use.
    #[error("code space exhausted: all {reservation} reserved bytes are mapped")]
    CodeSpaceExhausted {
        /// Size of the reservation in bytes.
        reservation: usize,
    },
    /// A direct site cannot reach the target from its entry (its jump's displacement is
    /// bounded; see the architecture's docs).
    #[error("target {target:#x} is out of the direct-jump range of site {site:#x}")]
    TargetOutOfRange {
        /// Address of the site's entry.
        site: usize,
        /// Address of the target.
        target: usize,
    },
    /// The trampoline has been retired (swapped out of its last site) and may not be installed again.
    #[error("trampoline {id} is retired")]
    Retired {
        /// Id of the retired trampoline.
        id: u64,
    },
    /// The trampoline belongs to another [`Jit`](crate::Jit).
    #[error("trampoline {id} belongs to another Jit")]
    ForeignTrampoline {
        /// Id of the foreign trampoline.
        id: u64,
    },
    /// A forwarding target address was null.
    #[error("forwarding target is a null pointer")]
    NullTarget,
    /// The platform or the current mode cannot do what was asked.
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    /// A builder parameter is invalid.
    #[error("invalid configuration: {0}")]
    InvalidConfig(&'static str),
    /// A system call failed.
    #[error("{op} failed: {source}")]
    Os {
        /// The operation that failed (the system call's name).
        op: &'static str,
        /// The error the operating system reported.
        #[source]
        source: io::Error,
    },
    /// The assembler reported an error (for example an impossible relocation).
    #[error("assembler error: {0}")]
    Assemble(String),
    /// The runtime's table of registered code ranges is full
    /// ([`tramway_runtime::code::MAX_CODE_RANGES`] live `Jit`s): a `Jit` whose code the runtime
    /// does not know could be neither preempted in nor scanned for, so none is built.
    #[error("cannot register the Jit's code with the runtime: {0}")]
    CodeRange(#[from] tramway_runtime::code::CodeRangeError),
    /// The emit closure produced a different length at the final address than at the provisional one.
    #[error("emitted length changed from {first} to {second} bytes between the sizing and the final pass")]
    EmitLengthChanged {
        /// Length of the sizing pass.
        first: usize,
        /// Length of the final pass.
        second: usize,
    },
}

impl JitError {
    /// Wraps the current `errno` as [`JitError::Os`].
    pub(crate) fn last_os(op: &'static str) -> Self {
        JitError::Os {
            op,
            source: io::Error::last_os_error(),
        }
    }
}
