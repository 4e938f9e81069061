//! What must not happen, each a regression test named after its scenario (most were real
//! bugs of 0.1).

mod common;

use std::error::Error as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::eventually;
use cylinder::{BoxError, Error, Event, Lease, OwnedLease, Pool};

const SLACK: Duration = Duration::from_secs(10);

/// 0.1 woke only the first waiter on a burst of releases: the others slept beside free
/// workers until their deadline (for ever with `Duration::MAX`).
#[test]
fn n_waiters_blocked_n_releases_in_a_burst_every_waiter_is_served() {
    for patience in [Duration::ZERO, Duration::from_millis(1), Duration::MAX] {
        const N: usize = 8;
        let pool = Pool::builder()
            .size(N)
            .fifo_after(patience)
            .build(|| Ok(()))
            .unwrap();
        let held: Vec<_> = (0..N).map(|_| pool.checkout().unwrap()).collect();
        let served = Arc::new(Barrier::new(N + 1));
        thread::scope(|scope| {
            let waiters: Vec<_> = (0..N)
                .map(|_| {
                    let (pool, served) = (&pool, served.clone());
                    scope.spawn(move || {
                        // Each keeps its lease until every waiter is served, so no waiter
                        // can be woken by another's release.
                        let lease = pool.checkout_timeout(Duration::MAX).unwrap();
                        served.wait();
                        drop(lease);
                    })
                })
                .collect();
            assert!(eventually(SLACK, || pool.stats().waiters == N));
            let began = Instant::now();
            drop(held);
            served.wait();
            assert!(
                began.elapsed() < SLACK,
                "fifo_after {patience:?}: the burst took {:?}",
                began.elapsed()
            );
            for waiter in waiters {
                waiter.join().unwrap();
            }
        });
        let stats = pool.stats();
        assert_eq!((stats.free, stats.leased, stats.waiters), (N, 0, 0));
    }
}

/// 0.1 spun for ever on a failing check with `max_overflow > 0`, starting millions of
/// workers.
#[test]
fn a_failing_check_with_max_overflow_returns_within_the_timeout() {
    let starts = Arc::new(AtomicUsize::new(0));
    let counted = starts.clone();
    let pool = Pool::builder()
        .size(2)
        .max_overflow(4)
        .reconnect_delay(Duration::from_millis(50))
        .test_on_checkout(|_: &mut u32| -> Result<(), BoxError> { Err("check failed".into()) })
        // Every start fails its first check: nothing opens, so not `build`.
        .build_unchecked(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok(0)
        })
        .unwrap();
    let err = pool.try_checkout().unwrap_err();
    assert!(
        matches!(err, Error::Overload | Error::Disconnected { .. }),
        "{err}"
    );
    let began = Instant::now();
    let err = pool
        .checkout_timeout(Duration::from_millis(200))
        .unwrap_err();
    assert!(
        began.elapsed() < Duration::from_secs(3),
        "{:?}",
        began.elapsed()
    );
    assert!(
        matches!(err, Error::Disconnected { .. } | Error::Timeout { .. }),
        "{err}"
    );
    if let Error::Disconnected { cause, .. } = &err {
        assert_eq!(cause.to_string(), "check failed");
    }
    assert!(
        starts.load(Ordering::SeqCst) < 100,
        "{} starts: the pool started workers in a loop",
        starts.load(Ordering::SeqCst)
    );
}

/// 0.1 lost the worker and left a ghost waiter entry when a health callback panicked.
#[test]
fn a_panicking_health_callback_retires_the_worker_and_the_waiter_leaves_cleanly() {
    let panicky = Arc::new(AtomicBool::new(false));
    let (check_panics, reset_panics) = (panicky.clone(), panicky.clone());
    let pool = Pool::builder()
        .size(1)
        .checkout_timeout(SLACK)
        .test_on_checkout(move |_: &mut u32| {
            if check_panics.load(Ordering::SeqCst) {
                panic!("check crashed (on purpose)");
            }
            true
        })
        .reset(move |_: &mut u32| -> Result<(), BoxError> {
            if reset_panics.load(Ordering::SeqCst) {
                panic!("reset crashed (on purpose)");
            }
            Ok(())
        })
        .build(|| Ok(0))
        .unwrap();
    let lease = pool.checkout().unwrap();
    thread::scope(|scope| {
        let waiter = scope.spawn(|| pool.checkout().map(|lease| *lease));
        assert!(eventually(SLACK, || pool.stats().waiters == 1));
        panicky.store(true, Ordering::SeqCst);
        // The reset panics: the worker is retired and replaced; the replacement's check
        // panics too: retired again; then the checks pass again.
        drop(lease);
        thread::sleep(Duration::from_millis(50));
        panicky.store(false, Ordering::SeqCst);
        let got = waiter.join().unwrap();
        assert!(
            matches!(got, Ok(0) | Err(Error::Disconnected { .. })),
            "{got:?}"
        );
    });
    assert!(eventually(SLACK, || {
        let stats = pool.stats();
        stats.waiters == 0 && stats.size == 1 && stats.free == 1
    }));
    assert!(pool.checkout_timeout(SLACK).is_ok());
}

