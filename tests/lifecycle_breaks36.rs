//! The thirty-sixth pass: the plain pool's lifecycle and its callbacks away from the balancer
//! of pools (`map` across an expiry, `drain` re-entered from the pool's own callbacks), the
//! actor, and the plain balancer's lease mode and supervisors. Each test's doc comment says
//! whether it found a bug ("Found.": it fails on commit 806034d) or documents an attack that
//! held ("Tried."). Four found: `map` gives back a worker that expired while it held it,
//! and the next checkout leases it; `drain` called from the checkout check or from `map`'s
//! callback waits its whole timeout for the workers its own thread holds; two actors calling
//! each other inline hang when the first call comes before the actor's thread is up. All
//! fixed: `map` retires what expired while it held it (and tells the reaper of the rest); an
//! actor's mark of the thread holding its behaviour is written only by that holder; a
//! thread that holds workers while it runs user code with them (a check, a return's hooks,
//! `map`'s callback, a keepalive check, a worker's `Drop`) counts them (`HeldHere`), and a
//! `drain` it calls from there does not wait for them.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{quiet_panics, within, Tracked};
use cylinder::{Actor, Balancer, Behaviour, BoxError, Error, Pool, Worker};

/// A worker that knows when it was started.
struct Born(Instant);

/// Found. `max_lifetime(400 ms)` on a pool of two (the reaper sweeps every 100 ms, and at
/// each worker's expiry). `Pool::map` holds both free workers for ~600 ms (its callback
/// sleeps 300 ms on each), so both expire while `map` holds them; the reaper's sweep at
/// their expiry finds the free list empty and plans no further expiry. `map` gives them
/// back, and the test takes two leases at once. Expected (GUARANTEES.md: a worker past its
/// `max_lifetime` "never goes out on a lease"; a lease's return retires an expired worker
/// at once, `unfit`): a fresh worker, or one within a few ms of its lifetime. Happened: the
/// checkout is handed a worker ~600 ms old, ~200 ms past its expiry. Root cause:
/// `Pool::map`'s `Held::drop` (src/pool/mod.rs) gives every worker back with `put_back`,
/// looking at eviction only, never at expiry (nor noting it for the reaper, as `unfit` does
/// with `note_expiry`); the checkout's `admit` reads no clock unless a reaper round is under
/// way, so the worker goes out until the next regular sweep (a quarter of the lifetime:
/// with `max_lifetime(30 min)`, up to 60 s).
#[test]
fn a_worker_that_expired_while_map_held_it_is_not_leased_after_map() {
    let lifetime = Duration::from_millis(400);
    let pool = Pool::builder()
        .size(2)
        .max_lifetime(lifetime)
        .build(|| Ok(Born(Instant::now())))
        .unwrap();
    // Both started now; map holds them across their expiry.
    let ages = pool.map(|w| {
        thread::sleep(Duration::from_millis(300));
        w.0.elapsed()
    });
    assert_eq!(ages.len(), 2, "map saw {} workers", ages.len());
    // Two leases at once: one may be the last in service, kept past its expiry while its
    // replacement starts (accepted, as for a lease's return); the other must not be expired.
    let first = pool.checkout_timeout(Duration::from_secs(3)).unwrap();
    let second = pool.checkout_timeout(Duration::from_secs(3)).unwrap();
    let mut ages = [first.0.elapsed(), second.0.elapsed()];
    drop((first, second));
    ages.sort();
    assert!(
        ages[0] < lifetime + Duration::from_millis(50),
        "two checkouts right after map were handed workers {ages:?} old (max_lifetime \
         {lifetime:?}): map gave back workers that expired while it held it, and they went \
         out on leases"
    );
}

