//! The torture harness (rcutorture-style), shared by `tests/torture.rs` and the
//! `torture` example.
//!
//! Readers (green-thread tasks on every worker, plus a registered OS thread) call patch
//! sites in a loop. A patcher emits a fresh *generation* for a site as fast as it can: a
//! target trampoline returning `x + gen` and a forwarding trampoline in front of it whose
//! hook observes the generation. It swaps the site and retires the old generation.
//!
//! Pipe count: every generation has an `age`: 0 while installed, 1 once retired, 2 once a
//! grace period has ended after its retirement (set by the GP callback that also drops the
//! retired handle). A reader inside a trampoline is not quiescent, so it must never see
//! age 2: seeing it means a grace period ended too early (a "stale" observation). The
//! hook reads the age when it starts and again when it ends, after optionally simulating
//! preemption inside the trampoline (spinning or sleeping in the OS without yielding).
//! Some calls spin inside the target's JIT code instead: with [`TortureConfig::preempt`],
//! that is where readers are preempted, switched out inside code the patcher then retires;
//! freeing it too early makes the reader resume into trap-filled code and crash.
//!
//! With [`Reclaim::Immediate`] (the control) the old generation is freed at once: readers
//! then observe age 2 or execute trap-filled/unmapped code and crash.

use std::cell::Cell;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tramway_jit::{
    dynasmrt::{dynasm, DynasmApi, DynasmLabelApi},
    ForwardingSpec, Hook, HookArgs, ImmediateReclaim, Jit, JitStats, Site, SiteKind, Target,
    Trampoline,
};
use tramway_runtime::grace::{Flavor, GraceConfig, GraceDomain, GraceStats};
use tramway_runtime::{Runtime, ThreadRegistration};

use super::rng::Rng;

/// How retired generations are reclaimed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reclaim {
    /// After a grace period of the given flavor (the system under test).
    Grace(Flavor),
    /// At once, without a grace period (the control that must fail).
    Immediate,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct TortureConfig {
    /// Worker threads.
    pub workers: usize,
    /// Reader tasks alive at any time (they exit and are replaced during the run).
    pub reader_tasks: usize,
    /// Patch sites.
    pub sites: usize,
    /// Site kind.
    pub site_kind: SiteKind,
    /// Stop once both minimums are reached...
    pub min_calls: u64,
    /// ...(swaps)...
    pub min_swaps: u64,
    /// ...or when this much time has passed.
    pub max_duration: Duration,
    /// Reclamation strategy.
    pub reclaim: Reclaim,
    /// Also read from a registered OS thread.
    pub registered_reader: bool,
    /// Preempt reader tasks inside JIT code every this long (their call bursts run inside a
    /// preemptible scope), or not at all.
    pub preempt: Option<Duration>,
    /// The grace domain's lazy-callback delay (`None`: its default). Zero starts a grace
    /// period as soon as something is retired.
    pub callback_delay: Option<Duration>,
}

impl Default for TortureConfig {
    fn default() -> Self {
        TortureConfig {
            workers: 2,
            reader_tasks: 8,
            sites: 4,
            site_kind: SiteKind::Indirect,
            min_calls: 2_000_000,
            min_swaps: 200_000,
            max_duration: Duration::from_secs(120),
            reclaim: Reclaim::Grace(Flavor::Tasks),
            registered_reader: true,
            preempt: None,
            callback_delay: None,
        }
    }
}

/// The backlog bound the harness configures (`JitBuilder::max_retired_bytes`).
pub const RETIRED_BYTES_BOUND: usize = 1 << 20;

/// What happened.
#[derive(Clone, Debug, Default)]
pub struct TortureReport {
    /// Calls through sites.
    pub calls: u64,
    /// Swaps performed.
    pub swaps: u64,
    /// Hook observations of age 0, 1, >= 2.
    pub ages: [u64; 3],
    /// Calls whose result did not come from the generation the hook observed.
    pub invalid_results: u64,
    /// Reader tasks spawned during the run.
    pub tasks_spawned: u64,
    /// Largest number of retired, unreclaimed trampolines seen by the patcher.
    pub peak_retired: u64,
    /// Largest number of retired, unreclaimed code bytes seen by the patcher.
    pub peak_retired_bytes: usize,
    /// Largest mapped code size seen by the patcher.
    pub peak_mapped_bytes: usize,
    /// Jit counters after the final barrier (before the Jit drops).
    pub final_stats: JitStats,
    /// Mapped code bytes after everything was dropped.
    pub mapped_bytes_after_drop: usize,
    /// Grace-period counters.
    pub gp: GraceStats,
    /// Wall time.
    pub elapsed: Duration,
    /// Reader tasks preempted inside JIT code.
    pub preemptions: u64,
}

