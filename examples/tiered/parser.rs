//! Recursive-descent parser: tokens to a [`Program`].
//!
//! ```text
//! program := item*
//! item    := "def" IDENT "(" [IDENT ("," IDENT)*] ")" "=" expr
//!          | "run" expr
//! expr    := cmp
//! cmp     := sum [("<" | "<=" | ">" | ">=" | "==" | "!=") sum]      (not associative)
//! sum     := term (("+" | "-") term)*
//! term    := unary (("*" | "/" | "%") unary)*
//! unary   := "-" unary | atom
//! atom    := "if" expr "then" expr "else" expr
//!          | INT | IDENT | IDENT "(" [expr ("," expr)*] ")" | "(" expr ")"
//! ```
//!
//! Items need no separator: an expression ends where the next token cannot continue it, and every
//! item starts with a keyword. Nesting is limited to [`MAX_NESTING`] levels so that deeply nested
//! input is an error, not a stack overflow. Every error carries a line:column position.

use crate::ast::{BinOp, Def, Expr, Program, Run};
use crate::lexer::{lex, Error, Pos, Tok, Token};

/// Deepest expression nesting accepted (also bounds the interpreter's and code generator's
/// recursion).
pub const MAX_NESTING: usize = 200;

/// Parses a whole program.
pub fn parse_program(src: &str) -> Result<Program, Error> {
    let mut p = Parser::new(src)?;
    let mut program = Program::default();
    loop {
        let t = p.peek().clone();
        match t.tok {
            Tok::Def => program.defs.push(p.def()?),
            Tok::Run => {
                p.next();
                let expr = p.expr()?;
                program.runs.push(Run { pos: t.pos, expr });
            }
            Tok::Eof => return Ok(program),
            other => {
                return Err(Error::new(
                    t.pos,
                    format!("expected `def` or `run`, found {other}"),
                ))
            }
        }
    }
}

/// Parses exactly one `def` (used for redefinitions at run time).
pub fn parse_def(src: &str) -> Result<Def, Error> {
    let mut p = Parser::new(src)?;
    let def = p.def()?;
    p.expect(Tok::Eof, "after the definition")?;
    Ok(def)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
    depth: usize,
}

impl Parser {
    fn new(src: &str) -> Result<Self, Error> {
        Ok(Parser {
            tokens: lex(src)?,
            at: 0,
            depth: 0,
        })
    }

    fn peek(&self) -> &Token {
        // `lex` always ends with Eof and `next` never moves past it.
        &self.tokens[self.at.min(self.tokens.len() - 1)]
    }

    fn next(&mut self) -> Token {
        let t = self.peek().clone();
        if t.tok != Tok::Eof {
            self.at += 1;
        }
        t
    }

    fn expect(&mut self, want: Tok, context: &str) -> Result<Pos, Error> {
        let t = self.next();
        if t.tok == want {
            Ok(t.pos)
        } else {
            Err(Error::new(
                t.pos,
                format!("expected {want} {context}, found {}", t.tok),
            ))
        }
    }

    fn ident(&mut self, what: &str) -> Result<(String, Pos), Error> {
        let t = self.next();
        match t.tok {
            Tok::Ident(name) => Ok((name, t.pos)),
            other => Err(Error::new(t.pos, format!("expected {what}, found {other}"))),
        }
    }

    fn def(&mut self) -> Result<Def, Error> {
        self.expect(Tok::Def, "")?;
        let (name, pos) = self.ident("a function name after `def`")?;
        self.expect(Tok::LParen, "after the function name")?;
        let mut params = Vec::new();
        if self.peek().tok != Tok::RParen {
            loop {
                params.push(self.ident("a parameter name")?.0);
                if self.peek().tok != Tok::Comma {
                    break;
                }
                self.next();
            }
        }
        self.expect(Tok::RParen, "after the parameters")?;
        self.expect(Tok::Assign, "before the function body")?;
        let body = self.expr()?;
        Ok(Def {
            name,
            pos,
            params,
            body,
        })
    }

    /// Goes one nesting level deeper, failing past [`MAX_NESTING`]. The caller restores `depth`.
    fn deeper(&mut self) -> Result<(), Error> {
        if self.depth >= MAX_NESTING {
            return Err(Error::new(
                self.peek().pos,
                format!("expression nested more than {MAX_NESTING} levels deep"),
            ));
        }
        self.depth += 1;
        Ok(())
    }

