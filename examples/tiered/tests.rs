//! Tests of the language modules directly: parser and resolver errors, the interpreter, the
//! code generator against the interpreter, tier-up and redefinition. (The binary's end-to-end
//! runs are in the workspace's `tests/tiered.rs`.)

use std::path::PathBuf;

use tramway::jit::Jit;
use tramway_harness::rng::Rng;

use crate::ast::{resolve, BinOp, Module};
use crate::engine::{DepthExceeded, Engine, Tier};
use crate::interp::{Caller, Direct, MAX_DEPTH};
use crate::{ast, interp, parser};

// ---------------------------------------------------------------------------------------------
// Helpers

fn module(src: &str) -> Module {
    parser::parse_program(src)
        .and_then(|p| resolve(&p))
        .unwrap_or_else(|e| panic!("{e}\nin:\n{src}"))
}

/// The error message of a program that must not load.
fn load_error(src: &str) -> String {
    match parser::parse_program(src).and_then(|p| resolve(&p)) {
        Ok(_) => panic!("program loaded but should not:\n{src}"),
        Err(e) => e.to_string(),
    }
}

fn direct(m: &Module, name: &str, args: [i64; 4]) -> i64 {
    let id = m.lookup(name).expect("function");
    Direct { funcs: &m.funcs }.call(id, args, MAX_DEPTH)
}

/// An engine with every function compiled (default jit; this thread is the only caller).
fn compiled(m: &Module) -> Engine {
    let engine = Engine::new(Jit::new().expect("jit"), m.clone(), u64::MAX).expect("engine");
    engine.compile_all();
    assert_eq!(engine.compile_errors(), 0);
    assert!(engine.func_stats().iter().all(|f| f.tier == Tier::Compiled));
    engine
}

const EDGE: [i64; 9] = [0, 1, -1, 2, -7, 13, i64::MAX, i64::MIN, i64::MIN + 1];

// ---------------------------------------------------------------------------------------------
// Parser and resolver errors

