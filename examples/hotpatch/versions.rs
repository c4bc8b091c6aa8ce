//! Versions of the services' implementations: what each one computes, its machine code, and the
//! table every result is checked against.
//!
//! Every emission of an implementation gets a unique **tag** (`1..MAX_TAGS`). Version `tag`
//! computes `f(x)` for one [`Formula`] with constants `a`, `b` and returns
//! `(f(x) << 32) | tag`: a caller can tell from the result alone which code ran, and recompute
//! the value it should have returned. The [`VersionTable`] records, for every tag ever emitted,
//! its site, formula and constants, and its lifecycle:
//!
//! - `LIVE`: reachable from its site (installed directly, or behind a tracing probe);
//! - `RETIRED`: swapped out; callers that loaded the site before the swap may still be inside;
//! - `RECLAIMED`: a grace period has ended since it was retired (set by the grace-period
//!   callback that also releases its code). A caller that observes a reclaimed tag after its
//!   call returned, before it reached a yield point, was still using code whose grace period
//!   had ended: a grace period ended too early. That counts as an invalid result.
//!
//! Tags are never reused, so a stale result can never pass for a fresh one.

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::OnceLock;

use tramway::jit::dynasmrt::{dynasm, DynasmApi, DynasmLabelApi};
use tramway::jit::{Jit, JitError, Trampoline};

/// Tags per table segment.
const SEGMENT: usize = 4096;
/// Tags available in one run (tags are never reused). At one swap per 10 µs this lasts over
/// two minutes; the patcher stops re-JITting (and says so) when they run out.
pub const MAX_TAGS: u32 = 1 << 24;

const UNUSED: u8 = 0;
const LIVE: u8 = 1;
const RETIRED: u8 = 2;
const RECLAIMED: u8 = 3;

/// What a version computes (all arithmetic wraps; only the low 32 bits reach the result).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Formula {
    /// `a*x + b`
    Linear,
    /// `(x ^ a) + b`
    Xor,
    /// `(x + a)*x + b`
    Quadratic,
}

impl Formula {
    const ALL: [Formula; 3] = [Formula::Linear, Formula::Xor, Formula::Quadratic];

    /// The formula numbered `n` (any `n`; wraps around).
    pub fn pick(n: u64) -> Formula {
        Formula::ALL[(n % 3) as usize]
    }

    fn code(self) -> u32 {
        self as u32 + 1
    }

    fn from_code(c: u32) -> Option<Formula> {
        Formula::ALL.get((c as usize).checked_sub(1)?).copied()
    }

    /// The reference implementation the JIT'd code is checked against.
    pub fn eval(self, a: u32, b: u32, x: u64) -> u64 {
        let (a, b) = (u64::from(a), u64::from(b));
        match self {
            Formula::Linear => x.wrapping_mul(a).wrapping_add(b),
            Formula::Xor => (x ^ a).wrapping_add(b),
            Formula::Quadratic => x.wrapping_add(a).wrapping_mul(x).wrapping_add(b),
        }
    }

    /// `f(x)` as a reader would write it.
    pub fn describe(self, a: u32, b: u32) -> String {
        match self {
            Formula::Linear => format!("{a}*x + {b}"),
            Formula::Xor => format!("(x ^ {a}) + {b}"),
            Formula::Quadratic => format!("(x + {a})*x + {b}"),
        }
    }
}

/// The result version `tag` must return for `x`.
pub fn expected(formula: Formula, a: u32, b: u32, tag: u32, x: u64) -> u64 {
    (formula.eval(a, b, x) << 32) | u64::from(tag)
}

