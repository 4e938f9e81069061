//! Twenty-first breaking pass: the twentieth pass's `kept_until_started` (the youngest
//! expired worker a sweep keeps stays until the pool's count of successful starts reaches
//! the count at the sweep plus the replacements it expects), attacked with the server up.
//!
//! Tests whose doc comment starts with "Found" are one bug each, named after its scenario,
//! failing on the code they were written against. All three are fixed by one simpler rule
//! (`kept_for_replacements` in src/pool/checkout.rs): the worker kept past its expiry stays
//! while the sweep claims the others' replacements, and after that only while no other worker
//! is in service and one is coming (a start on its way, or fewer open than `min_idle`). Those
//! marked "Tried" document what was tried and held.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use cylinder::{BoxError, Event, Pool, PoolBuilder};

fn on_reaper() -> bool {
    thread::current()
        .name()
        .is_some_and(|name| name.starts_with("cylinder-reaper"))
}

/// A worker: its start's number, when it was born, and the count of workers alive.
struct Conn {
    n: usize,
    born: Instant,
    live: Arc<AtomicUsize>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

const LIFETIME: Duration = Duration::from_millis(300);

/// What a test watches: starts, workers alive, `WorkerExpired` events, whether the reaper
/// was held up, and from when (the first workers' births) the hold-up is counted.
#[derive(Clone, Default)]
struct Watch {
    starts: Arc<AtomicUsize>,
    live: Arc<AtomicUsize>,
    expired: Arc<AtomicUsize>,
    held_up: Arc<AtomicBool>,
    from: Arc<Mutex<Option<Instant>>>,
}

/// A builder whose reaper, on its first `SlowLease` report (a lease held past 20 ms), is held
/// up until 340 ms after `watch.from`, so that one sweep finds every worker born then
/// expired at once; `slow(n)` says how long start `n` takes.
fn held_up_pool(
    watch: &Watch,
    slow: impl Fn(usize) -> Duration + Send + Sync + 'static,
) -> (
    PoolBuilder<Conn>,
    impl Fn() -> Result<Conn, BoxError> + Send + Sync + 'static,
) {
    let (e, h, f) = (
        watch.expired.clone(),
        watch.held_up.clone(),
        watch.from.clone(),
    );
    let builder = Pool::builder()
        .max_lifetime(LIFETIME)
        .warn_after(Duration::from_millis(20))
        .checkout_timeout(Duration::from_secs(2))
        .on_event(move |event| {
            if matches!(event, Event::WorkerExpired) {
                e.fetch_add(1, Ordering::SeqCst);
            }
            if matches!(event, Event::SlowLease { .. })
                && on_reaper()
                && !h.swap(true, Ordering::SeqCst)
            {
                let from = f.lock().unwrap().unwrap_or_else(Instant::now);
                let until = from + LIFETIME + Duration::from_millis(40);
                thread::sleep(until.saturating_duration_since(Instant::now()));
            }
        });
    let (s, l) = (watch.starts.clone(), watch.live.clone());
    let start = move || {
        let n = s.fetch_add(1, Ordering::SeqCst);
        thread::sleep(slow(n));
        l.fetch_add(1, Ordering::SeqCst);
        Ok::<_, BoxError>(Conn {
            n,
            born: Instant::now(),
            live: l.clone(),
        })
    };
    (builder, start)
}

/// The scenario of the two tests below: two workers open at once (on demand), the reaper
/// held up past both expiries, so one sweep keeps the youngest and retires the other, and
/// no replacement starts (the pool holds its `min_idle`). Then one client uses the pool in a
/// loop (50 ms leases, checking out again at once) until 1.5 s after the workers' births.
/// Returns the oldest age at which a worker was handed out, and the numbers leased.
fn a_busy_client_after_two_expire_at_once(min_idle: usize) -> (Duration, Vec<usize>, Watch) {
    let watch = Watch::default();
    let (builder, start) = held_up_pool(&watch, |_| Duration::ZERO);
    let pool = builder.size(3).min_idle(min_idle).build(start).unwrap();
    let w = watch.clone();
    let outcome = common::within(Duration::from_secs(6), move || {
        let one = pool.checkout().unwrap();
        let two = pool.checkout().unwrap();
        let births = one.born.min(two.born);
        *w.from.lock().unwrap() = Some(births);
        // Held past warn_after: the reaper reports it and is held up past both expiries.
        assert!(
            common::eventually(Duration::from_millis(300), || w
                .held_up
                .load(Ordering::SeqCst)),
            "the reaper never reported the slow lease"
        );
        drop((one, two));
        // The sweep after the hold-up: one of the two retired, the youngest kept.
        assert!(
            common::eventually(Duration::from_secs(1), || w.expired.load(Ordering::SeqCst)
                >= 1),
            "no worker expired"
        );
        let mut oldest = Duration::ZERO;
        let mut leased = Vec::new();
        while births.elapsed() < Duration::from_millis(1500) {
            let lease = pool.checkout().unwrap();
            oldest = oldest.max(lease.born.elapsed());
            if leased.last() != Some(&lease.n) {
                leased.push(lease.n);
            }
            thread::sleep(Duration::from_millis(50));
            drop(lease);
        }
        (oldest, leased)
    })
    .expect("hung");
    (outcome.0, outcome.1, watch)
}

/// Found (the twentieth pass's `kept_until_started` in src/pool/upkeep.rs `sweep`, with
/// `kept_for_replacements` in src/pool/checkout.rs and `unfit` in src/pool/release.rs). A
/// lazy pool (`size(3)`, `min_idle(0)`, `max_lifetime(300 ms)`): two workers opened at once
/// for two clients, returned; one sweep finds both expired (the reaper was held up) and keeps
/// the youngest "until the started count reaches the count then + 1". The other's retirement
/// starts no replacement (a lazy pool replaces only up to `min_idle`), and the server is up.
/// One client then uses the pool in a loop, 50 ms leases (each
/// reported as slow: only the first report holds the reaper up).
///
/// Expected (GUARANTEES.md's `max_lifetime` row; the sweep's own comment "a lone expired
/// worker with nothing coming goes"): nothing is coming, so the kept worker goes at its next
/// return (or sweep) and the client gets a new one; no worker is handed out far past its
/// 300 ms lifetime.
///
/// What happened: the kept worker serves every lease for the whole 1.5 s (5x its
/// lifetime, and for as long as the client keeps it busy): `started` never reaches the count
/// the sweep set, so every return (`unfit`) and checkout spares it, and the sweeps, which do
/// not spare it, always find it leased.
#[test]
fn a_kept_worker_in_a_lazy_pool_kept_busy_is_not_leased_far_past_its_lifetime() {
    let (oldest, leased, watch) = a_busy_client_after_two_expire_at_once(0);
    assert!(
        oldest < Duration::from_millis(800),
        "a worker was handed out {oldest:?} after its birth (max_lifetime {LIFETIME:?}) \
         while the server was up and no replacement was coming (workers leased in turn: \
         {leased:?}; {} starts, {} expired)",
        watch.starts.load(Ordering::SeqCst),
        watch.expired.load(Ordering::SeqCst),
    );
}

/// Found (the same cause; `min_idle` below the workers open). A pool of `size(3)`,
/// `min_idle(1)`: the second worker was opened on demand. Both expire at once, the youngest
/// is kept until one start more, and the other's retirement starts none (one open is
/// `min_idle`). One client uses the pool in a loop.
///
/// Expected: as above, no worker handed out far past its lifetime while the server is up.
///
/// What happened: the kept worker serves every lease for 1.5 s, 5x its lifetime.
#[test]
fn a_kept_worker_with_min_idle_below_the_open_count_kept_busy_is_not_leased_far_past_its_lifetime()
{
    let (oldest, leased, watch) = a_busy_client_after_two_expire_at_once(1);
    assert!(
        oldest < Duration::from_millis(800),
        "a worker was handed out {oldest:?} after its birth (max_lifetime {LIFETIME:?}) \
         while the server was up and no replacement was coming (workers leased in turn: \
         {leased:?}; {} starts, {} expired)",
        watch.starts.load(Ordering::SeqCst),
        watch.expired.load(Ordering::SeqCst),
    );
}

/// Found (`kept_for_replacements` in src/pool/checkout.rs counts every successful start,
/// not the replacements'). A pool of `size(2)`, `max_overflow(1)`, `max_lifetime(300 ms)`;
/// its two workers expire at once (the reaper held up): the sweep keeps the youngest until
/// one start more and retires the other, whose replacement takes 400 ms to start (a slow
/// reconnect). Meanwhile client A holds the kept worker, and client B's `try_checkout` opens
/// an overflow worker on its own thread (quick), uses it and returns it: above the size, it
/// is closed. Then A returns the kept worker.
///
/// Expected (GUARANTEES.md's `max_lifetime` row: "kept until their replacements are in ...
/// never all at once"): the replacement is not in, so the kept worker goes back to the free
/// list and the pool still has a worker.
///
/// What happened: the overflow start advanced `started` to the count the sweep set, so the
/// return retired the kept worker: the pool had no worker at all while the replacement still
/// started (a checkout then waits for it).
#[test]
fn an_overflow_start_does_not_count_as_the_kept_workers_replacement() {
    let watch = Watch::default();
    // Starts 0 and 1 (the build) and 3 (the overflow) are quick; the replacements take 400 ms.
    let (builder, start) = held_up_pool(&watch, |n| {
        if n == 2 || n >= 4 {
            Duration::from_millis(400)
        } else {
            Duration::ZERO
        }
    });
    let pool = builder.size(2).max_overflow(1).build(start).unwrap();
    let w = watch.clone();
    let outcome = common::within(Duration::from_secs(6), move || {
        *w.from.lock().unwrap() = Some(Instant::now());
        {
            let lease = pool.checkout().unwrap();
            assert!(
                common::eventually(Duration::from_millis(300), || w
                    .held_up
                    .load(Ordering::SeqCst)),
                "the reaper never reported the slow lease"
            );
            drop(lease);
        }
        // The sweep after the hold-up: one retired (its replacement, start 2, under way).
        assert!(
            common::eventually(Duration::from_secs(1), || w.expired.load(Ordering::SeqCst)
                >= 1
                && w.starts.load(Ordering::SeqCst) >= 3),
            "no worker expired"
        );
        let kept = pool.checkout().unwrap();
        let kept_n = kept.n;
        // Returned at once: above the size, it is closed.
        let overflow = pool.try_checkout().map(|lease| lease.n);
        let before = pool.stats();
        drop(kept);
        let after = pool.stats();
        let expired = w.expired.load(Ordering::SeqCst);
        (
            kept_n,
            overflow.map_err(|e| format!("{e:?}")),
            before,
            after,
            expired,
        )
    })
    .expect("hung");
    let (kept_n, overflow, before, after, expired) = outcome;
    assert!(
        kept_n < 2,
        "the kept worker was not the one leased (got {kept_n})"
    );
    let overflow = overflow.expect("try_checkout found no worker");
    assert_eq!(overflow, 3, "the overflow lease was not the quick start");
    assert!(
        after.free + after.leased > 0,
        "the kept worker (worker {kept_n}) was retired at its return while its replacement \
         still started: the pool had no worker ({expired} expired; stats before the return \
         {before:?}, after {after:?})"
    );
}

/// Tried (passes; a lazy pool whose kept worker nothing replaces, left quiet): the scenario
/// of the first test without the busy client. The next sweep finds the kept worker idle,
/// alone and expired with nothing coming, and closes it within a few ms; once quiet the
/// counts add up (nothing alive, `free + leased == size == 0`).
#[test]
fn a_kept_worker_in_a_lazy_pool_left_idle_goes_at_the_next_sweep_and_counts_add_up() {
    let watch = Watch::default();
    let (builder, start) = held_up_pool(&watch, |_| Duration::ZERO);
    let pool = builder.size(3).min_idle(0).build(start).unwrap();
    let w = watch.clone();
    let outcome = common::within(Duration::from_secs(6), move || {
        let one = pool.checkout().unwrap();
        let two = pool.checkout().unwrap();
        *w.from.lock().unwrap() = Some(one.born.min(two.born));
        assert!(common::eventually(Duration::from_millis(300), || w
            .held_up
            .load(Ordering::SeqCst)));
        drop((one, two));
        assert!(common::eventually(Duration::from_secs(1), || w
            .expired
            .load(Ordering::SeqCst)
            >= 1));
        let gone = common::eventually(Duration::from_millis(300), || {
            w.live.load(Ordering::SeqCst) == 0
        });
        (gone, pool.stats(), w.expired.load(Ordering::SeqCst))
    })
    .expect("hung");
    let (gone, stats, expired) = outcome;
    assert!(
        gone,
        "the kept worker stayed on a quiet lazy pool: {stats:?}"
    );
    assert_eq!(expired, 2);
    assert_eq!(
        (stats.size, stats.free, stats.leased),
        (0, 0, 0),
        "{stats:?}"
    );
}

/// The eager scenario: `size(2)`, both workers expire at once (the reaper held up), the
/// youngest is kept and the other's replacement takes 200 ms (starts from 2 on). Returns the
/// pool once the sweep has retired one.
fn two_expire_at_once_with_slow_replacements(watch: &Watch) -> Pool<Conn> {
    let (builder, start) = held_up_pool(watch, |n| {
        if n >= 2 {
            Duration::from_millis(200)
        } else {
            Duration::ZERO
        }
    });
    let pool = builder.size(2).build(start).unwrap();
    *watch.from.lock().unwrap() = Some(Instant::now());
    let lease = pool.checkout().unwrap();
    assert!(common::eventually(Duration::from_millis(300), || watch
        .held_up
        .load(Ordering::SeqCst)));
    drop(lease);
    assert!(common::eventually(Duration::from_secs(1), || watch
        .expired
        .load(Ordering::SeqCst)
        >= 1
        && watch.starts.load(Ordering::SeqCst) >= 3));
    pool
}

/// Tried (passes; `evict_all` while a worker is kept for its replacements): the kept worker
/// is evicted with the rest; the pool comes back to two workers, both new, as many alive as
/// counted, all free.
#[test]
fn evict_all_while_a_worker_is_kept_for_its_replacements_settles_with_new_workers() {
    let watch = Watch::default();
    let w = watch.clone();
    let outcome = common::within(Duration::from_secs(6), move || {
        let pool = two_expire_at_once_with_slow_replacements(&w);
        pool.evict_all();
        let settled = common::eventually(Duration::from_secs(2), || {
            let stats = pool.stats();
            stats.starting == 0
                && stats.size == 2
                && stats.free == 2
                && w.live.load(Ordering::SeqCst) == 2
        });
        let a = pool.checkout().unwrap();
        let b = pool.checkout().unwrap();
        (
            settled,
            pool.stats(),
            a.n.min(b.n),
            a.born.elapsed().max(b.born.elapsed()),
        )
    })
    .expect("hung");
    let (settled, stats, lowest, oldest) = outcome;
    assert!(settled, "not settled after evict_all: {stats:?}");
    assert!(lowest >= 2, "an original worker survived evict_all");
    assert!(oldest < LIFETIME, "a worker past its lifetime: {oldest:?}");
}

/// Tried (passes; `Lease::take` of the kept worker): taking it starts a replacement at once;
/// the pool settles at two workers, both new, as many alive as counted (the taken one still
/// alive with the client).
#[test]
fn taking_the_kept_worker_settles_at_two_new_workers() {
    let watch = Watch::default();
    let w = watch.clone();
    let outcome = common::within(Duration::from_secs(6), move || {
        let pool = two_expire_at_once_with_slow_replacements(&w);
        let kept = pool.checkout().unwrap();
        let kept_n = kept.n;
        let taken = cylinder::Lease::take(kept);
        let settled = common::eventually(Duration::from_secs(2), || {
            let stats = pool.stats();
            stats.starting == 0
                && stats.size == 2
                && stats.free == 2
                && w.live.load(Ordering::SeqCst) == 3
        });
        let a = pool.checkout().unwrap();
        let b = pool.checkout().unwrap();
        let numbers = (a.n, b.n);
        drop(taken);
        (settled, pool.stats(), kept_n, numbers)
    })
    .expect("hung");
    let (settled, stats, kept_n, (a, b)) = outcome;
    assert!(kept_n < 2, "the lease was not of the kept worker");
    assert!(settled, "not settled after Lease::take: {stats:?}");
    assert!(a >= 2 && b >= 2, "an original worker served: {a}, {b}");
}
