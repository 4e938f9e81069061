//! The thirty-seventh pass: `Balancer<Pool<W>>::checkout_timeout` with every pool busy, as
//! reworked in 806034d (a nudge has states: IDLE, RUNG, LOOKING, LOOKING_RUNG, GONE; a
//! worker above the size is kept while a waiter of its line is away). Each test's doc
//! comment says whether it found a bug ("Found.": it fails on commit 806034d) or documents
//! an attack that held ("Tried."). Two found, both fixed: workers kept above the size for a
//! waiter that was away stayed open for good once it was served by its own line (the pool
//! now shrinks once the waiter is done, however served); a balancer waiter's nudge was born
//! RUNG, so a waiter in its own line's check before it ever waited counted as on its way to
//! other pools' workers (it is born out of the line, and a waiter leaving the line with a
//! nudge it did not look at passes it on).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::eventually;
use cylinder::{Balancer, Error, OwnedLease, Pool};

const NONE: usize = usize::MAX;

/// Which pool (of `pools`) has `n` waiters in its line, waiting up to 2 s for one.
fn line_with(pools: &[Pool<usize>], n: usize) -> usize {
    assert!(
        eventually(Duration::from_secs(2), || pools
            .iter()
            .any(|p| p.stats().waiters == n)),
        "no line with {n} waiters: {:?}",
        pools.iter().map(|p| p.stats()).collect::<Vec<_>>()
    );
    pools.iter().position(|p| p.stats().waiters == n).unwrap()
}

/// A balancer client on its own thread: the pool index it got (or the error) and how long
/// it waited; the lease is returned at once.
fn client(
    balancer: Balancer<Pool<usize>>,
    timeout: Duration,
) -> thread::JoinHandle<(Result<usize, Error>, Duration)> {
    thread::spawn(move || {
        let began = Instant::now();
        let got = balancer.checkout_timeout(timeout).map(|l| *l);
        (got, began.elapsed())
    })
}

/// Pools of `size` with `max_overflow`, every lease checked; while `armed` names pool `n`,
/// its check counts itself in `checking`, sleeps `slow_for`, and answers `verdict`.
fn checked_pools(
    count: usize,
    size: usize,
    max_overflow: usize,
    slow_for: Duration,
    verdict: bool,
    armed: &Arc<AtomicUsize>,
    checking: &Arc<AtomicUsize>,
) -> Vec<Pool<usize>> {
    (0..count)
        .map(|n| {
            let armed = armed.clone();
            let checking = checking.clone();
            Pool::builder()
                .name(format!("server-{n}"))
                .size(size)
                .max_overflow(max_overflow)
                .check_after_idle(Duration::ZERO)
                .test_on_checkout(move |_: &mut usize| {
                    if armed.load(Ordering::SeqCst) == n {
                        checking.fetch_add(1, Ordering::SeqCst);
                        thread::sleep(slow_for);
                        checking.fetch_sub(1, Ordering::SeqCst);
                        return verdict;
                    }
                    true
                })
                .build(move || Ok(n))
                .unwrap()
        })
        .collect()
}

/// Found. A pool left above its size with no one left to shrink it. Two pools of size 1
/// with `max_overflow(3)`, all four workers of each leased by the test (every pool busy).
/// A balancer client W (5 s) waits in pool x's line and listens to pool o. o's check is
/// armed (400 ms, then fails) and one of o's leases returned: o nudges W, which goes away
/// from x's line into o's check. Meanwhile the test returns three of x's leases: each is
/// above x's size, and with x's only waiter away, `put_back` keeps it free for W
/// (`keeps_above_size`: `has_away`). o's check fails, W's look finds nothing; back in x's
/// line it takes one of the three kept workers and leaves *served by its own line* (returns
/// it at once). Then every lease is returned and no client is left. Expected: x settles
/// back to its size, `stats().size == 1`, within 2 s. Happened: x stays at `size: 2, free:
/// 2` for good: the two other workers kept for W are never closed. Root cause:
/// `WaitList::wait`'s `Ok` exit / `Shared::wait_for` (src/pool/checkout.rs) calls
/// `shrink_unless_kept` only when the waiter leaves served elsewhere (`WaitError::Elsewhere`);
/// a waiter that was away (workers kept above the size for it) and then leaves served by its
/// own line, or timed out, or gave up, never looks at what was kept for it; later returns
/// close only the worker returned, never a free one, and no sweep shrinks above the size.
#[test]
fn workers_kept_above_the_size_for_an_away_waiter_served_by_its_own_line_are_closed() {
    kept_above_the_size_for_an_away_waiter(false);
}

