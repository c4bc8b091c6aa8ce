//! Trampolines: handles to emitted code and their lifecycle.
//!
//! # Lifecycle
//! A [`Trampoline`] is a cheap clonable handle (a reference count, in a heap block that is
//! reused: `recycled.rs`). Its code is freed when the last handle drops, and *how* depends on
//! whether code could ever have reached it:
//! - never installed in a site and never the target of a forwarding trampoline: nobody can be
//!   executing it (calling [`Trampoline::addr`] directly requires holding a handle), so the slot is
//!   freed at once;
//! - otherwise (it became *reachable*): the free is handed to the `Jit`'s [`Reclaim`](crate::Reclaim)
//!   implementation (through `Retirement::defer_free`), and runs after a grace period. The
//!   deferred free (`reclaim/free.rs`) owns the heap memory the code references (`CodeData`:
//!   call counter, hook cell, and the registered unwind information, which the free
//!   deregisters *before* it frees the slot: `unwind.rs`); what runs it holds the `Arc` of the
//!   code memory (not the `Jit`, to avoid cycles). The whole chain is drawn in
//!   `reclaim/mod.rs`.
//!
//! A trampoline may be installed in several sites. It becomes *retired* when it is swapped out of
//! (or its site drops from) the last site it was installed in; a retired trampoline can never be
//! installed or targeted again ([`JitError::Retired`]). Counters move `live -> retired -> reclaimed`.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::LocalKey;

use crate::arch::{self, FrameRows};
use crate::assembler::Assembler;
use crate::code_memory::Slot;
use crate::emitter::Emitter;
use crate::error::JitError;
use crate::jit_core::JitCore;
use crate::reclaim::CodeFree;
use crate::recycled::{Recyclable, RecycleBin, Recycled};
use crate::unwind::UnwindRegistration;

/// Set once the trampoline is retired; never cleared.
const RETIRED: u64 = 1 << 63;
/// Set once code may have reached the trampoline (installed, or targeted by a forwarding one).
const REACHABLE: u64 = 1 << 62;
/// Set by [`Retired::leak`]: the code is never freed (wins over [`RECLAIM_NOW`]).
const LEAK: u64 = 1 << 61;
/// Set by [`Retired::reclaim_now`]: the code is freed without a grace period.
const RECLAIM_NOW: u64 = 1 << 60;
/// Number of sites the trampoline is installed in.
const INSTALLS: u64 = RECLAIM_NOW - 1;

/// The next unused block of trampoline ids (see [`TrampolineIds`]).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);
/// How many ids an emitter takes from [`NEXT_ID`] at a time.
const ID_BLOCK: u64 = 1024;

/// A block of process-unique trampoline ids, owned by one emitter (`emitter.rs`). Ids come
/// from the global counter [`ID_BLOCK`] at a time, so an emission does not pay a locked add
/// on a line every emitting thread writes (about 3 ns on the retire path, measured in
/// BENCHMARKS.md). Ids are therefore unique but not ordered across emitters.
///
/// Owned by the emitter (the block was a thread-local before), it is no thread-local state
/// that a green thread migrating in the middle of an emission could keep, and an emission
/// skips the thread-local's state check.
#[derive(Default)]
pub(crate) struct TrampolineIds {
    next: u64,
    end: u64,
}

impl TrampolineIds {
    /// The next id (never 0).
    fn take(&mut self) -> u64 {
        if self.next == self.end {
            self.next = NEXT_ID.fetch_add(ID_BLOCK, Ordering::Relaxed);
            self.end = self.next + ID_BLOCK;
        }
        self.next += 1;
        self.next - 1
    }
}

/// Heap memory a trampoline's code references by address. It is freed together with the
/// code (after its grace period, if the code was reachable) and leaked with it, never before.
#[derive(Default)]
pub(crate) struct CodeData {
    /// The call counter a forwarding trampoline increments ([`Trampoline::calls`]).
    pub(crate) calls: Option<Box<AtomicU64>>,
    /// Anything else the code embeds the address of (a forwarding hook's cell). Never read
    /// from Rust: it is held only so that it is dropped (or leaked) together with the code.
    #[allow(dead_code)]
    pub(crate) referenced: Option<Box<dyn Send + Sync>>,
    /// The code's `.eh_frame`, registered with the system unwinder (`unwind.rs`); set by
    /// [`Trampoline::emit`], dropped (deregistered) before the slot is freed.
    pub(crate) unwind: Option<UnwindRegistration>,
}

impl CodeData {
    /// Whether there is nothing to keep alive with the code (plain custom code).
    pub(crate) fn is_empty(&self) -> bool {
        self.calls.is_none() && self.referenced.is_none() && self.unwind.is_none()
    }
}

