//! Twenty-fifth and twenty-sixth breaking passes (the twenty-sixth's tests at the end, after
//! its own header, sharing this file's helpers). Twenty-fifth: the twenty-fourth pass's changes (commits c48fc7f, 0672587,
//! 16de37c, e3651da): the worker kept past its expiry (`Entry::kept_past_expiry`, asked by
//! `expired_and_not_kept` and `kept_for_replacements` in src/pool/checkout.rs at every look:
//! a return, a checkout with a reaper round under way, the sweep's second pass), the sweep's
//! own keep (`sweep` in src/pool/upkeep.rs, with `sweep_replacing`), `dropping` and
//! `callers_starts` (`above_size`, src/pool/release.rs), and a kept worker's return noting
//! `now + MIN_TICK`, attacked through the fault families: idle kept workers, slow
//! replacements, stale start failures, the reaper's pacing, lazy pools, counts when quiet.
//!
//! Tests whose doc comment starts with "Found" are one bug each, named after its scenario,
//! failing on the code they were written against: three ways a worker is still kept (and
//! leased) lifetimes past its expiry while no start is failing, each a different site of
//! the "at most a lifetime past its expiry" bound: the sweep's own keep (`sweep`, which
//! asks no `long_expired`), `sweep_replacing` held through slow `Drop`s, and a stale
//! `failing` flag. All three are fixed by one bound, `may_stay_past_expiry` in
//! src/pool/checkout.rs, asked by the sweep's keep and by both branches of
//! `kept_for_replacements`: not a lifetime past its expiry, unless a start failed since it
//! expired. Those marked "Tried" document what was tried and held.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use cylinder::{Balancer, BoxError, Error, Event, Lease, Pool, PoolBuilder, QueueMode};

/// A worker: its start's number, when it was born, the count of workers alive.
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

fn on_reaper() -> bool {
    thread::current()
        .name()
        .is_some_and(|name| name.starts_with("cylinder-reaper"))
}

/// Found (src/pool/upkeep.rs `sweep`, first pass: the keep of the youngest expired worker
/// asks neither `kept_for_replacements` nor `Entry::long_expired`). A pool of two (`size(2)`,
/// `min_idle` 2) started together, `max_lifetime(200 ms)`, left idle; every replacement takes
/// 1.5 s to connect (and succeeds). At ~200 ms both expire: the sweep keeps the youngest, A,
/// retires B and B' starts (accepted). Every 10 ms after that, the reaper sweeps again and
/// finds A expired, alone, B' on its way: it keeps A again, without a look at how long ago
/// A expired.
///
/// Expected (GUARANTEES.md's `max_lifetime` row: the one kept "stays while no other worker is
/// in service and a replacement is coming, until it is in, for at most a lifetime past its
/// expiry (longer only while starts fail)"; the accepted "once a kept worker is a lifetime
/// past its expiry and starts succeed, it goes even if the pool is then empty while a slow
/// replacement starts"): A is closed by ~400 ms (+ the reaper's ~10 ms); a checkout at 800 ms
/// (three lifetimes past A's expiry, no start failed ever) is never handed A.
///
/// What happened: see the assertion's numbers: at 800 ms only B had expired, and the checkout
/// was handed A, ~800 ms after its birth (four lifetimes). Suggested fix: in `sweep`, keep
/// the youngest only if it is not `long_expired(now)` (or starts fail), as
/// `kept_for_replacements` says; or keep a worker already `kept_past_expiry` only if
/// `kept_for_replacements(entry, now)`.
#[test]
fn an_idle_worker_kept_by_the_sweep_goes_a_lifetime_past_its_expiry_while_a_slow_start_succeeds() {
    let watch = Watch::default();
    let (builder, start) = watched_pool(
        &watch,
        |n| {
            if n < 2 {
                Start::Ok(Duration::ZERO)
            } else {
                Start::Ok(Duration::from_millis(1500))
            }
        },
        |_| Duration::ZERO,
    );
    let pool = counting_expiries(builder, &watch)
        .size(2)
        .max_lifetime(Duration::from_millis(200))
        .build(start)
        .unwrap();
    let w = watch.clone();
    let outcome = common::within(Duration::from_secs(6), move || {
        let from = Instant::now();
        sleep_until(from + Duration::from_millis(800));
        let before = (
            pool.stats(),
            w.expired.load(Ordering::SeqCst),
            w.starts.load(Ordering::SeqCst),
        );
        let got = pool
            .checkout_timeout(Duration::from_millis(100))
            .map(|lease| (lease.n, lease.born.elapsed()))
            .map_err(|e| format!("{e:?}"));
        (before, got)
    })
    .expect("hung");
    let (before, got) = outcome;
    eprintln!("at 800 ms {before:?}; the checkout got {got:?}");
    // (A's own replacement is the fourth start, once A goes.)
    assert!(before.2 >= 3, "B' did not start: {before:?}");
    assert!(
        !matches!(got, Ok((_, age)) if age > Duration::from_millis(600)),
        "the checkout at 800 ms was handed a worker born {got:?} ago (n, age) with a 200 ms \
         lifetime: the sweep keeps the youngest expired one at every round while a start is \
         on its way, three lifetimes past its expiry with no start ever failed; {} expired \
         by then, stats {:?}",
        before.1,
        before.0
    );
}

