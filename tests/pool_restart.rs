//! gruff's "worker fails → restarted": dead or discarded workers are replaced through the
//! supervisor and the pool returns to full size; a failing supervisor never takes it down.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, numbered_probes, Probe, Switchboard};
use cylinder::{BoxError, Error, Pool};

const SLACK: Duration = Duration::from_secs(5);

#[test]
fn a_worker_dying_while_leased_is_replaced() {
    let (start, started) = numbered_probes();
    let pool = Pool::builder().size(4).build(start).unwrap();
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
    let pool = Pool::builder().size(2).build(start).unwrap();
    let victim = pool.checkout().unwrap().worker().clone();
    victim.kill();
    // Checkouts never hand out the dead worker.
    for _ in 0..10 {
        let lease = pool.checkout().unwrap();
        assert!(!Arc::ptr_eq(lease.worker(), &victim));
    }
    assert!(eventually(SLACK, || pool.stats().free == 2
        && pool.stats().restarts == 1));
}

#[test]
fn discarded_workers_are_replaced_and_size_restored() {
    let (start, _) = numbered_probes();
    let pool = Pool::builder().size(3).build(start).unwrap();
    for _ in 0..3 {
        pool.checkout().unwrap().discard();
    }
    assert!(eventually(SLACK, || pool.stats().free == 3
        && pool.stats().restarts == 3));
    let stats = pool.stats();
    assert_eq!((stats.size, stats.discards, stats.leased), (3, 3, 0));
    assert_eq!(stats.checkouts, stats.releases + stats.discards);
}

#[test]
fn a_waiter_gets_the_replacement_of_a_dead_worker() {
    let (start, _) = numbered_probes();
    let pool = Pool::builder().size(1).build(start).unwrap();
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
fn a_supervisor_that_fails_to_restart_is_contained_and_retried() {
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
                    panic!("factory panics");
                }
                return Err("factory refuses".into());
            }
            Ok(Probe::new(n))
        })
        .unwrap();
    failing.store(true, Ordering::SeqCst);
    pool.checkout().unwrap().discard();
    // The pool keeps serving the worker it still has while the factory fails.
    assert!(eventually(SLACK, || starts.load(Ordering::SeqCst) >= 5));
    for _ in 0..10 {
        assert!(pool.checkout_timeout(Duration::from_secs(1)).is_ok());
    }
    assert_eq!(pool.stats().size, 1);
    failing.store(false, Ordering::SeqCst);
    assert!(eventually(SLACK, || pool.stats().size == 2 && pool.stats().free == 2));
}

#[test]
fn a_pool_over_an_external_supervisor_follows_its_children() {
    let board = Switchboard::with(2);
    let pool = Pool::builder()
        .reconnect_delay(Duration::from_millis(20))
        .build_with(board.supervisor())
        .unwrap();
    assert_eq!(pool.stats().size, 2);
    // The supervisor restarts a dead child by itself: a new probe in its place.
    let mut children = board.current();
    children[0].kill();
    children[0] = Arc::new(Probe::new(10));
    board.set(children);
    // Checkouts meet the dead child, retire it, and the reaper takes in its replacement.
    assert!(eventually(SLACK, || {
        let leases: Vec<_> = (0..2).filter_map(|_| pool.try_checkout().ok()).collect();
        let mut ids: Vec<usize> = leases.iter().map(|l| l.id).collect();
        ids.sort();
        ids == [1, 10]
    }));
    assert_eq!(
        (pool.stats().size, pool.stats().free, pool.stats().restarts),
        (2, 2, 1)
    );
}

#[test]
fn a_supervisor_gone_makes_checkout_fail_fast() {
    let board = Switchboard::with(1);
    let pool = Pool::builder()
        .reconnect_delay(Duration::from_millis(20))
        .build_with(board.supervisor())
        .unwrap();
    board.stop();
    pool.checkout().unwrap().kill();
    assert!(eventually(SLACK, || matches!(
        pool.try_checkout(),
        Err(Error::Disconnected(_))
    )));
    assert!(matches!(pool.checkout(), Err(Error::Disconnected(_))));
    board.set(vec![Arc::new(Probe::new(7))]);
    assert!(eventually(SLACK, || pool.try_checkout().is_ok()));
}