/// Emits version `tag`: an `extern "C" fn(u64) -> u64` returning [`expected`]`(.., x)`,
/// after spinning `spin` iterations of a `dec`/`jnz` loop in its own code (0: none; the
/// `--preempt` mode, so that preemption lands inside implementations).
///
/// `a`, `b` and `tag` must be below `2^31` (they are sign-extended 32-bit immediates).
pub fn emit(
    jit: &Jit,
    formula: Formula,
    (a, b): (u32, u32),
    tag: u32,
    spin: u32,
) -> Result<Trampoline, JitError> {
    let imm = |v: u32| i32::try_from(v).map_err(|_| JitError::Assemble(format!("{v} >= 2^31")));
    let (a, b, tag, spin) = (imm(a)?, imm(b)?, imm(tag)?, imm(spin)?);
    // SAFETY: each body reads only `rdi`, writes only `rax`, `rcx` (the spin counter) and
    // flags, touches no memory, never yields, and returns with `ret`: it implements
    // `extern "C" fn(u64) -> u64`. Its only relocations are local jumps, whose length does
    // not depend on the address, so both emission passes agree.
    unsafe {
        jit.custom(|ops| {
            if spin > 0 {
                dynasm!(ops
                    ; .arch x64
                    ; mov ecx, spin
                    ; spin:
                    ; dec ecx
                    ; jnz <spin
                );
            }
            match formula {
                Formula::Linear => dynasm!(ops
                    ; .arch x64
                    ; imul rax, rdi, a
                    ; add rax, b
                ),
                Formula::Xor => dynasm!(ops
                    ; .arch x64
                    ; mov rax, rdi
                    ; xor rax, a
                    ; add rax, b
                ),
                Formula::Quadratic => dynasm!(ops
                    ; .arch x64
                    ; lea rax, [rdi + a]
                    ; imul rax, rdi
                    ; add rax, b
                ),
            }
            dynasm!(ops
                ; .arch x64
                ; shl rax, 32
                ; or rax, tag
                ; ret
            );
        })
    }
}

/// One tag's record. Every field is atomic: readers look tags up while the patcher publishes
/// new ones (a tag is published before any code that returns it is emitted).
#[derive(Default)]
struct Version {
    /// `a << 32 | b`.
    constants: AtomicU64,
    /// `site << 8 | formula code`.
    meta: AtomicU32,
    state: AtomicU8,
}

/// Why a result is invalid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invalid {
    /// The tag in the result was never published.
    UnknownTag { tag: u32 },
    /// The tag belongs to another site.
    WrongSite { tag: u32, owner: usize },
    /// The value is not what the tag's formula computes.
    WrongValue { tag: u32, got: u64, want: u64 },
    /// The tag's grace period had already ended.
    Reclaimed { tag: u32 },
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Invalid::UnknownTag { tag } => write!(f, "result carries unknown version tag {tag}"),
            Invalid::WrongSite { tag, owner } => {
                write!(
                    f,
                    "result carries version tag {tag} of another site ({owner})"
                )
            }
            Invalid::WrongValue { tag, got, want } => {
                write!(f, "version {tag} returned {got:#x}, expected {want:#x}")
            }
            Invalid::Reclaimed { tag } => write!(
                f,
                "version {tag} was observed after its grace period ended (reclaimed)"
            ),
        }
    }
}

/// Every version ever emitted in this run; see the module docs.
pub struct VersionTable {
    segments: Box<[OnceLock<Box<[Version]>>]>,
    /// Next tag to hand out (only the patcher publishes).
    next: AtomicU32,
}

impl VersionTable {
    /// An empty table.
    pub fn new() -> VersionTable {
        VersionTable {
            segments: (0..MAX_TAGS as usize / SEGMENT)
                .map(|_| OnceLock::new())
                .collect(),
            next: AtomicU32::new(1),
        }
    }

    fn get(&self, tag: u32) -> Option<&Version> {
        let tag = tag as usize;
        let segment = self.segments.get(tag / SEGMENT)?.get()?;
        Some(&segment[tag % SEGMENT])
    }

    /// Records a new live version of `site` and returns its tag, or `None` once tags run out.
    pub fn publish(&self, site: usize, formula: Formula, a: u32, b: u32) -> Option<u32> {
        let tag = self.next.load(Ordering::Relaxed);
        if tag >= MAX_TAGS {
            return None;
        }
        self.next.store(tag + 1, Ordering::Relaxed);
        let segment = self.segments[tag as usize / SEGMENT]
            .get_or_init(|| (0..SEGMENT).map(|_| Version::default()).collect());
        let v = &segment[tag as usize % SEGMENT];
        v.constants
            .store(u64::from(a) << 32 | u64::from(b), Ordering::Relaxed);
        v.meta
            .store((site as u32) << 8 | formula.code(), Ordering::Relaxed);
        // Release: a reader that sees LIVE (Acquire) also sees the fields above.
        v.state.store(LIVE, Ordering::Release);
        Some(tag)
    }

