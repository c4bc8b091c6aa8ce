//! Backtraces walk through hook-calling trampolines: with `JitBuilder::unwind_info(true)` a
//! DWARF backtrace taken inside an entry hook, an exit hook or a call-through target lists the
//! Rust function that called the site (and the test harness frames beyond it), and without it
//! the backtrace stops at the trampoline (the control). Registrations balance over emit /
//! swap / free cycles. Hook-calling trampolines keep a frame record, so an `rbp` walk from
//! inside a hook finds the caller's exact return address, and a hook called without one does
//! not (its control). Unwinding through a trampoline stays impossible: a panic below a
//! call-through trampoline aborts, refused by its personality routine.

use std::backtrace::Backtrace;
use std::ffi::c_void;
use std::hint::black_box;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tramway::jit::dynasmrt::{dynasm, DynasmApi};
use tramway::jit::{
    ExitHook, ForwardingSpec, Hook, HookArgs, Jit, ProbeHook, Probes, ReturnValues, SiteKind,
    Target, Trampoline,
};

type Fn1 = extern "C" fn(u64) -> u64;

extern "C" fn plus_one(x: u64) -> u64 {
    x + 1
}

fn jit(unwind_info: bool) -> Jit {
    Jit::builder().unwind_info(unwind_info).build().unwrap()
}

/// What a capturing hook saw: the backtraces it took, rendered.
#[derive(Default)]
struct Seen(Mutex<Vec<String>>);

impl Seen {
    fn record(&self) {
        let bt = Backtrace::force_capture();
        self.0.lock().unwrap().push(bt.to_string());
    }

    fn only(&self) -> String {
        let v = self.0.lock().unwrap();
        assert_eq!(v.len(), 1, "the hook ran {} times", v.len());
        v[0].clone()
    }
}

unsafe extern "C" fn capture_on_entry(user: *mut c_void, _: *const HookArgs) {
    // SAFETY: `user` is the test's `Seen`, alive until the trampoline is dropped.
    unsafe { &*(user as *const Seen) }.record();
}

unsafe extern "C" fn capture_on_exit(
    user: *mut c_void,
    _: *const HookArgs,
    _: *const ReturnValues,
) {
    // SAFETY: as in `capture_on_entry`.
    unsafe { &*(user as *const Seen) }.record();
}

unsafe extern "C" fn nothing_on_exit(_: *mut c_void, _: *const HookArgs, _: *const ReturnValues) {}

fn user(seen: &Seen) -> *mut c_void {
    seen as *const Seen as *mut c_void
}

/// Calls `f` through a site and does something with the result, so the call is not a tail
/// call: this frame is on the stack while the trampoline runs.
#[inline(never)]
fn tramway_distinctive_caller_of_the_site(f: Fn1, x: u64) -> u64 {
    black_box(f(black_box(x))) * 3
}

/// Installs `t` in an indirect site and calls it from `tramway_distinctive_caller_of_the_site`.
fn call_through_site(jit: &Jit, t: &Trampoline) -> u64 {
    let site = jit.site(SiteKind::Indirect, t).unwrap();
    // SAFETY: every trampoline these tests install forwards to an `extern "C" fn(u64) -> u64`;
    // `site` outlives the call, and nothing swaps it meanwhile.
    let f: Fn1 = unsafe { site.as_fn() };
    tramway_distinctive_caller_of_the_site(f, 4)
}

const CALLER: &str = "tramway_distinctive_caller_of_the_site";

/// The backtrace lists the hook-side frames, then the caller, then `test_fn` and the test
/// harness beyond it (in that order).
fn assert_walks_through(bt: &str, hook_side: &str, test_fn: &str) {
    let after = |from: usize, what: &str| {
        from + bt[from..]
            .find(what)
            .unwrap_or_else(|| panic!("no {what} after byte {from} in:\n{bt}"))
    };
    let hook = after(0, hook_side);
    let caller = after(hook, CALLER);
    let test = after(caller, test_fn);
    after(test, "test::run_test");
}

/// The control's shape: the hook-side frames are there, the caller is not.
fn assert_stops_at_the_trampoline(bt: &str, hook_side: &str) {
    assert!(bt.contains(hook_side), "the capture itself failed:\n{bt}");
    assert!(
        !bt.contains(CALLER),
        "listed the caller without unwind info:\n{bt}"
    );
}

fn entry_hooked(jit: &Jit, seen: &Seen) -> Trampoline {
    let hook = Hook {
        func: capture_on_entry,
        user: user(seen),
    };
    let spec = ForwardingSpec::new(Target::Address(plus_one as Fn1 as *const u8)).hook(hook);
    jit.forwarding(spec).unwrap()
}

