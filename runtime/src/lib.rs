//! tramway-runtime: green threads whose yield points are quiescent states, and the
//! tasks-style grace periods built on them.
//!
//! * [`Runtime`] runs M green threads (stackful corosensei coroutines with guard pages) on N
//!   worker threads with work stealing; see `worker.rs` for the scheduler and the QS protocol.
//! * Inside tasks: [`yield_now`], [`sleep`], [`current`], [`non_yielding`], [`offline`],
//!   [`Event`], [`channel`], [`JoinHandle::join`]. Each wait is a voluntary yield point, a
//!   quiescent state. Outside tasks the same calls block the OS thread.
//! * [`qs`] and [`fence`] are what grace periods read.
//!
//! Stack overflow: each task stack has a guard page. Touching it raises `SIGSEGV`; the
//! runtime's handler (see `overflow.rs`) prints `task <id> ('<name>') has overflowed its
//! stack` and the process dies with `SIGSEGV`, as with an OS-thread overflow: unwinding from
//! a guard-page fault is not sound in general, so it is not attempted.
//!
//! Migration: a task may resume on a different worker after any yield point. Do not keep
//! values bound to an OS thread across yield points (references into thread-locals, held
//! `std::sync::MutexGuard`s, `Rc`s shared with thread-locals). The runtime itself reads its
//! thread-locals through `#[inline(never)]` accessors so that no TLS address is cached across
//! a switch.
//!
//! Reader contexts: only green threads and registered OS threads
//! ([`Runtime::register_thread`]) may call JIT patch sites. An unregistered thread is
//! invisible to grace periods. A thread holds at most one registration at a time.
#![warn(missing_docs)]

#[doc(hidden)]
pub mod bench_support;
mod builder;
mod context;
pub mod error;
pub mod fence;
pub mod grace;
mod join;
#[doc(hidden)]
pub mod os;
mod overflow;
mod primitive;
pub mod qs;
mod runtime;
mod scheduler;
pub mod sync;
mod task;
mod thread_reg;
mod timer;
mod worker;

pub use builder::{
    Builder, YieldInNonYielding, DEFAULT_STACK_SIZE, MAX_STACK_SIZE, MIN_STACK_SIZE,
};
pub use context::{current, non_yielding, offline, sleep, yield_now, TaskInfo};
pub use error::{
    BuildError, JoinError, RecvError, RegisterError, SendError, SpawnError, TryRecvError,
};
pub use join::JoinHandle;
pub use runtime::{BlockOnError, Runtime, RuntimeStats, WorkerStats};
pub use sync::channel::{channel, Receiver, Sender};
pub use sync::event::Event;
pub use thread_reg::ThreadRegistration;

#[allow(unused_imports)] // used by the grace-period engine
pub(crate) use context::in_task;
#[allow(unused_imports)] // used by the grace-period engine
pub(crate) use thread_reg::current_thread_qs;
