//! Twenty-eighth and twenty-ninth breaking passes (the twenty-ninth's tests at the end,
//! after its own header, sharing this file's helpers). Twenty-eighth: the twenty-seventh pass's fixes (commit 5426c2c) and the
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

// ---------------------------------------------------------------------------------------
// Twenty-ninth breaking pass: the twenty-eighth pass's fixes (commit 458aad2) and the
// kept-worker rule they extend: `start_replacement_ahead` asked at every look at a worker
// kept past its expiry, and its backoff exception (a backoff from before the worker's expiry
// does not hold it back) (src/pool/checkout.rs `expired_and_not_kept`, src/pool/start.rs,
// src/pool/upkeep.rs), attacked through the fault families: returns in a tight loop from
// many threads against a dead server (attempts per `reconnect_delay`), many workers expiring
// one after another against a dead server, churn with the server up (more starts than
// needed, more alive than the limit, counts when quiet), starts after close, and the
// promise "started at once if the pool has room and will want one" while another worker's
// `Drop` runs.
//
// Tests whose doc comment starts with "Found" are one bug each, named after its scenario,
// failing on the code they were written against: three. A start "due" (a shortage below
// `min_idle`) counts as coming, so the start ahead is not made: while another worker's
// `Drop` runs nothing claims it (the pool empties at a lifetime past the expiry though it had
// room), and while a backoff from before the expiry runs no start fails "since the expiry"
// (the one worker that works is retired into a dead server: `Disconnected`). And, in older
// code met on the way, `replace` claims the whole shortage despite the backoff: workers
// expiring one after another against a dead server make 1 + 2 + … + k attempts, not k.
// All fixed in src/pool/start.rs: `start_replacement_ahead` holds back only for a start on
// its way, and claims a shortage nobody has claimed; `replace` during a backoff claims one
// start per worker retired. Those marked "Tried" document what was tried and held.

