//! Invariant 2: no slot is ever lost, whatever the clients' panics.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::thread;
use std::time::Duration;

use common::{eventually, numbered_probes};
use cylinder::{OnClientPanic, Pool};

#[test]
fn a_panicking_client_gives_its_worker_back() {
    let (start, started) = numbered_probes();
    let pool = Pool::builder().size(2).build(start).unwrap();
    let first = pool.checkout().unwrap().id;
    for _ in 0..100 {
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let _lease = pool.checkout().unwrap();
            panic!("client fails while holding a worker");
        }));
        assert!(outcome.is_err());
    }
    let stats = pool.stats();
    assert_eq!((stats.free, stats.leased, stats.size), (2, 0, 2));
    assert_eq!(stats.discards, 0);
    assert_eq!(
        started.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "release policy keeps the workers"
    );
    let again: Vec<_> = (0..2).map(|_| pool.checkout().unwrap()).collect();
    assert!(again.iter().any(|l| l.id == first));
}

#[test]
fn panicking_threads_lose_no_slot() {
    let (start, _) = numbered_probes();
    let pool = Pool::builder().size(3).build(start).unwrap();
    thread::scope(|scope| {
        for t in 0..8 {
            let pool = &pool;
            scope.spawn(move || {
                for i in 0..500 {
                    let _ = catch_unwind(AssertUnwindSafe(|| {
                        pool.transaction(|w| {
                            w.enter();
                            let fail = (t + i) % 5 == 0;
                            w.leave();
                            if fail {
                                panic!("client panic inside a transaction");
                            }
                        })
                    }));
                }
            });
        }
    });
    let stats = pool.stats();
    assert_eq!((stats.free, stats.leased, stats.size), (3, 0, 3));
    assert_eq!(stats.checkouts, stats.releases + stats.discards);
}

#[test]
fn discard_policy_replaces_the_panicking_clients_worker() {
    let (start, _) = numbered_probes();
    let pool = Pool::builder()
        .size(2)
        .on_client_panic(OnClientPanic::Discard)
        .build(start)
        .unwrap();
    let suspect = {
        let lease = pool.checkout().unwrap();
        let suspect = lease.id;
        let _ = catch_unwind(AssertUnwindSafe(move || {
            let _lease = lease;
            panic!("client fails");
        }));
        suspect
    };
    assert!(eventually(Duration::from_secs(5), || pool.stats().restarts
        == 1
        && pool.stats().free == 2));
    let stats = pool.stats();
    assert_eq!((stats.discards, stats.size), (1, 2));
    let leases: Vec<_> = (0..2).map(|_| pool.checkout().unwrap()).collect();
    assert!(leases.iter().all(|l| l.id != suspect));
}
