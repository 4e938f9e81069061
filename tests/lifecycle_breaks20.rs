//! Twentieth breaking pass: the nineteenth pass's `max_lifetime` changes
//! (`kept_for_replacements`, the sweep's `coming` false while `failing`, the look after a
//! slow checkout check sparing a fresh worker), attacked through the fault families.
//!
//! Tests whose doc comment starts with "Found" are one bug each, named after its scenario,
//! and failed on the code they were written against. Those marked "Tried" document what was
//! tried and held.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use cylinder::{BoxError, Event, Pool};

fn on_reaper() -> bool {
    thread::current()
        .name()
        .is_some_and(|name| name.starts_with("cylinder-reaper"))
}

/// A worker: its start's number, when it was born, and a `Drop` that may be slow (closing a
/// connection politely: a terminate message, a TLS close_notify over a slow link).
struct Conn {
    n: usize,
    born: Instant,
    slow_drop: Arc<Mutex<Option<Duration>>>,
    live: Arc<AtomicUsize>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        let pause = self.slow_drop.lock().unwrap().take();
        if let Some(pause) = pause {
            thread::sleep(pause);
        }
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A pool of three keeping two (`min_idle(2)`), `max_lifetime(400 ms)`, whose third start
/// fails once (a blip no later success clears until the replacements come), and whose later
/// starts take `replacement_start`; with the count of starts.
fn pool_with_an_old_blip(replacement_start: Duration) -> (Pool<Conn>, Arc<AtomicUsize>) {
    let starts = Arc::new(AtomicUsize::new(0));
    let live = Arc::new(AtomicUsize::new(0));
    let slow_drop = Arc::new(Mutex::new(None));
    let (s, l, d) = (starts.clone(), live.clone(), slow_drop.clone());
    let pool = Pool::builder()
        .size(3)
        .min_idle(2)
        .max_lifetime(Duration::from_millis(400))
        .reconnect_delay(Duration::from_millis(50))
        .checkout_timeout(Duration::from_secs(2))
        .build(move || {
            let n = s.fetch_add(1, Ordering::SeqCst);
            if n == 2 {
                return Err::<Conn, BoxError>("connection refused (a blip)".into());
            }
            if n > 2 {
                thread::sleep(replacement_start);
            }
            l.fetch_add(1, Ordering::SeqCst);
            Ok(Conn {
                n,
                born: Instant::now(),
                slow_drop: d.clone(),
                live: l.clone(),
            })
        })
        .unwrap();
    (pool, starts)
}

/// Found (families 9 and 10; the nineteenth pass's `coming ... && !self.failing` in
/// src/pool/upkeep.rs `sweep`). A pool of `size(3)`, `min_idle(2)`, `max_lifetime(400 ms)`,
/// `reconnect_delay(50 ms)`: its two workers start together. Once, a client's
/// `try_checkout` finds both leased and opens a third on its own thread, which fails (the
/// server refused one connection: a blip). Nothing retries it (the pool holds its
/// `min_idle`), so no start succeeds after it. The clients return the two workers and the
/// pool is quiet; replacements take 150 ms to start (a slow reconnect).
///
/// Expected (GUARANTEES.md's `max_lifetime` row): "workers started together expire over a
/// spread, never all at once" (`tests/lifecycle_breaks3.rs`,
/// `max_lifetime_on_a_quiet_pool_never_expires_every_worker_at_once`); "not while starts
/// fail" is about a server that is down, and here every start since the blip (none) and
/// every replacement succeeds.
///
/// What happened: the pool goes from two free workers to none while both replacements start
/// (every run). The blip's `failing` flag is cleared only by a later successful start
/// (src/pool/start.rs, `joined`), and none comes until the expiries: the sweep reads
/// `failing` as "starts keep failing" and keeps no expired worker, so both go at once.
#[test]
fn an_old_failed_start_no_success_has_cleared_does_not_let_every_worker_expire_at_once() {
    let (pool, starts) = pool_with_an_old_blip(Duration::from_millis(150));
    let built = Instant::now();
    let fewest = common::within(Duration::from_secs(6), move || {
        let one = pool.checkout().unwrap();
        let two = pool.checkout().unwrap();
        let third = pool.try_checkout();
        assert!(third.is_err(), "the blip's start should have failed");
        drop(third);
        drop((one, two));
        let mut fewest = usize::MAX;
        while built.elapsed() < Duration::from_millis(1100) {
            let stats = pool.stats();
            fewest = fewest.min(stats.free + stats.leased);
            thread::sleep(Duration::from_millis(1));
        }
        (fewest, pool.stats(), starts.load(Ordering::SeqCst))
    })
    .expect("hung");
    let (fewest, stats, started) = fewest;
    assert!(started > 3, "no worker ever expired ({started} starts)");
    assert!(
        fewest > 0,
        "the quiet pool had no worker at some point: both expired at once after an old \
         failed start ({started} starts; stats now {stats:?})"
    );
}

/// Found (family 10; the same stale `failing`, through `try_acquire_slow` in
/// src/pool/checkout.rs). The pool of the test above: an old failed start (a blip) no success
/// has cleared, then both workers expire at once and their replacements take 150 ms to start.
/// A client calls `try_checkout` while they start.
///
/// Expected (src/error.rs: `Disconnected` is for a pool "down (nothing open, starts
/// failing)"; GUARANTEES error truth): the server is up, replacements are on their way and
/// will succeed: at worst `Overload`, or a wait for the first start as a lazy pool's
/// `try_checkout` does — never `Disconnected` with the blip's error from long ago.
///
/// What happened: `Error::Disconnected` carrying "connection refused (a blip)", every run
/// (`nothing_open && failing` → `on_their_way() > 0` → `down(last_failure)`).
#[test]
fn try_checkout_while_replacements_start_is_not_disconnected_by_an_old_failed_start() {
    let (pool, _starts) = pool_with_an_old_blip(Duration::from_millis(300));
    let built = Instant::now();
    let answers = common::within(Duration::from_secs(6), move || {
        let one = pool.checkout().unwrap();
        let two = pool.checkout().unwrap();
        assert!(
            pool.try_checkout().is_err(),
            "the blip's start should have failed"
        );
        drop((one, two));
        // Wait for the expiries, then ask while the replacements start.
        while built.elapsed() < Duration::from_millis(420) || pool.stats().starting == 0 {
            if built.elapsed() > Duration::from_millis(1500) {
                break;
            }
            thread::sleep(Duration::from_millis(1));
        }
        let stats = pool.stats();
        let answer = pool.try_checkout().map(|lease| lease.n);
        (stats, answer.map_err(|err| format!("{err:?}")))
    })
    .expect("hung");
    let (stats, answer) = answers;
    if let Err(err) = &answer {
        assert!(
            !err.contains("Disconnected"),
            "try_checkout answered {err} while replacements for expired workers start (the \
             blip long over; stats then {stats:?})"
        );
    }
}

/// Found (families 2 and 9; `kept_for_replacements` in src/pool/checkout.rs and the order
/// of `sweep` → `retire_held` → `retire_unreported` in src/pool/release.rs). A quiet pool of
/// two started together, `max_lifetime(300 ms)`, replacements that take 200 ms, and
/// workers whose `Drop` takes 300 ms (a polite close over a slow link). The reaper is held
/// up just before the expiries (a slow log sink on a `SlowLease` report) so that one sweep
/// finds both expired: it keeps the youngest past its expiry and retires the other, whose
/// `Drop` runs on the reaper. A client checks out meanwhile.
///
/// Expected (GUARANTEES.md's `max_lifetime` row): "except the youngest of those expiring at
/// once, kept while their replacements start ...: workers started together expire over a
/// spread, never all at once"; the accepted item: the kept worker "may serve leases until
/// they are in". The client should be served by the kept worker at once.
///
/// What happened: the checkout retires the kept worker (`WorkerExpired`) and waits ~200 ms
/// for a start: the pool had no worker at all. The replacement of the other is claimed only
/// after its `Drop` ("Closed first ... then its replacement claimed"), so while it runs
/// `on_their_way()` is 0, `kept_for_replacements` is false, and the checkout's own look
/// (`may_have_expired`, a round under way) finds the kept worker simply expired.
#[test]
fn the_kept_worker_is_not_retired_by_a_checkout_while_the_other_expired_one_is_closing() {
    let live = Arc::new(AtomicUsize::new(0));
    let slow_drop = Arc::new(Mutex::new(None));
    let starts = Arc::new(AtomicUsize::new(0));
    let expired = Arc::new(AtomicUsize::new(0));
    let held_up = Arc::new(AtomicBool::new(false));
    let (s, l, d) = (starts.clone(), live.clone(), slow_drop.clone());
    let (e, h) = (expired.clone(), held_up.clone());
    let built = Arc::new(Mutex::new(None::<Instant>));
    let b = built.clone();
    let pool = Pool::builder()
        .size(2)
        .max_lifetime(Duration::from_millis(300))
        .warn_after(Duration::from_millis(20))
        .checkout_timeout(Duration::from_secs(3))
        .on_event(move |event| {
            if matches!(event, Event::WorkerExpired) {
                e.fetch_add(1, Ordering::SeqCst);
            }
            if matches!(event, Event::SlowLease { .. })
                && on_reaper()
                && !h.swap(true, Ordering::SeqCst)
            {
                // Held up until both originals have expired.
                let from = b.lock().unwrap().unwrap_or_else(Instant::now);
                let until = from + Duration::from_millis(330);
                thread::sleep(until.saturating_duration_since(Instant::now()));
            }
        })
        .build(move || {
            let n = s.fetch_add(1, Ordering::SeqCst);
            if n >= 2 {
                thread::sleep(Duration::from_millis(200));
            }
            l.fetch_add(1, Ordering::SeqCst);
            Ok::<_, BoxError>(Conn {
                n,
                born: Instant::now(),
                slow_drop: d.clone(),
                live: l.clone(),
            })
        })
        .unwrap();
    *built.lock().unwrap() = Some(Instant::now());
    let b = built.lock().unwrap().unwrap();
    let answer = common::within(Duration::from_secs(6), move || {
        {
            // A lease held past warn_after: the reaper reports it and is held up.
            let lease = pool.checkout().unwrap();
            assert!(common::eventually(Duration::from_millis(250), || held_up
                .load(Ordering::SeqCst)));
            drop(lease);
        }
        // The next worker closed takes 300 ms.
        *slow_drop.lock().unwrap() = Some(Duration::from_millis(300));
        // Wait for the sweep that finds both expired: one retired (its Drop running).
        assert!(
            common::eventually(Duration::from_secs(1), || live.load(Ordering::SeqCst) == 2
                && slow_drop.lock().unwrap().is_none()),
            "no worker was closed"
        );
        thread::sleep(Duration::from_millis(20));
        let stats = pool.stats();
        let asked = Instant::now();
        let lease = pool.checkout();
        let waited = asked.elapsed();
        let got = lease
            .as_ref()
            .map(|lease| (lease.n, lease.born))
            .map_err(|e| format!("{e:?}"));
        (
            stats,
            waited,
            got,
            expired.load(Ordering::SeqCst),
            starts.load(Ordering::SeqCst),
        )
    })
    .expect("hung");
    let (stats, waited, got, expired, started) = answer;
    let got = got.expect("the checkout failed");
    assert!(
        got.0 < 2,
        "the checkout waited {waited:?} for a replacement (worker {} born {:?} after build) \
         instead of the kept worker: the pool had none ({expired} expired, {started} starts; \
         stats before the checkout {stats:?})",
        got.0,
        got.1.saturating_duration_since(b),
    );
}

/// Tried (passes; families 6 and 9 against `kept_for_replacements`): a pool of four,
/// `max_lifetime(120 ms)`, replacements that take 0–30 ms, three clients checking out in a
/// loop (some leases held across an expiry) for 1 s, then quiet. No worker is leased twice,
/// every expired worker is closed, and once quiet the counts add up: as many workers alive
/// as `stats().size`, all free, four of them.
#[test]
fn counts_add_up_when_quiet_after_expiries_under_load() {
    let live = Arc::new(AtomicUsize::new(0));
    let slow_drop = Arc::new(Mutex::new(None));
    let starts = Arc::new(AtomicUsize::new(0));
    let (s, l, d) = (starts.clone(), live.clone(), slow_drop.clone());
    let pool = Pool::builder()
        .size(4)
        .max_lifetime(Duration::from_millis(120))
        .checkout_timeout(Duration::from_secs(2))
        .build(move || {
            let n = s.fetch_add(1, Ordering::SeqCst);
            thread::sleep(Duration::from_millis((n as u64 * 7) % 31));
            l.fetch_add(1, Ordering::SeqCst);
            Ok::<_, BoxError>(Conn {
                n,
                born: Instant::now(),
                slow_drop: d.clone(),
                live: l.clone(),
            })
        })
        .unwrap();
    let outcome = common::within(Duration::from_secs(8), move || {
        let in_use: Arc<Mutex<std::collections::HashSet<usize>>> = Arc::default();
        let clients: Vec<_> = (0..3u64)
            .map(|c| {
                let pool = pool.clone();
                let in_use = in_use.clone();
                thread::spawn(move || {
                    let mut rng = common::Rng::new(c + 20);
                    let began = Instant::now();
                    while began.elapsed() < Duration::from_secs(1) {
                        let lease = pool.checkout().unwrap();
                        assert!(in_use.lock().unwrap().insert(lease.n), "double lease");
                        thread::sleep(Duration::from_millis(rng.below(40)));
                        in_use.lock().unwrap().remove(&lease.n);
                        drop(lease);
                        thread::sleep(Duration::from_millis(rng.below(5)));
                    }
                })
            })
            .collect();
        for client in clients {
            client.join().unwrap();
        }
        let quiet = common::eventually(Duration::from_secs(2), || {
            let stats = pool.stats();
            stats.starting == 0
                && stats.size == 4
                && stats.free == 4
                && stats.leased == 0
                && live.load(Ordering::SeqCst) == 4
        });
        (
            quiet,
            pool.stats(),
            live.load(Ordering::SeqCst),
            starts.load(Ordering::SeqCst),
        )
    })
    .expect("hung");
    let (quiet, stats, live, started) = outcome;
    assert!(started > 8, "no expiries ({started} starts)");
    assert!(
        quiet,
        "never quiet with the counts adding up: {live} alive, {stats:?}"
    );
}

/// Tried (passes; families 9 and 4 against `kept_for_replacements` with a start unrelated
/// to any expiry): a pool of two started together, `max_lifetime(300 ms)`; at once a client
/// detaches one worker (`Lease::take`), whose replacement takes 450 ms to start (within a
/// lifetime of the other's expiry, as long as a worker may be kept past it). The other
/// expires alone while that start is on its way: the sweep keeps it (`expired == 1 &&
/// on_their_way() > 0`). A client checks out every 50 ms; replacements of expiries take
/// 50 ms. The expired worker went out at most a few ms past its lifetime (retired on its
/// first return, as in
/// `a_lease_of_the_kept_worker_does_not_retire_it_on_return_while_its_replacements_start`),
/// and no checkout waited for a start.
#[test]
fn a_lone_expired_worker_while_an_unrelated_start_is_on_its_way() {
    let live = Arc::new(AtomicUsize::new(0));
    let slow_drop = Arc::new(Mutex::new(None));
    let starts = Arc::new(AtomicUsize::new(0));
    let (s, l, d) = (starts.clone(), live.clone(), slow_drop.clone());
    let pool = Pool::builder()
        .size(2)
        .max_lifetime(Duration::from_millis(300))
        .checkout_timeout(Duration::from_secs(3))
        .build(move || {
            let n = s.fetch_add(1, Ordering::SeqCst);
            if n == 2 {
                thread::sleep(Duration::from_millis(450));
            } else if n > 2 {
                thread::sleep(Duration::from_millis(50));
            }
            l.fetch_add(1, Ordering::SeqCst);
            Ok::<_, BoxError>(Conn {
                n,
                born: Instant::now(),
                slow_drop: d.clone(),
                live: l.clone(),
            })
        })
        .unwrap();
    let outcome = common::within(Duration::from_secs(6), move || {
        let taken = cylinder::Lease::take(pool.checkout().unwrap());
        let began = Instant::now();
        let mut latest_past = Duration::ZERO;
        let mut longest_wait = Duration::ZERO;
        while began.elapsed() < Duration::from_millis(1500) {
            let asked = Instant::now();
            let lease = pool.checkout().unwrap();
            longest_wait = longest_wait.max(asked.elapsed());
            let age = lease.born.elapsed();
            if age > Duration::from_millis(300) {
                latest_past = latest_past.max(age - Duration::from_millis(300));
            }
            drop(lease);
            thread::sleep(Duration::from_millis(50));
        }
        drop(taken);
        (latest_past, longest_wait, pool.stats())
    })
    .expect("hung");
    let (latest_past, longest_wait, stats) = outcome;
    eprintln!("leased up to {latest_past:?} past its lifetime; longest checkout {longest_wait:?}; {stats:?}");
    assert!(
        longest_wait < Duration::from_millis(40),
        "a checkout waited {longest_wait:?}: the pool had no worker"
    );
}

/// Found (family 9; `kept_past_expiry` against the return path, src/pool/release.rs
/// `unfit`: `if entry.expired(now) { return Some(Retire::Expired) }`). A quiet pool of two
/// started together, `max_lifetime(300 ms)`, replacements that take 400 ms (a slow
/// reconnect). Once both have expired, the sweep keeps the youngest while the other's
/// replacement starts. A client checks it out (allowed: the kept worker "may serve leases
/// until they are in"), uses it 5 ms and returns it; then checks out again.
///
/// Expected (GUARANTEES.md's `max_lifetime` row): the youngest expired worker is "kept
/// while their replacements start ...: workers started together expire over a spread, never
/// all at once". The second checkout should get the kept worker again at once.
///
/// What happened: the return retires the kept worker (`WorkerExpired`: `unfit` reads only
/// `expired`, not `kept_for_replacements`) while the replacement is still starting, and
/// starts one for it: the pool has no worker, and the second checkout waits ~0.3 s for the
/// first replacement. Every run. A single lease of the kept worker empties the pool.
#[test]
fn a_lease_of_the_kept_worker_does_not_retire_it_on_return_while_its_replacements_start() {
    let live = Arc::new(AtomicUsize::new(0));
    let slow_drop = Arc::new(Mutex::new(None));
    let starts = Arc::new(AtomicUsize::new(0));
    let (s, l, d) = (starts.clone(), live.clone(), slow_drop.clone());
    let pool = Pool::builder()
        .size(2)
        .max_lifetime(Duration::from_millis(300))
        .checkout_timeout(Duration::from_secs(3))
        .build(move || {
            let n = s.fetch_add(1, Ordering::SeqCst);
            if n >= 2 {
                thread::sleep(Duration::from_millis(400));
            }
            l.fetch_add(1, Ordering::SeqCst);
            Ok::<_, BoxError>(Conn {
                n,
                born: Instant::now(),
                slow_drop: d.clone(),
                live: l.clone(),
            })
        })
        .unwrap();
    let built = Instant::now();
    let outcome = common::within(Duration::from_secs(6), move || {
        // Both expired; one retired (its replacement starting), the youngest kept.
        assert!(
            common::eventually(Duration::from_secs(1), || {
                let stats = pool.stats();
                built.elapsed() > Duration::from_millis(320)
                    && stats.starting == 1
                    && stats.free == 1
            }),
            "no sweep kept a worker: {:?}",
            pool.stats()
        );
        let kept = pool.checkout().unwrap();
        let kept_n = kept.n;
        thread::sleep(Duration::from_millis(5));
        drop(kept);
        let stats = pool.stats();
        let asked = Instant::now();
        let again = pool.checkout().unwrap();
        (kept_n, again.n, asked.elapsed(), stats, built.elapsed())
    })
    .expect("hung");
    let (kept_n, again_n, waited, stats, at) = outcome;
    assert!(
        kept_n < 2 && waited < Duration::from_millis(100),
        "after one lease of the kept worker {kept_n}, the next checkout waited {waited:?} for \
         worker {again_n} (at {at:?} after build): the pool had none (stats after the \
         return {stats:?})"
    );
}

/// Found (families 5 and 9; the nineteenth pass's `fresh` exemption in src/pool/checkout.rs
/// `admit_with_hooks`). The nineteenth pass's pool
/// (`a_checkout_check_slower_than_max_lifetime_still_serves_a_lease`: `max_lifetime(60 ms)`,
/// a checkout check that takes 90 ms for a client), but of two workers whose replacements
/// take 2 ms to start (a local server), and the client comes 20 ms after the build (not at
/// the very instant the workers start).
///
/// Expected: as for the pool of one, a checkout gets a worker ("no churn when the check is
/// slower than the lifetime", the nineteenth pass); at worst an error that says why.
///
/// What happened: `Error::Timeout` with no cause after 1.2 s (20 runs of 20), after the
/// pool started 34 workers (one every ~35 ms). The exemption only covers a worker checked
/// within 10 ms of its start. With two workers there is another free one when the checkout
/// loops back after a retired worker (its own replacement is not in yet, 2 ms later): one
/// started during the previous 90 ms check, tens of ms old, so not "fresh"; it expires
/// during its check and is retired in turn... No worker is fresh when the client reaches
/// it. (With replacements that start instantly the newest is on top and it passes; with
/// 8 ms or more it mostly passes.)
#[test]
fn a_checkout_check_slower_than_max_lifetime_serves_a_lease_on_a_pool_of_two() {
    let starts = Arc::new(AtomicUsize::new(0));
    let s = starts.clone();
    let pool = Pool::builder()
        .size(2)
        .max_lifetime(Duration::from_millis(60))
        .check_after_idle(Duration::ZERO)
        .checkout_timeout(Duration::from_millis(1200))
        .test_on_checkout(|_: &mut usize| {
            if thread::current().name() == Some("client") {
                thread::sleep(Duration::from_millis(90));
            }
            true
        })
        .build(move || {
            let n = s.fetch_add(1, Ordering::SeqCst);
            if n >= 2 {
                // A quick reconnect (a local server).
                thread::sleep(Duration::from_millis(2));
            }
            Ok::<_, BoxError>(n)
        })
        .unwrap();
    let p = pool.clone();
    let got = common::within(Duration::from_secs(5), move || {
        thread::sleep(Duration::from_millis(20));
        thread::Builder::new()
            .name("client".into())
            .spawn(move || p.checkout().map(|lease| *lease))
            .unwrap()
            .join()
            .unwrap()
    })
    .expect("the checkout hung");
    let made = starts.load(Ordering::SeqCst);
    assert!(
        got.is_ok(),
        "a checkout on a pool of two whose check (90 ms) outlasts max_lifetime (60 ms) got \
         {got:?} after the pool started {made} workers"
    );
}

/// Tried (passes; family 9 against `kept_for_replacements` in the sweep's second pass,
/// src/pool/upkeep.rs `look_at_each`): a quiet pool of two probes (`is_alive`, so every
/// sweep has a second pass) started together, `max_lifetime(300 ms)`, replacements that
/// take 250 ms (within a lifetime, as long as a worker may be kept past its expiry). No client: the pool never has no worker while the replacements start.
#[test]
fn the_second_pass_does_not_retire_the_kept_worker_while_its_replacements_start() {
    let starts = Arc::new(AtomicUsize::new(0));
    let s = starts.clone();
    let pool = Pool::builder()
        .size(2)
        .max_lifetime(Duration::from_millis(300))
        .build(move || {
            let n = s.fetch_add(1, Ordering::SeqCst);
            if n >= 2 {
                thread::sleep(Duration::from_millis(250));
            }
            Ok::<_, BoxError>(common::Probe::new(n))
        })
        .unwrap();
    let built = Instant::now();
    let outcome = common::within(Duration::from_secs(5), move || {
        let mut fewest = usize::MAX;
        while built.elapsed() < Duration::from_millis(1000) {
            let stats = pool.stats();
            fewest = fewest.min(stats.free + stats.leased);
            thread::sleep(Duration::from_millis(1));
        }
        (fewest, pool.stats())
    })
    .expect("hung");
    let (fewest, stats) = outcome;
    assert!(starts.load(Ordering::SeqCst) > 2, "no expiry");
    assert!(
        fewest > 0,
        "the quiet pool had no worker at some point ({stats:?})"
    );
}
