//! A reference-counted handle whose heap block is reused: [`Recycled`], the inside of a
//! `Trampoline`.
//!
//! # Algorithm
//! A [`Recycled<T>`] is an `Arc<T>` without the weak count: one heap block holds a strong
//! count and the value. What differs is the block's last step. When the last handle drops,
//! the value is moved out of the block onto the stack, the now empty block is handed to the
//! [`RecycleBin`] the value names ([`Recyclable::bin`]), and only then is the value dropped.
//! The next [`Recycled::new`] with that bin writes its value into the binned block instead of
//! allocating one. A bin holds one block (one atomic swap to put, one to take); a block that
//! finds the bin full replaces the binned one, which is deallocated. A patcher that retires
//! as fast as it emits therefore allocates no handle at all in its steady state: each
//! retirement's last drop bins the block the next emission takes. This saves the allocator's
//! malloc and free per trampoline (about 130 of 1200 instructions per retire under callgrind:
//! `benches/retire_path.rs`).
//!
//! The value is dropped *after* its block is binned because the bin may belong to what the
//! value keeps alive (a trampoline's value holds its `Jit`'s core, which owns the bin): while
//! the value lives, so does the bin. A bin that drops deallocates the block it holds.
//!
//! # Ordering
//! As `Arc`'s: a clone increments the count `Relaxed` (the new handle is made from one that
//! keeps the block alive, so nothing needs to be ordered); a drop decrements it `Release`, so
//! every use of the value through that handle happens before the decrement; the drop that
//! takes the count to zero issues an `Acquire` fence, so it sees every other handle's uses
//! before it moves the value out. The block's passage through the bin is ordered by the
//! bin's swap: the emptying thread is done with the block before its swap, and the taking
//! thread writes into it only after its own swap returned it.
//!
//! # Migration
//! Nothing here is thread-local: a handle, a block and a bin may move between threads (and a
//! green thread between workers) at any point.

use std::mem::{ManuallyDrop, MaybeUninit};
use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::atomic::{self, AtomicUsize, Ordering};

use crossbeam_utils::atomic::AtomicCell;

/// A value that names the bin its block goes back to (module docs: the value must keep that
/// bin alive).
pub(crate) trait Recyclable: Sized {
    /// The bin this value's block is returned to when its last handle drops.
    fn bin(&self) -> &RecycleBin<Self>;
}

/// The heap block behind a [`Recycled`] handle.
struct Block<T> {
    refs: AtomicUsize,
    value: T,
}

/// At most one empty block, kept for the next [`Recycled::new`] (module docs).
pub(crate) struct RecycleBin<T>(AtomicCell<Option<Box<MaybeUninit<Block<T>>>>>);

impl<T> Default for RecycleBin<T> {
    fn default() -> Self {
        RecycleBin(AtomicCell::new(None))
    }
}

impl<T> RecycleBin<T> {
    /// The binned block, or a newly allocated one.
    fn take(&self) -> Box<MaybeUninit<Block<T>>> {
        self.0.take().unwrap_or_else(Box::new_uninit)
    }

    /// Bins `block`, deallocating the one it replaces, if any.
    fn put(&self, block: Box<MaybeUninit<Block<T>>>) {
        drop(self.0.swap(Some(block)));
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
    /// A handle to `value`, in a block from `bin` if it holds one.
    pub(crate) fn new(value: T, bin: &RecycleBin<T>) -> Self {
        let mut block = bin.take();
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
        // SAFETY: the count reached zero, so this is the last handle and nothing else reads
        // the block (the fence orders every other handle's reads before this); the value is
        // moved out exactly once, and the block is treated as uninitialized after it.
        let value = ManuallyDrop::new(unsafe { std::ptr::read(&self.block.as_ref().value) });
        // SAFETY: the block came from `Box::leak` of a `Box<MaybeUninit<Block<T>>>` in
        // `new`, and its value was just moved out, so it is an empty block again.
        let block = unsafe { Box::from_raw(self.block.as_ptr().cast::<MaybeUninit<Block<T>>>()) };
        value.bin().put(block);
        // The value keeps its bin alive up to here (module docs).
        drop(ManuallyDrop::into_inner(value));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    use super::*;

    /// A value that counts its drops and owns (through an `Arc`) the bin it recycles into.
    struct Counted {
        home: Arc<Home>,
    }
    #[derive(Default)]
    struct Home {
        bin: RecycleBin<Counted>,
        drops: AtomicUsize,
    }
    impl Recyclable for Counted {
        fn bin(&self) -> &RecycleBin<Counted> {
            &self.home.bin
        }
    }
    impl Drop for Counted {
        fn drop(&mut self) {
            self.home.drops.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn the_value_drops_once_with_the_last_handle_and_its_block_is_reused() {
        let home = Arc::new(Home::default());
        let first = Recycled::new(Counted { home: home.clone() }, &home.bin);
        let block = first.block;
        let second = first.clone();
        assert!(Recycled::ptr_eq(&first, &second));
        drop(first);
        assert_eq!(home.drops.load(Ordering::Relaxed), 0);
        drop(second);
        assert_eq!(home.drops.load(Ordering::Relaxed), 1);
        let next = Recycled::new(Counted { home: home.clone() }, &home.bin);
        assert_eq!(next.block, block, "the binned block is reused");
        drop(next);
        assert_eq!(home.drops.load(Ordering::Relaxed), 2);
    }

    /// The last handle may hold the last reference to the bin's owner: the block must be
    /// binned while the owner lives (the owner checks, as it drops, that the bin holds it).
    #[test]
    fn the_last_handle_may_outlive_everything_else_that_owns_its_bin() {
        struct Owner {
            bin: RecycleBin<Owned>,
            dropped: Arc<AtomicUsize>,
        }
        impl Drop for Owner {
            fn drop(&mut self) {
                assert!(self.bin.0.take().is_some(), "the block was binned before");
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        struct Owned(Arc<Owner>);
        impl Recyclable for Owned {
            fn bin(&self) -> &RecycleBin<Owned> {
                &self.0.bin
            }
        }
        let dropped = Arc::new(AtomicUsize::new(0));
        let owner = Arc::new(Owner {
            bin: RecycleBin::default(),
            dropped: dropped.clone(),
        });
        let handle = Recycled::new(Owned(owner.clone()), &owner.bin);
        drop(owner);
        drop(handle);
        assert_eq!(
            dropped.load(Ordering::Relaxed),
            1,
            "the owner dropped with the value"
        );
    }

    #[test]
    fn handles_dropped_on_many_threads_drop_the_value_once() {
        let home = Arc::new(Home::default());
        for _ in 0..100 {
            let handle = Recycled::new(Counted { home: home.clone() }, &home.bin);
            std::thread::scope(|s| {
                for _ in 0..4 {
                    let mine = handle.clone();
                    s.spawn(move || drop(mine));
                }
            });
            drop(handle);
        }
        assert_eq!(home.drops.load(Ordering::Relaxed), 100);
    }
}
