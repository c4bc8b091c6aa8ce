//! Asynchronous preemption inside JIT code (`tramway_runtime::preempt`), and the question the
//! RCU Tasks flavor was made for: a task preempted in the middle of a trampoline still holds
//! it. With the Tasks flavor the trampoline survives until the task resumes and yields; with
//! the Rude flavor it is freed under the task, which then crashes (in a child process).

use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tramway_harness::wait::within;

use tramway_jit::dynasmrt::{dynasm, DynasmApi, DynasmLabelApi};
use tramway_jit::{Jit, Site, SiteKind, Trampoline};
use tramway_runtime::grace::{Flavor, GraceConfig, GraceDomain};
use tramway_runtime::{preemptible, yield_now, Runtime};

const QUANTUM: Duration = Duration::from_millis(2);

/// `extern "C" fn(flag: *const AtomicU64) -> u64`: spins inside JIT code until `*flag != 0`,
/// then returns `tag`.
fn spin_until_set(jit: &Jit, tag: i32) -> Trampoline {
    // SAFETY: the code reads the 8 bytes `rdi` points at (an `AtomicU64` the caller keeps
    // alive), never yields, writes no memory and returns `tag`.
    unsafe {
        jit.custom(|ops| {
            dynasm!(ops
                ; .arch x64
                ; ->spin:
                ; mov rax, [rdi]
                ; test rax, rax
                ; jz ->spin
                ; mov eax, tag
                ; ret
            );
        })
    }
    .expect("emit the spin loop")
}

type SpinFn = extern "C" fn(*const AtomicU64) -> u64;

fn preemptive_runtime(workers: usize) -> Runtime {
    Runtime::builder()
        .workers(workers)
        .preempt(QUANTUM)
        .build()
        .expect("a preemptive runtime")
}

/// A task calls `site` (a spin loop) inside a preemptible scope and spins until released.
struct Spinner {
    release: Arc<AtomicU64>,
    inside: Arc<AtomicBool>,
    task: tramway_runtime::JoinHandle<u64>,
}

fn spin_in_site(rt: &Runtime, site: &Site) -> Spinner {
    let (release, inside) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    // SAFETY: every trampoline of these sites is a `spin_until_set` loop (`SpinFn`); the task
    // is a reader of the runtime the domain tracks; the sites outlive the task (joined first).
    let f: SpinFn = unsafe { site.as_fn() };
    let (r, i) = (release.clone(), inside.clone());
    let task = rt
        .spawn(move || {
            let v = preemptible(|| {
                i.store(true, Ordering::Release);
                f(&*r)
            });
            yield_now(); // its voluntary yield point after leaving the old code
            v
        })
        .unwrap();
    assert!(within(Duration::from_secs(10), || inside.load(Ordering::Acquire)));
    Spinner {
        release,
        inside,
        task,
    }
}

#[test]
fn a_task_spinning_in_jit_code_is_preempted_and_others_run_on_its_worker() {
    let rt = preemptive_runtime(1);
    let jit = Jit::new().unwrap();
    let site = jit
        .site(SiteKind::Indirect, &spin_until_set(&jit, 7))
        .unwrap();
    let spinner = spin_in_site(&rt, &site);
    // The only worker is busy spinning in JIT code; this task can only run if it is preempted.
    let progress = rt.spawn(|| 41 + 1).unwrap();
    assert_eq!(
        progress.join().unwrap(),
        42,
        "a second task ran on the same worker"
    );
    let stats = rt.stats().preempt;
    assert!(stats.preemptions >= 1, "{stats:?}");
    assert!(stats.signals_sent >= 1, "{stats:?}");
    spinner.release.store(1, Ordering::Release);
    assert_eq!(
        spinner.task.join().unwrap(),
        7,
        "it resumed and returned its value"
    );
    assert!(spinner.inside.load(Ordering::Relaxed));
}

#[test]
fn code_outside_a_preemptible_scope_or_outside_jit_code_is_not_preempted() {
    let rt = preemptive_runtime(1);
    let release = Arc::new(AtomicBool::new(false));
    let r = release.clone();
    // Rust code spinning inside a preemptible scope: not JIT code, so never preempted.
    let spinner = rt
        .spawn(move || {
            preemptible(|| {
                while !r.load(Ordering::Acquire) {
                    std::hint::spin_loop();
                }
            })
        })
        .unwrap();
    std::thread::sleep(QUANTUM * 20);
    let stats = rt.stats().preempt;
    assert_eq!(stats.preemptions, 0, "{stats:?}");
    assert!(stats.ignored_outside_code >= 1, "{stats:?}");
    release.store(true, Ordering::Release);
    spinner.join().unwrap();

    // JIT code outside any scope: signalled, not preempted.
    let jit = Jit::new().unwrap();
    let body = spin_until_set(&jit, 1);
    // SAFETY: a `SpinFn` body, kept alive by `body` until after the join.
    let f: SpinFn = unsafe { std::mem::transmute(body.addr()) };
    let flag = Arc::new(AtomicU64::new(0));
    let fl = flag.clone();
    let task = rt.spawn(move || f(&*fl)).unwrap();
    std::thread::sleep(QUANTUM * 20);
    let stats = rt.stats().preempt;
    assert_eq!(stats.preemptions, 0, "{stats:?}");
    assert!(stats.ignored_no_scope >= 1, "{stats:?}");
    flag.store(1, Ordering::Release);
    assert_eq!(task.join().unwrap(), 1);
}