/// Found (src/pool/start.rs `start_replacement_ahead`: it refuses while `replacement_coming()`
/// says a start is "due" (`total - dropping < min_idle`), but nothing claims that start while
/// another worker's `Drop` runs: `retire_unreported` claims a retired worker's replacement
/// only after its `Drop` ends, and `refill`'s `wanted` counts the dropping worker in `total`).
/// A pool `size(3)`, `min_idle(2)`, `max_lifetime(150 ms)`: workers A (start 0) and X
/// (start 1), both born at 0; X's `Drop` takes 700 ms (a graceful close), every later start
/// takes 150 ms. At 10 ms a client discards X (on a thread of its own): X's `Drop` runs until
/// ~710 ms. A, the only worker in service, is leased for 1 ms every 10 ms. At A's expiry
/// (~150 ms) it is kept past it (the last in service, a replacement "due"), but no start
/// begins: the pool has room (2 counted of 3) and wants one (1 in service, `min_idle` 2),
/// yet `start_replacement_ahead` sees the shortage as one already coming. At a lifetime past
/// its expiry (~300 ms) A is retired, and only then is a start claimed (`replace`): the pool
/// has no worker for the 150 ms that start takes.
///
/// Expected (GUARANTEES.md's `max_lifetime` row: the one kept "stays while no other worker
/// is in service and a replacement is coming (started at once if the pool has room and will
/// want one), until it is in"; src/pool/mod.rs's lifecycle table: "a worker kept past its
/// expiry is part of `min_idle`, nothing is coming, the pool has room → claimed"; not an
/// accepted case: the pool has room and its `min_idle` is above the workers in service): a
/// start is claimed at A's expiry, its worker is in by ~310 ms, and every checkout (50 ms
/// timeout) up to 650 ms is served.
///
/// What happened: see the assertion's numbers: no start between A's expiry and its
/// retirement (`starts` still 2, `starting` 0 at 280 ms), A's last lease at ~295 ms, then
/// two checkouts in a row (at ~305 and ~364 ms) time out after 50 ms with the pool empty
/// (size 1: X still dropping; one starting) until A's replacement is in at ~445 ms. Suggested
/// fix: in `start_replacement_ahead`, do not take a shortage that only `dropping` makes
/// (`total - dropping < min_idle` while `total >= min_idle`) as a start coming: claim it
/// there (the pool has room: `claim` checks the limit, which counts the dropping worker), or
/// have `replacement_coming` count only `on_their_way()` and a shortage `wanted` would claim.
#[test]
fn a_kept_worker_gets_no_start_ahead_while_another_worker_drops_and_the_pool_empties() {
    let watch = Watch::default();
    let (builder, start) = watched_pool(
        &watch,
        |n| Start::Ok(Duration::from_millis(if n < 2 { 0 } else { 150 })),
        |n| Duration::from_millis(if n == 1 { 700 } else { 0 }),
    );
    let pool = counting_expiries(builder, &watch)
        .size(3)
        .min_idle(2)
        .reconnect_delay(Duration::from_millis(100))
        .max_lifetime(Duration::from_millis(150))
        .build(start)
        .unwrap();
    let w = watch.clone();
    let outcome = common::within(Duration::from_secs(6), move || {
        let from = Instant::now();
        let one = pool.checkout_owned().unwrap();
        let two = pool.checkout_owned().unwrap();
        let (a, x) = if one.n == 0 { (one, two) } else { (two, one) };
        assert_eq!((a.n, x.n), (0, 1));
        drop(a);
        sleep_until(from + Duration::from_millis(10));
        let discarding = thread::spawn(move || cylinder::OwnedLease::discard(x));
        let mut served = Vec::new();
        let mut wrong = Vec::new();
        let mut starts_at_280 = None;
        while from.elapsed() < Duration::from_millis(650) {
            if starts_at_280.is_none() && from.elapsed() >= Duration::from_millis(280) {
                starts_at_280 = Some((w.starts.load(Ordering::SeqCst), pool.stats()));
            }
            let asked = from.elapsed();
            match pool.checkout_timeout(Duration::from_millis(50)) {
                Ok(lease) => {
                    served.push((asked, lease.n));
                    thread::sleep(Duration::from_millis(1));
                    drop(lease);
                }
                Err(e) => wrong.push((asked, from.elapsed(), format!("{e:?}"))),
            }
            thread::sleep(Duration::from_millis(9));
        }
        let _ = discarding.join();
        (
            served,
            wrong,
            starts_at_280,
            w.starts.load(Ordering::SeqCst),
        )
    })
    .expect("hung");
    let (served, wrong, starts_at_280, starts) = outcome;
    let last_a = served
        .iter()
        .rev()
        .find(|(_, n)| *n == 0)
        .map(|(at, _)| *at);
    eprintln!(
        "{} leases, last of A at {last_a:?}; at 280 ms {starts_at_280:?}; {starts} starts; \
         wrong {wrong:?}",
        served.len()
    );
    assert!(
        wrong.is_empty(),
        "the pool had no worker for a checkout: {} failed ({:?} ... ), the last lease of A \
         (expired at ~150 ms) at {last_a:?}; starts and stats at 280 ms: {starts_at_280:?} \
         (no start ahead though the pool had room: 2 counted of 3, 1 in service, min_idle 2)",
        wrong.len(),
        wrong.first()
    );
}

