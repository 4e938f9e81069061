//! Adversarial regressions for the owning pool: each test is a scenario that broke (or was
//! suspected to break) one of the pool's invariants. Every test is bounded by a watchdog, so a
//! deadlock fails the test instead of hanging the run.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::within;
use cylinder::{Event, Pool};

/// Invariant 4/5: an `on_event` callback that closes the pool on the reaper's own thread, while
/// another thread closes it too, must not deadlock. `Handle::close` holds the reaper's mutex
/// while it joins the reaper thread; the reaper, inside the callback, calls `close` and blocks
/// on that same mutex.
#[test]
fn close_from_on_event_on_the_reaper_racing_close_does_not_deadlock() {
    let slot: Arc<Mutex<Option<Pool<u32>>>> = Arc::new(Mutex::new(None));
    let (tx, rx) = mpsc::channel::<()>();
    let tx = Mutex::new(tx);
    let in_hook = slot.clone();
    let pool = Pool::builder()
        .size(1)
        .warn_after(Duration::from_millis(5))
        .on_event(move |event| {
            // `SlowLease` is reported by the reaper, on its own thread.
            if let Event::SlowLease { .. } = event {
                let handle = in_hook.lock().unwrap().clone();
                let _ = tx.lock().unwrap().send(());
                // Let the other thread get into `close` and start joining the reaper.
                thread::sleep(Duration::from_millis(200));
                if let Some(handle) = handle {
                    handle.close();
                }
            }
        })
        .build(|| Ok(0u32))
        .unwrap();
    *slot.lock().unwrap() = Some(pool.clone());
    let lease = pool.checkout_owned().unwrap();
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the slow lease was reported");
    let closer = pool.clone();
    let closed = within(Duration::from_secs(5), move || closer.close());
    assert!(
        closed.is_some(),
        "close() deadlocked against a close() from on_event on the reaper thread"
    );
    drop(lease);
    slot.lock().unwrap().take();
}

/// `checkout_timeout(d)` must return within about `d`, also when the free workers fail a slow
/// `test_on_checkout`: the checkout loop runs the check on every free worker in turn and never
/// looks at its deadline between them.
#[test]
fn slow_failing_checks_do_not_stretch_checkout_timeout() {
    const WORKERS: usize = 32;
    let pool = Pool::builder()
        .size(WORKERS)
        .check_after_idle(Duration::ZERO) // the check runs at every checkout
        // Each worker passes its first check (at its start), then fails slowly.
        .test_on_checkout(|checks: &mut u32| {
            *checks += 1;
            if *checks == 1 {
                return true;
            }
            thread::sleep(Duration::from_millis(50));
            false
        })
        .build(|| Ok(0u32))
        .unwrap();
    let began = Instant::now();
    let outcome = within(Duration::from_secs(20), move || {
        let began = Instant::now();
        let result = pool
            .checkout_timeout(Duration::from_millis(100))
            .map(|_| ());
        (result, began.elapsed())
    });
    let (result, took) = outcome.expect("the checkout returned at all");
    assert!(result.is_err(), "every check fails");
    // 32 checks of 50 ms each take 1.6 s; the caller asked for 100 ms.
    assert!(
        took < Duration::from_millis(1000),
        "checkout_timeout(100ms) returned after {took:?} ({:?} in all)",
        began.elapsed()
    );
}

/// A start that hangs, with `start_timeout`: each retry leaves its start thread behind, still
/// blocked in the start closure. The pool retries every `reconnect_delay`, so the number of
/// threads stuck in the start closure grows without bound.
#[test]
fn hung_starts_with_start_timeout_do_not_pile_up_threads() {
    let release = Arc::new(AtomicBool::new(false));
    let inside = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (r, i, m) = (release.clone(), inside.clone(), most.clone());
    let pool = Pool::builder()
        .size(2)
        .start_timeout(Duration::from_millis(5))
        .reconnect_delay(Duration::from_millis(1))
        .build_unchecked(move || -> Result<u32, cylinder::BoxError> {
            let now = i.fetch_add(1, Ordering::SeqCst) + 1;
            m.fetch_max(now, Ordering::SeqCst);
            let deadline = Instant::now() + Duration::from_secs(10);
            while !r.load(Ordering::SeqCst) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(2));
            }
            i.fetch_sub(1, Ordering::SeqCst);
            Err("gave up".into())
        })
        .unwrap();
    thread::sleep(Duration::from_millis(500));
    let piled = most.load(Ordering::SeqCst);
    release.store(true, Ordering::SeqCst);
    drop(pool);
    // Two workers wanted, eight starts at most in parallel: a few dozen would already be
    // generous.
    assert!(
        piled <= 32,
        "{piled} start threads were blocked in the start closure at once"
    );
}

/// Invariant 3 (no lost wake-up), with `max_overflow`: a checkout that finds every worker
/// leased and the pool at its limit goes to wait; if the overflow worker it could have had is
/// returned in the moment between its failed claim and its registration in the line, `put_back`
/// sees nobody waiting and closes that worker (`close_above`), and nothing starts one for the
/// waiter although the pool now has room: it waits out its whole timeout. The window is
/// narrow, so the race is run many times; a correct pool serves every round at once.
#[test]
fn a_waiter_racing_the_close_of_an_overflow_worker_is_served() {
    let pool = Pool::builder()
        .size(1)
        .max_overflow(1)
        .build(|| Ok(0u32))
        .unwrap();
    let _member = pool.checkout().unwrap();
    let began = Instant::now();
    let mut rounds = 0;
    while rounds < 2000 && began.elapsed() < Duration::from_secs(2) {
        rounds += 1;
        let extra = pool.checkout().unwrap();
        let gate = std::sync::Barrier::new(2);
        let got = thread::scope(|scope| {
            let waiter = scope.spawn(|| {
                gate.wait();
                pool.checkout_timeout(Duration::from_secs(2)).map(|_| ())
            });
            gate.wait();
            drop(extra);
            waiter.join().unwrap()
        });
        assert!(
            got.is_ok(),
            "round {rounds}: the waiter was not served ({got:?}) though the pool had room: {:?}",
            pool.stats()
        );
    }
}

