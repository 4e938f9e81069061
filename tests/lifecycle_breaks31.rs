//! Thirty-first breaking pass: away from the `max_lifetime` corner the last fifteen passes
//! hammered, attacked through the fault families: `map` with callbacks that re-enter
//! (`close`, `resize`, `evict_all`), event callbacks that drop the last handle on a start
//! thread or take leases, `checkout_timeout` edges (zero, `Duration::MAX`), owned leases
//! that outlive every handle, a burst of sixteen threads on two workers, `resize` racing
//! `close`, `idle_timeout`, the actor (late replies whose `Drop` panics, `call_timeout`
//! of zero, `stop` from a handler), and `Balancer<Pool<W>>::checkout` over busy pools.
//!
//! Tests whose doc comment starts with "Found" are one bug each, named after its scenario,
//! failing on the code they were written against: one, in `Balancer<Pool<W>>::checkout_timeout`
//! (src/balancer/pools.rs), which waited out its whole time in the first busy pool's line
//! while another pool's worker sat free. Fixed: the other busy pools nudge the waiter when
//! they keep a worker free (`Listeners` in src/pool/listeners.rs). Those marked "Tried"
//! document what was tried and held.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{eventually, quiet_panics, within, Tracked};
use cylinder::{Actor, Balancer, Behaviour, Error, Event, Lease, OwnedLease, Pool};

/// A start closure of `Tracked` workers, counting them alive in `live`.
fn tracked(
    live: &Arc<AtomicUsize>,
) -> impl Fn() -> Result<Tracked, cylinder::BoxError> + Send + Sync + 'static {
    let live = live.clone();
    move || {
        live.fetch_add(1, Ordering::SeqCst);
        Ok(Tracked(live.clone()))
    }
}

/// Found. A balancer over two pools of one worker each, both leased. A client calls
/// `checkout_timeout(1.5 s)`; 100 ms later the lease of the pool the client is NOT waiting
/// on is dropped, so that pool has a free worker for the remaining 1.4 s; the other pool's
/// lease is held for 2 s.
///
/// Expected: `Balancer::checkout_timeout`'s rustdoc: "[`Error::Timeout`] when no worker came
/// free in time in a live pool" — a worker came free in a live pool 1.4 s before the
/// deadline, so the call is served by it (GUARANTEES: "`Balancer<Pool<W>>::checkout` ...
/// fails over ... to the next in the same call").
///
/// Happened: `Timeout` after the whole 1.5 s, with the other pool's worker free all along:
/// `checkout_timeout` (src/balancer/pools.rs) waits in the busy pools' lines one after
/// another (`for index in busy { wait_on(.., deadline, ..) }`), the first with the whole time
/// left, and never looks at the others again while it waits.
#[test]
fn balancer_checkout_waiting_on_one_busy_pool_misses_a_worker_freed_in_another() {
    let pools: Vec<Pool<usize>> = (0..2)
        .map(|n| {
            Pool::builder()
                .name(format!("server-{n}"))
                .size(1)
                .build(move || Ok(n))
                .unwrap()
        })
        .collect();
    let balancer = Balancer::over_pools(pools.clone()).unwrap();
    let held: Vec<OwnedLease<usize>> = pools.iter().map(|p| p.checkout_owned().unwrap()).collect();
    let client = {
        let balancer = balancer.clone();
        thread::spawn(move || {
            let began = Instant::now();
            let got = balancer.checkout_timeout(Duration::from_millis(1500));
            (got.map(|lease| *lease), began.elapsed())
        })
    };
    // Which pool's line the client waits in.
    assert!(
        eventually(Duration::from_secs(2), || pools
            .iter()
            .any(|p| p.stats().waiters == 1)),
        "the client never waited in a line"
    );
    let waited_on = pools.iter().position(|p| p.stats().waiters == 1).unwrap();
    let other = 1 - waited_on;
    thread::sleep(Duration::from_millis(100));
    let mut held: Vec<Option<OwnedLease<usize>>> = held.into_iter().map(Some).collect();
    drop(held[other].take());
    let (got, took) = client.join().unwrap();
    let freed_stats = pools[other].stats();
    let waited_stats = pools[waited_on].stats();
    drop(held);
    // Served elsewhere: no timeout counted in the line it left, and it left that line.
    assert_eq!(
        (waited_stats.timeouts, waited_stats.waiters),
        (0, 0),
        "{waited_stats:?}"
    );
    assert!(
        matches!(got, Ok(n) if n == other),
        "pool {other}'s worker was free from ~100 ms into a 1.5 s checkout, yet the balancer \
         answered {got:?} after {took:?} (waited in pool {waited_on}'s line only); pool \
         {other}: {freed_stats:?}"
    );
}

