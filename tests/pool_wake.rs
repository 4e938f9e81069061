//! Adversarial tests for the line's wake rule (a release wakes a waiter only while fewer are
//! on their way than workers are queued for the line): every scenario has waiters that keep
//! what they get and have no deadline, so only the releases (and the waiters leaving) can
//! serve them; a waiter left asleep while a worker is free is a lost wake-up. Each round is
//! bounded: a stranded waiter is recorded with the pool's stats, rescued, and the test fails.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use common::Rng;
use cylinder::{Lease, OwnedLease, Pool, PoolStats};

/// Keepers in line: `n` threads that check out with no deadline and send their lease back.
struct Keepers<W: Send + 'static> {
    rx: mpsc::Receiver<OwnedLease<W>>,
    threads: Vec<thread::JoinHandle<()>>,
    n: usize,
}

/// Spawns `n` keepers and waits until `n` more are in line than before.
fn keepers<W: Send + 'static>(pool: &Pool<W>, n: usize) -> Keepers<W> {
    keepers_then(pool, n, true)
}

/// Spawns `n` keepers; waits until `n` more are in line than before if `in_line`, else only
/// a few milliseconds (when others come and go from the line meanwhile).
fn keepers_then<W: Send + 'static>(pool: &Pool<W>, n: usize, in_line: bool) -> Keepers<W> {
    let before = pool.stats().waiters;
    let (tx, rx) = mpsc::channel();
    let threads = (0..n)
        .map(|_| {
            let (pool, tx) = (pool.clone(), tx.clone());
            thread::spawn(move || {
                let lease = pool
                    .checkout_owned_timeout(Duration::MAX)
                    .expect("a keeper with no deadline got an error");
                let _ = tx.send(lease);
            })
        })
        .collect();
    if !in_line {
        thread::sleep(Duration::from_millis(5));
        return Keepers { rx, threads, n };
    }
    let began = Instant::now();
    while pool.stats().waiters < before + n {
        assert!(
            began.elapsed() < Duration::from_secs(10),
            "keepers did not get in line: {:?}",
            pool.stats()
        );
        thread::yield_now();
    }
    Keepers { rx, threads, n }
}

/// Waits up to `limit` for every keeper to be served. A round that leaves some stranded
/// returns the stats seen then (after rescuing them by giving a worker back and forth).
#[allow(clippy::result_large_err)] // a test's failure report, built once
fn served<W: Send + 'static>(
    pool: &Pool<W>,
    keepers: Keepers<W>,
    limit: Duration,
) -> Result<Vec<OwnedLease<W>>, (usize, PoolStats, PoolStats)> {
    let mut got = Vec::new();
    let began = Instant::now();
    while got.len() < keepers.n && began.elapsed() < limit {
        if let Ok(lease) = keepers.rx.recv_timeout(Duration::from_millis(5)) {
            got.push(lease);
        }
    }
    let result = if got.len() < keepers.n {
        let missing = keepers.n - got.len();
        let stuck = pool.stats();
        // Make sure it is not a slow machine: look again a while later.
        thread::sleep(Duration::from_millis(500));
        while let Ok(lease) = keepers.rx.try_recv() {
            got.push(lease);
        }
        let later = pool.stats();
        if got.len() == keepers.n {
            Ok(())
        } else {
            Err((missing, stuck, later))
        }
    } else {
        Ok(())
    };
    if result.is_err() {
        // Rescue: a try_checkout and drop is a release, which wakes someone.
        let began = Instant::now();
        while got.len() < keepers.n && began.elapsed() < Duration::from_secs(10) {
            drop(pool.try_checkout());
            if let Ok(lease) = keepers.rx.recv_timeout(Duration::from_millis(5)) {
                got.push(lease);
            }
        }
        // (If still stranded the keepers' threads are left behind.)
        if got.len() == keepers.n {
            for t in keepers.threads {
                t.join().unwrap();
            }
        }
    } else {
        for t in keepers.threads {
            t.join().unwrap();
        }
    }
    match result {
        Ok(()) => Ok(got),
        Err(e) => Err(e),
    }
}

