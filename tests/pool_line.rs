//! Adversarial tests for the waiting line and the starts claimed for it: lost wake-ups,
//! stranded waiters, starts that are lost or counted twice. Every test is bounded (timeouts
//! and watchdogs), and none asserts on speed.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::{eventually, settles, within, Rng, Tracked};
use cylinder::{Error, OwnedLease, Pool};

/// A small xorshift, seeded per call site: no dependency, reproducible enough.
/// Waits for the pool to settle (nothing starting or waiting, at most `most` open, `free +
/// leased == size`, and as many live workers as the pool counts), then closes it and waits
/// for every worker to be dropped.
fn settles_then_closes<W: Send + 'static>(
    pool: &Pool<W>,
    live: &AtomicUsize,
    most: usize,
    what: &str,
) {
    settles(pool, live, most, what);
    pool.close();
    assert!(eventually(Duration::from_secs(5), || live
        .load(Ordering::SeqCst)
        == 0));
}

/// A waiter woken for a worker kept free (`offer` below `fifo_after`) that, before it got the
/// line's lock back, was handed another worker (a later release, once it had waited
/// `fifo_after`) leaves with the handed one: the worker it was woken for stays free while the
/// next waiter sleeps, never woken (its mark is clear, but no release comes).
///
/// Each round: N workers held, N waiters in line (each keeps what it gets, so only the N
/// releases can serve them), then N releases from N threads spread around the first waiter's
/// `fifo_after`, so that one release keeps its worker and wakes the first waiter and the
/// next hands it one.
#[test]
fn a_woken_waiter_handed_another_worker_passes_its_wake_up_on() {
    const N: usize = 6;
    const ROUNDS: u64 = 200;
    let mut stranded = Vec::new();
    for round in 0..ROUNDS {
        let mut rng = Rng::new(round + 1);
        let fifo_after = Duration::from_millis(10);
        let pool = Pool::builder()
            .size(N)
            .fifo_after(fifo_after)
            .build(|| Ok(()))
            .unwrap();
        let held: Vec<OwnedLease<()>> = (0..N).map(|_| pool.checkout_owned().unwrap()).collect();
        let done = Arc::new(Barrier::new(N + 1));
        let (tx, rx) = mpsc::channel();
        let mut waiters = Vec::new();
        let mut first_in_line = None;
        for _ in 0..N {
            let (handle, tx, done) = (pool.clone(), tx.clone(), done.clone());
            let before = pool.stats().waiters;
            waiters.push(thread::spawn(move || {
                let got = handle.checkout_owned_timeout(Duration::MAX);
                let ok = got.is_ok();
                let _ = tx.send(ok);
                done.wait();
                drop(got);
            }));
            let began = Instant::now();
            while pool.stats().waiters == before {
                assert!(
                    began.elapsed() < Duration::from_secs(5),
                    "a waiter did not register"
                );
                thread::yield_now();
            }
            first_in_line.get_or_insert_with(Instant::now);
        }
        let registered = first_in_line.unwrap();
        let gate = Arc::new(Barrier::new(N));
        let releasers: Vec<_> = held
            .into_iter()
            .map(|lease| {
                let gate = gate.clone();
                let after = fifo_after.saturating_sub(Duration::from_micros(150))
                    + Duration::from_micros(rng.below(300));
                thread::spawn(move || {
                    gate.wait();
                    let at = registered + after;
                    while Instant::now() < at {
                        std::hint::spin_loop();
                    }
                    drop(lease);
                })
            })
            .collect();
        for releaser in releasers {
            releaser.join().unwrap();
        }
        // No deadline: a waiter is served by a release or never. After a generous bound, a
        // stranded one is rescued (a worker taken and given back wakes it) and the round
        // counted.
        let mut served = 0;
        let began = Instant::now();
        while served < N && began.elapsed() < Duration::from_secs(3) {
            if let Ok(ok) = rx.recv_timeout(Duration::from_millis(10)) {
                assert!(ok);
                served += 1;
            }
        }
        if served < N {
            stranded.push((round, pool.stats()));
            while served < N {
                drop(pool.try_checkout());
                if rx.recv_timeout(Duration::from_millis(10)) == Ok(true) {
                    served += 1;
                }
            }
        }
        done.wait();
        for waiter in waiters {
            waiter.join().unwrap();
        }
        if !stranded.is_empty() {
            break;
        }
        let stats = pool.stats();
        assert_eq!((stats.free, stats.leased, stats.waiters), (N, 0, 0));
    }
    assert!(
        stranded.is_empty(),
        "a round left a waiter asleep with a worker free: {:?}",
        stranded.first()
    );
}

