//! Invariant 3: a release with waiters wakes one of them (in arrival order); a waiter that
//! times out consumes nothing.

mod common;

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{eventually, numbered_probes};
use cylinder::{Error, Pool};

#[test]
fn try_checkout_reports_overload_when_all_are_leased() {
    let (start, _) = numbered_probes();
    let pool = Pool::builder().size(2).build(start).unwrap();
    let _a = pool.try_checkout().unwrap();
    let _b = pool.try_checkout().unwrap();
    assert!(matches!(pool.try_checkout(), Err(Error::Overload)));
}

#[test]
fn a_timed_out_waiter_consumes_nothing() {
    let (start, _) = numbered_probes();
    let pool = Pool::builder().size(1).build(start).unwrap();
    let lease = pool.checkout().unwrap();
    let began = Instant::now();
    let waited = pool.checkout_timeout(Duration::from_millis(50));
    assert!(
        matches!(waited, Err(Error::Timeout { waited: d, .. }) if d == Duration::from_millis(50))
    );
    assert!(began.elapsed() >= Duration::from_millis(50));
    let stats = pool.stats();
    assert_eq!(
        (stats.waiters, stats.timeouts, stats.free, stats.leased),
        (0, 1, 0, 1)
    );
    drop(lease);
    assert_eq!(
        pool.stats().free,
        1,
        "the release after the timeout lands in the pool"
    );
    assert!(pool.try_checkout().is_ok());
}

#[test]
fn the_default_checkout_timeout_applies() {
    let (start, _) = numbered_probes();
    let pool = Pool::builder()
        .size(1)
        .checkout_timeout(Duration::from_millis(30))
        .build(start)
        .unwrap();
    let _held = pool.checkout().unwrap();
    assert!(
        matches!(pool.checkout(), Err(Error::Timeout { waited: d, .. }) if d == Duration::from_millis(30))
    );
    assert!(matches!(
        pool.transaction(|_| ()),
        Err(Error::Timeout { .. })
    ));
}

#[test]
fn timeouts_racing_releases_lose_nothing() {
    let (start, _) = numbered_probes();
    let pool = Pool::builder().size(2).build(start).unwrap();
    thread::scope(|scope| {
        for t in 0..8u64 {
            let pool = &pool;
            scope.spawn(move || {
                for i in 0..2_000u64 {
                    if let Ok(lease) =
                        pool.checkout_timeout(Duration::from_micros(1 + (t * 7 + i) % 50))
                    {
                        lease.enter();
                        thread::yield_now();
                        lease.leave();
                    }
                }
            });
        }
    });
    let stats = pool.stats();
    assert_eq!((stats.free, stats.leased, stats.waiters), (2, 0, 0));
    assert!(
        stats.timeouts > 0,
        "the run should have timed some waiters out"
    );
}

#[test]
fn waiters_are_served_in_arrival_order() {
    let (start, _) = numbered_probes();
    let pool = Pool::builder().size(1).build(start).unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let lease = pool.checkout().unwrap();
    thread::scope(|scope| {
        for n in 0..5 {
            let (pool, order) = (&pool, order.clone());
            // Each waiter queues only once the one before it is in line.
            assert!(eventually(Duration::from_secs(5), || pool.stats().waiters == n));
            scope.spawn(move || {
                let lease = pool.checkout().unwrap();
                order.lock().unwrap().push(n);
                thread::sleep(Duration::from_millis(1));
                drop(lease);
            });
        }
        assert!(eventually(Duration::from_secs(5), || pool.stats().waiters == 5));
        drop(lease);
    });
    assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4]);
}

#[test]
fn a_release_wakes_a_blocked_waiter() {
    let (start, _) = numbered_probes();
    let pool = Pool::builder().size(1).build(start).unwrap();
    let lease = pool.checkout().unwrap();
    thread::scope(|scope| {
        let waiter = scope.spawn(|| pool.checkout_timeout(Duration::MAX).map(|l| l.id));
        assert!(eventually(Duration::from_secs(5), || pool.stats().waiters == 1));
        drop(lease);
        assert_eq!(waiter.join().unwrap().unwrap(), 0);
    });
}