fn quiet<W: Send + 'static>(pool: &Pool<W>, size: usize, what: &str) {
    let ok = common::eventually(Duration::from_secs(5), || {
        let s = pool.stats();
        s.waiters == 0 && s.starting == 0 && s.size == size && s.free + s.leased == s.size
    });
    assert!(ok, "{what}: not quiet: {:?}", pool.stats());
}

const FIFOS: [(&str, Duration); 3] = [
    ("zero", Duration::ZERO),
    ("1ms", Duration::from_millis(1)),
    ("never", Duration::MAX),
];

/// N holders (N above the stripe count, so some release through the shared stripe's queue
/// push) release at once, each taking a worker back with `try_checkout` a few times and giving
/// it back again (the releasing thread re-taking its worker, which the change is for); N
/// keepers in line; one lease kept by this thread all along.
fn burst(fifo: Duration, what: &str, rounds: u64) {
    const N: usize = 24;
    for round in 0..rounds {
        let pool = Pool::builder()
            .size(N + 1)
            .fifo_after(fifo)
            .build(|| Ok(()))
            .unwrap();
        let kept = pool.checkout().unwrap();
        let gate = Arc::new(Barrier::new(N + 1));
        let go = Arc::new(Barrier::new(N + 1));
        let holders: Vec<_> = (0..N)
            .map(|i| {
                let (pool, gate, go) = (pool.clone(), gate.clone(), go.clone());
                let mut rng = Rng::new(round * 1000 + i as u64 + 1);
                thread::spawn(move || {
                    let lease = pool.checkout_owned().unwrap();
                    gate.wait();
                    go.wait();
                    drop(lease);
                    for _ in 0..rng.below(4) {
                        if let Ok(again) = pool.try_checkout() {
                            for _ in 0..rng.below(50) {
                                std::hint::spin_loop();
                            }
                            drop(again);
                        }
                    }
                })
            })
            .collect();
        gate.wait();
        let line = keepers(&pool, N);
        go.wait();
        for h in holders {
            h.join().unwrap();
        }
        match served(&pool, line, Duration::from_secs(3)) {
            Ok(leases) => drop(leases),
            Err((missing, stuck, later)) => panic!(
                "{what} round {round}: {missing} keepers stranded: {stuck:?}, 500ms later {later:?}"
            ),
        }
        drop(kept);
        quiet(&pool, N + 1, what);
    }
}

#[test]
fn burst_fifo_zero() {
    burst(FIFOS[0].1, "burst fifo zero", 60);
}

#[test]
fn burst_fifo_1ms() {
    burst(FIFOS[1].1, "burst fifo 1ms", 60);
}

#[test]
fn burst_fifo_never() {
    burst(FIFOS[2].1, "burst fifo never", 60);
}

/// A few keepers with no deadline among impatient waiters (timeouts 0..2ms, in a loop, that
/// release at once whatever they get): woken waiters time out on their way, or are served
/// and leave, while the keepers sleep.
#[test]
fn keepers_among_impatient_waiters() {
    const SIZE: usize = 3;
    for (name, fifo) in FIFOS {
        for round in 0..40u64 {
            let pool = Pool::builder()
                .size(SIZE)
                .fifo_after(fifo)
                .build(|| Ok(()))
                .unwrap();
            let held: Vec<OwnedLease<()>> =
                (0..SIZE).map(|_| pool.checkout_owned().unwrap()).collect();
            let stop = Arc::new(AtomicBool::new(false));
            let impatient: Vec<_> = (0..6)
                .map(|i| {
                    let (pool, stop) = (pool.clone(), stop.clone());
                    let mut rng = Rng::new(round * 77 + i + 1);
                    thread::spawn(move || {
                        while !stop.load(Ordering::Relaxed) {
                            let t = Duration::from_micros(rng.below(2000));
                            if let Ok(lease) = pool.checkout_timeout(t) {
                                for _ in 0..rng.below(200) {
                                    std::hint::spin_loop();
                                }
                                drop(lease);
                            }
                        }
                    })
                })
                .collect();
            let line = keepers(&pool, SIZE);
            let mut rng = Rng::new(round + 5);
            let releasers: Vec<_> = held
                .into_iter()
                .map(|lease| {
                    let delay = Duration::from_micros(rng.below(3000));
                    thread::spawn(move || {
                        thread::sleep(delay);
                        drop(lease)
                    })
                })
                .collect();
            for r in releasers {
                r.join().unwrap();
            }
            let result = served(&pool, line, Duration::from_secs(5));
            stop.store(true, Ordering::Relaxed);
            for t in impatient {
                t.join().unwrap();
            }
            match result {
                Ok(leases) => drop(leases),
                Err((missing, stuck, later)) => panic!(
                    "impatient fifo {name} round {round}: {missing} keepers stranded: {stuck:?}, later {later:?}"
                ),
            }
            quiet(&pool, SIZE, "impatient");
        }
    }
}

