//! tramway against liburcu QSBR, side by side in one process (issue 12's table).
//!
//! ```sh
//! cargo bench --bench urcu_compare                 # the full run, about a minute on 2 cores
//! cargo bench --bench urcu_compare -- --quick      # CI smoke: 3 rounds of 100 ms, < 20 s
//! cargo bench --bench urcu_compare -- --help       # flags; a positional FILTER picks scenarios
//! ```
//!
//! # What is compared
//! Both sides run the same reader loop over the same JIT'd body, the project's
//! `imul rax, rdi, 3; add rax, gen; ret` (`tramway_harness::bench::workload::emit_body`),
//! emitted once by tramway's `Jit`:
//! - a **tramway** reader is an OS thread registered with the runtime
//!   (`Runtime::register_thread`) that calls the body through an indirect patch site, K calls
//!   per `ThreadRegistration::quiescent()`;
//! - a **liburcu** reader is an OS thread registered with liburcu QSBR that calls the same
//!   code address through an RCU-protected function-pointer slot (`rcu_dereference` per call),
//!   K calls per `rcu_quiescent_state()` (`harness/csrc/urcu_shim.c`; liburcu's read side is
//!   inlined with `_LGPL_SOURCE`).
//!
//! The updater is the main thread: for tramway an unregistered thread calling
//! `GraceDomain::synchronize()` of a `tramway::Builder::new().workers(1)` runtime (the default
//! Tasks flavor); for liburcu an unregistered thread calling `synchronize_rcu()`.
//!
//! # Scenarios (ids for the FILTER)
//! - `sync/...`: `synchronize()` called back to back, with no reader, with 1 reader
//!   reporting every 100 / 1000 / 100000 calls, with 2 readers: per round, the mean wait per
//!   call (the updater's view: time in `synchronize()` over calls). `cold/...`: the same
//!   with 1 ms of sleep between grace periods, so each one starts at a random point of the
//!   readers' loops: the latency an updater that needs one grace period sees. Per-GP p50 and
//!   p99 of the same runs are printed in a second table. Back to back the two libraries
//!   differ in kind, which the percentiles show: a tramway `quiescent()` passes through
//!   offline (and wakes the waiter from there), so grace periods that start while a reader
//!   is in that window, or preempted in it, end at once; a liburcu quiescent state copies
//!   the grace-period counter, so every liburcu grace period waits for a report made after
//!   it started.
//! - `offline`: one registered thread that is mostly offline (online for one burst of 100
//!   calls every millisecond).
//! - `slowdown`: one reader (K=100), its calls/s while the updater is idle and while it runs
//!   grace periods back to back; the slowdown is their quotient.
//! - `retire`: one reader (K=100) and an updater retiring as fast as it can. tramway: emit a
//!   fresh body, `Site::swap` it into the reader's site, drop the `Retired` (freed through the
//!   `GraceDomain`), `jit.barrier()` at the end. liburcu: `malloc` 64 bytes,
//!   `rcu_xchg_pointer`, `call_rcu(free)`, `rcu_barrier()` at the end; the updater is a
//!   registered online thread, as `call_rcu` requires, and reports a quiescent state every 100
//!   retires. The liburcu reader does not read the retired objects (what it reads does not
//!   change liburcu's cost); tramway's reader calls the code being retired. Retires/s
//!   include the final barrier; CPU per retire is the updater thread's CPU time
//!   (`CLOCK_THREAD_CPUTIME_ID`), and the rest of the process's CPU time less the reader's
//!   (tramway's GP driver, liburcu's call_rcu thread) is shown on its own row.
//! - `forwarder` (tramway only): TSC ticks per call from a JIT'd loop that calls its target N
//!   times: the body itself (a plain function pointer), a bare site, and a site whose
//!   trampoline is a counting forwarding trampoline to the body.
//!
//! # Method
//! Rounds are interleaved: tramway, liburcu, then liburcu, tramway, and so on (the order
//! alternates so neither side always runs right after the other). Each round starts its
//! readers afresh, waits until they run, warms up, then measures for the round's length.
//! A cell is the median of the round values, with their range. The ratio is
//! tramway / liburcu: below 1 tramway is faster for latencies and CPU, above 1 for rates.
//! The load average is printed before and after; nothing here asserts a time.
//!
//! Without liburcu (`harness/build.rs` found none, or `TRAMWAY_NO_URCU=1` at build time) the
//! bench prints one line saying so and how to install it, and exits 0. Under `cargo test`
//! (no `--bench` argument) it only prints what it would do.

