//! Preemption preserves every register JIT code can have live: all general registers, the
//! flags, MXCSR, the red zone below `rsp` and the vector registers (ymm0-15 on AVX2; this
//! CPU's extended state as XSAVE sees it). JIT code holds known values in all of them while a
//! long loop is preempted thousands of times and another task on the same worker clobbers
//! everything; then it stores what it holds and the test compares. The control uses a
//! deliberately broken stub (no red-zone skip) and must be caught.

// dynasm's dynamic registers (`Rq(n)`, `Ry(n)`) expand to `.into()` conversions.
#![allow(clippy::useless_conversion)]

use std::arch::asm;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tramway_jit::dynasmrt::{dynasm, DynasmApi, DynasmLabelApi};
use tramway_jit::{Jit, Trampoline};
use tramway_runtime::{preemptible, yield_now, Runtime};

/// General registers the check holds values in, in the order `emit_check` stores them
/// (`r15` is the loop counter, checked for 0).
const GPRS: usize = 14;
const RED_ZONE_WORDS: usize = 16;
const MXCSR: u32 = 0x1F80 | (3 << 13); // all exceptions masked, round toward zero

/// What the check stores when it returns.
#[repr(C, align(64))]
struct Observed {
    gprs: [u64; GPRS],
    counter: u64,
    carry: u64,
    red_zone: [u64; RED_ZONE_WORDS],
    mxcsr: u32,
    _pad: u32,
    ymm: [[u8; 32]; 16],
}

/// What the check loads: the vector patterns, and room for the callee-saved registers.
#[repr(C, align(64))]
struct Inputs {
    ymm: [[u8; 32]; 16],
    mxcsr: u32,
    saved_mxcsr: u32,
    saved: [u64; 6],
}

fn gpr_pattern(i: usize) -> u64 {
    0x0101_0101_0101_0101u64.wrapping_mul(i as u64 + 3) ^ 0x8000_0000_0000_0001
}

fn red_zone_pattern(j: usize) -> u64 {
    0xA5A5_0000_0000_0000 | (j as u64) << 8 | 0x5A
}

fn ymm_pattern(i: usize) -> [u8; 32] {
    std::array::from_fn(|b| (i * 32 + b) as u8 ^ 0x3C)
}

/// `movabs [addr], rax` and `movabs rax, [addr]`.
fn store_rax(ops: &mut tramway_jit::Assembler, addr: u64) {
    ops.extend([0x48, 0xA3]);
    ops.extend(addr.to_le_bytes());
}
fn load_rax(ops: &mut tramway_jit::Assembler, addr: u64) {
    ops.extend([0x48, 0xA1]);
    ops.extend(addr.to_le_bytes());
}