/// The checkout check fails now and then: a woken waiter that took a worker leaves the line,
/// finds it unfit (retired, a restart claimed) and gets back in line. Starts are a little
/// slow and sometimes fail.
#[test]
fn keepers_with_failing_checks_and_flaky_starts() {
    const N: usize = 6;
    for (name, fifo) in FIFOS {
        for round in 0..30u64 {
            let checks = Arc::new(AtomicU64::new(round * 31));
            let starts = Arc::new(AtomicU64::new(round * 17));
            let pool = Pool::builder()
                .size(N)
                .fifo_after(fifo)
                .reconnect_delay(Duration::from_millis(1))
                .test_on_checkout({
                    let checks = checks.clone();
                    move |_: &mut ()| {
                        let n = checks.fetch_add(1, Ordering::Relaxed);
                        // About a quarter fail.
                        n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 62 != 0
                    }
                })
                .build_unchecked({
                    let starts = starts.clone();
                    move || {
                        let n = starts.fetch_add(1, Ordering::Relaxed);
                        thread::sleep(Duration::from_micros(50 * (n % 4)));
                        if n % 11 == 5 {
                            return Err("flaky start".into());
                        }
                        Ok(())
                    }
                })
                .unwrap();
            // Held leases: check out until we hold N (failed checks are retried within the
            // default timeout).
            let mut held = Vec::new();
            let began = Instant::now();
            while held.len() < N {
                assert!(
                    began.elapsed() < Duration::from_secs(60),
                    "round {round}: could not hold {N} leases: {:?}",
                    pool.stats()
                );
                if let Ok(l) = pool.checkout_owned_timeout(Duration::from_secs(5)) {
                    held.push(l);
                }
            }
            let line = keepers(&pool, N);
            let releasers: Vec<_> = held
                .into_iter()
                .map(|lease| thread::spawn(move || drop(lease)))
                .collect();
            for r in releasers {
                r.join().unwrap();
            }
            match served(&pool, line, Duration::from_secs(5)) {
                Ok(leases) => drop(leases),
                Err((missing, stuck, later)) => panic!(
                    "failing checks fifo {name} round {round}: {missing} keepers stranded: {stuck:?}, later {later:?}"
                ),
            }
            quiet(&pool, N, "failing checks");
        }
    }
}

/// Holders release, discard or take their workers; a resizer moves the size around and back.
#[test]
fn keepers_with_discards_takes_and_resizes() {
    const N: usize = 6;
    for (name, fifo) in FIFOS {
        for round in 0..30u64 {
            let pool = Pool::builder()
                .size(N)
                .min_idle(0)
                .fifo_after(fifo)
                .build(|| Ok(()))
                .unwrap();
            let held: Vec<OwnedLease<()>> =
                (0..N).map(|_| pool.checkout_owned().unwrap()).collect();
            let line = keepers(&pool, N);
            let mut rng = Rng::new(round * 3 + 11);
            let releasers: Vec<_> = held
                .into_iter()
                .map(|lease| {
                    let how = rng.below(4);
                    thread::spawn(move || match how {
                        0 => OwnedLease::discard(lease),
                        1 => OwnedLease::take(lease),
                        _ => drop(lease),
                    })
                })
                .collect();
            let resizer = {
                let pool = pool.clone();
                let mut rng = Rng::new(round + 99);
                thread::spawn(move || {
                    for _ in 0..4 {
                        let size = N - 2 + rng.below(5) as usize;
                        pool.resize(size).unwrap();
                        thread::sleep(Duration::from_micros(rng.below(300)));
                    }
                    pool.resize(N).unwrap();
                })
            };
            for r in releasers {
                r.join().unwrap();
            }
            resizer.join().unwrap();
            match served(&pool, line, Duration::from_secs(5)) {
                Ok(leases) => drop(leases),
                Err((missing, stuck, later)) => panic!(
                    "discards/resizes fifo {name} round {round}: {missing} keepers stranded: {stuck:?}, later {later:?}"
                ),
            }
            quiet(&pool, N, "discards/resizes");
        }
    }
}

