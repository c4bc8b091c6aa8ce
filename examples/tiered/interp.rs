//! The tree-walking interpreter (tier 0).
//!
//! [`eval`] walks a function body's [`Ir`]. Calls are delegated to a [`Caller`]: the engine calls
//! through the callee's patch site (so a compiled callee runs native code and a redefinition is
//! seen by interpreted callers too), while [`Direct`] stays inside the interpreter and is the
//! reference semantics for tests.
//!
//! # Call depth
//! Every call carries a `depth` budget, starting at [`MAX_DEPTH`] for a top-level call. A call
//! made at expression nesting level `L` of its caller's body (the body itself is level 0, the
//! operands of a level-`L` node are at `L + 1`) passes the callee `depth - call_cost(L)`, where
//! [`call_cost`] is 1 plus one per [`LEVELS_PER_UNIT`] levels: a call deep inside an expression
//! leaves that many interpreter frames on the stack below the callee, so it uses more budget.
//! The budget therefore bounds the stack a recursion can take, whatever its shape (a bound on
//! the call depth alone let 40 levels of nesting inside a 1990-deep recursion overflow an 8 MiB
//! stack). A function entered with a budget `<= 0` does not run: it records the overflow for
//! the current thread ([`note_depth_exceeded`]) and returns 0. Compiled code implements the
//! same rule, so both tiers agree, and runaway recursion is reported instead of overflowing
//! the stack.

use std::cell::Cell;

use crate::ast::{Builtin, Func, FuncId, Ir};

/// Depth budget of a top-level call.
pub const MAX_DEPTH: i64 = 2_000;

/// Expression nesting levels a call may sit below its caller's body for one budget unit.
pub const LEVELS_PER_UNIT: usize = 4;

/// Budget a call at nesting level `level` of its caller's body uses (see the module docs).
pub fn call_cost(level: usize) -> i64 {
    1 + (level / LEVELS_PER_UNIT) as i64
}

thread_local! {
    static DEPTH_EXCEEDED: Cell<bool> = const { Cell::new(false) };
}

/// Records that a call ran out of depth budget on this thread.
///
/// `inline(never)`, as its pair: a green thread may move to another worker at a `yield`, so
/// the thread-local's address must not be computed once and kept across one.
#[inline(never)]
pub fn note_depth_exceeded() {
    DEPTH_EXCEEDED.with(|f| f.set(true));
}

/// Returns and clears this thread's depth-overflow flag.
#[inline(never)]
pub fn take_depth_exceeded() -> bool {
    DEPTH_EXCEEDED.with(|f| f.replace(false))
}

/// Runs `park` (a voluntary yield point) the way both tiers' builtins must.
///
/// Inside [`in_yielding_code`](tramway::runtime::in_yielding_code): the caller may be compiled
/// code whose frames (return addresses into code a redefinition may retire meanwhile) stay on
/// the parked task's stack; the runtime scans that stack at the park and holds back exactly the
/// code it points into. The depth-overflow flag travels with the task across the park (it is a
/// thread-local, and the task may resume on another worker).
fn park_from_language(park: impl FnOnce()) {
    let exceeded = take_depth_exceeded();
    tramway::runtime::in_yielding_code(park);
    if exceeded {
        note_depth_exceeded();
    }
}

/// The builtin `yield(x)`; compiled code calls it as `extern "C" fn(i64) -> i64`. Yields the
/// calling green thread (on a plain thread, the OS thread) and returns `x`.
pub extern "C" fn builtin_yield(x: i64) -> i64 {
    park_from_language(tramway::runtime::yield_now);
    x
}

/// The builtin `sleep(ms)`; compiled code calls it as `extern "C" fn(i64) -> i64`. Sleeps `ms`
/// milliseconds, clamped to `0..=10000` (a green thread parks, a plain thread sleeps), and
/// returns 0.
pub extern "C" fn builtin_sleep(ms: i64) -> i64 {
    let dur = std::time::Duration::from_millis(ms.clamp(0, 10_000) as u64);
    park_from_language(|| tramway::runtime::sleep(dur));
    0
}

/// The helper implementing builtin `b` (both tiers call it).
pub fn builtin_fn(b: Builtin) -> extern "C" fn(i64) -> i64 {
    match b {
        Builtin::Yield => builtin_yield,
        Builtin::Sleep => builtin_sleep,
    }
}

/// How the interpreter performs calls.
pub trait Caller {
    /// Calls function `func` with `args` (unused ones are 0) and the callee's depth budget.
    fn call(&self, func: FuncId, args: [i64; 4], depth: i64) -> i64;
}

/// Evaluates `ir` (a whole body or `run` expression, nesting level 0) with the parameters
/// `args`, inside a function running with budget `depth`.
pub fn eval(ir: &Ir, args: &[i64; 4], depth: i64, caller: &dyn Caller) -> i64 {
    eval_at(ir, 0, args, depth, caller)
}

/// [`eval`] of a node at nesting level `level`.
fn eval_at(ir: &Ir, level: usize, args: &[i64; 4], depth: i64, caller: &dyn Caller) -> i64 {
    let sub = |ir: &Ir| eval_at(ir, level + 1, args, depth, caller);
    match ir {
        Ir::Const(v) => *v,
        // Resolution guarantees slot < arity <= 4.
        Ir::Param(slot) => args.get(usize::from(*slot)).copied().unwrap_or(0),
        Ir::Neg(x) => sub(x).wrapping_neg(),
        Ir::Bin(op, a, b) => {
            let a = sub(a);
            let b = sub(b);
            op.apply(a, b)
        }
        Ir::If(c, a, b) => {
            if sub(c) != 0 {
                sub(a)
            } else {
                sub(b)
            }
        }
        Ir::Call(f, actuals) => {
            let mut values = [0i64; 4];
            for (v, a) in values.iter_mut().zip(actuals) {
                *v = sub(a);
            }
            caller.call(*f, values, depth - call_cost(level))
        }
        Ir::Builtin(b, x) => builtin_fn(*b)(sub(x)),
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
