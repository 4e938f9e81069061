//! The forty-fifth pass: the pool's lifecycle and the user code it calls. Each test's doc
//! comment says what it found (all "Found.": each fails on commit 555b343). Two roots:
//! - a clone of the kept start/check/reset error (`Cause`, an `Arc` of the user's error)
//!   dropped uncontained by `timed_out` (src/pool/checkout.rs): when another thread replaces
//!   the kept cause meanwhile, the user error's `Drop` runs (and panics) in a client that
//!   only timed out;
//! - the crate's log lines run the application's logger (user code) at three places where
//!   the thread still holds pool state it has not recorded as held here nor given back: a
//!   worker being retired (`retire_unreported`, before `close_worker` and `replace`), a new
//!   worker's claim (`joined`, before `deliver`), a failed start's claim (`start_failed`,
//!   before `note_failure`). A logger that calls back (`drain`, `try_checkout`) waits for
//!   what its own thread holds; a logger that blocks holds back other clients.
//!
//! The tests of this file share one process-wide logger (`common::logger`): it does nothing
//! unless a test armed a hook for a record naming its own pool (`on_log`), and then runs that
//! hook once.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::logger::{logging, on_log, written};
use cylinder::{Error, Lease, Pool};

/// What a callback's call back into its pool answered, and how long it took.
type Answered = Arc<std::sync::Mutex<Vec<(String, Duration)>>>;

/// A user error whose `Drop` panics (a driver error that asserts in its destructor).
#[derive(Debug)]
struct PanickyError;

impl std::fmt::Display for PanickyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("reset refused")
    }
}

impl std::error::Error for PanickyError {}

impl Drop for PanickyError {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("a reset error's Drop panics on purpose");
        }
    }
}

/// Found. A pool of one whose `reset` always fails with a user error whose `Drop` panics
/// (every return retires the worker, `keep_cause` replaces the cause kept, and the cause
/// replaced is dropped contained, `record_cause` in src/pool/shared.rs). Two clients: one
/// cycles leases (so causes are replaced all the time), the other makes checkouts with a
/// zero timeout that find the worker leased or restarting and time out. Expected
/// (GUARANTEES.md: "so does every `Drop` of a user value (workers, errors, panic payloads,
/// requests) ... A panic there is contained ...: no panic reaches a caller that did not
/// cause it"): no checkout call ever panics. Happened: `timed_out` (src/pool/checkout.rs)
/// clones the kept cause (`last_failure()`) and, starts not failing, drops the clone in
/// `.filter(|_| failing)`, uncontained; when the other client's return replaces the kept
/// cause in between, that clone is the last reference and the reset error's `Drop` panics
/// out of `checkout_timeout` in a client that only timed out. (The same uncontained drop
/// of a `last_failure()` clone is in `wait_for`'s `try_checkout` arm.)
#[test]
fn a_checkout_timing_out_while_another_clients_reset_error_is_replaced_does_not_panic() {
    common::quiet_panics();
    let pool = Pool::builder()
        .size(1)
        .reset(|_: &mut u32| Err::<(), _>(PanickyError))
        .build(|| Ok(0u32))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let escaped = Arc::new(AtomicUsize::new(0));
    let timeouts = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for zero in [false, true] {
        let (pool, stop, escaped, timeouts) = (
            pool.clone(),
            stop.clone(),
            escaped.clone(),
            timeouts.clone(),
        );
        clients.push(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let timeout = if zero {
                    Duration::ZERO
                } else {
                    Duration::from_millis(20)
                };
                match catch_unwind(AssertUnwindSafe(|| pool.checkout_timeout(timeout))) {
                    // The lease's return runs the failing reset (contained by the pool).
                    Ok(Ok(lease)) => drop(lease),
                    Ok(Err(err)) => {
                        timeouts.fetch_add(1, Ordering::SeqCst);
                        // The error is ours now: its drop is not the pool's.
                        let _ = catch_unwind(AssertUnwindSafe(move || drop(err)));
                    }
                    Err(payload) => {
                        escaped.fetch_add(1, Ordering::SeqCst);
                        if let Some(message) = payload.downcast_ref::<&str>() {
                            eprintln!("escaped from checkout_timeout: {message}");
                        }
                        std::mem::forget(payload);
                    }
                }
            }
        }));
    }
    let began = Instant::now();
    while began.elapsed() < Duration::from_secs(4) && escaped.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        let _ = client.join();
    }
    let stats = pool.stats();
    assert_eq!(
        escaped.load(Ordering::SeqCst),
        0,
        "a reset error's Drop panicked out of checkout_timeout ({} checkouts timed out, {stats:?})",
        timeouts.load(Ordering::SeqCst)
    );
}

