//! Probes: attach and detach many entry and exit hooks at once, with one grace period per
//! batch.
//!
//! # Layering
//! A [`Probes`] manager (one per [`Jit`], any number of them) owns the sites it creates:
//! [`Probes::site`] returns a [`ProbedSite`], a patch site with two layers:
//! - the **implementation** trampoline, chosen by the user ([`Probes::site`],
//!   [`ProbedSite::swap_impl`]);
//! - the **probe trampoline**, present while at least one probe is attached: a forwarding
//!   trampoline whose target is the implementation (`Target::Trampoline(impl)`) and whose
//!   hooks are this module's dispatchers: an entry [`Hook`](crate::Hook) if some probe has an
//!   entry part, and an [`ExitHook`](crate::ExitHook) if some probe has an exit part. Without
//!   an exit part it tail-jumps to the implementation (the cheap path); with one it is a
//!   **call-through** trampoline (see *Exit hooks* below). With no probe attached the site
//!   points at the implementation directly, so an unprobed site costs nothing extra.
//!
//! Every change of a site's probe set or implementation emits a fresh probe trampoline and swaps
//! the site to it: a probe trampoline is immutable, and so is the dispatchers' `user` pointer, a
//! per-trampoline **snapshot** of the `(probe id, hook)` pairs, which the trampoline owns and
//! which is freed with its code. A `ProbedSite` does not expose its inner
//! [`Site`], so the layering cannot be bypassed: `swap_impl` replaces the
//! implementation and keeps the probes; attaching and detaching keep the implementation.
//!
//! The manager *pins* the implementation: it counts as one installation (the same count a site
//! holds), so swapping the site from the implementation to a probe trampoline does not retire
//! the implementation, and detaching the last probe can swap the site back to it. The pin is
//! released when the implementation is replaced or the site drops.
//!
//! # Batches and grace periods
//! [`Probes::batch`] (and [`Probes::detach_all`], and every single operation, which is a batch
//! of one) commits in three phases:
//! 1. lock every affected site (in site-id order, so concurrent batches cannot deadlock),
//!    validate every operation and emit every new probe trampoline; on any error nothing has
//!    changed;
//! 2. swap every affected site;
//! 3. unlock, then retire everything replaced: the frees of the old probe trampolines (deferred
//!    when their [`Retired`](crate::Retired) handles drop) are collected by the retirement's collection scope
//!    (`reclaim/collect.rs`, through `Retirement::retire_together`) and queued through the
//!    `Jit`'s [`Reclaim`](crate::Reclaim) as **one** callback, with their code ranges, which
//!    also drops their snapshots. A whole batch is thus reclaimed after one grace period
//!    instead of one per probe, however loaded the machine is.
//!
//! A snapshot is dropped with its trampoline's code, by a callback queued *after* the swap that
//! unpublished the trampoline, so it outlives every call that could still be inside that
//! trampoline, including calls parked inside the implementation (below).
//!
//! # Hooks
//! A [`ProbeHook`] has an entry part, an exit part, or both: Rust closures
//! (`Fn(&HookArgs)`, [`ProbeHook::new`]; `Fn(&HookArgs, &ReturnValues)`,
//! [`ProbeHook::on_exit`] and [`ProbeHook::with_exit`]) or, through the `unsafe`
//! [`ProbeHook::from_raw`] and [`ProbeHook::from_raw_exit`], `extern "C"` functions with a user
//! pointer. Entry parts run in attach order before the implementation, exit parts in attach
//! order after it returned. Hooks run on the caller's stack while it is inside a trampoline,
//! so they must not yield: the dispatchers are called, like every forwarding hook, inside
//! [`tramway_runtime::non_yielding`] (`forwarding.rs`), where a yield point panics in debug
//! builds (by default) with a clear message. A panic must not unwind through JIT code (the
//! caller's frames above the trampoline do not expect it), so the dispatcher catches it,
//! prints which probe and site panicked and why, and **aborts the process**. Continuing
//! instead would hide a hook that may have left its own state half-updated; aborting is the
//! conservative choice.
//!
//! After [`Probes::detach`] returns, calls that *enter* the site no longer run the hook, but
//! calls already inside the old probe trampoline may still be running it until a grace period
//! has passed (e.g. after [`Jit::barrier`]). A closure hook's captured state is dropped only
//! after that grace period (with the last snapshot that references it).
//!
//! # Exit hooks
//! While some attached probe has an exit part, the probe trampoline *calls* the
//! implementation, so its return address stays on the caller's stack for the whole call. The
//! implementation is an ordinary function and may park (sleep, wait on an `Event`), which is a
//! quiescent state; a task parked there is still *inside* the probe trampoline, and will run
//! the exit dispatcher, with the snapshot, when it returns. The call-through trampoline raises
//! the task's yielding-code depth around the call, so the park scans the task's stack and the
//! runtime holds back the free of every code range the stack points into; the old probe
//! trampoline, and the snapshot it owns with the probes' closures, is therefore freed only
//! after the task has returned out of it, however long it parks and whatever was detached
//! meanwhile. The mechanism, why it is preferred to BPF's in-flight count, and its costs
//! (a real call, no tail calls through the site, declared stack arguments:
//! [`ProbeHook::stack_arg_bytes`]) are in the module docs of `forwarding.rs`. Typed sites
//! decode their result type for exit probes: [`TypedProbedSite::exit_hook`].
//!
//! [`ReturnValues`]: crate::ReturnValues
//! [`HookArgs`]: crate::HookArgs

