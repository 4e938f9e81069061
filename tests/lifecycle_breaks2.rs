//! Second breaking pass against the lifecycle and the callbacks: each test names its scenario
//! and fails on the code it was written against. Bounded in time; hangs are detected with
//! bounded waits.

mod common;

use common::within;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use cylinder::{Balancer, BoxError, Error, Factory, Pool, Supervisor, Worker};

/// Runs `f` on a thread and waits at most `limit` for it; `None` if it did not finish.
#[allow(dead_code)]
/// An error whose `Drop` panics (user code the crate must contain).
#[derive(Debug)]
struct BombError;
impl std::fmt::Display for BombError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("bomb error")
    }
}
impl std::error::Error for BombError {}
impl Drop for BombError {
    fn drop(&mut self) {
        if !thread::panicking() {
            panic!("BombError dropped");
        }
    }
}

/// A value whose `Drop` panics (unless its thread is already unwinding).
struct Bomb;
impl Drop for Bomb {
    fn drop(&mut self) {
        if !thread::panicking() {
            panic!("Bomb dropped");
        }
    }
}

/// A balancer child that can be killed.
struct Node {
    alive: AtomicBool,
}
impl Worker for Node {
    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }
}

// ---------------------------------------------------------------------------------------
// Pool: error truth and recovery of `try_checkout`.

/// A lazy pool (`min_idle(0)`) used only through `try_checkout`: the first start fails (the
/// server is down), then the server comes back. After `reconnect_delay` a `try_checkout`
/// must try again (nothing else will: `min_idle` is 0 and no one blocks in line), not answer
/// `Disconnected` with the old cause forever.
#[test]
fn try_checkout_on_a_lazy_pool_recovers_after_the_server_comes_back() {
    let up = Arc::new(AtomicBool::new(false));
    let server = up.clone();
    let pool = Pool::builder()
        .size(2)
        .min_idle(0)
        .reconnect_delay(Duration::from_millis(50))
        .build(move || {
            if server.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err::<(), BoxError>("connection refused".into())
            }
        })
        .unwrap();
    let first = pool.try_checkout().map(|_| ());
    assert!(
        matches!(first, Err(Error::Disconnected { .. })),
        "the server is down: {first:?}"
    );
    up.store(true, Ordering::SeqCst);
    // Well past `reconnect_delay`: a client retrying every 50 ms for 2 s.
    let until = Instant::now() + Duration::from_secs(2);
    let mut last = None;
    while Instant::now() < until {
        match pool.try_checkout() {
            Ok(_) => return,
            Err(err) => last = Some(err),
        }
        thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "try_checkout never tried again after the server came back; last: {last:?}, stats: {:?}",
        pool.stats()
    );
}

/// A replacement is on its way (the only worker was discarded) and a blocking checkout waits
/// in line for it; a `try_checkout` comes then. The replacement goes to the blocking waiter,
/// which holds it: the `try_checkout` must answer `Overload` once the start it waited for
/// is delivered, not keep waiting (up to `checkout_timeout`) for another client's release.
#[test]
fn try_checkout_waiting_for_a_replacement_taken_by_a_blocking_waiter_does_not_wait_for_its_release()
{
    let slow = Arc::new(AtomicBool::new(false));
    let slow_start = slow.clone();
    let pool = Pool::builder()
        .size(1)
        .checkout_timeout(Duration::from_secs(10))
        .build(move || {
            if slow_start.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(300));
            }
            Ok(())
        })
        .unwrap();
    slow.store(true, Ordering::SeqCst);
    cylinder::Lease::discard(pool.checkout().unwrap());
    // A blocking client in line first; it holds what it gets for 3 s.
    let holder = {
        let pool = pool.clone();
        thread::spawn(move || {
            let lease = pool.checkout().unwrap();
            thread::sleep(Duration::from_secs(3));
            drop(lease);
        })
    };
    let until = Instant::now() + Duration::from_secs(2);
    while pool.stats().waiters == 0 && Instant::now() < until {
        thread::sleep(Duration::from_millis(1));
    }
    thread::sleep(Duration::from_millis(10));
    let began = Instant::now();
    let got = pool.try_checkout().map(|_| ());
    let took = began.elapsed();
    holder.join().unwrap();
    assert!(
        took < Duration::from_millis(1500),
        "try_checkout waited {took:?} (for another client's release), then got {got:?}"
    );
}

