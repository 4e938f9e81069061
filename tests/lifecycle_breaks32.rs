//! The thirty-second pass: the balancer's look elsewhere (commit 6738ff5), the sweeps
//! (`idle_timeout`, `max_lifetime`, `keepalive`, `check_after_idle`) and the callbacks around
//! them. The three found (doc comments starting "Found.") failed on that commit and are
//! fixed: a waiter looking in another pool is away from its line meanwhile, and a balancer's
//! waiter listens to every open pool of the set, a pool that comes back included.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{eventually, hold_all, line_with};
use cylinder::{Balancer, Error, OwnedLease, Pool, Worker};

/// Two pools of one worker each, every lease checked (`check_after_idle(0)`); pool `n`'s
/// check sleeps 2 s while `slow[n]` is set, and counts itself in `checking[n]` meanwhile.
struct Two {
    pools: Vec<Pool<usize>>,
    slow: Arc<[AtomicBool; 2]>,
    checking: Arc<[AtomicUsize; 2]>,
}

fn two_pools(fifo_after: Duration) -> Two {
    let slow: Arc<[AtomicBool; 2]> = Arc::new([AtomicBool::new(false), AtomicBool::new(false)]);
    let checking: Arc<[AtomicUsize; 2]> = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let pools = (0..2)
        .map(|n| {
            let slow = slow.clone();
            let checking = checking.clone();
            Pool::builder()
                .name(format!("server-{n}"))
                .size(1)
                .fifo_after(fifo_after)
                .check_after_idle(Duration::ZERO)
                .test_on_checkout(move |_: &mut usize| {
                    if slow[n].load(Ordering::SeqCst) {
                        checking[n].fetch_add(1, Ordering::SeqCst);
                        thread::sleep(Duration::from_secs(2));
                        checking[n].fetch_sub(1, Ordering::SeqCst);
                    }
                    true
                })
                .build(move || Ok(n))
                .unwrap()
        })
        .collect();
    Two {
        pools,
        slow,
        checking,
    }
}

/// Sets up: both pools busy (their workers held), a balancer client blocked in pool `line`'s
/// line, a plain client of pool `line` behind it (1 s timeout), and the balancer client
/// nudged into pool `other`'s check, which takes 2 s. Then pool `line`'s worker is
/// released. Returns the plain client's result and how long it waited after the release.
fn plain_waiter_behind_a_balancer_looking_elsewhere(
    fifo_after: Duration,
) -> (Result<usize, Error>, Duration, Result<usize, Error>) {
    let two = two_pools(fifo_after);
    let pools = two.pools.clone();
    let balancer = Balancer::over_pools(pools.clone()).unwrap();
    let mut held = hold_all(&pools);
    let b = balancer.clone();
    let balancer_client = thread::spawn(move || {
        b.checkout_timeout(Duration::from_secs(10))
            .map(|lease| *lease)
    });
    let line = line_with(&pools, 1);
    let other = 1 - line;
    // A plain client of the same pool, behind it in line.
    let plain_pool = pools[line].clone();
    let plain_client = thread::spawn(move || {
        let began = Instant::now();
        let got = plain_pool
            .checkout_owned_timeout(Duration::from_secs(1))
            .map(|lease| *lease);
        (got, began)
    });
    assert!(
        eventually(Duration::from_secs(2), || pools[line].stats().waiters == 2),
        "the plain client never waited"
    );
    thread::sleep(Duration::from_millis(20));
    // The other pool's worker comes free: the balancer client is nudged and runs that
    // pool's check (2 s, a slow server).
    two.slow[other].store(true, Ordering::SeqCst);
    drop(held[other].take());
    assert!(
        eventually(Duration::from_secs(1), || two.checking[other]
            .load(Ordering::SeqCst)
            == 1),
        "the balancer client never looked in the other pool"
    );
    // Now the line's own worker comes free: the plain client waits for it.
    let released = Instant::now();
    drop(held[line].take());
    let (got, _began) = plain_client.join().unwrap();
    let waited = released.elapsed();
    let balancer_got = balancer_client.join().unwrap();
    (got, waited, balancer_got)
}