    /// Runs `f` one nesting level deeper, failing past [`MAX_NESTING`].
    fn nested<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T, Error>) -> Result<T, Error> {
        let outer = self.depth;
        self.deeper()?;
        let r = f(self);
        self.depth = outer;
        r
    }

    fn expr(&mut self) -> Result<Expr, Error> {
        self.nested(Self::cmp)
    }

    /// `if c then a else b` after the `if`; the `else` branch extends as far right as possible.
    fn if_rest(&mut self) -> Result<Expr, Error> {
        let c = self.expr()?;
        self.expect(Tok::Then, "after the condition of `if`")?;
        let a = self.expr()?;
        self.expect(
            Tok::Else,
            "after the `then` branch (every `if` needs an `else`)",
        )?;
        let b = self.expr()?;
        Ok(Expr::If(Box::new(c), Box::new(a), Box::new(b)))
    }

    fn cmp(&mut self) -> Result<Expr, Error> {
        let a = self.sum()?;
        let op = match self.peek().tok {
            Tok::Lt => BinOp::Lt,
            Tok::Le => BinOp::Le,
            Tok::Gt => BinOp::Gt,
            Tok::Ge => BinOp::Ge,
            Tok::EqEq => BinOp::Eq,
            Tok::Ne => BinOp::Ne,
            _ => return Ok(a),
        };
        self.next();
        let b = self.sum()?;
        if let t @ (Tok::Lt | Tok::Le | Tok::Gt | Tok::Ge | Tok::EqEq | Tok::Ne) = &self.peek().tok
        {
            return Err(Error::new(
                self.peek().pos,
                format!("comparisons do not chain: use parentheses before {t}"),
            ));
        }
        Ok(Expr::Bin(op, Box::new(a), Box::new(b)))
    }

    fn sum(&mut self) -> Result<Expr, Error> {
        let mut a = self.term()?;
        let outer = self.depth;
        let r = loop {
            let op = match self.peek().tok {
                Tok::Plus => BinOp::Add,
                Tok::Minus => BinOp::Sub,
                _ => break Ok(a),
            };
            // Each operator nests the tree one level deeper (left-associative chain).
            if let Err(e) = self.deeper() {
                break Err(e);
            }
            self.next();
            let b = match self.term() {
                Ok(b) => b,
                Err(e) => break Err(e),
            };
            a = Expr::Bin(op, Box::new(a), Box::new(b));
        };
        self.depth = outer;
        r
    }

    fn term(&mut self) -> Result<Expr, Error> {
        let mut a = self.unary()?;
        let outer = self.depth;
        let r = loop {
            let op = match self.peek().tok {
                Tok::Star => BinOp::Mul,
                Tok::Slash => BinOp::Div,
                Tok::Percent => BinOp::Rem,
                _ => break Ok(a),
            };
            if let Err(e) = self.deeper() {
                break Err(e);
            }
            self.next();
            let b = match self.unary() {
                Ok(b) => b,
                Err(e) => break Err(e),
            };
            a = Expr::Bin(op, Box::new(a), Box::new(b));
        };
        self.depth = outer;
        r
    }

    fn unary(&mut self) -> Result<Expr, Error> {
        if self.peek().tok == Tok::Minus {
            self.next();
            return self.nested(|p| Ok(Expr::Neg(Box::new(p.unary()?))));
        }
        self.atom()
    }

    fn atom(&mut self) -> Result<Expr, Error> {
        let t = self.next();
        match t.tok {
            Tok::Int(v) => Ok(Expr::Int(v)),
            Tok::If => self.nested(Self::if_rest),
            Tok::Ident(name) if self.peek().tok == Tok::LParen => {
                self.next();
                let mut args = Vec::new();
                if self.peek().tok != Tok::RParen {
                    loop {
                        args.push(self.expr()?);
                        if self.peek().tok != Tok::Comma {
                            break;
                        }
                        self.next();
                    }
                }
                self.expect(Tok::RParen, &format!("after the arguments of `{name}`"))?;
                Ok(Expr::Call(name, t.pos, args))
            }
            Tok::Ident(name) => Ok(Expr::Var(name, t.pos)),
            Tok::LParen => {
                let e = self.expr()?;
                self.expect(Tok::RParen, "to close `(`")?;
                Ok(e)
            }
            other => Err(Error::new(
                t.pos,
                format!("expected an expression, found {other}"),
            )),
        }
    }
}