#[test]
fn a_factory_that_cannot_start_anything_fails_the_build() {
    let err = Pool::builder()
        .size(2)
        .build(|| -> Result<Probe, BoxError> { Err("no database".into()) })
        .unwrap_err();
    assert!(matches!(err, Error::Disconnected(_)), "{err}");
    assert!(
        std::error::Error::source(&err)
            .unwrap()
            .to_string()
            .contains("no database"),
        "{err}"
    );
}

/// Regression: a reload that failed (supervisor away) published an empty set, and the next
/// successful one took every listed worker in again, although the pool still held them: a
/// worker could sit in the free queue twice and be leased to two holders.
#[test]
fn a_supervisor_coming_back_does_not_duplicate_workers() {
    let board = Switchboard::with(2);
    let pool = Pool::builder()
        .reconnect_delay(Duration::from_millis(10))
        .build_with(board.supervisor())
        .unwrap();
    let extra = Arc::new(Probe::new(9));
    let mut children = board.current();
    board.stop();
    // A discard asks for a reload, which fails: the supervisor is away.
    let discarded = pool.checkout().unwrap();
    let discarded_id = discarded.id;
    discarded.discard();
    assert!(eventually(SLACK, || board.calls() >= 3));
    // It comes back, listing the same workers plus a new one.
    children.push(extra);
    board.set(children);
    assert!(eventually(SLACK, || pool.stats().size == 2 && pool.stats().free == 2));
    let leases: Vec<_> = (0..2).map(|_| pool.try_checkout().unwrap()).collect();
    assert!(
        matches!(pool.try_checkout(), Err(Error::Overload)),
        "{:?}",
        pool.stats()
    );
    let mut ids: Vec<usize> = leases.iter().map(|l| l.id).collect();
    ids.sort();
    assert!(
        !ids.contains(&discarded_id),
        "the discarded worker came back"
    );
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1]);
}

/// A supervisor whose children the test can take away, with a retire that restarts.
struct Outage {
    factory: cylinder::Factory<Probe>,
    up: std::sync::atomic::AtomicBool,
}

impl cylinder::Supervisor<Probe> for Arc<Outage> {
    fn children(&self) -> Result<Vec<Arc<Probe>>, cylinder::BoxError> {
        if !self.up.load(std::sync::atomic::Ordering::SeqCst) {
            return Err("down".into());
        }
        self.factory.children()
    }
    fn retire(&self, worker: &Arc<Probe>) {
        self.factory.retire(worker)
    }
}

/// Regression (found by the chaos run): a discarded worker that its supervisor stopped
/// listing was taken for one that left the set while leased, and the next release of any
/// worker during a supervisor outage (when the published set is empty) dropped that worker
/// for good.
#[test]
fn a_release_during_an_outage_after_a_discard_keeps_its_worker() {
    let n = std::sync::atomic::AtomicUsize::new(0);
    let outage = Arc::new(Outage {
        factory: cylinder::Factory::new(2, move || {
            Ok(Probe::new(
                n.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
            ))
        }),
        up: std::sync::atomic::AtomicBool::new(true),
    });
    let pool = Pool::builder()
        .size(2)
        .reconnect_delay(Duration::from_millis(10))
        .build_with(outage.clone())
        .unwrap();
    pool.checkout().unwrap().discard();
    assert!(eventually(SLACK, || pool.stats().restarts == 1
        && pool.stats().free == 2));
    let held = pool.checkout().unwrap();
    outage.up.store(false, std::sync::atomic::Ordering::SeqCst);
    pool.checkout().unwrap().discard();
    assert!(eventually(SLACK, || matches!(
        pool.try_checkout(),
        Err(Error::Disconnected(_) | Error::Overload)
    )));
    drop(held);
    outage.up.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(
        eventually(SLACK, || pool.stats().free == 2 && pool.stats().size == 2),
        "{:?}",
        pool.stats()
    );
    let both: Vec<_> = (0..2).map(|_| pool.try_checkout().unwrap()).collect();
    assert!(!Arc::ptr_eq(both[0].worker(), both[1].worker()));
}