#![warn(clippy::undocumented_unsafe_blocks)]

use std::fmt::Write as _;
use std::hint::black_box;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tramway::jit::dynasmrt::{dynasm, DynasmApi, DynasmLabelApi};
use tramway::jit::{ForwardingSpec, Jit, Site, SiteKind, Target, Trampoline};
use tramway::runtime::ThreadRegistration;
use tramway::Tramway;
use tramway_harness::bench::rounds::loadavg;
use tramway_harness::bench::workload::emit_body;
use tramway_harness::urcu::{self, FnSlot, RetireSlot, Urcu};

type BodyFn = extern "C" fn(u64) -> u64;

/// Calls per quiescent state in the slowdown, retire and offline scenarios (issue 12's K).
const K: u64 = 100;
/// The updater reads the clock once per this many retires; liburcu's updater also reports a
/// quiescent state then (its own call_rcu grace periods wait for it).
const RETIRES_PER_CHECK: u64 = 100;
/// Sleep between grace periods in the cold scenarios, and between the offline thread's bursts.
const GAP: Duration = Duration::from_millis(1);
/// Calls per measurement of the forwarder scenario, and measurements per round and variant.
const LOOP_CALLS: u64 = 1 << 20;
const LOOP_REPS: usize = 5;

const USAGE: &str = "\
urcu_compare: tramway against liburcu QSBR (see benches/urcu_compare.rs)

usage: cargo bench --bench urcu_compare -- [FLAGS] [FILTER...]

  --quick          CI smoke: 3 rounds of 100 ms per cell (the whole run < 20 s)
  --rounds N       rounds per cell and side (default 7; 3 with --quick)
  --round-ms MS    length of one round in ms, at least 10 (default 200; 100 with --quick)
  --list           list the scenario ids and exit
  -h, --help       this text
  FILTER           run only scenarios whose id contains one of these strings

Build-time switches (harness/build.rs): TRAMWAY_NO_URCU=1 builds without liburcu,
TRAMWAY_URCU_WARN=1 warns when it is missing, TRAMWAY_REQUIRE_URCU=1 fails the build then.
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it
    // (with whatever arguments the test run got), and then there is nothing to measure.
    if !args.iter().any(|a| a == "--bench") {
        println!(
            "urcu_compare: not measuring under cargo test (liburcu {}); run `cargo bench \
             --bench urcu_compare -- --help`",
            if urcu::available() {
                "found"
            } else {
                "missing"
            }
        );
        return ExitCode::SUCCESS;
    }
    let opts = match Opts::parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("urcu_compare: {e} (see --help)");
            return ExitCode::from(2);
        }
    };
    if opts.help {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    if opts.list {
        for s in SCENARIOS {
            println!("{:<18} {}", s.id, s.label);
        }
        return ExitCode::SUCCESS;
    }
    let Some(urcu) = Urcu::get() else {
        println!("urcu_compare: skipped: {}", urcu::MISSING);
        return ExitCode::SUCCESS;
    };
    let chosen: Vec<&Scenario> = SCENARIOS.iter().filter(|s| opts.wants(s.id)).collect();
    if chosen.is_empty() {
        println!(
            "urcu_compare: no scenario id matches {:?} (see --list)",
            opts.filters
        );
        return ExitCode::SUCCESS;
    }
    run(urcu, &opts, &chosen);
    ExitCode::SUCCESS
}

// ---------------------------------------------------------------------------------------
// Flags

struct Opts {
    rounds: usize,
    round: Duration,
    filters: Vec<String>,
    help: bool,
    list: bool,
}

