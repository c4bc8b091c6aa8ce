//! The engine: function table, call counters, tier-up and redefinition through patch sites.
//!
//! # Sites and tiers
//! Every function owns one indirect patch [`Site`], its only entry point: Rust callers, the
//! interpreter and compiled code all call the site. The site points at one of two kinds of code:
//! - **interpreted**: a three-instruction stub (`codegen::emit_interp_stub`) that puts the
//!   function's [`Slot`] address in `r9` and tail-jumps to [`interp_entry`], which counts the
//!   call and walks the function's current body;
//! - **compiled**: the function's body translated by `codegen.rs`.
//!
//! When a function's call count reaches the threshold, `interp_entry` compiles it on the calling
//! thread (emission takes microseconds) and swaps the site: **tier-up**. [`Engine::redefine`]
//! replaces a function's body: an interpreted function just picks up the new body, a compiled one
//! is recompiled and its site swapped. Either way the old code is [`Retired`](tramway::jit::Retired)
//! and dropped at once, which hands it to the jit's reclaimer: with the runtime's grace periods it
//! is unmapped once every task that might be inside it has passed a yield point.
//!
//! # Why this is safe to do under load
//! Stubs never yield; compiled code and the interpreter yield only in builtins (`yield`,
//! `sleep`), which park inside a yielding-code scope. A task running inside old code holds up the grace
//! period that frees it; a task *parked* inside old compiled code (its frame's return address
//! on the parked stack) holds back exactly that code, through the runtime's stack scan, until
//! it has returned out of it (`tramway::runtime::code`). Swaps of one function
//! are serialized by its `state` mutex; callers never take it (tier-up only `try_lock`s it).
//! Compiled code calls other functions through their site entries, which live as long as the
//! engine, never through code addresses that could be retired.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, Weak};

use tramway::jit::{Jit, JitError, Site, SiteKind, Trampoline};

use crate::ast::{resolve_redefinition, Func, FuncId, Ir, Module};
use crate::codegen::{self, Env};
use crate::interp::{self, Caller, MAX_DEPTH};
use crate::lexer::Error;
use crate::parser::parse_def;

/// The machine signature of every language function (see `codegen.rs`).
pub type LangFn = extern "C" fn(i64, i64, i64, i64, i64) -> i64;

/// A call that ran out of depth budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DepthExceeded;

/// Which code a function's site points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    /// The interpreter stub.
    Interpreted,
    /// Native code.
    Compiled,
}

/// Per-function counters, as returned by [`Engine::func_stats`].
#[derive(Clone, Debug)]
pub struct FuncStats {
    /// The function's name.
    pub name: String,
    /// Current tier.
    pub tier: Tier,
    /// Calls that entered the interpreter.
    pub interpreted_calls: u64,
    /// Times the function was compiled (tier-ups and recompilations).
    pub compilations: u64,
    /// Redefinitions.
    pub redefinitions: u64,
}

/// State changed only under the slot's mutex.
struct State {
    tier: Tier,
    /// The code the site points at (kept so that it is retired, not freed, when swapped out).
    code: Option<Trampoline>,
    compilations: u64,
    redefinitions: u64,
}

/// One function.
struct Slot {
    name: String,
    /// The table this slot is part of (for calls and compilation from `interp_entry`).
    table: Weak<Table>,
    site: OnceLock<Site>,
    /// The current body, read by the interpreter on every interpreted call.
    def: RwLock<Arc<Func>>,
    interpreted_calls: AtomicU64,
    /// Set once tier-up has been done (or has failed and will not be retried), so the tier-up
    /// check is one relaxed load afterwards.
    tier_up_done: AtomicBool,
    state: Mutex<State>,
}

struct Table {
    funcs: Vec<Slot>,
    /// Names and arities for checking redefinitions.
    module: Module,
    threshold: AtomicU64,
    tiering: AtomicBool,
    compile_errors: AtomicU64,
    /// Declared last: dropped after the slots (and their sites and code).
    jit: Jit,
}

