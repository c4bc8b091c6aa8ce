//! Unit tests of the crate as a whole (integration tests live in `jit/tests/`).

use std::sync::Arc;
use std::time::Duration;

use crate::*;

fn call0(site: &Site) -> u64 {
    // SAFETY: every trampoline these tests install implements `extern "C" fn() -> u64`.
    let f: extern "C" fn() -> u64 = unsafe { site.as_fn() };
    f()
}

extern "C" fn add2(a: u64, b: u64) -> u64 {
    a * 10 + b
}

#[test]
fn constant_return_through_both_site_kinds() {
    let jit = Jit::new().unwrap();
    for kind in [SiteKind::Indirect, SiteKind::Direct] {
        let site = jit.site(kind, &jit.constant_return(7).unwrap()).unwrap();
        assert_eq!(site.kind(), kind);
        assert_eq!(call0(&site), 7);
        let old = site.swap(&jit.constant_return(8).unwrap()).unwrap();
        assert_eq!(call0(&site), 8);
        assert!(old.trampoline().is_retired());
        assert!(!site.current().is_retired());
    }
}

#[test]
fn site_entries_and_direct_words_are_aligned() {
    let jit = Jit::new().unwrap();
    let t = jit.constant_return(1).unwrap();
    let sites: Vec<_> = (0..10)
        .map(|_| jit.site(SiteKind::Direct, &t).unwrap())
        .collect();
    for s in &sites {
        assert_eq!(s.entry() as usize % 8, 0);
        assert_eq!(call0(s), 1);
    }
}

#[test]
fn forwarding_counts_and_forwards_to_address_and_trampoline() {
    let jit = Jit::new().unwrap();
    let fwd = jit
        .forwarding(ForwardingSpec::new(Target::Address(add2 as *const u8)).counted())
        .unwrap();
    let fwd2 = jit
        .forwarding(ForwardingSpec::new(Target::Trampoline(fwd.clone())).counted())
        .unwrap();
    let uncounted = jit
        .forwarding(ForwardingSpec::new(Target::Trampoline(fwd.clone())))
        .unwrap();
    let site = jit.site(SiteKind::Indirect, &fwd2).unwrap();
    // SAFETY: fwd2 -> fwd -> add2, which has this signature.
    let f: extern "C" fn(u64, u64) -> u64 = unsafe { site.as_fn() };
    for i in 0..5 {
        assert_eq!(f(i, 3), i * 10 + 3);
    }
    assert_eq!(fwd.calls(), 5);
    assert_eq!(fwd2.calls(), 5);
    assert_eq!(jit.constant_return(0).unwrap().calls(), 0);
    // SAFETY: uncounted -> fwd -> add2.
    let g: extern "C" fn(u64, u64) -> u64 = unsafe { std::mem::transmute(uncounted.addr()) };
    assert_eq!(g(1, 2), 12);
    assert_eq!(
        (uncounted.calls(), fwd.calls()),
        (0, 6),
        "counting is opt-in"
    );
}

