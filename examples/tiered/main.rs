//! `tiered`: a tiny language whose functions start interpreted and tier up to native code.
//!
//! ```text
//! cargo run --release --example tiered -- [--script FILE] [--seconds N] [--workers N] [--tasks N]
//! ```
//!
//! 1. **Speedup.** The program (the built-in `examples/programs/default.tw` or `--script FILE`)
//!    is parsed and resolved; errors print `error at LINE:COL: message` and exit with 1. Every
//!    `run` line is timed with all functions interpreted, then again after tier-up (automatic
//!    after `--threshold` interpreted calls, then the rest compiled), and both results must agree.
//! 2. **Redefinition under load.** The built-in program is loaded into an engine whose retired
//!    code is reclaimed by the tramway runtime's grace periods. `--tasks` green threads on
//!    `--workers` workers call `work(n) = scale(n) + poly(n)` in a loop while the main thread
//!    redefines `scale(x) = x * K` about every millisecond for `--seconds`. `scale` parks the
//!    task from inside its compiled code now and then (the builtins `yield(x)` and `sleep(ms)`),
//!    so old versions are retired while tasks are parked inside them: the runtime's stack scan
//!    holds each one back until no parked task points into it. Every result must be one that
//!    some version of `scale` produces; after shutdown all code memory must be unmapped.
//!
//! Exit status: 0 if everything checked out, 1 for a bad program or a failed check, 2 for bad
//! flags. Module map: `lexer`, `parser`, `ast` (resolution), `interp`, `codegen`, `engine`, `load`.

mod ast;
mod codegen;
mod engine;
mod interp;
mod lexer;
mod load;
mod parser;
#[cfg(test)]
mod tests;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use tramway::jit::Jit;

use crate::ast::{Ir, Module};
use crate::engine::{Engine, Tier};
use crate::lexer::Pos;

/// The built-in program.
pub const DEFAULT_PROGRAM: &str = include_str!("../programs/default.tw");

const USAGE: &str = "\
usage: tiered [--script FILE] [--seconds N] [--workers N] [--tasks N] [--threshold N]

  --script FILE    program to run instead of the built-in one (defs and `run EXPR` lines)
  --seconds N      duration of the redefinition-under-load phase (default 2, 0 to skip)
  --workers N      runtime worker threads, 1..=256 (default 2)
  --tasks N        green threads calling compiled code during the load phase, 1..=10000 (default 8)
  --threshold N    interpreted calls before a function is compiled (default 1000)
  -h, --help       this message";

/// Command-line options.
#[derive(Debug)]
struct Options {
    script: Option<String>,
    seconds: f64,
    workers: usize,
    tasks: usize,
    threshold: u64,
}

fn parse_args(args: &[String]) -> Result<Option<Options>, String> {
    let mut o = Options {
        script: None,
        seconds: 2.0,
        workers: 2,
        tasks: 8,
        threshold: 1000,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Ok(None);
        }
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--script" => o.script = Some(value()?.clone()),
            "--seconds" => o.seconds = number(flag, value()?, 0.0, 3600.0)?,
            "--workers" => o.workers = number(flag, value()?, 1.0, 256.0)? as usize,
            "--tasks" => o.tasks = number(flag, value()?, 1.0, 10_000.0)? as usize,
            "--threshold" => o.threshold = number(flag, value()?, 1.0, 1e12)? as u64,
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(Some(o))
}

