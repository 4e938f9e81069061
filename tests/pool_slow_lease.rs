//! worker_pool's slow-lease warnings: a lease held past `warn_after` is reported once.

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use cylinder::{Event, Pool, Worker};

struct Conn;
impl Worker for Conn {}

#[test]
fn a_slow_lease_is_reported_once_with_how_long_it_was_held() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let pool = Pool::builder()
        .size(2)
        .warn_after(Duration::from_millis(40))
        .on_event(move |event| {
            if let Event::SlowLease { held, .. } = event {
                log.lock().unwrap().push(*held);
            }
        })
        .build(|| Ok(Conn))
        .unwrap();
    let quick = pool.checkout().unwrap();
    drop(quick);
    let slow = pool.checkout().unwrap();
    let taken = Instant::now();
    // Held until it is reported (the reaper looks every 20 ms; on a loaded machine it may be
    // late, and a lease given back first is never reported), then for several more looks.
    let deadline = taken + Duration::from_secs(10);
    while seen.lock().unwrap().is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(2));
    }
    let reported_by = taken.elapsed();
    thread::sleep(Duration::from_millis(100));
    drop(slow);
    thread::sleep(Duration::from_millis(60));
    let reports = seen.lock().unwrap().clone();
    assert_eq!(reports.len(), 1, "{reports:?}");
    // How long it had been held when reported: past warn_after, and no more than it was.
    assert!(
        reports[0] >= Duration::from_millis(40) && reports[0] <= reported_by,
        "{reports:?}, reported within {reported_by:?}"
    );
}
