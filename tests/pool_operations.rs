//! What an operator reaches for: errors that say what the pool looked like, slow-lease
//! reports that name where the lease was taken, lifetimes that expire over a spread, checks
//! skipped for workers used a moment ago, keepalive, `evict_all`, `drain`, `on_start`.

mod common;

use std::error::Error as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{eventually, quiet_panics, within};
use cylinder::{BoxError, Error, Event, Lease, Manager, Pool, PoolState};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Events seen by `on_event`, with when they came.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(Instant, Event)>>>);

impl Seen {
    fn hook(&self) -> impl Fn(&Event) + Send + Sync + 'static {
        let seen = self.0.clone();
        move |event| seen.lock().unwrap().push((Instant::now(), event.clone()))
    }

    fn count(&self, wanted: &Event) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, e)| e == wanted)
            .count()
    }

    fn times(&self, wanted: &Event) -> Vec<Instant> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, e)| e == wanted)
            .map(|(at, _)| *at)
            .collect()
    }
}

#[test]
fn a_timeout_names_the_pools_state_in_one_line() {
    let pool = Pool::builder().size(2).build(|| Ok(())).unwrap();
    let _a = pool.checkout().unwrap();
    let _b = pool.checkout().unwrap();
    let waiter = {
        let pool = pool.clone();
        // Still in line when the checkout below times out, however late that is: it is
        // served by the release at the end.
        thread::spawn(move || pool.checkout_timeout(Duration::from_secs(30)).map(drop))
    };
    assert!(eventually(Duration::from_secs(5), || pool.stats().waiters == 1));
    let err = pool.checkout_timeout(ms(50)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no worker came free within 50ms (size 2, leased 2, idle 0, waiting 1, starting 0)"
    );
    let state: &PoolState = err.state().unwrap();
    assert_eq!(
        (
            state.size,
            state.leased,
            state.idle,
            state.waiting,
            state.starting
        ),
        (2, 2, 0, 1, 0)
    );
    // No start ever failed: no cause.
    assert!(err.source().is_none());
    drop(_a);
    assert!(waiter.join().unwrap().is_ok());
}

