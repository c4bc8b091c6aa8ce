//! x86-64 Linux: the preemption stub, the extended-state save area, and the signal context.
//!
//! # The stub
//!
//! The signal handler makes the interrupted thread "call" [`stub_address`]: it stores the
//! interrupted PC at `rsp - 136` and moves `rsp` there, so the 128-byte red zone below the
//! interrupted `rsp` (which System V code may use without moving `rsp`) stays untouched, and
//! sets the PC to the stub. The stub then runs on the task's own stack, as ordinary code (the
//! signal handler has returned):
//!
//! ```text
//! pushfq ; push rax .. r15          ; rflags and the 15 general registers
//! cld                               ; the ABI's direction flag for the Rust code below
//! mov rbx, rsp ; and rsp, -64       ; rbx: the save block; 64-byte alignment for XSAVE
//! sub rsp, XSAVE_SIZE               ; the extended-state area (from CPUID leaf 0xD)
//! zero its 64-byte header ; xsave64 [rsp] with edx:eax = mask
//! call tramway_preempt_entry        ; switches the task out; returns when it is resumed
//! xrstor64 [rsp] ; mov rsp, rbx
//! pop r15 .. rax ; popfq
//! ret 128                           ; pops the PC, then skips the red zone
//! ```
//!
//! It lives in the runtime's own text (so a signal landing inside it is outside JIT code and
//! ignored), and it carries CFI: the frame is marked as a signal frame whose return address is
//! the interrupted PC, so unwinders and profilers walk from the Rust code it calls into the
//! interrupted JIT code. `tramway_preempt_entry` never unwinds (a panic there aborts).
//!
//! # The save area
//!
//! `XSAVE` of every state component the process has enabled (`XCR0`), except AMX tile state
//! unless the process asked the kernel for it (`ARCH_GET_XCOMP_PERM`): the area would be
//! 11 KB, and JIT code that tiles is not supported. Its size is the end of the last included
//! component, from CPUID leaf 0xD. Saving a narrower set (only `xmm0-15`, as Go's asyncPreempt
//! does) corrupts wider live state: the register-preservation test has a control for that.

use std::arch::global_asm;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;

// The stubs name these statics and the entry through `sym` operands (not `#[no_mangle]`), and
// their own symbols are `.hidden`: nothing here is exported from a shared library built from
// this crate (a rip-relative reference to an exported symbol does not link in one).

/// Bytes of the `XSAVE` area the stub reserves (set once by [`init`], read by the stub).
static TRAMWAY_XSAVE_SIZE: AtomicU64 = AtomicU64::new(0);
/// `XSAVE`'s requested-feature bitmap, low and high halves (`eax`, `edx`).
static TRAMWAY_XSAVE_MASK_LO: AtomicU32 = AtomicU32::new(0);
static TRAMWAY_XSAVE_MASK_HI: AtomicU32 = AtomicU32::new(0);

/// Bytes the stub uses below the interrupted `rsp`: the red zone and the PC (136), the
/// general registers and flags (128), alignment (64), the `XSAVE` area, and the frames of the
/// entry that switches the task out (generously).
pub(crate) fn stack_needed() -> usize {
    136 + 128 + 64 + TRAMWAY_XSAVE_SIZE.load(Ordering::Relaxed) as usize + 8 * 1024
}