/// Parses a number in `min..=max`; integer flags reject fractions.
fn number(flag: &str, s: &str, min: f64, max: f64) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{flag}: `{s}` is not a number"))?;
    if !(min..=max).contains(&v) {
        return Err(format!("{flag}: {s} is not in {min}..={max}"));
    }
    if flag != "--seconds" && v.fract() != 0.0 {
        return Err(format!("{flag}: `{s}` is not an integer"));
    }
    Ok(v)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match parse_args(&args) {
        Ok(Some(o)) => o,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("tiered: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

fn run(opts: &Options) -> Result<(), String> {
    let (name, src) = match &opts.script {
        Some(path) => {
            let src = std::fs::read_to_string(path)
                .map_err(|e| format!("tiered: cannot read {path}: {e}"))?;
            (path.clone(), src)
        }
        None => ("built-in program".to_string(), DEFAULT_PROGRAM.to_string()),
    };
    let module = parser::parse_program(&src)
        .and_then(|p| ast::resolve(&p))
        .map_err(|e| e.to_string())?;
    println!(
        "== tiered: {name}: {} functions, {} run lines",
        module.funcs.len(),
        module.runs.len()
    );
    speedup(&module, &src, opts.threshold)?;
    if opts.seconds > 0.0 {
        let report = load::run(&load::LoadConfig {
            seconds: opts.seconds,
            workers: opts.workers,
            tasks: opts.tasks,
            threshold: opts.threshold,
        })?;
        println!("{report}");
        if !report.ok() {
            return Err("tiered: the load phase failed its checks (see the summary)".into());
        }
    }
    Ok(())
}

/// Times one evaluation of `ir`, repeated until about 100 ms have passed; returns the result
/// and the mean time per evaluation.
fn time_run(engine: &Engine, ir: &Ir, what: &str, pos: Pos) -> Result<(i64, Duration), String> {
    let budget = Duration::from_millis(100);
    let start = Instant::now();
    let mut reps = 0u32;
    let mut result = 0;
    while reps == 0 || (start.elapsed() < budget && reps < 100_000) {
        result = engine.eval(ir).map_err(|_| {
            format!(
                "error at {pos}: {what}: recursion too deep (call depth budget of {} used up)",
                interp::MAX_DEPTH
            )
        })?;
        reps += 1;
    }
    Ok((result, start.elapsed() / reps))
}

/// Phase 1: every `run` line interpreted, then compiled; prints times and the speedup.
fn speedup(module: &Module, src: &str, threshold: u64) -> Result<(), String> {
    // Only this thread calls these engines' sites, and retired code is kept until an engine
    // drops (the jit's default `LeakUntilDrop` reclaimer), so no runtime is needed here.
    let new_engine = |threshold| {
        let jit = Jit::new().map_err(|e| format!("tiered: cannot create the jit: {e}"))?;
        Engine::new(jit, module.clone(), threshold).map_err(|e| format!("tiered: {e}"))
    };
    let lines: Vec<&str> = src.lines().collect();
    let text = |pos: Pos| {
        let line = lines
            .get((pos.line as usize).saturating_sub(1))
            .copied()
            .unwrap_or("");
        line.trim().to_string()
    };

    let interpreter_only = new_engine(u64::MAX)?;
    interpreter_only.set_tiering(false);
    let mut interpreted = Vec::new();
    for (pos, ir) in &module.runs {
        interpreted.push(time_run(&interpreter_only, ir, "interpreted", *pos)?);
    }
    drop(interpreter_only);

    // Tier-up: a fresh engine compiles each function on its `threshold`-th interpreted call.
    let engine = new_engine(threshold)?;
    for (pos, ir) in &module.runs {
        engine.eval(ir).map_err(|_| {
            format!(
                "error at {pos}: recursion too deep (call depth budget of {} used up)",
                interp::MAX_DEPTH
            )
        })?;
    }
    let mut cold = Vec::new();
    for f in engine.func_stats() {
        match f.tier {
            Tier::Compiled => println!(
                "tier-up: {} compiled after {} interpreted calls",
                f.name, f.interpreted_calls
            ),
            Tier::Interpreted => cold.push(f.name),
        }
    }
    engine.compile_all();
    if !cold.is_empty() {
        println!(
            "compiled before timing (called fewer than {threshold} times): {}",
            cold.join(", ")
        );
    }

    let (mut total_i, mut total_c) = (Duration::ZERO, Duration::ZERO);
    println!(
        "{:<40} {:>22} {:>12} {:>12} {:>8}",
        "run", "result", "interpreted", "compiled", "speedup"
    );
    for ((pos, ir), (ri, ti)) in module.runs.iter().zip(interpreted) {
        let (rc, tc) = time_run(&engine, ir, "compiled", *pos)?;
        if ri != rc {
            return Err(format!(
                "tiered: {pos}: interpreted result {ri} differs from compiled result {rc}"
            ));
        }
        total_i += ti;
        total_c += tc;
        println!(
            "{:<40} {:>22} {:>12} {:>12} {:>7.1}x",
            text(*pos),
            ri,
            format!("{ti:.2?}"),
            format!("{tc:.2?}"),
            ratio(ti, tc)
        );
    }
    if !module.runs.is_empty() {
        println!(
            "speedup: compiled code runs the program {:.1}x faster than the interpreter ({total_i:.2?} -> {total_c:.2?} per pass)",
            ratio(total_i, total_c)
        );
    }
    if engine.compile_errors() > 0 {
        println!(
            "note: {} functions could not be compiled and stayed interpreted",
            engine.compile_errors()
        );
    }
    Ok(())
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}
