//! The thirty-eighth pass: against the fixes of c70ab78 (`map` retiring what expired while it
//! held it; the actor's `HeldBy` mark; the balancer of pools' nudge born `GONE`, `pass_on`,
//! `shrink_unless_kept` after every wait). Each test's doc comment says whether it found a
//! bug ("Found.": it fails on commit c70ab78) or documents an attack that held ("Tried.").
//! One found: `map` holding every worker across their expiry retires them all at once (none
//! kept as the last in service), leaving nothing in service while the replacements start.
//! Fixed: `map` gives back what did not expire first, then looks at the expired ones one
//! at a time, each after the last is counted out, as returns do.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::eventually;
use cylinder::Pool;

/// A worker that knows when it was started.
struct Born(#[allow(dead_code)] Instant);

/// A pool of two with `max_lifetime(lifetime)` whose first two starts are instant and every
/// later start (a replacement) takes `slow`.
fn two_with_slow_replacements(lifetime: Duration, slow: Duration) -> Pool<Born> {
    let starts = Arc::new(AtomicUsize::new(0));
    Pool::builder()
        .size(2)
        .max_lifetime(lifetime)
        .build(move || {
            if starts.fetch_add(1, Ordering::SeqCst) >= 2 {
                thread::sleep(slow);
            }
            Ok(Born(Instant::now()))
        })
        .unwrap()
}

/// Found. A pool of two, `max_lifetime(400 ms)`, replacements that take 1.5 s to start.
/// `Pool::map` holds both (free) workers for ~600 ms (300 ms each), so both expire while it
/// holds them; then the test looks at the pool at once. Expected (GUARANTEES.md: "workers
/// started together expire over a spread, never all at once"; the last in service when a
/// return finds it expired is kept while its replacement comes, as the control below shows
/// for two leases returned one after the other): one worker stays in service (free) while
/// the replacements start. Happened: `map` retires both at once: `free 0, leased 0,
/// starting 2` for the 1.5 s of the starts, and a checkout meanwhile waits for a start.
/// Root cause: `Pool::map`'s `Held::drop` (src/pool/mod.rs) asks `expired_on_return` (→
/// `expired_and_not_kept`, src/pool/checkout.rs) of each worker in turn but retires them
/// only after the loop (`retire_held`): `staying_in_service()` still counts every worker
/// `map` decided to retire, so none of them is ever "the last in service" and none is kept.
#[test]
fn map_holding_every_worker_across_their_expiry_keeps_one_in_service() {
    let pool = two_with_slow_replacements(Duration::from_millis(400), Duration::from_millis(1500));
    let seen = pool.map(|_| thread::sleep(Duration::from_millis(300)));
    assert_eq!(seen.len(), 2);
    let stats = pool.stats();
    assert!(
        stats.free + stats.leased >= 1,
        "map gave back two workers that expired while it held them and retired both at once: \
         nothing in service while the replacements start: {stats:?}"
    );
}

/// Tried. The control for the test above: the same two workers held across their expiry by
/// two leases, returned one after the other: the first is retired, the second (the last in
/// service) is kept while the replacements start.
#[test]
fn two_leases_returned_across_their_expiry_keep_one_in_service() {
    let pool = two_with_slow_replacements(Duration::from_millis(400), Duration::from_millis(1500));
    let a = pool.checkout().unwrap();
    let b = pool.checkout().unwrap();
    thread::sleep(Duration::from_millis(600));
    drop(a);
    drop(b);
    let stats = pool.stats();
    assert!(
        stats.free + stats.leased >= 1,
        "nothing in service after two returns: {stats:?}"
    );
    // And the pool settles at its size once the replacements are in.
    assert!(eventually(Duration::from_secs(5), || {
        let s = pool.stats();
        s.starting == 0 && s.free == 2
    }));
}

/// A pool's worker whose `Drop` panics while `boom` is set (and counts itself in `dropped`).
struct Boom {
    n: usize,
    boom: Arc<std::sync::atomic::AtomicBool>,
    dropped: Arc<AtomicUsize>,
}

impl Drop for Boom {
    fn drop(&mut self) {
        self.dropped.fetch_add(1, Ordering::SeqCst);
        if self.boom.load(Ordering::SeqCst) {
            panic!("worker {} panics in its Drop", self.n);
        }
    }
}

/// Tried. `shrink_unless_kept` (now run after every balancer wait) closing a worker whose
/// `Drop` panics, on the client's thread. Two pools of size 1, `max_overflow(3)`, all four
/// workers of each leased by the test; a balancer client W (5 s) waits in pool x's line and
/// listens to o. o's check is armed (400 ms, passes) and one of o's leases returned: W goes
/// away into o's check; meanwhile three of x's leases are returned (above the size, kept
/// for W: `has_away`). W is served by o; x's `shrink_unless_kept` closes the kept workers on
/// W's thread, and their `Drop`s panic. Held: W gets o's worker (no panic reaches it), x
/// settles back at size 1, every worker's `Drop` ran once, counts add up.
#[test]
fn shrink_after_a_balancer_wait_closing_workers_whose_drop_panics_loses_nothing() {
    common::quiet_panics();
    const NONE: usize = usize::MAX;
    let armed = Arc::new(AtomicUsize::new(NONE));
    let checking = Arc::new(AtomicUsize::new(0));
    let boom = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let dropped = Arc::new(AtomicUsize::new(0));
    let started = Arc::new(AtomicUsize::new(0));
    let pools: Vec<Pool<Boom>> = (0..2)
        .map(|n| {
            let (armed, checking) = (armed.clone(), checking.clone());
            let (boom, dropped, started) = (boom.clone(), dropped.clone(), started.clone());
            Pool::builder()
                .name(format!("server-{n}"))
                .size(1)
                .max_overflow(3)
                .check_after_idle(Duration::ZERO)
                .test_on_checkout(move |_: &mut Boom| {
                    if armed.load(Ordering::SeqCst) == n {
                        checking.fetch_add(1, Ordering::SeqCst);
                        thread::sleep(Duration::from_millis(400));
                        checking.fetch_sub(1, Ordering::SeqCst);
                    }
                    true
                })
                .build(move || {
                    started.fetch_add(1, Ordering::SeqCst);
                    Ok(Boom {
                        n,
                        boom: boom.clone(),
                        dropped: dropped.clone(),
                    })
                })
                .unwrap()
        })
        .collect();
    let mut held: Vec<Vec<cylinder::OwnedLease<Boom>>> = pools
        .iter()
        .map(|p| (0..4).map(|_| p.checkout_owned().unwrap()).collect())
        .collect();
    let balancer = cylinder::Balancer::over_pools(pools.clone()).unwrap();
    let w = {
        let balancer = balancer.clone();
        thread::spawn(move || {
            let got = balancer
                .checkout_timeout(Duration::from_secs(5))
                .map(|l| l.n);
            (got, thread::current().id())
        })
    };
    let x = common::line_with(&pools, 1);
    let o = 1 - x;
    thread::sleep(Duration::from_millis(30));
    armed.store(o, Ordering::SeqCst);
    drop(held[o].pop());
    assert!(eventually(Duration::from_secs(1), || checking
        .load(Ordering::SeqCst)
        == 1));
    boom.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        drop(held[x].pop());
    }
    let x_while_away = pools[x].stats();
    let joined = w.join();
    armed.store(NONE, Ordering::SeqCst);
    let (got, _) = joined.expect("a panic reached the balancer's client");
    assert_eq!(got.unwrap(), o, "W was served by pool {o}");
    boom.store(false, Ordering::SeqCst);
    drop(held);
    drop(balancer);
    let settled = eventually(Duration::from_secs(3), || {
        pools.iter().all(|p| {
            let s = p.stats();
            s.size == 1 && s.free == 1 && s.waiters == 0 && s.starting == 0
        })
    });
    let open: usize = pools.iter().map(|p| p.stats().size).sum();
    assert!(
        settled,
        "x = {x} while W was away: {x_while_away:?}; now {:?}",
        pools.iter().map(Pool::stats).collect::<Vec<_>>()
    );
    assert_eq!(
        started.load(Ordering::SeqCst),
        dropped.load(Ordering::SeqCst) + open,
        "every worker started is open or was dropped once"
    );
}

