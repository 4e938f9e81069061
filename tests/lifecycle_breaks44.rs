//! Forty-fourth breaking pass: each test names its scenario and fails on the code it was
//! written against. Bounded in time; hangs are detected with bounded waits.

mod common;

#[allow(unused_imports)]
use common::within;
#[allow(unused_imports)]
use std::sync::atomic::{AtomicUsize, Ordering};
#[allow(unused_imports)]
use std::sync::Arc;
#[allow(unused_imports)]
use std::time::{Duration, Instant};

#[allow(unused_imports)]
use cylinder::{Balancer, Error, Pool};

/// GUARANTEES.md: "so does every `Drop` of a user value (workers, errors, panic payloads,
/// requests), one at a time", and a "metrics recorder that panics is contained like any
/// callback". The recorder's handles (`Counter`, `Gauge`, `Histogram` around the
/// recorder's own `Arc<dyn CounterFn>` ...) are user values: `Shared::drop` disposes them
/// (src/pool/shared.rs:324) as one `PoolMetrics` value, so the first handle whose `Drop`
/// panics unwinds through the drop glue of the seventeen others, and the second panic
/// aborts the process. Expected: each handle dropped on its own, contained; dropping the
/// pool returns.
#[cfg(feature = "metrics")]
#[test]
fn dropping_a_pool_whose_metrics_handles_panic_when_dropped_does_not_abort() {
    const NAME: &str = "dropping_a_pool_whose_metrics_handles_panic_when_dropped_does_not_abort";
    use metrics::{
        Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata,
        Recorder, SharedString, Unit,
    };
    struct Bomb;
    impl Drop for Bomb {
        fn drop(&mut self) {
            panic!("a metrics handle that panics on purpose when dropped");
        }
    }
    impl CounterFn for Bomb {
        fn increment(&self, _: u64) {}
        fn absolute(&self, _: u64) {}
    }
    impl GaugeFn for Bomb {
        fn increment(&self, _: f64) {}
        fn decrement(&self, _: f64) {}
        fn set(&self, _: f64) {}
    }
    impl HistogramFn for Bomb {
        fn record(&self, _: f64) {}
    }
    struct Bombs;
    impl Recorder for Bombs {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
            Counter::from_arc(Arc::new(Bomb))
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::from_arc(Arc::new(Bomb))
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::from_arc(Arc::new(Bomb))
        }
    }
    if common::is_child() {
        common::quiet_panics();
        let pool = metrics::with_local_recorder(&Bombs, || {
            Pool::builder().size(1).build(|| Ok(0u32)).unwrap()
        });
        drop(pool.checkout().unwrap());
        common::assert_drops_quietly(pool);
        return;
    }
    common::assert_exits_normally_in_a_child(NAME);
}

/// A balancer of two pools of one worker, `max_queue_len(0)`; both workers held by the
/// test; a plain client waits in pool 1's line (so pool 1 is over the limit, busy, alive,
/// with its worker open). A balancer client waits in pool 0's line, and pool 0 is closed.
/// Documented (`Balancer::checkout_timeout`): `Disconnected` "when every pool is down",
/// `Overload` "when every live pool has more waiters than the balancer's `max_queue_len`",
/// `Closed` "when every pool is closed"; BREAKING.md 10: "each failure gets the right
/// variant ... and its real cause". Pool 1 is neither down nor closed: expected `Overload`
/// (or a wait in its line). Observed: `Disconnected` with a `PoolsDown` saying "all 2
/// pools are down", pool 1's cause made up as "no worker is running" although its worker
/// is open and leased: pool 1 was skipped by `may_serve` (src/balancer/pools.rs:332) and so
/// never joined `busy`, and once pool 0's wait ends with `None` (closed) the call falls
/// through to the every-pool-down error (src/balancer/pools.rs:364-376).
#[test]
fn a_balancer_waiter_whose_line_closes_while_the_other_pool_is_over_max_queue_len_is_not_told_every_pool_is_down(
) {
    let pools: Vec<Pool<usize>> = (0..2)
        .map(|n| common::numbered(n, 1).build(move || Ok(n)).unwrap())
        .collect();
    let held: Vec<_> = pools.iter().map(|p| p.checkout_owned().unwrap()).collect();
    let plain = {
        let pool = pools[1].clone();
        std::thread::spawn(move || pool.checkout_timeout(Duration::from_secs(5)).map(|l| *l))
    };
    assert!(common::eventually(Duration::from_secs(2), || pools[1]
        .stats()
        .waiters
        == 1));
    let balancer = Balancer::builder()
        .max_queue_len(0)
        .build_pools(pools.clone())
        .unwrap();
    let client = common::balancer_client(balancer, Duration::from_secs(3));
    assert!(
        common::eventually(Duration::from_secs(2), || pools[0].stats().waiters == 1),
        "the balancer client did not wait in pool 0's line"
    );
    pools[0].close();
    let (got, waited) = client.join().unwrap();
    let err = got.expect_err("nothing was free");
    let down = cylinder::PoolsDown::of(&err).map(ToString::to_string);
    drop(held);
    let _ = plain.join();
    assert!(
        !matches!(err, Error::Disconnected { .. }),
        "pool 1 is up (its worker open and leased, a client in its line) yet the balancer \
         client got {err:?} after {waited:?}: {down:?}"
    );
}