/// Tried. `map` whose callback closes the pool (on the first worker it is handed): the
/// workers `map` holds go back into a closed pool. Every worker is dropped by the time
/// `map` returns, `drain` returns at once, and checkouts answer `Closed`.
#[test]
fn map_callback_closing_the_pool_leaves_no_worker_alive() {
    let live = Arc::new(AtomicUsize::new(0));
    let pool = Pool::builder().size(3).build(tracked(&live)).unwrap();
    let inner = pool.clone();
    let mut first = true;
    let seen = pool.map(|_| {
        if std::mem::take(&mut first) {
            inner.close();
        }
    });
    assert_eq!(seen.len(), 3);
    assert_eq!(live.load(Ordering::SeqCst), 0, "{:?}", pool.stats());
    assert_eq!(pool.stats().size, 0);
    assert!(pool.drain(Duration::from_millis(200)).is_ok());
    assert!(matches!(pool.checkout(), Err(Error::Closed)));
}

/// Tried. `map` whose callback shrinks the pool from four to one: the workers it holds come
/// back above the new size and are closed; the pool settles at one worker alive.
#[test]
fn map_callback_shrinking_the_pool_settles_at_the_new_size() {
    let live = Arc::new(AtomicUsize::new(0));
    let pool = Pool::builder().size(4).build(tracked(&live)).unwrap();
    let inner = pool.clone();
    let mut first = true;
    pool.map(|_| {
        if std::mem::take(&mut first) {
            inner.resize(1).unwrap();
        }
    });
    common::settles(&pool, &live, 1, "after a map that shrank the pool");
    assert_eq!(pool.stats().size, 1);
}

/// Tried. `map` whose callback calls `evict_all`: the workers `map` holds are evicted when
/// they come back, the idle ones at once; every worker is replaced (only fresh ones lease).
#[test]
fn map_callback_evicting_all_replaces_every_worker() {
    let started = Arc::new(AtomicUsize::new(0));
    let s = started.clone();
    let pool = Pool::builder()
        .size(3)
        .build(move || Ok(s.fetch_add(1, Ordering::SeqCst)))
        .unwrap();
    let inner = pool.clone();
    let mut first = true;
    pool.map(|_| {
        if std::mem::take(&mut first) {
            inner.evict_all();
        }
    });
    assert!(
        eventually(Duration::from_secs(3), || {
            let s = pool.stats();
            s.size == 3 && s.free == 3 && s.starting == 0
        }),
        "{:?}",
        pool.stats()
    );
    let leases: Vec<_> = (0..3).map(|_| pool.checkout().unwrap()).collect();
    for lease in &leases {
        assert!(
            **lease >= 3,
            "worker {} from before evict_all leased",
            **lease
        );
    }
}