/// Found (src/pool/checkout.rs `kept_for_replacements`: while `sweep_replacing > 0` it keeps
/// the worker "whatever the counts say", with no look at `long_expired`; the sweep holds
/// `sweep_replacing` through `retire_held`, src/pool/release.rs, which runs the retired
/// workers' `Drop`s on the reaper's thread). `size(3)`, `min_idle(2)`,
/// `idle_timeout(100 ms)`, `max_lifetime(200 ms)`. A client uses three workers at 0 ms and
/// gives them back; at ~100 ms the reaper closes one idle (above `min_idle`), and its
/// `WorkerIdleClosed` callback holds the reaper until 270 ms, so the next sweep finds the
/// other two, A and B, expired at once: it keeps the youngest, A, and retires B, whose `Drop`
/// takes 1.2 s (a polite close over a slow link, from ~270 ms to ~1.5 s) while the sweep
/// holds `sweep_replacing` (and a round is under way, so a checkout looks at A's expiry).
/// A checkout at 700 ms: A expired 500 ms ago (2.5 lifetimes), no start has failed, B's
/// replacement cannot even be claimed before its `Drop` ends.
///
/// Expected (GUARANTEES.md's `max_lifetime` row: the one kept stays "for at most a lifetime
/// past its expiry (longer only while starts fail)"; the accepted "the worker kept past its
/// expiry serves leases until its replacements are in, for up to a lifetime past its expiry,
/// longer only while starts fail"): the checkout is not handed A (retiring A claims its
/// replacement at once, there being room: the checkout gets it or a `Timeout`).
///
/// What happened: see the assertion's numbers: A was handed out ~700 ms after its birth,
/// `expired_for_a_lease` → `expired_and_not_kept` → `kept_for_replacements` answering "kept"
/// on `sweep_replacing` alone (a return meanwhile is kept the same way). Suggested fix: bound
/// the `sweep_replacing` branch by `!entry.long_expired(now) || failing` as the other one is
/// (or give `sweep_replacing` back before the retired workers' `Drop`s run, with their
/// claims: `Held` per retiring worker, dropped once its `replace` ran).
#[test]
fn a_slow_drop_in_the_sweep_does_not_keep_the_kept_worker_for_lifetimes() {
    let watch = Watch::default();
    let from = Instant::now();
    // Slow only for the first worker the reaper drops after its hold (below): the one
    // closed idle goes at once.
    let armed = Arc::new(AtomicBool::new(false));
    let arm = armed.clone();
    let (builder, start) = watched_pool(
        &watch,
        |_| Start::Ok(Duration::ZERO),
        move |_| {
            if on_reaper() && armed.swap(false, Ordering::SeqCst) {
                Duration::from_millis(1200)
            } else {
                Duration::ZERO
            }
        },
    );
    // The reaper is held up in the event callback of the worker it closes idle (~100 ms)
    // until 270 ms: its next sweep finds both others expired at once (their expiries are a
    // few ms apart, and the reaper would otherwise look at each at its own).
    let e = watch.expired.clone();
    let pool = builder
        .size(3)
        .min_idle(2)
        .idle_timeout(Duration::from_millis(100))
        .max_lifetime(Duration::from_millis(200))
        .on_event(move |event| match event {
            Event::WorkerExpired => {
                e.fetch_add(1, Ordering::SeqCst);
            }
            Event::WorkerIdleClosed if on_reaper() => {
                sleep_until(from + Duration::from_millis(270));
                arm.store(true, Ordering::SeqCst);
            }
            _ => {}
        })
        .build(start)
        .unwrap();
    let w = watch.clone();
    let outcome = common::within(Duration::from_secs(6), move || {
        // A third worker, above `min_idle`: it is closed idle at ~100 ms.
        let a = pool.checkout().unwrap();
        let b = pool.checkout().unwrap();
        let c = pool.try_checkout().unwrap();
        drop((a, b, c));
        sleep_until(from + Duration::from_millis(700));
        let before = (pool.stats(), w.starts.load(Ordering::SeqCst));
        let asked = Instant::now();
        let got = pool
            .checkout_timeout(Duration::from_millis(100))
            .map(|lease| (lease.n, lease.born.elapsed()))
            .map_err(|e| format!("{e:?}"));
        let took = asked.elapsed();
        (before, got, took, pool)
    })
    .expect("hung");
    let (before, got, took, _pool) = outcome;
    eprintln!(
        "at 700 ms {before:?}; the checkout got (n, age) {got:?} in {took:?}; dropped {:?}",
        watch
            .dropped_at
            .lock()
            .unwrap()
            .iter()
            .map(|(n, at)| (*n, *at - from))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        before.1, 3,
        "not the scenario: a start came before the retired worker's Drop ended: {before:?}"
    );
    assert!(
        !matches!(got, Ok((_, age)) if age > Duration::from_millis(600)),
        "the checkout at 700 ms was handed a worker (n, age) {got:?} with a 200 ms lifetime: \
         2.5 lifetimes past its expiry, no start failed, kept only because the sweep still \
         held sweep_replacing while the retired worker's Drop ran (stats {:?})",
        before.0
    );
}

