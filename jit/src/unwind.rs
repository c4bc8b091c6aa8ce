//! Unwind information for trampolines that call hooks: an `.eh_frame` buffer per code object,
//! registered with the system unwinder (opt-in, [`JitBuilder::unwind_info`]).
//!
//! # Why
//! A hook runs with its caller's frames below it: caller -> (site stub, a jump) -> trampoline
//! -> hook shim -> hook. An unwinder walking from inside the hook (a
//! `std::backtrace::Backtrace`, which is libgcc's `_Unwind_Backtrace` on x86-64 Linux gnu)
//! needs call-frame information (CFI) for the trampoline to find its caller; without it the
//! walk ends at the trampoline. JIT code has no ELF image the unwinder could find through
//! `dl_iterate_phdr`, so its CFI is handed over explicitly, as JITs do (LLVM's
//! `RTDyldMemoryManager::registerEHFrames`, Cranelift's `cranelift-jit`). Only in-process
//! unwinders built on libgcc see the registrations; those that read unwind tables from files
//! (`perf --call-graph dwarf`, gdb) do not, and frame-pointer walkers (`perf -g`) use the
//! bodies' frame records instead (`arch/<arch>/bodies.rs`).
//!
//! # What is covered
//! The bodies that call out: a forwarding body with an entry hook and a call-through body
//! (so every probe trampoline too). Only code that calls can be a frame *below* another one,
//! which is what an unwinder walking up from a hook or a target steps through. A body that
//! only counts and tail-jumps never moves `rsp` and is never below another frame (at most a
//! profiler's signal interrupts it, and the walk stops there); one registration per such
//! trampoline would buy little for the cost below. Custom code ([`Jit::custom`]) gets none:
//! the crate does not know its frame.
//!
//! # The buffer: one CIE, one FDE, a terminator
//! The format is `.eh_frame`'s (the LSB's "Exception Frames", DWARF 4 section 6.4 with GNU
//! augmentations), because that is what libgcc's `__register_frame` takes: the start of a
//! section of CIEs and FDEs ended by a 4-byte zero. [`eh_frame`] lays out:
//! - **CIE**: length, CIE id 0, version 1, augmentation `"zPR"`, the architecture's code and
//!   data alignment factors, return-address column and initial instructions ([`CieParams`];
//!   x86-64: 1, -8, 16, `CFA = rsp + 8, return address at CFA - 8`), then the augmentation
//!   data: the personality routine ([`refuse_unwind`], below) and the FDE pointer encoding;
//! - **FDE**: length, the distance back to the CIE, `pc_begin` (the code's address),
//!   `pc_range` (its length), no LSDA, and the rows of the body: the CFA program the
//!   architecture recorded while assembling it (`arch/<arch>/cfi.rs`), which is exact at
//!   every instruction boundary, not only at the calls;
//! - every entry padded with `DW_CFA_nop` to a multiple of 8 bytes, then `0u32`.
//!
//! **Pointer encoding: absolute (`DW_EH_PE_absptr`, 8 bytes), not `pcrel | sdata4`.** A
//! `pcrel | sdata4` pointer is relative to where the FDE itself lies and reaches +-2 GiB. The
//! buffer is heap memory, owned with the code like its hook cells (code memory is never
//! writable where it is executable, and a slot holds just its body), and on x86-64 Linux the
//! malloc heap and an mmap'd code reservation are usually terabytes apart, so a 32-bit
//! relative offset cannot reach. The final code address is known when the buffer
//! is built (the body is assembled at its final address first), so an absolute pointer costs
//! nothing but 8 bytes, and libgcc reads every encoding the same way.
//!
//! **The personality routine refuses every unwind.** Unwind information makes *unwinding*
//! possible as well as backtraces. A call-through trampoline must not be unwound through
//! (its exit path lowers the task's yielding-code depth and runs the exit hook; skipping it
//! would leave the depth raised), and before this module nothing could be: the unwinder found
//! no FDE and the panic could not start. The CIE therefore names [`refuse_unwind`], which
//! returns `_URC_FATAL_PHASE1_ERROR` in the search phase and `_URC_FATAL_PHASE2_ERROR` in a
//! forced unwind: a panic raised below the trampoline still fails to start (Rust aborts
//! with "failed to initiate panic, error 3"; without unwind information it is error 5, end
//! of stack), and `_Unwind_ForcedUnwind` fails (glibc's `pthread_exit` then aborts). Backtraces never call
//! personality routines, so they walk through. (An entry hook cannot unwind into its
//! trampoline at all: the hook shim is an `extern "C"` function, which aborts on unwind.)
//!
//! # Registration and its ordering
//! - **Register after the code is written, before it can be reached.** `Trampoline::emit`
//!   writes the bytes, then registers, then returns the handle; the code becomes reachable only
//!   when a handle is installed in a site (a Release store of the patch word) or targeted by
//!   another trampoline, both after the registration returned. libgcc publishes a
//!   registration under its own lock (the object mutex; GCC 13 and later: a b-tree with
//!   version locks) and every lookup takes that lock or validates that version. A thread that
//!   unwinds from inside the code got there through the patch word, so its lookup happens
//!   after the site store, which happens after the registration released the lock (the
//!   patch word's publication argument is `site.rs`'s): the lookup finds the FDE.
//! - **Deregister before the slot is freed.** The free of a reachable trampoline runs after a
//!   grace period (and, for a call-through trampoline a task is parked inside, after the stack
//!   scan releases it: `forwarding.rs`), so no thread executes the code or has a frame in it,
//!   and no unwind can be walking it. The free path deregisters first (libgcc drops its
//!   pointers into our buffer and forgets the PC range), then drops the buffer, then frees the
//!   slot, which may be reused at once by another trampoline whose registration would
//!   otherwise overlap a stale one. Leaked code stays registered with its buffer, forever.
//!
//! # Cost, and why it is off by default
//! A registration is a `malloc` and a list insertion, a deregistration a search of libgcc's
//! list (linear in the number of registrations before GCC 13). The larger cost falls on the
//! rest of the process: before GCC 13, libgcc keeps registered objects in a list sorted by
//! address that `_Unwind_Find_FDE` walks, under one global mutex, for **every frame of every
//! unwind** in the process before it falls back to `dl_iterate_phdr` (and once any object was
//! ever registered it always takes that mutex); newly registered objects are sorted on the
//! next lookup. A process with thousands of hooked trampolines therefore pays per frame of
//! every panic and backtrace, on every thread. `cargo bench --bench unwind` measures both
//! sides (the emission churn with the option on and off, and a panic's cost with N
//! registrations; the figures are on [`JitBuilder::unwind_info`]: with GCC 12's libgcc a
//! panic costs 9-15x more with 1000 registrations, and the churn 2-3.5x). GCC 13's libgcc
//! replaced the list with a b-tree (logarithmic, lock-free lookups), which makes the second
//! cost small; the crate cannot know which libgcc it runs with, so the option stays off
//! unless asked for.
//!
//! [`JitBuilder::unwind_info`]: crate::JitBuilder::unwind_info
//! [`Jit::custom`]: crate::Jit::custom

