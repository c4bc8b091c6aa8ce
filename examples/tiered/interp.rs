//! The tree-walking interpreter (tier 0).
//!
//! [`eval`] walks a function body's [`Ir`]. Calls are delegated to a [`Caller`]: the engine calls
//! through the callee's patch site (so a compiled callee runs native code and a redefinition is
//! seen by interpreted callers too), while [`Direct`] stays inside the interpreter and is the
//! reference semantics for tests.
//!
//! # Call depth
//! Every call carries a `depth` budget, starting at [`MAX_DEPTH`] for a top-level call and
//! decreasing by one per nested call. A function entered with a budget `<= 0` does not run: it
//! records the overflow for the current thread ([`note_depth_exceeded`]) and returns 0. Compiled
//! code implements the same rule, so both tiers agree, and runaway recursion is reported instead
//! of overflowing the stack.

use std::cell::Cell;

use crate::ast::{Func, FuncId, Ir};

/// Depth budget of a top-level call.
pub const MAX_DEPTH: i64 = 2_000;

thread_local! {
    static DEPTH_EXCEEDED: Cell<bool> = const { Cell::new(false) };
}

/// Records that a call ran out of depth budget on this thread.
pub fn note_depth_exceeded() {
    DEPTH_EXCEEDED.with(|f| f.set(true));
}

/// Returns and clears this thread's depth-overflow flag.
pub fn take_depth_exceeded() -> bool {
    DEPTH_EXCEEDED.with(|f| f.replace(false))
}

/// How the interpreter performs calls.
pub trait Caller {
    /// Calls function `func` with `args` (unused ones are 0) and the callee's depth budget.
    fn call(&self, func: FuncId, args: [i64; 4], depth: i64) -> i64;
}

/// Evaluates `ir` with the parameters `args`, inside a function running with budget `depth`.
pub fn eval(ir: &Ir, args: &[i64; 4], depth: i64, caller: &dyn Caller) -> i64 {
    match ir {
        Ir::Const(v) => *v,
        // Resolution guarantees slot < arity <= 4.
        Ir::Param(slot) => args.get(usize::from(*slot)).copied().unwrap_or(0),
        Ir::Neg(x) => eval(x, args, depth, caller).wrapping_neg(),
        Ir::Bin(op, a, b) => {
            let a = eval(a, args, depth, caller);
            let b = eval(b, args, depth, caller);
            op.apply(a, b)
        }
        Ir::If(c, a, b) => {
            if eval(c, args, depth, caller) != 0 {
                eval(a, args, depth, caller)
            } else {
                eval(b, args, depth, caller)
            }
        }
        Ir::Call(f, actuals) => {
            let mut values = [0i64; 4];
            for (v, a) in values.iter_mut().zip(actuals) {
                *v = eval(a, args, depth, caller);
            }
            caller.call(*f, values, depth - 1)
        }
    }
}

/// Runs `func`'s body if the budget allows (the function-entry rule shared by both tiers).
pub fn enter(func: &Func, args: [i64; 4], depth: i64, caller: &dyn Caller) -> i64 {
    if depth <= 0 {
        note_depth_exceeded();
        return 0;
    }
    eval(&func.body, &args, depth, caller)
}

/// Pure interpretation: calls stay in the interpreter. The reference semantics.
pub struct Direct<'a> {
    /// The functions, by id.
    pub funcs: &'a [Func],
}

impl Caller for Direct<'_> {
    fn call(&self, func: FuncId, args: [i64; 4], depth: i64) -> i64 {
        match self.funcs.get(func) {
            Some(f) => enter(f, args, depth, self),
            None => 0,
        }
    }
}