/// `extern "C" fn(iterations: u64)`: loads the patterns, spins `iterations` times, stores
/// everything into `out`, restores the callee-saved state.
fn emit_check(jit: &Jit, inputs: &Inputs, out: &Observed) -> Trampoline {
    let inp = inputs as *const Inputs as u64;
    let outp = out as *const Observed as u64;
    let saved = inp + std::mem::offset_of!(Inputs, saved) as u64;
    let (in_mxcsr, in_saved_mxcsr) = (
        inp + std::mem::offset_of!(Inputs, mxcsr) as u64,
        inp + std::mem::offset_of!(Inputs, saved_mxcsr) as u64,
    );
    let field = |off: usize| outp + off as u64;
    // SAFETY: the code reads `inputs`, writes `out` (both outlive every call: the test joins
    // the task first), restores rbx, rbp, r12-r15 and MXCSR, leaves DF clear and the upper
    // vector halves zeroed, and never yields.
    unsafe {
        jit.custom(|ops| {
            // Callee-saved registers and MXCSR, saved through rax (caller-saved).
            for (k, reg) in [3u8, 5, 12, 13, 14, 15].iter().enumerate() {
                dynasm!(ops ; .arch x64 ; mov rax, Rq(*reg));
                store_rax(ops, saved + 8 * k as u64);
            }
            dynasm!(ops
                ; .arch x64
                ; mov r15, rdi
                ; mov rax, QWORD in_saved_mxcsr as i64
                ; stmxcsr [rax]
                ; mov rax, QWORD in_mxcsr as i64
                ; ldmxcsr [rax]
                ; mov rax, QWORD inp as i64
            );
            for i in 0..16u8 {
                dynasm!(ops ; .arch x64 ; vmovdqu Ry(i), [rax + 32 * i as i32]);
            }
            for j in 0..RED_ZONE_WORDS {
                let disp = -128 + 8 * j as i32;
                dynasm!(ops
                    ; .arch x64
                    ; mov rax, QWORD red_zone_pattern(j) as i64
                    ; mov [rsp + disp], rax
                );
            }
            // rax, rbx, rcx, rdx, rsi, rdi, rbp, r8 .. r14
            for (i, reg) in [0u8, 3, 1, 2, 6, 7, 5, 8, 9, 10, 11, 12, 13, 14]
                .iter()
                .enumerate()
            {
                let (r, value): (u8, i64) = (*reg, gpr_pattern(i) as i64);
                dynasm!(ops ; .arch x64 ; mov Rq(r), QWORD value);
            }
            dynasm!(ops
                ; .arch x64
                ; stc
                ; ->spin:
                ; dec r15
                ; jnz ->spin
            );
            store_rax(ops, field(0));
            for (i, reg) in [3u8, 1, 2, 6, 7, 5, 8, 9, 10, 11, 12, 13, 14]
                .iter()
                .enumerate()
            {
                dynasm!(ops ; .arch x64 ; mov rax, Rq(*reg));
                store_rax(ops, field(8 * (i + 1)));
            }
            dynasm!(ops ; .arch x64 ; mov rax, r15);
            store_rax(ops, field(std::mem::offset_of!(Observed, counter)));
            dynasm!(ops ; .arch x64 ; setc al ; movzx eax, al);
            store_rax(ops, field(std::mem::offset_of!(Observed, carry)));
            for j in 0..RED_ZONE_WORDS {
                let disp = -128 + 8 * j as i32;
                dynasm!(ops ; .arch x64 ; mov rax, [rsp + disp]);
                store_rax(ops, field(std::mem::offset_of!(Observed, red_zone) + 8 * j));
            }
            let (o_mxcsr, o_ymm) = (
                field(std::mem::offset_of!(Observed, mxcsr)),
                field(std::mem::offset_of!(Observed, ymm)),
            );
            dynasm!(ops
                ; .arch x64
                ; mov rax, QWORD o_mxcsr as i64
                ; stmxcsr [rax]
                ; mov rax, QWORD o_ymm as i64
            );
            for i in 0..16u8 {
                dynasm!(ops ; .arch x64 ; vmovdqu [rax + 32 * i as i32], Ry(i));
            }
            dynasm!(ops
                ; .arch x64
                ; mov rax, QWORD in_saved_mxcsr as i64
                ; ldmxcsr [rax]
                ; vzeroupper
            );
            for (k, reg) in [3u8, 5, 12, 13, 14, 15].iter().enumerate() {
                load_rax(ops, saved + 8 * k as u64);
                dynasm!(ops ; .arch x64 ; mov Rq(*reg), rax);
            }
            dynasm!(ops ; .arch x64 ; ret);
        })
    }
    .expect("emit the register check")
}

/// Mismatches between what the check held and what it should have.
fn mismatches(o: &Observed) -> Vec<String> {
    let mut bad = Vec::new();
    for (i, v) in o.gprs.iter().enumerate() {
        if *v != gpr_pattern(i) {
            bad.push(format!("gpr {i}: {v:#x}"));
        }
    }
    if o.counter != 0 {
        bad.push(format!("loop counter {}", o.counter));
    }
    if o.carry != 1 {
        bad.push("carry flag cleared".into());
    }
    for (j, v) in o.red_zone.iter().enumerate() {
        if *v != red_zone_pattern(j) {
            bad.push(format!("red zone word {j}: {v:#x}"));
        }
    }
    if o.mxcsr != MXCSR {
        bad.push(format!("mxcsr {:#x}", o.mxcsr));
    }
    for (i, v) in o.ymm.iter().enumerate() {
        if *v != ymm_pattern(i) {
            bad.push(format!("ymm{i}"));
        }
    }
    bad
}

