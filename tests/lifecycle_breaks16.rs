//! Sixteenth breaking pass: paths that should treat the same input the same way (`Lease::take`
//! vs `Lease::discard`, a `try_checkout`'s own start vs the line's starts, the reaper's sweep vs
//! the checkout-time check, `try_checkout`'s two `Overload`s, `resize` vs a retire's `replace`).
//!
//! Tests whose doc comment starts with "Found" are one bug each, named after its scenario,
//! and failed on the code they were written against. Those marked "Tried" or "Control"
//! document what was tried and held.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cylinder::{BoxError, Error, Lease, Pool};

/// A pool of two whose starts fail while `down` is set, with a long `reconnect_delay`; one
/// worker is discarded while the server is down, so the pool waits out a failed start with
/// one worker left, and then the server comes back.
fn pool_in_backoff_with_one_worker() -> (Pool<u32>, Arc<AtomicBool>) {
    let down = Arc::new(AtomicBool::new(false));
    let starts = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let (d, s, r) = (down.clone(), starts.clone(), refused.clone());
    let pool = Pool::builder()
        .size(2)
        .reconnect_delay(Duration::from_secs(30))
        .checkout_timeout(Duration::from_secs(2))
        .build(move || -> Result<u32, BoxError> {
            if d.load(Ordering::SeqCst) {
                r.fetch_add(1, Ordering::SeqCst);
                return Err("server down".into());
            }
            Ok(s.fetch_add(1, Ordering::SeqCst) as u32)
        })
        .unwrap();
    down.store(true, Ordering::SeqCst);
    Lease::discard(pool.checkout().unwrap());
    // (The replacement is claimed just after the discarded worker is counted out: wait for
    // its attempt, not only for the counts.)
    assert!(
        common::eventually(Duration::from_secs(5), || {
            let stats = pool.stats();
            refused.load(Ordering::SeqCst) > 0 && stats.starting == 0 && stats.size == 1
        }),
        "the replacement start did not fail: {:?}",
        pool.stats()
    );
    // The server is back; the pool still waits out the failed start (30 s).
    down.store(false, Ordering::SeqCst);
    (pool, down)
}

/// Control for the next test: the last worker discarded during the backoff is replaced at
/// once (it served a lease: "replaced at once, even while the pool waits out a failed
/// start"), so a checkout gets its replacement. Passes.
#[test]
fn the_last_worker_discarded_during_a_backoff_is_replaced_at_once() {
    let (pool, _down) = pool_in_backoff_with_one_worker();
    Lease::discard(pool.checkout().unwrap());
    let got = common::within(Duration::from_secs(10), move || {
        pool.checkout_timeout(Duration::from_secs(2)).map(|w| *w)
    })
    .expect("hung");
    assert!(got.is_ok(), "after a discard: {got:?}");
}

/// Found (an item earlier passes had accepted: "a worker taken during backoff is replaced
/// after the backoff"). The same as the discard above, with the last worker detached by
/// `Lease::take` instead.
///
/// Expected: `Lease::take` "detaches the worker ... the pool forgets it and starts another
/// in its place", as `Lease::discard` does; a worker that served and left says nothing of the
/// next start, so the replacement starts at once, backoff or not.
///
/// What happened: `detach` calls `refill`, which claims nothing during the backoff, so the
/// pool sits with nothing open for the rest of `reconnect_delay` (30 s here) though the server
/// is up: the checkout fails with the stale "server down".
#[test]
fn the_last_worker_taken_during_a_backoff_is_replaced_at_once_as_a_discarded_one_is() {
    let (pool, _down) = pool_in_backoff_with_one_worker();
    let _detached: u32 = Lease::take(pool.checkout().unwrap());
    let got = common::within(Duration::from_secs(10), move || {
        let began = Instant::now();
        let got = pool.checkout_timeout(Duration::from_secs(2)).map(|w| *w);
        (got, began.elapsed(), pool.stats())
    })
    .expect("hung");
    assert!(
        got.0.is_ok(),
        "after Lease::take the pool started no replacement while waiting out an old failure: \
         checkout gave {:?} after {:?} ({:?})",
        got.0,
        got.1,
        got.2
    );
}

