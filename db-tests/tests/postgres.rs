//! A pool of PostgreSQL clients (the synchronous `postgres` crate) against a real server.
//!
//! Runs when `CYLINDER_POSTGRES_URL` is set (`.ci/postgres.sh` starts a throw-away server and
//! sets it); fails when `CI=true` and it is not; otherwise each test prints a note and passes.
//! The test that stops and restarts the server also needs `CYLINDER_POSTGRES_CTL`, an
//! executable taking `stop` or `start` (`.ci/postgres.sh` makes one).
//!
//! Each test uses its own table and `application_name`, so they run side by side; the one
//! that stops the server holds a write lock that the others hold for reading.

mod common;

use common::{chain, ctl, in_ci};
use std::collections::HashSet;
use std::error::Error as _;
use std::process::Command;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use cylinder::{Error, Pool};
use postgres::{Client, Config, NoTls};

const THREADS: usize = 8;

/// Held for reading by every test, for writing by the one that stops the server.
static SERVER: RwLock<()> = RwLock::new(());

/// The server's URL, or `None` (with a note) when the tests should not run.
fn url(test: &str) -> Option<String> {
    match std::env::var("CYLINDER_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if in_ci() => panic!(
            "CI=true but CYLINDER_POSTGRES_URL is not set: .ci/run starts a server with \
             .ci/postgres.sh and exports it; set it to postgres://USER@HOST:PORT/DB"
        ),
        _ => {
            eprintln!(
                "{test}: skipped: set CYLINDER_POSTGRES_URL=postgres://USER@HOST:PORT/DB to run \
                 the PostgreSQL tests (or see .ci/postgres.sh)"
            );
            None
        }
    }
}

/// The URL's configuration, with an `application_name` that marks this test's connections.
fn config(url: &str, app: &str) -> Config {
    let mut config = Config::from_str(url).expect("CYLINDER_POSTGRES_URL is not a valid URL");
    config
        .application_name(app)
        .connect_timeout(Duration::from_secs(5));
    config
}

/// A client outside any pool.
fn plain(url: &str) -> Client {
    config(url, "cylinder-test-admin")
        .connect(NoTls)
        .expect("connect to CYLINDER_POSTGRES_URL")
}

/// A fresh table `name (id serial, thread int)`.
fn table(url: &str, name: &str) {
    plain(url)
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {name}; CREATE TABLE {name} (id serial PRIMARY KEY, thread int NOT NULL)"
        ))
        .expect("create the table");
}

fn count(url: &str, name: &str) -> u64 {
    let n: i64 = plain(url)
        .query_one(&format!("SELECT count(*) FROM {name}"), &[])
        .expect("count the rows")
        .get(0);
    n as u64
}

/// One insert in a transaction, on a leased client.
fn insert(client: &mut Client, name: &str, thread: usize) -> Result<(), postgres::Error> {
    let mut tx = client.transaction()?;
    tx.execute(
        &format!("INSERT INTO {name} (thread) VALUES ($1)"),
        &[&(thread as i32)],
    )?;
    tx.commit()
}

/// The check the pool runs before each lease.
fn select_1(client: &mut Client) -> Result<(), postgres::Error> {
    client.simple_query("SELECT 1").map(|_| ())
}

fn backend_pid(client: &mut Client) -> Result<i32, postgres::Error> {
    Ok(client.query_one("SELECT pg_backend_pid()", &[])?.get(0))
}

