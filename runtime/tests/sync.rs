//! Sleep, Event and channel behaviour.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tramway_runtime::{channel, sleep, yield_now, Event, RecvError, Runtime, TryRecvError};

#[test]
fn sleeping_tasks_wake_in_deadline_order() {
    let rt = Runtime::builder().workers(2).build().unwrap();
    let (tx, rx) = channel();
    let start = Instant::now();
    for ms in [30u64, 10, 20] {
        let tx = tx.clone();
        rt.spawn(move || {
            sleep(Duration::from_millis(ms));
            tx.send(ms).unwrap();
        })
        .unwrap();
    }
    drop(tx);
    let order: Vec<u64> = rx.iter().collect();
    assert_eq!(order, vec![10, 20, 30]);
    assert!(start.elapsed() >= Duration::from_millis(30));
}

#[test]
fn sleeping_tasks_do_not_occupy_the_worker() {
    // One worker: while 100 tasks sleep 50 ms, another task still runs promptly.
    let rt = Runtime::builder().workers(1).build().unwrap();
    let sleepers: Vec<_> = (0..100)
        .map(|_| rt.spawn(|| sleep(Duration::from_millis(50))).unwrap())
        .collect();
    let t = Instant::now();
    rt.block_on(|| ()).unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(45),
        "worker was blocked by sleepers"
    );
    for h in sleepers {
        h.join().unwrap();
    }
}

#[test]
fn channel_with_eight_producers_delivers_every_message_exactly_once() {
    const PRODUCERS: usize = 8;
    const PER: usize = 10_000;
    let rt = Runtime::builder().workers(2).build().unwrap();
    let (tx, rx) = channel::<usize>();
    for p in 0..PRODUCERS {
        let tx = tx.clone();
        rt.spawn(move || {
            for i in 0..PER {
                tx.send(p * PER + i).unwrap();
                if i % 64 == 0 {
                    yield_now();
                }
            }
        })
        .unwrap();
    }
    drop(tx);
    let consumer = rt
        .spawn(move || {
            let mut seen = vec![false; PRODUCERS * PER];
            let mut last = [None::<usize>; PRODUCERS];
            while let Ok(v) = rx.recv() {
                assert!(
                    !std::mem::replace(&mut seen[v], true),
                    "message {v} received twice"
                );
                // Per-producer FIFO order.
                let p = v / PER;
                assert!(last[p].is_none_or(|l| l < v));
                last[p] = Some(v);
            }
            seen.iter().filter(|s| **s).count()
        })
        .unwrap();
    assert_eq!(consumer.join().unwrap(), PRODUCERS * PER);
}

#[test]
fn recv_errs_when_all_senders_are_gone_and_send_errs_without_receiver() {
    let (tx, rx) = channel::<u8>();
    let tx2 = tx.clone();
    tx.send(1).unwrap();
    drop(tx);
    assert_eq!(rx.try_recv(), Ok(1));
    assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    drop(tx2);
    assert_eq!(rx.recv(), Err(RecvError));
    let (tx, rx) = channel::<u8>();
    drop(rx);
    assert_eq!(tx.send(9).unwrap_err().0, 9);
}

#[test]
fn os_thread_blocks_on_recv_until_a_task_sends() {
    let rt = Runtime::builder().workers(1).build().unwrap();
    let (tx, rx) = channel();
    rt.spawn(move || {
        sleep(Duration::from_millis(10));
        tx.send("hello").unwrap();
    })
    .unwrap();
    assert_eq!(rx.recv(), Ok("hello"));
}

#[test]
fn event_wakes_parked_tasks_and_keeps_one_permit() {
    let rt = Runtime::builder().workers(2).build().unwrap();
    let ev = Arc::new(Event::new());
    let waiters: Vec<_> = (0..10)
        .map(|_| {
            let ev = ev.clone();
            rt.spawn(move || ev.wait()).unwrap()
        })
        .collect();
    while ev.waiters() < 10 {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(waiters.iter().all(|h| !h.is_finished()));
    ev.notify_all();
    for h in waiters {
        h.join().unwrap();
    }
    // A notify with nobody waiting is kept for the next wait (OS thread here).
    ev.notify_one();
    ev.wait();
}

#[test]
fn event_wait_blocks_an_os_thread_until_a_task_notifies() {
    let rt = Runtime::builder().workers(1).build().unwrap();
    let ev = Arc::new(Event::new());
    let ev2 = ev.clone();
    let h = std::thread::spawn(move || ev2.wait());
    while ev.waiters() == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let ev3 = ev.clone();
    rt.block_on(move || ev3.notify_one()).unwrap();
    h.join().unwrap();
}

/// Sum of user+system CPU ticks of this process's threads whose name starts with `prefix`.
fn cpu_ticks_of_threads(prefix: &str) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let p = e.path();
        let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(p.join("stat")).unwrap_or_default();
        // Fields after the parenthesised name: state is field 3; utime/stime are 14/15.
        let rest = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() > 12 {
            total += f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0);
        }
    }
    total
}

#[test]
fn idle_workers_park_instead_of_spinning() {
    let rt = Runtime::builder()
        .workers(2)
        .thread_name("idlechk")
        .build()
        .unwrap();
    rt.block_on(|| ()).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let before = cpu_ticks_of_threads("idlechk");
    std::thread::sleep(Duration::from_millis(500));
    let used = cpu_ticks_of_threads("idlechk") - before;
    // Clock ticks are 10 ms; two spinning workers would use ~100 ticks in 500 ms.
    assert!(used <= 5, "idle workers used {used} ticks of CPU in 500 ms");
}
