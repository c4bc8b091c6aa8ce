//! The forwarder scenario: TSC ticks per call from a JIT loop through a bare site and through a counting forwarding trampoline.

use super::*;

// ---------------------------------------------------------------------------------------
// Forwarder vs bare site, from JIT code

/// Emits `extern "C" fn(n: u64) -> u64` that makes `n` dependent calls of `target`
/// (`acc = target(acc)`, from 0) and returns the last result.
pub(super) fn emit_call_loop(jit: &Jit, target: *const u8) -> Trampoline {
    let target = target as i64;
    // SAFETY: the code implements `extern "C" fn(u64) -> u64`: it saves and restores the
    // callee-saved registers it uses (rbx, r12, r13), whose three pushes also leave rsp
    // 16-byte aligned at its calls; it never yields; it touches memory only through its
    // calls of `target`, whose code the caller keeps mapped for as long as this loop; its
    // only absolute address is the immediate `target` (dynasm local labels are relative).
    unsafe {
        jit.custom(|ops| {
            dynasm!(ops
                ; .arch x64
                ; push rbx
                ; push r12
                ; push r13
                ; mov rbx, rdi
                ; mov r12, QWORD target
                ; xor r13d, r13d
                ; test rbx, rbx
                ; jz >done
                ; next:
                ; mov rdi, r13
                ; call r12
                ; mov r13, rax
                ; dec rbx
                ; jnz <next
                ; done:
                ; mov rax, r13
                ; pop r13
                ; pop r12
                ; pop rbx
                ; ret
            );
        })
    }
    .expect("emit the call loop")
}

/// The time-stamp counter, after earlier instructions have completed (`lfence; rdtsc`).
pub(super) fn tsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: `lfence` and `rdtsc` read the time-stamp counter into edx:eax; they touch no
    // memory, no stack and no flags.
    unsafe {
        std::arch::asm!(
            "lfence",
            "rdtsc",
            out("eax") lo,
            out("edx") hi,
            options(nomem, nostack, preserves_flags)
        );
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// TSC ticks per call for each variant (per round: the median of [`LOOP_REPS`]
/// measurements), and TSC ticks per ns.
pub(super) fn forwarder_rounds(tw: &Tramway, opts: &Opts) -> (Vec<(&'static str, Vec<f64>)>, f64) {
    let jit = &tw.jit;
    let body = emit_body(jit, 1).expect("emit a body");
    let bare = jit.site(SiteKind::Indirect, &body).expect("a site");
    let forwarder = jit
        .forwarding(ForwardingSpec::new(Target::Trampoline(body.clone())).counted())
        .expect("a forwarding trampoline");
    let counted = jit.site(SiteKind::Indirect, &forwarder).expect("a site");
    let variants = [
        ("JIT loop -> body (plain fn pointer)", body.addr()),
        ("JIT loop -> bare site -> body", bare.entry()),
        (
            "JIT loop -> site -> counting forwarder -> body",
            counted.entry(),
        ),
    ];
    let loops: Vec<Trampoline> = variants
        .iter()
        .map(|&(_, t)| emit_call_loop(jit, t))
        .collect();
    let result = std::thread::scope(|s| {
        s.spawn(|| {
            let reg = tw.runtime.register_thread().expect("register");
            let fns: Vec<BodyFn> = loops
                .iter()
                .map(|l| {
                    // SAFETY: `emit_call_loop` code implements `BodyFn`; `loops`, the sites
                    // and the body it calls outlive this thread, which calls it only while
                    // registered and online (its targets include patch sites).
                    unsafe { std::mem::transmute::<*const u8, BodyFn>(l.addr()) }
                })
                .collect();
            let mut per_call = vec![Vec::new(); fns.len()];
            let (t0, c0) = (Instant::now(), tsc());
            for _ in 0..opts.rounds {
                let mut reps = vec![Vec::new(); fns.len()];
                for _ in 0..LOOP_REPS {
                    for (f, r) in fns.iter().zip(&mut reps) {
                        let c = tsc();
                        black_box(f(black_box(LOOP_CALLS)));
                        r.push((tsc() - c) as f64 / LOOP_CALLS as f64);
                        reg.quiescent();
                    }
                }
                for (r, out) in reps.iter_mut().zip(&mut per_call) {
                    out.push(median(r));
                }
            }
            let ticks_per_ns = (tsc() - c0) as f64 / t0.elapsed().as_nanos() as f64;
            (per_call, ticks_per_ns)
        })
        .join()
        .expect("the forwarder thread")
    });
    let (per_call, ticks_per_ns) = result;
    drop(loops);
    drop((counted, forwarder, bare, body));
    jit.barrier();
    let named = variants.iter().map(|&(n, _)| n).zip(per_call).collect();
    (named, ticks_per_ns)
}
