//! The thirty-fifth pass: the worker lifecycle and every user callback, the balancer of
//! pools' wait across busy pools (`Listeners`, `Elsewhere`) first. Each test's doc comment
//! says whether it found a bug ("Found.": it fails on commit 620e629) or documents an attack
//! that held ("Tried."). The three found are fixed: a listener looking elsewhere or already
//! served no longer counts as on its way to another pool's worker (the nudge's states), and
//! a lease taken in the look elsewhere names the client's call (`checkout_free_owned` takes
//! the call site, which `#[track_caller]` does not carry through a closure).

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{eventually, hold_all};
use cylinder::{Balancer, Error, OwnedLease, Pool};

/// `count` pools of one worker each, every lease checked (`check_after_idle(0)`); pool `n`'s
/// check sleeps `slow_for` while `slow[n]` is set, counting itself in `checking[n]`.
struct Set {
    pools: Vec<Pool<usize>>,
    slow: Arc<Vec<AtomicBool>>,
    checking: Arc<Vec<AtomicUsize>>,
}

fn pools(count: usize, slow_for: Duration, fifo_after: Duration) -> Set {
    let slow: Arc<Vec<AtomicBool>> = Arc::new((0..count).map(|_| AtomicBool::new(false)).collect());
    let checking: Arc<Vec<AtomicUsize>> =
        Arc::new((0..count).map(|_| AtomicUsize::new(0)).collect());
    let pools = (0..count)
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
                        thread::sleep(slow_for);
                        checking[n].fetch_sub(1, Ordering::SeqCst);
                    }
                    true
                })
                .build(move || Ok(n))
                .unwrap()
        })
        .collect();
    Set {
        pools,
        slow,
        checking,
    }
}

fn waiters(pools: &[Pool<usize>]) -> usize {
    pools.iter().map(|p| p.stats().waiters).sum()
}

/// Found. Four pools of one worker each (A..D), every worker held by the test: all busy. Two
/// balancer clients W1 and W2 wait (`checkout_timeout(10 s)`), each in some pool's line and
/// listening to the others. Pick P1 and P2 among the pools neither waits in. P1's check is
/// made slow (2 s, a slow server) and P1's worker released: P1 nudges W1 (longest listening),
/// which looks there and sits in the 2 s check. 100 ms later P2's worker is released.
/// Expected: W2 (idle, listening to P2) is nudged and takes P2's worker at once (allowed:
/// 1 s). Happened: W2 slept ~1.9 s more with P2's worker free (`free: 1` on P2 all along),
/// served only when W1's look ended and its listener left (`listener_left`). Root cause:
/// `Listeners::nudge` (src/pool/listeners.rs) counts a listener whose nudge is rung as
/// "on its way"; W1, away in another pool's look, had its nudge un-rung before the look
/// (`WaitList::wait`), so P2 rings it again and counts it as on its way to P2's worker,
/// though it cannot look before its current look (user code) ends. The plain line was fixed
/// for this (`away`, pass 33) but a listener's nudge is not.
#[test]
fn a_listener_busy_in_a_slow_look_elsewhere_does_not_swallow_another_pools_nudge() {
    let set = pools(4, Duration::from_secs(2), Duration::from_millis(1));
    let pools = set.pools.clone();
    let balancer = Balancer::over_pools(pools.clone()).unwrap();
    let mut held = hold_all(&pools);
    let spawn_client = || {
        let b = balancer.clone();
        thread::spawn(move || {
            let got = b.checkout_timeout(Duration::from_secs(10)).map(|l| *l);
            (got, Instant::now())
        })
    };
    let w1 = spawn_client();
    assert!(eventually(Duration::from_secs(2), || waiters(&pools) == 1));
    thread::sleep(Duration::from_millis(20));
    let w2 = spawn_client();
    assert!(eventually(Duration::from_secs(2), || waiters(&pools) == 2));
    thread::sleep(Duration::from_millis(20));
    let lines: Vec<usize> = (0..4).filter(|&i| pools[i].stats().waiters > 0).collect();
    let rest: Vec<usize> = (0..4).filter(|i| !lines.contains(i)).collect();
    assert!(rest.len() >= 2, "lines {lines:?}");
    let (p1, p2) = (rest[0], rest[1]);
    set.slow[p1].store(true, Ordering::SeqCst);
    drop(held[p1].take());
    assert!(
        eventually(Duration::from_secs(1), || set.checking[p1]
            .load(Ordering::SeqCst)
            == 1),
        "no client looked in the slow pool"
    );
    // That one check is slow (it sleeps on); the next ones are not.
    set.slow[p1].store(false, Ordering::SeqCst);
    thread::sleep(Duration::from_millis(100));
    let released = Instant::now();
    drop(held[p2].take());
    thread::sleep(Duration::from_millis(100));
    let p2_meanwhile = pools[p2].stats();
    let (g1, at1) = w1.join().unwrap();
    let (g2, at2) = w2.join().unwrap();
    let served: Vec<(Result<usize, Error>, Duration)> = vec![
        (g1, at1.saturating_duration_since(released)),
        (g2, at2.saturating_duration_since(released)),
    ];
    let by_p2 = served
        .iter()
        .find(|(got, _)| matches!(got, Ok(n) if *n == p2));
    assert!(
        by_p2.is_some_and(|(_, after)| *after < Duration::from_secs(1)),
        "with P2 (server-{p2}) free, the idle balancer client took it {:?} after its \
         release (both clients: {served:?}); P2 100 ms after its release: {p2_meanwhile:?}",
        by_p2.map(|(_, after)| after)
    );
    drop(held);
}