#[test]
fn a_timeout_after_a_failed_start_carries_that_starts_error() {
    let fail = Arc::new(AtomicBool::new(false));
    let f = fail.clone();
    let pool = Pool::builder()
        .size(2)
        .reconnect_delay(ms(20))
        .build(move || {
            if f.load(Ordering::SeqCst) {
                Err(BoxError::from("too many connections"))
            } else {
                Ok(())
            }
        })
        .unwrap();
    let held = pool.checkout().unwrap();
    fail.store(true, Ordering::SeqCst);
    // The other worker goes; its replacement fails (the server refuses more connections),
    // while one worker stays open: busy, not down.
    Lease::discard(pool.checkout().unwrap());
    assert!(eventually(Duration::from_secs(5), || pool.stats().restarts
        == 0
        && pool.stats().starting == 0
        && pool.stats().size == 1));
    let err = pool.checkout_timeout(ms(30)).unwrap_err();
    match &err {
        Error::Timeout { cause, state, .. } => {
            assert_eq!(cause.as_ref().unwrap().to_string(), "too many connections");
            assert_eq!(state.unwrap().leased, 1);
        }
        Error::Disconnected { .. } => panic!("one worker is open: {err}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(err.source().unwrap().to_string(), "too many connections");
    drop(held);
}

#[test]
fn disconnected_carries_the_state_and_the_cause() {
    let pool = Pool::<u8>::builder()
        .size(3)
        .build_unchecked(|| Err("connection refused".into()))
        .unwrap();
    let err = pool.try_checkout().unwrap_err();
    assert!(matches!(err, Error::Disconnected { .. }), "{err:?}");
    assert_eq!(err.state().unwrap().size, 0);
    assert!(err
        .to_string()
        .starts_with("disconnected: no worker is running (size 0, leased 0, idle 0"));
    assert_eq!(err.source().unwrap().to_string(), "connection refused");
}

/// The slow-lease report (event and log line) names the file and line of the checkout.
#[test]
fn a_slow_lease_report_names_where_the_lease_was_taken() {
    let sites = Arc::new(Mutex::new(Vec::new()));
    let s = sites.clone();
    let pool = Pool::builder()
        .size(4)
        .warn_after(ms(20))
        .on_event(move |event| {
            if let Event::SlowLease { taken_at, held } = event {
                assert!(*held >= ms(20));
                s.lock().unwrap().push((taken_at.file(), taken_at.line()));
            }
        })
        .build(|| Ok(()))
        .unwrap();
    let mut lines = Vec::new();
    {
        lines.push(line!() + 1);
        let _a = pool.checkout().unwrap();
        lines.push(line!() + 1);
        let _b = pool.try_checkout().unwrap();
        lines.push(line!() + 1);
        let _c = pool.checkout_owned().unwrap();
        // Held until all four are reported (the reaper reports every 10 ms, but may be late
        // on a loaded machine: a lease given back first would never be reported).
        let all_four = || sites.lock().unwrap().len() == 4;
        lines.push(line!() + 1);
        let reported = pool.transaction(|()| eventually(Duration::from_secs(5), all_four));
        let reported = reported.unwrap();
        assert!(reported, "{:?}", sites.lock().unwrap());
    }
    let mut seen: Vec<u32> = sites
        .lock()
        .unwrap()
        .iter()
        .map(|(file, line)| {
            assert!(file.ends_with("pool_operations.rs"), "{file}");
            *line
        })
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, lines);
}

/// HikariCP's variance: a pool of 100 workers started together expires over a spread (up to
/// 2.5 % of `max_lifetime`), never before its lifetime less 2.5 %, and each idle worker
/// within a few milliseconds of its own expiry, not at the next regular sweep.
#[test]
fn workers_started_together_expire_over_a_spread_each_close_to_its_own_expiry() {
    const LIFETIME: Duration = Duration::from_millis(2000);
    let seen = Seen::default();
    let built = Instant::now();
    let pool = Pool::builder()
        .size(100)
        .max_lifetime(LIFETIME)
        .on_event(seen.hook())
        .build(|| Ok(()))
        .unwrap();
    let ready = built.elapsed();
    assert!(eventually(Duration::from_secs(6), || seen
        .count(&Event::WorkerExpired)
        >= 100));
    let expired = seen.times(&Event::WorkerExpired);
    let first = expired.iter().min().unwrap().duration_since(built);
    let last = expired[..100].iter().max().unwrap().duration_since(built);
    // A sweep every 500 ms would close them all at once, at 2 s or 2.5 s.
    assert!(
        first >= LIFETIME.mul_f64(0.975) - ms(1),
        "one expired at {first:?}, before its lifetime less 2.5 %"
    );
    // Close to its expiry: well before the next regular sweep (LIFETIME / 4 = 500 ms later),
    // with room for a reaper that a loaded machine wakes late.
    assert!(
        last <= LIFETIME + ready + ms(250),
        "the last expired at {last:?}: not close to its expiry"
    );
    assert!(
        last - first >= ms(15),
        "100 workers expired within {:?} of each other: no spread",
        last - first
    );
    drop(pool);
}

fn counting_check(checks: &Arc<AtomicUsize>) -> impl Fn(&mut ()) -> bool + Send + Sync {
    let checks = checks.clone();
    move |_| {
        checks.fetch_add(1, Ordering::SeqCst);
        true
    }
}

#[test]
fn check_after_idle_skips_the_check_for_a_worker_used_a_moment_ago() {
    let checks = Arc::new(AtomicUsize::new(0));
    let pool = Pool::builder()
        .size(1)
        // Long enough that no pause of a loaded machine between two checkouts below reaches
        // it.
        .check_after_idle(ms(500))
        .test_on_checkout(counting_check(&checks))
        .build(|| Ok(()))
        .unwrap();
    assert_eq!(checks.load(Ordering::SeqCst), 1, "checked at its start");
    for _ in 0..20 {
        drop(pool.checkout().unwrap());
    }
    assert_eq!(
        checks.load(Ordering::SeqCst),
        1,
        "used a moment ago: not checked"
    );
    thread::sleep(ms(600));
    drop(pool.checkout().unwrap());
    assert_eq!(
        checks.load(Ordering::SeqCst),
        2,
        "idle past the window: checked"
    );
    drop(pool.checkout().unwrap());
    assert_eq!(checks.load(Ordering::SeqCst), 2);
}

#[test]
fn check_after_idle_zero_checks_before_every_lease() {
    let checks = Arc::new(AtomicUsize::new(0));
    let pool = Pool::builder()
        .size(1)
        .check_after_idle(Duration::ZERO)
        .test_on_checkout(counting_check(&checks))
        .build(|| Ok(()))
        .unwrap();
    for _ in 0..5 {
        drop(pool.checkout().unwrap());
    }
    assert_eq!(checks.load(Ordering::SeqCst), 6);
}

/// A connection with a switch the "server" can cut.
struct Conn {
    open: Arc<AtomicBool>,
}

/// A pool of `size` connections whose switches are kept in `opened`.
fn cuttable(opened: &Arc<Mutex<Vec<Arc<AtomicBool>>>>) -> impl Fn() -> Result<Conn, BoxError> {
    let opened = opened.clone();
    move || {
        let open = Arc::new(AtomicBool::new(true));
        opened.lock().unwrap().push(open.clone());
        Ok(Conn { open })
    }
}

/// Every connection idle overnight was cut by a firewall: the reaper's keepalive checks find
/// them and replace them before any client meets one.
#[test]
fn keepalive_replaces_connections_cut_while_idle_before_a_client_meets_them() {
    let opened = Arc::new(Mutex::new(Vec::new()));
    let client_saw_dead = Arc::new(AtomicUsize::new(0));
    let c = client_saw_dead.clone();
    let pool = Pool::builder()
        .size(3)
        .keepalive(ms(40))
        .test_on_checkout(move |conn: &mut Conn| {
            let open = conn.open.load(Ordering::SeqCst);
            let on_reaper = thread::current()
                .name()
                .is_some_and(|name| name.starts_with("cylinder-reaper"));
            if !open && !on_reaper {
                c.fetch_add(1, Ordering::SeqCst);
            }
            open
        })
        .build(cuttable(&opened))
        .unwrap();
    for open in opened.lock().unwrap().iter() {
        open.store(false, Ordering::SeqCst);
    }
    assert!(eventually(Duration::from_secs(5), || {
        let stats = pool.stats();
        stats.failed_checks >= 3 && stats.free == 3
    }));
    for _ in 0..10 {
        let lease = pool.checkout().unwrap();
        assert!(lease.open.load(Ordering::SeqCst));
    }
    assert_eq!(client_saw_dead.load(Ordering::SeqCst), 0);
    assert_eq!(opened.lock().unwrap().len(), 6);
}

#[test]
fn keepalive_leaves_leased_and_recently_used_workers_alone() {
    let checks = Arc::new(AtomicUsize::new(0));
    let pool = Pool::builder()
        .size(2)
        // Far above the few ms between two uses below, so that a loaded machine's pauses never
        // leave the free worker unused that long; the held one stays leased for three times
        // as long, through about a dozen sweeps.
        .keepalive(ms(300))
        .test_on_checkout(counting_check(&checks))
        .build(|| Ok(()))
        .unwrap();
    let held = pool.checkout().unwrap();
    let began = Instant::now();
    while began.elapsed() < ms(900) {
        // The free worker is used every few ms: never unused for 300 ms.
        drop(pool.checkout_timeout(ms(100)).unwrap());
        thread::sleep(ms(3));
    }
    // Two at the starts, none by keepalive (checkout checks are skipped: used recently).
    assert_eq!(checks.load(Ordering::SeqCst), 2);
    drop(held);
}

#[test]
fn keepalive_without_a_check_is_a_configuration_error() {
    let err = Pool::builder()
        .size(1)
        .keepalive(ms(10))
        .build(|| Ok(()))
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidConfig {
                option: "keepalive",
                ..
            }
        ),
        "{err}"
    );
    let zero = Pool::builder()
        .size(1)
        .keepalive(Duration::ZERO)
        .test_on_checkout(|_: &mut ()| true)
        .build(|| Ok(()))
        .unwrap_err();
    assert!(matches!(
        zero,
        Error::InvalidConfig {
            option: "keepalive",
            ..
        }
    ));
}

