//! gruff's "worker fails → restarted", by counting: a dropped, broken, detached or dead
//! worker is replaced from the start closure and the pool returns to its size; failing
//! starts never take it down.

mod common;

use std::error::Error as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{eventually, numbered_probes, probe_pool, Probe};
use cylinder::{Actor, Behaviour, BoxError, Error, Lease, Pool};

const SLACK: Duration = Duration::from_secs(5);

#[test]
fn a_worker_dying_while_leased_is_replaced() {
    let (start, started) = numbered_probes();
    let pool = probe_pool().size(4).build(start).unwrap();
    let lease = pool.checkout().unwrap();
    lease.kill();
    drop(lease);
    assert!(eventually(SLACK, || pool.stats().free == 4));
    let stats = pool.stats();
    assert_eq!((stats.size, stats.restarts, stats.discards), (4, 1, 1));
    assert_eq!(started.load(Ordering::SeqCst), 5);
}

#[test]
fn a_worker_dying_while_free_is_skipped_and_replaced() {
    let (start, _) = numbered_probes();
    let pool = probe_pool().size(2).build(start).unwrap();
    let victim = {
        let lease = pool.checkout().unwrap();
        lease.id
    };
    // Kill it where it lies: take both, kill the victim, give both back.
    {
        let both: Vec<_> = (0..2).map(|_| pool.checkout().unwrap()).collect();
        both.iter()
            .filter(|l| l.id == victim)
            .for_each(|l| l.kill());
    }
    for _ in 0..10 {
        let lease = pool.checkout().unwrap();
        assert_ne!(lease.id, victim, "a dead worker was handed out");
    }
    assert!(eventually(SLACK, || pool.stats().free == 2
        && pool.stats().restarts == 1));
}

#[test]
fn discarded_workers_are_replaced_and_size_restored() {
    let (start, _) = numbered_probes();
    let pool = Pool::builder().size(3).build(start).unwrap();
    for _ in 0..3 {
        Lease::discard(pool.checkout().unwrap());
    }
    assert!(eventually(SLACK, || pool.stats().free == 3
        && pool.stats().restarts == 3));
    let stats = pool.stats();
    assert_eq!((stats.size, stats.discards, stats.leased), (3, 3, 0));
    assert_eq!(stats.checkouts, stats.releases + stats.discards);
}

#[test]
fn a_taken_worker_leaves_the_pool_and_is_replaced() {
    let (start, _) = numbered_probes();
    let pool = Pool::builder().size(2).build(start).unwrap();
    let taken: Probe = Lease::take(pool.checkout().unwrap());
    let owned: Probe = cylinder::OwnedLease::take(pool.checkout_owned().unwrap());
    assert!(eventually(SLACK, || pool.stats().free == 2));
    let stats = pool.stats();
    assert_eq!((stats.size, stats.takes, stats.restarts), (2, 2, 2));
    let ids: Vec<usize> = (0..2).map(|_| pool.checkout().unwrap().id).collect();
    assert!(!ids.contains(&taken.id) && !ids.contains(&owned.id));
}

#[test]
fn a_waiter_gets_the_replacement_of_a_dead_worker() {
    let (start, _) = numbered_probes();
    let pool = probe_pool().size(1).build(start).unwrap();
    let lease = pool.checkout().unwrap();
    std::thread::scope(|scope| {
        let waiter = scope.spawn(|| pool.checkout_timeout(SLACK).map(|l| l.id));
        assert!(eventually(SLACK, || pool.stats().waiters == 1));
        lease.kill();
        drop(lease);
        assert_eq!(
            waiter.join().unwrap().unwrap(),
            1,
            "the replacement, worker 1"
        );
    });
}

#[test]
fn failing_starts_are_contained_and_retried() {
    let failing = Arc::new(AtomicBool::new(false));
    let starts = Arc::new(AtomicUsize::new(0));
    let (fail, count) = (failing.clone(), starts.clone());
    let pool = Pool::builder()
        .size(2)
        .reconnect_delay(Duration::from_millis(20))
        .build(move || -> Result<Probe, BoxError> {
            let n = count.fetch_add(1, Ordering::SeqCst);
            if fail.load(Ordering::SeqCst) {
                if n % 2 == 0 {
                    panic!("start panics");
                }
                return Err("start refuses".into());
            }
            Ok(Probe::new(n))
        })
        .unwrap();
    failing.store(true, Ordering::SeqCst);
    Lease::discard(pool.checkout().unwrap());
    // The pool keeps serving the worker it still has while the starts fail, retrying every
    // reconnect_delay (not in a tight loop).
    assert!(eventually(SLACK, || starts.load(Ordering::SeqCst) >= 5));
    for _ in 0..10 {
        assert!(pool.checkout_timeout(Duration::from_secs(1)).is_ok());
    }
    assert_eq!(pool.stats().size, 1);
    let tries = starts.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        starts.load(Ordering::SeqCst) - tries < 20,
        "retries follow reconnect_delay"
    );
    failing.store(false, Ordering::SeqCst);
    assert!(eventually(SLACK, || pool.stats().size == 2 && pool.stats().free == 2));
}

