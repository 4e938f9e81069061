//! The forty-ninth pass: the pool's lifecycle and the user code it calls (the logger and
//! the crate's held-back log lines above all). Each test's doc comment says what it found.
//!
//! The tests of this file share one process-wide logger (`common::logger`), with no hook
//! armed (logging must be on for the crate to format its lines at all).

mod common;

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::eventually;
use common::logger::logging;
use cylinder::Pool;

/// What the start error's `Display` saw when it called into another pool.
type Seen = Arc<Mutex<Vec<String>>>;

/// A start error whose `Display` looks something up through another pool (a diagnostics
/// connection, say): user code calling into the crate, as any callback may.
struct LooksUp {
    other: Pool<u32>,
    seen: Seen,
}

impl fmt::Debug for LooksUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LooksUp")
    }
}

impl fmt::Display for LooksUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let got = catch_unwind(AssertUnwindSafe(|| {
            self.other.try_checkout().map(|lease| *lease)
        }));
        let seen = match got {
            Ok(Ok(_)) => "served".to_string(),
            Ok(Err(err)) => format!("error: {err}"),
            Err(payload) => format!(
                "panicked: {}",
                payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            ),
        };
        self.seen.lock().unwrap().push(seen);
        f.write_str("the server is down")
    }
}

impl std::error::Error for LooksUp {}

/// Found. A start fails with an error whose `Display` calls `try_checkout` on another,
/// lazy pool. The crate's "a worker could not start: {cause}" line is written inside a
/// `LogsLater` scope (`run_claim`, src/pool/start.rs), so `write_log` (src/contain.rs)
/// formats it into the held-back list with `line.to_string()` *while it holds
/// `LATER.borrow_mut()`*: the user's `Display` runs under that borrow, and the other pool's
/// `try_checkout` (`start_for_caller` begins a `LogsLater`, src/pool/start.rs) borrows
/// `LATER` again and panics with `BorrowMutError` out of the crate. Expected (GUARANTEES.md:
/// "A user error's `Display` and `Debug` are user code too: the crate formats them
/// contained"; "no panic reaches a caller that did not cause it"; contain.rs: "Nothing user
/// code does unwinds into the crate"; BREAKING.md family 3, user code that re-enters): the
/// other pool's `try_checkout` serves a worker.
#[test]
fn a_start_errors_display_that_checks_out_of_another_pool_is_not_answered_with_a_panic() {
    logging();
    common::quiet_panics();
    let other = Pool::builder()
        .size(2)
        .min_idle(0)
        .name("b49-display-other")
        .build(|| Ok(7u32))
        .unwrap();
    let seen: Seen = Arc::default();
    let (their_other, their_seen) = (other.clone(), seen.clone());
    let pool = Pool::builder()
        .size(1)
        .reconnect_delay(Duration::from_millis(50))
        .name("b49-display")
        .build_unchecked(move || -> Result<u32, cylinder::BoxError> {
            Err(Box::new(LooksUp {
                other: their_other.clone(),
                seen: their_seen.clone(),
            }))
        })
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || !seen.lock().unwrap().is_empty()),
        "the start error was never formatted"
    );
    pool.close();
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter().all(|seen| seen == "served"),
        "the start error's Display, formatting the crate's log line, called try_checkout on \
         another pool and got {seen:?}"
    );
}

/// A start error whose `Display` hands back (discards) a lease of another pool it carried:
/// the error owned a connection it no longer needs once shown.
struct GivesBack {
    lease: Mutex<Option<cylinder::OwnedLease<u32>>>,
    seen: Seen,
}

impl fmt::Debug for GivesBack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GivesBack")
    }
}

impl fmt::Display for GivesBack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(lease) = self.lease.lock().unwrap().take() {
            let got = catch_unwind(AssertUnwindSafe(|| cylinder::OwnedLease::discard(lease)));
            self.seen.lock().unwrap().push(match got {
                Ok(()) => "given back".to_string(),
                Err(_) => "panicked".to_string(),
            });
        }
        f.write_str("the server is down")
    }
}

impl std::error::Error for GivesBack {}

/// Found (the same root as the test above, with a count lost). A start fails with an error
/// that carries an owned lease of another pool of one, and its `Display` discards it. The
/// "could not start" line is formatted under `LATER.borrow_mut()` (`write_log`,
/// src/contain.rs), so the discard's `retire_unreported` (src/pool/release.rs) panics in
/// its first statement, `LogsLater::begin`, with the worker in hand: the worker is dropped
/// by the unwinding (not through `close_worker`), its place is never counted out and no
/// replacement is claimed. Expected (GUARANTEES.md: "No worker is lost"; "A broken,
/// discarded, ... worker is replaced by counting and the pool returns to its size"; "a
/// panic there is contained ...: no count leaks"): the other pool serves a new worker.
#[test]
fn a_lease_discarded_by_a_start_errors_display_is_replaced() {
    logging();
    common::quiet_panics();
    let other = Pool::builder()
        .size(1)
        .name("b49-gives-back-other")
        .build(|| Ok(7u32))
        .unwrap();
    let lease = Mutex::new(Some(other.checkout_owned().unwrap()));
    let carried = Arc::new(Mutex::new(Some(lease)));
    let seen: Seen = Arc::default();
    let their_seen = seen.clone();
    let pool = Pool::builder()
        .size(1)
        .reconnect_delay(Duration::from_millis(50))
        .name("b49-gives-back")
        .build_unchecked(move || -> Result<u32, cylinder::BoxError> {
            let lease = carried.lock().unwrap().take().unwrap_or_default();
            Err(Box::new(GivesBack {
                lease,
                seen: their_seen.clone(),
            }))
        })
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || !seen.lock().unwrap().is_empty()),
        "the start error was never formatted"
    );
    pool.close();
    let got = other
        .checkout_timeout(Duration::from_secs(2))
        .map(|lease| *lease);
    assert!(
        got.is_ok(),
        "the pool of one whose lease a start error's Display discarded got {got:?} \
         (stats {:?}; the discard {:?})",
        other.stats(),
        seen.lock().unwrap()
    );
}

