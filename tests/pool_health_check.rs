//! r2d2's `test_on_check_out`: a worker failing the check is replaced and the next one
//! tried, within the caller's timeout.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{eventually, numbered_probes};
use cylinder::{Error, Pool};

#[test]
fn a_worker_failing_the_check_is_replaced_and_the_next_one_leased() {
    let (start, _) = numbered_probes();
    // Worker 0 breaks after its start: it passes its first check (at its start), then its
    // check fails (once with a panic); the others pass.
    let pool = Pool::builder()
        .size(3)
        .check_after_idle(Duration::ZERO) // the check runs at every checkout
        .test_on_checkout(|w: &mut common::Probe| {
            let checks = if w.id == 0 {
                w.uses.fetch_add(1, Ordering::SeqCst)
            } else {
                0
            };
            if checks == 1 {
                panic!("check crashed");
            }
            w.id != 0 || checks == 0
        })
        .build(start)
        .unwrap();
    // All three at once, so that worker 0 is met whatever the reuse order.
    for _ in 0..10 {
        let held: Vec<_> = (0..3).map(|_| pool.checkout().unwrap()).collect();
        assert!(held.iter().all(|lease| lease.id != 0));
    }
    assert!(eventually(Duration::from_secs(5), || pool.stats().restarts
        == 1
        && pool.stats().free == 3));
    assert_eq!(pool.stats().size, 3);
}

#[test]
fn a_check_that_always_fails_ends_in_the_callers_timeout() {
    let (start, _) = numbered_probes();
    let pool = Pool::builder()
        .size(2)
        .test_on_checkout(|_: &mut common::Probe| false)
        // Every start fails its first check: nothing opens, so not `build`.
        .build_unchecked(start)
        .unwrap();
    let began = Instant::now();
    let result = pool.checkout_timeout(Duration::from_millis(100));
    assert!(
        matches!(
            result,
            Err(Error::Timeout { .. }) | Err(Error::Disconnected { .. })
        ),
        "{result:?}"
    );
    assert!(began.elapsed() < Duration::from_secs(5));
    assert!(pool.try_checkout().is_err());
}