/// 0.1 emitted events under its reload lock: a callback reading the pool deadlocked.
#[test]
fn an_on_event_callback_that_calls_stats_does_not_deadlock() {
    let slot: Arc<Mutex<Option<Pool<u32>>>> = Arc::new(Mutex::new(None));
    let seen = slot.clone();
    let reads = Arc::new(AtomicUsize::new(0));
    let counted = reads.clone();
    let pool = Pool::builder()
        .size(2)
        .warn_after(Duration::from_millis(10))
        .on_event(move |_| {
            if let Some(pool) = seen.lock().unwrap().clone() {
                let _ = pool.stats();
                let _ = format!("{pool:?}");
                if let Ok(lease) = pool.try_checkout() {
                    drop(lease);
                }
                counted.fetch_add(1, Ordering::SeqCst);
            }
        })
        .build(|| Ok(0))
        .unwrap();
    *slot.lock().unwrap() = Some(pool.clone());
    Lease::discard(pool.checkout().unwrap()); // events on this thread and a start thread
    let slow = pool.checkout().unwrap(); // a slow-lease event on the reaper's thread
    assert!(eventually(SLACK, || pool.stats().restarts == 1));
    thread::sleep(Duration::from_millis(50));
    drop(slow);
    assert!(eventually(SLACK, || reads.load(Ordering::SeqCst) >= 3));
    slot.lock().unwrap().take();
    assert_eq!(pool.stats().size, 2);
}

/// 0.1's free count wrapped to 2^64 − 1 while a parked worker was being stolen.
#[test]
fn stats_free_never_exceeds_the_workers_the_pool_has() {
    let pool = Pool::builder().size(3).build(|| Ok(())).unwrap();
    let stop = AtomicBool::new(false);
    thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(lease) = pool.try_checkout() {
                        drop(lease);
                    }
                }
            });
        }
        let began = Instant::now();
        while began.elapsed() < Duration::from_millis(300) {
            let stats = pool.stats();
            assert!(stats.free <= stats.size, "{stats:?}");
            assert!(stats.leased <= stats.size, "{stats:?}");
        }
        stop.store(true, Ordering::Relaxed);
    });
}

/// The last handle, dropped from an event callback on the reaper's own thread: the reaper
/// must not join itself (a panic or a hang), and must end, dropping the workers.
#[test]
fn the_last_handle_dropped_on_the_reapers_thread() {
    let token = Arc::new(());
    let handed = token.clone();
    let slot: Arc<Mutex<Option<Pool<Arc<()>>>>> = Arc::new(Mutex::new(None));
    let holder = slot.clone();
    let dropped_on = Arc::new(Mutex::new(String::new()));
    let thread_name = dropped_on.clone();
    let pool = Pool::builder()
        .size(2)
        .min_idle(0)
        .idle_timeout(Duration::from_millis(20))
        .on_event(move |event| {
            if *event == Event::WorkerIdleClosed {
                if let Some(pool) = holder.lock().unwrap().take() {
                    *thread_name.lock().unwrap() =
                        thread::current().name().unwrap_or_default().to_string();
                    drop(pool);
                }
            }
        })
        .build(move || Ok(handed.clone()))
        .unwrap();
    drop(pool.checkout().unwrap()); // one worker opened on demand, then idle
    *slot.lock().unwrap() = Some(pool);
    assert!(
        eventually(SLACK, || Arc::strong_count(&token) == 1),
        "the reaper did not end"
    );
    assert!(
        dropped_on.lock().unwrap().starts_with("cylinder-reaper"),
        "{}",
        dropped_on.lock().unwrap()
    );
}

/// `Duration::MAX` everywhere is "no limit", never an overflow.
#[test]
fn reconnect_delay_max_does_not_panic() {
    let up = Arc::new(AtomicBool::new(true));
    let switch = up.clone();
    let pool = Pool::builder()
        .size(1)
        .reconnect_delay(Duration::MAX)
        .checkout_timeout(Duration::MAX)
        .max_lifetime(Duration::MAX)
        .idle_timeout(Duration::MAX)
        .warn_after(Duration::MAX)
        .build(move || -> Result<(), BoxError> {
            if switch.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("down".into())
            }
        })
        .unwrap();
    up.store(false, Ordering::SeqCst);
    Lease::discard(pool.checkout().unwrap());
    // The start failed and the next try is never: checkouts fail fast with the cause.
    assert!(eventually(SLACK, || matches!(
        pool.try_checkout(),
        Err(Error::Disconnected { .. })
    )));
    let err = pool.checkout().unwrap_err();
    assert_eq!(err.source().unwrap().to_string(), "down");
}