/// Tried. As above, but o's check passes: W leaves served elsewhere (with o's worker), and
/// `wait_for`'s `Elsewhere` exit shrinks x (`shrink_unless_kept`): x settles back to size 1.
#[test]
fn workers_kept_above_the_size_for_an_away_waiter_served_elsewhere_are_closed() {
    kept_above_the_size_for_an_away_waiter(true);
}

/// The scenario of the two tests above; `found_elsewhere`: o's check passes.
fn kept_above_the_size_for_an_away_waiter(found_elsewhere: bool) {
    let armed = Arc::new(AtomicUsize::new(NONE));
    let checking = Arc::new(AtomicUsize::new(0));
    let pools = checked_pools(
        2,
        1,
        3,
        Duration::from_millis(400),
        found_elsewhere,
        &armed,
        &checking,
    );
    let mut held: Vec<Vec<OwnedLease<usize>>> = pools
        .iter()
        .map(|p| (0..4).map(|_| p.checkout_owned().unwrap()).collect())
        .collect();
    for p in &pools {
        assert_eq!(p.stats().size, 4, "{:?}", p.stats());
    }
    let balancer = Balancer::over_pools(pools.clone()).unwrap();
    let w = client(balancer.clone(), Duration::from_secs(5));
    let x = line_with(&pools, 1);
    let o = 1 - x;
    thread::sleep(Duration::from_millis(30));
    armed.store(o, Ordering::SeqCst);
    drop(held[o].pop());
    assert!(
        eventually(Duration::from_secs(1), || checking.load(Ordering::SeqCst)
            == 1),
        "W did not look in pool {o}: {:?}",
        pools.iter().map(|p| p.stats()).collect::<Vec<_>>()
    );
    // W is away, in o's check: three of x's workers returned, above x's size.
    for _ in 0..3 {
        drop(held[x].pop());
    }
    let x_while_away = pools[x].stats();
    let (got, took) = w.join().unwrap();
    armed.store(NONE, Ordering::SeqCst);
    drop(held);
    drop(balancer);
    let settled = eventually(Duration::from_secs(2), || {
        pools.iter().all(|p| {
            let s = p.stats();
            s.size == 1 && s.waiters == 0 && s.starting == 0
        })
    });
    assert!(
        settled,
        "W waited in pool {x}'s line, looked in pool {o} (check failed), got {got:?} after \
         {took:?}; pool {x} while W was away: {x_while_away:?}; every client gone, 2 s later: \
         pool {x}: {:?}, pool {o}: {:?}",
        pools[x].stats(),
        pools[o].stats()
    );
}

/// Aims the calling thread's round-robin rotation on `balancer` (whose pool `i` gives the
/// value `values[i]`) so that its next checkout starts at pool `target`: checkouts with every
/// pool free until one came from the pool before it (each `get` steps the thread's cursor
/// past the pool it picks).
fn aim(balancer: &Balancer<Pool<usize>>, values: &[usize], target: usize) {
    let before = (target + values.len() - 1) % values.len();
    for _ in 0..4 * values.len() {
        let got = *balancer.checkout().unwrap();
        if got == values[before] {
            return;
        }
    }
    panic!("could not aim the rotation at pool {target}");
}

