//! The green-thread scheduler: M stackful tasks (corosensei coroutines with guard pages) on N
//! worker threads with work stealing. It reports every switch to the reader side
//! ([`qs`](crate::qs)) through named transitions and knows nothing else about grace periods.
//!
//! * `runtime.rs`, `builder.rs`: the user-facing handle and its configuration.
//! * `scheduler.rs`: state shared by the workers (queues, live tasks, idle workers, timers,
//!   the reader registry) and the identity of the calling worker thread.
//! * `worker.rs`: the scheduling loop and where switches are reported.
//! * `task.rs`: a task, its states and park protocol; the `Schedule` seam it uses.
//! * `api.rs`: what code inside a task calls (`yield_now`, `sleep`, `offline`, `current`).
//! * `join.rs`, `waiter.rs`, `timer.rs`, `overflow.rs`: join handles, parking a task or a
//!   thread, the timer heap, stack-overflow reports.

pub(crate) mod api;
pub(crate) mod builder;
pub(crate) mod join;
mod overflow;
pub(crate) mod runtime;
pub(crate) mod scheduler;
pub(crate) mod task;
mod timer;
pub(crate) mod waiter;
mod worker;

#[cfg(all(test, not(loom)))]
mod tests;