/// `resize` up runs the new start on the caller's thread; the pool is closed while it runs,
/// and the start then fails with an error whose `Drop` panics. The error of a start cut short
/// by close is dropped: that `Drop` is user code and must be contained, not unwind out of
/// `resize` into its caller.
#[test]
fn resize_whose_start_fails_after_close_with_a_panicking_error_does_not_panic() {
    let (entered_tx, entered) = mpsc::channel::<()>();
    let entered_tx = Mutex::new(entered_tx);
    let (go_tx, go) = mpsc::channel::<()>();
    let go = Mutex::new(go);
    let starts = Arc::new(AtomicUsize::new(0));
    let counted = starts.clone();
    let pool = Pool::builder()
        .size(1)
        .build(move || {
            if counted.fetch_add(1, Ordering::SeqCst) == 0 {
                return Ok(());
            }
            let _ = entered_tx.lock().unwrap().send(());
            let _ = go.lock().unwrap().recv_timeout(Duration::from_secs(5));
            Err::<(), BoxError>(Box::new(BombError))
        })
        .unwrap();
    let resizer = {
        let pool = pool.clone();
        thread::spawn(move || catch_unwind(AssertUnwindSafe(|| pool.resize(2))).is_ok())
    };
    entered.recv_timeout(Duration::from_secs(5)).unwrap();
    pool.close();
    go_tx.send(()).unwrap();
    assert!(
        resizer.join().unwrap(),
        "resize panicked: the failed start's error was dropped uncontained after close"
    );
}

// ---------------------------------------------------------------------------------------
// Factory and balancer.

/// The balancer finds a child dead (and the factory is told to retire it) while a reload is
/// already starting that child's replacement. The replacement must go in: the retired slot
/// is exactly what it was started for. Dropped instead, the slot stays empty, and with every
/// listed child alive no reload comes to fill it: the balancer serves one worker short.
#[test]
fn a_factory_keeps_the_replacement_of_a_child_retired_while_a_reload_started_it() {
    let starts = Arc::new(AtomicUsize::new(0));
    let (entered_tx, entered) = mpsc::channel::<()>();
    let entered_tx = Mutex::new(entered_tx);
    let (go_tx, go) = mpsc::channel::<()>();
    let go = Mutex::new(go);
    let counted = starts.clone();
    let factory = Arc::new(Factory::new(2, move || {
        if counted.fetch_add(1, Ordering::SeqCst) >= 2 {
            // The replacement: slow.
            let _ = entered_tx.lock().unwrap().send(());
            let _ = go.lock().unwrap().recv_timeout(Duration::from_secs(5));
        }
        Ok(Node {
            alive: AtomicBool::new(true),
        })
    }));
    let balancer = Balancer::builder()
        .reconnect_delay(Duration::from_secs(60))
        .build_with(factory.clone())
        .unwrap();
    assert_eq!(balancer.len(), 2);
    let children = factory.children().unwrap();
    children[1].alive.store(false, Ordering::Release);
    // A reload under way (here `connect`; the reaper's is the same) starts the replacement.
    let reload = {
        let balancer = balancer.clone();
        thread::spawn(move || balancer.connect())
    };
    entered.recv_timeout(Duration::from_secs(5)).unwrap();
    // Meanwhile clients find the child dead: the factory is told to retire it.
    for _ in 0..4 {
        let _ = balancer.get();
    }
    go_tx.send(()).unwrap();
    let connected = reload.join().unwrap();
    drop(children);
    thread::sleep(Duration::from_millis(50));
    assert_eq!(
        balancer.len(),
        2,
        "the replacement started for the retired child was dropped (connect said {connected:?}); \
         the balancer stays a worker short"
    );
}

