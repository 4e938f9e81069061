//! Fifth breaking pass against the lifecycle and the callbacks: each test names its scenario
//! and fails on the code it was written against. Bounded in time; hangs are detected with
//! bounded waits.

mod common;

use common::within;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use cylinder::{Balancer, BoxError, Error, Lease, Pool, Worker};

fn on_reaper() -> bool {
    thread::current()
        .name()
        .is_some_and(|name| name.starts_with("cylinder-reaper"))
}

/// A node whose `Drop` panics ("on purpose"), unless its thread already unwinds.
struct PanickyNode;
impl Worker for PanickyNode {}
impl Drop for PanickyNode {
    fn drop(&mut self) {
        if !thread::panicking() {
            panic!("PanickyNode dropped on purpose");
        }
    }
}

/// A balancer lease holds its member's cell, and with it an `Arc` of the worker. The
/// supervisor stops listing that worker (it was replaced by a fresh one), a reload publishes
/// the new set: the lease now holds the last reference to the old worker. Dropping the lease
/// drops the worker, whose `Drop` is user code: it must be contained (as the set's own drops of
/// departed workers are), not unwind into the lease's holder, who did nothing wrong. (Were the
/// holder already unwinding from a panic of its own, the second panic would abort the process.)
#[test]
fn dropping_a_balancer_lease_on_a_worker_that_left_the_set_contains_the_workers_drop() {
    common::quiet_panics();
    let listed = Arc::new(Mutex::new(vec![Arc::new(PanickyNode)]));
    let l = listed.clone();
    let balancer = Balancer::builder()
        .build_with(move || -> Result<Vec<Arc<PanickyNode>>, BoxError> {
            Ok(l.lock().unwrap().clone())
        })
        .unwrap();
    let lease = balancer.lease().unwrap();
    // The supervisor replaces its child; the old one is no longer its to keep.
    let old = std::mem::replace(&mut *listed.lock().unwrap(), vec![Arc::new(PanickyNode)]);
    // Kept here only to count who holds it; let go below, so the lease holds the last one.
    let old_node = old.into_iter().next().unwrap();
    balancer.connect().unwrap();
    assert_eq!(
        Arc::strong_count(&old_node),
        2,
        "the lease and this test hold the old node"
    );
    drop(old_node);
    let dropped = catch_unwind(AssertUnwindSafe(move || drop(lease)));
    let new_nodes = std::mem::take(&mut *listed.lock().unwrap());
    std::mem::forget(new_nodes);
    std::mem::forget(balancer);
    assert!(
        dropped.is_ok(),
        "dropping a balancer lease panicked: the worker's Drop ran uncontained in the holder"
    );
}

/// A disconnected balancer whose supervisor is slow to fail (a connect timeout of 500 ms:
/// the server is down), retried every `reconnect_delay` of 1 s. The rustdoc says `get` "fails
/// at once with Error::Disconnected, carrying why, and the reaper reconnects by itself every
/// reconnect_delay". A client calling `get` between two of the reaper's attempts must get its
/// `Disconnected` at once, not run the slow supervisor on its own thread. (While the reaper's
/// own attempt runs, a `get` waits up to 100 ms for it instead: not at once either.)
#[test]
fn get_on_a_disconnected_balancer_with_a_slow_supervisor_fails_at_once() {
    // Each supervisor call: when it began, and when it ended.
    type Calls = Arc<Mutex<Vec<(Instant, Option<Instant>)>>>;
    let asked: Calls = Arc::default();
    let a = asked.clone();
    let balancer = Balancer::<PanickyNode>::builder()
        .reconnect_delay(Duration::from_secs(1))
        .build_with(move || -> Result<Vec<Arc<PanickyNode>>, BoxError> {
            let at = a.lock().unwrap().len();
            a.lock().unwrap().push((Instant::now(), None));
            thread::sleep(Duration::from_millis(500));
            a.lock().unwrap()[at].1 = Some(Instant::now());
            Err("connection timed out".into())
        })
        .unwrap();
    // `build` asked once; the reaper asks again at once (the first failure is handed to it),
    // then every second after its attempt ends.
    let began = Instant::now();
    let second = loop {
        let calls = asked.lock().unwrap().clone();
        if let Some(&(started, Some(_))) = calls.get(1) {
            break started;
        }
        assert!(
            began.elapsed() < Duration::from_secs(5),
            "the reaper never retried"
        );
        thread::sleep(Duration::from_millis(1));
    };
    // Past `reconnect_delay` since the reaper's attempt began, before its next one.
    let now = Instant::now();
    let at = second + Duration::from_millis(1150);
    if at > now {
        thread::sleep(at - now);
    }
    let at = Instant::now();
    let got = balancer.get();
    let took = at.elapsed();
    balancer.close();
    assert!(matches!(got, Err(Error::Disconnected { .. })), "{got:?}");
    // The supervisor takes 500 ms: a get that ran it took longer. (One that met the reaper's
    // own attempt would wait up to 100 ms for it; this one comes between two of them, but a
    // loaded machine may make it late.)
    assert!(
        took < Duration::from_millis(250),
        "a get on a disconnected balancer took {took:?}: it ran the supervisor on the caller's \
         thread ({} supervisor calls)",
        asked.lock().unwrap().len()
    );
}