/// Blocking waiters (short and no-limit timeouts), barging threads (`try_checkout` and
/// `checkout_timeout(0)` in a tight loop) and a start that is slow and fails now and then,
/// with `min_idle(0)` and overflow: the pool never has more than `size + max_overflow` open,
/// every no-limit waiter is served, and once quiet the counts add up and the overflow is gone.
fn line_under_barging_and_flaky_starts(fifo_after: Duration) {
    const SIZE: usize = 2;
    const OVERFLOW: usize = 2;
    let starts = Arc::new(AtomicU64::new(0));
    let live = Arc::new(AtomicUsize::new(0));
    let over = Arc::new(AtomicBool::new(false));
    let (counter, alive) = (starts.clone(), live.clone());
    let pool = Pool::builder()
        .size(SIZE)
        .min_idle(0)
        .max_overflow(OVERFLOW)
        .fifo_after(fifo_after)
        .reconnect_delay(Duration::from_millis(2))
        .build(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            thread::sleep(Duration::from_micros(200 * (n % 5)));
            if n % 7 == 3 {
                return Err("flaky start".into());
            }
            alive.fetch_add(1, Ordering::SeqCst);
            Ok(Tracked(alive.clone()))
        })
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (pool, stop, over, live) = (pool.clone(), stop.clone(), over.clone(), live.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if pool.stats().size > SIZE + OVERFLOW
                    || live.load(Ordering::SeqCst) > SIZE + OVERFLOW
                {
                    over.store(true, Ordering::SeqCst);
                }
                thread::yield_now();
            }
        })
    };
    let mut threads = Vec::new();
    for i in 0..3 {
        let (pool, stop) = (pool.clone(), stop.clone());
        threads.push(thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if i % 2 == 0 {
                    drop(pool.try_checkout());
                } else {
                    drop(pool.checkout_timeout(Duration::ZERO));
                }
            }
        }));
    }
    let served = Arc::new(AtomicUsize::new(0));
    let mut waiters = Vec::new();
    for i in 0..6u64 {
        let (pool, served) = (pool.clone(), served.clone());
        waiters.push(thread::spawn(move || {
            for round in 0..30u64 {
                let timeout = if (i + round) % 3 == 0 {
                    Duration::MAX
                } else {
                    Duration::from_micros(100 + 300 * ((i + round) % 4))
                };
                match pool.checkout_timeout(timeout) {
                    Ok(lease) => {
                        served.fetch_add(1, Ordering::SeqCst);
                        thread::sleep(Duration::from_micros(50));
                        drop(lease);
                    }
                    Err(err) => assert!(
                        timeout != Duration::MAX,
                        "a no-limit checkout failed: {err:?}"
                    ),
                }
            }
        }));
    }
    let waiters_done = within(Duration::from_secs(20), move || {
        for waiter in waiters {
            waiter.join().unwrap();
        }
    });
    stop.store(true, Ordering::SeqCst);
    for thread in threads {
        thread.join().unwrap();
    }
    watcher.join().unwrap();
    assert!(
        waiters_done.is_some(),
        "fifo_after {fifo_after:?}: a waiter never left the line: {:?}",
        pool.stats()
    );
    assert!(
        !over.load(Ordering::SeqCst),
        "more than size + max_overflow open"
    );
    assert!(served.load(Ordering::SeqCst) > 0);
    settles_then_closes(&pool, &live, SIZE, &format!("fifo_after {fifo_after:?}"));
}

#[test]
fn line_under_barging_and_flaky_starts_fifo_zero() {
    line_under_barging_and_flaky_starts(Duration::ZERO);
}

#[test]
fn line_under_barging_and_flaky_starts_fifo_default() {
    line_under_barging_and_flaky_starts(Duration::from_millis(1));
}

#[test]
fn line_under_barging_and_flaky_starts_fifo_never() {
    line_under_barging_and_flaky_starts(Duration::MAX);
}

/// `close()` while blocking checkouts register and claim starts for the line (slow starts,
/// `min_idle(0)`, overflow): every checkout ends with `Closed` (or a worker), no thread hangs,
/// and every started worker, delivered after the close or not, is dropped.
#[test]
fn close_while_waiters_register_and_starts_are_in_flight() {
    for round in 0..20u64 {
        let live = Arc::new(AtomicUsize::new(0));
        let alive = live.clone();
        let pool = Pool::builder()
            .size(2)
            .min_idle(0)
            .max_overflow(2)
            .build(move || {
                thread::sleep(Duration::from_millis(2));
                alive.fetch_add(1, Ordering::SeqCst);
                Ok(Tracked(alive.clone()))
            })
            .unwrap();
        let gate = Arc::new(Barrier::new(9));
        let mut threads = Vec::new();
        for _ in 0..8 {
            let (pool, gate) = (pool.clone(), gate.clone());
            threads.push(thread::spawn(move || {
                gate.wait();
                for _ in 0..50 {
                    match pool.checkout_timeout(Duration::MAX) {
                        Ok(lease) => drop(lease),
                        Err(cylinder::Error::Closed) => return,
                        Err(err) => panic!("unexpected {err:?}"),
                    }
                }
            }));
        }
        gate.wait();
        thread::sleep(Duration::from_micros(500 * (round % 8)));
        pool.close();
        let joined = within(Duration::from_secs(10), move || {
            for thread in threads {
                thread.join().unwrap();
            }
        });
        assert!(
            joined.is_some(),
            "round {round}: a checkout hung across close()"
        );
        assert!(
            eventually(Duration::from_secs(5), || live.load(Ordering::SeqCst) == 0),
            "round {round}: {} workers outlived close(): {:?}",
            live.load(Ordering::SeqCst),
            pool.stats()
        );
    }
}

