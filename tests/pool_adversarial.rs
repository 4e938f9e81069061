//! Adversarial scenarios that the owning pool survived: bursts, re-entrant and panicking
//! callbacks, races of resize and close with the traffic, extreme sizes and durations. Each is
//! bounded by a watchdog and asserts outcomes and generous limits only.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{eventually, within};
use cylinder::{BoxError, Error, Event, Lease, OwnedLease, Pool, PoolStats};

/// A worker that counts the live ones, and catches a double lease.
struct Tracked {
    live: Arc<AtomicUsize>,
    in_use: AtomicBool,
    panic_on_drop: bool,
}

impl Tracked {
    fn enter(&self) {
        assert!(
            !self.in_use.swap(true, Ordering::AcqRel),
            "leased to two holders"
        );
    }
    fn leave(&self) {
        assert!(self.in_use.swap(false, Ordering::AcqRel));
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
        if self.panic_on_drop && !thread::panicking() {
            panic!("a worker's Drop panicked");
        }
    }
}

fn tracked(
    live: &Arc<AtomicUsize>,
) -> impl Fn() -> Result<Tracked, BoxError> + Send + Sync + 'static {
    let live = live.clone();
    move || {
        live.fetch_add(1, Ordering::SeqCst);
        Ok(Tracked {
            live: live.clone(),
            in_use: AtomicBool::new(false),
            panic_on_drop: false,
        })
    }
}

/// The pool is quiet and whole: every worker free or leased, the workers alive are the ones
/// the pool counts, and their number is `expected`.
fn settles(pool: &Pool<Tracked>, live: &AtomicUsize, expected: usize) -> Result<(), String> {
    let mut last = PoolStats::default();
    let ok = eventually(Duration::from_secs(10), || {
        last = pool.stats();
        last.free + last.leased == last.size
            && last.size == expected
            && live.load(Ordering::SeqCst) == expected
            && last.starting == 0
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "not settled: {last:?}, live workers {}",
            live.load(Ordering::SeqCst)
        ))
    }
}

fn burst(fifo_after: Duration) {
    const N: usize = 8;
    let live = Arc::new(AtomicUsize::new(0));
    let pool = Pool::builder()
        .size(N)
        .fifo_after(fifo_after)
        .build(tracked(&live))
        .unwrap();
    let held: Vec<OwnedLease<Tracked>> = (0..N).map(|_| pool.checkout_owned().unwrap()).collect();
    let (tx, rx) = mpsc::channel();
    for _ in 0..N {
        let (pool, tx) = (pool.clone(), tx.clone());
        thread::spawn(move || {
            let got = pool
                .checkout_timeout(Duration::from_secs(20))
                .map(Lease::take);
            let _ = tx.send(got.is_ok());
        });
    }
    assert!(eventually(Duration::from_secs(10), || pool.stats().waiters == N));
    // N releases at once, from N threads.
    let gate = Arc::new(Barrier::new(N));
    let releasers: Vec<_> = held
        .into_iter()
        .map(|lease| {
            let gate = gate.clone();
            thread::spawn(move || {
                gate.wait();
                drop(lease);
            })
        })
        .collect();
    for releaser in releasers {
        releaser.join().unwrap();
    }
    let began = Instant::now();
    for _ in 0..N {
        let served = rx.recv_timeout(Duration::from_secs(10));
        assert_eq!(served, Ok(true), "a waiter was not served ({fifo_after:?})");
    }
    assert!(began.elapsed() < Duration::from_secs(5));
}

#[test]
fn n_waiters_n_releases_burst_all_served_fifo_zero() {
    burst(Duration::ZERO);
}

#[test]
fn n_waiters_n_releases_burst_all_served_fifo_default() {
    burst(Duration::from_millis(1));
}

#[test]
fn n_waiters_n_releases_burst_all_served_fifo_never() {
    burst(Duration::MAX);
}

