//! Stack-overflow reporting for task stacks (placeholder, filled in below).

/// Installs the SIGSEGV reporter once per process.
pub(crate) fn install() {}
