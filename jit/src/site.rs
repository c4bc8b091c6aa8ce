//! Patch sites: stable entry points whose target is swapped with one atomic store.
//!
//! # Patch protocol
//! A [`Site`] is a small stub in code memory; callers call its [`entry`](Site::entry) and never
//! hold a pointer to a trampoline. The stub's layout, and the 8-byte *patch word* that decides
//! where it goes, are the architecture's (`arch/mod.rs` states the contract, `arch/<arch>.rs`
//! draws the bytes). Swapping from trampoline A to B:
//!
//! 1. **B is complete.** B's bytes were copied into code memory (through the writable view)
//!    and made visible to instruction fetch (`arch::flush_icache`) before its `Trampoline`
//!    handle existed. Whoever passes the handle to the swapping thread synchronizes with that
//!    write.
//! 2. **Publish with one aligned atomic store, Release.** Under the site's mutex (swaps of one
//!    site are serialized; callers never take it), the patch word is stored through its
//!    writable address with `AtomicU64::store(.., Release)`:
//!    - **Indirect** (default): the stub jumps through the word, which holds B's address. Only
//!      data changes. A caller reads either A's or B's address, never a torn value (the word is
//!      aligned and accessed atomically), and the Release store orders B's code bytes before
//!      B's address, so a caller that read B's address finds B's code (why instruction fetch
//!      keeps that order on the target is the arch file's argument).
//!    - **Direct** (opt-in): the word *is* the stub's jump instruction, encoding B's place, and
//!      the whole instruction is replaced by the one store. This is *cross-modifying code*:
//!      the processor's rules for modified code apply (`arch::sync_core_policy` decides
//!      whether every core is serialized afterwards), and HotSpot hit an x86 erratum with
//!      exactly this kind of patching (JDK-8223613). Use it only where the saved indirection
//!      matters and that risk is accepted. B must be in the jump's reach
//!      ([`JitError::TargetOutOfRange`]), which the reservation's size bound guarantees.
//!      Direct sites need the memfd double mapping ([`JitError::Unsupported`] in fallback
//!      mode).
//! 3. **Retire A.** After the store A is unreachable for new calls, but callers may still be
//!    inside it. `swap` marks A retired (once it is in no site) and returns a [`Retired`]
//!    handle; when it and all other handles of A drop, A's free is *deferred* through the
//!    `Jit`'s [`Reclaim`](crate::Reclaim), i.e. runs after a grace period, never at once
//!    (`reclaim/mod.rs` draws that chain).
//!
//! No page is ever writable and executable: the stub executes through the executable view and
//! its word is written only through the writable one (see `code_memory/mod.rs`). In fallback
//! mode (no memfd) an indirect stub occupies two pages of one slot: the code page (executable)
//! and a data page (writable, never executable) holding the word, which is patched in place.
//!
//! A site's stub stays mapped, and its current trampoline installed, while the [`Site`] or any
//! typed call handle made from it ([`SiteFn`](crate::SiteFn)) exists. When the last of them
//! drops, the stub is retired (callers may still be inside it: its free is deferred too) and
//! the current trampoline is released as if it had been swapped out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::arch;
use crate::code_memory::Slot;
use crate::error::JitError;
use crate::jit_core::JitCore;
use crate::lock;
use crate::reclaim::CodeFree;
use crate::trampoline::{Retired, Trampoline};

/// How a site jumps to its current trampoline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SiteKind {
    /// Jumps through an 8-byte data word holding the target's address (default; patches data
    /// only).
    #[default]
    Indirect,
    /// A direct jump instruction, patched by rewriting the instruction (cross-modifying code;
    /// see the [module docs](self)).
    Direct,
}

/// A stable entry point whose target can be swapped while other threads call it (see the
/// [module docs](self) for the patch protocol).
///
/// Calling it through its raw entry ([`entry`](Self::entry), [`as_fn`](Self::as_fn)) is
/// `unsafe`; [`TypedSite`](crate::TypedSite) is the safe, typed way.
pub struct Site {
    inner: Arc<SiteInner>,
}

/// What a site and its call handles share; dropping the last reference retires the stub.
pub(crate) struct SiteInner {
    pub(crate) core: Arc<JitCore>,
    kind: SiteKind,
    stub: Slot,
    /// Writable address of the 8-byte patch word a swap stores (RW alias, or the fallback
    /// data page).
    patch: usize,
    current: Mutex<Trampoline>,
}

impl Site {
    pub(crate) fn new(
        core: &Arc<JitCore>,
        kind: SiteKind,
        initial: &Trampoline,
    ) -> Result<Site, JitError> {
        let mem = &core.mem;
        initial.check_owner(core.id())?;
        if initial.is_retired() {
            return Err(JitError::Retired { id: initial.id() });
        }
        let layout = arch::site_stub_layout(kind, mem.stub_memory()).ok_or(
            JitError::Unsupported("direct sites need the memfd double mapping (fallback mode)"),
        )?;
        let stub = mem.alloc(layout.len)?;
        let result = patch_word(kind, stub.addr, initial).and_then(|word| {
            let bytes = arch::site_stub_image(kind, &layout, word);
            // SAFETY: the stub was just allocated and is unreachable until this function returns.
            unsafe { mem.write(&stub, &bytes, layout.exec_len) }?;
            initial.install()?;
            // Named by its entry address (sites have no id of their own).
            let code = &bytes[..layout.exec_len.min(bytes.len())];
            core.profiling
                .code_loaded("site", stub.addr as u64, stub.addr, code);
            Ok(())
        });
        if let Err(e) = result {
            // SAFETY: allocated above and never handed out.
            unsafe { mem.free(stub) };
            return Err(e);
        }
        mem.stats().site_created();
        Ok(Site {
            inner: Arc::new(SiteInner {
                core: core.clone(),
                kind,
                stub,
                patch: stub.write_addr + layout.word_offset,
                current: Mutex::new(initial.clone()),
            }),
        })
    }

