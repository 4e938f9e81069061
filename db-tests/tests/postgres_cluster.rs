//! A balancer of pools over three real PostgreSQL servers: 8 threads of transactions, one
//! server stopped under load and started again.
//!
//! Runs when `CYLINDER_POSTGRES_URLS` (three or more URLs, separated by spaces or commas) and
//! `CYLINDER_POSTGRES_CTLS` (an executable per server, in the same order, taking `stop` or
//! `start`) are set; `.ci/postgres.sh`'s `cylinder_pg_up_cluster 3` starts three throw-away
//! servers and sets both. Fails when `CI=true` and they are not; otherwise prints a note and
//! passes.
//!
//! What it measures, and holds to:
//! - the client errors (a failed checkout or a failed transaction) are no more than the leases
//!   that were on the stopped server while it stopped, and none is on another server;
//! - while it is down, no checkout fails and the other two carry every transaction;
//! - once it accepts connections again, its pool is back in rotation within the pool's
//!   `reconnect_delay` + 1 s, and takes a fair share of the checkouts again;
//! - the rows the clients counted as committed on each server are the rows in its table.

mod common;

use common::{chain, ctl, in_ci};
use std::process::Command;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use cylinder::{Balancer, Error, Event, Pool, PoolsDown};
use postgres::{Client, Config, NoTls};

const THREADS: usize = 8;
const SERVERS: usize = 3;
/// The server the test stops and starts again.
const VICTIM: usize = 1;
const POOL_SIZE: usize = 4;
const RECONNECT_DELAY: Duration = Duration::from_millis(300);
const TABLE: &str = "cylinder_cluster";

/// The phases of the run, each with its own counts.
const UP: usize = 0;
const STOPPING: usize = 1;
const DOWN: usize = 2;
const RESTARTED: usize = 3;
const SETTLED: usize = 4;
const PHASES: usize = 5;

/// A list from an environment variable (spaces or commas between items), or `None` with a
/// note when the test should not run.
fn list(var: &str, what: &str) -> Option<Vec<String>> {
    let items: Vec<String> = std::env::var(var)
        .unwrap_or_default()
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if items.len() >= SERVERS {
        return Some(items);
    }
    let why = format!(
        "{var} has {} of the {SERVERS} {what} needed; `. .ci/postgres.sh; cylinder_pg_up_cluster 3` \
         starts three throw-away servers and sets CYLINDER_POSTGRES_URLS and _CTLS",
        items.len()
    );
    assert!(!in_ci(), "CI=true but {why}");
    eprintln!("postgres_cluster: skipped: {why}");
    None
}

fn config(url: &str) -> Config {
    let mut config = Config::from_str(url).expect("not a valid PostgreSQL URL");
    config
        .application_name("cylinder-test-cluster")
        .connect_timeout(Duration::from_secs(5));
    config
}

/// A leased connection and the server it is on.
struct Conn {
    client: Client,
    server: usize,
}

fn admin(url: &str) -> Client {
    config(url).connect(NoTls).expect("connect to the server")
}

fn rows(url: &str) -> u64 {
    let n: i64 = admin(url)
        .query_one(&format!("SELECT count(*) FROM {TABLE}"), &[])
        .expect("count the rows")
        .get(0);
    n as u64
}

/// Starts the stopped server again if the test panics while it is down.
struct StartOnPanic(Option<String>);

impl Drop for StartOnPanic {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            if thread::panicking() {
                let _ = Command::new(&path).arg("start").status();
            }
        }
    }
}

/// Counts per phase and server.
#[derive(Default)]
struct Counts {
    checkouts: [[AtomicU64; SERVERS]; PHASES],
    commits: [[AtomicU64; SERVERS]; PHASES],
    /// Transactions that failed, by the server of their lease.
    failed: [[AtomicU64; SERVERS]; PHASES],
    /// Checkouts that failed (no server).
    checkout_errors: [AtomicU64; PHASES],
}

impl Counts {
    fn sum(counts: &[[AtomicU64; SERVERS]; PHASES], phase: usize, server: usize) -> u64 {
        counts[phase][server].load(Ordering::SeqCst)
    }
}

/// One lease counted as on its server while the guard lives.
struct OnServer<'a>(&'a AtomicUsize);

impl<'a> OnServer<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        OnServer(count)
    }
}

