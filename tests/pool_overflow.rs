//! poolboy's `max_overflow`: temporary workers when all are leased, retired when they come
//! back with nobody waiting, handed to a waiter when someone is.

mod common;

use std::thread;
use std::time::Duration;

use common::{eventually, numbered_probes};
use cylinder::{Error, Pool};

#[test]
fn overflow_workers_start_when_all_are_leased_and_go_when_back() {
    let (start, started) = numbered_probes();
    let pool = Pool::builder()
        .size(2)
        .max_overflow(2)
        .build(start)
        .unwrap();
    let leases: Vec<_> = (0..4).map(|_| pool.try_checkout().unwrap()).collect();
    assert_eq!(pool.stats().overflow, 2);
    assert_eq!(started.load(std::sync::atomic::Ordering::SeqCst), 4);
    assert!(
        matches!(pool.try_checkout(), Err(Error::Overload)),
        "the limit holds"
    );
    let mut ids: Vec<usize> = leases.iter().map(|l| l.id).collect();
    ids.sort();
    assert_eq!(ids, vec![0, 1, 2, 3]);
    drop(leases);
    let stats = pool.stats();
    assert_eq!(
        (stats.overflow, stats.size, stats.free, stats.leased),
        (0, 2, 2, 0)
    );
    assert_eq!(stats.checkouts, stats.releases);
}

#[test]
fn an_overflow_worker_serves_a_waiter_before_it_goes() {
    let (start, _) = numbered_probes();
    let pool = Pool::builder()
        .size(1)
        .max_overflow(1)
        .build(start)
        .unwrap();
    let member = pool.checkout().unwrap();
    let extra = pool.checkout().unwrap();
    assert_eq!(pool.stats().overflow, 1);
    let extra_id = extra.id;
    thread::scope(|scope| {
        let waiter = scope.spawn(|| pool.checkout_timeout(Duration::from_secs(5)).map(|l| l.id));
        assert!(eventually(Duration::from_secs(5), || pool.stats().waiters == 1));
        drop(extra);
        assert_eq!(waiter.join().unwrap().unwrap(), extra_id);
    });
    assert_eq!(pool.stats().overflow, 0, "retired once nobody waited");
    drop(member);
    assert_eq!(pool.stats().free, 1);
}

#[test]
fn exclusive_under_threads_with_overflow() {
    let (start, _) = numbered_probes();
    let pool = Pool::builder()
        .size(2)
        .max_overflow(2)
        .build(start)
        .unwrap();
    thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                for _ in 0..2_000 {
                    let lease = pool.checkout().unwrap();
                    lease.enter();
                    thread::yield_now();
                    lease.leave();
                }
            });
        }
    });
    // A start claimed for a waiter that was served otherwise may still be finishing; once it
    // has, its worker is closed (more than `size` open, nobody waiting).
    assert!(
        eventually(Duration::from_secs(5), || {
            let stats = pool.stats();
            (stats.overflow, stats.leased, stats.free, stats.starting) == (0, 0, 2, 0)
        }),
        "{:?}",
        pool.stats()
    );
}
