//! Twenty-eighth breaking pass: the twenty-seventh pass's fixes (commit 5426c2c) and the
//! kept-worker rule they extend: `replacement_for`'s failing clause (a replacement the pool
//! retries after its backoff counts as coming while starts fail since the kept worker
//! expired) and the backoff in `start_replacement_ahead` (src/pool/checkout.rs,
//! src/pool/start.rs, src/pool/upkeep.rs), attacked through the fault families: a single
//! failed start ahead followed by a server that is up (who claims the retry?), a failure from
//! just before the expiry, a server that flaps, error truth with a kept worker leased,
//! counts when quiet.
//!
//! Tests whose doc comment starts with "Found" are one bug each, named after its scenario,
//! failing on the code they were written against: two, both in a pool whose one worker is
//! all its `min_idle` (`size(2).min_idle(1)`) and a single one-off failed start. After the
//! kept worker's start ahead fails once, nothing retries while a client keeps the worker
//! busy (the failing clause keeps it for ever, the server up); and a failure from just before
//! the expiry makes the keep refuse (nothing "coming"), though `replace` then starts the
//! replacement at once: the pool is empty for the whole start. Both fixed in
//! `start_replacement_ahead` (src/pool/start.rs): every look at a kept worker asks it, not
//! only the first, and a backoff from before the worker's expiry does not hold it back (its
//! retirement would claim a replacement at once too); one from a start failed since does.
//! Those marked "Tried" document what was tried and held.

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

/// The lone worker's pool: `size(2)`, `min_idle(1)` (its one worker is all its `min_idle`,
/// and it has room for one more), `max_lifetime(lifetime)`, `reconnect_delay(backoff)`;
/// start `n` does `plan(n)`.
fn lone_worker_pool(
    watch: &Watch,
    lifetime: Duration,
    backoff: Duration,
    plan: impl Fn(usize) -> Start + Send + Sync + 'static,
) -> Pool<Conn> {
    let (builder, start) = watched_pool(watch, plan, |_| Duration::ZERO);
    counting_expiries(builder, watch)
        .size(2)
        .min_idle(1)
        .reconnect_delay(backoff)
        .max_lifetime(lifetime)
        .build(start)
        .unwrap()
}