/// Clobbers every vector register, the caller-saved general registers, the flags and MXCSR
/// (restored before it returns: the scheduler's own code runs with the default).
fn clobber_everything() {
    let garbage = [0xEEu8; 32];
    let odd_mxcsr: u32 = 0x1F80 | (1 << 13);
    let mut saved_mxcsr: u32 = 0;
    // SAFETY: the block declares every register it writes as clobbered; it changes MXCSR and
    // puts it back before it ends.
    unsafe {
        asm!(
            "stmxcsr [{saved}]",
            "ldmxcsr [{odd}]",
            "vmovdqu ymm0, [{g}]", "vmovdqu ymm1, [{g}]", "vmovdqu ymm2, [{g}]",
            "vmovdqu ymm3, [{g}]", "vmovdqu ymm4, [{g}]", "vmovdqu ymm5, [{g}]",
            "vmovdqu ymm6, [{g}]", "vmovdqu ymm7, [{g}]", "vmovdqu ymm8, [{g}]",
            "vmovdqu ymm9, [{g}]", "vmovdqu ymm10, [{g}]", "vmovdqu ymm11, [{g}]",
            "vmovdqu ymm12, [{g}]", "vmovdqu ymm13, [{g}]", "vmovdqu ymm14, [{g}]",
            "vmovdqu ymm15, [{g}]",
            "mov rax, -1", "mov rcx, -1", "mov rdx, -1", "mov rsi, -1", "mov rdi, -1",
            "mov r8, -1", "mov r9, -1", "mov r10, -1", "mov r11, -1",
            "clc",
            "ldmxcsr [{saved}]",
            g = in(reg) garbage.as_ptr(),
            odd = in(reg) &odd_mxcsr,
            saved = in(reg) &mut saved_mxcsr,
            out("rax") _, out("rcx") _, out("rdx") _, out("rsi") _, out("rdi") _,
            out("r8") _, out("r9") _, out("r10") _, out("r11") _,
            out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _,
            out("ymm4") _, out("ymm5") _, out("ymm6") _, out("ymm7") _,
            out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
            out("ymm12") _, out("ymm13") _, out("ymm14") _, out("ymm15") _,
        );
    }
}

/// Runs the check until it has been preempted `min_preemptions` times; returns every
/// mismatch seen and the preemption count.
fn run_check(min_preemptions: u64) -> (Vec<String>, u64) {
    assert!(
        std::arch::is_x86_feature_detected!("avx2"),
        "the test needs AVX2"
    );
    let rt = Runtime::builder()
        .workers(1)
        .preempt(Duration::from_micros(200))
        .build()
        .unwrap();
    let jit = Jit::new().unwrap();
    let inputs = Box::new(Inputs {
        ymm: std::array::from_fn(ymm_pattern),
        mxcsr: MXCSR,
        saved_mxcsr: 0,
        saved: [0; 6],
    });
    // SAFETY: `Observed` is plain data; all zeros is a valid value.
    let out: Box<Observed> = Box::new(unsafe { std::mem::zeroed() });
    let check = emit_check(&jit, &inputs, &out);
    // SAFETY: the check implements `extern "C" fn(u64)` (see `emit_check`).
    let f: extern "C" fn(u64) = unsafe { std::mem::transmute(check.addr()) };
    let (inputs_addr, out_addr) = (
        &*inputs as *const Inputs as usize,
        &*out as *const _ as usize,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let clobberer = rt
        .spawn(move || {
            while !s.load(Ordering::Relaxed) {
                clobber_everything();
                yield_now();
            }
        })
        .unwrap();
    let rt2 = rt.clone();
    let checker = rt
        .spawn(move || {
            let _ = inputs_addr;
            let mut bad = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(20);
            while rt2.stats().preempt.preemptions < min_preemptions && Instant::now() < deadline {
                preemptible(|| f(20_000_000));
                // SAFETY: the check wrote `out` and returned; nobody else touches it.
                bad.extend(mismatches(unsafe { &*(out_addr as *const Observed) }));
                yield_now();
            }
            bad
        })
        .unwrap();
    let bad = checker.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    clobberer.join().unwrap();
    let preemptions = rt.stats().preempt.preemptions;
    drop((check, jit));
    (bad, preemptions)
}

#[test]
fn every_register_survives_thousands_of_preemptions() {
    let (bad, preemptions) = run_check(2_000);
    assert!(preemptions >= 2_000, "only {preemptions} preemptions");
    assert!(
        bad.is_empty(),
        "{} mismatches, e.g. {:?}",
        bad.len(),
        &bad[..bad.len().min(8)]
    );
}

const CHILD: &str = "TRAMWAY_BROKEN_STUB_CHILD";

/// The control's child: the same check with the stub that does not skip the red zone.
#[test]
fn broken_stub_child() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    tramway_runtime::preempt::testing::use_stub_without_red_zone_skip(true);
    let (bad, preemptions) = run_check(200);
    println!("child: {preemptions} preemptions, {} mismatches", bad.len());
}

#[test]
fn control_a_stub_that_does_not_skip_the_red_zone_is_caught() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "broken_stub_child", "--nocapture"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let caught = out.status.signal().is_some()
        || stdout
            .lines()
            .any(|l| l.starts_with("child:") && !l.ends_with(" 0 mismatches"));
    assert!(
        caught,
        "the broken stub went unnoticed: {} {stdout}",
        out.status
    );
}
