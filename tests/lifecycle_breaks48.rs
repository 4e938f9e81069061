//! Forty-eighth breaking pass: each test names its scenario and fails on the code it was
//! written against. Bounded in time; hangs are detected with bounded waits.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cylinder::{Balancer, BoxError, Pool, Supervisor};

/// A supervisor over pools (`build_with`, not `build_pools`): lists the pools in `current`,
/// counts the pools it is told to retire.
struct Servers {
    current: Arc<Mutex<Vec<Arc<Pool<usize>>>>>,
    retired: Arc<Mutex<Vec<usize>>>,
}

impl Supervisor<Pool<usize>> for Servers {
    fn children(&self) -> Result<Vec<Arc<Pool<usize>>>, BoxError> {
        Ok(self.current.lock().unwrap().clone())
    }

    fn retire(&self, worker: &Arc<Pool<usize>>) {
        self.retired.lock().unwrap().push(worker.stats().max_size);
    }
}

fn down_pool(n: usize) -> Pool<usize> {
    let pool = common::numbered(n, 1)
        .reconnect_delay(Duration::from_secs(30))
        .build_unchecked(move || {
            Err::<usize, BoxError>(format!("server-{n}: connection refused").into())
        })
        .unwrap();
    // Its first start fails: down (dead, comes back by itself) for 30 s.
    let _ = pool.try_checkout();
    pool
}

/// A balancer built with a supervisor over pools (`build_with`): its only pool, server-0,
/// is down (its start failed, `reconnect_delay` 30 s), so `get` marks it dead; as a pool
/// comes back by itself, it is neither retired nor is a reload asked (as documented for a
/// worker that comes back). Then the application closes server-0 for good and lists a
/// working server-1 instead. Documented (`impl Worker for Pool`, src/pool/as_worker.rs):
/// "A closed pool never comes back: a balancer over a supervisor (`build_with`) retires it
/// and asks its supervisor again"; `Supervisor::retire`: "Told that `worker` was taken out
/// of service (found dead by the balancer), once per worker". Expected: server-0 retired
/// once and the supervisor asked again, so `get` reaches server-1 within the balancer's
/// `reconnect_delay` (50 ms here; 2 s allowed). Observed: server-0 was marked dead while it
/// still came back, and `mark_dead` (src/balancer/set.rs:257-262) returns at once for a
/// worker already marked dead, so its closing is never noticed: it is never retired, and
/// since the set `all_come_back` (computed when it was listed), `pick` never asks for a
/// reload (src/balancer/mod.rs:573-585, `Scan::AllDead`): every `get` answers `Disconnected` ("no
/// live children") for ever, with the live server-1 listed by the supervisor.
#[test]
fn a_pool_closed_while_down_under_a_supervisor_is_retired_and_the_supervisor_asked_again() {
    let current = Arc::new(Mutex::new(vec![Arc::new(down_pool(0))]));
    let retired = Arc::new(Mutex::new(Vec::new()));
    let balancer = Balancer::builder()
        .reconnect_delay(Duration::from_millis(50))
        .build_with(Servers {
            current: current.clone(),
            retired: retired.clone(),
        })
        .unwrap();
    assert!(balancer.get().is_err(), "setup: server-0 is down");
    // Server-0 goes for good; the supervisor lists server-1 instead.
    let old = current.lock().unwrap()[0].clone();
    old.close();
    let up = common::numbered(1, 1).build(|| Ok(1usize)).unwrap();
    *current.lock().unwrap() = vec![Arc::new(up)];
    let reloads_before = balancer.reloads();
    let served = common::eventually(Duration::from_secs(2), || {
        balancer.get().map(|pool| pool.stats().max_size).is_ok()
    });
    let told = retired.lock().unwrap().len();
    assert!(
        served && told == 1,
        "server-0 closed while down: retired {told} times, reloads {} -> {}, and get \
         answers {:?} with server-1 listed by the supervisor",
        reloads_before,
        balancer.reloads(),
        balancer.get().map(|_| ())
    );
}

/// As above, with a second pool that stays up: server-0 is down (marked dead, not retired),
/// then closed for good. Expected: it is retired once ("A closed pool never comes back: a
/// balancer over a supervisor (`build_with`) retires it and asks its supervisor again").
/// Observed: never retired (`mark_dead` returns early for a member already marked dead).
#[test]
fn a_pool_closed_while_down_beside_a_live_one_is_retired_once() {
    let current = Arc::new(Mutex::new(vec![
        Arc::new(down_pool(0)),
        Arc::new(common::numbered(1, 1).build(|| Ok(1usize)).unwrap()),
    ]));
    let retired = Arc::new(Mutex::new(Vec::new()));
    let balancer = Balancer::builder()
        .reconnect_delay(Duration::from_millis(50))
        .build_with(Servers {
            current: current.clone(),
            retired: retired.clone(),
        })
        .unwrap();
    // A few rounds: server-0 is found dead (down), server-1 serves.
    for _ in 0..4 {
        assert!(balancer.get().is_ok());
    }
    assert_eq!(
        retired.lock().unwrap().len(),
        0,
        "setup: a down pool is not retired"
    );
    current.lock().unwrap()[0].close();
    common::eventually(Duration::from_secs(1), || {
        let _ = balancer.get();
        !retired.lock().unwrap().is_empty()
    });
    for _ in 0..8 {
        let _ = balancer.get();
    }
    let told = retired.lock().unwrap().len();
    assert_eq!(
        told, 1,
        "server-0, closed for good after it was found down, was retired {told} times"
    );
}

