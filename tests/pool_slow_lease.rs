//! worker_pool's slow-lease warnings: a lease held past `warn_after` is reported once.

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

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
    thread::sleep(Duration::from_millis(200));
    drop(slow);
    thread::sleep(Duration::from_millis(60));
    let reports = seen.lock().unwrap().clone();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert!(reports[0] >= Duration::from_millis(40) && reports[0] < Duration::from_millis(200));
}
