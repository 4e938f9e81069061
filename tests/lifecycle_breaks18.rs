//! Eighteenth breaking pass: the seventeenth pass's lifecycle changes (`fill_now(added)`,
//! `expired_for_a_lease`, `look_at_each` retiring an expired worker after its check, `upkeep`
//! planning its next round from the round's start), attacked through the fault families.
//!
//! Tests whose doc comment starts with "Found" are one bug each, named after its scenario,
//! and failed on the code they were written against. Those marked "Tried" document what was
//! tried and held.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use cylinder::{BoxError, Error, Pool};

fn on_reaper() -> bool {
    thread::current()
        .name()
        .is_some_and(|name| name.starts_with("cylinder-reaper"))
}

/// Found (families 2 and 7; the seventeenth pass's `upkeep` returning
/// `due.saturating_sub(now.elapsed())`). A pool of one with `keepalive(1 ns)` (accepted by
/// `validate`), whose keepalive check takes 25 ms (a ping to a slow server).
///
/// Expected (src/pool/upkeep.rs, `MIN_TICK`): "The shortest pause between two rounds that
/// have work of their own: a tiny `warn_after` or `idle_timeout` must not make the reaper
/// spin" — at least ~10 ms between one round's check and the next.
///
/// What happened: every round takes longer than the 10 ms sweep period, so `upkeep` returns
/// `Duration::ZERO` and the reaper starts its next round at once: the keepalive checks run
/// back to back with no pause at all (the reaper is busy 100 % of the time; with a
/// CPU-bound check, a core). Before that change the round paused 10 ms after each.
#[test]
fn a_keepalive_check_slower_than_the_sweep_period_does_not_spin_the_reaper() {
    let spans: Arc<Mutex<Vec<(Instant, Instant)>>> = Arc::default();
    let s = spans.clone();
    let pool = Pool::builder()
        .size(1)
        .keepalive(Duration::from_nanos(1))
        .test_on_checkout(move |_: &mut ()| {
            if on_reaper() {
                let began = Instant::now();
                thread::sleep(Duration::from_millis(25));
                s.lock().unwrap().push((began, Instant::now()));
            }
            true
        })
        .build(|| Ok(()))
        .unwrap();
    thread::sleep(Duration::from_millis(1200));
    drop(pool);
    let spans = spans.lock().unwrap().clone();
    assert!(
        spans.len() >= 5,
        "too few keepalive checks ran: {}",
        spans.len()
    );
    let mut gaps: Vec<Duration> = spans
        .windows(2)
        .map(|pair| pair[1].0.saturating_duration_since(pair[0].1))
        .collect();
    gaps.sort();
    let median = gaps[gaps.len() / 2];
    assert!(
        median >= Duration::from_millis(5),
        "the reaper ran {} keepalive checks of 25 ms in 1.2 s with a median pause of {median:?} \
         between them (MIN_TICK is 10 ms): it spins",
        spans.len()
    );
}