/// Tried. The same with a lease instead of `map`: a worker held across its expiry by a lease
/// is retired at its return (`unfit`), and the next checkout gets a fresh one.
#[test]
fn a_worker_that_expired_while_leased_is_not_leased_again() {
    let lifetime = Duration::from_millis(400);
    let pool = Pool::builder()
        .size(2)
        .max_lifetime(lifetime)
        .build(|| Ok(Born(Instant::now())))
        .unwrap();
    let a = pool.checkout().unwrap();
    let b = pool.checkout().unwrap();
    thread::sleep(Duration::from_millis(600));
    drop((a, b));
    // The last returned is kept while the first's replacement starts (accepted); the
    // reaper retires it at its next look, within its pace, once the replacement is in.
    thread::sleep(Duration::from_millis(100));
    let lease = pool.checkout_timeout(Duration::from_secs(3)).unwrap();
    let age = lease.0.elapsed();
    drop(lease);
    // The last in service may be kept while its replacement comes (accepted): one of the
    // two may go out once; a second checkout must find a fresh one.
    let again = pool.checkout_timeout(Duration::from_secs(3)).unwrap();
    let again_age = again.0.elapsed();
    drop(again);
    assert!(
        age < lifetime || again_age < lifetime,
        "ages {age:?}, {again_age:?}"
    );
}

/// What a `drain` called from a callback answered, and how long it took.
type Drained = Arc<Mutex<Option<(Result<(), Error>, Duration)>>>;

/// Found. A pool of one whose `test_on_checkout` check (run before every lease,
/// `check_after_idle(ZERO)`) calls `drain(500 ms)` on its own pool, once, from a client's
/// checkout; no lease is out, nothing is starting. Expected (as for `drain` called from an
/// eviction's event callback, `tests/lifecycle_breaks9.rs`, fixed: `drain` must not wait
/// for workers only its own thread can close): `drain` returns `Ok` at once, and the
/// checkout answers `Closed`. Happened: `drain` waits its whole 500 ms for the one worker
/// that the check it was called from holds (counted open: `counts.open() > 0` in
/// `Pool::drain`, src/pool/mod.rs) and answers `Timeout` with no lease out; with
/// `drain(Duration::MAX)` the checkout never returns. By the same reading (not run here),
/// so does `drain` called from `reset`, `is_broken`, `is_alive`, a `keepalive` check on the
/// reaper, or a start closure (its own start counts as on its way).
#[test]
fn drain_called_from_the_checkout_check_does_not_wait_for_the_worker_it_checks() {
    let slot: Arc<Mutex<Option<Pool<u32>>>> = Arc::new(Mutex::new(None));
    let outcome: Drained = Arc::new(Mutex::new(None));
    let armed = Arc::new(AtomicBool::new(false));
    let (handle, answer, arm) = (slot.clone(), outcome.clone(), armed.clone());
    let pool = Pool::builder()
        .size(1)
        .check_after_idle(Duration::ZERO)
        .test_on_checkout(move |_: &mut u32| {
            if arm.swap(false, Ordering::SeqCst) {
                let pool = handle.lock().unwrap().clone();
                if let Some(pool) = pool {
                    let began = Instant::now();
                    let drained = pool.drain(Duration::from_millis(500));
                    *answer.lock().unwrap() = Some((drained, began.elapsed()));
                }
            }
            true
        })
        .build(|| Ok(7u32))
        .unwrap();
    *slot.lock().unwrap() = Some(pool.clone());
    armed.store(true, Ordering::SeqCst);
    let client = pool.clone();
    let got = within(Duration::from_secs(5), move || {
        client.checkout().map(|_| ()).map_err(|e| e.to_string())
    });
    slot.lock().unwrap().take();
    assert!(got.is_some(), "the checkout did not return within 5 s");
    let (drained, took) = outcome
        .lock()
        .unwrap()
        .take()
        .expect("the check never drained");
    assert!(
        drained.is_ok(),
        "drain called from the checkout check, with no lease out, answered {drained:?} after \
         {took:?}: it waited for the worker held by the check that called it"
    );
}