/// Tried (passes; the start ahead at every look, hammered against a dead server). The lone
/// worker's pool (`max_lifetime(5 ms)`, `reconnect_delay(100 ms)`); every start after A's
/// fails in 1 ms (the server is down from the start). Eight threads check out and return
/// in a tight loop for 1 s (each return of the kept A asks `start_replacement_ahead`, under
/// `deciding`). Attempts stay at the pace of the backoff (about ten in 1 s, never one per
/// look), every lease is A (the one that still works), every error a `Timeout` (A is open:
/// not `Disconnected`), and once the pool is closed, returns start nothing.
#[test]
fn returns_of_a_kept_worker_from_many_threads_against_a_dead_server_keep_the_backoff_pace() {
    let watch = Watch::default();
    let pool = lone_worker_pool(
        &watch,
        Duration::from_millis(5),
        Duration::from_millis(100),
        |n| {
            if n == 0 {
                Start::Ok(Duration::ZERO)
            } else {
                Start::Fail(Duration::from_millis(1))
            }
        },
    );
    let w = watch.clone();
    let outcome = common::within(Duration::from_secs(8), move || {
        let from = Instant::now();
        let leases = Arc::new(AtomicUsize::new(0));
        let not_a = Arc::new(AtomicUsize::new(0));
        let wrong = Arc::new(Mutex::new(Vec::new()));
        thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    while from.elapsed() < Duration::from_millis(1000) {
                        match pool.checkout_timeout(Duration::from_millis(20)) {
                            Ok(lease) => {
                                leases.fetch_add(1, Ordering::Relaxed);
                                if lease.n != 0 {
                                    not_a.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            Err(Error::Timeout { .. }) => {}
                            Err(e) => wrong.lock().unwrap().push(format!("{e:?}")),
                        }
                    }
                });
            }
        });
        let attempts = w.starts.load(Ordering::SeqCst);
        let held = pool.checkout().ok().map(|lease| lease.n);
        // A lease out across close: its return must start nothing.
        let lease = pool.checkout_owned().ok();
        pool.close();
        let at_close = w.starts.load(Ordering::SeqCst);
        drop(lease);
        thread::sleep(Duration::from_millis(150));
        let after_close = w.starts.load(Ordering::SeqCst) - at_close;
        let wrong = wrong.lock().unwrap().clone();
        (
            attempts,
            leases.load(Ordering::Relaxed),
            not_a.load(Ordering::Relaxed),
            wrong,
            held,
            after_close,
        )
    })
    .expect("hung");
    let (attempts, leases, not_a, wrong, held, after_close) = outcome;
    eprintln!(
        "{attempts} starts in 1 s; {leases} leases, {not_a} not of A; wrong {wrong:?}; held \
         {held:?}; {after_close} starts after close"
    );
    assert!(leases > 100, "{leases} leases");
    assert_eq!(not_a, 0);
    assert!(wrong.is_empty(), "{wrong:?}");
    // A, then one attempt per 100 ms: ~11, with a margin.
    assert!(
        attempts <= 15,
        "{attempts} start attempts in 1 s with a 100 ms backoff"
    );
    assert_eq!(held, Some(0));
    assert_eq!(after_close, 0);
}

/// Tried (passes; churn with the server up). `size(4)`, `min_idle(1)`,
/// `max_lifetime(30 ms)`, starts of 5 ms; six threads check out (2 ms of work) in a loop for
/// 1 s. The start ahead at every look adds no starts beyond the lifetimes: never more alive
/// than 4, about one start per worker per lifetime, and once quiet the counts match the
/// workers alive, nothing starting.
#[test]
fn churn_with_tiny_lifetimes_and_the_server_up_starts_no_more_than_needed() {
    let watch = Watch::default();
    let (builder, start) = watched_pool(
        &watch,
        |n| Start::Ok(Duration::from_millis(if n == 0 { 0 } else { 5 })),
        |_| Duration::ZERO,
    );
    let pool = counting_expiries(builder, &watch)
        .size(4)
        .min_idle(1)
        .reconnect_delay(Duration::from_millis(50))
        .max_lifetime(Duration::from_millis(30))
        .build(start)
        .unwrap();
    let w = watch.clone();
    let outcome = common::within(Duration::from_secs(8), move || {
        let from = Instant::now();
        let wrong = Mutex::new(Vec::new());
        thread::scope(|scope| {
            for _ in 0..6 {
                scope.spawn(|| {
                    while from.elapsed() < Duration::from_millis(1000) {
                        match pool.checkout_timeout(Duration::from_millis(500)) {
                            Ok(_lease) => thread::sleep(Duration::from_millis(2)),
                            Err(e) => wrong.lock().unwrap().push(format!("{e:?}")),
                        }
                    }
                });
            }
        });
        let starts = w.starts.load(Ordering::SeqCst);
        let quiet = common::eventually(Duration::from_secs(1), || {
            let stats = pool.stats();
            stats.starting == 0 && stats.size >= 1 && stats.size == w.live.load(Ordering::SeqCst)
        });
        (starts, wrong.into_inner().unwrap(), quiet, pool.stats())
    })
    .expect("hung");
    let (starts, wrong, quiet, stats) = outcome;
    eprintln!(
        "{starts} starts; most alive {}; wrong {wrong:?}; quiet {quiet}; {stats:?}",
        watch.most_live.load(Ordering::SeqCst)
    );
    assert!(wrong.is_empty(), "{wrong:?}");
    assert!(watch.most_live.load(Ordering::SeqCst) <= 4);
    // Four workers, each replaced about once per 30 ms lifetime: ~135 in 1 s, with margin.
    assert!(starts <= 200, "{starts} starts");
    assert!(
        quiet,
        "{stats:?}, live {}",
        watch.live.load(Ordering::SeqCst)
    );
}

