//! Emission that fails or unwinds leaves nothing behind: the slot it took is free again.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU32, Ordering};

use tramway_jit::dynasmrt::dynasm;
use tramway_jit::{Jit, JitError};

const CHUNK: usize = 64 << 10;

/// A `Jit` with room for exactly one chunk.
fn one_chunk_jit() -> Jit {
    Jit::builder()
        .chunk_size(CHUNK)
        .reservation_size(CHUNK)
        .build()
        .unwrap()
}

#[test]
fn a_custom_emitter_that_panics_on_its_final_pass_does_not_leak_its_slot() {
    let jit = one_chunk_jit();
    let passes = AtomicU32::new(0);
    let panicked = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the code is never published (the emitter panics before it is complete).
        unsafe {
            jit.custom(|ops| {
                if passes.fetch_add(1, Ordering::Relaxed) == 1 {
                    panic!("the final pass fails");
                }
                for _ in 0..(CHUNK - 64) {
                    dynasm!(ops ; .arch x64 ; nop);
                }
                dynasm!(ops ; .arch x64 ; ret);
            })
        }
    }));
    assert!(panicked.is_err());
    assert_eq!(passes.load(Ordering::Relaxed), 2, "both passes ran");
    let stats = jit.stats();
    assert_eq!((stats.emitted, stats.live), (0, 0), "{stats:?}");
    // The only chunk is free again: the next object gets it (with the slot leaked, the
    // one-chunk reservation would be exhausted).
    match jit.constant_return(7) {
        Ok(t) => assert!(!t.is_empty()),
        Err(JitError::CodeSpaceExhausted { .. }) => {
            panic!("the panicking emission leaked its slot")
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
}

#[test]
fn an_emitter_whose_length_changes_between_passes_is_an_error_and_frees_its_slot() {
    let jit = one_chunk_jit();
    let passes = AtomicU32::new(0);
    // SAFETY: never published (the emission fails).
    let r = unsafe {
        jit.custom(|ops| {
            let n = if passes.fetch_add(1, Ordering::Relaxed) == 0 {
                CHUNK - 64
            } else {
                8
            };
            for _ in 0..n {
                dynasm!(ops ; .arch x64 ; nop);
            }
        })
    };
    assert!(matches!(r, Err(JitError::EmitLengthChanged { .. })));
    assert!(jit.constant_return(7).is_ok(), "the slot was freed");
}