/// An actor of a ring: its handler calls the next actor (if `hops` is not spent), and
/// answers what that call answered.
struct Ring {
    next: Arc<std::sync::OnceLock<cylinder::Actor<Ring>>>,
}

impl cylinder::Behaviour for Ring {
    type Request = u32;
    type Reply = Result<u32, String>;
    fn handle_call(&mut self, hops: u32) -> Result<u32, String> {
        if hops == 0 {
            return Ok(0);
        }
        match self.next.get().expect("the ring is closed").call(hops - 1) {
            Ok(Ok(n)) => Ok(n + 1),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(format!("{e:?}")),
        }
    }
}

/// Tried. A ring of three actors A → B → C → A, all idle, each call inline: the client's
/// call to A (right after spawn, and again once the threads are up) runs A, B and C on the
/// client's thread, and C's call back into A is `CallingSelf` at once (A's handler runs
/// further out on that thread: `Handling::within`), never a hang; a call around the ring
/// that stops short of A (2 hops) answers 2.
#[test]
fn a_ring_of_three_actors_called_inline_gets_calling_self_not_a_hang() {
    for settle in [Duration::ZERO, Duration::from_millis(50)] {
        let links: Vec<Arc<std::sync::OnceLock<cylinder::Actor<Ring>>>> = (0..3)
            .map(|_| Arc::new(std::sync::OnceLock::new()))
            .collect();
        // Actor i is stored in link (i + 2) % 3: the link of the actor before it.
        for i in 0..3 {
            let actor = cylinder::Actor::spawn(Ring {
                next: links[(i + 1) % 3].clone(),
            })
            .unwrap();
            assert!(links[i].set(actor).is_ok());
        }
        // links[i] holds actor i, whose `next` is links[i + 1]: the ring 0 → 1 → 2 → 0.
        thread::sleep(settle);
        let a = links[0].clone();
        let answered = common::within(Duration::from_secs(3), move || {
            let around = a.get().unwrap().call(3);
            let short = a.get().unwrap().call(2);
            (format!("{around:?}"), format!("{short:?}"))
        });
        let (around, short) = answered.expect("the ring hung");
        assert!(
            around.contains("CallingSelf"),
            "settle {settle:?}: around the ring: {around}"
        );
        assert_eq!(short, "Ok(Ok(2))", "settle {settle:?}");
    }
}

