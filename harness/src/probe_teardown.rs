//! The probe-teardown scenario, shared by `examples/probe-teardown` and `benches/probes.rs`.
//!
//! `sites` probed sites on a 2-worker runtime with a Tasks grace-period domain as the `Jit`'s
//! reclaimer; reader tasks call random sites in a loop (yielding every 64 calls) for the whole
//! run. N probes (a counting hook each) are attached round-robin in one batch, then detached:
//! - **sequential**: one `detach` at a time, each followed by `jit.barrier()` (its own grace
//!   period and reclamation: what a tracer that tears probes down one by one pays);
//! - **batched**: one `detach_all` (every site swapped, everything retired together), then one
//!   `jit.barrier()`.
//!
//! Both timings end when every replaced trampoline is reclaimed (`retired == 0`, checked).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tramway_jit::{Jit, Probe, ProbeHook, ProbedSite, Probes, SiteKind, Trampoline};
use tramway_runtime::grace::GraceDomain;
use tramway_runtime::{yield_now, JoinHandle, Runtime};

type SiteFn = extern "C" fn(u64) -> u64;

extern "C" fn add_one(x: u64) -> u64 {
    x.wrapping_add(1)
}

/// A running scenario: runtime, domain, jit, probed sites and reader tasks.
pub struct Scenario {
    /// The runtime the readers run on.
    pub rt: Runtime,
    /// The Tasks grace-period domain that reclaims retired code.
    pub gp: GraceDomain,
    /// The code memory.
    pub jit: Jit,
    /// The probe manager of `sites`.
    pub probes: Probes,
    /// The probed sites the readers call.
    pub sites: Vec<ProbedSite>,
    stop: Arc<AtomicBool>,
    readers: Vec<JoinHandle<()>>,
    /// Calls made by the readers.
    pub calls: Arc<AtomicU64>,
    /// Hook invocations.
    pub hits: Arc<AtomicU64>,
}

/// One teardown's measurements.
#[derive(Clone, Copy, Debug)]
pub struct Teardown {
    /// Wall time from the first detach until every old trampoline is reclaimed.
    pub elapsed: Duration,
    /// Grace periods completed meanwhile.
    pub gps: u64,
    /// Part of `elapsed` spent in the detach calls themselves (swaps and retirement), not
    /// waiting for reclamation.
    pub detach: Duration,
}

impl Scenario {
    /// Starts `reader_tasks` readers over `sites` probed sites.
    pub fn new(sites: usize, reader_tasks: usize) -> Scenario {
        let tramway::Tramway {
            runtime: rt,
            grace: gp,
            jit,
        } = tramway::Builder::new().workers(2).build().expect("tramway");
        let probes = Probes::new(&jit);
        let implementation: Trampoline = jit
            .forwarding(tramway_jit::ForwardingSpec::new(
                tramway_jit::Target::Address(add_one as SiteFn as *const u8),
            ))
            .expect("implementation");
        let sites: Vec<ProbedSite> = (0..sites)
            .map(|_| {
                probes
                    .site(SiteKind::Indirect, &implementation)
                    .expect("site")
            })
            .collect();
        // SAFETY: every site forwards to `add_one`.
        let fns: Arc<Vec<SiteFn>> = Arc::new(sites.iter().map(|s| unsafe { s.as_fn() }).collect());
        let stop = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(AtomicU64::new(0));
        let readers = (0..reader_tasks)
            .map(|t| {
                let (fns, stop, calls) = (fns.clone(), stop.clone(), calls.clone());
                rt.spawn(move || {
                    let mut i = t as u64 * 7919;
                    while !stop.load(Ordering::Relaxed) {
                        for _ in 0..64 {
                            i = i.wrapping_mul(6364136223846793005).wrapping_add(1);
                            let f = fns[(i >> 33) as usize % fns.len()];
                            std::hint::black_box(f(i));
                        }
                        calls.fetch_add(64, Ordering::Relaxed);
                        yield_now();
                    }
                })
                .expect("spawn reader")
            })
            .collect();
        Scenario {
            rt,
            gp,
            jit,
            probes,
            sites,
            stop,
            readers,
            calls,
            hits: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Attaches `n` counting probes round-robin over the sites in one batch and waits until the
    /// trampolines they replaced are reclaimed.
    pub fn attach(&self, n: usize) -> Vec<Probe> {
        let probes = self
            .probes
            .batch(|b| {
                (0..n)
                    .map(|i| {
                        let h = self.hits.clone();
                        b.attach(
                            &self.sites[i % self.sites.len()],
                            ProbeHook::new(move |_| {
                                h.fetch_add(1, Ordering::Relaxed);
                            }),
                        )
                    })
                    .collect()
            })
            .expect("attach");
        self.jit.barrier();
        probes
    }

    fn finish(&self, start: Instant, gps_before: u64, detach: Duration) -> Teardown {
        let elapsed = start.elapsed();
        let s = self.jit.stats();
        assert_eq!(s.retired, 0, "teardown left retired code: {s:?}");
        assert_eq!(self.probes.stats().attached, 0);
        Teardown {
            elapsed,
            gps: self.gp.stats().completed - gps_before,
            detach,
        }
    }

    /// Detaches one probe at a time, each followed by its own grace period and reclamation.
    pub fn detach_sequential(&self, probes: &[Probe]) -> Teardown {
        let gps_before = self.gp.stats().completed;
        let start = Instant::now();
        let mut detach = Duration::ZERO;
        for p in probes {
            let t = Instant::now();
            self.probes.detach(p).expect("detach");
            detach += t.elapsed();
            self.jit.barrier();
        }
        self.finish(start, gps_before, detach)
    }

    /// Detaches every probe in one batch, then waits for its reclamation.
    pub fn detach_batched(&self, probes: &[Probe]) -> Teardown {
        let gps_before = self.gp.stats().completed;
        let start = Instant::now();
        self.probes.detach_all(probes).expect("detach_all");
        let detach = start.elapsed();
        self.jit.barrier();
        self.finish(start, gps_before, detach)
    }

    /// Stops and joins the readers.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for r in self.readers {
            r.join().expect("reader");
        }
    }
}