impl Opts {
    fn parse(args: &[String]) -> Result<Opts, String> {
        let (mut quick, mut rounds, mut round_ms) = (false, None, None);
        let mut o = Opts {
            rounds: 0,
            round: Duration::ZERO,
            filters: Vec::new(),
            help: false,
            list: false,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--bench" => {}
                "--quick" => quick = true,
                "-h" | "--help" => o.help = true,
                "--list" => o.list = true,
                "--rounds" => rounds = Some(number(a, it.next(), 1)?),
                "--round-ms" => round_ms = Some(number(a, it.next(), 10)?),
                f if f.starts_with('-') => return Err(format!("unknown flag `{f}`")),
                filter => o.filters.push(filter.to_string()),
            }
        }
        o.rounds = rounds.unwrap_or(if quick { 3 } else { 7 }) as usize;
        o.round = Duration::from_millis(round_ms.unwrap_or(if quick { 100 } else { 200 }));
        Ok(o)
    }

    fn wants(&self, id: &str) -> bool {
        self.filters.is_empty() || self.filters.iter().any(|f| id.contains(f.as_str()))
    }

    /// Warm-up at the start of each round: a fifth of it, at most 20 ms.
    fn warm_up(&self) -> Duration {
        (self.round / 5).min(Duration::from_millis(20))
    }
}

fn number(flag: &str, value: Option<&String>, min: u64) -> Result<u64, String> {
    let v = value.ok_or(format!("`{flag}` needs a number"))?;
    match v.parse::<u64>() {
        Ok(n) if n >= min => Ok(n),
        _ => Err(format!("`{flag} {v}`: expected a whole number >= {min}")),
    }
}

// ---------------------------------------------------------------------------------------
// Scenarios

#[derive(Clone, Copy)]
enum Kind {
    /// `synchronize()` latency with `readers` readers reporting every `k` calls, back to
    /// back or with [`GAP`] between grace periods.
    Sync { readers: usize, k: u64, cold: bool },
    /// `synchronize()` latency with one registered thread that is mostly offline.
    Offline,
    /// Reader calls/s with the updater idle and in back-to-back grace periods.
    Slowdown,
    /// Retire throughput and CPU per retire.
    Retire,
    /// Forwarding trampoline vs bare site from JIT code (tramway only).
    Forwarder,
}

struct Scenario {
    id: &'static str,
    label: &'static str,
    kind: Kind,
}

const fn sync(id: &'static str, label: &'static str, readers: usize, k: u64) -> Scenario {
    Scenario {
        id,
        label,
        kind: Kind::Sync {
            readers,
            k,
            cold: false,
        },
    }
}

const fn cold(id: &'static str, label: &'static str, readers: usize, k: u64) -> Scenario {
    Scenario {
        id,
        label,
        kind: Kind::Sync {
            readers,
            k,
            cold: true,
        },
    }
}

const SCENARIOS: &[Scenario] = &[
    sync("sync/none", "synchronize(), no registered thread", 0, 0),
    sync(
        "sync/1r/k100",
        "synchronize(), 1 reader, QS every 100 calls",
        1,
        100,
    ),
    sync(
        "sync/1r/k1000",
        "synchronize(), 1 reader, QS every 1000 calls",
        1,
        1000,
    ),
    sync(
        "sync/1r/k100000",
        "synchronize(), 1 reader, QS every 100000 calls",
        1,
        100_000,
    ),
    sync(
        "sync/2r/k100",
        "synchronize(), 2 readers, QS every 100 calls",
        2,
        100,
    ),
    sync(
        "sync/2r/k1000",
        "synchronize(), 2 readers, QS every 1000 calls",
        2,
        1000,
    ),
    cold(
        "cold/1r/k100",
        "cold (1 ms gaps): 1 reader, QS every 100 calls",
        1,
        100,
    ),
    cold(
        "cold/1r/k1000",
        "cold (1 ms gaps): 1 reader, QS every 1000 calls",
        1,
        1000,
    ),
    cold(
        "cold/1r/k100000",
        "cold (1 ms gaps): 1 reader, QS every 100000 calls",
        1,
        100_000,
    ),
    cold(
        "cold/2r/k1000",
        "cold (1 ms gaps): 2 readers, QS every 1000 calls",
        2,
        1000,
    ),
    Scenario {
        id: "offline",
        label: "synchronize(), 1 registered thread mostly offline",
        kind: Kind::Offline,
    },
    Scenario {
        id: "slowdown",
        label: "reader calls/s, updater idle vs back-to-back GPs (K=100)",
        kind: Kind::Slowdown,
    },
    Scenario {
        id: "retire",
        label: "max retire rate, 1 reader (K=100)",
        kind: Kind::Retire,
    },
    Scenario {
        id: "forwarder",
        label: "counting forwarder vs bare site, from JIT code",
        kind: Kind::Forwarder,
    },
];

