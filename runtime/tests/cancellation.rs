//! Shutdown cancels unfinished tasks; what their destructors drop, and where they are
//! suspended, must not hang or crash the process.

use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use tramway_runtime::grace::{GraceConfig, GraceDomain};
use tramway_runtime::{non_yielding, Event, Runtime, YieldInNonYielding};

fn finishes_within(timeout: Duration, f: impl FnOnce() + Send + 'static) -> bool {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    rx.recv_timeout(timeout).is_ok()
}

/// A task parked forever that holds the last handle of a grace domain: shutdown cancels it,
/// and its destructor drops the domain (joining the driver, whose last grace period may wait).
fn park_forever_holding(gp: GraceDomain) -> impl FnOnce() + Send + 'static {
    move || {
        let _keep = gp;
        Event::new().wait();
    }
}

#[test]
fn shutdown_from_an_online_registered_thread_when_a_cancelled_task_drops_the_last_domain() {
    assert!(finishes_within(Duration::from_secs(20), || {
        let rt = Runtime::builder().workers(1).build().unwrap();
        let _reg = rt.register_thread().unwrap(); // online for the whole shutdown
        let gp = GraceDomain::new(&rt, GraceConfig::default()).unwrap();
        gp.call(|| ()); // the driver's last grace period has work to do
        rt.spawn(park_forever_holding(gp)).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        rt.shutdown();
    }));
}

#[test]
fn shutdown_when_a_cancelled_holdout_drops_the_last_domain() {
    assert!(finishes_within(Duration::from_secs(20), || {
        let rt = Runtime::builder()
            .workers(1)
            .yield_in_non_yielding(YieldInNonYielding::RecordInvoluntary)
            .build()
            .unwrap();
        let gp = GraceDomain::new(&rt, GraceConfig::default()).unwrap();
        gp.call(|| ());
        // Parked *inside* a non-yielding section: a holdout when shutdown cancels it.
        let keep = gp.clone();
        rt.spawn(move || {
            let _keep = keep;
            non_yielding(|| Event::new().wait());
        })
        .unwrap();
        drop(gp);
        std::thread::sleep(Duration::from_millis(20));
        rt.shutdown();
    }));
}

const CHILD: &str = "TRAMWAY_CANCEL_CHILD";

/// The child: a task parked inside a non-yielding section whose unwinding aborts (as a JIT
/// hook's frames would: the probe dispatcher aborts on any unwind).
#[test]
fn cancel_child() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let rt = Runtime::builder()
        .workers(1)
        .yield_in_non_yielding(YieldInNonYielding::RecordInvoluntary)
        .build()
        .unwrap();
    rt.spawn(|| {
        struct AbortOnUnwind;
        impl Drop for AbortOnUnwind {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    eprintln!("child: unwound through the section");
                    std::process::abort();
                }
            }
        }
        non_yielding(|| {
            let _frame = AbortOnUnwind;
            Event::new().wait();
        });
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    rt.shutdown();
    println!("child: clean exit");
}

#[test]
fn cancelling_a_task_suspended_inside_a_non_yielding_section_does_not_unwind_it() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "cancel_child", "--nocapture"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && stdout.contains("child: clean exit"),
        "child: {} (signal {:?})\n{stdout}\n{stderr}",
        out.status,
        out.status.signal()
    );
}
