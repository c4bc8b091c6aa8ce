//! The dispatchers a probe trampoline calls, its immutable snapshot, and [`ProbeHook`].
//!
//! A probe trampoline is a forwarding trampoline whose hooks are [`dispatch_entry`] and, if
//! some probe of the set has an exit part, [`dispatch_exit`] (which makes it call-through; see
//! `forwarding.rs`), with `user` = the address of a boxed [`Snapshot`]. The trampoline owns the
//! snapshot: it is freed with the trampoline's code, so it outlives every call inside the
//! trampoline, including one whose task is parked inside the implementation. The snapshot is
//! never mutated after the trampoline is emitted; a change of the probe set emits a new
//! trampoline with a new snapshot.

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use crate::error::JitError;
use crate::forwarding::{self, ExitHook, ForwardingSpec, Hook, Target};
use crate::jit_core::JitCore;
use crate::trampoline::Trampoline;
use crate::{HookArgs, ReturnValues};

type EntryFn = dyn Fn(&HookArgs) + Send + Sync;
type ExitFn = dyn Fn(&HookArgs, &ReturnValues) + Send + Sync;

/// What a probe runs on every call through its site: an entry part (before the
/// implementation), an exit part (after it returned, with its [`ReturnValues`] and duration),
/// or both; each a closure or an `extern "C"` hook.
///
/// A site whose probes have no exit part keeps the cheap path: its probe trampoline
/// tail-jumps to the implementation. While some attached probe has an exit part the probe
/// trampoline calls the implementation instead (a call-through trampoline, see the
/// [`probe`](crate::probe) module docs), and a task may park inside the implementation;
/// detaching is safe meanwhile.
///
/// Each part runs on the caller's stack and thread while it is inside a trampoline: it must
/// not yield or block on the runtime (it runs inside
/// [`non_yielding`](tramway_runtime::non_yielding), where a yield point panics in debug
/// builds), and it must not panic: a panic aborts the process with a message naming the probe
/// (see the [`probe`](crate::probe) module docs). It must not attach, detach or swap
/// implementations either: a commit may wait for a grace period, which would wait for the
/// hook's own task.
#[derive(Clone)]
pub struct ProbeHook {
    entry: Option<Arc<EntryFn>>,
    exit: Option<Arc<ExitFn>>,
    stack_arg_bytes: usize,
}

impl ProbeHook {
    /// An entry hook calling `f` with the call's integer arguments. `f` (with what it
    /// captures) is dropped after the last trampoline that can call it is past a grace period.
    pub fn new(f: impl Fn(&HookArgs) + Send + Sync + 'static) -> Self {
        ProbeHook {
            entry: Some(Arc::new(f)),
            exit: None,
            stack_arg_bytes: 0,
        }
    }

    /// An exit hook calling `f` with the call's integer arguments (as they were at entry) and
    /// its return values and duration, after the implementation returned. `f` (with what it
    /// captures) is dropped once the last trampoline that can call it is past a grace period
    /// and no task parked inside the implementation is still inside that trampoline.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use std::sync::Arc;
    /// use tramway_jit::{Jit, ProbeHook, Probes, SiteKind};
    ///
    /// extern "C" fn square(x: u64) -> u64 { x * x }
    /// let jit = Jit::new()?;
    /// let probes = Probes::new(&jit);
    /// let site = probes.typed_site(
    ///     SiteKind::Indirect,
    ///     &jit.forward(square as extern "C" fn(u64) -> u64)?,
    /// )?;
    /// let last = Arc::new(AtomicU64::new(0));
    /// let l = last.clone();
    /// let probe = probes.attach(
    ///     &site,
    ///     ProbeHook::on_exit(move |_args, ret| l.store(ret.int_rets[0], Ordering::Relaxed)),
    /// )?;
    /// assert_eq!(site.handle().call((7,))?, 49);
    /// assert_eq!(last.load(Ordering::Relaxed), 49);
    /// probes.detach(&probe)?;
    /// # Ok(()) }
    /// ```
    pub fn on_exit(f: impl Fn(&HookArgs, &ReturnValues) + Send + Sync + 'static) -> Self {
        ProbeHook {
            entry: None,
            exit: Some(Arc::new(f)),
            stack_arg_bytes: 0,
        }
    }

    /// Adds (or replaces) the exit part: `f` runs after the implementation returned, as with
    /// [`on_exit`](Self::on_exit), and the entry part, if any, before it.
    #[must_use]
    pub fn with_exit(
        mut self,
        f: impl Fn(&HookArgs, &ReturnValues) + Send + Sync + 'static,
    ) -> Self {
        self.exit = Some(Arc::new(f));
        self
    }

    /// Declares that the probed signature passes `bytes` of stack arguments (0 by default; on
    /// x86-64 8 bytes per integer argument after the sixth): while the site's trampoline is
    /// call-through it copies the largest value any attached probe declares
    /// (see [`ForwardingSpec::stack_arg_bytes`]). A multiple of 8, at most
    /// [`MAX_STACK_ARG_BYTES`](crate::MAX_STACK_ARG_BYTES): otherwise the attach fails with
    /// [`JitError::InvalidConfig`] (wrapped in [`ProbeError::Jit`](super::ProbeError::Jit)).
    #[must_use]
    pub fn stack_arg_bytes(mut self, bytes: usize) -> Self {
        self.stack_arg_bytes = bytes;
        self
    }

