//! Forwarding trampolines: count the call (if asked), call an entry hook (if any), then either
//! tail-jump to a target or, with an exit hook, **call** it and run the exit hook on the way
//! back (a *call-through* trampoline).
//!
//! `emit` is the one way to build one, for [`Jit::forwarding`](crate::Jit::forwarding) and for
//! the probe dispatcher alike: it checks the spec (null address, foreign or retired target
//! trampoline, stack-argument bytes), marks a target trampoline reachable and keeps it alive,
//! places the call counter and the hook cells in heap memory the trampoline owns, and has
//! `arch::emit_forwarding` produce the body.
//!
//! # Every hook runs inside a non-yielding section
//! While a hook runs, its caller is inside the trampoline: the hook returns into trampoline
//! code. Nothing it calls may therefore report a quiescent state for that caller. The
//! trampoline never calls a user's hook directly: it calls `call_hook` (entry) or
//! `call_exit_hook` (exit), Rust shims in this crate, with the address of the trampoline's
//! hook cell (the user's `{func, user}` pair), and the shim runs the hook inside
//! [`tramway_runtime::non_yielding`]. There, `offline(..)`,
//! `ThreadRegistration::quiescent()` and `offline()` do nothing, a yield point panics (in debug
//! builds, by default) and `GraceDomain::synchronize()` panics instead of waiting for its own
//! caller. The probe dispatcher is a hook like any other and relies on the same section.
//!
//! The counter and the hook cells live in heap memory (never in code pages); the code embeds
//! their addresses, and they are freed together with the code, after its grace period.
//!
//! # Call-through trampolines (exit hooks)
//! An exit hook must run after the target has returned, with its return registers, so the
//! trampoline cannot tail-jump: it calls the target, and its own return address stays on the
//! caller's stack for the whole call. The body (registers by name in `arch/`):
//! 1. save the argument registers; run the entry hook, if any (through `call_hook`, inside
//!    `non_yielding`);
//! 2. call [`yielding_code_enter`](tramway_runtime::code::yielding_code_enter), restore the
//!    argument registers, and copy the declared number of stack-argument bytes
//!    ([`ForwardingSpec::stack_arg_bytes`], at most [`MAX_STACK_ARG_BYTES`]) to the bottom of
//!    its frame, where the target finds its stack arguments;
//! 3. read the tick counter, `call` the target (a real call), read the counter again;
//! 4. save the return registers ([`ReturnValues`]), call
//!    [`yielding_code_leave`](tramway_runtime::code::yielding_code_leave), run the exit hook
//!    (through `call_exit_hook`, inside `non_yielding`) with the saved arguments, the return
//!    values and the call's duration, restore the return registers and return to the caller.
//!
//! ## Why a task may park inside the target
//! The target is an ordinary function (a Rust `extern "C" fn` of a green thread, JIT code that
//! calls the runtime): it may sleep or wait on an `Event`, i.e. park at a voluntary yield
//! point. A parked task is quiescent, so a Tasks grace period alone could end, and free the
//! trampoline, while the task's stack still holds a return address into it. Between the
//! enter and leave calls the task runs at a raised *yielding-code depth*, so a park inside the
//! target scans the task's own stack for words inside registered code ranges (every `Jit`
//! registers its reservation), and every free of jit code is queued with its code range
//! ([`Reclaim::defer_code`](crate::Reclaim::defer_code)): the free of a retired call-through
//! trampoline, and of the heap state it owns (hook cells, a probe snapshot and the user's
//! closures), is held back until no parked task's stack points into it, i.e. until the task
//! has returned out of it and parked again elsewhere or ended. The algorithm and its ordering
//! argument are in [`tramway_runtime::code`]. What the scan relies on here: the trampoline's
//! return address is on the task's stack while the target runs or parks (it is: a real
//! `call` pushed it), and the trampoline keeps no code address anywhere else (no heap word).
//! Outside the window (the entry and exit hooks, and the few instructions around the calls)
//! the trampoline is ordinary non-yielding code, covered by the plain Tasks grace period.
//!
//! ## Why not BPF's in-flight count
//! BPF fexit trampolines (`kernel/bpf/trampoline.c`) count the calls in flight around the
//! traced function and retire an image with Tasks GP -> in-flight count reaches 0 -> Tasks GP
//! -> free. Here the stack scan already exists (for compiled bodies that call into the
//! runtime), and it is cheaper on every axis that matters:
//! - per call it costs two plain stores to the task's own depth counter (inside the enter and
//!   leave calls), where the count costs two atomic read-modify-writes on a counter shared by
//!   every core calling the site, a cache line that bounces between them;
//! - it costs O(stack depth) once per park *inside* the target, nothing otherwise;
//! - it holds back only the trampolines actually on some parked stack, and needs no second
//!   grace period: a retirement that no task is inside is freed after one Tasks GP, like any
//!   other trampoline.
//!
//! ## Costs and limits
//! - A call-through costs a real `call`/`ret`, the enter and leave calls and two `rdtsc`s over
//!   a tail jump, and it breaks tail calls through the probed site: a target that tail-calls
//!   back through the site grows the stack by one trampoline frame per level.
//! - Only [`ForwardingSpec::stack_arg_bytes`] bytes of stack arguments reach the target; the
//!   rest of its stack-argument area is the trampoline's frame. Register arguments are all
//!   forwarded (the registers by name are on [`HookArgs`]).
//! - Nothing may unwind through the trampoline: a target that unwinds (a `C-unwind` function
//!   that panics) aborts the process. Without unwind information the unwinder finds no frame
//!   description and the panic cannot start; with it
//!   ([`JitBuilder::unwind_info`](crate::JitBuilder::unwind_info): backtraces then walk
//!   through the trampoline), its personality routine refuses the unwind, with the same
//!   result (`unwind.rs`). The runtime never unwinds a task parked inside yielding code (at
//!   shutdown its stack is leaked instead).
//! - On a registered OS thread, which has no stack the runtime scans, the raised depth is a
//!   non-yielding section: grace periods wait for the whole call, parks included.
//! - The target may park (sleep, wait, yield) but must not block inside
//!   [`tramway_runtime::offline`] while called from a task: today `offline` takes the worker
//!   offline at any yielding-code depth without scanning the stack, so a grace period can end
//!   and free a retired call-through trampoline under the blocked task (seen: the task dies
//!   of SIGTRAP when it returns). Inside a non-yielding section `offline` just runs its
//!   closure; it should do the same (or scan) at a raised yielding-code depth.

