//! Third breaking pass against the lifecycle and the callbacks: each test names its scenario
//! and fails on the code it was written against. Bounded in time; hangs are detected with
//! bounded waits.

mod common;

use common::within;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use cylinder::{Error, Pool};

/// Runs `f` on a thread and waits at most `limit` for it; `None` if it did not finish.
#[allow(dead_code)]
/// A lazy pool of one (`min_idle(0)`): a first `try_checkout` opens the worker on its own
/// thread (a slow start) and keeps it. A second `try_checkout` that comes meanwhile sees
/// nothing open and a start on its way, so it waits for it; that start was the first
/// caller's and never reaches the line. Once it is done nothing is on its way: the second
/// must leave with `Overload` then, not sleep until `checkout_timeout` (or the first
/// caller's release).
#[test]
fn try_checkout_waiting_for_another_try_checkouts_own_start_leaves_once_it_is_done() {
    let pool = Pool::builder()
        .size(1)
        .min_idle(0)
        .checkout_timeout(Duration::from_secs(10))
        .build(|| {
            thread::sleep(Duration::from_millis(300));
            Ok(())
        })
        .unwrap();
    let (got_it, first_has_it) = mpsc::channel();
    let first = {
        let pool = pool.clone();
        thread::spawn(move || {
            let lease = pool.try_checkout().unwrap();
            got_it.send(()).unwrap();
            thread::sleep(Duration::from_secs(4));
            drop(lease);
        })
    };
    let until = Instant::now() + Duration::from_secs(2);
    while pool.stats().starting == 0 && Instant::now() < until {
        thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(
        pool.stats().starting,
        1,
        "the first try_checkout's start never began"
    );
    let began = Instant::now();
    let got = pool.try_checkout().map(|_| ());
    let took = began.elapsed();
    first_has_it.recv().unwrap();
    first.join().unwrap();
    assert!(
        took < Duration::from_millis(2000) && matches!(got, Err(Error::Overload)),
        "try_checkout waited {took:?} for a start that was never its own, then got {got:?}"
    );
}

/// A balancer child that dies right after its start: alive when the reload lists it (its
/// first `is_alive`), dead from then on (a server that accepts and then drops connections).
struct Flapping {
    asked: AtomicUsize,
}
impl cylinder::Worker for Flapping {
    fn is_alive(&self) -> bool {
        self.asked.fetch_add(1, Ordering::SeqCst) == 0
    }
}

/// A flapping backend behind a `Factory`: every child is alive when listed and dead right
/// after. A client retrying `get` in a loop finds the whole set dead each time;
/// the balancer must retry its supervisor at the pace of `reconnect_delay` (dead on arrival
/// is a failed start), not restart every child once per `get`.
#[test]
fn balancer_get_retried_against_children_dead_on_arrival_does_not_restart_them_per_get() {
    let starts = Arc::new(AtomicUsize::new(0));
    let s = starts.clone();
    let factory = cylinder::Factory::new(2, move || {
        s.fetch_add(1, Ordering::SeqCst);
        Ok(Flapping {
            asked: AtomicUsize::new(0),
        })
    });
    let balancer = cylinder::Balancer::builder()
        .reconnect_delay(Duration::from_millis(300))
        .build_with(factory)
        .unwrap();
    let b = balancer.clone();
    let (gets, failed) = within(Duration::from_secs(10), move || {
        let began = Instant::now();
        let (mut gets, mut failed) = (0, 0);
        while began.elapsed() < Duration::from_millis(900) {
            gets += 1;
            if b.get().is_err() {
                failed += 1;
            }
            thread::sleep(Duration::from_millis(2));
        }
        (gets, failed)
    })
    .expect("the client's loop ended");
    let started = starts.load(Ordering::SeqCst);
    // Paced by reconnect_delay: the first fill, then about one round of 2 per 300 ms.
    assert!(
        started <= 20,
        "{started} starts for {gets} gets ({failed} failed) in 900 ms with reconnect_delay 300 ms"
    );
    drop(balancer);
}

/// A quiet pool of four with `max_lifetime`: the workers built together all expire in the
/// same sweep and are retired at once, so while their replacements start (a slow connect)
/// the pool has no worker at all and every checkout waits for a start. Expiries must be
/// spread (HikariCP's variance): the pool must never go from full to empty by itself.
#[test]
fn max_lifetime_on_a_quiet_pool_never_expires_every_worker_at_once() {
    let starts = Arc::new(AtomicUsize::new(0));
    let s = starts.clone();
    let pool = Pool::builder()
        .size(4)
        .max_lifetime(Duration::from_millis(400))
        .build(move || {
            if s.fetch_add(1, Ordering::SeqCst) >= 4 {
                thread::sleep(Duration::from_millis(150)); // a slow reconnect
            }
            Ok(())
        })
        .unwrap();
    let began = Instant::now();
    let mut fewest = usize::MAX;
    while began.elapsed() < Duration::from_millis(2500) {
        let stats = pool.stats();
        fewest = fewest.min(stats.free + stats.leased);
        thread::sleep(Duration::from_millis(2));
    }
    let started = starts.load(Ordering::SeqCst);
    assert!(started > 4, "no worker ever expired ({started} starts)");
    assert!(
        fewest > 0,
        "the quiet pool had no free worker at some point: every worker expired at once \
         ({started} starts; stats now {:?})",
        pool.stats()
    );
}

/// An `on_event` callback that blocks on a slow-lease report holds up the reaper's thread.
/// Meanwhile the only worker is discarded and its replacement fails once (the server
/// blinked); a blocking checkout then waits in line for the pool's next start attempt,
/// due after `reconnect_delay`. That attempt must not wait on the blocked callback: the
/// checkout gets the worker about `reconnect_delay` later, not at its own timeout.
#[test]
fn a_blocked_slow_lease_callback_does_not_hold_back_the_retry_a_blocking_checkout_waits_for() {
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = std::sync::Mutex::new(release_rx);
    let fail_next = Arc::new(AtomicBool::new(false));
    let f = fail_next.clone();
    let pool = Pool::builder()
        .size(1)
        .reconnect_delay(Duration::from_millis(100))
        .warn_after(Duration::from_millis(20))
        .checkout_timeout(Duration::from_secs(4))
        .on_event(move |event| {
            if matches!(event, cylinder::Event::SlowLease { .. }) {
                // Blocks (a slow log sink) until the test ends.
                let _ = release_rx
                    .lock()
                    .unwrap()
                    .recv_timeout(Duration::from_secs(8));
            }
        })
        .build(move || {
            if f.swap(false, Ordering::SeqCst) {
                return Err("connection refused".into());
            }
            Ok(())
        })
        .unwrap();
    // A slow lease: the reaper reports it and blocks in the callback.
    let lease = pool.checkout().unwrap();
    thread::sleep(Duration::from_millis(200));
    // The server blinks: the replacement of the discarded worker fails once.
    fail_next.store(true, Ordering::SeqCst);
    cylinder::Lease::discard(lease);
    let until = Instant::now() + Duration::from_secs(2);
    while fail_next.load(Ordering::SeqCst) && Instant::now() < until {
        thread::sleep(Duration::from_millis(1));
    }
    thread::sleep(Duration::from_millis(10));
    let began = Instant::now();
    let got = pool.checkout().map(|_| ());
    let took = began.elapsed();
    let _ = release_tx.send(());
    assert!(
        got.is_ok() && took < Duration::from_millis(2000),
        "the checkout got {got:?} after {took:?} (reconnect_delay 100 ms): the retry waited \
         on the reaper's blocked callback"
    );
}

/// A balancer child that can be killed.
struct Node {
    alive: AtomicBool,
}
impl cylinder::Worker for Node {
    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }
}