/// Overflow: size 2 plus 4 overflow all held; 6 keepers in line; all released at once. The
/// overflow workers go to waiters (`hand`) or are closed and restarted for them.
#[test]
fn keepers_with_overflow() {
    const SIZE: usize = 2;
    const OVER: usize = 4;
    for (name, fifo) in FIFOS {
        for round in 0..40u64 {
            let pool = Pool::builder()
                .size(SIZE)
                .max_overflow(OVER)
                .fifo_after(fifo)
                .build(|| Ok(()))
                .unwrap();
            let held: Vec<OwnedLease<()>> = (0..SIZE + OVER)
                .map(|_| pool.checkout_owned_timeout(Duration::from_secs(5)).unwrap())
                .collect();
            let line = keepers(&pool, SIZE + OVER);
            let releasers: Vec<_> = held
                .into_iter()
                .map(|lease| thread::spawn(move || drop(lease)))
                .collect();
            for r in releasers {
                r.join().unwrap();
            }
            match served(&pool, line, Duration::from_secs(5)) {
                Ok(leases) => drop(leases),
                Err((missing, stuck, later)) => panic!(
                    "overflow fifo {name} round {round}: {missing} keepers stranded: {stuck:?}, later {later:?}"
                ),
            }
            let ok = common::eventually(Duration::from_secs(5), || {
                let s = pool.stats();
                s.waiters == 0 && s.starting == 0 && s.size == SIZE && s.free == SIZE
            });
            assert!(ok, "overflow not quiet: {:?}", pool.stats());
        }
    }
}

/// A hot thread takes its worker back straight after each release, while waiters that
/// release at once (a chain) and keepers wait. Once the hot thread stops, every keeper is
/// served.
#[test]
fn hot_rereleaser_then_keepers() {
    const SIZE: usize = 2;
    for (name, fifo) in FIFOS {
        for round in 0..20u64 {
            let pool = Pool::builder()
                .size(SIZE)
                .fifo_after(fifo)
                .build(|| Ok(()))
                .unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let hot: Vec<_> = (0..2)
                .map(|_| {
                    let (pool, stop) = (pool.clone(), stop.clone());
                    thread::spawn(move || {
                        while !stop.load(Ordering::Relaxed) {
                            if let Ok(l) = pool.checkout_timeout(Duration::from_millis(50)) {
                                drop(l);
                            }
                        }
                    })
                })
                .collect();
            let chain: Vec<_> = (0..8)
                .map(|_| {
                    let pool = pool.clone();
                    thread::spawn(move || {
                        for _ in 0..20 {
                            drop(pool.checkout_timeout(Duration::MAX).unwrap());
                        }
                    })
                })
                .collect();
            thread::sleep(Duration::from_millis(5));
            let line = keepers_then(&pool, SIZE, false);
            thread::sleep(Duration::from_millis(2 + round % 5));
            stop.store(true, Ordering::Relaxed);
            for h in hot {
                h.join().unwrap();
            }
            // The keepers hold every worker once served: the chain waits for them.
            match served(&pool, line, Duration::from_secs(5)) {
                Ok(leases) => drop(leases),
                Err((missing, stuck, later)) => panic!(
                    "hot fifo {name} round {round}: {missing} keepers stranded: {stuck:?}, later {later:?}"
                ),
            }
            let chain_done = common::eventually(Duration::from_secs(10), || {
                chain.iter().all(|c| c.is_finished())
            });
            assert!(
                chain_done,
                "fifo {name} round {round}: the chain of waiters hung: {:?}",
                pool.stats()
            );
            for c in chain {
                c.join().unwrap();
            }
            quiet(&pool, SIZE, "hot");
        }
    }
}

