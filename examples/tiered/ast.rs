//! Syntax trees and their resolved form.
//!
//! The parser produces an [`Expr`] tree that still names variables and functions. [`resolve`]
//! checks a whole program (every name is defined, calls pass the right number of arguments, no
//! function is defined twice, at most [`MAX_PARAMS`] parameters) and lowers it to [`Ir`], where
//! parameters are slot numbers and callees are function ids. Both tiers run the `Ir`: the
//! interpreter walks it, the code generator translates it to x86-64.

use std::collections::HashMap;

use crate::lexer::{Error, Pos};

/// Most parameters a function may take (they are passed in the four C-ABI argument registers
/// `rdi, rsi, rdx, rcx`).
pub const MAX_PARAMS: usize = 4;

/// A binary operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    /// Wrapping `+`.
    Add,
    /// Wrapping `-`.
    Sub,
    /// Wrapping `*`.
    Mul,
    /// `/`: truncating, wrapping (`MIN / -1 == MIN`), and `x / 0 == 0`.
    Div,
    /// `%`: sign of the dividend, `MIN % -1 == 0`, and `x % 0 == 0`.
    Rem,
    /// `<` (1 or 0).
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `==`
    Eq,
    /// `!=`
    Ne,
}

impl BinOp {
    /// Applies the operator with the language's semantics (shared by the interpreter and the
    /// constant folding of tests; the code generator emits the same semantics).
    pub fn apply(self, a: i64, b: i64) -> i64 {
        match self {
            BinOp::Add => a.wrapping_add(b),
            BinOp::Sub => a.wrapping_sub(b),
            BinOp::Mul => a.wrapping_mul(b),
            BinOp::Div if b == 0 => 0,
            BinOp::Div => a.wrapping_div(b),
            BinOp::Rem if b == 0 => 0,
            BinOp::Rem => a.wrapping_rem(b),
            BinOp::Lt => i64::from(a < b),
            BinOp::Le => i64::from(a <= b),
            BinOp::Gt => i64::from(a > b),
            BinOp::Ge => i64::from(a >= b),
            BinOp::Eq => i64::from(a == b),
            BinOp::Ne => i64::from(a != b),
        }
    }
}

/// An expression as parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    /// An integer literal.
    Int(i64),
    /// A parameter reference.
    Var(String, Pos),
    /// Wrapping negation.
    Neg(Box<Expr>),
    /// A binary operation.
    Bin(BinOp, Box<Expr>, Box<Expr>),
    /// `if c then a else b` (c is true when non-zero).
    If(Box<Expr>, Box<Expr>, Box<Expr>),
    /// A call `f(args)`.
    Call(String, Pos, Vec<Expr>),
}

/// `def name(params) = body`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Def {
    /// The function's name.
    pub name: String,
    /// Position of the name.
    pub pos: Pos,
    /// Parameter names.
    pub params: Vec<String>,
    /// The body.
    pub body: Expr,
}

/// `run expr`: an expression the driver evaluates (it may call functions but has no variables).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    /// Position of the `run` keyword.
    pub pos: Pos,
    /// The expression.
    pub expr: Expr,
}

/// A parsed program.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Program {
    /// Function definitions, in source order.
    pub defs: Vec<Def>,
    /// `run` lines, in source order.
    pub runs: Vec<Run>,
}

/// A function's id: its index in [`Module::funcs`].
pub type FuncId = usize;

/// A resolved expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ir {
    /// A constant.
    Const(i64),
    /// The parameter in this slot.
    Param(u8),
    /// Wrapping negation.
    Neg(Box<Ir>),
    /// A binary operation.
    Bin(BinOp, Box<Ir>, Box<Ir>),
    /// `if c != 0 then a else b`.
    If(Box<Ir>, Box<Ir>, Box<Ir>),
    /// A call with 0 to [`MAX_PARAMS`] arguments.
    Call(FuncId, Vec<Ir>),
    /// A builtin applied to one argument.
    Builtin(Builtin, Box<Ir>),
}

/// The builtins: each takes one argument, parks the calling green thread (a voluntary yield
/// point, from inside compiled code too), and returns a value. A user function of the same
/// name takes precedence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Builtin {
    /// `yield(x)`: yields the task (it may resume on another worker) and is `x`.
    Yield,
    /// `sleep(ms)`: sleeps `ms` milliseconds (clamped to `0..=10000`) and is 0.
    Sleep,
}

impl Builtin {
    /// Every builtin.
    pub const ALL: [Builtin; 2] = [Builtin::Yield, Builtin::Sleep];

    /// Its name in programs.
    pub fn name(self) -> &'static str {
        match self {
            Builtin::Yield => "yield",
            Builtin::Sleep => "sleep",
        }
    }
}

/// The builtin called `name`, if any.
fn builtin(name: &str) -> Option<Builtin> {
    Builtin::ALL.into_iter().find(|b| b.name() == name)
}

/// A resolved function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Func {
    /// Its name.
    pub name: String,
    /// Number of parameters.
    pub arity: usize,
    /// Its body.
    pub body: Ir,
}

