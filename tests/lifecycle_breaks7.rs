//! Seventh breaking pass: each test names its scenario and fails on the code it was written
//! against. Bounded in time; hangs are detected with bounded waits.

mod common;

use common::within;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use cylinder::{Balancer, BoxError, Error, Event, Lease, Pool, Worker};

struct Node;
impl Worker for Node {}

/// A supervisor that is down (every call fails at once) and counts its calls.
fn down_supervisor(
    calls: &Arc<AtomicUsize>,
) -> impl Fn() -> Result<Vec<Arc<Node>>, BoxError> + Send + Sync + 'static {
    let calls = calls.clone();
    move || {
        calls.fetch_add(1, Ordering::SeqCst);
        Err("connection refused".into())
    }
}

/// A balancer built with `reconnect_delay(Duration::MAX)` ("`Duration::MAX` means no
/// limit", and the builder accepts it) over a supervisor that is down. A client retries
/// `get()` in a loop (100 calls, 2 ms apart). Expected: the supervisor is asked at most
/// once per `reconnect_delay`, i.e. at build (and at most once more); a client retrying
/// against a dead server is paced by the reconnect attempts, never spins. On the current
/// code every `get()` on the disconnected balancer starts a reload: `WorkerSet::left_after`
/// (src/balancer/set.rs) answers `None` ("nothing left to wait") when `at + reconnect_delay`
/// overflows, so `retry_due()` is always true (and `too_soon()` always `None`).
#[test]
fn a_balancer_with_reconnect_delay_max_does_not_ask_a_down_supervisor_on_every_get() {
    let calls = Arc::new(AtomicUsize::new(0));
    let balancer = Balancer::<Node>::builder()
        .reconnect_delay(Duration::MAX)
        .build_with(down_supervisor(&calls))
        .expect("a supervisor down at start is retried later, not an error");
    let gets = within(Duration::from_secs(10), move || {
        for _ in 0..100 {
            assert!(matches!(balancer.get(), Err(Error::Disconnected { .. })));
            thread::sleep(Duration::from_millis(2));
        }
    });
    assert!(gets.is_some(), "100 gets did not end within 10 s");
    // Let any reload thread still running finish.
    thread::sleep(Duration::from_millis(50));
    let asked = calls.load(Ordering::SeqCst);
    assert!(
        asked <= 2,
        "reconnect_delay is Duration::MAX, yet the down supervisor was asked {asked} times \
         by 100 gets in ~200 ms"
    );
}

/// A balancer whose supervisor is down at start (it fails at once), with the default
/// `reconnect_delay` of 1 s ("how long the reaper waits between attempts while
/// disconnected"). Expected: within the first 300 ms after `build_with` returns, the
/// supervisor was asked once (by the build itself); the next attempt comes ~1 s later. On
/// the current code the reaper asks it again at once: `Balancer::start`
/// (src/balancer/mod.rs) requests a reaper round right after a failed first reload, and the
/// round's `too_soon` holds back only automatic reloads (the build's was `Asked::ByCaller`),
/// so two attempts go out back to back (the same after every failed `connect()`).
#[test]
fn a_balancer_whose_supervisor_is_down_at_start_asks_again_only_after_reconnect_delay() {
    let calls = Arc::new(AtomicUsize::new(0));
    let balancer = Balancer::<Node>::builder()
        .reconnect_delay(Duration::from_secs(1))
        .build_with(down_supervisor(&calls))
        .expect("a supervisor down at start is retried later, not an error");
    thread::sleep(Duration::from_millis(300));
    let asked = calls.load(Ordering::SeqCst);
    drop(balancer);
    assert_eq!(
        asked, 1,
        "the supervisor was asked {asked} times within 300 ms of a failed start, with \
         reconnect_delay 1 s"
    );
}

/// A connection whose `Drop` is counted.
struct Conn {
    drops: Arc<AtomicUsize>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::SeqCst);
    }
}