/// Hundreds of waiters, each checks out with no deadline and gives its worker back at once.
/// (500 threads at a time: a CI container's thread limit must not be what fails.)
#[test]
fn hundreds_of_waiters_chain() {
    const SIZE: usize = 2;
    const THREADS: usize = 500;
    for (name, fifo) in FIFOS {
        let pool = Pool::builder()
            .size(SIZE)
            .fifo_after(fifo)
            .build(|| Ok(()))
            .unwrap();
        let held: Vec<OwnedLease<()>> = (0..SIZE).map(|_| pool.checkout_owned().unwrap()).collect();
        let done = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                let (pool, done) = (pool.clone(), done.clone());
                thread::Builder::new()
                    .stack_size(64 * 1024)
                    .spawn(move || {
                        let l = pool.checkout_timeout(Duration::MAX).unwrap();
                        drop(l);
                        done.fetch_add(1, Ordering::SeqCst);
                    })
                    .unwrap()
            })
            .collect();
        // Let most of them get in line.
        common::eventually(Duration::from_secs(5), || {
            pool.stats().waiters >= THREADS - 10
        });
        drop(held);
        let finished = common::eventually(Duration::from_secs(30), || {
            done.load(Ordering::SeqCst) == THREADS
        });
        assert!(
            finished,
            "fifo {name}: {} of {THREADS} done: {:?}",
            done.load(Ordering::SeqCst),
            pool.stats()
        );
        for t in threads {
            t.join().unwrap();
        }
        quiet(&pool, SIZE, "thousands");
    }
}

/// Callbacks that call back into the pool: `reset` and `is_broken` check out (non-blocking)
/// and give back, the event hook checks out with a zero timeout, while keepers wait.
#[test]
fn reentrant_callbacks_with_keepers() {
    const N: usize = 4;
    for (name, fifo) in FIFOS {
        for round in 0..30u64 {
            let cell: Arc<OnceLock<Pool<()>>> = Arc::new(OnceLock::new());
            let calls = Arc::new(AtomicU64::new(round));
            let pool = Pool::builder()
                .size(N)
                .fifo_after(fifo)
                .reset({
                    let (cell, calls) = (cell.clone(), calls.clone());
                    move |_: &mut ()| -> Result<(), cylinder::BoxError> {
                        if let Some(pool) = cell.get() {
                            if calls.fetch_add(1, Ordering::Relaxed) % 2 == 0 {
                                drop(pool.try_checkout());
                            }
                        }
                        Ok(())
                    }
                })
                .is_broken({
                    let (cell, calls) = (cell.clone(), calls.clone());
                    move |_: &mut ()| {
                        let n = calls.fetch_add(1, Ordering::Relaxed);
                        if let Some(pool) = cell.get() {
                            if n % 3 == 0 {
                                drop(pool.checkout_timeout(Duration::ZERO));
                            }
                        }
                        n % 5 == 1
                    }
                })
                .on_event({
                    let cell = cell.clone();
                    // Only on starts: a checkout from the hook on `Overload` would recurse.
                    move |event| {
                        if !matches!(
                            event,
                            cylinder::Event::WorkerStarted | cylinder::Event::WorkerRestarted
                        ) {
                            return;
                        }
                        if let Some(pool) = cell.get() {
                            drop(pool.checkout_timeout(Duration::ZERO));
                        }
                    }
                })
                .build(|| Ok(()))
                .unwrap();
            let _ = cell.set(pool.clone());
            let held: Vec<OwnedLease<()>> = (0..N)
                .map(|_| pool.checkout_owned_timeout(Duration::from_secs(5)).unwrap())
                .collect();
            let line = keepers(&pool, N);
            let releasers: Vec<_> = held
                .into_iter()
                .map(|lease| thread::spawn(move || drop(lease)))
                .collect();
            for r in releasers {
                r.join().unwrap();
            }
            let result = served(&pool, line, Duration::from_secs(5));
            match result {
                Ok(leases) => drop(leases),
                Err((missing, stuck, later)) => panic!(
                    "reentrant fifo {name} round {round}: {missing} keepers stranded: {stuck:?}, later {later:?}"
                ),
            }
            quiet(&pool, N, "reentrant");
            pool.close();
        }
    }
}