/// Emits a preemption stub named `$name`: the handler enters it with the interrupted PC at
/// `[rsp]` and the interrupted `rsp` at `rsp + $entry_cfa` (`$saved_cfa` is that plus the 128
/// bytes of flags and general registers), and it returns with `$ret`. The real stub and the
/// test's broken one differ only in these.
macro_rules! preempt_stub {
    ($name:literal, $entry_cfa:literal, $saved_cfa:literal, $ret:literal) => {
        global_asm!(
            ".text",
            concat!(".globl ", $name),
            concat!(".hidden ", $name),
            concat!(".type ", $name, ",@function"),
            ".p2align 4",
            concat!($name, ":"),
            ".cfi_startproc simple",
            ".cfi_signal_frame",
            // At entry [rsp] is the interrupted PC and the interrupted rsp is rsp + $entry_cfa.
            concat!(".cfi_def_cfa rsp, ", $entry_cfa),
            concat!(".cfi_offset rip, -", $entry_cfa),
            "pushfq",
            ".cfi_adjust_cfa_offset 8",
            "push rax",
            ".cfi_adjust_cfa_offset 8",
            ".cfi_rel_offset rax, 0",
            "push rbx",
            ".cfi_adjust_cfa_offset 8",
            ".cfi_rel_offset rbx, 0",
            "push rcx",
            ".cfi_adjust_cfa_offset 8",
            ".cfi_rel_offset rcx, 0",
            "push rdx",
            ".cfi_adjust_cfa_offset 8",
            ".cfi_rel_offset rdx, 0",
            "push rsi",
            ".cfi_adjust_cfa_offset 8",
            ".cfi_rel_offset rsi, 0",
            "push rdi",
            ".cfi_adjust_cfa_offset 8",
            ".cfi_rel_offset rdi, 0",
            "push rbp",
            ".cfi_adjust_cfa_offset 8",
            ".cfi_rel_offset rbp, 0",
            "push r8",
            ".cfi_adjust_cfa_offset 8",
            ".cfi_rel_offset r8, 0",
            "push r9",
            ".cfi_adjust_cfa_offset 8",
            ".cfi_rel_offset r9, 0",
            "push r10",
            ".cfi_adjust_cfa_offset 8",
            ".cfi_rel_offset r10, 0",
            "push r11",
            ".cfi_adjust_cfa_offset 8",
            ".cfi_rel_offset r11, 0",
            "push r12",
            ".cfi_adjust_cfa_offset 8",
            ".cfi_rel_offset r12, 0",
            "push r13",
            ".cfi_adjust_cfa_offset 8",
            ".cfi_rel_offset r13, 0",
            "push r14",
            ".cfi_adjust_cfa_offset 8",
            ".cfi_rel_offset r14, 0",
            "push r15",
            ".cfi_adjust_cfa_offset 8",
            ".cfi_rel_offset r15, 0",
            "cld",
            // rbx holds the save block from here on (the CFA is rbx + $entry_cfa + 16 * 8).
            "mov rbx, rsp",
            concat!(".cfi_def_cfa rbx, ", $saved_cfa),
            "and rsp, -64",
            "sub rsp, qword ptr [rip + {xsave_size}]",
            // XSAVE leaves most of the 64-byte header at offset 512 alone; it must read as zeros.
            "xor eax, eax",
            "mov qword ptr [rsp + 512], rax",
            "mov qword ptr [rsp + 520], rax",
            "mov qword ptr [rsp + 528], rax",
            "mov qword ptr [rsp + 536], rax",
            "mov qword ptr [rsp + 544], rax",
            "mov qword ptr [rsp + 552], rax",
            "mov qword ptr [rsp + 560], rax",
            "mov qword ptr [rsp + 568], rax",
            "mov eax, dword ptr [rip + {mask_lo}]",
            "mov edx, dword ptr [rip + {mask_hi}]",
            "xsave64 [rsp]",
            "call {entry}",
            "mov eax, dword ptr [rip + {mask_lo}]",
            "mov edx, dword ptr [rip + {mask_hi}]",
            "xrstor64 [rsp]",
            "mov rsp, rbx",
            concat!(".cfi_def_cfa rsp, ", $saved_cfa),
            "pop r15",
            "pop r14",
            "pop r13",
            "pop r12",
            "pop r11",
            "pop r10",
            "pop r9",
            "pop r8",
            "pop rbp",
            "pop rdi",
            "pop rsi",
            "pop rdx",
            "pop rcx",
            "pop rbx",
            "pop rax",
            "popfq",
            concat!(".cfi_def_cfa rsp, ", $entry_cfa),
            $ret,
            ".cfi_endproc",
            concat!(".size ", $name, ", . - ", $name),
            xsave_size = sym TRAMWAY_XSAVE_SIZE,
            mask_lo = sym TRAMWAY_XSAVE_MASK_LO,
            mask_hi = sym TRAMWAY_XSAVE_MASK_HI,
            entry = sym super::handler::tramway_preempt_entry,
        );
    };
}

preempt_stub!("tramway_preempt_stub", "136", "264", "ret 128");

// A deliberately broken stub for the register-preservation test's control (only with the
// `unstable-bench-knobs` feature): it does not skip the red zone (the handler stores the PC
// right below the interrupted rsp, and the pushes land in the red zone) and returns with a
// plain `ret`. Everything else is the same.
#[cfg(feature = "unstable-bench-knobs")]
preempt_stub!("tramway_preempt_stub_no_red_zone", "8", "136", "ret");

extern "C" {
    fn tramway_preempt_stub();
    #[cfg(feature = "unstable-bench-knobs")]
    fn tramway_preempt_stub_no_red_zone();
}

/// Test knob: the handler injects the broken stub (see above) instead of the real one.
#[cfg(feature = "unstable-bench-knobs")]
pub(crate) static USE_STUB_WITHOUT_RED_ZONE_SKIP: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Where the handler sends a preempted thread, and how far below the interrupted `rsp` it
/// stores the return address.
pub(crate) fn stub() -> (usize, usize) {
    #[cfg(feature = "unstable-bench-knobs")]
    if USE_STUB_WITHOUT_RED_ZONE_SKIP.load(Ordering::Relaxed) {
        return (tramway_preempt_stub_no_red_zone as *const () as usize, 8);
    }
    (tramway_preempt_stub as *const () as usize, 136)
}

/// What [`init`] found out about the CPU.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ExtendedState {
    /// Bytes of the save area.
    pub(crate) size: usize,
    /// Components saved.
    pub(crate) mask: u64,
}