/// Found. A pool of one, its worker held by a client, grown with `resize(10)` from a thread:
/// `fill_now` (src/pool/start.rs) claims the nine new starts for itself and runs them on
/// eight threads. The eight starts that began before an `evict_all` arrive after it: each is
/// evicted on arrival in `deliver`, which reports `WorkerEvicted` *inside `run_claim`*
/// (`self.emit(evicted)` at the end of `deliver`), not with the events `run_own` reports once
/// no claim is left for the thread. The event callback blocks on those events (a stalled
/// metrics sink). The evicted workers' replacements come; the client takes them, then asks
/// for a tenth with `checkout_timeout(1 s)`. Expected (`fill_now`'s own comment: "a callback
/// that blocks or drains must not hold back a claim only these threads can run (a waiter
/// counts it as on its way and claims none of its own)"; pass 43's and 47's promise; BREAKING
/// family 2: "an event callback that waits ... other clients must not wait on it"): the
/// ninth start runs and the checkout is served.
#[test]
fn an_event_callback_blocked_on_a_resize_start_evicted_on_arrival_does_not_hold_back_its_last_start(
) {
    let evicted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let release = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let blocked = Arc::new(AtomicUsize::new(0));
    let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (their_evicted, r, b) = (evicted.clone(), release.clone(), blocked.clone());
    let their_armed = armed.clone();
    // Starts under way while armed (`stats().starting` counts claims, some maybe not begun).
    let began = Arc::new(AtomicUsize::new(0));
    let their_began = began.clone();
    let pool = Pool::builder()
        .size(1)
        .name("b49-evicted-on-arrival")
        .checkout_timeout(Duration::from_secs(1))
        .on_event(move |event| {
            if matches!(event, cylinder::Event::WorkerEvicted) {
                b.fetch_add(1, Ordering::SeqCst);
                let began = std::time::Instant::now();
                while !r.load(Ordering::SeqCst) && began.elapsed() < Duration::from_secs(60) {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        })
        .build(move || {
            // The resize's starts that begin before the eviction end after it.
            if their_armed.load(Ordering::SeqCst) {
                their_began.fetch_add(1, Ordering::SeqCst);
            }
            let began = std::time::Instant::now();
            while their_armed.load(Ordering::SeqCst)
                && !their_evicted.load(Ordering::SeqCst)
                && began.elapsed() < Duration::from_secs(60)
            {
                std::thread::sleep(Duration::from_millis(2));
            }
            Ok(())
        })
        .unwrap();
    let first = pool.checkout().unwrap();
    armed.store(true, Ordering::SeqCst);
    let grower = pool.clone();
    let resizer = std::thread::spawn(move || grower.resize(10));
    // The eight start threads are under way, each in its start (nothing else starts
    // meanwhile). (Generous bounds: a loaded 2-core machine runs nine threads here.)
    let under_way = eventually(Duration::from_secs(30), || {
        began.load(Ordering::SeqCst) >= 8
    });
    pool.evict_all();
    evicted.store(true, Ordering::SeqCst);
    let eight = eventually(Duration::from_secs(30), || {
        blocked.load(Ordering::SeqCst) >= 8
    });
    let mut held = vec![first];
    let mut outcome = Ok(());
    if under_way && eight {
        for nth in 2..=10 {
            let began = std::time::Instant::now();
            match pool.checkout_timeout(Duration::from_secs(1)) {
                Ok(lease) => held.push(lease),
                Err(err) => {
                    outcome = Err(format!(
                        "lease {nth} of a pool resized to 10 failed after {:?} with {err:?} \
                         ({} event callbacks blocked, stats {:?})",
                        began.elapsed(),
                        blocked.load(Ordering::SeqCst),
                        pool.stats()
                    ));
                    break;
                }
            }
        }
    }
    release.store(true, Ordering::SeqCst);
    drop(held);
    let _ = resizer.join();
    assert!(
        under_way,
        "the resize's starts never got under way: {:?}",
        pool.stats()
    );
    assert!(
        eight,
        "the resize's eight starts were not evicted on arrival ({} blocked)",
        blocked.load(Ordering::SeqCst)
    );
    outcome.unwrap();
}
