//! Freed code faults in every build: a slot whose trampoline was reclaimed is filled with
//! traps even while its chunk stays mapped (another trampoline keeps it), and fresh chunks
//! hold traps before any code is written. A stale call must crash, never silently run the old
//! code. The calls run in a child process, which is expected to die of a signal.

use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::sync::Arc;

use tramway_jit::{ImmediateReclaim, Jit, SiteKind};

const CHILD: &str = "TRAMWAY_FREED_CODE_CHILD";

extern "C" fn seven() -> u64 {
    7
}

/// The child: calls a trampoline after it was reclaimed, in a chunk that stays mapped.
#[test]
fn freed_code_child() {
    let Some(mode) = std::env::var_os(CHILD) else {
        return;
    };
    // SAFETY: the child calls freed code on purpose; it is expected to crash, in this process
    // only.
    let reclaim = Arc::new(unsafe { ImmediateReclaim::new_unchecked() });
    let jit = Jit::builder().reclaimer(reclaim).build().unwrap();
    let keep = jit.forward(seven as extern "C" fn() -> u64).unwrap(); // keeps the chunk mapped
    let entry = if mode == "reclaimed" {
        let site = jit
            .typed_site(
                SiteKind::Indirect,
                &jit.forward(seven as extern "C" fn() -> u64).unwrap(),
            )
            .unwrap();
        let old = site.current().trampoline().addr();
        drop(site.swap(&keep).unwrap()); // reclaimed at once: no grace period here
        old
    } else {
        // Never-used bytes of a fresh chunk, right after the live trampoline's slot.
        unsafe { keep.trampoline().addr().add(256) }
    };
    // SAFETY: deliberately calls code that is not live; the test expects a fatal signal.
    let f: extern "C" fn() -> u64 = unsafe { std::mem::transmute(entry) };
    let r = f();
    println!("child: the stale call returned {r}");
    drop(keep);
}

/// Trap bytes raise SIGILL (the `ud2` a slot starts with) or SIGTRAP (`int3` after it).
fn assert_trapped(status: std::process::ExitStatus) {
    assert!(
        matches!(status.signal(), Some(libc::SIGILL | libc::SIGTRAP)),
        "the child did not die of a trap: {status}"
    );
}

fn run_child(mode: &str) -> std::process::ExitStatus {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "freed_code_child", "--nocapture"])
        .env(CHILD, mode)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("the stale call returned"),
        "{mode}: a call into freed code ran: {stdout}"
    );
    out.status
}

#[test]
fn a_call_into_reclaimed_code_in_a_mapped_chunk_faults() {
    assert_trapped(run_child("reclaimed"));
}

#[test]
fn a_call_into_never_written_bytes_of_a_fresh_chunk_faults() {
    assert_trapped(run_child("fresh"));
}