/// Tried (passes; the reaper's pace for a kept worker in a lazy pool). `size(2)`,
/// `min_idle(0)`, `max_lifetime(200 ms)`. X holds A (the first worker) across its expiry;
/// at 150 ms Y's `try_checkout` starts a worker of its own (200 ms); X returns A at 250 ms,
/// the last in service with Y's start on its way: kept (accepted). Y's worker opens at
/// ~350 ms (A is not yet a lifetime past its expiry): A is now not needed and is idle, so
/// the reaper's next look (planned `now + MIN_TICK` by the return and each sweep since)
/// closes it within ~10 ms of Y's lease; allowed 60 ms on a loaded machine. Never lost.
#[test]
fn a_kept_worker_idle_in_a_lazy_pool_goes_soon_after_the_start_it_waited_for() {
    let watch = Watch::default();
    let (builder, start) = watched_pool(
        &watch,
        |n| {
            if n == 0 {
                Start::Ok(Duration::ZERO)
            } else {
                Start::Ok(Duration::from_millis(200))
            }
        },
        |_| Duration::ZERO,
    );
    let pool = counting_expiries(builder, &watch)
        .size(2)
        .min_idle(0)
        .max_lifetime(Duration::from_millis(200))
        .build(start)
        .unwrap();
    let w = watch.clone();
    let outcome = common::within(Duration::from_secs(6), move || {
        let from = Instant::now();
        let a = pool.checkout().unwrap();
        let a_n = a.n;
        sleep_until(from + Duration::from_millis(150));
        let p = pool.clone();
        let y = thread::spawn(move || {
            let lease = p.try_checkout();
            let at = Instant::now();
            let n = lease.as_ref().map(|l| l.n).map_err(|e| format!("{e:?}"));
            thread::sleep(Duration::from_millis(300));
            drop(lease);
            (n, at)
        });
        sleep_until(from + Duration::from_millis(250));
        drop(a);
        let kept = pool.stats();
        let (y_got, y_at) = y.join().unwrap();
        let gone = common::eventually(Duration::from_millis(500), || {
            w.dropped_at.lock().unwrap().iter().any(|(n, _)| *n == a_n)
        });
        (a_n, kept, y_got, y_at, gone, from, pool)
    })
    .expect("hung");
    let (a_n, kept, y_got, y_at, gone, from, _pool) = outcome;
    let a_dropped = watch
        .dropped_at
        .lock()
        .unwrap()
        .iter()
        .find(|(n, _)| *n == a_n)
        .map(|(_, at)| *at);
    eprintln!(
        "A {a_n}; kept {kept:?}; Y got {y_got:?} at {:?}; A dropped at {:?}",
        y_at - from,
        a_dropped.map(|at| at - from)
    );
    assert_eq!(kept.free, 1, "A was not kept while Y's start ran: {kept:?}");
    assert!(matches!(y_got, Ok(n) if n != a_n), "Y got {y_got:?}");
    assert!(gone, "A was never closed");
    let late = a_dropped.unwrap().saturating_duration_since(y_at);
    assert!(
        late < Duration::from_millis(60),
        "A, kept idle for Y's start, was closed {late:?} after Y's worker opened"
    );
}