/// Found. `Pool::map` whose callback calls `drain(500 ms)` on its own pool (on the first
/// worker it is handed); no lease is out. Expected (as above): `drain` returns `Ok` at once,
/// and the workers `map` holds are closed when it gives them back. Happened: `drain` waits
/// its whole 500 ms for the workers `map` holds on the same thread, and answers `Timeout`.
#[test]
fn drain_called_from_map_does_not_wait_for_the_workers_map_holds() {
    let pool = Pool::builder().size(2).build(|| Ok(0u32)).unwrap();
    let inner = pool.clone();
    let outcome: Drained = Arc::new(Mutex::new(None));
    let answer = outcome.clone();
    let mut first = true;
    let done = within(Duration::from_secs(5), move || {
        inner.map(|_| {
            if std::mem::take(&mut first) {
                let began = Instant::now();
                let drained = inner.drain(Duration::from_millis(500));
                *answer.lock().unwrap() = Some((drained, began.elapsed()));
            }
        });
        inner.stats().size
    });
    assert_eq!(done, Some(0), "map did not return, or left workers open");
    let (drained, took) = outcome.lock().unwrap().take().expect("map never drained");
    assert!(
        drained.is_ok(),
        "drain called from map's callback, with no lease out, answered {drained:?} after \
         {took:?}: it waited for the workers map holds on its own thread"
    );
}

/// Fixed with the two above (by the same reading they named): `drain` called from the
/// `is_broken` hook of a lease's return, which holds the returning worker, returns `Ok` at
/// once (no other lease out), and the worker is closed once the hook returns.
#[test]
fn drain_called_from_is_broken_on_return_does_not_wait_for_the_returning_worker() {
    let slot: Arc<Mutex<Option<Pool<u32>>>> = Arc::new(Mutex::new(None));
    let outcome: Drained = Arc::new(Mutex::new(None));
    let (handle, answer) = (slot.clone(), outcome.clone());
    let pool = Pool::builder()
        .size(1)
        .is_broken(move |_: &mut u32| {
            if let Some(pool) = handle.lock().unwrap().take() {
                let began = Instant::now();
                let drained = pool.drain(Duration::from_millis(500));
                *answer.lock().unwrap() = Some((drained, began.elapsed()));
            }
            false
        })
        .build(|| Ok(7u32))
        .unwrap();
    let lease = pool.checkout_owned().unwrap();
    *slot.lock().unwrap() = Some(pool.clone());
    assert!(
        within(Duration::from_secs(5), move || drop(lease)).is_some(),
        "the lease's return did not end within 5 s"
    );
    let (drained, took) = outcome
        .lock()
        .unwrap()
        .take()
        .expect("is_broken never drained");
    assert!(
        drained.is_ok(),
        "drain called from is_broken answered {drained:?} after {took:?}"
    );
    assert_eq!(pool.stats().size, 0, "{:?}", pool.stats());
}

/// Fixed with the two above: a worker whose `Drop` calls `drain` on its own pool (it is
/// closed by an `evict_all`, here) does not wait for itself: `drain` returns `Ok` at once
/// and the pool ends empty.
#[test]
fn drain_called_from_a_workers_drop_does_not_wait_for_that_worker() {
    struct Draining {
        pool: Arc<Mutex<Option<Pool<Draining>>>>,
        outcome: Drained,
    }
    impl Drop for Draining {
        fn drop(&mut self) {
            let pool = self.pool.lock().unwrap().take();
            if let Some(pool) = pool {
                let began = Instant::now();
                let drained = pool.drain(Duration::from_millis(500));
                *self.outcome.lock().unwrap() = Some((drained, began.elapsed()));
            }
        }
    }
    let slot: Arc<Mutex<Option<Pool<Draining>>>> = Arc::new(Mutex::new(None));
    let outcome: Drained = Arc::new(Mutex::new(None));
    let (handle, answer) = (slot.clone(), outcome.clone());
    let pool = Pool::builder()
        .size(1)
        .build(move || {
            Ok(Draining {
                pool: handle.clone(),
                outcome: answer.clone(),
            })
        })
        .unwrap();
    *slot.lock().unwrap() = Some(pool.clone());
    let evicting = pool.clone();
    assert!(
        within(Duration::from_secs(5), move || evicting.evict_all()).is_some(),
        "evict_all did not return within 5 s"
    );
    let (drained, took) = outcome.lock().unwrap().take().expect("no worker drained");
    assert!(
        drained.is_ok(),
        "drain called from a worker's Drop answered {drained:?} after {took:?}"
    );
    assert!(pool.is_closed());
}