/// Tried. The last handle is dropped by an `on_event` callback on a start thread (the
/// replacement of a discarded worker reports `WorkerRestarted`): the pool closes from its
/// own start thread, joins its reaper, and drops every worker; nothing hangs or panics.
#[test]
fn event_callback_dropping_the_last_handle_on_a_start_thread_closes_cleanly() {
    let live = Arc::new(AtomicUsize::new(0));
    let stash: Arc<Mutex<Option<Pool<Tracked>>>> = Arc::new(Mutex::new(None));
    let on = stash.clone();
    let dropped_on = Arc::new(Mutex::new(String::new()));
    let d = dropped_on.clone();
    let pool = Pool::builder()
        .size(2)
        .on_event(move |event| {
            if *event == Event::WorkerRestarted {
                let last = on.lock().unwrap().take();
                if last.is_some() {
                    *d.lock().unwrap() = thread::current().name().unwrap_or("").to_string();
                }
                drop(last);
            }
        })
        .build(tracked(&live))
        .unwrap();
    *stash.lock().unwrap() = Some(pool.clone());
    Lease::discard(pool.checkout().unwrap());
    drop(pool);
    assert!(
        eventually(Duration::from_secs(3), || live.load(Ordering::SeqCst) == 0),
        "{} workers still alive after the last handle was dropped in a callback",
        live.load(Ordering::SeqCst)
    );
    assert!(stash.lock().unwrap().is_none());
    assert!(dropped_on.lock().unwrap().starts_with("cylinder-"));
}

/// Tried. `checkout_timeout` edges: zero with a free worker leases it; zero and 1 ns with
/// none free answer `Timeout` at once (counted); `Duration::MAX` is served by a release.
#[test]
fn checkout_timeout_zero_one_nanosecond_and_max() {
    let pool = Pool::builder().size(1).build(|| Ok(())).unwrap();
    let held = pool.checkout_timeout(Duration::ZERO).unwrap();
    for timeout in [Duration::ZERO, Duration::from_nanos(1)] {
        let began = Instant::now();
        let got = pool.checkout_timeout(timeout);
        assert!(
            matches!(got, Err(Error::Timeout { .. })),
            "{timeout:?}: {got:?}"
        );
        assert!(began.elapsed() < Duration::from_millis(500));
    }
    assert_eq!(pool.stats().timeouts, 2);
    let waiter = {
        let pool = pool.clone();
        thread::spawn(move || pool.checkout_owned_timeout(Duration::MAX).map(|_| ()))
    };
    assert!(eventually(Duration::from_secs(2), || pool.stats().waiters == 1));
    drop(held);
    assert!(waiter.join().unwrap().is_ok());
    let s = pool.stats();
    assert_eq!((s.size, s.free, s.leased, s.waiters), (1, 1, 0, 0));
}

/// Tried. An owned lease outlives every handle: the pool stays open (its other worker
/// serves nothing but stays alive) until the lease is dropped on another thread; then every
/// worker is dropped.
#[test]
fn owned_lease_outliving_every_handle_closes_the_pool_when_dropped_elsewhere() {
    let live = Arc::new(AtomicUsize::new(0));
    let pool = Pool::builder().size(2).build(tracked(&live)).unwrap();
    let lease = pool.checkout_owned().unwrap();
    drop(pool);
    thread::sleep(Duration::from_millis(50));
    assert_eq!(live.load(Ordering::SeqCst), 2);
    thread::spawn(move || drop(lease)).join().unwrap();
    assert!(
        eventually(Duration::from_secs(2), || live.load(Ordering::SeqCst) == 0),
        "{} workers alive after the last owned lease ended",
        live.load(Ordering::SeqCst)
    );
}

