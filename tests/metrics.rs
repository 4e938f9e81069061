//! The `metrics` feature: every series the pool records, with its labels, read back from a
//! recorder installed for this test binary.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use common::eventually;
use cylinder::{BoxError, Lease, Pool};
use metrics::{
    Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};

/// A histogram that keeps every value.
#[derive(Default)]
struct Values(Mutex<Vec<f64>>);

impl HistogramFn for Values {
    fn record(&self, value: f64) {
        self.0.lock().unwrap().push(value);
    }
}

/// Keeps every series by its name and sorted labels, e.g.
/// `cylinder_pool_workers{pool=a,state=idle}`.
#[derive(Default)]
struct Store {
    counters: Mutex<HashMap<String, Arc<AtomicU64>>>,
    gauges: Mutex<HashMap<String, Arc<AtomicU64>>>,
    histograms: Mutex<HashMap<String, Arc<Values>>>,
}

fn id(key: &Key) -> String {
    let mut labels: Vec<String> = key
        .labels()
        .map(|label| format!("{}={}", label.key(), label.value()))
        .collect();
    labels.sort();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

struct TestRecorder(&'static Store);

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let mut all = self.0.counters.lock().unwrap();
        Counter::from_arc(all.entry(id(key)).or_default().clone())
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        let mut all = self.0.gauges.lock().unwrap();
        Gauge::from_arc(all.entry(id(key)).or_default().clone())
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        let mut all = self.0.histograms.lock().unwrap();
        Histogram::from_arc(all.entry(id(key)).or_default().clone())
    }
}

fn store() -> &'static Store {
    static STORE: OnceLock<&'static Store> = OnceLock::new();
    STORE.get_or_init(|| {
        let store: &'static Store = Box::leak(Box::default());
        metrics::set_global_recorder(TestRecorder(store)).expect("one recorder per binary");
        store
    })
}

fn counter(name: &str) -> u64 {
    store()
        .counters
        .lock()
        .unwrap()
        .get(name)
        .map_or(0, |c| c.load(Ordering::SeqCst))
}

fn gauge(name: &str) -> f64 {
    store()
        .gauges
        .lock()
        .unwrap()
        .get(name)
        .map_or(f64::NAN, |g| f64::from_bits(g.load(Ordering::SeqCst)))
}

