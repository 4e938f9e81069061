//! Tenth breaking pass: the areas the ninth did not execute (the balancer of pools' error
//! paths, the `Factory`, `evict_all` meeting a start under way and a lazy pool, `resize`'s
//! bounds, the actor, the balancer's lease mode, thread churn, `QueueMode::Fifo`,
//! `OnClientPanic`, `Lease::take`, every duration option at its extremes, size 1 and
//! `MAX_POOL_SIZE`), attacked family by family; the actor, lease mode, churn and extremes
//! found nothing. Each test is one bug, named after its scenario; each fails on the code it
//! was written against. The `metrics` feature's finding is in
//! `tests/lifecycle_breaks10_metrics.rs`.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use common::{eventually, within};
use cylinder::{Balancer, BoxError, Error, Event, Lease, Pool};

/// A user error type (a start's or a supervisor's) whose `Drop` panics.
#[derive(Debug)]
struct Bomb(u32);

impl std::fmt::Display for Bomb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "connection refused (#{})", self.0)
    }
}

impl std::error::Error for Bomb {}

impl Drop for Bomb {
    fn drop(&mut self) {
        panic!("user error #{} dropped: its Drop panics on purpose", self.0);
    }
}

/// A balancer of two pools, `a` and `b`, each of size 1 with its worker held by the test. A
/// client calls `Balancer::checkout_timeout(800 ms)` starting its rotation at `a`: it waits
/// in `a`'s line; meanwhile `a`'s server goes down (its starts fail with an error whose
/// `Drop` panics) and `a`'s worker is discarded, so the client's wait in `a` ends with
/// `Disconnected` (cause: start error #0) and it moves on to wait in `b`'s line, where it
/// times out. Meanwhile `a`'s reaper retries every 20 ms and each failure replaces the cause
/// `a` keeps, so the client's copy of #0 becomes the last.
///
/// Expected: GUARANTEES.md, "every `Drop` of a user value (workers, errors, panic payloads,
/// requests) ... A panic there is contained ...: no panic reaches a caller that did not
/// cause it"; `checkout_timeout`'s rustdoc: "[`Error::Timeout`] when no worker came free in
/// time in a live pool". The client should get `Err(Timeout)`.
///
/// What happens: `checkout_timeout` (src/balancer/pools.rs) keeps each pool's cause in its
/// `causes` vector and, when it returns `Timeout` (or `Closed`), drops that vector in
/// place, uncontained: start error #0's `Drop` runs there and its panic unwinds out of
/// `Balancer::checkout_timeout` into the client. Deterministic.
#[test]
fn a_balancer_checkout_that_times_out_does_not_drop_a_collected_start_error_uncontained() {
    common::quiet_panics();
    let failing = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU32::new(0));
    let (fail, count) = (failing.clone(), errors.clone());
    let a = Pool::builder()
        .size(1)
        .name("a")
        .reconnect_delay(Duration::from_millis(20))
        .build(move || -> Result<u32, BoxError> {
            if fail.load(Ordering::SeqCst) {
                Err(Box::new(Bomb(count.fetch_add(1, Ordering::SeqCst))))
            } else {
                Ok(1)
            }
        })
        .unwrap();
    let b = Pool::builder()
        .size(1)
        .name("b")
        .build(|| Ok(2u32))
        .unwrap();
    let balancer = Balancer::over_pools([a.clone(), b.clone()]).unwrap();
    let held_a = a.checkout().unwrap();
    let held_b = b.checkout().unwrap();
    let client = {
        let balancer = balancer.clone();
        thread::spawn(move || {
            // This thread's rotation continues after the pool it was given last: once it was
            // given `b`, its next checkout starts at `a`.
            for _ in 0..4 {
                let given = balancer.get().unwrap();
                if format!("{:?}", *given).contains("\"b\"") {
                    break;
                }
            }
            balancer
                .checkout_timeout(Duration::from_millis(800))
                .map(|lease| *lease)
        })
    };
    assert!(
        eventually(Duration::from_secs(5), || a.stats().waiters == 1),
        "the client never waited in a's line"
    );
    failing.store(true, Ordering::SeqCst);
    Lease::discard(held_a);
    let outcome = within(Duration::from_secs(10), move || client.join()).expect("the client hung");
    drop(held_b);
    match outcome {
        Ok(got) => assert!(
            matches!(got, Err(Error::Timeout { .. })),
            "expected Timeout, got {got:?}"
        ),
        Err(payload) => panic!(
            "a start error's Drop panicked into the balancer's client: {:?} ({} start errors)",
            // (Reworded: the quiet panic hook hides messages that say "on purpose".)
            payload
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_default()
                .replace("on purpose", "as the test's error type does"),
            errors.load(Ordering::SeqCst)
        ),
    }
}

