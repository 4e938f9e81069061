//! The fortieth pass: the worker lifecycle and every user callback, looking for user-supplied
//! code the crate runs that nobody has audited. Each test's doc comment says whether it found
//! a bug ("Found.": it fails on commit 9d8a12f) or documents an attack that held ("Tried.").
//! Six found, two roots, both fixed: the application's logger ran outside containment at the
//! crate's log lines (every line now goes through `contain::logged!`, as the `metrics`
//! recorder already did); and a `try_checkout` from a start's own user code (`on_start`)
//! waited for that very start (the thread running a start counts it as held here, and
//! neither `try_checkout` nor `drain` waits for it).
//!
//! The tests of this file share one process-wide logger (`BrokenPipe`) that behaves as the
//! simplest real logger does when its output is gone: a logger that writes each record with
//! `eprintln!` panics ("failed printing to stderr: Broken pipe") once stderr is a pipe whose
//! reader has exited (a daemon whose log collector died). It prints warnings and errors only
//! (the usual level), and panics only on records that name a pool whose name contains
//! `logbomb` or are logged on one of its threads (`cylinder-reaper-logbomb...`), so the other
//! tests of this file run with a logger that works.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use common::{assert_a_failed_reset_is_replaced, eventually};
use cylinder::{BoxError, Error, Pool};

/// A logger whose output is gone: it panics as `eprintln!` does on a closed pipe, for the
/// warnings and errors of pools named `logbomb...`.
struct BrokenPipe;

impl log::Log for BrokenPipe {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        let text = record.args().to_string();
        let on_its_thread = std::thread::current()
            .name()
            .is_some_and(|name| name.contains("logbomb"));
        if text.contains("reenter") {
            if let Some(pool) = REENTERED.get() {
                // A logger that adds the pool's state to its lines.
                let _ = pool.stats();
                let _ = format!("{pool:?}");
                LOGGED_REENTERING.fetch_add(1, Ordering::SeqCst);
            }
        }
        if record.level() <= log::Level::Warn && (text.contains("logbomb") || on_its_thread) {
            panic!("on purpose: failed printing to stderr: Broken pipe (os error 32)");
        }
    }
    fn flush(&self) {}
}

static LOGGER: BrokenPipe = BrokenPipe;
/// The pool the logger calls back into, for records that name it (`reenter...`).
static REENTERED: std::sync::OnceLock<Pool<u32>> = std::sync::OnceLock::new();
static LOGGED_REENTERING: AtomicUsize = AtomicUsize::new(0);
static INSTALL: Once = Once::new();

/// Installs the logger (once per process) and silences the on-purpose panics.
fn logging() {
    INSTALL.call_once(|| {
        log::set_logger(&LOGGER).unwrap();
        log::set_max_level(log::LevelFilter::Trace);
        std::panic::set_hook(Box::new(|info| {
            let payload = info.payload();
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            if !message.starts_with("on purpose") {
                eprintln!("{info}");
            }
        }));
    });
}

/// Found. The application's logger is user code (a `log::Log` implementation the user
/// installs, as a `metrics` recorder is, which the crate does contain), but the crate calls
/// it outside `contain`. A `reset` that fails on a pool whose logger panics (its stderr pipe
/// closed): the lease's return logs the cause with `log::warn!` in `retire_unreported`
/// (src/pool/release.rs) *before* `close_worker`. The panic unwinds out of the client's
/// `drop(lease)`, the worker is dropped by the unwinding without its count given back, and
/// the `size(1)` pool counts one worker it no longer has: nothing is free or leased, no
/// replacement starts, every checkout times out. Expected: the drop returns, the worker is
/// replaced (free 1 == size 1), the next checkout succeeds.
#[test]
fn a_logger_that_panics_on_a_reset_failure_loses_no_count_and_does_not_reach_the_client() {
    logging();
    let pool = Pool::builder()
        .size(1)
        .name("logbomb-reset")
        .checkout_timeout(Duration::from_millis(500))
        .reset(|_: &mut u32| -> Result<(), BoxError> { Err("rollback failed".into()) })
        .build(|| Ok(7u32))
        .unwrap();
    assert_a_failed_reset_is_replaced(&pool);
}

/// Found. The same logger under `build_unchecked` with a start that fails (the server is
/// down): `start_failed` (src/pool/start.rs) logs the cause with `log::warn!` outside
/// `contain`, before `note_failure`, so the start thread dies and the pool never learns that
/// starts fail: no cause, no backoff, no fuse. A blocking checkout waits its whole timeout
/// and answers a bare `Timeout` (cause `None`), where the documented answer is
/// `Disconnected` with the start's error as its cause, at the pool's next start attempt.
#[test]
fn a_logger_that_panics_on_a_failed_start_still_fails_checkouts_with_disconnected() {
    logging();
    let pool = Pool::builder()
        .size(1)
        .name("logbomb-start")
        .reconnect_delay(Duration::from_millis(50))
        .build_unchecked(|| -> Result<u32, BoxError> { Err("connection refused".into()) })
        .unwrap();
    let began = Instant::now();
    let got = pool.checkout_timeout(Duration::from_millis(1500));
    let took = began.elapsed();
    assert!(
        matches!(got, Err(Error::Disconnected { .. })),
        "after {took:?}: {:?}",
        got.map(|_| ())
    );
}