/// Sizes and masks the save area once per process; `Err` with the reason if this CPU or
/// kernel cannot preempt safely.
pub(crate) fn init() -> Result<ExtendedState, &'static str> {
    static STATE: OnceLock<Result<ExtendedState, &'static str>> = OnceLock::new();
    *STATE.get_or_init(|| {
        let state = detect()?;
        TRAMWAY_XSAVE_SIZE.store(state.size as u64, Ordering::Relaxed);
        TRAMWAY_XSAVE_MASK_LO.store(state.mask as u32, Ordering::Relaxed);
        TRAMWAY_XSAVE_MASK_HI.store((state.mask >> 32) as u32, Ordering::Relaxed);
        Ok(state)
    })
}

fn detect() -> Result<ExtendedState, &'static str> {
    use std::arch::x86_64::{__cpuid, __cpuid_count, _xgetbv};
    // SAFETY: CPUID is available on every x86-64 CPU (the intrinsic is a safe function in
    // recent compilers, an unsafe one in older ones).
    #[allow(unused_unsafe)]
    let leaf1 = unsafe { __cpuid(1) };
    let (xsave, osxsave) = (leaf1.ecx & (1 << 26) != 0, leaf1.ecx & (1 << 27) != 0);
    if !(xsave && osxsave) {
        return Err("the CPU or the kernel does not support XSAVE");
    }
    // SAFETY: OSXSAVE is set, so XGETBV is enabled; register 0 is XCR0.
    let xcr0 = unsafe { _xgetbv(0) };
    const AMX: u64 = (1 << 17) | (1 << 18);
    let mask = if amx_permitted() { xcr0 } else { xcr0 & !AMX };
    // The end of the last included component (standard format): legacy + header = 576.
    let mut size = 576usize;
    for i in 2..63 {
        if mask & (1 << i) != 0 {
            // SAFETY: CPUID leaf 0xD sub-leaf i (>= 2) reports component i's size and offset.
            #[allow(unused_unsafe)]
            let c = unsafe { __cpuid_count(0xD, i) };
            size = size.max(c.ebx as usize + c.eax as usize);
        }
    }
    Ok(ExtendedState {
        size: size.next_multiple_of(64),
        mask,
    })
}

/// Whether the process asked the kernel for AMX tile state (`ARCH_GET_XCOMP_PERM`).
fn amx_permitted() -> bool {
    const ARCH_GET_XCOMP_PERM: libc::c_ulong = 0x1022;
    let mut perm: u64 = 0;
    // SAFETY: arch_prctl writes one u64 through the pointer, which is valid.
    let r = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_GET_XCOMP_PERM, &mut perm) };
    r == 0 && perm & (1 << 18) != 0
}

/// Whether user-space shadow stacks (CET) are enabled for this thread: the stub's injected
/// return would then fault, so preemption is refused.
pub(crate) fn shadow_stack_enabled() -> bool {
    const ARCH_SHSTK_STATUS: libc::c_ulong = 0x5005;
    let mut features: u64 = 0;
    // SAFETY: arch_prctl writes one u64 through the pointer, which is valid; kernels without
    // shadow-stack support fail with EINVAL (then there is none).
    let r = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_SHSTK_STATUS, &mut features) };
    r == 0 && features & 1 != 0
}

/// The interrupted context of a signal, as the handler sees and changes it.
pub(crate) struct Interrupted {
    uc: *mut libc::ucontext_t,
}

impl Interrupted {
    /// # Safety
    /// `uc` is the `ucontext_t` the kernel passed to an `SA_SIGINFO` handler, which is
    /// running now.
    pub(crate) unsafe fn new(uc: *mut libc::c_void) -> Self {
        Interrupted { uc: uc.cast() }
    }

    fn reg(&self, r: libc::c_int) -> usize {
        // SAFETY: `uc` is valid for the handler's duration (constructor contract).
        unsafe { (*self.uc).uc_mcontext.gregs[r as usize] as usize }
    }

    /// The interrupted program counter.
    pub(crate) fn pc(&self) -> usize {
        self.reg(libc::REG_RIP)
    }

    /// The interrupted stack pointer.
    pub(crate) fn sp(&self) -> usize {
        self.reg(libc::REG_RSP)
    }

    /// Makes the thread, when the handler returns, call `target` with the interrupted PC as
    /// its return address stored `below` bytes under the interrupted `rsp` (136 leaves the
    /// 128-byte red zone untouched).
    ///
    /// # Safety
    /// The interrupted `rsp - below ..` must be writable stack memory of the interrupted code,
    /// with room below it for whatever `target` pushes.
    pub(crate) unsafe fn inject_call(&mut self, (target, below): (usize, usize)) {
        let (pc, sp) = (self.pc(), self.sp());
        let slot = sp - below;
        // SAFETY: the caller guarantees the slot is writable stack; `uc` is valid (as above).
        unsafe {
            (slot as *mut usize).write(pc);
            let gregs = &mut (*self.uc).uc_mcontext.gregs;
            gregs[libc::REG_RSP as usize] = slot as i64;
            gregs[libc::REG_RIP as usize] = target as i64;
        }
    }
}
