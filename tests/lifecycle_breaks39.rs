//! The thirty-ninth pass: the worker lifecycle and every user callback, away from the corners
//! the earlier passes hammered: what the crate does with the user's *errors* (not only their
//! `Drop`: their `Display`, which the crate's own log lines call), `Manager` implementations,
//! `on_start`, `start_timeout` with starts that return late, the r2d2-style checks, the plain
//! balancer's supervisors, and the actor. Each test's doc comment says whether it found a bug
//! ("Found.": it fails on commit c70ab78) or documents an attack that held ("Tried.").
//!
//! Six found, one root: the crate formats the user's errors (a start's, a check's, a
//! `reset`'s, a supervisor's, a `Factory` start's) into its own `log` lines outside
//! `contain` (`start_failed` in src/pool/start.rs, `retire_unreported` in
//! src/pool/release.rs, `disconnect` in src/balancer/set.rs, `Factory::list` in
//! src/balancer/supervisor.rs). An error whose `Display` panics, with any logger enabled,
//! then panics in the crate's code: a worker count lost for good (the return path and the
//! reaper's keepalive), a panic out of `drop(lease)`, `build` and `Balancer::get`, a failed
//! start never recorded (no cause, no backoff, a bare `Timeout`), and a `Factory` with live
//! workers taken for disconnected. The attacks that held are marked "Tried". Fixed at the
//! root: `Cause`'s `Display` and `Debug`, which every such line goes through, format the
//! error contained, and say "(an error whose formatting panicked: ...)" when it panics.
//!
//! The tests of this file share one process-wide logger (`Formatting`), enabled at every
//! level, that formats each record as any real logger (env_logger, tracing's bridge) does:
//! the crate's log lines run the `Display` of whatever they print.

mod common;

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use common::{assert_a_failed_reset_is_replaced, eventually, within};
use cylinder::{BoxError, Error, Pool};

/// A logger that formats every record, as real loggers do, and throws the text away.
struct Formatting;

impl log::Log for Formatting {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        let _ = record.args().to_string();
    }
    fn flush(&self) {}
}

static LOGGER: Formatting = Formatting;
static INSTALL: Once = Once::new();

