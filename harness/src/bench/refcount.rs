//! The **refcount** strategy: every call pins the current code with a per-trampoline atomic
//! reference count, and the patcher frees retired code once its count is zero.
//!
//! # Design
//! Callers do not go through a patch site. A shared `RcShared::cur` points at a
//! [`Record`] `{ code, refs }`; a call is
//!
//! ```text
//! p = cur.load(Acquire)
//! p.refs.fetch_add(1, SeqCst)          // (A) announce
//! if cur.load(SeqCst) != p: undo, retry // (B) re-check
//! f = p.code.load(Relaxed); r = f(x)    // call
//! p.refs.fetch_sub(1, Release)          // (D) done
//! ```
//!
//! The patcher publishes a new record with `cur.swap(new, SeqCst)` (S), queues the old one,
//! and frees its code once it reads `old.refs.load(SeqCst) == 0` (L).
//!
//! # Why it is safe
//! * **Records are type-stable.** Record memory is never freed while callers exist (they live
//!   in an arena owned by [`RcShared`], which every caller holds), so the increment (A) of a
//!   stale pointer touches valid memory. Only the *code* is freed; a record whose code was
//!   freed goes to a free list and is reused for new code.
//! * **No call into freed code.** All of (A), (B), (S), (L) are `SeqCst`, so they are totally
//!   ordered. Suppose the patcher's (L) read `refs == 0` without this caller's (A). Then
//!   (L) precedes (A), and (S) precedes (L) in program order, so (S) precedes (B): the
//!   re-check sees the new pointer and the caller retries without calling. Otherwise (L)
//!   saw the increment and the patcher waits; the caller's (D) is a Release that the
//!   patcher's later (L) (an acquire) reads from, so the whole call happens-before the free.
//! * **Reuse (ABA) is harmless.** If a stale caller's re-check finds `p` current again
//!   because the record was reused, the caller holds a reference *to the current
//!   incarnation*: it loads `code` after (B), whose acquire synchronizes with the
//!   publication that wrote that code, and the patcher cannot free this incarnation's
//!   code while the reference is held (the argument above, applied to its next retirement).
//!   A stale increment on a pooled record only delays a later free.
//!
//! Cost per call: two atomic read-modify-writes on a cache line that every worker writes,
//! which is the point of the comparison.

use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tramway_jit::Trampoline;

use super::histogram::Histogram;

/// The signature of the code records point at.
pub type BodyFn = extern "C" fn(u64) -> u64;

/// One published version of the code. 128-byte aligned so that two records never share a
/// cache line (that would add false sharing the design does not need).
#[repr(align(128))]
pub struct Record {
    /// Address of the code (a [`BodyFn`]).
    code: AtomicUsize,
    /// Callers currently inside (or announcing a call into) this record's code.
    refs: AtomicUsize,
}

/// What callers share: the current record and the arena that keeps all records alive.
pub struct RcShared {
    cur: AtomicPtr<Record>,
    /// Every record ever created; only the patcher pushes. Never shrinks while callers exist.
    /// Boxed so that records keep their addresses when the vector grows.
    #[allow(clippy::vec_box)]
    arena: Mutex<Vec<Box<Record>>>,
}