#[test]
fn tiny_and_huge_checkout_timeouts_mixed_lose_nothing() {
    let live = Arc::new(AtomicUsize::new(0));
    let pool = Pool::builder()
        .size(3)
        .fifo_after(Duration::from_micros(50))
        .build(tracked(&live))
        .unwrap();
    let stop = Instant::now() + Duration::from_millis(600);
    thread::scope(|scope| {
        for t in 0..6 {
            let pool = &pool;
            scope.spawn(move || {
                let timeout = if t % 2 == 0 {
                    Duration::from_nanos(1)
                } else {
                    Duration::MAX
                };
                while Instant::now() < stop {
                    match pool.checkout_timeout(timeout) {
                        Ok(lease) => {
                            lease.enter();
                            thread::yield_now();
                            lease.leave();
                        }
                        Err(Error::Timeout { .. }) => {}
                        Err(other) => panic!("{other:?}"),
                    }
                }
            });
        }
    });
    settles(&pool, &live, 3).unwrap();
}

/// Every kind of user callback calls back into the pool, on whatever thread it runs (client,
/// start thread, reaper): stats, try_checkout, a short checkout, map. Meanwhile clients
/// discard, take and release, and workers expire every few milliseconds.
#[test]
fn reentrant_callbacks_on_every_thread_do_not_deadlock_or_lose_workers() {
    let live = Arc::new(AtomicUsize::new(0));
    let slot: Arc<Mutex<Option<Pool<Tracked>>>> = Arc::new(Mutex::new(None));
    let handle = |slot: &Arc<Mutex<Option<Pool<Tracked>>>>| slot.lock().unwrap().clone();
    let (s1, s2, s3, s4) = (slot.clone(), slot.clone(), slot.clone(), slot.clone());
    let start = tracked(&live);
    let pool = Pool::builder()
        .size(4)
        .max_overflow(2)
        .max_lifetime(Duration::from_millis(3))
        .warn_after(Duration::from_millis(1))
        .checkout_timeout(Duration::from_millis(20))
        .on_event(move |event| {
            // Overload and timeouts come from the calls below: not re-entered forever.
            // A callback that checks out on every event, including those its own checkout
            // and release raise, recurses without end: one level deep is enough here.
            thread_local!(static INSIDE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });
            if matches!(event, Event::Overload | Event::CheckoutTimedOut(_)) || INSIDE.with(|i| i.replace(true)) {
                return;
            }
            struct Out;
            impl Drop for Out {
                fn drop(&mut self) {
                    INSIDE.with(|i| i.set(false));
                }
            }
            let _out = Out;
            if let Some(pool) = handle(&s1) {
                let _ = pool.stats();
                let _ = format!("{pool:?}");
                if let Ok(lease) = pool.try_checkout() {
                    drop(lease);
                }
                if let Ok(lease) = pool.checkout_timeout(Duration::from_millis(1)) {
                    drop(lease);
                }
            }
        })
        .test_on_checkout(move |_: &mut Tracked| {
            if let Some(pool) = handle(&s2) {
                let _ = pool.stats();
            }
            true
        })
        .reset(move |_: &mut Tracked| -> Result<(), BoxError> {
            if let Some(pool) = handle(&s3) {
                // A reset that checks out another worker (never blocking long).
                if let Ok(other) = pool.try_checkout() {
                    drop(other);
                }
            }
            Ok(())
        })
        .is_broken(move |_: &mut Tracked| {
            if let Some(pool) = handle(&s4) {
                let _ = pool.map(|_| ());
            }
            false
        })
        .build(start)
        .unwrap();
    *slot.lock().unwrap() = Some(pool.clone());
    let done = within(Duration::from_secs(30), {
        let pool = pool.clone();
        move || {
            let stop = Instant::now() + Duration::from_millis(800);
            thread::scope(|scope| {
                for t in 0..4 {
                    let pool = &pool;
                    scope.spawn(move || {
                        let mut n = 0u32;
                        while Instant::now() < stop {
                            n += 1;
                            let Ok(lease) = pool.checkout() else { continue };
                            lease.enter();
                            lease.leave();
                            match (n + t) % 7 {
                                0 => Lease::discard(lease),
                                1 => drop(Lease::take(lease)),
                                _ => drop(lease),
                            }
                        }
                    });
                }
            });
        }
    });
    assert!(done.is_some(), "the traffic deadlocked");
    slot.lock().unwrap().take();
    settles(&pool, &live, 4).unwrap();
    let stats = pool.stats();
    assert!(stats.free <= stats.size && stats.leased <= stats.size);
}

