//! JIT code the runtime knows about: registered code ranges, and **yielding code** (JIT code
//! that calls into the runtime and parks there).
//!
//! Trampolines never yield, so a task parked at a voluntary yield point holds no pointer into
//! them, and grace periods never look at parked tasks. A language runtime's compiled bodies
//! are different: they call helpers (allocation, I/O, a scheduler yield) that park, and the
//! body's frame, with a return address into the body, stays on the parked task's stack. A
//! grace period that ends at that park would let the body be freed under the task.
//!
//! # The algorithm
//!
//! 1. **Depth marks.** Every stretch of execution during which a task may park with a JIT
//!    frame on its stack runs at a raised *yielding-code depth*: [`in_yielding_code`] around a
//!    call into yielding JIT code from Rust, or around a runtime helper that JIT code calls
//!    and that may park, or [`yielding_code_enter`] / [`yielding_code_leave`] called by JIT
//!    code itself. The depth is a plain per-task counter, written only by its task and
//!    travelling with it between workers: no atomic read-modify-write, no fence.
//! 2. **Scan at park.** When a task reaches a voluntary yield point with depth > 0, it spills
//!    its callee-saved registers onto its stack and scans its own stack, from there up to the
//!    stack's base, for words inside registered code ranges ([`CodeRange`]; every `Jit`
//!    registers its reservation). The sorted words become the task's **code references**,
//!    published in the reader registry before its worker's cell changes (the ordinary
//!    voluntary switch-out). A voluntary yield point at depth 0 withdraws them. The entry is
//!    replaced only at the next park, so a resumed task keeps holding what its stack held
//!    until it parks again or ends. Cost: O(stack depth), once per park inside yielding code;
//!    nothing at parks outside it.
//! 3. **Ranged retirements.** A callback queued with its code range
//!    ([`GraceDomain::call_for_code`](crate::grace::GraceDomain::call_for_code); `tramway-jit`
//!    queues every code free that way) runs after a grace period *and* once no task's code
//!    references fall inside the range. At the end of each grace period the runtime reads
//!    every task's references and **holds back** the ranged callbacks they hit; the rest run.
//!    Held callbacks are checked again whenever some task's references change (it parked
//!    again elsewhere, left yielding code, or ended), without another grace period. Callbacks
//!    without a range keep plain Tasks semantics. A grace period costs O(workers + threads +
//!    holdouts + references), never O(all tasks): one task parked in a long-lived JIT frame
//!    (a runtime's main loop) holds back only the code its stack points into.
//!
//! # Why it is enough (the ordering argument)
//!
//! Let code range R be retired: the last site pointing into it was re-pointed, and then its
//! callback was queued, before a grace period G started. Claim: when G has ended and the
//! references read after it hit nothing in R, no task can execute R again.
//!
//! A task T that executes R after G must hold an address in R obtained before R was
//! unpublished (from a site load that precedes the swap, by the store-buffering argument in
//! the [`qs`] docs); by the contract on [`CodeRange::register`], such an address
//! lives only in T's registers and stack frames. Consider T at G's snapshot:
//! * **running** (on a worker): G waits until the worker switches. If T was inside R with a
//!   yielding frame, it switched out at a park with depth > 0, whose scan found R (registers
//!   spilled first) and whose publication precedes the cell store G observed (`Release` /
//!   `Acquire`), so G's read sees it; or it was switched out involuntarily (preempted, or a
//!   yield in a non-yielding section) and G waits for it as a holdout until it passes a
//!   voluntary yield point, i.e. a park, scanned as above, or a yield at depth 0, after which
//!   it holds no JIT frame (trampolines and non-yielding code are left before any park);
//! * **parked** at depth > 0: its entry, published at that park, is still there when G reads
//!   (entries change only at the task's next park, which scans again, or at its end): if T's
//!   stack holds R, G sees it;
//! * **parked** at depth 0, or not yet spawned: it holds nothing in R and cannot obtain it.
//!
//! After G, the set of tasks holding R only shrinks: R is reachable from no site, so a task
//! can only lose its R frames (return out of them), and every change to an entry happens at a
//! park that rescans. A recheck of held callbacks reads the entries again (under the same
//! lock the parking task published with, so the task's last execution of R happens-before the
//! free) and needs no new grace period.
//!
//! False retention (a stale word on a stack that happens to point into R) only delays a free
//! until that task parks again elsewhere or ends; it is bounded by the task's stack and never
//! unsafe.
//!
//! # Contract for JIT code that yields
//! - It parks only inside a raised depth (the marks above), never inside a
//!   [`non_yielding`](crate::non_yielding) section (hooks, trampolines).
//! - Code addresses live only in registers and stack frames, never in the heap (a heap word
//!   is not scanned).
//! - Its code is retired through a reclaimer that passes the range
//!   (`tramway_jit::Reclaim::defer_code`, which `GraceDomain` implements with
//!   [`call_for_code`](crate::grace::GraceDomain::call_for_code), or an open batch whose
//!   items carry their ranges:
//!   [`CallbackBatch::split_referenced`](crate::grace::CallbackBatch::split_referenced)).
//! - A task parked inside yielding code is never unwound: cancelled at shutdown, its stack is
//!   leaked (JIT frames have no unwind information), as for a preempted task.
//!
//! On a registered OS thread (which has no stack to scan at a park: it never parks in the
//! runtime's sense) a raised depth is a [`non_yielding`](crate::non_yielding) section: its
//! quiescent-state reports are ignored until the depth drops, so grace periods wait for it.