/// `drain` is the graceful shutdown ("every worker closed, its `Drop` ended"; after it, a
/// program exits). A pool of one: its client discards its worker, and the replacement's
/// start (a connect that takes 300 ms) is under way when the program calls `drain(5 s)`.
/// Expected: `drain` returns once that start has ended and its worker (which arrives in a
/// closed pool) was dropped: nothing of the pool's is opened or closed after `drain`
/// returned. On the current code `drain` waits only while `counts.open() > 0` or
/// `closing > 0` (src/pool/mod.rs, `Pool::drain`): a start under way counts in neither
/// (`open()` is `total - starting`), so `drain` returns `Ok` at once, and 300 ms later a
/// connection is opened and closed behind the program's back (or cut off as it exits).
#[test]
fn drain_returns_only_after_a_start_under_way_has_ended() {
    let drops = Arc::new(AtomicUsize::new(0));
    let entered = Arc::new(AtomicBool::new(false));
    let starts = Arc::new(AtomicUsize::new(0));
    let (d, e, s) = (drops.clone(), entered.clone(), starts.clone());
    let pool = Pool::builder()
        .size(1)
        .build(move || {
            if s.fetch_add(1, Ordering::SeqCst) >= 1 {
                e.store(true, Ordering::SeqCst);
                thread::sleep(Duration::from_millis(300));
            }
            Ok(Conn { drops: d.clone() })
        })
        .unwrap();
    Lease::discard(pool.checkout().unwrap());
    let began = Instant::now();
    while !entered.load(Ordering::SeqCst) && began.elapsed() < Duration::from_secs(5) {
        thread::sleep(Duration::from_millis(1));
    }
    assert!(
        entered.load(Ordering::SeqCst),
        "the replacement never started"
    );
    let counted = drops.clone();
    let drained = within(Duration::from_secs(10), move || {
        let result = pool.drain(Duration::from_secs(5));
        (result.is_ok(), counted.load(Ordering::SeqCst))
    });
    let (ok, dropped_at_return) = drained.expect("drain did not return within 10 s");
    assert!(ok, "drain timed out");
    thread::sleep(Duration::from_millis(600));
    let dropped_later = drops.load(Ordering::SeqCst);
    assert_eq!(
        dropped_at_return,
        dropped_later,
        "drain returned Ok with {dropped_at_return} workers dropped; {} more were opened and \
         dropped after it returned (a start under way was not waited for)",
        dropped_later - dropped_at_return
    );
}