/// Installs the formatting logger (once per process) and silences the test's own panics.
fn logging() {
    INSTALL.call_once(|| {
        log::set_logger(&LOGGER).unwrap();
        log::set_max_level(log::LevelFilter::Trace);
        // Silences the errors' own panics (their payload starts "on purpose"); a test's
        // failed assertion, which may quote one, is still printed.
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

/// A user error whose `Display` panics (a buggy `impl Display`, say one that indexes past
/// the end of a buffer of the server's message). User code, like its `Drop`.
#[derive(Debug)]
struct LoudError;

impl fmt::Display for LoudError {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        panic!("on purpose: this error's Display panics");
    }
}

impl std::error::Error for LoudError {}

/// Found. A `reset` hook (the same with `is_broken`'s sibling `test_on_checkout`, or a
/// `Manager`'s `reset`/`check`) that returns an error whose `Display` panics, with a logger
/// enabled: the lease's return logs the cause (`log::warn!` in `retire_unreported`,
/// src/pool/release.rs) *before* `close_worker`, outside `contain`. The panic unwinds out of
/// the client's `drop(lease)` (the client did nothing wrong: the pool's own hook failed), the
/// worker is dropped by the unwinding without `counts.release()`, and its count is lost for
/// good: `size` says 1, nothing is free or leased, no replacement ever starts, and every
/// checkout of this `size(1)` pool times out. Expected: the drop returns, the pool replaces the
/// worker (free 1 == size 1) and a checkout succeeds.
#[test]
fn a_reset_error_whose_display_panics_loses_no_count_and_does_not_reach_the_client() {
    logging();
    let pool = Pool::builder()
        .size(1)
        .checkout_timeout(Duration::from_millis(500))
        .reset(|_: &mut u32| -> Result<(), BoxError> { Err(Box::new(LoudError)) })
        .build(|| Ok(7u32))
        .unwrap();
    assert_a_failed_reset_is_replaced(&pool);
}

/// Found. A start that fails with an error whose `Display` panics, with a logger enabled:
/// `start_failed` (src/pool/start.rs) logs the cause with `log::warn!` outside `contain`,
/// before it records the failure. `build` runs the first starts on the caller's thread
/// (`fill_now`), so the panic unwinds out of `build` itself. Expected (as for any failed
/// start, and as documented): `Err(Error::Disconnected)` with the start's error as cause.
#[test]
fn build_whose_start_fails_with_an_error_whose_display_panics_returns_an_error() {
    logging();
    let built = std::panic::catch_unwind(|| {
        Pool::builder()
            .size(1)
            .build(|| -> Result<u32, BoxError> { Err(Box::new(LoudError)) })
            .map(drop)
    });
    match built {
        Ok(Err(Error::Disconnected { .. })) => {}
        Ok(other) => panic!("expected Disconnected, got {other:?}"),
        Err(_) => panic!("build panicked into its caller (the start's error Display, logged)"),
    }
}

/// Found. The same start error under `build_unchecked`: the start thread dies in
/// `start_failed`'s log line before `note_failure`, so the pool never learns that starts
/// fail: no cause, no backoff, no fuse. A blocking checkout then waits its whole timeout and
/// answers a bare `Timeout` (cause `None`), where the documented answer is `Disconnected`
/// with the start's error as its cause ("a blocking checkout waits for the pool's next start
/// attempt ... and fails with that attempt's cause").
#[test]
fn a_start_error_whose_display_panics_still_fails_checkouts_with_disconnected() {
    logging();
    let pool = Pool::builder()
        .size(1)
        .reconnect_delay(Duration::from_millis(50))
        .build_unchecked(|| -> Result<u32, BoxError> { Err(Box::new(LoudError)) })
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

/// Found. The same error from a `keepalive` check, on the reaper's thread: `look_at_each`
/// retires the worker (`retire_unreported`, src/pool/release.rs), whose `log::warn!` of the
/// cause panics before `close_worker`; the reaper's round unwinds (caught by the reaper's
/// `catch_unwind`), the worker is dropped by the unwinding and its count never given back.
/// The pool (`size(2)`) keeps counting 2 workers while it has 1: nothing replaces the lost
/// one, and the size-2 pool serves one client at a time for good. Expected: the worker that
/// failed its keepalive check is replaced (2 free, 2 alive).
#[test]
fn a_keepalive_check_error_whose_display_panics_loses_no_worker_count_on_the_reaper() {
    logging();
    let alive = Arc::new(AtomicUsize::new(0));
    let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (counted, failing) = (alive.clone(), cut.clone());
    struct Conn(Arc<AtomicUsize>, bool);
    impl Drop for Conn {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let pool = Pool::builder()
        .size(2)
        .keepalive(Duration::from_millis(30))
        .reconnect_delay(Duration::from_millis(20))
        .test_on_checkout(move |conn: &mut Conn| -> Result<(), BoxError> {
            // The first worker (id false) is cut once the test says so.
            if failing.load(Ordering::SeqCst) && !conn.1 {
                Err(Box::new(LoudError))
            } else {
                Ok(())
            }
        })
        .build({
            let first = std::sync::atomic::AtomicBool::new(true);
            move || {
                counted.fetch_add(1, Ordering::SeqCst);
                // Only the very first worker is the one cut.
                let second = !first.swap(false, Ordering::SeqCst);
                Ok(Conn(counted.clone(), second))
            }
        })
        .unwrap();
    cut.store(true, Ordering::SeqCst);
    let replaced = eventually(Duration::from_secs(3), || {
        let stats = pool.stats();
        pool.stats().failed_checks >= 1
            && stats.free == 2
            && stats.size == 2
            && alive.load(Ordering::SeqCst) == 2
    });
    let stats = pool.stats();
    let both = within(Duration::from_secs(2), {
        let pool = pool.clone();
        move || {
            let a = pool.checkout_timeout(Duration::from_millis(500));
            let b = pool.checkout_timeout(Duration::from_millis(500));
            (a.is_ok(), b.is_ok())
        }
    });
    assert!(
        replaced && both == Some((true, true)),
        "stats {stats:?}, workers alive {}, two checkouts at once: {both:?}",
        alive.load(Ordering::SeqCst)
    );
}

/// Found. A `Factory` supervisor whose one slot's start keeps failing (with an error whose
/// `Display` panics), the other two starting fine: `Factory::list` (src/balancer/supervisor.rs)
/// logs the first error with `log::warn!` once the live workers are in their slots; the panic
/// unwinds out of `children()`, which the balancer's reload contains and takes for "the set
/// is gone". Documented: "only when no worker at all is running is the failure returned".
/// Expected: the balancer serves the two live workers. Actual: `Disconnected` at every reload,
/// for as long as the one slot fails.
#[test]
fn a_factory_with_one_failing_slot_whose_error_display_panics_still_lists_its_live_workers() {
    use cylinder::{Balancer, Factory, Worker};
    logging();
    struct Node;
    impl Worker for Node {}
    let made = AtomicUsize::new(0);
    let factory = Factory::new(3, move || -> Result<Node, BoxError> {
        // The first two start; every start after them (the third slot's, again and again)
        // fails.
        if made.fetch_add(1, Ordering::SeqCst) >= 2 {
            Err(Box::new(LoudError))
        } else {
            Ok(Node)
        }
    });
    let balancer = Balancer::builder()
        .reconnect_delay(Duration::from_millis(20))
        .build_with(factory)
        .unwrap();
    let served = eventually(Duration::from_secs(2), || balancer.get().is_ok());
    assert!(
        served,
        "no worker served: {:?}",
        balancer.get().map(|_| ()).unwrap_err()
    );
}

/// Found. The plain balancer: a supervisor that listed live children, then (every child
/// dead) fails with an error whose `Display` panics. A `get` that finds the whole set dead
/// reloads on the caller's thread (`reload_all_dead`); the reload's `disconnect`
/// (src/balancer/set.rs) logs the supervisor's error with `log::error!` outside `contain`
/// (the supervisor's call itself was contained), and the panic unwinds out of `get()` into a
/// client that only asked for a worker. Expected (documented): `Err(Error::Disconnected)`
/// with the supervisor's error as cause.
#[test]
fn a_get_reloading_a_dead_set_whose_supervisor_error_display_panics_returns_disconnected() {
    use cylinder::{Balancer, Worker};
    use std::sync::atomic::AtomicBool;
    logging();
    struct Node(Arc<AtomicBool>);
    impl Worker for Node {
        fn is_alive(&self) -> bool {
            self.0.load(Ordering::SeqCst)
        }
    }
    let up = Arc::new(AtomicBool::new(true));
    let nodes = vec![Arc::new(Node(up.clone())), Arc::new(Node(up.clone()))];
    let listing = up.clone();
    let balancer = Balancer::builder()
        .reconnect_delay(Duration::from_millis(10))
        .build_with(move || -> Result<Vec<Arc<Node>>, BoxError> {
            if listing.load(Ordering::SeqCst) {
                Ok(nodes.clone())
            } else {
                Err(Box::new(LoudError))
            }
        })
        .unwrap();
    assert!(balancer.get().is_ok());
    up.store(false, Ordering::SeqCst); // every child dies, the supervisor fails
    let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| balancer.get().map(|_| ())));
    match got {
        Ok(Err(Error::Disconnected { .. })) => {}
        Ok(other) => panic!("expected Disconnected, got {other:?}"),
        Err(_) => panic!("get() panicked into its caller (the supervisor's error Display, logged)"),
    }
}

/// Tried (control for the `Display` findings above): the same `reset` failure with an
/// ordinary error is logged, the worker retired and replaced, and nothing reaches the client.
#[test]
fn a_reset_error_with_an_ordinary_display_is_replaced_as_documented() {
    logging();
    let pool = Pool::builder()
        .size(1)
        .checkout_timeout(Duration::from_millis(500))
        .reset(|_: &mut u32| -> Result<(), BoxError> { Err("rollback failed".into()) })
        .build(|| Ok(7u32))
        .unwrap();
    drop(pool.checkout().unwrap());
    assert!(eventually(Duration::from_secs(3), || {
        let stats = pool.stats();
        stats.size == 1 && stats.free == 1 && stats.starting == 0
    }));
    assert_eq!(*pool.checkout().unwrap(), 7);
}

/// Tried. A `Manager` (the trait, not a start closure) whose every hook fails in turn (a
/// `check` error, an `is_broken` panic, a `reset` error, `is_alive` false), with a builder
/// `on_start` and `test_on_checkout` run after the manager's own: each failure retires the
/// worker and the pool replaces it; when quiet, `free + leased == size` and every worker the
/// manager made and the pool still counts is alive.
#[test]
fn a_manager_whose_hooks_fail_one_after_another_loses_no_worker() {
    use cylinder::Manager;
    use std::sync::atomic::AtomicU64;
    logging();
    struct Conn {
        id: u64,
        live: Arc<AtomicUsize>,
    }
    impl Drop for Conn {
        fn drop(&mut self) {
            self.live.fetch_sub(1, Ordering::SeqCst);
        }
    }
    struct Flaky {
        next: AtomicU64,
        live: Arc<AtomicUsize>,
    }
    impl Manager for Flaky {
        type Worker = Conn;
        fn start(&self) -> Result<Conn, BoxError> {
            self.live.fetch_add(1, Ordering::SeqCst);
            let id = self.next.fetch_add(1, Ordering::SeqCst);
            Ok(Conn {
                id,
                live: self.live.clone(),
            })
        }
        fn check(&self, conn: &mut Conn) -> Result<(), BoxError> {
            if conn.id % 5 == 1 {
                Err("check failed".into())
            } else {
                Ok(())
            }
        }
        fn is_broken(&self, conn: &mut Conn) -> bool {
            if conn.id % 5 == 2 {
                panic!("on purpose: is_broken panics");
            }
            false
        }
        fn reset(&self, conn: &mut Conn) -> Result<(), BoxError> {
            if conn.id % 5 == 3 {
                Err("reset failed".into())
            } else {
                Ok(())
            }
        }
        fn is_alive(&self, conn: &Conn) -> bool {
            conn.id % 5 != 4 || conn.id > 40
        }
    }
    let live = Arc::new(AtomicUsize::new(0));
    let pool = Pool::builder()
        .size(3)
        .check_after_idle(Duration::ZERO)
        .reconnect_delay(Duration::from_millis(10))
        .on_start(|_: &mut Conn| -> Result<(), BoxError> { Ok(()) })
        .test_on_checkout(|_: &mut Conn| true)
        .build_unchecked_with(Flaky {
            next: AtomicU64::new(0),
            live: live.clone(),
        })
        .unwrap();
    let mut served = 0;
    let deadline = Instant::now() + Duration::from_secs(3);
    while served < 60 && Instant::now() < deadline {
        if let Ok(lease) = pool.checkout_timeout(Duration::from_millis(500)) {
            served += 1;
            drop(lease);
        }
    }
    assert!(
        served >= 30,
        "only {served} leases in 3 s: {:?}",
        pool.stats()
    );
    common::settles(&pool, &live, 3, "a flaky manager");
}

/// Tried. An `on_start` hook that panics under a `try_checkout`'s own start (the pool at its
/// size, `max_overflow(1)`): the caller gets an error at once (not a panic), the claim and
/// `callers_starts` are given back (the pool settles at its size), and the next
/// `try_checkout` after the backoff opens the overflow worker once `on_start` passes.
#[test]
fn an_on_start_panic_under_a_try_checkouts_own_start_leaks_no_claim() {
    use std::sync::atomic::AtomicBool;
    logging();
    let refuse = Arc::new(AtomicBool::new(false));
    let refusing = refuse.clone();
    let pool = Pool::builder()
        .size(1)
        .max_overflow(1)
        .reconnect_delay(Duration::from_millis(20))
        .on_start(move |_: &mut u32| -> Result<(), BoxError> {
            if refusing.load(Ordering::SeqCst) {
                panic!("on purpose: on_start panics");
            }
            Ok(())
        })
        .build(|| Ok(1u32))
        .unwrap();
    let held = pool.try_checkout().unwrap();
    refuse.store(true, Ordering::SeqCst);
    let own = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pool.try_checkout().map(|_| ())
    }));
    assert!(
        matches!(own, Ok(Err(_))),
        "{:?}",
        own.map(|r| r.map_err(|e| e.to_string()))
    );
    let stats = pool.stats();
    assert_eq!(
        (stats.size, stats.starting, stats.leased),
        (1, 0, 1),
        "{stats:?}"
    );
    refuse.store(false, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(40));
    let overflow = pool.try_checkout();
    assert!(overflow.is_ok(), "{:?}", overflow.map(|_| ()));
    drop((held, overflow));
    assert!(
        eventually(Duration::from_secs(2), || {
            let stats = pool.stats();
            stats.size == 1 && stats.free == 1
        }),
        "{:?}",
        pool.stats()
    );
}