/// After a credential rotation: every worker is replaced, idle ones at once, the leased one
/// when it comes back; the lease is not revoked.
#[test]
fn evict_all_replaces_idle_workers_now_and_leased_ones_on_return() {
    let generation = Arc::new(AtomicUsize::new(1));
    let g = generation.clone();
    let seen = Seen::default();
    let pool = Pool::builder()
        .size(3)
        .on_event(seen.hook())
        .build(move || Ok(g.load(Ordering::SeqCst)))
        .unwrap();
    let held = pool.checkout().unwrap();
    generation.store(2, Ordering::SeqCst);
    pool.evict_all();
    assert_eq!(
        seen.count(&Event::WorkerEvicted),
        2,
        "the idle ones, at once"
    );
    assert_eq!(*held, 1);
    drop(held);
    assert_eq!(seen.count(&Event::WorkerEvicted), 3);
    assert!(eventually(Duration::from_secs(5), || pool.stats().free == 3));
    let all: Vec<_> = (0..3).map(|_| pool.checkout().unwrap()).collect();
    assert!(all.iter().all(|conn| **conn == 2));
    drop(all);
    let stats = pool.stats();
    assert_eq!((stats.size, stats.free, stats.leased), (3, 3, 0));
}

/// A start under way when `evict_all` is called may have used the old credentials: its
/// worker is evicted too.
#[test]
fn evict_all_also_replaces_a_worker_whose_start_was_under_way() {
    let generation = Arc::new(AtomicUsize::new(1));
    let (started, go) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let (g, s, r) = (generation.clone(), started.clone(), go.clone());
    let pool = Pool::builder()
        .size(1)
        .build_unchecked(move || {
            let credentials = g.load(Ordering::SeqCst);
            s.store(true, Ordering::SeqCst);
            while !r.load(Ordering::SeqCst) {
                thread::sleep(ms(1));
            }
            Ok(credentials)
        })
        .unwrap();
    assert!(eventually(Duration::from_secs(5), || started.load(Ordering::SeqCst)));
    generation.store(2, Ordering::SeqCst);
    pool.evict_all();
    go.store(true, Ordering::SeqCst);
    assert_eq!(*pool.checkout().unwrap(), 2);
}

