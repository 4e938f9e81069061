//! A balancer of pools with every pool busy: its checkout waits in one pool's line, and a
//! worker that another busy pool keeps free meanwhile serves it (that pool nudges it). No
//! timeout is counted in the line it leaves; nothing is leased twice or lost.

mod common;

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{line_with, Probe};
use cylinder::{Balancer, Error, OwnedLease, Pool};

/// `count` pools of one probe each, the probes numbered by pool.
fn pools(count: usize) -> Vec<Pool<Arc<Probe>>> {
    (0..count)
        .map(|n| {
            Pool::builder()
                .name(format!("server-{n}"))
                .size(1)
                .build(move || Ok(Arc::new(Probe::new(n))))
                .unwrap()
        })
        .collect()
}

type Servers = Balancer<Pool<Arc<Probe>>>;
/// Leases held by the test, each taken back with `take` to free its pool's worker.
type Held = Vec<Option<OwnedLease<Arc<Probe>>>>;

/// A balancer over `pools`, each pool's worker held here.
fn all_busy(pools: &[Pool<Arc<Probe>>]) -> (Servers, Held) {
    let balancer = Balancer::over_pools(pools.to_vec()).unwrap();
    let held = pools
        .iter()
        .map(|p| Some(p.checkout_owned().unwrap()))
        .collect();
    (balancer, held)
}

/// A client blocked in the balancer's checkout: the probe it gets, and when.
fn client(
    balancer: &Balancer<Pool<Arc<Probe>>>,
) -> thread::JoinHandle<Result<(usize, Instant), Error>> {
    let balancer = balancer.clone();
    thread::spawn(move || {
        let lease = balancer.checkout_timeout(Duration::from_secs(10))?;
        Ok((lease.id, Instant::now()))
    })
}

/// Three pools, all busy; the client waits in one line, and the pool freed is the last
/// other one in rotation (not the next): it is served from there at once, and no pool
/// counts a timeout or keeps a waiter.
#[test]
fn a_worker_freed_in_any_other_busy_pool_serves_the_waiter() {
    let pools = pools(3);
    let (balancer, mut held) = all_busy(&pools);
    let client = client(&balancer);
    let waited_in = line_with(&pools, 1);
    let freed = (waited_in + 2) % 3;
    thread::sleep(Duration::from_millis(50));
    let released = Instant::now();
    drop(held[freed].take());
    let (got, served_at) = client.join().unwrap().unwrap();
    assert_eq!(got, freed, "served by pool {got}, not the one freed");
    assert!(
        served_at.duration_since(released) < Duration::from_secs(2),
        "served {:?} after the release",
        served_at.duration_since(released)
    );
    for pool in &pools {
        let stats = pool.stats();
        assert_eq!((stats.timeouts, stats.waiters), (0, 0), "{stats:?}");
    }
    drop(held);
}

/// The pool the client waits in closes; the client moves on and is served by the other
/// pool's worker once it is freed.
#[test]
fn a_waiter_whose_pool_closes_is_served_by_another() {
    let pools = pools(2);
    let (balancer, mut held) = all_busy(&pools);
    let client = client(&balancer);
    let waited_in = line_with(&pools, 1);
    pools[waited_in].close();
    thread::sleep(Duration::from_millis(50));
    drop(held[1 - waited_in].take());
    assert_eq!(client.join().unwrap().unwrap().0, 1 - waited_in);
    drop(held);
}

/// The time runs out with every pool busy: `Timeout`, counted once (in the line waited in),
/// and no line keeps the client.
#[test]
fn a_wait_with_every_pool_busy_times_out_once() {
    let pools = pools(3);
    let (balancer, held) = all_busy(&pools);
    let began = Instant::now();
    let got = balancer.checkout_timeout(Duration::from_millis(150));
    assert!(matches!(got, Err(Error::Timeout { .. })), "{got:?}");
    assert!(began.elapsed() >= Duration::from_millis(150));
    let timeouts: u64 = pools.iter().map(|p| p.stats().timeouts).sum();
    assert_eq!(timeouts, 1);
    assert!(pools.iter().all(|p| p.stats().waiters == 0));
    drop(held);
}

/// Eight clients over three pools of one worker: each checkout waits in one line while
/// workers come free in all three. Every checkout is served within its time, no worker is
/// ever held by two clients, and at the end every pool is quiet with its worker free.
#[test]
fn many_clients_over_busy_pools_never_share_a_worker_and_none_times_out() {
    const CLIENTS: usize = 8;
    const ROUNDS: usize = 300;
    let pools = pools(3);
    let balancer = Balancer::over_pools(pools.clone()).unwrap();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let balancer = balancer.clone();
            thread::spawn(move || {
                for round in 0..ROUNDS {
                    let lease = balancer
                        .checkout_timeout(Duration::from_secs(10))
                        .unwrap_or_else(|err| panic!("client {c}, round {round}: {err}"));
                    lease.enter();
                    if round % 3 == 0 {
                        thread::sleep(Duration::from_micros(200));
                    } else {
                        thread::yield_now();
                    }
                    lease.leave();
                }
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    let mut checkouts = 0;
    for pool in &pools {
        let stats = pool.stats();
        assert_eq!(
            (
                stats.size,
                stats.free,
                stats.leased,
                stats.waiters,
                stats.timeouts
            ),
            (1, 1, 0, 0, 0),
            "{stats:?}"
        );
        checkouts += stats.checkouts;
    }
    assert_eq!(checkouts, (CLIENTS * ROUNDS) as u64);
}
