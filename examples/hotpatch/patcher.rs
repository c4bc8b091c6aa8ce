//! The patcher: an OS thread that re-JITs the services and attaches and detaches tracing probes.
//!
//! Each site's state is its current implementation (`imp`, version `tag`) and, while traced, a
//! probe: a forwarding trampoline with a counting hook whose target is `imp`
//! (`Target::Trampoline(imp)`), installed in the site in `imp`'s place, as ftrace does.
//!
//! - **Re-JIT**: publish a new tag with fresh constants (and sometimes a new formula), emit it,
//!   wrap it in a new probe if the site is traced, swap. The old tag is retired.
//! - **Attach**: emit a probe in front of `imp` and swap it in. `imp` stays reachable through the
//!   probe, so its tag stays live (the jit counts `imp` itself as retired: it left the site).
//! - **Detach**: swap `imp` back in. If `imp` was installed directly before the probe it is
//!   retired in the jit's sense and cannot be installed again; the patcher then emits a fresh
//!   copy of the same formula under a new tag, and the old tag is retired.
//!
//! Retiring a tag marks it `RETIRED` and queues a grace-period callback that marks it
//! `RECLAIMED`, records the latency from `call()` to the callback (retire -> free: one grace
//! period plus the domain's callback delay, during which retirements batch), and drops the `Retired`
//! handle (which defers the code's free behind one more grace period). The patcher never calls a
//! site, so it need not be registered with the runtime.

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tramway::jit::{
    ForwardingSpec, Hook, HookArgs, Jit, JitStatsHandle, Retired, Site, SiteKind, Target,
    Trampoline,
};
use tramway::runtime::grace::GraceDomain;

use crate::report::Latencies;
use crate::versions::{self, Formula, VersionTable};

/// Retired trampolines beyond which the patcher waits for reclamation (`GraceDomain::barrier`)
/// before swapping again, so a patch storm cannot outrun the grace periods.
const BACKLOG_LIMIT: u64 = 4096;
/// One action in this many toggles a probe; the others re-JIT.
const PROBE_TOGGLE_EVERY: u64 = 4;

/// A hit counter on its own cache line (probes on different sites do not share one).
#[repr(align(64))]
#[derive(Default)]
pub struct ProbeCounter(pub AtomicU64);

/// Counters the status line reads while the patcher runs.
#[derive(Default)]
pub struct PatchCounters {
    /// Site swaps of any kind.
    pub swaps: AtomicU64,
    /// Swaps that installed a new version.
    pub rejits: AtomicU64,
    /// Probes attached.
    pub attaches: AtomicU64,
    /// Probes detached.
    pub detaches: AtomicU64,
    /// Sites traced right now.
    pub attached_now: AtomicUsize,
    /// Times the patcher waited for the reclamation backlog.
    pub throttles: AtomicU64,
    /// Largest `retired` count seen after a swap.
    pub peak_retired: AtomicU64,
    /// Largest mapped code size seen after a swap.
    pub peak_mapped: AtomicUsize,
    /// Set once the version tags ran out (re-JITs stop; probes still toggle).
    pub tags_exhausted: AtomicBool,
}

/// One patch site and what is installed in it.
pub struct SiteState {
    /// The site the services call.
    pub site: Site,
    imp: Trampoline,
    tag: u32,
    formula: Formula,
    constants: (u32, u32),
    probe: Option<Trampoline>,
}

impl SiteState {
    /// `v<tag>: <formula>`, plus `(traced)` while a probe is attached.
    pub fn describe(&self) -> String {
        let (a, b) = self.constants;
        let traced = if self.probe.is_some() {
            " (traced)"
        } else {
            ""
        };
        format!("v{}: {}{traced}", self.tag, self.formula.describe(a, b))
    }
}