/// A handle to emitted code.
#[derive(Clone)]
pub struct Trampoline {
    inner: Recycled<TrampolineInner>,
}

/// What a [`Trampoline`] handle shares.
struct TrampolineInner {
    core: Arc<JitCore>,
    id: u64,
    slot: Slot,
    len: usize,
    /// Boxed only when there is any (`CodeData::is_empty`): plain custom code carries none,
    /// and a smaller handle is cheaper to create and to retire.
    data: Option<Box<CodeData>>,
    /// [`RETIRED`], [`REACHABLE`], how to dispose of the code ([`LEAK`], [`RECLAIM_NOW`]) and
    /// the [`INSTALLS`] count, in one word (a separate byte cost a store-forwarding stall when
    /// the handle was built).
    state: AtomicU64,
    /// A forwarding target; dropped after this trampoline's own free has been deferred.
    _keepalive: Option<Trampoline>,
}

impl Trampoline {
    /// Emits code with `emit(ops, address it will run at)`, copies it into code memory, and
    /// returns the handle. The code is complete before this returns.
    ///
    /// `emit` runs at the address of the slot the code is copied into, usually once. With
    /// `len` known (the crate's own bodies, whose length depends only on their shape) the slot
    /// is allocated for it. Otherwise (custom code) the slot is a guess: the size of the last
    /// custom code this `Jit` emitted, so that code of a steady shape is assembled once; if
    /// the code needs another slot size, `emit` runs again at a slot of the right size, and
    /// both passes must produce the same length.
    ///
    /// `emit` sets its third argument (`None` when it is called) to the frame rows of code that
    /// calls out (a hook-calling forwarding body); with the `Jit`'s unwind information on, the
    /// rows are registered after the code is written and before the handle exists
    /// (`unwind.rs`).
    pub(crate) fn emit(
        core: &Arc<JitCore>,
        emit: &dyn Fn(&mut Assembler, usize, &mut Option<FrameRows>),
        len: Option<usize>,
        data: CodeData,
        keepalive: Option<Trampoline>,
    ) -> Result<Trampoline, JitError> {
        // Back in the cache once the code is in its slot (`emitter.rs`); dropped if a pass
        // unwinds.
        let mut emitter = core.emitter.take(&core.mem);
        let made = Self::emit_with(core, &mut emitter, emit, len, data, keepalive);
        core.emitter.put(emitter);
        made
    }

    /// [`emit`](Self::emit) with `emitter`'s assembler, slot runs and ids. It and
    /// [`finish`](Self::finish) are inlined into `emit`, so that the slot, the result and the handle's fields are not
    /// passed between functions in memory: such a copy reads with wide loads what was just
    /// written with narrow stores, and stalls on store-to-load forwarding (before, those
    /// copies were the hottest instructions of an emission under `perf`).
    #[inline(always)]
    fn emit_with(
        core: &Arc<JitCore>,
        emitter: &mut Emitter,
        emit: &dyn Fn(&mut Assembler, usize, &mut Option<FrameRows>),
        len: Option<usize>,
        data: CodeData,
        keepalive: Option<Trampoline>,
    ) -> Result<Trampoline, JitError> {
        let Emitter { ops, slots, ids } = emitter;
        let mem = &core.mem;
        // The frame rows of the last pass, written in place: returned by value, the mostly
        // empty `Option` was copied whole, and the copy's wide loads of narrow stores cost
        // more than assembling the code (store-to-load forwarding fails).
        let mut rows = None;
        let mut assemble = |addr: usize| {
            ops.rebase(addr);
            rows = None;
            emit(ops, addr, &mut rows);
            ops.commit()
                .map_err(|e| JitError::Assemble(e.to_string()))?;
            Ok::<_, JitError>(ops.code().len())
        };
        let mut unfinished = Unfinished(mem, None);
        let first = match len {
            Some(len) => len,
            None => {
                let len = match slots.alloc_mapped(core.custom_len_hint.load(Ordering::Relaxed)) {
                    // Custom code, assembled at a guessed slot: kept if its size class fits.
                    Some(slot) => {
                        unfinished.1 = Some(slot);
                        let len = assemble(slot.addr)?;
                        if mem.slot_size(len)? == slot.size {
                            return Self::finish(
                                core,
                                ids,
                                unfinished,
                                ops.code(),
                                rows.as_ref(),
                                data,
                                keepalive,
                            );
                        }
                        unfinished.replace(None);
                        len
                    }
                    // No slot of the guessed size without mapping a chunk: a sizing pass at
                    // the reservation's base.
                    None => assemble(mem.range().0)?,
                };
                core.custom_len_hint.store(len, Ordering::Relaxed);
                len
            }
        };
        let slot = slots.alloc(first)?;
        unfinished.replace(Some(slot));
        let second = assemble(slot.addr)?;
        if second != first {
            return Err(JitError::EmitLengthChanged { first, second });
        }
        Self::finish(
            core,
            ids,
            unfinished,
            ops.code(),
            rows.as_ref(),
            data,
            keepalive,
        )
    }