/// Found. A fresh balancer waiter counts as "on its way" to another pool's worker while it
/// runs its own line's check, before it ever enters the line. Four pools of size 1 (x, z,
/// f, y; every lease checked). L2 (600 ms, a balancer over [y, f]) waits in y's line,
/// listening to f. L1 (5 s, a balancer over [x, z, f], its rotation aimed at x) starts while
/// x, f and y are held by the test and z is free with a slow check (300 ms) that fails: its
/// first pass finds x busy and sits in z's check; meanwhile the test returns x's worker (no
/// one listens to x yet: it stays free). z's check fails, f is busy: L1 waits on x
/// (`wait_on`: listens to z and f with a nudge born RUNG, `Nudge::new`), and
/// `acquire_slow`'s first `free.take` finds x's worker, so L1 runs x's check (1.2 s, passes)
/// without ever entering the line: its nudge stays RUNG all along. The test then returns
/// f's worker. Expected: L2 (listening to f, asleep) is nudged and takes it at once.
/// Happened: f counted L1 (RUNG) as on its way and rang no one; L2 timed out after its
/// 600 ms with f's worker free all along (`free: 1`), served by no one until L1's check
/// ended. Root cause: `Nudge::new` (src/pool/waitlist.rs) starts RUNG, and
/// `Pool::checkout_owned_or_elsewhere` (src/pool/as_worker.rs) registers the `Listening`s
/// before `acquire_or_elsewhere`, whose fast `free.take` + `admit` (user code:
/// `test_on_checkout`) runs before `WaitList::wait` is entered; `Listeners::nudge`
/// (src/pool/listeners.rs) counts a RUNG nudge as on its way. (Pass 34/35 fixed the same
/// count for a waiter that *left* its line into the check, by setting GONE there; a waiter
/// that never entered its line is not covered. The same count also lingers, for a shorter
/// window, on a waiter rung while in line and then served by its line's look before it
/// looks elsewhere: GONE takes it out but nothing re-nudges the pool's other listeners
/// until `listener_left`, after the check.)
#[test]
fn a_fresh_balancer_waiter_in_its_own_lines_check_is_not_on_its_way_to_another_pool() {
    use std::sync::mpsc;
    const X: usize = 0;
    const Z: usize = 1;
    const F: usize = 2;
    const Y: usize = 3;
    let armed = Arc::new(AtomicUsize::new(0));
    let checking_x = Arc::new(AtomicUsize::new(0));
    let checking_z = Arc::new(AtomicUsize::new(0));
    let pools: Vec<Pool<usize>> = (0..4)
        .map(|n| {
            let armed = armed.clone();
            let checking = if n == X {
                checking_x.clone()
            } else {
                checking_z.clone()
            };
            Pool::builder()
                .name(format!("server-{n}"))
                .size(1)
                .check_after_idle(Duration::ZERO)
                .test_on_checkout(move |_: &mut usize| {
                    if armed.load(Ordering::SeqCst) == 1 && (n == X || n == Z) {
                        checking.fetch_add(1, Ordering::SeqCst);
                        thread::sleep(Duration::from_millis(if n == X { 1200 } else { 300 }));
                        checking.fetch_sub(1, Ordering::SeqCst);
                        return n == X;
                    }
                    true
                })
                .build(move || Ok(n))
                .unwrap()
        })
        .collect();
    let b1 = Balancer::over_pools([pools[X].clone(), pools[Z].clone(), pools[F].clone()]).unwrap();
    let b2 = Balancer::over_pools([pools[Y].clone(), pools[F].clone()]).unwrap();
    let spawn = |b: Balancer<Pool<usize>>, values: Vec<usize>, timeout: Duration| {
        let (ready_tx, ready) = mpsc::channel::<()>();
        let (go, go_rx) = mpsc::channel::<()>();
        let handle = thread::spawn(move || {
            aim(&b, &values, 0);
            ready_tx.send(()).unwrap();
            go_rx.recv().unwrap();
            let began = Instant::now();
            let got = b.checkout_timeout(timeout).map(|l| *l);
            (got, began.elapsed())
        });
        ready.recv().unwrap();
        (handle, go)
    };
    let (l2, go2) = spawn(b2.clone(), vec![Y, F], Duration::from_millis(600));
    let (l1, go1) = spawn(b1.clone(), vec![X, Z, F], Duration::from_secs(5));
    let mut held: Vec<Option<OwnedLease<usize>>> = pools
        .iter()
        .enumerate()
        .map(|(n, p)| (n != Z).then(|| p.checkout_owned().unwrap()))
        .collect();
    armed.store(1, Ordering::SeqCst);
    go2.send(()).unwrap();
    assert!(
        eventually(Duration::from_secs(2), || pools[Y].stats().waiters == 1),
        "L2 is not in y's line: {:?}",
        pools.iter().map(|p| p.stats()).collect::<Vec<_>>()
    );
    thread::sleep(Duration::from_millis(20));
    go1.send(()).unwrap();
    assert!(
        eventually(Duration::from_secs(2), || checking_z.load(Ordering::SeqCst)
            == 1),
        "L1 did not run z's check"
    );
    drop(held[X].take());
    assert!(
        eventually(Duration::from_secs(2), || checking_x.load(Ordering::SeqCst)
            == 1),
        "L1 did not run x's check: {:?}",
        pools.iter().map(|p| p.stats()).collect::<Vec<_>>()
    );
    thread::sleep(Duration::from_millis(20));
    drop(held[F].take());
    thread::sleep(Duration::from_millis(100));
    let f_then = pools[F].stats();
    let (l2_got, l2_took) = l2.join().unwrap();
    let (l1_got, l1_took) = l1.join().unwrap();
    armed.store(0, Ordering::SeqCst);
    drop(held);
    assert!(
        matches!(l2_got, Ok(F)),
        "L2 (in y's line, listening to f) got {l2_got:?} after {l2_took:?}, with f's worker \
         returned while L1 sat in x's check (f 100 ms later: {f_then:?}); L1 got {l1_got:?} \
         after {l1_took:?}"
    );
}
