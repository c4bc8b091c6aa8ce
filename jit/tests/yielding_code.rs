//! JIT code that yields: a compiled body that calls a runtime helper which parks the task
//! (inside `tramway_runtime::in_yielding_code`). The runtime scans the parked task's stack and
//! the grace domain holds back exactly the code it points into (`tramway_runtime::code`).
//!
//! The control runs the same program with a reclaimer that drops the code ranges (plain Tasks
//! semantics, no scan consulted): the body is freed while the task is parked inside it, and
//! the task crashes on trap-filled code when it returns into it (in a child process).

use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tramway_harness::unsound::IgnoresCodeRanges;
use tramway_jit::dynasmrt::{dynasm, DynasmApi};
use tramway_jit::{Jit, JitBuilder, Reclaim, Site, SiteKind, Trampoline};
use tramway_runtime::grace::{GraceConfig, GraceDomain};
use tramway_runtime::{in_yielding_code, Event, Runtime};

/// What the parking helper reads: it says it is inside, then waits for `release`.
struct Gate {
    inside: AtomicBool,
    release: Event,
}

/// The runtime helper the body calls: parks the task inside yielding code until released.
extern "C" fn park_helper(gate: *const Gate) {
    // SAFETY: the body passes on the `Gate` pointer its caller passed, which the test keeps
    // alive until the task is joined.
    let gate = unsafe { &*gate };
    in_yielding_code(|| {
        gate.inside.store(true, Ordering::SeqCst);
        gate.release.wait();
    });
}

/// `extern "C" fn(*const Gate) -> u64`: calls `park_helper(gate)`, then returns `tag`. Its
/// return address from that call is on the task's stack while the task is parked.
fn parking_body(jit: &Jit, tag: i32) -> Trampoline {
    let helper = park_helper as *const () as i64;
    // SAFETY: the body keeps the stack 16-byte aligned at the call (one push), calls a C-ABI
    // function with the same argument, restores `rbx`, and returns `tag`. It parks only inside
    // the helper's yielding-code scope, and keeps no code address outside its stack.
    unsafe {
        jit.custom(|ops| {
            dynasm!(ops
                ; .arch x64
                ; push rbx
                ; mov rax, QWORD helper
                ; call rax
                ; pop rbx
                ; mov eax, tag
                ; ret
            );
        })
    }
    .expect("emit the body")
}

fn constant(jit: &Jit, v: i32) -> Trampoline {
    // SAFETY: `mov eax, v; ret` implements `extern "C" fn() -> u64` (zero-extended) and never
    // yields.
    unsafe {
        jit.custom(|ops| {
            dynasm!(ops ; .arch x64 ; mov eax, v ; ret);
        })
    }
    .expect("emit a constant")
}

type BodyFn = extern "C" fn(*const Gate) -> u64;

fn eventually(cond: impl Fn() -> bool) -> bool {
    tramway_harness::wait::within(Duration::from_secs(20), cond)
}

struct Setup {
    rt: Runtime,
    gp: GraceDomain,
    jit: Jit,
    site: Site,
    gate: Arc<Gate>,
}

fn setup(reclaimer: impl FnOnce(&GraceDomain) -> Arc<dyn Reclaim>) -> Setup {
    setup_with(reclaimer, |b| b)
}

/// [`setup`], with the `Jit`'s builder adjusted by `jit`.
fn setup_with(
    reclaimer: impl FnOnce(&GraceDomain) -> Arc<dyn Reclaim>,
    jit: impl FnOnce(JitBuilder) -> JitBuilder,
) -> Setup {
    let rt = Runtime::builder().workers(2).build().unwrap();
    let gp = GraceDomain::new(&rt, GraceConfig::default()).unwrap();
    let jit = jit(Jit::builder().reclaimer(reclaimer(&gp)))
        .build()
        .unwrap();
    let site = jit
        .site(SiteKind::Indirect, &parking_body(&jit, 1))
        .unwrap();
    let gate = Arc::new(Gate {
        inside: AtomicBool::new(false),
        release: Event::new(),
    });
    Setup {
        rt,
        gp,
        jit,
        site,
        gate,
    }
}

/// Spawns a task that calls the site and parks inside its body.
fn call_and_park(s: &Setup) -> tramway_runtime::JoinHandle<u64> {
    // SAFETY: every trampoline of the site implements `BodyFn`; the caller is a task of the
    // runtime the domain tracks; the site and gate outlive the task (joined by the tests).
    let f: BodyFn = unsafe { s.site.as_fn() };
    let gate = Arc::as_ptr(&s.gate) as usize;
    let task =
        s.rt.spawn(move || f(gate as *const Gate))
            .expect("spawn the caller");
    assert!(eventually(|| s.gate.inside.load(Ordering::SeqCst)));
    task
}

/// Releases the parked task, which returns through the retired body and gets its result,
/// and waits until the body is freed.
fn release_and_expect_freed(s: &Setup, task: tramway_runtime::JoinHandle<u64>) {
    s.gate.release.notify_one();
    assert_eq!(task.join().unwrap(), 1);
    assert!(eventually(|| {
        s.jit.barrier();
        s.jit.stats().retired == 0
    }));
}