impl Drop for OnServer<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One row, `(thread, seq)` unique, in a transaction.
fn insert(conn: &mut Conn, thread: usize, seq: i64) -> Result<(), postgres::Error> {
    let server = conn.server as i32;
    let mut tx = conn.client.transaction()?;
    tx.execute(
        &format!("INSERT INTO {TABLE} (thread, seq, server) VALUES ($1, $2, $3)"),
        &[&(thread as i32), &seq, &server],
    )?;
    tx.commit()
}

/// Whether the row `(thread, seq)` is on the server: for a transaction whose outcome its
/// client could not know (the server went down around its `COMMIT`).
fn committed_after_all(url: &str, thread: usize, seq: i64) -> bool {
    let n: i64 = admin(url)
        .query_one(
            &format!("SELECT count(*) FROM {TABLE} WHERE thread = $1 AND seq = $2"),
            &[&(thread as i32), &seq],
        )
        .expect("look for the row")
        .get(0);
    n == 1
}

#[test]
fn one_server_of_three_stopped_and_started_under_load() {
    let Some(urls) = list("CYLINDER_POSTGRES_URLS", "server URLs") else {
        return;
    };
    let Some(ctls) = list("CYLINDER_POSTGRES_CTLS", "control scripts") else {
        return;
    };
    let (urls, ctls) = (&urls[..SERVERS], &ctls[..SERVERS]);
    for url in urls {
        admin(url)
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {TABLE}; CREATE TABLE {TABLE} \
                 (id serial PRIMARY KEY, thread int NOT NULL, seq bigint NOT NULL, server int NOT NULL, \
                 UNIQUE (thread, seq))"
            ))
            .expect("create the table");
    }

    let pools: Vec<Pool<Conn>> = urls
        .iter()
        .enumerate()
        .map(|(server, url)| {
            let config = config(url);
            Pool::builder()
                .name(format!("server-{server}"))
                .size(POOL_SIZE)
                .checkout_timeout(Duration::from_secs(2))
                .reconnect_delay(RECONNECT_DELAY)
                // Checked before every lease: a stopped server's connections are found at once,
                // not only after `check_after_idle` (500 ms by default).
                .check_after_idle(Duration::ZERO)
                .test_on_checkout(|conn: &mut Conn| {
                    conn.client.simple_query("SELECT 1").map(|_| ())
                })
                .is_broken(|conn: &mut Conn| conn.client.is_closed())
                .build(move || {
                    Ok(Conn {
                        client: config.connect(NoTls)?,
                        server,
                    })
                })
                .expect("build a pool")
        })
        .collect();
    let back_events = Arc::new(AtomicU64::new(0));
    let seen = back_events.clone();
    let balancer = Balancer::builder()
        .name("servers")
        .on_event(move |event| {
            if *event == Event::WorkerBack {
                seen.fetch_add(1, Ordering::SeqCst);
            }
        })
        .build_pools(pools)
        .expect("build the balancer");

    let counts = Counts::default();
    let on_server: [AtomicUsize; SERVERS] = Default::default();
    let phase = AtomicUsize::new(UP);
    let started_again: OnceLock<Instant> = OnceLock::new();
    let back_at: OnceLock<Instant> = OnceLock::new();
    let errors: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let done = AtomicUsize::new(0);
    // Failed transactions: (server, thread, seq). One whose COMMIT reached the server as it
    // went down may have committed without its client hearing so: looked up at the end.
    let in_doubt: Mutex<Vec<(usize, usize, i64)>> = Mutex::new(Vec::new());

    // The client threads are joined when the scope ends: the counts are final after it.
    let (on_victim_at_stop, stop_took, limit) = thread::scope(|s| {
        for t in 0..THREADS {
            let balancer = balancer.clone();
            let (counts, on_server, phase, done) = (&counts, &on_server, &phase, &done);
            let (started_again, back_at, errors) = (&started_again, &back_at, &errors);
            let in_doubt = &in_doubt;
            s.spawn(move || {
                for seq in 0.. {
                    if done.load(Ordering::SeqCst) != 0 {
                        break;
                    }
                    let checked_out = balancer.checkout();
                    // The phase when the checkout returned: one that began while the server
                    // was down may be served by it once it is back (counted as back).
                    let now = phase.load(Ordering::SeqCst);
                    let mut lease = match checked_out {
                        Ok(lease) => lease,
                        Err(err) => {
                            counts.checkout_errors[now].fetch_add(1, Ordering::SeqCst);
                            let down = PoolsDown::of(&err).map(ToString::to_string);
                            errors
                                .lock()
                                .unwrap()
                                .push(format!("phase {now}: checkout: {err} {down:?}"));
                            continue;
                        }
                    };
                    let server = lease.server;
                    let _on = OnServer::new(&on_server[server]);
                    counts.checkouts[now][server].fetch_add(1, Ordering::SeqCst);
                    if server == VICTIM && started_again.get().is_some() {
                        let _ = back_at.set(Instant::now());
                    }
                    match insert(&mut lease, t, seq) {
                        Ok(()) => counts.commits[now][server].fetch_add(1, Ordering::SeqCst),
                        Err(err) => {
                            in_doubt.lock().unwrap().push((server, t, seq));
                            errors
                                .lock()
                                .unwrap()
                                .push(format!("phase {now}: server {server}: {}", chain(&err)));
                            counts.failed[now][server].fetch_add(1, Ordering::SeqCst)
                        }
                    };
                }
            });
        }

        // The threads stop when this is dropped: at the end, or when an assertion fails.
        let finish = Finish(&done);

        thread::sleep(Duration::from_secs(1));
        // Stop one server under load.
        let victim_ctl = ctls[VICTIM].clone();
        let restart = StartOnPanic(Some(victim_ctl.clone()));
        let on_victim_at_stop = on_server[VICTIM].load(Ordering::SeqCst);
        phase.store(STOPPING, Ordering::SeqCst);
        let stopping = Instant::now();
        ctl(&victim_ctl, "stop");
        let stop_took = stopping.elapsed();
        phase.store(DOWN, Ordering::SeqCst);
        thread::sleep(Duration::from_secs(2));

        // Start it again. Counted as restarted from before the start: the server accepts
        // connections before `pg_ctl start` (which polls it) returns, and the balancer may
        // serve from it at once (a CI run counted 7 of those as served while down).
        phase.store(RESTARTED, Ordering::SeqCst);
        ctl(&victim_ctl, "start");
        let _ = started_again.set(Instant::now());
        drop(restart);
        let limit = RECONNECT_DELAY + Duration::from_secs(1);
        while back_at.get().is_none() && started_again.get().unwrap().elapsed() < limit * 3 {
            thread::sleep(Duration::from_millis(5));
        }
        thread::sleep(Duration::from_millis(500));
        phase.store(SETTLED, Ordering::SeqCst);
        thread::sleep(Duration::from_secs(1));
        drop(finish);
        (on_victim_at_stop, stop_took, limit)
    });

    // The numbers, then what they must be.
    let per = |c: &[[AtomicU64; SERVERS]; PHASES], p: usize| -> Vec<u64> {
        (0..SERVERS).map(|s| Counts::sum(c, p, s)).collect()
    };
    let names = ["up", "stopping", "down", "restarted", "settled"];
    for (p, name) in names.iter().enumerate() {
        println!(
            "{name:>9}: checkouts per server {:?}, commits {:?}, failed transactions {:?}, failed checkouts {}",
            per(&counts.checkouts, p),
            per(&counts.commits, p),
            per(&counts.failed, p),
            counts.checkout_errors[p].load(Ordering::SeqCst)
        );
    }
    let victim_leases_in_stop =
        on_victim_at_stop as u64 + Counts::sum(&counts.checkouts, STOPPING, VICTIM);
    let client_errors: u64 = (0..PHASES)
        .map(|p| {
            counts.checkout_errors[p].load(Ordering::SeqCst)
                + per(&counts.failed, p).iter().sum::<u64>()
        })
        .sum();
    let rejoin = back_at
        .get()
        .map(|at| at.duration_since(*started_again.get().unwrap()));
    println!(
        "stop took {stop_took:?}; {on_victim_at_stop} leases were on the stopped server when \
         the stop began and {} more began during it; {client_errors} client errors: {:?}",
        Counts::sum(&counts.checkouts, STOPPING, VICTIM),
        errors.lock().unwrap()
    );
    println!(
        "back in rotation {rejoin:?} after its server accepted connections again (limit \
         {limit:?}); {} WorkerBack events",
        back_events.load(Ordering::SeqCst)
    );

    assert!(
        client_errors <= victim_leases_in_stop,
        "{client_errors} client errors, more than the {victim_leases_in_stop} leases on the \
         stopped server: {:?}",
        errors.lock().unwrap()
    );
    for p in 0..PHASES {
        for s in 0..SERVERS {
            if s != VICTIM {
                assert_eq!(
                    Counts::sum(&counts.failed, p, s),
                    0,
                    "server {s} failed in phase {p}"
                );
            }
        }
    }
    for p in [UP, DOWN, RESTARTED, SETTLED] {
        assert_eq!(
            counts.checkout_errors[p].load(Ordering::SeqCst),
            0,
            "phase {}",
            names[p]
        );
    }
    for s in 0..SERVERS {
        assert!(
            Counts::sum(&counts.commits, UP, s) > 0,
            "server {s} idle at first"
        );
    }
    // Down: the other two carry every transaction.
    assert_eq!(Counts::sum(&counts.checkouts, DOWN, VICTIM), 0);
    for s in (0..SERVERS).filter(|&s| s != VICTIM) {
        assert!(
            Counts::sum(&counts.commits, DOWN, s) > 0,
            "server {s} idle while one was down"
        );
    }
    let rejoin = rejoin.expect("the restarted server never came back into rotation");
    assert!(
        rejoin <= limit,
        "back after {rejoin:?}, more than {limit:?}"
    );
    let settled = per(&counts.checkouts, SETTLED);
    let share = settled[VICTIM] as f64 / settled.iter().sum::<u64>().max(1) as f64;
    println!(
        "the restarted server's share of checkouts once settled: {:.0} %",
        share * 100.0
    );
    assert!(share >= 0.2, "its share is {share:.2} of {settled:?}");
    assert!(
        back_events.load(Ordering::SeqCst) >= 1,
        "no WorkerBack event"
    );

    // Rows: what the clients counted as committed on each server is what each holds, once
    // the clients whose COMMIT failed have looked whether it took effect all the same (a
    // client cannot know when the connection dies around its COMMIT).
    let in_doubt = in_doubt.into_inner().unwrap();
    for (server, url) in urls.iter().enumerate() {
        let committed: u64 = (0..PHASES)
            .map(|p| Counts::sum(&counts.commits, p, server))
            .sum();
        let doubtful: Vec<_> = in_doubt.iter().filter(|d| d.0 == server).collect();
        let after_all = doubtful
            .iter()
            .filter(|(_, t, seq)| committed_after_all(url, *t, *seq))
            .count() as u64;
        let stored = rows(url);
        println!(
            "server {server}: {committed} rows committed by the clients, and {after_all} of the \
             {} whose transaction failed; {stored} in its table",
            doubtful.len()
        );
        assert_eq!(committed + after_all, stored, "server {server}");
    }
}

