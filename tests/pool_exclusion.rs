//! Invariant 1: a worker is leased to at most one holder at a time.

mod common;

use std::thread;
use std::time::Duration;

use common::{numbered_probes, Probe};
use cylinder::Pool;

fn hammer(pool: &Pool<Probe>, threads: usize, rounds: usize) {
    thread::scope(|scope| {
        for t in 0..threads {
            scope.spawn(move || {
                for i in 0..rounds {
                    let lease = match (t + i) % 3 {
                        0 => pool.checkout().unwrap(),
                        1 => pool.checkout_timeout(Duration::from_secs(10)).unwrap(),
                        _ => match pool.try_checkout() {
                            Ok(lease) => lease,
                            Err(_) => continue,
                        },
                    };
                    lease.enter();
                    if i % 7 == 0 {
                        thread::yield_now();
                    }
                    lease.leave();
                }
            });
        }
    });
}

#[test]
fn eight_threads_never_share_a_worker() {
    let (start, _) = numbered_probes();
    let pool = Pool::builder().size(3).build(start).unwrap();
    hammer(&pool, 8, 20_000);
    let stats = pool.stats();
    assert_eq!(stats.free, 3);
    assert_eq!(stats.leased, 0);
    assert_eq!(stats.checkouts, stats.releases);
}

#[test]
fn one_worker_is_a_mutex() {
    let (start, _) = numbered_probes();
    let pool = Pool::builder().size(1).build(start).unwrap();
    hammer(&pool, 8, 5_000);
    assert_eq!(pool.stats().free, 1);
}

#[test]
fn transaction_is_exclusive_too() {
    let (start, _) = numbered_probes();
    let pool = Pool::builder().size(2).build(start).unwrap();
    thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                for _ in 0..5_000 {
                    pool.transaction(|w| {
                        w.enter();
                        w.leave();
                    })
                    .unwrap();
                }
            });
        }
    });
    assert_eq!(pool.stats().checkouts, 40_000);
    assert_eq!(pool.stats().free, 2);
}
