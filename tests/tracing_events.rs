//! The structured events both crates emit, seen by a minimal subscriber: a grace period's end
//! (with its number and duration, inside its span), a stall report (with its holdout count),
//! a site swap (with both trampoline ids), backlog throttling and probe batch commits.

use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

use tramway::jit::{ForwardingSpec, Jit, ProbeHook, Probes, SiteKind, Target};
use tramway::runtime::grace::{GraceConfig, GraceDomain};
use tramway::runtime::{non_yielding, Runtime};

/// One event: its message and fields, as text.
#[derive(Debug, Clone)]
struct Seen {
    target: String,
    fields: Vec<(String, String)>,
}

impl Seen {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Fields(Vec<(String, String)>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.0
            .push((field.name().to_string(), format!("{value:?}")));
    }
}

/// Records every event (all levels) and counts spans.
#[derive(Default, Clone)]
struct Recorder {
    events: Arc<Mutex<Vec<Seen>>>,
    spans: Arc<AtomicU64>,
}

impl Subscriber for Recorder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        if span.metadata().name() == "grace_period" {
            self.spans.fetch_add(1, Ordering::Relaxed);
            return Id::from_u64(GRACE_PERIOD_SPAN);
        }
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut f = Fields::default();
        event.record(&mut f);
        self.events.lock().unwrap().push(Seen {
            target: event.metadata().target().to_string(),
            fields: f.0,
        });
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, id: &Id) {
        // A subscriber may call into the domain from its hooks: the grace period must have
        // left the engine's lock by then (this deadlocked when the span outlived `finish`).
        if id.into_u64() == GRACE_PERIOD_SPAN {
            if let Some(domain) = CALL_BACK_ON_EXIT.get() {
                let _ = domain.stats();
            }
        }
    }
}

/// The id the recorder gives `grace_period` spans.
const GRACE_PERIOD_SPAN: u64 = 2;

/// The domain the recorder calls into when a `grace_period` span exits, once set.
static CALL_BACK_ON_EXIT: std::sync::OnceLock<GraceDomain> = std::sync::OnceLock::new();

impl Recorder {
    fn with_message(&self, msg: &str) -> Vec<Seen> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.field("message").is_some_and(|m| m.contains(msg)))
            .cloned()
            .collect()
    }
}

#[test]
fn grace_periods_swaps_throttling_and_stalls_are_structured_events() {
    let rec = Recorder::default();
    // Global: the grace-period driver and the runtime's threads emit too.
    tracing::subscriber::set_global_default(rec.clone()).unwrap();

    let rt = Runtime::builder().workers(1).build().unwrap();
    let gp = GraceDomain::new(
        &rt,
        GraceConfig::default().stall_timeout(Duration::from_millis(20)),
    )
    .unwrap();
    gp.synchronize();
    let ended = rec.with_message("grace period ended");
    assert!(!ended.is_empty(), "no grace-period event");
    let e = &ended[0];
    assert_eq!(e.target, "tramway::grace");
    assert!(
        e.field("gp").is_some() && e.field("duration_us").is_some(),
        "{e:?}"
    );
    assert!(
        rec.spans.load(Ordering::Relaxed) >= 1,
        "no grace_period span"
    );

    // A subscriber that calls into the domain when a grace period's span exits.
    let _ = CALL_BACK_ON_EXIT.set(gp.clone());
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let g = gp.clone();
    std::thread::spawn(move || {
        g.synchronize(); // runs the grace period inline, on this thread
        let _ = done_tx.send(());
    });
    assert!(
        done_rx.recv_timeout(Duration::from_secs(30)).is_ok(),
        "a subscriber's span-exit hook that calls into the domain deadlocked the grace period"
    );

    // A stall: a task spins (online, inside a non-yielding section) past the stall timeout.
    let (release, started) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (r, s) = (release.clone(), started.clone());
    let spinner = rt
        .spawn(move || {
            non_yielding(|| {
                s.store(1, Ordering::Release);
                while r.load(Ordering::Acquire) == 0 {
                    std::hint::spin_loop();
                }
            })
        })
        .unwrap();
    // The grace period must start while the task spins (one that ends before the task runs
    // reports nothing).
    while started.load(Ordering::Acquire) == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let g = gp.clone();
    let waiter = std::thread::spawn(move || g.synchronize());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while rec.with_message("grace period stalled").is_empty() {
        if std::time::Instant::now() > deadline {
            release.store(1, Ordering::Release);
            panic!("no stall event within 30 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    release.store(1, Ordering::Release);
    waiter.join().unwrap();
    spinner.join().unwrap();
    let stall = &rec.with_message("grace period stalled")[0];
    assert_eq!(stall.field("holdouts"), Some("1"), "{stall:?}");
    assert!(stall.field("waited_us").is_some());

    // A swap, with both ids, and throttling (a bound every swap exceeds).
    let jit = Jit::builder()
        .reclaimer(Arc::new(gp.clone()))
        .max_retired_bytes(1)
        .build()
        .unwrap();
    assert!(!rec.with_message("jit built").is_empty());
    extern "C" fn f() {}
    let a = jit
        .forwarding(ForwardingSpec::new(Target::Address(f as *const u8)))
        .unwrap();
    let b = jit
        .forwarding(ForwardingSpec::new(Target::Address(f as *const u8)))
        .unwrap();
    let site = jit.site(SiteKind::Indirect, &a).unwrap();
    let retired = site.swap(&b).unwrap();
    let swaps = rec.with_message("site swapped");
    let s = swaps.last().expect("a swap event");
    assert_eq!(s.field("old"), Some(a.id().to_string().as_str()));
    assert_eq!(s.field("new"), Some(b.id().to_string().as_str()));
    drop((retired, a));
    drop(
        site.swap(
            &jit.forwarding(ForwardingSpec::new(Target::Address(f as *const u8)))
                .unwrap(),
        ),
    );
    assert!(
        !rec.with_message("backlog throttle").is_empty(),
        "no throttling event"
    );

    // A probe batch commit, with what it changed.
    let probes = Probes::new(&jit);
    let probed = probes
        .site(
            SiteKind::Indirect,
            &jit.forwarding(ForwardingSpec::new(Target::Address(f as *const u8)))
                .unwrap(),
        )
        .unwrap();
    let probe = probes.attach(&probed, ProbeHook::new(|_| {})).unwrap();
    probes.detach(&probe).unwrap();
    let commits = rec.with_message("probe batch committed");
    assert_eq!(commits.len(), 2, "{commits:?}");
    assert_eq!(commits[0].field("attached"), Some("1"));
    assert_eq!(commits[1].field("detached"), Some("1"));
}