use std::ffi::{c_int, c_void};

extern "C" {
    /// libgcc (`unwind-dw2-fde.c`): registers the `.eh_frame` section starting at `begin`
    /// (CIEs and FDEs, ended by a 4-byte zero). The memory must stay valid until
    /// `__deregister_frame(begin)`.
    fn __register_frame(begin: *const u8);
    /// libgcc: undoes `__register_frame(begin)` (aborts if `begin` is not registered).
    fn __deregister_frame(begin: *const u8);
}

/// What an architecture's CIE says (`arch/<arch>/cfi.rs` defines one).
#[derive(Clone, Copy, Debug)]
pub(crate) struct CieParams {
    /// Code alignment factor (what an advance's delta is multiplied by).
    pub(crate) code_align: u8,
    /// Data alignment factor (what a register's saved-at offset is multiplied by).
    pub(crate) data_align: i8,
    /// The DWARF column of the return address.
    pub(crate) ra_register: u8,
    /// The CFA rule and register rules at the first instruction of every body.
    pub(crate) initial_instructions: &'static [u8],
}

/// `DW_EH_PE_absptr`: an 8-byte absolute address (module docs: why not `pcrel | sdata4`).
const DW_EH_PE_ABSPTR: u8 = 0x00;
/// `DW_CFA_nop`, the padding.
const DW_CFA_NOP: u8 = 0x00;

/// `_Unwind_Action` bit of the search phase.
const UA_SEARCH_PHASE: c_int = 1;
/// `_Unwind_Reason_Code` values.
const URC_FATAL_PHASE2_ERROR: c_int = 2;
const URC_FATAL_PHASE1_ERROR: c_int = 3;

/// The personality routine of every trampoline FDE: no unwind may pass through a trampoline
/// (module docs). A panic raised below one fails to start; a forced unwind aborts.
extern "C" fn refuse_unwind(
    _version: c_int,
    actions: c_int,
    _class: u64,
    _exception: *mut c_void,
    _context: *mut c_void,
) -> c_int {
    if actions & UA_SEARCH_PHASE != 0 {
        URC_FATAL_PHASE1_ERROR
    } else {
        URC_FATAL_PHASE2_ERROR
    }
}

