//! A reference-counted handle whose heap block is reused: [`Recycled`], the inside of a
//! `Trampoline`.
//!
//! # Algorithm
//! A [`Recycled<T>`] is an `Arc<T>` without the weak count: one heap block holds a strong
//! count and the value. What differs is the block's last step. When the last handle drops,
//! the value is moved out of the block, the now empty block is put into the dropping thread's
//! [`RecycleBin`] for `T` ([`Recyclable::bin`], a thread-local), and the value is dropped.
//! The next [`Recycled::new`] on that thread writes its value into the binned block instead
//! of allocating one. A bin holds one block; a block that finds it full is deallocated. A
//! patcher that retires as fast as it emits therefore allocates no handle at all in its
//! steady state: each retirement's last drop bins the block the next emission takes. This
//! saves the allocator's malloc and free per trampoline (about 140 of 1250 instructions per
//! retire under callgrind: `benches/retire_path.rs`). The bin is a thread-local, so taking
//! and putting a block are plain moves; and a bin that belongs to no `Jit` cannot outlive
//! or be outlived by one.
//!
//! A block is plain memory of `Block<T>`'s layout, owned by whichever thread holds it: one
//! allocated on one thread may be binned and reused on another, and a bin deallocates its
//! block when its thread exits. While a thread's locals are being destroyed, its bin is gone:
//! `new` then allocates and the last drop deallocates, as `Arc` does.
//!
//! # Ordering
//! As `Arc`'s: a clone increments the count `Relaxed` (the new handle is made from one that
//! keeps the block alive, so nothing needs to be ordered); a drop decrements it `Release`, so
//! every use of the value through that handle happens before the decrement; the drop that
//! takes the count to zero issues an `Acquire` fence, so it sees every other handle's uses
//! before it moves the value out. From then on the block is the dropping thread's alone.
//!
//! # Migration
//! Each bin access is one `LocalKey::try_with` that moves the block in or out; no address of
//! a thread-local is kept, so a green thread that migrates between a `new` and a drop (or
//! between any two accesses) uses the bin of the worker it runs on at each access.

use std::cell::Cell;
use std::mem::MaybeUninit;
use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::atomic::{self, AtomicUsize, Ordering};
use std::thread::LocalKey;

/// A value whose handle blocks are recycled through a thread-local bin.
pub(crate) trait Recyclable: Sized + 'static {
    /// This thread's bin for blocks of `Self` (declare it with `thread_local!` and
    /// `RecycleBin::new()`).
    fn bin() -> &'static LocalKey<RecycleBin<Self>>;
}

/// The heap block behind a [`Recycled`] handle.
struct Block<T> {
    refs: AtomicUsize,
    value: T,
}

/// An empty block.
type EmptyBlock<T> = Box<MaybeUninit<Block<T>>>;

/// At most one empty block, kept for the next [`Recycled::new`] on this thread (module docs).
pub(crate) struct RecycleBin<T>(Cell<Option<EmptyBlock<T>>>);

impl<T> RecycleBin<T> {
    /// An empty bin (`const`, for a `thread_local!` initializer).
    pub(crate) const fn new() -> Self {
        RecycleBin(Cell::new(None))
    }
}

impl<T: Recyclable> RecycleBin<T> {
    /// This thread's binned block, or a newly allocated one.
    #[inline(always)]
    fn take() -> EmptyBlock<T> {
        T::bin()
            .try_with(|bin| bin.0.take())
            .ok()
            .flatten()
            .unwrap_or_else(Box::new_uninit)
    }

    /// Bins `block` on this thread, deallocating the block it replaces; deallocates `block`
    /// itself if this thread's bin is gone.
    fn put(block: EmptyBlock<T>) {
        let _ = T::bin().try_with(move |bin| drop(bin.0.replace(Some(block))));
    }
}

/// A shared handle to a `T` (module docs). Clone it to share; the value drops with the last
/// handle.
pub(crate) struct Recycled<T: Recyclable> {
    block: NonNull<Block<T>>,
}

// SAFETY: as for `Arc<T>`: the handle gives shared access to the value from any thread
// (`Sync` needed) and the last handle, on any thread, drops the value (`Send` needed).
unsafe impl<T: Recyclable + Send + Sync> Send for Recycled<T> {}
// SAFETY: as above; `&Recycled<T>` only gives `&T` and clones.
unsafe impl<T: Recyclable + Send + Sync> Sync for Recycled<T> {}

