//! Sixth breaking pass (issues #19 and #21): each test names its scenario and fails on the
//! code it was written against. Bounded in time; hangs are detected with bounded waits.

mod common;

use common::within;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use cylinder::Pool;

/// A quiet pool of two with `max_lifetime(150 ms)` and an `is_alive` hook (asked once per
/// worker per sweep). Its workers expire and are replaced every ~150 ms. Expected: the reaper
/// sweeps at its period (`max_lifetime / 4`, ~37 ms) and at each planned expiry, so over half
/// a second it asks `is_alive` a few dozen times. On the current code, once the first
/// planned expiry has passed the reaper sweeps in a tight loop for good (over 100,000 looks
/// in 500 ms): `next_expiry` is only ever lowered (`fetch_min` in `plan_expiry` and
/// `note_expiry`), never cleared after the sweep that served it, so it stays in the past,
/// every round finds a sweep due and asks to run again after zero time.
#[test]
fn a_quiet_pool_whose_workers_expired_once_does_not_sweep_in_a_tight_loop() {
    let looks = Arc::new(AtomicUsize::new(0));
    let l = looks.clone();
    let started = Arc::new(AtomicUsize::new(0));
    let s = started.clone();
    let pool = Pool::builder()
        .size(2)
        // Every worker lives about 150 ms (less its jitter), then is replaced.
        .max_lifetime(Duration::from_millis(150))
        .is_alive(move |_: &u32| {
            l.fetch_add(1, Ordering::Relaxed);
            true
        })
        .build(move || Ok(s.fetch_add(1, Ordering::SeqCst) as u32))
        .unwrap();
    // Let the first two expire and be replaced.
    thread::sleep(Duration::from_millis(400));
    let before = looks.load(Ordering::Relaxed);
    thread::sleep(Duration::from_millis(500));
    let during = looks.load(Ordering::Relaxed) - before;
    drop(pool);
    // 500 ms at a sweep every ~37 ms (or at an expiry), 2 workers, plus first looks: < 100.
    assert!(
        during < 200,
        "is_alive was asked {during} times in 500 ms of a quiet pool of 2: the reaper spins"
    );
}

/// A balancer of two pools: pool A's server hangs on connect (its one start takes 2 s), pool
/// B is healthy. `checkout_timeout(100 ms)` promises to wait "up to `timeout` in all".
/// Expected: it returns within about 100 ms (B's worker, or an error), never waits out A's
/// start. On the current code the `try_checkout` it runs on A first waits for A's start on
/// its way, bounded only by A's own `checkout_timeout` (30 s by default).
#[test]
fn balancer_checkout_timeout_is_not_held_past_its_timeout_by_a_pool_whose_start_hangs() {
    let slow = Pool::builder()
        .name("slow")
        .size(1)
        .build_unchecked(|| {
            thread::sleep(Duration::from_secs(2));
            Ok(0u32)
        })
        .unwrap();
    let fine = Pool::builder()
        .name("fine")
        .size(1)
        .build(|| Ok(1u32))
        .unwrap();
    let balancer = cylinder::Balancer::over_pools([slow, fine]).unwrap();
    let took = within(Duration::from_secs(10), move || {
        // Two checkouts from one thread: its rotation goes through both pools, so one of
        // the two begins at the slow pool (while its start is still under way).
        let mut slowest = (Duration::ZERO, None);
        for _ in 0..2 {
            let began = Instant::now();
            let got = balancer
                .checkout_timeout(Duration::from_millis(100))
                .map(|l| *l);
            if began.elapsed() > slowest.0 {
                slowest = (began.elapsed(), got.ok());
            }
        }
        slowest
    })
    .expect("hung");
    assert!(
        took.0 < Duration::from_millis(600),
        "checkout_timeout(100 ms) took {:?} (got {:?})",
        took.0,
        took.1
    );
}

/// A balancer of two pools; pool A has `min_idle(0)` (connections opened on demand) and its
/// server is down when the balancer first tries it, so A leaves rotation. The server comes
/// back. Expected (issue #21): A "rejoins the rotation by itself within its
/// `reconnect_delay` of its server returning". On the current code nothing ever tries A
/// again: its reaper starts nothing for `min_idle(0)` with no waiter, and the balancer skips
/// a pool that is not alive, so A's share stays zero for good while B carries everything.
#[test]
fn a_pool_with_min_idle_zero_that_was_down_rejoins_the_balancer_when_its_server_returns() {
    let down = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let d = down.clone();
    let a = Pool::builder()
        .name("a")
        .size(2)
        .min_idle(0)
        .reconnect_delay(Duration::from_millis(50))
        .build_unchecked(move || {
            if d.load(Ordering::SeqCst) {
                Err::<u32, cylinder::BoxError>("a: connection refused".into())
            } else {
                Ok(0u32)
            }
        })
        .unwrap();
    let b = Pool::builder()
        .name("b")
        .size(2)
        .build(|| Ok(1u32))
        .unwrap();
    let balancer = cylinder::Balancer::over_pools([a, b]).unwrap();
    let served_by_a = within(Duration::from_secs(10), move || {
        // A is tried first and found down: served by B.
        assert_eq!(*balancer.checkout().unwrap(), 1);
        down.store(false, Ordering::SeqCst);
        // Ten times A's reconnect_delay later, A's server has long been back.
        thread::sleep(Duration::from_millis(500));
        (0..20)
            .filter(|_| *balancer.checkout().unwrap() == 0)
            .count()
    })
    .expect("hung");
    assert!(
        served_by_a > 0,
        "pool A never served again after its server came back (0 of 20 checkouts)"
    );
}