#[test]
fn a_start_that_cannot_start_anything_fails_the_build_with_its_cause() {
    let err = Pool::builder()
        .size(2)
        .build(|| -> Result<Probe, BoxError> { Err("no database".into()) })
        .unwrap_err();
    assert!(matches!(err, Error::Disconnected { .. }), "{err}");
    assert_eq!(err.source().unwrap().to_string(), "no database");
}

/// With nothing running and the last start failed, a blocking checkout waits for the next
/// start attempt up to its own timeout (backpressure: a retrying client is slowed to the pace
/// of `reconnect_delay`), then fails with the cause; `try_checkout` fails fast (the fuse).
#[test]
fn nothing_running_and_starts_failing_blocks_then_fails_with_the_cause() {
    let up = Arc::new(AtomicBool::new(true));
    let switch = up.clone();
    let pool = Pool::builder()
        .size(1)
        .reconnect_delay(Duration::from_secs(60))
        .build(move || -> Result<u32, BoxError> {
            if switch.load(Ordering::SeqCst) {
                Ok(1)
            } else {
                Err("connection refused".into())
            }
        })
        .unwrap();
    up.store(false, Ordering::SeqCst);
    Lease::discard(pool.checkout().unwrap());
    // The replacement's failure recorded (the non-blocking checkout says so).
    assert!(eventually(SLACK, || matches!(
        pool.try_checkout(),
        Err(Error::Disconnected { .. })
    )));
    let began = Instant::now();
    let err = pool
        .checkout_timeout(Duration::from_millis(300))
        .unwrap_err();
    assert!(
        began.elapsed() >= Duration::from_millis(300),
        "a blocking checkout waits for the next attempt, up to its timeout"
    );
    assert!(matches!(err, Error::Disconnected { .. }), "{err}");
    assert_eq!(err.source().unwrap().to_string(), "connection refused");
    let began = Instant::now();
    let err = pool.try_checkout().unwrap_err();
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "the fuse fails fast"
    );
    assert_eq!(err.source().unwrap().to_string(), "connection refused");
}

#[test]
fn a_start_over_its_timeout_counts_as_failed() {
    let slow = Arc::new(AtomicBool::new(false));
    let switch = slow.clone();
    let pool = Pool::builder()
        .size(1)
        .start_timeout(Duration::from_millis(50))
        .reconnect_delay(Duration::from_millis(10))
        .build(move || -> Result<u32, BoxError> {
            if switch.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(400));
            }
            Ok(1)
        })
        .unwrap();
    slow.store(true, Ordering::SeqCst);
    Lease::discard(pool.checkout().unwrap());
    let err = pool
        .checkout_timeout(Duration::from_millis(300))
        .unwrap_err();
    assert!(matches!(err, Error::Disconnected { .. }), "{err}");
    assert!(
        err.source()
            .unwrap()
            .to_string()
            .contains("did not finish within"),
        "{err}"
    );
    slow.store(false, Ordering::SeqCst);
    // Until the next try (reconnect_delay after the last failure) the fuse may still fail
    // checkouts fast; then the pool recovers by itself.
    assert!(eventually(SLACK, || pool.checkout_timeout(SLACK).is_ok()));
}

struct Fragile;

impl Behaviour for Fragile {
    type Request = bool;
    type Reply = ();
    fn handle_call(&mut self, crash: bool) {
        if crash {
            panic!("handler crashed (on purpose)");
        }
    }
}

#[test]
fn a_pool_of_actors_replaces_a_dead_actor_with_no_configuration() {
    let pool = Pool::builder()
        .size(2)
        .is_alive(Actor::is_alive)
        .build(|| Ok(Actor::spawn(Fragile)?))
        .unwrap();
    let crashed = pool.transaction(|actor| actor.call(true)).unwrap();
    assert!(matches!(crashed, Err(Error::WorkerDied)));
    assert!(eventually(SLACK, || pool.stats().restarts == 1
        && pool.stats().free == 2));
    for _ in 0..4 {
        assert!(pool.transaction(|actor| actor.call(false)).unwrap().is_ok());
    }
    assert_eq!(pool.stats().discards, 1);
}
