//! Twenty-seventh breaking pass: the twenty-sixth pass's change (commits a9ff6fd, 147cf1b):
//! the replacement started ahead for a worker kept past its expiry (`start_replacement_ahead`
//! in src/pool/start.rs, asked by the sweep's keep in src/pool/upkeep.rs and by
//! `expired_and_not_kept` in src/pool/checkout.rs), and the whole kept-worker rule again,
//! attacked through the fault families: starts failing while a worker is kept (pacing),
//! overflow room, close, drain and resize racing the start ahead, churn with tiny lifetimes,
//! quiet counts.
//!
//! Tests whose doc comment starts with "Found" are one bug each, named after its scenario,
//! failing on the code they were written against: two, both in a pool whose one worker is
//! all its `min_idle` (`size(2).min_idle(1)`) while every start fails from its expiry on.
//! The start ahead ignores the backoff, and the sweep asks for it at every look at the kept
//! worker (every `MIN_TICK`): ~89 failed starts in 900 ms with `reconnect_delay(400 ms)`.
//! And once the start ahead has failed, nothing counts as "coming", so the kept worker, the
//! one that still works, is retired at its next return and the pool answers `Disconnected`.
//! Both fixed: `start_replacement_ahead` (src/pool/start.rs) claims nothing during a backoff,
//! and `replacement_for` (src/pool/checkout.rs, asked by `kept_for_replacements` and the
//! sweep's keep) counts the replacement the pool retries after its backoff as coming, while
//! starts fail since the worker expired and it is part of `min_idle`. Those marked "Tried"
//! document what was tried and held.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use cylinder::{BoxError, Error, Event, Pool, PoolBuilder};