/// A pool of one whose worker is discarded: its replacement's start is under way (inside
/// the start closure) when `evict_all` is called, so when it arrives it is closed as evicted
/// and `Event::WorkerEvicted` is reported, on the start thread. The `on_event` callback
/// answers that event with a graceful shutdown, `pool.drain(500 ms)`, as the ninth pass's
/// `drain_called_from_an_eviction_event_does_not_wait_for_the_workers_the_sweep_still_holds`
/// does for an eviction by the sweep.
///
/// Expected: `drain`'s rustdoc and GUARANTEES.md: "`drain` returns only when every lease is
/// back, every start under way has ended and every worker's `Drop` has ended" — all true
/// here (the evicted worker is closed before its event is reported; its replacement, if it
/// started, is closed on arrival), so `drain` returns `Ok`.
///
/// What happens: `deliver` (src/pool/start.rs) retires the evicted worker and reports its
/// event while still holding the `Delivering` guard of that start (`counts.delivering`,
/// dropped only after `retire` returns). `drain` waits for `on_their_way() == 0`, which
/// counts it: it times out after 500 ms with `Timeout { state: size 0, starting 0, .. }`,
/// a state that says nothing was left to wait for. Deterministic.
#[test]
fn drain_called_from_the_eviction_event_of_a_start_that_straddled_evict_all_returns() {
    let gate = Arc::new(Mutex::new(()));
    let closed_gate = gate.lock().unwrap();
    let starts = Arc::new(AtomicUsize::new(0));
    let in_start = Arc::new(AtomicBool::new(false));
    let handle: Arc<OnceLock<Pool<u32>>> = Arc::new(OnceLock::new());
    let drained: Arc<Mutex<Option<Result<(), Error>>>> = Arc::new(Mutex::new(None));
    let (g, s, entered) = (gate.clone(), starts.clone(), in_start.clone());
    let (h, d) = (handle.clone(), drained.clone());
    let pool = Pool::builder()
        .size(1)
        .on_event(move |event| {
            if *event == Event::WorkerEvicted {
                if let Some(pool) = h.get() {
                    let got = pool.drain(Duration::from_millis(500));
                    d.lock().unwrap().get_or_insert(got);
                }
            }
        })
        .build(move || {
            // The second start (the discarded worker's replacement) waits for the gate.
            if s.fetch_add(1, Ordering::SeqCst) == 1 {
                entered.store(true, Ordering::SeqCst);
                drop(g.lock().unwrap());
            }
            Ok(7u32)
        })
        .unwrap();
    assert!(handle.set(pool.clone()).is_ok());
    Lease::discard(pool.checkout().unwrap());
    assert!(
        eventually(Duration::from_secs(5), || in_start.load(Ordering::SeqCst)),
        "the replacement never started"
    );
    pool.evict_all();
    drop(closed_gate);
    assert!(
        eventually(Duration::from_secs(5), || drained.lock().unwrap().is_some()),
        "the arriving worker was not evicted"
    );
    let got = drained.lock().unwrap().take();
    assert!(
        matches!(got, Some(Ok(()))),
        "drain from the eviction event: {got:?}"
    );
}

/// `Pool::resize` on a pool built with `size(1).max_overflow(10)`, to 64.
///
/// Expected: `resize`'s rustdoc: "At most four times the size the pool was built with (and
/// at least 64)": 64 is always allowed.
///
/// What happens: `Error::InvalidConfig { option: "resize", reason: "must be at most 54" }`.
/// `Shared::new` (src/pool/shared.rs) sizes the room as `((size + max_overflow) * 4)` clamped
/// to at least 64, and `Pool::resize` (src/pool/mod.rs) bounds the size by that less
/// `max_overflow`: the floor of 64 shrinks by the overflow. Deterministic.
#[test]
fn resize_to_64_is_allowed_on_a_small_pool_with_overflow() {
    let pool = Pool::builder()
        .size(1)
        .max_overflow(10)
        .min_idle(0)
        .build(|| Ok(()))
        .unwrap();
    let got = pool.resize(64);
    assert!(got.is_ok(), "resize(64): {got:?}");
}