/// Panics in every callback: the start, the check, is_broken, reset, on_event and the worker's
/// Drop. Each is contained and counted as that worker's failure; no worker is lost and no
/// waiter stays stuck.
#[test]
fn panicking_callbacks_never_lose_a_worker() {
    let live = Arc::new(AtomicUsize::new(0));
    let starts = Arc::new(AtomicUsize::new(0));
    // Every start's first check may panic too, so `build` can fail when all three do (1 in
    // 125): that is a correct answer, named after the panic, and the test builds again.
    let build = || {
        let (l, s) = (live.clone(), starts.clone());
        Pool::builder()
            .size(3)
            .reconnect_delay(Duration::from_millis(2))
            .checkout_timeout(Duration::from_secs(5))
            .on_event(|event| {
                if matches!(event, Event::WorkerRestarted | Event::CheckFailed) {
                    panic!("on_event panicked");
                }
            })
            .test_on_checkout(|_: &mut Tracked| {
                if rand_bit(5) {
                    panic!("check panicked");
                }
                true
            })
            .is_broken(|_: &mut Tracked| {
                if rand_bit(5) {
                    panic!("is_broken panicked");
                }
                false
            })
            .reset(|_: &mut Tracked| -> Result<(), BoxError> {
                if rand_bit(5) {
                    panic!("reset panicked");
                }
                Ok(())
            })
            .build(move || {
                let n = s.fetch_add(1, Ordering::SeqCst);
                if n > 3 && n % 5 == 0 {
                    panic!("start panicked");
                }
                l.fetch_add(1, Ordering::SeqCst);
                Ok(Tracked {
                    live: l.clone(),
                    in_use: AtomicBool::new(false),
                    panic_on_drop: n % 2 == 0,
                })
            })
    };
    let pool = (0..20)
        .find_map(|_| match build() {
            Ok(pool) => Some(pool),
            Err(Error::Disconnected { cause, .. }) => {
                assert!(cause.to_string().contains("panicked"), "{cause}");
                None
            }
            Err(other) => panic!("{other:?}"),
        })
        .expect("one build in twenty starts a worker");
    let done = within(Duration::from_secs(30), {
        let pool = pool.clone();
        move || {
            thread::scope(|scope| {
                for _ in 0..3 {
                    let pool = &pool;
                    scope.spawn(move || {
                        for _ in 0..300 {
                            match pool.checkout() {
                                Ok(lease) => {
                                    lease.enter();
                                    lease.leave();
                                }
                                Err(Error::Disconnected { .. }) => {
                                    thread::sleep(Duration::from_millis(2))
                                }
                                Err(other) => panic!("{other:?}"),
                            }
                        }
                    });
                }
            });
        }
    });
    assert!(done.is_some(), "a checkout got stuck");
    settles(&pool, &live, 3).unwrap();
    drop(pool);
    assert_eq!(
        live.load(Ordering::SeqCst),
        0,
        "every worker dropped with the pool"
    );
}

fn rand_bit(one_in: u32) -> bool {
    use std::cell::Cell;
    thread_local!(static STATE: Cell<u32> = const { Cell::new(0x9e37_79b9) });
    STATE.with(|s| {
        let mut x = s.get() ^ (thread_id_hash() as u32);
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        s.set(x);
        x % one_in == 0
    })
}