#[test]
fn errors_carry_line_and_column() {
    let cases: &[(&str, &str)] = &[
        (
            "def f(x) = x $ 1",
            "error at 1:14: unexpected character `$`",
        ),
        (
            "def f(x) = x +",
            "error at 1:15: expected an expression, found end of input",
        ),
        ("def f(x) = y", "error at 1:12: unknown variable `y`"),
        ("def f(x) = g(x)", "error at 1:12: unknown function `g`"),
        (
            "def f(x) = x\ndef g() = f()",
            "error at 2:11: `f` takes 1 argument(s) but 0 were given",
        ),
        (
            "def f(x) = x\ndef f(y) = y",
            "error at 2:5: function `f` is defined twice",
        ),
        (
            "def f(a, b, c, d, e) = a",
            "error at 1:5: function `f` has 5 parameters; at most 4 are allowed",
        ),
        (
            "def f(a, a) = a",
            "error at 1:5: parameter `a` of `f` is declared twice",
        ),
        (
            "def f(x) = if x then 1",
            "error at 1:23: expected `else` after the `then` branch (every `if` needs an `else`), found end of input",
        ),
        (
            "def f(x) = x < 1 < 2",
            "error at 1:18: comparisons do not chain: use parentheses before `<`",
        ),
        (
            "def f(x) = 99999999999999999999",
            "error at 1:12: integer literal does not fit in 64 bits",
        ),
        ("def f(x) = 12ab", "error at 1:12: invalid integer literal"),
        (
            "def (x) = x",
            "error at 1:5: expected a function name after `def`, found `(`",
        ),
        (
            "x = 1",
            "error at 1:1: expected `def` or `run`, found identifier `x`",
        ),
        (
            "def f(x) = x\nrun f",
            "error at 2:5: function `f` used as a value (call it with `(...)`)",
        ),
        (
            "# comment\n  def f(x) = (x",
            "error at 2:16: expected `)` to close `(`, found end of input",
        ),
    ];
    for (src, want) in cases {
        assert_eq!(&load_error(src), want, "source: {src:?}");
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let deep_parens = format!("def f(x) = {}x{}", "(".repeat(100_000), ")".repeat(100_000));
    assert!(load_error(&deep_parens).contains("nested more than"));
    let long_chain = format!("def f(x) = x{}", " + x".repeat(100_000));
    assert!(load_error(&long_chain).contains("nested more than"));
    let negations = format!("def f(x) = {}x", "-".repeat(100_000));
    assert!(load_error(&negations).contains("nested more than"));
}

#[test]
fn garbage_input_never_panics() {
    let mut rng = Rng(0x1234_5678);
    let alphabet: Vec<char> =
        "def run if then else ( ) , = + - * / % < <= == != x y f 0 9 # \n é\t"
            .chars()
            .collect();
    for _ in 0..2000 {
        let len = rng.below(40) as usize;
        let src: String = (0..len)
            .map(|_| alphabet[rng.below(alphabet.len() as u64) as usize])
            .collect();
        let _ = parser::parse_program(&src).and_then(|p| resolve(&p));
        let _ = parser::parse_def(&src);
    }
}

#[test]
fn redefinition_must_keep_name_and_arity() {
    let m = module("def f(x) = x\ndef g(a, b) = f(a) + b");
    let check = |src: &str| {
        parser::parse_def(src)
            .and_then(|d| ast::resolve_redefinition(&m, &d))
            .map(|(id, _)| id)
            .map_err(|e| e.to_string())
    };
    assert_eq!(check("def f(y) = y * 2"), Ok(0));
    assert_eq!(check("def g(p, q) = g(q, p)"), Ok(1));
    assert_eq!(
        check("def h(x) = x"),
        Err("error at 1:5: cannot redefine unknown function `h`".into())
    );
    assert_eq!(
        check("def f(x, y) = x"),
        Err("error at 1:5: redefinition of `f` must keep its 1 parameter(s)".into())
    );
    assert_eq!(
        check("def f(x) = x run f(1)"),
        Err("error at 1:14: expected end of input after the definition, found `run`".into())
    );
}

// ---------------------------------------------------------------------------------------------
// Semantics

#[test]
fn division_by_zero_and_overflow_are_defined() {
    assert_eq!(BinOp::Div.apply(7, 0), 0);
    assert_eq!(BinOp::Rem.apply(7, 0), 0);
    assert_eq!(BinOp::Div.apply(i64::MIN, -1), i64::MIN);
    assert_eq!(BinOp::Rem.apply(i64::MIN, -1), 0);
    assert_eq!(BinOp::Div.apply(-7, 2), -3);
    assert_eq!(BinOp::Rem.apply(-7, 2), -1);
    assert_eq!(BinOp::Add.apply(i64::MAX, 1), i64::MIN);
}

#[test]
fn interpreter_runs_recursive_programs() {
    let m = module(include_str!("../programs/default.tw"));
    assert_eq!(direct(&m, "fib", [20, 0, 0, 0]), 6765);
    assert_eq!(direct(&m, "gcd", [1071, 462, 0, 0]), 21);
    assert_eq!(direct(&m, "collatz", [27, 0, 0, 0]), 111);
}

/// Runs `f` on a thread with a large stack (the interpreter recurses up to `MAX_DEPTH` calls deep;
/// test threads have 2 MiB).
fn with_big_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(f)
        .expect("spawn")
        .join()
        .expect("test thread");
}

#[test]
fn depth_budget_stops_runaway_recursion_in_both_tiers() {
    with_big_stack(depth_budget_body);
}