/// A lazy pool of one (`min_idle(0)`: nothing open until asked). A client's `try_checkout`
/// finds nothing open and opens a worker on its own thread (poolboy's way); while that
/// connect is under way, the credentials rotate and the application calls `evict_all`.
/// The worker arrives, started with the old credentials, and is rightly evicted. Expected:
/// the client gets a worker (one started after the eviction) or an error that says what
/// happened; never `Overload`, which means "every worker is leased", while nothing is
/// leased and the pool has room. On the current code `try_acquire`
/// (src/pool/checkout.rs) hands the fresh worker from `start_for_caller` to `admit`, which
/// retires it as evicted, and then falls through to `Err(Overload)`; with `min_idle(0)`
/// nothing replaces it either, so the pool is left empty and the client told it is busy.
#[test]
fn a_try_checkout_whose_own_start_straddles_evict_all_is_not_told_overload() {
    let (entered_tx, entered_rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let entered_tx = Mutex::new(entered_tx);
    let go_rx = Mutex::new(go_rx);
    let starts = Arc::new(AtomicUsize::new(0));
    let s = starts.clone();
    let pool = Pool::builder()
        .size(1)
        .min_idle(0)
        .build(move || {
            let n = s.fetch_add(1, Ordering::SeqCst);
            if n == 0 {
                // The first connect is slow: the rotation happens meanwhile.
                let _ = entered_tx.lock().unwrap().send(());
                let _ = go_rx.lock().unwrap().recv_timeout(Duration::from_secs(5));
            }
            Ok(n)
        })
        .unwrap();
    let client = pool.clone();
    let tried = thread::spawn(move || {
        let got = client.try_checkout().map(|lease| *lease);
        let leased = client.stats().leased;
        (got, leased)
    });
    entered_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the try_checkout never started a worker");
    pool.evict_all();
    go_tx.send(()).unwrap();
    let outcome = within(Duration::from_secs(10), move || tried.join().unwrap())
        .expect("try_checkout did not return within 10 s");
    let (got, leased_then) = outcome;
    let stats = pool.stats();
    assert!(
        !matches!(got, Err(Error::Overload)),
        "try_checkout answered Overload (\"every worker is leased\") with {leased_then} \
         leased; the pool now has {} open, {} leased, {} starting",
        stats.size,
        stats.leased,
        stats.starting
    );
}

/// A connection that remembers the credentials (generation) it was opened with.
struct Creds {
    generation: u32,
}

/// `evict_all` after a credential rotation "closes every worker the pool has now ... idle
/// workers at once, leased ones when their lease ends", and a worker whose start was under
/// way is closed when it arrives (`lifecycle_breaks6`). Here both idle workers of a pool of
/// two are held by `Pool::map` (a "ping every idle connection" maintenance task) when the
/// rotation happens. Expected: once `map` gives them back they are closed and replaced, so
/// a moment later every idle worker carries the new credentials. On the current code
/// `map`'s guard gives them back with `put_back` (src/pool/mod.rs, `Pool::map`, and
/// src/pool/release.rs, `put_back`), which never looks at the eviction count: both old
/// workers go back to the free list and stay open with the old credentials for as long as
/// nobody checks them out (a pool without `idle_timeout`/`max_lifetime`/`keepalive` has no
/// sweeps). The same holds for a worker the reaper's sweep holds for a `keepalive` check
/// or an `is_alive` probe (`look_at_each` puts it back the same way).
#[test]
fn workers_held_by_pool_map_during_evict_all_are_closed_when_given_back() {
    let generation = Arc::new(AtomicUsize::new(1));
    let current = generation.clone();
    let pool = Pool::builder()
        .size(2)
        .build(move || {
            Ok(Creds {
                generation: current.load(Ordering::SeqCst) as u32,
            })
        })
        .unwrap();
    let (held_tx, held_rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let mapper = pool.clone();
    let mapping = thread::spawn(move || {
        let mut first = true;
        mapper.map(|conn| {
            if first {
                first = false;
                let _ = held_tx.send(());
                let _ = go_rx.recv_timeout(Duration::from_secs(5));
            }
            conn.generation
        })
    });
    held_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("map never ran");
    assert_eq!(pool.stats().free, 2, "map holds both idle workers");
    // New credentials, then the eviction, while map holds both.
    generation.store(2, Ordering::SeqCst);
    pool.evict_all();
    go_tx.send(()).unwrap();
    let pinged = within(Duration::from_secs(10), move || mapping.join().unwrap())
        .expect("map did not return within 10 s");
    assert_eq!(pinged, vec![1, 1]);
    // Replacements (if any) start in the background.
    let began = Instant::now();
    let mut seen = pool.map(|conn| conn.generation);
    while began.elapsed() < Duration::from_secs(2)
        && !(seen.len() == 2 && seen.iter().all(|&g| g == 2))
    {
        thread::sleep(Duration::from_millis(10));
        seen = pool.map(|conn| conn.generation);
    }
    assert!(
        seen.len() == 2 && seen.iter().all(|&g| g == 2),
        "2 s after evict_all, the idle workers still carry the credentials {seen:?} (1 = \
         before the rotation): the workers map held at the eviction went back open"
    );
}

/// A pool of 32 workers, nothing leased, with a short `idle_timeout` (so the reaper sweeps
/// the free workers every 10 ms; `min_idle` follows the size, so the sweep closes none). One
/// client calls `try_checkout` in a loop for a second and gives each worker straight back.
/// Expected: never `Overload` ("every worker is leased"): 31 workers are idle at every
/// moment and `stats()` says so. On the current code the sweep's first pass
/// (src/pool/upkeep.rs, `sweep`) takes every free worker off the list before it puts the
/// kept ones back; it runs no user code, but a `try_checkout` that comes in that moment
/// finds nothing free, no room to start one, and answers `Overload` (`try_acquire`,
/// src/pool/checkout.rs), while the sweep's own `held_free` count makes `stats()` report
/// them all free. (Fails in most runs: dozens to thousands of `Overload`s per second.)
#[test]
fn try_checkout_never_answers_overload_while_the_sweep_holds_idle_workers() {
    let pool = Pool::builder()
        .size(32)
        .idle_timeout(Duration::from_millis(40))
        .build(|| Ok(()))
        .unwrap();
    let counted = within(Duration::from_secs(10), move || {
        let mut overloads = 0u64;
        let mut others = 0u64;
        let mut calls = 0u64;
        let began = Instant::now();
        while began.elapsed() < Duration::from_secs(1) {
            for _ in 0..100 {
                calls += 1;
                match pool.try_checkout() {
                    Ok(lease) => drop(lease),
                    Err(Error::Overload) => overloads += 1,
                    Err(_) => others += 1,
                }
            }
        }
        (overloads, others, calls)
    });
    let (overloads, others, calls) = counted.expect("the loop did not end within 10 s");
    assert_eq!(others, 0, "try_checkout failed otherwise");
    assert_eq!(
        overloads, 0,
        "{overloads} of {calls} try_checkouts on a pool of 32 idle workers answered Overload"
    );
}

/// `drain` again ("every worker closed, its `Drop` ended"), now with `idle_timeout`. A pool
/// of three with `min_idle(1)`: a burst opened three workers, and after it two of them are
/// idle past `idle_timeout`. The reaper's sweep closes those two, one after the other,
/// reporting each with `Event::WorkerIdleClosed`; the application's event callback is slow
/// the first time (it ships a log line: 600 ms). The program calls `drain(5 s)` meanwhile.
/// Expected: `drain` returns once all three workers were dropped. On the current code the
/// sweep counts both idle workers out (`release_above`, src/pool/upkeep.rs `sweep`) before it
/// closes either, and `closed_above` (src/pool/release.rs) adds a worker to `closing` only
/// while its own `Drop` runs: the second one, waiting in the sweep's `idle_closing` list
/// behind the first one's event, is counted nowhere, so `drain` sees `open() == 0` and
/// `closing == 0` and returns `Ok` while that worker is still open; it is dropped 600 ms
/// later, behind the program's back.
#[test]
fn drain_waits_for_every_worker_the_sweep_counted_out_as_idle() {
    let drops = Arc::new(AtomicUsize::new(0));
    let blocked = Arc::new(AtomicBool::new(false));
    let (d, b) = (drops.clone(), blocked.clone());
    let pool = Pool::builder()
        .size(3)
        .min_idle(1)
        .idle_timeout(Duration::from_millis(60))
        .on_event(move |event| {
            if matches!(event, Event::WorkerIdleClosed) && !b.swap(true, Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(600));
            }
        })
        .build(move || Ok(Conn { drops: d.clone() }))
        .unwrap();
    // A burst: three leases at once open three workers; then all three are idle.
    let leases: Vec<_> = (0..3)
        .map(|_| pool.checkout_owned().expect("a burst of three fits"))
        .collect();
    assert_eq!(pool.stats().size, 3);
    drop(leases);
    let began = Instant::now();
    while !blocked.load(Ordering::SeqCst) && began.elapsed() < Duration::from_secs(3) {
        thread::sleep(Duration::from_millis(1));
    }
    assert!(
        blocked.load(Ordering::SeqCst),
        "the idle workers were never closed"
    );
    let counted = drops.clone();
    let drained = within(Duration::from_secs(10), move || {
        let result = pool.drain(Duration::from_secs(5));
        (result.is_ok(), counted.load(Ordering::SeqCst))
    });
    let (ok, dropped_at_return) = drained.expect("drain did not return within 10 s");
    assert!(ok, "drain timed out");
    thread::sleep(Duration::from_millis(900));
    let dropped_later = drops.load(Ordering::SeqCst);
    assert_eq!(
        (dropped_at_return, dropped_later),
        (3, 3),
        "drain returned Ok with {dropped_at_return} of the pool's 3 workers dropped; the \
         rest were dropped after it returned"
    );
}