/// What the patcher works with.
pub struct Patcher<'a> {
    /// The code generator (its reclaimer is `gp`).
    pub jit: &'a Jit,
    /// Grace periods for the version tags' reclaimed flags.
    pub gp: &'a GraceDomain,
    /// Every version ever emitted.
    pub table: &'a Arc<VersionTable>,
    /// One hit counter per site; must outlive every probe's reclamation.
    pub probes: &'a Arc<[ProbeCounter]>,
    /// Retire -> free latencies (ns): from `GraceDomain::call` to the callback, so one grace
    /// period plus the domain's callback delay.
    pub latency: &'a Arc<Mutex<Latencies>>,
    /// Shared counters.
    pub counters: &'a PatchCounters,
    /// Jit counters.
    pub stats: JitStatsHandle,
    /// Spin iterations at the start of every implementation (see `versions::emit`).
    pub spin: u32,
}

/// The probe hook: counts a hit for the site whose counter `user` points at.
unsafe extern "C" fn count_hit(user: *mut c_void, _args: *const HookArgs) {
    // SAFETY: `user` points into the `probes` array, which `main` keeps alive until the Jit
    // is dropped and every deferred free has run, i.e. after the last probe was reclaimed.
    let counter = unsafe { &*(user as *const ProbeCounter) };
    counter.0.fetch_add(1, Ordering::Relaxed);
}

/// A small deterministic PRNG (xorshift64), so the demo needs no dependency.
pub struct Rng(pub u64);

impl Rng {
    /// The next pseudo-random number.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `lo..hi` (`hi > lo`).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

impl Patcher<'_> {
    /// Emits version 1 of every site and creates the sites.
    pub fn install(
        &self,
        n: usize,
        kind: SiteKind,
        rng: &mut Rng,
    ) -> Result<Vec<SiteState>, String> {
        (0..n)
            .map(|i| {
                let formula = Formula::pick(i as u64);
                let constants = constants(rng);
                let (imp, tag) = self
                    .emit(i, formula, constants)?
                    .ok_or("version tags exhausted")?;
                let site = self
                    .jit
                    .site(kind, &imp)
                    .map_err(|e| format!("site: {e}"))?;
                Ok(SiteState {
                    site,
                    imp,
                    tag,
                    formula,
                    constants,
                    probe: None,
                })
            })
            .collect()
    }

    /// Swaps implementations and probes every `interval` until `stop` is set. The sites stay
    /// with the caller (they must outlive every task that calls them, even if this panics). On
    /// error it sets `stop` and returns the error.
    pub fn run(
        &self,
        sites: &mut [SiteState],
        interval: Duration,
        stop: &AtomicBool,
        seed: u64,
    ) -> Result<(), String> {
        let mut rng = Rng(seed | 1);
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let i = rng.next() as usize % sites.len();
            let toggle = rng.next() % PROBE_TOGGLE_EVERY == 0
                || self.counters.tags_exhausted.load(Ordering::Relaxed);
            let result = if !toggle {
                self.rejit(i, &mut sites[i], &mut rng)
            } else if sites[i].probe.is_none() {
                self.attach(i, &mut sites[i])
            } else {
                self.detach(i, &mut sites[i])
            };
            match result {
                Ok(true) => self.after_swap(),
                Ok(false) => {}
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
            next += interval;
            let now = Instant::now();
            if now > next + Duration::from_millis(50) {
                next = now; // fell far behind (e.g. throttled): do not burst to catch up
            }
            // Sleep in slices, so a long interval does not delay `stop`.
            while !stop.load(Ordering::Relaxed) {
                let now = Instant::now();
                if now >= next {
                    break;
                }
                std::thread::sleep((next - now).min(Duration::from_millis(20)));
            }
        }
        Ok(())
    }

    /// Publishes a tag and emits its code; `None` once the tags ran out.
    fn emit(
        &self,
        site: usize,
        formula: Formula,
        (a, b): (u32, u32),
    ) -> Result<Option<(Trampoline, u32)>, String> {
        let Some(tag) = self.table.publish(site, formula, a, b) else {
            self.counters.tags_exhausted.store(true, Ordering::Relaxed);
            return Ok(None);
        };
        let imp = versions::emit(self.jit, formula, (a, b), tag, self.spin)
            .map_err(|e| format!("emit: {e}"))?;
        Ok(Some((imp, tag)))
    }

