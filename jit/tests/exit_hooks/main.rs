//! Exit hooks: call-through trampolines that see a call's return values and duration, and stay
//! mapped while a task is parked inside the implementation they called (the stack scan of
//! `tramway_runtime::code`). Each test names the behaviour it pins down. Detaching while a
//! task is parked inside the implementation, and the control that crashes without the
//! code-range check, are in `parked.rs`.

mod parked;

use std::ffi::c_void;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tramway_jit::dynasmrt::{dynasm, DynasmApi};
use tramway_jit::{
    ExitHook, ForwardingSpec, Hook, HookArgs, Jit, JitError, ProbeError, ProbeHook, ProbedSite,
    Probes, ReturnValues, SiteKind, Target, Trampoline, MAX_STACK_ARG_BYTES,
};

/// A tail-jumping trampoline to `f` (an `extern "C" fn` cast to an address).
fn forward_to(jit: &Jit, f: *const u8) -> Trampoline {
    jit.forwarding(ForwardingSpec::new(Target::Address(f)))
        .expect("a forwarding trampoline")
}

/// A probed site (LeakUntilDrop reclaimer: callable from any thread) over `f`.
fn probed(f: *const u8) -> (Jit, Probes, ProbedSite) {
    let jit = Jit::new().unwrap();
    let probes = Probes::new(&jit);
    let site = probes
        .site(SiteKind::Indirect, &forward_to(&jit, f))
        .unwrap();
    (jit, probes, site)
}

/// Records the last `ReturnValues` and `HookArgs` an exit hook saw.
#[derive(Default)]
struct Seen {
    ret: Mutex<Option<ReturnValues>>,
    args: Mutex<Option<HookArgs>>,
    calls: AtomicU64,
}

fn recording(seen: &Arc<Seen>) -> ProbeHook {
    let s = seen.clone();
    ProbeHook::on_exit(move |args, ret| {
        *s.ret.lock().unwrap() = Some(*ret);
        *s.args.lock().unwrap() = Some(*args);
        s.calls.fetch_add(1, Ordering::SeqCst);
    })
}

impl Seen {
    fn ret(&self) -> ReturnValues {
        self.ret.lock().unwrap().expect("the exit hook ran")
    }
    fn args(&self) -> HookArgs {
        self.args.lock().unwrap().expect("the exit hook ran")
    }
}

extern "C" fn combine(a: u64, b: u64) -> u64 {
    a.wrapping_mul(1000).wrapping_add(b)
}