/// Two pools of one worker with `warn_after(50 ms)`, recording each `SlowLease`'s
/// `taken_at`; both workers held by the test. `served_by_other` says whether the balancer
/// client is served by the other pool's worker (nudged: its look elsewhere) or by its own
/// line's. Returns the reports of leases the client took (file, line), and the client's line.
fn slow_lease_sites(served_by_other: bool) -> (Vec<(String, u32)>, u32) {
    use cylinder::Event;
    let sites: Arc<std::sync::Mutex<Vec<(usize, String, u32)>>> = Default::default();
    let pools: Vec<Pool<usize>> = (0..2)
        .map(|n| {
            let sites = sites.clone();
            Pool::builder()
                .name(format!("server-{n}"))
                .size(1)
                .warn_after(Duration::from_millis(50))
                .on_event(move |event| {
                    if let Event::SlowLease { taken_at, .. } = event {
                        sites.lock().unwrap().push((
                            n,
                            taken_at.file().to_string(),
                            taken_at.line(),
                        ));
                    }
                })
                .build(move || Ok(n))
                .unwrap()
        })
        .collect();
    let balancer = Balancer::over_pools(pools.clone()).unwrap();
    let mut held: Vec<Option<OwnedLease<usize>>> = pools
        .iter()
        .map(|p| Some(p.checkout_owned_timeout(Duration::from_secs(1)).unwrap()))
        .collect();
    let b = balancer.clone();
    let (line_tx, line_rx) = std::sync::mpsc::channel();
    let client = thread::spawn(move || {
        line_tx.send(line!() + 1).unwrap();
        let lease = b.checkout_timeout(Duration::from_secs(5)).unwrap();
        // Held well past `warn_after`, so that the reaper reports it.
        thread::sleep(Duration::from_millis(400));
        *lease
    });
    let client_line = line_rx.recv().unwrap();
    assert!(eventually(Duration::from_secs(2), || waiters(&pools) == 1));
    thread::sleep(Duration::from_millis(20));
    let line = (0..2).find(|&i| pools[i].stats().waiters == 1).unwrap();
    let freed = if served_by_other { 1 - line } else { line };
    drop(held[freed].take());
    let got = client.join().unwrap();
    assert_eq!(got, freed);
    drop(held);
    let reports: Vec<(String, u32)> = sites
        .lock()
        .unwrap()
        .iter()
        .filter(|(n, _, _)| *n == freed)
        .map(|(_, f, l)| (f.clone(), *l))
        .collect();
    (reports, client_line)
}

/// Tried. The same slow-lease report for a balancer client served by its own line (the pool
/// it waits in frees its worker): the report names this test's file and the line of the
/// `checkout_timeout` call, as GUARANTEES.md promises.
#[test]
fn a_slow_lease_served_by_the_balancers_own_line_names_the_callers_line() {
    let (reports, line) = slow_lease_sites(false);
    assert!(
        reports
            .iter()
            .any(|(file, l)| file.ends_with("lifecycle_breaks35.rs") && *l == line),
        "reports {reports:?}, expected lifecycle_breaks35.rs:{line}"
    );
}

