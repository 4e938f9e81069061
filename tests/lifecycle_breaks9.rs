//! Ninth breaking pass: the pool's newest lifecycle code (sweeps, keepalive, `evict_all`,
//! `drain`, the `closing` count) and the balancer of pools, attacked family by family. Each
//! test is one bug, named after its scenario; each fails on the code it was written against.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::within;
use cylinder::{Balancer, BoxError, Error, Pool};

/// A balancer of pools (`Balancer::over_pools`) whose every pool is closed (the servers
/// retired, each pool closed with `close` or `drain`). `Balancer::checkout_timeout`'s rustdoc:
/// "[`Error::Closed`] when every pool is closed". Expected: every checkout after the closes
/// answers `Closed`. On the current code the first one does, but it marks the pools dead,
/// and since a closed pool no longer "comes back" (`Pool::comes_back`,
/// src/pool/as_worker.rs) `mark_dead` asks the reaper for a reload; the reload
/// (src/balancer/set.rs, `merge_children`) drops every listed pool that is neither alive nor
/// coming back and, none left, publishes an empty (disconnected) set. From then on
/// `checkout_timeout` (src/balancer/pools.rs) finds no pool at all and answers
/// `Disconnected { cause: "no live children" }` for as long as the program runs.
/// Deterministic.
#[test]
fn a_balancer_whose_every_pool_was_closed_answers_closed_not_disconnected() {
    let a = Pool::builder()
        .size(1)
        .name("a")
        .build(|| Ok(1u32))
        .unwrap();
    let b = Pool::builder()
        .size(1)
        .name("b")
        .build(|| Ok(2u32))
        .unwrap();
    let balancer = Balancer::over_pools([a.clone(), b.clone()]).unwrap();
    assert!(balancer.checkout().is_ok());
    a.close();
    b.close();
    let kept = balancer.clone();
    let answers = within(Duration::from_secs(10), move || {
        let mut answers = Vec::new();
        for _ in 0..10 {
            answers.push(
                match balancer.checkout_timeout(Duration::from_millis(100)) {
                    Ok(_) => "Ok".to_string(),
                    Err(Error::Closed) => "Closed".to_string(),
                    Err(err) => format!("{err:?}"),
                },
            );
            thread::sleep(Duration::from_millis(20));
        }
        answers
    })
    .expect("the balancer's checkouts hung");
    assert!(
        answers.iter().all(|answer| answer == "Closed"),
        "every pool of the balancer is closed, yet its checkouts answered {answers:?}"
    );
    // "The set is the pools given, in that order, for the balancer's life."
    assert_eq!(kept.len(), 2);
    assert_eq!(kept.pools().len(), 2);
}

/// A pool of three idle workers; an `on_event` callback shuts the pool down gracefully
/// (`drain`, with a 500 ms bound) the first time a worker is evicted, e.g. a credential
/// rotation that finds the server decommissioned. Nothing is leased and no start is under
/// way that is not cancelled by the close. `Pool::drain`'s rustdoc: it "waits, up to
/// `timeout`, for the leases still out to end ... [`Error::Timeout`] ... when leases were
/// still out after `timeout`"; GUARANTEES.md: every call into user code is made "never under
/// a cylinder lock" and "`drain` returns only when every lease is back, every start under
/// way has ended and every worker's `Drop` has ended". Expected: `drain` returns `Ok` at
/// once (no lease is out; the pool closes its own idle workers). On the current code the
/// sweep that `evict_all` runs (src/pool/upkeep.rs, `sweep`) takes every free worker off the
/// list and then retires them one by one, reporting each (`retire`, src/pool/release.rs)
/// while it still holds the ones not yet retired: those stay counted open, out of `drain`'s
/// reach, until the callback returns, so `drain` waits its whole timeout for workers only
/// its own thread can close and answers `Timeout` with no lease out. By the same reading
/// (not run here), `drain(Duration::MAX)` there never returns, and the reaper's own sweep
/// (several workers expired at once) and `Pool::map` giving workers back retire the same
/// way, one by one with the rest still held. Deterministic.
/// What `drain` answered, and how long it took.
type Drained = (Result<(), Error>, Duration);

