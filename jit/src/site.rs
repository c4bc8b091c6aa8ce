//! Patch sites: stable entry points whose target is swapped with one atomic store.
//!
//! # Patch protocol
//! A [`Site`] is a small stub in code memory; callers call its [`entry`](Site::entry) and never
//! hold a pointer to a trampoline. Swapping from trampoline A to B:
//!
//! 1. **B is complete.** B's bytes were copied into code memory (through the RW view) before its
//!    `Trampoline` handle existed; on aarch64 they would also be cache-maintained there. Whoever
//!    passes the handle to the swapping thread synchronizes with that write.
//! 2. **Publish with one aligned atomic store, Release.** Under the site's mutex (swaps of one site
//!    are serialized; callers never take it), the 8-byte word is stored through the RW alias of
//!    the stub's page with `AtomicU64::store(.., Release)`:
//!    - **Indirect** (default): the stub is `jmp qword [rip+2]` followed by two `int3` and the
//!      8-byte aligned slot holding B's address. Only data changes; callers load the slot and jump.
//!      A caller sees either A's or B's address, never a torn value (aligned 8-byte accesses are
//!      atomic on x86-64), and the Release store orders B's code bytes before B's address, so a
//!      caller that loaded B's address finds B's code (x86 loads are not reordered with older
//!      loads, and instruction fetch from a physical page is coherent with stores to it, whichever
//!      virtual alias they used).
//!    - **Direct** (opt-in): the stub is one 8-byte aligned word `jmp rel32; int3 x3`, so the
//!      5-byte instruction never straddles an 8-byte boundary, and the whole word is replaced by
//!      one atomic store. This is *cross-modifying code*: the Intel SDM's protocol asks the
//!      executing processor to serialize before running modified code, and HotSpot hit an x86
//!      erratum with exactly this kind of patching (JDK-8223613). Use it only where the saved
//!      indirection matters and that risk is accepted. B must be within +-2 GiB of the stub
//!      ([`JitError::TargetOutOfRange`]), which the <= 2 GiB reservation guarantees. Direct sites
//!      need the memfd double mapping ([`JitError::Unsupported`] in fallback mode).
//! 3. **Retire A.** After the store A is unreachable for new calls, but callers may still be inside
//!    it. `swap` marks A retired (once it is in no site) and returns a [`Retired`] handle; when it
//!    and all other handles of A drop, A's free is *deferred* through the `Jit`'s
//!    [`Reclaim`](crate::Reclaim), i.e. runs after a grace period, never at once.
//!
//! No page is ever writable and executable: the stub executes through the RX view and is written
//! only through the RW view (see `code_memory.rs`). In fallback mode (no memfd), an indirect stub
//! occupies two pages of one slot: the code page (RX) with `jmp [rip + page - 6]` and a data page
//! (RW, never executable) holding the 8-byte target slot, which is patched in place.
//!
//! Dropping a site retires its stub (callers may still be inside it: its free is deferred too) and
//! releases its current trampoline as if it had been swapped out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::arch;
use crate::code_memory::{lock, Slot};
use crate::error::JitError;
use crate::jit::Shared;
use crate::trampoline::{Retired, Trampoline};

/// How a site jumps to its current trampoline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SiteKind {
    /// `jmp qword [rip+disp32]` through an 8-byte data slot (default; patches data only).
    #[default]
    Indirect,
    /// `jmp rel32`, patched by rewriting the instruction (cross-modifying code; see module docs).
    Direct,
}

/// Cache-line size assumed for keeping an indirect site's target word away from code.
const CACHE_LINE: usize = 64;

/// A stable entry point whose target can be swapped while other threads call it.
pub struct Site {
    shared: Arc<Shared>,
    kind: SiteKind,
    stub: Slot,
    /// Writable address of the 8-byte word a swap stores (RW alias, or the fallback data page).
    patch: usize,
    current: Mutex<Trampoline>,
}

impl Site {
    pub(crate) fn new(
        shared: &Arc<Shared>,
        kind: SiteKind,
        initial: &Trampoline,
    ) -> Result<Site, JitError> {
        let mem = &shared.mem;
        initial.check_owner(mem.id())?;
        if initial.is_retired() {
            return Err(JitError::Retired { id: initial.id() });
        }
        let (len, word_offset, exec_len) = match (kind, mem.is_fallback()) {
            // The target word gets a cache line of its own, apart from the stub's code: a
            // swap then stores into a line no core executes from (no self-modifying-code
            // pipeline clears on callers) and no other code shares the stub's line.
            (SiteKind::Indirect, false) => (2 * CACHE_LINE, CACHE_LINE, arch::SITE_STUB_LEN),
            (SiteKind::Direct, false) => (arch::SITE_STUB_LEN, 0, arch::SITE_STUB_LEN),
            (SiteKind::Indirect, true) => (2 * mem.page_size(), mem.page_size(), mem.page_size()),
            (SiteKind::Direct, true) => {
                return Err(JitError::Unsupported(
                    "direct sites need the memfd double mapping (fallback mode)",
                ))
            }
        };
        let stub = mem.alloc(len)?;
        let mut bytes = vec![arch::INT3; word_offset + 8];
        let word = match kind {
            SiteKind::Indirect => {
                bytes[..arch::INDIRECT_STUB_LEN].copy_from_slice(&arch::indirect_stub(word_offset));
                Ok(initial.addr() as u64)
            }
            SiteKind::Direct => arch::direct_word(stub.addr, initial.addr() as usize).ok_or(
                JitError::TargetOutOfRange {
                    site: stub.addr,
                    target: initial.addr() as usize,
                },
            ),
        };
        let result = word.and_then(|word| {
            bytes[word_offset..].copy_from_slice(&word.to_le_bytes());
            // SAFETY: the stub was just allocated and is unreachable until this function returns.
            unsafe { mem.write(&stub, &bytes, exec_len) }?;
            initial.install()
        });
        if let Err(e) = result {
            // SAFETY: allocated above and never handed out.
            unsafe { mem.free(stub) };
            return Err(e);
        }
        mem.update_stats(|s| s.sites += 1);
        let patch = if mem.is_fallback() {
            stub.addr
        } else {
            stub.rw
        } + word_offset;
        Ok(Site {
            shared: shared.clone(),
            kind,
            stub,
            patch,
            current: Mutex::new(initial.clone()),
        })
    }

