//! Thirteenth breaking pass: the least attacked corners (the `r2d2` bridge,
//! `Pool::transaction` re-entered, an `OwnedLease` dropped by a thread-local destructor,
//! `QueueMode::Fifo` with `idle_timeout`, slow-lease reports, `resize` during `drain`, a
//! supervisor listing a worker twice or nothing) and the fault families again, extremes
//! above all. Each test is one bug, named after its scenario; each fails on the code it was
//! written against.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::within;
use cylinder::{BoxError, Error, Pool};

/// A connection to a server that accepts and then hangs up at once: alive at the pool's
/// look right after the start, dead at every look after that (the server's FIN arrives a
/// moment after the handshake).
struct HungUpOnArrival {
    looked: AtomicBool,
}

impl HungUpOnArrival {
    fn alive(&self) -> bool {
        !self.looked.swap(true, Ordering::SeqCst)
    }
}

/// A pool of one, `reconnect_delay(1 ns)` (accepted by the builder; its rustdoc: "at least
/// 10 ms, the reaper's smallest tick, whatever is given: a client retrying against a dead
/// server never spins"), built with `build_unchecked` against a server that accepts every
/// connection and hangs up right after it (the worker passes its first look, and is dead
/// at the next). A client makes one blocking checkout (300 ms), and another client one
/// `try_checkout` on a second such pool (`checkout_timeout` 1 s).
///
/// Expected: GUARANTEES.md, "Dead on arrival is a failed start: a new worker that ... dies
/// before its first lease within `reconnect_delay` of its start, counts toward the backoff
/// and the fuse with its cause", and `Pool::checkout`'s rustdoc: while no worker is running
/// and starts fail, it fails with `Disconnected` and the cause, so "a client that retries
/// in a loop makes at most about one failed checkout per `reconnect_delay` instead of
/// spinning". With `reconnect_delay` floored at 10 ms that is a handful of starts, and
/// `Disconnected` ("worker N died before its first lease") at once, as the same pool with
/// `reconnect_delay(10 ms)` answers after one start in well under a millisecond;
/// `try_checkout` "never waits for another client" and answers `Overload` only "when every
/// worker is leased".
///
/// Happened: `Shared::retire_unreported` (src/pool/release.rs) decides "dead on arrival"
/// with the raw `reconnect_delay` (`born.elapsed() < self.reconnect_delay`), not floored at
/// 10 ms as `backoff_left` (src/pool/start.rs) floors the backoff. With 1 ns no worker is
/// ever dead on arrival: each is retired as one that served and failed, its replacement
/// is claimed at once despite any backoff (`replace`), and the checkout loops through
/// them: ~4,000 connections opened in 300 ms, ending in a `Timeout` with no cause. The
/// `try_checkout` (`try_wait_for_a_start`, src/pool/checkout.rs, which looks again when
/// its worker is retired for a reason other than a failed start) spins the same way for
/// its whole `checkout_timeout` (~17,000 connections in 1 s) and then answers `Overload`
/// with nothing leased. Deterministic.
#[test]
fn a_pool_with_a_one_nanosecond_reconnect_delay_treats_workers_dead_on_arrival_as_failed_starts() {
    let pool_of_one = |checkout_timeout: Duration, starts: Arc<AtomicUsize>| {
        Pool::<HungUpOnArrival>::builder()
            .size(1)
            .checkout_timeout(checkout_timeout)
            .reconnect_delay(Duration::from_nanos(1))
            .is_alive(HungUpOnArrival::alive)
            .build_unchecked(move || {
                starts.fetch_add(1, Ordering::SeqCst);
                Ok::<_, BoxError>(HungUpOnArrival {
                    looked: AtomicBool::new(false),
                })
            })
            .unwrap()
    };

    // A blocking checkout.
    let starts = Arc::new(AtomicUsize::new(0));
    let pool = pool_of_one(Duration::from_secs(30), starts.clone());
    let (answer, took) = within(Duration::from_secs(10), move || {
        let began = Instant::now();
        let answer = pool
            .checkout_timeout(Duration::from_millis(300))
            .map(|_| ());
        let took = began.elapsed();
        drop(pool);
        (answer, took)
    })
    .expect("the checkout hung");
    let made = starts.load(Ordering::SeqCst);

    // A non-blocking one.
    let try_starts = Arc::new(AtomicUsize::new(0));
    let pool = pool_of_one(Duration::from_secs(1), try_starts.clone());
    let (try_answer, try_took) = within(Duration::from_secs(10), move || {
        let began = Instant::now();
        let answer = pool.try_checkout().map(|_| ());
        let took = began.elapsed();
        drop(pool);
        (answer, took)
    })
    .expect("the try_checkout hung");
    let try_made = try_starts.load(Ordering::SeqCst);

    assert!(
        made <= 40 && matches!(answer, Err(Error::Disconnected { .. })),
        "a checkout against a server that hangs up on arrival (reconnect_delay 1 ns) opened \
         {made} connections in {took:?} and answered {answer:?}: expected a few starts and \
         Disconnected with the cause"
    );
    assert!(
        try_made <= 40 && !matches!(try_answer, Err(Error::Overload)),
        "a try_checkout against the same server opened {try_made} connections in \
         {try_took:?} and answered {try_answer:?} with nothing leased"
    );
}
