//! The code generator (tier 1): [`Ir`] to x86-64 with dynasm.
//!
//! # Calling convention
//! A language function is `extern "C" fn(a0, a1, a2, a3, depth) -> i64` (System V: arguments in
//! `rdi, rsi, rdx, rcx, r8`, result in `rax`); unused arguments are ignored. `depth` is the call
//! depth budget described in `interp.rs`: the prologue checks it and calls the overflow helper
//! instead of running the body when it is `<= 0`.
//!
//! # Frame
//! ```text
//! push rbp; mov rbp, rsp; sub rsp, 48     ; rsp is 16-byte aligned from here on
//! [rbp-8*(i+1)] = parameter i (i < 4)     ; [rbp-40] = depth
//! ```
//! Expressions are evaluated into `rax`; a binary operator's left value is pushed while the right
//! one is computed (unless the right one is a constant or a parameter, loaded straight into `rcx`).
//! The generator counts outstanding pushes, so before every `call` it knows whether `rsp` is
//! 16-byte aligned and pads with 8 bytes when it is not.
//!
//! # Calls
//! A call evaluates its arguments (pushing each), pops them into the argument registers, passes
//! `depth - call_cost(level)` in `r8` (the same charge as the interpreter's, see `interp.rs`)
//! and calls the callee's **patch site** entry (`mov rax, imm64; call rax`),
//! never the callee's code: a redefinition swaps that site and every caller sees it at once.
//! The generated code never touches code memory and references only site entries (which
//! outlive every function's code) and the `'static` helpers. It yields only inside builtins
//! (`yield`, `sleep`: calls to `interp::builtin_fn`'s helpers), which park the task inside a
//! yielding-code scope: the runtime then scans the parked stack and holds back the code its
//! return addresses point into (see `tramway::runtime::code`). Code addresses live only on the
//! stack (return addresses) and in registers, never in memory the code writes.
//!
//! # Division
//! `x / 0 == 0`, `x % 0 == 0`, `MIN / -1 == MIN` (wrapping) and `MIN % -1 == 0`, checked before
//! `idiv` (which would trap on the last two and on zero).

use crate::ast::{BinOp, Func, FuncId, Ir};
use crate::interp::call_cost;
use tramway::jit::dynasmrt::x64::Rq;
use tramway::jit::dynasmrt::{dynasm, DynasmApi, DynasmLabelApi};
use tramway::jit::Assembler;

/// Stack slot offset (from `rbp`) of the depth budget.
const DEPTH_SLOT: i32 = -40;
/// Bytes reserved below `rbp` for the parameters and the depth (a multiple of 16).
const FRAME: i32 = 48;
/// The argument registers of the first four parameters.
const ARG_REGS: [Rq; 4] = [Rq::RDI, Rq::RSI, Rq::RDX, Rq::RCX];

/// Addresses the generated code needs.
#[derive(Clone, Copy, Debug)]
pub struct Env<'a> {
    /// Entry address of each function's patch site, by id.
    pub sites: &'a [usize],
    /// Address of `extern "C" fn() -> i64` called when the depth budget is exhausted (returns 0).
    pub on_overflow: usize,
}

/// Emits `func` as a complete function at the assembler's current offset.
///
/// Deterministic: the same inputs always produce the same length (the jit assembles twice).
pub fn emit_function(ops: &mut Assembler, func: &Func, env: &Env<'_>) {
    let overflow = ops.new_dynamic_label();
    let ret = ops.new_dynamic_label();
    dynasm!(ops
        ; .arch x64
        ; push rbp
        ; mov rbp, rsp
        ; sub rsp, FRAME
    );
    for (i, &reg) in ARG_REGS.iter().enumerate().take(func.arity) {
        let disp = param_disp(i);
        dynasm!(ops ; .arch x64 ; mov [rbp + disp], Rq(reg));
    }
    dynasm!(ops
        ; .arch x64
        ; mov [rbp + DEPTH_SLOT], r8
        ; test r8, r8
        ; jle =>overflow
    );
    let mut g = Gen {
        ops,
        env,
        pushes: 0,
        level: 0,
    };
    g.node(&func.body);
    dynasm!(ops
        ; .arch x64
        ; =>ret
        ; mov rsp, rbp
        ; pop rbp
        ; ret
        ; =>overflow
        ; mov rax, QWORD env.on_overflow as i64
        ; call rax
        ; jmp =>ret
    );
}