/// An actor that, on `Start`, waits a moment (long enough for its own thread to come up)
/// and calls its peer, which calls it back.
mod cycle {
    use super::*;
    use std::sync::{OnceLock, Weak};

    pub enum Ask {
        Start,
        Back,
    }

    pub struct Peer {
        pub peer: Arc<OnceLock<Weak<Actor<Peer>>>>,
        pub pause: Duration,
    }

    impl Behaviour for Peer {
        type Request = Ask;
        type Reply = Result<u32, Error>;
        fn handle_call(&mut self, ask: Ask) -> Result<u32, Error> {
            match ask {
                Ask::Start => {
                    std::thread::sleep(self.pause);
                    let peer = self
                        .peer
                        .get()
                        .and_then(Weak::upgrade)
                        .ok_or(Error::Closed)?;
                    peer.call(Ask::Back)?
                }
                Ask::Back => {
                    let peer = self
                        .peer
                        .get()
                        .and_then(Weak::upgrade)
                        .ok_or(Error::Closed)?;
                    peer.call(Ask::Back)?.map(|n| n + 1)
                }
            }
        }
    }
}

/// Found. Two actors A and B that call each other (A's handler calls B, whose handler calls
/// A back), both idle, so each call runs inline on the caller's thread. The client's FIRST
/// call to A comes right after `Actor::spawn`, and A's handler waits 100 ms before it calls B
/// (time for A's own thread to come up). Expected (GUARANTEES.md: "A handler that calls its
/// own actor (inline or on the actor's thread, also through another actor called inline)
/// gets `Error::CallingSelf` at once"; `tests/lifecycle_breaks2.rs` checks the same cycle
/// on actors that served before): `Err(CallingSelf)` at once. Happened: the cycle hangs
/// (the client's call does not return within 3 s; A's thread and the client wait on each
/// other for good). Root cause: `Actor::serve` (src/actor/mod.rs) marks the actor as handled
/// by its own thread (`Handling::enter`, which stores `handled_by`) when the thread comes
/// up, without holding the behaviour: it overwrites the mark of the caller that is running
/// a handler inline at that moment, so B's call back into A on the client's thread no
/// longer sees that A's handler runs further out on that thread (`Handling::within`), tries
/// A's behaviour (held by the same thread), goes through A's mailbox and waits for a reply
/// that A's thread can never give (it waits for the behaviour the client holds).
#[test]
fn two_actors_calling_each_other_inline_right_after_spawn_get_calling_self() {
    use cycle::{Ask, Peer};
    use std::sync::OnceLock;
    let mut outcomes = Vec::new();
    for _ in 0..6 {
        // Spawned and called from one thread, the call right after the spawn.
        let inline = within(Duration::from_secs(3), move || {
            let a_peer = Arc::new(OnceLock::new());
            let b_peer = Arc::new(OnceLock::new());
            let b = Arc::new(
                Actor::spawn(Peer {
                    peer: b_peer.clone(),
                    pause: Duration::ZERO,
                })
                .unwrap(),
            );
            let a = Arc::new(
                Actor::spawn(Peer {
                    peer: a_peer.clone(),
                    pause: Duration::from_millis(100),
                })
                .unwrap(),
            );
            a_peer.set(Arc::downgrade(&b)).ok().unwrap();
            b_peer.set(Arc::downgrade(&a)).ok().unwrap();
            a.call(Ask::Start)
        });
        let ok = matches!(inline, Some(Ok(Err(Error::CallingSelf))));
        outcomes.push(format!("{inline:?}"));
        if !ok {
            break;
        }
    }
    assert!(
        outcomes.iter().all(|o| o.contains("CallingSelf")),
        "the first inline call to A after spawn, cycling A -> B -> A: {outcomes:?} (None: it \
         hung for 3 s)"
    );
}