#[test]
fn drain_lets_running_work_finish_and_wakes_waiters_with_closed() {
    let pool = Pool::builder().size(1).build(|| Ok(0u32)).unwrap();
    let mut lease = pool.checkout_owned().unwrap();
    let waiter = {
        let pool = pool.clone();
        thread::spawn(move || pool.checkout_timeout(Duration::from_secs(10)).map(drop))
    };
    assert!(eventually(Duration::from_secs(5), || pool.stats().waiters == 1));
    // Before the spawn: the work may begin its 100 ms before this thread goes on.
    let began = Instant::now();
    let work = thread::spawn(move || {
        thread::sleep(ms(100));
        *lease += 1;
        drop(lease);
    });
    pool.drain(Duration::from_secs(10)).unwrap();
    assert!(
        began.elapsed() >= ms(90),
        "drain returned before the lease ended"
    );
    assert!(matches!(waiter.join().unwrap(), Err(Error::Closed)));
    assert!(matches!(pool.checkout(), Err(Error::Closed)));
    assert_eq!(pool.stats().size, 0);
    work.join().unwrap();
}

#[test]
fn drain_that_times_out_says_so_and_the_late_lease_is_dropped_on_return() {
    let dropped = Arc::new(AtomicUsize::new(0));
    struct Counted(Arc<AtomicUsize>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let d = dropped.clone();
    let pool = Pool::builder()
        .size(2)
        .build(move || Ok(Counted(d.clone())))
        .unwrap();
    let lease = pool.checkout_owned().unwrap();
    let err = pool.drain(ms(30)).unwrap_err();
    match &err {
        Error::Timeout { state, .. } => assert_eq!(state.unwrap().leased, 1),
        other => panic!("{other:?}"),
    }
    assert_eq!(dropped.load(Ordering::SeqCst), 1, "the free one");
    drop(lease);
    assert_eq!(dropped.load(Ordering::SeqCst), 2);
    assert_eq!(pool.stats().size, 0);
}

#[test]
fn on_start_runs_on_every_new_worker_before_it_joins() {
    let pool = Pool::builder()
        .size(2)
        .on_start(|conn: &mut Vec<&'static str>| -> Result<(), BoxError> {
            conn.push("PRAGMA busy_timeout = 5000");
            Ok(())
        })
        .build(|| Ok(Vec::new()))
        .unwrap();
    Lease::discard(pool.checkout().unwrap());
    for _ in 0..3 {
        let both: Vec<_> = (0..2).map(|_| pool.checkout().unwrap()).collect();
        assert!(both
            .iter()
            .all(|conn| **conn == ["PRAGMA busy_timeout = 5000"]));
    }
}

