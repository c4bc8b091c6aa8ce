//! The smallest complete use of tramway: green threads call a patch site while the main
//! thread hot-swaps its implementation; old trampolines are unmapped after grace periods.
//! No `unsafe`: the typed handle keeps what it calls mapped, and checks its caller.
//!
//! `cargo run --release --example quickstart`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tramway::jit::SiteKind;
use tramway::runtime::yield_now;

extern "C" fn add_one(x: u64) -> u64 {
    x + 1
}

extern "C" fn add_two(x: u64) -> u64 {
    x + 2
}

type AddFn = extern "C" fn(u64) -> u64;

const USAGE: &str = "\
usage: quickstart

The README's ten-line API, run: a task on a 2-worker runtime calls a typed patch site 200000
times while the main thread swaps its implementation 10000 times; old trampolines are unmapped
after grace periods. It takes no flags.

  -h, --help   this message

Exit status: 0 if every call returned a value of one of the two versions and no code was left
mapped; 1 otherwise; 2 for any argument but --help.";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Some(arg) = std::env::args().nth(1) {
        if arg == "-h" || arg == "--help" {
            println!("{USAGE}");
            return Ok(());
        }
        eprintln!("quickstart: unknown argument `{arg}` (it takes no flags; see --help)");
        std::process::exit(2);
    }
    let odd = Arc::new(AtomicU64::new(0));
    let (calls, odd_in_task) = (Arc::new(AtomicU64::new(0)), odd.clone());
    let calls_in_task = calls.clone();
    // README: begin
    let tw = tramway::Builder::new().workers(2).build()?; // runtime + grace domain + Jit
    let first = tw.jit.forward(add_one as AddFn)?; // a trampoline typed by its target
    let site = tw.jit.typed_site(SiteKind::Indirect, &first)?; // the stable entry
    let add = site.handle(); // owns the code it calls; clone it into every task
    let caller = tw.runtime.spawn(move || {
        for x in 0..200_000u64 {
            let r = add.call((x,)).expect("tasks are readers"); // safe: no `unsafe` anywhere
            if r != x + 1 && r != x + 2 {
                odd_in_task.fetch_add(1, Ordering::Relaxed);
            }
            calls_in_task.fetch_add(1, Ordering::Relaxed);
            if x % 1000 == 0 {
                yield_now(); // a quiescent state: old code may now be freed behind us
            }
        }
    })?;
    for i in 0..10_000 {
        let f = if i % 2 == 0 { add_two } else { add_one };
        drop(site.swap(&tw.jit.forward(f as AddFn)?)?); // hot swap; unmapped after a GP
    }
    caller.join()?;
    // README: end
    let stats = tw.jit.stats_handle();
    let grace_periods = tw.grace.stats().completed;
    drop((first, site)); // the last handles: the stub and its trampolines retire
    drop(tw); // the Jit's barrier reclaims everything; the runtime shuts down
    let end = stats.get();
    println!(
        "{} calls during 10000 swaps, {} unexpected results; {} trampolines emitted, {} reclaimed, \
         {} code bytes still mapped; {grace_periods} grace periods",
        calls.load(Ordering::Relaxed),
        odd.load(Ordering::Relaxed),
        end.emitted,
        end.reclaimed,
        end.mapped_bytes,
    );
    if odd.load(Ordering::Relaxed) != 0 || end.mapped_bytes != 0 {
        std::process::exit(1);
    }
    Ok(())
}