/// A lazy pool (`size(3).min_idle(1)`, no `idle_timeout`) that grew to 3 workers under load
/// (three leases at once, then returned). Credentials rotate and `evict_all` is called.
/// The pass found that only `min_idle` fresh workers were started in place of the three
/// closed, against `evict_all`'s rustdoc ("starts fresh ones in their place"). The pool
/// replaces a retired worker only up to `min_idle` (and for a client waiting), as r2d2 and
/// HikariCP refill to their minimum: the docs of `min_idle`, `evict_all` and
/// `Lease::discard` now say so. Expected now: no worker from before the eviction is left,
/// `min_idle` fresh ones are open, and three clients at once get three fresh workers (the
/// rest opened on demand).
#[test]
fn evict_all_on_a_lazy_pool_that_grew_leaves_min_idle_fresh_workers_and_opens_the_rest_on_demand() {
    let generation = Arc::new(AtomicU32::new(1));
    let g = generation.clone();
    let pool = Pool::builder()
        .size(3)
        .min_idle(1)
        .build(move || Ok(g.load(Ordering::SeqCst)))
        .unwrap();
    let busy: Vec<_> = (0..3).map(|_| pool.checkout().unwrap()).collect();
    drop(busy);
    assert!(eventually(Duration::from_secs(5), || {
        let stats = pool.stats();
        (stats.size, stats.free, stats.starting) == (3, 3, 0)
    }));
    generation.store(2, Ordering::SeqCst);
    pool.evict_all();
    let replaced = eventually(Duration::from_secs(3), || {
        let stats = pool.stats();
        (stats.size, stats.free, stats.starting) == (1, 1, 0)
    });
    assert!(
        replaced,
        "evict_all on a lazy pool left {:?} (expected min_idle, 1, fresh)",
        pool.stats()
    );
    let fresh: Vec<_> = (0..3).map(|_| pool.checkout().unwrap()).collect();
    let generations: Vec<u32> = fresh.iter().map(|lease| **lease).collect();
    assert_eq!(generations, [2, 2, 2]);
}

/// A worker of a `Factory` whose `is_alive` is slow (it waits on a gate the test holds) and
/// whose `Drop` panics (a user type with a buggy destructor).
struct SlowProbe {
    alive: AtomicBool,
    gate: Arc<Mutex<()>>,
    asked: Arc<AtomicBool>,
}

impl cylinder::Worker for SlowProbe {
    fn is_alive(&self) -> bool {
        self.asked.store(true, Ordering::SeqCst);
        drop(self.gate.lock().unwrap());
        self.alive.load(Ordering::SeqCst)
    }
}

impl Drop for SlowProbe {
    fn drop(&mut self) {
        panic!("a worker's drop panics on purpose");
    }
}

/// A `Factory` of one worker, which has died. `Factory::resize(1)` runs on one thread and
/// asks the dead worker's (slow) `is_alive`; meanwhile the worker is retired through
/// `Supervisor::retire` (what a balancer does when it finds a child dead, `mark_dead`) and
/// the last other reference to it goes, so the copy `resize` took to ask `is_alive` is the
/// last one.
///
/// Expected: GUARANTEES.md, "every `Drop` of a user value (workers, ...) ... A panic there is
/// contained ...: no panic reaches a caller that did not cause it"; `Factory::resize`'s own
/// comment: "A worker's `Drop` is user code: never under the factory's lock, and
/// contained". `resize` returns normally.
///
/// What happens: `Factory::resize` (src/balancer/supervisor.rs) drops the dead workers it
/// collected (`dead_workers`) with a plain `drop(dead)`: holding the last reference, it runs
/// the worker's `Drop` uncontained and the panic unwinds out of `resize` into its caller.
/// Deterministic.
#[test]
fn factory_resize_holding_the_last_reference_to_a_retired_dead_worker_contains_its_drop() {
    use cylinder::{Factory, Supervisor};
    common::quiet_panics();
    let gate = Arc::new(Mutex::new(()));
    let asked = Arc::new(AtomicBool::new(false));
    let (g, a) = (gate.clone(), asked.clone());
    let factory = Arc::new(Factory::new(1, move || {
        Ok(SlowProbe {
            alive: AtomicBool::new(true),
            gate: g.clone(),
            asked: a.clone(),
        })
    }));
    let worker = factory.children().unwrap().pop().unwrap();
    worker.alive.store(false, Ordering::SeqCst);
    asked.store(false, Ordering::SeqCst);
    let closed_gate = gate.lock().unwrap();
    let resizer = {
        let factory = factory.clone();
        thread::spawn(move || factory.resize(1))
    };
    assert!(
        eventually(Duration::from_secs(5), || asked.load(Ordering::SeqCst)),
        "resize never asked is_alive"
    );
    factory.retire(&worker);
    drop(worker);
    drop(closed_gate);
    let returned = within(Duration::from_secs(5), move || resizer.join().is_ok());
    assert_eq!(
        returned,
        Some(true),
        "the dead worker's Drop panicked out of Factory::resize"
    );
}

/// A balancer's one child.
struct Node(AtomicBool);