/// Found (as above; the non-blocking path): after the take,
/// `try_checkout` answers `Disconnected` with the stale cause while the server is up.
#[test]
fn try_checkout_after_the_last_worker_was_taken_during_a_backoff_is_not_disconnected() {
    let (pool, _down) = pool_in_backoff_with_one_worker();
    let _detached: u32 = Lease::take(pool.checkout().unwrap());
    std::thread::sleep(Duration::from_millis(200));
    let got = pool.try_checkout().map(|w| *w);
    assert!(
        !matches!(got, Err(Error::Disconnected { .. })),
        "try_checkout after Lease::take: {got:?} ({:?})",
        pool.stats()
    );
}

/// Found (documented behaviour): `resize` up "starts the new workers (if `min_idle` follows
/// the size) and returns once they started". While the pool waits out an old failed start
/// (the server is back, one worker open of two), `resize(4)` claimed nothing (`fill_now`
/// asked `wanted(false)`, which answers nothing during a backoff), returned at once, and the
/// pool stayed at one worker for the rest of `reconnect_delay`.
///
/// Now the two workers it adds start before it returns; the one whose start failed is
/// retried after the backoff, as before (`tests/lifecycle_breaks17.rs` holds a resize to
/// the workers it adds).
#[test]
fn resize_up_while_waiting_out_an_old_failed_start_starts_its_new_workers() {
    let (pool, _down) = pool_in_backoff_with_one_worker();
    let began = Instant::now();
    pool.resize(4).unwrap();
    let took = began.elapsed();
    let stats = pool.stats();
    // (Their success ends the backoff: the reaper may retry the failed one at once, so the
    // pool may be at four, or starting its fourth.)
    assert!(
        stats.free + stats.leased >= 3,
        "resize(4) returned after {took:?} with {stats:?}: its two new workers should have \
         started"
    );
}

