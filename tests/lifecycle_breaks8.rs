//! Eighth breaking pass: each test names its scenario and fails on the code it was written
//! against. Bounded in time; hangs are detected with bounded waits.

mod common;

use common::within;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use cylinder::{Balancer, BoxError, Error, Lease, OwnedLease, Pool, Worker};

/// A connection that remembers the credentials (generation) it was opened with, and counts
/// the drops of connections opened with the first ones.
struct Creds {
    generation: usize,
    old_dropped: Arc<AtomicUsize>,
}

impl Drop for Creds {
    fn drop(&mut self) {
        if self.generation == 1 {
            self.old_dropped.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// `evict_all` closes "idle workers at once", and since the seventh pass a worker the
/// reaper's sweep holds for a look (`look_at_each`) is "closed when given back". A pool of
/// one with `keepalive(4 s)` (the reaper sweeps every 1 s): the idle worker's keepalive check
/// is a round trip that takes 250 ms, and the credentials rotate while it runs, so the
/// application calls `evict_all` then. Expected: when the check returns, the worker (opened
/// with the old credentials) is closed, not shelved again. On the current code
/// `look_at_each` (src/pool/upkeep.rs) looks at `evicted` before it runs the keepalive
/// check, never after: the check passes, `put_back` shelves the evicted worker, and it
/// stays open with the old credentials until the next sweep a second later (or for good, on
/// a pool whose sweep is minutes apart). Deterministic.
#[test]
fn a_worker_under_its_keepalive_check_during_evict_all_is_closed_when_the_check_returns() {
    let generation = Arc::new(AtomicUsize::new(1));
    let old_dropped = Arc::new(AtomicUsize::new(0));
    let armed = Arc::new(AtomicBool::new(false));
    let (checking_tx, checking_rx) = mpsc::channel::<()>();
    let checking_tx = Mutex::new(checking_tx);
    let (current, dropped, arm) = (generation.clone(), old_dropped.clone(), armed.clone());
    let pool = Pool::builder()
        .size(1)
        .keepalive(Duration::from_secs(4))
        .check_on_checkout(false)
        .test_on_checkout(move |_: &mut Creds| {
            if arm.swap(false, Ordering::SeqCst) {
                let _ = checking_tx.lock().unwrap().send(());
                thread::sleep(Duration::from_millis(250));
            }
            true
        })
        .build(move || {
            Ok(Creds {
                generation: current.load(Ordering::SeqCst),
                old_dropped: dropped.clone(),
            })
        })
        .unwrap();
    armed.store(true, Ordering::SeqCst);
    checking_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the keepalive check never ran");
    // The rotation and the eviction, while the reaper checks the idle worker.
    generation.store(2, Ordering::SeqCst);
    let began = Instant::now();
    pool.evict_all();
    // The check returns ~250 ms after it began; the worker is closed then (allow a loaded
    // machine's reaper seconds: the bug left it open for good).
    while old_dropped.load(Ordering::SeqCst) == 0 && began.elapsed() < Duration::from_secs(5) {
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        old_dropped.load(Ordering::SeqCst),
        1,
        "the worker opened with the old credentials is still open {:?} after evict_all, \
         ~300 ms after its keepalive check gave it back",
        began.elapsed()
    );
    let _ = within(Duration::from_secs(5), move || drop(pool));
}

/// A balancer of pools over a supervisor (service discovery: it lists the pool of each
/// server registered now). The operator retires server A: its pool is closed (`close`, or
/// `drain` for a graceful goodbye) and the registry now lists server B's pool instead.
/// `Worker::is_alive` says a closed pool is dead, and "a dead worker ... leaves rotation
/// until its supervisor lists a replacement" — but a closed pool can never come back.
/// Expected: within a few `reconnect_delay`s (50 ms) the balancer asks the supervisor again
/// and serves from B. On the current code `Pool::comes_back` (src/pool/as_worker.rs) is
/// `true` even for a closed pool, and the member's `comes_back` is fixed at its reload
/// (src/balancer/set.rs, `merge_children`): `mark_dead` neither retires it nor asks for a
/// reload, and `pick` (src/balancer/mod.rs) never reloads a set whose members all "come
/// back" (`all_come_back`): every `get`/`checkout` fails (`Disconnected` "no live
/// children", `Closed`) for as long as the program runs, and the supervisor is never asked
/// again. Deterministic.
#[test]
fn a_balancer_of_pools_asks_its_supervisor_again_when_a_listed_pool_was_closed() {
    let pool_a = Pool::builder()
        .size(1)
        .name("a")
        .build(|| Ok(1u32))
        .unwrap();
    let pool_b = Pool::builder()
        .size(1)
        .name("b")
        .build(|| Ok(2u32))
        .unwrap();
    let listed = Arc::new(Mutex::new(vec![Arc::new(pool_a.clone())]));
    let asked = Arc::new(AtomicUsize::new(0));
    let (registry, count) = (listed.clone(), asked.clone());
    let balancer = Balancer::builder()
        .reconnect_delay(Duration::from_millis(50))
        .build_with(move || -> Result<Vec<Arc<Pool<u32>>>, BoxError> {
            count.fetch_add(1, Ordering::SeqCst);
            Ok(registry.lock().unwrap().clone())
        })
        .unwrap();
    assert_eq!(*balancer.checkout().unwrap(), 1);
    // Server A retired: its pool closed, the registry lists B's.
    pool_a.close();
    *listed.lock().unwrap() = vec![Arc::new(pool_b.clone())];
    let served = within(Duration::from_secs(10), move || {
        let began = Instant::now();
        let mut last = None;
        while began.elapsed() < Duration::from_secs(2) {
            match balancer.checkout_timeout(Duration::from_millis(20)) {
                Ok(lease) => return Ok(*lease),
                Err(err) => last = Some(err.to_string()),
            }
            thread::sleep(Duration::from_millis(10));
        }
        Err(last)
    })
    .expect("the balancer's checkout hung");
    assert_eq!(
        served,
        Ok(2),
        "2 s after the closed pool's server was replaced in the registry, the balancer still \
         serves nothing (supervisor asked {} time(s) in all)",
        asked.load(Ordering::SeqCst)
    );
}

/// A connection that records when it was dropped.
struct Stamped {
    dropped: Arc<Mutex<Vec<Instant>>>,
}

impl Drop for Stamped {
    fn drop(&mut self) {
        self.dropped.lock().unwrap().push(Instant::now());
    }
}

/// `drain` is the graceful shutdown ("every worker closed, its `Drop` ended"; since the
/// seventh pass it also waits for starts under way). A pool of one with
/// `start_timeout(100 ms)`: its client discards its worker, and the replacement's connect
/// is slow today (400 ms), so the pool gives up on it after 100 ms (the connect goes on, on
/// the pool's start thread: it cannot be stopped). The program calls `drain(5 s)` 150 ms
/// after the discard. Expected: `drain` returns once that connect has ended and its late
/// connection was dropped (well within its 5 s): nothing of the pool's is opened or closed,
/// and no thread of the pool's is left running, after `drain` returned. On the current code
/// `drain` (src/pool/mod.rs) waits on `open()`, `on_their_way()` and `closing`; a start
/// given up at `start_timeout` counts in none of them (its claim was dropped; only
/// `Counts::timed_starts` still counts its thread, src/pool/start.rs `open_within`), so
/// `drain` returns `Ok` at once and ~250 ms later the late connection is opened and dropped
/// on the `cylinder-start` thread, behind the program's back. Deterministic.
#[test]
fn drain_waits_for_a_start_given_up_at_start_timeout_that_is_still_connecting() {
    let dropped = Arc::new(Mutex::new(Vec::new()));
    let slow = Arc::new(AtomicBool::new(false));
    let (stamps, slowness) = (dropped.clone(), slow.clone());
    let pool = Pool::builder()
        .size(1)
        .start_timeout(Duration::from_millis(100))
        .reconnect_delay(Duration::from_secs(10))
        .build(move || {
            if slowness.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(400));
            }
            Ok(Stamped {
                dropped: stamps.clone(),
            })
        })
        .unwrap();
    slow.store(true, Ordering::SeqCst);
    Lease::discard(pool.checkout().unwrap());
    thread::sleep(Duration::from_millis(150));
    let drained = within(Duration::from_secs(10), move || {
        let outcome = pool.drain(Duration::from_secs(5));
        (outcome.map_err(|err| err.to_string()), Instant::now())
    })
    .expect("drain hung");
    let (outcome, drained_at) = drained;
    assert_eq!(outcome, Ok(()));
    // The late connection comes ~400 ms after the discard.
    thread::sleep(Duration::from_millis(600));
    let stamps = dropped.lock().unwrap().clone();
    assert_eq!(stamps.len(), 2, "both connections were dropped in the end");
    let after: Vec<_> = stamps
        .iter()
        .filter(|&&at| at > drained_at)
        .map(|&at| at - drained_at)
        .collect();
    assert!(
        after.is_empty(),
        "a connection was dropped {after:?} after drain returned Ok (the start given up at \
         start_timeout was still connecting)"
    );
}

/// "A client retrying against a dead server is paced, never spins", and the reaper floors
/// every tiny timer at 10 ms so that "a tiny `warn_after` (or `idle_timeout`,
/// `max_lifetime`) must not make the reaper spin" (`tests/pool_reaper_cpu.rs`). The builder
/// rejects `reconnect_delay(Duration::ZERO)` but accepts `reconnect_delay(1 ns)`
/// (`tests/bad_input.rs`), which is zero in all but name. A lazy pool of two built with it
/// while its server refuses every connection (`build_unchecked`), left alone for 500 ms.
/// Expected: start attempts paced like any other tiny timer (at most one round per 10 ms:
/// a few dozen attempts), or the option refused as invalid. On the current code
/// `backoff_left` (src/pool/start.rs) is over after 1 ns and the reaper's round
/// (src/pool/upkeep.rs, `upkeep`: `soon(left)`, else `refill`) is asked again by every
/// failed start (`note_failure` → `signal.request`): the pool retries back to back on a
/// fresh start thread each time, ~17,000 connection attempts (and thread spawns) per
/// second against the dead server. Deterministic (thousands of attempts, limit 200).
#[test]
fn a_pool_with_a_one_nanosecond_reconnect_delay_does_not_spin_against_a_dead_server() {
    let attempts = Arc::new(AtomicUsize::new(0));
    let count = attempts.clone();
    let pool = Pool::<()>::builder()
        .size(2)
        .reconnect_delay(Duration::from_nanos(1))
        .build_unchecked(move || {
            count.fetch_add(1, Ordering::SeqCst);
            Err::<(), BoxError>("connection refused".into())
        })
        .unwrap();
    thread::sleep(Duration::from_millis(500));
    let made = attempts.load(Ordering::SeqCst);
    let _ = within(Duration::from_secs(5), move || drop(pool));
    assert!(
        made <= 200,
        "{made} connection attempts in 500 ms against a dead server: the pool spins"
    );
}

/// As above, for a balancer: `reconnect_delay(1 ns)` is accepted, and its supervisor is
/// down (every call fails at once). Left alone for 500 ms. Expected: the supervisor asked
/// at the pace of the reaper's smallest tick (a few dozen times at most), or the option
/// refused. On the current code the reaper's round (src/balancer/mod.rs, `Balancer::start`)
/// returns `retry_after` = `reconnect_delay` (src/balancer/set.rs) and `reconnect_wait`
/// is over after 1 ns, with no floor: the reaper asks the dead supervisor back to back,
/// ~300,000 times per second, a core spent spinning. Deterministic.
#[test]
fn a_balancer_with_a_one_nanosecond_reconnect_delay_does_not_spin_on_a_down_supervisor() {
    struct Node;
    impl Worker for Node {}
    let calls = Arc::new(AtomicUsize::new(0));
    let count = calls.clone();
    let balancer = Balancer::<Node>::builder()
        .reconnect_delay(Duration::from_nanos(1))
        .build_with(move || -> Result<Vec<Arc<Node>>, BoxError> {
            count.fetch_add(1, Ordering::SeqCst);
            Err("connection refused".into())
        })
        .unwrap();
    thread::sleep(Duration::from_millis(500));
    let made = calls.load(Ordering::SeqCst);
    let _ = within(Duration::from_secs(5), move || drop(balancer));
    assert!(
        made <= 200,
        "the down supervisor was asked {made} times in 500 ms: the balancer's reaper spins"
    );
}

/// A connection whose close (its `Drop`: a goodbye to the server) takes 300 ms.
struct SlowClose {
    slow: Arc<AtomicBool>,
}

impl Drop for SlowClose {
    fn drop(&mut self) {
        if self.slow.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(300));
        }
    }
}