#[test]
fn typed_errors() {
    let small = Jit::builder()
        .reservation_size(256 << 10)
        .chunk_size(64 << 10)
        .build()
        .unwrap();
    // Oversized body.
    // SAFETY: the code is never executed.
    let too_big =
        unsafe { small.custom(|ops| ops.extend(std::iter::repeat_n(0xCC, (64 << 10) + 1))) };
    assert!(
        matches!(too_big, Err(JitError::CodeTooLarge { len, max }) if len == (64 << 10) + 1 && max == 64 << 10)
    );
    // Exhausted reservation: four chunk-sized objects fit, the fifth does not.
    // SAFETY: never executed.
    let big =
        |jit: &Jit| unsafe { jit.custom(|ops| ops.extend(std::iter::repeat_n(0xCC, 64 << 10))) };
    let held: Vec<_> = (0..4).map(|_| big(&small).unwrap()).collect();
    assert!(matches!(
        big(&small),
        Err(JitError::CodeSpaceExhausted { .. })
    ));
    drop(held);
    big(&small).expect("space is reusable after frees");

    let jit = Jit::new().unwrap();
    assert!(matches!(
        jit.forwarding(ForwardingSpec::new(Target::Address(std::ptr::null()))),
        Err(JitError::NullTarget)
    ));
    let a = jit.constant_return(1).unwrap();
    let site = jit.site(SiteKind::Indirect, &a).unwrap();
    let _old = site.swap(&jit.constant_return(2).unwrap()).unwrap();
    assert!(matches!(site.swap(&a), Err(JitError::Retired { .. })));
    assert!(matches!(
        jit.site(SiteKind::Direct, &a),
        Err(JitError::Retired { .. })
    ));
    let fwd = jit.forwarding(ForwardingSpec::new(Target::Trampoline(a.clone())));
    assert!(matches!(fwd, Err(JitError::Retired { .. })));
    let foreign = small.constant_return(3).unwrap();
    assert!(matches!(
        site.swap(&foreign),
        Err(JitError::ForeignTrampoline { .. })
    ));
    assert!(matches!(
        jit.site(SiteKind::Indirect, &foreign),
        Err(JitError::ForeignTrampoline { .. })
    ));
    assert_eq!(call0(&site), 2, "failed swaps leave the site unchanged");

    let bad = Jit::builder().reservation_size(3 << 30).build();
    assert!(matches!(bad, Err(JitError::InvalidConfig(_))));
    let bad = Jit::builder().chunk_size(1000).build();
    assert!(matches!(bad, Err(JitError::InvalidConfig(_))));
}

/// Runs deferred frees at `barrier`. Sound here: these tests are single-threaded, so nothing
/// executes code across a barrier. With `keeps_batches_open` it asks for open batches but
/// keeps `Reclaim::defer_batch`'s default, and it records the ranges `defer_code` gets.
#[derive(Default)]
struct ManualReclaim {
    queue: std::sync::Mutex<Vec<crate::Deferred>>,
    ranges: std::sync::Mutex<Vec<std::ops::Range<usize>>>,
    keeps_batches_open: bool,
}

impl ManualReclaim {
    fn pending(&self) -> usize {
        self.queue.lock().unwrap().len()
    }
}

// SAFETY: the tests run the callbacks only when no thread executes the retired code.
unsafe impl Reclaim for ManualReclaim {
    fn defer(&self, f: crate::Deferred) {
        self.queue.lock().unwrap().push(f);
    }

    fn defer_code(&self, code: &[std::ops::Range<usize>], f: crate::Deferred) {
        self.ranges.lock().unwrap().extend_from_slice(code);
        self.defer(f);
    }

    fn barrier(&self) {
        loop {
            let batch = std::mem::take(&mut *self.queue.lock().unwrap());
            if batch.is_empty() {
                return;
            }
            batch.into_iter().for_each(|f| f());
        }
    }

    fn barrier_waits_for_grace_period(&self) -> bool {
        true
    }

    fn keeps_batches_open(&self) -> bool {
        self.keeps_batches_open
    }
}