#[test]
fn an_exit_hook_sees_a_u64_result_and_the_call_arguments() {
    let (_jit, probes, site) = probed(combine as *const u8);
    let seen = Arc::new(Seen::default());
    probes.attach(&site, recording(&seen)).unwrap();
    // SAFETY: the site's implementation is `combine`, which the probe trampoline forwards.
    let f: extern "C" fn(u64, u64) -> u64 = unsafe { site.as_fn() };
    for (a, b) in [(1, 2), (u64::MAX, 7), (123_456, 0)] {
        let r = f(a, b);
        assert_eq!(
            r,
            combine(a, b),
            "the caller got the implementation's result"
        );
        assert_eq!(seen.ret().int_rets[0], r, "rax");
        assert_eq!(seen.args().int_args[..2], [a, b], "rdi, rsi at entry");
    }
    assert_eq!(seen.calls.load(Ordering::SeqCst), 3);
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pair {
    lo: u64,
    hi: u64,
}

extern "C" fn pair(x: u64) -> Pair {
    Pair {
        lo: x,
        hi: !x ^ 0x5a5a,
    }
}

#[test]
fn an_exit_hook_sees_a_two_register_struct_in_both_registers() {
    let (_jit, probes, site) = probed(pair as *const u8);
    let seen = Arc::new(Seen::default());
    probes.attach(&site, recording(&seen)).unwrap();
    // SAFETY: the implementation is `pair`.
    let f: extern "C" fn(u64) -> Pair = unsafe { site.as_fn() };
    let r = f(0x1234_5678_9abc);
    assert_eq!(r, pair(0x1234_5678_9abc), "rdx reached the caller intact");
    assert_eq!(seen.ret().int_rets, [r.lo, r.hi]);
}

extern "C" fn weigh(a: u64, x: f64, b: u64, y: f64) -> f64 {
    a as f64 * x + b as f64 * y
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
struct Point {
    x: f64,
    y: f64,
}

extern "C" fn point(x: f64, y: f64) -> Point {
    Point { x: x * 2.0, y: -y }
}

#[test]
fn an_exit_hook_sees_float_results_in_the_vector_registers() {
    let (_jit, probes, site) = probed(weigh as *const u8);
    let seen = Arc::new(Seen::default());
    probes.attach(&site, recording(&seen)).unwrap();
    // SAFETY: the implementation is `weigh`.
    let f: extern "C" fn(u64, f64, u64, f64) -> f64 = unsafe { site.as_fn() };
    let r = f(3, 0.5, 4, 0.25);
    assert_eq!(
        r, 2.5,
        "float arguments and the f64 result crossed the trampoline"
    );
    assert_eq!(seen.ret().f64(0), Some(2.5), "xmm0");
    assert_eq!(seen.args().int_args[..2], [3, 4]);

    let (_jit, probes, site) = probed(point as *const u8);
    let seen = Arc::new(Seen::default());
    probes.attach(&site, recording(&seen)).unwrap();
    // SAFETY: the implementation is `point`.
    let f: extern "C" fn(f64, f64) -> Point = unsafe { site.as_fn() };
    let r = f(1.25, 8.0);
    assert_eq!(
        r,
        Point { x: 2.5, y: -8.0 },
        "xmm1 reached the caller intact"
    );
    let ret = seen.ret();
    assert_eq!((ret.f64(0), ret.f64(1)), (Some(2.5), Some(-8.0)));
}

extern "C" fn is_odd(x: u32) -> bool {
    x % 2 == 1
}

#[test]
fn a_typed_exit_hook_decodes_the_site_result_type() {
    let jit = Jit::new().unwrap();
    let probes = Probes::new(&jit);
    let site = probes
        .typed_site(
            SiteKind::Direct,
            &jit.forward(is_odd as extern "C" fn(u32) -> bool).unwrap(),
        )
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    probes
        .attach(
            &site,
            site.exit_hook(move |args, odd: bool, duration| {
                s.lock()
                    .unwrap()
                    .push((args.int_args[0] as u32, odd, duration));
            }),
        )
        .unwrap();
    let call = site.handle();
    assert!(call.call((7,)).unwrap());
    assert!(!call.call((10,)).unwrap());
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen.iter().map(|&(x, odd, _)| (x, odd)).collect::<Vec<_>>(),
        [(7, true), (10, false)]
    );
}

/// The order in which hooks and the implementation ran.
static ORDER: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());

extern "C" fn logged(x: u64) -> u64 {
    ORDER.lock().unwrap().push("implementation");
    x
}

#[test]
fn entry_parts_run_before_and_exit_parts_after_the_implementation_in_attach_order() {
    let (_jit, probes, site) = probed(logged as *const u8);
    let log = |what: &'static str| move || ORDER.lock().unwrap().push(what);
    let (e1, x1, e2, x3) = (log("entry 1"), log("exit 1"), log("entry 2"), log("exit 3"));
    probes
        .batch(|b| {
            b.attach(
                &site,
                ProbeHook::new(move |_| e1()).with_exit(move |_, _| x1()),
            )?;
            b.attach(&site, ProbeHook::new(move |_| e2()))?;
            b.attach(&site, ProbeHook::on_exit(move |_, _| x3()))
        })
        .unwrap();
    // SAFETY: the implementation is `logged`.
    let f: extern "C" fn(u64) -> u64 = unsafe { site.as_fn() };
    ORDER.lock().unwrap().clear();
    assert_eq!(f(5), 5);
    assert_eq!(
        *ORDER.lock().unwrap(),
        ["entry 1", "entry 2", "implementation", "exit 1", "exit 3"]
    );
}

