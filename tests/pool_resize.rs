//! `resize(n)`: grows at once, shrinks as leases come back, never revokes a lease.

mod common;

use std::thread;
use std::time::Duration;

use common::numbered_probes;
use cylinder::{Error, Pool};

#[test]
fn grows_at_once() {
    let (start, _) = numbered_probes();
    let pool = Pool::builder().size(2).build(start).unwrap();
    pool.resize(6).unwrap();
    let stats = pool.stats();
    assert_eq!((stats.size, stats.free), (6, 6));
    let leases: Vec<_> = (0..6).map(|_| pool.try_checkout().unwrap()).collect();
    assert!(pool.try_checkout().is_err());
    drop(leases);
}

#[test]
fn shrinks_without_revoking_leases() {
    let (start, _) = numbered_probes();
    let pool = Pool::builder().size(4).build(start).unwrap();
    let held: Vec<_> = (0..4).map(|_| pool.checkout().unwrap()).collect();
    pool.resize(1).unwrap();
    // The new limit holds at once; the leased workers stay open until they come back.
    assert_eq!((pool.stats().max_size, pool.stats().size), (1, 4));
    // Every lease is still good while held.
    for lease in &held {
        lease.enter();
        lease.leave();
    }
    drop(held);
    let stats = pool.stats();
    assert_eq!((stats.size, stats.free, stats.leased), (1, 1, 0));
    let only = pool.try_checkout().unwrap();
    assert!(pool.try_checkout().is_err());
    drop(only);
}

#[test]
fn resizing_under_load_keeps_exclusion() {
    let (start, _) = numbered_probes();
    let pool = Pool::builder().size(2).build(start).unwrap();
    thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for _ in 0..2_000 {
                    if let Ok(lease) = pool.checkout_timeout(Duration::from_secs(5)) {
                        lease.enter();
                        thread::yield_now();
                        lease.leave();
                    }
                }
            });
        }
        for size in [5, 1, 3, 8, 2] {
            pool.resize(size).unwrap();
            thread::sleep(Duration::from_millis(5));
        }
    });
    let stats = pool.stats();
    assert_eq!((stats.size, stats.free, stats.leased), (2, 2, 0));
}

#[test]
fn bad_sizes_and_pools_without_a_factory() {
    let (start, _) = numbered_probes();
    let pool = Pool::builder().size(2).build(start).unwrap();
    assert!(matches!(
        pool.resize(0),
        Err(Error::InvalidConfig {
            option: "resize",
            ..
        })
    ));
    assert!(matches!(
        pool.resize(1 << 30),
        Err(Error::InvalidConfig {
            option: "resize",
            ..
        })
    ));
    assert_eq!(pool.stats().size, 2);
}