/// Found (src/pool/checkout.rs `kept_for_replacements`: the `failing` exception reads the
/// pool's flag, which only a successful start clears, so a failure from long before, of a
/// start that was no replacement, counts as "starts fail"). A pool of two (`size(2)`,
/// `max_overflow(1)`, `max_lifetime(200 ms)`, `reconnect_delay(10 ms)`); every start after
/// the third takes 1.5 s (and succeeds). At 0 ms client X holds both workers A and B, and
/// client Y's `try_checkout` opens an overflow worker of its own, which fails (its one
/// failure; nothing else starts for the next 200 ms, the pool being full). B goes back; X
/// holds A across both expiries: B expires idle and its replacement B' starts (1.5 s); X
/// returns A at 240 ms, the last in service: kept (accepted), takes it again at once and
/// returns it at 800 ms, three lifetimes past its expiry; then Y checks out.
///
/// Expected (GUARANTEES.md's `max_lifetime` row: kept "for at most a lifetime past its
/// expiry (longer only while starts fail: the one that still works)"): no start has failed
/// for 800 ms, the start under way has not failed, the pool's backoff (10 ms) ended long ago;
/// A goes at its return at 800 ms (as it does without Y's failed overflow start: the
/// twenty-fourth pass's first Found test), and Y gets a fresh worker or a `Timeout`, never A.
///
/// What happened: see the assertion's numbers: Y was handed A ~800 ms after its birth: the
/// `failing` flag, set at 0 ms by the overflow start and cleared by no start since, keeps
/// the ancient worker as "the one that still works". Suggested fix: count starts as failing
/// for this rule only if the last failure came after the worker's expiry (or after the
/// start now on its way began, or within `reconnect_delay` plus `start_timeout` of now):
/// e.g. keep the failure's time (`failure` holds it) and compare it with `entry.expires`.
#[test]
fn a_stale_start_failure_does_not_keep_a_worker_lifetimes_past_its_expiry() {
    let watch = Watch::default();
    let (builder, start) = watched_pool(
        &watch,
        |n| match n {
            0 | 1 => Start::Ok(Duration::ZERO),
            2 => Start::Fail(Duration::ZERO),
            _ => Start::Ok(Duration::from_millis(1500)),
        },
        |_| Duration::ZERO,
    );
    let pool = counting_expiries(builder, &watch)
        .size(2)
        .max_overflow(1)
        .reconnect_delay(Duration::from_millis(10))
        .max_lifetime(Duration::from_millis(200))
        .build(start)
        .unwrap();
    let w = watch.clone();
    let outcome = common::within(Duration::from_secs(6), move || {
        let from = Instant::now();
        let a = pool.checkout().unwrap();
        let b = pool.checkout().unwrap();
        let y_first = pool
            .try_checkout()
            .map(|l| l.n)
            .map_err(|e| format!("{e:?}"));
        let a_n = a.n;
        drop(b);
        sleep_until(from + Duration::from_millis(240));
        drop(a);
        let kept = pool.stats();
        let a = pool.checkout().unwrap();
        let again = a.n;
        sleep_until(from + Duration::from_millis(800));
        let before = (
            pool.stats(),
            w.starts.load(Ordering::SeqCst),
            w.expired.load(Ordering::SeqCst),
        );
        drop(a);
        let y = pool
            .checkout_timeout(Duration::from_millis(100))
            .map(|lease| (lease.n, lease.born.elapsed()))
            .map_err(|e| format!("{e:?}"));
        (a_n, y_first, kept, again, before, y, pool)
    })
    .expect("hung");
    let (a_n, y_first, kept, again, before, y, _pool) = outcome;
    eprintln!(
        "A {a_n}; Y's first try {y_first:?}; kept {kept:?}; again {again}; before the return \
         at 800 ms {before:?}; Y got (n, age) {y:?}"
    );
    assert!(
        y_first.is_err(),
        "Y's overflow start did not fail: {y_first:?}"
    );
    assert_eq!(again, a_n, "A was not kept at 240 ms: {kept:?}");
    assert_eq!(before.1, 4, "B' was not (only) starting: {before:?}");
    assert!(
        !matches!(y, Ok((n, _)) if n == a_n),
        "Y was handed A (n, age) {y:?} with a 200 ms lifetime (three lifetimes past its \
         expiry): the only start failure was Y's overflow start at 0 ms, 800 ms earlier, and \
         the replacement under way has not failed; stats before A's return {:?}",
        before.0
    );
}

/// Tried (passes; counts with workers kept past their expiry, slow `Drop`s (`dropping`),
/// slow and failing starts, `try_checkout`'s own starts (`callers_starts`), discards and a
/// close at the end, both queue modes): `size(3)`, `min_idle(3)`, `max_overflow(1)`,
/// `max_lifetime(30 ms)`, starts of 0–40 ms (one in eight fails, one in sixteen panics), `Drop`s of 0–8 ms, five
/// clients for 700 ms. Never more alive than `size + max_overflow` (counted as each start
/// ends); once quiet the counts add up (`free == size`, nothing starting, as many alive as
/// counted, no more than the size); after `drain`, none alive.
#[test]
fn kept_workers_with_slow_drops_and_starts_keep_the_counts_whole() {
    common::quiet_panics();
    for (seed, mode) in [(3u64, QueueMode::Lifo), (4, QueueMode::Fifo)] {
        let watch = Watch::default();
        let plan_rng = Arc::new(Mutex::new(common::Rng::new(seed * 13 + 25)));
        let (builder, start) = watched_pool(
            &watch,
            move |n| {
                if n < 3 {
                    return Start::Ok(Duration::ZERO);
                }
                let mut rng = plan_rng.lock().unwrap();
                match rng.below(8) {
                    0 => Start::Fail(Duration::from_millis(rng.below(5))),
                    1 if rng.below(2) == 0 => Start::Panic,
                    _ => Start::Ok(Duration::from_millis(rng.below(40))),
                }
            },
            |n| Duration::from_millis((n % 9) as u64),
        );
        let pool = builder
            .size(3)
            .max_overflow(1)
            .queue_mode(mode)
            .reconnect_delay(Duration::from_millis(10))
            .max_lifetime(Duration::from_millis(30))
            .checkout_timeout(Duration::from_millis(300))
            .build(start)
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..5u64)
            .map(|c| {
                let (pool, stop) = (pool.clone(), stop.clone());
                thread::spawn(move || {
                    let mut rng = common::Rng::new(seed * 100 + c);
                    while !stop.load(Ordering::SeqCst) {
                        let lease = if rng.below(2) == 0 {
                            pool.checkout()
                        } else {
                            pool.try_checkout()
                        };
                        let Ok(lease) = lease else {
                            thread::sleep(Duration::from_millis(1));
                            continue;
                        };
                        thread::sleep(Duration::from_millis(rng.below(8)));
                        if rng.below(15) == 0 {
                            Lease::discard(lease);
                        } else {
                            drop(lease);
                        }
                    }
                })
            })
            .collect();
        thread::sleep(Duration::from_millis(700));
        stop.store(true, Ordering::SeqCst);
        for client in clients {
            client.join().unwrap();
        }
        let most = watch.most_live.load(Ordering::SeqCst);
        assert!(most <= 4, "{mode:?}: {most} workers alive at once, limit 4");
        let settled = common::eventually(Duration::from_secs(2), || {
            let stats = pool.stats();
            stats.starting == 0
                && stats.leased == 0
                && stats.size <= 3
                && stats.free == stats.size
                && watch.live.load(Ordering::SeqCst) == stats.size
        });
        assert!(
            settled,
            "{mode:?}: not settled: {:?}, live {}",
            pool.stats(),
            watch.live.load(Ordering::SeqCst)
        );
        let drained = pool.drain(Duration::from_secs(2));
        assert!(drained.is_ok(), "{mode:?}: {drained:?}");
        assert!(
            common::eventually(Duration::from_secs(1), || watch.live.load(Ordering::SeqCst)
                == 0),
            "{mode:?}: alive after drain: {}",
            watch.live.load(Ordering::SeqCst)
        );
    }
}