/// Every pool down at the call: server-0's starts always fail (`reconnect_delay` 5 s),
/// server-1's first start failed and its next one (after 300 ms) succeeds and is handed
/// straight to a plain client already waiting in its line (`fifo_after(0)`): server-1 is
/// back, alive and busy. A balancer client calls `checkout_timeout(700 ms)` on a fresh
/// balancer: every pool is down, so it waits for server-0's next attempt (the first in
/// rotation). Its time runs out there; server-0 counts that timeout (nothing open, starts
/// failing: `Disconnected`). Documented (`Balancer::checkout_timeout`): "Only the line
/// waited in counts a timeout"; pass 44's fix (src/balancer/pools.rs:357-362): "no other
/// line is joined only to count a timeout there too". Expected: one timeout counted for
/// the call. Observed: two, one in each pool: `wait_on` with `Joined::Down` turns the
/// `Disconnected` at the deadline into `None` (src/balancer/pools.rs:454-456), the free
/// loop finds server-1 alive and busy, and the busy loop joins its line with no time left
/// because `waited` is still false (the all-down wait at src/balancer/pools.rs:322-327 does
/// not set it; src/balancer/pools.rs:356-367), so server-1 counts a second timeout (and emits a second
/// `CheckoutTimedOut`) for the same call.
#[test]
fn a_balancer_wait_timing_out_while_every_pool_was_down_counts_one_timeout_when_another_came_back_busy(
) {
    // The balancer client waits first in server-0's line (checked: server-0 counts a
    // timeout); a client whose rotation began at server-1 (a thread beyond the sixteenth
    // owned stripe) does not show the scenario: tried again then.
    for _ in 0..4 {
        let (got, waited, timeouts) = every_pool_down_then_one_back_busy();
        if timeouts[0] == 0 {
            continue;
        }
        assert!(got.is_err(), "nothing was free, yet {got:?}");
        assert_eq!(
            timeouts.iter().sum::<u64>(),
            1,
            "one balancer checkout ({got:?} after {waited:?}) counted timeouts {timeouts:?} \
             (server-0, down, then server-1, back and busy)"
        );
        return;
    }
    panic!("setup: the balancer client never began at server-0");
}

/// Where a fresh balancer of two pools begins its rotation on this thread: 0 or 1.
fn rotation_begins_at() -> usize {
    let live: Vec<_> = (0..2)
        .map(|n| common::numbered(n, 1).build(move || Ok(n)).unwrap())
        .collect();
    let probe = Balancer::over_pools(live).unwrap();
    let first = probe.get().unwrap();
    let n = *first.checkout().unwrap();
    n
}

/// Server-0 always down (`reconnect_delay` 5 s), server-1 down at the call and back 300 ms
/// later, its worker handed to a plain client waiting in its line: a balancer client
/// (`checkout_timeout(700 ms)`) that begins its rotation at server-0. What it got, how
/// long it waited, and each pool's timeouts (server-0's first).
fn every_pool_down_then_one_back_busy() -> (Result<usize, cylinder::Error>, Duration, Vec<u64>) {
    let a = common::numbered(0, 1)
        .reconnect_delay(Duration::from_secs(5))
        .build_unchecked(|| Err::<usize, BoxError>("server-0: connection refused".into()))
        .unwrap();
    let b_starts = Arc::new(AtomicUsize::new(0));
    let b = {
        let starts = b_starts.clone();
        common::numbered(1, 1)
            .reconnect_delay(Duration::from_millis(300))
            .fifo_after(Duration::ZERO)
            .build_unchecked(move || match starts.fetch_add(1, Ordering::SeqCst) {
                0 => Err::<usize, BoxError>("server-1: connection refused".into()),
                _ => Ok(1usize),
            })
            .unwrap()
    };
    let pools = vec![a, b];
    for pool in &pools {
        assert!(pool.try_checkout().is_err(), "setup: the first start fails");
    }
    let plain = {
        let pool = pools[1].clone();
        std::thread::spawn(move || {
            let lease = pool.checkout_timeout(Duration::from_secs(3));
            std::thread::sleep(Duration::from_millis(1200));
            lease.map(|l| *l)
        })
    };
    assert!(common::eventually(Duration::from_secs(1), || pools[1]
        .stats()
        .waiters
        == 1));
    let client = {
        let pools = pools.clone();
        std::thread::spawn(move || {
            // Server-0 where this thread's rotation begins.
            let mut order = pools;
            if rotation_begins_at() == 1 {
                order.reverse();
            }
            let balancer = Balancer::over_pools(order).unwrap();
            let began = std::time::Instant::now();
            let got = balancer
                .checkout_timeout(Duration::from_millis(700))
                .map(|lease| *lease);
            (got, began.elapsed())
        })
    };
    let (got, waited) = client.join().unwrap();
    let timeouts: Vec<u64> = pools.iter().map(|p| p.stats().timeouts).collect();
    let plain_got = plain.join().unwrap();
    assert_eq!(
        plain_got.ok(),
        Some(1),
        "setup: server-1 came back to its plain client"
    );
    (got, waited, timeouts)
}