mod batch;
mod dispatch;
mod typed;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

pub use self::batch::Batch;
pub use self::dispatch::ProbeHook;
pub use self::typed::{AttachTarget, FromReturn, ProbedSiteRef, TypedProbedSite};

use self::batch::Op;
use self::dispatch::Entry;

use crate::error::JitError;
use crate::jit::Jit;
use crate::jit_core::JitCore;
use crate::lock;
use crate::site::{Site, SiteKind};
use crate::trampoline::Trampoline;

static NEXT_MANAGER_ID: AtomicU64 = AtomicU64::new(1);

/// Errors of probe operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// The probe is not attached: it was already detached (or its batch failed to commit).
    #[error("probe {probe} is not attached (already detached?)")]
    NotAttached {
        /// Id of the probe.
        probe: u64,
    },
    /// The probe was attached through another [`Probes`] manager.
    #[error("probe {probe} belongs to another probe manager")]
    ForeignProbe {
        /// Id of the probe.
        probe: u64,
    },
    /// The site was created by another [`Probes`] manager.
    #[error("site {site} belongs to another probe manager")]
    ForeignSite {
        /// Id of the site (see [`ProbedSite::id`]).
        site: u64,
    },
    /// The probe's site has been dropped (its probes went with it).
    #[error("the site of probe {probe} was dropped")]
    SiteDropped {
        /// Id of the probe.
        probe: u64,
    },
    /// Emitting or installing code failed (e.g. a trampoline of another `Jit`, or a retired one).
    #[error(transparent)]
    Jit(#[from] JitError),
}

/// A snapshot of a [`Probes`] manager's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProbeStats {
    /// Probes currently attached.
    pub attached: u64,
    /// Sites of this manager currently alive.
    pub sites: u64,
    /// Batches committed (single operations count as batches of one).
    pub commits: u64,
    /// Site swaps performed by commits.
    pub swaps: u64,
}

/// Manages probe sets on the sites it creates (layering, batching and exit hooks: the
/// [module docs](self)). Cheap to clone.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::Arc;
/// use tramway_jit::{Jit, ProbeHook, Probes, SiteKind};
///
/// extern "C" fn square(x: u64) -> u64 { x * x }
/// let jit = Jit::new()?;
/// let probes = Probes::new(&jit);
/// let square = jit.forward(square as extern "C" fn(u64) -> u64)?;
/// let sites = (0..3)
///     .map(|_| probes.typed_site(SiteKind::Indirect, &square))
///     .collect::<Result<Vec<_>, _>>()?;
/// let calls = Arc::new(AtomicU64::new(0));
/// // One batch: every site is swapped to a probe trampoline, and the trampolines it replaced
/// // are retired behind one grace period.
/// let attached = probes.batch(|b| {
///     sites
///         .iter()
///         .map(|site| {
///             let calls = calls.clone();
///             b.attach(site, ProbeHook::new(move |args| {
///                 calls.fetch_add(args.int_args[0], Ordering::Relaxed);
///             }))
///         })
///         .collect::<Result<Vec<_>, _>>()
/// })?;
/// for site in &sites {
///     assert_eq!(site.handle().call((3,))?, 9); // the implementation still runs
/// }
/// assert_eq!(calls.load(Ordering::Relaxed), 9); // each entry hook saw the argument 3
/// probes.detach_all(&attached)?; // one batch again; the sites point at `square` directly
/// sites[0].handle().call((4,))?;
/// assert_eq!(calls.load(Ordering::Relaxed), 9);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Probes {
    pub(crate) mgr: Arc<Manager>,
}