fn exit_hooked(jit: &Jit, seen: &Seen) -> Trampoline {
    let hook = ExitHook {
        func: capture_on_exit,
        user: user(seen),
    };
    let spec = ForwardingSpec::new(Target::Address(plus_one as Fn1 as *const u8)).exit_hook(hook);
    jit.forwarding(spec).unwrap()
}

#[test]
fn a_backtrace_inside_an_entry_hook_lists_the_caller() {
    let (jit, seen) = (jit(true), Seen::default());
    let t = entry_hooked(&jit, &seen);
    assert_eq!(call_through_site(&jit, &t), 15);
    assert_eq!(jit.stats().unwind_registered, 1);
    assert_walks_through(
        &seen.only(),
        "capture_on_entry",
        "a_backtrace_inside_an_entry_hook_lists_the_caller",
    );
}

#[test]
fn a_backtrace_inside_an_exit_hook_lists_the_caller() {
    let (jit, seen) = (jit(true), Seen::default());
    let t = exit_hooked(&jit, &seen);
    assert_eq!(call_through_site(&jit, &t), 15);
    assert_walks_through(
        &seen.only(),
        "capture_on_exit",
        "a_backtrace_inside_an_exit_hook_lists_the_caller",
    );
}

static TARGET_SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());

extern "C" fn capturing_target(x: u64) -> u64 {
    TARGET_SEEN
        .lock()
        .unwrap()
        .push(Backtrace::force_capture().to_string());
    x + 1
}

#[test]
fn a_backtrace_inside_a_call_through_target_lists_the_caller() {
    let jit = jit(true);
    let hook = ExitHook {
        func: nothing_on_exit,
        user: std::ptr::null_mut(),
    };
    let spec =
        ForwardingSpec::new(Target::Address(capturing_target as Fn1 as *const u8)).exit_hook(hook);
    let t = jit.forwarding(spec).unwrap();
    assert_eq!(call_through_site(&jit, &t), 15);
    let bt = TARGET_SEEN.lock().unwrap().pop().expect("the target ran");
    assert_walks_through(
        &bt,
        "capturing_target",
        "a_backtrace_inside_a_call_through_target_lists_the_caller",
    );
}

#[test]
fn a_backtrace_inside_a_probe_hook_lists_the_caller() {
    let jit = jit(true);
    let probes = Probes::new(&jit);
    let site = probes
        .site(
            SiteKind::Indirect,
            &jit.forwarding(ForwardingSpec::new(Target::Address(
                plus_one as Fn1 as *const u8,
            )))
            .unwrap(),
        )
        .unwrap();
    let (entry, exit) = (Arc::new(Seen::default()), Arc::new(Seen::default()));
    let (e, x) = (entry.clone(), exit.clone());
    let hook = ProbeHook::new(move |_| e.record()).with_exit(move |_, _| x.record());
    let _probe = probes.attach(&site, hook).unwrap();
    // SAFETY: the site's implementation is `plus_one`; `site` outlives the call.
    let f: Fn1 = unsafe { site.as_fn() };
    assert_eq!(tramway_distinctive_caller_of_the_site(f, 4), 15);
    let test = "a_backtrace_inside_a_probe_hook_lists_the_caller";
    assert_walks_through(&entry.only(), "dispatch_entry", test);
    assert_walks_through(&exit.only(), "dispatch_exit", test);
}

/// The control: the same calls without unwind information stop at the trampoline, so the
/// tests above can fail.
#[test]
fn without_unwind_info_the_backtrace_stops_at_the_trampoline() {
    let jit = jit(false);
    let seen = Seen::default();
    let t = entry_hooked(&jit, &seen);
    assert_eq!(call_through_site(&jit, &t), 15);
    assert_stops_at_the_trampoline(&seen.only(), "capture_on_entry");
    let seen = Seen::default();
    let t = exit_hooked(&jit, &seen);
    assert_eq!(call_through_site(&jit, &t), 15);
    assert_stops_at_the_trampoline(&seen.only(), "capture_on_exit");
    assert_eq!(jit.stats().unwind_registered, 0);
}

unsafe extern "C" fn noop_entry(_: *mut c_void, _: *const HookArgs) {}

/// One trampoline of each shape the loop below cycles through; `true` if it calls a hook.
fn shape(jit: &Jit, i: usize) -> (Trampoline, bool) {
    let target = Target::Address(plus_one as Fn1 as *const u8);
    let entry = Hook {
        func: noop_entry,
        user: std::ptr::null_mut(),
    };
    let exit = ExitHook {
        func: nothing_on_exit,
        user: std::ptr::null_mut(),
    };
    let spec = match i % 4 {
        0 => ForwardingSpec::new(target),
        1 => ForwardingSpec::new(target).hook(entry),
        2 => ForwardingSpec::new(target).exit_hook(exit).counted(),
        _ => ForwardingSpec::new(target).hook(entry).exit_hook(exit),
    };
    (jit.forwarding(spec).unwrap(), i % 4 != 0)
}