/// Found. `warn_after(50 ms)` on two pools of one worker, both held by the test; a balancer
/// client (`checkout_timeout(5 s)`) waits in one pool's line, and the other pool's worker
/// is released: the client is nudged and takes it in its look elsewhere, then holds it
/// 400 ms. The reaper's `SlowLease` report for that lease should name where it was taken:
/// "a slow-lease report names the file and line where the lease was taken"
/// (GUARANTEES.md; `Event::SlowLease::taken_at`: "the caller of `checkout`"). Expected:
/// `tests/lifecycle_breaks35.rs` and the line of the `checkout_timeout` call (as in the
/// Tried test above, served by its own line). Happened: `src/balancer/pools.rs` and a line
/// inside the crate. Root cause: `Balancer::<Pool<W>>::wait_on` (src/balancer/pools.rs)
/// calls `Pool::checkout_free_owned` (`#[track_caller]`) from inside its `look` closure; a
/// closure does not carry `#[track_caller]`, so `Location::caller()` there is the closure's
/// own call site in the crate.
#[test]
fn a_slow_lease_served_by_the_look_elsewhere_names_the_callers_line() {
    let (reports, line) = slow_lease_sites(true);
    assert!(
        reports
            .iter()
            .any(|(file, l)| file.ends_with("lifecycle_breaks35.rs") && *l == line),
        "reports {reports:?}, expected lifecycle_breaks35.rs:{line}"
    );
}

/// Found. As `a_listener_busy_in_a_slow_look_elsewhere_does_not_swallow_another_pools_nudge`,
/// but the busy listener is in its own line's check, not in a look elsewhere: four pools of
/// one worker, all held; balancer clients W1 then W2 wait (10 s), W1 in pool X's line. X's
/// check is made slow (2 s) and X's worker released: handed to W1, which leaves X's line and
/// runs X's check (`admit` in `acquire_slow`) while its listeners on the other pools stay
/// registered. 100 ms later a pool P that neither client waits in frees its worker.
/// Expected: W2 nudged, served by P within 1 s. Happened: W2 was served ~1.9 s after P's
/// release, when W1's check ended and its listeners left, P's worker free all along.
/// Root cause: the same count in `Listeners::nudge` (src/pool/listeners.rs): W1's nudge,
/// un-rung at its last look, is rung again by P and counted as on its way, though W1 is
/// past its wait (`Pool::checkout_owned_or_elsewhere` holds the `Listening` guards until
/// `acquire_or_elsewhere`, checks included, returns).
#[test]
fn a_listener_in_its_own_lines_slow_check_does_not_swallow_another_pools_nudge() {
    let set = pools(4, Duration::from_secs(2), Duration::from_millis(1));
    let pools = set.pools.clone();
    let balancer = Balancer::over_pools(pools.clone()).unwrap();
    let mut held = hold_all(&pools);
    let spawn_client = || {
        let b = balancer.clone();
        thread::spawn(move || {
            let got = b.checkout_timeout(Duration::from_secs(10)).map(|l| *l);
            (got, Instant::now())
        })
    };
    let w1 = spawn_client();
    assert!(eventually(Duration::from_secs(2), || waiters(&pools) == 1));
    let x = (0..4).find(|&i| pools[i].stats().waiters == 1).unwrap();
    thread::sleep(Duration::from_millis(20));
    let w2 = spawn_client();
    assert!(eventually(Duration::from_secs(2), || waiters(&pools) == 2));
    thread::sleep(Duration::from_millis(20));
    let lines: Vec<usize> = (0..4).filter(|&i| pools[i].stats().waiters > 0).collect();
    let p = (0..4).find(|i| !lines.contains(i)).unwrap();
    set.slow[x].store(true, Ordering::SeqCst);
    drop(held[x].take());
    assert!(
        eventually(Duration::from_secs(1), || set.checking[x]
            .load(Ordering::SeqCst)
            == 1),
        "no client ran X's check"
    );
    // That one check is slow (it sleeps on); the next ones are not.
    set.slow[x].store(false, Ordering::SeqCst);
    thread::sleep(Duration::from_millis(100));
    let released = Instant::now();
    drop(held[p].take());
    thread::sleep(Duration::from_millis(100));
    let p_meanwhile = pools[p].stats();
    let (g1, at1) = w1.join().unwrap();
    let (g2, at2) = w2.join().unwrap();
    let served: Vec<(Result<usize, Error>, Duration)> = vec![
        (g1, at1.saturating_duration_since(released)),
        (g2, at2.saturating_duration_since(released)),
    ];
    let by_p = served
        .iter()
        .find(|(got, _)| matches!(got, Ok(n) if *n == p));
    assert!(
        by_p.is_some_and(|(_, after)| *after < Duration::from_secs(1)),
        "with P (server-{p}) free, the idle balancer client took it {:?} after its release \
         (both clients: {served:?}); P 100 ms after its release: {p_meanwhile:?}",
        by_p.map(|(_, after)| after)
    );
    drop(held);
}