/// Tried (passes; the start ahead and the overflow room, many threads). `size(2)`,
/// `max_overflow(1)`, `min_idle(1)`, `max_lifetime(20 ms)`, starts of 3 ms; eight threads
/// check out (1 ms of work) in a tight loop for 800 ms, some with `try_checkout`. Never
/// more alive than `size + max_overflow` (3), and once quiet, no overflow left, nothing
/// starting, the counts match the workers alive.
#[test]
fn starts_ahead_under_overflow_load_never_pass_the_limit() {
    let watch = Watch::default();
    let (builder, start) = watched_pool(
        &watch,
        |n| Start::Ok(Duration::from_millis(if n == 0 { 0 } else { 3 })),
        |_| Duration::ZERO,
    );
    let pool = counting_expiries(builder, &watch)
        .size(2)
        .max_overflow(1)
        .min_idle(1)
        .reconnect_delay(Duration::from_millis(50))
        .max_lifetime(Duration::from_millis(20))
        .build(start)
        .unwrap();
    let w = watch.clone();
    let outcome = common::within(Duration::from_secs(8), move || {
        let from = Instant::now();
        thread::scope(|scope| {
            for i in 0..8 {
                let pool = &pool;
                scope.spawn(move || {
                    while from.elapsed() < Duration::from_millis(800) {
                        let got = if i % 2 == 0 {
                            pool.try_checkout().ok()
                        } else {
                            pool.checkout_timeout(Duration::from_millis(200)).ok()
                        };
                        if got.is_some() {
                            thread::sleep(Duration::from_millis(1));
                        } else {
                            thread::yield_now();
                        }
                    }
                });
            }
        });
        let quiet = common::eventually(Duration::from_secs(1), || {
            let stats = pool.stats();
            stats.starting == 0 && stats.size <= 2 && stats.size == w.live.load(Ordering::SeqCst)
        });
        (quiet, pool.stats(), w.starts.load(Ordering::SeqCst))
    })
    .expect("hung");
    let (quiet, stats, starts) = outcome;
    eprintln!(
        "{starts} starts; most alive {}; quiet {quiet}; {stats:?}",
        watch.most_live.load(Ordering::SeqCst)
    );
    assert!(watch.most_live.load(Ordering::SeqCst) <= 3);
    assert!(
        quiet,
        "{stats:?}, live {}",
        watch.live.load(Ordering::SeqCst)
    );
}