/// Tried. An `on_event` callback that, on each of the first five `WorkerRestarted`, takes a
/// worker with `try_checkout` and `Lease::take` (dropping it), so each take starts another:
/// a chain of five re-entrant takes on start threads. The pool settles at its size, with
/// the workers alive matching its count.
#[test]
fn event_callbacks_taking_workers_on_start_threads_settle() {
    let live = Arc::new(AtomicUsize::new(0));
    let stash: Arc<Mutex<Option<Pool<Tracked>>>> = Arc::new(Mutex::new(None));
    let on = stash.clone();
    let takes = Arc::new(AtomicUsize::new(0));
    let t = takes.clone();
    let pool = Pool::builder()
        .size(2)
        .on_event(move |event| {
            if *event == Event::WorkerRestarted && t.fetch_add(1, Ordering::SeqCst) < 5 {
                let pool = on.lock().unwrap().clone();
                if let Some(pool) = pool {
                    if let Ok(lease) = pool.try_checkout() {
                        drop(Lease::take(lease));
                    }
                }
            }
        })
        .build(tracked(&live))
        .unwrap();
    *stash.lock().unwrap() = Some(pool.clone());
    Lease::discard(pool.checkout().unwrap());
    assert!(eventually(Duration::from_secs(3), || takes
        .load(Ordering::SeqCst)
        >= 6));
    common::settles(&pool, &live, 2, "after a chain of takes in callbacks");
    assert_eq!(pool.stats().size, 2);
    stash.lock().unwrap().take();
}

