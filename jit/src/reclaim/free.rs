//! A deferred free as data, and open batches of them.
//!
//! # One free
//!
//! [`CodeFree`] is what becomes of a retired trampoline or a dropped site stub once nothing
//! can reach it any more but a grace period: its slot, and for a trampoline the heap memory
//! its code references (`CodeData`). It is plain data, not a closure, so that a batch holds
//! thousands of them in one vector. [`CodeFree::run`] is the whole free, in its one order:
//! deregister the unwind information (once the slot is freed it may hold another
//! trampoline's code: `unwind.rs`), fill the slot with traps and return it, then drop the
//! referenced memory (the code that used it can no longer run).
//!
//! # Open batches
//!
//! With a reclaimer that keeps batches open (a `GraceDomain`: see
//! `tramway_runtime::grace::batch` for the algorithm and its ordering argument), a free is
//! pushed into the `Jit`'s open batch under one uncontended lock: no allocation and no
//! callback per retire. The push that finds the batch empty queues it once; the grace
//! period that takes it seals it (moving the frees out of [`OpenFrees`]), and the next push
//! starts a new batch. The batch frees its slots on the driver, taking the allocator lock
//! once per 64 slots.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tramway_runtime::grace::CallbackBatch;

use crate::code_memory::{CodeMemory, Slot};
use crate::lock;
use crate::trampoline::CodeData;

/// A deferred free of one code object (module docs). 48 bytes: a batch of them is what the
/// patcher writes and the driver reads, a cache line and a half per free when the
/// referenced memory was inline.
pub(crate) struct CodeFree {
    slot: Slot,
    kind: FreeKind,
    /// The memory the code references, boxed only when there is any (a forwarding
    /// trampoline's counter or hook cell, registered unwind information).
    data: Option<Box<CodeData>>,
}

/// What a [`CodeFree`] frees, for the counters.
#[derive(Clone, Copy)]
enum FreeKind {
    /// A trampoline that was counted as retired (installed once).
    RetiredTrampoline,
    /// A trampoline reclaimed without ever being retired.
    UnretiredTrampoline,
    /// A site's stub.
    SiteStub,
}

impl CodeFree {
    /// The free of a trampoline's slot and the memory its code references; `retired` says
    /// whether it was counted as retired (installed once).
    pub(crate) fn trampoline(slot: Slot, data: Option<Box<CodeData>>, retired: bool) -> CodeFree {
        CodeFree {
            slot,
            kind: if retired {
                FreeKind::RetiredTrampoline
            } else {
                FreeKind::UnretiredTrampoline
            },
            data,
        }
    }

    /// The free of a site's stub.
    pub(crate) fn site_stub(slot: Slot) -> CodeFree {
        CodeFree {
            slot,
            kind: FreeKind::SiteStub,
            data: None,
        }
    }

    /// The code this frees: a parked task whose stack points into it holds the free back.
    pub(crate) fn code(&self) -> Range<usize> {
        self.slot.addr..self.slot.addr + self.slot.size
    }

    /// Frees the code now (module docs: the order).
    ///
    /// # Safety
    /// No thread may be executing the code or be able to reach it: it was never reachable,
    /// or a grace period has passed since it became unreachable (and no parked task's stack
    /// references it); each free runs once.
    pub(crate) unsafe fn run(mut self, mem: &CodeMemory) {
        let mut tally = Tally::default();
        let data = tally.take_apart(&mut self);
        // SAFETY: the caller's contract; the slot's unwind information is deregistered.
        unsafe { mem.free(self.slot) };
        // Counted before the referenced memory drops: a destructor in it that panics must
        // not leave the free uncounted (retired bytes the backlog bound would go on seeing).
        tally.count(mem);
        drop(data);
    }

    /// Leaks the free: the code stays mapped, and the memory it references stays allocated.
    pub(crate) fn leak(self) {
        std::mem::forget(self);
    }
}

/// The counter updates of a run of frees, made once at its end.
#[derive(Default)]
struct Tally {
    retired: u64,
    retired_bytes: u64,
    unretired: u64,
    stubs: u64,
    unwind_deregistered: u64,
}

impl Tally {
    /// Counts `free`, deregisters its unwind information (before its slot is freed: module
    /// docs) and returns the memory to drop once the slot is freed.
    fn take_apart(&mut self, free: &mut CodeFree) -> Option<Box<CodeData>> {
        let mut data = free.data.take();
        if let Some(unwind) = data.as_mut().and_then(|d| d.unwind.take()) {
            drop(unwind);
            self.unwind_deregistered += 1;
        }
        match free.kind {
            FreeKind::RetiredTrampoline => {
                self.retired += 1;
                self.retired_bytes += free.slot.size as u64;
            }
            FreeKind::UnretiredTrampoline => self.unretired += 1,
            FreeKind::SiteStub => self.stubs += 1,
        }
        data
    }

    /// Publishes the counts (after the slots are freed).
    fn count(self, mem: &CodeMemory) {
        let stats = mem.stats();
        stats.reclaimed_many(self.retired, self.retired_bytes, self.unretired);
        stats.sites_freed(self.stubs);
        stats.unwind_deregistered(self.unwind_deregistered);
    }
}

/// Runs `frees` (see [`CodeFree::run`]) and leaves the vector empty (its capacity kept):
/// every unwind deregistration first, then the slots (one allocator lock per 64), then the
/// counters. Returns the referenced memory, for the caller to drop once it has done its own
/// counting: a destructor in it may panic, and must not lose any count.
///
/// # Safety
/// As [`CodeFree::run`], for each free.
#[must_use = "the referenced memory is to be dropped after the caller's counting"]
#[allow(
    clippy::vec_box,
    reason = "the frees' own boxes, moved rather than unboxed"
)]
unsafe fn run_all(frees: &mut Vec<CodeFree>, mem: &CodeMemory) -> Vec<Box<CodeData>> {
    let mut tally = Tally::default();
    let mut slots = Vec::with_capacity(frees.len());
    let mut datas = Vec::new();
    for mut free in frees.drain(..) {
        datas.extend(tally.take_apart(&mut free));
        slots.push(free.slot);
    }
    // SAFETY: the caller's contract; the unwind information of these slots is deregistered.
    unsafe { mem.free_all(&slots) };
    tally.count(mem);
    datas
}