#[test]
fn counters_balance_through_the_lifecycle() {
    let reclaimer = Arc::new(ManualReclaim::default());
    let jit = Jit::builder().reclaimer(reclaimer.clone()).build().unwrap();
    let check = |emitted, live, retired, reclaimed| {
        let s = jit.stats();
        assert!(s.balanced(), "{s:?}");
        assert_eq!(
            (s.emitted, s.live, s.retired, s.reclaimed),
            (emitted, live, retired, reclaimed),
            "{s:?}"
        );
    };
    let a = jit.constant_return(1).unwrap();
    let b = jit.constant_return(2).unwrap();
    check(2, 2, 0, 0);
    drop(b); // never installed: freed at once
    check(2, 1, 0, 1);
    let site = jit.site(SiteKind::Indirect, &a).unwrap();
    assert_eq!(jit.stats().sites, 1);
    let c = jit.constant_return(3).unwrap();
    let old = site.swap(&c).unwrap();
    check(3, 1, 1, 1);
    drop((a, old));
    assert_eq!(
        reclaimer.pending(),
        1,
        "installed code is freed through the reclaimer"
    );
    check(3, 1, 1, 1);
    jit.barrier();
    check(3, 1, 0, 2);
    drop(site);
    check(3, 0, 1, 2);
    jit.barrier();
    drop(c);
    jit.barrier();
    check(3, 0, 0, 3);
    assert_eq!(jit.stats().sites, 0);
    let leaked = jit.constant_return(4).unwrap();
    let site = jit.site(SiteKind::Indirect, &leaked).unwrap();
    site.swap(&jit.constant_return(5).unwrap()).unwrap().leak();
    drop(leaked);
    jit.barrier();
    let s = jit.stats();
    assert_eq!((s.retired, s.leaked), (1, 1));
    assert!(s.balanced());
}

#[test]
fn trampoline_installed_in_two_sites_retires_with_the_last() {
    let jit = Jit::new().unwrap();
    let a = jit.constant_return(1).unwrap();
    let s1 = jit.site(SiteKind::Indirect, &a).unwrap();
    let s2 = jit.site(SiteKind::Direct, &a).unwrap();
    let _r1 = s1.swap(&jit.constant_return(2).unwrap()).unwrap();
    assert!(!a.is_retired());
    assert_eq!(call0(&s2), 1);
    let _r2 = s2.swap(&jit.constant_return(3).unwrap()).unwrap();
    assert!(a.is_retired());
    let s = jit.stats();
    assert_eq!((s.live, s.retired), (2, 1));
}

/// A `Jit` whose chunks are four pages, each chunk-sized object filling one, with empty
/// chunks beyond the fixed spares kept for `decay`.
fn jit_of_whole_chunk_objects(decay: Duration) -> (Jit, usize) {
    let page = 4096;
    let jit = Jit::builder()
        .chunk_size(4 * page)
        .spare_chunk_decay(decay)
        .build()
        .unwrap();
    (jit, 4 * page)
}

fn whole_chunk(jit: &Jit, chunk: usize) -> Trampoline {
    // SAFETY: never executed.
    unsafe { jit.custom(|ops| ops.extend(std::iter::repeat_n(0xCC, chunk))) }.unwrap()
}

#[test]
fn without_a_decay_the_newest_empty_chunks_are_spares_and_older_ones_unmapped() {
    let spares = crate::SPARE_CHUNKS_PER_CLASS;
    let (jit, chunk) = jit_of_whole_chunk_objects(Duration::ZERO);
    let mut held: Vec<_> = (0..spares + 2).map(|_| whole_chunk(&jit, chunk)).collect();
    assert_eq!(jit.stats().chunks, spares + 2);
    let addrs: Vec<_> = held.iter().map(|t| t.addr()).collect();
    held.drain(..spares).for_each(drop);
    assert_eq!(
        jit.stats().chunks,
        spares + 2,
        "the first empty chunks are spares"
    );
    drop(held.remove(0));
    assert_eq!(
        jit.stats().chunks,
        spares + 1,
        "one more empty chunk unmaps the oldest spare"
    );
    let reused = whole_chunk(&jit, chunk);
    assert!(
        addrs[1..=spares].contains(&reused.addr()),
        "a spare is reused before a chunk is mapped"
    );
    assert_eq!(jit.stats().chunks, spares + 1);
    drop((held, reused));
    assert_eq!(jit.stats().chunks, spares, "the spares stay mapped");
    assert_eq!(jit.stats().spare_chunks, spares);
    assert_eq!(jit.stats().mapped_bytes, spares * chunk);
}

