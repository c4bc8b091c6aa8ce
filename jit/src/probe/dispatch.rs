//! The dispatcher a probe trampoline calls, its immutable snapshot, and [`ProbeHook`].
//!
//! A probe trampoline is a forwarding trampoline whose hook is [`dispatch`] with `user` = the
//! address of a boxed [`Snapshot`]. The snapshot is never mutated after the trampoline is
//! emitted; a change of the probe set emits a new trampoline with a new snapshot. The old
//! snapshot is dropped by a deferred callback queued after the swap (see `probe/mod.rs`).

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use crate::error::JitError;
use crate::forwarding::{self, ForwardingSpec, Hook, Target};
use crate::jit_core::JitCore;
use crate::trampoline::Trampoline;
use crate::HookArgs;

type HookFn = dyn Fn(&HookArgs) + Send + Sync;

/// What a probe runs on every call through its site: a closure or an `extern "C"` hook.
///
/// The hook runs on the caller's stack and thread while it is inside a trampoline: it must not
/// yield or block on the runtime (it runs inside
/// [`non_yielding`](tramway_runtime::non_yielding), where a yield point panics in debug
/// builds), and it must not panic: a panic aborts the process with a message naming the probe
/// (see the module docs of `probe/mod.rs`). It must not attach, detach or swap implementations
/// either: a commit may wait for a grace period, which would wait for the hook's own task.
#[derive(Clone)]
pub struct ProbeHook {
    f: Arc<HookFn>,
}

impl ProbeHook {
    /// A hook calling `f` with the call's integer arguments. `f` (with what it captures) is
    /// dropped after the last trampoline that can call it is past a grace period.
    pub fn new(f: impl Fn(&HookArgs) + Send + Sync + 'static) -> Self {
        ProbeHook { f: Arc::new(f) }
    }

    /// A hook calling `hook.func(hook.user, args)`.
    ///
    /// # Safety
    /// `hook.func` must be sound to call with `hook.user` concurrently from any task or
    /// registered thread, until the probe is detached (or its site dropped) and a grace period
    /// has passed after that (e.g. [`Jit::barrier`](crate::Jit::barrier) returned). It must not
    /// unwind (an `extern "C"` function that panics aborts the process).
    pub unsafe fn from_raw(hook: Hook) -> Self {
        let (func, user) = (hook.func, hook.user as usize);
        ProbeHook::new(move |args: &HookArgs| {
            // SAFETY: the caller of `from_raw` promised that `func` may be called with `user`
            // from any thread while the probe can run; `args` is a valid reference.
            unsafe { func(user as *mut c_void, args) }
        })
    }
}

impl std::fmt::Debug for ProbeHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProbeHook").finish_non_exhaustive()
    }
}

/// One attached probe as a site's set holds it.
#[derive(Clone)]
pub(crate) struct Entry {
    pub(crate) id: u64,
    pub(crate) hook: ProbeHook,
}

/// The immutable probe set of one probe trampoline.
pub(crate) struct Snapshot {
    site: u64,
    entries: Box<[Entry]>,
}

impl Snapshot {
    pub(crate) fn new(site: u64, entries: &[Entry]) -> Box<Snapshot> {
        Box::new(Snapshot {
            site,
            entries: entries.into(),
        })
    }
}

/// Emits a probe trampoline: call [`dispatch`] with `snapshot`, tail-jump to
/// `implementation` (a forwarding trampoline like any other; `forwarding.rs`). The caller keeps
/// `snapshot` alive until a grace period after the trampoline is unpublished.
pub(crate) fn emit(
    core: &Arc<JitCore>,
    implementation: &Trampoline,
    snapshot: &Snapshot,
) -> Result<Trampoline, JitError> {
    let hook = Hook {
        func: dispatch,
        user: snapshot as *const Snapshot as *mut c_void,
    };
    let spec = ForwardingSpec::new(Target::Trampoline(implementation.clone())).hook(hook);
    forwarding::emit(core, spec)
}

/// The hook of every probe trampoline: runs the snapshot's hooks in order.
///
/// Like every hook it is called through `forwarding::call_hook`, so it already runs inside
/// [`tramway_runtime::non_yielding`]; it does not enter the section again.
///
/// # Safety
/// `user` is the address of a [`Snapshot`] that outlives the call, and `args` of the
/// trampoline's saved argument registers; only probe trampolines call this.
unsafe extern "C" fn dispatch(user: *mut c_void, args: *const HookArgs) {
    // SAFETY: the snapshot is dropped only by a deferred callback queued after the trampoline
    // was unpublished, i.e. after every call inside it (this one) has returned; `args` points
    // into the trampoline's frame on this stack.
    let (snapshot, args) = unsafe { (&*(user as *const Snapshot), &*args) };
    for e in snapshot.entries.iter() {
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| (e.hook.f)(args))) {
            hook_panicked(snapshot.site, e.id, payload.as_ref());
        }
    }
}

/// A panic must not unwind through the trampoline into the caller's JIT'd frames: abort.
#[cold]
fn hook_panicked(site: u64, probe: u64, payload: &(dyn std::any::Any + Send)) -> ! {
    let msg = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("<non-string panic payload>");
    eprintln!(
        "tramway: probe {probe} on site {site}: hook panicked: {msg}\n\
         tramway: aborting: a panic must not unwind through trampoline code"
    );
    std::process::abort()
}
