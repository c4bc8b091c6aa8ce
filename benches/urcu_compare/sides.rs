//! The two sides (tramway and liburcu behind one `Side` trait), their readers, and the rounds that measure them.

use super::*;

// ---------------------------------------------------------------------------------------
// The two sides

/// What a scenario needs of one side. Every method runs on the calling thread.
pub(super) trait Side: Sync {
    /// One grace period, from the (unregistered) updater.
    fn synchronize(&self);
    /// Registers the calling thread and runs the reader loop (`k` calls, one quiescent
    /// state) until `stop`, publishing the call count in `calls`.
    fn reader(&self, k: u64, stop: &AtomicBool, calls: &AtomicU64);
    /// Registers the calling thread and, until `stop`: online, [`K`] calls, offline, sleep
    /// [`GAP`].
    fn mostly_offline_reader(&self, stop: &AtomicBool, calls: &AtomicU64);
    /// One round of a retire scenario with `readers` (0 or 1) readers (`reader_uses_retired`:
    /// see `Kind::Retire`).
    fn retire_round(&self, opts: &Opts, readers: usize, reader_uses_retired: bool) -> RetireSample;
}

pub(super) struct RetireSample {
    pub(super) per_sec: f64,
    pub(super) updater_cpu_ns: f64,
    pub(super) other_cpu_ns: f64,
}

/// tramway: a runtime with one worker, its grace domain, and a site whose only trampoline
/// is the shared body.
pub(super) struct TramwaySide {
    pub(super) tw: Tramway,
    pub(super) site: Site,
}

/// The tramway reader loop; its C twin is `tw_urcu_reader_loop` in `urcu_shim.c`.
#[inline(never)]
pub(super) fn tramway_reader(
    reg: &ThreadRegistration,
    f: BodyFn,
    k: u64,
    stop: &AtomicBool,
    calls: &AtomicU64,
) -> u64 {
    let (mut acc, mut n) = (0u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..k {
            acc = f(acc);
        }
        n += k;
        calls.store(n, Ordering::Relaxed);
        reg.quiescent();
    }
    acc
}

/// `k` dependent calls of `f` (the twin of `tw_urcu_read_burst`).
#[inline(never)]
pub(super) fn tramway_burst(f: BodyFn, k: u64, mut acc: u64) -> u64 {
    for _ in 0..k {
        acc = f(acc);
    }
    acc
}

impl TramwaySide {
    pub(super) fn register(&self) -> ThreadRegistration {
        self.tw
            .runtime
            .register_thread()
            .expect("a plain OS thread can register with the runtime")
    }

    /// The reader loop on `site`.
    pub(super) fn read_site(&self, site: &Site, k: u64, stop: &AtomicBool, calls: &AtomicU64) {
        let reg = self.register();
        // SAFETY: every trampoline this bench installs in a site is an `emit_body` body,
        // which implements `BodyFn`. The pointer is called only below, by this thread while
        // `reg` keeps it registered and online (`tramway_reader` never goes offline), and
        // `site` is borrowed for the whole loop, so the site outlives every call.
        let f: BodyFn = unsafe { site.as_fn() };
        black_box(tramway_reader(&reg, f, k, stop, calls));
    }
}

impl Side for TramwaySide {
    fn synchronize(&self) {
        self.tw.grace.synchronize();
    }

    fn reader(&self, k: u64, stop: &AtomicBool, calls: &AtomicU64) {
        self.read_site(&self.site, k, stop, calls);
    }

    fn mostly_offline_reader(&self, stop: &AtomicBool, calls: &AtomicU64) {
        let reg = self.register();
        // SAFETY: as in `read_site`; here the thread calls only between `online()` and
        // `offline()`, and `self.site` outlives the loop.
        let f: BodyFn = unsafe { self.site.as_fn() };
        let (mut acc, mut n) = (0u64, 0u64);
        while !stop.load(Ordering::Relaxed) {
            reg.online();
            acc = tramway_burst(f, K, acc);
            reg.offline();
            n += K;
            calls.store(n, Ordering::Relaxed);
            std::thread::sleep(GAP);
        }
        black_box(acc);
    }

    /// tramway's reader always calls the code being retired: `reader_uses_retired` changes
    /// nothing here.
    fn retire_round(
        &self,
        opts: &Opts,
        readers: usize,
        _reader_uses_retired: bool,
    ) -> RetireSample {
        let jit = &self.tw.jit;
        let site = jit
            .site(SiteKind::Indirect, &emit_body(jit, 0).expect("emit a body"))
            .expect("a site");
        let sample = with_readers(
            readers,
            |_, stop, calls| self.read_site(&site, K, stop, calls),
            |readers| {
                std::thread::sleep(opts.warm_up());
                let mut gen = 1u64;
                measure_retires(opts, readers, || {
                    let fresh = emit_body(jit, gen).expect("emit a body");
                    gen += 1;
                    drop(site.swap(&fresh).expect("swap"));
                })
                .finish(readers, || jit.barrier())
            },
        );
        drop(site);
        jit.barrier();
        sample
    }
}