/// Tried. The control for the test above: the same cycle, the client's first call coming
/// 50 ms after `Actor::spawn` (both actors' threads are up and parked): `CallingSelf` at
/// once, six times out of six.
#[test]
fn two_actors_calling_each_other_inline_once_their_threads_are_up_get_calling_self() {
    use cycle::{Ask, Peer};
    use std::sync::OnceLock;
    for round in 0..6 {
        let a_peer = Arc::new(OnceLock::new());
        let b_peer = Arc::new(OnceLock::new());
        let a = Arc::new(
            Actor::spawn(Peer {
                peer: a_peer.clone(),
                pause: Duration::from_millis(20),
            })
            .unwrap(),
        );
        let b = Arc::new(
            Actor::spawn(Peer {
                peer: b_peer.clone(),
                pause: Duration::ZERO,
            })
            .unwrap(),
        );
        a_peer.set(Arc::downgrade(&b)).ok().unwrap();
        b_peer.set(Arc::downgrade(&a)).ok().unwrap();
        thread::sleep(Duration::from_millis(50));
        let caller = a.clone();
        let inline = within(Duration::from_secs(3), move || caller.call(Ask::Start));
        assert!(
            matches!(inline, Some(Ok(Err(Error::CallingSelf)))),
            "round {round}: {inline:?} (None: it hung)"
        );
    }
}

/// A node for the plain balancer that can be killed.
struct Node {
    alive: AtomicBool,
}

impl Worker for Node {
    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }
}

/// A supervisor whose `retire` re-enters the balancer (`connect`, on the client thread that
/// found the worker dead) and whose children are fixed.
struct Reentrant {
    nodes: Vec<Arc<Node>>,
    balancer: Arc<Mutex<Option<Balancer<Node>>>>,
    retired: Arc<AtomicUsize>,
}

impl cylinder::Supervisor<Node> for Reentrant {
    fn children(&self) -> Result<Vec<Arc<Node>>, BoxError> {
        Ok(self.nodes.clone())
    }
    fn retire(&self, _worker: &Arc<Node>) {
        self.retired.fetch_add(1, Ordering::SeqCst);
        let balancer = self.balancer.lock().unwrap().clone();
        if let Some(balancer) = balancer {
            let _ = balancer.connect();
            let _ = balancer.get();
        }
    }
}

/// Tried. The plain balancer's lease mode with a supervisor whose `retire` re-enters it
/// (`connect` and `get` from the client thread that found a worker dead): three nodes, one
/// leased; the leased one dies and the client's `get` finds it; `retire` runs once, the
/// reload keeps the lease (the lease cell follows the worker), no other lease or `get` is
/// handed the leased worker, and nothing hangs.
#[test]
fn a_retire_that_reloads_while_a_dead_worker_is_leased_keeps_the_lease_exclusive() {
    let nodes: Vec<Arc<Node>> = (0..3)
        .map(|_| {
            Arc::new(Node {
                alive: AtomicBool::new(true),
            })
        })
        .collect();
    let slot = Arc::new(Mutex::new(None));
    let retired = Arc::new(AtomicUsize::new(0));
    let balancer = Balancer::builder()
        .reconnect_delay(Duration::from_millis(20))
        .build_with(Reentrant {
            nodes: nodes.clone(),
            balancer: slot.clone(),
            retired: retired.clone(),
        })
        .unwrap();
    *slot.lock().unwrap() = Some(balancer.clone());
    let held = balancer.lease().unwrap();
    let held_ptr = Arc::as_ptr(&held.arc()) as usize;
    held.alive.store(false, Ordering::Release);
    let client = balancer.clone();
    let seen = within(Duration::from_secs(5), move || {
        (0..50)
            .filter_map(|_| client.get().ok().map(|w| Arc::as_ptr(&w.arc()) as usize))
            .collect::<Vec<_>>()
    })
    .expect("get with a re-entrant retire hung");
    assert!(
        !seen.contains(&held_ptr),
        "get handed out the leased (dead) worker"
    );
    let others: Vec<_> = (0..2).map(|_| balancer.lease()).collect();
    assert!(others.iter().all(|l| l
        .as_ref()
        .is_ok_and(|l| Arc::as_ptr(&l.arc()) as usize != held_ptr)));
    assert!(matches!(
        balancer.lease(),
        Err(Error::Overload | Error::Disconnected { .. })
    ));
    assert_eq!(
        retired.load(Ordering::SeqCst),
        1,
        "retire told more than once"
    );
    drop(others);
    drop(held);
    slot.lock().unwrap().take();
}

