//! Several PostgreSQL servers behind one balancer of pools: 8 threads of transactions, each
//! server's share printed every half second, and what happens when one is stopped.
//!
//! ```sh
//! cargo run -p cylinder-db-tests --example replicas -- postgres://me@db1/app postgres://me@db2/app
//! # or with three throw-away servers, which the example stops and starts itself:
//! . .ci/postgres.sh; trap cylinder_pg_down_cluster EXIT; cylinder_pg_up_cluster 3
//! cargo run -p cylinder-db-tests --example replicas
//! ```
//!
//! The URLs come from the arguments, else from `CYLINDER_POSTGRES_URLS` (spaces or commas
//! between them). With `CYLINDER_POSTGRES_CTLS` (a control script per server, taking `stop`
//! or `start`, as `.ci/postgres.sh` makes), the example stops the last server after 2 s and
//! starts it again 2 s later; without, it runs for 10 s: stop one yourself meanwhile
//! (`pg_ctl stop -m fast`) and watch its share move to the others. It creates a table
//! `cylinder_replicas` on each server and drops it at the end.

use std::process::Command;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use cylinder::{Balancer, BoxError, Pool, PoolsDown};
use postgres::{Client, Config, NoTls};

const THREADS: usize = 8;
const TABLE: &str = "cylinder_replicas";

/// A connection and the server it is on.
struct Conn {
    client: Client,
    server: usize,
}

fn list(var: &str) -> Vec<String> {
    std::env::var(var)
        .unwrap_or_default()
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn ctl(path: &str, action: &str) {
    match Command::new(path).arg(action).output() {
        Ok(out) if out.status.success() => {}
        other => eprintln!("{path} {action} failed: {other:?}"),
    }
}

fn main() -> Result<(), BoxError> {
    let mut urls: Vec<String> = std::env::args().skip(1).collect();
    if urls.is_empty() {
        urls = list("CYLINDER_POSTGRES_URLS");
    }
    if urls.is_empty() {
        eprintln!("usage: replicas URL URL... (or set CYLINDER_POSTGRES_URLS)");
        std::process::exit(2);
    }
    let ctls = list("CYLINDER_POSTGRES_CTLS");
    let configs = urls
        .iter()
        .map(|url| {
            let mut config = Config::from_str(url)?;
            config
                .application_name("cylinder-replicas")
                .connect_timeout(Duration::from_secs(2));
            Ok(config)
        })
        .collect::<Result<Vec<_>, BoxError>>()?;
    for config in &configs {
        config.connect(NoTls)?.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {TABLE} (id serial PRIMARY KEY, thread int NOT NULL)"
        ))?;
    }

    // One pool per server, each with its own fuse; the balancer rotates over those that are up.
    let pools = configs.iter().enumerate().map(|(server, config)| {
        let config = config.clone();
        Pool::builder()
            .name(format!("server-{server}"))
            .size(4)
            .checkout_timeout(Duration::from_secs(2))
            .reconnect_delay(Duration::from_millis(500))
            // Checked before every lease: a stopped server's connections are found at once,
            // not only after `check_after_idle` (500 ms by default).
            .check_after_idle(Duration::ZERO)
            .test_on_checkout(|conn: &mut Conn| conn.client.simple_query("SELECT 1").map(|_| ()))
            .is_broken(|conn: &mut Conn| conn.client.is_closed())
            .build_unchecked(move || {
                Ok(Conn {
                    client: config.connect(NoTls)?,
                    server,
                })
            })
    });
    let balancer = Balancer::over_pools(pools.collect::<Result<Vec<_>, _>>()?)?;
    println!("{} servers, {THREADS} threads", urls.len());

    let done = AtomicBool::new(false);
    let errors = AtomicU64::new(0);
    let run_for = if ctls.len() == urls.len() {
        Duration::from_secs(6)
    } else {
        Duration::from_secs(10)
    };
    thread::scope(|s| {
        for t in 0..THREADS {
            let (balancer, done, errors) = (balancer.clone(), &done, &errors);
            s.spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    let mut conn = match balancer.checkout() {
                        Ok(conn) => conn,
                        Err(err) => {
                            // Every server down: each one's cause.
                            errors.fetch_add(1, Ordering::Relaxed);
                            match PoolsDown::of(&err) {
                                Some(down) => println!("    thread {t}: {down}"),
                                None => println!("    thread {t}: {err}"),
                            }
                            continue;
                        }
                    };
                    let server = conn.server;
                    let mut insert = || -> Result<(), postgres::Error> {
                        let mut tx = conn.client.transaction()?;
                        tx.execute(
                            &format!("INSERT INTO {TABLE} (thread) VALUES ($1)"),
                            &[&(t as i32)],
                        )?;
                        tx.commit()
                    };
                    if let Err(err) = insert() {
                        // A transaction on the server that went down as it ran.
                        errors.fetch_add(1, Ordering::Relaxed);
                        let why = std::error::Error::source(&err).map(ToString::to_string);
                        println!(
                            "    thread {t}, server {server}: {err} ({})",
                            why.unwrap_or_default()
                        );
                    }
                }
            });
        }

        let began = Instant::now();
        let mut last: Vec<u64> = vec![0; urls.len()];
        let stopped = urls.len() - 1;
        while began.elapsed() < run_for {
            thread::sleep(Duration::from_millis(500));
            let at = began.elapsed().as_secs_f64();
            if ctls.len() == urls.len() && (2.0..2.5).contains(&at) {
                println!("{at:4.1} s: stopping server {stopped}");
                ctl(&ctls[stopped], "stop");
            }
            if ctls.len() == urls.len() && (4.0..4.5).contains(&at) {
                println!("{at:4.1} s: starting server {stopped} again");
                ctl(&ctls[stopped], "start");
            }
            let now: Vec<u64> = balancer
                .pools()
                .iter()
                .map(|p| p.stats().checkouts)
                .collect();
            let share: Vec<u64> = now.iter().zip(&last).map(|(n, l)| n - l).collect();
            let total = share.iter().sum::<u64>().max(1);
            let shown: Vec<String> = share
                .iter()
                .enumerate()
                .map(|(i, n)| format!("server {i}: {:3.0} %", *n as f64 * 100.0 / total as f64))
                .collect();
            println!(
                "{:4.1} s: {}  ({total} transactions, {} errors so far)",
                began.elapsed().as_secs_f64(),
                shown.join(", "),
                errors.load(Ordering::Relaxed)
            );
            last = now;
        }
        done.store(true, Ordering::Relaxed);
    });

    for (server, config) in configs.iter().enumerate() {
        match config.connect(NoTls) {
            Ok(mut client) => {
                let n: i64 = client
                    .query_one(&format!("SELECT count(*) FROM {TABLE}"), &[])?
                    .get(0);
                println!("server {server}: {n} rows");
                client.batch_execute(&format!("DROP TABLE {TABLE}"))?;
            }
            Err(err) => println!("server {server}: down ({err})"),
        }
    }
    Ok(())
}