/// A site over a `spin_until_set` trampoline (tag 1), and a task spinning in it that the
/// runtime has preempted at least once.
fn preempted_spinner(rt: &Runtime, jit: &Jit) -> (Site, Spinner) {
    let site = jit
        .site(SiteKind::Indirect, &spin_until_set(jit, 1))
        .unwrap();
    let spinner = spin_in_site(rt, &site);
    assert!(within(Duration::from_secs(10), || rt
        .stats()
        .preempt
        .preemptions
        >= 1));
    (site, spinner)
}

/// The scenario of the pair below: a task preempted inside trampoline T1; the site is swapped
/// to T2 and T1 retired; a grace period of `flavor` then runs. Returns whether the GP ended
/// while the task was still preempted inside T1, and the task's result once released.
fn preempted_inside_a_retired_trampoline(flavor: Flavor) -> (bool, u64) {
    let rt = preemptive_runtime(1);
    let gp = GraceDomain::new(&rt, GraceConfig::default().flavor(flavor)).unwrap();
    let jit = Jit::builder()
        .reclaimer(Arc::new(gp.clone()))
        .build()
        .unwrap();
    let stats = jit.stats_handle();
    // Once preempted, the spinner is a holdout, switched out inside T1.
    let (site, spinner) = preempted_spinner(&rt, &jit);
    // T1 retired. A cookie for a GP after the retirement; keep the worker busy enough to be
    // preempted again and again meanwhile (another task runs each time).
    drop(site.swap(&spin_until_set(&jit, 2)).unwrap());
    let cookie = gp.start_poll();
    let ended_under_the_task = within(Duration::from_millis(300), || gp.poll(&cookie));
    let reclaimed_under_the_task = stats.get().reclaimed >= 1;
    spinner.release.store(1, Ordering::Release);
    let result = spinner.task.join().unwrap();
    gp.wait(&cookie);
    jit.barrier();
    (ended_under_the_task || reclaimed_under_the_task, result)
}

#[test]
fn tasks_flavor_a_preempted_task_keeps_its_trampoline_until_it_yields() {
    let (ended_early, result) = preempted_inside_a_retired_trampoline(Flavor::Tasks);
    assert!(
        !ended_early,
        "the grace period ended while the task was preempted inside T1"
    );
    assert_eq!(
        result, 1,
        "the task finished inside the old trampoline, intact"
    );
}

const CHILD: &str = "TRAMWAY_PREEMPT_RUDE_CHILD";

/// The child: the same scenario under the Rude flavor.
#[test]
fn rude_child() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let (ended_early, result) = preempted_inside_a_retired_trampoline(Flavor::Rude);
    println!("child: ended under the task: {ended_early}, result {result}");
}

#[test]
fn rude_flavor_control_frees_the_trampoline_under_the_preempted_task() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "rude_child", "--nocapture"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Either the child crashed returning into the freed (trap-filled) trampoline, or it saw
    // the grace period end while the task was inside: the failure Rude is known for.
    let crashed = out.status.signal().is_some();
    assert!(
        crashed || stdout.contains("ended under the task: true"),
        "the Rude flavor was expected to fail: {} {stdout}",
        out.status
    );
}

/// Thread ids of this process's worker threads.
fn worker_tids() -> Vec<i32> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| {
            let t = t.ok()?;
            let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
            comm.starts_with("tramway-worker")
                .then(|| t.file_name().to_str()?.parse().ok())?
        })
        .collect()
}