// ---------------------------------------------------------------------------------------
// Twenty-sixth breaking pass: the twenty-fifth pass's changes (commits c48fc7f, 0672587,
// 16de37c, e3651da, 651c348): the worker kept past its expiry (`Entry::kept_past_expiry`,
// `expired_and_not_kept`, `kept_for_replacements`, `may_stay_past_expiry` and
// `replacement_coming` in src/pool/checkout.rs; `Entry::long_expired` in src/pool/mod.rs;
// the sweep's keep and `sweep_replacing` in src/pool/upkeep.rs; `dropping`,
// `callers_starts` and `above_size` in src/pool/release.rs), attacked through the fault
// families: a lone worker at `min_idle`, endings while a worker is kept (close, drain,
// `Lease::take`, `Lease::discard`, `evict_all`, `resize`), starts failing since the expiry,
// tiny lifetimes with slow starts, a balancer of pools over a pool that churns.
//
// Tests whose doc comment starts with "Found" are one bug each, named after its scenario,
// failing on the code they were written against: one bug, at two sites. A pool whose one
// worker in service is all its `min_idle` (`size(2).min_idle(1)`) retires it at its expiry
// (by the sweep, or at its return) and only then starts its replacement: the pool is empty
// for a whole start, though it had room to start the replacement first. `replacement_coming`
// counts the expiring worker toward `min_idle`, so the start its own retirement makes due
// is not "coming". Fixed: a worker about to be kept past its expiry that is part of
// `min_idle` has its replacement started at once, while it still serves, if the pool has
// room (`start_replacement_ahead` in src/pool/start.rs, asked by the sweep's keep and by
// `expired_and_not_kept`). Those marked "Tried" document what was tried and held.

/// A lone worker's pool: `size(2)`, `min_idle(1)`, `max_lifetime(200 ms)`; the build's start
/// is quick, every later start takes 400 ms (and succeeds).
fn lone_worker_pool(watch: &Watch) -> Pool<Conn> {
    let (builder, start) = watched_pool(
        watch,
        |n| {
            if n == 0 {
                Start::Ok(Duration::ZERO)
            } else {
                Start::Ok(Duration::from_millis(400))
            }
        },
        |_| Duration::ZERO,
    );
    counting_expiries(builder, watch)
        .size(2)
        .min_idle(1)
        .max_lifetime(Duration::from_millis(200))
        .build(start)
        .unwrap()
}

/// Found (src/pool/checkout.rs `replacement_coming`, asked by the sweep's keep in
/// src/pool/upkeep.rs `sweep`: "a start on its way, or one due: fewer workers counted than
/// `min_idle`" counts the expiring worker itself, so the replacement that its own retirement
/// makes due is not "coming"). A pool of `size(2)`, `min_idle(1)` (room for a second worker)
/// with its one worker A, idle, `max_lifetime(200 ms)`; restarts take 400 ms. At ~200 ms A
/// expires alone: the sweep finds one expired, no start on its way and `total (1) <
/// min_idle (1)` false, so nothing is "coming" and A is retired; then `replace` starts one
/// (total 0 < 1). The pool has no worker for the 400 ms its replacement takes, though it
/// had room to start the replacement before A went.
///
/// Expected (the kept-worker rule's purpose, "so that a pool is never left with no worker
/// while replacements start"; GUARANTEES.md's `max_lifetime` row: "never all at once", the
/// one kept "stays while no other worker is in service and a replacement is coming, until
/// it is in, for at most a lifetime past its expiry"; only a `size(1)` pool, which has no
/// room, is accepted as empty while its expired worker's replacement starts): a checkout at
/// 300 ms (A 100 ms past its expiry, well within a lifetime) gets A at once.
///
/// What happened: see the assertion's numbers: at 300 ms nothing free, one starting; the
/// checkout (100 ms) timed out. Suggested fix: in `replacement_coming` (or at each caller),
/// ask whether retiring this worker leaves fewer than `min_idle`: `total - dropping - 1 <
/// min_idle` (with room to start one: `has_room`), e.g. pass the number being retired.
#[test]
fn a_lone_idle_worker_at_min_idle_is_kept_while_its_own_replacement_starts() {
    let watch = Watch::default();
    let pool = lone_worker_pool(&watch);
    let w = watch.clone();
    let outcome = common::within(Duration::from_secs(6), move || {
        let from = Instant::now();
        sleep_until(from + Duration::from_millis(300));
        let before = (
            pool.stats(),
            w.expired.load(Ordering::SeqCst),
            w.starts.load(Ordering::SeqCst),
        );
        let asked = Instant::now();
        let got = pool
            .checkout_timeout(Duration::from_millis(100))
            .map(|lease| (lease.n, lease.born.elapsed()))
            .map_err(|e| format!("{e:?}"));
        (before, got, asked.elapsed(), pool)
    })
    .expect("hung");
    let (before, got, took, _pool) = outcome;
    eprintln!("at 300 ms {before:?}; the checkout got (n, age) {got:?} in {took:?}");
    assert!(
        got.is_ok(),
        "a checkout at 300 ms found the pool empty and got {got:?} after {took:?}: its one \
         worker, expired ~100 ms earlier (a 200 ms lifetime), was retired before its \
         replacement (400 ms) started, though the pool had room for both; at 300 ms: stats \
         {:?}, {} expired, {} starts",
        before.0,
        before.1,
        before.2
    );
}

