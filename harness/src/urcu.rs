//! liburcu QSBR as a yardstick: safe wrappers over the C shim `harness/csrc/urcu_shim.c`,
//! for `benches/urcu_compare/main.rs`.
//!
//! # Availability
//! `harness/build.rs` compiles the shim only where a probe against `<urcu/urcu-qsbr.h>` links
//! with `-lurcu-qsbr` (`apt-get install liburcu-dev`), and then sets `cfg(tramway_urcu)`.
//! [`available`] says which build this is; [`Urcu::get`] hands out the token every operation
//! starts from only when it is true. Without liburcu the functions below still exist (so the
//! bench compiles everywhere) but nothing can reach the C side: the stand-ins behind them
//! are unreachable because no [`Urcu`] can be made. `TRAMWAY_NO_URCU=1` builds that way on
//! purpose.
//!
//! # liburcu's reader contract, and where these types keep it
//! - A thread registers once ([`Urcu::register_thread`]; a second registration panics
//!   instead of tripping liburcu's assertion) and is then **online**: grace periods wait for
//!   it until it reports a quiescent state or goes offline. [`UrcuThread`] is the
//!   registration; it is `!Send` and `!Sync`, so `&UrcuThread` proves the calling thread is
//!   the registered one. Dropping it unregisters (liburcu goes offline first).
//! - Only an online thread may read RCU-protected data ([`UrcuThread::read_burst`],
//!   [`UrcuThread::reader_loop`]) or queue a callback ([`UrcuThread::retire`]: `call_rcu`'s
//!   QSBR contract). These check the online state the guard tracks and panic otherwise.
//! - `quiescent_state` on an offline thread would silently bring it online in liburcu;
//!   [`UrcuThread::quiescent`] does nothing while offline, as tramway's
//!   `ThreadRegistration::quiescent` does.
//! - `rcu_barrier` refuses an online caller (QSBR: online means "inside a read-side critical
//!   section"); [`UrcuThread::barrier`] goes offline around it.
//! - `synchronize_rcu` may be called by any thread ([`Urcu::synchronize`]): liburcu takes an
//!   online caller offline while it waits.

#![warn(clippy::undocumented_unsafe_blocks)]

use std::cell::Cell;
use std::ffi::c_void;
use std::marker::PhantomData;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};

/// The signature of the body both sides of the comparison call.
pub type BodyFn = extern "C" fn(u64) -> u64;

/// Whether this build has the liburcu shim (see the [module docs](self)).
pub fn available() -> bool {
    cfg!(tramway_urcu)
}

/// liburcu's version as pkg-config reported it at build time (`"unknown"` without
/// pkg-config), or `None` without liburcu.
pub fn version() -> Option<&'static str> {
    #[cfg(tramway_urcu)]
    return Some(env!("TRAMWAY_URCU_VERSION"));
    #[cfg(not(tramway_urcu))]
    None
}

/// One line saying why liburcu is not there and how to get it (for the bench to print).
pub const MISSING: &str = "liburcu QSBR was not found when tramway-harness was built \
    (or TRAMWAY_NO_URCU was set): install it with `apt-get install liburcu-dev`, then \
    `cargo clean -p tramway-harness` and run again";

/// Proof that the shim is linked: every liburcu operation starts from it.
#[derive(Clone, Copy, Debug)]
pub struct Urcu {
    _private: (),
}

thread_local! {
    /// Whether this thread holds an [`UrcuThread`] (liburcu asserts on a second
    /// registration; we panic with a message instead).
    static REGISTERED: Cell<bool> = const { Cell::new(false) };
}

impl Urcu {
    /// The token, if this build has the shim.
    pub fn get() -> Option<Urcu> {
        available().then_some(Urcu { _private: () })
    }

    /// `synchronize_rcu()`: one grace period, run in the calling thread. Any thread may call
    /// it; an online registered caller is taken offline while it waits.
    pub fn synchronize(self) {
        // SAFETY: the token proves the shim is linked; liburcu allows synchronize_rcu from
        // any thread that is not inside a read-side critical section, and an online QSBR
        // caller is handled by liburcu itself (offline while it waits).
        unsafe { sys::tw_urcu_synchronize() }
    }

