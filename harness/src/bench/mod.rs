//! Workload code shared by the criterion benches (`benches/strategies.rs`) and the
//! `bench-report` example, so that both measure exactly the same thing.
//!
//! * [`workload`]: the comparison itself. W caller tasks per worker call a hot target in
//!   bursts (yielding between bursts) while a patcher thread swaps the target's code at a
//!   fixed rate and retires the old code through one of several reclamation strategies.
//! * [`refcount`]: the per-trampoline reference-count strategy (a correct, non-strawman
//!   design; its safety argument is in the module docs).
//! * [`patcher`]: the patcher thread's per-strategy swap/retire/reclaim logic.
//! * [`histogram`]: a lock-free log-linear histogram for grace-period latencies.
//! * [`rounds`]: medians, ranges, the load average and CPU-time clocks for the interleaved-round
//!   benches.
//! * [`line_transfer`]: how long a cache line takes to move between two cores now (a host
//!   fact the cross-thread benches print beside their results).

pub mod histogram;
pub mod line_transfer;
pub mod patcher;
pub mod refcount;
pub mod rounds;
pub mod workload;