/// Tells the client threads to stop when dropped.
struct Finish<'a>(&'a AtomicUsize);

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        self.0.store(1, Ordering::SeqCst);
    }
}

/// Needs no server: three pools of servers that are all down (ports nothing listens on).
#[test]
fn every_server_down_fails_with_each_cause_paced() {
    let pools: Vec<Pool<Client>> = (0..SERVERS)
        .map(|server| {
            // A free port: bound, then let go.
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let config = config(&format!("postgres://cylinder@127.0.0.1:{port}/cylinder"));
            Pool::builder()
                .name(format!("server-{server}"))
                .size(2)
                .checkout_timeout(Duration::from_secs(2))
                .reconnect_delay(RECONNECT_DELAY)
                .build_unchecked(move || Ok(config.connect(NoTls)?))
                .expect("build a pool")
        })
        .collect();
    let balancer = Balancer::over_pools(pools).expect("build the balancer");
    let began = Instant::now();
    let mut calls = 0;
    while began.elapsed() < Duration::from_secs(2) {
        let asked = Instant::now();
        let err = balancer.checkout().expect_err("nothing listens there");
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "a call took {:?}",
            asked.elapsed()
        );
        let down = PoolsDown::of(&err).unwrap_or_else(|| panic!("not every pool down: {err:?}"));
        assert!(matches!(err, Error::Disconnected { .. }));
        assert_eq!(down.causes().len(), SERVERS);
        for (pool, cause) in down.causes() {
            assert!(
                cause.to_string().contains("error connecting"),
                "{pool}: {cause}"
            );
        }
        calls += 1;
    }
    // Paced by the reconnect attempts: about one failed call per attempt, not a spin.
    let most = 2 * (2000 / RECONNECT_DELAY.as_millis() as usize + 1) * SERVERS;
    println!("every server down: {calls} failed checkouts in 2 s (at most {most} allowed)");
    assert!(calls <= most, "{calls} calls in 2 s: spinning");
}