    /// Registers the calling thread as a QSBR reader; it is online until
    /// [`UrcuThread::offline`] or the guard drops.
    ///
    /// Panics if the thread is registered already.
    pub fn register_thread(self) -> UrcuThread {
        REGISTERED.with(|r| {
            assert!(!r.get(), "this thread is registered with liburcu already");
            r.set(true);
        });
        // SAFETY: the token proves the shim is linked; REGISTERED proves this thread holds
        // no registration yet, which is all liburcu's register requires.
        unsafe { sys::tw_urcu_register_thread() };
        UrcuThread {
            online: Cell::new(true),
            _not_send: PhantomData,
        }
    }
}

/// A thread's liburcu QSBR registration (see the [module docs](self) for the contract).
#[derive(Debug)]
pub struct UrcuThread {
    /// Mirrors liburcu's per-thread state: set by registration and `online`, cleared by
    /// `offline`. Only this thread touches it (the guard is `!Send` and `!Sync`).
    online: Cell<bool>,
    _not_send: PhantomData<*const ()>,
}

impl UrcuThread {
    /// Reports a quiescent state (`rcu_quiescent_state()`); nothing while offline.
    #[inline]
    pub fn quiescent(&self) {
        if self.online.get() {
            // SAFETY: the guard proves this thread is registered, and it is online, the
            // state in which liburcu expects quiescent states.
            unsafe { sys::tw_urcu_quiescent_state() }
        }
    }

    /// Goes offline (`rcu_thread_offline()`): quiescent until [`online`](Self::online).
    pub fn offline(&self) {
        if self.online.replace(false) {
            // SAFETY: registered (the guard) and online (checked): a valid transition.
            unsafe { sys::tw_urcu_thread_offline() }
        }
    }

    /// Comes back online (`rcu_thread_online()`; no-op if online).
    pub fn online(&self) {
        if !self.online.replace(true) {
            // SAFETY: registered (the guard) and offline (checked): a valid transition.
            unsafe { sys::tw_urcu_thread_online() }
        }
    }

    /// Whether the thread is online.
    pub fn is_online(&self) -> bool {
        self.online.get()
    }

    fn assert_online(&self, what: &str) {
        assert!(self.online.get(), "{what} needs an online liburcu thread");
    }

    /// `k` dependent calls of the body in `slot`, each through a fresh `rcu_dereference`,
    /// starting from `acc`; returns the last result. No quiescent state is reported.
    ///
    /// Panics if the thread is offline.
    pub fn read_burst(&self, slot: &FnSlot, k: u64, acc: u64) -> u64 {
        self.assert_online("read_burst");
        // SAFETY: the slot holds a `BodyFn` that stays callable while the slot lives
        // (`FnSlot::new`'s contract), and the slot outlives this call; the thread is
        // registered and online, so it may read RCU-protected data.
        unsafe { sys::tw_urcu_read_burst(slot.ptr.as_ptr(), k, acc) }
    }

    /// The reader loop: `k` calls of the body in `slot` (each through a fresh
    /// `rcu_dereference`), publish the running call count to `calls` (relaxed), one quiescent
    /// state; until `stop` reads true. Returns the call chain's last value.
    ///
    /// Panics if the thread is offline.
    pub fn reader_loop(&self, slot: &FnSlot, k: u64, stop: &AtomicBool, calls: &AtomicU64) -> u64 {
        self.assert_online("reader_loop");
        // SAFETY: as in `read_burst` for the slot and the thread. `stop` and `calls` are
        // borrowed for the whole call, and the shim accesses them only with atomic
        // operations (`__atomic_load_n` / `__atomic_store_n`), which is how Rust's atomics
        // of the same size and layout may be shared with C.
        unsafe { sys::tw_urcu_reader_loop(slot.ptr.as_ptr(), k, stop.as_ptr(), calls.as_ptr()) }
    }