use std::ffi::c_void;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use crate::arch::{self, CallThrough, ForwardingBody, HookArgs, ReturnValues};
use crate::error::JitError;
use crate::jit_core::JitCore;
use crate::trampoline::{CodeData, Trampoline};

/// The largest [`ForwardingSpec::stack_arg_bytes`]: 32 stack words, far more than C signatures
/// in practice pass on the stack, and a bound on the copy loop each call runs.
pub const MAX_STACK_ARG_BYTES: usize = 256;

/// A function called by a forwarding trampoline before it jumps to (or calls) its target.
///
/// The hook runs on the caller's stack and thread, with the caller's argument registers saved,
/// inside a [`tramway_runtime::non_yielding`] section (see the [module docs](self)):
/// it must not yield, block on the runtime, or unwind, because the runtime's grace periods
/// rely on trampoline code (hooks included) never containing a yield point. `user` must stay
/// valid until the trampoline is reclaimed.
#[derive(Clone, Copy, Debug)]
pub struct Hook {
    /// Called as `func(user, args)`.
    pub func: unsafe extern "C" fn(user: *mut c_void, args: *const HookArgs),
    /// Passed unchanged as the first argument.
    pub user: *mut c_void,
}

/// A function called by a call-through trampoline after its target returned (see the module
/// docs of `forwarding.rs`).
///
/// It receives the argument registers as they were when the call entered the trampoline, the
/// target's return registers and the call's duration ([`ReturnValues`]), on the caller's stack
/// and thread, inside a [`tramway_runtime::non_yielding`] section, with the same rules as a
/// [`Hook`]: no yield, no blocking on the runtime, no unwinding. It cannot change the return
/// values. `user` must stay valid until the trampoline is reclaimed, which, for a trampoline a
/// parked task is inside, is after that task has returned out of it.
#[derive(Clone, Copy, Debug)]
pub struct ExitHook {
    /// Called as `func(user, args, ret)`.
    pub func:
        unsafe extern "C" fn(user: *mut c_void, args: *const HookArgs, ret: *const ReturnValues),
    /// Passed unchanged as the first argument.
    pub user: *mut c_void,
}