impl TortureReport {
    /// Observations that prove a grace period ended too early.
    pub fn stale(&self) -> u64 {
        self.ages[2]
    }
}

/// One generation's pipe count and the counters its hook reports to.
struct Generation {
    gen: u64,
    age: AtomicU64,
    obs: Arc<Observations>,
}

#[derive(Default)]
struct Observations {
    ages: [AtomicU64; 3],
}

/// Preemption simulated inside the trampoline, chosen by the caller's second argument.
const MODE_PLAIN: u64 = 0;
const MODE_SPIN: u64 = 1;
const MODE_SLEEP: u64 = 2;
/// Spins inside the generation's *JIT code* (its target body), where a task can be preempted
/// when the run preempts: a preempted reader then sits switched out inside retired code.
const MODE_JIT_SPIN: u64 = 3;
/// Iterations of the target body's spin loop (one `dec`/`jnz` each: tens of microseconds,
/// more than the preemption quantum the tests use).
const JIT_SPIN_ITERATIONS: i32 = 1 << 18;

unsafe extern "C" fn observe(user: *mut c_void, args: *const HookArgs) {
    // SAFETY: `user` is a `Generation` kept alive by the harness until every reader and
    // the Jit are gone; `args` points at the trampoline's saved registers.
    let (g, args) = unsafe { (&*(user as *const Generation), &*args) };
    let record = |age: u64| g.obs.ages[age.min(2) as usize].fetch_add(1, Ordering::Relaxed);
    record(g.age.load(Ordering::Acquire));
    match args.int_args[1] {
        MODE_SPIN => {
            let until = Instant::now() + Duration::from_micros(20);
            while Instant::now() < until {
                std::hint::spin_loop();
            }
        }
        // Blocked in the OS while inside the trampoline: not a yield point.
        MODE_SLEEP => std::thread::sleep(Duration::from_micros(200)),
        _ => {}
    }
    let age = g.age.load(Ordering::Acquire);
    if age >= 2 {
        record(age);
    }
    // The caller's own slot for this call (its third argument): never a thread-local, which a
    // task that migrated between workers would read from another worker's copy.
    // SAFETY: `Readers::call` passes the address of a `Cell` on its stack that outlives the
    // call; only this call's thread touches it.
    unsafe { &*(args.int_args[2] as *const Cell<u64>) }.set(g.gen);
}

/// Emits generation `gen`: `target(x, mode, _) = x + gen` (spinning first when `mode` is
/// [`MODE_JIT_SPIN`]) behind a forwarding trampoline whose hook observes `g` and records it in
/// the caller's slot (the third argument).
fn emit_generation(jit: &Jit, g: &Generation) -> Trampoline {
    let gen = i32::try_from(g.gen).expect("generation fits in imm32");
    // SAFETY: the body spins on `ecx` (caller-saved) when `rsi == MODE_JIT_SPIN`, then returns
    // `rdi + gen`: it implements `extern "C" fn(u64, u64, *const Cell<u64>) -> u64`, never
    // yields and touches no memory.
    let target = unsafe {
        jit.custom(|ops| {
            dynasm!(ops
                ; .arch x64
                ; cmp rsi, MODE_JIT_SPIN as i32
                ; jne >done
                ; mov ecx, JIT_SPIN_ITERATIONS
                ; spin:
                ; dec ecx
                ; jnz <spin
                ; done:
                ; lea rax, [rdi + gen]
                ; ret
            );
        })
    }
    .expect("emit target");
    jit.forwarding(ForwardingSpec::new(Target::Trampoline(target)).hook(Hook {
        func: observe,
        user: g as *const Generation as *mut c_void,
    }))
    .expect("emit forwarding trampoline")
}

/// `(x, mode, slot the hook records the generation in) -> x + generation`.
type SiteFn = extern "C" fn(u64, u64, *const Cell<u64>) -> u64;

/// Shared by readers.
struct Readers {
    fns: Vec<SiteFn>,
    stop: AtomicBool,
    calls: AtomicU64,
    invalid: AtomicU64,
}