/// liburcu: readers call the shared body through `slot`; `_body` keeps it mapped.
pub(super) struct UrcuSide {
    pub(super) urcu: Urcu,
    pub(super) slot: FnSlot,
    /// The body's entry (the `retire-read` objects carry it).
    pub(super) body: BodyFn,
    pub(super) _body: Trampoline,
}

impl Side for UrcuSide {
    fn synchronize(&self) {
        self.urcu.synchronize();
    }

    fn reader(&self, k: u64, stop: &AtomicBool, calls: &AtomicU64) {
        let me = self.urcu.register_thread();
        black_box(me.reader_loop(&self.slot, k, stop, calls));
    }

    fn mostly_offline_reader(&self, stop: &AtomicBool, calls: &AtomicU64) {
        let me = self.urcu.register_thread();
        let (mut acc, mut n) = (0u64, 0u64);
        while !stop.load(Ordering::Relaxed) {
            me.online();
            acc = me.read_burst(&self.slot, K, acc);
            me.offline();
            n += K;
            calls.store(n, Ordering::Relaxed);
            std::thread::sleep(GAP);
        }
        black_box(acc);
    }

    fn retire_round(&self, opts: &Opts, readers: usize, reader_uses_retired: bool) -> RetireSample {
        let slot = if reader_uses_retired {
            // SAFETY: `self.body` stays callable while `self` lives (`_body` keeps it mapped),
            // and the slot drops at the end of this round.
            unsafe { RetireSlot::with_body(&self.urcu, self.body) }
        } else {
            RetireSlot::new()
        };
        let sample = with_readers(
            readers,
            |_, stop, calls| {
                if reader_uses_retired {
                    let me = self.urcu.register_thread();
                    black_box(me.reader_loop_retired(&slot, K, stop, calls));
                } else {
                    self.reader(K, stop, calls);
                }
            },
            |readers| {
                let me = self.urcu.register_thread();
                std::thread::sleep(opts.warm_up());
                let mut seq = 0u64;
                let sample = measure_retires(opts, readers, || {
                    me.retire(&slot, seq);
                    seq += 1;
                    if seq % RETIRES_PER_CHECK == 0 {
                        me.quiescent();
                    }
                })
                .finish(readers, || me.barrier());
                drop(me);
                sample
            },
        );
        drop(slot); // a grace period, then the last object is freed
        sample
    }
}

// ---------------------------------------------------------------------------------------
// Readers and measurements

/// Readers running on scoped threads, with their call counters and CPU clocks.
pub(super) struct Readers<'a> {
    pub(super) calls: &'a [AtomicU64],
    pub(super) clocks: &'a [AtomicI32],
}

impl Readers<'_> {
    pub(super) fn calls(&self, i: usize) -> u64 {
        self.calls[i].load(Ordering::Relaxed)
    }

    /// CPU time reader `i` has used so far (valid while the readers run).
    pub(super) fn cpu_ns(&self, i: usize) -> u64 {
        clock_ns(self.clocks[i].load(Ordering::Relaxed))
    }

    /// CPU time all readers have used so far (0 without readers).
    pub(super) fn total_cpu_ns(&self) -> u64 {
        (0..self.clocks.len()).map(|i| self.cpu_ns(i)).sum()
    }
}

/// Starts `n` reader threads running `reader(i, stop, calls)`, waits until each has counted a
/// call, runs `body`, stops and joins the readers.
pub(super) fn with_readers<R>(
    n: usize,
    reader: impl Fn(usize, &AtomicBool, &AtomicU64) + Sync,
    body: impl FnOnce(&Readers<'_>) -> R,
) -> R {
    let stop = AtomicBool::new(false);
    let calls: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
    let clocks: Vec<AtomicI32> = (0..n).map(|_| AtomicI32::new(0)).collect();
    /// Stops the readers even if `body` panics, so the scope can join them.
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        for i in 0..n {
            let (reader, stop, calls, clock) = (&reader, &stop, &calls[i], &clocks[i]);
            s.spawn(move || {
                clock.store(own_cpu_clock(), Ordering::Relaxed);
                reader(i, stop, calls);
            });
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while calls.iter().any(|c| c.load(Ordering::Relaxed) == 0) {
            assert!(
                Instant::now() < deadline,
                "a reader did not start within 10 s"
            );
            std::thread::yield_now();
        }
        body(&Readers {
            calls: &calls,
            clocks: &clocks,
        })
    })
}

/// One round's `synchronize()` latencies (ns).
#[derive(Clone, Copy)]
pub(super) struct GpSample {
    /// Round time spent in `synchronize()` over the number of calls: what an updater waits
    /// per grace period.
    pub(super) mean: f64,
    pub(super) p50: f64,
    pub(super) p99: f64,
}