/// Found (src/pool/start.rs `replace` → `wanted(true)`: a retired worker's replacement,
/// claimed despite the backoff, is the pool's whole shortage below `min_idle`, so each
/// retirement during a backoff also retries every replacement that failed before it; not
/// this session's code, met while counting attempts against a dead server). `size(8)`,
/// `min_idle(8)`, `max_lifetime(300 ms)`, `reconnect_delay(2 s)`; start `n` of the first
/// eight takes `20·n` ms (the workers are born 20 ms apart, so they expire one after another,
/// each at a sweep of its own), and the server is down from then on: every later start fails
/// in 1 ms. Nobody uses the pool; it is watched for 450 ms after it is built (every worker has
/// expired by then; the last in service is kept, as starts fail).
///
/// Expected (GUARANTEES.md: "Starts that fail never take the pool down: it serves what it
/// has and retries every `reconnect_delay`"; BREAKING.md family 11: the pool "must be slowed
/// to the pace of reconnect attempts, not spin"; the accepted exception is "a worker retired
/// for expiry is replaced at once, also during a backoff: one attempt per expiring worker"):
/// at most one attempt per expiring worker during the backoff: 7 (the last in service is
/// kept while starts fail), 8 with a margin.
///
/// What happened: see the assertion's numbers: the k-th expiry during the backoff claims k
/// starts at once (the shortage `min_idle - total`: its own replacement and the retries of
/// the k-1 that failed), run in parallel: 1 + 2 + … + 7 = 28 attempts within ~150 ms of a
/// 2 s backoff (quadratic in the pool's size: a pool of 50 would make ~1,200). Suggested
/// fix: `replace` claims one start per worker retired (`min(1, shortage)`) when it runs
/// despite the backoff; the rest of the shortage waits for the backoff as `refill` does.
#[test]
fn workers_expiring_one_after_another_against_a_dead_server_retry_every_failed_replacement_at_each_expiry(
) {
    let watch = Watch::default();
    let (builder, start) = watched_pool(
        &watch,
        |n| {
            if n < 8 {
                Start::Ok(Duration::from_millis(20 * n as u64))
            } else {
                Start::Fail(Duration::from_millis(1))
            }
        },
        |_| Duration::ZERO,
    );
    let pool = counting_expiries(builder, &watch)
        .size(8)
        .min_idle(8)
        .reconnect_delay(Duration::from_secs(2))
        .max_lifetime(Duration::from_millis(300))
        .build(start)
        .unwrap();
    let w = watch.clone();
    let outcome = common::within(Duration::from_secs(8), move || {
        let opened = w.starts.load(Ordering::SeqCst);
        // Every worker expires by ~450 ms after the build began; the last stays (kept).
        thread::sleep(Duration::from_millis(450));
        let attempts = w.starts.load(Ordering::SeqCst) - opened;
        let got = pool
            .checkout_timeout(Duration::from_millis(50))
            .map(|lease| lease.n)
            .map_err(|e| format!("{e:?}"));
        (
            opened,
            attempts,
            w.expired.load(Ordering::SeqCst),
            got,
            pool.stats(),
        )
    })
    .expect("hung");
    let (opened, attempts, expired, got, stats) = outcome;
    eprintln!("{opened} opened; {attempts} attempts; {expired} expired; got {got:?}; {stats:?}");
    assert_eq!(opened, 8);
    assert!(
        attempts <= 8,
        "{attempts} start attempts against a dead server within ~450 ms of a 2 s backoff, for \
         {expired} workers expired one after another (one attempt per expiry would be {expired})"
    );
}

