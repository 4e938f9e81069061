//! pooler's message to all unallocated members: `Pool::map` over the free workers.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};

use common::numbered_probes;
use cylinder::Pool;

#[test]
fn map_visits_each_free_worker_once_and_gives_them_back() {
    let (start, _) = numbered_probes();
    let pool = Pool::builder().size(4).build(start).unwrap();
    let held = pool.checkout().unwrap();
    let mut ids = pool.map(|w| {
        w.enter();
        w.leave();
        w.id
    });
    ids.sort();
    assert_eq!(ids.len(), 3);
    assert!(!ids.contains(&held.id));
    drop(held);
    assert_eq!(pool.stats().free, 4);
}

#[test]
fn a_panic_inside_map_loses_no_worker() {
    let (start, _) = numbered_probes();
    let pool = Pool::builder().size(3).build(start).unwrap();
    let outcome = catch_unwind(AssertUnwindSafe(|| pool.map(|_| panic!("broadcast fails"))));
    assert!(outcome.is_err());
    assert_eq!(pool.stats().free, 3);
}
