//! A pool of SQLite connections for 8 threads, for about three seconds.
//!
//! ```sh
//! cargo run --example sqlite
//! ```
//!
//! Eight threads insert rows in `&mut` transactions and read them back; one of them misbehaves
//! now and then: it leaves a transaction open when it gives its connection back (the pool's
//! `reset` rolls it back), or discards its connection (the pool opens another). At the end the
//! rows the threads counted are the rows in the table.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cylinder::{BoxError, Lease, Pool};
use rusqlite::{params, Connection};

fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    conn.execute_batch("PRAGMA synchronous = NORMAL")?;
    Ok(conn)
}

fn main() -> Result<(), BoxError> {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    let path = std::env::temp_dir().join(format!("cylinder-example-{nanos}.sqlite3"));
    println!("database: {}", path.display());
    open(&path)?.execute_batch(
        "CREATE TABLE items (id INTEGER PRIMARY KEY, thread INTEGER NOT NULL, note TEXT)",
    )?;

    let opened = Arc::new(AtomicU64::new(0));
    let rolled_back = Arc::new(AtomicU64::new(0));
    let pool = {
        let (path, opened, rolled_back) = (path.clone(), opened.clone(), rolled_back.clone());
        Pool::builder()
            .size(8)
            .checkout_timeout(Duration::from_secs(10))
            // On return: roll back whatever a client left open.
            .reset(move |conn: &mut Connection| {
                if conn.is_autocommit() {
                    Ok(())
                } else {
                    rolled_back.fetch_add(1, Ordering::SeqCst);
                    conn.execute_batch("ROLLBACK")
                }
            })
            .build(move || {
                opened.fetch_add(1, Ordering::SeqCst);
                Ok(open(&path)?)
            })?
    };
    println!("pool of {} connections open", pool.stats().size);

    let committed = AtomicU64::new(0);
    let (leaked, discarded) = (AtomicU64::new(0), AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(3);
    thread::scope(|s| {
        let mut threads = Vec::new();
        for t in 0..8i64 {
            let (pool, committed, leaked, discarded) =
                (pool.clone(), &committed, &leaked, &discarded);
            threads.push(s.spawn(move || -> Result<(), BoxError> {
                let (mut breaks, mut next_break) = (0u64, Instant::now());
                while Instant::now() < deadline {
                    if t == 0 && Instant::now() >= next_break {
                        breaks += 1;
                        next_break += Duration::from_millis(300);
                        let conn = pool.checkout()?;
                        if breaks % 2 == 1 {
                            println!("thread 0: discards its connection");
                            Lease::discard(conn);
                            discarded.fetch_add(1, Ordering::SeqCst);
                        } else {
                            println!("thread 0: gives its connection back inside a transaction");
                            conn.execute_batch("BEGIN")?;
                            conn.execute(
                                "INSERT INTO items (thread, note) VALUES (?1, 'never committed')",
                                params![t],
                            )?;
                            leaked.fetch_add(1, Ordering::SeqCst);
                        }
                        continue;
                    }
                    pool.transaction(|conn: &mut Connection| -> rusqlite::Result<()> {
                        let tx = conn.transaction()?;
                        tx.execute(
                            "INSERT INTO items (thread, note) VALUES (?1, 'committed')",
                            params![t],
                        )?;
                        tx.commit()
                    })??;
                    committed.fetch_add(1, Ordering::SeqCst);
                }
                Ok(())
            }));
        }
        for (t, thread) in threads.into_iter().enumerate() {
            match thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => println!("thread {t} stopped on an error: {e}"),
                Err(_) => println!("thread {t} panicked"),
            }
        }
    });

    let stats = pool.stats();
    let in_table: i64 = pool.transaction(|conn: &mut Connection| {
        conn.query_row("SELECT count(*) FROM items", [], |row| row.get(0))
    })??;
    println!();
    println!(
        "rows committed by the threads: {}",
        committed.load(Ordering::SeqCst)
    );
    println!("rows in the table:             {in_table}");
    println!(
        "transactions left open: {}, rolled back by reset: {}",
        leaked.load(Ordering::SeqCst),
        rolled_back.load(Ordering::SeqCst)
    );
    println!(
        "connections discarded: {}, opened in all: {} (8 at the start)",
        discarded.load(Ordering::SeqCst),
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
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.clone().into_os_string();
        name.push(suffix);
        let _ = std::fs::remove_file(name);
    }
    Ok(())
}
