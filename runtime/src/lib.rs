//! tramway-runtime: green threads whose yield points are quiescent states, and the
//! tasks-style grace periods built on them.
//!
//! * [`Runtime`] runs M green threads (stackful corosensei coroutines with guard pages) on N
//!   worker threads with work stealing.
//! * Inside tasks: [`yield_now`], [`sleep`], [`current`], [`non_yielding`], [`offline`],
//!   [`Event`], [`channel`], [`JoinHandle::join`]. Each wait is a voluntary yield point, a
//!   quiescent state. Outside tasks the same calls block the OS thread.
//! * [`qs`]: the reader side (who may be inside JIT code; the ordering argument) and
//!   [`ThreadRegistration`] for OS threads.
//! * [`grace`]: grace periods ([`grace::GraceDomain`]): synchronize, deferred callbacks,
//!   barrier, polled cookies, stall reports.
//! * [`code`]: registered JIT code ranges, and JIT code that yields ([`in_yielding_code`]):
//!   tasks parked inside it are scanned, and code their stacks point into is held back.
//!
//! Stack overflow: each task stack has a guard page. Touching it raises `SIGSEGV`; the
//! runtime's handler prints `task <id> ('<name>') has overflowed its stack` and the process
//! dies with `SIGSEGV`, as with an OS-thread overflow: unwinding from a guard-page fault is
//! not sound in general, so it is not attempted.
//!
//! Migration: a task may resume on a different worker after any yield point. Do not keep
//! values bound to an OS thread across yield points: references into thread-locals (the
//! compiler may compute a thread-local's address once and reuse it after the task moved, so
//! read thread-locals through a function that is not inlined across the yield point, or keep
//! per-task state in the task), held `std::sync::MutexGuard`s, `Rc`s shared with
//! thread-locals. The runtime itself reads its thread-locals through `#[inline(never)]`
//! accessors so that no thread-local address is kept across a switch.
//!
//! Reader contexts: only green threads and registered OS threads
//! ([`Runtime::register_thread`]) may call JIT patch sites. An unregistered thread is
//! invisible to grace periods. A thread holds at most one registration at a time.
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

pub mod code;
pub mod error;
pub mod grace;
#[doc(hidden)]
pub mod os;
pub mod preempt;
mod primitive;
pub mod qs;
mod sched;
pub mod sync;

pub use code::in_yielding_code;
pub use error::{
    BuildError, DomainError, JoinError, PanicPayload, RecvError, RegisterError, SendError,
    SpawnError, TryRecvError,
};
pub use preempt::preemptible;
pub use qs::{barrier_mode, non_yielding, BarrierMode, ThreadRegistration};
pub use sched::api::{current, offline, sleep, yield_now, TaskInfo};
pub use sched::builder::{
    Builder, YieldInNonYielding, DEFAULT_STACK_SIZE, MAX_STACK_SIZE, MIN_STACK_SIZE,
};
pub use sched::join::JoinHandle;
pub use sched::runtime::{BlockOnError, Runtime, RuntimeStats, WorkerStats};
pub use sync::channel::{channel, Receiver, Sender};
pub use sync::event::Event;