/// Where a forwarding trampoline jumps.
#[derive(Clone, Debug)]
pub enum Target {
    /// Any code address, e.g. an `extern "C" fn` cast to `*const u8`. Must not be null.
    Address(*const u8),
    /// Another trampoline of the same `Jit`; the new trampoline keeps it alive.
    Trampoline(Trampoline),
}

/// Parameters of [`Jit::forwarding`](crate::Jit::forwarding): a target, and optionally an
/// entry hook, an exit hook and a call counter.
///
/// ```
/// # fn main() -> Result<(), tramway_jit::JitError> {
/// use tramway_jit::{ForwardingSpec, Jit, Target};
/// extern "C" fn id(x: u64) -> u64 { x }
/// let jit = Jit::new()?;
/// let t = jit.forwarding(ForwardingSpec::new(Target::Address(id as *const u8)).counted())?;
/// assert_eq!(t.calls(), 0);
/// # Ok(()) }
/// ```
///
/// An exit hook makes the trampoline call its target instead of tail-jumping to it:
///
/// ```
/// # fn main() -> Result<(), tramway_jit::JitError> {
/// use std::ffi::c_void;
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use tramway_jit::{ExitHook, ForwardingSpec, HookArgs, Jit, ReturnValues, Target};
///
/// extern "C" fn double(x: u64) -> u64 { 2 * x }
/// unsafe extern "C" fn record(user: *mut c_void, _: *const HookArgs, ret: *const ReturnValues) {
///     // SAFETY: `user` is the `AtomicU64` below, alive while the trampoline is; `ret` is
///     // valid for the duration of the hook.
///     unsafe { (*(user as *const AtomicU64)).store((*ret).int_rets[0], Ordering::Relaxed) }
/// }
/// static LAST: AtomicU64 = AtomicU64::new(0);
/// let jit = Jit::new()?;
/// let hook = ExitHook { func: record, user: &LAST as *const AtomicU64 as *mut c_void };
/// let spec = ForwardingSpec::new(Target::Address(double as *const u8)).exit_hook(hook);
/// let t = jit.forwarding(spec)?;
/// // SAFETY: `t` forwards to `double`, and is alive for the call.
/// let f: extern "C" fn(u64) -> u64 = unsafe { std::mem::transmute(t.addr()) };
/// assert_eq!(f(21), 42);
/// assert_eq!(LAST.load(Ordering::Relaxed), 42);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ForwardingSpec {
    /// The target.
    pub target: Target,
    /// An optional hook called before the target.
    pub hook: Option<Hook>,
    /// An optional hook called after the target returned; with it, the trampoline calls the
    /// target instead of tail-jumping to it (see the [module docs](self)).
    pub exit_hook: Option<ExitHook>,
    /// Bytes of stack arguments a call-through trampoline passes to its target (0 by default):
    /// a multiple of 8, at most [`MAX_STACK_ARG_BYTES`]. Declare what the target's signature
    /// passes on the stack (on x86-64, e.g., 8 bytes per integer argument after the sixth).
    /// The trampoline copies that many bytes from above its return address on every call,
    /// whatever the caller passed (more is harmless: it reads the caller's own frame, which is
    /// mapped unless the call is made within that many bytes of the top of its stack).
    /// Without an exit hook every stack argument reaches the target and this is only checked.
    pub stack_arg_bytes: usize,
    /// Whether the trampoline counts its calls ([`Trampoline::calls`]). Off by default: an
    /// atomic increment per call is the largest cost a forwarding trampoline adds (about 20
    /// cycles; without it the trampoline is one extra jump).
    pub count_calls: bool,
}

impl ForwardingSpec {
    /// Forward to `target`, with no hook and no counter.
    pub fn new(target: Target) -> Self {
        ForwardingSpec {
            target,
            hook: None,
            exit_hook: None,
            stack_arg_bytes: 0,
            count_calls: false,
        }
    }

    /// Calls `hook` before the target.
    #[must_use]
    pub fn hook(mut self, hook: Hook) -> Self {
        self.hook = Some(hook);
        self
    }

