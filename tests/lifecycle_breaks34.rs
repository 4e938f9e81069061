//! The thirty-fourth pass: `Balancer<Pool<W>>::checkout_timeout` with every pool busy, as
//! reworked in 620e629 (a waiter looking elsewhere is away from its line; a pool nudges as
//! many listeners as it has free workers, those rung counting as on their way; an overflow
//! worker is kept free while anyone listens). Each test's doc comment says whether it found
//! a bug ("Found.") or documents an attack that held ("Tried."). The three found are fixed:
//! a nudge has states, and only a waiter in line that is rung and not yet looking counts as
//! on its way (one looking elsewhere, or served and out of its line, does not); a worker above
//! the size returned while its line's only waiter is away is kept for it.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{balancer_client, busy_pools_with_a_slow_check, eventually, line_with, numbered};
use cylinder::{Balancer, OwnedLease, Pool};

/// Found. Four pools of size 1, all leased; pool `s`'s `test_on_checkout` takes 1.5 s (then
/// passes) once armed. Two balancer clients: L1 (4 s) waits in pool x's line and listens to
/// the three others; then L2 (800 ms) waits in pool y's line (y may be x) and listens to its
/// others. s and f are two pools that neither waits in. The test frees s's worker: L1,
/// listening there longest, is nudged, looks at s and sits in s's 1.5 s check. 100 ms later
/// the test frees f's worker. Expected: f nudges L2 (L1 is busy in s's check, not on its way
/// to f) and L2 takes f's worker at once. Happened: f rang L1 again (longest listening
/// first; L1's nudge was cleared when it began its look, so f counted 0 listeners on their
/// way), counted it as on its way, and did not ring L2; L2 slept with f's worker free and
/// timed out after its 800 ms (f read `free: 1, leased: 0` 100 ms after its release); L1
/// took s's worker after the check and only its leaving (`listener_left`) rang L2, too
/// late. Root cause: `Listeners::nudge` (src/pool/listeners.rs) counts a rung listener as
/// on its way to this pool, but a listener inside its look (in another pool's check, user
/// code) only sees the ring once that look ends, and the look takes the other pool's worker.
#[test]
fn a_listener_busy_in_another_pools_check_is_not_on_its_way_to_this_one() {
    // The pool freed first is one neither client waits in: L1 looks there, in its check.
    second_listener_served_while_the_first_is_in_a_slow_check(4, |_x, rest| rest[0]);
}

/// The scenario of the tests above: `count` busy pools with a slow check; L1 (4 s) waits in
/// line x, then L2 (800 ms) in line y. The pool `first(x, rest)` picks (`rest`: the pools
/// neither waits in) is freed with its check slow (1.5 s), so L1 sits in that check; 100 ms
/// later a pool f of `rest` not freed yet is freed. L2 must take f's worker (L1 is not on
/// its way to it).
fn second_listener_served_while_the_first_is_in_a_slow_check(
    count: usize,
    first: impl Fn(usize, &[usize]) -> usize,
) {
    let slow = Arc::new(AtomicUsize::new(usize::MAX));
    let (pools, mut held) = busy_pools_with_a_slow_check(count, &slow, Duration::from_millis(1));
    let balancer = Balancer::over_pools(pools.clone()).unwrap();
    let l1 = balancer_client(balancer.clone(), Duration::from_secs(4));
    let x = line_with(&pools, 1);
    let l2 = balancer_client(balancer.clone(), Duration::from_millis(800));
    assert!(eventually(Duration::from_secs(2), || pools
        .iter()
        .map(|p| p.stats().waiters)
        .sum::<usize>()
        == 2));
    let y = if pools[x].stats().waiters == 2 {
        x
    } else {
        (0..count)
            .find(|&i| i != x && pools[i].stats().waiters == 1)
            .unwrap()
    };
    let rest: Vec<usize> = (0..count).filter(|&i| i != x && i != y).collect();
    let s = first(x, &rest);
    let f = *rest.iter().find(|&&i| i != s).unwrap();
    thread::sleep(Duration::from_millis(30));
    slow.store(s, Ordering::SeqCst);
    drop(held[s].take());
    thread::sleep(Duration::from_millis(100));
    drop(held[f].take());
    thread::sleep(Duration::from_millis(100));
    let f_then = pools[f].stats();
    let (l2_got, l2_took) = l2.join().unwrap();
    let (l1_got, l1_took) = l1.join().unwrap();
    assert!(
        matches!(l2_got, Ok(got) if got == f),
        "L1 in line {x}, L2 in line {y}; pool {s} freed (slow check), pool {f} freed 100 ms \
         later; L2 got {l2_got:?} after {l2_took:?} (pool {f} 100 ms after its release: \
         {f_then:?}); L1 got {l1_got:?} after {l1_took:?}"
    );
    drop(held);
}