/// Emits the interpreter stub of a function: `mov r9, ctx; mov rax, entry; jmp rax`.
///
/// The five language arguments stay in `rdi, rsi, rdx, rcx, r8`, so `entry` is called as
/// `extern "C" fn(a0, a1, a2, a3, depth, ctx) -> i64`. The stub is a tail jump: it is not on the
/// stack while the interpreter runs.
pub fn emit_interp_stub(ops: &mut Assembler, ctx: usize, entry: usize) {
    dynasm!(ops
        ; .arch x64
        ; mov r9, QWORD ctx as i64
        ; mov rax, QWORD entry as i64
        ; jmp rax
    );
}

fn param_disp(slot: usize) -> i32 {
    // slot < 4, so this is one of -8, -16, -24, -32.
    -8 * (slot as i32 + 1)
}

struct Gen<'o, 'e> {
    ops: &'o mut Assembler,
    env: &'o Env<'e>,
    /// 8-byte pushes outstanding since the prologue (rsp is aligned when this is even).
    pushes: usize,
    /// Nesting level of the node being emitted (the body is level 0).
    level: usize,
}

impl Gen<'_, '_> {
    fn push_rax(&mut self) {
        dynasm!(self.ops ; .arch x64 ; push rax);
        self.pushes += 1;
    }

    fn pop(&mut self, reg: Rq) {
        dynasm!(self.ops ; .arch x64 ; pop Rq(reg));
        self.pushes -= 1;
    }

    /// Loads a constant or parameter into `rcx` without touching `rax`; false for other shapes.
    fn simple_into_rcx(&mut self, ir: &Ir) -> bool {
        match ir {
            Ir::Const(v) => dynasm!(self.ops ; .arch x64 ; mov rcx, QWORD *v),
            Ir::Param(slot) => {
                let disp = param_disp(usize::from(*slot));
                dynasm!(self.ops ; .arch x64 ; mov rcx, [rbp + disp]);
            }
            _ => return false,
        }
        true
    }

    /// Evaluates `ir`, an operand of the node being emitted, into `rax`.
    fn expr(&mut self, ir: &Ir) {
        self.level += 1;
        self.node(ir);
        self.level -= 1;
    }

    /// Evaluates `ir`, at the current level, into `rax`.
    fn node(&mut self, ir: &Ir) {
        match ir {
            Ir::Const(v) => dynasm!(self.ops ; .arch x64 ; mov rax, QWORD *v),
            Ir::Param(slot) => {
                let disp = param_disp(usize::from(*slot));
                dynasm!(self.ops ; .arch x64 ; mov rax, [rbp + disp]);
            }
            Ir::Neg(x) => {
                self.expr(x);
                dynasm!(self.ops ; .arch x64 ; neg rax);
            }
            Ir::Bin(op, a, b) => {
                self.expr(a);
                if !self.simple_into_rcx(b) {
                    self.push_rax();
                    self.expr(b);
                    dynasm!(self.ops ; .arch x64 ; mov rcx, rax);
                    self.pop(Rq::RAX);
                }
                self.binop(*op);
            }
            Ir::If(c, a, b) => {
                let otherwise = self.ops.new_dynamic_label();
                let end = self.ops.new_dynamic_label();
                self.expr(c);
                dynasm!(self.ops ; .arch x64 ; test rax, rax ; jz =>otherwise);
                self.expr(a);
                dynasm!(self.ops ; .arch x64 ; jmp =>end ; =>otherwise);
                self.expr(b);
                dynasm!(self.ops ; .arch x64 ; =>end);
            }
            Ir::Call(f, args) => self.call(*f, args),
            Ir::Builtin(b, x) => {
                self.expr(x);
                dynasm!(self.ops ; .arch x64 ; mov rdi, rax);
                self.call_helper(crate::interp::builtin_fn(*b) as usize);
            }
        }
    }