/// Tried. The actor: four threads calling (inline and handed off) and casting in a storm
/// while a fifth calls `stop`: `stop` returns, every call is answered (its reply or
/// `WorkerDied`, never a hang), the actor is dead after, and every call answered `Ok` was
/// handled once. (A cast accepted after the stop was posted, before the thread reached it,
/// is dropped unhandled: `cast` promises delivery to the mailbox only, and `stop` handles
/// what was in it before the stop; seen about one run in three, not counted as a bug.)
#[test]
fn stop_racing_a_storm_of_calls_and_casts_answers_every_call() {
    use cylinder::{Actor, Behaviour};
    logging();
    struct Count(Arc<AtomicUsize>);
    impl Behaviour for Count {
        type Request = u32;
        type Reply = u32;
        fn handle_call(&mut self, x: u32) -> u32 {
            self.0.fetch_add(1, Ordering::SeqCst);
            x
        }
    }
    let handled = Arc::new(AtomicUsize::new(0));
    let actor = Arc::new(Actor::spawn(Count(handled.clone())).unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let done = within(Duration::from_secs(10), {
        let (actor, accepted) = (actor.clone(), accepted.clone());
        move || {
            let clients: Vec<_> = (0..4)
                .map(|t| {
                    let (actor, accepted) = (actor.clone(), accepted.clone());
                    std::thread::spawn(move || {
                        for i in 0..2000u32 {
                            let answer = if i % 3 == 0 {
                                actor.cast(i).map(|()| i)
                            } else if i % 3 == 1 {
                                actor.call(i)
                            } else {
                                actor.call_timeout(i, Duration::from_secs(5))
                            };
                            match answer {
                                Ok(got) => {
                                    assert_eq!(got, i, "thread {t}");
                                    accepted.fetch_add(1, Ordering::SeqCst);
                                }
                                Err(Error::WorkerDied) => {}
                                Err(other) => panic!("thread {t}: {other:?}"),
                            }
                        }
                    })
                })
                .collect();
            std::thread::sleep(Duration::from_millis(5));
            actor.stop();
            for client in clients {
                client.join().unwrap();
            }
        }
    });
    assert!(done.is_some(), "a call or stop hung");
    assert!(!actor.is_alive());
    let (handled, accepted) = (
        handled.load(Ordering::SeqCst),
        accepted.load(Ordering::SeqCst),
    );
    assert!(
        handled <= accepted,
        "handled {handled} of {accepted} accepted"
    );
}