    /// Writes the assembled `bytes` into the slot `unfinished` holds, registers their unwind
    /// rows, and returns the handle (the end of [`emit`](Self::emit)).
    #[inline(always)]
    fn finish(
        core: &Arc<JitCore>,
        ids: &mut TrampolineIds,
        mut unfinished: Unfinished<'_>,
        bytes: &[u8],
        rows: Option<&FrameRows>,
        mut data: CodeData,
        keepalive: Option<Trampoline>,
    ) -> Result<Trampoline, JitError> {
        let mem = &core.mem;
        let slot = *unfinished.slot();
        // SAFETY: the slot was just allocated and is unreachable from any site.
        unsafe { mem.write(&slot, bytes, bytes.len()) }?;
        unfinished.1 = None;
        if let Some(rows) = rows.filter(|_| core.unwind_info) {
            // SAFETY: the code is written at `slot.addr`, the rows were recorded while
            // assembling exactly these bytes, and the slot is ours alone (any earlier
            // registration of its range was dropped before its previous free). The
            // registration lives in `data`, which the free path drops before the slot.
            data.unwind = Some(unsafe {
                UnwindRegistration::register(
                    &arch::CIE,
                    slot.addr,
                    bytes.len(),
                    &arch::cfa_program(rows),
                )
            });
            mem.stats().unwind_registered();
        }
        mem.stats().emitted();
        let id = ids.take();
        core.profiling.code_loaded("code", id, slot.addr, bytes);
        Ok(Trampoline {
            inner: Recycled::new(TrampolineInner {
                core: core.clone(),
                id,
                slot,
                len: bytes.len(),
                data: (!data.is_empty()).then(|| Box::new(data)),
                state: AtomicU64::new(0),
                _keepalive: keepalive,
            }),
        })
    }

    /// Entry address of the code (in the RX view).
    ///
    /// Calling it directly is only sound while a handle is held and the code's signature contract
    /// holds; callers that can race with swaps should call a [`Site`](crate::Site) instead.
    pub fn addr(&self) -> *const u8 {
        self.inner.slot.addr as *const u8
    }

    /// Length of the emitted code in bytes.
    pub fn len(&self) -> usize {
        self.inner.len
    }

    /// Whether the emitted code is empty.
    pub fn is_empty(&self) -> bool {
        self.inner.len == 0
    }

    /// Calls counted by a forwarding trampoline; 0 for custom code.
    pub fn calls(&self) -> u64 {
        self.inner
            .data
            .as_ref()
            .and_then(|d| d.calls.as_ref())
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Whether the trampoline has been retired (swapped out of the last site it was installed in).
    pub fn is_retired(&self) -> bool {
        self.inner.state.load(Ordering::Acquire) & RETIRED != 0
    }

    /// A process-unique id (never 0). Ids are unique but not ordered by emission across
    /// concurrent emissions: each emitter takes them in blocks.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// Whether both handles refer to the same trampoline.
    pub fn ptr_eq(&self, other: &Trampoline) -> bool {
        Recycled::ptr_eq(&self.inner, &other.inner)
    }

    /// Fails with `ForeignTrampoline` unless the trampoline belongs to the code memory `mem_id`.
    pub(crate) fn check_owner(&self, mem_id: u64) -> Result<(), JitError> {
        if self.inner.core.id() == mem_id {
            Ok(())
        } else {
            Err(JitError::ForeignTrampoline { id: self.id() })
        }
    }

    /// Atomically applies `f` to the state word unless the trampoline is retired.
    fn update_unless_retired(&self, f: impl Fn(u64) -> u64) -> Result<(), JitError> {
        self.inner
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                (s & RETIRED == 0).then(|| f(s))
            })
            .map(drop)
            .map_err(|_| JitError::Retired { id: self.id() })
    }

    /// Records an installation in a site (fails if retired).
    pub(crate) fn install(&self) -> Result<(), JitError> {
        self.update_unless_retired(|s| (s + 1) | REACHABLE)
    }

    /// Records that another trampoline's code jumps here (fails if retired).
    pub(crate) fn mark_reachable(&self) -> Result<(), JitError> {
        self.update_unless_retired(|s| s | REACHABLE)
    }

    /// Undoes an [`install`](Self::install) that was never published (a failed probe batch):
    /// the count drops but, unlike [`uninstall`](Self::uninstall), the trampoline is not
    /// retired; it stays usable.
    pub(crate) fn unpin(&self) {
        let prev = self.inner.state.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(prev & INSTALLS > 0, "unpin without install");
    }

    /// Records the removal from a site; retires the trampoline when it was the last one.
    pub(crate) fn uninstall(&self) {
        let prev = self
            .inner
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                debug_assert!(s & INSTALLS > 0 && s & RETIRED == 0);
                Some(if s & INSTALLS == 1 {
                    (s - 1) | RETIRED
                } else {
                    s - 1
                })
            })
            .expect("the closure never fails");
        if prev & INSTALLS == 1 {
            self.inner.core.mem.stats().retired(self.inner.slot.size);
        }
    }
}

