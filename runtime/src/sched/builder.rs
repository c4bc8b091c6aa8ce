//! [`Builder`]: validated runtime configuration.

use super::runtime::Runtime;
use crate::error::BuildError;

/// Smallest accepted task stack (bytes). Below this, panics and formatting overflow.
pub const MIN_STACK_SIZE: usize = 16 * 1024;
/// Largest accepted task stack (bytes).
pub const MAX_STACK_SIZE: usize = 1 << 30;
/// Default task stack (bytes): address space only; pages are committed when touched.
pub const DEFAULT_STACK_SIZE: usize = 256 * 1024;

/// What a yield point does when it is reached inside a [`crate::non_yielding`] section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum YieldInNonYielding {
    /// Panic with a clear message (the default in debug builds). The panic unwinds the task
    /// and reaches its join handle.
    Panic,
    /// Perform the switch but record it as **involuntary**: the task becomes a holdout in the
    /// QS registry until it next passes a voluntary yield point (the default in release).
    RecordInvoluntary,
}

impl Default for YieldInNonYielding {
    fn default() -> Self {
        if cfg!(debug_assertions) {
            YieldInNonYielding::Panic
        } else {
            YieldInNonYielding::RecordInvoluntary
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) workers: usize,
    pub(crate) stack_size: usize,
    pub(crate) yield_mode: YieldInNonYielding,
    pub(crate) qs_reporting: bool,
    pub(crate) thread_name: String,
    pub(crate) preempt: Option<crate::preempt::PreemptConfig>,
}

/// Configures and builds a [`Runtime`].
#[derive(Clone, Debug)]
pub struct Builder {
    workers: Option<usize>,
    stack_size: usize,
    yield_mode: YieldInNonYielding,
    qs_reporting: bool,
    thread_name: String,
    preempt: Option<crate::preempt::PreemptConfig>,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            workers: None,
            stack_size: DEFAULT_STACK_SIZE,
            yield_mode: YieldInNonYielding::default(),
            qs_reporting: true,
            thread_name: "tramway-worker".into(),
            preempt: None,
        }
    }
}

impl Builder {
    /// Default configuration: one worker per available core, 256 KiB stacks.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of worker OS threads (default: `std::thread::available_parallelism`).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n);
        self
    }

    /// Usable stack size of each task in bytes (a guard page is added below it).
    /// Accepted range: [`MIN_STACK_SIZE`]..=[`MAX_STACK_SIZE`].
    pub fn stack_size(mut self, bytes: usize) -> Self {
        self.stack_size = bytes;
        self
    }

    /// Behaviour of a yield point inside a non-yielding section (see [`YieldInNonYielding`]).
    pub fn yield_in_non_yielding(mut self, mode: YieldInNonYielding) -> Self {
        self.yield_mode = mode;
        self
    }

    /// Prefix of worker thread names (`<prefix>-<index>`).
    pub fn thread_name(mut self, prefix: impl Into<String>) -> Self {
        self.thread_name = prefix.into();
        self
    }

    /// Turns on asynchronous preemption of JIT code: a task that has run JIT code inside a
    /// [`preemptible`](crate::preemptible) scope for `quantum` without switching is switched
    /// out at the instruction it is at, and becomes a grace-period holdout until its next
    /// voluntary yield point (see [`preempt`](crate::preempt) for the protocol and its rules).
    /// Off by default. [`build`](Self::build) fails with [`BuildError::Preempt`] where it
    /// cannot work.
    pub fn preempt(self, quantum: std::time::Duration) -> Self {
        self.preempt_with(crate::preempt::PreemptConfig::new(quantum))
    }

    /// [`preempt`](Self::preempt) with a full configuration (for example another signal).
    pub fn preempt_with(mut self, config: crate::preempt::PreemptConfig) -> Self {
        self.preempt = Some(config);
        self
    }

    /// Benchmark knob: turn QS reporting off (workers skip the cell updates). **Unsound** for
    /// grace periods ([`GraceDomain::new`](crate::grace::GraceDomain::new) refuses such a
    /// runtime); exists only to measure the cost of QS reporting. Not part of the API: only
    /// with the `unstable-bench-knobs` feature.
    #[cfg(any(test, feature = "unstable-bench-knobs"))]
    #[doc(hidden)]
    pub fn qs_reporting(mut self, on: bool) -> Self {
        self.qs_reporting = on;
        self
    }

    /// Validates the configuration and starts the workers.
    pub fn build(self) -> Result<Runtime, BuildError> {
        let workers = match self.workers {
            Some(0) => return Err(BuildError::ZeroWorkers),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        if !(MIN_STACK_SIZE..=MAX_STACK_SIZE).contains(&self.stack_size) {
            return Err(BuildError::StackSize {
                requested: self.stack_size,
                min: MIN_STACK_SIZE,
                max: MAX_STACK_SIZE,
            });
        }
        if let Some(preempt) = &self.preempt {
            preempt
                .validate(self.stack_size)
                .map_err(BuildError::Preempt)?;
        }
        Runtime::start(Config {
            workers,
            stack_size: self.stack_size,
            yield_mode: self.yield_mode,
            qs_reporting: self.qs_reporting,
            thread_name: self.thread_name,
            preempt: self.preempt,
        })
    }
}