/// With `min_idle(0)` nothing is kept open, so after a failed start only a checkout can
/// claim the next one. A blocking checkout that meets the fuse (no worker open, none
/// starting, the last start failed) fails before it registers, so it never claims a start:
/// once the backend is back and `reconnect_delay` is over, blocking checkouts must still get a
/// worker (as `try_checkout`, which starts inline, does).
#[test]
fn min_idle_zero_blocking_checkouts_recover_after_a_failed_start() {
    let down = Arc::new(AtomicBool::new(true));
    let flag = down.clone();
    let pool = Pool::builder()
        .size(2)
        .min_idle(0)
        .reconnect_delay(Duration::from_millis(10))
        .build(move || {
            if flag.load(Ordering::SeqCst) {
                Err("down".into())
            } else {
                Ok(())
            }
        })
        .unwrap();
    // The first checkout claims a start for the line; it fails, and the checkout gives up.
    assert!(pool.checkout_timeout(Duration::from_millis(5)).is_err());
    down.store(false, Ordering::SeqCst);
    thread::sleep(Duration::from_millis(50)); // past reconnect_delay
    let recovered = eventually(Duration::from_secs(3), || {
        pool.checkout_timeout(Duration::from_millis(100)).is_ok()
    });
    assert!(
        recovered,
        "blocking checkouts kept failing after the backend came back: {:?} (last: {:?})",
        pool.stats(),
        pool.checkout_timeout(Duration::from_millis(100)).map(drop)
    );
}

/// Resizes down and up while blocking checkouts wait in line and slow starts (some over
/// `start_timeout`) are delivered to it, with waiters giving up at about the time a start
/// lands: every no-limit waiter is served (or, when a start ran past `start_timeout` with
/// nothing open or starting, failed at once with that cause: the fuse), none hangs, no started
/// worker is lost or stays counted, and once quiet the counts add up at the last size.
#[test]
fn resize_and_timeouts_racing_slow_starts_for_the_line() {
    let live = Arc::new(AtomicUsize::new(0));
    let (alive, n) = (live.clone(), Arc::new(AtomicU64::new(0)));
    let pool = Pool::builder()
        .size(2)
        .min_idle(0)
        .max_overflow(1)
        .fifo_after(Duration::ZERO)
        .start_timeout(Duration::from_millis(20))
        .reconnect_delay(Duration::from_millis(1))
        .build(move || {
            let k = n.fetch_add(1, Ordering::SeqCst);
            // Now and then past start_timeout: that worker comes late and is dropped.
            thread::sleep(Duration::from_millis(if k % 11 == 5 {
                30
            } else {
                1 + k % 3
            }));
            alive.fetch_add(1, Ordering::SeqCst);
            Ok(Tracked(alive.clone()))
        })
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let resizer = {
        let (pool, stop) = (pool.clone(), stop.clone());
        thread::spawn(move || {
            let mut k = 0usize;
            while !stop.load(Ordering::SeqCst) {
                pool.resize(1 + k % 4).unwrap();
                k += 1;
                thread::sleep(Duration::from_millis(3));
            }
            pool.resize(3).unwrap();
        })
    };
    let mut waiters = Vec::new();
    for i in 0..6u64 {
        let pool = pool.clone();
        waiters.push(thread::spawn(move || {
            for round in 0..80u64 {
                let timeout = if (i + round) % 2 == 0 {
                    Duration::MAX
                } else {
                    Duration::from_millis(1 + (i + round) % 3)
                };
                match pool.checkout_timeout(timeout) {
                    Ok(lease) => {
                        thread::sleep(Duration::from_micros(300));
                        drop(lease);
                    }
                    // The revolver fuse, as documented: a start that ran past
                    // `start_timeout` while nothing was open or starting fails the line
                    // at once with its cause, no-limit waiters included.
                    Err(Error::Disconnected { cause, .. })
                        if cause.to_string().contains("did not finish within") => {}
                    Err(err) => assert!(timeout != Duration::MAX, "no-limit checkout: {err:?}"),
                }
            }
        }));
    }
    let done = within(Duration::from_secs(20), move || {
        for waiter in waiters {
            waiter.join().unwrap();
        }
    });
    stop.store(true, Ordering::SeqCst);
    resizer.join().unwrap();
    assert!(
        done.is_some(),
        "a waiter never left the line: {:?}",
        pool.stats()
    );
    settles_then_closes(&pool, &live, 3, "resizes");
}