    /// One retire, the liburcu way: `malloc` a 64-byte object, publish it in `slot` with
    /// `rcu_xchg_pointer`, and `call_rcu(free)` the one it replaced. `seq` is stored in it.
    ///
    /// Panics if the thread is offline (`call_rcu`'s QSBR contract).
    pub fn retire(&self, slot: &RetireSlot, seq: u64) {
        self.assert_online("retire (call_rcu)");
        // SAFETY: registered and online, as call_rcu requires; the slot only ever holds null
        // or an object the shim allocated (only the shim writes it), which is what the shim
        // frees after the grace period. The body, if any, stays callable while the slot
        // lives (`RetireSlot::with_body`'s contract).
        unsafe { sys::tw_urcu_retire(slot.ptr.as_ptr(), slot.body, seq) }
    }

    /// [`reader_loop`](Self::reader_loop) over the objects [`retire`](Self::retire)
    /// publishes: each call loads the object in `slot` (`rcu_dereference`) and calls its body.
    ///
    /// Panics if the thread is offline, or if the slot was not made with
    /// [`RetireSlot::with_body`].
    pub fn reader_loop_retired(
        &self,
        slot: &RetireSlot,
        k: u64,
        stop: &AtomicBool,
        calls: &AtomicU64,
    ) -> u64 {
        self.assert_online("reader_loop_retired");
        assert!(slot.body.is_some(), "a retire slot without a body to call");
        // SAFETY: the slot always holds an object with a callable body (`with_body`
        // published the first one, and `retire` gives every replacement the same body),
        // which stays allocated while this online reader may use it (the grace period
        // `retire`'s call_rcu waits for); `stop` and `calls` as in `reader_loop`.
        unsafe {
            sys::tw_urcu_reader_loop_retired(slot.ptr.as_ptr(), k, stop.as_ptr(), calls.as_ptr())
        }
    }

    /// `rcu_barrier()`: waits until every `call_rcu` callback queued so far (by any thread)
    /// has run. Goes offline meanwhile (liburcu refuses an online QSBR caller) and comes
    /// back to the state it was in.
    pub fn barrier(&self) {
        let was_online = self.is_online();
        self.offline();
        // SAFETY: registered and offline, as rcu_barrier requires; this is not a call_rcu
        // callback thread (those are liburcu's own).
        unsafe { sys::tw_urcu_barrier() };
        if was_online {
            self.online();
        }
    }
}

impl Drop for UrcuThread {
    fn drop(&mut self) {
        // SAFETY: the guard proves the registration; liburcu's unregister takes the thread
        // offline first, so it is valid in either state.
        unsafe { sys::tw_urcu_unregister_thread() };
        REGISTERED.with(|r| r.set(false));
    }
}

/// An RCU-published function pointer that liburcu readers load per call.
#[derive(Debug)]
pub struct FnSlot {
    /// A `BodyFn` as a data pointer (the same size and representation on the targets
    /// tramway supports); the shim reads it with `rcu_dereference`.
    ptr: AtomicPtr<c_void>,
}

impl FnSlot {
    /// A slot holding `f`.
    ///
    /// # Safety
    /// `f` must stay callable, with its signature, for as long as the slot lives. For JIT
    /// code: keep a handle that keeps it mapped (a tramway `Trampoline`) alive at least as
    /// long as the slot.
    pub unsafe fn new(f: BodyFn) -> FnSlot {
        FnSlot {
            ptr: AtomicPtr::new(f as *mut c_void),
        }
    }

    /// Publishes `f` (Release: `rcu_assign_pointer`), for the next loads.
    ///
    /// # Safety
    /// As for [`new`](Self::new), for `f`; the previous body must stay callable until a
    /// grace period has passed (readers may still be inside it).
    pub unsafe fn set(&self, f: BodyFn) {
        self.ptr.store(f as *mut c_void, Ordering::Release);
    }
}

/// A published pointer that [`UrcuThread::retire`] replaces; empty at first. Dropping it
/// waits a grace period and frees the last object.
#[derive(Debug, Default)]
pub struct RetireSlot {
    ptr: AtomicPtr<c_void>,
    /// The body every object carries, for [`UrcuThread::reader_loop_retired`].
    body: Option<BodyFn>,
}