#[test]
fn a_body_survives_while_a_task_is_parked_inside_it_and_is_freed_after_it_leaves() {
    let s = setup(|gp| Arc::new(gp.clone()));
    let task = call_and_park(&s);
    assert!(eventually(|| s.rt.stats().tasks_with_code_refs == 1));
    drop(s.site.swap(&parking_body(&s.jit, 2)).unwrap());
    s.gp.synchronize();
    s.gp.barrier();
    let st = s.jit.stats();
    assert_eq!(
        st.retired, 1,
        "the body was freed under the parked task: {st:?}"
    );
    assert_eq!(s.gp.stats().callbacks_held_now, 1);
    release_and_expect_freed(&s, task);
    assert_eq!(s.gp.stats().callbacks_held_now, 0);
}

#[test]
fn unrelated_retired_code_is_freed_while_the_task_stays_parked() {
    let s = setup(|gp| Arc::new(gp.clone()));
    let task = call_and_park(&s);
    drop(s.site.swap(&parking_body(&s.jit, 2)).unwrap());
    let other = s
        .jit
        .site(SiteKind::Indirect, &constant(&s.jit, 0))
        .unwrap();
    let before = s.gp.stats();
    for i in 1..=100 {
        drop(other.swap(&constant(&s.jit, i)).unwrap());
    }
    // A barrier does not wait for the held body, and frees all 100 others.
    s.jit.barrier();
    let after = s.gp.stats();
    assert!(after.completed > before.completed, "no grace period ran");
    let st = s.jit.stats();
    assert_eq!(st.retired, 1, "only the body the task is in stays: {st:?}");
    assert!(st.reclaimed >= 100, "{st:?}");
    s.gate.release.notify_one();
    assert_eq!(task.join().unwrap(), 1);
}

/// The body and 100 unrelated trampolines retire while a spinning task holds every grace
/// period, so their frees share the `Jit`'s open batch (at most two batches: the first GP
/// may be claimed during the storm). The GP after it holds back only the free the parked
/// task's stack points into, not the batch around it.
#[test]
fn a_batch_holds_back_only_the_free_a_parked_task_references() {
    let s = setup(|gp| Arc::new(gp.clone()));
    let task = call_and_park(&s);
    let other = s
        .jit
        .site(SiteKind::Indirect, &constant(&s.jit, 0))
        .unwrap();
    let spinner = tramway_harness::spinner::Spinner::start(&s.rt);
    let before = s.gp.stats();
    drop(s.site.swap(&parking_body(&s.jit, 2)).unwrap());
    for i in 1..=100 {
        drop(other.swap(&constant(&s.jit, i)).unwrap());
    }
    let queued = s.gp.stats().callbacks_queued - before.callbacks_queued;
    spinner.release();
    assert!(
        queued <= 2,
        "101 frees during one held grace period took {queued} callbacks"
    );
    s.jit.barrier();
    let st = s.jit.stats();
    assert_eq!(st.retired, 1, "only the body the task is in stays: {st:?}");
    assert_eq!(s.gp.stats().callbacks_held_now, 1);
    release_and_expect_freed(&s, task);
}

#[test]
fn a_task_parked_inside_jit_code_does_not_stall_patchers() {
    // A backlog bound below the held body's size: every swap throttles (waits for barriers),
    // so a patcher whose barriers waited for the held body would stall.
    let s = setup_with(|gp| Arc::new(gp.clone()), |b| b.max_retired_bytes(1));
    let task = call_and_park(&s);
    drop(s.site.swap(&parking_body(&s.jit, 2)).unwrap());
    let other = s
        .jit
        .site(SiteKind::Indirect, &constant(&s.jit, 0))
        .unwrap();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for i in 0..2_000 {
                drop(other.swap(&constant(&s.jit, i)).unwrap());
            }
            done_tx.send(()).unwrap();
        });
        if done_rx.recv_timeout(Duration::from_secs(120)).is_err() {
            // The scope would wait for the stalled patcher forever: fail loudly instead.
            eprintln!("the patcher stalled behind the parked task");
            std::process::abort();
        }
    });
    s.jit.barrier();
    assert_eq!(s.jit.stats().retired, 1, "only the held body waits");
    s.gate.release.notify_one();
    assert_eq!(task.join().unwrap(), 1);
}

const CONTROL_CHILD: &str = "TRAMWAY_YIELDING_CODE_CONTROL_CHILD";

#[test]
fn control_child() {
    if std::env::var_os(CONTROL_CHILD).is_none() {
        return;
    }
    let s = setup(|gp| Arc::new(IgnoresCodeRanges(gp.clone())));
    let task = call_and_park(&s);
    drop(s.site.swap(&parking_body(&s.jit, 2)).unwrap());
    s.gp.synchronize();
    s.jit.barrier(); // the body is freed (trap-filled) under the parked task
    println!("child: freed under the parked task: {:?}", s.jit.stats());
    s.gate.release.notify_one();
    let r = task.join();
    println!("child: the task returned {r:?} (not caught)");
}

#[test]
fn control_without_the_code_ranges_the_parked_task_crashes() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "control_child", "--nocapture"])
        .env(CONTROL_CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        matches!(
            out.status.signal(),
            Some(libc::SIGTRAP | libc::SIGSEGV | libc::SIGILL | libc::SIGBUS)
        ),
        "the control did not crash: {} {stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("child: freed under the parked task"),
        "{stdout}"
    );
}