fn thread_id_hash() -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    thread::current().id().hash(&mut h);
    h.finish()
}

/// close racing checkouts, releases, starts in flight (slow starts) and owned leases dropped
/// on other threads: every call returns, and every worker ever started is dropped.
#[test]
fn close_racing_traffic_and_slow_starts_drops_every_worker() {
    for round in 0..6 {
        let live = Arc::new(AtomicUsize::new(0));
        let l = live.clone();
        let pool = Pool::builder()
            .size(3)
            .min_idle(1)
            .max_overflow(2)
            .build(move || {
                thread::sleep(Duration::from_millis(5));
                l.fetch_add(1, Ordering::SeqCst);
                Ok(Tracked {
                    live: l.clone(),
                    in_use: AtomicBool::new(false),
                    panic_on_drop: false,
                })
            })
            .unwrap();
        let done = within(Duration::from_secs(20), {
            let pool = pool.clone();
            move || {
                thread::scope(|scope| {
                    for t in 0..4 {
                        let pool = pool.clone();
                        scope.spawn(move || loop {
                            match pool.checkout_owned_timeout(Duration::MAX) {
                                Ok(lease) => {
                                    if t % 2 == 0 {
                                        // Dropped on another thread.
                                        thread::spawn(move || drop(lease)).join().unwrap();
                                    } else {
                                        drop(lease);
                                    }
                                }
                                Err(Error::Closed) => break,
                                Err(other) => panic!("{other:?}"),
                            }
                        });
                    }
                    thread::sleep(Duration::from_millis(20 + 7 * round));
                    pool.close();
                });
            }
        });
        assert!(
            done.is_some(),
            "round {round}: a checkout did not end with close"
        );
        drop(pool);
        assert!(
            eventually(Duration::from_secs(5), || live.load(Ordering::SeqCst) == 0),
            "round {round}: {} workers outlived the closed pool",
            live.load(Ordering::SeqCst)
        );
    }
}

/// resize up and down racing releases, discards, takes and 1 ms lifetime/idle sweeps.
#[test]
fn resize_racing_traffic_and_sweeps_settles_at_the_last_size() {
    let live = Arc::new(AtomicUsize::new(0));
    let pool = Pool::builder()
        .size(4)
        .max_lifetime(Duration::from_millis(1))
        .idle_timeout(Duration::from_millis(1))
        .checkout_timeout(Duration::from_secs(5))
        .build(tracked(&live))
        .unwrap();
    let done = within(Duration::from_secs(30), {
        let pool = pool.clone();
        move || {
            let stop = Instant::now() + Duration::from_millis(700);
            thread::scope(|scope| {
                for t in 0..3u32 {
                    let pool = &pool;
                    scope.spawn(move || {
                        let mut n = t;
                        while Instant::now() < stop {
                            n += 1;
                            match pool.checkout() {
                                Ok(lease) => match n % 5 {
                                    0 => Lease::discard(lease),
                                    1 => drop(Lease::take(lease)),
                                    _ => drop(lease),
                                },
                                Err(Error::Timeout { .. }) => {}
                                Err(other) => panic!("{other:?}"),
                            }
                        }
                    });
                }
                let pool = &pool;
                scope.spawn(move || {
                    let mut size = 1;
                    while Instant::now() < stop {
                        size = size % 9 + 1;
                        pool.resize(size).unwrap();
                    }
                });
            });
            pool.resize(5).unwrap();
        }
    });
    assert!(done.is_some(), "stuck");
    settles(&pool, &live, 5).unwrap();
}