/// A loaded program.
pub struct Engine {
    table: Arc<Table>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn current_def(slot: &Slot) -> Arc<Func> {
    slot.def.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Called by compiled code whose depth budget is exhausted: records it and returns 0.
extern "C" fn depth_overflow() -> i64 {
    interp::note_depth_exceeded();
    0
}

/// The interpreter's native entry, reached from a function's stub with the [`Slot`] in `ctx`.
///
/// Never panics (every lock tolerates poisoning, arithmetic wraps); yields only in builtins,
/// and keeps no lock or thread-local address across them.
extern "C" fn interp_entry(a0: i64, a1: i64, a2: i64, a3: i64, depth: i64, ctx: usize) -> i64 {
    // SAFETY: `ctx` was embedded in this slot's stub by `Engine::new`; the stub is reachable
    // only through the slot's site, which the slot owns, and retired stubs are freed only after a
    // grace period that ends after this call returns. So the slot (inside the table's `Vec`,
    // which is never resized) is alive while its stub can run.
    let slot = unsafe { &*(ctx as *const Slot) };
    // SAFETY: the table owns the slot, so it is alive as long as the slot is (see above); we
    // only borrow it and never touch the weak count, so no upgrade is needed.
    let table = unsafe { &*slot.table.as_ptr() };
    let n = slot.interpreted_calls.fetch_add(1, Ordering::Relaxed) + 1;
    if n >= table.threshold.load(Ordering::Relaxed)
        && table.tiering.load(Ordering::Relaxed)
        && !slot.tier_up_done.load(Ordering::Relaxed)
    {
        table.tier_up(slot);
    }
    let func = current_def(slot);
    interp::enter(&func, [a0, a1, a2, a3], depth, table)
}

impl Caller for Table {
    fn call(&self, func: FuncId, args: [i64; 4], depth: i64) -> i64 {
        match self.funcs.get(func).and_then(|s| s.site.get()) {
            Some(site) => {
                // SAFETY: every site of this engine points at an interpreter stub or at code from
                // `codegen::emit_function`, both implementing `LangFn`.
                let f: LangFn = unsafe { site.as_fn() };
                f(args[0], args[1], args[2], args[3], depth)
            }
            None => 0,
        }
    }
}

impl Table {
    fn env_sites(&self) -> Vec<usize> {
        self.funcs
            .iter()
            .map(|s| s.site.get().map_or(0, |site| site.entry() as usize))
            .collect()
    }

    fn compile(&self, func: &Func) -> Result<Trampoline, JitError> {
        let sites = self.env_sites();
        let env = Env {
            sites: &sites,
            on_overflow: depth_overflow as *const () as usize,
        };
        // SAFETY: the emitted code implements `LangFn`, writes no code memory, yields only
        // through the builtins' helpers, inside a yielding-code scope (every `Reclaim` holds back code
        // a parked task's stack points into: `Reclaim::defer_code`), keeps code addresses only
        // on its stack, and references only site entries (alive as long as the table, which
        // outlives all code) and static helpers (see codegen.rs).
        unsafe {
            self.jit
                .custom(|ops| codegen::emit_function(ops, func, &env))
        }
    }

    /// Points `slot`'s site at `code`, retiring what it pointed at (reclaimed after a grace period).
    fn install(&self, slot: &Slot, state: &mut State, code: Trampoline) -> Result<(), JitError> {
        let site = slot
            .site
            .get()
            .ok_or(JitError::Unsupported("site not created"))?;
        let retired = site.swap(&code)?;
        // Dropping the handle defers the old code's free through the reclaimer.
        drop(retired);
        state.code = Some(code);
        Ok(())
    }

    /// Compiles `slot` unless someone else is already changing it (then they will have compiled it).
    #[cold]
    fn tier_up(&self, slot: &Slot) {
        let Ok(mut state) = slot.state.try_lock() else {
            return;
        };
        if state.tier == Tier::Compiled {
            return;
        }
        let func = current_def(slot);
        match self
            .compile(&func)
            .and_then(|code| self.install(slot, &mut state, code))
        {
            Ok(()) => {
                state.tier = Tier::Compiled;
                state.compilations += 1;
                slot.tier_up_done.store(true, Ordering::Relaxed);
            }
            Err(_) => {
                self.compile_errors.fetch_add(1, Ordering::Relaxed);
                // Stay interpreted; stop trying.
                slot.tier_up_done.store(true, Ordering::Relaxed);
            }
        }
    }
}

impl Engine {
    /// Loads `module`: one site per function, all pointing at interpreter stubs.
    ///
    /// Functions tier up after `threshold` interpreted calls while tiering is enabled.
    pub fn new(jit: Jit, module: Module, threshold: u64) -> Result<Engine, JitError> {
        let table = Arc::new_cyclic(|weak: &Weak<Table>| Table {
            funcs: module
                .funcs
                .iter()
                .map(|f| Slot {
                    name: f.name.clone(),
                    table: weak.clone(),
                    site: OnceLock::new(),
                    def: RwLock::new(Arc::new(f.clone())),
                    interpreted_calls: AtomicU64::new(0),
                    tier_up_done: AtomicBool::new(false),
                    state: Mutex::new(State {
                        tier: Tier::Interpreted,
                        code: None,
                        compilations: 0,
                        redefinitions: 0,
                    }),
                })
                .collect(),
            module,
            threshold: AtomicU64::new(threshold.max(1)),
            tiering: AtomicBool::new(true),
            compile_errors: AtomicU64::new(0),
            jit,
        });
        for slot in &table.funcs {
            let stub = stub_for(&table.jit, slot)?;
            let site = table.jit.site(SiteKind::Indirect, &stub)?;
            lock(&slot.state).code = Some(stub);
            // Only this loop sets sites, once per slot.
            let _ = slot.site.set(site);
        }
        Ok(Engine { table })
    }

    /// The jit the engine emits into.
    pub fn jit(&self) -> &Jit {
        &self.table.jit
    }

    /// Enables or disables automatic tier-up.
    pub fn set_tiering(&self, on: bool) {
        self.table.tiering.store(on, Ordering::Relaxed);
    }

    /// The id of function `name`.
    pub fn lookup(&self, name: &str) -> Option<FuncId> {
        self.table.module.lookup(name)
    }

    /// Compiles every function that is still interpreted.
    pub fn compile_all(&self) {
        for slot in &self.table.funcs {
            self.table.tier_up(slot);
        }
    }

    /// Calls function `id` as a top-level call.
    ///
    /// Must run on a green thread or a registered thread of the runtime whose grace periods
    /// reclaim this engine's code.
    pub fn call(&self, id: FuncId, args: [i64; 4]) -> Result<i64, DepthExceeded> {
        interp::take_depth_exceeded();
        let r = self.table.call(id, args, MAX_DEPTH);
        if interp::take_depth_exceeded() {
            Err(DepthExceeded)
        } else {
            Ok(r)
        }
    }

    /// Evaluates a closed expression (a `run` line); calls go through the sites.
    pub fn eval(&self, ir: &Ir) -> Result<i64, DepthExceeded> {
        interp::take_depth_exceeded();
        let r = interp::eval(ir, &[0; 4], MAX_DEPTH + 1, &*self.table);
        if interp::take_depth_exceeded() {
            Err(DepthExceeded)
        } else {
            Ok(r)
        }
    }

    /// Replaces the body of an existing function with the `def` in `src` (same name and arity).
    ///
    /// A compiled function is recompiled and its site swapped; the old code is retired.
    pub fn redefine(&self, src: &str) -> Result<(), Error> {
        let def = parse_def(src)?;
        let (id, func) = resolve_redefinition(&self.table.module, &def)?;
        let slot = &self.table.funcs[id];
        let mut state = lock(&slot.state);
        *slot.def.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(func.clone());
        state.redefinitions += 1;
        if state.tier == Tier::Compiled {
            let installed = self
                .table
                .compile(&func)
                .and_then(|code| self.table.install(slot, &mut state, code));
            match installed {
                Ok(()) => state.compilations += 1,
                Err(e) => {
                    // Fall back to the interpreter, which already sees the new body.
                    self.table.compile_errors.fetch_add(1, Ordering::Relaxed);
                    let back = stub_for(&self.table.jit, slot)
                        .and_then(|stub| self.table.install(slot, &mut state, stub));
                    if back.is_ok() {
                        state.tier = Tier::Interpreted;
                    }
                    return Err(Error::new(
                        def.pos,
                        format!("recompiling `{}` failed: {e}", def.name),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Per-function counters.
    pub fn func_stats(&self) -> Vec<FuncStats> {
        self.table
            .funcs
            .iter()
            .map(|slot| {
                let state = lock(&slot.state);
                FuncStats {
                    name: slot.name.clone(),
                    tier: state.tier,
                    interpreted_calls: slot.interpreted_calls.load(Ordering::Relaxed),
                    compilations: state.compilations,
                    redefinitions: state.redefinitions,
                }
            })
            .collect()
    }

    /// Number of failed compilations (code too large, code space exhausted, ...).
    pub fn compile_errors(&self) -> u64 {
        self.table.compile_errors.load(Ordering::Relaxed)
    }
}

/// Emits the interpreter stub of `slot`.
fn stub_for(jit: &Jit, slot: &Slot) -> Result<Trampoline, JitError> {
    let ctx = slot as *const Slot as usize;
    let entry = interp_entry as *const () as usize;
    // SAFETY: the stub only moves constants into r9/rax and tail-jumps to `interp_entry`, which
    // implements `LangFn` plus the ctx argument and never yields; `ctx` stays valid as long as the
    // stub can run (see `interp_entry`).
    unsafe { jit.custom(|ops| codegen::emit_interp_stub(ops, ctx, entry)) }
}