/// Found (src/pool/checkout.rs `may_stay_past_expiry` / `starts_failing_since_expiry`, with
/// src/pool/start.rs `start_replacement_ahead` refusing because `replacement_coming()` counts
/// the shortage below `min_idle` as "due": a due start waits out the backoff, so no start is
/// tried after the kept worker's expiry, no failure is "since its expiry", and the keep ends
/// at a lifetime past it although starts are failing all along). `size(2)`, `min_idle(2)`,
/// `max_lifetime(150 ms)`, `reconnect_delay(1 s)`; A (start 0) and B (start 1) open, the
/// server is down from then on (every later start fails in 1 ms). At 20 ms a client discards
/// B: its replacement (start 2, claimed despite the backoff) fails at ~21 ms, and the pool
/// waits until ~1.02 s. A, the one worker that still works, is leased for 1 ms every 20 ms.
/// At its expiry (~150 ms) A is kept (the last in service, a start "due": 1 counted of
/// `min_idle` 2), no start ahead is made (that due start counts as coming), and at ~300 ms
/// (a lifetime past its expiry, "no failure since it expired") A is retired: its own
/// replacement, claimed despite the backoff, fails at once, and the pool is empty and
/// `Disconnected` until the server is back, though A worked.
///
/// Expected (GUARANTEES.md's `max_lifetime` row: the one kept stays "for at most a lifetime
/// past its expiry (longer only while starts fail since it expired: the one that still
/// works)"; commit 458aad2's rule that a backoff from before the expiry must not decide the
/// keep, "its retirement would claim a replacement at once too"; not an accepted case: starts
/// do not succeed, the pool is not lazy, it has room): A serves every checkout up to 700 ms,
/// with starts failing throughout.
///
/// What happened: see the assertion's numbers: A's last lease at ~285 ms, then every
/// checkout to 700 ms (6 of them) answers `Disconnected` with the failed start's cause after
/// its 50 ms (size 0, nothing starting); 5 starts in all (A's retirement claimed two at once,
/// see the test above). Suggested fix: when
/// `start_replacement_ahead` declines because a start is only due (a shortage that waits for
/// the backoff), count starts failing as "since its expiry" for the keep (e.g. in
/// `may_stay_past_expiry`, take `failing` with a backoff still running as failing since the
/// expiry, or compare the failure with the time the worker was flagged rather than its
/// expiry), so that the one that still works stays until the retry after the backoff.
#[test]
fn the_last_worker_kept_while_starts_fail_from_before_its_expiry_is_retired_into_an_empty_pool() {
    let watch = Watch::default();
    let (builder, start) = watched_pool(
        &watch,
        |n| {
            if n < 2 {
                Start::Ok(Duration::ZERO)
            } else {
                Start::Fail(Duration::from_millis(1))
            }
        },
        |_| Duration::ZERO,
    );
    let pool = counting_expiries(builder, &watch)
        .size(2)
        .min_idle(2)
        .reconnect_delay(Duration::from_secs(1))
        .max_lifetime(Duration::from_millis(150))
        .build(start)
        .unwrap();
    let w = watch.clone();
    let outcome = common::within(Duration::from_secs(6), move || {
        let from = Instant::now();
        let one = pool.checkout().unwrap();
        let two = pool.checkout().unwrap();
        let (a, b) = if one.n == 0 { (one, two) } else { (two, one) };
        assert_eq!((a.n, b.n), (0, 1));
        drop(a);
        sleep_until(from + Duration::from_millis(20));
        cylinder::Lease::discard(b);
        let mut served = Vec::new();
        let mut wrong = Vec::new();
        while from.elapsed() < Duration::from_millis(700) {
            let asked = from.elapsed();
            match pool.checkout_timeout(Duration::from_millis(50)) {
                Ok(lease) => {
                    served.push((asked, lease.n));
                    thread::sleep(Duration::from_millis(1));
                    drop(lease);
                }
                Err(e) => wrong.push((asked, format!("{e:?}"))),
            }
            thread::sleep(Duration::from_millis(19));
        }
        (
            served,
            wrong,
            w.starts.load(Ordering::SeqCst),
            w.expired.load(Ordering::SeqCst),
            pool.stats(),
        )
    })
    .expect("hung");
    let (served, wrong, starts, expired, stats) = outcome;
    let last_a = served
        .iter()
        .rev()
        .find(|(_, n)| *n == 0)
        .map(|(at, _)| *at);
    eprintln!(
        "{} leases, last of A at {last_a:?}; {starts} starts; {expired} expired; {} wrong, \
         first {:?}; {stats:?}",
        served.len(),
        wrong.len(),
        wrong.first()
    );
    assert!(
        wrong.is_empty(),
        "A (expired at ~150 ms, the one worker that still works, starts failing since 21 ms) \
         was retired: its last lease at {last_a:?}, then {} checkouts failed, the first {:?}; \
         {starts} starts, {expired} expired; {stats:?}",
        wrong.len(),
        wrong.first()
    );
}
