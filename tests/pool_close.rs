//! Invariant 5: closing or dropping the pool wakes every waiter with `Closed` and joins the
//! reaper.

mod common;

use std::thread;
use std::time::Duration;

use common::{eventually, numbered_probes};
use cylinder::{Error, Pool};

#[test]
fn close_wakes_every_waiter_with_closed() {
    let (start, _) = numbered_probes();
    let pool = Pool::builder().size(1).build(start).unwrap();
    let lease = pool.checkout().unwrap();
    thread::scope(|scope| {
        let waiters: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| pool.checkout_timeout(Duration::MAX).map(|_| ())))
            .collect();
        assert!(eventually(Duration::from_secs(5), || pool.stats().waiters == 4));
        pool.close();
        for waiter in waiters {
            assert!(matches!(waiter.join().unwrap(), Err(Error::Closed)));
        }
    });
    assert!(pool.is_closed());
    assert!(matches!(pool.checkout(), Err(Error::Closed)));
    assert!(matches!(pool.try_checkout(), Err(Error::Closed)));
    assert!(matches!(pool.transaction(|_| ()), Err(Error::Closed)));
    // A lease still out can be dropped after close.
    drop(lease);
    pool.close();
}

#[test]
fn dropping_the_pool_stops_its_reaper_and_its_workers() {
    let token = std::sync::Arc::new(());
    let handed = token.clone();
    let pool = Pool::builder()
        .size(2)
        .name("short-lived")
        .build(move || Ok(handed.clone()))
        .unwrap();
    assert_eq!(std::sync::Arc::strong_count(&token), 4);
    drop(pool);
    // The reaper held the pool's state; after the join the workers and the start closure
    // are dropped, and only our handle is left.
    assert_eq!(std::sync::Arc::strong_count(&token), 1);
}

#[test]
fn the_last_handle_and_owned_lease_close_the_pool() {
    let token = std::sync::Arc::new(());
    let handed = token.clone();
    let pool = Pool::builder()
        .size(2)
        .build(move || Ok(handed.clone()))
        .unwrap();
    let copy = pool.clone();
    let lease = pool.checkout_owned().unwrap();
    drop(pool);
    assert!(!copy.is_closed());
    drop(copy);
    // The owned lease still holds a handle: the pool is open until it goes.
    assert_eq!(std::sync::Arc::strong_count(&token), 4);
    drop(lease);
    assert_eq!(std::sync::Arc::strong_count(&token), 1);
}
