//! Lexer: source text to tokens with line:column positions.
//!
//! The language's tokens are identifiers, keywords (`def`, `if`, `then`, `else`, `run`), decimal
//! integer literals, the punctuation `( ) , =` and the operators `+ - * / % < <= > >= == !=`.
//! `#` starts a comment that runs to the end of the line; whitespace (including newlines) only
//! separates tokens. Errors (an unknown character, an integer that does not fit in an `i64`) are
//! returned as [`Error`]s carrying the position, never as panics.

use std::fmt;

/// A 1-based line and column (columns count characters, not bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pos {
    /// Line, starting at 1.
    pub line: u32,
    /// Column, starting at 1.
    pub col: u32,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// An error in a program (lexing, parsing or name resolution), with its position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    /// Where the error is.
    pub pos: Pos,
    /// What is wrong.
    pub message: String,
}

impl Error {
    /// An error at `pos`.
    pub fn new(pos: Pos, message: impl Into<String>) -> Self {
        Error {
            pos,
            message: message.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error at {}: {}", self.pos, self.message)
    }
}

impl std::error::Error for Error {}

/// The kinds of tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tok {
    /// An identifier (not a keyword).
    Ident(String),
    /// An integer literal (non-negative; `-` is an operator).
    Int(i64),
    /// `def`
    Def,
    /// `run`
    Run,
    /// `if`
    If,
    /// `then`
    Then,
    /// `else`
    Else,
    /// `(`
    LParen,
    /// `)`
    RParen,
    /// `,`
    Comma,
    /// `=`
    Assign,
    /// `+`
    Plus,
    /// `-`
    Minus,
    /// `*`
    Star,
    /// `/`
    Slash,
    /// `%`
    Percent,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `==`
    EqEq,
    /// `!=`
    Ne,
    /// End of input.
    Eof,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Tok::Ident(name) => return write!(f, "identifier `{name}`"),
            Tok::Int(v) => return write!(f, "integer `{v}`"),
            Tok::Def => "`def`",
            Tok::Run => "`run`",
            Tok::If => "`if`",
            Tok::Then => "`then`",
            Tok::Else => "`else`",
            Tok::LParen => "`(`",
            Tok::RParen => "`)`",
            Tok::Comma => "`,`",
            Tok::Assign => "`=`",
            Tok::Plus => "`+`",
            Tok::Minus => "`-`",
            Tok::Star => "`*`",
            Tok::Slash => "`/`",
            Tok::Percent => "`%`",
            Tok::Lt => "`<`",
            Tok::Le => "`<=`",
            Tok::Gt => "`>`",
            Tok::Ge => "`>=`",
            Tok::EqEq => "`==`",
            Tok::Ne => "`!=`",
            Tok::Eof => "end of input",
        };
        f.write_str(s)
    }
}

/// A token and where it starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    /// The token.
    pub tok: Tok,
    /// Position of its first character.
    pub pos: Pos,
}

/// Splits `src` into tokens; the last one is always [`Tok::Eof`].
pub fn lex(src: &str) -> Result<Vec<Token>, Error> {
    let mut out = Vec::new();
    let mut chars = src.chars().peekable();
    let (mut line, mut col) = (1u32, 1u32);
    while let Some(&c) = chars.peek() {
        let pos = Pos { line, col };
        // Consumes one character and advances the position.
        let mut bump = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>| {
            let c = chars.next();
            if c == Some('\n') {
                line = line.saturating_add(1);
                col = 1;
            } else {
                col = col.saturating_add(1);
            }
        };
        if c.is_whitespace() {
            bump(&mut chars);
            continue;
        }
        if c == '#' {
            while chars.peek().is_some_and(|&c| c != '\n') {
                bump(&mut chars);
            }
            continue;
        }
        let tok = if c.is_ascii_digit() {
            let mut value: i64 = 0;
            let mut overflow = false;
            while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
                match value
                    .checked_mul(10)
                    .and_then(|v| v.checked_add(i64::from(d)))
                {
                    Some(v) => value = v,
                    None => overflow = true,
                }
                bump(&mut chars);
            }
            if chars
                .peek()
                .is_some_and(|c| c.is_alphanumeric() || *c == '_')
            {
                return Err(Error::new(pos, "invalid integer literal"));
            }
            if overflow {
                return Err(Error::new(pos, "integer literal does not fit in 64 bits"));
            }
            Tok::Int(value)
        } else if c.is_alphabetic() || c == '_' {
            let mut word = String::new();
            while let Some(&c) = chars.peek().filter(|c| c.is_alphanumeric() || **c == '_') {
                word.push(c);
                bump(&mut chars);
            }
            match word.as_str() {
                "def" => Tok::Def,
                "run" => Tok::Run,
                "if" => Tok::If,
                "then" => Tok::Then,
                "else" => Tok::Else,
                _ => Tok::Ident(word),
            }
        } else {
            bump(&mut chars);
            let next_is_eq = chars.peek() == Some(&'=');
            let two = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>, col: &mut u32, t| {
                chars.next();
                *col = col.saturating_add(1);
                t
            };
            match c {
                '(' => Tok::LParen,
                ')' => Tok::RParen,
                ',' => Tok::Comma,
                '+' => Tok::Plus,
                '-' => Tok::Minus,
                '*' => Tok::Star,
                '/' => Tok::Slash,
                '%' => Tok::Percent,
                '<' if next_is_eq => two(&mut chars, &mut col, Tok::Le),
                '<' => Tok::Lt,
                '>' if next_is_eq => two(&mut chars, &mut col, Tok::Ge),
                '>' => Tok::Gt,
                '=' if next_is_eq => two(&mut chars, &mut col, Tok::EqEq),
                '=' => Tok::Assign,
                '!' if next_is_eq => two(&mut chars, &mut col, Tok::Ne),
                _ => {
                    return Err(Error::new(
                        pos,
                        format!("unexpected character `{}`", c.escape_default()),
                    ))
                }
            }
        };
        out.push(Token { tok, pos });
    }
    out.push(Token {
        tok: Tok::Eof,
        pos: Pos { line, col },
    });
    Ok(out)
}