/// `try_checkout`'s rustdoc: "[`Error::Overload`] when every worker is leased". A pool of
/// one whose connections take 300 ms to close (a goodbye to a slow server). Its client
/// finds its connection broken and discards it; while that close runs (on the client's
/// thread), another client calls `try_checkout`. Nothing is leased, nothing is busy.
/// Expected: a worker (the replacement, or one this call opens), or an error naming what
/// is going on; never `Overload`. On the current code `close_worker` (src/pool/release.rs)
/// runs the worker's `Drop` before it counts it out (so that no more than the limit are
/// ever alive), which nothing else counts (`closing` is only for `closed_above`):
/// `try_acquire_slow` (src/pool/checkout.rs) finds nothing free, one worker "in service"
/// (so it does not wait for a start), no room for a start of its own, `held_free` at 0,
/// and answers `Overload` for the whole 300 ms. (GUARANTEES.md still says "a worker is
/// counted out before its `Drop` runs".) Deterministic.
#[test]
#[ignore = "known: a worker's Drop holds its place until it ends (never more alive than the \
            limit), and try_checkout does not wait for it; see GUARANTEES.md, not promised"]
fn try_checkout_is_not_told_overload_while_the_only_worker_is_being_closed() {
    let slow = Arc::new(AtomicBool::new(false));
    let slowness = slow.clone();
    let pool = Pool::builder()
        .size(1)
        .build(move || {
            Ok(SlowClose {
                slow: slowness.clone(),
            })
        })
        .unwrap();
    let lease = pool.checkout_owned().unwrap();
    slow.store(true, Ordering::SeqCst);
    let closing = thread::spawn(move || {
        OwnedLease::discard(lease);
    });
    thread::sleep(Duration::from_millis(50));
    let other = pool.clone();
    let outcome = within(Duration::from_secs(5), move || match other.try_checkout() {
        Ok(_) => Ok(()),
        Err(Error::Overload) => Err(None),
        Err(err) => Err(Some(err.to_string())),
    })
    .expect("try_checkout hung");
    let stats = pool.stats();
    closing.join().unwrap();
    slow.store(false, Ordering::SeqCst);
    assert!(
        outcome != Err(None),
        "try_checkout answered Overload while nothing was leased (the only worker was \
         being closed; stats then: {stats:?})"
    );
}

