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
//! - `retire-alone`: as `retire` below, without a reader: the updater's own cost, without the
//!   cache misses a reader's use of the published code or pointer causes.
//! - `retire`: one reader (K=100) and an updater retiring as fast as it can. tramway: emit a
//!   fresh body, `Site::swap` it into the reader's site, drop the `Retired` (freed through the
//!   `GraceDomain`), `jit.barrier()` at the end. liburcu: `malloc` 64 bytes,
//!   `rcu_xchg_pointer`, `call_rcu(free)`, `rcu_barrier()` at the end; the updater is a
//!   registered online thread, as `call_rcu` requires, and reports a quiescent state every 100
//!   retires. Here the liburcu reader does not read the retired objects; tramway's reader
//!   calls the code being retired, which costs the updater a cache miss per swap (the
//!   reader holds the patch word's line) that the liburcu updater never pays.
//! - `retire-read`: the same, but the liburcu reader calls through the objects being retired
//!   (`rcu_dereference` of the published object, then its body), as RCU readers use what it
//!   protects and as tramway's reader does. tramway's side is the same as in `retire`. Retires/s
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
//! The load average and the host's cross-core line-transfer time are printed before and
//! after; nothing here asserts a time. The retire rows also get a table of their per-pair
//! updater-CPU ratios split by the transfer time measured around each round pair
//! (`host.rs`): on the 2-vCPU guests this runs on, that time switches between about 30 and
//! about 160 ns every few seconds, and a retire with a reader costs both sides several times
//! more in the slow state.
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
use tramway_harness::bench::line_transfer;
use tramway_harness::bench::rounds::{clock_ns, loadavg};
use tramway_harness::bench::workload::emit_body;
use tramway_harness::urcu::{self, FnSlot, RetireSlot, Urcu};

mod forwarder;
mod host;
mod report;
mod sides;

use forwarder::*;
use host::*;
use report::*;
use sides::*;

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
urcu_compare: tramway against liburcu QSBR (see benches/urcu_compare/main.rs)

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
    /// Retire throughput and CPU per retire; with `reader_uses_retired`, the liburcu reader
    /// calls through the objects being retired (tramway's reader always calls the code
    /// being retired).
    Retire {
        readers: usize,
        reader_uses_retired: bool,
    },
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
        id: "retire-alone",
        label: "max retire rate, no reader",
        kind: Kind::Retire {
            readers: 0,
            reader_uses_retired: false,
        },
    },
    Scenario {
        id: "retire",
        label: "max retire rate, 1 reader (K=100)",
        kind: Kind::Retire {
            readers: 1,
            reader_uses_retired: false,
        },
    },
    Scenario {
        id: "retire-read",
        label: "max retire rate, 1 reader calling what is retired (K=100)",
        kind: Kind::Retire {
            readers: 1,
            reader_uses_retired: true,
        },
    },
    Scenario {
        id: "forwarder",
        label: "counting forwarder vs bare site, from JIT code",
        kind: Kind::Forwarder,
    },
];

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
    let load_before = format!("{}; {}", loadavg(), line_transfer::describe());
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
    // SAFETY: as for `slot`.
    let body_fn = unsafe { std::mem::transmute::<*const u8, BodyFn>(body.addr()) };
    let u = UrcuSide {
        urcu,
        slot,
        body: body_fn,
        _body: body,
    };

    let mut rows = Vec::new();
    let mut retire_states = Vec::new();
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
            Kind::Retire {
                readers,
                reader_uses_retired,
            } => {
                let (a, b, transfers) = interleave_with_transfers(opts, |side, _| match side {
                    Which::Tramway => t.retire_round(opts, readers, reader_uses_retired),
                    Which::Liburcu => u.retire_round(opts, readers, reader_uses_retired),
                });
                let col = |v: &[RetireSample], f: fn(&RetireSample) -> f64| -> Vec<f64> {
                    v.iter().map(f).collect()
                };
                let reader = match (readers, reader_uses_retired) {
                    (0, _) => "no reader",
                    (_, true) => "1 reader, which calls what is retired",
                    (_, false) => "1 reader; the liburcu one does not read what is retired",
                };
                rows.push(Row::pair(
                    format!("max retire rate (higher is better; {reader})"),
                    Unit::PerSec,
                    col(&a, |s| s.per_sec),
                    col(&b, |s| s.per_sec),
                ));
                retire_states.push(RetireStates {
                    label: reader.to_string(),
                    ratios: a
                        .iter()
                        .zip(&b)
                        .map(|(t, u)| t.updater_cpu_ns / u.updater_cpu_ns)
                        .collect(),
                    transfers,
                });
                rows.push(Row::pair(
                    format!("updater CPU per retire ({reader})"),
                    Unit::Ns,
                    col(&a, |s| s.updater_cpu_ns),
                    col(&b, |s| s.updater_cpu_ns),
                ));
                rows.push(Row::pair(
                    format!(
                        "other threads' CPU per retire (GP driver / call_rcu thread; {reader})"
                    ),
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
    let load_after = format!("{}; {}", loadavg(), line_transfer::describe());
    print_report(
        opts,
        &rows,
        &load_before,
        &load_after,
        ticks_per_ns,
        started,
        &retire_states,
    );
    // The safety net of waits for registered threads (grace/stall.rs) must never be what ends
    // one: a non-zero count is a lost wake-up, a bug.
    let stats = t.tw.grace.stats();
    println!(
        "- tramway: {} grace periods, {} reader wake-ups, {} ended by the safety net (lost \
         wake-ups; 0 expected)",
        stats.completed, stats.reader_wakeups, stats.lost_wakeups
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
