//! `tiered`: a tiny language whose functions start interpreted and tier up to native code.
//!
//! ```text
//! cargo run --release --example tiered [-- --script FILE] [--seconds N] [--workers N] [--tasks N]
//! ```
//! See `USAGE` below and the module docs of `engine.rs` for how tiers and redefinitions use
//! tramway patch sites.

mod ast;
mod codegen;
mod engine;
mod interp;
mod lexer;
mod parser;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use tramway::jit::Jit;

use crate::engine::Engine;

fn main() -> ExitCode {
    let src = include_str!("../programs/default.tw");
    let program = match parser::parse_program(src).and_then(|p| ast::resolve(&p)) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    let jit = Jit::new().expect("jit");
    let runs = program.runs.clone();
    let engine = Engine::new(jit, program, 1000).expect("engine");
    engine.set_tiering(false);
    for (pos, ir) in &runs {
        let t = Instant::now();
        let r = engine.eval(ir);
        println!("{pos}: {r:?} in {:?}", t.elapsed());
    }
    engine.compile_all();
    for (pos, ir) in &runs {
        let t = Instant::now();
        let r = engine.eval(ir);
        println!("{pos}: {r:?} in {:?}", t.elapsed());
    }
    let _ = Duration::ZERO;
    ExitCode::SUCCESS
}