pub(crate) struct Manager {
    pub(crate) id: u64,
    pub(crate) core: Arc<JitCore>,
    next_probe: AtomicU64,
    next_site: AtomicU64,
    pub(crate) attached: AtomicU64,
    sites: AtomicU64,
    pub(crate) commits: AtomicU64,
    pub(crate) swaps: AtomicU64,
}

impl Manager {
    pub(crate) fn next_probe_id(&self) -> u64 {
        self.next_probe.fetch_add(1, Ordering::Relaxed)
    }
}

/// A handle naming one attached (or once attached) probe. Cloning it does not attach anything.
#[derive(Clone)]
pub struct Probe {
    pub(crate) manager: u64,
    pub(crate) id: u64,
    pub(crate) site: Weak<SiteCell>,
}

impl Probe {
    /// The probe's id (unique within its manager).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether the probe is currently attached (its site is alive and its set contains it).
    pub fn is_attached(&self) -> bool {
        self.site
            .upgrade()
            .is_some_and(|c| lock(&c.state).probes.iter().any(|e| e.id == self.id))
    }
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe")
            .field("manager", &self.manager)
            .field("id", &self.id)
            .finish()
    }
}

/// A patch site managed by a [`Probes`] manager: an implementation plus a set of probes.
///
/// Dropping it retires its current trampoline and detaches its probes (their hooks are
/// released after a grace period); detaching them afterwards fails with
/// [`ProbeError::SiteDropped`].
pub struct ProbedSite {
    pub(crate) cell: Arc<SiteCell>,
}

pub(crate) struct SiteCell {
    pub(crate) mgr: Arc<Manager>,
    pub(crate) id: u64,
    /// Swapped only under `state`'s lock.
    pub(crate) site: Site,
    pub(crate) state: Mutex<SiteState>,
}

pub(crate) struct SiteState {
    /// The pinned implementation (one installation is ours; see the [module docs](self)).
    pub(crate) implementation: Trampoline,
    /// Attached probes in attach order (the order hooks run in). The current probe
    /// trampoline owns its own copy (its snapshot).
    pub(crate) probes: Vec<Entry>,
}

impl Probes {
    /// A manager for sites of `jit`.
    pub fn new(jit: &Jit) -> Probes {
        Probes {
            mgr: Arc::new(Manager {
                id: NEXT_MANAGER_ID.fetch_add(1, Ordering::Relaxed),
                core: jit.core().clone(),
                next_probe: AtomicU64::new(1),
                next_site: AtomicU64::new(1),
                attached: AtomicU64::new(0),
                sites: AtomicU64::new(0),
                commits: AtomicU64::new(0),
                swaps: AtomicU64::new(0),
            }),
        }
    }

    /// Creates a site of `kind` whose implementation is `implementation` (pinned; see the
    /// module docs). Fails like [`Jit::site`], e.g. for a trampoline of another `Jit`.
    pub fn site(
        &self,
        kind: SiteKind,
        implementation: &Trampoline,
    ) -> Result<ProbedSite, ProbeError> {
        let site = Site::new(&self.mgr.core, kind, implementation)?;
        // The site holds one installation, so the trampoline cannot be retired under us and the
        // pin cannot fail; if it did, dropping `site` undoes everything.
        implementation.install()?;
        self.mgr.sites.fetch_add(1, Ordering::Relaxed);
        Ok(ProbedSite {
            cell: Arc::new(SiteCell {
                mgr: self.mgr.clone(),
                id: self.mgr.next_site.fetch_add(1, Ordering::Relaxed),
                site,
                state: Mutex::new(SiteState {
                    implementation: implementation.clone(),
                    probes: Vec::new(),
                }),
            }),
        })
    }

    /// Attaches `hook` to `site` (a batch of one). Calls entering the site after this returns run
    /// the hook. Fails with [`ProbeError::ForeignSite`] for a site of another manager.
    pub fn attach(&self, site: &impl AttachTarget, hook: ProbeHook) -> Result<Probe, ProbeError> {
        self.batch(|b| b.attach(site, hook))
    }

