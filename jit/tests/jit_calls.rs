//! Calls through patch sites and forwarding trampolines reach their targets with every argument intact.

use std::ffi::c_void;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tramway_jit::{ForwardingSpec, Hook, HookArgs, Jit, Site, SiteKind, Target, Trampoline};

extern "C" fn i0() -> u64 {
    42
}
extern "C" fn i1(a: u64) -> u64 {
    a + 1
}
extern "C" fn i2(a: u64, b: u64) -> u64 {
    a + 10 * b
}
extern "C" fn i3(a: u64, b: u64, c: u64) -> u64 {
    a + 10 * b + 100 * c
}
extern "C" fn i4(a: u64, b: u64, c: u64, d: u64) -> u64 {
    a + 10 * b + 100 * c + 1000 * d
}
extern "C" fn i5(a: u64, b: u64, c: u64, d: u64, e: u64) -> u64 {
    a + 10 * b + 100 * c + 1000 * d + 10_000 * e
}
extern "C" fn i6(a: u64, b: u64, c: u64, d: u64, e: u64, f: u64) -> u64 {
    a + 10 * b + 100 * c + 1000 * d + 10_000 * e + 100_000 * f
}
#[allow(clippy::too_many_arguments)]
extern "C" fn i8s(a: u64, b: u64, c: u64, d: u64, e: u64, f: u64, g: u64, h: u64) -> u64 {
    i6(a, b, c, d, e, f) + 1_000_000 * g + 10_000_000 * h
}
extern "C" fn f2(a: f64, b: f64) -> f64 {
    a * 2.0 + b
}
#[allow(clippy::too_many_arguments)]
extern "C" fn f8(a: f64, b: f64, c: f64, d: f64, e: f64, f: f64, g: f64, h: f64) -> f64 {
    a + 2.0 * b + 4.0 * c + 8.0 * d + 16.0 * e + 32.0 * f + 64.0 * g + 128.0 * h
}
extern "C" fn mixed(a: u64, x: f64, b: u32, y: f64, c: i64) -> f64 {
    a as f64 * 1000.0 + x * 100.0 + b as f64 * 10.0 + y + c as f64 * 0.5
}

/// What the test hook saw.
#[derive(Default)]
struct Seen {
    calls: AtomicU64,
    last: Mutex<Option<[u64; 6]>>,
    marker: u64,
}

unsafe extern "C" fn record(user: *mut c_void, args: *const HookArgs) {
    // SAFETY: `user` is the `Seen` the test passed and outlives the trampoline; `args` points at
    // the saved registers for the duration of the call.
    let (seen, args) = unsafe { (&*(user as *const Seen), &*args) };
    assert_eq!(seen.marker, 0xfeed, "the hook receives the user pointer");
    seen.calls.fetch_add(1, Ordering::Relaxed);
    *seen.last.lock().unwrap() = Some(args.int_args);
    // Clobber vector and integer scratch registers, as any real hook may.
    black_box(black_box(1.5f64) * black_box(3.25f64));
}

fn forwarding(jit: &Jit, target: *const u8, hook: Option<&Seen>) -> Trampoline {
    let mut spec = ForwardingSpec::new(Target::Address(target)).counted();
    spec.hook = hook.map(|s| Hook {
        func: record,
        user: s as *const Seen as *mut c_void,
    });
    jit.forwarding(spec).unwrap()
}

/// Every (site kind, hook or not) combination forwarding to `target`.
fn configs(jit: &Jit, target: *const u8, seen: &Seen) -> Vec<(Site, Trampoline, bool)> {
    let mut out = Vec::new();
    for kind in [SiteKind::Indirect, SiteKind::Direct] {
        for hooked in [false, true] {
            let t = forwarding(jit, target, hooked.then_some(seen));
            out.push((jit.site(kind, &t).unwrap(), t, hooked));
        }
    }
    out
}