/// Found. A pool of two, no lease out; a client discards a lease (`Lease::discard`).
/// `end_lease` → `retire` → `retire_unreported` (src/pool/release.rs) logs "worker N
/// dropped (WorkerDiscarded)" with the worker still in its hand (not yet closed), and the
/// application's logger, on that record, calls `drain(800 ms)` on the pool it logs for (a
/// logger that shuts the pool down on a fatal line). Expected (`drain`'s rustdoc: "Called
/// from user code that holds workers of this pool ..., it does not wait for those: they are
/// closed once that code returns"; GUARANTEES.md: every log line of the crate is user code
/// run contained, and "a `drain` from any user code that holds workers of the pool ...
/// waits for every other lease and start, never for those"): nothing else is out, so
/// `drain` answers `Ok` at once. Happened: it waits its whole 800 ms and answers `Timeout`:
/// the worker being retired is counted open and nothing records it held here on this path
/// (`unfit_by_hooks`' guard has ended; `retire_held`, `admit_with_hooks` and `deliver`
/// hold theirs while the same line is logged, `end_lease` and `look_at_each` do not).
#[test]
fn drain_from_the_logger_on_a_discarded_workers_dropped_line_does_not_wait_for_it() {
    logging();
    let pool = Pool::builder()
        .size(2)
        .name("b45-discard-drain")
        .build(|| Ok(0u32))
        .unwrap();
    let answered: Answered = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (handle, answers) = (pool.clone(), answered.clone());
    on_log(
        "b45-discard-drain: worker|dropped (WorkerDiscarded)",
        move || {
            let began = Instant::now();
            let drained = handle.drain(Duration::from_millis(800));
            answers
                .lock()
                .unwrap()
                .push((format!("{drained:?}"), began.elapsed()));
        },
    );
    let client = pool.clone();
    let done = common::within(Duration::from_secs(10), move || {
        Lease::discard(client.checkout().unwrap());
    });
    assert!(done.is_some(), "the discard never returned");
    let answers = answered.lock().unwrap().clone();
    assert_eq!(
        answers.len(),
        1,
        "the logger's hook did not run: {answers:?}"
    );
    let (drained, took) = &answers[0];
    assert!(
        drained == "Ok(())" && *took < Duration::from_millis(500),
        "drain from the logger's record of the discarded worker answered {drained} after \
         {took:?} (no lease out, nothing starting besides): {:?}",
        pool.stats()
    );
}

/// Found (pass 40 noted it in `a_logger_that_calls_back_into_the_pool_deadlocks_nothing`'s
/// comment; no test holds it, and it is still there). A pool of one whose worker is
/// discarded; its replacement's start thread, in `deliver` → `joined`
/// (src/pool/start.rs), logs "worker N started" while the start still counts as on its way
/// (`starting`) and before any held-here mark is taken (`open_worker`'s START mark ended
/// with `open_now`; `HeldHere::delivery` comes after `joined`). The application's logger,
/// on that record, calls `try_checkout` on the pool (a logger that probes the pool's
/// health). Expected (`try_checkout`'s rustdoc: "never waits for another client";
/// GUARANTEES.md: "A `try_checkout` ... called from a start's own user code ... does not
/// wait for that start", and pass 43 made a failed start hold its mark while its error is
/// logged): it answers at once, and the replacement is in within milliseconds. Happened:
/// nothing is open and a start is on its way that this thread does not hold, so it waits in
/// `try_wait_for_a_start` for its own start the whole `checkout_timeout` (3 s here, 30 s by
/// default), then answers `Overload`; a client's blocking checkout waits as long.
#[test]
fn try_checkout_from_the_logger_on_a_workers_started_line_does_not_wait_for_that_start() {
    logging();
    let pool = Pool::builder()
        .size(1)
        .name("b45-fresh-try")
        .checkout_timeout(Duration::from_secs(3))
        .build(|| Ok(0u32))
        .unwrap();
    let answered: Answered = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (handle, answers) = (pool.clone(), answered.clone());
    Lease::discard(pool.checkout().unwrap());
    // Armed after the discard's own lines and its replacement's "started" line (written
    // once the start thread holds nothing of the pool), then discarded again.
    assert!(common::eventually(Duration::from_secs(2), || pool
        .stats()
        .free
        == 1
        && written("b45-fresh-try: worker|started") == 2));
    on_log("b45-fresh-try: worker|started", move || {
        let began = Instant::now();
        let got = handle.try_checkout().map(|lease| *lease);
        answers
            .lock()
            .unwrap()
            .push((format!("{got:?}"), began.elapsed()));
    });
    let client = pool.clone();
    let began = Instant::now();
    let next = common::within(Duration::from_secs(10), move || {
        Lease::discard(client.checkout().unwrap());
        client
            .checkout_timeout(Duration::from_secs(5))
            .map(|lease| *lease)
            .map_err(|err: Error| err.to_string())
    });
    let took = began.elapsed();
    // The line is written once the start thread holds nothing: maybe after the client got
    // the worker.
    assert!(
        common::eventually(Duration::from_secs(5), || !answered
            .lock()
            .unwrap()
            .is_empty()),
        "the logger's hook did not run"
    );
    let answers = answered.lock().unwrap().clone();
    let (got, waited) = &answers[0];
    assert!(
        matches!(next, Some(Ok(_)))
            && took < Duration::from_millis(1500)
            && *waited < Duration::from_millis(1500),
        "the logger's try_checkout answered {got} after {waited:?}; the client's checkout \
         answered {next:?} after {took:?}"
    );
}