impl<T: Recyclable> Recycled<T> {
    /// A handle to `value`, in this thread's binned block if there is one. Inlined so that
    /// the value is built in the block rather than copied into it.
    #[inline(always)]
    pub(crate) fn new(value: T) -> Self {
        let mut block = RecycleBin::<T>::take();
        block.write(Block {
            refs: AtomicUsize::new(1),
            value,
        });
        Recycled {
            block: NonNull::from(Box::leak(block)).cast(),
        }
    }

    /// Whether both handles share one value.
    pub(crate) fn ptr_eq(this: &Self, other: &Self) -> bool {
        this.block == other.block
    }

    fn block(&self) -> &Block<T> {
        // SAFETY: the block stays initialized while any handle exists: this one holds a count,
        // and only the drop that takes the count to zero moves the value out.
        unsafe { self.block.as_ref() }
    }
}

impl<T: Recyclable> Deref for Recycled<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.block().value
    }
}

impl<T: Recyclable> Clone for Recycled<T> {
    fn clone(&self) -> Self {
        let old = self.block().refs.fetch_add(1, Ordering::Relaxed);
        // As `Arc`: a count this high means handles are being leaked in a loop; wrapping
        // it would free the value under live handles.
        if old > isize::MAX as usize {
            std::process::abort();
        }
        Recycled { block: self.block }
    }
}

impl<T: Recyclable> Drop for Recycled<T> {
    fn drop(&mut self) {
        if self.block().refs.fetch_sub(1, Ordering::Release) != 1 {
            return;
        }
        atomic::fence(Ordering::Acquire);
        // SAFETY: the count reached zero, so this is the last handle and nothing else touches
        // the block (the fence orders every other handle's accesses, reads and writes, before
        // this); the value is moved out exactly once, and the block is treated as
        // uninitialized after it.
        let value = unsafe { std::ptr::read(&self.block.as_ref().value) };
        // SAFETY: the block came from `Box::leak` of an `EmptyBlock<T>` in `new`, and its
        // value was just moved out, so it is an empty block again.
        let block = unsafe { Box::from_raw(self.block.as_ptr().cast::<MaybeUninit<Block<T>>>()) };
        RecycleBin::<T>::put(block);
        drop(value);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    use super::*;

    /// A value that counts its drops.
    struct Counted(Arc<AtomicUsize>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
    std::thread_local! {
        static COUNTED_BIN: RecycleBin<Counted> = const { RecycleBin::new() };
    }
    impl Recyclable for Counted {
        fn bin() -> &'static LocalKey<RecycleBin<Counted>> {
            &COUNTED_BIN
        }
    }

    #[test]
    fn the_value_drops_once_with_the_last_handle_and_its_block_is_reused() {
        let drops = Arc::new(AtomicUsize::new(0));
        let first = Recycled::new(Counted(drops.clone()));
        let block = first.block;
        let second = first.clone();
        assert!(Recycled::ptr_eq(&first, &second));
        drop(first);
        assert_eq!(drops.load(Ordering::Relaxed), 0);
        drop(second);
        assert_eq!(drops.load(Ordering::Relaxed), 1);
        let next = Recycled::new(Counted(drops.clone()));
        assert_eq!(next.block, block, "the binned block is reused");
        assert!(!Recycled::ptr_eq(
            &next,
            &Recycled::new(Counted(drops.clone()))
        ));
        drop(next);
        assert_eq!(drops.load(Ordering::Relaxed), 3);
    }

    /// Handles dropped on other threads (which bin or deallocate the block there, and whose
    /// bins deallocate theirs at exit: checked for leaks under valgrind) drop the value once.
    #[test]
    fn handles_dropped_on_many_threads_drop_the_value_once() {
        let drops = Arc::new(AtomicUsize::new(0));
        for _ in 0..100 {
            let handle = Recycled::new(Counted(drops.clone()));
            std::thread::scope(|s| {
                for _ in 0..4 {
                    let mine = handle.clone();
                    s.spawn(move || drop(mine));
                }
            });
            drop(handle);
        }
        assert_eq!(drops.load(Ordering::Relaxed), 100);
    }
}
