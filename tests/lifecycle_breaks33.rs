//! The thirty-third pass: `Balancer<Pool<W>>::checkout_timeout` with every pool busy waits in
//! one pool's line while the other busy pools nudge it (commit 6738ff5). Each test's doc
//! comment says whether it found a bug ("Found.") or documents an attack that held ("Tried.").
//! The four found failed on that commit and are fixed: an overflow worker returned with a
//! balancer's waiter listening is kept free for it (closed once no one listens); a waiter
//! looking elsewhere is away from its line (nothing handed to it, no wake-up spent on it);
//! a pool nudges only as many listeners as it has free workers.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{busy_pools_with_a_slow_check, eventually, hold_all, line_with, numbered, within};
use cylinder::{Balancer, Error, OwnedLease, Pool};

/// Found. Two pools of size 1 with `max_overflow(1)`, each with both its workers (base and
/// overflow) leased by the test: every pool is busy. A balancer client waits (1.5 s) in one
/// pool's line, listening to the other. The test returns one lease of the other pool: the
/// promise (GUARANTEES.md, CHANGELOG: "takes a worker that any of the other pools frees
/// meanwhile") says the client takes it. Expected: served by the other pool within 1 s.
/// Happened: the release found the pool above its size and no waiter in *its own* line, so
/// `put_back` closed the worker (poolboy's overflow rule) without nudging; the listening
/// client was not served, and timed out after the full 1.5 s while the other pool had room
/// for a worker (1 open of its limit 2, nothing starting). Root cause: `Shared::put_back`
/// (src/pool/release.rs) asks only `waiters.hand` (its own line) before `close_above`; the
/// balancer's listeners (`Listeners`) are consulted only in `give_back`.
#[test]
fn an_overflow_worker_freed_in_a_listened_pool_serves_the_balancer_waiter() {
    let pools: Vec<Pool<usize>> = (0..2)
        .map(|n| numbered(n, 1).max_overflow(1).build(move || Ok(n)).unwrap())
        .collect();
    let mut held: Vec<Vec<Option<OwnedLease<usize>>>> = pools
        .iter()
        .map(|p| {
            vec![
                Some(p.checkout_owned().unwrap()),
                Some(p.checkout_owned().unwrap()),
            ]
        })
        .collect();
    for p in &pools {
        assert_eq!(p.stats().leased, 2, "{:?}", p.stats());
    }
    let balancer = Balancer::over_pools(pools.clone()).unwrap();
    let client = {
        let balancer = balancer.clone();
        thread::spawn(move || {
            let began = Instant::now();
            let got = balancer.checkout_timeout(Duration::from_millis(1500));
            (got.map(|lease| *lease), began.elapsed())
        })
    };
    let waited_in = line_with(&pools, 1);
    let other = 1 - waited_in;
    thread::sleep(Duration::from_millis(50));
    drop(held[other][1].take());
    let (got, took) = client.join().unwrap();
    let stats = pools[other].stats();
    assert!(
        matches!(got, Ok(n) if n == other),
        "waited in pool {waited_in}; pool {other} freed a worker at ~50 ms; the client got \
         {got:?} after {took:?}; pool {other} then: {stats:?}"
    );
    drop(held);
}

/// This thread's voluntary context switches so far (each sleep on a lock or condvar that
/// really blocked counts one), from /proc/thread-self/status.
fn voluntary_switches() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/thread-self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|n| n.trim().parse().ok())
}