impl RcShared {
    /// Calls the current code with `x`.
    #[inline(always)]
    pub fn call(&self, x: u64) -> u64 {
        loop {
            let p = self.cur.load(Ordering::Acquire);
            // SAFETY: `p` came from `cur`, which only ever holds records of `arena`; records
            // are boxed (stable addresses) and freed only when `self` drops.
            let rec = unsafe { &*p };
            rec.refs.fetch_add(1, Ordering::SeqCst);
            if self.cur.load(Ordering::SeqCst) == p {
                let code = rec.code.load(Ordering::Relaxed);
                // SAFETY: `code` is the address of a live `BodyFn`: it was written before the
                // publication our re-check read (acquire), and cannot be freed while we hold
                // the reference (module docs).
                let f: BodyFn = unsafe { std::mem::transmute::<usize, BodyFn>(code) };
                let r = f(x);
                rec.refs.fetch_sub(1, Ordering::Release);
                return r;
            }
            rec.refs.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The patcher's side: publication, the retired list and the free list.
pub struct RcPatcher {
    shared: Arc<RcShared>,
    /// The code handle of each record's current incarnation (by arena index).
    code: Vec<Option<Trampoline>>,
    /// Retired records with their retirement time.
    retired: Vec<(usize, Instant)>,
    free: Vec<usize>,
    current: usize,
    /// Addresses of the arena's records (so that polling takes no lock).
    ptrs: Vec<usize>,
}

impl RcPatcher {
    /// Publishes `initial` (whose address must be a [`BodyFn`]).
    pub fn new(initial: Trampoline) -> (RcPatcher, Arc<RcShared>) {
        let rec = Box::new(Record {
            code: AtomicUsize::new(initial.addr() as usize),
            refs: AtomicUsize::new(0),
        });
        let ptr = &*rec as *const Record as *mut Record;
        let shared = Arc::new(RcShared {
            cur: AtomicPtr::new(ptr),
            arena: Mutex::new(vec![rec]),
        });
        let patcher = RcPatcher {
            shared: shared.clone(),
            code: vec![Some(initial)],
            retired: Vec::new(),
            free: Vec::new(),
            current: 0,
            ptrs: vec![ptr as usize],
        };
        (patcher, shared)
    }

    fn record(&self, index: usize) -> *mut Record {
        self.ptrs[index] as *mut Record
    }

    /// Publishes `next` and retires the current code; then tries to free retired code,
    /// spinning briefly for the old record (calls are a few ns long).
    pub fn swap(&mut self, next: Trampoline, gp: &Histogram) {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                let mut arena = self.shared.arena.lock().unwrap_or_else(|e| e.into_inner());
                let i = arena.len();
                let rec = Box::new(Record {
                    code: AtomicUsize::new(0),
                    refs: AtomicUsize::new(0),
                });
                self.ptrs.push(&*rec as *const Record as usize);
                arena.push(rec);
                self.code.push(None);
                i
            }
        };
        let ptr = self.record(index);
        // SAFETY: arena records live as long as `shared`.
        let rec = unsafe { &*ptr };
        rec.code.store(next.addr() as usize, Ordering::Relaxed);
        self.code[index] = Some(next);
        // (S): SeqCst, and a release for the code address stored above.
        self.shared.cur.swap(ptr, Ordering::SeqCst);
        let old = std::mem::replace(&mut self.current, index);
        self.retired.push((old, Instant::now()));
        for _ in 0..64 {
            if self.poll(gp) == 0 {
                return;
            }
            std::hint::spin_loop();
        }
    }

    /// Frees the code of every retired record whose count is zero; returns how many remain.
    pub fn poll(&mut self, gp: &Histogram) -> usize {
        let mut i = 0;
        while i < self.retired.len() {
            let (index, since) = self.retired[i];
            // SAFETY: arena records live as long as `shared`.
            let rec = unsafe { &*self.record(index) };
            // (L): SeqCst (module docs); acquire pairs with the callers' release decrement.
            if rec.refs.load(Ordering::SeqCst) == 0 {
                // Never installed in a site: dropping the last handle frees the code at once.
                self.code[index] = None;
                gp.record(since.elapsed());
                self.free.push(index);
                self.retired.swap_remove(i);
            } else {
                i += 1;
            }
        }
        self.retired.len()
    }

    /// Retired records whose code is not freed yet.
    pub fn retired(&self) -> usize {
        self.retired.len()
    }

    /// Waits (polling) until all retired code is freed; callers must be stopped or live.
    pub fn drain(&mut self, gp: &Histogram) {
        while self.poll(gp) > 0 {
            std::thread::sleep(Duration::from_micros(10));
        }
    }
}