// ---------------------------------------------------------------------------------------
// The two sides

/// What a scenario needs of one side. Every method runs on the calling thread.
trait Side: Sync {
    /// One grace period, from the (unregistered) updater.
    fn synchronize(&self);
    /// Registers the calling thread and runs the reader loop (`k` calls, one quiescent
    /// state) until `stop`, publishing the call count in `calls`.
    fn reader(&self, k: u64, stop: &AtomicBool, calls: &AtomicU64);
    /// Registers the calling thread and, until `stop`: online, [`K`] calls, offline, sleep
    /// [`GAP`].
    fn mostly_offline_reader(&self, stop: &AtomicBool, calls: &AtomicU64);
    /// One round of the retire scenario.
    fn retire_round(&self, opts: &Opts) -> RetireSample;
}

struct RetireSample {
    per_sec: f64,
    updater_cpu_ns: f64,
    other_cpu_ns: f64,
}

/// tramway: a runtime with one worker, its grace domain, and a site whose only trampoline
/// is the shared body.
struct TramwaySide {
    tw: Tramway,
    site: Site,
}

/// The tramway reader loop; its C twin is `tw_urcu_reader_loop` in `urcu_shim.c`.
#[inline(never)]
fn tramway_reader(
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
fn tramway_burst(f: BodyFn, k: u64, mut acc: u64) -> u64 {
    for _ in 0..k {
        acc = f(acc);
    }
    acc
}

impl TramwaySide {
    fn register(&self) -> ThreadRegistration {
        self.tw
            .runtime
            .register_thread()
            .expect("a plain OS thread can register with the runtime")
    }

    /// The reader loop on `site`.
    fn read_site(&self, site: &Site, k: u64, stop: &AtomicBool, calls: &AtomicU64) {
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

    fn retire_round(&self, opts: &Opts) -> RetireSample {
        let jit = &self.tw.jit;
        let site = jit
            .site(SiteKind::Indirect, &emit_body(jit, 0).expect("emit a body"))
            .expect("a site");
        let sample = with_readers(
            1,
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
struct UrcuSide {
    urcu: Urcu,
    slot: FnSlot,
    _body: Trampoline,
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

    fn retire_round(&self, opts: &Opts) -> RetireSample {
        let slot = RetireSlot::new();
        let sample = with_readers(
            1,
            |_, stop, calls| self.reader(K, stop, calls),
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
struct Readers<'a> {
    calls: &'a [AtomicU64],
    clocks: &'a [AtomicI32],
}

impl Readers<'_> {
    fn calls(&self, i: usize) -> u64 {
        self.calls[i].load(Ordering::Relaxed)
    }

    /// CPU time reader `i` has used so far (valid while the readers run).
    fn cpu_ns(&self, i: usize) -> u64 {
        clock_ns(self.clocks[i].load(Ordering::Relaxed))
    }
}

/// Starts `n` reader threads running `reader(i, stop, calls)`, waits until each has counted a
/// call, runs `body`, stops and joins the readers.
fn with_readers<R>(
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
struct GpSample {
    /// Round time spent in `synchronize()` over the number of calls: what an updater waits
    /// per grace period.
    mean: f64,
    p50: f64,
    p99: f64,
}

/// Times `synchronize()` calls for one round, back to back or [`GAP`] apart.
fn time_gps<S: Side>(side: &S, opts: &Opts, cold: bool) -> GpSample {
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
fn sync_round<S: Side>(side: &S, opts: &Opts, readers: usize, k: u64, cold: bool) -> GpSample {
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
fn offline_round<S: Side>(side: &S, opts: &Opts) -> GpSample {
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
fn slowdown_round<S: Side>(side: &S, opts: &Opts, idle_first: bool) -> (f64, f64) {
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
struct RetireClocks {
    retires: u64,
    start: Instant,
    updater_cpu: u64,
    process_cpu: u64,
    reader_cpu: u64,
}

/// Runs `retire` for one round (checking the clock every [`RETIRES_PER_CHECK`] retires).
fn measure_retires(opts: &Opts, readers: &Readers<'_>, mut retire: impl FnMut()) -> RetireClocks {
    let mut clocks = RetireClocks {
        retires: 0,
        start: Instant::now(),
        updater_cpu: clock_ns(libc::CLOCK_THREAD_CPUTIME_ID),
        process_cpu: clock_ns(libc::CLOCK_PROCESS_CPUTIME_ID),
        reader_cpu: readers.cpu_ns(0),
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
    fn finish(self, readers: &Readers<'_>, barrier: impl FnOnce()) -> RetireSample {
        barrier();
        let wall = self.start.elapsed().as_secs_f64();
        let updater = clock_ns(libc::CLOCK_THREAD_CPUTIME_ID) - self.updater_cpu;
        let process = clock_ns(libc::CLOCK_PROCESS_CPUTIME_ID) - self.process_cpu;
        let reader = readers.cpu_ns(0) - self.reader_cpu;
        let n = self.retires as f64;
        RetireSample {
            per_sec: n / wall,
            updater_cpu_ns: updater as f64 / n,
            other_cpu_ns: process.saturating_sub(updater + reader) as f64 / n,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Forwarder vs bare site, from JIT code

/// Emits `extern "C" fn(n: u64) -> u64` that makes `n` dependent calls of `target`
/// (`acc = target(acc)`, from 0) and returns the last result.
fn emit_call_loop(jit: &Jit, target: *const u8) -> Trampoline {
    let target = target as i64;
    // SAFETY: the code implements `extern "C" fn(u64) -> u64`: it saves and restores the
    // callee-saved registers it uses (rbx, r12, r13), whose three pushes also leave rsp
    // 16-byte aligned at its calls; it never yields; it touches memory only through its
    // calls of `target`, whose code the caller keeps mapped for as long as this loop; its
    // only absolute address is the immediate `target` (dynasm local labels are relative).
    unsafe {
        jit.custom(|ops| {
            dynasm!(ops
                ; .arch x64
                ; push rbx
                ; push r12
                ; push r13
                ; mov rbx, rdi
                ; mov r12, QWORD target
                ; xor r13d, r13d
                ; test rbx, rbx
                ; jz >done
                ; next:
                ; mov rdi, r13
                ; call r12
                ; mov r13, rax
                ; dec rbx
                ; jnz <next
                ; done:
                ; mov rax, r13
                ; pop r13
                ; pop r12
                ; pop rbx
                ; ret
            );
        })
    }
    .expect("emit the call loop")
}

/// The time-stamp counter, after earlier instructions have completed (`lfence; rdtsc`).
fn tsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: `lfence` and `rdtsc` read the time-stamp counter into edx:eax; they touch no
    // memory, no stack and no flags.
    unsafe {
        std::arch::asm!(
            "lfence",
            "rdtsc",
            out("eax") lo,
            out("edx") hi,
            options(nomem, nostack, preserves_flags)
        );
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// TSC ticks per call for each variant (per round: the median of [`LOOP_REPS`]
/// measurements), and TSC ticks per ns.
fn forwarder_rounds(tw: &Tramway, opts: &Opts) -> (Vec<(&'static str, Vec<f64>)>, f64) {
    let jit = &tw.jit;
    let body = emit_body(jit, 1).expect("emit a body");
    let bare = jit.site(SiteKind::Indirect, &body).expect("a site");
    let forwarder = jit
        .forwarding(ForwardingSpec::new(Target::Trampoline(body.clone())).counted())
        .expect("a forwarding trampoline");
    let counted = jit.site(SiteKind::Indirect, &forwarder).expect("a site");
    let variants = [
        ("JIT loop -> body (plain fn pointer)", body.addr()),
        ("JIT loop -> bare site -> body", bare.entry()),
        (
            "JIT loop -> site -> counting forwarder -> body",
            counted.entry(),
        ),
    ];
    let loops: Vec<Trampoline> = variants
        .iter()
        .map(|&(_, t)| emit_call_loop(jit, t))
        .collect();
    let result = std::thread::scope(|s| {
        s.spawn(|| {
            let reg = tw.runtime.register_thread().expect("register");
            let fns: Vec<BodyFn> = loops
                .iter()
                .map(|l| {
                    // SAFETY: `emit_call_loop` code implements `BodyFn`; `loops`, the sites
                    // and the body it calls outlive this thread, which calls it only while
                    // registered and online (its targets include patch sites).
                    unsafe { std::mem::transmute::<*const u8, BodyFn>(l.addr()) }
                })
                .collect();
            let mut per_call = vec![Vec::new(); fns.len()];
            let (t0, c0) = (Instant::now(), tsc());
            for _ in 0..opts.rounds {
                let mut reps = vec![Vec::new(); fns.len()];
                for _ in 0..LOOP_REPS {
                    for (f, r) in fns.iter().zip(&mut reps) {
                        let c = tsc();
                        black_box(f(black_box(LOOP_CALLS)));
                        r.push((tsc() - c) as f64 / LOOP_CALLS as f64);
                        reg.quiescent();
                    }
                }
                for (r, out) in reps.iter_mut().zip(&mut per_call) {
                    out.push(median(r));
                }
            }
            let ticks_per_ns = (tsc() - c0) as f64 / t0.elapsed().as_nanos() as f64;
            (per_call, ticks_per_ns)
        })
        .join()
        .expect("the forwarder thread")
    });
    let (per_call, ticks_per_ns) = result;
    drop(loops);
    drop((counted, forwarder, bare, body));
    jit.barrier();
    let named = variants.iter().map(|&(n, _)| n).zip(per_call).collect();
    (named, ticks_per_ns)
}

// ---------------------------------------------------------------------------------------
// The run and its table

#[derive(Clone, Copy)]
enum Unit {
    Ns,
    PerSec,
    Factor,
    Ticks,
}

struct Row {
    label: String,
    unit: Unit,
    tramway: Vec<f64>,
    liburcu: Option<Vec<f64>>,
    /// For grace-period rows: the rounds' samples (tramway, liburcu), for the percentiles.
    gps: Option<(Vec<GpSample>, Vec<GpSample>)>,
}

fn run(urcu: Urcu, opts: &Opts, chosen: &[&Scenario]) {
    let started = Instant::now();
    let load_before = loadavg();
    let tw = tramway::Builder::new()
        .workers(1)
        .build()
        .expect("build tramway");
    let body = emit_body(&tw.jit, 0).expect("emit the body");
    let site = tw.jit.site(SiteKind::Indirect, &body).expect("a site");
    let t = TramwaySide { tw, site };
    // SAFETY: `body`'s code implements `BodyFn` (`emit_body`), and `UrcuSide` keeps a handle
    // on it for as long as the slot lives, so it stays mapped: a trampoline's code is freed
    // only after its last handle drops. (It is also never swapped out of `t.site`.)
    let slot = unsafe { FnSlot::new(std::mem::transmute::<*const u8, BodyFn>(body.addr())) };
    let u = UrcuSide {
        urcu,
        slot,
        _body: body,
    };

    let mut rows = Vec::new();
    let mut ticks_per_ns = None;
    for s in chosen {
        eprintln!("urcu_compare: {} ...", s.id);
        let label = s.label.to_string();
        match s.kind {
            Kind::Sync { readers, k, cold } => {
                let (a, b) = interleave(opts, |side, _| match side {
                    Which::Tramway => sync_round(&t, opts, readers, k, cold),
                    Which::Liburcu => sync_round(&u, opts, readers, k, cold),
                });
                rows.push(Row::gp(label, a, b));
            }
            Kind::Offline => {
                let (a, b) = interleave(opts, |side, _| match side {
                    Which::Tramway => offline_round(&t, opts),
                    Which::Liburcu => offline_round(&u, opts),
                });
                rows.push(Row::gp(label, a, b));
            }
            Kind::Slowdown => {
                let (a, b) = interleave(opts, |side, round| match side {
                    Which::Tramway => slowdown_round(&t, opts, round % 2 == 0),
                    Which::Liburcu => slowdown_round(&u, opts, round % 2 == 0),
                });
                let split = |v: &[(f64, f64)]| -> [Vec<f64>; 3] {
                    [
                        v.iter().map(|p| p.0).collect(),
                        v.iter().map(|p| p.1).collect(),
                        v.iter().map(|p| p.0 / p.1).collect(),
                    ]
                };
                let ([ai, ab, ar], [bi, bb, br]) = (split(&a), split(&b));
                rows.push(Row::pair(
                    "reader calls/s, updater idle (K=100)",
                    Unit::PerSec,
                    ai,
                    bi,
                ));
                rows.push(Row::pair(
                    "reader calls/s, updater in back-to-back GPs (K=100)",
                    Unit::PerSec,
                    ab,
                    bb,
                ));
                rows.push(Row::pair(
                    "reader slowdown during back-to-back GPs (K=100)",
                    Unit::Factor,
                    ar,
                    br,
                ));
            }
            Kind::Retire => {
                let (a, b) = interleave(opts, |side, _| match side {
                    Which::Tramway => t.retire_round(opts),
                    Which::Liburcu => u.retire_round(opts),
                });
                let col = |v: &[RetireSample], f: fn(&RetireSample) -> f64| -> Vec<f64> {
                    v.iter().map(f).collect()
                };
                rows.push(Row::pair(
                    "max retire rate, 1 reader (higher is better)",
                    Unit::PerSec,
                    col(&a, |s| s.per_sec),
                    col(&b, |s| s.per_sec),
                ));
                rows.push(Row::pair(
                    "updater CPU per retire",
                    Unit::Ns,
                    col(&a, |s| s.updater_cpu_ns),
                    col(&b, |s| s.updater_cpu_ns),
                ));
                rows.push(Row::pair(
                    "other threads' CPU per retire (GP driver / call_rcu thread)",
                    Unit::Ns,
                    col(&a, |s| s.other_cpu_ns),
                    col(&b, |s| s.other_cpu_ns),
                ));
            }
            Kind::Forwarder => {
                let (variants, tpn) = forwarder_rounds(&t.tw, opts);
                ticks_per_ns = Some(tpn);
                let overhead: Vec<f64> = variants[2]
                    .1
                    .iter()
                    .zip(&variants[1].1)
                    .map(|(f, b)| f - b)
                    .collect();
                for (name, v) in variants {
                    rows.push(Row::tramway_only(name, Unit::Ticks, v));
                }
                rows.push(Row::tramway_only(
                    "counting forwarder - bare site (TSC ticks/call)",
                    Unit::Ticks,
                    overhead,
                ));
            }
        }
    }
    let load_after = loadavg();
    print_report(
        opts,
        &rows,
        &load_before,
        &load_after,
        ticks_per_ns,
        started,
    );
}

#[derive(Clone, Copy)]
enum Which {
    Tramway,
    Liburcu,
}

/// Runs `round(side, round_index)` for both sides, `opts.rounds` times, interleaved with the
/// order alternating per round; returns (tramway's values, liburcu's values).
fn interleave<T>(opts: &Opts, mut round: impl FnMut(Which, usize) -> T) -> (Vec<T>, Vec<T>) {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for r in 0..opts.rounds {
        if r % 2 == 0 {
            a.push(round(Which::Tramway, r));
            b.push(round(Which::Liburcu, r));
        } else {
            b.push(round(Which::Liburcu, r));
            a.push(round(Which::Tramway, r));
        }
    }
    (a, b)
}

impl Row {
    fn pair(label: impl Into<String>, unit: Unit, tramway: Vec<f64>, liburcu: Vec<f64>) -> Row {
        Row {
            label: label.into(),
            unit,
            tramway,
            liburcu: Some(liburcu),
            gps: None,
        }
    }

    /// A grace-period row: the mean wait per `synchronize()`, percentiles kept aside.
    fn gp(label: impl Into<String>, tramway: Vec<GpSample>, liburcu: Vec<GpSample>) -> Row {
        let means = |v: &[GpSample]| v.iter().map(|s| s.mean).collect();
        Row {
            gps: Some((tramway.clone(), liburcu.clone())),
            ..Row::pair(label, Unit::Ns, means(&tramway), means(&liburcu))
        }
    }

    fn tramway_only(label: impl Into<String>, unit: Unit, tramway: Vec<f64>) -> Row {
        Row {
            label: label.into(),
            unit,
            tramway,
            liburcu: None,
            gps: None,
        }
    }
}

fn print_report(
    opts: &Opts,
    rows: &[Row],
    load_before: &str,
    load_after: &str,
    ticks_per_ns: Option<f64>,
    started: Instant,
) {
    let mut out = String::new();
    let cmd: Vec<String> = std::env::args().collect();
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let _ = writeln!(
        out,
        "\n## tramway vs liburcu QSBR {}\n",
        urcu::version().unwrap_or("?")
    );
    let _ = writeln!(out, "- command: `{}`", cmd.join(" "));
    let _ = writeln!(out, "- machine: nproc {nproc}, {}", cpu_model());
    let _ = writeln!(out, "- load average before: {load_before}");
    let _ = writeln!(
        out,
        "- {} rounds of {} ms per cell and side, interleaved (order alternating); cell: median \
         of the rounds [min-max]; ratio: tramway / liburcu; synchronize() rows: mean wait per \
         call (see the module docs of benches/urcu_compare.rs)",
        opts.rounds,
        opts.round.as_millis()
    );
    let _ = writeln!(
        out,
        "\n| scenario | tramway | liburcu | ratio |\n|---|---|---|---|"
    );
    for row in rows {
        let mut tw = row.tramway.clone();
        let tw_med = median(&mut tw);
        let (lu, ratio) = match &row.liburcu {
            Some(v) => {
                let mut v = v.clone();
                let lu_med = median(&mut v);
                (cell(row.unit, &v), format!("{:.2}x", tw_med / lu_med))
            }
            None => ("n/a".to_string(), String::new()),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            row.label,
            cell(row.unit, &tw),
            lu,
            ratio
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "- load average after: {load_after}");
    let gp_rows: Vec<_> = rows
        .iter()
        .filter_map(|r| r.gps.as_ref().map(|g| (&r.label, g)))
        .collect();
    if !gp_rows.is_empty() {
        let _ = writeln!(
            out,
            "\nPer-GP percentiles of the same runs (median over rounds):\n\n\
             | scenario | tramway p50 | tramway p99 | liburcu p50 | liburcu p99 |\n\
             |---|---|---|---|---|"
        );
        let pick = |v: &[GpSample], f: fn(&GpSample) -> f64| {
            let mut x: Vec<f64> = v.iter().map(f).collect();
            ns(median(&mut x))
        };
        for (label, (a, b)) in gp_rows {
            let _ = writeln!(
                out,
                "| {label} | {} | {} | {} | {} |",
                pick(a, |s| s.p50),
                pick(a, |s| s.p99),
                pick(b, |s| s.p50),
                pick(b, |s| s.p99)
            );
        }
        let _ = writeln!(out);
    }
    if let Some(t) = ticks_per_ns {
        let _ = writeln!(
            out,
            "- TSC: {t:.3} ticks/ns (nominal; core cycles differ under frequency scaling)"
        );
    }
    let _ = writeln!(out, "- wall time: {:.1} s", started.elapsed().as_secs_f64());
    print!("{out}");
}

/// `median [min-max]` of round values, in the row's unit.
fn cell(unit: Unit, v: &[f64]) -> String {
    let mut s = v.to_vec();
    let med = median(&mut s);
    let (lo, hi) = (s[0], s[s.len() - 1]);
    match unit {
        Unit::Ns if med >= 1000.0 => {
            format!("{:.2} us [{:.2}-{:.2}]", med / 1e3, lo / 1e3, hi / 1e3)
        }
        Unit::Ns => format!("{med:.0} ns [{lo:.0}-{hi:.0}]"),
        Unit::PerSec if med >= 1e6 => {
            format!("{:.2} M/s [{:.2}-{:.2}]", med / 1e6, lo / 1e6, hi / 1e6)
        }
        Unit::PerSec => format!("{:.0} k/s [{:.0}-{:.0}]", med / 1e3, lo / 1e3, hi / 1e3),
        Unit::Factor => format!("{med:.2}x [{lo:.2}-{hi:.2}]"),
        Unit::Ticks => format!("{med:.1} [{lo:.1}-{hi:.1}]"),
    }
}

/// A duration in ns, as `870 ns` or `8.70 us`.
fn ns(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.2} us", v / 1e3)
    } else {
        format!("{v:.0} ns")
    }
}

/// Sorts `v` and returns its median (the mean of the middle two for an even length; 0 for
/// an empty slice).
fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The `q` quantile of sorted `v` (nearest rank).
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string())
}

/// The calling thread's CPU-time clock, for other threads to read while it runs.
fn own_cpu_clock() -> libc::clockid_t {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: `pthread_self()` is the calling thread, and `clock` a valid out-pointer.
    let rc = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) };
    assert_eq!(rc, 0, "pthread_getcpuclockid failed");
    clock
}

/// `clock`'s time in ns.
fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; a clock that is not valid (a thread that exited)
    // only makes the call fail, which is checked.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime({clock}) failed");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