#[test]
fn integer_arguments_0_to_6_and_stack_arguments_are_forwarded() {
    let jit = Jit::new().unwrap();
    let seen = Seen {
        marker: 0xfeed,
        ..Seen::default()
    };
    macro_rules! check {
        ($f:expr, fn($($t:ty),*) -> $r:ty, ($($a:expr),*), $int_args:expr) => {
            for (site, t, hooked) in configs(&jit, $f as *const u8, &seen) {
                let before = seen.calls.load(Ordering::Relaxed);
                // SAFETY: the site forwards to `$f`, which has this signature.
                let f: extern "C" fn($($t),*) -> $r = unsafe { site.as_fn() };
                assert_eq!(f($($a),*), $f($($a),*), "{:?}", site.kind());
                assert_eq!(t.calls(), 1, "the forwarding trampoline counts calls");
                if hooked {
                    assert_eq!(seen.calls.load(Ordering::Relaxed), before + 1);
                    let got = seen.last.lock().unwrap().unwrap();
                    let want: &[u64] = &$int_args;
                    assert_eq!(&got[..want.len()], want, "the hook sees the integer arguments");
                } else {
                    assert_eq!(seen.calls.load(Ordering::Relaxed), before);
                }
            }
        };
    }
    check!(i0, fn() -> u64, (), []);
    check!(i1, fn(u64) -> u64, (5), [5]);
    check!(i2, fn(u64, u64) -> u64, (1, 2), [1, 2]);
    check!(i3, fn(u64, u64, u64) -> u64, (1, 2, 3), [1, 2, 3]);
    check!(
        i4,
        fn(u64, u64, u64, u64) -> u64,
        (1, 2, 3, 4),
        [1, 2, 3, 4]
    );
    check!(
        i5,
        fn(u64, u64, u64, u64, u64) -> u64,
        (1, 2, 3, 4, 5),
        [1, 2, 3, 4, 5]
    );
    check!(
        i6,
        fn(u64, u64, u64, u64, u64, u64) -> u64,
        (1, 2, 3, 4, 5, 6),
        [1, 2, 3, 4, 5, 6]
    );
    check!(
        i8s,
        fn(u64, u64, u64, u64, u64, u64, u64, u64) -> u64,
        (1, 2, 3, 4, 5, 6, 7, 8),
        [1, 2, 3, 4, 5, 6]
    );
}

#[test]
fn float_and_mixed_arguments_are_forwarded() {
    let jit = Jit::new().unwrap();
    let seen = Seen {
        marker: 0xfeed,
        ..Seen::default()
    };
    for (site, _, _) in configs(&jit, f2 as *const u8, &seen) {
        // SAFETY: forwards to `f2`.
        let f: extern "C" fn(f64, f64) -> f64 = unsafe { site.as_fn() };
        assert_eq!(f(1.25, 0.5), 3.0);
    }
    for (site, _, _) in configs(&jit, f8 as *const u8, &seen) {
        // SAFETY: forwards to `f8`.
        let f: extern "C" fn(f64, f64, f64, f64, f64, f64, f64, f64) -> f64 =
            unsafe { site.as_fn() };
        assert_eq!(f(1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.5), 319.0);
    }
    for (site, _, hooked) in configs(&jit, mixed as *const u8, &seen) {
        // SAFETY: forwards to `mixed`.
        let f: extern "C" fn(u64, f64, u32, f64, i64) -> f64 = unsafe { site.as_fn() };
        assert_eq!(f(3, 0.25, 7, 0.125, -4), mixed(3, 0.25, 7, 0.125, -4));
        if hooked {
            let got = seen.last.lock().unwrap().unwrap();
            assert_eq!(got[0], 3);
            assert_eq!(got[1] as u32, 7);
            assert_eq!(got[2] as i64, -4);
        }
    }
}

#[test]
fn forwarding_chains_count_every_hop_and_keep_their_target_alive() {
    let jit = Jit::new().unwrap();
    let inner = forwarding(&jit, i2 as *const u8, None);
    let outer = jit
        .forwarding(ForwardingSpec::new(Target::Trampoline(inner.clone())).counted())
        .unwrap();
    let inner_addr = inner.addr();
    drop(inner);
    let site = jit.site(SiteKind::Direct, &outer).unwrap();
    // SAFETY: outer -> inner -> i2.
    let f: extern "C" fn(u64, u64) -> u64 = unsafe { site.as_fn() };
    for _ in 0..3 {
        assert_eq!(f(4, 5), 54);
    }
    assert_eq!(outer.calls(), 3);
    assert_eq!(
        jit.stats().live,
        2,
        "the target trampoline is alive while outer targets it"
    );
    // SAFETY: reading our RX view: still the counting forwarding body (mov r11, imm64 =
    // 49 BB ..), not trap bytes.
    assert_eq!(unsafe { *inner_addr }, 0x49);
}

#[test]
fn fallback_mode_forwards_through_indirect_sites() {
    let jit = Jit::builder().force_fallback(true).build().unwrap();
    let seen = Seen {
        marker: 0xfeed,
        ..Seen::default()
    };
    let t = forwarding(&jit, i6 as *const u8, Some(&seen));
    let site = jit.site(SiteKind::Indirect, &t).unwrap();
    // SAFETY: forwards to `i6`.
    let f: extern "C" fn(u64, u64, u64, u64, u64, u64) -> u64 = unsafe { site.as_fn() };
    assert_eq!(f(6, 5, 4, 3, 2, 1), 123_456);
    assert_eq!(seen.last.lock().unwrap().unwrap(), [6, 5, 4, 3, 2, 1]);
    assert_eq!(t.calls(), 1);
}