/// A pool of one whose `on_event` callback blocks for `block` on the event `slow` (on the
/// thread where it happens), with a waiter already in line when the only worker leaves by
/// `leave`; returns what the waiter got.
fn waiter_while_a_callback_blocks(
    slow: cylinder::Event,
    leave: fn(cylinder::Lease<'_, u32>),
) -> Result<u32, Error> {
    let block = Duration::from_millis(2500);
    let pool = Pool::builder()
        .size(1)
        .on_event(move |event| {
            if *event == slow {
                std::thread::sleep(block);
            }
        })
        .build(|| Ok(7u32))
        .unwrap();
    let lease = pool.checkout().unwrap();
    let waiter = {
        let pool = pool.clone();
        std::thread::spawn(move || {
            pool.checkout_timeout(Duration::from_millis(1500))
                .map(|w| *w)
        })
    };
    assert!(common::eventually(Duration::from_secs(5), || pool
        .stats()
        .waiters
        == 1));
    std::thread::sleep(Duration::from_millis(20));
    leave(lease);
    waiter.join().unwrap()
}

/// Control: a discarded worker's replacement is claimed before its event is reported
/// ("a callback that blocks must not hold back the replacement"), so the waiter is served
/// while the `WorkerDiscarded` callback still blocks. Passes.
#[test]
fn a_waiter_gets_the_replacement_of_a_discarded_worker_while_its_event_callback_blocks() {
    let got = waiter_while_a_callback_blocks(cylinder::Event::WorkerDiscarded, |lease| {
        Lease::discard(lease)
    });
    assert!(got.is_ok(), "the waiter got {got:?}");
}

/// Found. The same with `Lease::take`: `detach` (src/pool/release.rs) reports
/// `Event::WorkerTaken` *before* it calls `refill`, so a callback that blocks holds back the
/// replacement, and the waiter in line times out (the pool has room but nothing wakes it:
/// it sleeps until its deadline).
#[test]
fn a_waiter_gets_the_replacement_of_a_taken_worker_while_its_event_callback_blocks() {
    let got = waiter_while_a_callback_blocks(cylinder::Event::WorkerTaken, |lease| {
        let _worker: u32 = Lease::take(lease);
    });
    assert!(
        got.is_ok(),
        "the replacement of a taken worker waited for the WorkerTaken callback: the waiter got \
         {got:?}"
    );
}

/// Found (reaper sweep vs checkout-time check). A pool of one with `max_lifetime(300 ms)`;
/// the reaper is held up in a `SlowLease` callback (2 s: a callback that waits, on the
/// reaper's thread). The worker is returned before its expiry, and checked out again after
/// it.
///
/// Expected: "a worker older than `lifetime` is closed when it is next idle or returned
/// (never while leased)"; GUARANTEES.md: "closed when next returned or, if idle, within a
/// few milliseconds of its own expiry". The checkout check already retires an evicted
/// worker (`admit`), so an expired one should not go out on a lease either.
///
/// What happened: only the reaper's sweep and a return look at the expiry; `admit`
/// (src/pool/checkout.rs) checks `is_dead` and `evicted` but not `expired`, so while the
/// reaper is held up the checkout hands out a worker past its lifetime.
#[test]
fn a_checkout_is_not_handed_a_worker_past_its_max_lifetime_while_the_reaper_is_held_up() {
    let blocked = Arc::new(AtomicBool::new(false));
    let b = blocked.clone();
    let pool = Pool::builder()
        .size(1)
        .max_lifetime(Duration::from_millis(300))
        .warn_after(Duration::from_millis(10))
        .on_event(move |event| {
            if matches!(event, cylinder::Event::SlowLease { .. }) && !b.swap(true, Ordering::SeqCst)
            {
                std::thread::sleep(Duration::from_secs(2));
            }
        })
        .build(|| Ok(Instant::now()))
        .unwrap();
    let lease = pool.checkout().unwrap();
    assert!(common::eventually(Duration::from_secs(2), || blocked.load(Ordering::SeqCst)));
    drop(lease);
    std::thread::sleep(Duration::from_millis(450));
    let got = common::within(Duration::from_secs(5), move || {
        pool.checkout_timeout(Duration::from_secs(1))
            .map(|born| born.elapsed())
    })
    .expect("hung");
    let age = got.expect("checkout failed");
    assert!(
        age < Duration::from_millis(300),
        "a checkout was handed a worker {age:?} old, past its max_lifetime of 300 ms"
    );
}

/// Found (error paths that should report alike). Two `try_checkout`s on a pool of one just
/// built with `build_unchecked`, whose start takes 300 ms: both wait for the first start (no
/// worker is busy yet); one gets the worker, the other answers `Overload`.
///
/// Expected: `Event::Overload` is "a non-blocking checkout ... found every worker busy", and
/// `try_checkout`'s other `Overload` (every worker leased, nothing to start) reports it; so
/// every `Err(Overload)` a `try_checkout` returns is seen by `on_event` (and by whatever counts
/// overloads from it).
///
/// What happened: the `Overload` that `wait_for(.., for_a_start: true)` answers
/// (src/pool/checkout.rs, the `Err(WaitError::GaveUp | WaitError::Timeout) if for_a_start`
/// arm, returned through `try_wait_for_a_start`) is never reported.
#[test]
fn every_overload_a_try_checkout_answers_is_reported_as_an_event() {
    let overloads = Arc::new(AtomicUsize::new(0));
    let seen = overloads.clone();
    let pool = Pool::builder()
        .size(1)
        .on_event(move |event| {
            if *event == cylinder::Event::Overload {
                seen.fetch_add(1, Ordering::SeqCst);
            }
        })
        .build_unchecked(|| -> Result<u32, BoxError> {
            std::thread::sleep(Duration::from_millis(300));
            Ok(1)
        })
        .unwrap();
    let barrier = Arc::new(std::sync::Barrier::new(2));
    let tries: Vec<_> = (0..2)
        .map(|_| {
            let (pool, barrier) = (pool.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let got = pool.try_checkout();
                // Keep the worker until both have answered.
                std::thread::sleep(Duration::from_millis(200));
                got.map(|w| *w)
            })
        })
        .collect();
    let answers: Vec<_> = tries.into_iter().map(|t| t.join().unwrap()).collect();
    let refused = answers
        .iter()
        .filter(|got| matches!(got, Err(Error::Overload)))
        .count();
    assert_eq!(refused, 1, "expected one Overload: {answers:?}");
    assert_eq!(
        overloads.load(Ordering::SeqCst),
        refused,
        "try_checkout answered Overload {refused} time(s) but Event::Overload was reported {} \
         time(s) ({answers:?})",
        overloads.load(Ordering::SeqCst)
    );
}