/// Found. A balancer client of two busy pools waits in pool L's line, and is nudged when
/// pool O keeps a worker free: it looks there, and O's checkout check runs (a slow server:
/// 2 s). Meanwhile a plain client of L waits behind it (1 s timeout), and L's worker is
/// released. Expected: the plain client gets L's worker at once (the balancer client is
/// busy in O's check, and leaves with O's worker). Happened: with the default `fifo_after`
/// (1 ms) L's worker is handed straight to the balancer client, the first in line, which
/// holds it unused until O's check ends; the plain client gets `Timeout` after 1 s, with
/// L's only worker leased by no one, then goes back to L once the balancer client leaves.
/// Root cause: `WaitList::wait` (src/pool/waitlist.rs) runs `Elsewhere::look` (user code:
/// the other pool's check) with the waiter still in line and unserved, so `offer` hands it
/// the item (or `dispatch` counts it as on its way).
#[test]
fn a_balancer_waiter_looking_elsewhere_does_not_keep_its_lines_worker_from_a_plain_waiter() {
    let (got, waited, balancer_got) =
        plain_waiter_behind_a_balancer_looking_elsewhere(Duration::from_millis(1));
    assert!(balancer_got.is_ok(), "{balancer_got:?}");
    assert!(
        got.is_ok() && waited < Duration::from_millis(800),
        "the plain client got {got:?} {waited:?} after its pool's only worker was released, \
         while the balancer client ran the other pool's check"
    );
}

/// Found. As above, with `fifo_after` long (no straight hand-off): L's worker is released
/// into L's free list, and the wake-up goes to the balancer client (first in line, busy in
/// O's 2 s check), which `dispatch` then counts as on its way: the plain client is not
/// woken. Expected: the plain client gets the worker within a few ms. Happened: it sleeps
/// until its own 1 s timeout, and finds the worker free only at that last look (about
/// 1000 ms after the release), with L's worker free the whole time.
#[test]
fn a_balancer_waiter_looking_elsewhere_does_not_swallow_its_lines_wake_up() {
    let (got, waited, balancer_got) =
        plain_waiter_behind_a_balancer_looking_elsewhere(Duration::from_secs(60));
    assert!(balancer_got.is_ok(), "{balancer_got:?}");
    assert!(
        got.is_ok() && waited < Duration::from_millis(800),
        "the plain client got {got:?} {waited:?} after its pool's only worker was released \
         into the free list, while the balancer client ran the other pool's check"
    );
}

/// Found. A balancer over pools L and O: L is busy (its one worker held), O is down (its
/// server refuses: its starts fail, `reconnect_delay` 200 ms). A client's
/// `checkout_timeout(2 s)` waits in L's line. O's server comes back at once: O's next
/// attempt (within 200 ms) opens a worker, which sits free in O. Expected (rustdoc:
/// "`Error::Timeout` when no worker came free in time in a live pool"; and the new rule
/// that a worker kept free in another pool serves the waiter): the client gets O's worker
/// within about 200 ms. Happened: the client listens only to the pools that were busy when
/// it looked (`busy[at + 1..]` in `Balancer<Pool<W>>::checkout_timeout`,
/// src/balancer/pools.rs), not to O, so it gets `Timeout` after the full 2 s while O's
/// worker was free for about 1.8 s of it.
#[test]
fn a_pool_back_up_while_a_balancer_client_waits_in_a_busy_line_serves_it() {
    let refusing = Arc::new(AtomicBool::new(true));
    let refuse = refusing.clone();
    let busy = Pool::builder()
        .name("busy")
        .size(1)
        .build(|| Ok(0usize))
        .unwrap();
    let down = Pool::builder()
        .name("down")
        .size(1)
        .reconnect_delay(Duration::from_millis(200))
        .build_unchecked(move || {
            if refuse.load(Ordering::SeqCst) {
                Err("connection refused".into())
            } else {
                Ok(1usize)
            }
        })
        .unwrap();
    assert!(
        eventually(Duration::from_secs(2), || !down.is_alive()),
        "the down pool never went down"
    );
    let held = busy.checkout_owned().unwrap();
    let balancer = Balancer::over_pools([busy.clone(), down.clone()]).unwrap();
    let b = balancer.clone();
    let client = thread::spawn(move || {
        let began = Instant::now();
        let got = b.checkout_timeout(Duration::from_secs(2)).map(|l| *l);
        (got, began.elapsed())
    });
    assert!(
        eventually(Duration::from_secs(1), || busy.stats().waiters == 1),
        "the client never waited in the busy pool's line"
    );
    refusing.store(false, Ordering::SeqCst);
    let came_back = eventually(Duration::from_secs(1), || down.stats().free == 1);
    let (got, took) = client.join().unwrap();
    drop(held);
    assert!(
        came_back,
        "the down pool never came back: {:?}",
        down.stats()
    );
    assert!(
        matches!(got, Ok(1)),
        "the client got {got:?} after {took:?}, while the pool that came back had its worker \
         free: {:?}",
        down.stats()
    );
}

