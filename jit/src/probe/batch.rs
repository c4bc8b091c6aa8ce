//! [`Batch`]: queued probe operations and their three-phase commit (see `probe/mod.rs`).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};

use super::dispatch::{self, Entry, Snapshot};
use super::{
    AttachTarget, Probe, ProbeError, ProbeHook, ProbedSite, Probes, SiteCell, SiteOps, SiteState,
};
use crate::lock;
use crate::trampoline::{Retired, Trampoline};

/// One queued operation.
pub(crate) enum Op {
    Attach(Entry),
    Detach(u64),
    SetImpl(Trampoline),
}

/// Probe operations queued by [`Probes::batch`] and committed together when it returns.
pub struct Batch<'a> {
    probes: &'a Probes,
    ops: Vec<(Arc<SiteCell>, Op)>,
}

/// What a site becomes.
struct Plan {
    probes: Vec<Entry>,
    new_impl: Option<Trampoline>,
}

/// A site's new trampoline (the implementation, or a fresh probe trampoline that owns its
/// snapshot), emitted and not yet published.
struct Prepared {
    target: Trampoline,
}

impl<'a> Batch<'a> {
    pub(crate) fn new(probes: &'a Probes) -> Self {
        Batch {
            probes,
            ops: Vec::new(),
        }
    }

    fn check_site(&self, cell: &SiteCell) -> Result<(), ProbeError> {
        if Arc::ptr_eq(&cell.mgr, &self.probes.mgr) {
            Ok(())
        } else {
            Err(ProbeError::ForeignSite { site: cell.id })
        }
    }

    /// Queues attaching `hook` to `site`; the returned probe is attached once the batch commits.
    /// Fails with [`ProbeError::ForeignSite`] for a site of another manager.
    pub fn attach(
        &mut self,
        site: &impl AttachTarget,
        hook: ProbeHook,
    ) -> Result<Probe, ProbeError> {
        let cell = site.probed().0;
        self.check_site(cell)?;
        let id = self.probes.mgr.next_probe_id();
        self.ops
            .push((cell.clone(), Op::Attach(Entry { id, hook })));
        Ok(Probe {
            manager: self.probes.mgr.id,
            id,
            site: Arc::downgrade(cell),
        })
    }

    /// Queues detaching `probe`. Fails at once with [`ProbeError::ForeignProbe`] or
    /// [`ProbeError::SiteDropped`]; [`ProbeError::NotAttached`] is reported by the commit.
    pub fn detach(&mut self, probe: &Probe) -> Result<(), ProbeError> {
        if probe.manager != self.probes.mgr.id {
            return Err(ProbeError::ForeignProbe { probe: probe.id });
        }
        let cell = probe
            .site
            .upgrade()
            .ok_or(ProbeError::SiteDropped { probe: probe.id })?;
        self.ops.push((cell, Op::Detach(probe.id)));
        Ok(())
    }

    /// Queues replacing `site`'s implementation with `new`, keeping its probes.
    pub fn swap_impl(&mut self, site: &ProbedSite, new: &Trampoline) -> Result<(), ProbeError> {
        self.check_site(&site.cell)?;
        new.check_owner(self.probes.mgr.core.id())?;
        self.ops.push((site.cell.clone(), Op::SetImpl(new.clone())));
        Ok(())
    }