fn histogram(name: &str) -> Vec<f64> {
    store()
        .histograms
        .lock()
        .unwrap()
        .get(name)
        .map_or_else(Vec::new, |h| h.0.lock().unwrap().clone())
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn waits_starts_and_leases_are_timed_apart() {
    store();
    let pool = Pool::builder()
        .size(1)
        .name("timing")
        .build(|| {
            thread::sleep(ms(20));
            Ok(())
        })
        .unwrap();
    let starts = histogram("cylinder_pool_start_seconds{pool=timing}");
    assert_eq!(starts.len(), 1);
    assert!(starts[0] >= 0.019, "{starts:?}");
    // Not waited: no wait recorded.
    drop(pool.checkout().unwrap());
    assert!(histogram("cylinder_pool_checkout_wait_seconds{pool=timing}").is_empty());
    // One checkout waits for a lease held 50 ms.
    let held = pool.checkout().unwrap();
    let waiter = {
        let pool = pool.clone();
        thread::spawn(move || drop(pool.checkout().unwrap()))
    };
    assert!(eventually(Duration::from_secs(5), || pool.stats().waiters == 1));
    thread::sleep(ms(50));
    drop(held);
    waiter.join().unwrap();
    let waits = histogram("cylinder_pool_checkout_wait_seconds{pool=timing}");
    assert_eq!(waits.len(), 1);
    assert!(waits[0] >= 0.045, "{waits:?}");
    let leases = histogram("cylinder_pool_lease_seconds{pool=timing}");
    assert_eq!(leases.len(), 3);
    assert!(leases.iter().any(|&held| held >= 0.045), "{leases:?}");
}

#[test]
fn every_reason_a_worker_is_closed_is_counted() {
    store();
    let broken = Arc::new(AtomicBool::new(false));
    let b = broken.clone();
    let pool = Pool::builder()
        .size(2)
        .min_idle(1)
        .idle_timeout(ms(40))
        .max_lifetime(Duration::from_secs(3600))
        .check_after_idle(Duration::ZERO)
        .name("reasons")
        .test_on_checkout(|fail: &mut bool| !*fail)
        .is_broken(move |_: &mut bool| b.swap(false, Ordering::SeqCst))
        .build(|| Ok(false))
        .unwrap();
    let closed = |reason: &str| {
        counter(&format!(
            "cylinder_pool_workers_closed_total{{pool=reasons,reason={reason}}}"
        ))
    };
    // discarded
    Lease::discard(pool.checkout().unwrap());
    // taken
    let _taken: bool = Lease::take(pool.checkout().unwrap());
    // broken
    broken.store(true, Ordering::SeqCst);
    drop(pool.checkout().unwrap());
    // check_failed: fails its next check
    *pool.checkout().unwrap() = true;
    assert!(pool.checkout().is_ok());
    // evicted
    assert!(eventually(Duration::from_secs(5), || pool.stats().starting == 0));
    pool.evict_all();
    // idle: two open, one above min_idle, idle past 40 ms
    let both: Vec<_> = (0..2).map(|_| pool.checkout().unwrap()).collect();
    drop(both);
    assert!(eventually(Duration::from_secs(5), || closed("idle") >= 1));
    assert_eq!(closed("discarded"), 1);
    assert_eq!(closed("taken"), 1);
    assert_eq!(closed("broken"), 1);
    assert_eq!(closed("check_failed"), 1);
    assert!(closed("evicted") >= 1);
    assert_eq!(closed("expired"), 0);
    assert_eq!(closed("died"), 0);
}

#[test]
fn expired_and_died_workers_are_counted() {
    store();
    let alive = Arc::new(AtomicBool::new(true));
    let a = alive.clone();
    let pool = Pool::builder()
        .size(1)
        .name("ends")
        .max_lifetime(ms(30))
        .is_alive(move |_: &()| a.load(Ordering::SeqCst))
        .build(|| Ok(()))
        .unwrap();
    let closed = |reason: &str| {
        counter(&format!(
            "cylinder_pool_workers_closed_total{{pool=ends,reason={reason}}}"
        ))
    };
    assert!(eventually(Duration::from_secs(5), || closed("expired") >= 1));
    let lease = pool.checkout().unwrap();
    alive.store(false, Ordering::SeqCst);
    drop(lease);
    assert!(eventually(Duration::from_secs(5), || closed("died") >= 1));
    alive.store(true, Ordering::SeqCst);
}

#[test]
fn timeouts_start_failures_and_the_gauges() {
    store();
    let fail = Arc::new(AtomicBool::new(false));
    let f = fail.clone();
    let pool = Pool::builder()
        .size(3)
        .name("gauges")
        .reconnect_delay(ms(50))
        .build(move || -> Result<(), BoxError> {
            if f.load(Ordering::SeqCst) {
                Err("refused".into())
            } else {
                Ok(())
            }
        })
        .unwrap();
    let held: Vec<_> = (0..2).map(|_| pool.checkout().unwrap()).collect();
    let waiter = {
        let pool = pool.clone();
        thread::spawn(move || {
            let one = pool.checkout().unwrap();
            let _ = pool.checkout_timeout(Duration::from_secs(3));
            drop(one);
        })
    };
    // The reaper samples the gauges every second.
    assert!(eventually(Duration::from_secs(5), || {
        gauge("cylinder_pool_waiting{pool=gauges}") == 1.0
            && gauge("cylinder_pool_workers{pool=gauges,state=leased}") == 3.0
            && gauge("cylinder_pool_workers{pool=gauges,state=idle}") == 0.0
            && gauge("cylinder_pool_workers{pool=gauges,state=starting}") == 0.0
    }));
    drop(held);
    waiter.join().unwrap();
    let mut held: Vec<_> = (0..3).map(|_| pool.checkout().unwrap()).collect();
    assert!(pool.checkout_timeout(ms(10)).is_err());
    assert_eq!(counter("cylinder_pool_timeouts_total{pool=gauges}"), 1);
    fail.store(true, Ordering::SeqCst);
    Lease::discard(held.pop().unwrap());
    assert!(eventually(Duration::from_secs(5), || counter(
        "cylinder_pool_start_failures_total{pool=gauges}"
    ) >= 1));
    fail.store(false, Ordering::SeqCst);
    assert!(eventually(Duration::from_secs(5), || gauge(
        "cylinder_pool_workers{pool=gauges,state=idle}"
    ) == 1.0));
    drop(held);
}

/// A pool of 3 with two leases out (the gauges, sampled every second, say 2 leased and 1
/// idle), then the leases end and the pool is drained: `stats()` says size 0.
///
/// (Tenth breaking pass.) Expected: src/pool/metrics.rs documents `cylinder_pool_workers` as the pool's "`idle`,
/// `leased`, `starting` workers", sampled every second; once the pool is closed it has none,
/// so after a sample period the gauges read 0 (a closed pool's connections must not show as
/// open on a dashboard).
///
/// What happens: the gauges are set only by the reaper's round (`Shared::upkeep`,
/// src/pool/upkeep.rs), which returns at once once the pool is closed, and `close`/`drain`
/// (src/pool/mod.rs, `Handle::close`; src/pool/shared.rs, `Shared::close`) never set them:
/// they keep their last values (here idle 1, leased 2) for as long as the process runs.
/// Deterministic.
#[test]
fn the_worker_gauges_of_a_drained_pool_fall_to_zero() {
    store();
    let pool = Pool::builder()
        .size(3)
        .name("drained10")
        .build(|| Ok(()))
        .unwrap();
    let held: Vec<_> = (0..2).map(|_| pool.checkout().unwrap()).collect();
    assert!(eventually(Duration::from_secs(5), || {
        gauge("cylinder_pool_workers{pool=drained10,state=leased}") == 2.0
    }));
    drop(held);
    pool.drain(Duration::from_secs(5)).unwrap();
    assert_eq!(pool.stats().size, 0);
    // Well past a sample period.
    let zero = eventually(Duration::from_millis(2500), || {
        gauge("cylinder_pool_workers{pool=drained10,state=idle}") == 0.0
            && gauge("cylinder_pool_workers{pool=drained10,state=leased}") == 0.0
    });
    assert!(
        zero,
        "a drained pool still reports idle {} and leased {} workers",
        gauge("cylinder_pool_workers{pool=drained10,state=idle}"),
        gauge("cylinder_pool_workers{pool=drained10,state=leased}")
    );
}

/// A lease still out when the pool closes: the `leased` gauge falls to 0 when it comes back
/// (the pool has no reaper any more to sample it).
#[test]
fn the_leased_gauge_of_a_closed_pool_falls_when_its_last_lease_returns() {
    store();
    let pool = Pool::builder()
        .size(2)
        .name("closed10")
        .build(|| Ok(()))
        .unwrap();
    let held = pool.checkout_owned().unwrap();
    assert!(eventually(Duration::from_secs(5), || {
        gauge("cylinder_pool_workers{pool=closed10,state=leased}") == 1.0
    }));
    pool.close();
    assert_eq!(
        gauge("cylinder_pool_workers{pool=closed10,state=idle}"),
        0.0
    );
    drop(held);
    assert_eq!(
        gauge("cylinder_pool_workers{pool=closed10,state=leased}"),
        0.0
    );
}

/// Eleventh breaking pass. A lease still out when the pool closes is detached with
/// `OwnedLease::take` (the client keeps the connection) instead of being dropped.
///
/// Expected: as for a lease that returns (the test above, and the tenth pass's fix "the
/// worker gauges fall at close and as the last leases return"): the pool has no reaper any
/// more, so the lease that ends samples the gauges, and `leased` falls to 0 (`stats()` says
/// 0 workers, 0 leased).
///
/// Happened: `Shared::detach` (`src/pool/release.rs`) counts the worker out and reports
/// `WorkerTaken`, but only `end_lease` samples the gauges of a closed pool: the `leased`
/// gauge stays at 1 for good.
#[test]
fn the_leased_gauge_of_a_closed_pool_falls_when_its_last_lease_is_taken() {
    store();
    let pool = Pool::builder()
        .size(2)
        .name("taken11")
        .build(|| Ok(()))
        .unwrap();
    let held = pool.checkout_owned().unwrap();
    assert!(eventually(Duration::from_secs(5), || {
        gauge("cylinder_pool_workers{pool=taken11,state=leased}") == 1.0
    }));
    pool.close();
    let _connection: () = cylinder::OwnedLease::take(held);
    assert_eq!((pool.stats().size, pool.stats().leased), (0, 0));
    // Well past a sample period: nothing else will sample it.
    let zero = eventually(Duration::from_millis(1500), || {
        gauge("cylinder_pool_workers{pool=taken11,state=leased}") == 0.0
    });
    assert!(
        zero,
        "a closed pool whose last lease was taken still reports {} leased workers",
        gauge("cylinder_pool_workers{pool=taken11,state=leased}")
    );
}

/// Eleventh breaking pass. A pool is drained while a start is under way (a slow connect):
/// `drain` waits for it, and the worker it opens is dropped as the pool is closed.
///
/// Expected: the tenth pass's fix ("the worker gauges fall at close"): once `drain` returned
/// (every start under way ended, `stats().starting == 0`), the `starting` gauge says 0.
///
/// Happened: `Shared::close` samples the gauges while the start still runs (`starting` 1),
/// and nothing samples them again: the start that ends in a closed pool
/// (`Shared::deliver`, `close_worker`) does not, nor does `drain` when it returns. The
/// `starting` gauge stays at 1 for good.
#[test]
fn the_starting_gauge_of_a_pool_drained_during_a_start_falls_to_zero() {
    store();
    let pool = Pool::builder()
        .size(1)
        .name("drainstart11")
        .build_unchecked(|| {
            thread::sleep(Duration::from_millis(300));
            Ok(())
        })
        .unwrap();
    assert!(eventually(Duration::from_secs(5), || pool.stats().starting == 1));
    pool.drain(Duration::from_secs(5)).unwrap();
    assert_eq!((pool.stats().size, pool.stats().starting), (0, 0));
    let zero = eventually(Duration::from_millis(1500), || {
        gauge("cylinder_pool_workers{pool=drainstart11,state=starting}") == 0.0
    });
    assert!(
        zero,
        "a drained pool still reports {} workers starting",
        gauge("cylinder_pool_workers{pool=drainstart11,state=starting}")
    );
}

/// Eleventh breaking pass. Three clients wait in line on a pool whose only worker is
/// leased, and the pool is closed: each waiter wakes with `Error::Closed` and leaves.
///
/// Expected: the tenth pass's fix ("the worker gauges fall at close"): the pool's reaper is
/// gone, so what close reports is the last word; once the waiters have left
/// (`stats().waiters == 0`), `cylinder_pool_waiting` says 0.
///
/// Happened: `Shared::close` samples the gauges right after waking the line, before the
/// woken waiters have left it (`waiters.len()` still 3), and nothing samples them again
/// while the lease stays out: `cylinder_pool_waiting` keeps saying 3.
#[test]
fn the_waiting_gauge_of_a_closed_pool_falls_when_its_waiters_leave() {
    store();
    let pool = Pool::builder()
        .size(1)
        .name("waiters11")
        .checkout_timeout(Duration::from_secs(20))
        .build(|| Ok(()))
        .unwrap();
    let held = pool.checkout_owned().unwrap();
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let pool = pool.clone();
            thread::spawn(move || pool.checkout().map(|_| ()))
        })
        .collect();
    assert!(eventually(Duration::from_secs(5), || pool.stats().waiters == 3));
    pool.close();
    for waiter in waiters {
        assert!(matches!(
            waiter.join().unwrap(),
            Err(cylinder::Error::Closed)
        ));
    }
    assert_eq!(pool.stats().waiters, 0);
    let zero = eventually(Duration::from_millis(1500), || {
        gauge("cylinder_pool_waiting{pool=waiters11}") == 0.0
    });
    let left = gauge("cylinder_pool_waiting{pool=waiters11}");
    drop(held);
    assert!(
        zero,
        "a closed pool with no one in line still reports {left} waiting"
    );
}

