//! Connection pools, round-robin balancing and worker threads for threaded Rust, with no
//! async runtime.
//!
//! - [`Pool<W>`](Pool) owns a set of workers of any type (`rusqlite::Connection`,
//!   `postgres::Client`, an [`Actor`], anything `Send`) and leases each to one holder at a
//!   time: blocking, timed and non-blocking checkout, a guard that gives the worker back when
//!   it drops (also while its thread panics), checks and resets, and a background thread
//!   that replaces broken workers so that the pool keeps its size.
//! - [`Balancer<W>`](Balancer) hands out the *shared* workers of a supervisor round-robin,
//!   without locks or allocation; dead workers leave rotation, and a supervisor that is gone
//!   is reconnected in the background.
//! - [`Actor`] is a worker thread with a mailbox (`call`, `cast`), the analogue of Erlang's
//!   `gen_server`.
//!
//! They are the Rust versions of two Erlang libraries, gruff (the pool) and revolver (the
//! balancer).
//!
//! # A pool of connections
//!
//! ```
//! use std::time::Duration;
//! use cylinder::Pool;
//! use rusqlite::Connection;
//!
//! let path = std::env::temp_dir().join(format!("cylinder-doc-{}.db", std::process::id()));
//! let pool = Pool::builder()
//!     .size(8)
//!     .checkout_timeout(Duration::from_secs(5))
//!     .build(move || Ok(Connection::open(&path)?))?;
//!
//! // A lease derefs to the connection, mutably: rusqlite's `transaction()` needs `&mut`.
//! let mut conn = pool.checkout()?;
//! conn.execute_batch("CREATE TABLE IF NOT EXISTS hits (n INTEGER)")?;
//! let tx = conn.transaction()?;
//! tx.execute("INSERT INTO hits VALUES (1)", [])?;
//! tx.commit()?;
//! drop(conn); // back to the pool
//!
//! // Or let the pool hold the lease around a closure: the first `?` is the pool's (no
//! // connection came free in time), the second the closure's own (the query failed).
//! let hits: i64 =
//!     pool.transaction(|conn| conn.query_row("SELECT count(*) FROM hits", [], |r| r.get(0)))??;
//! assert!(hits >= 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! No newtype, no `Mutex`, no trait to implement: the pool owns each connection, and a lease
//! is the only way to it. [`Pool`] is a cheap `Clone` handle; a [`Lease`] borrows the pool,
//! and [`checkout_owned`](Pool::checkout_owned) gives an [`OwnedLease`], which is
//! `'static + Send`. The pool closes on [`close`](Pool::close), or when the last handle and
//! the last owned lease are gone: every waiter then gets [`Error::Closed`], and its
//! background thread is joined.
//!
//! ## Checks, resets and replacement
//!
//! A worker that is broken is dropped and the pool starts another in its place, by counting:
//! the pool knows how many it should have. The hooks get `&mut` the worker while the pool
//! holds it alone, never while it is leased and never under a pool lock:
//!
//! ```
//! use std::time::Duration;
//! use cylinder::{BoxError, Lease, Pool};
//! use rusqlite::Connection;
//!
//! let pool = Pool::builder()
//!     .size(4)
//!     // Before each lease (r2d2's `is_valid`): a connection that fails is replaced.
//!     .test_on_checkout(|conn: &mut Connection| conn.execute_batch("SELECT 1"))
//!     // On return (deadpool's `recycle`): roll back what a client left open.
//!     .reset(|conn: &mut Connection| -> Result<(), BoxError> {
//!         if !conn.is_autocommit() {
//!             conn.execute_batch("ROLLBACK")?;
//!         }
//!         Ok(())
//!     })
//!     .max_lifetime(Duration::from_secs(30 * 60)) // replaced when next idle or returned
//!     .build(|| Ok(Connection::open_in_memory()?))?;
//!
//! pool.checkout()?.execute_batch("BEGIN")?; // a client forgets to commit
//! assert!(pool.checkout()?.is_autocommit()); // the reset rolled it back
//!
//! Lease::discard(pool.checkout()?); // gives a connection up: the pool opens another
//! let detached: Connection = Lease::take(pool.checkout()?); // yours now; the pool opens another
//! # drop(detached);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A check, test or reset that errs or panics retires the worker, and its error is kept: it
//! is the cause in the error a caller gets when no worker can be had. The checkout check is
//! off unless you give one; it costs one call per checkout (a round trip to the server for
//! `SELECT 1`) and buys that a connection the server killed is never handed to a client.
//!
//! Or put the four hooks in one [`Manager`] (`start`, `check`, `is_broken`, `reset`) and
//! [`build_with`](PoolBuilder::build_with) it. With the cargo feature `r2d2`, every
//! `r2d2::ManageConnection` is a `Manager`, so `r2d2_sqlite`'s, `r2d2_postgres`'s and diesel's
//! managers plug in unchanged:
//!
//! ```
//! # #[cfg(feature = "r2d2")] {
//! use cylinder::Pool;
//!
//! /// An r2d2 manager, as r2d2_sqlite's or r2d2_postgres's.
//! struct Numbers;
//!
//! impl r2d2::ManageConnection for Numbers {
//!     type Connection = u32;
//!     type Error = std::io::Error;
//!     fn connect(&self) -> Result<u32, std::io::Error> {
//!         Ok(7)
//!     }
//!     fn is_valid(&self, _conn: &mut u32) -> Result<(), std::io::Error> {
//!         Ok(())
//!     }
//!     fn has_broken(&self, _conn: &mut u32) -> bool {
//!         false
//!     }
//! }
//!
//! let pool = Pool::builder().size(2).build_with(Numbers)?;
//! assert_eq!(*pool.checkout()?, 7);
//! # }
//! # Ok::<(), cylinder::Error>(())
//! ```
//!
//! ## A database that is down
//!
//! [`build`](PoolBuilder::build) fails fast, with the cause, when no worker can start.
//! [`build_unchecked`](PoolBuilder::build_unchecked) returns at once and starts the workers
//! in the background, retried every `reconnect_delay`: services may start before their
//! database. While nothing is running and starts fail, a checkout fails with
//! [`Error::Disconnected`] at the pool's next start attempt (a non-blocking one at once),
//! whose `source()` is the start's error (revolver's fuse; r2d2 would wait its whole
//! timeout first), and whose message says what the pool looked like; once a start
//! succeeds, checkouts work again by themselves.
//!
//! ```
//! use std::error::Error as _;
//! use cylinder::{BoxError, Error, Pool};
//!
//! let pool = Pool::builder()
//!     .size(8)
//!     .build_unchecked(|| -> Result<u32, BoxError> { Err("connection refused".into()) })?;
//! let err = pool.checkout().unwrap_err();
//! assert!(matches!(err, Error::Disconnected { .. }));
//! // "disconnected: no worker is running (size 0, leased 0, idle 0, waiting 0, starting 0)"
//! assert!(err.to_string().starts_with("disconnected: no worker is running (size 0,"));
//! assert_eq!(err.source().unwrap().to_string(), "connection refused");
//! # Ok::<(), Error>(())
//! ```
//!
//! Starts run outside every pool lock, several in parallel (8 at most), and
//! [`stats`](Pool::stats) never waits on one.
//!
//! # The balancer
//!
//! [`Balancer<W>`](Balancer) hands out the shared children of a supervisor (`W:` [`Worker`],
//! held as `Arc<W>`), where the pool owns its workers. The supervisor lists them: any
//! `Fn() -> Result<Vec<Arc<W>>, BoxError>` closure, a [`Factory`] that starts workers from a
//! closure and restarts dead ones, or your own [`Supervisor`]. The balancer is a cheap
//! `Clone` handle; its background thread stops on [`close`](Balancer::close) or when the
//! last handle is dropped.
//!
//! - [`get`](Balancer::get) hands out the next live worker, round-robin, with no lock and no
//!   allocation. Each thread's rotation continues after the worker it was given, so whatever
//!   is skipped (a dead worker, a leased one, one over `max_queue_len`) the others share the
//!   calls evenly.
//! - Dead workers leave rotation; below `min_alive_ratio` (default 1.0) the set is reloaded
//!   once. A `get()` that finds the whole set dead reloads at once instead of failing.
//! - Supervisor gone or no live children: [`Error::Disconnected`] at once, with the cause,
//!   and the balancer reconnects by itself every `reconnect_delay` (revolver's fuse).
//! - Lease mode (revolver's): [`lease`](Balancer::lease) holds a free live worker (the one
//!   this thread leased last if it is free, else the next) exclusively until the guard drops, [`transaction`](Balancer::transaction) runs a closure
//!   on one; every live worker leased → [`Error::Overload`] at once. Leases survive reloads
//!   and reconnects.
//!
//! ```
//! use std::sync::Arc;
//! use cylinder::{Balancer, BoxError, Error, Worker};
//!
//! struct Conn(u32);
//! impl Worker for Conn {} // override is_alive / queue_len if the worker can die or queue
//!
//! let conns = vec![Arc::new(Conn(1)), Arc::new(Conn(2))];
//! let balancer = Balancer::builder()
//!     .min_alive_ratio(0.75)
//!     .max_queue_len(10)
//!     .build_with(move || -> Result<_, BoxError> { Ok(conns.clone()) })?;
//!
//! // Round-robin: 1, 2, 1, 2, ... or 2, 1, 2, 1, ...
//! let first = balancer.get()?.0;
//! let second = balancer.get()?.0;
//! assert_ne!(first, second);
//!
//! // Lease mode: exclusive and non-blocking; a thread gets back the worker it leased last
//! // while that one is free.
//! assert_eq!(balancer.transaction(|c| c.0)?, balancer.transaction(|c| c.0)?);
//! let a = balancer.lease()?;
//! let b = balancer.lease()?;
//! assert!(matches!(balancer.lease(), Err(Error::Overload)));
//! drop((a, b));
//! # Ok::<(), Error>(())
//! ```
//!
//! [`len`](Balancer::len), [`map`](Balancer::map), [`reloads`](Balancer::reloads) and `Debug`
//! never wait for the supervisor, and no user code (supervisor, event callback, a worker's
//! `Drop`) runs under a lock of the balancer, so an `on_event` callback may call the
//! balancer, even take a lease or drop its last handle.
//!
//! # Worker threads
//!
//! [`Actor`] is a worker thread with a mailbox ([`call`](Actor::call),
//! [`cast`](Actor::cast), [`queue_len`](Actor::queue_len)), running a [`Behaviour`]. A pool
//! of actors replaces one whose handler panicked, with no configuration:
//!
//! ```
//! use cylinder::{Actor, Behaviour, Error, Pool};
//!
//! struct Add;
//!
//! impl Behaviour for Add {
//!     type Request = (i64, i64);
//!     type Reply = i64;
//!     fn handle_call(&mut self, (a, b): (i64, i64)) -> i64 {
//!         a + b
//!     }
//! }
//!
//! // `is_alive`: an actor whose handler panicked is seen dead and replaced.
//! let add = Pool::builder().size(8).is_alive(Actor::is_alive);
//! let add = add.build(|| Ok(Actor::spawn(Add)?))?;
//! let sum = add.transaction(|worker| worker.call((1, 2)))??;
//! assert_eq!(sum, 3);
//! # Ok::<(), Error>(())
//! ```
//!
//! A `call` to an idle actor (its mailbox empty, no message being handled) runs
//! `handle_call` on the calling thread: the caller takes the actor's state for the length of
//! the call, as the actor's thread does for a message. Messages are still handled one at a
//! time and in the order each sender sent them, a handler's panic still kills the actor and
//! answers [`Error::WorkerDied`], and the call costs a few nanoseconds instead of a hand-off
//! between two threads. A call to a busy actor, every `call_timeout` and every `cast` go
//! through the mailbox. A behaviour whose handler must run on the actor's own thread
//! (thread-locals, a thread priority) says `const INLINE_CALLS: bool = false;`.
//!
//! # Options, errors and reports
//!
//! The options, with their defaults, are on [`PoolBuilder`] and [`BalancerBuilder`]. Every
//! option is checked when the pool or balancer is built: a bad value is an
//! [`Error::InvalidConfig`] naming the option, never a panic; `Duration::MAX` means "no
//! limit".
//!
//! There is one [`Error`] type. A variant's cause (a start's or supervisor's error, a panic's
//! message, why the set is empty) is reachable through `source()` and never repeated in its
//! own message, so a chain printed link by link names each cause once. Every public function
//! documents its errors.
//!
//! Lifecycle [`Event`]s go to an `on_event` callback on either builder (for metrics), and
//! reports go through the `log` crate: revolver's `found N new of M total, connected`,
//! `worker I died (A of N alive)`, `disconnected (cause), retrying in D`; a pool's failed
//! starts with their cause, retired workers and why, slow leases.
//!
//! # From Erlang, and from the peers
//!
//! | seed | feature | cylinder |
//! |---|---|---|
//! | gruff | fixed-size pool, exclusive access | [`Pool`], [`Lease`] (`Deref + DerefMut`), [`OwnedLease`] |
//! | gruff | blocking checkout, transactions | `checkout()`, `checkout_timeout(d)`, `try_checkout()`, `transaction(\|w\| ..)` |
//! | gruff | worker fails → restarted | broken, discarded or detached workers are replaced; the size is restored |
//! | gruff | client fails → worker freed | the lease gives the worker back in `Drop`, also while a panic unwinds ([`OnClientPanic::Discard`] replaces it instead) |
//! | gruff | waiting client fails → evicted | a waiter that times out leaves the line and takes nothing |
//! | revolver | `balance`, `pid` round-robin | `Balancer::builder().build_with(supervisor)`, `get()` |
//! | revolver | dead worker leaves rotation, reload below `min_alive_ratio` | the same |
//! | revolver | disconnected fuse, reconnect | `Error::Disconnected { cause, .. }`, retried every `reconnect_delay` |
//! | revolver | `max_message_queue_length` | `max_queue_len(n)` → `Error::Overload` |
//! | revolver | lease mode, `transaction/2` | `Balancer::lease()`, `Balancer::transaction(f)` |
//! | revolver | `map/2`, `connect/1`, `connect_at_start` | `map(f)`, `connect()`, `connect_at_start(false)` |
//! | poolboy, pooler, r2d2, deadpool | overflow, checks, lifetimes, managers | `max_overflow`, `test_on_checkout`, `is_broken`, `reset`, `max_lifetime`, `idle_timeout`, `min_idle`, `build_unchecked`, [`Manager`], the `r2d2` feature |
//!
//! # Cargo features
//!
//! - `r2d2` (off by default): every `r2d2::ManageConnection` is a [`Manager`].
//!
//! What cylinder promises and the tests and models that show it, its measured performance,
//! and what changed since 0.1 are in the repository's `GUARANTEES.md`, `BENCHMARKS.md` and
//! `CHANGELOG.md`.
#![forbid(unsafe_code)]
// `cargo clippy -- -W clippy::pedantic` is clean on `src/` with these, each allowed on purpose:
#![allow(
    // `Debug` shows a pool's or actor's name and state, not its internals.
    clippy::missing_fields_in_debug,
    // Durations as nanoseconds in a u64 (584 years), counts that fit a usize.
    clippy::cast_possible_truncation,
    // The free list's parked counts are summed as signed (a count may lag), then clamped.
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss,
    // Ratios of small counts (`min_alive_ratio`).
    clippy::cast_precision_loss,
    // Builders and constructors take what they keep; some keep it only on one path.
    clippy::needless_pass_by_value,
    // The event hook is passed as the field holds it, on every event.
    clippy::ref_option,
    // A guard type declared beside the one function that uses it.
    clippy::items_after_statements,
    // A reply slot: `None`, nothing yet; `Some(None)`, the actor died first.
    clippy::option_option,
    // The builder's options are independent switches.
    clippy::struct_excessive_bools,
    // The lease fast path is inlined into the caller on purpose, measured in BENCHMARKS.md.
    clippy::inline_always,
    // A worker's entry lives boxed: it moves through the free list as one pointer.
    clippy::unnecessary_box_returns
)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

/// The README's examples, run as doctests (`cargo test --doc`); the README itself shows them
/// as plain programs.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

mod actor;
mod balancer;
mod contain;
mod error;
mod event;
#[cfg(any(feature = "metrics", loom))]
mod last_word;
mod pool;
mod reaper;
mod stripe;
mod sync;
mod worker;

pub use actor::{Actor, Behaviour};
pub use balancer::{
    Balancer, BalancerBuilder, BalancerLease, Connected, Factory, PoolsDown, Strategy, Supervisor,
    WorkerRef,
};
pub use error::{BoxError, Cause, Error, PoolState};
pub use event::Event;
pub use pool::{
    CheckOutcome, Lease, Manager, OnClientPanic, OwnedLease, Pool, PoolBuilder, PoolStats,
    QueueMode, MAX_POOL_SIZE,
};
pub use worker::Worker;

/// The protocol of a pool's gauges, for the loom models (built only with `--cfg loom`).
#[cfg(loom)]
#[doc(hidden)]
pub use last_word::LastWord;