/// The pids of the server's backends whose `application_name` is `app`.
fn backends(admin: &mut Client, app: &str) -> Vec<i32> {
    admin
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .expect("list the backends")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// 8 threads, each committing one-row transactions through `pool.transaction` for `run_for`;
/// returns the rows they committed.
fn transactions(pool: &Pool<Client>, name: &str, run_for: Duration) -> u64 {
    let committed = AtomicU64::new(0);
    let deadline = Instant::now() + run_for;
    thread::scope(|s| {
        for t in 0..THREADS {
            let (pool, committed) = (pool.clone(), &committed);
            s.spawn(move || {
                while Instant::now() < deadline {
                    match pool.transaction(|client: &mut Client| insert(client, name, t)) {
                        Ok(Ok(())) => {
                            committed.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Err(e)) => panic!("thread {t}: transaction failed: {e}"),
                        Err(e) => panic!("thread {t}: checkout failed: {}", chain(&e)),
                    }
                }
            });
        }
    });
    committed.into_inner()
}

#[test]
fn transactions_from_8_threads() {
    let Some(url) = url("transactions_from_8_threads") else {
        return;
    };
    let _server = SERVER.read().unwrap_or_else(|e| e.into_inner());
    table(&url, "cylinder_tx");
    let config = config(&url, "cylinder-test-tx");
    let pool = Pool::builder()
        .size(4) // fewer clients than threads: checkouts wait their turn
        .checkout_timeout(Duration::from_secs(10))
        .build(move || Ok(config.connect(NoTls)?))
        .expect("build the pool");

    let committed = transactions(&pool, "cylinder_tx", Duration::from_millis(1500));
    println!("{committed} transactions committed by {THREADS} threads over 4 clients");
    assert!(committed > 0);
    assert_eq!(count(&url, "cylinder_tx"), committed);
    let stats = pool.stats();
    assert_eq!(stats.size, 4);
    assert_eq!(stats.restarts, 0);
}

#[test]
fn killed_idle_backends_are_replaced() {
    let Some(url) = url("killed_idle_backends_are_replaced") else {
        return;
    };
    let _server = SERVER.read().unwrap_or_else(|e| e.into_inner());
    const SIZE: usize = 8;
    const PHASES: usize = 5;
    const APP: &str = "cylinder-test-kill";
    table(&url, "cylinder_kill");
    let starts = Arc::new(AtomicU64::new(0));
    let pool = {
        let (config, starts) = (config(&url, APP), starts.clone());
        Pool::builder()
            .size(SIZE)
            .checkout_timeout(Duration::from_secs(10))
            .reconnect_delay(Duration::from_millis(100))
            // Checked before every lease: the clients were used a moment before the kills,
            // within the default `check_after_idle` window.
            .check_after_idle(Duration::ZERO)
            .test_on_checkout(|client: &mut Client| select_1(client))
            .build(move || {
                starts.fetch_add(1, Ordering::SeqCst);
                Ok(config.connect(NoTls)?)
            })
            .expect("build the pool")
    };
    let mut admin = plain(&url);

    // The workers run in phases; between two phases every client is idle in the pool, and
    // the killer terminates some of their backends (and waits until they are gone). A killed
    // client must never reach a worker: the check on checkout retires it.
    let committed = AtomicU64::new(0);
    let errors = AtomicU64::new(0);
    let pause = Barrier::new(THREADS + 1);
    let mut killed = HashSet::new();
    thread::scope(|s| {
        for t in 0..THREADS {
            let (pool, committed, errors, pause) = (pool.clone(), &committed, &errors, &pause);
            s.spawn(move || {
                for _ in 0..PHASES {
                    pause.wait(); // the killer has killed
                    let until = Instant::now() + Duration::from_millis(300);
                    while Instant::now() < until {
                        match pool.transaction(|c: &mut Client| insert(c, "cylinder_kill", t)) {
                            Ok(Ok(())) => {
                                committed.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(Err(e)) => {
                                eprintln!("thread {t}: transaction failed: {e}");
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                eprintln!("thread {t}: checkout failed: {}", chain(&e));
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    pause.wait(); // everyone is idle
                }
            });
        }
        for phase in 0..PHASES {
            if phase > 0 {
                // Terminate 3 of the pool's backends (a different 3 each time), waiting up to
                // 5 s for each to exit.
                let mut pids = backends(&mut admin, APP);
                pids.sort_unstable();
                if !pids.is_empty() {
                    let by = phase % pids.len();
                    pids.rotate_left(by);
                }
                for &pid in pids.iter().take(3) {
                    let gone: bool = admin
                        .query_one("SELECT pg_terminate_backend($1, 5000)", &[&pid])
                        .expect("pg_terminate_backend")
                        .get(0);
                    assert!(gone, "backend {pid} did not exit");
                    killed.insert(pid);
                }
            }
            pause.wait(); // go
            pause.wait(); // idle again
        }
    });
    let (committed, errors) = (committed.into_inner(), errors.into_inner());
    let killed_n = killed.len() as u64;
    println!("{committed} transactions; {killed_n} backends terminated between phases");
    assert_eq!(errors, 0, "a client was handed a killed connection");
    assert!(killed_n >= 6);

    // Lease every client at once: each passes the check, so the killed ones not yet found
    // are retired and replaced now. None of them is a killed backend.
    let leases: Vec<_> = (0..SIZE)
        .map(|_| pool.checkout().expect("checkout after the kills"))
        .collect();
    let mut pids = HashSet::new();
    for mut lease in leases {
        let pid = backend_pid(&mut lease).expect("a leased client works");
        assert!(!killed.contains(&pid), "backend {pid} was killed");
        pids.insert(pid);
    }
    assert_eq!(pids.len(), SIZE);
    let stats = pool.stats();
    assert_eq!(stats.size, SIZE);
    assert_eq!(starts.load(Ordering::SeqCst), SIZE as u64 + killed_n);
    assert!(stats.restarts >= killed_n, "{} restarts", stats.restarts);
    assert_eq!(count(&url, "cylinder_kill"), committed);
}

#[test]
fn max_lifetime_recycles_connections() {
    let Some(url) = url("max_lifetime_recycles_connections") else {
        return;
    };
    let _server = SERVER.read().unwrap_or_else(|e| e.into_inner());
    let config = config(&url, "cylinder-test-lifetime");
    let pool = Pool::builder()
        .size(2)
        .max_lifetime(Duration::from_millis(300))
        .checkout_timeout(Duration::from_secs(10))
        .build(move || Ok(config.connect(NoTls)?))
        .expect("build the pool");

    let mut pids = HashSet::new();
    let mut oldest = 0f64;
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        let mut client = pool.checkout().expect("checkout");
        let row = client
            .query_one(
                "SELECT pg_backend_pid(), extract(epoch FROM clock_timestamp() - backend_start)::float8 \
                 FROM pg_stat_activity WHERE pid = pg_backend_pid()",
                &[],
            )
            .expect("ask the backend its age");
        pids.insert(row.get::<_, i32>(0));
        oldest = oldest.max(row.get::<_, f64>(1));
        drop(client);
        thread::sleep(Duration::from_millis(25));
    }
    println!(
        "{} backends in 1.5 s with max_lifetime 300 ms; the oldest leased was {oldest:.3} s old",
        pids.len()
    );
    assert!(pids.len() >= 4, "only {} backends: {pids:?}", pids.len());
    assert!(oldest < 1.3, "a client {oldest:.3} s old was leased");
}

/// A credential rotation under load: `evict_all` three times while 8 threads commit
/// transactions over 4 clients. No transaction fails, every committed row is in the table,
/// and no backend from before the first eviction serves after the last.
#[test]
fn evict_all_during_load_loses_no_transaction() {
    let Some(url) = url("evict_all_during_load_loses_no_transaction") else {
        return;
    };
    let _server = SERVER.read().unwrap_or_else(|e| e.into_inner());
    const APP: &str = "cylinder-test-evict";
    table(&url, "cylinder_evict");
    let evicted = Arc::new(AtomicU64::new(0));
    let pool = {
        let (config, evicted) = (config(&url, APP), evicted.clone());
        Pool::builder()
            .size(4)
            .checkout_timeout(Duration::from_secs(10))
            .on_event(move |event| {
                if *event == cylinder::Event::WorkerEvicted {
                    evicted.fetch_add(1, Ordering::Relaxed);
                }
            })
            .build(move || Ok(config.connect(NoTls)?))
            .expect("build the pool")
    };
    let mut admin = plain(&url);
    let before: HashSet<i32> = backends(&mut admin, APP).into_iter().collect();
    assert_eq!(before.len(), 4);
    let committed = thread::scope(|s| {
        let load = s.spawn(|| transactions(&pool, "cylinder_evict", Duration::from_millis(1500)));
        for _ in 0..3 {
            thread::sleep(Duration::from_millis(300));
            pool.evict_all();
        }
        load.join().expect("the load ran")
    });
    // Every client leased once more: each was started after the last eviction.
    let leases: Vec<_> = (0..4).map(|_| pool.checkout().expect("checkout")).collect();
    let mut after = HashSet::new();
    for mut lease in leases {
        after.insert(backend_pid(&mut lease).expect("a leased client works"));
    }
    println!(
        "{committed} transactions across 3 evictions; {} clients evicted",
        evicted.load(Ordering::Relaxed)
    );
    assert!(committed > 0);
    assert_eq!(count(&url, "cylinder_evict"), committed);
    assert!(evicted.load(Ordering::Relaxed) >= 12, "4 clients, 3 times");
    assert!(after.is_disjoint(&before), "{after:?} / {before:?}");
    assert_eq!(pool.stats().size, 4);
}

/// A quiet night: every idle connection is cut (`pg_terminate_backend`, as a firewall or
/// the server's idle timeout would). The reaper's keepalive checks find them and replace
/// them before any client meets one: the clients' own checks never fail.
#[test]
fn keepalive_replaces_connections_killed_while_idle_before_a_client_sees_them() {
    let Some(url) = url("keepalive_replaces_connections_killed_while_idle") else {
        return;
    };
    let _server = SERVER.read().unwrap_or_else(|e| e.into_inner());
    const APP: &str = "cylinder-test-keepalive";
    table(&url, "cylinder_keepalive");
    let client_failures = Arc::new(AtomicU64::new(0));
    let pool = {
        let (config, failures) = (config(&url, APP), client_failures.clone());
        Pool::builder()
            .size(4)
            .keepalive(Duration::from_millis(200))
            .checkout_timeout(Duration::from_secs(10))
            .test_on_checkout(move |client: &mut Client| {
                let checked = select_1(client);
                let by_reaper = thread::current()
                    .name()
                    .is_some_and(|name| name.starts_with("cylinder-reaper"));
                if checked.is_err() && !by_reaper {
                    failures.fetch_add(1, Ordering::SeqCst);
                }
                checked
            })
            .build(move || Ok(config.connect(NoTls)?))
            .expect("build the pool")
    };
    let mut admin = plain(&url);
    let killed: HashSet<i32> = backends(&mut admin, APP).into_iter().collect();
    assert_eq!(killed.len(), 4);
    for &pid in &killed {
        let gone: bool = admin
            .query_one("SELECT pg_terminate_backend($1, 5000)", &[&pid])
            .expect("pg_terminate_backend")
            .get(0);
        assert!(gone, "backend {pid} did not exit");
    }
    let began = Instant::now();
    while pool.stats().failed_checks < 4 || pool.stats().free < 4 {
        assert!(
            began.elapsed() < Duration::from_secs(10),
            "keepalive did not replace them: {:?}",
            pool.stats()
        );
        thread::sleep(Duration::from_millis(10));
    }
    println!(
        "4 killed connections replaced by keepalive in {:?}",
        began.elapsed()
    );
    let committed = transactions(&pool, "cylinder_keepalive", Duration::from_millis(500));
    let leases: Vec<_> = (0..4).map(|_| pool.checkout().expect("checkout")).collect();
    for mut lease in leases {
        let pid = backend_pid(&mut lease).expect("a leased client works");
        assert!(!killed.contains(&pid), "backend {pid} was killed");
    }
    assert_eq!(client_failures.load(Ordering::SeqCst), 0);
    assert_eq!(count(&url, "cylinder_keepalive"), committed);
}

/// A graceful shutdown: 4 transactions are under way when `drain` is called; each commits,
/// then `drain` returns, new checkouts fail with `Closed`, and the connections are closed.
#[test]
fn drain_lets_running_transactions_commit() {
    let Some(url) = url("drain_lets_running_transactions_commit") else {
        return;
    };
    let _server = SERVER.read().unwrap_or_else(|e| e.into_inner());
    const APP: &str = "cylinder-test-drain";
    table(&url, "cylinder_drain");
    let pool = {
        let config = config(&url, APP);
        Pool::builder()
            .size(4)
            .build(move || Ok(config.connect(NoTls)?))
            .expect("build the pool")
    };
    let begun = Arc::new(Barrier::new(5));
    let workers: Vec<_> = (0..4)
        .map(|t| {
            let (mut client, begun) = (pool.checkout_owned().expect("checkout"), begun.clone());
            thread::spawn(move || {
                let mut tx = client.transaction().expect("begin");
                tx.execute("INSERT INTO cylinder_drain (thread) VALUES ($1)", &[&t])
                    .expect("insert");
                begun.wait();
                thread::sleep(Duration::from_millis(300));
                tx.commit().expect("commit");
            })
        })
        .collect();
    begun.wait();
    let began = Instant::now();
    pool.drain(Duration::from_secs(10))
        .expect("every lease came back");
    let took = began.elapsed();
    assert!(
        took >= Duration::from_millis(250),
        "drain returned after {took:?}"
    );
    assert!(matches!(pool.checkout(), Err(Error::Closed)));
    for worker in workers {
        worker.join().expect("the transaction committed");
    }
    assert_eq!(count(&url, "cylinder_drain"), 4);
    let mut admin = plain(&url);
    let began = Instant::now();
    while !backends(&mut admin, APP).is_empty() {
        assert!(
            began.elapsed() < Duration::from_secs(5),
            "connections left open"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// Starts the server again when dropped: also when the test panics with the server down,
/// so the other tests are not left without one.
struct StartOnDrop(Option<String>);

impl Drop for StartOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            if thread::panicking() {
                // No second panic while unwinding: report and go on.
                match Command::new(&path).arg("start").status() {
                    Ok(status) if status.success() => {}
                    other => eprintln!("could not start the server again: {other:?}"),
                }
            } else {
                ctl(&path, "start");
            }
        }
    }
}

#[test]
fn server_stopped_and_started_again() {
    let Some(url) = url("server_stopped_and_started_again") else {
        return;
    };
    let ctl_path = match std::env::var("CYLINDER_POSTGRES_CTL") {
        Ok(path) if !path.is_empty() => path,
        _ if in_ci() => panic!("CI=true but CYLINDER_POSTGRES_CTL is not set (.ci/postgres.sh)"),
        _ => {
            eprintln!(
                "server_stopped_and_started_again: skipped: needs CYLINDER_POSTGRES_CTL, an \
                 executable taking `stop` or `start` for that server (.ci/postgres.sh makes one)"
            );
            return;
        }
    };
    let _server = SERVER.write().unwrap_or_else(|e| e.into_inner());
    table(&url, "cylinder_restart");
    const SIZE: usize = 4;
    const TIMEOUT: Duration = Duration::from_millis(1000);
    let config = config(&url, "cylinder-test-restart");
    let start = move || -> Result<Client, cylinder::BoxError> { Ok(config.connect(NoTls)?) };
    let pool = Pool::builder()
        .size(SIZE)
        .checkout_timeout(TIMEOUT)
        .reconnect_delay(Duration::from_millis(200))
        // Checked before every lease: the client used just before the stop is within the
        // default `check_after_idle` window, and must not be handed out with the server down.
        .check_after_idle(Duration::ZERO)
        .test_on_checkout(|client: &mut Client| select_1(client))
        .build(start.clone())
        .expect("build the pool");
    pool.transaction(|c: &mut Client| insert(c, "cylinder_restart", 0))
        .expect("checkout before the stop")
        .expect("insert before the stop");

    ctl(&ctl_path, "stop");
    let stopped = Instant::now();
    let restart_on_panic = StartOnDrop(Some(ctl_path.clone()));

    // A pool built while the server is down: it returns at once and comes up with the server.
    let late = Pool::builder()
        .size(2)
        .checkout_timeout(TIMEOUT)
        .reconnect_delay(Duration::from_millis(200))
        .test_on_checkout(|client: &mut Client| select_1(client))
        .build_unchecked(start)
        .expect("build_unchecked with the server down");

    // Meanwhile every checkout fails, within its timeout, naming the connect failure.
    let (mut failures, mut connect_failures) = (0u64, 0u64);
    while stopped.elapsed() < Duration::from_secs(2) {
        for pool in [&pool, &late] {
            let asked = Instant::now();
            let result = pool.checkout().map(|_| ());
            let took = asked.elapsed();
            let error = match result {
                Ok(()) => panic!("a checkout succeeded with the server down"),
                Err(error) => error,
            };
            assert!(
                took < TIMEOUT + Duration::from_millis(500),
                "a failing checkout took {took:?}"
            );
            // The cause is the failed connect (the postgres crate says "error connecting to
            // server: Connection refused"); in the first moments it may be the failed check
            // of a client the stop closed.
            let text = chain(&error);
            assert!(
                error.source().is_some(),
                "the error carries no cause: {error:?}"
            );
            let names_connect = text.contains("error connecting") || text.contains("refused");
            assert!(
                names_connect || stopped.elapsed() < Duration::from_millis(500),
                "the error does not name the connect failure: {error:?} ({text})"
            );
            if names_connect && connect_failures == 0 {
                println!("with the server down, a checkout fails in {took:?}: {text}");
            }
            connect_failures += u64::from(names_connect);
            failures += 1;
        }
        thread::sleep(Duration::from_millis(20));
    }

    assert!(
        connect_failures > 0,
        "no checkout named the connect failure"
    );

    drop(restart_on_panic);
    let started = Instant::now();

    // Both pools recover by themselves within a few seconds.
    for (name, pool) in [("the pool", &pool), ("the pool built unchecked", &late)] {
        loop {
            match pool.transaction(|c: &mut Client| insert(c, "cylinder_restart", 0)) {
                Ok(Ok(())) => break,
                Ok(Err(e)) => panic!("{name}: a checked client failed: {e}"),
                Err(e) => {
                    assert!(
                        started.elapsed() < Duration::from_secs(10),
                        "{name} has not recovered 10 s after the start: {}",
                        chain(&e)
                    );
                    thread::sleep(Duration::from_millis(50));
                }
            }
        }
        println!(
            "{name} recovered {:?} after the server started",
            started.elapsed()
        );
    }

    // And serves 8 threads again without an error, at full size.
    let committed = transactions(&pool, "cylinder_restart", Duration::from_millis(500));
    let deadline = Instant::now() + Duration::from_secs(5);
    while pool.stats().size < SIZE && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    let stats = pool.stats();
    println!(
        "{failures} checkouts failed while the server was down; {committed} transactions after; \
         {} restarts",
        stats.restarts
    );
    assert_eq!(stats.size, SIZE);
    assert!(stats.restarts >= SIZE as u64, "{} restarts", stats.restarts);
    assert_eq!(count(&url, "cylinder_restart"), committed + 3);
}

/// The same 8 threads of transactions through r2d2's PostgreSQL manager (its `is_valid` is
/// the check on checkout).
#[cfg(feature = "r2d2")]
#[test]
fn r2d2_postgres_manager() {
    let Some(url) = url("r2d2_postgres_manager") else {
        return;
    };
    let _server = SERVER.read().unwrap_or_else(|e| e.into_inner());
    table(&url, "cylinder_r2d2");
    let manager =
        r2d2_postgres::PostgresConnectionManager::new(config(&url, "cylinder-test-r2d2"), NoTls);
    let pool = Pool::builder()
        .size(4)
        .checkout_timeout(Duration::from_secs(10))
        .build_with(manager)
        .expect("build the pool");

    let committed = transactions(&pool, "cylinder_r2d2", Duration::from_millis(1500));
    println!("{committed} transactions committed through the r2d2 manager");
    assert!(committed > 0);
    assert_eq!(count(&url, "cylinder_r2d2"), committed);
    assert_eq!(pool.stats().size, 4);
}