/// `clients` threads, each taking `rounds` leases from `balancer` one after the other (held
/// 1 ms each): the voluntary context switches they made in all, and the leases served.
fn churn(balancer: &Balancer<Pool<usize>>, clients: usize, rounds: usize) -> (u64, usize) {
    let start = Arc::new(std::sync::Barrier::new(clients));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (balancer, start) = (balancer.clone(), start.clone());
            thread::spawn(move || {
                start.wait();
                let before = voluntary_switches().unwrap_or(0);
                let mut served = 0;
                for _ in 0..rounds {
                    if let Ok(lease) = balancer.checkout_timeout(Duration::from_secs(20)) {
                        served += 1;
                        thread::sleep(Duration::from_millis(1));
                        drop(lease);
                    }
                }
                (voluntary_switches().unwrap_or(0) - before, served)
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().unwrap())
        .fold((0, 0), |(s, n), (s2, n2)| (s + s2, n + n2))
}

/// Found. A thundering herd: two pools of size 1; pool 0's worker is held for the whole test
/// (it never frees one), and 24 clients take 10 leases each from a balancer over both (each
/// held 1 ms). Every client that waits in pool 0's line listens to pool 1, and each release
/// in pool 1 nudges every one of them (`Listeners::nudge_each`), though one worker can serve
/// one. Measured by the clients' own voluntary context switches (/proc/thread-self/status):
/// the same 24 x 10 leases from a balancer over pool 1 alone cost about 2 switches a lease;
/// over both pools about 23 a lease (clients - 1: every waiter wakes at every release, looks,
/// finds nothing and sleeps again), so the work per release grows with the number of waiters,
/// where the line itself wakes only as many waiters as workers are queued (waitlist.rs module
/// doc). Expected: at most 3x the single-pool switches (+ 2 a lease). Root cause:
/// `Listeners::nudge_each` (src/pool/listeners.rs) rings every listener at every worker kept
/// free, and `WaitList::nudge` wakes each; nothing counts the nudged waiters on their way.
#[test]
fn a_release_in_a_listened_pool_wakes_every_balancer_waiter() {
    if voluntary_switches().is_none() {
        return;
    }
    let (clients, rounds) = (24, 10);
    let solo = numbered(1, 1).build(|| Ok(1)).unwrap();
    let control = Balancer::over_pools([solo]).unwrap();
    let (alone, served_alone) = churn(&control, clients, rounds);
    assert_eq!(served_alone, clients * rounds);
    let a = numbered(0, 1).build(|| Ok(0)).unwrap();
    let b = numbered(1, 1).build(|| Ok(1)).unwrap();
    let a_held = a.checkout_owned().unwrap();
    let balancer = Balancer::over_pools([a.clone(), b.clone()]).unwrap();
    let (herd, served) = churn(&balancer, clients, rounds);
    assert_eq!(served, clients * rounds);
    let leases = served as u64;
    assert!(
        herd <= 3 * alone + 2 * leases,
        "{leases} leases: {alone} context switches from a balancer over one pool \
         ({:.1} a lease), {herd} over two pools, one of them never freeing a worker \
         ({:.1} a lease)",
        alone as f64 / leases as f64,
        herd as f64 / leases as f64
    );
    drop(a_held);
}

/// The scenario of the two `..._holds_back_...` tests: a balancer client W waits in pool
/// X's line (X and Y of size 1, both leased), a plain client P waits behind it
/// (`checkout_timeout(p_timeout)` on X). Y frees its worker: W is nudged and looks there, and
/// Y's `test_on_checkout` takes 1.5 s. 50 ms into that look X's worker is released. Returns
/// P's result and wait, X's stats 100 ms after the release, and W's result.
fn held_back_by_a_look_elsewhere(
    fifo_after: Duration,
    p_timeout: Duration,
) -> (
    Result<usize, Error>,
    Duration,
    cylinder::PoolStats,
    Result<usize, Error>,
    usize,
) {
    let slow_pool = Arc::new(AtomicUsize::new(usize::MAX));
    let (pools, mut held) = busy_pools_with_a_slow_check(2, &slow_pool, fifo_after);
    let balancer = Balancer::over_pools(pools.clone()).unwrap();
    let w = {
        let balancer = balancer.clone();
        thread::spawn(move || {
            balancer
                .checkout_timeout(Duration::from_secs(4))
                .map(|l| *l)
        })
    };
    let x = line_with(&pools, 1);
    let y = 1 - x;
    slow_pool.store(y, Ordering::SeqCst);
    let p = {
        let pool = pools[x].clone();
        thread::spawn(move || {
            let began = Instant::now();
            let got = pool.checkout_owned_timeout(p_timeout).map(|l| *l);
            (got, began.elapsed())
        })
    };
    assert!(eventually(Duration::from_secs(2), || pools[x]
        .stats()
        .waiters
        == 2));
    thread::sleep(Duration::from_millis(20));
    drop(held[y].take());
    thread::sleep(Duration::from_millis(50));
    drop(held[x].take());
    thread::sleep(Duration::from_millis(100));
    let meanwhile = pools[x].stats();
    let (got, took) = p.join().unwrap();
    let w_got = w.join().unwrap();
    (got, took, meanwhile, w_got, x)
}

/// Found. `held_back_by_a_look_elsewhere` with the default `fifo_after` (1 ms): X's release
/// hands its worker straight to W, the longest waiter, which is not asleep but inside Y's
/// 1.5 s check; the worker stays reserved for W, unused, until that check ends. Expected: P
/// (waiting in X's line, X's worker released) served at ~50 ms. Happened: P got `Timeout`
/// after its 600 ms; X's stats 100 ms after the release read `free: 0, leased: 0` with
/// `size: 1` (the worker in no count, held by a waiter busy in another pool); W then took
/// Y's worker and X's went back. Root cause: `WaitList::wait` (src/pool/waitlist.rs) runs
/// the `Elsewhere` look (user code: the other pool's checks, via `checkout_free_owned`) while
/// its entry stays in line as an unserved waiter, so `WaitList::offer`'s fifo hand-off gives
/// it the worker; it is put back (`on_left`) only when the look ends.
#[test]
fn a_balancer_waiter_looking_elsewhere_holds_back_a_handed_worker_from_the_line() {
    let (got, took, meanwhile, w_got, x) =
        held_back_by_a_look_elsewhere(Duration::from_millis(1), Duration::from_millis(600));
    assert!(
        got.is_ok(),
        "P (in pool {x}'s line behind the balancer client) got {got:?} after {took:?}; pool \
         {x}'s worker was released ~50 ms into the balancer client's look at the other pool; \
         100 ms later pool {x}: {meanwhile:?}; the balancer client got {w_got:?}"
    );
}

/// Found. As above with `fifo_after(60 s)` (no hand-off) and P waiting up to 3 s: X's
/// release keeps its worker free and `WaitList::dispatch` wakes the longest waiter not yet
/// woken, W, which is inside Y's 1.5 s check, and counts it as on its way, so P is not
/// woken. Expected: P served at ~50 ms after the release (allowed: 1 s). Happened: P slept
/// ~1.5 s, until W's look ended and W left passing its wake-up on, while X had a worker free
/// all along (`free: 1, waiters: 2` 100 ms after the release); with a 600 ms timeout P only
/// found it at its deadline. Root cause: the same `Elsewhere` look in
/// `WaitList::wait`, run with the entry in line and woken by `dispatch` as if it were on its
/// way to the free worker.
#[test]
fn a_balancer_waiter_looking_elsewhere_holds_back_a_free_worker_from_the_line() {
    let (got, took, meanwhile, w_got, x) =
        held_back_by_a_look_elsewhere(Duration::from_secs(60), Duration::from_secs(3));
    assert!(
        got.is_ok() && took < Duration::from_secs(1),
        "P (in pool {x}'s line behind the balancer client) got {got:?} after {took:?}; pool \
         {x}'s worker was released ~50 ms into the balancer client's look at the other pool; \
         100 ms later pool {x}: {meanwhile:?}; the balancer client got {w_got:?}"
    );
}

/// Asserts every pool is quiet and whole: nothing leased, waiting or starting, all free.
fn quiet(pools: &[Pool<usize>], what: &str) {
    for (n, pool) in pools.iter().enumerate() {
        assert!(
            eventually(Duration::from_secs(3), || {
                let s = pool.stats();
                s.waiters == 0 && s.starting == 0 && s.leased == 0 && s.free == s.size
            }),
            "{what}: pool {n} not whole: {:?}",
            pool.stats()
        );
    }
}

/// Tried. Lost nudges: 150 rounds with two or three pools of size 1, all leased; a balancer
/// client waits (5 s) while the test frees one worker (pool chosen at random, some rounds
/// two at once) after a random 0-400 us, before, while or after the client registers and
/// listens, with `fifo_after(ZERO)` on half the rounds. Every client was served (within
/// 2 s), by a pool whose worker was freed, no pool counted a timeout, and at the end every
/// pool was whole (`free == size`, nothing leased or waiting).
#[test]
fn a_worker_freed_at_any_moment_of_the_balancer_wait_serves_it() {
    let mut rng = common::Rng::new(33);
    for round in 0..150 {
        let count = 2 + (round % 2);
        let fifo = if round % 4 < 2 {
            Duration::ZERO
        } else {
            Duration::from_millis(1)
        };
        let pools: Vec<Pool<usize>> = (0..count)
            .map(|n| {
                numbered(n, 1)
                    .fifo_after(fifo)
                    .build(move || Ok(n))
                    .unwrap()
            })
            .collect();
        let mut held = hold_all(&pools);
        let balancer = Balancer::over_pools(pools.clone()).unwrap();
        let client = {
            let balancer = balancer.clone();
            thread::spawn(move || {
                let began = Instant::now();
                let got = balancer.checkout_timeout(Duration::from_secs(5));
                (got, began.elapsed())
            })
        };
        let spin_until = Instant::now() + Duration::from_micros(rng.below(400));
        while Instant::now() < spin_until {
            std::hint::spin_loop();
        }
        let first = rng.below(count as u64) as usize;
        drop(held[first].take());
        if round % 3 == 0 {
            drop(held[(first + 1) % count].take());
        }
        let (got, took) = client.join().unwrap();
        let lease = got.unwrap_or_else(|e| panic!("round {round}: {e:?}"));
        assert!(
            took < Duration::from_secs(2),
            "round {round}: served after {took:?}"
        );
        assert!(
            held[*lease].is_none(),
            "round {round}: served by busy pool {}",
            *lease
        );
        drop(lease);
        drop(held);
        assert_eq!(pools.iter().map(|p| p.stats().timeouts).sum::<u64>(), 0);
        quiet(&pools, &format!("round {round}"));
    }
}

/// A worker counting itself out of `live` when dropped.
struct Counted(usize, Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.1.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Tried. Endings: two pools of `Counted` workers, all leased; a balancer client waits and
/// listens; (a) it times out, (b) it is served elsewhere while its own line hands it a worker
/// (`fifo_after(ZERO)`, both pools freed at once), (c) the pool it waits in closes. After each,
/// the leases, the balancer and every pool handle are dropped: every worker was dropped
/// within 3 s (no listener left registered holding a pool's `Shared`, no cycle).
#[test]
fn pools_a_balancer_waiter_listened_to_go_when_every_handle_goes() {
    for case in 0..3 {
        let live = Arc::new(AtomicUsize::new(0));
        let pools: Vec<Pool<Counted>> = (0..2)
            .map(|n| {
                let live = live.clone();
                Pool::builder()
                    .size(1)
                    .fifo_after(Duration::ZERO)
                    .build(move || {
                        live.fetch_add(1, Ordering::SeqCst);
                        Ok(Counted(n, live.clone()))
                    })
                    .unwrap()
            })
            .collect();
        let mut held = hold_all(&pools);
        let balancer = Balancer::over_pools(pools.clone()).unwrap();
        let client = {
            let balancer = balancer.clone();
            thread::spawn(move || {
                balancer
                    .checkout_timeout(Duration::from_millis(400))
                    .map(|l| l.0)
            })
        };
        assert!(eventually(Duration::from_secs(2), || pools
            .iter()
            .any(|p| p.stats().waiters == 1)));
        let waited_in = pools.iter().position(|p| p.stats().waiters == 1).unwrap();
        match case {
            0 => {}
            1 => {
                let other = held[1 - waited_in].take();
                let own = held[waited_in].take();
                drop((other, own));
            }
            _ => pools[waited_in].close(),
        }
        let got = client.join().unwrap();
        match case {
            0 | 2 => assert!(
                matches!(got, Err(Error::Timeout { .. })),
                "case {case}: {got:?}"
            ),
            _ => assert!(got.is_ok(), "case {case}: {got:?}"),
        }
        drop(held);
        drop(balancer);
        drop(pools);
        assert!(
            eventually(Duration::from_secs(3), || live.load(Ordering::SeqCst) == 0),
            "case {case}: {} workers still alive after every handle went",
            live.load(Ordering::SeqCst)
        );
    }
}

/// Tried. User code re-entering from inside the look elsewhere: the other pool's
/// `test_on_checkout` (run by the balancer client's look, its own line let go) closes the
/// pool the client waits in, takes a nested balancer checkout (50 ms: it times out, every
/// pool busy) and reads `stats()` of both pools. No deadlock (all within 5 s); the client
/// got the worker checked; the closed pool has no waiter left.
#[test]
fn a_check_in_the_look_elsewhere_that_reenters_the_balancer_and_closes_the_line() {
    let balancer_slot: Arc<std::sync::Mutex<Option<Balancer<Pool<usize>>>>> = Default::default();
    let target = Arc::new(AtomicUsize::new(usize::MAX));
    let nested = Arc::new(std::sync::Mutex::new(Vec::new()));
    let pools_slot: Arc<std::sync::Mutex<Vec<Pool<usize>>>> = Default::default();
    let pools: Vec<Pool<usize>> = (0..2)
        .map(|n| {
            let (slot, target, nested, pools_slot) = (
                balancer_slot.clone(),
                target.clone(),
                nested.clone(),
                pools_slot.clone(),
            );
            numbered(n, 1)
                .check_after_idle(Duration::ZERO)
                .test_on_checkout(move |_: &mut usize| {
                    if target.load(Ordering::SeqCst) == n {
                        target.store(usize::MAX, Ordering::SeqCst);
                        let pools = pools_slot.lock().unwrap().clone();
                        for pool in &pools {
                            let _ = pool.stats();
                        }
                        let balancer = slot.lock().unwrap().clone().unwrap();
                        let got = balancer.checkout_timeout(Duration::from_millis(50));
                        nested
                            .lock()
                            .unwrap()
                            .push(format!("{:?}", got.map(|l| *l)));
                        pools[1 - n].close();
                    }
                    true
                })
                .build(move || Ok(n))
                .unwrap()
        })
        .collect();
    *pools_slot.lock().unwrap() = pools.clone();
    let mut held = hold_all(&pools);
    let balancer = Balancer::over_pools(pools.clone()).unwrap();
    *balancer_slot.lock().unwrap() = Some(balancer.clone());
    let client = {
        let balancer = balancer.clone();
        thread::spawn(move || {
            balancer
                .checkout_timeout(Duration::from_secs(3))
                .map(|l| *l)
        })
    };
    let x = line_with(&pools, 1);
    target.store(1 - x, Ordering::SeqCst);
    let got = within(Duration::from_secs(5), move || {
        drop(held[1 - x].take());
        let got = client.join().unwrap();
        drop(held);
        got
    })
    .expect("deadlock: the client did not return within 5 s");
    assert_eq!(got.unwrap(), 1 - x);
    assert_eq!(pools[x].stats().waiters, 0);
    assert!(pools[x].stats().size <= 1);
    eprintln!("nested: {:?}", nested.lock().unwrap());
    *balancer_slot.lock().unwrap() = None;
    pools_slot.lock().unwrap().clear();
}

/// Tried. The time running out exactly as the client is served elsewhere: 120 rounds of a
/// 20 ms balancer checkout with both pools leased, the other pool's worker freed at 15-25 ms
/// (random), `fifo_after(ZERO)` on both. Each `Timeout` returned was counted once (the sum of
/// the pools' `timeouts` equals the timeouts returned), each success was counted as no
/// timeout, and every pool ended whole.
#[test]
fn a_timeout_racing_a_nudge_is_counted_exactly_once() {
    let mut rng = common::Rng::new(7);
    let mut returned = 0u64;
    let mut served = 0u64;
    for _ in 0..120 {
        let pools: Vec<Pool<usize>> = (0..2)
            .map(|n| {
                numbered(n, 1)
                    .fifo_after(Duration::ZERO)
                    .build(move || Ok(n))
                    .unwrap()
            })
            .collect();
        let mut held = hold_all(&pools);
        let balancer = Balancer::over_pools(pools.clone()).unwrap();
        let client = {
            let balancer = balancer.clone();
            thread::spawn(move || {
                balancer
                    .checkout_timeout(Duration::from_millis(20))
                    .map(|l| *l)
            })
        };
        let began = Instant::now();
        let at = Duration::from_micros(15_000 + rng.below(10_000));
        let victim = rng.below(2) as usize;
        while began.elapsed() < at {
            thread::sleep(Duration::from_micros(200));
        }
        drop(held[victim].take());
        match client.join().unwrap() {
            Ok(_) => served += 1,
            Err(Error::Timeout { .. }) => returned += 1,
            Err(e) => panic!("{e:?}"),
        }
        let counted: u64 = pools.iter().map(|p| p.stats().timeouts).sum();
        drop(held);
        quiet(&pools, "after the race");
        assert!(counted <= 1);
        returned -= counted; // what remains must be 0 after every round
        assert_eq!(returned, 0, "a Timeout returned with {counted} counted");
    }
    eprintln!("served {served} of 120");
}

/// Tried. A panic in the look elsewhere: the other pool's `test_on_checkout` panics (on
/// purpose) when the nudged balancer client looks there; the panic is contained (the worker
/// retired and replaced), the client waits on and is served by its own line's worker
/// released 100 ms later; no pool keeps a waiter, and both end whole. Also with
/// `Strategy::LeastLoaded` and the balancer's `max_queue_len(4)`.
#[test]
fn a_check_that_panics_in_the_look_elsewhere_is_contained() {
    common::quiet_panics();
    for least_loaded in [false, true] {
        let target = Arc::new(AtomicUsize::new(usize::MAX));
        let pools: Vec<Pool<usize>> = (0..2)
            .map(|n| {
                let target = target.clone();
                numbered(n, 1)
                    .check_after_idle(Duration::ZERO)
                    .test_on_checkout(move |_: &mut usize| {
                        if target.swap(usize::MAX, Ordering::SeqCst) == n {
                            panic!("a check that panics on purpose");
                        }
                        true
                    })
                    .build(move || Ok(n))
                    .unwrap()
            })
            .collect();
        let mut held = hold_all(&pools);
        let mut builder = Balancer::builder().max_queue_len(4);
        if least_loaded {
            builder = builder.strategy(cylinder::Strategy::LeastLoaded);
        }
        let balancer = builder.build_pools(pools.clone()).unwrap();
        let client = {
            let balancer = balancer.clone();
            thread::spawn(move || {
                balancer
                    .checkout_timeout(Duration::from_secs(3))
                    .map(|l| *l)
            })
        };
        let x = line_with(&pools, 1);
        target.store(1 - x, Ordering::SeqCst);
        drop(held[1 - x].take());
        thread::sleep(Duration::from_millis(100));
        drop(held[x].take());
        let got = client.join().unwrap();
        assert!(got.is_ok(), "{got:?}");
        drop(got);
        drop(held);
        quiet(&pools, "after a panicking check");
    }
}