/// A balancer of two busy pools of one worker. Pool 0 (`max_overflow(1)`) had an overflow
/// start fail (its fuse not blown: its one worker is open, leased by the test), so it is
/// alive and the balancer client waits in its line (timeout 300 ms), listening to pool 1.
/// Then the test takes pool 0's worker (`OwnedLease::take`): its replacement starts at once
/// and hangs (a connect to a server that went away). The client's time runs out in pool 0's
/// line. Documented (`Balancer::checkout_timeout`): "Only the line waited in counts a
/// timeout"; GUARANTEES.md: "a wait with every pool busy times out once". Observed: pool
/// 0 counts the timeout and answers `Disconnected` (nothing open, starts failing:
/// `Shared::timed_out`, src/pool/checkout.rs:358), which `wait_on` takes for "down, fail
/// over" (src/balancer/pools.rs:423-426), so the call goes on to wait in pool 1's line with
/// no time left, and pool 1 counts a second timeout for the same call (and emits a second
/// `CheckoutTimedOut`).
#[test]
fn a_balancer_wait_timing_out_in_a_line_whose_pool_lost_its_last_worker_counts_one_timeout() {
    let starts = Arc::new(AtomicUsize::new(0));
    let a = {
        let starts = starts.clone();
        common::numbered(0, 1)
            .max_overflow(1)
            .reconnect_delay(Duration::from_secs(5))
            .build_unchecked(move || match starts.fetch_add(1, Ordering::SeqCst) {
                0 => Ok(0usize),
                1 => Err::<usize, cylinder::BoxError>("connection refused".into()),
                _ => {
                    std::thread::sleep(Duration::from_millis(1500));
                    Ok(0usize)
                }
            })
            .unwrap()
    };
    // Two workers, both held: busy, and told apart from pool 0 by its `max_size`.
    let b = common::numbered(1, 2).build(|| Ok(1usize)).unwrap();
    let pools = vec![a, b];
    let mut held: Vec<_> = pools
        .iter()
        .map(|p| Some(p.checkout_owned().unwrap()))
        .collect();
    let also_b = pools[1].checkout_owned().unwrap();
    // The overflow start fails: pool 0 is failing, but its worker is open (alive).
    assert!(pools[0].try_checkout().is_err());
    assert_eq!(starts.load(Ordering::SeqCst), 2);
    let balancer = Balancer::over_pools(pools.clone()).unwrap();
    let client = std::thread::spawn(move || {
        // Round-robin: once this thread's `get` gave pool 1, its checkout begins at pool 0.
        while balancer.get().unwrap().stats().max_size != 2 {}
        let began = Instant::now();
        let got = balancer
            .checkout_timeout(Duration::from_millis(300))
            .map(|lease| *lease);
        (got, began.elapsed())
    });
    assert!(
        common::eventually(Duration::from_secs(2), || pools[0].stats().waiters == 1),
        "setup: the balancer client did not wait in pool 0's line: {:?}",
        pools.iter().map(Pool::stats).collect::<Vec<_>>()
    );
    // Pool 0's last worker leaves; its replacement hangs past the client's time.
    let _taken: usize = cylinder::OwnedLease::take(held[0].take().unwrap());
    let (got, waited) = client.join().unwrap();
    let timeouts: Vec<u64> = pools.iter().map(|p| p.stats().timeouts).collect();
    drop((held, also_b));
    assert!(got.is_err(), "nothing came free, yet {got:?}");
    assert_eq!(
        timeouts.iter().sum::<u64>(),
        1,
        "one balancer checkout that timed out in pool 0's line after {waited:?} ({got:?}) \
         counted timeouts {timeouts:?}"
    );
}

/// A request whose `Drop` panics (once it is armed).
struct Bomb(bool);

impl Drop for Bomb {
    fn drop(&mut self) {
        if self.0 && !std::thread::panicking() {
            panic!("request drop on purpose");
        }
    }
}

struct Sink;

impl cylinder::Behaviour for Sink {
    type Request = Bomb;
    type Reply = ();
    fn handle_call(&mut self, mut request: Bomb) {
        request.0 = false;
    }
}

/// Reported by pass 44 as a possible issue, confirmed: a request the actor refuses (it has
/// stopped, or the call comes from its own handler) was dropped on the caller's thread
/// outside containment, so a request whose `Drop` panics panicked out of `call`, `cast` and
/// `call_timeout` instead of their `WorkerDied`. Every `Drop` of a user value is contained.
#[test]
fn a_request_whose_drop_panics_refused_by_a_stopped_actor_answers_worker_died() {
    let actor = cylinder::Actor::spawn(Sink).unwrap();
    actor.stop();
    assert!(common::eventually(Duration::from_secs(2), || !actor.is_alive()));
    let called = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        (
            actor.call(Bomb(true)),
            actor.call_timeout(Bomb(true), Duration::from_millis(50)),
            actor.cast(Bomb(true)),
        )
    }));
    let (call, call_timeout, cast) = called.expect("a refused request's Drop panicked out");
    assert!(matches!(call, Err(Error::WorkerDied)), "{call:?}");
    assert!(
        matches!(call_timeout, Err(Error::WorkerDied)),
        "{call_timeout:?}"
    );
    assert!(matches!(cast, Err(Error::WorkerDied)), "{cast:?}");
}