/// Times `synchronize()` calls for one round, back to back or [`GAP`] apart.
pub(super) fn time_gps<S: Side>(side: &S, opts: &Opts, cold: bool) -> GpSample {
    let mut lat = Vec::with_capacity(4096);
    let start = Instant::now();
    while start.elapsed() < opts.round {
        if cold {
            std::thread::sleep(GAP);
        }
        let t = Instant::now();
        side.synchronize();
        lat.push(t.elapsed().as_nanos() as f64);
    }
    let mean = lat.iter().sum::<f64>() / lat.len() as f64;
    lat.sort_by(f64::total_cmp);
    GpSample {
        mean,
        p50: percentile(&lat, 0.50),
        p99: percentile(&lat, 0.99),
    }
}

/// `synchronize()` latencies with `readers` readers reporting every `k` calls.
pub(super) fn sync_round<S: Side>(
    side: &S,
    opts: &Opts,
    readers: usize,
    k: u64,
    cold: bool,
) -> GpSample {
    with_readers(
        readers,
        |_, stop, calls| side.reader(k, stop, calls),
        |_| {
            let warm = Instant::now();
            while warm.elapsed() < opts.warm_up() {
                side.synchronize();
            }
            time_gps(side, opts, cold)
        },
    )
}

/// `synchronize()` latencies with one mostly offline registered thread.
pub(super) fn offline_round<S: Side>(side: &S, opts: &Opts) -> GpSample {
    with_readers(
        1,
        |_, stop, calls| side.mostly_offline_reader(stop, calls),
        |_| {
            std::thread::sleep(opts.warm_up());
            time_gps(side, opts, false)
        },
    )
}

/// One reader's calls/s with the updater idle and in back-to-back grace periods, half a
/// round each (which half comes first alternates with `idle_first`).
pub(super) fn slowdown_round<S: Side>(side: &S, opts: &Opts, idle_first: bool) -> (f64, f64) {
    with_readers(
        1,
        |_, stop, calls| side.reader(K, stop, calls),
        |readers| {
            std::thread::sleep(opts.warm_up());
            let half = opts.round / 2;
            let rate = |busy: bool| {
                let (c0, t0) = (readers.calls(0), Instant::now());
                if busy {
                    while t0.elapsed() < half {
                        side.synchronize();
                    }
                } else {
                    std::thread::sleep(half);
                }
                (readers.calls(0) - c0) as f64 / t0.elapsed().as_secs_f64()
            };
            if idle_first {
                let idle = rate(false);
                (idle, rate(true))
            } else {
                let busy = rate(true);
                (rate(false), busy)
            }
        },
    )
}

/// The clocks at the start of a retire measurement.
pub(super) struct RetireClocks {
    pub(super) retires: u64,
    pub(super) start: Instant,
    pub(super) updater_cpu: u64,
    pub(super) process_cpu: u64,
    pub(super) reader_cpu: u64,
}

/// Runs `retire` for one round (checking the clock every [`RETIRES_PER_CHECK`] retires).
pub(super) fn measure_retires(
    opts: &Opts,
    readers: &Readers<'_>,
    mut retire: impl FnMut(),
) -> RetireClocks {
    let mut clocks = RetireClocks {
        retires: 0,
        start: Instant::now(),
        updater_cpu: clock_ns(libc::CLOCK_THREAD_CPUTIME_ID),
        process_cpu: clock_ns(libc::CLOCK_PROCESS_CPUTIME_ID),
        reader_cpu: readers.total_cpu_ns(),
    };
    while clocks.start.elapsed() < opts.round {
        for _ in 0..RETIRES_PER_CHECK {
            retire();
        }
        clocks.retires += RETIRES_PER_CHECK;
    }
    clocks
}

impl RetireClocks {
    /// Runs the side's barrier and computes the sample.
    pub(super) fn finish(self, readers: &Readers<'_>, barrier: impl FnOnce()) -> RetireSample {
        barrier();
        let wall = self.start.elapsed().as_secs_f64();
        let updater = clock_ns(libc::CLOCK_THREAD_CPUTIME_ID) - self.updater_cpu;
        let process = clock_ns(libc::CLOCK_PROCESS_CPUTIME_ID) - self.process_cpu;
        let reader = readers.total_cpu_ns() - self.reader_cpu;
        let n = self.retires as f64;
        RetireSample {
            per_sec: n / wall,
            updater_cpu_ns: updater as f64 / n,
            other_cpu_ns: process.saturating_sub(updater + reader) as f64 / n,
        }
    }
}

/// The calling thread's CPU-time clock, for other threads to read while it runs.
pub(super) fn own_cpu_clock() -> libc::clockid_t {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: `pthread_self()` is the calling thread, and `clock` a valid out-pointer.
    let rc = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) };
    assert_eq!(rc, 0, "pthread_getcpuclockid failed");
    clock
}