/// Found (src/pool/checkout.rs `replacement_for`'s failing clause, with nothing to claim the
/// retry it counts on: src/pool/start.rs `wanted` counts the kept worker toward `min_idle`,
/// and `start_replacement_ahead` is asked again only by the sweep's first pass, which sees
/// idle workers only). The lone worker's pool (`max_lifetime(100 ms)`,
/// `reconnect_delay(100 ms)`); start 1 fails (a one-off: the server drops one connect), every
/// other start succeeds in 10 ms. One client uses the pool back to back (checkout, 20 ms of
/// work, return, checkout again) for 1.2 s. At A's first return past its expiry A is flagged
/// and its replacement started ahead (start 1), which fails: `failing` is set, the last
/// failure after A's expiry. From then on every return keeps A (`replacement_for`: starts
/// failing since its expiry and `total (1) <= min_idle (1)`), and nothing ever retries: the
/// reaper's `refill` finds no shortage (A counts toward `min_idle`), no one waits in line,
/// A is never idle at a sweep, and the return's `expired_and_not_kept` starts a replacement
/// ahead only when it first flags A. So `failing` is never cleared, and the "while starts
/// fail" exception keeps A for ever, though the server has been up all along.
///
/// Expected (GUARANTEES.md: "Starts that fail never take the pool down: it serves what it
/// has and retries every `reconnect_delay`"; the `max_lifetime` row: the one kept stays "for
/// at most a lifetime past its expiry (longer only while starts fail since it expired)"; the
/// accepted "... longer only while starts fail since it expired (then for as long as they
/// fail)": here they do not fail, they are not tried): a start is retried about
/// `reconnect_delay` after the failed one, succeeds, and A is retired at its next return: no
/// lease of A after 600 ms (A expired at ~100 ms; a lifetime past it is ~200 ms).
///
/// What happened: see the assertion's numbers: two starts in all (A and the failed one), A
/// served all 60 leases up to ~1.19 s (30 after 600 ms; ~11 lifetimes past its expiry), the
/// pool still at `failing` with no start ever retried. Suggested fix: have the
/// return path (`unfit` → `expired_and_not_kept`) and a checkout of a flagged worker call
/// `start_replacement_ahead` again (it waits out the backoff itself), or make `wanted`
/// (src/pool/start.rs) count a flagged worker as short of `min_idle` (e.g. count workers
/// kept past their expiry in a counter and add them to the shortage).
#[test]
fn a_kept_worker_leased_back_to_back_after_its_start_ahead_failed_once_is_never_replaced() {
    let watch = Watch::default();
    let pool = lone_worker_pool(
        &watch,
        Duration::from_millis(100),
        Duration::from_millis(100),
        |n| match n {
            0 => Start::Ok(Duration::ZERO),
            1 => Start::Fail(Duration::from_millis(1)),
            _ => Start::Ok(Duration::from_millis(10)),
        },
    );
    let w = watch.clone();
    let outcome = common::within(Duration::from_secs(6), move || {
        let from = Instant::now();
        let mut served = Vec::new();
        let mut wrong = Vec::new();
        while from.elapsed() < Duration::from_millis(1200) {
            match pool.checkout_timeout(Duration::from_millis(500)) {
                Ok(lease) => {
                    served.push((from.elapsed(), lease.n));
                    thread::sleep(Duration::from_millis(20));
                    drop(lease);
                }
                Err(e) => {
                    wrong.push((from.elapsed(), format!("{e:?}")));
                    thread::sleep(Duration::from_millis(5));
                }
            }
        }
        (w.starts.load(Ordering::SeqCst), served, wrong, pool.stats())
    })
    .expect("hung");
    let (starts, served, wrong, stats) = outcome;
    let late: Vec<_> = served
        .iter()
        .filter(|(at, n)| *n == 0 && *at >= Duration::from_millis(600))
        .collect();
    let last_a = served
        .iter()
        .rev()
        .find(|(_, n)| *n == 0)
        .map(|(at, _)| *at);
    eprintln!(
        "{starts} starts; {} leases, {} of A after 600 ms, last of A at {last_a:?}; wrong \
         {wrong:?}; {stats:?}",
        served.len(),
        late.len()
    );
    assert!(wrong.is_empty(), "{wrong:?}");
    assert!(
        late.is_empty(),
        "the worker kept past its expiry (~100 ms) served {} leases after 600 ms (the last at \
         {last_a:?}), though only one start ever failed and the server was up: {starts} starts \
         in all (none retried after the failed start ahead); stats {stats:?}",
        late.len()
    );
}