fn uleb128(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn sleb128(out: &mut Vec<u8>, mut v: i64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        let done = (v == 0 && byte & 0x40 == 0) || (v == -1 && byte & 0x40 != 0);
        if done {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Appends one CIE or FDE: a length placeholder, `body`, `DW_CFA_nop` padding up to a multiple
/// of 8 bytes (length field included), then the length. Returns where the entry starts.
fn entry(out: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    body(out);
    while (out.len() - start) % 8 != 0 {
        out.push(DW_CFA_NOP);
    }
    let len = u32::try_from(out.len() - start - 4).expect("a CFI entry is small");
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    start
}

/// The `.eh_frame` bytes for code at `pc .. pc + len` whose FDE instructions are
/// `cfa_program` (module docs: the layout), with `personality` in the CIE.
pub(crate) fn eh_frame(
    cie: &CieParams,
    pc: usize,
    len: usize,
    cfa_program: &[u8],
    personality: usize,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + cie.initial_instructions.len() + cfa_program.len());
    let cie_start = entry(&mut out, |o| {
        o.extend_from_slice(&0u32.to_le_bytes()); // CIE id
        o.push(1); // version
        o.extend_from_slice(b"zPR\0");
        uleb128(o, u64::from(cie.code_align));
        sleb128(o, i64::from(cie.data_align));
        o.push(cie.ra_register); // version 1: one byte
        uleb128(o, 1 + 8 + 1); // augmentation data: P (encoding, pointer), R (encoding)
        o.push(DW_EH_PE_ABSPTR);
        o.extend_from_slice(&(personality as u64).to_le_bytes());
        o.push(DW_EH_PE_ABSPTR);
        o.extend_from_slice(cie.initial_instructions);
    });
    entry(&mut out, |o| {
        // The CIE pointer: from this field back to the CIE's start.
        let back = u32::try_from(o.len() - cie_start).expect("one small buffer");
        o.extend_from_slice(&back.to_le_bytes());
        o.extend_from_slice(&(pc as u64).to_le_bytes());
        o.extend_from_slice(&(len as u64).to_le_bytes());
        uleb128(o, 0); // augmentation data: none (no LSDA)
        o.extend_from_slice(cfa_program);
    });
    out.extend_from_slice(&0u32.to_le_bytes()); // the terminator
    out
}

/// One code object's `.eh_frame`, registered with the system unwinder until dropped.
///
/// Dropping it deregisters the buffer; the free path drops it before the code's slot is
/// freed (module docs). Owned with the code (in `CodeData`) and leaked with it.
pub(crate) struct UnwindRegistration {
    /// The buffer libgcc holds a pointer to (8-byte words: an aligned start, though libgcc
    /// reads every field unaligned anyway).
    buf: Box<[u64]>,
}

impl UnwindRegistration {
    /// Builds and registers the `.eh_frame` of the code at `pc .. pc + len` (see [`eh_frame`]).
    ///
    /// # Safety
    /// The code is written at `pc` (it may not be reachable yet), `cfa_program` describes it
    /// under `cie`, and no other registration covers `pc .. pc + len`. The returned value must
    /// be dropped before the code's memory is freed or reused.
    pub(crate) unsafe fn register(
        cie: &CieParams,
        pc: usize,
        len: usize,
        cfa_program: &[u8],
    ) -> UnwindRegistration {
        let bytes = eh_frame(
            cie,
            pc,
            len,
            cfa_program,
            refuse_unwind as *const () as usize,
        );
        let mut buf = vec![0u64; bytes.len().div_ceil(8)].into_boxed_slice();
        for (word, chunk) in buf.iter_mut().zip(bytes.chunks(8)) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            *word = u64::from_le_bytes(w);
        }
        // SAFETY: `buf` is a complete .eh_frame section (a CIE, an FDE, the zero terminator)
        // whose FDE covers only this code (the caller's promise), heap memory that stays
        // valid and unmoved until `drop` deregisters it (a boxed slice never moves its
        // contents).
        unsafe { __register_frame(buf.as_ptr().cast()) };
        UnwindRegistration { buf }
    }
}

impl Drop for UnwindRegistration {
    fn drop(&mut self) {
        // SAFETY: `buf` was registered by `register` and is deregistered exactly once, here,
        // before it is freed (it is still alive during the call).
        unsafe { __deregister_frame(self.buf.as_ptr().cast()) };
    }
}

impl std::fmt::Debug for UnwindRegistration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnwindRegistration")
            .field("bytes", &(self.buf.len() * 8))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CIE: CieParams = CieParams {
        code_align: 1,
        data_align: -8,
        ra_register: 16,
        initial_instructions: &[0x0c, 7, 8, 0x90, 1],
    };

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn leb128_encodings() {
        let enc = |v: i64| {
            let mut o = Vec::new();
            sleb128(&mut o, v);
            o
        };
        assert_eq!(enc(-8), [0x78]);
        assert_eq!(enc(2), [0x02]);
        assert_eq!(enc(64), [0xC0, 0x00]);
        assert_eq!(enc(-129), [0xFF, 0x7E]);
        let mut o = Vec::new();
        uleb128(&mut o, 624_485);
        assert_eq!(o, [0xE5, 0x8E, 0x26]);
    }

    #[test]
    fn the_buffer_is_a_cie_an_fde_and_a_terminator() {
        let program = [0x41, 0x0e, 0x10];
        let b = eh_frame(&CIE, 0x7f00_1234_5000, 0x5c, &program, 0xdead_beef);
        let cie_len = u32_at(&b, 0) as usize;
        assert_eq!((cie_len + 4) % 8, 0);
        assert_eq!(u32_at(&b, 4), 0, "CIE id");
        assert_eq!(b[8], 1, "version");
        assert_eq!(&b[9..13], b"zPR\0");
        assert_eq!(
            &b[13..16],
            [1, 0x78, 16],
            "code align, data align, RA column"
        );
        assert_eq!(b[16], 10, "augmentation data length");
        assert_eq!(b[17], DW_EH_PE_ABSPTR);
        assert_eq!(u64_at(&b, 18), 0xdead_beef, "personality");
        assert_eq!(b[26], DW_EH_PE_ABSPTR, "FDE pointer encoding");
        assert_eq!(&b[27..32], CIE.initial_instructions);
        assert!(b[32..cie_len + 4].iter().all(|&x| x == DW_CFA_NOP));
        let fde = cie_len + 4;
        let fde_len = u32_at(&b, fde) as usize;
        assert_eq!((fde_len + 4) % 8, 0);
        assert_eq!(u32_at(&b, fde + 4) as usize, fde + 4, "CIE pointer");
        assert_eq!(u64_at(&b, fde + 8), 0x7f00_1234_5000, "pc_begin");
        assert_eq!(u64_at(&b, fde + 16), 0x5c, "pc_range");
        assert_eq!(b[fde + 24], 0, "no augmentation data");
        assert_eq!(&b[fde + 25..fde + 28], program);
        let end = fde + 4 + fde_len;
        assert_eq!(&b[end..], [0, 0, 0, 0], "terminator");
    }

    extern "C" {
        /// libgcc: the FDE covering `pc`, or null.
        fn _Unwind_Find_FDE(pc: *const c_void, bases: *mut [usize; 3]) -> *const u8;
    }

    fn find_fde(pc: usize) -> *const u8 {
        let mut bases = [0usize; 3];
        // SAFETY: `_Unwind_Find_FDE` only reads registered unwind tables; `bases` is a
        // writable `struct dwarf_eh_bases` (three pointers).
        unsafe { _Unwind_Find_FDE(pc as *const c_void, &mut bases) }
    }

    #[test]
    fn libgcc_finds_a_registered_fde_until_it_is_deregistered() {
        // A fake code range no real code occupies (libgcc never reads the code itself).
        let (pc, len) = (0x10_0000_0000usize, 0x40usize);
        assert!(find_fde(pc + 8).is_null());
        // SAFETY: nothing else covers the range, and nothing executes or unwinds there.
        let reg = unsafe { UnwindRegistration::register(&CIE, pc, len, &[]) };
        let fde = find_fde(pc + 8);
        assert!(!fde.is_null(), "the FDE was not found");
        // The FDE libgcc found is ours: its pc_begin is the code address.
        // SAFETY: `fde` points at the FDE inside `reg`'s live buffer (length, CIE pointer,
        // pc_begin).
        let pc_begin = unsafe { fde.add(8).cast::<u64>().read_unaligned() };
        assert_eq!(pc_begin, pc as u64);
        assert!(find_fde(pc + len - 1) == fde);
        assert!(find_fde(pc + len).is_null() && find_fde(pc - 1).is_null());
        drop(reg);
        assert!(
            find_fde(pc + 8).is_null(),
            "still found after deregistration"
        );
    }
}