/// Found (the same root as
/// `drain_from_the_logger_on_a_discarded_workers_dropped_line_does_not_wait_for_it`, on
/// the reaper). A pool of one with a checkout check and `keepalive(100 ms)`; no lease out.
/// The sweep's second pass (`look_at_each`, src/pool/upkeep.rs) gives the idle worker its
/// keepalive check, which fails (the connection was cut while idle); it drops its held-here
/// guard and then calls `retire`, whose "worker N dropped (CheckFailed)" line is logged with
/// the worker still in hand. The logger, on that record, calls `drain(800 ms)`. Expected
/// (as above): `Ok` at once, nothing else being out. Happened: `Timeout` after 800 ms, the
/// worker the reaper holds counted open and not held here.
#[test]
fn drain_from_the_logger_on_a_keepalive_failures_dropped_line_does_not_wait_for_it() {
    logging();
    let cut = Arc::new(AtomicBool::new(false));
    let is_cut = cut.clone();
    let pool = Pool::builder()
        .size(1)
        .name("b45-keepalive-drain")
        .keepalive(Duration::from_millis(100))
        .test_on_checkout(move |_: &mut u32| !is_cut.load(Ordering::SeqCst))
        .build(|| Ok(0u32))
        .unwrap();
    let answered: Answered = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (handle, answers) = (pool.clone(), answered.clone());
    on_log(
        "b45-keepalive-drain: worker|dropped (CheckFailed)",
        move || {
            let began = Instant::now();
            let drained = handle.drain(Duration::from_millis(800));
            answers
                .lock()
                .unwrap()
                .push((format!("{drained:?}"), began.elapsed()));
        },
    );
    cut.store(true, Ordering::SeqCst);
    assert!(
        common::eventually(Duration::from_secs(5), || !answered
            .lock()
            .unwrap()
            .is_empty()),
        "no keepalive check failed within 5 s: {:?}",
        pool.stats()
    );
    let answers = answered.lock().unwrap().clone();
    let (drained, took) = &answers[0];
    assert!(
        drained == "Ok(())" && *took < Duration::from_millis(500),
        "drain from the logger's record of the worker failing its keepalive check answered \
         {drained} after {took:?} (no lease out): {:?}",
        pool.stats()
    );
}

/// A pool of one (named `name`) whose only worker a client holds while another waits in
/// line; the holder discards it once the waiter is in line (on a thread of its own: the
/// logger may hold it up). `arm` runs just before the discard. How long the waiter waited
/// after the discard, and what it got.
fn waiter_served_after_a_discard(
    name: &str,
    arm: impl FnOnce(),
) -> (Duration, Result<u32, String>) {
    let pool = Pool::builder()
        .size(1)
        .name(name)
        .checkout_timeout(Duration::from_secs(5))
        .build(|| Ok(7u32))
        .unwrap();
    let held = pool.checkout_owned().unwrap();
    let waiter = pool.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let got = waiter
            .checkout_timeout(Duration::from_secs(5))
            .map(|lease| *lease)
            .map_err(|err| err.to_string());
        let _ = tx.send((Instant::now(), got));
    });
    assert!(
        common::eventually(Duration::from_secs(2), || pool.stats().waiters == 1),
        "the waiter never got in line"
    );
    arm();
    let discarded = Instant::now();
    std::thread::spawn(move || cylinder::OwnedLease::discard(held));
    let (served, got) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the waiter never came back");
    (served.duration_since(discarded), got)
}

