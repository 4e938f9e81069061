//! Eleventh breaking pass: the newest code (the free list's split parked count, the inlined
//! checkout fast path and its slow path, `retire_held`, the fixed set of `build_pools`) and
//! every fault family again. Each test is one bug, named after its scenario; each fails on
//! the code it was written against. The `metrics` feature's three findings (the gauges of a
//! closed pool after a `Lease::take`, a start that ends during `drain`, and waiters that leave
//! at close) are the last three tests of `tests/metrics.rs`.

mod common;

use std::time::{Duration, Instant};

use common::{eventually, within};
use cylinder::{Balancer, BoxError, Error, Pool, PoolsDown};

/// A pool of one whose worker passes the check made at its start and fails every later
/// one (a server that accepts a connection and drops it at once), with a long
/// `reconnect_delay`. The first blocking checkout meets that worker dead on arrival.
///
/// Expected: `Pool::checkout`'s rustdoc: "`Error::Disconnected` (with the last start's
/// error as its cause) when no worker is running and a start attempt failed after this
/// checkout began", and the backpressure rule in `acquire_slow` ("not for one that failed
/// before it came; a worker it meets dead on arrival counts"): the worker this checkout met
/// dead is a start that failed after it began, nothing is open and nothing can start before
/// `reconnect_delay`, so it fails at once with the cause (as it did before the fast path
/// was inlined, and as `try_checkout` still does).
///
/// Happened: the inlined fast path (`Shared::acquire`) admits the worker before
/// `acquire_slow` reads `failed_starts` for `failed_before`: the dead-on-arrival worker is
/// counted as failed *before* the checkout came, so the checkout waits in line for the
/// next attempt and leaves only at its own timeout (2 s here).
#[test]
fn a_blocking_checkout_whose_first_look_meets_the_only_worker_dead_on_arrival_fails_at_once() {
    let pool = Pool::builder()
        .size(1)
        .reconnect_delay(Duration::from_secs(30))
        .checkout_timeout(Duration::from_secs(2))
        .check_after_idle(Duration::ZERO) // the check runs at every checkout
        .test_on_checkout(|checks: &mut usize| {
            *checks += 1;
            if *checks == 1 {
                Ok(())
            } else {
                Err(BoxError::from("connection reset by peer"))
            }
        })
        .build(|| Ok(0usize))
        .unwrap();
    let p = pool.clone();
    let (got, took) = within(Duration::from_secs(10), move || {
        let began = Instant::now();
        let got = p.checkout().map(|_| ());
        (got, began.elapsed())
    })
    .expect("the checkout returned");
    match &got {
        Err(Error::Disconnected { cause, .. }) => {
            assert!(cause.to_string().contains("reset"), "{cause}");
        }
        other => panic!("expected Disconnected, got {other:?}"),
    }
    assert!(
        took < Duration::from_millis(1000),
        "the checkout took {took:?}: the dead-on-arrival worker it met did not count as a \
         start that failed after it began"
    );
}

/// A balancer of pools over four servers (`Balancer::over_pools`): three were retired (their
/// pools closed) and the fourth is down (its starts fail; it retries every
/// `reconnect_delay`, 1 s). A client calls `checkout_timeout(5 s)` eight times in a row.
///
/// Expected: `build_pools`' rustdoc: "a pool that is closed stays in it, out of rotation";
/// `Balancer::checkout_timeout`'s: "While every pool is down, the call waits for the next
/// reconnect attempt of the pool next in rotation (at most its `reconnect_delay`, within
/// `timeout`) ... a client that retries in a loop is paced by the reconnect attempts, never
/// spinning." Every call waits for the down pool's next attempt (it could be back), so
/// hardly any returns at once.
///
/// Happened: in the all-down path `checkout_timeout` (`src/balancer/pools.rs`) takes the
/// pool to wait on straight from the rotation cursor, closed pools included: three calls in
/// four wait on a closed pool (`Closed` at once, dropped), skip the down pool (not alive
/// during its backoff) and fail with `PoolsDown` within microseconds, without waiting for
/// its attempt: the retrying client runs at four times the pace of the reconnects.
#[test]
fn a_balancer_of_pools_all_down_with_some_closed_still_waits_for_the_next_reconnect() {
    let closed: Vec<Pool<u32>> = (0..3)
        .map(|n| {
            let pool = Pool::builder()
                .size(1)
                .name(format!("retired-{n}"))
                .build(move || Ok(n))
                .unwrap();
            pool.close();
            pool
        })
        .collect();
    let down = Pool::<u32>::builder()
        .size(1)
        .name("down")
        .reconnect_delay(Duration::from_secs(1))
        .build_unchecked(|| Err::<u32, BoxError>("connection refused".into()))
        .unwrap();
    // The down pool's first start has failed: it waits out its `reconnect_delay`.
    assert!(eventually(Duration::from_secs(5), || down.stats().starting
        == 0
        && matches!(
            down.try_checkout(),
            Err(Error::Disconnected { .. })
        )));
    let mut pools = closed;
    pools.push(down);
    let balancer = Balancer::over_pools(pools).unwrap();
    let calls = within(Duration::from_secs(30), move || {
        (0..8)
            .map(|_| {
                let began = Instant::now();
                let got = balancer.checkout_timeout(Duration::from_secs(5));
                let down = matches!(&got, Err(err) if PoolsDown::of(err).is_some());
                assert!(down, "expected PoolsDown, got {got:?}");
                began.elapsed()
            })
            .collect::<Vec<_>>()
    })
    .expect("the checkouts returned");
    let at_once = calls
        .iter()
        .filter(|took| **took < Duration::from_millis(5))
        .count();
    assert!(
        at_once <= 2,
        "{at_once} of 8 checkouts failed at once without waiting for the down pool's next \
         reconnect attempt (each took {calls:?})"
    );
}