#[test]
fn drain_called_from_an_eviction_event_does_not_wait_for_the_workers_the_sweep_still_holds() {
    let slot: Arc<Mutex<Option<Pool<u32>>>> = Arc::new(Mutex::new(None));
    let outcome: Arc<Mutex<Option<Drained>>> = Arc::new(Mutex::new(None));
    let (handle, answer) = (slot.clone(), outcome.clone());
    let pool = Pool::builder()
        .size(3)
        .on_event(move |event| {
            if *event != cylinder::Event::WorkerEvicted {
                return;
            }
            let Some(pool) = handle.lock().unwrap().clone() else {
                return;
            };
            if answer.lock().unwrap().is_some() {
                return;
            }
            let began = Instant::now();
            let drained = pool.drain(Duration::from_millis(500));
            *answer.lock().unwrap() = Some((drained, began.elapsed()));
        })
        .build(|| Ok(7u32))
        .unwrap();
    *slot.lock().unwrap() = Some(pool.clone());
    let evicting = pool.clone();
    let done = within(Duration::from_secs(10), move || evicting.evict_all());
    // The pool's own handle goes (no cycle through the callback).
    slot.lock().unwrap().take();
    assert!(done.is_some(), "evict_all did not return within 10 s");
    let (drained, took) = outcome
        .lock()
        .unwrap()
        .take()
        .expect("the callback never ran drain");
    assert!(
        drained.is_ok(),
        "drain called from the eviction event, with no lease out, answered {drained:?} after \
         {took:?}: it waited for idle workers held by the sweep that called it"
    );
}

/// A balancer over one pool of size 2 whose server admits one connection and refuses the
/// next ("too many connections"): the one worker is leased, the second start failed. A
/// checkout of the pool itself times out with that cause (`Error::Timeout { cause:
/// Some(..) }`: "The last start error, if a start ever failed: reachable by `source()`
/// too"); BREAKING.md (error truth): "never a bare timeout when the cause is known".
/// Expected: the balancer's `checkout_timeout`, which waited in that very pool's line and
/// met that very timeout, carries the cause too. On the current code `wait_on`
/// (src/balancer/pools.rs) turns the pool's `Timeout` into `Err(())` and
/// `checkout_timeout` builds a fresh `Error::Timeout { state: None, cause: None }`: the
/// client sees a bare "no worker came free" with no `source()`. Deterministic.
#[test]
fn a_balancer_checkout_timing_out_in_a_pool_whose_starts_fail_carries_the_cause() {
    let starts = Arc::new(AtomicUsize::new(0));
    let count = starts.clone();
    let pool = Pool::builder()
        .size(2)
        .build(move || -> Result<u32, BoxError> {
            if count.fetch_add(1, Ordering::SeqCst) == 0 {
                Ok(1)
            } else {
                Err("too many connections".into())
            }
        })
        .unwrap();
    let balancer = Balancer::over_pools([pool.clone()]).unwrap();
    let held = pool.checkout().unwrap();
    let direct = pool
        .checkout_timeout(Duration::from_millis(50))
        .unwrap_err();
    assert!(
        matches!(&direct, Error::Timeout { cause: Some(_), .. }),
        "the pool's own timeout should carry the start error: {direct:?}"
    );
    let through = within(Duration::from_secs(10), move || {
        balancer
            .checkout_timeout(Duration::from_millis(50))
            .map(|_| ())
    })
    .expect("the balancer's checkout hung");
    drop(held);
    let err = through.unwrap_err();
    assert!(
        matches!(&err, Error::Timeout { .. })
            && err.cause().map(ToString::to_string).as_deref() == Some("too many connections"),
        "the balancer's checkout timed out in the same pool, yet answered {err:?} (the pool's \
         own answer: {direct:?})"
    );
}
