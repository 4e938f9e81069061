//! Forty-sixth breaking pass: each test names its scenario and fails on the code it was
//! written against. Bounded in time; hangs are detected with bounded waits.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cylinder::{Balancer, BoxError, Error, Pool, PoolsDown};

fn down_pool(n: usize, delay: Duration) -> Pool<usize> {
    common::numbered(n, 1)
        .reconnect_delay(delay)
        .build_unchecked(move || {
            Err::<usize, BoxError>(format!("server-{n}: connection refused").into())
        })
        .unwrap()
}

/// Every pool down (each start fails, `reconnect_delay` 2 s), a client calls
/// `checkout_timeout(200 ms)` three times. Documented (`Balancer::checkout_timeout`):
/// `Disconnected` "when every pool is down; its cause ... is a [`PoolsDown`] giving each
/// pool's cause"; `Timeout` "when no worker came free in time in a live pool"; README: "with
/// all down, `checkout()` waits for the next reconnect and fails with each pool's cause
/// (`PoolsDown`)". Observed: `Timeout { cause: Some("server-0: connection refused") }`, only
/// the first pool's cause. The all-down path waits in the first open pool's line
/// (`wait_on`); the time runs out there, the pool answers `Disconnected` (nothing open,
/// starts failing: src/pool/checkout.rs:358), and pass 44's fix
/// (src/balancer/pools.rs:446-450, commit 83fec08) turns a `Disconnected` at the deadline
/// into a `Timeout` with that pool's cause; `checkout_timeout` returns it at once
/// (src/balancer/pools.rs:322-325) without looking at the other pools. Before that fix this
/// case answered `PoolsDown`.
#[test]
fn every_pool_down_with_a_timeout_shorter_than_the_reconnect_delay_answers_pools_down() {
    let pools: Vec<_> = (0..2)
        .map(|n| down_pool(n, Duration::from_secs(2)))
        .collect();
    // Each pool's first start fails.
    for pool in &pools {
        let _ = pool.try_checkout();
    }
    let balancer = Balancer::over_pools(pools.clone()).unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        let began = Instant::now();
        let r = balancer
            .checkout_timeout(Duration::from_millis(200))
            .map(|l| *l);
        got.push((r, began.elapsed()));
    }
    let timeouts: Vec<u64> = pools.iter().map(|p| p.stats().timeouts).collect();
    for (r, waited) in &got {
        let down = matches!(r, Err(err) if PoolsDown::of(err).is_some());
        assert!(
            down,
            "every pool is down, yet the balancer answered {r:?} after {waited:?} (timeouts {timeouts:?})"
        );
    }
}

/// A pool built with a start closure and a `test_on_checkout` check, each capturing a value
/// whose `Drop` panics. GUARANTEES.md: "so does every `Drop` of a user value (workers,
/// errors, panic payloads, requests), one at a time. A panic there is contained". The
/// closures are kept together in one `Hooks` value (src/pool/manager.rs), which
/// `Shared::drop` disposes as one (src/pool/shared.rs:318): the start closure's panic
/// unwinds through the drop glue of the check closure, whose panic then aborts the process.
/// Expected: dropping the pool returns.
#[test]
fn dropping_a_pool_whose_start_and_check_closures_capture_values_whose_drop_panics_does_not_abort()
{
    const NAME: &str =
        "dropping_a_pool_whose_start_and_check_closures_capture_values_whose_drop_panics_does_not_abort";
    if common::is_child() {
        common::quiet_panics();
        let (start_bomb, check_bomb) = (common::DropBomb, common::DropBomb);
        let pool = Pool::builder()
            .size(1)
            .test_on_checkout(move |_: &mut u32| {
                let _ = &check_bomb;
                true
            })
            .build(move || {
                let _ = &start_bomb;
                Ok(0u32)
            })
            .unwrap();
        drop(pool.checkout().unwrap());
        common::assert_drops_quietly(pool);
        return;
    }
    common::assert_exits_normally_in_a_child(NAME);
}

/// A pool builder with a bad option (a name with a NUL byte) and a start closure capturing a
/// value whose `Drop` panics. GUARANTEES.md: "Bad options give `Error::InvalidConfig` naming
/// the option, never a panic", and every `Drop` of a user value runs contained. `build`
/// drops the start closure (in its `Hooks`) uncontained when `validate` fails
/// (src/pool/mod.rs:293): the panic escapes `build` instead of its `InvalidConfig`.
#[test]
fn a_bad_option_with_a_start_closure_whose_capture_panics_when_dropped_answers_invalid_config() {
    common::quiet_panics();
    let bomb = common::DropBomb;
    let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        Pool::builder()
            .name("server\0one")
            .size(1)
            .build(move || {
                let _ = &bomb;
                Ok(0u32)
            })
            .map(|_| ())
    }));
    match built {
        Ok(Err(Error::InvalidConfig { option, .. })) => assert_eq!(option, "name"),
        Ok(other) => panic!("expected InvalidConfig, got {other:?}"),
        Err(_) => panic!("build panicked instead of answering InvalidConfig"),
    }
}

/// The same for a balancer: a bad option (`min_alive_ratio(2.0)`) and a supervisor closure
/// capturing a value whose `Drop` panics. `BalancerBuilder::build_with` returns its
/// `InvalidConfig` with `?` (src/balancer/builder.rs:148-155), dropping the supervisor
/// uncontained: the panic escapes instead of the `InvalidConfig`.
#[test]
fn a_bad_balancer_option_with_a_supervisor_whose_capture_panics_when_dropped_answers_invalid_config(
) {
    common::quiet_panics();
    let bomb = common::DropBomb;
    let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        Balancer::<common::Probe>::builder()
            .min_alive_ratio(2.0)
            .build_with(move || -> Result<Vec<Arc<common::Probe>>, BoxError> {
                let _ = &bomb;
                Ok(vec![Arc::new(common::Probe::new(0))])
            })
            .map(|_| ())
    }));
    match built {
        Ok(Err(Error::InvalidConfig { option, .. })) => assert_eq!(option, "min_alive_ratio"),
        Ok(other) => panic!("expected InvalidConfig, got {other:?}"),
        Err(_) => panic!("build_with panicked instead of answering InvalidConfig"),
    }
}