    /// Commits the queued operations (the three phases: the [`probe`](crate::probe) module
    /// docs).
    pub(crate) fn commit(self) -> Result<(), ProbeError> {
        let mgr = self.probes.mgr.clone();
        if self.ops.is_empty() {
            return Ok(());
        }
        // Group by site, in site-id order (the lock order).
        let mut groups: BTreeMap<u64, SiteOps> = BTreeMap::new();
        for (cell, op) in self.ops {
            groups
                .entry(cell.id)
                .or_insert_with(|| (cell, Vec::new()))
                .1
                .push(op);
        }
        let groups: Vec<SiteOps> = groups.into_values().collect();

        // Phase 1: lock, validate, emit. Nothing is published; errors leave everything as is.
        let mut guards: Vec<MutexGuard<'_, SiteState>> =
            groups.iter().map(|(c, _)| lock(&c.state)).collect();
        let mut plans = Vec::with_capacity(groups.len());
        for ((_, ops), st) in groups.iter().zip(&guards) {
            plans.push(plan(st, ops)?);
        }
        let mut prepared = Vec::with_capacity(groups.len());
        for (((cell, _), st), plan) in groups.iter().zip(&guards).zip(&plans) {
            let implementation = plan.new_impl.as_ref().unwrap_or(&st.implementation);
            prepared.push(if plan.probes.is_empty() {
                Prepared {
                    target: implementation.clone(),
                }
            } else {
                let snapshot = Snapshot::new(cell.id, &plan.probes);
                // On error the trampolines emitted so far drop unpublished (freed at once,
                // with their snapshots).
                Prepared {
                    target: dispatch::emit(&mgr.core, implementation, snapshot)?,
                }
            });
        }
        // Pin new implementations. `install` fails only for a trampoline retired meanwhile (by
        // a swap of a site outside this manager); undo the pins taken so far.
        let mut pinned: Vec<&Trampoline> = Vec::new();
        for t in plans.iter().filter_map(|p| p.new_impl.as_ref()) {
            if let Err(e) = t.install() {
                pinned.iter().for_each(|t| t.unpin());
                return Err(e.into());
            }
            pinned.push(t);
        }

        // Phase 2: publish. A swap cannot fail here: every target belongs to this `Jit`, is not
        // retired (freshly emitted, or pinned) and is in range (the reservation is <= 2 GiB).
        let mut retired: Vec<Retired> = Vec::with_capacity(groups.len());
        let mut old_impls: Vec<Trampoline> = Vec::new();
        let mut first_error = None;
        let (mut attached, mut detached) = (0u64, 0u64);
        for ((((cell, _), st), plan), prep) in groups
            .iter()
            .zip(guards.iter_mut())
            .zip(plans)
            .zip(prepared)
        {
            match cell.site.swap_unthrottled(&prep.target) {
                Ok(old) => retired.push(old),
                Err(e) => {
                    if let Some(t) = &plan.new_impl {
                        t.unpin();
                    }
                    first_error.get_or_insert(e);
                    continue;
                }
            }
            mgr.swaps.fetch_add(1, Ordering::Relaxed);
            let (old_n, new_n) = (st.probes.len() as u64, plan.probes.len() as u64);
            attached += new_n.saturating_sub(old_n);
            detached += old_n.saturating_sub(new_n);
            st.probes = plan.probes;
            if let Some(new_impl) = plan.new_impl {
                let old_impl = std::mem::replace(&mut st.implementation, new_impl);
                old_impl.uninstall(); // our pin
                old_impls.push(old_impl);
            }
        }
        drop(guards);
        mgr.attached.fetch_add(attached, Ordering::Relaxed);
        mgr.attached.fetch_sub(detached, Ordering::Relaxed);
        mgr.commits.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            target: "tramway::jit",
            manager = mgr.id,
            sites = retired.len(),
            attached,
            detached,
            failed = first_error.is_some(),
            "probe batch committed"
        );

        // Phase 3: retire everything as one callback (one grace period). It is queued after
        // every swap above, so it runs after a grace period that started once no new call
        // could enter the old trampolines; it carries their code ranges, so it is also held
        // back while a task parked inside an implementation is inside one of them (a
        // call-through trampoline). The old snapshots are freed with their trampolines.
        mgr.core.retirement.retire_together(
            || {
                drop(retired);
                drop(old_impls);
            },
            None,
        );
        // Like `Site::swap`, but once per batch and with no lock held: a barrier while holding
        // site locks could block a worker (on the lock) that the grace period waits for.
        mgr.core.retirement.throttle_backlog();
        match first_error {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }
}

/// Applies `ops` to a copy of the site's state; fails without changing anything.
fn plan(st: &SiteState, ops: &[Op]) -> Result<Plan, ProbeError> {
    let mut probes = st.probes.clone();
    let mut new_impl = None;
    for op in ops {
        match op {
            Op::Attach(entry) => probes.push(entry.clone()),
            Op::Detach(id) => {
                let pos = probes
                    .iter()
                    .position(|e| e.id == *id)
                    .ok_or(ProbeError::NotAttached { probe: *id })?;
                probes.remove(pos);
            }
            Op::SetImpl(t) => {
                if t.is_retired() {
                    return Err(crate::JitError::Retired { id: t.id() }.into());
                }
                new_impl = Some(t.clone());
            }
        }
    }
    Ok(Plan { probes, new_impl })
}

impl std::fmt::Debug for Batch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("ops", &self.ops.len())
            .finish()
    }
}
