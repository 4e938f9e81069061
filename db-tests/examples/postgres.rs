//! A pool of PostgreSQL clients for 8 threads, for about three seconds.
//!
//! ```sh
//! cargo run -p cylinder-db-tests --example postgres -- postgres://USER@HOST:PORT/DB
//! CYLINDER_POSTGRES_URL=postgres://USER@HOST:PORT/DB \
//!     cargo run -p cylinder-db-tests --example postgres
//! ```
//!
//! Eight threads share four clients, each inserting rows in transactions. Halfway through,
//! another connection terminates the pool's idle backends (`pg_terminate_backend`): the
//! pool's check before each lease finds the dead clients and opens new ones. ("Idle" is the
//! server's view: a thread holding such a client between two statements sees its next
//! statement fail, once; the check retires that client before its next lease.) The example
//! creates a table `cylinder_example` and drops it at the end.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use cylinder::{BoxError, Pool};
use postgres::{Client, Config, NoTls};

const APP: &str = "cylinder-example";

/// An error and its causes, on one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn main() -> Result<(), BoxError> {
    let Some(url) = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("CYLINDER_POSTGRES_URL").ok())
        .filter(|url| !url.is_empty())
    else {
        eprintln!(
            "usage: cargo run -p cylinder-db-tests --example postgres -- postgres://USER@HOST:PORT/DB\n   \
             or: CYLINDER_POSTGRES_URL=postgres://USER@HOST:PORT/DB cargo run -p cylinder-db-tests --example postgres\n\
             (.ci/postgres.sh starts a throw-away server and prints such a URL)"
        );
        std::process::exit(2);
    };
    let mut config: Config = url.parse()?;
    config
        .application_name(APP)
        .connect_timeout(Duration::from_secs(5));

    let mut admin = config.connect(NoTls)?;
    admin.batch_execute(
        "DROP TABLE IF EXISTS cylinder_example;
         CREATE TABLE cylinder_example (id serial PRIMARY KEY, thread int NOT NULL)",
    )?;
    println!("connected to {url}; table cylinder_example created");

    let opened = Arc::new(AtomicU64::new(0));
    let pool = {
        let (config, opened) = (config.clone(), opened.clone());
        Pool::builder()
            .size(4)
            .checkout_timeout(Duration::from_secs(5))
            .reconnect_delay(Duration::from_millis(200))
            // Before each lease: is the client still connected?
            .test_on_checkout(|client: &mut Client| client.simple_query("SELECT 1").map(|_| ()))
            .build(move || {
                opened.fetch_add(1, Ordering::SeqCst);
                Ok(config.connect(NoTls)?)
            })?
    };
    println!("pool of {} clients open", pool.stats().size);

    let (committed, errors) = (AtomicU64::new(0), AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(3);
    thread::scope(|s| -> Result<(), BoxError> {
        for t in 0..8i32 {
            let (pool, committed, errors) = (pool.clone(), &committed, &errors);
            s.spawn(move || {
                while Instant::now() < deadline {
                    let done = pool.transaction(|client: &mut Client| {
                        let mut tx = client.transaction()?;
                        tx.execute("INSERT INTO cylinder_example (thread) VALUES ($1)", &[&t])?;
                        tx.commit()
                    });
                    match done {
                        Ok(Ok(())) => {
                            committed.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Err(e)) => {
                            // A backend terminated while its client held it fails that
                            // client's statement: the client sees it, as it should.
                            println!("thread {t}: {}", chain(&e));
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            println!("thread {t}: no client: {}", chain(&e));
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }

        thread::sleep(Duration::from_millis(1500));
        let killed = admin.query(
            "SELECT pid, pg_terminate_backend(pid, 5000) FROM pg_stat_activity \
             WHERE application_name = $1 AND state = 'idle' AND pid <> pg_backend_pid()",
            &[&APP],
        )?;
        let pids: Vec<i32> = killed.iter().map(|row| row.get(0)).collect();
        println!(
            "{:.1} s: terminated {} idle backends of the pool: {pids:?}",
            started.elapsed().as_secs_f64(),
            pids.len()
        );
        Ok(())
    })?;

    let stats = pool.stats();
    let in_table: i64 = admin
        .query_one("SELECT count(*) FROM cylinder_example", &[])?
        .get(0);
    println!();
    println!(
        "rows committed by the threads: {}",
        committed.load(Ordering::SeqCst)
    );
    println!("rows in the table:             {in_table}");
    println!(
        "client errors:                 {}",
        errors.load(Ordering::SeqCst)
    );
    println!(
        "clients opened in all: {} (4 at the start)",
        opened.load(Ordering::SeqCst)
    );
    println!(
        "stats: size {}, free {}, leased {}, checkouts {}, restarts {}, discards {}, timeouts {}",
        stats.size,
        stats.free,
        stats.leased,
        stats.checkouts,
        stats.restarts,
        stats.discards,
        stats.timeouts
    );

    drop(pool);
    admin.batch_execute("DROP TABLE cylinder_example")?;
    Ok(())
}