/// Found (the same cause at the return: `expired_and_not_kept` → `kept_for_replacements` →
/// `replacement_coming` in src/pool/checkout.rs). The pool above; client X holds A across
/// its expiry and returns it at 250 ms, the last in service: flagged, but no start is on
/// its way and `total (1) < min_idle (1)` is false, so A is retired at the return and its
/// replacement (400 ms) starts only then.
///
/// Expected (the accepted "the last in service, found expired by a return or checkout, is
/// kept and leased while a replacement is coming"; its retirement makes one due): X's
/// `checkout_timeout(100 ms)` right after the return gets A.
///
/// What happened: see the assertion's numbers: the pool was empty after the return and the
/// checkout timed out. Suggested fix: as above.
#[test]
fn a_lone_worker_at_min_idle_returned_expired_is_kept_while_its_own_replacement_starts() {
    let watch = Watch::default();
    let pool = lone_worker_pool(&watch);
    let w = watch.clone();
    let outcome = common::within(Duration::from_secs(6), move || {
        let from = Instant::now();
        let a = pool.checkout().unwrap();
        let a_n = a.n;
        sleep_until(from + Duration::from_millis(250));
        drop(a);
        let after = (pool.stats(), w.expired.load(Ordering::SeqCst));
        let asked = Instant::now();
        let got = pool
            .checkout_timeout(Duration::from_millis(100))
            .map(|lease| lease.n)
            .map_err(|e| format!("{e:?}"));
        (a_n, after, got, asked.elapsed(), pool)
    })
    .expect("hung");
    let (a_n, after, got, took, _pool) = outcome;
    eprintln!("A {a_n}; after its return {after:?}; the checkout got {got:?} in {took:?}");
    assert!(
        got.is_ok(),
        "the pool's one worker, returned 50 ms past its expiry (a 200 ms lifetime), was \
         retired at its return before its replacement (400 ms) started, though the pool \
         had room: a checkout right after got {got:?} after {took:?}; after the return: \
         stats {:?}, {} expired",
        after.0,
        after.1
    );
}

/// A pool of two (`size(2)`, `min_idle` 2) started together, `max_lifetime(150 ms)`; every
/// later start takes `restart` (and succeeds). Returns once one worker is kept past its
/// expiry (free, expired) while the other's replacement starts, with the kept one's number.
fn a_pool_keeping_one(watch: &Watch, restart: Duration) -> (Pool<Conn>, usize) {
    let (builder, start) = watched_pool(
        watch,
        move |n| {
            if n < 2 {
                Start::Ok(Duration::ZERO)
            } else {
                Start::Ok(restart)
            }
        },
        |_| Duration::ZERO,
    );
    let pool = counting_expiries(builder, watch)
        .size(2)
        .max_lifetime(Duration::from_millis(150))
        .build(start)
        .unwrap();
    let kept = common::eventually(Duration::from_secs(2), || {
        let stats = pool.stats();
        watch.expired.load(Ordering::SeqCst) == 1 && stats.free == 1 && stats.starting == 1
    });
    assert!(kept, "no worker kept: {:?}", pool.stats());
    // Past the second expiry (both expire within 2.5 % of 150 ms).
    thread::sleep(Duration::from_millis(20));
    let lease = pool.checkout_timeout(Duration::from_millis(50)).unwrap();
    let n = lease.n;
    assert!(
        lease.born.elapsed() >= Duration::from_millis(150),
        "not the kept one"
    );
    drop(lease);
    (pool, n)
}