    /// Tags handed out so far.
    pub fn published(&self) -> u64 {
        u64::from(self.next.load(Ordering::Relaxed) - 1)
    }

    /// Marks `tag` unreachable from its site (swapped out).
    pub fn retire(&self, tag: u32) {
        if let Some(v) = self.get(tag) {
            v.state.store(RETIRED, Ordering::Release);
        }
    }

    /// Marks `tag` reclaimed: a grace period has ended since it was retired.
    pub fn reclaim(&self, tag: u32) {
        if let Some(v) = self.get(tag) {
            v.state.store(RECLAIMED, Ordering::Release);
        }
    }

    /// Checks the result `r` of calling `site` with `x` (see the module docs).
    #[inline]
    pub fn check(&self, site: usize, x: u64, r: u64) -> Result<(), Invalid> {
        let tag = r as u32;
        let v = self.get(tag).ok_or(Invalid::UnknownTag { tag })?;
        let state = v.state.load(Ordering::Acquire);
        match state {
            UNUSED => return Err(Invalid::UnknownTag { tag }),
            RECLAIMED => return Err(Invalid::Reclaimed { tag }),
            _ => {}
        }
        let meta = v.meta.load(Ordering::Relaxed);
        let owner = (meta >> 8) as usize;
        if owner != site {
            return Err(Invalid::WrongSite { tag, owner });
        }
        let formula = Formula::from_code(meta & 0xff).ok_or(Invalid::UnknownTag { tag })?;
        let c = v.constants.load(Ordering::Relaxed);
        let want = expected(formula, (c >> 32) as u32, c as u32, tag, x);
        if r != want {
            return Err(Invalid::WrongValue { tag, got: r, want });
        }
        Ok(())
    }
}

/// The checker itself: JIT'd versions compute their formula, and results from a wrong site, a
/// wrong value, an unknown tag or a reclaimed version are caught.
#[cfg(test)]
mod tests {
    #[test]
    fn checker_accepts_every_formula_and_rejects_stale_or_wrong_results() {
        use tramway::jit::Jit;

        use super::{Formula, Invalid, VersionTable};

        let jit = Jit::new().expect("jit");
        let table = VersionTable::new();
        let xs = [0, 1, 7, 1 << 40, u64::MAX];
        let mut tags = Vec::new();
        for (site, formula) in [Formula::Linear, Formula::Xor, Formula::Quadratic]
            .into_iter()
            .enumerate()
        {
            let (a, b) = (997, 99_999);
            let tag = table.publish(site, formula, a, b).expect("tag");
            let code = super::emit(&jit, formula, (a, b), tag, 0).expect("emit");
            // SAFETY: the code implements `extern "C" fn(u64) -> u64`, the handle is held while it
            // is called, and it is never swapped or freed meanwhile (no site, LeakUntilDrop).
            let f: extern "C" fn(u64) -> u64 = unsafe { std::mem::transmute(code.addr()) };
            for x in xs {
                let r = f(x);
                assert_eq!(
                    r,
                    super::expected(formula, a, b, tag, x),
                    "{formula:?}({x})"
                );
                assert_eq!(table.check(site, x, r), Ok(()));
            }
            tags.push((site, tag, f(5)));
        }
        let (site, tag, r) = tags[0];
        assert_eq!(
            table.check(site + 1, 5, r),
            Err(Invalid::WrongSite { tag, owner: site })
        );
        assert!(matches!(
            table.check(site, 6, r),
            Err(Invalid::WrongValue { .. })
        ));
        assert_eq!(
            table.check(site, 5, (r & !0xffff_ffff) | 12345),
            Err(Invalid::UnknownTag { tag: 12345 })
        );
        table.retire(tag);
        assert_eq!(table.check(site, 5, r), Ok(()), "retired is still valid");
        table.reclaim(tag);
        assert_eq!(table.check(site, 5, r), Err(Invalid::Reclaimed { tag }));
    }
}