/// A pool handle a callback can reach (taken out at the end, to break the cycle).
type Slot = Arc<std::sync::Mutex<Option<Pool<usize>>>>;

/// Tried. A `keepalive` check (on the reaper's thread, the worker held out of the free
/// list) that re-enters its pool: `stats()`, `try_checkout` (nothing else free), then
/// `resize(1)` down from 3. Nothing hangs; the pool settles at size 1 with
/// `free + leased + starting == size`, and a checkout is served.
#[test]
fn a_keepalive_check_that_resizes_and_checks_out_its_own_pool() {
    let slot: Slot = Arc::default();
    let reached = Arc::new(AtomicUsize::new(0));
    let (s, r) = (slot.clone(), reached.clone());
    let pool = Pool::builder()
        .size(3)
        .keepalive(Duration::from_millis(40))
        .test_on_checkout(move |_: &mut usize| {
            if let Some(pool) = s.lock().unwrap().clone() {
                if r.fetch_add(1, Ordering::SeqCst) == 0 {
                    let _ = pool.stats();
                    let _ = pool.try_checkout().map(|lease| *lease);
                    pool.resize(1).unwrap();
                }
            }
            true
        })
        .build(|| Ok(0usize))
        .unwrap();
    *slot.lock().unwrap() = Some(pool.clone());
    assert!(
        eventually(Duration::from_secs(3), || reached.load(Ordering::SeqCst)
            >= 1),
        "no keepalive check ran"
    );
    let settled = eventually(Duration::from_secs(3), || {
        let s = pool.stats();
        s.size == 1 && s.free + s.leased + s.starting == 1
    });
    slot.lock().unwrap().take();
    assert!(settled, "{:?}", pool.stats());
    assert!(pool.checkout_timeout(Duration::from_secs(1)).is_ok());
}

/// Tried. A `keepalive` check that closes its own pool on the reaper's thread (and then
/// drops the handle it used): `close` does not join the reaper from itself; the pool is
/// closed, nothing stays free, leased or starting, and a checkout answers `Closed`.
#[test]
fn a_keepalive_check_that_closes_its_own_pool() {
    let slot: Slot = Arc::default();
    let s = slot.clone();
    let pool = Pool::builder()
        .size(2)
        .keepalive(Duration::from_millis(40))
        .test_on_checkout(move |_: &mut usize| {
            if let Some(pool) = s.lock().unwrap().take() {
                pool.close();
            }
            true
        })
        .build(|| Ok(0usize))
        .unwrap();
    *slot.lock().unwrap() = Some(pool.clone());
    assert!(
        eventually(Duration::from_secs(3), || pool.is_closed()),
        "the pool never closed"
    );
    assert!(matches!(pool.checkout(), Err(Error::Closed)));
    assert!(
        eventually(Duration::from_secs(2), || {
            let s = pool.stats();
            s.free + s.leased + s.starting == 0
        }),
        "{:?}",
        pool.stats()
    );
}

