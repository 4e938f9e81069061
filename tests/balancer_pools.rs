//! A balancer of pools under stress: 8 threads call `checkout()` while servers die and come
//! back, one at a time, two at a time, and all at once.
//!
//! Each pool's "server" is a switch: a connection opens only while it is up, and a stop
//! breaks every connection opened before it (it fails the pool's check). Server 0 is stopped
//! only in the windows when every server is down, so outside those windows a checkout must
//! always succeed, failing over as needed. Checked: no checkout fails that need not; none
//! hands out a connection of a stopped server (it would fail the check); with every server
//! down the calls are paced by the reconnect attempts; once all are up again, every pool is
//! back in rotation within its `reconnect_delay` and serves; and nothing is left leased.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use cylinder::{Balancer, BoxError, Error, Pool, PoolsDown, Worker};

const SERVERS: usize = 3;
const THREADS: usize = 8;
const RECONNECT_DELAY: Duration = Duration::from_millis(20);

struct Server {
    up: AtomicBool,
    /// Bumped by every stop: connections of an older epoch are broken.
    epoch: AtomicU64,
}

struct Conn {
    server: usize,
    epoch: u64,
    /// Set by a check that passed, cleared by the client that leased it: every lease must
    /// have been checked (the server was up, with the connection's epoch) when handed out.
    checked: bool,
}

fn servers() -> Arc<Vec<Server>> {
    Arc::new(
        (0..SERVERS)
            .map(|_| Server {
                up: AtomicBool::new(true),
                epoch: AtomicU64::new(0),
            })
            .collect(),
    )
}

fn stop(servers: &[Server], s: usize) {
    servers[s].up.store(false, Ordering::SeqCst);
    servers[s].epoch.fetch_add(1, Ordering::SeqCst);
}

fn start(servers: &[Server], s: usize) {
    servers[s].up.store(true, Ordering::SeqCst);
}

fn pools(servers: &Arc<Vec<Server>>) -> Vec<Pool<Conn>> {
    (0..SERVERS)
        .map(|server| {
            let (open, check) = (servers.clone(), servers.clone());
            Pool::builder()
                .name(format!("server-{server}"))
                .size(3)
                .checkout_timeout(Duration::from_secs(5))
                .reconnect_delay(RECONNECT_DELAY)
                // Checked before every lease: a stopped server's connections are found at
                // once, not after the default `check_after_idle` window.
                .check_after_idle(Duration::ZERO)
                .test_on_checkout(move |conn: &mut Conn| -> Result<(), BoxError> {
                    let s = &check[conn.server];
                    if s.up.load(Ordering::SeqCst) && s.epoch.load(Ordering::SeqCst) == conn.epoch {
                        conn.checked = true;
                        Ok(())
                    } else {
                        Err("connection closed by the server".into())
                    }
                })
                .build(move || {
                    let s = &open[server];
                    let epoch = s.epoch.load(Ordering::SeqCst);
                    if s.up.load(Ordering::SeqCst) {
                        Ok(Conn {
                            server,
                            epoch,
                            checked: false,
                        })
                    } else {
                        Err(format!("server {server}: connection refused").into())
                    }
                })
                .unwrap()
        })
        .collect()
}