/// Found (src/pool/upkeep.rs `sweep`'s `coming`, and src/pool/checkout.rs
/// `expired_and_not_kept` → `kept_for_replacements`: `start_replacement_ahead` claims nothing
/// during a backoff, and `replacement_for` counts the retry only for a failure since the
/// expiry; then the worker is retired and `retire_unreported` → `replace` claims its
/// replacement at once anyway, backoff or not). The lone worker's pool
/// (`max_lifetime(150 ms)`, `reconnect_delay(300 ms)`), its one worker A; at 40 ms, while A
/// is leased, a `try_checkout` opens a start of its own (the pool has room), which fails (a
/// one-off); A is returned at 50 ms. Every later start succeeds, in 300 ms. At A's expiry
/// (~150 ms; the backoff lasts until ~340 ms) the sweep finds A alone, nothing coming, the
/// start ahead refused (backoff), the failure from before the expiry: A is retired, and its
/// replacement claimed at once (`replace`, despite the backoff): the pool is empty for the
/// 300 ms that replacement takes, though a replacement is coming and A still works.
///
/// Expected (the commit's rule: "so that a pool is never left with no worker while
/// replacements start, one expired worker may be kept past its expiry"; GUARANTEES.md's
/// `max_lifetime` row: "it stays while no other worker is in service and a replacement is
/// coming (started at once if the pool has room and will want one)";
/// `start_replacement_ahead`'s own comment: "Not while the pool waits out a failed start ...
/// meanwhile the kept worker stays"; not an accepted case: the pool has room and `min_idle`
/// is the one worker open): a checkout at 220 ms gets A at once.
///
/// What happened: see the assertion's numbers: at 220 ms the pool is empty (size 0, one
/// starting), and `checkout_timeout(100 ms)` answers, after its 100 ms, `Disconnected` with
/// the cause of the one-off failure from 40 ms (`timed_out`: `failing` still set, nothing
/// open), though the server is up and a start is on its way (error truth, family 10: a
/// consequence of the same retirement). Suggested fix: in the keep's
/// decision (`sweep`'s `coming` and `kept_for_replacements`), count as coming the start the
/// pool is sure to make once the worker goes (a lone worker that is part of `min_idle` is
/// replaced at once by `replace`, backoff or not): e.g. keep it, and claim its replacement
/// now as `replace` would (`start_replacement_ahead` with `despite_backoff` when the
/// worker is part of `min_idle`), or `replacement_for` without the "since its expiry".
#[test]
fn a_failure_just_before_the_expiry_leaves_the_pool_empty_while_the_replacement_starts() {
    let watch = Watch::default();
    let pool = lone_worker_pool(
        &watch,
        Duration::from_millis(150),
        Duration::from_millis(300),
        |n| match n {
            0 => Start::Ok(Duration::ZERO),
            1 => Start::Fail(Duration::from_millis(1)),
            _ => Start::Ok(Duration::from_millis(300)),
        },
    );
    let w = watch.clone();
    let outcome = common::within(Duration::from_secs(6), move || {
        let from = Instant::now();
        let a = pool.checkout().unwrap();
        sleep_until(from + Duration::from_millis(40));
        let tried = pool
            .try_checkout()
            .map(|l| l.n)
            .map_err(|e| format!("{e:?}"));
        sleep_until(from + Duration::from_millis(50));
        drop(a);
        sleep_until(from + Duration::from_millis(220));
        let before = pool.stats();
        let asked = Instant::now();
        let got = pool
            .checkout_timeout(Duration::from_millis(100))
            .map(|lease| lease.n)
            .map_err(|e| format!("{e:?}"));
        let answered = asked.elapsed();
        let expired = w.expired.load(Ordering::SeqCst);
        (
            tried,
            before,
            got,
            answered,
            expired,
            w.starts.load(Ordering::SeqCst),
        )
    })
    .expect("hung");
    let (tried, before, got, answered, expired, starts) = outcome;
    eprintln!(
        "try_checkout at 40 ms: {tried:?}; at 220 ms {before:?}; got {got:?} after \
         {answered:?}; {expired} expired; {starts} starts"
    );
    assert!(
        starts >= 2,
        "the try_checkout's start did not run: {tried:?}"
    );
    assert_eq!(
        got,
        Ok(0),
        "at 220 ms (A expired at ~150 ms, its replacement on its way) the pool was {before:?} \
         ({expired} expired): A, which still works, was retired because a start had failed \
         110 ms before its expiry, and its replacement was started anyway"
    );
}