/// Found. Two pools of size 1 with `max_overflow(1)`, both workers of each leased (base and
/// overflow); once armed, the pools' starts take 3 s and pool y's `test_on_checkout` takes 1 s
/// and then fails (the first version of this test armed every pool's check, so W's check of
/// the worker kept for it failed too). A balancer client W waits (1.5 s) in pool x's line and listens to pool y.
/// The test arms both and returns y's overflow worker: kept free for W (it listens), W is
/// nudged, is away from x's line, looking at y (1 s check). 100 ms later the test returns
/// x's overflow worker to x, where W is the only waiter. Expected: the worker serves W
/// (handed, or kept until W is back, as a worker within the size is). Happened: `put_back`
/// found x above its size, `hand` found no waiter to hand it to (W is away), no one
/// listens to x, so it was closed; W came back from y empty-handed (the check failed) and
/// waited for a fresh start in x (3 s): it timed out after its 1.5 s, x having had a worker
/// returned to its line at ~130 ms. Root cause: `Shared::put_back` (src/pool/release.rs)
/// asks `WaitList::hand`, which skips an `away` entry (`Entry::may_serve`), then closes the
/// overflow worker (`close_above`); `closed_above` sees no unserved waiter (the away one
/// counts as served) and claims no start.
#[test]
fn an_overflow_worker_returned_while_the_only_waiter_looks_elsewhere_is_not_closed() {
    let armed = Arc::new(AtomicUsize::new(0));
    let pools: Vec<Pool<usize>> = (0..2)
        .map(|n| {
            let (a1, a2) = (armed.clone(), armed.clone());
            numbered(n, 1)
                .max_overflow(1)
                .check_after_idle(Duration::ZERO)
                .test_on_checkout(move |_: &mut usize| {
                    // Only pool y's check (armed with y + 1) is slow and fails.
                    if a1.load(Ordering::SeqCst) == n + 1 {
                        thread::sleep(Duration::from_millis(1000));
                        return false;
                    }
                    true
                })
                .build_unchecked(move || {
                    if a2.load(Ordering::SeqCst) != 0 {
                        thread::sleep(Duration::from_secs(3));
                    }
                    Ok(n)
                })
                .unwrap()
        })
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
        assert_eq!(p.stats().size, 2, "{:?}", p.stats());
    }
    let w = balancer_client(
        Balancer::over_pools(pools.clone()).unwrap(),
        Duration::from_millis(1500),
    );
    let x = line_with(&pools, 1);
    let y = 1 - x;
    thread::sleep(Duration::from_millis(30));
    armed.store(y + 1, Ordering::SeqCst);
    drop(held[y][1].take());
    thread::sleep(Duration::from_millis(100));
    drop(held[x][1].take());
    let x_then = pools[x].stats();
    let (got, took) = w.join().unwrap();
    assert!(
        matches!(got, Ok(got) if got == x),
        "W (in pool {x}'s line) got {got:?} after {took:?}; pool {x}'s overflow worker was \
         returned to its line at ~130 ms (just after: {x_then:?}); pool {x} now: {:?}",
        pools[x].stats()
    );
    drop(held);
}