#[test]
fn a_signal_flood_changes_nothing_and_preempts_only_where_allowed() {
    use tramway_jit::{ProbeHook, Probes};
    let rt = Runtime::builder()
        .workers(2)
        .preempt(Duration::from_micros(20))
        .build()
        .unwrap();
    let jit = Jit::new().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // Stray signals too (not the monitor's): they must be passed on, and ignored.
    let s = stop.clone();
    let flooder = std::thread::spawn(move || {
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        let mut sent = 0u64;
        while !s.load(Ordering::Relaxed) {
            for tid in worker_tids() {
                // SAFETY: tgkill takes integers; the targets are this process's threads.
                unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, libc::SIGURG) };
                sent += 1;
            }
        }
        sent
    });
    // Spinning JIT code inside a scope (preemptible), hooks (non-yielding), Rust work and
    // switches (not JIT code), sleeping tasks (idle workers).
    let body = spin_until_set(&jit, 3);
    let probes = Probes::new(&jit);
    let probed = probes
        .site(SiteKind::Indirect, &jit.constant_return(5).unwrap())
        .unwrap();
    let hits = Arc::new(AtomicU64::new(0));
    let h = hits.clone();
    probes
        .attach(
            &probed,
            ProbeHook::new(move |_| {
                h.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                while t.elapsed() < Duration::from_micros(30) {} // long enough to be signalled
            }),
        )
        .unwrap();
    // SAFETY: `body` is a `SpinFn`; `probed` returns 5 as `extern "C" fn() -> u64`; both
    // outlive the tasks (joined below).
    let (spin, five): (SpinFn, extern "C" fn() -> u64) = unsafe {
        (
            std::mem::transmute::<*const u8, SpinFn>(body.addr()),
            probed.as_fn(),
        )
    };
    let mut tasks = Vec::new();
    for k in 0..6u64 {
        let stop = stop.clone();
        tasks.push(
            rt.spawn(move || {
                let (mut ok, mut n) = (true, 0u64);
                let flag = AtomicU64::new(1); // the spin loop returns at once
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    ok &= match (k + n) % 4 {
                        0 => preemptible(|| spin(&flag)) == 3,
                        1 => preemptible(|| five()) == 5,
                        2 => (0..1000u64).map(|x| x * x).sum::<u64>() == 332_833_500,
                        _ => {
                            tramway_runtime::sleep(Duration::from_micros(200));
                            true
                        }
                    };
                    yield_now();
                }
                ok
            })
            .unwrap(),
        );
    }
    // A long spin in JIT code, preempted many times.
    let release = Arc::new(AtomicU64::new(0));
    let r = release.clone();
    let long = rt.spawn(move || preemptible(|| spin(&*r))).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    release.store(1, Ordering::Release);
    assert_eq!(long.join().unwrap(), 3);
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        assert!(
            t.join().unwrap(),
            "a task computed a wrong value under the flood"
        );
    }
    let stray = flooder.join().unwrap();
    let stats = rt.stats().preempt;
    assert!(stray > 1000, "stray signals sent: {stray}");
    assert!(stats.preemptions > 0, "{stats:?}");
    assert!(stats.ignored_outside_code > 0, "{stats:?}");
    assert!(hits.load(Ordering::Relaxed) > 0);
}

#[test]
fn blocking_system_calls_in_tasks_survive_preemption_signals() {
    let rt = Runtime::builder()
        .workers(2)
        .preempt(Duration::from_micros(50))
        .build()
        .unwrap();
    let mut fds = [0i32; 2];
    // SAFETY: pipe writes two descriptors into the array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let (rd, wr) = (fds[0], fds[1]);
    // A task blocked in read(2) (restarted after each signal: SA_RESTART) ...
    let reader = rt
        .spawn(move || {
            let mut buf = [0u8; 5];
            // SAFETY: reads into a local buffer from a pipe this test owns.
            let n = unsafe { libc::read(rd, buf.as_mut_ptr().cast(), buf.len()) };
            (n, buf)
        })
        .unwrap();
    // ... and one in nanosleep(2) (EINTR, which std's sleep retries).
    let sleeper = rt
        .spawn(|| {
            let t = Instant::now();
            std::thread::sleep(Duration::from_millis(100));
            t.elapsed()
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(150));
    // SAFETY: writes 5 bytes of a static buffer to the pipe.
    assert_eq!(unsafe { libc::write(wr, b"hello".as_ptr().cast(), 5) }, 5);
    let (n, buf) = reader.join().unwrap();
    assert_eq!((n, &buf), (5, b"hello"));
    assert!(sleeper.join().unwrap() >= Duration::from_millis(100));
    assert!(
        rt.stats().preempt.signals_sent > 0,
        "the blocked workers were signalled"
    );
    // SAFETY: closing the test's own descriptors.
    unsafe {
        libc::close(rd);
        libc::close(wr);
    }
}

const CANCEL_CHILD: &str = "TRAMWAY_PREEMPT_CANCEL_CHILD";

/// The child: shuts the runtime down while a task is preempted inside JIT code.
#[test]
fn cancel_preempted_child() {
    if std::env::var_os(CANCEL_CHILD).is_none() {
        return;
    }
    let rt = preemptive_runtime(1);
    let jit = Jit::new().unwrap();
    let (_site, spinner) = preempted_spinner(&rt, &jit);
    // An unrelated task keeps the worker switching, so the spinner sits in the preempted
    // queue when shutdown comes; it is cancelled there, never unwound through JIT frames.
    let _busy = rt.spawn(|| loop {
        yield_now();
    });
    std::thread::sleep(Duration::from_millis(20));
    rt.shutdown();
    let joined = spinner.task.join();
    println!(
        "child: clean exit ({})",
        if joined.is_err() {
            "cancelled"
        } else {
            "finished"
        }
    );
    std::mem::forget(spinner.release);
}

#[test]
fn shutdown_cancels_a_preempted_task_without_unwinding_jit_frames() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "cancel_preempted_child", "--nocapture"])
        .env(CANCEL_CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("child: clean exit (cancelled)"),
        "{} {stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