/// `drain` is the graceful shutdown: it "returns when every lease is back and the pool is
/// closed", after which a program exits. A worker whose `Drop` closes its connection
/// gracefully (here: 300 ms) is returned by its client during the drain. Expected: when
/// `drain` returns `Ok`, that worker was closed (its `Drop` finished). On the current code
/// `close_worker` counts the worker out before dropping it, and `drain` returns as soon as
/// the count is zero: the `Drop` is still running on the client's thread (and is cut short
/// if the program exits).
#[test]
fn drain_returns_only_after_the_last_returned_worker_was_closed() {
    struct Graceful(Arc<AtomicUsize>);
    impl Drop for Graceful {
        fn drop(&mut self) {
            thread::sleep(Duration::from_millis(300));
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let closed = Arc::new(AtomicUsize::new(0));
    let c = closed.clone();
    let pool = Pool::builder()
        .size(1)
        .build(move || Ok(Graceful(c.clone())))
        .unwrap();
    let lease = pool.checkout_owned().unwrap();
    let client = thread::spawn(move || {
        thread::sleep(Duration::from_millis(50));
        drop(lease);
    });
    let result = within(Duration::from_secs(10), move || {
        let drained = pool.drain(Duration::from_secs(5));
        (drained.is_ok(), closed.load(Ordering::SeqCst))
    })
    .expect("drain hung");
    client.join().unwrap();
    assert!(result.0, "drain failed");
    assert_eq!(
        result.1, 1,
        "drain returned Ok while the returned worker's Drop was still running"
    );
}

fn on_reaper() -> bool {
    thread::current()
        .name()
        .is_some_and(|name| name.starts_with("cylinder-reaper"))
}

/// A pool of two with `keepalive`: the reaper checks idle workers with the checkout check.
/// The first keepalive check of a sweep blocks (a probe stuck on a hung socket, 2 s). The
/// other worker is idle and fine. Expected (the sweep's own promise: "a liveness probe or
/// check that blocks holds back only its own worker"): a checkout on another thread gets
/// the other worker at once. On the current code the sweep takes every free worker off the
/// list before it looks at the first, so the one not yet looked at is held for as long as
/// the first one's check blocks, and the checkout times out while `stats()` says both are
/// free.
#[test]
fn a_keepalive_check_blocked_on_one_worker_does_not_hold_back_the_others() {
    let blocking = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let b = blocking.clone();
    let pool = Pool::builder()
        .size(2)
        .keepalive(Duration::from_millis(100))
        .test_on_checkout(move |_: &mut u32| {
            if on_reaper() && !b.swap(true, Ordering::SeqCst) {
                thread::sleep(Duration::from_secs(2));
            }
            true
        })
        .build(|| Ok(0u32))
        .unwrap();
    let began = Instant::now();
    while !blocking.load(Ordering::SeqCst) && began.elapsed() < Duration::from_secs(3) {
        thread::sleep(Duration::from_millis(1));
    }
    assert!(blocking.load(Ordering::SeqCst), "no keepalive check ran");
    let stats = pool.stats();
    let at = Instant::now();
    let got = pool
        .checkout_timeout(Duration::from_millis(500))
        .map(|_| ());
    assert!(
        got.is_ok(),
        "a checkout waited {:?} and got {got:?} while one worker was idle but held by a \
         sweep blocked on the other's keepalive check (stats then: {stats:?})",
        at.elapsed()
    );
}

/// A pool of one whose worker's `Drop` takes 300 ms (closing a connection gracefully). Its
/// client discards it; meanwhile another client's `try_checkout` finds the pool with room
/// and opens a worker. Expected (`retire`'s promise: "its `Drop` ends before a replacement
/// may start, so no more than the pool's limit are ever alive at once"): never two workers
/// alive in a pool of one. On the current code `close_worker` counts the worker out before
/// its `Drop` runs, so the pool has "room" while the old worker still lives.
#[test]
fn no_more_workers_than_the_size_are_alive_while_a_retired_one_is_still_dropping() {
    struct Slow(Arc<AtomicUsize>);
    impl Drop for Slow {
        fn drop(&mut self) {
            thread::sleep(Duration::from_millis(300));
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let live = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (l, m) = (live.clone(), most.clone());
    let pool = Pool::builder()
        .size(1)
        .build(move || {
            let now = l.fetch_add(1, Ordering::SeqCst) + 1;
            m.fetch_max(now, Ordering::SeqCst);
            Ok(Slow(l.clone()))
        })
        .unwrap();
    let lease = pool.checkout_owned().unwrap();
    let client = thread::spawn(move || cylinder::OwnedLease::discard(lease));
    thread::sleep(Duration::from_millis(50));
    let other = pool.clone();
    let _ = within(Duration::from_secs(10), move || {
        other.try_checkout().is_ok()
    });
    client.join().unwrap();
    drop(pool);
    assert_eq!(
        most.load(Ordering::SeqCst),
        1,
        "two workers were alive at once in a pool of size 1"
    );
}

/// With the `metrics` feature, the pool records through whatever recorder the application
/// installed: that is user code, as an event callback is. A recorder whose histogram panics
/// when `cylinder_pool_lease_seconds` is recorded (a bug in a custom exporter). Expected:
/// the panic is contained like any user callback's, the worker goes back to the pool and
/// the next checkout gets it. On the current code `end_lease` records the lease's length
/// before anything else, uncontained: the panic unwinds out of the lease's `Drop` into the
/// client, the worker is dropped on the way without being counted out, and the pool of one
/// has lost its only worker for good (every later checkout times out).
#[cfg(feature = "metrics")]
#[test]
fn a_panicking_metrics_recorder_does_not_lose_the_leased_worker() {
    use metrics::{
        Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString,
        Unit,
    };
    struct Panics;
    impl HistogramFn for Panics {
        fn record(&self, _: f64) {
            panic!("a histogram that panics on purpose");
        }
    }
    struct Buggy;
    impl Recorder for Buggy {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
            Counter::noop()
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
            if key.name() == "cylinder_pool_lease_seconds" {
                Histogram::from_arc(Arc::new(Panics))
            } else {
                Histogram::noop()
            }
        }
    }
    common::quiet_panics();
    let pool = metrics::with_local_recorder(&Buggy, || {
        Pool::builder().size(1).build(|| Ok(0u32)).unwrap()
    });
    let outcome = within(Duration::from_secs(10), move || {
        let returned = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            drop(pool.checkout().unwrap());
        }));
        let again = pool
            .checkout_timeout(Duration::from_millis(500))
            .map(|_| ());
        (returned.is_ok(), again, pool.stats())
    })
    .expect("hung");
    assert!(
        outcome.0 && outcome.1.is_ok(),
        "returning a lease panicked into the client: {}; the next checkout got {:?}; stats {:?}",
        !outcome.0,
        outcome.1,
        outcome.2
    );
}