/// Tried. The ring A → B → C → A with A's part on A's own thread: a cast queued first makes
/// the client's call to A go through A's mailbox; A's thread then calls B and C inline (both
/// idle), and C's call back into A on A's thread is `CallingSelf` at once (the actor's
/// thread); A serves on afterwards.
#[test]
fn a_ring_of_three_actors_entered_through_the_mailbox_gets_calling_self_not_a_hang() {
    let links: Vec<Arc<std::sync::OnceLock<cylinder::Actor<Ring>>>> = (0..3)
        .map(|_| Arc::new(std::sync::OnceLock::new()))
        .collect();
    for i in 0..3 {
        let actor = cylinder::Actor::spawn(Ring {
            next: links[(i + 1) % 3].clone(),
        })
        .unwrap();
        assert!(links[i].set(actor).is_ok());
    }
    let a = links[0].clone();
    let answered = common::within(Duration::from_secs(3), move || {
        let a = a.get().unwrap();
        let mut answers = Vec::new();
        for _ in 0..20 {
            a.cast(0).unwrap();
            answers.push(format!("{:?}", a.call(3)));
        }
        answers.push(format!("{:?}", a.call(2)));
        answers
    });
    let answers = answered.expect("the ring hung");
    let (last, around) = answers.split_last().unwrap();
    assert!(
        around.iter().all(|a| a.contains("CallingSelf")),
        "{around:?}"
    );
    assert_eq!(last, "Ok(Ok(2))");
}