    /// Calls `hook` after the target returned (makes the trampoline call-through).
    #[must_use]
    pub fn exit_hook(mut self, hook: ExitHook) -> Self {
        self.exit_hook = Some(hook);
        self
    }

    /// Passes `bytes` of stack arguments through a call-through trampoline (see the field).
    /// An invalid value is reported by [`Jit::forwarding`](crate::Jit::forwarding).
    #[must_use]
    pub fn stack_arg_bytes(mut self, bytes: usize) -> Self {
        self.stack_arg_bytes = bytes;
        self
    }

    /// Counts calls ([`Trampoline::calls`]).
    #[must_use]
    pub fn counted(mut self) -> Self {
        self.count_calls = true;
        self
    }
}

/// The error for a bad [`ForwardingSpec::stack_arg_bytes`].
const BAD_STACK_ARG_BYTES: JitError = JitError::InvalidConfig(
    "stack_arg_bytes must be a multiple of 8 and at most MAX_STACK_ARG_BYTES (256)",
);
const _: () = assert!(MAX_STACK_ARG_BYTES == 256, "update BAD_STACK_ARG_BYTES");

/// Whether `bytes` is a valid [`ForwardingSpec::stack_arg_bytes`].
pub(crate) fn check_stack_arg_bytes(bytes: usize) -> Result<(), JitError> {
    if bytes <= MAX_STACK_ARG_BYTES && bytes % 8 == 0 {
        Ok(())
    } else {
        Err(BAD_STACK_ARG_BYTES)
    }
}

/// An entry hook as its trampoline owns it: the `user` argument [`call_hook`] receives.
struct HookCell {
    hook: Hook,
}

/// An exit hook as its trampoline owns it: the `user` argument [`call_exit_hook`] receives.
struct ExitHookCell {
    hook: ExitHook,
}

// SAFETY: the cell is only read, by `call_hook` on whatever thread calls the trampoline; the
// jit never dereferences `hook.user`. Calling the hook from any thread is what a forwarding
// trampoline's callers do by construction, and `Hook`'s contract covers it.
unsafe impl Send for HookCell {}
// SAFETY: as above (shared reads only).
unsafe impl Sync for HookCell {}
// SAFETY: as for `HookCell`, with `call_exit_hook` and `ExitHook`'s contract.
unsafe impl Send for ExitHookCell {}
// SAFETY: as above (shared reads only).
unsafe impl Sync for ExitHookCell {}

/// Heap memory a forwarding trampoline's code references, freed (or leaked) with the code.
struct Referenced {
    _entry: Option<Box<HookCell>>,
    _exit: Option<Box<ExitHookCell>>,
    /// What the hooks' `user` pointers point into, if the trampoline owns it (a probe snapshot).
    _owned: Option<Box<dyn Send + Sync>>,
}

/// The one entry from trampoline code into entry hooks: runs `cell`'s hook inside a
/// non-yielding section (module docs).
///
/// # Safety
/// `cell` is the address of the [`HookCell`] of the trampoline that calls this, and `args` of
/// the trampoline's saved argument registers; only forwarding trampolines call this.
unsafe extern "C" fn call_hook(cell: *mut c_void, args: *const HookArgs) {
    // SAFETY: the cell is freed together with the trampoline's code, after a grace period
    // that this call (inside the code) holds back.
    let hook = unsafe { &*(cell as *const HookCell) }.hook;
    tramway_runtime::non_yielding(|| {
        // SAFETY: `Hook`'s contract: `func` may be called with `user` from any thread while
        // the trampoline can run; `args` points into the trampoline's frame on this stack.
        unsafe { (hook.func)(hook.user, args) }
    });
}

