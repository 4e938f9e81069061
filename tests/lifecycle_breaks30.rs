//! Thirtieth breaking pass: the twenty-ninth pass's fixes (commit 173811b): `replace`
//! (`refill_within(true)`) claims ONE start per worker retired or taken while a backoff runs,
//! and `start_replacement_ahead` claims a shortage nobody has claimed (waiting only for a
//! start on its way) (src/pool/start.rs), attacked through the fault families: several
//! workers discarded or taken at once during a backoff with waiters in line, a server that
//! flaps under a worker kept past its expiry, the answers of `checkout` and `try_checkout`
//! while nothing is open and starts fail, and the counts once quiet.
//!
//! This pass found nothing new: every test here is "Tried", an attack that held. Its one
//! remark is taken: a successful start that ends a backoff wakes the reaper (`joined` in
//! src/pool/start.rs), which claims at once what the backoff held back, rather than at the
//! backoff's planned end.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use cylinder::{BoxError, Event, OwnedLease, Pool, PoolBuilder};

/// A worker: its start's number; counted alive while it lives.
#[allow(dead_code)]
struct Conn {
    n: usize,
    live: Arc<AtomicUsize>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A server that can be taken down and brought back; what a test watches.
#[derive(Clone, Default)]
struct Server {
    down: Arc<AtomicBool>,
    starts: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    live: Arc<AtomicUsize>,
    most_live: Arc<AtomicUsize>,
    expired: Arc<AtomicUsize>,
}

impl Server {
    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }
    fn starts(&self) -> usize {
        self.starts.load(Ordering::SeqCst)
    }
    fn failed(&self) -> usize {
        self.failed.load(Ordering::SeqCst)
    }
}

/// A builder (counting expiries) and a start closure: a start takes `takes`, and fails while
/// the server is down.
fn served_pool(
    server: &Server,
    takes: Duration,
) -> (
    PoolBuilder<Conn>,
    impl Fn() -> Result<Conn, BoxError> + Send + Sync + 'static,
) {
    let e = server.expired.clone();
    let builder = Pool::builder()
        .checkout_timeout(Duration::from_secs(3))
        .on_event(move |event| {
            if matches!(event, Event::WorkerExpired) {
                e.fetch_add(1, Ordering::SeqCst);
            }
        });
    let s = server.clone();
    let start = move || {
        let n = s.starts.fetch_add(1, Ordering::SeqCst);
        if !takes.is_zero() {
            thread::sleep(takes);
        }
        if s.down.load(Ordering::SeqCst) {
            s.failed.fetch_add(1, Ordering::SeqCst);
            return Err(format!("start {n} fails on purpose: the server is down").into());
        }
        let now = s.live.fetch_add(1, Ordering::SeqCst) + 1;
        s.most_live.fetch_max(now, Ordering::SeqCst);
        Ok::<_, BoxError>(Conn {
            n,
            live: s.live.clone(),
        })
    };
    (builder, start)
}

fn sleep_until(at: Instant) {
    thread::sleep(at.saturating_duration_since(Instant::now()));
}