/// An actor whose handler, on its own thread (`INLINE_CALLS = false`), calls a peer.
struct HandOff {
    peer: Arc<std::sync::OnceLock<std::sync::Weak<Actor<HandOff>>>>,
    first: bool,
}

impl Behaviour for HandOff {
    type Request = u8;
    type Reply = Result<u8, Error>;
    const INLINE_CALLS: bool = false;
    fn handle_call(&mut self, n: u8) -> Result<u8, Error> {
        let peer = self
            .peer
            .get()
            .and_then(std::sync::Weak::upgrade)
            .ok_or(Error::Closed)?;
        if self.first {
            peer.call(n)?
        } else {
            peer.call_timeout(n, Duration::from_millis(100))?
        }
    }
}

/// Tried. Two actors that call each other through their mailboxes (`INLINE_CALLS = false`:
/// A's thread waits for B, whose thread calls A back, busy): a `call_timeout` on the way
/// back answers `Timeout` after its time (not `CallingSelf`, not a hang), A gets B's
/// answer, and A's late reply to B's given-up call is dropped; both actors serve on.
#[test]
fn two_actors_calling_each_other_through_their_mailboxes_time_out_not_hang() {
    let a_peer = Arc::new(std::sync::OnceLock::new());
    let b_peer = Arc::new(std::sync::OnceLock::new());
    let a = Arc::new(
        Actor::spawn(HandOff {
            peer: a_peer.clone(),
            first: true,
        })
        .unwrap(),
    );
    let b = Arc::new(
        Actor::spawn(HandOff {
            peer: b_peer.clone(),
            first: false,
        })
        .unwrap(),
    );
    a_peer.set(Arc::downgrade(&b)).ok().unwrap();
    b_peer.set(Arc::downgrade(&a)).ok().unwrap();
    let caller = a.clone();
    let got = within(Duration::from_secs(3), move || caller.call(1));
    assert!(
        matches!(got, Some(Ok(Err(Error::Timeout { .. })))),
        "A -> B -> A through the mailboxes: {got:?}"
    );
    assert!(a.is_alive() && b.is_alive());
}

/// Tried. `OnClientPanic::Discard` with `transaction`: a client whose closure panics has its
/// worker discarded and replaced, a client that does not keeps it; counts add up when quiet.
#[test]
fn transaction_panics_under_discard_replace_only_the_panicking_clients_workers() {
    quiet_panics();
    let live = Arc::new(AtomicUsize::new(0));
    let count = live.clone();
    let pool = Pool::builder()
        .size(2)
        .on_client_panic(cylinder::OnClientPanic::Discard)
        .build(move || {
            count.fetch_add(1, Ordering::SeqCst);
            Ok(Tracked(count.clone()))
        })
        .unwrap();
    for i in 0..20 {
        let pool = pool.clone();
        let _ = thread::spawn(move || {
            pool.transaction(|_| {
                if i % 3 == 0 {
                    panic!("on purpose");
                }
            })
        })
        .join();
    }
    common::settles(&pool, &live, 2, "after panicking transactions");
    let stats = pool.stats();
    assert_eq!(stats.discards, 7, "{stats:?}");
    assert_eq!(stats.checkouts, 20, "{stats:?}");
}