/// Twelfth breaking pass. `Pool::map` holds the pool's two free workers (counted as free:
/// `stats().free` is 2) while its callback runs, and the pool is closed meanwhile; then the
/// callback returns and `map` gives the workers back, which closes them (the pool is closed).
///
/// Expected: the tenth and eleventh passes' fix ("the worker gauges fall at close", "a
/// closed pool's gauges are sampled by whatever moves them"): the closed pool has no reaper,
/// so what gives the workers back samples the gauges; once `map` returned
/// (`stats().size == 0`, `stats().free == 0`), `cylinder_pool_workers{state=idle}` says 0.
///
/// Happened: `Shared::close` samples the gauges while `map` holds the workers (`idle` 2),
/// and `map`'s guard (`Held::drop` in `Pool::map`, through `put_back`, which drains a
/// closed pool) does not sample them again: the `idle` gauge says 2 for good.
#[test]
fn the_idle_gauge_of_a_pool_closed_while_map_held_its_workers_falls_to_zero() {
    store();
    let pool = Pool::builder()
        .size(2)
        .name("map12")
        .build(|| Ok(()))
        .unwrap();
    assert!(eventually(Duration::from_secs(5), || {
        gauge("cylinder_pool_workers{pool=map12,state=idle}") == 2.0
    }));
    let closer = pool.clone();
    let mut closed = false;
    pool.map(|_| {
        if !closed {
            closed = true;
            closer.close();
        }
    });
    assert_eq!((pool.stats().size, pool.stats().free), (0, 0));
    let zero = eventually(Duration::from_millis(1500), || {
        gauge("cylinder_pool_workers{pool=map12,state=idle}") == 0.0
    });
    assert!(
        zero,
        "a closed pool with no worker left still reports {} idle workers",
        gauge("cylinder_pool_workers{pool=map12,state=idle}")
    );
}

