//! Stack-overflow reporting for task stacks.
//!
//! Every task stack is a corosensei `DefaultStack`: an mmap with a `PROT_NONE` guard page
//! below the usable range, so an overflowing task faults on the guard page (Rust's stack
//! probes make sure a large frame cannot jump over it). Recovering is not attempted: unwinding
//! from a fault is unsound in general, and discarding the stack without running destructors
//! (corosensei's trap handler) would free memory that pinned values or intrusive lists on the
//! stack still point to. So an overflow is fatal, as it is for an OS thread.
//!
//! What this module adds is the report. [`install`] puts a `SIGSEGV` handler (on the
//! alternate signal stack that std gives every thread it spawns) in front of the previous
//! one. If the fault address lies in the guard page of the task running on the faulting
//! thread, the handler writes `tramway: task <id> ('<name>') has overflowed its stack` to
//! stderr with `write(2)`, restores the default action and returns: the faulting
//! instruction runs again and the process dies with `SIGSEGV`. Any other fault is passed to
//! the previous handler (std's, which reports overflows of OS-thread stacks).

use std::sync::OnceLock;

use super::task;

/// How far below the guard page a fault still counts as an overflow (large frames probe
/// page by page, so in practice the guard page itself is hit).
const GUARD_SLACK: usize = 64 * 1024;

static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

/// Installs the reporter once per process.
pub(crate) fn install() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: sigaction with a zeroed, then filled, `struct sigaction`; the previous action
        // is saved before ours is installed so the handler can always chain to it.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGSEGV, std::ptr::null(), &mut old) != 0 {
                return;
            }
            let _ = PREVIOUS.set(old);
            let mut new: libc::sigaction = std::mem::zeroed();
            new.sa_sigaction = handler as *const () as usize;
            new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut new.sa_mask);
            libc::sigaction(libc::SIGSEGV, &new, std::ptr::null_mut());
        }
    });
}

extern "C" fn handler(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    let t = task::current_task_ptr();
    if !t.is_null() {
        // SAFETY: the task pointer is valid while the task runs on this thread (task.rs);
        // reading plain fields is async-signal-safe.
        let t = unsafe { &*t };
        let page = page_size();
        if addr < t.guard.saturating_add(page) && addr.saturating_add(GUARD_SLACK) >= t.guard {
            report(t.id, t.name().map(|n| n.as_bytes()));
            // SAFETY: resetting to SIG_DFL is async-signal-safe; on return the faulting
            // instruction re-executes and the default action terminates the process.
            unsafe { reset_default(sig) };
            return;
        }
    }
    chain(sig, info, ctx);
}

fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    match PREVIOUS.get() {
        Some(prev) if prev.sa_sigaction != libc::SIG_DFL && prev.sa_sigaction != libc::SIG_IGN => {
            if prev.sa_flags & libc::SA_SIGINFO != 0 {
                // SAFETY: the previous handler was installed for SIGSEGV with SA_SIGINFO, so it
                // has this signature; we pass the arguments we received.
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    unsafe { std::mem::transmute(prev.sa_sigaction) };
                f(sig, info, ctx);
            } else {
                // SAFETY: a non-SA_SIGINFO handler takes only the signal number.
                let f: extern "C" fn(libc::c_int) =
                    unsafe { std::mem::transmute(prev.sa_sigaction) };
                f(sig);
            }
        }
        // SAFETY: as in `handler`.
        _ => unsafe { reset_default(sig) },
    }
}

/// Restores the default action of `sig`.
///
/// # Safety
/// Changes the process-wide disposition of `sig`: the caller must be fine with the default
/// action taking effect (here: the process dies on the re-executed fault).
unsafe fn reset_default(sig: libc::c_int) {
    // SAFETY: a zeroed `sigaction` is a valid value to fill in; sigemptyset and sigaction are
    // async-signal-safe and get valid pointers.
    unsafe {
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        libc::sigemptyset(&mut dfl.sa_mask);
        libc::sigaction(sig, &dfl, std::ptr::null_mut());
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf is async-signal-safe and takes no pointers.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(p).unwrap_or(4096)
}

/// Writes the report with `write(2)` only (no allocation, no locks).
fn report(id: u64, name: Option<&[u8]>) {
    let mut buf = [0u8; 256];
    let mut n = 0;
    let mut put = |b: &[u8]| {
        let k = b.len().min(buf.len() - n);
        buf[n..n + k].copy_from_slice(&b[..k]);
        n += k;
    };
    put(b"tramway: task ");
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut v = id;
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    put(&digits[i..]);
    if let Some(name) = name {
        put(b" ('");
        put(&name[..name.len().min(128)]);
        put(b"')");
    }
    put(b" has overflowed its stack\n");
    // SAFETY: write(2) is async-signal-safe; the buffer is valid for `n` bytes.
    unsafe { libc::write(2, buf.as_ptr().cast(), n) };
}