#[test]
fn an_on_start_that_fails_or_panics_is_a_failed_start_with_its_cause() {
    quiet_panics();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let dropped = Arc::new(AtomicUsize::new(0));
    struct Conn(Arc<AtomicUsize>);
    impl Drop for Conn {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let d = dropped.clone();
    let failed = Arc::new(AtomicUsize::new(0));
    let f = failed.clone();
    // Long enough that the first checkout comes within the backoff of the first failure,
    // however slow the machine (at 20 ms a loaded CI machine let it try the second start).
    let pool = Pool::builder()
        .size(1)
        .reconnect_delay(ms(300))
        .on_event(move |event| {
            if *event == Event::StartFailed {
                f.fetch_add(1, Ordering::SeqCst);
            }
        })
        .on_start(move |_: &mut Conn| -> Result<(), BoxError> {
            match c.fetch_add(1, Ordering::SeqCst) {
                0 => Err("permission denied for schema app".into()),
                1 => panic!("customizer crashed"),
                _ => Ok(()),
            }
        })
        .build_unchecked(move || Ok(Conn(d.clone())))
        .unwrap();
    // The first start's failure recorded first: a `try_checkout` that came while it was being
    // recorded (its claim given back, the pool not yet failing) would open a start of its own.
    assert!(eventually(Duration::from_secs(5), || failed
        .load(Ordering::SeqCst)
        == 1));
    let err = pool.try_checkout().map(drop).unwrap_err();
    assert!(matches!(err, Error::Disconnected { .. }), "{err:?}");
    assert_eq!(
        err.source().unwrap().to_string(),
        "permission denied for schema app"
    );
    // A blocking checkout waits for the next attempt and leaves with its cause; the one
    // after that gets the worker of the third.
    let got = within(Duration::from_secs(5), move || {
        let second = pool.checkout_timeout(Duration::from_secs(2)).map(drop);
        (
            second,
            pool.checkout_timeout(Duration::from_secs(2)).map(drop),
        )
    })
    .expect("the checkouts returned");
    let second = got.0.unwrap_err();
    assert_eq!(
        second.source().unwrap().to_string(),
        "panicked: customizer crashed"
    );
    assert!(got.1.is_ok(), "{:?}", got.1);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    // The two refused, and the one the pool had (dropped with it).
    assert_eq!(dropped.load(Ordering::SeqCst), 3);
}

/// A manager from another crate, with a connection customizer and a check of our own: the
/// builder's hooks run after the manager's, never silently ignored.
#[test]
fn builder_hooks_compose_with_a_managers_own() {
    #[derive(Default)]
    struct Log(Arc<Mutex<Vec<&'static str>>>);
    struct Connector(Arc<Mutex<Vec<&'static str>>>);
    impl Manager for Connector {
        type Worker = Log;
        fn start(&self) -> Result<Log, BoxError> {
            self.0.lock().unwrap().push("manager start");
            Ok(Log(self.0.clone()))
        }
        fn check(&self, _: &mut Log) -> Result<(), BoxError> {
            self.0.lock().unwrap().push("manager check");
            Ok(())
        }
        fn reset(&self, _: &mut Log) -> Result<(), BoxError> {
            self.0.lock().unwrap().push("manager reset");
            Ok(())
        }
        fn is_broken(&self, _: &mut Log) -> bool {
            false
        }
    }
    let log = Arc::new(Mutex::new(Vec::new()));
    let pool = Pool::builder()
        .size(1)
        .check_after_idle(Duration::ZERO)
        .on_start(|conn: &mut Log| -> Result<(), BoxError> {
            conn.0.lock().unwrap().push("on_start");
            Ok(())
        })
        .test_on_checkout(|conn: &mut Log| {
            conn.0.lock().unwrap().push("our check");
            true
        })
        .reset(|conn: &mut Log| -> Result<(), BoxError> {
            conn.0.lock().unwrap().push("our reset");
            Ok(())
        })
        .is_broken(|_: &mut Log| true) // our own verdict: every return is broken
        .build_with(Connector(log.clone()))
        .unwrap();
    drop(pool.checkout().unwrap());
    assert!(eventually(Duration::from_secs(5), || log
        .lock()
        .unwrap()
        .len()
        >= 8));
    let seen = log.lock().unwrap().clone();
    assert_eq!(
        seen[..8],
        [
            "manager start",
            "on_start",
            "manager check",
            "our check",
            "manager check",
            "our check",
            // returned: ours said broken, so the worker is replaced...
            "manager start",
            "on_start",
        ],
        "{seen:?}"
    );
    assert_eq!(pool.stats().discards, 1);
}
