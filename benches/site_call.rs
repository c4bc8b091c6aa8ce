//! The read side, one call at a time, each against the floors measured in the same run.
//!
//! All variants call the same JIT'd body `rax = rdi * 3 + 1` (or its Rust twin), from an OS
//! thread registered with the runtime (a legal caller of patch sites):
//!
//! * `direct_rust`: a direct call to an `#[inline(never)]` Rust function (floor);
//! * `fn_ptr`: a plain `extern "C" fn` pointer to the JIT'd body (floor);
//! * `site_indirect`: through an indirect site (`jmp [rip+slot]`), tramway's default;
//! * `site_direct`: through a direct site (`jmp rel32`);
//! * `site_forwarding`: indirect site -> forwarding trampoline (a `jmp rel32`) -> body;
//! * `site_forwarding_counter`: the same with call counting opted in (`lock inc`);
//! * `epoch_pin_site_indirect`: `crossbeam_epoch::pin()` around the indirect-site call
//!   (what the epoch strategy pays per call).
//!
//! Each iteration is one call whose argument depends on the previous result, so calls
//! cannot overlap.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use tramway::jit::dynasmrt::{dynasm, DynasmApi};
use tramway::jit::{ForwardingSpec, Jit, SiteKind, Target, Trampoline};
use tramway::runtime::Runtime;

type BodyFn = extern "C" fn(u64) -> u64;

#[inline(never)]
extern "C" fn direct_body(x: u64) -> u64 {
    x.wrapping_mul(3).wrapping_add(1)
}

fn emit_body(jit: &Jit) -> Trampoline {
    // SAFETY: implements `extern "C" fn(u64) -> u64`, touches no memory, never yields.
    unsafe {
        jit.custom(|ops| {
            dynasm!(ops
                ; .arch x64
                ; imul rax, rdi, 3
                ; add rax, 1
                ; ret
            );
        })
    }
    .expect("emit body")
}

fn bench_chain(
    c: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    f: BodyFn,
) {
    let mut acc = 1u64;
    c.bench_function(name, |b| {
        b.iter(|| {
            acc = f(black_box(acc));
            acc
        })
    });
}

fn site_call(c: &mut Criterion) {
    let rt = Runtime::builder().workers(1).build().expect("runtime");
    let _registration = rt.register_thread().expect("register the bench thread");
    let jit = Jit::new().expect("jit");
    let body = emit_body(&jit);
    let indirect = jit.site(SiteKind::Indirect, &body).expect("indirect site");
    let direct = jit.site(SiteKind::Direct, &body).expect("direct site");
    let fwd = jit
        .forwarding(ForwardingSpec::new(Target::Trampoline(body.clone())).counted())
        .expect("counting forwarding trampoline");
    let counted = jit.site(SiteKind::Indirect, &fwd).expect("forwarding site");
    let plain = jit
        .forwarding(ForwardingSpec::new(Target::Trampoline(body.clone())))
        .expect("forwarding trampoline");
    let forwarded = jit
        .site(SiteKind::Indirect, &plain)
        .expect("forwarding site");

    // SAFETY (all four): every installed code implements `BodyFn`; the sites, trampolines
    // and `jit` outlive the benchmark; this thread is registered, and nothing is retired.
    let fn_ptr = unsafe { std::mem::transmute::<*const u8, BodyFn>(body.addr()) };
    let via_indirect: BodyFn = unsafe { indirect.as_fn() };
    let via_direct: BodyFn = unsafe { direct.as_fn() };
    let via_fwd: BodyFn = unsafe { counted.as_fn() };
    let via_plain_fwd: BodyFn = unsafe { forwarded.as_fn() };

    let mut g = c.benchmark_group("site_call");
    bench_chain(&mut g, "direct_rust", direct_body);
    bench_chain(&mut g, "fn_ptr", fn_ptr);
    bench_chain(&mut g, "site_indirect", via_indirect);
    bench_chain(&mut g, "site_direct", via_direct);
    bench_chain(&mut g, "site_forwarding", via_plain_fwd);
    bench_chain(&mut g, "site_forwarding_counter", via_fwd);
    let mut acc = 1u64;
    g.bench_function("epoch_pin_site_indirect", |b| {
        b.iter(|| {
            let guard = crossbeam_epoch::pin();
            acc = via_indirect(black_box(acc));
            drop(guard);
            acc
        })
    });
    g.finish();
    assert!(
        fwd.calls() > 0,
        "the forwarding trampoline counted its calls"
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = site_call
}
criterion_main!(benches);