/// Twelfth breaking pass. A pool of two with one worker open (`min_idle(1)`), leased; a
/// `try_checkout` finds nothing free and opens a worker on its own thread (poolboy's way),
/// a slow connect; the pool is closed meanwhile, and then that connect fails.
///
/// Expected: the eleventh pass's fix ("a closed pool's gauges are sampled by whatever moves
/// them: ... starts that end"): once the start ended (`stats().starting == 0`), the
/// `starting` gauge says 0, as it does for a start run by a start thread
/// (`the_starting_gauge_of_a_pool_drained_during_a_start_falls_to_zero`).
///
/// Happened: `Shared::start_for_caller` samples a closed pool's gauges only when its start
/// succeeded; when it failed (its claim dropped, `StartFailed` reported) it does not, and
/// `close` sampled while it ran: the `starting` gauge says 1 for good. (The same arm
/// reported `StartFailed` for a start cut by close; it no longer does, as a start thread's
/// start cut by close never did.)
#[test]
fn the_starting_gauge_of_a_pool_closed_during_a_try_checkouts_own_failing_start_falls_to_zero() {
    store();
    let (go, gate) = std::sync::mpsc::channel::<()>();
    let gate = Mutex::new(gate);
    let starts = AtomicU64::new(0);
    let pool = Pool::builder()
        .size(2)
        .min_idle(1)
        .name("trystart12")
        .build(move || -> Result<(), BoxError> {
            if starts.fetch_add(1, Ordering::SeqCst) == 0 {
                return Ok(());
            }
            let _ = gate.lock().unwrap().recv_timeout(Duration::from_secs(10));
            Err("connection refused".into())
        })
        .unwrap();
    let held = pool.checkout_owned().unwrap();
    let trying = {
        let pool = pool.clone();
        thread::spawn(move || pool.try_checkout().map(|_| ()))
    };
    assert!(eventually(Duration::from_secs(5), || pool.stats().starting == 1));
    pool.close();
    go.send(()).unwrap();
    assert!(trying.join().unwrap().is_err());
    assert_eq!(pool.stats().starting, 0);
    let zero = eventually(Duration::from_millis(1500), || {
        gauge("cylinder_pool_workers{pool=trystart12,state=starting}") == 0.0
    });
    let left = gauge("cylinder_pool_workers{pool=trystart12,state=starting}");
    drop(held);
    assert!(
        zero,
        "a closed pool with no start under way still reports {left} starting"
    );
}