impl Readers {
    /// One call with a check; `mode` selects simulated preemption.
    #[inline]
    fn call(&self, site: usize, x: u64, mode: u64) {
        let seen = Cell::new(0);
        let r = (self.fns[site])(x, mode, &seen);
        if r.wrapping_sub(x) != seen.get() {
            self.invalid.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn reader_task(readers: &Readers, seed: u64, rounds: u64) {
    let mut rng = Rng(seed | 1);
    for _ in 0..rounds {
        if readers.stop.load(Ordering::Relaxed) {
            return;
        }
        let r = rng.next_u64();
        // Mostly short bursts; sometimes a long run of calls without any yield point.
        let burst = if r % 16 == 0 { 5_000 } else { 64 };
        // The burst may be preempted inside JIT code (when the run preempts): it holds no
        // lock and reads no thread-local.
        tramway_runtime::preemptible(|| {
            for i in 0..burst {
                let r = rng.next_u64();
                let mode = match r % 4096 {
                    0 => MODE_SLEEP,
                    1..=7 => MODE_SPIN,
                    8..=15 => MODE_JIT_SPIN,
                    _ => MODE_PLAIN,
                };
                readers.call((r >> 20) as usize % readers.fns.len(), i, mode);
            }
        });
        readers.calls.fetch_add(burst, Ordering::Relaxed);
        match r % 8 {
            0 => tramway_runtime::sleep(Duration::from_micros(50)),
            1..=5 => tramway_runtime::yield_now(),
            _ => {} // keep going without a yield point
        }
    }
}

fn registered_reader(readers: &Readers, reg: ThreadRegistration) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    while !readers.stop.load(Ordering::Relaxed) {
        for i in 0..256 {
            let r = rng.next_u64();
            readers.call((r >> 20) as usize % readers.fns.len(), i, MODE_PLAIN);
        }
        readers.calls.fetch_add(256, Ordering::Relaxed);
        if rng.next_u64() % 8 == 0 {
            reg.offline();
            std::thread::sleep(Duration::from_micros(100));
            reg.online();
        } else {
            reg.quiescent();
        }
    }
}

/// Runs the torture test and reports; the caller asserts.
pub fn run(cfg: &TortureConfig) -> TortureReport {
    let start = Instant::now();
    let mut builder = Runtime::builder().workers(cfg.workers);
    if let Some(quantum) = cfg.preempt {
        builder = builder.preempt(quantum);
    }
    let rt = builder.build().expect("runtime");
    let flavor = match cfg.reclaim {
        Reclaim::Grace(f) => f,
        Reclaim::Immediate => Flavor::Tasks,
    };
    let mut grace = GraceConfig::default().flavor(flavor);
    if let Some(delay) = cfg.callback_delay {
        grace = grace.callback_delay(delay);
    }
    let gp = GraceDomain::new(&rt, grace).expect("grace domain");
    let reclaimer: Arc<dyn tramway_jit::Reclaim> = match cfg.reclaim {
        Reclaim::Grace(_) => Arc::new(gp.clone()),
        // SAFETY: deliberately unsound: this is the control run, expected to crash or to
        // observe stale generations.
        Reclaim::Immediate => Arc::new(unsafe { ImmediateReclaim::new_unchecked() }),
    };
    let jit = Jit::builder()
        .reclaimer(reclaimer)
        .max_retired_bytes(RETIRED_BYTES_BOUND)
        .build()
        .expect("jit");
    let stats = jit.stats_handle();

    let obs = Arc::new(Observations::default());
    // Generations live until the very end: a hook may read one after its code was freed in
    // the control run, and that read must hit valid memory to be *detected*.
    let generations: Mutex<Vec<Box<Generation>>> = Mutex::new(Vec::new());
    let new_generation = |gen: u64| -> *const Generation {
        let g = Box::new(Generation {
            gen,
            age: AtomicU64::new(0),
            obs: obs.clone(),
        });
        let p = &*g as *const Generation;
        generations.lock().unwrap().push(g);
        p
    };

    let mut next_gen = 1u64;
    let mut current: Vec<*const Generation> = Vec::new();
    let sites: Vec<Site> = (0..cfg.sites)
        .map(|_| {
            let g = new_generation(next_gen);
            next_gen += 1;
            current.push(g);
            // SAFETY: generations outlive the Jit (dropped last, below).
            jit.site(cfg.site_kind, &emit_generation(&jit, unsafe { &*g }))
                .expect("site")
        })
        .collect();
    let readers = Arc::new(Readers {
        // SAFETY: every generation implements `extern "C" fn(u64, u64) -> u64`.
        fns: sites
            .iter()
            .map(|s| unsafe { s.as_fn::<SiteFn>() })
            .collect(),
        stop: AtomicBool::new(false),
        calls: AtomicU64::new(0),
        invalid: AtomicU64::new(0),
    });

    // Readers: a supervisor task keeps `reader_tasks` short-lived tasks running.
    let tasks_spawned = Arc::new(AtomicU64::new(0));
    let supervisor = {
        let (rt2, readers, spawned, n) = (
            rt.clone(),
            readers.clone(),
            tasks_spawned.clone(),
            cfg.reader_tasks,
        );
        rt.spawn(move || {
            let mut live = Vec::new();
            let mut seed = 1u64;
            while !readers.stop.load(Ordering::Relaxed) {
                live.retain(|h: &tramway_runtime::JoinHandle<()>| !h.is_finished());
                while live.len() < n {
                    seed += 1;
                    let r = readers.clone();
                    let rounds = 200 + seed % 400;
                    live.push(
                        rt2.spawn(move || reader_task(&r, seed, rounds))
                            .expect("spawn reader"),
                    );
                    spawned.fetch_add(1, Ordering::Relaxed);
                }
                tramway_runtime::sleep(Duration::from_millis(1));
            }
            for h in live {
                h.join().expect("reader task");
            }
        })
        .expect("spawn supervisor")
    };
    let os_reader = cfg.registered_reader.then(|| {
        let reg_rt = rt.clone();
        let readers = readers.clone();
        std::thread::spawn(move || {
            let reg = reg_rt.register_thread().expect("register");
            registered_reader(&readers, reg)
        })
    });

    // The patcher (this thread; it never calls a site, so it need not be registered).
    let mut swaps = 0u64;
    let (mut peak_retired, mut peak_retired_bytes, mut peak_mapped) = (0u64, 0usize, 0usize);
    loop {
        let site = (swaps as usize) % sites.len();
        let g = new_generation(next_gen);
        next_gen += 1;
        // SAFETY: as above.
        let tramp = emit_generation(&jit, unsafe { &*g });
        let retired = sites[site].swap(&tramp).expect("swap");
        drop(tramp);
        // SAFETY: generations outlive the run.
        let old = unsafe { &*std::mem::replace(&mut current[site], g) };
        old.age.store(1, Ordering::Release);
        let old_age: &'static AtomicU64 = {
            // SAFETY: the Box behind `old` lives until after every callback has run (the
            // Jit and the domain are dropped before `generations`).
            unsafe { &*(&old.age as *const AtomicU64) }
        };
        match cfg.reclaim {
            Reclaim::Grace(_) => gp.call(move || {
                old_age.store(2, Ordering::Release);
                drop(retired);
            }),
            Reclaim::Immediate => {
                old_age.store(2, Ordering::Release);
                // SAFETY: deliberately unsound (the control).
                unsafe { retired.reclaim_now() };
            }
        }
        swaps += 1;
        if swaps % 256 == 0 {
            let s = stats.get();
            peak_retired = peak_retired.max(s.retired);
            peak_retired_bytes = peak_retired_bytes.max(s.retired_bytes);
            peak_mapped = peak_mapped.max(s.mapped_bytes);
            let calls = readers.calls.load(Ordering::Relaxed);
            let enough = calls >= cfg.min_calls && swaps >= cfg.min_swaps;
            if enough || start.elapsed() >= cfg.max_duration {
                break;
            }
        }
    }

    readers.stop.store(true, Ordering::Relaxed);
    supervisor.join().expect("supervisor");
    if let Some(t) = os_reader {
        t.join().expect("registered reader");
    }
    // Reclaim everything: freeing a forwarding trampoline defers its target's free, so
    // barrier until nothing is left retired.
    drop(sites);
    for _ in 0..8 {
        gp.barrier();
        if stats.get().retired == 0 {
            break;
        }
    }
    let final_stats = stats.get();
    let (calls, invalid_results) = (
        readers.calls.load(Ordering::Relaxed),
        readers.invalid.load(Ordering::Relaxed),
    );
    drop(readers);
    drop(jit);
    gp.barrier();
    let gp_stats = gp.stats();
    let rt_stats_preemptions = rt.stats().preempt.preemptions;
    drop(gp);
    drop(rt);
    let report = TortureReport {
        calls,
        swaps,
        ages: [0, 1, 2].map(|i| obs.ages[i].load(Ordering::Relaxed)),
        invalid_results,
        tasks_spawned: tasks_spawned.load(Ordering::Relaxed),
        peak_retired,
        peak_retired_bytes,
        peak_mapped_bytes: peak_mapped,
        final_stats,
        mapped_bytes_after_drop: stats.get().mapped_bytes,
        gp: gp_stats,
        elapsed: start.elapsed(),
        preemptions: rt_stats_preemptions,
    };
    drop(generations);
    report
}