/// A grace period frees a whole backlog of chunks at once; they stay mapped for the next
/// emissions (no chunk is mapped again). The decay is an hour here, so that no delay of this
/// thread can age them.
#[test]
fn empty_chunks_beyond_the_spares_stay_mapped_within_the_decay() {
    let spares = crate::SPARE_CHUNKS_PER_CLASS;
    let (jit, chunk) = jit_of_whole_chunk_objects(Duration::from_secs(3600));
    let backlog: Vec<_> = (0..spares + 6).map(|_| whole_chunk(&jit, chunk)).collect();
    let addrs: Vec<_> = backlog.iter().map(|t| t.addr()).collect();
    drop(backlog);
    assert_eq!(jit.stats().chunks, spares + 6, "all kept within the decay");
    assert_eq!(jit.stats().spare_chunks, spares + 6, "as spares");
    let refill: Vec<_> = (0..spares + 6).map(|_| whole_chunk(&jit, chunk)).collect();
    assert!(
        refill.iter().all(|t| addrs.contains(&t.addr())),
        "the refill reused every empty chunk"
    );
    assert_eq!(jit.stats().chunks, spares + 6, "and mapped none");
    assert_eq!(jit.stats().spare_chunks, 0, "the refill took every spare");
}

/// Once older than the decay, empty chunks beyond the fixed spares go at the allocator's next
/// check: when their class empties another chunk, and also while only another class is used
/// (every 64 allocations or groups of frees), at most 8 a class per check.
#[test]
fn empty_chunks_older_than_the_decay_go_at_the_next_check() {
    let spares = crate::SPARE_CHUNKS_PER_CLASS;
    let decay = Duration::from_millis(20);
    for other_class_only in [false, true] {
        let (jit, chunk) = jit_of_whole_chunk_objects(decay);
        let small = jit.constant_return(0).unwrap(); // another class's chunk, kept mapped
        drop(
            (0..spares + 6)
                .map(|_| whole_chunk(&jit, chunk))
                .collect::<Vec<_>>(),
        );
        // (How many are still mapped now depends on this thread's speed: not asserted.)
        std::thread::sleep(decay + Duration::from_millis(10));
        if other_class_only {
            // Emissions and frees of small code only: the 64 frees make a check (the
            // emissions take runs of 16 slots, each counted once).
            (0..64).for_each(|i| drop(jit.constant_return(i).unwrap()));
        } else {
            drop(whole_chunk(&jit, chunk)); // one more chunk of the class empties
        }
        assert_eq!(
            jit.stats().chunks,
            1 + spares,
            "only the fixed spares outlive the decay (other class only: {other_class_only})"
        );
        assert_eq!(jit.stats().spare_chunks, spares);
        drop(small);
    }
}

#[test]
fn reclaim_now_fills_the_slot_with_traps() {
    let jit = Jit::builder().build().unwrap();
    let keep = jit.constant_return(0).unwrap(); // keeps the chunk mapped
    let a = jit.constant_return(1).unwrap();
    let site = jit.site(SiteKind::Indirect, &a).unwrap();
    let addr = a.addr();
    // SAFETY: reading our own RX view.
    assert_eq!(unsafe { *addr }, 0x48, "mov rax, imm64 starts with REX.W");
    let old = site.swap(&keep).unwrap();
    drop(a);
    // SAFETY: no thread calls the site concurrently.
    unsafe { old.reclaim_now() };
    // SAFETY: the chunk is still mapped (it holds `keep` and the stub); reading the RX view.
    let bytes = unsafe { std::slice::from_raw_parts(addr, 4) };
    assert_eq!(bytes, [0x0F, 0x0B, 0xCC, 0xCC]);
    assert_eq!(jit.stats().reclaimed, 1);
}

#[test]
fn fallback_mode_runs_indirect_sites_and_refuses_direct_ones() {
    let jit = Jit::builder().force_fallback(true).build().unwrap();
    assert!(jit.is_fallback());
    assert_eq!(jit.memfd_name(), None);
    let a = jit.constant_return(1).unwrap();
    let site = jit.site(SiteKind::Indirect, &a).unwrap();
    assert_eq!(call0(&site), 1);
    let _old = site.swap(&jit.constant_return(2).unwrap()).unwrap();
    assert_eq!(call0(&site), 2);
    assert!(matches!(
        jit.site(SiteKind::Direct, &site.current()),
        Err(JitError::Unsupported(_))
    ));
}

