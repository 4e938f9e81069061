//! Every bad option gives `InvalidConfig` naming the option, never a panic.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{numbered_probes, Probe, Switchboard};
use cylinder::{Balancer, Error, Pool, MAX_POOL_SIZE};

fn option_of<T>(result: Result<T, Error>) -> &'static str {
    match result {
        Err(Error::InvalidConfig { option, .. }) => option,
        Err(other) => panic!("expected InvalidConfig, got {other}"),
        Ok(_) => panic!("expected InvalidConfig, got a pool"),
    }
}

#[test]
fn pool_size_must_be_set_and_in_range() {
    let (start, _) = numbered_probes();
    let start = Arc::new(start);
    let make = || {
        let start = start.clone();
        move || start()
    };
    assert_eq!(option_of(Pool::builder().build(make())), "size");
    assert_eq!(option_of(Pool::builder().size(0).build(make())), "size");
    assert_eq!(
        option_of(Pool::builder().size(MAX_POOL_SIZE + 1).build(make())),
        "size"
    );
    assert_eq!(
        option_of(Pool::builder().size(usize::MAX).build(make())),
        "size"
    );
    assert!(Pool::builder().size(1).build(make()).is_ok());
}

#[test]
fn pool_durations_must_be_positive() {
    let (start, _) = numbered_probes();
    let err = Pool::builder()
        .size(1)
        .checkout_timeout(Duration::ZERO)
        .build(start)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid configuration: checkout_timeout: must be greater than zero"
    );
    let (start, _) = numbered_probes();
    assert_eq!(
        option_of(
            Pool::builder()
                .size(1)
                .reconnect_delay(Duration::ZERO)
                .build(start)
        ),
        "reconnect_delay"
    );
    // The largest timeouts mean "no limit", not an overflow.
    let (start, _) = numbered_probes();
    let pool = Pool::builder()
        .size(1)
        .checkout_timeout(Duration::MAX)
        .reconnect_delay(Duration::MAX)
        .max_lifetime(Duration::MAX)
        .idle_timeout(Duration::MAX)
        .start_timeout(Duration::MAX)
        .warn_after(Duration::MAX)
        .build(start)
        .unwrap();
    assert!(pool.checkout().is_ok());
}

#[test]
fn pool_options_name_themselves_when_out_of_range() {
    let build = |builder: cylinder::PoolBuilder<common::Probe>| {
        let (start, _) = numbered_probes();
        option_of(builder.build(start))
    };
    assert_eq!(build(Pool::builder()), "size");
    assert_eq!(build(Pool::builder().size(0)), "size");
    assert_eq!(build(Pool::builder().size(usize::MAX)), "size");
    assert_eq!(build(Pool::builder().size(2).min_idle(3)), "min_idle");
    assert_eq!(
        build(Pool::builder().size(2).max_overflow(usize::MAX)),
        "max_overflow"
    );
    for (option, builder) in [
        (
            "max_lifetime",
            Pool::builder().size(1).max_lifetime(Duration::ZERO),
        ),
        (
            "idle_timeout",
            Pool::builder().size(1).idle_timeout(Duration::ZERO),
        ),
        (
            "start_timeout",
            Pool::builder().size(1).start_timeout(Duration::ZERO),
        ),
        (
            "warn_after",
            Pool::builder().size(1).warn_after(Duration::ZERO),
        ),
    ] {
        assert_eq!(build(builder), option);
    }
}

#[test]
fn balancer_ratio_must_be_a_share() {
    let board = Switchboard::with(2);
    for ratio in [f64::NAN, -0.1, 1.01, f64::INFINITY, f64::NEG_INFINITY] {
        let result = Balancer::<Probe>::builder()
            .min_alive_ratio(ratio)
            .build_with(board.supervisor());
        assert_eq!(option_of(result), "min_alive_ratio", "ratio {ratio}");
    }
    for ratio in [0.0, 0.5, 1.0] {
        assert!(Balancer::builder()
            .min_alive_ratio(ratio)
            .build_with(board.supervisor())
            .is_ok());
    }
}

#[test]
fn balancer_reconnect_delay_must_be_positive() {
    let board = Switchboard::with(2);
    let result = Balancer::builder()
        .reconnect_delay(Duration::ZERO)
        .build_with(board.supervisor());
    assert_eq!(option_of(result), "reconnect_delay");
}

#[test]
fn a_zero_queue_limit_is_valid_and_means_empty_queues_only() {
    let board = Switchboard::with(2);
    let balancer = Balancer::builder()
        .max_queue_len(0)
        .build_with(board.supervisor())
        .unwrap();
    assert!(balancer.get().is_ok());
    for child in board.current() {
        child.queue.store(1, std::sync::atomic::Ordering::Relaxed);
    }
    assert!(matches!(balancer.get(), Err(Error::Overload)));
}
