//! The stack scan of a task parking inside yielding code, and the sets grace periods check
//! ranged callbacks against (the algorithm is in the [module docs](super)).

use super::ranges;

/// What a parked task's stack may point into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CodeRefs {
    /// The words of its stack (and spilled callee-saved registers) that lie in registered
    /// code ranges, sorted and deduplicated.
    Words(Box<[usize]>),
    /// Unknown (no scan on this architecture): hold every ranged callback.
    #[cfg_attr(target_arch = "x86_64", allow(dead_code))]
    Everything,
}

/// The union of every parked task's code references, as a grace period checks them.
#[derive(Debug, Default)]
pub(crate) struct RefSet {
    words: Vec<usize>,
    everything: bool,
}

impl RefSet {
    /// Merges the references of every parked task.
    pub(crate) fn union<'a>(refs: impl IntoIterator<Item = &'a CodeRefs>) -> RefSet {
        let mut set = RefSet::default();
        for r in refs {
            match r {
                CodeRefs::Words(w) => set.words.extend_from_slice(w),
                CodeRefs::Everything => set.everything = true,
            }
        }
        set.words.sort_unstable();
        set.words.dedup();
        set
    }

    /// Whether some reference lies in `start..end`.
    pub(crate) fn hits(&self, start: usize, end: usize) -> bool {
        if self.everything {
            return true;
        }
        let i = self.words.partition_point(|&w| w < start);
        self.words.get(i).is_some_and(|&w| w < end)
    }

    /// Whether the set holds nothing back.
    pub(crate) fn is_empty(&self) -> bool {
        !self.everything && self.words.is_empty()
    }
}

/// Scans the calling task's own stack, from this frame up to `stack_base` (the highest
/// address of its stack), for words inside registered code ranges, after spilling the
/// callee-saved registers into this frame (a JIT caller may keep a code address in one).
/// Call only on the task's own stack, at a voluntary yield point.
#[cfg(target_arch = "x86_64")]
#[inline(never)]
pub(crate) fn scan_own_stack(stack_base: usize) -> CodeRefs {
    let ranges = ranges::snapshot();
    if ranges.is_empty() {
        return CodeRefs::Words(Box::new([]));
    }
    let mut spill = [0usize; 6];
    // SAFETY: stores the six callee-saved registers (their values, unchanged) into `spill`, a
    // local array of six words; no other memory is touched and no register is modified.
    unsafe {
        std::arch::asm!(
            "mov [{p}], rbx",
            "mov [{p} + 8], rbp",
            "mov [{p} + 16], r12",
            "mov [{p} + 24], r13",
            "mov [{p} + 32], r14",
            "mov [{p} + 40], r15",
            p = in(reg) spill.as_mut_ptr(),
            options(nostack, preserves_flags)
        );
    }
    let mut found: Vec<usize> = spill
        .iter()
        .copied()
        .filter(|&w| in_ranges(&ranges, w))
        .collect();
    // Every caller frame lies above this one, up to the base. Words below `spill` belong to
    // this function and to nothing the task will return into.
    let from = (std::hint::black_box(spill.as_ptr()) as usize + spill.len() * 8 + 7) & !7;
    // The hull of all ranges filters the words in a tight loop; candidates get the exact check.
    let lo = ranges.iter().map(|r| r.0).min().unwrap_or(0);
    let hi = ranges.iter().map(|r| r.1).max().unwrap_or(0);
    let mut p = from;
    loop {
        // SAFETY: `[p, stack_base)` is the part of the calling task's own stack above this
        // frame: mapped and readable; `p` and `stack_base` are 8-aligned.
        p = unsafe { next_candidate(p, stack_base & !7, lo, hi - lo) };
        if p >= stack_base & !7 {
            break;
        }
        // SAFETY: as above; `p` is a word of that range.
        let word = unsafe { load_word(p) };
        if in_ranges(&ranges, word) {
            found.push(word);
        }
        p += 8;
    }
    found.sort_unstable();
    found.dedup();
    CodeRefs::Words(found.into_boxed_slice())
}

/// Without a scan for this architecture, a task parked in yielding code holds everything.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn scan_own_stack(_stack_base: usize) -> CodeRefs {
    CodeRefs::Everything
}

/// The address of the first word in `[p, end)` whose value lies in `[lo, lo + span)`, or
/// `end`. Written in assembly so that reading stack bytes Rust may consider uninitialised
/// (padding, dead slots) is not undefined behaviour: the scan is conservative by design.
///
/// # Safety
/// `[p, end)` must be mapped and readable, both 8-aligned.
#[cfg(target_arch = "x86_64")]
#[inline]
unsafe fn next_candidate(mut p: usize, end: usize, lo: usize, span: usize) -> usize {
    // SAFETY: reads only words of `[p, end)` (the caller's promise); changes only the named
    // registers and the flags.
    unsafe {
        std::arch::asm!(
            "2:",
            "cmp {p}, {end}",
            "jae 3f",
            "mov {w}, qword ptr [{p}]",
            "sub {w}, {lo}",
            "cmp {w}, {span}",
            "jb 3f",
            "add {p}, 8",
            "jmp 2b",
            "3:",
            p = inout(reg) p,
            end = in(reg) end,
            lo = in(reg) lo,
            span = in(reg) span,
            w = out(reg) _,
            options(nostack, readonly)
        );
    }
    p
}

/// One word of the stack, read in assembly (see [`next_candidate`]).
///
/// # Safety
/// `p` must be mapped, readable and 8-aligned.
#[cfg(target_arch = "x86_64")]
#[inline]
unsafe fn load_word(p: usize) -> usize {
    let word: usize;
    // SAFETY: the caller's promise.
    unsafe {
        std::arch::asm!(
            "mov {w}, qword ptr [{p}]",
            w = out(reg) word,
            p = in(reg) p,
            options(nostack, preserves_flags, readonly)
        );
    }
    word
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn in_ranges(ranges: &[(usize, usize)], w: usize) -> bool {
    ranges.iter().any(|&(s, e)| w >= s && w < e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ref_set_hits_exactly_the_ranges_it_holds_words_of() {
        let a = CodeRefs::Words(vec![0x1000, 0x2008].into_boxed_slice());
        let b = CodeRefs::Words(vec![0x2008, 0x5000].into_boxed_slice());
        let set = RefSet::union([&a, &b]);
        assert!(set.hits(0x1000, 0x1001));
        assert!(set.hits(0x2000, 0x2010));
        assert!(!set.hits(0x2010, 0x5000));
        assert!(set.hits(0x4000, 0x5001));
        assert!(!set.hits(0x5001, 0x6000));
        assert!(!set.is_empty());
        assert!(RefSet::union([&CodeRefs::Everything]).hits(1, 2));
        assert!(RefSet::union(std::iter::empty()).is_empty());
    }
}
