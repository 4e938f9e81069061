//! Adversarial tests for the waiting line and the starts claimed for it: lost wake-ups,
//! stranded waiters, starts that are lost or counted twice. Every test is bounded (timeouts
//! and watchdogs), and none asserts on speed.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use cylinder::{OwnedLease, Pool};

/// A small xorshift, seeded per call site: no dependency, reproducible enough.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let began = Instant::now();
    while began.elapsed() < limit {
        if f() {
            return true;
        }
        thread::sleep(Duration::from_millis(1));
    }
    f()
}

/// Runs `f` on its own thread; `None` if it did not finish within `limit`.
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).ok()
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
    const N: usize = 4;
    const ROUNDS: u64 = 100;
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
                assert!(began.elapsed() < Duration::from_secs(5), "a waiter did not register");
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