/// The one entry from trampoline code into exit hooks: fills in the call's duration, then
/// runs `cell`'s hook inside a non-yielding section (module docs).
///
/// # Safety
/// `cell` is the address of the [`ExitHookCell`] of the call-through trampoline that calls
/// this, `args` of its saved argument registers and `ret` of its saved return values, both in
/// its frame; only call-through trampolines call this.
unsafe extern "C" fn call_exit_hook(
    cell: *mut c_void,
    args: *const HookArgs,
    ret: *mut ReturnValues,
) {
    // SAFETY: the cell is freed together with the trampoline's code, which is held back while
    // this call is inside it: by the Tasks grace period (the caller is running), and, while
    // the caller was parked inside the target, by the stack scan (module docs).
    let hook = unsafe { &*(cell as *const ExitHookCell) }.hook;
    // SAFETY: `ret` points at the trampoline's `ReturnValues` block on this stack, written by
    // the trampoline and referenced by nothing else during this call.
    let r = unsafe { &mut *ret };
    r.duration_ns = arch::ticks_to_ns(r.end_ticks.saturating_sub(r.start_ticks));
    tramway_runtime::non_yielding(|| {
        // SAFETY: `ExitHook`'s contract: `func` may be called with `user` from any thread
        // while the trampoline can run; `args` and `ret` point into the trampoline's frame.
        unsafe { (hook.func)(hook.user, args, ret) }
    });
}

/// Emits the forwarding trampoline `spec` describes.
///
/// Errors: [`JitError::InvalidConfig`] for a bad [`ForwardingSpec::stack_arg_bytes`];
/// [`JitError::NullTarget`], [`JitError::ForeignTrampoline`] and [`JitError::Retired`] for the
/// target; and whatever emission reports.
pub(crate) fn emit(core: &Arc<JitCore>, spec: ForwardingSpec) -> Result<Trampoline, JitError> {
    emit_owning(core, spec, None)
}

/// [`emit`], with `owned` (what the hooks' `user` pointers point into) freed with the code.
pub(crate) fn emit_owning(
    core: &Arc<JitCore>,
    spec: ForwardingSpec,
    owned: Option<Box<dyn Send + Sync>>,
) -> Result<Trampoline, JitError> {
    let ForwardingSpec {
        target,
        hook,
        exit_hook,
        stack_arg_bytes,
        count_calls,
    } = spec;
    check_stack_arg_bytes(stack_arg_bytes)?;
    let (target, keepalive) = match target {
        Target::Address(p) if p.is_null() => return Err(JitError::NullTarget),
        Target::Address(p) => (p as u64, None),
        Target::Trampoline(t) => {
            t.check_owner(core.id())?;
            t.mark_reachable()?;
            (t.addr() as u64, Some(t))
        }
    };
    let counter = count_calls.then(|| Box::new(AtomicU64::new(0)));
    let hook = hook.map(|hook| Box::new(HookCell { hook }));
    let exit = exit_hook.map(|hook| Box::new(ExitHookCell { hook }));
    if exit.is_some() {
        arch::init_tick_clock();
    }
    let body = ForwardingBody {
        counter: counter.as_ref().map(|c| &**c as *const AtomicU64 as u64),
        hook: hook.as_ref().map(|cell| {
            let shim = call_hook as unsafe extern "C" fn(*mut c_void, *const HookArgs);
            (shim as usize as u64, &**cell as *const HookCell as u64)
        }),
        call_through: exit.as_ref().map(|cell| {
            let shim = call_exit_hook
                as unsafe extern "C" fn(*mut c_void, *const HookArgs, *mut ReturnValues);
            let enter = tramway_runtime::code::yielding_code_enter as extern "C" fn();
            let leave = tramway_runtime::code::yielding_code_leave as extern "C" fn();
            CallThrough {
                exit_hook: (shim as usize as u64, &**cell as *const ExitHookCell as u64),
                enter: enter as usize as u64,
                leave: leave as usize as u64,
                stack_arg_bytes,
            }
        }),
        target,
    };
    let len = arch::forwarding_len(&body);
    let calls_out = body.hook.is_some() || body.call_through.is_some();
    let referenced = (hook.is_some() || exit.is_some() || owned.is_some()).then(|| {
        Box::new(Referenced {
            _entry: hook,
            _exit: exit,
            _owned: owned,
        }) as Box<dyn Send + Sync>
    });
    let data = CodeData {
        calls: counter,
        referenced,
        unwind: None,
    };
    Trampoline::emit(
        core,
        &|ops, at, out| {
            let mut rows = arch::FrameRows::default();
            arch::emit_forwarding(ops, &body, at, &mut rows);
            // Only bodies that call out can be on a stack below another frame (unwind.rs).
            if calls_out {
                *out = Some(rows);
            }
        },
        Some(len),
        data,
        keepalive,
    )
}