impl RetireSlot {
    /// An empty slot.
    pub fn new() -> RetireSlot {
        RetireSlot::default()
    }

    /// A slot whose objects carry `body`, with a first object published (so that readers
    /// may start at once). `_urcu` proves the shim is built.
    ///
    /// # Safety
    /// `body` must stay callable, with its signature, for as long as the slot lives (as for
    /// [`FnSlot::new`]).
    pub unsafe fn with_body(_urcu: &Urcu, body: BodyFn) -> RetireSlot {
        let slot = RetireSlot {
            ptr: AtomicPtr::new(ptr::null_mut()),
            body: Some(body),
        };
        // SAFETY: the slot is empty and no reader can see it yet; the shim only allocates
        // and publishes (no call_rcu), which any thread may do.
        unsafe { sys::tw_urcu_retire_slot_init(slot.ptr.as_ptr(), body) };
        slot
    }
}

impl Drop for RetireSlot {
    fn drop(&mut self) {
        if !self.ptr.get_mut().is_null() {
            // SAFETY: non-null means `retire` published a shim object here, so the shim is
            // linked; clearing unpublishes it, waits a grace period (from any thread) and
            // frees it. Nobody else can touch the slot: we have `&mut self`.
            unsafe { sys::tw_urcu_retire_slot_clear(self.ptr.as_ptr()) };
            *self.ptr.get_mut() = ptr::null_mut();
        }
    }
}

/// The shim's functions (`harness/csrc/urcu_shim.c`).
#[cfg(tramway_urcu)]
mod sys {
    use std::ffi::c_void;

    use super::BodyFn;

    extern "C" {
        pub fn tw_urcu_register_thread();
        pub fn tw_urcu_unregister_thread();
        pub fn tw_urcu_quiescent_state();
        pub fn tw_urcu_thread_offline();
        pub fn tw_urcu_thread_online();
        pub fn tw_urcu_synchronize();
        pub fn tw_urcu_barrier();
        pub fn tw_urcu_read_burst(slot: *mut *mut c_void, k: u64, acc: u64) -> u64;
        pub fn tw_urcu_reader_loop(
            slot: *mut *mut c_void,
            k: u64,
            stop: *const bool,
            calls: *mut u64,
        ) -> u64;
        pub fn tw_urcu_retire(slot: *mut *mut c_void, body: Option<BodyFn>, seq: u64);
        pub fn tw_urcu_retire_slot_init(slot: *mut *mut c_void, body: BodyFn);
        pub fn tw_urcu_reader_loop_retired(
            slot: *mut *mut c_void,
            k: u64,
            stop: *const bool,
            calls: *mut u64,
        ) -> u64;
        pub fn tw_urcu_retire_slot_clear(slot: *mut *mut c_void);
    }
}

/// Stand-ins with the shim's signatures, so the wrappers compile without liburcu. Nothing
/// reaches them: every caller needs an [`Urcu`](super::Urcu) (or a guard or object made
/// from one), and [`Urcu::get`](super::Urcu::get) returns `None` in this build.
#[cfg(not(tramway_urcu))]
#[allow(clippy::missing_safety_doc)]
mod sys {
    use std::ffi::c_void;

    use super::BodyFn;

    const NO_SHIM: &str = "the liburcu shim is not built (no Urcu token can exist)";

