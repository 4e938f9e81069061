//! Loom models of the pool's real code (built through `src/sync.rs` under `--cfg loom`).
#![cfg(loom)]

use std::sync::Arc;
use std::time::Duration;

use cylinder::{BoxError, Error, Pool, Worker};
use loom::sync::atomic::{AtomicBool, Ordering};
use loom::thread;

/// A worker whose "in use" flag is loom-visible, so a double lease is an assertion failure
/// in some explored interleaving.
struct Slot {
    in_use: AtomicBool,
    alive: AtomicBool,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            in_use: AtomicBool::new(false),
            alive: AtomicBool::new(true),
        }
    }
    fn enter(&self) {
        assert!(
            !self.in_use.swap(true, Ordering::AcqRel),
            "a worker leased twice"
        );
    }
    fn leave(&self) {
        self.in_use.store(false, Ordering::Release);
    }
}

impl Worker for Slot {
    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }
}

/// How a release serves the line in a model: handed straight to the longest waiter, or put
/// back with the waiter woken to compete for it. (Loom runs on real time only for this
/// choice, so the models pin it at one end: with the default, it would depend on timing.)
#[derive(Clone, Copy)]
enum Serve {
    Fifo,
    Compete,
}

const BOTH: [Serve; 2] = [Serve::Fifo, Serve::Compete];

fn pool_serving(size: usize, serve: Serve) -> Arc<Pool<Slot>> {
    pool_with(size, 0, serve)
}

fn pool_with(size: usize, max_overflow: usize, serve: Serve) -> Arc<Pool<Slot>> {
    let patience = match serve {
        Serve::Fifo => Duration::ZERO,
        Serve::Compete => Duration::MAX,
    };
    Arc::new(
        Pool::builder()
            .size(size)
            .max_overflow(max_overflow)
            .checkout_timeout(Duration::MAX)
            .fifo_after(patience)
            .build(|| -> Result<Slot, BoxError> { Ok(Slot::new()) })
            .unwrap(),
    )
}

/// Three threads (this one and two more) each lease a worker once.
fn three_users(pool: &Arc<Pool<Slot>>) {
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let pool = pool.clone();
            thread::spawn(move || use_once(&pool))
        })
        .collect();
    use_once(pool);
    for t in threads {
        t.join().unwrap();
    }
}

fn use_once(pool: &Pool<Slot>) {
    let lease = pool.checkout().unwrap();
    lease.enter();
    lease.leave();
}

/// Runs `test` under loom once for each way of serving the line.
fn model(test: impl Fn(Serve) + Sync + Send + Copy + 'static) {
    for serve in BOTH {
        let mut builder = loom::model::Builder::new();
        if builder.preemption_bound.is_none() {
            builder.preemption_bound = Some(3);
        }
        builder.check(move || test(serve));
    }
}

/// Two threads over one slot: mutual exclusion, and no lost wake-up (a lost one would leave
/// a thread blocked forever, which loom reports as a deadlock).
#[test]
fn two_threads_one_slot() {
    model(|serve| {
        let pool = pool_serving(1, serve);
        let other = pool.clone();
        let t = thread::spawn(move || use_once(&other));
        use_once(&pool);
        t.join().unwrap();
        let stats = pool.stats();
        assert_eq!((stats.free, stats.leased, stats.waiters), (1, 0, 0));
    });
}

/// Three threads over two slots.
#[test]
fn three_threads_two_slots() {
    model(|serve| {
        let pool = pool_serving(2, serve);
        three_users(&pool);
        let stats = pool.stats();
        assert_eq!((stats.free, stats.leased, stats.waiters), (2, 0, 0));
    });
}

/// A waiter times out while the holder releases: the waiter either got the worker or took
/// nothing, and the worker ends up free either way.
#[test]
fn timeout_racing_a_release() {
    model(|serve| {
        let pool = pool_serving(1, serve);
        let lease = pool.checkout().unwrap();
        let waiter_pool = pool.clone();
        let waiter =
            thread::spawn(
                move || match waiter_pool.checkout_timeout(Duration::from_millis(1)) {
                    Ok(lease) => {
                        lease.enter();
                        lease.leave();
                        true
                    }
                    Err(Error::Timeout(_)) => false,
                    Err(other) => panic!("unexpected {other}"),
                },
            );
        drop(lease);
        waiter.join().unwrap();
        let stats = pool.stats();
        assert_eq!((stats.free, stats.leased, stats.waiters), (1, 0, 0));
    });
}

/// Close while a waiter is parked: the waiter wakes with `Closed`.
#[test]
fn close_with_a_waiter_parked() {
    model(|serve| {
        let pool = pool_serving(1, serve);
        let lease = pool.checkout().unwrap();
        let waiter_pool = pool.clone();
        let waiter = thread::spawn(move || waiter_pool.checkout().map(|_| ()));
        pool.close();
        assert!(matches!(waiter.join().unwrap(), Err(Error::Closed)));
        drop(lease);
    });
}

/// A leased worker dies; its release retires it and the reaper's round hands the
/// replacement to the parked waiter.
#[test]
fn a_dead_workers_replacement_reaches_a_waiter() {
    model(|serve| {
        let pool = pool_serving(1, serve);
        let lease = pool.checkout().unwrap();
        let waiter_pool = pool.clone();
        let waiter = thread::spawn(move || use_once(&waiter_pool));
        lease.alive.store(false, Ordering::Release);
        drop(lease);
        pool.run_reaper_round();
        waiter.join().unwrap();
        let stats = pool.stats();
        assert_eq!(
            (stats.free, stats.size, stats.restarts, stats.discards),
            (1, 1, 1, 1)
        );
    });
}

/// Overflow: one worker and one temporary one, three threads. No double lease, and every
/// temporary worker is gone at the end (handed to a waiter or retired).
#[test]
fn overflow_with_three_threads() {
    model(|serve| {
        let pool = pool_with(1, 1, serve);
        three_users(&pool);
        let stats = pool.stats();
        assert_eq!((stats.free, stats.leased, stats.overflow), (1, 0, 0));
    });
}

/// A shrink racing the release of a worker it lets go: the lease is never revoked, the
/// released worker is dropped or kept but never lost or doubled, and the pool ends at its
/// new size.
#[test]
fn shrink_racing_a_release() {
    model(|serve| {
        let pool = pool_serving(2, serve);
        let user = pool.clone();
        let holder = thread::spawn(move || use_once(&user));
        pool.resize(1).unwrap();
        holder.join().unwrap();
        let stats = pool.stats();
        assert_eq!((stats.size, stats.free, stats.leased), (1, 1, 0));
    });
}

/// Broadcast racing a checkout: `map` holds the free workers exclusively while it runs, and
/// gives every one back.
#[test]
fn map_racing_a_checkout() {
    model(|serve| {
        let pool = pool_serving(2, serve);
        let user = pool.clone();
        let t = thread::spawn(move || use_once(&user));
        let visited = pool.map(|slot| {
            slot.enter();
            slot.leave();
        });
        assert!(visited.len() <= 2);
        t.join().unwrap();
        let stats = pool.stats();
        assert_eq!((stats.free, stats.leased, stats.waiters), (2, 0, 0));
    });
}