    /// Calls `extern "C"` helper `addr` with `rsp` 16-byte aligned (arguments already in place).
    fn call_helper(&mut self, addr: usize) {
        let pad = self.pushes % 2 == 1;
        if pad {
            dynasm!(self.ops ; .arch x64 ; sub rsp, 8);
        }
        dynasm!(self.ops
            ; .arch x64
            ; mov rax, QWORD addr as i64
            ; call rax
        );
        if pad {
            dynasm!(self.ops ; .arch x64 ; add rsp, 8);
        }
    }

    fn call(&mut self, f: FuncId, args: &[Ir]) {
        for a in args {
            self.expr(a);
            self.push_rax();
        }
        for &reg in ARG_REGS[..args.len().min(4)].iter().rev() {
            self.pop(reg);
        }
        // Resolution guarantees every callee id is valid. Should one be missing anyway, call the
        // overflow helper (which returns 0) rather than emit a call to address 0.
        let target = self
            .env
            .sites
            .get(f)
            .copied()
            .unwrap_or(self.env.on_overflow);
        let pad = self.pushes % 2 == 1;
        dynasm!(self.ops
            ; .arch x64
            ; mov r8, [rbp + DEPTH_SLOT]
            ; sub r8, call_cost(self.level) as i32
        );
        if pad {
            dynasm!(self.ops ; .arch x64 ; sub rsp, 8);
        }
        dynasm!(self.ops
            ; .arch x64
            ; mov rax, QWORD target as i64
            ; call rax
        );
        if pad {
            dynasm!(self.ops ; .arch x64 ; add rsp, 8);
        }
    }

    /// `rax = rax op rcx`; clobbers `rcx` and `rdx`.
    fn binop(&mut self, op: BinOp) {
        match op {
            BinOp::Add => dynasm!(self.ops ; .arch x64 ; add rax, rcx),
            BinOp::Sub => dynasm!(self.ops ; .arch x64 ; sub rax, rcx),
            BinOp::Mul => dynasm!(self.ops ; .arch x64 ; imul rax, rcx),
            BinOp::Div | BinOp::Rem => self.divide(op == BinOp::Rem),
            BinOp::Lt => dynasm!(self.ops ; .arch x64 ; cmp rax, rcx ; setl al ; movzx eax, al),
            BinOp::Le => dynasm!(self.ops ; .arch x64 ; cmp rax, rcx ; setle al ; movzx eax, al),
            BinOp::Gt => dynasm!(self.ops ; .arch x64 ; cmp rax, rcx ; setg al ; movzx eax, al),
            BinOp::Ge => dynasm!(self.ops ; .arch x64 ; cmp rax, rcx ; setge al ; movzx eax, al),
            BinOp::Eq => dynasm!(self.ops ; .arch x64 ; cmp rax, rcx ; sete al ; movzx eax, al),
            BinOp::Ne => dynasm!(self.ops ; .arch x64 ; cmp rax, rcx ; setne al ; movzx eax, al),
        }
    }

    fn divide(&mut self, rem: bool) {
        let zero = self.ops.new_dynamic_label();
        let minus_one = self.ops.new_dynamic_label();
        let done = self.ops.new_dynamic_label();
        dynasm!(self.ops
            ; .arch x64
            ; test rcx, rcx
            ; jz =>zero
            ; cmp rcx, -1
            ; je =>minus_one
            ; cqo
            ; idiv rcx
        );
        if rem {
            dynasm!(self.ops ; .arch x64 ; mov rax, rdx);
        }
        dynasm!(self.ops ; .arch x64 ; jmp =>done ; =>minus_one);
        if rem {
            // MIN % -1 would trap in idiv; every x % -1 is 0.
            dynasm!(self.ops ; .arch x64 ; xor eax, eax);
        } else {
            // MIN / -1 would trap in idiv; x / -1 is the wrapping negation.
            dynasm!(self.ops ; .arch x64 ; neg rax);
        }
        dynasm!(self.ops
            ; .arch x64
            ; jmp =>done
            ; =>zero
            ; xor eax, eax
            ; =>done
        );
    }
}