#[test]
fn pools_dying_and_rejoining_while_checkouts_race() {
    let servers = servers();
    let balancer = Balancer::over_pools(pools(&servers)).unwrap();
    // Even: not in an all-down window; odd: in one (or entering or leaving it).
    let all_down = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let needless_failures = AtomicUsize::new(0);
    let stale = AtomicUsize::new(0);
    let calls_in_all_down = AtomicUsize::new(0);
    // When the last all-down window ended (server 0 back), in ms since `t0`: a pool may wait
    // out its `reconnect_delay` after its server returns, so only a call that began later
    // than that with server 0 up has no excuse to fail.
    let t0 = Instant::now();
    let ms_since = |t0: Instant| t0.elapsed().as_millis() as u64;
    let window_ended = AtomicU64::new(0);
    let served: Vec<AtomicU64> = (0..SERVERS).map(|_| AtomicU64::new(0)).collect();
    let mut all_down_time = Duration::ZERO;

    thread::scope(|s| {
        for _ in 0..THREADS {
            let balancer = balancer.clone();
            let (all_down, done) = (&all_down, &done);
            let (needless_failures, stale, calls_in_all_down, served) =
                (&needless_failures, &stale, &calls_in_all_down, &served);
            let window_ended = &window_ended;
            s.spawn(move || {
                while !done.load(Ordering::SeqCst) {
                    let before = all_down.load(Ordering::SeqCst);
                    let began = ms_since(t0);
                    let result = balancer.checkout_timeout(Duration::from_secs(5));
                    let after = all_down.load(Ordering::SeqCst);
                    if before % 2 == 1 && before == after {
                        calls_in_all_down.fetch_add(1, Ordering::SeqCst);
                    }
                    match result {
                        Ok(mut conn) => {
                            served[conn.server].fetch_add(1, Ordering::SeqCst);
                            // It passed the check when it was handed out: a live connection
                            // then (its server may have stopped since: that is no fault).
                            if !std::mem::replace(&mut conn.checked, false) {
                                stale.fetch_add(1, Ordering::SeqCst);
                            }
                            thread::yield_now();
                        }
                        Err(err) => {
                            let down = PoolsDown::of(&err);
                            assert!(
                                matches!(err, Error::Disconnected { .. }) && down.is_some(),
                                "unexpected {err:?}"
                            );
                            assert_eq!(down.unwrap().causes().len(), SERVERS);
                            // Its reconnect_delay, and room for a reaper and a start thread
                            // that a loaded machine wakes late.
                            let settled = window_ended.load(Ordering::SeqCst)
                                + RECONNECT_DELAY.as_millis() as u64
                                + 50;
                            if before == after && before % 2 == 0 && began > settled {
                                needless_failures.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                    }
                }
            });
        }

        // Chaos: servers 1 and 2 go down and up, alone and together; then all three.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..12 {
            for _ in 0..10 {
                let s = 1 + (next() % 2) as usize;
                if servers[s].up.load(Ordering::SeqCst) {
                    stop(&servers, s);
                } else {
                    start(&servers, s);
                }
                thread::sleep(Duration::from_millis(next() % 15));
            }
            if round % 4 == 3 {
                all_down.fetch_add(1, Ordering::SeqCst);
                for s in 0..SERVERS {
                    stop(&servers, s);
                }
                let began = Instant::now();
                thread::sleep(Duration::from_millis(150));
                start(&servers, 0);
                all_down_time += began.elapsed();
                window_ended.store(ms_since(t0), Ordering::SeqCst);
                all_down.fetch_add(1, Ordering::SeqCst);
            }
        }
        for s in 0..SERVERS {
            start(&servers, s);
        }
        // Back in rotation within a reconnect_delay (and then some, for a loaded machine).
        let back = Instant::now();
        while balancer.map(|_| ()).len() < SERVERS && back.elapsed() < Duration::from_secs(5) {
            thread::sleep(Duration::from_millis(1));
        }
        let rejoined = back.elapsed();
        assert!(
            rejoined < RECONNECT_DELAY + Duration::from_secs(1),
            "every pool live again only after {rejoined:?}"
        );
        let before: Vec<u64> = served.iter().map(|n| n.load(Ordering::SeqCst)).collect();
        thread::sleep(Duration::from_millis(200));
        let after: Vec<u64> = served.iter().map(|n| n.load(Ordering::SeqCst)).collect();
        done.store(true, Ordering::SeqCst);
        println!(
            "all up again: live {rejoined:?} later; served in the next 200 ms: {:?}",
            {
                after
                    .iter()
                    .zip(&before)
                    .map(|(a, b)| a - b)
                    .collect::<Vec<_>>()
            }
        );
        for (s, (a, b)) in after.iter().zip(&before).enumerate() {
            assert!(a > b, "server {s} was not served once all were up again");
        }
    });

    let calls = calls_in_all_down.load(Ordering::SeqCst);
    // Each call waits for one pool's next attempt: at most a few per attempt and thread.
    let attempts = (all_down_time.as_millis() / RECONNECT_DELAY.as_millis() + 1) as usize;
    let most = THREADS * (attempts + 3) * SERVERS;
    println!(
        "{calls} calls wholly within {all_down_time:?} of every server down ({most} at most); \
         served {:?}",
        served
            .iter()
            .map(|n| n.load(Ordering::SeqCst))
            .collect::<Vec<_>>()
    );
    assert!(
        calls <= most,
        "{calls} calls with every server down: spinning"
    );
    assert_eq!(needless_failures.load(Ordering::SeqCst), 0);
    assert_eq!(
        stale.load(Ordering::SeqCst),
        0,
        "a broken connection was handed out"
    );
    for pool in balancer.pools() {
        let stats = pool.stats();
        assert_eq!(stats.leased, 0, "{stats:?}");
        assert!(pool.is_alive());
    }
}