/// A factory with two slots: the first start succeeds, the second fails with an error whose
/// `Drop` panics. The factory logs the failure and lists the live worker; the error's `Drop`
/// is user code, and must be contained (and not run under the factory's lock) rather than
/// unwind out of `children()` and make the balancer disconnected with a live worker.
#[test]
fn a_factory_whose_failed_start_error_panics_when_dropped_still_lists_its_live_worker() {
    let starts = Arc::new(AtomicUsize::new(0));
    let counted = starts.clone();
    let factory = Factory::new(2, move || {
        if counted.fetch_add(1, Ordering::SeqCst) == 0 {
            Ok(Node {
                alive: AtomicBool::new(true),
            })
        } else {
            Err(Box::new(BombError) as BoxError)
        }
    });
    let balancer = Balancer::builder()
        .reconnect_delay(Duration::from_secs(60))
        .build_with(factory)
        .unwrap();
    let got = balancer.get().map(|_| ());
    assert!(
        got.is_ok(),
        "the factory had a live worker, yet the balancer is {got:?}"
    );
}

/// The same error's `Drop` calls back into the factory (its `Debug`): it must not run under
/// the factory's lock.
#[test]
fn a_factory_failed_start_error_whose_drop_calls_the_factory_does_not_deadlock() {
    struct CallsBack(Arc<std::sync::OnceLock<Arc<Factory<Node>>>>);
    impl std::fmt::Debug for CallsBack {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("calls back")
        }
    }
    impl std::fmt::Display for CallsBack {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("calls back")
        }
    }
    impl std::error::Error for CallsBack {}
    impl Drop for CallsBack {
        fn drop(&mut self) {
            if let Some(factory) = self.0.get() {
                let _ = format!("{factory:?}");
            }
        }
    }
    let cell: Arc<std::sync::OnceLock<Arc<Factory<Node>>>> = Arc::default();
    let in_start = cell.clone();
    let starts = Arc::new(AtomicUsize::new(0));
    let counted = starts.clone();
    let factory = Arc::new(Factory::new(2, move || {
        if counted.fetch_add(1, Ordering::SeqCst) % 2 == 0 {
            Ok(Node {
                alive: AtomicBool::new(true),
            })
        } else {
            Err(Box::new(CallsBack(in_start.clone())) as BoxError)
        }
    }));
    cell.set(factory.clone()).ok().unwrap();
    let listed = within(Duration::from_secs(3), move || {
        factory
            .children()
            .map(|c| c.len())
            .map_err(|e| e.to_string())
    });
    // The factory (and the error's back reference) form a cycle: left to leak on purpose.
    assert!(
        listed.is_some(),
        "children() hung: the failed start's error was dropped under the factory's lock"
    );
}

/// A balancer lease outlives every balancer handle; its drop then drops the balancer itself,
/// and with it the supervisor, whose `Drop` panics. That `Drop` is user code and must be
/// contained (as the pool contains its manager's), not unwind into the lease's holder.
#[test]
fn dropping_the_last_balancer_lease_with_a_supervisor_whose_drop_panics_does_not_panic() {
    let bomb = Bomb;
    let node = Arc::new(Node {
        alive: AtomicBool::new(true),
    });
    let balancer = Balancer::builder()
        .build_with(move || -> Result<Vec<Arc<Node>>, BoxError> {
            let _keep = &bomb;
            Ok(vec![node.clone()])
        })
        .unwrap();
    let lease = balancer.lease().unwrap();
    drop(balancer);
    // The reaper is joined by now: the lease holds the last reference.
    thread::sleep(Duration::from_millis(50));
    let dropped = catch_unwind(AssertUnwindSafe(move || drop(lease)));
    assert!(
        dropped.is_ok(),
        "dropping a balancer lease panicked (the supervisor's Drop, uncontained)"
    );
}