/// Tried (passes; the Found scenario above with the kept worker mostly idle: a lease of 5 ms
/// every 30 ms). The start ahead fails once; the sweep's first pass, which sees the kept
/// worker idle every `MIN_TICK`, asks `start_replacement_ahead` again after the backoff, the
/// retry succeeds, and A goes: no lease of A after 600 ms, about one start per lifetime,
/// never more than two alive, quiet at one worker, as many alive as counted.
#[test]
fn a_kept_idle_worker_whose_start_ahead_failed_once_is_replaced_after_the_backoff() {
    let watch = Watch::default();
    let pool = lone_worker_pool(
        &watch,
        Duration::from_millis(100),
        Duration::from_millis(100),
        |n| match n {
            0 => Start::Ok(Duration::ZERO),
            1 => Start::Fail(Duration::from_millis(1)),
            _ => Start::Ok(Duration::from_millis(10)),
        },
    );
    let w = watch.clone();
    let outcome = common::within(Duration::from_secs(6), move || {
        let from = Instant::now();
        let mut served = Vec::new();
        let mut wrong = Vec::new();
        while from.elapsed() < Duration::from_millis(1000) {
            match pool.checkout_timeout(Duration::from_millis(500)) {
                Ok(lease) => {
                    served.push((from.elapsed(), lease.n));
                    thread::sleep(Duration::from_millis(5));
                    drop(lease);
                }
                Err(e) => wrong.push((from.elapsed(), format!("{e:?}"))),
            }
            thread::sleep(Duration::from_millis(25));
        }
        let quiet = common::eventually(Duration::from_secs(1), || {
            let stats = pool.stats();
            stats.starting == 0
                && stats.size == 1
                && stats.free == 1
                && w.live.load(Ordering::SeqCst) == 1
        });
        (
            w.starts.load(Ordering::SeqCst),
            served,
            wrong,
            quiet,
            pool.stats(),
        )
    })
    .expect("hung");
    let (starts, served, wrong, quiet, stats) = outcome;
    let late = served
        .iter()
        .filter(|(at, n)| *n == 0 && *at >= Duration::from_millis(600))
        .count();
    eprintln!(
        "{starts} starts; {} leases, {late} of A late; {wrong:?}; {stats:?}",
        served.len()
    );
    assert!(wrong.is_empty(), "{wrong:?}");
    assert_eq!(late, 0, "{served:?}");
    // One per lifetime (~10 in 1 s), the failed one, and a margin: no churn.
    assert!(starts <= 16, "{starts} starts");
    assert!(
        quiet,
        "{stats:?}, live {}",
        watch.live.load(Ordering::SeqCst)
    );
    assert!(watch.most_live.load(Ordering::SeqCst) <= 2);
}

/// Tried (passes; error truth with a kept worker leased while the server is down, then back).
/// The lone worker's pool (`max_lifetime(100 ms)`, `reconnect_delay(100 ms)`); every start
/// fails while the server is down (from 100 ms to 400 ms). A is returned at 120 ms (kept:
/// its start ahead fails) and leased again until 400 ms. At 200 ms a `try_checkout` answers
/// `Overload` (A is busy, not down), and a `checkout_timeout(100 ms)` answers `Timeout`
/// with the start's error as its cause (a worker is open: not `Disconnected`); after A's
/// return at 400 ms (the server back), A is replaced within the next few hundred ms: a
/// checkout at 900 ms gets a new worker, A is gone, the counts add up.
#[test]
fn a_kept_worker_leased_while_the_server_is_down_gives_true_errors_and_goes_once_it_is_back() {
    let watch = Watch::default();
    let down = Arc::new(AtomicBool::new(false));
    let d = down.clone();
    let pool = lone_worker_pool(
        &watch,
        Duration::from_millis(100),
        Duration::from_millis(100),
        move |n| {
            if n > 0 && d.load(Ordering::SeqCst) {
                Start::Fail(Duration::from_millis(1))
            } else {
                Start::Ok(Duration::from_millis(if n == 0 { 0 } else { 10 }))
            }
        },
    );
    let w = watch.clone();
    let outcome = common::within(Duration::from_secs(6), move || {
        let from = Instant::now();
        let a = pool.checkout().unwrap();
        sleep_until(from + Duration::from_millis(100));
        down.store(true, Ordering::SeqCst);
        sleep_until(from + Duration::from_millis(120));
        drop(a);
        let a = pool.checkout().unwrap();
        let a_n = a.n;
        sleep_until(from + Duration::from_millis(200));
        let tried = pool
            .try_checkout()
            .map(|l| l.n)
            .map_err(|e| format!("{e:?}"));
        let blocked = match pool.checkout_timeout(Duration::from_millis(100)) {
            Ok(lease) => format!("Ok({})", lease.n),
            Err(Error::Timeout { cause, .. }) => format!("Timeout({cause:?})"),
            Err(e) => format!("{e:?}"),
        };
        sleep_until(from + Duration::from_millis(400));
        down.store(false, Ordering::SeqCst);
        drop(a);
        sleep_until(from + Duration::from_millis(900));
        let later = pool
            .checkout_timeout(Duration::from_millis(200))
            .map(|l| l.n)
            .map_err(|e| format!("{e:?}"));
        let a_gone = w.dropped_at.lock().unwrap().iter().any(|(n, _)| *n == 0);
        let quiet = common::eventually(Duration::from_secs(1), || {
            let stats = pool.stats();
            stats.starting == 0 && stats.size == 1 && w.live.load(Ordering::SeqCst) == 1
        });
        (a_n, tried, blocked, later, a_gone, quiet, pool.stats())
    })
    .expect("hung");
    let (a_n, tried, blocked, later, a_gone, quiet, stats) = outcome;
    eprintln!(
        "A again: {a_n}; try_checkout {tried:?}; checkout {blocked}; at 900 ms {later:?}; A \
         gone {a_gone}; {stats:?}; {} starts",
        watch.starts.load(Ordering::SeqCst)
    );
    assert_eq!(a_n, 0, "A was not kept at its return");
    assert_eq!(tried, Err("Overload".to_string()));
    assert!(blocked.starts_with("Timeout(Some("), "{blocked}");
    assert!(matches!(later, Ok(n) if n > 0), "{later:?}");
    assert!(a_gone);
    assert!(quiet, "{stats:?}");
    assert!(watch.most_live.load(Ordering::SeqCst) <= 2);
}