fn depth_budget_body() {
    let m = module("def f(n) = f(n + 1) + 1\ndef g(n) = if n == 0 then 0 else 1 + g(n - 1)");
    interp::take_depth_exceeded();
    direct(&m, "f", [0; 4]);
    assert!(interp::take_depth_exceeded());
    let engine = compiled(&m);
    assert_eq!(engine.call(0, [0; 4]), Err(DepthExceeded));
    assert_eq!(engine.call(1, [MAX_DEPTH - 1, 0, 0, 0]), Ok(MAX_DEPTH - 1));
    assert_eq!(engine.call(1, [MAX_DEPTH, 0, 0, 0]), Err(DepthExceeded));
}

const SAMPLES: &str = "
def fib(n) = if n < 2 then n else fib(n - 1) + fib(n - 2)
def arith(a, b, c, d) = (a + b) * (c - d) / (a % 7 + 1) - -b % (d + 3)
def divs(a, b) = a / b + a % b * 1000
def cmps(a, b) = (a < b) + 2 * (a <= b) + 4 * (a > b) + 8 * (a >= b) + 16 * (a == b) + 32 * (a != b)
def pick(a, b, c) = if a then b else if b then c else a - c
def nest(a, b) = arith(a, b, divs(a, b), cmps(b, a)) + pick(a % 2, b, a)
def ackish(m, n) = if m == 0 then n + 1 else if n == 0 then ackish(m - 1, 1) else ackish(m - 1, ackish(m, n - 1))
def zero() = 0
def many(a, b, c, d) = nest(a, b) * nest(c, d) + zero() + fib(a % 10)
";

#[test]
fn compiled_code_agrees_with_the_interpreter_on_samples() {
    let m = module(SAMPLES);
    let engine = compiled(&m);
    for (id, f) in m.funcs.iter().enumerate() {
        for &a in &EDGE {
            for &b in &EDGE {
                let mut args = [a, b, b.wrapping_sub(a), a.wrapping_mul(3)];
                if f.name == "ackish" {
                    args = [a.rem_euclid(3), b.rem_euclid(4), 0, 0];
                }
                if f.name == "fib" || f.name == "many" {
                    args[0] = a.rem_euclid(15);
                }
                interp::take_depth_exceeded();
                let want = Direct { funcs: &m.funcs }.call(id, args, MAX_DEPTH);
                let deep = interp::take_depth_exceeded();
                let got = engine.call(id, args);
                if deep {
                    assert_eq!(got, Err(DepthExceeded), "{}({args:?})", f.name);
                } else {
                    assert_eq!(got, Ok(want), "{}({args:?})", f.name);
                }
            }
        }
    }
}

#[test]
fn compiled_code_agrees_with_the_interpreter_on_random_expressions() {
    let mut rng = Rng(0x00C0_FFEE);
    for round in 0..60 {
        let mut src = String::from("def helper(a, b) = a * 3 - b / (a + 1)\n");
        for i in 0..5 {
            src.push_str(&format!(
                "def r{i}(a, b, c, d) = {}\n",
                random_expr(&mut rng, 5)
            ));
        }
        let m = module(&src);
        let engine = compiled(&m);
        for id in 1..m.funcs.len() {
            for _ in 0..20 {
                let args = [arg(&mut rng), arg(&mut rng), arg(&mut rng), arg(&mut rng)];
                let want = Direct { funcs: &m.funcs }.call(id, args, MAX_DEPTH);
                assert_eq!(
                    engine.call(id, args),
                    Ok(want),
                    "round {round}, {}({args:?}) in\n{src}",
                    m.funcs[id].name
                );
            }
        }
    }
}

#[test]
fn sample_programs_load_and_both_tiers_agree_on_their_run_lines() {
    with_big_stack(|| {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/programs");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("examples/programs") {
            let path = entry.expect("dir entry").path();
            if path.extension().and_then(|e| e.to_str()) != Some("tw") {
                continue;
            }
            let src = std::fs::read_to_string(&path).expect("read program");
            let m = module(&src);
            let engine = compiled(&m);
            for (pos, ir) in &m.runs {
                interp::take_depth_exceeded();
                let want = interp::eval(ir, &[0; 4], MAX_DEPTH + 1, &Direct { funcs: &m.funcs });
                assert!(!interp::take_depth_exceeded(), "{}:{pos}", path.display());
                assert_eq!(engine.eval(ir), Ok(want), "{}:{pos}", path.display());
            }
            seen += 1;
        }
        assert!(
            seen >= 2,
            "expected the sample programs in {}",
            dir.display()
        );
    });
}