/// Building a big pool is linear: no scan of the pool per worker.
#[test]
fn size_100_000_builds_in_well_under_a_second() {
    let time = |size: usize| {
        let began = Instant::now();
        let pool = Pool::builder().size(size).build(|| Ok(0u8)).unwrap();
        let took = began.elapsed();
        assert_eq!(pool.stats().free, size);
        took
    };
    let small = time(20_000);
    let big = time(100_000);
    eprintln!("size 20,000 built in {small:?}, 100,000 in {big:?}");
    // Linear is 5x; quadratic would be 25x. Both bounds are loose for a loaded debug build.
    assert!(big < Duration::from_secs(5), "{big:?}");
    assert!(
        big.as_secs_f64() < small.as_secs_f64().max(0.01) * 15.0,
        "{small:?} then {big:?}"
    );
}

/// Owned leases cross threads and keep the pool open; a panicking holder on another thread
/// still gives its worker back.
#[test]
fn an_owned_lease_whose_thread_panics_gives_its_worker_back() {
    let pool = Pool::builder().size(1).build(|| Ok(0u32)).unwrap();
    let lease: OwnedLease<u32> = pool.checkout_owned().unwrap();
    let outcome = thread::spawn(move || {
        let _lease = lease;
        panic!("holder crashed (on purpose)");
    })
    .join();
    assert!(outcome.is_err());
    let stats = pool.stats();
    assert_eq!((stats.free, stats.leased, stats.size), (1, 0, 1));
    assert!(catch_unwind(AssertUnwindSafe(|| pool.try_checkout().unwrap())).is_ok());
}

/// `close()` from an event callback on the reaper's thread while another thread closes the
/// pool: the closer must not hold a lock the callback needs while it joins the reaper.
#[test]
fn close_from_a_callback_on_the_reaper_racing_close() {
    let slot: Arc<Mutex<Option<Pool<()>>>> = Arc::new(Mutex::new(None));
    let closing = Arc::new(AtomicBool::new(false));
    let (holder, started) = (slot.clone(), closing.clone());
    let pool = Pool::builder()
        .size(1)
        .warn_after(Duration::from_millis(1))
        .on_event(move |_| {
            let pool = holder.lock().unwrap().clone();
            if let Some(pool) = pool {
                // Wait for the other thread to be closing (joining this thread), then close.
                let began = Instant::now();
                while !started.load(Ordering::SeqCst) && began.elapsed() < SLACK {
                    thread::sleep(Duration::from_millis(1));
                }
                thread::sleep(Duration::from_millis(20));
                pool.close();
            }
        })
        .build(|| Ok(()))
        .unwrap();
    *slot.lock().unwrap() = Some(pool.clone());
    let held = pool.checkout_owned().unwrap(); // its slow-lease report calls the callback
    thread::sleep(Duration::from_millis(50)); // the callback is waiting now
    let closer = thread::spawn(move || {
        closing.store(true, Ordering::SeqCst);
        pool.close();
    });
    let began = Instant::now();
    while !closer.is_finished() {
        assert!(
            began.elapsed() < SLACK,
            "close deadlocked with the callback"
        );
        thread::sleep(Duration::from_millis(1));
    }
    drop(held);
    slot.lock().unwrap().take();
}

/// A blocking checkout whose own start fails, with nothing else running or starting, leaves
/// at once with the start's error (revolver's fuse) instead of sleeping out its timeout.
#[test]
fn a_waiter_whose_start_fails_leaves_with_the_cause() {
    let up = Arc::new(AtomicBool::new(true));
    let switch = up.clone();
    let pool = Pool::builder()
        .size(2)
        .min_idle(0)
        .reconnect_delay(Duration::from_millis(50))
        .build(move || -> Result<u32, BoxError> {
            thread::sleep(Duration::from_millis(20));
            if switch.load(Ordering::SeqCst) {
                Ok(1)
            } else {
                Err("connection refused".into())
            }
        })
        .unwrap();
    up.store(false, Ordering::SeqCst);
    for _ in 0..3 {
        // Past reconnect_delay: the checkout gets into line and claims the next start,
        // which fails; it must not wait for a worker that cannot come.
        thread::sleep(Duration::from_millis(60));
        let began = Instant::now();
        let err = pool.checkout_timeout(Duration::from_secs(30)).unwrap_err();
        assert!(
            began.elapsed() < Duration::from_secs(5),
            "{:?}",
            began.elapsed()
        );
        assert!(matches!(err, Error::Disconnected { .. }), "{err}");
        assert_eq!(err.source().unwrap().to_string(), "connection refused");
    }
    up.store(true, Ordering::SeqCst);
    assert!(eventually(SLACK, || pool.checkout_timeout(SLACK).is_ok()));
}