    /// The state this site shares with its call handles.
    pub(crate) fn inner(&self) -> &Arc<SiteInner> {
        &self.inner
    }

    /// The stable entry address callers call.
    pub fn entry(&self) -> *const u8 {
        self.inner.stub.addr as *const u8
    }

    /// The entry as a function pointer of type `F` (e.g. `extern "C" fn(u64) -> u64`).
    ///
    /// # Safety
    /// `F` must be an `extern "C"` function pointer type (the platform's C ABI), and every
    /// trampoline ever installed in this site must implement that signature (a forwarding
    /// trampoline implements its target's). The pointer may only be called while the site is
    /// alive, from a thread that the reclaimer tracks (for the runtime: a task, or an online
    /// registered thread), and calls must not outlive the site (nor its call handles).
    pub unsafe fn as_fn<F: Copy>(&self) -> F {
        const { assert!(std::mem::size_of::<F>() == std::mem::size_of::<usize>()) };
        let entry = self.entry();
        // SAFETY: same size (checked above); the caller guarantees `F` is a fn pointer type.
        unsafe { std::mem::transmute_copy(&entry) }
    }

    /// The trampoline currently installed.
    pub fn current(&self) -> Trampoline {
        lock(&self.inner.current).clone()
    }

    /// The site's kind.
    pub fn kind(&self) -> SiteKind {
        self.inner.kind
    }

    /// Points the site at `new` and retires the previous trampoline (see the
    /// [module docs](self)).
    ///
    /// Errors: [`JitError::ForeignTrampoline`] if `new` belongs to another `Jit`,
    /// [`JitError::Retired`] if `new` is retired, [`JitError::TargetOutOfRange`] for a direct
    /// site that cannot reach `new`. On error the site is unchanged.
    pub fn swap(&self, new: &Trampoline) -> Result<Retired, JitError> {
        let old = self.swap_unthrottled(new)?;
        self.inner.core.retirement.throttle_backlog();
        Ok(old)
    }

    /// [`swap`](Self::swap) without the backlog throttle, for callers that hold their own locks
    /// across swaps and throttle once after releasing them (`probe/batch.rs`).
    pub(crate) fn swap_unthrottled(&self, new: &Trampoline) -> Result<Retired, JitError> {
        self.inner.swap_unthrottled(new)
    }
}

impl SiteInner {
    fn swap_unthrottled(&self, new: &Trampoline) -> Result<Retired, JitError> {
        new.check_owner(self.core.id())?;
        let word = patch_word(self.kind, self.stub.addr, new)?;
        let mut current = lock(&self.current);
        new.install()?;
        // SAFETY: `patch` is the 8-byte aligned, writable (RW alias or RW data page) address of
        // the site's word, valid while the stub is allocated (as long as `self`).
        let slot = unsafe { &*(self.patch as *const AtomicU64) };
        // Release: orders the (earlier) writes of `new`'s code before its publication; callers
        // that load the new word find complete code (module docs, step 2).
        slot.store(word, Ordering::Release);
        if self.kind == SiteKind::Direct {
            // The one real cross-modifying store: the arch policy decides whether every core
            // must now serialize before it next runs user code.
            self.core.mem.direct_site_patched();
        }
        let old = std::mem::replace(&mut *current, new.clone());
        old.uninstall();
        tracing::trace!(
            target: "tramway::jit",
            site = self.stub.addr,
            old = old.id(),
            new = new.id(),
            "site swapped"
        );
        Ok(Retired::new(old))
    }
}

/// The patch word that points the stub at `entry` of a `kind` site to `target`.
fn patch_word(kind: SiteKind, entry: usize, target: &Trampoline) -> Result<u64, JitError> {
    let target = target.addr() as usize;
    arch::site_patch_word(kind, entry, target).ok_or(JitError::TargetOutOfRange {
        site: entry,
        target,
    })
}

impl std::fmt::Debug for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Site")
            .field("kind", &self.kind())
            .field("entry", &self.entry())
            .field("current", &self.current())
            .finish()
    }
}

impl Drop for SiteInner {
    fn drop(&mut self) {
        // Callers may still be inside the stub: free it only after a grace period.
        self.core
            .retirement
            .defer_free(CodeFree::site_stub(self.stub));
        let current = self.current.get_mut().unwrap_or_else(|e| e.into_inner());
        current.uninstall();
        // The `current` handle drops with `self`, deferring the trampoline's free if it was the last.
    }
}
