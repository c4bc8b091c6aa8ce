//! `--flavor rude --preempt T`: the failure RCU Tasks exists for, shown safely.
//!
//! The Rude flavor ends a grace period once every worker has passed through its scheduler. A
//! task preempted inside an implementation is switched out *involuntarily*: its worker runs
//! other tasks (so it "passes"), the grace period ends, the retired implementation is freed
//! (trap-filled, then unmapped), and the preempted task later resumes inside freed code. The
//! demo therefore runs in a child process (this same binary, same flags, with
//! [`CHILD_ENV`] set), and the parent reports how it ended: killed by `SIGTRAP`/`SIGSEGV`/
//! `SIGILL` (it executed freed code) or exit 1 with invalid results (a call returned a version
//! whose grace period had already ended) is the **expected** outcome (exit 0); a child that
//! finished clean means the failure was not caught this time (exit 1, with the reason).

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitCode};

use tramway::runtime::grace::Flavor;

use crate::cli::Options;

/// Set in the child's environment.
pub const CHILD_ENV: &str = "TRAMWAY_HOTPATCH_RUDE_CHILD";

/// Whether this process is the parent of the demonstration (not the child itself).
pub fn is_demonstration(o: &Options) -> bool {
    o.flavor == Flavor::Rude && o.preempt.is_some() && std::env::var_os(CHILD_ENV).is_none()
}

/// Runs the child with the same flags and reports how it ended.
pub fn demonstrate(args: &[String]) -> ExitCode {
    println!(
        "hotpatch: --flavor rude with --preempt: tasks are switched out inside implementations,\n\
         and the Rude flavor does not wait for them. Running the demo in a child process, which\n\
         is expected to execute freed code (and crash) or see a stale call...\n"
    );
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("hotpatch: cannot find this executable to re-run it: {e}");
            return ExitCode::from(1);
        }
    };
    let out = match Command::new(exe).args(args).env(CHILD_ENV, "1").output() {
        Ok(out) => out,
        Err(e) => {
            eprintln!("hotpatch: cannot run the child: {e}");
            return ExitCode::from(1);
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Status lines start with the elapsed time (`  1.0s | ...`).
    let seconds = stdout
        .lines()
        .filter(|l| {
            l.trim_start()
                .split(' ')
                .next()
                .is_some_and(|t| t.ends_with('s') && t[..t.len() - 1].parse::<f64>().is_ok())
        })
        .count();
    let last_status = format!("{seconds} status line(s) printed");
    match (out.status.signal(), out.status.code()) {
        (Some(sig @ (libc::SIGTRAP | libc::SIGSEGV | libc::SIGILL | libc::SIGBUS)), _) => {
            println!(
                "child: killed by {} ({sig}); {last_status}\n\
                 EXPECTED: a task preempted inside an implementation resumed in code the Rude\n\
                 flavor had already freed (trap-filled or unmapped). The Tasks flavor keeps such\n\
                 a task a holdout until its next voluntary yield: run without `--flavor rude`.",
                signal_name(sig)
            );
            ExitCode::SUCCESS
        }
        (None, Some(1)) if stdout.contains("calls returned no valid version") => {
            let reason = stdout
                .lines()
                .find(|l| l.starts_with("FAILED:"))
                .unwrap_or(&last_status);
            println!(
                "child: exit 1: {reason}\n\
                 EXPECTED: a call returned the value of a version whose grace period had already\n\
                 ended (its code freed under a preempted task). The Tasks flavor does not allow\n\
                 that: run without `--flavor rude`."
            );
            ExitCode::SUCCESS
        }
        (sig, code) => {
            println!(
                "child ended with signal {sig:?}, exit code {code:?}: {last_status}\n\
                 NOT CAUGHT this time: no freed code ran and no stale call was seen (the run may\n\
                 be too short, or preemptions did not land inside retired implementations; try\n\
                 more --seconds or a shorter --swap-interval).\n\
                 child stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            ExitCode::from(1)
        }
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGILL => "SIGILL",
        libc::SIGBUS => "SIGBUS",
        _ => "a signal",
    }
}