pub(crate) mod ranges;
mod scan;

pub use ranges::{CodeRange, MAX_CODE_RANGES};

pub(crate) use scan::{scan_own_stack, CodeRefs, RefSet};

use crate::primitive::AtomicU32;

use crate::qs;

/// Why a code range cannot be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodeRangeError {
    /// Every slot of the table is taken.
    #[error("too many registered code ranges (at most {max})")]
    TooMany {
        /// Slots in the table ([`MAX_CODE_RANGES`]).
        max: usize,
    },
    /// A range of length 0, at address 0, or past the end of the address space.
    #[error("a code range must be non-empty and inside the address space")]
    Empty,
}

/// Runs `f` at a raised yielding-code depth: while it runs, the calling task may park with JIT
/// frames on its stack, and its stack is scanned when it does (see the [module docs](self)).
///
/// Wrap calls into JIT code that may park (a compiled body that calls runtime helpers), or the
/// runtime helper JIT code calls that may park. Scopes nest. Outside a task it is a
/// [`non_yielding`](crate::non_yielding) section (a registered thread's quiescent-state reports
/// are ignored inside it). Cost: a load and two plain stores to the task's own counter; on
/// leaving, the depth is restored to its value on entry (an unbalanced C-ABI enter inside the
/// scope ends with it).
pub fn in_yielding_code<R>(f: impl FnOnce() -> R) -> R {
    let Some(depth) = qs::task_yielding_depth() else {
        return crate::non_yielding(f);
    };
    /// Leaves the scope even if `f` unwinds, restoring the depth it entered with.
    struct Leave(*const AtomicU32, u32);
    impl Drop for Leave {
        fn drop(&mut self) {
            // SAFETY: the task's own counter (see `qs::task_yielding_depth`), alive as long as
            // the task's stack; the task may have migrated meanwhile, the counter moved with it.
            qs::yielding_code_restore(unsafe { &*self.0 }, self.1);
        }
    }
    // SAFETY: as in `Leave::drop`.
    let prev = qs::yielding_code_enter(unsafe { &*depth });
    let _leave = Leave(depth, prev);
    f()
}

/// Raises the calling task's yielding-code depth; for JIT code to call (C ABI) before it may
/// park (see [`in_yielding_code`], which is the scoped form for Rust callers).
///
/// Every call must be balanced by a [`yielding_code_leave`] on the same task. Outside a task
/// it enters a non-yielding section, like [`in_yielding_code`]. It clobbers only what the C
/// ABI lets a callee clobber and never unwinds.
pub extern "C" fn yielding_code_enter() {
    match qs::task_yielding_depth() {
        Some(d) => {
            // SAFETY: the task's own counter (see `qs::task_yielding_depth`).
            qs::yielding_code_enter(unsafe { &*d });
        }
        None => qs::thread_non_yielding_enter(),
    }
}

/// Lowers the depth [`yielding_code_enter`] raised (C ABI, never unwinds). Unbalanced calls
/// saturate at 0.
pub extern "C" fn yielding_code_leave() {
    match qs::task_yielding_depth() {
        // SAFETY: as in `yielding_code_enter`.
        Some(d) => qs::yielding_code_leave(unsafe { &*d }),
        None => qs::thread_non_yielding_leave(),
    }
}

/// The calling task's yielding-code depth (0 outside a task or outside yielding code).
pub fn yielding_code_depth() -> u32 {
    qs::yielding_code_depth()
}

/// Whether `addr` lies in a registered code range.
pub fn is_registered_code(addr: usize) -> bool {
    ranges::contains(addr)
}