/// Tried (passes): 500 blocked checkouts on a pool of 4, each holding its worker for a
/// moment, all served within their timeout, and the pool quiet and whole afterwards.
#[test]
fn five_hundred_waiters_on_a_pool_of_four_are_all_served() {
    let pool = Pool::builder().size(4).build(|| Ok(0u64)).unwrap();
    let held: Vec<_> = (0..4).map(|_| pool.checkout_owned().unwrap()).collect();
    let served = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..500)
        .map(|_| {
            let (pool, served) = (pool.clone(), served.clone());
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    let got = pool.checkout_timeout(Duration::from_secs(60));
                    if let Ok(mut lease) = got {
                        *lease += 1;
                        served.fetch_add(1, Ordering::SeqCst);
                    }
                })
                .unwrap()
        })
        .collect();
    assert!(common::eventually(Duration::from_secs(20), || pool
        .stats()
        .waiters
        >= 400));
    let began = Instant::now();
    drop(held);
    for t in threads {
        t.join().unwrap();
    }
    let took = began.elapsed();
    let stats = pool.stats();
    assert_eq!(served.load(Ordering::SeqCst), 500, "{stats:?}");
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert_eq!(
        (stats.size, stats.free, stats.leased, stats.waiters),
        (4, 4, 0, 0)
    );
}

/// Tried (passes): 400 threads that each live for one owned checkout, whose lease is dropped
/// by another short-lived thread, in both queue modes: the pool ends quiet and whole.
#[test]
fn one_checkout_threads_handing_owned_leases_to_other_threads_lose_nothing() {
    for mode in [cylinder::QueueMode::Lifo, cylinder::QueueMode::Fifo] {
        let pool = Pool::builder()
            .size(3)
            .queue_mode(mode)
            .build(|| Ok(0u64))
            .unwrap();
        let mut threads = Vec::new();
        for i in 0..400 {
            let pool = pool.clone();
            threads.push(std::thread::spawn(move || {
                let lease = pool
                    .checkout_owned_timeout(Duration::from_secs(30))
                    .unwrap();
                let dropper = std::thread::spawn(move || {
                    if i % 7 == 0 {
                        cylinder::OwnedLease::discard(lease);
                    } else {
                        drop(lease);
                    }
                });
                dropper.join().unwrap();
            }));
            if threads.len() > 24 {
                threads.remove(0).join().unwrap();
            }
        }
        for t in threads {
            t.join().unwrap();
        }
        assert!(
            common::eventually(Duration::from_secs(5), || {
                let s = pool.stats();
                s.size == 3 && s.free == 3 && s.leased == 0 && s.starting == 0
            }),
            "{mode:?}: {:?}",
            pool.stats()
        );
        assert_eq!(pool.stats().checkouts, 400);
    }
}

/// Tried (passes): outside a backoff, the last worker detached by `Lease::take` is replaced
/// at once and a waiter gets the replacement.
#[test]
fn the_last_worker_taken_outside_a_backoff_is_replaced_at_once() {
    let pool = Pool::builder().size(1).build(|| Ok(5u32)).unwrap();
    let _worker: u32 = Lease::take(pool.checkout().unwrap());
    let got = common::within(Duration::from_secs(5), move || {
        pool.checkout_timeout(Duration::from_secs(2)).map(|w| *w)
    })
    .expect("hung");
    assert_eq!(got.ok(), Some(5));
}

/// Tried (passes): a `checkout_timeout(Duration::ZERO)` on a pool whose server is down
/// answers `Disconnected` with the start's error, not a bare timeout.
#[test]
fn a_zero_checkout_timeout_on_a_down_pool_is_disconnected_with_the_cause() {
    let pool = Pool::builder()
        .size(1)
        .reconnect_delay(Duration::from_secs(30))
        .build_unchecked(|| -> Result<u32, BoxError> { Err("refused".into()) })
        .unwrap();
    assert!(common::eventually(Duration::from_secs(5), || {
        matches!(
            pool.try_checkout().map(|_| ()),
            Err(Error::Disconnected { .. })
        )
    }));
    let got = pool.checkout_timeout(Duration::ZERO).map(|w| *w);
    match got {
        Err(Error::Disconnected { cause, .. }) => assert_eq!(cause.to_string(), "refused"),
        other => panic!("checkout_timeout(0) on a down pool: {other:?}"),
    }
}