/// Tried (passes; a fresh worker failing its first check as the failure since the expiry).
/// The lone worker's pool with a checkout check that start 1's worker fails (its start
/// succeeds: the server is up); A idle, checked out every 30 ms. At A's expiry its
/// replacement started ahead (start 1) fails its first check (a failed start: `failing`
/// set after A's expiry); the sweep retries after the backoff, and A goes: no lease of A
/// after 600 ms, the counts add up, never more than two alive.
#[test]
fn a_start_ahead_failing_its_first_check_is_retried_after_the_backoff() {
    let watch = Watch::default();
    let (builder, start) = watched_pool(
        &watch,
        |n| Start::Ok(Duration::from_millis(if n == 0 { 0 } else { 10 })),
        |_| Duration::ZERO,
    );
    let pool = counting_expiries(builder, &watch)
        .size(2)
        .min_idle(1)
        .reconnect_delay(Duration::from_millis(100))
        .max_lifetime(Duration::from_millis(100))
        .test_on_checkout(|conn: &mut Conn| conn.n != 1)
        .build(start)
        .unwrap();
    let w = watch.clone();
    let outcome = common::within(Duration::from_secs(6), move || {
        let from = Instant::now();
        let mut served = Vec::new();
        let mut wrong = Vec::new();
        while from.elapsed() < Duration::from_millis(1000) {
            match pool.checkout_timeout(Duration::from_millis(500)) {
                Ok(lease) => served.push((from.elapsed(), lease.n)),
                Err(e) => wrong.push((from.elapsed(), format!("{e:?}"))),
            }
            thread::sleep(Duration::from_millis(30));
        }
        let quiet = common::eventually(Duration::from_secs(1), || {
            let stats = pool.stats();
            stats.starting == 0 && stats.size == 1 && w.live.load(Ordering::SeqCst) == 1
        });
        (served, wrong, quiet, pool.stats())
    })
    .expect("hung");
    let (served, wrong, quiet, stats) = outcome;
    let late = served
        .iter()
        .filter(|(at, n)| *n == 0 && *at >= Duration::from_millis(600))
        .count();
    eprintln!(
        "{} starts; {} leases, {late} of A late; {wrong:?}; {stats:?}",
        watch.starts.load(Ordering::SeqCst),
        served.len()
    );
    assert!(wrong.is_empty(), "{wrong:?}");
    assert_eq!(late, 0, "{served:?}");
    assert!(quiet, "{stats:?}");
    assert!(watch.most_live.load(Ordering::SeqCst) <= 2);
}