/// A pool of two, swept every 50 ms (`idle_timeout`, nothing to close: `min_idle` is the
/// size). The reaper's sweep asks `is_alive` of each free worker; for the second one it
/// blocks (a liveness probe stuck on a hung socket). The first worker, already looked at and
/// found alive, must not be held hostage meanwhile: a checkout on another thread gets it.
/// Instead the sweep keeps every worker it looked at until it has looked at all of them, so
/// the checkout times out while `stats()` reports both workers free.
#[test]
fn a_sweep_blocked_in_is_alive_on_one_worker_does_not_hold_back_the_others() {
    let armed = Arc::new(AtomicBool::new(false));
    let blocking = Arc::new(AtomicBool::new(false));
    let last_call = Arc::new(Mutex::new(None::<Instant>));
    let (a, b, l) = (armed.clone(), blocking.clone(), last_call.clone());
    let pool = Pool::builder()
        .size(2)
        .idle_timeout(Duration::from_millis(200))
        .checkout_timeout(Duration::from_secs(5))
        .is_alive(move |_: &u32| {
            if a.load(Ordering::SeqCst) && on_reaper() {
                let now = Instant::now();
                let previous = l.lock().unwrap().replace(now);
                // The second look of one sweep (the first was a moment ago).
                if previous.is_some_and(|at| now - at < Duration::from_millis(5))
                    && !b.swap(true, Ordering::SeqCst)
                {
                    thread::sleep(Duration::from_secs(2));
                }
            }
            true
        })
        .build(|| Ok(0u32))
        .unwrap();
    armed.store(true, Ordering::SeqCst);
    let began = Instant::now();
    while !blocking.load(Ordering::SeqCst) && began.elapsed() < Duration::from_secs(3) {
        thread::sleep(Duration::from_millis(1));
    }
    assert!(
        blocking.load(Ordering::SeqCst),
        "no sweep looked at two workers"
    );
    let stats = pool.stats();
    let at = Instant::now();
    let got = pool
        .checkout_timeout(Duration::from_millis(500))
        .map(|_| ());
    let took = at.elapsed();
    assert!(
        got.is_ok(),
        "a checkout waited {took:?} and got {got:?} while one worker was free but held by the \
         sweep (stats then: {stats:?})"
    );
}

/// A pool of two whose replacement start hangs (the server stopped answering). Shrinking the
/// pool to one must close the free worker at once and return ("shrinking closes free
/// workers at once"): it has no start of its own to wait for. Instead `resize` waits for
/// every start on its way, the unrelated hung one included, until `checkout_timeout`.
#[test]
fn resize_down_does_not_wait_for_an_unrelated_hung_start() {
    let starts = Arc::new(AtomicUsize::new(0));
    let hang = Arc::new(AtomicBool::new(true));
    let (s, h) = (starts.clone(), hang.clone());
    let pool = Pool::builder()
        .size(2)
        .checkout_timeout(Duration::from_secs(10))
        .build(move || {
            if s.fetch_add(1, Ordering::SeqCst) >= 2 {
                while h.load(Ordering::SeqCst) {
                    thread::sleep(Duration::from_millis(5));
                }
            }
            Ok(())
        })
        .unwrap();
    let a = pool.checkout().unwrap();
    Lease::discard(a);
    // The replacement start is under way, and hangs.
    let began = Instant::now();
    while starts.load(Ordering::SeqCst) < 3 && began.elapsed() < Duration::from_secs(3) {
        thread::sleep(Duration::from_millis(1));
    }
    let p = pool.clone();
    let resized = within(Duration::from_secs(2), move || p.resize(1));
    hang.store(false, Ordering::SeqCst);
    assert!(
        resized.is_some(),
        "resize(1) did not return within 2 s: it waits for an unrelated hung start"
    );
}

/// `Pool::map` on a quiet pool of three: while `f` runs, the pool's own code holds every free
/// worker exclusively, exactly as the reaper's sweep does. `stats()` must still add up
/// (`free + leased == size` when quiet, the promise the sweep's `sweeping` count was added
/// for), not show three open workers that are neither free nor leased.
#[test]
fn stats_taken_inside_pool_map_still_add_up() {
    let pool = Pool::builder().size(3).build(|| Ok(0u32)).unwrap();
    let seen = pool.map(|_| {
        let stats = pool.stats();
        (stats.size, stats.free, stats.leased)
    });
    assert_eq!(seen.len(), 3);
    for (size, free, leased) in seen {
        assert_eq!(
            free + leased,
            size,
            "inside map: size {size}, free {free}, leased {leased}: workers the pool holds \
             while map runs are counted nowhere"
        );
    }
}