/// Found. The same count of listeners "on their way", from the listener's own line: three
/// pools of size 1, all leased; pool x's `test_on_checkout` takes 1.5 s (then passes) once
/// armed. L1 (4 s) waits in x's line; L2 (800 ms) waits in pool y's line (y may be x); f is
/// a pool neither waits in (both listen to it, L1 longest). The test returns x's worker:
/// handed to L1 (its line's longest waiter), which leaves the line and runs x's 1.5 s check
/// on it, still listening to f. 100 ms later the test frees f's worker. Expected: L2,
/// asleep and listening to f, takes it at once. Happened: f rang L1 (longest listening,
/// not rung) and counted it as on its way, so L2 was not rung; L2 timed out after its
/// 800 ms with f's worker free (`free: 1`) all along; L1 left with x's worker at ~1.5 s.
/// Root cause: `Listeners::nudge` (src/pool/listeners.rs) counts any rung listener as on its
/// way, also one already served by its own line and held in that line's checks (user code)
/// before it stops listening (`Pool::checkout_owned_or_elsewhere` drops its `Listening`s
/// only after `acquire_or_elsewhere`, checks included, returns).
#[test]
fn a_listener_served_by_its_own_line_is_not_on_its_way_to_another_pool() {
    // The pool freed first is L1's own line: L1 is served by it and sits in its check.
    second_listener_served_while_the_first_is_in_a_slow_check(3, |x, _rest| x);
}

/// Tried. Churn with overflow and two balancers over the same two pools in opposite orders
/// ([A, B] and [B, A]: each's waiters listen to the pool the other's waiters wait in) plus
/// plain clients of each pool: A and B of size 2 with `max_overflow(2)`, ten threads for
/// ~1.2 s (four per balancer, one plain client per pool), leases held 0-2 ms, checkouts of
/// 20 s. No deadlock (all within 15 s), no worker leased twice (`Probe::enter`), no
/// timeout; afterwards each pool settles back to its size (2: the overflow workers kept
/// free for listeners were closed once no one listened), all free, nothing waiting or
/// starting, as many releases as checkouts.
#[test]
fn two_balancers_in_opposite_orders_with_overflow_churn_and_settle_back_to_size() {
    use common::Probe;
    let pools: Vec<Pool<Probe>> = (0..2)
        .map(|n| {
            let ids = Arc::new(AtomicUsize::new(n * 1000));
            Pool::builder()
                .name(format!("server-{n}"))
                .size(2)
                .max_overflow(2)
                .build(move || Ok(Probe::new(ids.fetch_add(1, Ordering::SeqCst))))
                .unwrap()
        })
        .collect();
    let forward = Balancer::over_pools(pools.clone()).unwrap();
    let backward = Balancer::over_pools([pools[1].clone(), pools[0].clone()]).unwrap();
    let (p2, f2, b2) = (pools.clone(), forward.clone(), backward.clone());
    let outcome = common::within(Duration::from_secs(15), move || {
        let until = Instant::now() + Duration::from_millis(1200);
        let threads: Vec<_> = (0..10)
            .map(|t| {
                let (pools, forward, backward) = (p2.clone(), f2.clone(), b2.clone());
                thread::spawn(move || {
                    let mut rng = common::Rng::new(t as u64 + 1);
                    let (mut served, mut failed) = (0, Vec::new());
                    while Instant::now() < until {
                        let got = match t {
                            0..=3 => forward.checkout_timeout(Duration::from_secs(20)),
                            4..=7 => backward.checkout_timeout(Duration::from_secs(20)),
                            _ => pools[t - 8].checkout_owned_timeout(Duration::from_secs(20)),
                        };
                        match got {
                            Ok(lease) => {
                                lease.enter();
                                served += 1;
                                let hold = rng.below(3);
                                if hold > 0 {
                                    thread::sleep(Duration::from_millis(hold));
                                }
                                lease.leave();
                            }
                            Err(e) => failed.push(format!("{e:?}")),
                        }
                    }
                    (served, failed)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect::<Vec<_>>()
    })
    .expect("deadlock: the churn did not end within 15 s");
    let served: usize = outcome.iter().map(|o| o.0).sum();
    let failed: Vec<_> = outcome.iter().flat_map(|o| o.1.clone()).collect();
    assert!(failed.is_empty(), "failed checkouts: {failed:?}");
    eprintln!("served {served}");
    for (n, pool) in pools.iter().enumerate() {
        assert!(
            eventually(Duration::from_secs(3), || {
                let s = pool.stats();
                s.size == 2 && s.free == 2 && s.leased == 0 && s.waiters == 0 && s.starting == 0
            }),
            "pool {n} did not settle back to its size: {:?}",
            pool.stats()
        );
        let s = pool.stats();
        assert_eq!(s.checkouts, s.releases, "pool {n}: {s:?}");
        assert_eq!(s.timeouts, 0, "pool {n}: {s:?}");
    }
}