#[test]
fn min_idle_zero_grows_on_demand_with_overflow_and_shrinks_back() {
    let live = Arc::new(AtomicUsize::new(0));
    let pool = Pool::builder()
        .size(4)
        .min_idle(0)
        .max_overflow(3)
        .idle_timeout(Duration::from_millis(20))
        .build(tracked(&live))
        .unwrap();
    assert_eq!(pool.stats().size, 0);
    let leases: Vec<_> = (0..7).map(|_| pool.try_checkout().unwrap()).collect();
    assert!(matches!(pool.try_checkout(), Err(Error::Overload)));
    assert_eq!(pool.stats().overflow, 3);
    drop(leases);
    settles(&pool, &live, 0).unwrap();
}

#[test]
fn build_unchecked_with_a_start_failing_then_succeeding_recovers() {
    let failing = Arc::new(AtomicBool::new(true));
    let f = failing.clone();
    let live = Arc::new(AtomicUsize::new(0));
    let start = tracked(&live);
    let pool = Pool::builder()
        .size(3)
        .reconnect_delay(Duration::from_millis(10))
        .build_unchecked(move || {
            if f.load(Ordering::SeqCst) {
                Err("down".into())
            } else {
                start()
            }
        })
        .unwrap();
    assert!(eventually(Duration::from_secs(5), || matches!(
        pool.try_checkout(),
        Err(Error::Disconnected { .. })
    )));
    failing.store(false, Ordering::SeqCst);
    // Within a backoff the fuse fails fast (by design); once it is over, checkouts succeed.
    assert!(eventually(Duration::from_secs(5), || pool
        .checkout_timeout(Duration::from_secs(1))
        .is_ok()));
    settles(&pool, &live, 3).unwrap();
}

#[test]
fn a_huge_pool_builds_and_closes_quickly() {
    let began = Instant::now();
    let pool = Pool::builder().size(100_000).build(|| Ok(0u8)).unwrap();
    let built = began.elapsed();
    eprintln!("size(100_000) built in {built:?}");
    assert_eq!(pool.stats().size, 100_000);
    assert_eq!(pool.stats().free, 100_000);
    drop(pool);
    // Measured ~0.1 s in a debug build on 2 cores; the bound is generous.
    assert!(
        built < Duration::from_secs(5),
        "size(100_000) took {built:?} to build"
    );
}

#[test]
fn duration_max_for_every_duration_option_is_accepted_and_works() {
    let pool = Pool::builder()
        .size(2)
        .max_lifetime(Duration::MAX)
        .idle_timeout(Duration::MAX)
        .checkout_timeout(Duration::MAX)
        .reconnect_delay(Duration::MAX)
        .start_timeout(Duration::MAX)
        .fifo_after(Duration::MAX)
        .warn_after(Duration::MAX)
        .build(|| Ok(0u32))
        .unwrap();
    let a = pool.checkout().unwrap();
    let b = pool.checkout().unwrap();
    thread::scope(|scope| {
        let waiter = scope.spawn(|| pool.checkout().map(|_| ()));
        assert!(eventually(Duration::from_secs(5), || pool.stats().waiters == 1));
        drop(a);
        waiter.join().unwrap().unwrap();
    });
    drop(b);
    assert_eq!(pool.stats().free, 2);

    // reconnect_delay(MAX) after a failed start: no panic, checkouts fail fast.
    let down = Pool::builder()
        .size(1)
        .reconnect_delay(Duration::MAX)
        .checkout_timeout(Duration::MAX)
        .build_unchecked(|| -> Result<u32, BoxError> { Err("down".into()) })
        .unwrap();
    let outcome = within(Duration::from_secs(10), move || {
        thread::sleep(Duration::from_millis(50));
        down.checkout().map(|_| ()).unwrap_err()
    });
    assert!(
        matches!(outcome, Some(Error::Disconnected { .. })),
        "{outcome:?}"
    );
}