#[test]
fn dropping_everything_unmaps_everything() {
    let jit = Jit::new().unwrap();
    let stats = jit.stats_handle();
    let site = jit
        .site(SiteKind::Direct, &jit.constant_return(1).unwrap())
        .unwrap();
    let old = site.swap(&jit.constant_return(2).unwrap()).unwrap();
    assert!(stats.get().mapped_bytes > 0);
    drop(jit);
    assert!(
        stats.get().mapped_bytes > 0,
        "handles keep the code memory alive"
    );
    drop((site, old));
    let s = stats.get();
    assert_eq!(
        (s.mapped_bytes, s.chunks, s.live, s.retired),
        (0, 0, 0, 0),
        "{s:?}"
    );
    assert_eq!(s.reclaimed, 2);
}

#[test]
fn sync_core_mode_emits_and_calls() {
    // Kernels without membarrier sync-core report a typed OS error instead.
    match Jit::builder().sync_core(true).build() {
        Ok(jit) => {
            let site = jit
                .site(SiteKind::Indirect, &jit.constant_return(9).unwrap())
                .unwrap();
            assert_eq!(call0(&site), 9);
        }
        Err(e) => assert!(matches!(e, JitError::Os { .. }), "{e}"),
    }
}

#[test]
fn swapping_in_the_current_trampoline_keeps_it_live() {
    let jit = Jit::new().unwrap();
    let a = jit.constant_return(1).unwrap();
    let site = jit.site(SiteKind::Direct, &a).unwrap();
    let same = site.swap(&a).unwrap();
    assert!(same.trampoline().ptr_eq(&a));
    assert!(!a.is_retired());
    drop(same);
    assert_eq!(call0(&site), 1);
    assert_eq!(jit.stats().live, 1);
}

#[test]
fn handles_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Jit>();
    check::<Trampoline>();
    check::<Site>();
    check::<Retired>();
    check::<JitStatsHandle>();
}

#[test]
fn indirect_site_word_has_a_cache_line_of_its_own() {
    let jit = Jit::new().unwrap();
    let t = jit.constant_return(1).unwrap();
    let site = jit.site(SiteKind::Indirect, &t).unwrap();
    assert_eq!(
        site.entry() as usize % 128,
        0,
        "stub and word share one 128-byte slot"
    );
    // SAFETY: the site's slot is 128 mapped, readable bytes; the word sits at offset 64.
    let word = unsafe { std::ptr::read_volatile(site.entry().add(64) as *const u64) };
    assert_eq!(word, t.addr() as u64);
    assert_eq!(call0(&site), 1);
}

#[test]
fn the_default_defer_batch_seals_at_once_and_covers_every_address() {
    // Asks for open batches but keeps `Reclaim::defer_batch`'s default: each batch is
    // sealed at once and deferred as one callback over the whole address space.
    let reclaimer = Arc::new(ManualReclaim {
        keeps_batches_open: true,
        ..ManualReclaim::default()
    });
    let jit = Jit::builder().reclaimer(reclaimer.clone()).build().unwrap();
    let site = jit
        .site(SiteKind::Indirect, &jit.constant_return(0).unwrap())
        .unwrap();
    for v in 1..=3 {
        drop(site.swap(&jit.constant_return(v).unwrap()).unwrap());
    }
    assert_eq!(reclaimer.pending(), 3, "one sealed batch per free");
    assert!(reclaimer
        .ranges
        .lock()
        .unwrap()
        .iter()
        .all(|r| *r == (0..usize::MAX)));
    assert_eq!(jit.stats().retired, 3);
    jit.barrier();
    let s = jit.stats();
    assert_eq!((s.retired, s.reclaimed), (0, 3), "{s:?}");
    assert_eq!(call0(&site), 3);
}

