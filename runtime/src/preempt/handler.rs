//! The preemption signal handler: decide (async-signal-safely) whether to preempt, and
//! inject the stub call (the conditions are listed in the `preempt` module docs).
//!
//! Everything here runs in signal context: it reads thread-locals that are `const`-initialized
//! plain values, loads atomics, and writes the interrupted context; it allocates nothing,
//! takes no lock and preserves `errno`.

use std::sync::atomic::Ordering;
use std::sync::OnceLock;

use super::PreemptCounters;
use crate::sched::scheduler;
use crate::sched::task;

/// Handlers installed before ours, by signal number, to chain to.
static PREVIOUS: [OnceLock<libc::sigaction>; 65] = [const { OnceLock::new() }; 65];

/// Installs the handler for `signal` once per process (idempotent).
pub(crate) fn install(signal: i32) -> std::io::Result<()> {
    let Some(previous) = usize::try_from(signal).ok().and_then(|s| PREVIOUS.get(s)) else {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    };
    let mut result = Ok(());
    previous.get_or_init(|| {
        // SAFETY: sigaction with a zeroed, then filled, `struct sigaction`; the previous
        // action is saved before ours is installed so that the handler can chain to it (a
        // signal that arrives in between is handled by ours, which chains to "nothing", and
        // so ignored: the default action of SIGURG anyway).
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            let mut new: libc::sigaction = std::mem::zeroed();
            new.sa_sigaction = handler as *const () as usize;
            new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESTART;
            libc::sigemptyset(&mut new.sa_mask);
            if libc::sigaction(signal, &new, &mut old) != 0 {
                result = Err(std::io::Error::last_os_error());
            }
            old
        }
    });
    result
}

extern "C" fn handler(sig: libc::c_int, info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    // SAFETY: reading and restoring errno is what a signal handler must do.
    let errno = unsafe { *libc::__errno_location() };
    // SAFETY: called by the kernel as an SA_SIGINFO handler: `uc` is the interrupted context.
    if !unsafe { try_preempt(sig, uc) } {
        chain(sig, info, uc);
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// Whether the signal was the runtime's (consumed, preempted or not).
///
/// # Safety
/// Called from the handler with the kernel's `uc`.
unsafe fn try_preempt(sig: libc::c_int, uc: *mut libc::c_void) -> bool {
    let Some((sched, index)) = scheduler::current_worker_for_signal() else {
        return false;
    };
    // SAFETY: set by the worker for its whole life; the worker is this interrupted thread.
    let sched = unsafe { &*sched };
    let Some(preempt) = sched.preempt.as_ref() else {
        return false;
    };
    if preempt.config.signal != sig || !preempt.slots[index].requested.swap(false, Ordering::AcqRel)
    {
        return false; // not a signal the monitor sent to this worker
    }
    let counters = &preempt.counters;
    // SAFETY: the kernel's context for this handler invocation.
    let ctx = unsafe { super::x86_64::Interrupted::new(uc) };
    if decide(&ctx, counters).is_some() {
        let mut ctx = ctx;
        // SAFETY: `decide` checked that the stack below the interrupted rsp belongs to the
        // current task, with room for the stub.
        unsafe { ctx.inject_call(super::x86_64::stub()) };
    }
    true
}

/// The conditions of the module docs; counts the reason when one fails.
fn decide(ctx: &super::x86_64::Interrupted, counters: &PreemptCounters) -> Option<()> {
    let bump = |c: &std::sync::atomic::AtomicU64| {
        c.fetch_add(1, Ordering::Relaxed);
    };
    if !crate::code::ranges::contains(ctx.pc()) {
        bump(&counters.ignored_outside_code);
        return None;
    }
    let task = task::current_task_ptr();
    if task.is_null() {
        bump(&counters.ignored_no_task);
        return None;
    }
    // SAFETY: the worker sets the current task before resuming it and clears it after; the
    // interrupted code is that task's (its PC is in JIT code, which only tasks run here), so
    // the task is alive.
    let task = unsafe { &*task };
    if task.reader.in_non_yielding() {
        bump(&counters.ignored_non_yielding);
        return None;
    }
    if !task.reader.in_preemptible() {
        bump(&counters.ignored_no_scope);
        return None;
    }
    let sp = ctx.sp();
    let room = sp >= task.stack_limit + super::x86_64::stack_needed() && sp <= task.stack_base;
    if !room || !on_alternate_stack() {
        bump(&counters.ignored_no_stack_room);
        return None;
    }
    Some(())
}

/// Whether the handler runs on an alternate signal stack: otherwise the kernel's signal
/// frame lies just below the interrupted red zone, where the injection writes.
fn on_alternate_stack() -> bool {
    // SAFETY: sigaltstack is async-signal-safe; a null new stack only queries.
    unsafe {
        let mut current: libc::stack_t = std::mem::zeroed();
        libc::sigaltstack(std::ptr::null(), &mut current) == 0
            && current.ss_flags & libc::SS_ONSTACK != 0
    }
}

/// Passes a signal the runtime did not send to the handler installed before ours.
fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    let Some(prev) = usize::try_from(sig)
        .ok()
        .and_then(|s| PREVIOUS.get(s))
        .and_then(OnceLock::get)
    else {
        return;
    };
    if prev.sa_sigaction == libc::SIG_DFL || prev.sa_sigaction == libc::SIG_IGN {
        // The default action of the signals we accept (SIGURG, real-time ones used this way)
        // is taken to be "ignore": re-raising would kill the process for a stray signal.
        return;
    }
    if prev.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the previous handler was installed with SA_SIGINFO, so it has this
        // signature; we pass the arguments we received.
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute(prev.sa_sigaction) };
        f(sig, info, uc);
    } else {
        // SAFETY: a non-SA_SIGINFO handler takes only the signal number.
        let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(prev.sa_sigaction) };
        f(sig);
    }
}

/// Where the stub calls in, on the task's stack and outside signal context: switches the
/// current task out as a preemption. Returns when the task is resumed (on the same worker).
/// Never unwinds: a panic aborts. Called only by the stubs (a `sym` operand there).
pub(super) extern "C" fn tramway_preempt_entry() {
    let r = std::panic::catch_unwind(|| {
        task::with_current(|t| t.preempt_out());
    });
    if r.is_err() {
        eprintln!("tramway: panic while preempting a task; aborting");
        std::process::abort();
    }
}