    /// Detaches `probe` (a batch of one). Calls entering its site after this returns do not run
    /// the hook; calls already inside may, until a grace period has passed.
    ///
    /// Errors: [`ProbeError::NotAttached`] (detached twice), [`ProbeError::ForeignProbe`],
    /// [`ProbeError::SiteDropped`].
    pub fn detach(&self, probe: &Probe) -> Result<(), ProbeError> {
        self.batch(|b| b.detach(probe))
    }

    /// Detaches every probe of `probes` in one batch: every affected site is swapped, then all
    /// replaced trampolines are retired together (one grace period). All or nothing: on error
    /// (the first failing probe's) no probe is detached.
    pub fn detach_all<'a>(
        &self,
        probes: impl IntoIterator<Item = &'a Probe>,
    ) -> Result<(), ProbeError> {
        self.batch(|b| probes.into_iter().try_for_each(|p| b.detach(p)))
    }

    /// Runs `f` to queue attach / detach / implementation swaps on a [`Batch`], then commits
    /// them (see the [module docs](self)) and returns `f`'s result. If `f` fails nothing is
    /// committed; if the commit fails nothing has changed (probes `f` got from
    /// [`Batch::attach`] are then not attached).
    pub fn batch<R>(
        &self,
        f: impl FnOnce(&mut Batch<'_>) -> Result<R, ProbeError>,
    ) -> Result<R, ProbeError> {
        let mut b = Batch::new(self);
        let r = f(&mut b)?;
        b.commit()?;
        Ok(r)
    }

    /// The manager's counters.
    pub fn stats(&self) -> ProbeStats {
        let m = &self.mgr;
        ProbeStats {
            attached: m.attached.load(Ordering::Relaxed),
            sites: m.sites.load(Ordering::Relaxed),
            commits: m.commits.load(Ordering::Relaxed),
            swaps: m.swaps.load(Ordering::Relaxed),
        }
    }

    /// A process-unique id of this manager.
    pub fn id(&self) -> u64 {
        self.mgr.id
    }
}

impl std::fmt::Debug for Probes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probes")
            .field("id", &self.mgr.id)
            .field("stats", &self.stats())
            .finish()
    }
}

impl ProbedSite {
    /// The stable entry address callers call.
    pub fn entry(&self) -> *const u8 {
        self.cell.site.entry()
    }

    /// The entry as a function pointer of type `F`.
    ///
    /// # Safety
    /// As [`Site::as_fn`]: `F` must be an `extern "C"` function pointer type that every
    /// implementation installed in this site implements (probe trampolines forward every
    /// signature), called only from tasks the reclaimer tracks, never after the site drops.
    pub unsafe fn as_fn<F: Copy>(&self) -> F {
        // SAFETY: the caller upholds `Site::as_fn`'s contract (stated above in the same terms).
        unsafe { self.cell.site.as_fn() }
    }

    /// The site's kind.
    pub fn kind(&self) -> SiteKind {
        self.cell.site.kind()
    }

    /// An id unique within the site's manager.
    pub fn id(&self) -> u64 {
        self.cell.id
    }

    /// The current implementation trampoline.
    pub fn implementation(&self) -> Trampoline {
        lock(&self.cell.state).implementation.clone()
    }

    /// Number of probes attached.
    pub fn probe_count(&self) -> usize {
        lock(&self.cell.state).probes.len()
    }

    /// Replaces the implementation, keeping the attached probes (a batch of one, see
    /// [`Batch::swap_impl`]). The old implementation is retired and reclaimed after a grace
    /// period (unless it is also installed in another site).
    pub fn swap_impl(&self, new: &Trampoline) -> Result<(), ProbeError> {
        let probes = Probes {
            mgr: self.cell.mgr.clone(),
        };
        probes.batch(|b| b.swap_impl(self, new))
    }
}

impl std::fmt::Debug for ProbedSite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProbedSite")
            .field("id", &self.id())
            .field("entry", &self.entry())
            .field("probes", &self.probe_count())
            .finish()
    }
}

impl Drop for SiteCell {
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        // Release our pin; `site` (dropped after this) releases its own installation of the
        // current trampoline (the implementation or the probe trampoline targeting it).
        st.implementation.uninstall();
        // The probe trampoline, if any, owns its snapshot: it is freed with the trampoline,
        // after calls still inside it (parked ones included) have left.
        let m = &self.mgr;
        m.attached
            .fetch_sub(st.probes.len() as u64, Ordering::Relaxed);
        m.sites.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Ops grouped per site, for [`Batch::commit`].
pub(crate) type SiteOps = (Arc<SiteCell>, Vec<Op>);
