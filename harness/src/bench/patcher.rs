//! The patcher side of the comparison: per-strategy swapping, retirement and reclamation
//! ([`Swapper`]), the paced patch loop, and the counters they update ([`Metrics`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tramway_jit::{Jit, JitError, Retired, Site};
use tramway_runtime::grace::GraceDomain;

use super::histogram::Histogram;
use super::refcount::RcPatcher;
use super::workload::emit_body;

/// Counters the patcher and reclaimers update.
#[derive(Default)]
pub struct Metrics {
    /// Swaps performed.
    pub swaps: AtomicU64,
    /// Retire-to-free latency of every reclaimed version.
    pub gp: Histogram,
    /// Most retired-and-not-yet-freed versions seen at once.
    pub peak_retired: AtomicU64,
    /// Most retired-and-not-yet-freed code bytes seen at once.
    pub peak_retired_bytes: AtomicU64,
    /// Most mapped code bytes seen at once.
    pub peak_mapped_bytes: AtomicU64,
}

/// The patcher's per-strategy state.
pub enum Swapper {
    /// The strategies that swap a tramway site.
    Site {
        /// The code memory.
        jit: Arc<Jit>,
        /// The site callers call.
        site: Arc<Site>,
        /// The grace-period domain (tasks and rude strategies).
        domain: Option<GraceDomain>,
        /// Epoch strategy: retired handles whose epoch grace period has ended, to be dropped
        /// (freed) by the patcher. See [`Swapper::swap`] for why the epoch callback does not
        /// drop them itself.
        epoch: Option<Arc<Mutex<Vec<Retired>>>>,
    },
    /// The per-record reference-count strategy.
    Refcount {
        /// The code memory.
        jit: Arc<Jit>,
        /// The refcount publisher.
        rc: RcPatcher,
    },
}

impl Swapper {
    /// Emits generation `gen`, publishes it and retires the previous one.
    pub fn swap(&mut self, gen: u64, m: &Arc<Metrics>) -> Result<(), JitError> {
        match self {
            Swapper::Site {
                jit,
                site,
                domain,
                epoch,
            } => {
                let next = emit_body(jit, gen)?;
                if let Some(freed) = epoch {
                    let guard = crossbeam_epoch::pin();
                    let retired = site.swap(&next)?;
                    drop(next);
                    let since = Instant::now();
                    let (m2, freed) = (m.clone(), freed.clone());
                    // The closure hands the handle back to the patcher instead of dropping it:
                    // crossbeam may run deferred functions while a thread's TLS is being
                    // destroyed (its `Local` is finalized at thread exit), and dropping a
                    // `Retired` there touches the jit's thread-locals (a panic -> abort).
                    // SAFETY: the old code is unreachable for calls that pin after this point
                    // (the site was re-pointed before), and every call that may be inside it
                    // is pinned; the closure runs after all of those guards are gone, and the
                    // code is freed (`ImmediateReclaim`) only when the patcher drops the
                    // handle the closure hands over.
                    unsafe {
                        guard.defer_unchecked(move || {
                            m2.gp.record(since.elapsed());
                            freed
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(retired);
                        })
                    };
                    // Push the bag now, so that GP latency is epoch advancement, not the time
                    // to fill a bag of 64 deferred functions.
                    guard.flush();
                } else {
                    let retired = site.swap(&next)?;
                    drop(next);
                    let since = Instant::now();
                    drop(retired); // defers the free through the Jit's reclaimer
                    if let Some(d) = domain {
                        let m2 = m.clone();
                        d.call(move || m2.gp.record(since.elapsed()));
                    }
                }
                let s = jit.stats();
                m.peak_retired.fetch_max(s.retired, Ordering::Relaxed);
                m.peak_retired_bytes
                    .fetch_max(s.retired_bytes as u64, Ordering::Relaxed);
                m.peak_mapped_bytes
                    .fetch_max(s.mapped_bytes as u64, Ordering::Relaxed);
            }
            Swapper::Refcount { jit, rc } => {
                let next = emit_body(jit, gen)?;
                let slot = next.len().next_power_of_two().max(16) as u64;
                rc.swap(next, &m.gp);
                let retired = rc.retired() as u64;
                m.peak_retired.fetch_max(retired, Ordering::Relaxed);
                m.peak_retired_bytes
                    .fetch_max(retired * slot, Ordering::Relaxed);
                m.peak_mapped_bytes
                    .fetch_max(jit.stats().mapped_bytes as u64, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Reclamation work the patcher does itself between swaps (refcount, epoch).
    pub fn poll(&mut self, m: &Metrics) {
        match self {
            Swapper::Refcount { rc, .. } => {
                rc.poll(&m.gp);
            }
            Swapper::Site {
                epoch: Some(freed), ..
            } => {
                let batch = std::mem::take(&mut *freed.lock().unwrap_or_else(|e| e.into_inner()));
                drop(batch); // frees the code (`ImmediateReclaim`)
            }
            Swapper::Site { .. } => {}
        }
    }

    /// Retired code the patcher itself still has to free (refcount, epoch).
    pub fn pending(&self) -> usize {
        match self {
            Swapper::Refcount { rc, .. } => rc.retired(),
            Swapper::Site {
                jit,
                epoch: Some(_),
                ..
            } => jit.stats().retired as usize,
            Swapper::Site { .. } => 0,
        }
    }

    /// After callers and patching stopped: free everything retired, so that nothing of this
    /// cell leaks into the next one.
    pub fn drain(&mut self, m: &Metrics) {
        match self {
            Swapper::Site { jit, epoch, .. } => {
                if let Some(freed) = epoch {
                    for _ in 0..1_000_000 {
                        crossbeam_epoch::pin().flush();
                        drop(std::mem::take(
                            &mut *freed.lock().unwrap_or_else(|e| e.into_inner()),
                        ));
                        if jit.stats().retired == 0 {
                            break;
                        }
                    }
                }
                jit.barrier();
            }
            Swapper::Refcount { rc, .. } => rc.drain(&m.gp),
        }
    }
}

/// Swaps `rate` times per second until `stop`; polls reclamation in between.
pub fn patch_loop(
    mut sw: Swapper,
    rate: u64,
    stop: &AtomicBool,
    m: &Arc<Metrics>,
) -> Result<Swapper, JitError> {
    let start = Instant::now();
    let mut done = 0u64;
    let mut gen = 2u64;
    while !stop.load(Ordering::Acquire) {
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        let mut n = 0;
        while done < due && n < 256 {
            sw.swap(gen, m)?;
            m.swaps.fetch_add(1, Ordering::Relaxed);
            gen += 1;
            done += 1;
            n += 1;
        }
        sw.poll(m);
        if done >= due {
            let next = Duration::from_secs_f64((done + 1) as f64 / rate as f64);
            let now = start.elapsed();
            // Refcount frees are polled here: keep the poll interval short while code waits.
            let cap = if sw.pending() > 0 {
                Duration::from_micros(20)
            } else {
                Duration::from_millis(1)
            };
            if next > now {
                std::thread::sleep((next - now).min(cap));
            }
        }
    }
    Ok(sw)
}