extern "C" fn naps(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[test]
fn the_duration_covers_the_implementation() {
    let (_jit, probes, site) = probed(naps as *const u8);
    let seen = Arc::new(Seen::default());
    probes.attach(&site, recording(&seen)).unwrap();
    // SAFETY: the implementation is `naps`.
    let f: extern "C" fn(u64) -> u64 = unsafe { site.as_fn() };
    assert_eq!(f(0), 0);
    let quick = seen.ret();
    assert!(quick.duration_ns > 0, "{quick:?}");
    assert!(quick.end_ticks > quick.start_ticks);
    assert_eq!(f(20), 20);
    // A lower bound only (the sleep lasts at least 20 ms); no upper bound under load.
    let slept = seen.ret().duration();
    assert!(slept >= Duration::from_millis(10), "{slept:?}");
}

/// `extern "C" fn(9 x u64) -> u64`: the first six arguments in registers, three on the stack.
extern "C" fn nine(a: u64, b: u64, c: u64, d: u64, e: u64, f: u64, g: u64, h: u64, i: u64) -> u64 {
    [a, b, c, d, e, f, g, h, i]
        .iter()
        .enumerate()
        .map(|(k, &v)| v.wrapping_mul(10u64.pow(k as u32)))
        .sum()
}

type NineFn = extern "C" fn(u64, u64, u64, u64, u64, u64, u64, u64, u64) -> u64;

#[test]
fn stack_arguments_reach_an_implementation_behind_an_exit_hooked_site() {
    let (_jit, probes, site) = probed(nine as *const u8);
    let seen = Arc::new(Seen::default());
    probes
        .attach(&site, recording(&seen).stack_arg_bytes(24))
        .unwrap();
    // SAFETY: the implementation is `nine`.
    let f: NineFn = unsafe { site.as_fn() };
    let r = f(1, 2, 3, 4, 5, 6, 7, 8, 9);
    assert_eq!(r, 987_654_321, "every argument, stack ones included");
    assert_eq!(seen.ret().int_rets[0], r);
    assert_eq!(seen.args().int_args, [1, 2, 3, 4, 5, 6]);
}

#[test]
fn bad_stack_argument_sizes_are_typed_errors_and_change_nothing() {
    let (jit, probes, site) = probed(nine as *const u8);
    for bytes in [12, MAX_STACK_ARG_BYTES + 8, usize::MAX] {
        let err = probes
            .attach(&site, ProbeHook::on_exit(|_, _| {}).stack_arg_bytes(bytes))
            .unwrap_err();
        assert!(
            matches!(err, ProbeError::Jit(JitError::InvalidConfig(_))),
            "{bytes}: {err:?}"
        );
        let err = jit
            .forwarding(
                ForwardingSpec::new(Target::Address(nine as *const u8)).stack_arg_bytes(bytes),
            )
            .unwrap_err();
        assert!(
            matches!(err, JitError::InvalidConfig(_)),
            "{bytes}: {err:?}"
        );
    }
    assert_eq!(site.probe_count(), 0);
    probes
        .attach(
            &site,
            ProbeHook::on_exit(|_, _| {}).stack_arg_bytes(MAX_STACK_ARG_BYTES),
        )
        .unwrap();
    // SAFETY: the implementation is `nine`.
    let f: NineFn = unsafe { site.as_fn() };
    assert_eq!(f(1, 2, 3, 4, 5, 6, 7, 8, 9), 987_654_321);
}

/// Custom code returning `Pair { lo: its return address, hi: (rsp + 8) % 16 at entry }`.
fn where_am_i_called_from(jit: &Jit) -> Trampoline {
    // SAFETY: reads its own return address and stack pointer, writes nothing, never yields,
    // and implements `extern "C" fn() -> Pair`.
    unsafe {
        jit.custom(|ops| {
            dynasm!(ops
                ; .arch x64
                ; mov rax, [rsp]
                ; lea rdx, [rsp + 8]
                ; and rdx, 15
                ; ret
            );
        })
    }
    .unwrap()
}

#[test]
fn a_site_calls_through_only_while_an_exit_probe_is_attached() {
    let jit = Jit::new().unwrap();
    let probes = Probes::new(&jit);
    let site = probes
        .site(SiteKind::Indirect, &where_am_i_called_from(&jit))
        .unwrap();
    // SAFETY: the implementation is `where_am_i_called_from`'s code.
    let f: extern "C" fn() -> Pair = unsafe { site.as_fn() };
    let (base, len) = jit.code_range();
    let returns_into_jit = || {
        let r = std::hint::black_box(f)();
        assert_eq!(
            r.hi, 0,
            "the implementation was entered with an aligned stack"
        );
        (base..base + len).contains(&(r.lo as usize))
    };
    assert!(
        !returns_into_jit(),
        "no probe: the caller calls the implementation"
    );
    let entry = probes.attach(&site, ProbeHook::new(|_| {})).unwrap();
    assert!(!returns_into_jit(), "an entry probe tail-jumps");
    let exit = probes.attach(&site, ProbeHook::on_exit(|_, _| {})).unwrap();
    assert!(returns_into_jit(), "an exit probe calls the implementation");
    probes.detach(&exit).unwrap();
    assert!(
        !returns_into_jit(),
        "back to the tail jump without exit probes"
    );
    probes.detach(&entry).unwrap();
    assert!(!returns_into_jit());
}

#[test]
fn the_implementation_is_entered_with_an_aligned_stack_whatever_the_stack_arguments() {
    for bytes in [0usize, 8, 16, 24, 248] {
        let jit = Jit::new().unwrap();
        let spec = ForwardingSpec::new(Target::Trampoline(where_am_i_called_from(&jit)))
            .exit_hook(ExitHook {
                func: ignore_exit,
                user: std::ptr::null_mut(),
            })
            .stack_arg_bytes(bytes);
        let t = jit.forwarding(spec).unwrap();
        // SAFETY: `t` calls `where_am_i_called_from`'s code, which takes no arguments (the
        // copied stack bytes are the caller's frame, readable); `t` outlives the call.
        let f: extern "C" fn() -> Pair = unsafe { std::mem::transmute(t.addr()) };
        assert_eq!(f().hi, 0, "{bytes} stack-argument bytes");
    }
}

unsafe extern "C" fn ignore_exit(_: *mut c_void, _: *const HookArgs, _: *const ReturnValues) {}

/// Runs `code` (custom JIT code calling `callee` as `extern "C" fn() -> u64`) with known values
/// in every callee-saved register, and returns them as seen after the call, then the result.
fn callee_saved_after_call(jit: &Jit, callee: *const u8) -> [u64; 7] {
    // SAFETY: a C-ABI function `(callee, out)`: saves the callee-saved registers, loads known
    // values, calls `callee` with the stack aligned, stores the registers and rax into the 7
    // words at `out`, restores the registers and returns. It never yields.
    let caller = unsafe {
        jit.custom(|ops| {
            dynasm!(ops
                ; .arch x64
                ; push rbx
                ; push rbp
                ; push r12
                ; push r13
                ; push r14
                ; push r15
                ; push rsi                       // 7 pushes: rsp is 16-byte aligned
                ; mov rbx, QWORD 0x1111_0000_0000_0001
                ; mov rbp, QWORD 0x2222_0000_0000_0002
                ; mov r12, QWORD 0x3333_0000_0000_0003
                ; mov r13, QWORD 0x4444_0000_0000_0004
                ; mov r14, QWORD 0x5555_0000_0000_0005
                ; mov r15, QWORD 0x6666_0000_0000_0006
                ; call rdi
                ; mov rsi, [rsp]
                ; mov [rsi], rbx
                ; mov [rsi + 8], rbp
                ; mov [rsi + 16], r12
                ; mov [rsi + 24], r13
                ; mov [rsi + 32], r14
                ; mov [rsi + 40], r15
                ; mov [rsi + 48], rax
                ; pop rsi
                ; pop r15
                ; pop r14
                ; pop r13
                ; pop r12
                ; pop rbp
                ; pop rbx
                ; ret
            );
        })
    }
    .unwrap();
    let mut out = [0u64; 7];
    // SAFETY: `caller` implements `extern "C" fn(*const u8, *mut [u64; 7])` and is alive.
    let run: extern "C" fn(*const u8, *mut [u64; 7]) =
        unsafe { std::mem::transmute(caller.addr()) };
    run(callee, &mut out);
    out
}

extern "C" fn forty_two() -> u64 {
    42
}

#[test]
fn a_call_through_preserves_every_callee_saved_register() {
    let (jit, probes, site) = probed(forty_two as *const u8);
    probes
        .attach(&site, ProbeHook::new(|_| {}).with_exit(|_, _| {}))
        .unwrap();
    let out = callee_saved_after_call(&jit, site.entry());
    assert_eq!(
        out,
        [
            0x1111_0000_0000_0001,
            0x2222_0000_0000_0002,
            0x3333_0000_0000_0003,
            0x4444_0000_0000_0004,
            0x5555_0000_0000_0005,
            0x6666_0000_0000_0006,
            42
        ]
    );
}

/// Counters an entry and an exit `Hook` of a raw forwarding trampoline bump.
#[derive(Default)]
struct RawCounts {
    entries: AtomicU64,
    exits: AtomicU64,
    last: AtomicU64,
}

unsafe extern "C" fn raw_entry(user: *mut c_void, _: *const HookArgs) {
    // SAFETY: `user` is the test's `RawCounts`, alive until after the trampoline's last call.
    let c = unsafe { &*(user as *const RawCounts) };
    c.entries.fetch_add(1, Ordering::SeqCst);
}

unsafe extern "C" fn raw_exit(user: *mut c_void, _: *const HookArgs, ret: *const ReturnValues) {
    // SAFETY: as in `raw_entry`; `ret` is valid for the duration of the hook.
    let (c, ret) = unsafe { (&*(user as *const RawCounts), &*ret) };
    // The entry hook of the same call has run.
    assert_eq!(
        c.entries.load(Ordering::SeqCst),
        c.exits.load(Ordering::SeqCst) + 1
    );
    c.exits.fetch_add(1, Ordering::SeqCst);
    c.last.store(ret.int_rets[0], Ordering::SeqCst);
}

#[test]
fn a_counted_forwarding_trampoline_with_entry_and_exit_hooks_calls_its_target() {
    let jit = Jit::new().unwrap();
    let counts = RawCounts::default();
    let user = &counts as *const RawCounts as *mut c_void;
    let t = jit
        .forwarding(
            ForwardingSpec::new(Target::Address(combine as *const u8))
                .counted()
                .hook(Hook {
                    func: raw_entry,
                    user,
                })
                .exit_hook(ExitHook {
                    func: raw_exit,
                    user,
                }),
        )
        .unwrap();
    // SAFETY: `t` forwards to `combine`; it and `counts` outlive the calls.
    let f: extern "C" fn(u64, u64) -> u64 = unsafe { std::mem::transmute(t.addr()) };
    for i in 0..100 {
        assert_eq!(f(i, 1), combine(i, 1));
    }
    assert_eq!(t.calls(), 100);
    assert_eq!(counts.entries.load(Ordering::SeqCst), 100);
    assert_eq!(counts.exits.load(Ordering::SeqCst), 100);
    assert_eq!(counts.last.load(Ordering::SeqCst), combine(99, 1));
}
