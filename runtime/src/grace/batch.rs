//! Open callback batches: many deferred items for the price of one callback.
//!
//! # Algorithm
//!
//! An updater that defers many small items (a JIT freeing one code slot per swap) would pay
//! one boxed callback per item, allocated on its thread and freed on the driver. An open
//! batch instead collects items under its owner's own lock:
//!
//! 1. the first item pushed into an empty batch queues the batch once, with
//!    [`GraceDomain::call_batch`](super::GraceDomain::call_batch); later items only join it;
//! 2. when a GP is **claimed** (under the engine's state lock, before its heavy barrier and
//!    its reader snapshot), the engine calls [`CallbackBatch::seal`] on every batch the GP
//!    takes: the batch moves its items out of the owner's shared state, and an item pushed
//!    after that starts a new batch, which queues itself for a later GP;
//! 3. after the GP, items whose code a parked task's stack references are split off and held
//!    ([`CallbackBatch::split_referenced`], the same check as for ranged callbacks: see
//!    [`code`](crate::code)), and the rest run ([`CallbackBatch::run`]).
//!
//! # Ordering
//!
//! An item is pushed after its updater unpublished what the item frees (program order), and
//! the push and the seal are ordered by the owner's lock. So every item of a sealed batch
//! was pushed, and its code unpublished, before the GP that sealed it was claimed: exactly
//! the guarantee of a callback queued before its GP starts (`driver.rs`: claiming takes the
//! pending callbacks under the same lock, so the updates happen-before the GP's heavy
//! barrier). An item that misses a seal is in the next batch, which is queued by whoever
//! pushed its first item and sealed by a later claim.
//!
//! Lock order: the engine's state lock, then the owner's lock (in `seal`). An owner never
//! calls into the domain while it holds its own lock.

/// A batch of deferred items that stays open to more items until the grace period that
/// covers it is claimed (the [module docs](self) give the algorithm and its ordering).
///
/// Implemented by the owner of the items (the JIT crate's code frees); queued with
/// [`GraceDomain::call_batch`](super::GraceDomain::call_batch). A panic in any method is
/// caught and logged; a batch that panicked in `seal`, `split_referenced` or `is_empty` is
/// leaked (never run, never dropped, nor is the part it split off), one that panicked in `run`
/// is counted as a panicked callback.
pub trait CallbackBatch: Send + 'static {
    /// Closes the batch: once this returns, no item may join it (new items go to a batch
    /// queued afterwards). Called exactly once per queued batch, under the grace domain's
    /// state lock, before the GP that covers the batch snapshots its readers: it must be
    /// short and must not call into the domain.
    fn seal(&mut self);

    /// Moves the items whose code `referenced(start, end)` reports as referenced by a parked
    /// task into a new, sealed batch and returns it (to be held back and rechecked), or
    /// `None` when no item is referenced. Called after the GP, possibly again on the
    /// returned batch at each recheck. Items without code are never referenced.
    fn split_referenced(
        &mut self,
        referenced: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Option<Box<dyn CallbackBatch>>;

    /// Whether no item is left in the batch, asked only after [`split_referenced`] moved
    /// items out: an emptied batch is dropped, not run, so that `GraceStats::callbacks_run`
    /// counts a batch held back whole once (as its held part), not an empty part as well. It
    /// is dropped where the split happens: on the driver, or on an OS thread that runs the
    /// grace period inline. The default, `false`, keeps every part.
    ///
    /// [`split_referenced`]: CallbackBatch::split_referenced
    fn is_empty(&self) -> bool {
        false
    }

    /// Runs (frees) every item, on the domain's driver thread, after the GP and once no
    /// parked task references the items' code.
    fn run(self: Box<Self>);
}