/// A worker: its start's number, when it was born, the count of workers alive.
#[allow(dead_code)]
struct Conn {
    n: usize,
    born: Instant,
    live: Arc<AtomicUsize>,
    /// How long its `Drop` takes, asked when it runs.
    drop_takes: Arc<dyn Fn(usize) -> Duration + Send + Sync>,
    dropped_at: Arc<Mutex<Vec<(usize, Instant)>>>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        let takes = (self.drop_takes)(self.n);
        if !takes.is_zero() {
            thread::sleep(takes);
        }
        self.dropped_at
            .lock()
            .unwrap()
            .push((self.n, Instant::now()));
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What a test watches.
#[derive(Clone, Default)]
struct Watch {
    starts: Arc<AtomicUsize>,
    live: Arc<AtomicUsize>,
    /// The most workers alive at once (counted as each start ends, before it joins the pool).
    most_live: Arc<AtomicUsize>,
    expired: Arc<AtomicUsize>,
    /// When each worker (by start number) was dropped, after the test's zero.
    dropped_at: Arc<Mutex<Vec<(usize, Instant)>>>,
}

/// What start `n` does.
#[derive(Clone, Copy)]
#[allow(dead_code)]
enum Start {
    Ok(Duration),
    Fail(Duration),
    Panic,
}

/// A builder (counting expiries) and a start closure: `plan(n)` says what start `n` does,
/// `drop_takes(n)` how long its worker's `Drop` takes.
fn watched_pool(
    watch: &Watch,
    plan: impl Fn(usize) -> Start + Send + Sync + 'static,
    drop_takes: impl Fn(usize) -> Duration + Send + Sync + 'static,
) -> (
    PoolBuilder<Conn>,
    impl Fn() -> Result<Conn, BoxError> + Send + Sync + 'static,
) {
    let builder = Pool::builder().checkout_timeout(Duration::from_secs(3));
    let (s, l, m, d) = (
        watch.starts.clone(),
        watch.live.clone(),
        watch.most_live.clone(),
        watch.dropped_at.clone(),
    );
    let drop_takes: Arc<dyn Fn(usize) -> Duration + Send + Sync> = Arc::new(drop_takes);
    let start = move || {
        let n = s.fetch_add(1, Ordering::SeqCst);
        match plan(n) {
            Start::Ok(takes) => thread::sleep(takes),
            Start::Fail(takes) => {
                thread::sleep(takes);
                return Err(format!("start {n} fails on purpose").into());
            }
            Start::Panic => panic!("start {n} panics on purpose"),
        }
        let now = l.fetch_add(1, Ordering::SeqCst) + 1;
        m.fetch_max(now, Ordering::SeqCst);
        Ok::<_, BoxError>(Conn {
            n,
            born: Instant::now(),
            live: l.clone(),
            drop_takes: drop_takes.clone(),
            dropped_at: d.clone(),
        })
    };
    (builder, start)
}

fn counting_expiries(builder: PoolBuilder<Conn>, watch: &Watch) -> PoolBuilder<Conn> {
    let e = watch.expired.clone();
    builder.on_event(move |event| {
        if matches!(event, Event::WorkerExpired) {
            e.fetch_add(1, Ordering::SeqCst);
        }
    })
}

fn sleep_until(at: Instant) {
    thread::sleep(at.saturating_duration_since(Instant::now()));
}

#[allow(dead_code)]
fn on_reaper() -> bool {
    thread::current()
        .name()
        .is_some_and(|name| name.starts_with("cylinder-reaper"))
}

/// Found (src/pool/start.rs `start_replacement_ahead`, asked by the sweep's keep in
/// src/pool/upkeep.rs `sweep`: it claims a start without asking `backoff_left`, and the sweep
/// asks it at every look at the kept worker, planned every `MIN_TICK` while it is kept). A
/// lazy pool (`size(2)`, `min_idle(1)`) with its one worker A, idle, `max_lifetime(100 ms)`,
/// `reconnect_delay(400 ms)`; from A's expiry on, every start fails (the server refuses new
/// connections; A still works). At A's expiry the sweep keeps A (right: it is the one that
/// still works) and starts its replacement ahead, which fails; from then on every sweep
/// (one per ~10 ms: the kept worker's expiry is planned at `now + MIN_TICK`) finds A expired
/// alone with nothing coming, and `start_replacement_ahead` claims one more start, backoff
/// or not.
///
/// Expected (GUARANTEES.md: "Starts that fail never take the pool down: it serves what it
/// has and retries every `reconnect_delay`"; the accepted "a replacement started ahead for a
/// kept worker while starts fail follows the pool's usual retry pacing (one attempt per
/// `reconnect_delay`), not a new one"; BREAKING.md families 5 and 11: back off, never spin):
/// over the ~900 ms after A's expiry, about 900 / 400 + 1 failed starts (at most 6 allowed).
///
/// What happened: see the assertion's numbers (~60-90 failed starts in 900 ms, one per
/// sweep). Suggested fix: in `start_replacement_ahead`, claim nothing while
/// `backoff_left(now)` is `Some` (the kept worker stays meanwhile: `may_stay_past_expiry`
/// keeps it while starts fail since its expiry), as `refill`, `start_for_line` and
/// `start_for_caller` do.
#[test]
fn a_kept_worker_at_min_idle_while_starts_fail_is_not_replaced_at_every_sweep() {
    let watch = Watch::default();
    let (builder, start) = watched_pool(
        &watch,
        |n| {
            if n == 0 {
                Start::Ok(Duration::ZERO)
            } else {
                Start::Fail(Duration::from_millis(1))
            }
        },
        |_| Duration::ZERO,
    );
    let pool = counting_expiries(builder, &watch)
        .size(2)
        .min_idle(1)
        .reconnect_delay(Duration::from_millis(400))
        .max_lifetime(Duration::from_millis(100))
        .build(start)
        .unwrap();
    let w = watch.clone();
    let outcome = common::within(Duration::from_secs(6), move || {
        let from = Instant::now();
        sleep_until(from + Duration::from_millis(1000));
        let starts = w.starts.load(Ordering::SeqCst);
        // A still serves (kept: starts fail since it expired).
        let served = pool
            .checkout_timeout(Duration::from_millis(200))
            .map(|lease| lease.n)
            .map_err(|e| format!("{e:?}"));
        (starts, served, pool.stats())
    })
    .expect("hung");
    let (starts, served, stats) = outcome;
    let failed = starts - 1;
    eprintln!("{failed} failed starts in ~900 ms; served {served:?}; {stats:?}");
    assert!(
        failed <= 6,
        "{failed} failed starts in the ~900 ms after the one worker's expiry, with \\
         reconnect_delay(400 ms) (about 3 expected): the replacement started ahead for the \\
         kept worker is retried at every sweep, not once per reconnect_delay; stats {stats:?}"
    );
    assert_eq!(served, Ok(0), "the kept worker did not serve on");
}

/// Found (src/pool/checkout.rs `kept_for_replacements` → `replacement_coming`, asked at the
/// return by `expired_and_not_kept` from src/pool/release.rs `unfit`). The pool above; a
/// client holds A across its expiry and checks it out and returns it again and again (every
/// 5 ms) while every start fails. The first return past the expiry flags A and starts its
/// replacement ahead; that start fails (1 ms), and at A's next return nothing is "coming"
/// (no start on its way; `total (1) < min_idle (1)` false: A counts toward `min_idle`
/// itself, the same blind spot pass 26 fixed for the start, not for the keep), so A, the one
/// worker that still works, is retired, and the pool is down (`Disconnected`) until the
/// server comes back.
///
/// Expected (GUARANTEES.md's `max_lifetime` row: the one kept stays "while no other worker
/// is in service and a replacement is coming (started at once if the pool has room and will
/// want one) ... longer only while starts fail since it expired: the one that still works";
/// "Starts that fail never take the pool down: it serves what it has"; pass 26's Tried
/// `a_worker_kept_while_starts_fail_since_its_expiry_serves_on_then_goes`, which holds with
/// `min_idle` = size): every checkout of the loop (~1 s) gets A; none answers
/// `Disconnected`. Not the accepted lazy case: `min_idle` (1) is not below the workers open
/// (1), and the pool does start its replacement.
///
/// What happened: see the assertion's numbers: from ~110 ms on, every ~200 ms a checkout
/// answered `Disconnected` (size 0: A was discarded at its return ~10 ms after its
/// expiry). Suggested fix: in `kept_for_replacements`, also keep a flagged worker that is
/// part of `min_idle` (`total - dropping <= min_idle`) while starts fail since its expiry
/// (`may_stay_past_expiry`'s exception) — its replacement is due, only waiting out the
/// backoff — e.g. count "a start due and waiting out `reconnect_delay`" as coming.
#[test]
fn a_kept_worker_at_min_idle_whose_start_ahead_failed_serves_on_while_starts_fail() {
    let watch = Watch::default();
    let (builder, start) = watched_pool(
        &watch,
        |n| {
            if n == 0 {
                Start::Ok(Duration::ZERO)
            } else {
                Start::Fail(Duration::from_millis(1))
            }
        },
        |_| Duration::ZERO,
    );
    let pool = counting_expiries(builder, &watch)
        .size(2)
        .min_idle(1)
        .reconnect_delay(Duration::from_millis(400))
        .max_lifetime(Duration::from_millis(100))
        .build(start)
        .unwrap();
    let w = watch.clone();
    let outcome = common::within(Duration::from_secs(6), move || {
        let from = Instant::now();
        let mut wrong = Vec::new();
        let mut ok = 0;
        while from.elapsed() < Duration::from_millis(1000) {
            match pool.checkout_timeout(Duration::from_millis(200)) {
                Ok(lease) => {
                    ok += 1;
                    thread::sleep(Duration::from_millis(5));
                    drop(lease);
                }
                Err(e) => {
                    wrong.push((from.elapsed(), format!("{e:?}")));
                    thread::sleep(Duration::from_millis(5));
                }
            }
        }
        (w.starts.load(Ordering::SeqCst), ok, wrong, pool.stats())
    })
    .expect("hung");
    let (starts, ok, wrong, stats) = outcome;
    eprintln!("{starts} starts; {ok} leases; wrong {wrong:?}; {stats:?}");
    assert!(
        wrong.is_empty(),
        "the one worker that still works (kept past its expiry while every start fails) was \
         dropped at a return: {ok} leases, then {} failed checkouts, the first at {:?}: {:?}; \
         starts {starts}; stats {stats:?}",
        wrong.len(),
        wrong[0].0,
        wrong[0].1
    );
}

/// A lone worker's pool whose start ahead is slow: `size(2)`, `min_idle(1)`,
/// `max_lifetime(100 ms)`, every start after the build's takes `restart` (and succeeds).
fn slow_restart_pool(watch: &Watch, restart: Duration) -> Pool<Conn> {
    let (builder, start) = watched_pool(
        watch,
        move |n| {
            if n == 0 {
                Start::Ok(Duration::ZERO)
            } else {
                Start::Ok(restart)
            }
        },
        |_| Duration::ZERO,
    );
    counting_expiries(builder, watch)
        .size(2)
        .min_idle(1)
        .max_lifetime(Duration::from_millis(100))
        .build(start)
        .unwrap()
}

/// Tried (passes; an overflow pool: `size(1)`, `max_overflow(1)`, the start ahead claimed
/// in the overflow room). Its one worker A expires at ~150 ms; restarts take 300 ms. A
/// checkout at 220 ms: reports whether it got A (the kept one) or the pool was empty.
/// Observed: the sweep claims the start ahead (total 2 > size 1), then puts A back: above
/// the size, A is closed at once (`put_back` → `close_above`), so the pool is empty while
/// the replacement starts, as in the accepted `size(1)` case. Held as accepted (the
/// outcome is that of a pool with no room); the assertion checks only that nothing worse
/// happens: never more than two alive, the pool settles at one worker.
#[test]
fn an_overflow_pool_of_one_settles_after_its_worker_expires() {
    let watch = Watch::default();
    let (builder, start) = watched_pool(
        &watch,
        |n| {
            if n == 0 {
                Start::Ok(Duration::ZERO)
            } else {
                Start::Ok(Duration::from_millis(300))
            }
        },
        |_| Duration::ZERO,
    );
    let pool = counting_expiries(builder, &watch)
        .size(1)
        .max_overflow(1)
        .max_lifetime(Duration::from_millis(150))
        .build(start)
        .unwrap();
    let w = watch.clone();
    let outcome = common::within(Duration::from_secs(6), move || {
        let from = Instant::now();
        sleep_until(from + Duration::from_millis(220));
        let before = pool.stats();
        let got = pool
            .checkout_timeout(Duration::from_millis(50))
            .map(|lease| lease.n)
            .map_err(|e| format!("{e:?}"));
        let settled = common::eventually(Duration::from_secs(1), || {
            let stats = pool.stats();
            stats.starting == 0 && stats.size == 1 && w.live.load(Ordering::SeqCst) == 1
        });
        (before, got, settled, pool.stats())
    })
    .expect("hung");
    let (before, got, settled, stats) = outcome;
    eprintln!("at 220 ms {before:?}; got {got:?}; settled {settled}; {stats:?}");
    assert!(settled, "{stats:?}");
    assert!(watch.most_live.load(Ordering::SeqCst) <= 2);
}

/// Tried (passes; close racing the start ahead). The lone worker's pool (restarts 300 ms):
/// at 150 ms A is kept and its replacement on its way; `close` then: no start begins after
/// the close, the one under way is closed when it ends, none alive after.
#[test]
fn close_while_the_start_ahead_runs_leaves_nothing_alive() {
    let watch = Watch::default();
    let pool = slow_restart_pool(&watch, Duration::from_millis(300));
    let w = watch.clone();
    let outcome = common::within(Duration::from_secs(6), move || {
        let from = Instant::now();
        sleep_until(from + Duration::from_millis(150));
        let before = pool.stats();
        pool.close();
        let starts_at_close = w.starts.load(Ordering::SeqCst);
        let gone = common::eventually(Duration::from_secs(2), || {
            w.live.load(Ordering::SeqCst) == 0 && pool.stats().starting == 0
        });
        thread::sleep(Duration::from_millis(100));
        (
            before,
            starts_at_close,
            w.starts.load(Ordering::SeqCst),
            gone,
            pool.stats(),
        )
    })
    .expect("hung");
    let (before, at_close, after, gone, stats) = outcome;
    eprintln!("before close {before:?}; starts {at_close} -> {after}; {stats:?}");
    assert_eq!(before.starting, 1, "no start ahead: {before:?}");
    assert!(
        gone,
        "alive after close: {}",
        watch.live.load(Ordering::SeqCst)
    );
    assert_eq!(at_close, after, "a start began after close");
}

/// Tried (passes; `drain` racing the start ahead): as above with `drain(2 s)`: returns
/// `Ok`, nothing alive, `Closed` after.
#[test]
fn drain_while_the_start_ahead_runs_leaves_nothing_alive() {
    let watch = Watch::default();
    let pool = slow_restart_pool(&watch, Duration::from_millis(300));
    let w = watch.clone();
    let outcome = common::within(Duration::from_secs(6), move || {
        let from = Instant::now();
        sleep_until(from + Duration::from_millis(150));
        let drained = pool
            .drain(Duration::from_secs(2))
            .map_err(|e| format!("{e:?}"));
        let gone = common::eventually(Duration::from_secs(1), || {
            w.live.load(Ordering::SeqCst) == 0
        });
        let after = pool.checkout().map(|_| ()).map_err(|e| format!("{e:?}"));
        (drained, gone, after)
    })
    .expect("hung");
    let (drained, gone, after) = outcome;
    assert!(drained.is_ok(), "{drained:?}");
    assert!(
        gone,
        "alive after drain: {}",
        watch.live.load(Ordering::SeqCst)
    );
    assert_eq!(after, Err("Closed".to_string()));
}

/// Tried (passes; `resize` racing the start ahead: `min_idle` changes under it). The lone
/// worker's pool (restarts 200 ms): at 150 ms A is kept and its replacement on its way;
/// `resize(1)` (then the start ahead is above the size) or `resize(3)` (`min_idle` follows
/// nothing: it stays 1). Within 1.5 s the pool is quiet at a count within its size, as
/// many alive as counted, A gone; never more alive than the largest size plus one.
#[test]
fn resize_while_the_start_ahead_runs_settles() {
    for size in [1usize, 3] {
        let watch = Watch::default();
        let pool = slow_restart_pool(&watch, Duration::from_millis(200));
        let w = watch.clone();
        let outcome = common::within(Duration::from_secs(6), move || {
            let from = Instant::now();
            sleep_until(from + Duration::from_millis(150));
            let before = pool.stats();
            pool.resize(size).unwrap();
            let settled = common::eventually(Duration::from_millis(1500), || {
                let stats = pool.stats();
                stats.starting == 0
                    && stats.size >= 1
                    && stats.size <= size
                    && w.live.load(Ordering::SeqCst) == stats.size
                    && w.dropped_at.lock().unwrap().iter().any(|(n, _)| *n == 0)
            });
            let served = pool
                .checkout_timeout(Duration::from_millis(500))
                .map(|lease| lease.n)
                .map_err(|e| format!("{e:?}"));
            (before, settled, served, pool.stats())
        })
        .expect("hung");
        let (before, settled, served, stats) = outcome;
        eprintln!("resize({size}): before {before:?}; settled {settled}; {served:?}; {stats:?}");
        assert!(
            settled,
            "resize({size}): not settled: {stats:?}, live {}",
            watch.live.load(Ordering::SeqCst)
        );
        assert!(served.is_ok(), "resize({size}): {served:?}");
        assert!(watch.most_live.load(Ordering::SeqCst) <= size.max(2));
    }
}

/// Tried (passes; churn with tiny lifetimes in a lazy pool, where the start ahead is asked
/// most: `size(3)`, `min_idle(1)`, lifetimes of 2, 10 and 30 ms, 10 ms restarts, four
/// clients mixing `checkout_timeout` and `try_checkout` for 500 ms). Never more alive than
/// the size; starts within the pace of starts (a margin over one per 10 ms per slot); no
/// `Disconnected`; quiet after, the counts add up (`free + leased + starting == size`, as
/// many alive as counted) and the pool is at or above `min_idle`.
#[test]
fn churn_in_a_lazy_pool_with_tiny_lifetimes_stays_within_its_size_and_pace() {
    for lifetime in [2u64, 10, 30] {
        let watch = Watch::default();
        let (builder, start) = watched_pool(
            &watch,
            |n| {
                if n == 0 {
                    Start::Ok(Duration::ZERO)
                } else {
                    Start::Ok(Duration::from_millis(10))
                }
            },
            |_| Duration::ZERO,
        );
        let pool = builder
            .size(3)
            .min_idle(1)
            .max_lifetime(Duration::from_millis(lifetime))
            .build(start)
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let wrong = Arc::new(Mutex::new(Vec::new()));
        let leases = Arc::new(AtomicUsize::new(0));
        let clients: Vec<_> = (0..4)
            .map(|i| {
                let (pool, stop, wrong, leases) =
                    (pool.clone(), stop.clone(), wrong.clone(), leases.clone());
                thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        let got = if i % 2 == 0 {
                            pool.checkout_timeout(Duration::from_millis(300))
                        } else {
                            pool.try_checkout()
                        };
                        match got {
                            Ok(lease) => {
                                leases.fetch_add(1, Ordering::SeqCst);
                                thread::sleep(Duration::from_millis(1));
                                drop(lease);
                            }
                            Err(Error::Timeout { .. } | Error::Overload) => {
                                thread::sleep(Duration::from_millis(1));
                            }
                            Err(e) => wrong.lock().unwrap().push(format!("{e:?}")),
                        }
                    }
                })
            })
            .collect();
        thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::SeqCst);
        for client in clients {
            client.join().unwrap();
        }
        let starts = watch.starts.load(Ordering::SeqCst);
        let leases = leases.load(Ordering::SeqCst);
        eprintln!("lifetime {lifetime} ms: {starts} starts, {leases} leases");
        assert!(
            wrong.lock().unwrap().is_empty(),
            "{lifetime} ms: {:?}",
            wrong.lock().unwrap()
        );
        assert!(
            starts <= 1 + 3 * 1200 / 10,
            "{lifetime} ms: {starts} starts (a spin)"
        );
        assert!(watch.most_live.load(Ordering::SeqCst) <= 3);
        let quiet = common::eventually(Duration::from_secs(1), || {
            let stats = pool.stats();
            stats.starting == 0
                && stats.free + stats.leased == stats.size
                && watch.live.load(Ordering::SeqCst) == stats.size
                && stats.size <= 3
        });
        assert!(
            quiet,
            "{lifetime} ms: {:?}, live {}",
            pool.stats(),
            watch.live.load(Ordering::SeqCst)
        );
        pool.close();
    }
}