/// Tried (passes; documented): `map`'s workers go back when its closure panics, also under
/// `OnClientPanic::Discard` (that policy is for leases; `map` says "the workers go back also
/// if `f` panics").
#[test]
fn map_gives_its_workers_back_when_its_closure_panics_under_discard() {
    common::quiet_panics();
    let pool = Pool::builder()
        .size(2)
        .on_client_panic(cylinder::OnClientPanic::Discard)
        .build(|| Ok(0u32))
        .unwrap();
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pool.map(|_| panic!("map closure panics on purpose"))
    }));
    assert!(panicked.is_err());
    let stats = pool.stats();
    assert_eq!((stats.size, stats.free, stats.discards), (2, 2, 0));
}

/// Tried (passes): random traffic from six threads over every kind of checkout (borrowed,
/// owned, try, transaction, map), discards, takes, `evict_all` and resizes, with starts
/// failing now and then and workers dying on return, in both queue modes; once quiet (and
/// past the backoff) the pool is whole: back to its size, `free + leased == size`, and as
/// many workers alive as it counts.
#[test]
fn random_traffic_over_every_path_leaves_a_whole_pool_in_both_queue_modes() {
    use common::{Rng, Tracked};
    for (seed, mode) in [
        (1u64, cylinder::QueueMode::Lifo),
        (2, cylinder::QueueMode::Fifo),
        (3, cylinder::QueueMode::Lifo),
        (4, cylinder::QueueMode::Fifo),
    ] {
        let live = Arc::new(AtomicUsize::new(0));
        let fail = Arc::new(AtomicBool::new(false));
        let (l, f) = (live.clone(), fail.clone());
        let pool = Pool::builder()
            .size(4)
            .queue_mode(mode)
            .reconnect_delay(Duration::from_millis(10))
            .checkout_timeout(Duration::from_millis(200))
            .is_broken(|w: &mut (Tracked, bool)| w.1)
            .build(move || -> Result<(Tracked, bool), BoxError> {
                if f.load(Ordering::SeqCst) {
                    return Err("flaky".into());
                }
                l.fetch_add(1, Ordering::SeqCst);
                Ok((Tracked(l.clone()), false))
            })
            .unwrap();
        let detached = Arc::new(std::sync::Mutex::new(Vec::new()));
        let threads: Vec<_> = (0..6)
            .map(|t| {
                let (pool, fail, detached) = (pool.clone(), fail.clone(), detached.clone());
                std::thread::spawn(move || {
                    let mut rng = Rng::new(seed * 100 + t);
                    for _ in 0..300 {
                        match rng.below(12) {
                            0 => {
                                if let Ok(l) = pool.try_checkout() {
                                    Lease::discard(l);
                                }
                            }
                            1 => {
                                if let Ok(l) = pool.checkout_owned() {
                                    detached.lock().unwrap().push(cylinder::OwnedLease::take(l));
                                }
                            }
                            2 => pool.evict_all(),
                            3 => {
                                let _ = pool.map(|w| w.1 = false);
                            }
                            4 => {
                                let _ = pool.resize(2 + rng.below(5) as usize);
                            }
                            5 => fail.store(rng.below(4) == 0, Ordering::SeqCst),
                            6 => {
                                let _ = pool.transaction(|w| w.1 = rng.below(3) == 0);
                            }
                            7 => {
                                if let Ok(mut l) = pool.checkout_owned() {
                                    l.1 = rng.below(5) == 0;
                                    std::thread::yield_now();
                                }
                            }
                            _ => {
                                if let Ok(l) = pool.checkout_timeout(Duration::from_millis(50)) {
                                    std::thread::yield_now();
                                    drop(l);
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        fail.store(false, Ordering::SeqCst);
        detached.lock().unwrap().clear();
        pool.resize(4).unwrap();
        let whole = common::eventually(Duration::from_secs(5), || {
            let s = pool.stats();
            s.size == 4
                && s.free == 4
                && s.leased == 0
                && s.starting == 0
                && live.load(Ordering::SeqCst) == 4
        });
        assert!(
            whole,
            "seed {seed} {mode:?}: {:?}, {} alive",
            pool.stats(),
            live.load(Ordering::SeqCst)
        );
    }
}

/// A pool of three keeping one worker (`min_idle(1)`), whose later starts take 300 ms. A
/// client holds the one worker; another's `try_checkout` opens a worker on its own thread
/// (300 ms) and holds it for 1.8 s; 100 ms into that start a third client blocks in `checkout_timeout(1.5 s)`:
/// the start under way counts as on its way to the line, so it claims none. With
/// `block_reaper`, the reaper is held up meanwhile in a `SlowLease` callback (3 s). Returns
/// what the third client got.
fn waiter_behind_a_try_checkouts_own_start(block_reaper: bool) -> Result<(), Error> {
    let starts = Arc::new(AtomicUsize::new(0));
    let s = starts.clone();
    let blocked = Arc::new(AtomicBool::new(false));
    let b = blocked.clone();
    let pool = Pool::builder()
        .size(3)
        .min_idle(1)
        .warn_after(Duration::from_millis(10))
        .on_event(move |event| {
            if block_reaper
                && matches!(event, cylinder::Event::SlowLease { .. })
                && !b.swap(true, Ordering::SeqCst)
            {
                std::thread::sleep(Duration::from_secs(3));
            }
        })
        .build(move || -> Result<u32, BoxError> {
            if s.fetch_add(1, Ordering::SeqCst) > 0 {
                std::thread::sleep(Duration::from_millis(300));
            }
            Ok(0)
        })
        .unwrap();
    let held = pool.checkout_owned().unwrap();
    if block_reaper {
        assert!(common::eventually(Duration::from_secs(2), || blocked.load(Ordering::SeqCst)));
    } else {
        std::thread::sleep(Duration::from_millis(50));
    }
    let own_start = {
        let pool = pool.clone();
        std::thread::spawn(move || {
            let got = pool.try_checkout();
            // Held past the waiter's timeout: the waiter must be served by another worker.
            std::thread::sleep(Duration::from_millis(1800));
            got.map(|_| ()).map_err(|e| e.to_string())
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    let waiter = {
        let pool = pool.clone();
        std::thread::spawn(move || {
            pool.checkout_timeout(Duration::from_millis(1500))
                .map(|_| ())
        })
    };
    let own = own_start.join().unwrap();
    let got = waiter.join().unwrap();
    drop(held);
    assert!(own.is_ok(), "the try_checkout's own start: {own:?}");
    got
}

/// Control (passes): with the reaper free, the start the `try_checkout` asks the reaper for
/// (for the waiter that came during its own start) serves the waiter.
#[test]
fn a_waiter_that_came_during_a_try_checkouts_own_start_is_served() {
    let got = waiter_behind_a_try_checkouts_own_start(false);
    assert!(got.is_ok(), "the waiter got {got:?}");
}

/// Found (the line's start vs a `try_checkout`'s own start, with a callback that waits).
///
/// Expected: a start that ends while a waiter it counted for is still unserved claims one
/// for that waiter itself (`deliver`: "A waiter that came while this start still counted as
/// on its way to the line ... claim one for it now"), so the waiter does not depend on the
/// reaper, which may be held up in a user callback (the pool's rule since the third pass:
/// a blocked callback must not hold back what a blocking checkout waits for).
///
/// What happened: `start_for_caller` (src/pool/start.rs) only does `self.signal.request()`
/// for that waiter, i.e. asks the reaper; the reaper is blocked in the `SlowLease`
/// callback, the waiter has no retry time to wake at (nothing is failing), and it sleeps
/// until its timeout while the pool has room for a worker.
#[test]
fn a_waiter_that_came_during_a_try_checkouts_own_start_is_served_while_the_reaper_is_held_up() {
    let got = common::within(Duration::from_secs(10), || {
        waiter_behind_a_try_checkouts_own_start(true)
    })
    .expect("hung");
    assert!(
        got.is_ok(),
        "a waiter that came during a try_checkout's own start waited out its timeout (the \
         start for it was left to a reaper held up in a callback): {got:?}"
    );
}