/// Tried. Sixteen threads on two workers (`fifo_after(1 ms)`, a 2 s timeout), each making
/// 150 checkouts held 0–200 µs: every checkout is served, none is leased twice, and the
/// counts balance once quiet.
#[test]
fn sixteen_threads_on_two_workers_all_served() {
    let live = Arc::new(AtomicUsize::new(0));
    let l = live.clone();
    let pool = Pool::builder()
        .size(2)
        .fifo_after(Duration::from_millis(1))
        .checkout_timeout(Duration::from_secs(2))
        .build(move || {
            l.fetch_add(1, Ordering::SeqCst);
            Ok((Tracked(l.clone()), AtomicBool::new(false)))
        })
        .unwrap();
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let pool = pool.clone();
            thread::spawn(move || {
                let mut rng = common::Rng::new(i);
                for _ in 0..150 {
                    let lease = pool.checkout().expect("a checkout failed");
                    assert!(!lease.1.swap(true, Ordering::SeqCst), "double lease");
                    thread::sleep(Duration::from_micros(rng.below(200)));
                    lease.1.store(false, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s = pool.stats();
    assert_eq!(s.checkouts, 16 * 150);
    assert_eq!(s.timeouts, 0);
    common::settles(&pool, &live, 2, "after the burst");
}

/// Tried. `resize` up racing `close` from another thread, over and over: `resize` returns
/// (`Ok` or `Closed`) within its bound, and no worker is left alive once the pool closed.
#[test]
fn resize_racing_close_leaves_nothing_alive() {
    for round in 0..20 {
        let live = Arc::new(AtomicUsize::new(0));
        let l = live.clone();
        let pool = Pool::builder()
            .size(2)
            .build(move || {
                thread::sleep(Duration::from_micros(300));
                l.fetch_add(1, Ordering::SeqCst);
                Ok(Tracked(l.clone()))
            })
            .unwrap();
        let resizer = {
            let pool = pool.clone();
            thread::spawn(move || pool.resize(8))
        };
        thread::sleep(Duration::from_micros(200 * (round % 5)));
        pool.close();
        let answer = within(Duration::from_secs(2), move || resizer.join().unwrap())
            .expect("resize hung after close");
        assert!(matches!(answer, Ok(()) | Err(Error::Closed)), "{answer:?}");
        assert!(
            eventually(Duration::from_secs(2), || live.load(Ordering::SeqCst) == 0),
            "round {round}: {} alive after close",
            live.load(Ordering::SeqCst)
        );
    }
}

/// Tried. `idle_timeout(40 ms)` with `min_idle(1)` on a pool of four grown by a burst:
/// once quiet it shrinks to one worker, never below, and a checkout then still succeeds.
#[test]
fn idle_timeout_shrinks_to_min_idle_and_not_below() {
    let live = Arc::new(AtomicUsize::new(0));
    let pool = Pool::builder()
        .size(4)
        .min_idle(1)
        .idle_timeout(Duration::from_millis(40))
        .build(tracked(&live))
        .unwrap();
    let leases: Vec<_> = (0..4).map(|_| pool.checkout().unwrap()).collect();
    drop(leases);
    assert!(
        eventually(Duration::from_secs(2), || pool.stats().size == 1),
        "{:?}",
        pool.stats()
    );
    thread::sleep(Duration::from_millis(150));
    assert_eq!(pool.stats().size, 1);
    assert_eq!(live.load(Ordering::SeqCst), 1);
    drop(pool.checkout().unwrap());
}

/// A reply whose `Drop` panics.
struct Loud(u32);

impl Drop for Loud {
    fn drop(&mut self) {
        if !thread::panicking() && self.0 == 666 {
            panic!("a reply's Drop panicking on purpose");
        }
    }
}

struct Slow;

impl Behaviour for Slow {
    type Request = (u32, u64);
    type Reply = Loud;
    fn handle_call(&mut self, (n, sleep_ms): (u32, u64)) -> Loud {
        thread::sleep(Duration::from_millis(sleep_ms));
        Loud(n)
    }
}

/// Tried. An actor whose reply comes after its caller's `call_timeout` gave up, and whose
/// `Drop` panics: dropped contained, the actor stays alive and answers the next call with
/// its own reply (not the late one). `call_timeout(ZERO)` answers `Timeout`, and the actor
/// still serves.
#[test]
fn actor_late_reply_whose_drop_panics_does_not_kill_the_actor() {
    quiet_panics();
    let actor = Arc::new(Actor::spawn(Slow).unwrap());
    let got = actor.call_timeout((666, 80), Duration::from_millis(10));
    assert!(matches!(got, Err(Error::Timeout { .. })));
    thread::sleep(Duration::from_millis(150));
    assert!(actor.is_alive(), "the late reply's Drop killed the actor");
    let next = actor.call((7, 0)).map(|r| r.0);
    assert!(matches!(next, Ok(7)), "{next:?}");
    let zero = actor.call_timeout((8, 0), Duration::ZERO);
    assert!(matches!(zero, Err(Error::Timeout { .. }) | Ok(Loud(8))));
    let after = actor
        .call_timeout((9, 0), Duration::from_secs(2))
        .map(|r| r.0);
    assert!(matches!(after, Ok(9)), "{after:?}");
    assert!(actor.is_alive());
}

struct Stopper(Arc<Mutex<Option<Arc<Actor<Stopper>>>>>);

impl Behaviour for Stopper {
    type Request = u32;
    type Reply = u32;
    fn handle_call(&mut self, n: u32) -> u32 {
        if n == 0 {
            let me = self.0.lock().unwrap().clone();
            if let Some(me) = me {
                me.stop();
            }
        }
        n
    }
}

/// Tried. A handler that calls `stop()` on its own actor, both inline (on the caller's
/// thread) and handed off (on the actor's thread, via `call_timeout`): `stop` returns, the
/// call is answered, and the actor is dead afterwards (later calls `WorkerDied`).
#[test]
fn a_handler_stopping_its_own_actor_returns_and_the_actor_dies() {
    for inline in [true, false] {
        let me = Arc::new(Mutex::new(None));
        let actor = Arc::new(Actor::spawn(Stopper(me.clone())).unwrap());
        *me.lock().unwrap() = Some(actor.clone());
        let a = actor.clone();
        let got = within(Duration::from_secs(2), move || {
            if inline {
                a.call(0)
            } else {
                a.call_timeout(0, Duration::from_secs(2))
            }
        })
        .expect("a handler's stop() hung");
        assert!(matches!(got, Ok(0)), "inline {inline}: {got:?}");
        assert!(
            eventually(Duration::from_secs(2), || !actor.is_alive()),
            "inline {inline}: alive after stop"
        );
        assert!(matches!(actor.call(1), Err(Error::WorkerDied)));
        me.lock().unwrap().take();
    }
}
