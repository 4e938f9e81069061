//! A pool of SQLite connections (rusqlite, in a temporary file in WAL mode) under 8 threads:
//! `&mut` transactions and queries for about two seconds while one thread now and then leaves
//! a transaction open or discards its connection. The rows the clients counted are the rows
//! in the table, every leaked transaction is rolled back on return (or its connection
//! retired), every discarded connection is replaced, and no client ever sees an error.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cylinder::{Lease, Pool};
use rusqlite::{params, Connection};

const THREADS: usize = 8;
const SIZE: usize = 8;
const RUN_FOR: Duration = Duration::from_secs(2);
/// How often the breaking thread breaks a connection.
const BREAK_EVERY: Duration = Duration::from_millis(20);

/// A database file in the temporary directory, removed (with its WAL files) on drop.
struct TempDb(PathBuf);

impl TempDb {
    fn new(tag: &str) -> TempDb {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!(
            "cylinder-{tag}-{}-{nanos}.sqlite3",
            std::process::id()
        ));
        let db = TempDb(path);
        let conn = open(&db.0).expect("create the database");
        conn.execute_batch(
            "CREATE TABLE items (id INTEGER PRIMARY KEY, thread INTEGER NOT NULL, n INTEGER NOT NULL)",
        )
        .expect("create the table");
        db
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn count(&self) -> u64 {
        let conn = open(&self.0).expect("open the database");
        conn.query_row("SELECT count(*) FROM items", [], |row| row.get::<_, i64>(0))
            .expect("count the rows") as u64
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut name = self.0.clone().into_os_string();
            name.push(suffix);
            let _ = std::fs::remove_file(name);
        }
    }
}

/// Opens a connection the way the pool does: WAL, and a busy timeout so writers queue.
fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    init(&conn)?;
    Ok(conn)
}

fn init(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(10))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    assert_eq!(mode.to_lowercase(), "wal");
    conn.execute_batch("PRAGMA synchronous = NORMAL")
}

/// How the breaking thread breaks a connection.
#[derive(Clone, Copy, PartialEq)]
enum Break {
    /// `BEGIN` and an insert, never committed: the pool's reset (or is_broken) must deal.
    Leak,
    /// `Lease::discard`: the pool must start a replacement.
    Discard,
}

/// What the clients saw.
#[derive(Default)]
struct Tally {
    committed: AtomicU64,
    queries: AtomicU64,
    leaked: AtomicU64,
    discarded: AtomicU64,
    errors: AtomicU64,
}

