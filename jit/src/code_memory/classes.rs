//! Size classes: which slot size an object of a given length gets.
//!
//! # Algorithm
//! The class sizes double from the backend's smallest slot (a power of two: a cache line, or
//! a page in fallback mode) while they are below the chunk size, and the last class is the
//! whole chunk (which need not be a power of two). An object of `len` bytes goes in the first
//! class that holds it, so its class index is computed, not searched: the number of doublings
//! from the smallest size to `len` rounded up to a power of two, `ceil(log2 len) -
//! log2 smallest` (0 for `len` up to the smallest size, the common case, tested first), capped
//! at the last class for a `len` that still fits a chunk: the same few instructions for any
//! length, where a search over the sizes took one step per class passed.

/// The slot sizes of one code memory, smallest first (module docs).
pub(super) struct SizeClasses {
    sizes: Box<[usize]>,
    /// `log2` of `sizes[0]`.
    smallest_shift: u32,
}

impl SizeClasses {
    /// The classes from `smallest` (a power of two below `chunk_size`) to `chunk_size`.
    pub(super) fn new(smallest: usize, chunk_size: usize) -> SizeClasses {
        assert!(
            smallest.is_power_of_two() && smallest < chunk_size,
            "the smallest slot is a power of two below the chunk size"
        );
        let mut sizes = Vec::new();
        let mut size = smallest;
        while size < chunk_size {
            sizes.push(size);
            size *= 2;
        }
        sizes.push(chunk_size);
        SizeClasses {
            sizes: sizes.into_boxed_slice(),
            smallest_shift: smallest.trailing_zeros(),
        }
    }

    /// The number of classes.
    pub(super) fn count(&self) -> usize {
        self.sizes.len()
    }

    /// The slot size of class `ci`.
    pub(super) fn size(&self, ci: usize) -> usize {
        self.sizes[ci]
    }

    /// The class of an object of `len` bytes, or `None` if it is larger than a chunk.
    #[inline]
    pub(super) fn of(&self, len: usize) -> Option<usize> {
        // Most code fits the smallest class: a trampoline is tens of bytes.
        if len <= self.sizes[0] {
            return Some(0);
        }
        // `ceil(log2 len)` for `len >= 2` is the bit width of `len - 1`, and above the smallest
        // size it is more than that size's `log2`.
        let ceil_log2 = usize::BITS - (len - 1).leading_zeros();
        let doublings = (ceil_log2 - self.smallest_shift) as usize;
        let last = self.sizes.len() - 1;
        if doublings < last {
            Some(doublings)
        } else {
            (len <= self.sizes[last]).then_some(last)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SizeClasses;

    /// The first class whose size holds `len`, by search: what `of` computes.
    fn searched(classes: &SizeClasses, len: usize) -> Option<usize> {
        classes.sizes.iter().position(|&size| size >= len)
    }

    #[test]
    fn the_computed_class_is_the_first_that_holds_the_length() {
        // A power-of-two chunk, one that is not, and the fallback's page-sized smallest slot.
        for (smallest, chunk) in [(64, 1 << 16), (64, 3 * 4096), (4096, 5 * 4096)] {
            let classes = SizeClasses::new(smallest, chunk);
            for len in 0..=2 * chunk + 1 {
                assert_eq!(
                    classes.of(len),
                    searched(&classes, len),
                    "len {len}, smallest {smallest}, chunk {chunk}"
                );
            }
            assert_eq!(classes.of(usize::MAX), None);
            assert_eq!(classes.size(classes.count() - 1), chunk);
        }
    }
}