/// The same as the keepalive case, on the checkout path. `evict_all` after a credential
/// rotation: "idle workers are closed at once, leased ones when their lease ends". A pool
/// of one that checks each worker before a lease (`check_after_idle(0)`, a 250 ms round
/// trip here); a client's checkout is in that check when the application rotates the
/// credentials and calls `evict_all`, which returns. Expected: the client is not handed the
/// connection opened with the old credentials (it was idle, not leased, when `evict_all`
/// ran): its checkout goes on to a fresh worker (within its timeout). On the current code
/// `admit` (src/pool/checkout.rs) looks at `evicted` before the check and never after: the
/// check passes and the client starts work on the evicted connection after `evict_all`
/// returned (it is closed only when that lease ends). Deterministic.
#[test]
fn a_checkout_in_its_check_during_evict_all_is_not_handed_the_evicted_worker() {
    let generation = Arc::new(AtomicUsize::new(1));
    let old_dropped = Arc::new(AtomicUsize::new(0));
    let armed = Arc::new(AtomicBool::new(false));
    let (checking_tx, checking_rx) = mpsc::channel::<()>();
    let checking_tx = Mutex::new(checking_tx);
    let (current, dropped, arm) = (generation.clone(), old_dropped.clone(), armed.clone());
    let pool = Pool::builder()
        .size(1)
        .check_after_idle(Duration::ZERO)
        .test_on_checkout(move |_: &mut Creds| {
            if arm.swap(false, Ordering::SeqCst) {
                let _ = checking_tx.lock().unwrap().send(());
                thread::sleep(Duration::from_millis(250));
            }
            true
        })
        .build(move || {
            Ok(Creds {
                generation: current.load(Ordering::SeqCst),
                old_dropped: dropped.clone(),
            })
        })
        .unwrap();
    armed.store(true, Ordering::SeqCst);
    let client = pool.clone();
    let checkout = thread::spawn(move || {
        client
            .checkout_timeout(Duration::from_secs(5))
            .map(|lease| lease.generation)
            .map_err(|err| err.to_string())
    });
    checking_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the checkout's check never ran");
    generation.store(2, Ordering::SeqCst);
    pool.evict_all();
    let got = within(Duration::from_secs(10), move || checkout.join().unwrap())
        .expect("the checkout hung");
    assert_eq!(
        got,
        Ok(2),
        "a checkout that returned after evict_all handed out a worker opened with the old \
         credentials (generation 1)"
    );
}