/// A resolved program.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Module {
    /// Functions by id.
    pub funcs: Vec<Func>,
    /// `run` expressions with their positions.
    pub runs: Vec<(Pos, Ir)>,
}

impl Module {
    /// The id of the function called `name`.
    pub fn lookup(&self, name: &str) -> Option<FuncId> {
        self.funcs.iter().position(|f| f.name == name)
    }
}

/// Checks names, arities and duplicates, and lowers `program` to a [`Module`].
pub fn resolve(program: &Program) -> Result<Module, Error> {
    let mut sigs: HashMap<&str, (FuncId, usize)> = HashMap::new();
    for (id, def) in program.defs.iter().enumerate() {
        if sigs.insert(&def.name, (id, def.params.len())).is_some() {
            return Err(Error::new(
                def.pos,
                format!("function `{}` is defined twice", def.name),
            ));
        }
    }
    let funcs = program
        .defs
        .iter()
        .map(|def| resolve_def_with(def, &sigs))
        .collect::<Result<Vec<_>, _>>()?;
    let runs = program
        .runs
        .iter()
        .map(|run| Ok((run.pos, lower(&run.expr, &[], &sigs)?)))
        .collect::<Result<Vec<_>, Error>>()?;
    Ok(Module { funcs, runs })
}

/// Resolves a new definition of an existing function of `module` (for redefinition at run
/// time): the name must exist and keep its arity, so that existing callers stay valid.
pub fn resolve_redefinition(module: &Module, def: &Def) -> Result<(FuncId, Func), Error> {
    let sigs: HashMap<&str, (FuncId, usize)> = module
        .funcs
        .iter()
        .enumerate()
        .map(|(id, f)| (f.name.as_str(), (id, f.arity)))
        .collect();
    let Some(&(id, arity)) = sigs.get(def.name.as_str()) else {
        return Err(Error::new(
            def.pos,
            format!("cannot redefine unknown function `{}`", def.name),
        ));
    };
    if arity != def.params.len() {
        return Err(Error::new(
            def.pos,
            format!(
                "redefinition of `{}` must keep its {arity} parameter(s)",
                def.name
            ),
        ));
    }
    Ok((id, resolve_def_with(def, &sigs)?))
}

fn resolve_def_with(def: &Def, sigs: &HashMap<&str, (FuncId, usize)>) -> Result<Func, Error> {
    if def.params.len() > MAX_PARAMS {
        return Err(Error::new(
            def.pos,
            format!(
                "function `{}` has {} parameters; at most {MAX_PARAMS} are allowed",
                def.name,
                def.params.len()
            ),
        ));
    }
    for (i, p) in def.params.iter().enumerate() {
        if def.params[..i].contains(p) {
            return Err(Error::new(
                def.pos,
                format!("parameter `{p}` of `{}` is declared twice", def.name),
            ));
        }
    }
    Ok(Func {
        name: def.name.clone(),
        arity: def.params.len(),
        body: lower(&def.body, &def.params, sigs)?,
    })
}

fn lower(e: &Expr, params: &[String], sigs: &HashMap<&str, (FuncId, usize)>) -> Result<Ir, Error> {
    let boxed = |e: &Expr| lower(e, params, sigs).map(Box::new);
    Ok(match e {
        Expr::Int(v) => Ir::Const(*v),
        Expr::Var(name, pos) => match params.iter().position(|p| p == name) {
            // At most MAX_PARAMS (4) parameters, so the slot fits in a u8.
            Some(slot) => Ir::Param(slot as u8),
            None if sigs.contains_key(name.as_str()) => {
                return Err(Error::new(
                    *pos,
                    format!("function `{name}` used as a value (call it with `(...)`)"),
                ))
            }
            None => return Err(Error::new(*pos, format!("unknown variable `{name}`"))),
        },
        Expr::Neg(x) => Ir::Neg(boxed(x)?),
        Expr::Bin(op, a, b) => Ir::Bin(*op, boxed(a)?, boxed(b)?),
        Expr::If(c, a, b) => Ir::If(boxed(c)?, boxed(a)?, boxed(b)?),
        Expr::Call(name, pos, args)
            if !sigs.contains_key(name.as_str()) && builtin(name).is_some() =>
        {
            let b = builtin(name).unwrap_or(Builtin::Yield);
            match args.as_slice() {
                [x] => Ir::Builtin(b, Box::new(lower(x, params, sigs)?)),
                _ => {
                    return Err(Error::new(
                        *pos,
                        format!("`{name}` takes 1 argument but {} were given", args.len()),
                    ))
                }
            }
        }
        Expr::Call(name, pos, args) => {
            let Some(&(id, arity)) = sigs.get(name.as_str()) else {
                return Err(Error::new(*pos, format!("unknown function `{name}`")));
            };
            if args.len() != arity {
                return Err(Error::new(
                    *pos,
                    format!(
                        "`{name}` takes {arity} argument(s) but {} were given",
                        args.len()
                    ),
                ));
            }
            Ir::Call(
                id,
                args.iter()
                    .map(|a| lower(a, params, sigs))
                    .collect::<Result<_, _>>()?,
            )
        }
    })
}