/// Tried. `idle_timeout` 60 ms above `min_idle(1)` on a pool of 4, all four used then
/// returned: the pool shrinks to one open worker by itself (the sweep), with the counts
/// adding up, and grows back on demand.
#[test]
fn idle_timeout_shrinks_to_min_idle_and_grows_back() {
    let opened = Arc::new(AtomicUsize::new(0));
    let o = opened.clone();
    let pool = Pool::builder()
        .size(4)
        .min_idle(1)
        .idle_timeout(Duration::from_millis(60))
        .build(move || Ok(o.fetch_add(1, Ordering::SeqCst)))
        .unwrap();
    let leases: Vec<_> = (0..4).map(|_| pool.checkout().unwrap()).collect();
    drop(leases);
    assert!(
        eventually(Duration::from_secs(3), || pool.stats().free == 1),
        "{:?}",
        pool.stats()
    );
    let s = pool.stats();
    assert_eq!(
        (s.free, s.leased, s.starting, s.waiters),
        (1, 0, 0, 0),
        "{s:?}"
    );
    let leases: Vec<_> = (0..4)
        .map(|_| pool.checkout_timeout(Duration::from_secs(2)).unwrap())
        .collect();
    assert_eq!(pool.stats().leased, 4);
    drop(leases);
}

/// Tried. Both pools busy, a balancer client waits in L's line listening to O. O's held
/// worker is discarded: O's replacement start delivers a new worker (`deliver` →
/// `put_back` → `give_back`), which nudges the client; it is served by O's new worker, L
/// counts no timeout and keeps no waiter, and both pools add up afterwards.
#[test]
fn a_replacement_started_in_another_busy_pool_serves_the_balancer_waiter() {
    let two = two_pools(Duration::from_millis(1));
    let pools = two.pools.clone();
    let balancer = Balancer::over_pools(pools.clone()).unwrap();
    let mut held = hold_all(&pools);
    let b = balancer.clone();
    let client = thread::spawn(move || b.checkout_timeout(Duration::from_secs(4)).map(|l| *l));
    let line = line_with(&pools, 1);
    let other = 1 - line;
    thread::sleep(Duration::from_millis(20));
    OwnedLease::discard(held[other].take().unwrap());
    let got = client.join().unwrap();
    assert!(matches!(got, Ok(n) if n == other), "{got:?}");
    drop(held);
    for pool in &pools {
        assert!(
            eventually(Duration::from_secs(2), || {
                let s = pool.stats();
                (s.size, s.free, s.leased, s.starting, s.waiters, s.timeouts) == (1, 1, 0, 0, 0, 0)
            }),
            "{:?}",
            pool.stats()
        );
    }
}

/// Tried. A balancer client waits in L's line listening to O; O is closed meanwhile (its
/// listener list holds L's pool), then L's worker is released: the client is served by L,
/// nothing is left listening or waiting, and L's counts add up.
#[test]
fn a_pool_listened_to_that_closes_leaves_the_waiter_in_its_line() {
    let two = two_pools(Duration::from_millis(1));
    let pools = two.pools.clone();
    let balancer = Balancer::over_pools(pools.clone()).unwrap();
    let mut held = hold_all(&pools);
    let b = balancer.clone();
    let client = thread::spawn(move || b.checkout_timeout(Duration::from_secs(4)).map(|l| *l));
    let line = line_with(&pools, 1);
    let other = 1 - line;
    pools[other].close();
    drop(held[other].take());
    thread::sleep(Duration::from_millis(30));
    drop(held[line].take());
    let got = client.join().unwrap();
    assert!(matches!(got, Ok(n) if n == line), "{got:?}");
    let s = pools[line].stats();
    assert_eq!(
        (s.size, s.free, s.leased, s.waiters, s.timeouts),
        (1, 1, 0, 0, 0),
        "{s:?}"
    );
}