/// `evict_all` after a credential rotation, while a start is under way with the old
/// credentials (the pool knows it: the start keeps the eviction count from before it
/// began). Expected: that worker is evicted too, i.e. closed once it arrives (or at least
/// soon after) and replaced in the background, as every idle worker is "closed at once".
/// On the current code it joins the free list and stays open (a connection to the old
/// server, with the old credentials) for as long as the pool is quiet: it is only noticed
/// by a later checkout (which then pays for its replacement's start) or a sweep, and a pool
/// without `idle_timeout`/`max_lifetime`/`keepalive` has no sweeps.
#[test]
fn a_worker_whose_start_was_under_way_at_evict_all_is_closed_when_it_arrives() {
    struct Conn {
        generation: u32,
        alive: Arc<[AtomicUsize; 2]>,
    }
    impl Drop for Conn {
        fn drop(&mut self) {
            self.alive[self.generation as usize].fetch_sub(1, Ordering::SeqCst);
        }
    }
    let alive: Arc<[AtomicUsize; 2]> = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let credentials = Arc::new(AtomicUsize::new(0));
    let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
    let gate = std::sync::Mutex::new(gate_rx);
    let (a, c) = (alive.clone(), credentials.clone());
    let pool = Pool::builder()
        .size(1)
        .build_unchecked(move || {
            let generation = c.load(Ordering::SeqCst) as u32;
            // The first start waits for the test (a slow connect).
            if generation == 0 {
                let _ = gate.lock().unwrap().recv_timeout(Duration::from_secs(5));
            }
            a[generation as usize].fetch_add(1, Ordering::SeqCst);
            Ok(Conn {
                generation,
                alive: a.clone(),
            })
        })
        .unwrap();
    thread::sleep(Duration::from_millis(50));
    credentials.store(1, Ordering::SeqCst);
    pool.evict_all();
    gate_tx.send(()).unwrap();
    let closed = common::eventually(Duration::from_secs(2), || {
        alive[0].load(Ordering::SeqCst) == 0 && alive[1].load(Ordering::SeqCst) == 1
    });
    assert!(
        closed,
        "after evict_all, the worker started with the old credentials is still open \
         (old {}, new {}, stats {:?})",
        alive[0].load(Ordering::SeqCst),
        alive[1].load(Ordering::SeqCst),
        pool.stats()
    );
}