std::thread_local! {
    /// Runs on this thread between a push that opened a batch and its `defer_batch`
    /// (`Retirement::defer_free`): where another thread's free and barrier can slip in.
    static BEFORE_QUEUEING: std::cell::RefCell<Option<Box<dyn FnMut()>>> =
        const { std::cell::RefCell::new(None) };
}

/// The test hook of `Retirement::defer_free` (see `BEFORE_QUEUEING`).
pub(crate) fn before_queueing_a_batch() {
    BEFORE_QUEUEING.with(|hook| {
        if let Some(hook) = hook.borrow_mut().as_mut() {
            hook();
        }
    });
}

/// Found in review: thread A opens the batch and is delayed before queueing it; this thread's
/// free joins that batch, and a barrier started now must still wait for it. Without the
/// `queuing` count the barrier saw no pending callback and returned at once, both frees
/// unrun.
#[test]
fn a_barrier_waits_for_a_batch_another_thread_opened_and_has_not_queued_yet() {
    use std::sync::mpsc;
    use std::time::Duration;
    use tramway_runtime::grace::{GraceConfig, GraceDomain};

    let gp = GraceDomain::for_threads(GraceConfig::default()).unwrap();
    let jit = Arc::new(Jit::builder().reclaimer(Arc::new(gp)).build().unwrap());
    let site = Arc::new(
        jit.site(SiteKind::Indirect, &jit.constant_return(0).unwrap())
            .unwrap(),
    );
    let (paused_tx, paused_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let opener = std::thread::spawn({
        let (jit, site) = (jit.clone(), site.clone());
        move || {
            BEFORE_QUEUEING.with(|hook| {
                *hook.borrow_mut() = Some(Box::new(move || {
                    paused_tx.send(()).unwrap();
                    go_rx.recv().unwrap();
                }))
            });
            drop(site.swap(&jit.constant_return(1).unwrap()).unwrap());
        }
    });
    paused_rx.recv().unwrap();
    drop(site.swap(&jit.constant_return(2).unwrap()).unwrap());
    let (done_tx, done_rx) = mpsc::channel();
    let barrier = std::thread::spawn({
        let jit = jit.clone();
        move || {
            jit.barrier();
            done_tx.send(jit.stats()).unwrap();
        }
    });
    let early = done_rx.recv_timeout(Duration::from_millis(200));
    go_tx.send(()).unwrap();
    opener.join().unwrap();
    barrier.join().unwrap();
    assert!(
        early.is_err(),
        "the barrier returned before the batch it must wait for was queued: {early:?}"
    );
    let s = done_rx.recv().unwrap();
    assert_eq!((s.retired, s.reclaimed), (0, 2), "{s:?}");
}

#[test]
fn trampoline_ids_and_slots_are_unique_across_threads_and_blocks() {
    // Each emitter takes ids in blocks (`trampoline::TrampolineIds`); emit more than one block
    // per thread, on several threads at once (so several emitters exist), and keep every
    // handle so no id could be reused.
    let jit = Arc::new(Jit::new().unwrap());
    let per_thread = 1500;
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let jit = Arc::clone(&jit);
            std::thread::spawn(move || {
                (0..per_thread)
                    .map(|i| jit.constant_return(i).unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let all: Vec<Trampoline> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let ids: std::collections::HashSet<u64> = all.iter().map(Trampoline::id).collect();
    assert_eq!(ids.len(), all.len(), "two trampolines got the same id");
    assert!(!ids.contains(&0), "ids start at 1");
    // Concurrent emitters each take runs of slots (`code_memory/run.rs`): no two live
    // trampolines may share one.
    let addrs: std::collections::HashSet<usize> = all.iter().map(|t| t.addr() as usize).collect();
    assert_eq!(addrs.len(), all.len(), "two live trampolines share a slot");
}