/// Tried. A listened pool grows: two pools of one worker, both held; a balancer client
/// waits (5 s) in one pool's line; the other pool is resized to 2 from the test thread. The
/// new worker (started by `resize`, delivered through `put_back`) nudges the client, which
/// is served by it within 1 s; after the leases go back both pools are whole (the grown
/// one at 2, `free == size`, nothing waiting).
#[test]
fn a_listened_pool_resized_up_serves_the_balancer_waiter() {
    let set = pools(2, Duration::ZERO, Duration::from_millis(1));
    let pools = set.pools.clone();
    let balancer = Balancer::over_pools(pools.clone()).unwrap();
    let held: Vec<OwnedLease<usize>> = pools.iter().map(|p| p.checkout_owned().unwrap()).collect();
    let b = balancer.clone();
    let client = thread::spawn(move || {
        let began = Instant::now();
        let got = b.checkout_timeout(Duration::from_secs(5)).map(|l| *l);
        (got, began.elapsed())
    });
    assert!(eventually(Duration::from_secs(2), || waiters(&pools) == 1));
    thread::sleep(Duration::from_millis(20));
    let line = (0..2).find(|&i| pools[i].stats().waiters == 1).unwrap();
    let other = 1 - line;
    let resized = Instant::now();
    pools[other].resize(2).unwrap();
    let (got, _) = client.join().unwrap();
    let after = resized.elapsed();
    assert_eq!(got.unwrap(), other);
    assert!(
        after < Duration::from_secs(1),
        "served {after:?} after the resize"
    );
    drop(held);
    for (n, pool) in pools.iter().enumerate() {
        let size = if n == other { 2 } else { 1 };
        assert!(
            eventually(Duration::from_secs(2), || {
                let s = pool.stats();
                s.size == size && s.free == size && s.waiters == 0 && s.starting == 0
            }),
            "pool {n}: {:?}",
            pool.stats()
        );
    }
}

/// Tried. A listened pool drains while a balancer client waits: two pools of one worker,
/// both held; the client waits (5 s) in one line; the other pool's `drain(2 s)` runs on a
/// thread, and its held lease is returned 100 ms later (after the close). The client is
/// never handed the closed pool's worker: `drain` returns `Ok` with that pool empty, and
/// the client is served by its own line's worker, released 200 ms later; its pool ends whole.
#[test]
fn a_listened_pool_draining_while_a_balancer_client_waits() {
    let set = pools(2, Duration::ZERO, Duration::from_millis(1));
    let pools = set.pools.clone();
    let balancer = Balancer::over_pools(pools.clone()).unwrap();
    let mut held = hold_all(&pools);
    let b = balancer.clone();
    let client = thread::spawn(move || b.checkout_timeout(Duration::from_secs(5)).map(|l| *l));
    assert!(eventually(Duration::from_secs(2), || waiters(&pools) == 1));
    thread::sleep(Duration::from_millis(20));
    let line = (0..2).find(|&i| pools[i].stats().waiters == 1).unwrap();
    let other = 1 - line;
    let draining = pools[other].clone();
    let drain = thread::spawn(move || draining.drain(Duration::from_secs(2)));
    thread::sleep(Duration::from_millis(100));
    drop(held[other].take());
    assert!(drain.join().unwrap().is_ok());
    assert_eq!(pools[other].stats().size, 0);
    thread::sleep(Duration::from_millis(200));
    drop(held[line].take());
    assert_eq!(client.join().unwrap().unwrap(), line);
    assert!(eventually(Duration::from_secs(2), || {
        let s = pools[line].stats();
        s.size == 1 && s.free == 1 && s.waiters == 0
    }));
}