#[test]
fn registrations_balance_over_emit_swap_and_free_cycles() {
    let tw = tramway::Builder::new()
        .workers(1)
        .jit(|b| b.unwind_info(true))
        .build()
        .unwrap();
    let jit = &tw.jit;
    let (first, _) = shape(jit, 0);
    let site = jit.site(SiteKind::Indirect, &first).unwrap();
    drop(first);
    let mut kept = Vec::new();
    let mut current_hooked = false;
    let mut leaked = 0;
    for i in 0..400 {
        let (t, hooked) = shape(jit, i);
        match i % 7 {
            // Never installed: freed at once when dropped.
            0 => drop(t),
            // Kept alive, not installed.
            1 => kept.push((t, hooked)),
            // Swapped in; the old one is retired and freed after a grace period.
            _ => {
                let old = site.swap(&t).unwrap();
                if i == 200 && current_hooked {
                    old.leak(); // stays registered (and mapped) forever
                    leaked += 1;
                } else {
                    drop(old);
                }
                current_hooked = hooked;
            }
        }
        if i % 50 == 0 {
            jit.barrier();
        }
    }
    jit.barrier();
    let alive = kept.iter().filter(|(_, h)| *h).count() as u64 + u64::from(current_hooked);
    let s = jit.stats();
    assert!(s.balanced(), "{s:?}");
    assert!(alive > 0 && leaked == 1);
    assert_eq!(s.unwind_registered, alive + leaked, "{s:?}");
    drop(kept);
    drop(site);
    jit.barrier();
    assert_eq!(jit.stats().unwind_registered, leaked);
}

/// What a frame-pointer walk from inside a hook saw: every return address of the chain.
#[derive(Default)]
struct Walk {
    /// The stack's end the walk may read up to (a local of the test function).
    top: AtomicUsize,
    return_addresses: Mutex<Vec<usize>>,
}

/// Walks the `rbp` chain from the hook's `rbp`: `[fp]` is the next frame pointer and
/// `[fp + 8]` a return address, for as long as `fp` stays 8-aligned, rises, and lies
/// between this frame and the test function's.
#[inline(never)]
fn walk_frame_pointers(walk: &Walk) {
    let mut fp: usize;
    // SAFETY: reads rbp; touches nothing else.
    unsafe { std::arch::asm!("mov {}, rbp", out(reg) fp, options(nomem, nostack)) };
    let bottom = &fp as *const usize as usize;
    let mut seen = Vec::new();
    for _ in 0..64 {
        if fp % 8 != 0 || fp < bottom || fp + 16 > walk.top.load(Ordering::Relaxed) {
            break;
        }
        // SAFETY: `fp .. fp + 16` lies inside this thread's stack, between this frame and a
        // live frame of the test function, all mapped.
        let (next, ra) = unsafe { (*(fp as *const usize), *((fp + 8) as *const usize)) };
        seen.push(ra);
        if next <= fp {
            break;
        }
        fp = next;
    }
    *walk.return_addresses.lock().unwrap() = seen;
}

unsafe extern "C" fn walk_on_entry(user: *mut c_void, _: *const HookArgs) {
    // SAFETY: `user` is the test's `Walk`, alive until the trampoline is dropped.
    walk_frame_pointers(unsafe { &*(user as *const Walk) });
}

unsafe extern "C" fn walk_on_exit(user: *mut c_void, _: *const HookArgs, _: *const ReturnValues) {
    // SAFETY: as in `walk_on_entry`.
    walk_frame_pointers(unsafe { &*(user as *const Walk) });
}

/// Calls `entry` with a `call` whose return address it knows exactly (the label after it).
#[inline(never)]
fn call_and_report_the_return_address(entry: *const u8) -> usize {
    let ret: usize;
    // SAFETY: `entry` is a trampoline that forwards to `plus_one` (it ignores whatever the
    // argument registers hold); the call follows the C ABI (`clobber_abi`), and the stack is
    // call-aligned on entry to an asm block that may use the stack.
    unsafe {
        std::arch::asm!(
            "call {entry}",
            "2:",
            "lea rax, [rip + 2b]",
            entry = in(reg) entry,
            out("rax") ret,
            clobber_abi("C"),
        );
    }
    ret
}

/// Walks from inside `t`'s hook and returns (the caller's return address, what the walk saw).
fn walk_from(t: &Trampoline) -> (usize, Vec<usize>) {
    let walk = WALK.with(|w| w.clone());
    let ra = call_and_report_the_return_address(t.addr());
    let seen = walk.return_addresses.lock().unwrap().clone();
    (ra, seen)
}

