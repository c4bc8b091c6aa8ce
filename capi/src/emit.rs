//! `tw_jit_emit`: custom machine code written by a C callback at its final address.
//!
//! `Jit::custom_at` runs its closure once or twice, each time with a fresh dynasm assembler
//! and the address of a slot its bytes are assembled for: once when the slot it guessed (the
//! size of the previous custom code) fits the code's size class, again at a slot of the right
//! size when it does not. Each pass calls the C callback with that address into a scratch
//! buffer and appends the bytes to the assembler. The code must have the same length in both
//! passes; only the last pass's bytes are kept.
//!
//! As a safety net against a change of that protocol, the finished code must sit at the
//! address the last pass was given, or the call fails with `TW_ERROR_EMIT_FAILED` (the code,
//! never reachable, is then freed at once).

use std::cell::{Cell, RefCell};
use std::ffi::c_void;

use libc::size_t;

use tramway_jit::Assembler;

use crate::boundary::{catch, handle, put};
use crate::error::{tw_error_code_t, tw_error_t, Error};
use crate::jit::{tw_code_t, tw_jit_t};

/// Writes machine code for `final_addr` into `buf` (at most `cap` bytes) and returns its
/// length, or 0 on failure. See `tw_jit_emit`.
pub type tw_emit_fn = Option<
    unsafe extern "C" fn(user: *mut c_void, buf: *mut u8, cap: size_t, final_addr: usize) -> size_t,
>;

fn emit_failed(message: impl Into<String>) -> Error {
    Error::new(tw_error_code_t::TW_ERROR_EMIT_FAILED, message)
}

/// What the passes share.
struct Passes {
    emit: unsafe extern "C" fn(*mut c_void, *mut u8, usize, usize) -> usize,
    user: *mut c_void,
    scratch: RefCell<Vec<u8>>,
    /// The base of the last pass that produced code.
    last_base: Cell<usize>,
    /// The first failure; later passes do nothing.
    failure: RefCell<Option<Error>>,
}

impl Passes {
    fn run(&self, ops: &mut Assembler, base: usize) {
        if self.failure.borrow().is_some() {
            return;
        }
        if let Err(e) = self.try_run(ops, base) {
            *self.failure.borrow_mut() = Some(e);
        }
    }

    fn try_run(&self, ops: &mut Assembler, base: usize) -> Result<(), Error> {
        let mut buf = self.scratch.borrow_mut();
        let cap = buf.len();
        // SAFETY: `tw_jit_emit`'s contract: the callback writes at most `cap` bytes into
        // `buf` (a live buffer of `cap` bytes) and returns how many.
        let len = unsafe { (self.emit)(self.user, buf.as_mut_ptr(), cap, base) };
        if len == 0 {
            return Err(emit_failed("the emit callback returned 0 (failure)"));
        }
        if len > cap {
            return Err(emit_failed(format!(
                "the emit callback returned {len}, more than its capacity {cap}"
            )));
        }
        ops.extend(&buf[..len]);
        self.last_base.set(base);
        Ok(())
    }
}

/// Emits custom code written by `emit`, and stores its handle in `*out`.
///
/// `emit(user, buf, cap, final_addr)` writes the machine code into `buf` (at most `cap` =
/// `min(max_len, chunk size)` bytes) as it must be for execution at `final_addr`, and returns
/// its length (0 = failure). It is called once or twice, synchronously on this thread: once
/// at the address of a slot sized by a guess (the previous custom code's length), and again,
/// at another slot's address, when the code needs a slot of another size; it must return the
/// same length both times (`TW_ERROR_EMIT_FAILED` otherwise). Only the bytes of the last
/// call are kept, at exactly its `final_addr`. It must not call into this
/// library.
///
/// Errors: `TW_ERROR_INVALID_ARGUMENT` (NULL, `max_len` 0), `TW_ERROR_EMIT_FAILED`,
/// `TW_ERROR_CODE_TOO_LARGE`, `TW_ERROR_OUT_OF_CODE_SPACE`, `TW_ERROR_OS`.
///
/// # Safety
/// `jit` is NULL or a live jit; `out` is NULL or writable; `emit` is sound to call with
/// `user` as described. The code must implement the C signature its callers use, and:
/// never block, wait for a grace period or report a quiescent state (grace periods rely on
/// JIT code having no quiescent point); never write to code memory; reference only memory
/// that outlives the code (until a grace period after it is retired).
#[no_mangle]
pub unsafe extern "C" fn tw_jit_emit(
    jit: *const tw_jit_t,
    emit: tw_emit_fn,
    user: *mut c_void,
    max_len: size_t,
    out: *mut *mut tw_code_t,
) -> *mut tw_error_t {
    catch("tw_jit_emit", || {
        let make = || {
            // SAFETY: a NULL-or-live handle (the caller's contract).
            let jit = &unsafe { handle(jit, "jit") }?.jit;
            let emit = emit.ok_or_else(|| Error::invalid("emit is NULL"))?;
            if max_len == 0 {
                return Err(Error::invalid("max_len is 0"));
            }
            let passes = Passes {
                emit,
                user,
                scratch: RefCell::new(vec![0; max_len.min(jit.chunk_size())]),
                last_base: Cell::new(0),
                failure: RefCell::new(None),
            };
            // SAFETY: the code's contract (never yield, never write code memory, only
            // long-lived references, position-dependent only for the address it was
            // given, which is checked below) is the caller's, stated above.
            let code = unsafe { jit.custom_at(|ops, base| passes.run(ops, base)) };
            if let Some(e) = passes.failure.take() {
                return Err(e); // `code`, if any, was never reachable: freed at once
            }
            let code = code?;
            if code.addr() as usize != passes.last_base.get() {
                return Err(emit_failed(format!(
                    "the code was installed at {:p}, not at the address the callback \
                     was given ({:#x})",
                    code.addr(),
                    passes.last_base.get()
                )));
            }
            Ok(tw_code_t { code })
        };
        // SAFETY: `out` is NULL or writable (the caller's contract).
        unsafe { put(out, "out", make) }
    })
}