    fn probe(&self, site: usize, target: &Trampoline) -> Result<Trampoline, String> {
        self.jit
            .forwarding(
                ForwardingSpec::new(Target::Trampoline(target.clone())).hook(Hook {
                    func: count_hit,
                    user: &self.probes[site] as *const ProbeCounter as *mut c_void,
                }),
            )
            .map_err(|e| format!("probe: {e}"))
    }

    fn rejit(&self, i: usize, st: &mut SiteState, rng: &mut Rng) -> Result<bool, String> {
        let formula = if rng.next() % 8 == 0 {
            Formula::pick(rng.next())
        } else {
            st.formula
        };
        let constants = constants(rng);
        let Some((imp, tag)) = self.emit(i, formula, constants)? else {
            return Ok(false); // tags exhausted: skip
        };
        let probe = match st.probe {
            Some(_) => Some(self.probe(i, &imp)?),
            None => None,
        };
        let retired = swap(&st.site, probe.as_ref().unwrap_or(&imp))?;
        let old = st.tag;
        (st.imp, st.tag, st.formula, st.constants, st.probe) =
            (imp, tag, formula, constants, probe);
        self.counters.rejits.fetch_add(1, Ordering::Relaxed);
        self.retire_tag(old, retired);
        Ok(true)
    }

    fn attach(&self, i: usize, st: &mut SiteState) -> Result<bool, String> {
        let probe = self.probe(i, &st.imp)?;
        // `imp` stays reachable through the probe: its tag stays live.
        drop(swap(&st.site, &probe)?);
        st.probe = Some(probe);
        self.counters.attaches.fetch_add(1, Ordering::Relaxed);
        self.counters.attached_now.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    fn detach(&self, i: usize, st: &mut SiteState) -> Result<bool, String> {
        if st.imp.is_retired() {
            // `imp` was installed before the probe and cannot be installed again: a fresh copy.
            let Some((imp, tag)) = self.emit(i, st.formula, st.constants)? else {
                return Ok(false); // tags exhausted: stay traced
            };
            let retired = swap(&st.site, &imp)?;
            let old = std::mem::replace(&mut st.tag, tag);
            st.imp = imp;
            self.retire_tag(old, retired);
        } else {
            // `imp` was emitted behind this probe and never installed: put it in directly.
            drop(swap(&st.site, &st.imp)?);
        }
        st.probe = None;
        self.counters.detaches.fetch_add(1, Ordering::Relaxed);
        self.counters.attached_now.fetch_sub(1, Ordering::Relaxed);
        Ok(true)
    }

    /// Marks `tag` retired and queues its reclaimed flag (and the code's release) behind a GP.
    fn retire_tag(&self, tag: u32, retired: Retired) {
        self.table.retire(tag);
        let (table, latency, queued) = (self.table.clone(), self.latency.clone(), Instant::now());
        self.gp.call(move || {
            table.reclaim(tag);
            let ns = queued.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
            latency.lock().unwrap_or_else(|e| e.into_inner()).record(ns);
            drop(retired);
        });
    }

    fn after_swap(&self) {
        let c = self.counters;
        c.swaps.fetch_add(1, Ordering::Relaxed);
        let s = self.stats.get();
        c.peak_retired.fetch_max(s.retired, Ordering::Relaxed);
        c.peak_mapped.fetch_max(s.mapped_bytes, Ordering::Relaxed);
        if s.retired > BACKLOG_LIMIT {
            c.throttles.fetch_add(1, Ordering::Relaxed);
            self.gp.barrier();
        }
    }
}

fn swap(site: &Site, new: &Trampoline) -> Result<Retired, String> {
    site.swap(new).map_err(|e| format!("swap: {e}"))
}

/// Fresh constants: a "rate" and a "base" (both below 2^31, as [`versions::emit`] needs).
fn constants(rng: &mut Rng) -> (u32, u32) {
    (rng.range(1, 1000) as u32, rng.range(0, 100_000) as u32)
}
