//! Asynchronous preemption of JIT code: time-slicing tasks at any instruction of JIT code.
//!
//! Off by default ([`Builder::preempt`](crate::Builder::preempt)). This is what makes the
//! RCU Tasks question real: a task switched out *involuntarily* in the middle of a trampoline
//! still holds it, so only a grace period that treats it as a holdout until its next
//! voluntary yield point (the Tasks flavor) is safe; one that only forces every worker
//! through its scheduler (the Rude flavor) frees the trampoline under it.
//!
//! # Delivery
//!
//! A monitor thread (`tramway-preempt`) wakes every quantum and reads each worker's
//! quiescent-state cell. A worker whose cell is active and unchanged since the previous tick
//! has run the same task for a whole quantum: the monitor marks the worker's request flag
//! and sends its thread the preemption signal (`tgkill`; `SIGURG` by default). Tasks that
//! switch often never see a signal; idle or offline workers are inactive and skipped.
//!
//! # When the handler preempts
//!
//! The handler (`SA_SIGINFO | SA_ONSTACK | SA_RESTART`; a signal it did not request goes to
//! the handler installed before it) preempts only when all of these hold, and otherwise
//! returns having changed nothing (counted by reason in [`PreemptStats`]):
//! 1. the interrupted PC lies in registered JIT code ([`CodeRange`](crate::code::CodeRange); `tramway-jit`
//!    registers every `Jit`'s reservation) — never in Rust code, the stub, or the switch;
//! 2. a task is current on the worker, and it is not inside a
//!    [`non_yielding`](crate::non_yielding) section;
//! 3. the task is inside a [`preemptible`] scope. Rust frames *below* the JIT frame may hold
//!    a lock; if the task were preempted and another task on the same worker blocked on that
//!    lock, the worker would deadlock (the preempted task resumes only there). Go counts its
//!    own locks; Rust cannot. So the embedder declares where preemption is allowed, and
//!    promises that it holds no lock another task may take while inside the scope;
//! 4. the handler runs on an alternate signal stack (every thread std spawns has one), and
//!    the interrupted stack pointer lies in the task's stack with room for the red zone, the
//!    register save area and the extended-state area.
//!
//! # Injection and resumption
//!
//! The handler makes the interrupted code call an assembly stub (see `x86_64.rs`): it saves
//! the flags, every general register and the full extended state, and calls an entry that
//! switches the task out as an **involuntary** switch. The `qs` transition for that inserts
//! the task into the holdout set before its worker's cell changes, so Tasks grace periods
//! wait for it until its next voluntary yield point, with no change to the grace-period
//! engine. The task resumes **on the same worker** (its JIT frames may hold that thread's
//! thread-local addresses: LLVM caches them across calls), from that worker's queue of
//! preempted tasks, which it serves alternately with its other work (so a preempted task
//! neither starves nor goes first); it then restores everything and returns to the
//! interrupted instruction. Thread-local *contents* may change meanwhile (other tasks ran on
//! that worker): code inside a preemptible scope must not rely on them across instructions.
//!
//! # Cancellation, signals, limits
//!
//! A preempted task is never unwound: if the runtime shuts down while it is switched out, its
//! stack is leaked (JIT frames have no unwind information), like any task switched out
//! inside a non-yielding section. Interrupted system calls restart (`SA_RESTART`), except the
//! ones Linux never restarts (`poll`, `epoll_wait`, `select`, `nanosleep`...), which return
//! `EINTR` as they would for any signal: std retries them, other code must. Preemption is
//! refused with a typed [`PreemptError`] on targets other than x86-64 Linux, with user-space
//! shadow stacks (CET) enabled, and with task stacks below [`MIN_PREEMPTIBLE_STACK`].

mod handler;
mod monitor;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod x86_64;

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::time::Duration;

pub(crate) use handler::install;
pub(crate) use monitor::Monitor;

/// Smallest task stack accepted with preemption on (the save area alone can take 11 KB).
pub const MIN_PREEMPTIBLE_STACK: usize = 64 * 1024;

/// How a runtime preempts JIT code; see [`Builder::preempt`](crate::Builder::preempt).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PreemptConfig {
    /// How long a task may run JIT code before it is preempted (the monitor's tick).
    pub quantum: Duration,
    /// The signal the monitor sends (default `SIGURG`). A handler installed before for the
    /// same signal still gets the signals the runtime did not send.
    pub signal: i32,
}

impl PreemptConfig {
    /// Preemption every `quantum`, with `SIGURG`.
    pub fn new(quantum: Duration) -> Self {
        PreemptConfig {
            quantum,
            signal: libc::SIGURG,
        }
    }

    /// Uses `signal` instead of `SIGURG`.
    #[must_use]
    pub fn signal(mut self, signal: i32) -> Self {
        self.signal = signal;
        self
    }
}

/// Why a runtime cannot preempt; see [`Builder::preempt`](crate::Builder::preempt).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PreemptError {
    /// Only x86-64 Linux is supported, and the CPU must support `XSAVE`.
    #[error("preemption is not supported here: {0}")]
    Unsupported(&'static str),
    /// User-space shadow stacks (CET) are enabled: the injected return would fault.
    #[error("preemption is refused with user-space shadow stacks (CET) enabled")]
    ShadowStack,
    /// Task stacks are too small for the register save area.
    #[error("task stacks of {size} bytes are too small for preemption (at least {min})")]
    StackTooSmall {
        /// The configured stack size.
        size: usize,
        /// [`MIN_PREEMPTIBLE_STACK`].
        min: usize,
    },
    /// The signal cannot be caught, or is used for faults.
    #[error("signal {0} cannot be used for preemption")]
    InvalidSignal(i32),
    /// The quantum is zero.
    #[error("the preemption quantum must be positive")]
    ZeroQuantum,
}