/// Found. A pool of one; client A holds its worker, client B waits in line. A discards it:
/// `retire_unreported` (src/pool/release.rs) logs "worker N dropped (WorkerDiscarded)"
/// first, and only then closes the worker and claims its replacement. The application's
/// logger blocks on that record for 1.5 s (a logger writing to a pipe that is full, a
/// remote sink that stalls). Expected (the brief's and GUARANTEES.md's promise for every
/// user callback, the logger included: "a callback that blocks holds back no other
/// client"; the same function's own comment: "then its replacement claimed, then the event:
/// a callback that blocks must not hold back the replacement"): B gets the replacement
/// within milliseconds of the discard. Happened: B waits the logger's whole 1.5 s (the
/// discarded worker still holds the pool's only place, so nothing starts for B) while A's
/// thread sits in the logger.
#[test]
fn a_logger_blocked_on_a_discarded_workers_line_does_not_hold_back_its_replacement() {
    logging();
    let (waited, got) = waiter_served_after_a_discard("b45-block-dropped", || {
        on_log(
            "b45-block-dropped: worker|dropped (WorkerDiscarded)",
            || {
                std::thread::sleep(Duration::from_millis(1500));
            },
        );
    });
    assert!(
        got.is_ok() && waited < Duration::from_millis(700),
        "the waiter got {got:?} {waited:?} after the discard, held back by a logger blocked \
         on the discarding client's thread"
    );
}

/// Found. As above, the logger blocking instead on the replacement's "worker N started"
/// record, which `joined` (src/pool/start.rs) logs on the start thread before `deliver`
/// puts the new worker in the pool. Expected (`deliver`'s own rustdoc: "The event is
/// reported once the worker is in the pool: a callback that checks out (or blocks) must not
/// hold back the very worker it reports"; the promise for every callback, the logger
/// included): B gets the new worker within milliseconds. Happened: B waits the logger's
/// whole 1.5 s for a worker that is open and ready, held on the start thread.
#[test]
fn a_logger_blocked_on_a_workers_started_line_does_not_hold_back_that_worker() {
    logging();
    let (waited, got) = waiter_served_after_a_discard("b45-block-fresh", || {
        on_log("b45-block-fresh: worker|started", || {
            std::thread::sleep(Duration::from_millis(1500));
        });
    });
    assert!(
        got.is_ok() && waited < Duration::from_millis(700),
        "the waiter got {got:?} {waited:?} after the discard, held back by a logger blocked \
         on the start thread's line for the new worker"
    );
}

/// Found (the same logger family, on a failed start). A pool of one whose server goes down
/// once it is built: client A holds the only worker, client B waits in line with a 1 s
/// timeout, A discards it, and the replacement's start fails at once ("connection
/// refused"). `start_failed` (src/pool/start.rs) logs "a worker could not start: ..."
/// while the start still holds its claim, and only then records the failure; the logger
/// blocks on that record for 3 s. Expected (GUARANTEES.md: a blocking checkout with nothing
/// running "waits for the next attempt ... and fails with that attempt's cause"; "a callback
/// that blocks holds back no other client"; BREAKING.md 10: "never a bare timeout when the
/// cause is known"): B fails at once with `Disconnected` naming the refused connection.
/// Happened: B waits its whole second and gets `Timeout` with no cause: the failure is not
/// recorded while the logger holds the failing start's thread.
#[test]
fn a_logger_blocked_on_a_failed_starts_line_does_not_turn_the_waiters_disconnected_into_a_bare_timeout(
) {
    logging();
    let down = Arc::new(AtomicBool::new(false));
    let is_down = down.clone();
    let pool = Pool::builder()
        .size(1)
        .name("b45-block-failed")
        .build(move || {
            if is_down.load(Ordering::SeqCst) {
                Err("connection refused".into())
            } else {
                Ok(0u32)
            }
        })
        .unwrap();
    let held = pool.checkout_owned().unwrap();
    let waiter = pool.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let began = Instant::now();
        let got = waiter
            .checkout_timeout(Duration::from_secs(1))
            .map(|lease| *lease)
            .map_err(|err| {
                let cause = std::error::Error::source(&err).map(ToString::to_string);
                format!("{err}: {cause:?}")
            });
        let _ = tx.send((began.elapsed(), got));
    });
    assert!(common::eventually(Duration::from_secs(2), || pool
        .stats()
        .waiters
        == 1));
    on_log("b45-block-failed: a worker could not start", || {
        std::thread::sleep(Duration::from_secs(3));
    });
    down.store(true, Ordering::SeqCst);
    std::thread::spawn(move || cylinder::OwnedLease::discard(held));
    let (waited, got) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the waiter never came back");
    assert!(
        matches!(&got, Err(text) if text.contains("connection refused"))
            && waited < Duration::from_millis(900),
        "the waiter got {got:?} after {waited:?}: the start had failed with 'connection \
         refused' at once, its log line held by the logger"
    );
}