/// Keepers mixed with waiters that `Lease::take` or discard what they get (each of those is
/// a restart that must reach the line).
#[test]
fn waiters_that_take_or_discard_with_keepers() {
    const N: usize = 3;
    for (name, fifo) in FIFOS {
        for round in 0..30u64 {
            let pool = Pool::builder()
                .size(N)
                .fifo_after(fifo)
                .build(|| Ok(()))
                .unwrap();
            let held: Vec<OwnedLease<()>> =
                (0..N).map(|_| pool.checkout_owned().unwrap()).collect();
            let others: Vec<_> = (0..6)
                .map(|i| {
                    let pool = pool.clone();
                    thread::spawn(move || {
                        let lease = pool.checkout_timeout(Duration::MAX).unwrap();
                        match i % 3 {
                            0 => Lease::discard(lease),
                            1 => Lease::take(lease),
                            _ => drop(lease),
                        }
                    })
                })
                .collect();
            common::eventually(Duration::from_secs(5), || pool.stats().waiters >= 6);
            let line = keepers(&pool, N);
            let mut rng = Rng::new(round + 3);
            let releasers: Vec<_> = held
                .into_iter()
                .map(|lease| {
                    let d = Duration::from_micros(rng.below(500));
                    thread::spawn(move || {
                        thread::sleep(d);
                        drop(lease)
                    })
                })
                .collect();
            for r in releasers {
                r.join().unwrap();
            }
            let result = served(&pool, line, Duration::from_secs(5));
            let others_done = common::eventually(Duration::from_secs(5), || {
                others.iter().all(|o| o.is_finished())
            });
            match result {
                Ok(leases) => drop(leases),
                Err((missing, stuck, later)) => panic!(
                    "take/discard fifo {name} round {round}: {missing} keepers stranded: {stuck:?}, later {later:?}"
                ),
            }
            assert!(
                others_done,
                "fifo {name} round {round}: other waiters hung: {:?}",
                pool.stats()
            );
            for o in others {
                o.join().unwrap();
            }
            quiet(&pool, N, "take/discard");
        }
    }
}

/// The reaper sweeps the free workers often (tiny `max_lifetime`/`idle_timeout`): a sweep may
/// take the very worker a waiter was woken for, and put it back or retire it (a restart),
/// while keepers wait. Slow starts under a `start_timeout`.
#[test]
fn keepers_while_the_reaper_sweeps_and_expires() {
    const N: usize = 4;
    for (name, fifo) in FIFOS {
        for round in 0..20u64 {
            let pool = Pool::builder()
                .size(N)
                .min_idle(1)
                .fifo_after(fifo)
                .max_lifetime(Duration::from_millis(15))
                .idle_timeout(Duration::from_millis(10))
                .start_timeout(Duration::from_millis(500))
                .build(|| {
                    thread::sleep(Duration::from_micros(300));
                    Ok(())
                })
                .unwrap();
            let held: Vec<OwnedLease<()>> = (0..N)
                .map(|_| pool.checkout_owned_timeout(Duration::from_secs(5)).unwrap())
                .collect();
            let line = keepers(&pool, N);
            let mut rng = Rng::new(round + 41);
            let releasers: Vec<_> = held
                .into_iter()
                .map(|lease| {
                    let d = Duration::from_micros(rng.below(30_000));
                    thread::spawn(move || {
                        thread::sleep(d);
                        drop(lease)
                    })
                })
                .collect();
            for r in releasers {
                r.join().unwrap();
            }
            match served(&pool, line, Duration::from_secs(5)) {
                Ok(leases) => drop(leases),
                Err((missing, stuck, later)) => panic!(
                    "reaper fifo {name} round {round}: {missing} keepers stranded: {stuck:?}, later {later:?}"
                ),
            }
        }
    }
}