/// Right after `build_unchecked`, the first start is slower than `checkout_timeout`:
/// `try_checkout` waits for it (as documented, bounded by `checkout_timeout`), and must then
/// answer with one of its own errors (`Overload`, `Disconnected`, `Closed`), not a blocking
/// checkout's `Timeout`, nor count itself among the blocking checkouts that gave up.
#[test]
fn try_checkout_outwaited_by_a_slow_first_start_answers_its_own_error_not_a_timeout() {
    let pool = Pool::builder()
        .size(1)
        .checkout_timeout(Duration::from_millis(100))
        .build_unchecked(|| {
            thread::sleep(Duration::from_millis(400));
            Ok(())
        })
        .unwrap();
    let got = pool.try_checkout().map(|_| ());
    let timeouts = pool.stats().timeouts;
    assert!(
        matches!(
            got,
            Ok(()) | Err(Error::Overload | Error::Disconnected { .. })
        ) && timeouts == 0,
        "try_checkout answered {got:?} and counted {timeouts} blocking checkout timeouts"
    );
}

// ---------------------------------------------------------------------------------------
// Actors.

mod cycle {
    use super::*;
    use cylinder::{Actor, Behaviour};
    use std::sync::{OnceLock, Weak};

    pub enum Ask {
        /// Call the peer with `Back`.
        Start,
        /// Call the peer with `End`.
        Back,
        End,
    }

    /// Calls its peer actor; both actors are of this type.
    pub struct Peer {
        pub peer: Arc<OnceLock<Weak<Actor<Peer>>>>,
    }

    impl Behaviour for Peer {
        type Request = Ask;
        type Reply = Result<u32, Error>;

        fn handle_call(&mut self, ask: Ask) -> Result<u32, Error> {
            let peer = || self.peer.get().and_then(Weak::upgrade).expect("peer set");
            match ask {
                Ask::Start => peer().call(Ask::Back)?,
                Ask::Back => peer().call(Ask::End)?,
                Ask::End => Ok(7),
            }
        }
    }
}

/// Actor A's handler (run inline on the caller's thread) calls actor B, whose handler (inline
/// on the same thread) calls A back: A's behaviour is held by this very thread, so the call
/// can never be served. Through the mailbox the same cycle is refused with `CallingSelf` (the
/// thread is A's own); inline it must be refused too, not hang forever.
#[test]
fn two_actors_calling_each_other_inline_get_calling_self_not_a_hang() {
    use cycle::{Ask, Peer};
    use cylinder::Actor;
    use std::sync::OnceLock;
    let a_peer = Arc::new(OnceLock::new());
    let b_peer = Arc::new(OnceLock::new());
    let a = Arc::new(
        Actor::spawn(Peer {
            peer: a_peer.clone(),
        })
        .unwrap(),
    );
    let b = Arc::new(
        Actor::spawn(Peer {
            peer: b_peer.clone(),
        })
        .unwrap(),
    );
    a_peer.set(Arc::downgrade(&b)).ok().unwrap();
    b_peer.set(Arc::downgrade(&a)).ok().unwrap();
    // Through the mailbox (A's thread runs A's handler): refused.
    let via_mailbox = {
        let a = a.clone();
        within(Duration::from_secs(3), move || {
            a.call_timeout(Ask::Start, Duration::from_secs(10))
        })
    };
    assert!(
        matches!(via_mailbox, Some(Ok(Err(Error::CallingSelf)))),
        "through the mailbox: {via_mailbox:?}"
    );
    // Inline (an idle actor runs the handler on the caller's thread).
    let inline = {
        let a = a.clone();
        within(Duration::from_secs(3), move || a.call(Ask::Start))
    };
    assert!(
        matches!(inline, Some(Ok(Err(Error::CallingSelf)))),
        "inline: {inline:?} (None: the cycle hung)"
    );
}