#[test]
fn tier_up_happens_after_the_threshold() {
    let m = module("def sq(x) = x * x\ndef f(n) = if n == 0 then 0 else sq(n) + f(n - 1)");
    let engine = Engine::new(Jit::new().expect("jit"), m, 50).expect("engine");
    let f = engine.lookup("f").expect("f");
    assert_eq!(engine.call(f, [10, 0, 0, 0]), Ok(385));
    assert!(engine
        .func_stats()
        .iter()
        .all(|s| s.tier == Tier::Interpreted));
    assert_eq!(engine.call(f, [100, 0, 0, 0]), Ok(338_350));
    let stats = engine.func_stats();
    assert!(stats.iter().all(|s| s.tier == Tier::Compiled), "{stats:?}");
    assert!(
        stats
            .iter()
            .all(|s| s.interpreted_calls >= 50 && s.compilations == 1),
        "{stats:?}"
    );
    assert_eq!(engine.call(f, [100, 0, 0, 0]), Ok(338_350));
}

#[test]
fn redefinition_is_seen_by_compiled_and_interpreted_callers() {
    let m = module("def scale(x) = x * 2\ndef work(n) = scale(n) + 1");
    let engine = Engine::new(Jit::new().expect("jit"), m, u64::MAX).expect("engine");
    let work = engine.lookup("work").expect("work");
    assert_eq!(engine.call(work, [10, 0, 0, 0]), Ok(21));
    engine
        .redefine("def scale(x) = x * 3")
        .expect("redefine interpreted");
    assert_eq!(engine.call(work, [10, 0, 0, 0]), Ok(31));
    engine.compile_all();
    let before = engine.jit().stats();
    engine
        .redefine("def scale(y) = y * 5 + work(0)")
        .expect("redefine compiled");
    // work(0) = scale(0) + 1 = work(0) + 1: runaway recursion, stopped by the depth budget.
    assert_eq!(engine.call(work, [10, 0, 0, 0]), Err(DepthExceeded));
    engine
        .redefine("def scale(y) = y * 5")
        .expect("redefine compiled");
    assert_eq!(engine.call(work, [10, 0, 0, 0]), Ok(51));
    let after = engine.jit().stats();
    assert_eq!(
        after.emitted,
        before.emitted + 2,
        "one new code object per redefinition"
    );
    assert_eq!(
        after.retired + after.reclaimed,
        before.retired + before.reclaimed + 2
    );
    assert!(engine.redefine("def scale(x, y) = x").is_err());
    assert_eq!(engine.call(work, [10, 0, 0, 0]), Ok(51));
}

// ---------------------------------------------------------------------------------------------
// Random programs

/// A random argument: an edge value, a small one, or any `i64`.
fn arg(rng: &mut Rng) -> i64 {
    match rng.below(4) {
        0 => EDGE[rng.below(EDGE.len() as u64) as usize],
        1 => rng.below(2001) as i64 - 1000,
        _ => rng.next_u64() as i64,
    }
}