/// Found. `build` with a start that fails, on a pool whose logger panics: `build` runs the
/// first starts on the caller's thread (`fill_now`), and `start_failed`'s `log::warn!` panics
/// out of `build` itself. Expected (documented): `Err(Error::Disconnected)` with the start's
/// error as its cause.
#[test]
fn build_with_a_failing_start_and_a_logger_that_panics_returns_an_error() {
    logging();
    let built = std::panic::catch_unwind(|| {
        Pool::builder()
            .size(1)
            .name("logbomb-build")
            .build(|| -> Result<u32, BoxError> { Err("connection refused".into()) })
            .map(drop)
    });
    match built {
        Ok(Err(Error::Disconnected { .. })) => {}
        Ok(other) => panic!("expected Disconnected, got {other:?}"),
        Err(_) => panic!("build panicked into its caller (the crate's own log line)"),
    }
}

/// Found. The reaper thread dies for good. A slow-lease report (`warn_after`) is logged by
/// the reaper (`LeaseWatch::report`, src/pool/watch.rs) with `log::warn!` outside `contain`;
/// the round's panic is caught by the reaper's `catch_unwind` (src/reaper.rs, `Reaper::run`),
/// whose handler logs "reaper round panicked" with `log::error!`, again outside any
/// containment: that second panic ends the reaper thread. No sweep ever runs again:
/// `idle_timeout` closes nothing. Here a `size(3).min_idle(1)` pool with
/// `idle_timeout(100 ms)`: after a burst of three slow leases, the two idle workers above
/// `min_idle` should be closed within a few hundred milliseconds (at worst after the
/// reaper's 1 s retry); 3 s later all three are still open.
#[test]
fn a_logger_that_panics_on_a_slow_lease_report_does_not_end_the_reaper() {
    logging();
    let pool = Pool::builder()
        .size(3)
        .min_idle(1)
        .name("logbomb-reaper")
        .idle_timeout(Duration::from_millis(100))
        .warn_after(Duration::from_millis(30))
        .build(|| Ok(0u32))
        .unwrap();
    let leases: Vec<_> = (0..3).map(|_| pool.checkout().unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    drop(leases);
    let shrunk = eventually(Duration::from_secs(3), || pool.stats().size == 1);
    assert!(
        shrunk,
        "idle workers above min_idle were never closed: {:?}",
        pool.stats()
    );
}

/// Tried (control for the reaper finding above): the same pool and the same slow leases
/// with a logger that works (a name the logger leaves alone): the slow leases are reported
/// and the idle workers above `min_idle` are closed.
#[test]
fn with_a_working_logger_slow_lease_reports_and_idle_closes_both_happen() {
    logging();
    let reports = Arc::new(AtomicUsize::new(0));
    let seen = reports.clone();
    let pool = Pool::builder()
        .size(3)
        .min_idle(1)
        .name("quiet-reaper")
        .idle_timeout(Duration::from_millis(100))
        .warn_after(Duration::from_millis(30))
        .on_event(move |event| {
            if matches!(event, cylinder::Event::SlowLease { .. }) {
                seen.fetch_add(1, Ordering::SeqCst);
            }
        })
        .build(|| Ok(0u32))
        .unwrap();
    let leases: Vec<_> = (0..3).map(|_| pool.checkout().unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    drop(leases);
    let shrunk = eventually(Duration::from_secs(3), || pool.stats().size == 1);
    assert!(shrunk, "{:?}", pool.stats());
    assert_eq!(reports.load(Ordering::SeqCst), 3);
}

/// Found. The plain balancer, same root: a supervisor that listed a live child, then fails
/// (the server went down) while its child dies. `get` finds the whole set dead and reloads
/// at once (`reload_all_dead`); the supervisor's failure makes `disconnect`
/// (src/balancer/set.rs) log the cause with `log::error!` outside `contain`, and a logger
/// that panics there panics out of `Balancer::get` into its caller, who did nothing wrong.
/// Expected (documented): `Err(Error::Disconnected)` with the supervisor's error as its cause.
#[test]
fn balancer_get_reloading_a_dead_set_with_a_logger_that_panics_returns_disconnected() {
    logging();
    let child = Arc::new(common::Probe::new(1));
    let down = Arc::new(AtomicBool::new(false));
    let (listed, failing) = (child.clone(), down.clone());
    let balancer = cylinder::Balancer::<common::Probe>::builder()
        .name("logbomb-balancer")
        .build_with(move || -> Result<Vec<Arc<common::Probe>>, BoxError> {
            if failing.load(Ordering::SeqCst) {
                Err("connection refused".into())
            } else {
                Ok(vec![listed.clone()])
            }
        })
        .unwrap();
    assert!(balancer.get().is_ok());
    down.store(true, Ordering::SeqCst);
    child.kill();
    let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        balancer.get().map(|worker| worker.id)
    }));
    match got {
        Ok(Err(Error::Disconnected { .. })) => {}
        Ok(other) => panic!("expected Disconnected, got {other:?}"),
        Err(_) => panic!("Balancer::get panicked into its caller (the crate's own log line)"),
    }
}