/// Waits (up to `limit`) for the pool to be quiet: nothing starting, nothing waiting.
fn quiet(pool: &Pool<Conn>, limit: Duration) -> cylinder::PoolStats {
    let from = Instant::now();
    loop {
        let stats = pool.stats();
        if (stats.starting == 0 && stats.waiters == 0) || from.elapsed() >= limit {
            return stats;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Tried (passes). `size(4)`, `min_idle(4)`, `reconnect_delay(300 ms)`: four clients hold
/// every worker. With the server down, one discards its worker: the replacement fails, a
/// backoff begins (~300 ms). The server is back at 30 ms; four clients get in line at 40 ms
/// (1.5 s timeout; no start for them during the backoff); at 80 ms the other three discard
/// theirs at once (three threads): `replace` claims one each (the backoff still runs), the
/// first to land clears the failure and the line's refill claims the fourth. Every waiter is
/// served well before its timeout (the server is up), no more starts than needed (4 + the
/// failed one + 4), and once quiet the pool holds `min_idle` workers, no more alive.
#[test]
fn several_discards_during_a_backoff_serve_every_waiter_once_the_server_is_back() {
    let server = Server::default();
    let (builder, start) = served_pool(&server, Duration::from_millis(5));
    let pool = Arc::new(
        builder
            .size(4)
            .min_idle(4)
            .reconnect_delay(Duration::from_millis(300))
            .build(start)
            .unwrap(),
    );
    let s = server.clone();
    let outcome = common::within(Duration::from_secs(8), move || {
        let mut leases: Vec<_> = (0..4).map(|_| pool.checkout_owned().unwrap()).collect();
        let from = Instant::now();
        s.set_down(true);
        OwnedLease::discard(leases.pop().unwrap());
        sleep_until(from + Duration::from_millis(30));
        let failed_at_30 = s.failed();
        s.set_down(false);
        sleep_until(from + Duration::from_millis(40));
        let waiters: Vec<_> = (0..4)
            .map(|_| {
                let pool = pool.clone();
                thread::spawn(move || {
                    let asked = from.elapsed();
                    let got = pool.checkout_timeout(Duration::from_millis(1500));
                    let at = from.elapsed();
                    let got = got.map(|lease| {
                        thread::sleep(Duration::from_millis(20));
                        lease.n
                    });
                    (asked, at, got.map_err(|e| format!("{e:?}")))
                })
            })
            .collect();
        sleep_until(from + Duration::from_millis(80));
        let discarding: Vec<_> = leases
            .drain(..)
            .map(|lease| thread::spawn(move || OwnedLease::discard(lease)))
            .collect();
        for d in discarding {
            d.join().unwrap();
        }
        let served: Vec<_> = waiters.into_iter().map(|w| w.join().unwrap()).collect();
        let stats = quiet(&pool, Duration::from_millis(800));
        thread::sleep(Duration::from_millis(100));
        let stats_later = pool.stats();
        (
            failed_at_30,
            served,
            stats,
            stats_later,
            s.starts(),
            s.live.load(Ordering::SeqCst),
        )
    })
    .expect("hung");
    let (failed_at_30, served, stats, later, starts, live) = outcome;
    eprintln!(
        "failed by 30 ms: {failed_at_30}; served {served:?}; quiet {stats:?}; later {later:?}; \
         {starts} starts, {live} alive"
    );
    assert_eq!(
        failed_at_30, 1,
        "not the scenario: the first replacement did not fail"
    );
    for (asked, at, got) in &served {
        assert!(
            got.is_ok() && *at < Duration::from_millis(700),
            "a waiter (in line at {asked:?}) was not served soon with the server up: {got:?} \
             at {at:?}"
        );
    }
    assert_eq!(later.size, 4, "min_idle not restored: {later:?}");
    assert!(
        starts <= 9,
        "{starts} starts for 4 + 1 failed + 4 replacements"
    );
    assert_eq!(live, 4);
}

/// Tried (passes). `size(4)`, `min_idle(4)`, `reconnect_delay(300 ms)`: two leased, two free.
/// With the server down one is discarded (its replacement fails: backoff to ~300 ms); the
/// server is back at 20 ms; at 40 ms the other lease's worker is taken (`OwnedLease::take`):
/// `replace` claims one start (the backoff runs), which lands and clears the failure. The
/// pool is then one short of `min_idle` (three counted): the reaper claims it at the end of
/// the backoff. Once quiet (by ~500 ms) the pool holds four workers and nothing starts.
#[test]
fn a_take_during_a_backoff_leaves_min_idle_short_only_until_the_backoff_ends() {
    let server = Server::default();
    let (builder, start) = served_pool(&server, Duration::from_millis(5));
    let pool = builder
        .size(4)
        .min_idle(4)
        .reconnect_delay(Duration::from_millis(300))
        .build(start)
        .unwrap();
    let s = server.clone();
    let outcome = common::within(Duration::from_secs(8), move || {
        let a = pool.checkout_owned().unwrap();
        let b = pool.checkout_owned().unwrap();
        let from = Instant::now();
        s.set_down(true);
        OwnedLease::discard(a);
        sleep_until(from + Duration::from_millis(20));
        let failed = s.failed();
        s.set_down(false);
        sleep_until(from + Duration::from_millis(40));
        let taken = OwnedLease::take(b);
        sleep_until(from + Duration::from_millis(150));
        let mid = pool.stats();
        sleep_until(from + Duration::from_millis(550));
        let end = quiet(&pool, Duration::from_millis(500));
        drop(taken);
        (failed, mid, end, s.starts())
    })
    .expect("hung");
    let (failed, mid, end, starts) = outcome;
    eprintln!("failed {failed}; at 150 ms {mid:?}; at 550 ms {end:?}; {starts} starts");
    assert_eq!(failed, 1, "not the scenario");
    assert_eq!(
        end.size, 4,
        "min_idle not restored after the backoff: {end:?}"
    );
    assert_eq!(end.starting, 0);
    assert!(starts <= 7, "{starts} starts for 4 + 1 failed + 2");
}

/// Tried (passes). `size(2)`, `min_idle(2)`, `reconnect_delay(250 ms)`: both workers leased,
/// then discarded at once with the server down; both replacements fail: nothing open, starts
/// failing. During the backoff `try_checkout` answers `Disconnected` with the start's cause
/// (never `Overload`), and a `checkout_timeout(50 ms)` answers `Disconnected` too. The server
/// is back at 60 ms; a `checkout_timeout(1 s)` asked at 80 ms is served once the backoff ends
/// (by ~400 ms), and the pool then holds its two workers.
#[test]
fn checkout_answers_are_true_while_nothing_is_open_and_once_the_server_is_back() {
    let server = Server::default();
    let (builder, start) = served_pool(&server, Duration::from_millis(2));
    let pool = builder
        .size(2)
        .min_idle(2)
        .reconnect_delay(Duration::from_millis(250))
        .build(start)
        .unwrap();
    let s = server.clone();
    let outcome = common::within(Duration::from_secs(8), move || {
        let a = pool.checkout_owned().unwrap();
        let b = pool.checkout_owned().unwrap();
        let from = Instant::now();
        s.set_down(true);
        let da = thread::spawn(move || OwnedLease::discard(a));
        OwnedLease::discard(b);
        da.join().unwrap();
        // Both replacements end (fail).
        while pool.stats().starting > 0 && from.elapsed() < Duration::from_millis(40) {
            thread::sleep(Duration::from_millis(1));
        }
        let failed = s.failed();
        let tried = pool
            .try_checkout()
            .map(|l| l.n)
            .map_err(|e| format!("{e:?}"));
        let timed = pool
            .checkout_timeout(Duration::from_millis(50))
            .map(|l| l.n)
            .map_err(|e| format!("{e:?}"));
        sleep_until(from + Duration::from_millis(60));
        s.set_down(false);
        sleep_until(from + Duration::from_millis(80));
        let back = pool
            .checkout_timeout(Duration::from_secs(1))
            .map(|l| l.n)
            .map_err(|e| format!("{e:?}"));
        let back_at = from.elapsed();
        let end = quiet(&pool, Duration::from_millis(500));
        (failed, tried, timed, back, back_at, end)
    })
    .expect("hung");
    let (failed, tried, timed, back, back_at, end) = outcome;
    eprintln!(
        "failed {failed}; try {tried:?}; timed {timed:?}; back {back:?} at {back_at:?}; {end:?}"
    );
    assert!(failed >= 1, "not the scenario");
    assert!(
        tried
            .as_ref()
            .is_err_and(|e| e.starts_with("Disconnected") && e.contains("on purpose")),
        "try_checkout while nothing is open and starts fail: {tried:?}"
    );
    assert!(
        timed
            .as_ref()
            .is_err_and(|e| e.starts_with("Disconnected") && e.contains("on purpose")),
        "checkout_timeout while nothing is open and starts fail: {timed:?}"
    );
    assert!(
        back.is_ok() && back_at < Duration::from_millis(600),
        "{back:?} at {back_at:?}"
    );
    assert_eq!(end.size, 2, "{end:?}");
}

/// Tried (passes). The lone worker's pool (`size(2)`, `min_idle(1)`, `max_lifetime(100 ms)`,
/// `reconnect_delay(100 ms)`): the server is down from 50 ms to 400 ms while a client leases
/// every 10 ms. A expires at ~100 ms; its start ahead fails, so it is kept (the one that
/// still works) and serves every lease; one attempt per backoff meanwhile (no spin). Once the
/// server is back, a replacement lands within a backoff or so and A goes: by 700 ms no lease
/// is A's, and the pool is quiet with one or two workers, one start at a time.
#[test]
fn a_flapping_server_under_a_kept_worker_keeps_the_pace_and_replaces_it_once_back() {
    let server = Server::default();
    let (builder, start) = served_pool(&server, Duration::from_millis(2));
    let pool = builder
        .size(2)
        .min_idle(1)
        .max_lifetime(Duration::from_millis(100))
        .reconnect_delay(Duration::from_millis(100))
        .build(start)
        .unwrap();
    let s = server.clone();
    let outcome = common::within(Duration::from_secs(8), move || {
        let from = Instant::now();
        let mut leases = Vec::new();
        let mut wrong = Vec::new();
        let mut starts_at_400 = None;
        let mut flipped = (false, false);
        while from.elapsed() < Duration::from_millis(900) {
            if !flipped.0 && from.elapsed() >= Duration::from_millis(50) {
                s.set_down(true);
                flipped.0 = true;
            }
            if !flipped.1 && from.elapsed() >= Duration::from_millis(400) {
                starts_at_400 = Some(s.starts());
                s.set_down(false);
                flipped.1 = true;
            }
            let asked = from.elapsed();
            match pool.checkout_timeout(Duration::from_millis(60)) {
                Ok(lease) => {
                    leases.push((asked, lease.n));
                    thread::sleep(Duration::from_millis(1));
                }
                Err(e) => wrong.push((asked, format!("{e:?}"))),
            }
            thread::sleep(Duration::from_millis(9));
        }
        let end = quiet(&pool, Duration::from_millis(300));
        (leases, wrong, starts_at_400, s.starts(), s.failed(), end)
    })
    .expect("hung");
    let (leases, wrong, starts_at_400, starts, failed, end) = outcome;
    let last_a = leases
        .iter()
        .rev()
        .find(|(_, n)| *n == 0)
        .map(|(at, _)| *at);
    eprintln!(
        "{} leases, last of A at {last_a:?}; starts at 400 ms {starts_at_400:?}, {starts} in \
         all, {failed} failed; wrong {wrong:?}; {end:?}",
        leases.len()
    );
    assert!(
        wrong.is_empty(),
        "checkouts failed with A still working: {wrong:?}"
    );
    assert!(
        starts_at_400.is_some_and(|n| n <= 1 + 6),
        "attempts while down: {starts_at_400:?}"
    );
    assert!(
        last_a.is_some_and(|at| at < Duration::from_millis(700)),
        "A still served at {last_a:?}, the server back at 400 ms"
    );
    assert_eq!(end.starting, 0);
    assert!((1..=2).contains(&end.size), "{end:?}");
}

/// Tried (passes). `size(3)`, `min_idle(3)`, `reconnect_delay(300 ms)`: three clients hold
/// every worker; a replacement fails (server down at 0, back at 20 ms; backoff to ~300 ms).
/// Two clients wait in line from 30 ms (1 s timeout). At 50 ms the two other workers are
/// taken at once (`OwnedLease::take`, two threads): one start each despite the backoff,
/// and the line's refill after the first lands; both waiters are served by ~400 ms at the
/// latest, and once quiet the pool holds three workers (the taken ones not counted).
#[test]
fn several_takes_during_a_backoff_serve_the_waiters_in_line() {
    let server = Server::default();
    let (builder, start) = served_pool(&server, Duration::from_millis(5));
    let pool = Arc::new(
        builder
            .size(3)
            .min_idle(3)
            .reconnect_delay(Duration::from_millis(300))
            .build(start)
            .unwrap(),
    );
    let s = server.clone();
    let outcome = common::within(Duration::from_secs(8), move || {
        let mut leases: Vec<_> = (0..3).map(|_| pool.checkout_owned().unwrap()).collect();
        let from = Instant::now();
        s.set_down(true);
        OwnedLease::discard(leases.pop().unwrap());
        sleep_until(from + Duration::from_millis(20));
        let failed = s.failed();
        s.set_down(false);
        sleep_until(from + Duration::from_millis(30));
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let pool = pool.clone();
                thread::spawn(move || {
                    let got = pool.checkout_timeout(Duration::from_secs(1));
                    (
                        from.elapsed(),
                        got.map(|l| l.n).map_err(|e| format!("{e:?}")),
                    )
                })
            })
            .collect();
        sleep_until(from + Duration::from_millis(50));
        let takers: Vec<_> = leases
            .drain(..)
            .map(|lease| thread::spawn(move || OwnedLease::take(lease)))
            .collect();
        let taken: Vec<_> = takers.into_iter().map(|t| t.join().unwrap()).collect();
        let served: Vec<_> = waiters.into_iter().map(|w| w.join().unwrap()).collect();
        sleep_until(from + Duration::from_millis(500));
        let end = quiet(&pool, Duration::from_millis(500));
        drop(taken);
        (failed, served, end, s.starts())
    })
    .expect("hung");
    let (failed, served, end, starts) = outcome;
    eprintln!("failed {failed}; served {served:?}; {end:?}; {starts} starts");
    assert_eq!(failed, 1, "not the scenario");
    for (at, got) in &served {
        assert!(
            got.is_ok() && *at < Duration::from_millis(450),
            "a waiter was not served soon with the server up: {got:?} at {at:?}"
        );
    }
    assert_eq!(end.size, 3, "{end:?}");
    assert_eq!(end.starting, 0);
    assert!(starts <= 3 + 1 + 3, "{starts} starts");
}
