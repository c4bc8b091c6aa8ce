//! Forwarding trampolines: count the call (if asked), call a hook (if any), tail-jump to a
//! target.
//!
//! [`emit`] is the one way to build one, for [`Jit::forwarding`](crate::Jit::forwarding) and for
//! the probe dispatcher alike: it checks the target (null address, foreign or retired
//! trampoline), marks a target trampoline reachable and keeps it alive, places the call
//! counter and the hook in heap memory the trampoline owns, and has `arch::emit_forwarding`
//! produce the body.
//!
//! # Every hook runs inside a non-yielding section
//! While a hook runs, its caller is inside the trampoline: the hook returns into trampoline
//! code. Nothing it calls may therefore report a quiescent state for that caller. The
//! trampoline never calls a user's hook directly: it calls [`call_hook`], a Rust shim in this
//! crate, with the address of the trampoline's [`HookCell`] (the user's `{func, user}` pair),
//! and the shim runs the hook inside [`tramway_runtime::non_yielding`]. There, `offline(..)`,
//! `ThreadRegistration::quiescent()` and `offline()` do nothing, a yield point panics (in debug
//! builds, by default) and `GraceDomain::synchronize()` panics instead of waiting for its own
//! caller. The probe dispatcher is a hook like any other and relies on the same section.
//!
//! The counter and the hook cell live in heap memory (never in code pages); the code embeds
//! their addresses, and they are freed together with the code, after its grace period.

use std::ffi::c_void;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use crate::arch::{self, ForwardingBody, HookArgs};
use crate::error::JitError;
use crate::jit_core::JitCore;
use crate::trampoline::{CodeData, Trampoline};

/// A function called by a forwarding trampoline before it jumps to its target.
///
/// The hook runs on the caller's stack and thread, with the caller's argument registers saved,
/// inside a [`tramway_runtime::non_yielding`] section (see the module docs of `forwarding.rs`):
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

/// Where a forwarding trampoline jumps.
#[derive(Clone, Debug)]
pub enum Target {
    /// Any code address, e.g. an `extern "C" fn` cast to `*const u8`. Must not be null.
    Address(*const u8),
    /// Another trampoline of the same `Jit`; the new trampoline keeps it alive.
    Trampoline(Trampoline),
}

/// Parameters of [`Jit::forwarding`](crate::Jit::forwarding): a target, and optionally a
/// hook and a call counter.
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
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ForwardingSpec {
    /// The tail-jump target.
    pub target: Target,
    /// An optional hook called before the jump.
    pub hook: Option<Hook>,
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
            count_calls: false,
        }
    }

    /// Calls `hook` before the jump.
    #[must_use]
    pub fn hook(mut self, hook: Hook) -> Self {
        self.hook = Some(hook);
        self
    }

    /// Counts calls ([`Trampoline::calls`]).
    #[must_use]
    pub fn counted(mut self) -> Self {
        self.count_calls = true;
        self
    }
}

/// A hook as its trampoline owns it: the `user` argument [`call_hook`] receives.
struct HookCell {
    hook: Hook,
}

// SAFETY: the cell is only read, by `call_hook` on whatever thread calls the trampoline; the
// jit never dereferences `hook.user`. Calling the hook from any thread is what a forwarding
// trampoline's callers do by construction, and `Hook`'s contract covers it.
unsafe impl Send for HookCell {}
// SAFETY: as above (shared reads only).
unsafe impl Sync for HookCell {}

/// The one entry from trampoline code into hooks: runs `cell`'s hook inside a non-yielding
/// section (module docs).
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

/// Emits the forwarding trampoline `spec` describes.
///
/// Errors: [`JitError::NullTarget`], [`JitError::ForeignTrampoline`] and
/// [`JitError::Retired`] for the target, and whatever emission reports.
pub(crate) fn emit(core: &Arc<JitCore>, spec: ForwardingSpec) -> Result<Trampoline, JitError> {
    let ForwardingSpec {
        target,
        hook,
        count_calls,
    } = spec;
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
    let body = ForwardingBody {
        counter: counter.as_ref().map(|c| &**c as *const AtomicU64 as u64),
        hook: hook.as_ref().map(|cell| {
            let shim = call_hook as unsafe extern "C" fn(*mut c_void, *const HookArgs);
            (shim as usize as u64, &**cell as *const HookCell as u64)
        }),
        target,
    };
    let len = arch::forwarding_len(body.counter.is_some(), body.hook.is_some());
    let data = CodeData {
        calls: counter,
        referenced: hook.map(|cell| cell as Box<dyn Send + Sync>),
    };
    Trampoline::emit(
        core,
        &|ops, at| arch::emit_forwarding(ops, &body, at),
        Some(len),
        data,
        keepalive,
    )
}