    pub unsafe fn tw_urcu_register_thread() {
        unreachable!("{NO_SHIM}")
    }
    pub unsafe fn tw_urcu_unregister_thread() {
        unreachable!("{NO_SHIM}")
    }
    pub unsafe fn tw_urcu_quiescent_state() {
        unreachable!("{NO_SHIM}")
    }
    pub unsafe fn tw_urcu_thread_offline() {
        unreachable!("{NO_SHIM}")
    }
    pub unsafe fn tw_urcu_thread_online() {
        unreachable!("{NO_SHIM}")
    }
    pub unsafe fn tw_urcu_synchronize() {
        unreachable!("{NO_SHIM}")
    }
    pub unsafe fn tw_urcu_barrier() {
        unreachable!("{NO_SHIM}")
    }
    pub unsafe fn tw_urcu_read_burst(_slot: *mut *mut c_void, _k: u64, _acc: u64) -> u64 {
        unreachable!("{NO_SHIM}")
    }
    pub unsafe fn tw_urcu_reader_loop(
        _slot: *mut *mut c_void,
        _k: u64,
        _stop: *const bool,
        _calls: *mut u64,
    ) -> u64 {
        unreachable!("{NO_SHIM}")
    }
    pub unsafe fn tw_urcu_retire(_slot: *mut *mut c_void, _body: Option<BodyFn>, _seq: u64) {
        unreachable!("{NO_SHIM}")
    }
    pub unsafe fn tw_urcu_retire_slot_init(_slot: *mut *mut c_void, _body: BodyFn) {
        unreachable!("{NO_SHIM}")
    }
    pub unsafe fn tw_urcu_reader_loop_retired(
        _slot: *mut *mut c_void,
        _k: u64,
        _stop: *const bool,
        _calls: *mut u64,
    ) -> u64 {
        unreachable!("{NO_SHIM}")
    }
    pub unsafe fn tw_urcu_retire_slot_clear(_slot: *mut *mut c_void) {
        unreachable!("{NO_SHIM}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(tramway_urcu)]
    extern "C" fn add_one(x: u64) -> u64 {
        x + 1
    }

    #[test]
    fn available_matches_the_token() {
        assert_eq!(available(), Urcu::get().is_some());
        assert_eq!(available(), version().is_some());
    }

    #[cfg(tramway_urcu)]
    fn urcu() -> Urcu {
        Urcu::get().expect("built with the shim")
    }

    #[test]
    #[cfg(tramway_urcu)]
    fn a_liburcu_reader_calls_the_body_in_its_slot() {
        let urcu = urcu();
        // SAFETY: `add_one` is a Rust function: callable for the whole program.
        let slot = unsafe { FnSlot::new(add_one) };
        let reader = urcu.register_thread();
        assert_eq!(reader.read_burst(&slot, 10, 5), 15);
        reader.quiescent();
        drop(reader);
        urcu.synchronize();
    }

    #[test]
    #[cfg(tramway_urcu)]
    fn the_reader_loop_runs_until_stopped_and_counts_calls() {
        let urcu = urcu();
        // SAFETY: as above.
        let slot = unsafe { FnSlot::new(add_one) };
        let (stop, calls) = (AtomicBool::new(false), AtomicU64::new(0));
        std::thread::scope(|s| {
            let r = s.spawn(|| {
                urcu.register_thread()
                    .reader_loop(&slot, 100, &stop, &calls)
            });
            while calls.load(Ordering::Relaxed) < 1_000 {
                urcu.synchronize(); // ends only because the reader reports quiescent states
            }
            stop.store(true, Ordering::Relaxed);
            let last = r.join().unwrap();
            assert_eq!(last, calls.load(Ordering::Relaxed));
        });
    }

    #[test]
    #[cfg(tramway_urcu)]
    fn retired_objects_are_freed_after_a_barrier_while_offline_threads_do_not_hold_gps() {
        let urcu = urcu();
        let slot = RetireSlot::new();
        let updater = urcu.register_thread();
        for seq in 0..1_000 {
            updater.retire(&slot, seq);
            updater.quiescent();
        }
        updater.barrier();
        assert!(updater.is_online(), "barrier restores the online state");
        updater.offline();
        urcu.synchronize(); // does not wait for the offline updater
        drop(slot); // a grace period, then the last object is freed
    }

    #[test]
    #[cfg(tramway_urcu)]
    #[should_panic(expected = "registered with liburcu already")]
    fn a_second_registration_on_one_thread_panics() {
        let urcu = urcu();
        let _first = urcu.register_thread();
        let _second = urcu.register_thread();
    }
}