    /// Whether the hook has an exit part (and so makes its site's trampoline call-through).
    pub fn has_exit(&self) -> bool {
        self.exit.is_some()
    }

    /// An entry hook calling `hook.func(hook.user, args)`.
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

    /// An exit hook calling `hook.func(hook.user, args, ret)`.
    ///
    /// # Safety
    /// As [`from_raw`](Self::from_raw), and `hook.user` must stay valid until the probe's
    /// closure is dropped (a grace period after the detach is not enough while a task is
    /// parked inside the implementation: that task still runs the hook when it returns).
    pub unsafe fn from_raw_exit(hook: ExitHook) -> Self {
        let (func, user) = (hook.func, hook.user as usize);
        ProbeHook::on_exit(move |args: &HookArgs, ret: &ReturnValues| {
            // SAFETY: the caller of `from_raw_exit` promised that `func` may be called with
            // `user` from any thread while the probe can run; both references are valid.
            unsafe { func(user as *mut c_void, args, ret) }
        })
    }
}

impl std::fmt::Debug for ProbeHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProbeHook")
            .field("entry", &self.entry.is_some())
            .field("exit", &self.exit.is_some())
            .field("stack_arg_bytes", &self.stack_arg_bytes)
            .finish()
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

    fn has_entry(&self) -> bool {
        self.entries.iter().any(|e| e.hook.entry.is_some())
    }

    fn has_exit(&self) -> bool {
        self.entries.iter().any(|e| e.hook.exit.is_some())
    }

    /// The stack-argument bytes a call-through trampoline copies: the largest declared value.
    /// Every declared value is checked (also the smaller ones, and also without an exit part),
    /// so that a bad declaration fails its own attach.
    fn stack_arg_bytes(&self) -> Result<usize, JitError> {
        let mut max = 0;
        for e in self.entries.iter() {
            forwarding::check_stack_arg_bytes(e.hook.stack_arg_bytes)?;
            max = max.max(e.hook.stack_arg_bytes);
        }
        Ok(max)
    }
}

/// Emits a probe trampoline owning `snapshot`: call [`dispatch_entry`] (if some probe has an
/// entry part), then tail-jump to `implementation`, or, if some probe has an exit part, call
/// it and call [`dispatch_exit`] (a forwarding trampoline like any other; `forwarding.rs`).
pub(crate) fn emit(
    core: &Arc<JitCore>,
    implementation: &Trampoline,
    snapshot: Box<Snapshot>,
) -> Result<Trampoline, JitError> {
    let user = &*snapshot as *const Snapshot as *mut c_void;
    let stack_arg_bytes = snapshot.stack_arg_bytes()?;
    let mut spec = ForwardingSpec::new(Target::Trampoline(implementation.clone()));
    if snapshot.has_entry() {
        spec = spec.hook(Hook {
            func: dispatch_entry,
            user,
        });
    }
    if snapshot.has_exit() {
        spec = spec
            .exit_hook(ExitHook {
                func: dispatch_exit,
                user,
            })
            .stack_arg_bytes(stack_arg_bytes);
    }
    forwarding::emit_owning(core, spec, Some(snapshot))
}

/// The entry hook of every probe trampoline: runs the snapshot's entry parts in attach order.
///
/// Like every hook it is called through `forwarding::call_hook`, so it already runs inside
/// [`tramway_runtime::non_yielding`]; it does not enter the section again.
///
/// # Safety
/// `user` is the address of a [`Snapshot`] that outlives the call, and `args` of the
/// trampoline's saved argument registers; only probe trampolines call this.
unsafe extern "C" fn dispatch_entry(user: *mut c_void, args: *const HookArgs) {
    // SAFETY: the snapshot is owned by the trampoline that calls this and freed with its
    // code, after every call inside it (this one) has returned; `args` points into the
    // trampoline's frame on this stack.
    let (snapshot, args) = unsafe { (&*(user as *const Snapshot), &*args) };
    for e in snapshot.entries.iter() {
        if let Some(f) = &e.hook.entry {
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| f(args))) {
                hook_panicked(snapshot.site, e.id, payload.as_ref());
            }
        }
    }
}

/// The exit hook of every call-through probe trampoline: runs the snapshot's exit parts in
/// attach order (through `forwarding::call_exit_hook`, so inside `non_yielding`).
///
/// # Safety
/// As [`dispatch_entry`], and `ret` is the trampoline's saved return values.
unsafe extern "C" fn dispatch_exit(
    user: *mut c_void,
    args: *const HookArgs,
    ret: *const ReturnValues,
) {
    // SAFETY: as in `dispatch_entry`: the snapshot is freed with the trampoline's code, which
    // is held back while a task parked inside the implementation has its return address on
    // its stack (`forwarding.rs`); `args` and `ret` point into the trampoline's frame.
    let (snapshot, args, ret) = unsafe { (&*(user as *const Snapshot), &*args, &*ret) };
    for e in snapshot.entries.iter() {
        if let Some(f) = &e.hook.exit {
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| f(args, ret))) {
                hook_panicked(snapshot.site, e.id, payload.as_ref());
            }
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