    /// The stable entry address callers call.
    pub fn entry(&self) -> *const u8 {
        self.stub.addr as *const u8
    }

    /// The entry as a function pointer of type `F` (e.g. `extern "C" fn(u64) -> u64`).
    ///
    /// # Safety
    /// `F` must be an `extern "C"` (System V) function pointer type, and every trampoline ever
    /// installed in this site must implement that signature (a forwarding trampoline implements
    /// its target's). The pointer may only be called while the site is alive, from a thread that
    /// the reclaimer tracks (for the runtime: a registered task), and calls must not outlive the
    /// site.
    pub unsafe fn as_fn<F: Copy>(&self) -> F {
        const { assert!(std::mem::size_of::<F>() == std::mem::size_of::<usize>()) };
        let entry = self.entry();
        // SAFETY: same size (checked above); the caller guarantees `F` is a fn pointer type.
        unsafe { std::mem::transmute_copy(&entry) }
    }

    /// The trampoline currently installed.
    pub fn current(&self) -> Trampoline {
        lock(&self.current).clone()
    }

    /// The site's kind.
    pub fn kind(&self) -> SiteKind {
        self.kind
    }

    /// Points the site at `new` and retires the previous trampoline (see the module docs).
    ///
    /// Errors: [`JitError::ForeignTrampoline`] if `new` belongs to another `Jit`,
    /// [`JitError::Retired`] if `new` is retired, [`JitError::TargetOutOfRange`] for a direct
    /// site that cannot reach `new`. On error the site is unchanged.
    pub fn swap(&self, new: &Trampoline) -> Result<Retired, JitError> {
        let old = self.swap_unthrottled(new)?;
        self.shared.throttle_backlog();
        Ok(old)
    }

    /// [`swap`](Self::swap) without the backlog throttle, for callers that hold their own locks
    /// across swaps and throttle once after releasing them (`probe/batch.rs`).
    pub(crate) fn swap_unthrottled(&self, new: &Trampoline) -> Result<Retired, JitError> {
        new.check_owner(self.shared.mem.id())?;
        let word = match self.kind {
            SiteKind::Indirect => new.addr() as u64,
            SiteKind::Direct => arch::direct_word(self.stub.addr, new.addr() as usize).ok_or(
                JitError::TargetOutOfRange {
                    site: self.stub.addr,
                    target: new.addr() as usize,
                },
            )?,
        };
        let mut current = lock(&self.current);
        new.install()?;
        // SAFETY: `patch` is the 8-byte aligned, writable (RW alias or RW data page) address of
        // the site's word, valid while the stub is allocated (as long as `self`).
        let slot = unsafe { &*(self.patch as *const AtomicU64) };
        // Release: orders the (earlier) writes of `new`'s code before its publication; callers
        // that load the new word find complete code (module docs, step 2).
        slot.store(word, Ordering::Release);
        if self.kind == SiteKind::Direct && self.shared.mem.sync_core() {
            // A direct swap is the one real cross-modifying store: with `sync_core`, make every
            // thread serialize before it next runs user code (the executing side of the Intel
            // SDM protocol). Registration succeeded at build, so this cannot fail in practice;
            // the new target is published either way.
            let _ = crate::arch::sync_all_cores();
        }
        let old = std::mem::replace(&mut *current, new.clone());
        old.uninstall();
        Ok(Retired::new(old))
    }
}

impl std::fmt::Debug for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Site")
            .field("kind", &self.kind)
            .field("entry", &self.entry())
            .field("current", &self.current())
            .finish()
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let mem = self.shared.mem.clone();
        let stub = self.stub;
        // Callers may still be inside the stub: free it only after a grace period.
        self.shared.defer_free(Box::new(move || {
            // SAFETY: deferred past a grace period after the site became unreachable.
            unsafe { mem.free(stub) };
            mem.update_stats(|s| s.sites -= 1);
        }));
        let current = self.current.get_mut().unwrap_or_else(|e| e.into_inner());
        current.uninstall();
        // The `current` handle drops with `self`, deferring the trampoline's free if it was the last.
    }
}