/// Found (families 9 and 5; the seventeenth pass's `look_at_each` verdict
/// `max_lifetime.is_some() && entry.expired(now)` → `Retire::Expired`). The same quiet pool
/// as `tests/lifecycle_breaks3.rs`'s `max_lifetime_on_a_quiet_pool_never_expires_every_worker_at_once`
/// (four workers started together, `max_lifetime(400 ms)`, slow reconnects), with a
/// `keepalive` set (10 s: no check is ever due) and a checkout check.
///
/// Expected (GUARANTEES.md): "workers started together expire over a spread, never all at
/// once" — the sweep's first pass keeps the youngest expired one in service while the
/// replacements start.
///
/// What happened: the sweep's second pass (`look_at_each`, run because a keepalive is set)
/// retires the very worker the first pass kept, since it is past its lifetime: every worker
/// goes at once and the pool is empty while the replacements start (150 ms each).
#[test]
fn with_a_keepalive_max_lifetime_on_a_quiet_pool_never_expires_every_worker_at_once() {
    let starts = Arc::new(AtomicUsize::new(0));
    let s = starts.clone();
    let pool = Pool::builder()
        .size(4)
        .max_lifetime(Duration::from_millis(400))
        .keepalive(Duration::from_secs(10))
        .test_on_checkout(|_: &mut ()| true)
        .build(move || {
            if s.fetch_add(1, Ordering::SeqCst) >= 4 {
                thread::sleep(Duration::from_millis(150)); // a slow reconnect
            }
            Ok(())
        })
        .unwrap();
    let began = Instant::now();
    let mut fewest = usize::MAX;
    while began.elapsed() < Duration::from_millis(2500) {
        let stats = pool.stats();
        fewest = fewest.min(stats.free + stats.leased);
        thread::sleep(Duration::from_millis(2));
    }
    let started = starts.load(Ordering::SeqCst);
    assert!(started > 4, "no worker ever expired ({started} starts)");
    assert!(
        fewest > 0,
        "the quiet pool with a keepalive had no free worker at some point: every worker \
         expired at once ({started} starts; stats now {:?})",
        pool.stats()
    );
}

/// Found (families 2 and 9; GUARANTEES.md's `max_lifetime` row, the same gap the seventeenth
/// pass closed in `look_at_each`, left open in `admit_with_hooks`). A pool of one with
/// `max_lifetime(600 ms)` and a checkout check (`check_after_idle(0)`), run by the client,
/// that is slow once: 450 ms (a ping to a server slow to answer). The client checks out
/// ~350 ms into the worker's life; the check ends ~800 ms in, past its lifetime.
///
/// Expected (GUARANTEES.md): "A worker past its `max_lifetime` ... never goes out on a
/// lease, also while the reaper is held up in user code."
///
/// What happened: `admit_with_hooks` (src/pool/checkout.rs) looks at the expiry (only while a
/// reaper round is under way) before the check, never after it: the worker, taken off the
/// free list for the check (so no sweep sees it), goes out on the lease ~800 ms old.
#[test]
fn a_worker_that_expires_during_its_slow_checkout_check_is_not_leased_after_it() {
    let slow = Arc::new(AtomicBool::new(false));
    let s = slow.clone();
    let pool = Pool::builder()
        .size(1)
        .max_lifetime(Duration::from_millis(600))
        .check_after_idle(Duration::ZERO)
        .test_on_checkout(move |_: &mut Instant| {
            if s.swap(false, Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(450));
            }
            true
        })
        .build(|| Ok(Instant::now()))
        .unwrap();
    let born = *pool.checkout().unwrap();
    let wait = Duration::from_millis(350).saturating_sub(born.elapsed());
    thread::sleep(wait);
    slow.store(true, Ordering::SeqCst);
    let pool2 = pool.clone();
    let age = common::within(Duration::from_secs(5), move || {
        let lease = pool2.checkout().unwrap();
        (*lease).elapsed()
    })
    .expect("the checkout hung");
    assert!(
        age < Duration::from_millis(600),
        "the checkout was handed a worker {age:?} old; its max_lifetime is 600 ms (its lifetime \
         ended during the checkout's own check)"
    );
}

/// A start closure whose starts fail while `down` is set, counting every attempt.
fn server(
    down: &Arc<AtomicBool>,
    attempts: &Arc<AtomicUsize>,
) -> impl Fn() -> Result<u32, BoxError> + Send + Sync + 'static {
    let (d, a) = (down.clone(), attempts.clone());
    move || {
        let n = a.fetch_add(1, Ordering::SeqCst) as u32;
        if d.load(Ordering::SeqCst) {
            return Err("connection refused".into());
        }
        Ok(n)
    }
}