impl fmt::Debug for Trampoline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Trampoline")
            .field("id", &self.id())
            .field("addr", &self.addr())
            .field("len", &self.len())
            .field("retired", &self.is_retired())
            .finish()
    }
}

thread_local! {
    /// This thread's spare handle block (`recycled.rs`).
    static HANDLE_BIN: RecycleBin<TrampolineInner> = const { RecycleBin::new() };
}

impl Recyclable for TrampolineInner {
    fn bin() -> &'static LocalKey<RecycleBin<Self>> {
        &HANDLE_BIN
    }
}

impl Drop for TrampolineInner {
    fn drop(&mut self) {
        let state = *self.state.get_mut();
        let retired = state & RETIRED != 0;
        debug_assert_eq!(
            state & INSTALLS,
            0,
            "an installed trampoline is held by its site"
        );
        let slot = self.slot;
        let data = self.data.take();
        if state & LEAK != 0 {
            // The code stays mapped for the life of the process: keep the code memory (and
            // the heap memory the code references) alive forever.
            let mem = &self.core.mem;
            mem.stats().leaked(retired.then_some(slot.size));
            std::mem::forget(data);
            std::mem::forget(Arc::clone(mem));
        } else {
            let free = CodeFree::trampoline(slot, data, retired);
            if state & (REACHABLE | RECLAIM_NOW) != REACHABLE {
                // SAFETY: the code was never reachable (nothing can be inside it), or
                // the `reclaim_now` caller promised that nothing is.
                unsafe { free.run(&self.core.mem) };
            } else {
                self.core.retirement.defer_free(free);
            }
        }
        // `_keepalive` drops after this, so a forwarding target's free is deferred after ours.
    }
}

/// Frees the slot unless the emission completes, also if a pass unwinds (a panicking
/// emit closure): nothing can reach the slot yet.
struct Unfinished<'a>(&'a crate::code_memory::CodeMemory, Option<Slot>);
impl Unfinished<'_> {
    fn slot(&self) -> &Slot {
        self.1.as_ref().expect("set until the emission completes")
    }
    /// Frees the current slot, if any, and takes `next` instead.
    fn replace(&mut self, next: Option<Slot>) {
        if let Some(slot) = std::mem::replace(&mut self.1, next) {
            // SAFETY: allocated by `emit`, never written into a site or handed out.
            unsafe { self.0.free(slot) };
        }
    }
}
impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.1.take() {
            // SAFETY: allocated by `emit`, never written into a site or handed out.
            unsafe { self.0.free(slot) };
        }
    }
}

/// The trampoline a [`Site::swap`](crate::Site::swap) replaced.
///
/// Dropping it (with every other handle of that trampoline) defers the free of the code through
/// the `Jit`'s reclaimer. If the trampoline is still installed in another site it is not retired
/// yet, and nothing is freed until it is.
#[must_use = "dropping a Retired handle schedules reclamation; use leak() to keep the code forever"]
#[derive(Debug)]
pub struct Retired {
    tramp: Trampoline,
}

impl Retired {
    pub(crate) fn new(tramp: Trampoline) -> Self {
        Retired { tramp }
    }

    /// The replaced trampoline.
    pub fn trampoline(&self) -> &Trampoline {
        &self.tramp
    }

    /// Never frees the code: it stays mapped (and counted in `retired` and `leaked`) for the life
    /// of the process, even after the `Jit` drops.
    pub fn leak(self) {
        self.tramp.inner.state.fetch_or(LEAK, Ordering::Relaxed);
    }

    /// Frees the code as soon as the last handle drops (now, if this is the last one), without a
    /// grace period.
    ///
    /// # Safety
    /// When the last handle of the trampoline drops, no thread may be executing it or be about to
    /// (through a site that was swapped, or through a forwarding trampoline that targets it).
    /// If [`leak`](Self::leak) was called on another `Retired` of the same trampoline (it was
    /// swapped out of several sites), the code is leaked.
    pub unsafe fn reclaim_now(self) {
        self.tramp
            .inner
            .state
            .fetch_or(RECLAIM_NOW, Ordering::Relaxed);
    }
}
