use std::time::Duration;
use tramway::runtime::*;

#[test]
fn smoke() {
    let rt = Runtime::builder().workers(2).build().unwrap();
    let h = rt
        .spawn(|| {
            yield_now();
            1 + 1
        })
        .unwrap();
    assert_eq!(h.join().unwrap(), 2);
    let r = rt
        .block_on(|| {
            sleep(Duration::from_millis(5));
            current().unwrap().id
        })
        .unwrap();
    assert!(r > 0);
    let ev = std::sync::Arc::new(Event::new());
    let e2 = ev.clone();
    let h = rt.spawn(move || e2.wait()).unwrap();
    std::thread::sleep(Duration::from_millis(10));
    ev.notify_one();
    h.join().unwrap();
    let h = rt.spawn(|| panic!("boom")).unwrap();
    assert_eq!(h.join().unwrap_err().panic_message(), Some("boom"));
    let ev = std::sync::Arc::new(Event::new());
    let e2 = ev.clone();
    let h = rt.spawn(move || e2.wait()).unwrap();
    std::thread::sleep(Duration::from_millis(10));
    rt.shutdown();
    assert!(matches!(h.join(), Err(JoinError::Cancelled)));
}