#[test]
fn a_failing_check_with_overflow_returns_in_time() {
    let pool = Pool::builder()
        .size(2)
        .max_overflow(3)
        .reconnect_delay(Duration::from_millis(1))
        .test_on_checkout(|_: &mut u32| false)
        // Every start fails its first check: nothing opens, so not `build`.
        .build_unchecked(|| Ok(0u32))
        .unwrap();
    let outcome = within(Duration::from_secs(10), move || {
        let tried = pool.try_checkout().map(|_| ());
        let began = Instant::now();
        let waited = pool
            .checkout_timeout(Duration::from_millis(100))
            .map(|_| ());
        (tried, waited, began.elapsed())
    });
    let (tried, waited, took) = outcome.expect("returned");
    assert!(tried.is_err() && waited.is_err());
    assert!(took < Duration::from_secs(2), "{took:?}");
}

/// A worker whose Drop blocks while the pool closes, and one whose start blocks for a while
/// as the last handle goes: close and drop return, nothing deadlocks.
#[test]
fn blocking_worker_drop_and_slow_start_do_not_hang_close() {
    struct Slow;
    impl Drop for Slow {
        fn drop(&mut self) {
            thread::sleep(Duration::from_millis(30));
        }
    }
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let pool = Pool::builder()
        .size(2)
        .build(move || {
            if c.fetch_add(1, Ordering::SeqCst) >= 2 {
                thread::sleep(Duration::from_millis(300));
            }
            Ok(Slow)
        })
        .unwrap();
    Lease::discard(pool.checkout().unwrap()); // a slow restart is now in flight
    let done = within(Duration::from_secs(5), move || {
        let copy = pool.clone();
        let t = thread::spawn(move || copy.checkout_timeout(Duration::MAX).map(|_| ()));
        drop(pool);
        t.join().unwrap()
    });
    assert!(done.is_some(), "close hung");
}

/// The last handle dropped from `on_event` on the reaper thread and on a start thread.
#[test]
fn last_handle_dropped_from_on_event_on_background_threads() {
    for trigger in [0usize, 1] {
        let slot: Arc<Mutex<Option<Pool<u32>>>> = Arc::new(Mutex::new(None));
        let s = slot.clone();
        let (tx, rx) = mpsc::channel::<String>();
        let tx = Mutex::new(tx);
        let pool = Pool::builder()
            .size(1)
            .warn_after(Duration::from_millis(5))
            .on_event(move |event| {
                let fire = match trigger {
                    0 => matches!(event, Event::SlowLease { .. }),
                    _ => matches!(event, Event::WorkerRestarted),
                };
                if fire {
                    let name = thread::current().name().unwrap_or("").to_string();
                    drop(s.lock().unwrap().take());
                    let _ = tx.lock().unwrap().send(name);
                }
            })
            .build(|| Ok(0u32))
            .unwrap();
        *slot.lock().unwrap() = Some(pool.clone());
        let lease = pool.checkout_owned().unwrap();
        drop(pool);
        if trigger == 0 {
            let name = rx.recv_timeout(Duration::from_secs(10)).unwrap();
            assert!(name.starts_with("cylinder-reaper"), "{name}");
            drop(lease);
        } else {
            OwnedLease::discard(lease);
            let name = rx.recv_timeout(Duration::from_secs(10)).unwrap();
            assert!(name.starts_with("cylinder-start"), "{name}");
        }
    }
}