/// Tried. A logger that calls back into the pool it logs for (`stats()` and `Debug` from
/// inside each record that names it: a logger that adds the pool's state to its lines): no
/// log line of the return path, the retire path, the starts or the reaper is written under
/// a pool lock, so nothing deadlocks. (A logger that calls `try_checkout` instead stalls
/// each start for the whole `checkout_timeout`: the start thread's "worker started" line
/// comes while its start still counts as on its way, and `try_wait_for_a_start` on that
/// thread waits for its own start; see the report.) A `reset` that fails on every other
/// return, twenty returns, then the pool settles with its worker count whole.
#[test]
fn a_logger_that_calls_back_into_the_pool_deadlocks_nothing() {
    logging();
    let flip = Arc::new(AtomicUsize::new(0));
    let pool = Pool::builder()
        .size(2)
        .name("reenter-pool")
        .checkout_timeout(Duration::from_secs(2))
        .reset(move |_: &mut u32| -> Result<(), BoxError> {
            if flip.fetch_add(1, Ordering::SeqCst) % 2 == 0 {
                Err("rollback failed".into())
            } else {
                Ok(())
            }
        })
        .build(|| Ok(0u32))
        .unwrap();
    REENTERED.set(pool.clone()).ok().unwrap();
    let done = common::within(Duration::from_secs(10), {
        let pool = pool.clone();
        move || {
            for _ in 0..20 {
                drop(pool.checkout().unwrap());
            }
        }
    });
    assert!(done.is_some(), "the returns hung: {:?}", pool.stats());
    let settled = eventually(Duration::from_secs(3), || {
        let stats = pool.stats();
        stats.size == 2 && stats.free == 2 && stats.starting == 0
    });
    assert!(settled, "{:?}", pool.stats());
    assert!(LOGGED_REENTERING.load(Ordering::SeqCst) >= 10);
}

static ON_START_POOL: std::sync::OnceLock<Pool<u32>> = std::sync::OnceLock::new();
static ON_START_ARMED: AtomicBool = AtomicBool::new(false);
static ON_START_SAW: std::sync::Mutex<Vec<(Duration, String)>> = std::sync::Mutex::new(Vec::new());

/// Found. An `on_start` hook that calls back into its own pool with `try_checkout` (family
/// 3, re-entry: a customizer that probes the pool, or a helper it calls that takes a
/// connection "if one is free"). In a `size(1)` pool whose worker was discarded, the
/// replacement's `on_start` runs while that start still counts as on its way and nothing is
/// open, so `try_checkout` on the start thread goes to `try_wait_for_a_start`
/// (src/pool/checkout.rs) and waits for the start its own thread is running: the whole
/// `checkout_timeout` (3 s here; 30 s by default), then answers `Overload` although nothing
/// is leased. Every client waits as long for the replacement. Expected: the non-blocking
/// checkout answers at once (nothing it could wait for will come while it waits), and the
/// replacement is in within a few milliseconds; here the hook's `try_checkout` took 3 s and
/// said `Overload`, and the client's checkout came after 3 s.
#[test]
fn a_try_checkout_from_on_start_does_not_wait_for_its_own_start() {
    let pool = Pool::builder()
        .size(1)
        .checkout_timeout(Duration::from_secs(3))
        .on_start(|_: &mut u32| -> Result<(), BoxError> {
            if ON_START_ARMED.swap(false, Ordering::SeqCst) {
                let began = Instant::now();
                let got = ON_START_POOL
                    .get()
                    .unwrap()
                    .try_checkout()
                    .map(|lease| *lease);
                ON_START_SAW
                    .lock()
                    .unwrap()
                    .push((began.elapsed(), format!("{got:?}")));
            }
            Ok(())
        })
        .build(|| Ok(1u32))
        .unwrap();
    ON_START_POOL.set(pool.clone()).ok().unwrap();
    ON_START_ARMED.store(true, Ordering::SeqCst);
    let began = Instant::now();
    cylinder::Lease::discard(pool.checkout().unwrap());
    let next = pool
        .checkout_timeout(Duration::from_secs(5))
        .map(|lease| *lease);
    let took = began.elapsed();
    let saw = ON_START_SAW.lock().unwrap().clone();
    let hook_waited = saw.first().map_or(Duration::ZERO, |(waited, _)| *waited);
    assert!(
        next.is_ok()
            && took < Duration::from_millis(1500)
            && hook_waited < Duration::from_millis(1500),
        "the client's checkout: {next:?} after {took:?}; the hook's try_checkout: {saw:?}"
    );
}