fn node() -> Arc<Node> {
    Arc::new(Node {
        alive: AtomicBool::new(true),
    })
}

/// A balancer's `on_event` callback blocks when called on the reaper's thread (a slow log
/// sink; it got a `Connected` from a reload after one child died). Then the backend goes
/// down and comes back. While down, `get` answers `Disconnected` at once (no inline reload:
/// the set is empty); the retries every `reconnect_delay` are the reaper's alone. They must
/// not wait on the blocked callback: once the supervisor lists live children again, `get`
/// must find them within a few `reconnect_delay`s.
#[test]
fn a_balancer_blocked_in_an_event_callback_on_its_reaper_still_reconnects() {
    let listed: Arc<std::sync::Mutex<Option<Vec<Arc<Node>>>>> =
        Arc::new(std::sync::Mutex::new(Some(vec![node(), node()])));
    let l = listed.clone();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = std::sync::Mutex::new(release_rx);
    let balancer = cylinder::Balancer::builder()
        .reconnect_delay(Duration::from_millis(100))
        .on_event(move |_| {
            let on_reaper = thread::current()
                .name()
                .is_some_and(|name| name.starts_with("cylinder-reaper"));
            if on_reaper {
                let _ = release_rx
                    .lock()
                    .unwrap()
                    .recv_timeout(Duration::from_secs(10));
            }
        })
        .build_with(move || -> Result<Vec<Arc<Node>>, cylinder::BoxError> {
            match &*l.lock().unwrap() {
                Some(children) => Ok(children.clone()),
                None => Err("backend down".into()),
            }
        })
        .unwrap();
    // One child dies: the reaper reloads (a replacement is listed) and its event blocks it.
    let first = listed.lock().unwrap().as_ref().unwrap()[0].clone();
    listed.lock().unwrap().as_mut().unwrap()[0] = node();
    first.alive.store(false, Ordering::Release);
    let reloads_before = balancer.reloads();
    let until = Instant::now() + Duration::from_secs(3);
    while balancer.reloads() == reloads_before && Instant::now() < until {
        let _ = balancer.get();
        thread::sleep(Duration::from_millis(1));
    }
    thread::sleep(Duration::from_millis(100));
    // The backend goes down: every child dies and the supervisor fails.
    for child in listed.lock().unwrap().take().unwrap() {
        child.alive.store(false, Ordering::Release);
    }
    let until = Instant::now() + Duration::from_secs(3);
    while balancer.get().is_ok() && Instant::now() < until {
        thread::sleep(Duration::from_millis(1));
    }
    assert!(
        balancer.get().is_err(),
        "the balancer never saw the backend down"
    );
    // The backend is back.
    *listed.lock().unwrap() = Some(vec![node(), node()]);
    let began = Instant::now();
    let mut got = balancer.get().map(|_| ());
    while got.is_err() && began.elapsed() < Duration::from_secs(3) {
        thread::sleep(Duration::from_millis(5));
        got = balancer.get().map(|_| ());
    }
    let took = began.elapsed();
    let _ = release_tx.send(());
    let _ = release_tx.send(());
    assert!(
        got.is_ok(),
        "still {got:?} {took:?} after the backend came back (reconnect_delay 100 ms): the \
         retries waited on the callback blocked on the reaper"
    );
}