thread_local! {
    static WALK: Arc<Walk> = Arc::new(Walk::default());
}

/// The hooks' `user`: this thread's `Walk`, bounded by `top`.
fn walk_user(top: usize) -> *mut c_void {
    WALK.with(|w| {
        w.top.store(top, Ordering::Relaxed);
        Arc::as_ptr(w) as *mut c_void
    })
}

#[test]
fn a_frame_pointer_walk_from_a_hook_finds_the_callers_return_address() {
    let top = 0usize;
    let user = walk_user(black_box(&top) as *const usize as usize);
    let jit = jit(false); // frame records do not depend on unwind information
    let target = Target::Address(plus_one as Fn1 as *const u8);
    let entry = Hook {
        func: walk_on_entry,
        user,
    };
    let t = jit
        .forwarding(ForwardingSpec::new(target.clone()).hook(entry))
        .unwrap();
    let (ra, seen) = walk_from(&t);
    assert!(seen.contains(&ra), "entry hook: {ra:#x} not in {seen:x?}");
    let exit = ExitHook {
        func: walk_on_exit,
        user,
    };
    let t = jit
        .forwarding(ForwardingSpec::new(target).exit_hook(exit))
        .unwrap();
    let (ra, seen) = walk_from(&t);
    assert!(seen.contains(&ra), "exit hook: {ra:#x} not in {seen:x?}");
}

/// The walk's control: a hand-written trampoline that calls the same hook without a frame
/// record (`sub rsp, 8; call hook; add rsp, 8; jmp target`) hides the caller from it.
#[test]
fn without_a_frame_record_the_walk_misses_the_caller() {
    let top = 0usize;
    let user = walk_user(black_box(&top) as *const usize as usize) as i64;
    let jit = jit(false);
    let hook = walk_on_entry as unsafe extern "C" fn(*mut c_void, *const HookArgs) as usize as i64;
    let target = plus_one as Fn1 as usize as i64;
    // SAFETY: the code calls `walk_on_entry(user, _)` with the stack aligned, then tail-jumps
    // to `plus_one`; it never yields and references only `WALK`, alive for the thread.
    let t = unsafe {
        jit.custom(|ops| {
            dynasm!(ops
                ; .arch x64
                ; sub rsp, 8
                ; mov rdi, QWORD user
                ; mov rax, QWORD hook
                ; call rax
                ; add rsp, 8
                ; mov rax, QWORD target
                ; jmp rax
            );
        })
    }
    .unwrap();
    let (ra, seen) = walk_from(&t);
    assert!(!seen.contains(&ra), "found {ra:#x} without a frame record");
}

/// Set in the environment of the child process below.
const CHILD_ENV: &str = "TRAMWAY_UNWIND_CHILD";

extern "C-unwind" fn panicking_target(_: u64) -> u64 {
    panic!("a panic below a call-through trampoline");
}

/// The child half of the test below: a no-op unless started by it.
#[test]
fn panic_child() {
    let Some(mode) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let jit = jit(mode == "on");
    let hook = ExitHook {
        func: nothing_on_exit,
        user: std::ptr::null_mut(),
    };
    let target = panicking_target as extern "C-unwind" fn(u64) -> u64 as *const u8;
    let t = jit
        .forwarding(ForwardingSpec::new(Target::Address(target)).exit_hook(hook))
        .unwrap();
    // SAFETY: `t` forwards to `panicking_target`, which has this signature and may unwind.
    let f: extern "C-unwind" fn(u64) -> u64 = unsafe { std::mem::transmute(t.addr()) };
    let caught = std::panic::catch_unwind(|| f(1));
    println!("child: the panic was caught: {}", caught.is_err());
}

fn run_panic_child(mode: &str) -> (std::process::ExitStatus, String, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "panic_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, mode)
        .output()
        .expect("run child");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status, text(&out.stdout), text(&out.stderr))
}

/// With unwind information a panic could pass through a call-through trampoline (skipping its
/// exit path); its personality routine refuses (`_URC_FATAL_PHASE1_ERROR`, error 3), so the
/// panic fails to start and the process aborts, as without unwind information (where the
/// unwinder finds no frame description: `_URC_END_OF_STACK`, error 5).
#[test]
fn a_panic_below_a_call_through_trampoline_still_aborts() {
    for (mode, code) in [("on", 3), ("off", 5)] {
        let (status, stdout, stderr) = run_panic_child(mode);
        assert_eq!(
            status.signal(),
            Some(libc::SIGABRT),
            "{mode}: {status:?}\n{stderr}"
        );
        assert!(!stdout.contains("was caught"), "{mode}: {stdout}");
        let want = format!("failed to initiate panic, error {code}");
        assert!(stderr.contains(&want), "{mode}: no {want:?} in\n{stderr}");
    }
}