impl cylinder::Worker for Node {
    fn is_alive(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// A balancer (its reaper stopped with `close`, so every reload below runs where it is
/// asked) whose supervisor listed one child and then fails, with an error type whose `Drop`
/// panics. Its `on_event` callback answers `Event::Disconnected` with a `connect()` (a
/// retry; re-entry is allowed: the reload that reported the event has ended). The child
/// dies and a client calls `get()`: finding the whole set dead, `get` reloads on the
/// client's thread; that reload fails (error #1) and disconnects the set, reporting
/// `Disconnected`; the callback's `connect()` reloads again, fails (error #2) and replaces
/// the set, dropping its copy of error #1.
///
/// Expected: `get`'s rustdoc: "[`Error::Disconnected`] when the supervisor is gone or has no
/// live children"; GUARANTEES.md, "every `Drop` of a user value (..., errors, ...) ... A
/// panic there is contained ...: no panic reaches a caller that did not cause it". The
/// client gets `Err(Disconnected)`.
///
/// What happens: `WorkerSet::reload_or_wait` (src/balancer/set.rs) throws away the reload's
/// result with `let _ = self.run_reload(..)`: that `Error` holds the last copy of error #1,
/// whose `Drop` runs there, uncontained, and its panic unwinds out of `Balancer::get` into
/// the client. (Without the callback the same happens whenever another reload — the
/// reaper's, a background one, another client's `connect` — replaces the set between the
/// two.) Deterministic.
#[test]
fn balancer_get_reloading_a_dead_set_does_not_drop_the_supervisors_error_uncontained() {
    common::quiet_panics();
    let calls = Arc::new(AtomicU32::new(0));
    let node = Arc::new(Node(AtomicBool::new(true)));
    let (c, n) = (calls.clone(), node.clone());
    let handle: Arc<OnceLock<Balancer<Node>>> = Arc::new(OnceLock::new());
    let h = handle.clone();
    let balancer = Balancer::builder()
        .on_event(move |event| {
            if *event == Event::Disconnected {
                if let Some(balancer) = h.get() {
                    let _ = balancer.connect();
                }
            }
        })
        .build_with(move || -> Result<Vec<Arc<Node>>, BoxError> {
            match c.fetch_add(1, Ordering::SeqCst) {
                0 => Ok(vec![n.clone()]),
                k => Err(Box::new(Bomb(k))),
            }
        })
        .unwrap();
    balancer.close();
    assert!(handle.set(balancer.clone()).is_ok());
    node.0.store(false, Ordering::SeqCst);
    let client = balancer.clone();
    let got = within(Duration::from_secs(5), move || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            client.get().map(|_| ()).map_err(|err| err.to_string())
        }))
        .map_err(|payload| {
            payload
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_default()
                .replace("on purpose", "as the test's error type does")
        })
    })
    .expect("get hung");
    assert!(
        matches!(got, Ok(Err(_))),
        "get should fail with Disconnected; got {got:?} ({} supervisor calls)",
        calls.load(Ordering::SeqCst)
    );
}

/// A balancer over one pool whose server refused its first connection and accepted the
/// retry (`reconnect_delay` 10 ms): the pool is healthy, its one worker open, its starts no
/// longer failing. A client holds that worker; another calls
/// `Balancer::checkout_timeout(50 ms)`: a plain exhaustion timeout.
///
/// Expected: `checkout_timeout`'s rustdoc: "[`Error::Timeout`] when no worker came free in
/// time in a live pool; its `cause` is that pool's last failed start, if its starts were
/// failing". They are not: `cause` is `None` (an operator reading "connection refused" on
/// a busy, healthy pool would chase a server that is up).
///
/// What happens: `Timeout { cause: Some("connection refused") }`, a failure long over.
/// `Balancer::wait_on` (src/balancer/pools.rs) passes on the pool's own timeout's cause, and
/// `Shared::timed_out` (src/pool/checkout.rs) attaches `last_failure()` whether or not starts
/// are still failing (`failing` is cleared by a successful start, the recorded failure never
/// is). Deterministic.
#[test]
fn a_balancer_checkout_timing_out_on_a_healthy_busy_pool_carries_no_stale_start_error() {
    let attempts = Arc::new(AtomicU32::new(0));
    let a = attempts.clone();
    let pool = Pool::builder()
        .size(1)
        .reconnect_delay(Duration::from_millis(10))
        .build_unchecked(move || -> Result<u32, BoxError> {
            if a.fetch_add(1, Ordering::SeqCst) == 0 {
                Err("connection refused".into())
            } else {
                Ok(1)
            }
        })
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || {
            let stats = pool.stats();
            (stats.size, stats.starting) == (1, 0)
        }),
        "the pool never recovered: {:?}",
        pool.stats()
    );
    let balancer = Balancer::over_pools([pool.clone()]).unwrap();
    let held = pool.checkout().unwrap();
    let got = balancer.checkout_timeout(Duration::from_millis(50));
    drop(held);
    match got {
        Err(Error::Timeout { cause, .. }) => assert!(
            cause.is_none(),
            "a timeout on a healthy, busy pool carries the stale cause {:?}",
            cause.map(|cause| cause.to_string())
        ),
        other => panic!("expected Timeout, got {:?}", other.map(|lease| *lease)),
    }
}