/// Tried (family 10, the sixteenth pass's give-up when no retry ever comes): a lazy pool
/// whose server is down with `reconnect_delay(Duration::MAX)`; a blocking checkout gets
/// `Disconnected` with the start's error, soon, not a bare timeout.
#[test]
fn a_blocking_checkout_with_no_retry_ever_coming_gets_the_cause() {
    let down = Arc::new(AtomicBool::new(true));
    let attempts = Arc::new(AtomicUsize::new(0));
    let pool = Pool::builder()
        .size(1)
        .reconnect_delay(Duration::MAX)
        .checkout_timeout(Duration::from_secs(2))
        .build_unchecked(server(&down, &attempts))
        .unwrap();
    let began = Instant::now();
    let err = common::within(Duration::from_secs(5), move || {
        pool.checkout().map(|lease| *lease).unwrap_err()
    })
    .expect("the checkout hung");
    assert!(
        matches!(&err, Error::Disconnected { .. }),
        "got {err:?} after {:?}",
        began.elapsed()
    );
    assert_eq!(
        std::error::Error::source(&err)
            .map(|c| c.to_string())
            .as_deref(),
        Some("connection refused")
    );
    assert!(
        began.elapsed() < Duration::from_millis(1500),
        "took {:?}",
        began.elapsed()
    );
}

/// Found (families 6, 10 and 11; `try_acquire_slow` in src/pool/checkout.rs, with the
/// sixteenth pass's `start_failed`). A lazy pool of two whose server is down, retried every
/// 10 ms, and six threads calling `try_checkout` in a loop for a second.
///
/// Expected (BREAKING.md, family 10; `try_acquire_slow`'s own comment "Nothing open and
/// starts failing: down, not busy"): every error is `Disconnected` with the start's error as
/// its cause — "never \"busy\" when nothing has started".
///
/// What happened: a few calls a second get `Error::Overload` (and an `Event::Overload`)
/// although nothing is open and every start fails. The call falls through to a start of its
/// own (`start_for_caller`) once the backoff is over; when that start fails — or finds no
/// claim left — while another start (the reaper's retry, another client's) is still running,
/// `fuse()` sees `starting() > 0`, so `fuse_blown()` is false, and the call ends in
/// `Err(Overload)`. Fails in about 6 runs of 10 (1–5 wrong answers in ~22 000 calls).
#[test]
fn try_checkouts_racing_failing_retries_always_get_the_cause() {
    let down = Arc::new(AtomicBool::new(true));
    let attempts = Arc::new(AtomicUsize::new(0));
    let pool = Pool::builder()
        .size(2)
        .reconnect_delay(Duration::from_millis(10))
        .build_unchecked(server(&down, &attempts))
        .unwrap();
    let wrong: Arc<Mutex<Vec<String>>> = Arc::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let (pool, wrong, calls) = (pool.clone(), wrong.clone(), calls.clone());
            thread::spawn(move || {
                let began = Instant::now();
                while began.elapsed() < Duration::from_millis(1000) {
                    calls.fetch_add(1, Ordering::Relaxed);
                    match pool.try_checkout() {
                        Ok(_) => wrong.lock().unwrap().push("Ok while down".into()),
                        Err(err @ Error::Disconnected { .. }) => {
                            let cause = std::error::Error::source(&err).map(|c| c.to_string());
                            if cause.as_deref() != Some("connection refused") {
                                wrong.lock().unwrap().push(format!("{err:?}"));
                            }
                        }
                        Err(err) => wrong.lock().unwrap().push(format!("{err:?}")),
                    }
                    thread::sleep(Duration::from_micros(200));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let wrong = wrong.lock().unwrap();
    let made = attempts.load(Ordering::SeqCst);
    assert!(
        wrong.is_empty(),
        "{} of {} try_checkouts got a wrong answer, e.g. {:?}",
        wrong.len(),
        calls.load(Ordering::Relaxed),
        &wrong[..wrong.len().min(3)]
    );
    assert!(
        made <= 250,
        "{made} start attempts in 1 s with reconnect_delay 10 ms"
    );
}