/// 8 threads for `RUN_FOR`; thread 0 breaks a connection every `BREAK_EVERY`, cycling
/// through `breaks`.
fn run(pool: &Pool<Connection>, breaks: &[Break]) -> Tally {
    let tally = Tally::default();
    let deadline = Instant::now() + RUN_FOR;
    thread::scope(|s| {
        for t in 0..THREADS {
            let (pool, tally) = (pool.clone(), &tally);
            s.spawn(move || {
                let mut mine = 0i64; // rows this thread committed
                let mut round = 0u64;
                let (mut broken, mut next_break) = (0usize, Instant::now());
                while Instant::now() < deadline {
                    round += 1;
                    if t == 0 && Instant::now() >= next_break {
                        next_break += BREAK_EVERY;
                        let how = breaks[broken % breaks.len()];
                        broken += 1;
                        let conn = match pool.checkout() {
                            Ok(conn) => conn,
                            Err(e) => {
                                eprintln!("thread {t}: checkout failed: {e}");
                                tally.errors.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                        };
                        match how {
                            Break::Leak => {
                                // An open transaction with an uncommitted row, given back.
                                let leaked = conn.execute_batch("BEGIN").and_then(|()| {
                                    conn.execute(
                                        "INSERT INTO items (thread, n) VALUES (?1, -1)",
                                        params![t as i64],
                                    )
                                });
                                if let Err(e) = leaked {
                                    eprintln!("thread {t}: could not leak a transaction: {e}");
                                    tally.errors.fetch_add(1, Ordering::Relaxed);
                                }
                                tally.leaked.fetch_add(1, Ordering::Relaxed);
                                drop(conn);
                            }
                            Break::Discard => {
                                Lease::discard(conn);
                                tally.discarded.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        continue;
                    }

                    // A transaction of one insert.
                    let n = round as i64;
                    let done = pool.transaction(|conn: &mut Connection| -> rusqlite::Result<()> {
                        let tx = conn.transaction()?;
                        tx.execute(
                            "INSERT INTO items (thread, n) VALUES (?1, ?2)",
                            params![t as i64, n],
                        )?;
                        tx.commit()
                    });
                    match done {
                        Ok(Ok(())) => {
                            mine += 1;
                            tally.committed.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Err(e)) => {
                            eprintln!("thread {t}: transaction failed: {e}");
                            tally.errors.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            eprintln!("thread {t}: checkout failed: {e}");
                            tally.errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }

                    // Every 4th round, a query: this thread's rows are exactly the ones it
                    // committed (no leaked row is ever visible).
                    if round % 4 == 1 {
                        let seen = pool.transaction(|conn: &mut Connection| {
                            conn.query_row(
                                "SELECT count(*) FROM items WHERE thread = ?1",
                                params![t as i64],
                                |row| row.get::<_, i64>(0),
                            )
                        });
                        match seen {
                            Ok(Ok(seen)) => {
                                assert_eq!(seen, mine, "thread {t} sees {seen} rows of its {mine}");
                                tally.queries.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(Err(e)) => {
                                eprintln!("thread {t}: query failed: {e}");
                                tally.errors.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                eprintln!("thread {t}: checkout failed: {e}");
                                tally.errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            });
        }
    });
    tally
}

/// Waits (a few seconds at most) until the pool has `size` workers and `starts` reached
/// `expected`: replacements start in the background.
fn settle(pool: &Pool<Connection>, starts: &AtomicU64, expected: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if pool.stats().size == SIZE && starts.load(Ordering::SeqCst) >= expected {
            return;
        }
        thread::sleep(Duration::from_millis(10));
    }
    let stats = pool.stats();
    panic!(
        "the pool did not settle: size {} of {SIZE}, {} starts of {expected}",
        stats.size,
        starts.load(Ordering::SeqCst)
    );
}

#[test]
fn reset_rolls_back_leaked_transactions_and_discards_are_replaced() {
    let db = TempDb::new("reset");
    let path = db.path().to_path_buf();
    let starts = Arc::new(AtomicU64::new(0));
    let rollbacks = Arc::new(AtomicU64::new(0));
    let pool = {
        let (starts, rollbacks) = (starts.clone(), rollbacks.clone());
        Pool::builder()
            .size(SIZE)
            .checkout_timeout(Duration::from_secs(10))
            .reset(move |conn: &mut Connection| {
                if conn.is_autocommit() {
                    Ok(())
                } else {
                    rollbacks.fetch_add(1, Ordering::SeqCst);
                    conn.execute_batch("ROLLBACK")
                }
            })
            .build(move || {
                starts.fetch_add(1, Ordering::SeqCst);
                Ok(open(&path)?)
            })
            .expect("build the pool")
    };
    assert_eq!(starts.load(Ordering::SeqCst), SIZE as u64);

    let tally = run(&pool, &[Break::Leak, Break::Discard]);
    let (committed, leaked, discarded) = (
        tally.committed.load(Ordering::SeqCst),
        tally.leaked.load(Ordering::SeqCst),
        tally.discarded.load(Ordering::SeqCst),
    );
    println!(
        "{committed} rows committed, {} queries, {leaked} transactions leaked, {discarded} connections discarded",
        tally.queries.load(Ordering::SeqCst)
    );
    assert_eq!(
        tally.errors.load(Ordering::SeqCst),
        0,
        "a client saw an error"
    );
    assert!(
        committed > 100,
        "only {committed} transactions in {RUN_FOR:?}"
    );
    assert!(
        leaked > 0 && discarded > 0,
        "the breaking thread did not break anything"
    );

    // Every leaked transaction was rolled back on return, every discard replaced.
    assert_eq!(rollbacks.load(Ordering::SeqCst), leaked);
    settle(&pool, &starts, SIZE as u64 + discarded);
    let stats = pool.stats();
    assert_eq!(starts.load(Ordering::SeqCst), SIZE as u64 + discarded);
    assert!(stats.restarts >= discarded, "{} restarts", stats.restarts);
    assert!(stats.discards >= discarded, "{} discards", stats.discards);

    // The rows the clients counted are the rows in the table: no leaked row survived.
    drop(pool);
    assert_eq!(db.count(), committed);
}

#[test]
fn is_broken_retires_connections_left_in_a_transaction() {
    let db = TempDb::new("broken");
    let path = db.path().to_path_buf();
    let starts = Arc::new(AtomicU64::new(0));
    let pool = {
        let starts = starts.clone();
        Pool::builder()
            .size(SIZE)
            .checkout_timeout(Duration::from_secs(10))
            .is_broken(|conn: &mut Connection| !conn.is_autocommit())
            .build(move || {
                starts.fetch_add(1, Ordering::SeqCst);
                Ok(open(&path)?)
            })
            .expect("build the pool")
    };

    let tally = run(&pool, &[Break::Leak]);
    let (committed, leaked) = (
        tally.committed.load(Ordering::SeqCst),
        tally.leaked.load(Ordering::SeqCst),
    );
    println!("{committed} rows committed, {leaked} connections left in a transaction");
    assert_eq!(
        tally.errors.load(Ordering::SeqCst),
        0,
        "a client saw an error"
    );
    assert!(leaked > 0);

    // Each connection returned inside a transaction was retired (closing it rolls back) and
    // replaced.
    settle(&pool, &starts, SIZE as u64 + leaked);
    assert_eq!(starts.load(Ordering::SeqCst), SIZE as u64 + leaked);
    assert!(pool.stats().restarts >= leaked);

    drop(pool);
    assert_eq!(db.count(), committed);
}

/// The same pool built from r2d2's SQLite manager: its connections are checked before each
/// lease (`is_valid`); a discarded one is replaced.
#[cfg(feature = "r2d2")]
#[test]
fn r2d2_sqlite_manager() {
    let db = TempDb::new("r2d2");
    let manager = r2d2_sqlite::SqliteConnectionManager::file(db.path())
        .with_init(|conn: &mut Connection| init(conn));
    let pool = Pool::builder()
        .size(SIZE)
        .checkout_timeout(Duration::from_secs(10))
        .build_with(manager)
        .expect("build the pool");

    let tally = run(&pool, &[Break::Discard]);
    let (committed, discarded) = (
        tally.committed.load(Ordering::SeqCst),
        tally.discarded.load(Ordering::SeqCst),
    );
    println!("{committed} rows committed, {discarded} connections discarded");
    assert_eq!(
        tally.errors.load(Ordering::SeqCst),
        0,
        "a client saw an error"
    );
    assert!(discarded > 0);

    let deadline = Instant::now() + Duration::from_secs(5);
    while pool.stats().size < SIZE && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    let stats = pool.stats();
    assert_eq!(stats.size, SIZE);
    assert!(stats.restarts >= discarded, "{} restarts", stats.restarts);

    drop(pool);
    assert_eq!(db.count(), committed);
}
