//! Loom models of the pool's real code (built through `src/sync.rs` under `--cfg loom`).
#![cfg(loom)]

use std::sync::Arc;
use std::time::Duration;

use cylinder::{Balancer, BoxError, Error, Lease, OwnedLease, Pool};
use loom::sync::atomic::{AtomicBool, Ordering};
use loom::thread;

/// A worker whose "in use" flag is loom-visible, so a double lease is an assertion failure
/// in some explored interleaving.
struct Slot {
    in_use: AtomicBool,
    alive: AtomicBool,
    /// Marked by a model: from before an `evict_all`.
    old: AtomicBool,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            in_use: AtomicBool::new(false),
            alive: AtomicBool::new(true),
            old: AtomicBool::new(false),
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
            .is_broken(|slot: &mut Slot| !slot.alive.load(Ordering::Acquire))
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
    model_within(usize::MAX, &BOTH, test)
}

/// `model` for the ways of serving in `serves`, with the preemption bound held at `most`
/// whatever `LOOM_MAX_PREEMPTIONS` says: for the models whose search at 4 takes longer than
/// CI can give them.
fn model_within(
    most: usize,
    serves: &[Serve],
    test: impl Fn(Serve) + Sync + Send + Copy + 'static,
) {
    for &serve in serves {
        let mut builder = loom::model::Builder::new();
        let bound = builder.preemption_bound.unwrap_or(3).min(most);
        builder.preemption_bound = Some(bound);
        // A free-list scan reads two counts per parked slot (the owner's and the thefts):
        // the longest paths (three threads, each claiming and running a start) pass loom's
        // default of 1,000 branches.
        builder.max_branches = 4_000;
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
                    Err(Error::Timeout { .. }) => false,
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

/// A leased worker dies; its release retires it, and its replacement (started by counting,
/// on the releasing thread under loom) reaches the parked waiter.
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
    // Every checkout here may claim and run a start: at 4 preemptions the search runs for
    // well over 15 minutes on 2 cores; at 3 it takes about a minute.
    model_within(3, &BOTH, |serve| {
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
        assert_eq!(
            (stats.size, stats.max_size, stats.free, stats.leased),
            (1, 1, 1, 0)
        );
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

/// The shape that catches a lost wake-up in a burst: two waiters parked, two releases, and
/// a holder that keeps its lease. Each waiter keeps what it gets (it hands its owned lease
/// back to this thread), so neither can wake the other by releasing: both must be woken by
/// the two releases (0.1 woke only the first; the second slept beside a free worker, which
/// loom reports as a deadlock).
#[test]
fn two_waiters_two_releases_one_holder_keeps() {
    model(|serve| {
        let pool = pool_serving(3, serve);
        let first = pool.checkout().unwrap();
        let second = pool.checkout().unwrap();
        let kept = pool.checkout().unwrap();
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let pool = pool.clone();
                thread::spawn(move || {
                    let lease = pool.checkout_owned().unwrap();
                    lease.enter();
                    lease
                })
            })
            .collect();
        drop(first);
        drop(second);
        let served: Vec<OwnedLease<Slot>> =
            waiters.into_iter().map(|w| w.join().unwrap()).collect();
        kept.enter();
        kept.leave();
        drop(kept);
        for lease in served {
            lease.leave();
        }
        let stats = pool.stats();
        assert_eq!((stats.free, stats.leased, stats.waiters), (3, 0, 0));
    });
}

/// A release while the waiter woken by the one before has not looked yet wakes no one more
/// (the releasing thread took that worker straight back): the waiter on its way must still
/// find the worker when it looks, whichever release put it there. A lost one is a deadlock.
#[test]
fn a_release_while_the_woken_waiter_is_on_its_way() {
    model(|serve| {
        let pool = pool_serving(1, serve);
        let held = pool.checkout().unwrap();
        let waiter = {
            let pool = pool.clone();
            thread::spawn(move || use_once(&pool))
        };
        drop(held);
        use_once(&pool);
        waiter.join().unwrap();
        let stats = pool.stats();
        assert_eq!((stats.free, stats.leased, stats.waiters), (1, 0, 0));
    });
}

/// An owned lease moved to another thread and dropped there, racing a checkout: exclusion
/// holds and the worker comes back.
#[test]
fn owned_lease_dropped_on_another_thread() {
    model(|serve| {
        let pool = pool_serving(1, serve);
        let lease: OwnedLease<Slot> = pool.checkout_owned().unwrap();
        let holder = thread::spawn(move || {
            lease.enter();
            lease.leave();
            drop(lease);
        });
        use_once(&pool);
        holder.join().unwrap();
        let stats = pool.stats();
        assert_eq!((stats.size, stats.free, stats.leased), (1, 1, 0));
    });
}

/// A discard (the worker is dropped and replaced by counting) racing a waiter: the waiter
/// gets the replacement, and the pool is back at its size with nothing lost or doubled.
#[test]
fn discard_replacement_reaches_a_waiter() {
    model(|serve| {
        let pool = pool_serving(1, serve);
        let lease = pool.checkout().unwrap();
        let waiter_pool = pool.clone();
        let waiter = thread::spawn(move || use_once(&waiter_pool));
        Lease::discard(lease);
        waiter.join().unwrap();
        let stats = pool.stats();
        assert_eq!(
            (stats.size, stats.free, stats.discards, stats.restarts),
            (1, 1, 1, 1)
        );
    });
}

/// A take (the worker leaves the pool) racing a checkout on another thread: the taker owns
/// its worker outright, the other thread gets the replacement, and the pool keeps its size.
#[test]
fn take_racing_a_checkout() {
    model(|serve| {
        let pool = pool_serving(1, serve);
        let lease = pool.checkout().unwrap();
        let user = pool.clone();
        let other = thread::spawn(move || use_once(&user));
        let taken = Lease::take(lease);
        taken.enter();
        taken.leave();
        other.join().unwrap();
        let stats = pool.stats();
        assert_eq!((stats.size, stats.free, stats.takes), (1, 1, 1));
    });
}

/// A keeper (a waiter that keeps what it gets: it hands its owned lease back to this thread).
fn keeper(pool: &Arc<Pool<Slot>>) -> thread::JoinHandle<OwnedLease<Slot>> {
    let pool = pool.clone();
    thread::spawn(move || {
        let lease = pool.checkout_owned().unwrap();
        lease.enter();
        lease
    })
}

/// The change's own case: a release whose thread takes its worker straight back (and gives
/// it back again) while two keepers wait, then the second release. A release that woke no
/// one because one was "on its way" must not leave a keeper asleep beside a free worker.
#[test]
fn releaser_retakes_with_two_keepers() {
    model_within(3, &BOTH, |serve| {
        let pool = pool_serving(2, serve);
        let first = pool.checkout().unwrap();
        let second = pool.checkout().unwrap();
        let keepers = [keeper(&pool), keeper(&pool)];
        drop(first);
        if let Ok(again) = pool.try_checkout() {
            again.enter();
            again.leave();
        }
        drop(second);
        let served: Vec<OwnedLease<Slot>> =
            keepers.into_iter().map(|k| k.join().unwrap()).collect();
        for lease in served {
            lease.leave();
        }
        let stats = pool.stats();
        assert_eq!((stats.free, stats.leased, stats.waiters), (2, 0, 0));
    });
}

/// A waiter with a deadline (under loom, every timed wait times out at once) woken for the
/// worker, beside a keeper with none: whichever gets it, the keeper ends up with it (the
/// impatient one gives it back if it got it).
#[test]
fn an_impatient_waiter_on_its_way_beside_a_keeper() {
    model(|serve| {
        let pool = pool_serving(1, serve);
        let lease = pool.checkout().unwrap();
        let impatient = {
            let pool = pool.clone();
            thread::spawn(
                move || match pool.checkout_timeout(Duration::from_millis(1)) {
                    Ok(lease) => {
                        lease.enter();
                        lease.leave();
                    }
                    Err(Error::Timeout { .. }) => {}
                    Err(other) => panic!("unexpected {other}"),
                },
            )
        };
        let kept = keeper(&pool);
        drop(lease);
        impatient.join().unwrap();
        let lease = kept.join().unwrap();
        lease.leave();
        drop(lease);
        let stats = pool.stats();
        assert_eq!((stats.free, stats.leased, stats.waiters), (1, 0, 0));
    });
}

/// A waiter woken for a worker kept free is handed another before it looks (a release while
/// the pool is above its size, after a shrink, hands the worker straight over): the kept
/// worker must still reach the second keeper once the size is back. With the line competing
/// (`fifo_after` MAX); for every release handing straight over, see
/// `a_waiter_handed_another_while_on_its_way_fifo`.
#[test]
fn a_waiter_handed_another_while_on_its_way() {
    model_within(3, &[Serve::Compete], handed_another_while_on_its_way);
}

/// The same with every release handing straight over. Found by a model that deadlocked at
/// 0.2's first cut: a keeper's start, claimed before `resize(1)` and delivered after
/// `resize(2)`, was closed as above the old size (read before the new one was stored), while
/// `resize(2)` had found the pool full before that close: nothing started a worker for the
/// second keeper. The resize's store and a close's count now meet in the `SeqCst` order.
#[test]
fn a_waiter_handed_another_while_on_its_way_fifo() {
    model_within(3, &[Serve::Fifo], handed_another_while_on_its_way);
}

fn handed_another_while_on_its_way(serve: Serve) {
    let pool = pool_serving(2, serve);
    let first = pool.checkout().unwrap();
    let second = pool.checkout().unwrap();
    let keepers = [keeper(&pool), keeper(&pool)];
    drop(first);
    pool.resize(1).unwrap();
    drop(second);
    pool.resize(2).unwrap();
    let served: Vec<OwnedLease<Slot>> = keepers.into_iter().map(|k| k.join().unwrap()).collect();
    for lease in served {
        lease.leave();
    }
    let stats = pool.stats();
    assert_eq!((stats.size, stats.leased, stats.waiters), (2, 0, 0));
}

/// A release that closes its worker as above the old size, racing a resize back up, with no
/// waiter to ask for a start: the pool still returns to its size (the close sees the new
/// `min_idle`, or the resize sees the close).
#[test]
fn a_close_above_the_old_size_racing_a_resize_up() {
    model(|serve| {
        let pool = pool_serving(2, serve);
        let first = pool.checkout_owned().unwrap();
        let second = pool.checkout().unwrap();
        pool.resize(1).unwrap();
        let releaser = thread::spawn(move || drop(first));
        pool.resize(2).unwrap();
        releaser.join().unwrap();
        drop(second);
        let stats = pool.stats();
        assert_eq!((stats.size, stats.free, stats.leased), (2, 2, 0));
    });
}

/// `evict_all` racing a return: the worker returned is retired by the return (it saw the
/// eviction) or by the eviction's sweep (it was free by then), or, kept by a return that
/// looked before the count moved and put back after the sweep, by the reaper's next round
/// (`put_back` asks for it: `sweep_again`). No worker from before the eviction stays free
/// after that round.
#[test]
fn evict_all_racing_a_return() {
    model_within(3, &[Serve::Compete], |serve| {
        let pool = pool_serving(1, serve);
        let lease = pool.checkout().unwrap();
        lease.old.store(true, Ordering::Relaxed);
        let evicting = pool.clone();
        let evictor = thread::spawn(move || evicting.evict_all());
        drop(lease);
        evictor.join().unwrap();
        pool.run_reaper_round();
        // (A checkout would retire it on the spot: the free list is what is looked at.)
        let old_free = pool.map(|slot| slot.old.load(Ordering::Relaxed));
        assert!(
            !old_free.contains(&true),
            "a worker from before evict_all stayed free after the reaper's round"
        );
        drop(pool.checkout().unwrap());
        let stats = pool.stats();
        assert_eq!((stats.size, stats.free, stats.leased), (1, 1, 0));
    });
}

/// Two pools of one worker, each leased; a balancer's checkout waits for either.
fn two_busy_pools(serve: Serve) -> (Balancer<Pool<Slot>>, Vec<OwnedLease<Slot>>) {
    let pools = [pool_serving(1, serve), pool_serving(1, serve)];
    let leases = pools.iter().map(|p| p.checkout_owned().unwrap()).collect();
    let balancer = Balancer::over_pools(pools.iter().map(|p| (**p).clone())).unwrap();
    (balancer, leases)
}

/// A balancer's checkout with no limit, each step of its lease checked.
fn balancer_user(balancer: &Balancer<Pool<Slot>>) -> thread::JoinHandle<()> {
    let balancer = balancer.clone();
    thread::spawn(move || {
        let lease = balancer.checkout_timeout(Duration::MAX).unwrap();
        lease.enter();
        lease.leave();
    })
}

/// A balancer's checkout waiting in one busy pool's line while the other pool's worker is
/// released: whichever line it waits in, it is served (in the other pool's case by the
/// nudge that pool sends when it keeps the worker free; a lost nudge leaves it waiting for
/// ever, which loom reports).
#[test]
fn a_balancer_waiter_nudged_by_the_other_pool() {
    for freed in 0..2 {
        model_within(3, &BOTH, move |serve| {
            let (balancer, mut leases) = two_busy_pools(serve);
            let user = balancer_user(&balancer);
            let kept = leases.swap_remove(1 - freed);
            drop(leases);
            user.join().unwrap();
            drop(kept);
            for pool in balancer.pools() {
                let stats = pool.stats();
                assert_eq!((stats.free, stats.leased, stats.waiters), (1, 0, 0));
            }
        });
    }
}

/// Both pools' workers released at once, on two threads, while a balancer's checkout waits:
/// it takes one (from its line, or the other pool's by the nudge, even when its line hands
/// it a worker while it looks there: that one goes back), and both end up free.
#[test]
fn a_balancer_waiter_served_by_both_pools_at_once() {
    model_within(2, &BOTH, |serve| {
        let (balancer, mut leases) = two_busy_pools(serve);
        let (first, second) = (leases.remove(0), leases.remove(0));
        let user = balancer_user(&balancer);
        let releaser = thread::spawn(move || drop(first));
        drop(second);
        user.join().unwrap();
        releaser.join().unwrap();
        for pool in balancer.pools() {
            let stats = pool.stats();
            assert_eq!((stats.free, stats.leased, stats.waiters), (1, 0, 0));
        }
    });
}

/// An overflow worker returned while a balancer's waiter in another pool's line listens is
/// kept free for it (not closed, as it would be with no one waiting); if that waiter is
/// served by its own line meanwhile, the overflow worker is closed when it stops listening:
/// either way the pool ends at its size with nothing held twice.
#[test]
fn an_overflow_worker_kept_for_a_listener_is_closed_when_it_leaves() {
    model_within(3, &BOTH, |serve| {
        let line = pool_serving(1, serve);
        let overflowing = pool_with(1, 1, serve);
        let held = line.checkout_owned().unwrap();
        let base = overflowing.checkout_owned().unwrap();
        let overflow = overflowing.checkout_owned().unwrap();
        // (A new balancer's rotation starts at its second pool, the line waited in.)
        let balancer = Balancer::over_pools([(*overflowing).clone(), (*line).clone()]).unwrap();
        let user = balancer_user(&balancer);
        // Once the user waits in the line (and so listens to the other pool).
        while line.stats().waiters == 0 {
            thread::yield_now();
        }
        let releaser = thread::spawn(move || drop(held));
        drop(overflow);
        user.join().unwrap();
        releaser.join().unwrap();
        let stats = overflowing.stats();
        assert_eq!(
            (stats.size, stats.free, stats.leased),
            (1, 0, 1),
            "the overflow worker stayed open"
        );
        drop(base);
        let stats = line.stats();
        assert_eq!((stats.free, stats.leased, stats.waiters), (1, 0, 0));
    });
}