fn random_expr(rng: &mut Rng, depth: u32) -> String {
    let leaf = depth == 0 || rng.below(4) == 0;
    if leaf {
        return match rng.below(3) {
            0 => ["a", "b", "c", "d"][rng.below(4) as usize].to_string(),
            1 => rng.below(100).to_string(),
            // Negative literals are spelled as subtractions (literals are non-negative).
            _ => match arg(rng) {
                v if v >= 0 => v.to_string(),
                i64::MIN => "(0 - 9223372036854775807 - 1)".to_string(),
                v => format!("(0 - {})", -v),
            },
        };
    }
    let sub = |rng: &mut Rng| random_expr(rng, depth - 1);
    match rng.below(7) {
        0 => format!("if {} then {} else {}", sub(rng), sub(rng), sub(rng)),
        1 => format!("-({})", sub(rng)),
        2 => format!("helper({}, {})", sub(rng), sub(rng)),
        3 => {
            let op = ["<", "<=", ">", ">=", "==", "!="][rng.below(6) as usize];
            format!("({} {op} {})", sub(rng), sub(rng))
        }
        _ => {
            let op = ["+", "-", "*", "/", "%"][rng.below(5) as usize];
            format!("({} {op} {})", sub(rng), sub(rng))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Builtins that park: code a task is parked inside survives a redefinition

#[test]
fn builtins_take_one_argument_and_agree_in_both_tiers() {
    let m = module("def f(x) = yield(x + 1) * 2 + sleep(0)\ndef g(a, b) = yield(a) - yield(b)");
    let engine = compiled(&m);
    let (f, g) = (m.lookup("f").unwrap(), m.lookup("g").unwrap());
    for x in EDGE {
        let want = direct(&m, "f", [x, 0, 0, 0]);
        assert_eq!(want, x.wrapping_add(1).wrapping_mul(2));
        assert_eq!(engine.call(f, [x, 0, 0, 0]), Ok(want));
        assert_eq!(engine.call(g, [x, 5, 0, 0]), Ok(x.wrapping_sub(5)));
    }
    assert!(
        load_error("def f(x) = yield(x, x)").contains("`yield` takes 1 argument but 2 were given")
    );
    assert!(load_error("def f(x) = sleep()").contains("`sleep` takes 1 argument but 0 were given"));
    // A user function of the same name takes precedence over the builtin.
    let m = module("def yield(x) = x * 10\ndef f(x) = yield(x)");
    assert_eq!(direct(&m, "f", [2, 0, 0, 0]), 20);
}

#[test]
fn a_task_asleep_inside_compiled_code_keeps_it_across_a_redefinition() {
    let tramway::Tramway {
        runtime: rt,
        grace,
        jit,
    } = tramway::Builder::new().workers(1).build().expect("tramway");
    let m = module("def f(x) = sleep(x) + 7\ndef outer(x) = f(x) * 1");
    let engine = std::sync::Arc::new(Engine::new(jit, m, u64::MAX).expect("engine"));
    engine.compile_all();
    let outer = engine.lookup("outer").unwrap();
    let e = engine.clone();
    // Parked inside `f` (and `outer`) for a second: long enough to redefine `f` meanwhile.
    let task = rt.spawn(move || e.call(outer, [1000, 0, 0, 0])).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while rt.stats().tasks_with_code_refs == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the task never parked"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    engine
        .redefine("def f(x) = sleep(x) + 8")
        .expect("redefine");
    grace.barrier();
    // The old `f` is retired, its grace period is over, and it is still mapped: the task's
    // stack points into it. (The redefinition may retire more than the body, and a
    // conservative scan may hold more than one range; at least the body is held.)
    let held = engine.jit().stats();
    assert!(held.retired >= 1, "{held:?}");
    assert!(grace.stats().callbacks_held_now >= 1, "{:?}", grace.stats());
    // The task returns through the old code and gets the old version's result.
    assert_eq!(task.join().unwrap(), Ok(7));
    let e = engine.clone();
    assert_eq!(
        rt.spawn(move || e.call(outer, [0, 0, 0, 0]))
            .unwrap()
            .join()
            .unwrap(),
        Ok(8)
    );
    while engine.jit().stats().retired > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the old code was never freed"
        );
        engine.jit().barrier();
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(grace.stats().callbacks_held_now, 0);
}