/// Invariant 5: an `on_event` callback may call `checkout`. The `WorkerRestarted` event is
/// emitted by the start thread in `joined()`, before `deliver()` puts the new worker in the
/// pool: a callback that checks out then waits for the very worker its own thread holds, for
/// its whole timeout (and any waiter is delayed by as long as the callback runs).
#[test]
fn on_event_checkout_on_the_start_thread_gets_the_worker_it_reports() {
    let slot: Arc<Mutex<Option<Pool<u32>>>> = Arc::new(Mutex::new(None));
    let in_hook = slot.clone();
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let pool = Pool::builder()
        .size(1)
        .on_event(move |event| {
            if *event == Event::WorkerRestarted {
                let handle = in_hook.lock().unwrap().clone();
                if let Some(handle) = handle {
                    let got = handle.checkout_timeout(Duration::from_secs(2)).map(|_| ());
                    let _ = tx.lock().unwrap().send(got);
                }
            }
        })
        .build(|| Ok(0u32))
        .unwrap();
    *slot.lock().unwrap() = Some(pool.clone());
    cylinder::Lease::discard(pool.checkout().unwrap());
    let got = rx.recv_timeout(Duration::from_secs(10));
    slot.lock().unwrap().take();
    assert!(
        matches!(got, Ok(Ok(()))),
        "the callback's checkout of the restarted worker: {got:?}"
    );
}

/// Invariant 2: the pool keeps `min_idle` workers as configured. `resize` clamps `min_idle`
/// to the new size and stores the clamped value over the configured one, so a shrink below
/// `min_idle` followed by a grow leaves the pool keeping the smaller number for good.
#[test]
fn resize_down_then_up_restores_the_configured_min_idle() {
    let pool = Pool::builder()
        .size(8)
        .min_idle(4)
        .build(|| Ok(0u32))
        .unwrap();
    assert_eq!(pool.stats().size, 4);
    pool.resize(2).unwrap();
    assert_eq!(pool.stats().size, 2);
    pool.resize(8).unwrap();
    assert!(
        common::eventually(Duration::from_secs(5), || pool.stats().size == 4),
        "after resize(2) and resize(8) the pool keeps {:?} workers, min_idle is 4",
        pool.stats().size
    );
}

/// Invariant 5: a user error's `Drop` is user code too. The pool keeps the last start's error
/// as the cause to report, and replaces it with `*failure.lock() = Some(..)`: the previous
/// error is dropped with the `failure` mutex held. An error whose Drop calls into the pool
/// (here `try_checkout`, which reads the backoff under that mutex) deadlocks its own thread.
#[test]
fn a_start_error_whose_drop_calls_the_pool_does_not_deadlock() {
    static POOL: Mutex<Option<Pool<u32>>> = Mutex::new(None);
    #[derive(Debug)]
    struct Noisy;
    impl std::fmt::Display for Noisy {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("down")
        }
    }
    impl std::error::Error for Noisy {}
    impl Drop for Noisy {
        fn drop(&mut self) {
            let pool = POOL.lock().unwrap().clone();
            if let Some(pool) = pool {
                let _ = pool.try_checkout().map(|_| ());
            }
        }
    }
    let done = within(Duration::from_secs(5), || {
        let pool = Pool::builder()
            .size(1)
            .reconnect_delay(Duration::from_millis(1))
            .build_unchecked(|| -> Result<u32, cylinder::BoxError> { Err(Box::new(Noisy)) })
            .unwrap();
        *POOL.lock().unwrap() = Some(pool.clone());
        // Each retry replaces the kept error, dropping the one before.
        thread::sleep(Duration::from_millis(100));
        POOL.lock().unwrap().take();
        // A thread stuck on the `failure` mutex takes every later checkout with it.
        let _ = pool.try_checkout().map(|_| ());
        pool.close();
    });
    assert!(done.is_some(), "a start error's Drop deadlocked the pool");
}

/// `checkout_timeout(d)` returns within about `d`: a blocking checkout that found nothing free
/// while the pool may grow (min_idle below size, or max_overflow) ran the start closure on the
/// caller's thread, however long it took. It now waits in line for a start thread's worker.
#[test]
fn checkouts_are_not_held_by_a_slow_inline_start() {
    let pool = Pool::builder()
        .size(2)
        .min_idle(0)
        .build(|| {
            thread::sleep(Duration::from_millis(600));
            Ok(0u32)
        })
        .unwrap();
    let outcome = within(Duration::from_secs(10), move || {
        let began = Instant::now();
        let tried = pool.try_checkout();
        let try_took = began.elapsed();
        // With that lease (if any) held, the next checkout has to start a worker too.
        let began = Instant::now();
        let waited = pool.checkout_timeout(Duration::from_millis(20)).map(|_| ());
        let wait_took = began.elapsed();
        (tried.is_ok(), try_took, waited.is_ok(), wait_took)
    });
    let (_, try_took, _, wait_took) = outcome.expect("returned");
    // try_checkout opens a worker on its own thread when the pool has room (documented,
    // poolboy's way); a blocking checkout waits for a start thread, within its timeout.
    assert!(
        wait_took < Duration::from_millis(300),
        "checkout_timeout(20ms) took {wait_took:?} (start: 600 ms; try_checkout {try_took:?})"
    );
}