/// Runs every one of `steps`, also those after one that panics, then resumes the first panic
/// (a later one is dropped). A batch of frees runs its steps this way: one panicking destructor
/// in memory a trampoline referenced must not leave the other frees unrun and uncounted, and
/// a second panic while unwinding from the first would abort the process.
pub(crate) fn run_each<F: FnOnce()>(steps: impl IntoIterator<Item = F>) {
    let mut first_panic = None;
    for step in steps {
        if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(step)) {
            first_panic.get_or_insert(payload);
        }
    }
    if let Some(payload) = first_panic {
        std::panic::resume_unwind(payload);
    }
}

/// Lowers the counter `.0` by `.1` when dropped, also when the scope unwinds: a count of work
/// in flight (frees not run yet, batches not queued yet) must come down whatever happens to the
/// work, or `Retirement::drain` and its barrier would wait for it in vain.
pub(crate) struct LowerOnDrop<'a>(pub(crate) &'a AtomicU64, pub(crate) u64);

impl Drop for LowerOnDrop<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(self.1, Ordering::Release);
    }
}

/// The largest batch vector kept for reuse (in frees; about 1.5 MiB): a burst larger than
/// this does not pin its peak memory for the life of the `Jit`.
const MAX_SPARE_FREES: usize = 1 << 14;

/// The frees that the next grace period to be claimed will take (module docs).
#[derive(Default)]
pub(crate) struct OpenFrees {
    frees: Vec<CodeFree>,
    /// An empty vector a batch that ran gave back: the next batch collects into it rather
    /// than growing a new one from nothing (a growing vector's reallocations were the
    /// largest cost of a retire in the `urcu_compare` profile).
    spare: Vec<CodeFree>,
    /// A batch over this state is queued with the reclaimer and not sealed yet.
    queued: bool,
}

impl OpenFrees {
    /// Adds `free`; returns whether the caller must queue a batch (none is queued), having
    /// raised `queuing` under the lock (the caller lowers it once the batch is queued).
    pub(crate) fn push(open: &Mutex<OpenFrees>, free: CodeFree, queuing: &AtomicU64) -> bool {
        let mut open = lock(open);
        open.frees.push(free);
        let opens = !std::mem::replace(&mut open.queued, true);
        if opens {
            queuing.fetch_add(1, Ordering::Relaxed);
        }
        opens
    }
}

/// A batch queued with the reclaimer: open (its frees still in the shared [`OpenFrees`])
/// until sealed, then owning its frees.
pub(crate) struct QueuedFrees {
    open: Arc<Mutex<OpenFrees>>,
    frees: Vec<CodeFree>,
    mem: Arc<CodeMemory>,
    /// The `Jit`'s count of frees not run yet (`Retirement::drain`).
    pending: Arc<AtomicU64>,
}

impl QueuedFrees {
    pub(crate) fn new(
        open: Arc<Mutex<OpenFrees>>,
        mem: Arc<CodeMemory>,
        pending: Arc<AtomicU64>,
    ) -> Self {
        QueuedFrees {
            open,
            frees: Vec::new(),
            mem,
            pending,
        }
    }
}

impl CallbackBatch for QueuedFrees {
    fn seal(&mut self) {
        debug_assert!(self.frees.is_empty(), "a batch is sealed once");
        let mut open = lock(&self.open);
        let spare = std::mem::take(&mut open.spare);
        self.frees = std::mem::replace(&mut open.frees, spare);
        open.queued = false;
    }

    fn split_referenced(
        &mut self,
        referenced: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Option<Box<dyn CallbackBatch>> {
        let (held, free): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.frees).into_iter().partition(|f| {
                let code = f.code();
                referenced(code.start, code.end)
            });
        self.frees = free;
        (!held.is_empty()).then(|| {
            Box::new(QueuedFrees {
                open: Arc::clone(&self.open),
                frees: held,
                mem: Arc::clone(&self.mem),
                pending: Arc::clone(&self.pending),
            }) as Box<dyn CallbackBatch>
        })
    }

    fn is_empty(&self) -> bool {
        self.frees.is_empty()
    }

    fn run(mut self: Box<Self>) {
        let mut frees = std::mem::take(&mut self.frees);
        let n = frees.len() as u64;
        // SAFETY: the grace domain runs a batch after the GP that sealed it, and only the
        // frees that no parked task references (`CallbackBatch`); each batch runs once.
        let referenced = unsafe { run_all(&mut frees, &self.mem) };
        if frees.capacity() <= MAX_SPARE_FREES {
            let mut open = lock(&self.open);
            if open.spare.capacity() < frees.capacity() {
                open.spare = frees;
            }
        }
        // The frees count as run once their referenced memory is dropped, below.
        let _ran = LowerOnDrop(&self.pending, n);
        run_each(referenced.into_iter().map(|data| move || drop(data)));
    }
}

impl Drop for QueuedFrees {
    /// A batch dropped without running (a domain that leaks held callbacks at shutdown
    /// forgets them; this is the defensive case) leaks its frees: running them could free
    /// code under readers, and dropping them would free memory live code uses.
    fn drop(&mut self) {
        std::mem::take(&mut self.frees)
            .into_iter()
            .for_each(CodeFree::leak);
    }
}