/// An `on_event` callback that blocks (a hung log sink) on `WorkerRestarted`, which is
/// reported on the start thread that delivered the worker. Each replacement of a discarded
/// worker leaves one start thread blocked there; the pool runs at most eight. The ninth
/// replacement must still start: a client must not wait on blocked callbacks for a worker.
#[test]
fn replacements_still_start_while_start_threads_are_blocked_in_event_callbacks() {
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = Arc::new(std::sync::Mutex::new(release_rx));
    let r = release_rx.clone();
    let blocked = Arc::new(AtomicUsize::new(0));
    let b = blocked.clone();
    let pool = Pool::builder()
        .size(1)
        .checkout_timeout(Duration::from_secs(3))
        .on_event(move |event| {
            if matches!(event, cylinder::Event::WorkerRestarted) {
                b.fetch_add(1, Ordering::SeqCst);
                let began = Instant::now();
                // Blocks until the test ends (each waiter polls the shared channel).
                while began.elapsed() < Duration::from_secs(10) {
                    if r.lock()
                        .unwrap()
                        .recv_timeout(Duration::from_millis(5))
                        .is_ok()
                    {
                        return;
                    }
                }
            }
        })
        .build(|| Ok(()))
        .unwrap();
    let mut outcome = Ok(());
    for round in 0..12 {
        let began = Instant::now();
        match pool.checkout() {
            Ok(lease) => cylinder::Lease::discard(lease),
            Err(err) => {
                outcome = Err(format!(
                    "round {round}: checkout failed after {:?} with {err:?} ({} callbacks \
                     blocked)",
                    began.elapsed(),
                    blocked.load(Ordering::SeqCst)
                ));
                break;
            }
        }
    }
    for _ in 0..20 {
        let _ = release_tx.send(());
    }
    drop(pool);
    outcome.unwrap();
}