/// Tried (passes; endings while a worker is kept: `close` then `drain`). The kept worker is
/// free, its partner's replacement (600 ms) on its way; `drain(2 s)` closes it at once and
/// returns once the replacement's start ended and was closed; none alive, `Closed` after.
#[test]
fn drain_while_a_worker_is_kept_closes_it_and_the_replacement() {
    let watch = Watch::default();
    let w = watch.clone();
    let outcome = common::within(Duration::from_secs(6), move || {
        let (pool, _kept) = a_pool_keeping_one(&w, Duration::from_millis(600));
        let drained = pool.drain(Duration::from_secs(2));
        let gone = common::eventually(Duration::from_secs(1), || {
            w.live.load(Ordering::SeqCst) == 0
        });
        let after = pool.checkout().map(|_| ()).map_err(|e| format!("{e:?}"));
        (drained.map_err(|e| format!("{e:?}")), gone, after)
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

/// Tried (passes; `Lease::take` and `Lease::discard` of the kept worker). The kept worker
/// is leased while its partner's replacement (300 ms) starts, then taken (or discarded): its
/// replacement is claimed at once (both starts under way), the pool settles at two fresh
/// workers, never more than two alive besides the taken one.
#[test]
fn the_kept_worker_taken_or_discarded_is_replaced_and_the_pool_settles() {
    for take in [true, false] {
        let watch = Watch::default();
        let w = watch.clone();
        let outcome = common::within(Duration::from_secs(6), move || {
            let (pool, kept) = a_pool_keeping_one(&w, Duration::from_millis(300));
            let lease = pool.checkout().unwrap();
            assert_eq!(lease.n, kept);
            let taken = if take {
                Some(Lease::take(lease))
            } else {
                Lease::discard(lease);
                None
            };
            let starting = pool.stats().starting;
            let settled = common::eventually(Duration::from_secs(2), || {
                let stats = pool.stats();
                stats.starting == 0 && stats.free == 2 && stats.size == 2
            });
            let live = w.live.load(Ordering::SeqCst);
            drop(taken);
            (starting, settled, pool.stats(), live)
        })
        .expect("hung");
        let (starting, settled, stats, live) = outcome;
        assert_eq!(
            starting, 2,
            "take {take}: the kept one's replacement was not claimed at once"
        );
        assert!(settled, "take {take}: not settled: {stats:?}");
        let expected = if take { 3 } else { 2 };
        assert_eq!(live, expected, "take {take}: alive {live}, stats {stats:?}");
        assert!(watch.most_live.load(Ordering::SeqCst) <= 3);
    }
}

/// Tried (passes; `evict_all` and `resize` up while a worker is kept). `evict_all` closes
/// the kept worker at once; a `resize(3)` keeps it until a worker is in, then it goes. The
/// pool churns on (150 ms lifetimes, 200 ms restarts), so it is never quiet: within 1.5 s the
/// kept worker is gone and the pool has a worker; never more alive than the size.
#[test]
fn evict_all_or_resize_up_while_a_worker_is_kept_settles() {
    for evict in [true, false] {
        let watch = Watch::default();
        let w = watch.clone();
        let outcome = common::within(Duration::from_secs(8), move || {
            let (pool, kept) = a_pool_keeping_one(&w, Duration::from_millis(200));
            let size = if evict {
                pool.evict_all();
                2
            } else {
                pool.resize(3).unwrap();
                3
            };
            let gone_in = Instant::now();
            let kept_gone = common::eventually(Duration::from_millis(1500), || {
                w.dropped_at.lock().unwrap().iter().any(|(n, _)| *n == kept)
            });
            let took = gone_in.elapsed();
            let served = pool
                .checkout_timeout(Duration::from_millis(500))
                .map(|lease| lease.n)
                .map_err(|e| format!("{e:?}"));
            (kept_gone, took, served, pool.stats(), size)
        })
        .expect("hung");
        let (kept_gone, took, served, stats, size) = outcome;
        eprintln!("evict {evict}: kept gone {kept_gone} in {took:?}; served {served:?}; {stats:?}");
        assert!(
            kept_gone,
            "evict {evict}: the kept worker is still there: {stats:?}"
        );
        assert!(served.is_ok(), "evict {evict}: {served:?}");
        let most = watch.most_live.load(Ordering::SeqCst);
        assert!(
            most <= size,
            "evict {evict}: {most} alive at once, size {size}"
        );
    }
}

/// Tried (passes; the `failing` exception with `last_failure_at`). The pool keeping one
/// (150 ms lifetime): the partner's replacement and every retry fail (`reconnect_delay(30
/// ms)`) from its expiry on, so the kept worker serves on: at 600 ms (three lifetimes past
/// its expiry) a checkout still gets it. Then starts succeed: it goes once a replacement
/// is in, and the pool settles at two fresh workers.
#[test]
fn a_worker_kept_while_starts_fail_since_its_expiry_serves_on_then_goes() {
    let watch = Watch::default();
    let fail = Arc::new(AtomicBool::new(true));
    let f = fail.clone();
    let (builder, start) = watched_pool(
        &watch,
        move |n| {
            if n < 2 {
                Start::Ok(Duration::ZERO)
            } else if f.load(Ordering::SeqCst) {
                Start::Fail(Duration::from_millis(5))
            } else {
                Start::Ok(Duration::from_millis(50))
            }
        },
        |_| Duration::ZERO,
    );
    let pool = counting_expiries(builder, &watch)
        .size(2)
        .reconnect_delay(Duration::from_millis(30))
        .max_lifetime(Duration::from_millis(150))
        .build(start)
        .unwrap();
    let w = watch.clone();
    let outcome = common::within(Duration::from_secs(6), move || {
        let from = Instant::now();
        sleep_until(from + Duration::from_millis(600));
        let late = pool
            .checkout_timeout(Duration::from_millis(100))
            .map(|lease| (lease.n, lease.born.elapsed()))
            .map_err(|e| format!("{e:?}"));
        fail.store(false, Ordering::SeqCst);
        let settled = common::eventually(Duration::from_secs(2), || {
            let stats = pool.stats();
            stats.starting == 0
                && stats.free == 2
                && w.live.load(Ordering::SeqCst) == 2
                && w.dropped_at.lock().unwrap().len() == 2
        });
        (late, settled, pool.stats())
    })
    .expect("hung");
    let (late, settled, stats) = outcome;
    assert!(
        matches!(late, Ok((n, _)) if n < 2),
        "the kept worker did not serve on: {late:?}"
    );
    assert!(
        settled,
        "not settled: {stats:?}, live {}",
        watch.live.load(Ordering::SeqCst)
    );
}

/// Tried (passes; tiny lifetimes with slow starts: 1, 5 and 20 ms lifetimes, 30 ms starts,
/// `size(2)`, two clients in `checkout_timeout(500 ms)` loops for 500 ms). The pool churns
/// (each worker expires before or soon after its first lease) but never spins: starts stay
/// within the pace of one per start time per slot; never more alive than two; a checkout
/// never answers `Disconnected` or `Overload` (only leases, or a `Timeout`); quiet after,
/// the counts add up.
#[test]
fn tiny_lifetimes_with_slow_starts_churn_at_the_pace_of_starts() {
    for lifetime in [1u64, 5, 20] {
        let watch = Watch::default();
        let (builder, start) = watched_pool(
            &watch,
            |n| {
                if n < 2 {
                    Start::Ok(Duration::ZERO)
                } else {
                    Start::Ok(Duration::from_millis(30))
                }
            },
            |_| Duration::ZERO,
        );
        let pool = builder
            .size(2)
            .max_lifetime(Duration::from_millis(lifetime))
            .build(start)
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let wrong = Arc::new(Mutex::new(Vec::new()));
        let leases = Arc::new(AtomicUsize::new(0));
        let clients: Vec<_> = (0..2)
            .map(|_| {
                let (pool, stop, wrong, leases) =
                    (pool.clone(), stop.clone(), wrong.clone(), leases.clone());
                thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        match pool.checkout_timeout(Duration::from_millis(500)) {
                            Ok(lease) => {
                                leases.fetch_add(1, Ordering::SeqCst);
                                thread::sleep(Duration::from_millis(2));
                                drop(lease);
                            }
                            Err(Error::Timeout { .. }) => {}
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
        // 500 ms (+ the wind-down) of 30 ms starts, two slots, and a margin.
        assert!(
            starts <= 2 + 2 * 1100 / 30,
            "{lifetime} ms: {starts} starts (a spin)"
        );
        assert!(watch.most_live.load(Ordering::SeqCst) <= 2);
        // Quiet: every worker expires and is replaced at the pace of starts; the counts stay
        // within the size and as many are alive as counted (no more than two).
        let stats = pool.stats();
        assert!(
            stats.size <= 2 && watch.live.load(Ordering::SeqCst) <= 2,
            "{stats:?}"
        );
        pool.close();
        assert!(common::eventually(Duration::from_secs(1), || watch
            .live
            .load(Ordering::SeqCst)
            == 0));
    }
}

/// Tried (passes; a balancer of pools over a pool that churns: `Balancer<Pool<W>>` with one
/// pool of two, `max_lifetime(100 ms)`, restarts of 60 ms, one client in a loop for 800 ms).
/// The kept worker bridges each expiry: the balancer never marks the pool dead and never
/// answers `Disconnected` or `Overload` while the server is up.
#[test]
fn a_balancer_over_a_churning_pool_never_finds_it_down() {
    let watch = Watch::default();
    let (builder, start) = watched_pool(
        &watch,
        |n| {
            if n < 2 {
                Start::Ok(Duration::ZERO)
            } else {
                Start::Ok(Duration::from_millis(60))
            }
        },
        |_| Duration::ZERO,
    );
    let pool = counting_expiries(builder, &watch)
        .size(2)
        .max_lifetime(Duration::from_millis(100))
        .build(start)
        .unwrap();
    let balancer = Balancer::over_pools([pool]).unwrap();
    let outcome = common::within(Duration::from_secs(6), move || {
        let from = Instant::now();
        let mut wrong = Vec::new();
        let mut ok = 0;
        while from.elapsed() < Duration::from_millis(800) {
            match balancer.checkout_timeout(Duration::from_millis(300)) {
                Ok(lease) => {
                    ok += 1;
                    thread::sleep(Duration::from_millis(3));
                    drop(lease);
                }
                Err(e) => wrong.push((from.elapsed(), format!("{e:?}"))),
            }
        }
        (ok, wrong)
    })
    .expect("hung");
    let (ok, wrong) = outcome;
    eprintln!(
        "{ok} leases, {} expired",
        watch.expired.load(Ordering::SeqCst)
    );
    assert!(watch.expired.load(Ordering::SeqCst) >= 4, "no churn");
    assert!(wrong.is_empty(), "the balancer answered {wrong:?}");
}