/// Invariant 6: `stats()` and `Debug` never wait on a start, a check or a callback, even while
/// each of them blocks; bad resizes are `InvalidConfig`, never a panic.
#[test]
fn stats_and_debug_never_wait_on_blocked_callbacks() {
    let gate = Arc::new(AtomicBool::new(false));
    let blocked = |gate: &Arc<AtomicBool>| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !gate.load(Ordering::SeqCst) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(1));
        }
    };
    let (g1, g2, g3) = (gate.clone(), gate.clone(), gate.clone());
    let starts = AtomicUsize::new(0);
    let pool = Pool::builder()
        .size(2)
        .max_overflow(1)
        .on_event(move |event| {
            if *event == Event::WorkerDiscarded {
                blocked(&g1);
            }
        })
        .test_on_checkout(move |n: &mut usize| {
            if *n == 1 {
                blocked(&g2);
            }
            true
        })
        .build(move || {
            let n = starts.fetch_add(1, Ordering::SeqCst);
            if n >= 2 {
                blocked(&g3);
            }
            Ok(n)
        })
        .unwrap();
    thread::scope(|scope| {
        let a = pool.checkout().unwrap(); // worker 0 or 1
        let id = *a;
        scope.spawn(|| pool.checkout().map(|_| ())); // the other one: maybe its check blocks
        scope.spawn(move || Lease::discard(a)); // on_event blocks; a start blocks
        scope.spawn(|| pool.try_checkout().map(|_| ())); // an overflow start blocks
        thread::sleep(Duration::from_millis(100));
        let began = Instant::now();
        for _ in 0..100 {
            let stats = pool.stats();
            assert!(stats.free <= stats.size && stats.leased <= stats.size);
            let _ = format!("{pool:?}");
        }
        assert!(
            began.elapsed() < Duration::from_secs(1),
            "stats() waited: {:?} (worker {id})",
            began.elapsed()
        );
        assert!(matches!(pool.resize(0), Err(Error::InvalidConfig { .. })));
        assert!(matches!(
            pool.resize(usize::MAX),
            Err(Error::InvalidConfig { .. })
        ));
        gate.store(true, Ordering::SeqCst);
    });
}

/// Two resizes at once (one down, one up) leave a pool whose size, `min_idle` and open
/// workers agree: `min_idle` follows the size that won, and a shrink that lost does not close
/// workers below it.
#[test]
fn two_resizes_at_once_leave_a_consistent_pool() {
    let live = Arc::new(AtomicUsize::new(0));
    let pool = Pool::builder().size(4).build(tracked(&live)).unwrap();
    let began = Instant::now();
    let mut rounds = 0;
    while rounds < 300 && began.elapsed() < Duration::from_secs(2) {
        rounds += 1;
        let gate = Barrier::new(2);
        thread::scope(|scope| {
            for size in [2, 10] {
                let (pool, gate) = (&pool, &gate);
                scope.spawn(move || {
                    gate.wait();
                    pool.resize(size).unwrap();
                });
            }
        });
        let won = pool.stats().max_size;
        settles(&pool, &live, won)
            .unwrap_or_else(|stuck| panic!("round {rounds}, size {won}: {stuck}"));
    }
}

/// A client panics holding a lease while every hook panics too (is_broken, reset, on_event,
/// the worker's Drop): the nested panics are contained during the unwinding, under either
/// policy, and the pool replaces the worker.
#[test]
fn hooks_panicking_while_the_client_unwinds_are_contained() {
    for policy in [
        cylinder::OnClientPanic::Release,
        cylinder::OnClientPanic::Discard,
    ] {
        struct Bomb;
        impl Drop for Bomb {
            fn drop(&mut self) {
                panic!("worker drop panicked");
            }
        }
        let pool = Pool::builder()
            .size(1)
            .on_client_panic(policy)
            .is_broken(|_: &mut Bomb| panic!("is_broken panicked"))
            .reset(|_: &mut Bomb| -> Result<(), BoxError> { panic!("reset panicked") })
            .on_event(|_| panic!("on_event panicked"))
            .build(|| Ok(Bomb))
            .unwrap();
        let client = pool.clone();
        let crashed = thread::spawn(move || {
            let _lease = client.checkout().unwrap();
            panic!("client panicked");
        })
        .join();
        assert!(crashed.is_err());
        assert!(
            pool.checkout_timeout(Duration::from_secs(5)).is_ok(),
            "{policy:?}"
        );
        assert!(eventually(Duration::from_secs(5), || {
            let stats = pool.stats();
            stats.size == 1 && stats.free == 1 && stats.starting == 0
        }));
    }
}