/// `close`: "checkouts fail with [`Error::Closed`], every waiter wakes with it, the free
/// workers are dropped". A pool of one that checks each worker before a lease
/// (`check_after_idle(0)`, a 250 ms round trip here); a client's checkout is in that check
/// when the program closes the pool, and `close` returns. Expected: that checkout fails
/// with `Closed` (and the worker is dropped): nothing is handed out by a pool after `close`
/// returned. On the current code `acquire` (src/pool/checkout.rs) looks at `closed` only
/// before it takes a worker, and `admit` never after the check: the client gets `Ok(lease)`
/// from a closed pool 250 ms after `close` returned, and starts work on it. Deterministic.
#[test]
fn a_checkout_in_its_check_when_the_pool_closes_fails_with_closed() {
    let armed = Arc::new(AtomicBool::new(false));
    let (checking_tx, checking_rx) = mpsc::channel::<()>();
    let checking_tx = Mutex::new(checking_tx);
    let arm = armed.clone();
    let pool = Pool::builder()
        .size(1)
        .check_after_idle(Duration::ZERO)
        .test_on_checkout(move |_: &mut u32| {
            if arm.swap(false, Ordering::SeqCst) {
                let _ = checking_tx.lock().unwrap().send(());
                thread::sleep(Duration::from_millis(250));
            }
            true
        })
        .build(|| Ok(7u32))
        .unwrap();
    armed.store(true, Ordering::SeqCst);
    let client = pool.clone();
    let checkout = thread::spawn(
        move || match client.checkout_timeout(Duration::from_secs(5)) {
            Ok(lease) => Ok(*lease),
            Err(Error::Closed) => Err(None),
            Err(err) => Err(Some(err.to_string())),
        },
    );
    checking_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the checkout's check never ran");
    pool.close();
    assert!(pool.is_closed());
    let got = within(Duration::from_secs(10), move || checkout.join().unwrap())
        .expect("the checkout hung");
    assert_eq!(
        got,
        Err(None),
        "a checkout that returned after close() handed out a lease of the closed pool \
         (Err(None) is Error::Closed)"
    );
}
