//! The fifty-fourth pass: a broad pass over the pool's lifecycle (timing edges, dead on
//! arrival, bursts, extremes, endings, long quiet). Each test's doc comment says what it
//! found.
//!
//! Its other finding, a `try_checkout` answering `Overload` when the first start it waited
//! for (right after `build_unchecked`) is still on its way after `checkout_timeout`, was
//! judged the documented contract (`try_checkout` answers its own errors, never a blocking
//! checkout's `Timeout`: `try_checkout_outwaited_by_a_slow_first_start_answers_its_own_error_not_a_timeout`
//! in `lifecycle_breaks2.rs`); its rustdoc, which read as if `Overload` could not come
//! then, now says it does.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cylinder::{BoxError, Error, Pool};

/// Found (family 10, error truth; family 9, long quiet), judged a limit and documented
/// (GUARANTEES.md "Not promised", `Error::Overload`, `Pool::try_checkout`). A pool of one
/// with a `keepalive` of 20 ms and a check that takes a while (a round trip to a slow
/// server: held here until the test lets it go, at most 2 s). The worker sits idle; the
/// reaper's sweep takes it for its keepalive check. Meanwhile a client calls `try_checkout`:
/// it answers `Error::Overload` at once, while `stats()` says `free: 1, leased: 0`. The
/// rustdoc said "`Overload` when every worker is leased". The check is user code, which a
/// non-blocking checkout must not wait on (a sweep's first pass, which runs none, is waited
/// for): the worker is busy in the pool's own hands, and `Overload` now says so. This test
/// holds the answer to the documented one: at once, `Overload`, and the worker served to a
/// blocking checkout once the check ends.
#[test]
fn try_checkout_while_the_only_worker_is_in_its_keepalive_check_answers_overload_at_once() {
    let armed = Arc::new(AtomicBool::new(false));
    let inside = Arc::new(AtomicBool::new(false));
    let release = Arc::new(AtomicBool::new(false));
    let (a, i, r) = (armed.clone(), inside.clone(), release.clone());
    let pool = Pool::builder()
        .size(1)
        .keepalive(Duration::from_millis(20))
        .check_after_idle(Duration::from_secs(60))
        .test_on_checkout(move |_: &mut u32| -> Result<(), BoxError> {
            if a.swap(false, Ordering::SeqCst) {
                i.store(true, Ordering::SeqCst);
                let began = Instant::now();
                while !r.load(Ordering::SeqCst) && began.elapsed() < Duration::from_secs(2) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            Ok(())
        })
        .build(|| Ok(0u32))
        .unwrap();
    armed.store(true, Ordering::SeqCst);
    assert!(
        common::eventually(Duration::from_secs(2), || inside.load(Ordering::SeqCst)),
        "the keepalive check never ran"
    );
    let began = Instant::now();
    let answer = pool.try_checkout().map(|_| ());
    let took = began.elapsed();
    let stats = pool.stats();
    let waiter = pool.clone();
    let blocking =
        std::thread::spawn(move || waiter.checkout_timeout(Duration::from_secs(5)).map(|_| ()));
    std::thread::sleep(Duration::from_millis(50));
    release.store(true, Ordering::SeqCst);
    let served = blocking.join().unwrap();
    assert!(
        matches!(answer, Err(Error::Overload)) && took < Duration::from_millis(500),
        "try_checkout during the only worker's keepalive check answered {answer:?} after \
         {took:?}: {stats:?}"
    );
    assert!(served.is_ok(), "the blocking checkout got {served:?}");
}