impl PreemptConfig {
    /// Checks the configuration and the platform; sets up the save area.
    pub(crate) fn validate(&self, stack_size: usize) -> Result<(), PreemptError> {
        if self.quantum.is_zero() {
            return Err(PreemptError::ZeroQuantum);
        }
        if matches!(
            self.signal,
            libc::SIGKILL
                | libc::SIGSTOP
                | libc::SIGSEGV
                | libc::SIGBUS
                | libc::SIGILL
                | libc::SIGFPE
                | libc::SIGTRAP
        ) || !(1..libc::SIGRTMAX()).contains(&self.signal)
        {
            return Err(PreemptError::InvalidSignal(self.signal));
        }
        if stack_size < MIN_PREEMPTIBLE_STACK {
            return Err(PreemptError::StackTooSmall {
                size: stack_size,
                min: MIN_PREEMPTIBLE_STACK,
            });
        }
        platform_ready()
    }
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn platform_ready() -> Result<(), PreemptError> {
    if x86_64::shadow_stack_enabled() {
        return Err(PreemptError::ShadowStack);
    }
    x86_64::init().map(drop).map_err(PreemptError::Unsupported)
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn platform_ready() -> Result<(), PreemptError> {
    Err(PreemptError::Unsupported("only x86-64 Linux"))
}

/// Runs `f` in a preemptible scope: while the calling task runs JIT code inside it, the
/// runtime may switch the task out at any instruction (if preemption is on; see the
/// [module docs](self)). The caller promises to hold no lock another task may take while
/// inside the scope, and not to rely on thread-local *contents* across JIT instructions.
/// Scopes nest. Outside a task it just runs `f`.
pub fn preemptible<R>(f: impl FnOnce() -> R) -> R {
    crate::qs::preemptible(f)
}

/// A runtime's preemption state (`Scheduler::preempt`, `Some` with preemption on).
#[derive(Debug)]
pub(crate) struct PreemptState {
    pub(crate) config: PreemptConfig,
    /// One per worker, by index.
    pub(crate) slots: Box<[PreemptSlot]>,
    pub(crate) counters: PreemptCounters,
    pub(crate) monitor: Monitor,
}

impl PreemptState {
    pub(crate) fn new(config: PreemptConfig, workers: usize) -> Self {
        PreemptState {
            config,
            slots: (0..workers).map(|_| PreemptSlot::default()).collect(),
            counters: PreemptCounters::default(),
            monitor: Monitor::default(),
        }
    }
}

/// Test knobs (not part of the API; only with the `unstable-bench-knobs` feature).
#[cfg(feature = "unstable-bench-knobs")]
#[doc(hidden)]
pub mod testing {
    /// Makes every later preemption use a deliberately broken stub that does not skip the
    /// red zone: the register-preservation test's control, which must catch it.
    pub fn use_stub_without_red_zone_skip(yes: bool) {
        super::x86_64::USE_STUB_WITHOUT_RED_ZONE_SKIP
            .store(yes, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Per-worker state of the preemption protocol.
#[derive(Debug, Default)]
pub(crate) struct PreemptSlot {
    /// The worker's thread id (`gettid`), 0 until the worker runs.
    pub(crate) tid: AtomicI32,
    /// Set by the monitor before it signals the worker; the handler takes it.
    pub(crate) requested: AtomicBool,
}

/// Counters of a runtime's preemption (all zero with preemption off).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PreemptStats {
    /// Signals the monitor sent.
    pub signals_sent: u64,
    /// Tasks switched out by preemption.
    pub preemptions: u64,
    /// Signals that found the worker outside registered JIT code (Rust code, the runtime).
    pub ignored_outside_code: u64,
    /// Signals that found no task running (the worker was switching or idle).
    pub ignored_no_task: u64,
    /// Signals that found the task inside a non-yielding section (a hook).
    pub ignored_non_yielding: u64,
    /// Signals that found the task outside any preemptible scope.
    pub ignored_no_scope: u64,
    /// Signals that found too little room on the task's stack (or no alternate signal stack).
    pub ignored_no_stack_room: u64,
}

/// The counters behind [`PreemptStats`] (relaxed atomics, updated from the signal handler).
#[derive(Debug, Default)]
pub(crate) struct PreemptCounters {
    pub(crate) signals_sent: AtomicU64,
    pub(crate) preemptions: AtomicU64,
    pub(crate) ignored_outside_code: AtomicU64,
    pub(crate) ignored_no_task: AtomicU64,
    pub(crate) ignored_non_yielding: AtomicU64,
    pub(crate) ignored_no_scope: AtomicU64,
    pub(crate) ignored_no_stack_room: AtomicU64,
}

impl PreemptCounters {
    pub(crate) fn snapshot(&self) -> PreemptStats {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        PreemptStats {
            signals_sent: l(&self.signals_sent),
            preemptions: l(&self.preemptions),
            ignored_outside_code: l(&self.ignored_outside_code),
            ignored_no_task: l(&self.ignored_no_task),
            ignored_non_yielding: l(&self.ignored_non_yielding),
            ignored_no_scope: l(&self.ignored_no_scope),
            ignored_no_stack_room: l(&self.ignored_no_stack_room),
        }
    }
}
