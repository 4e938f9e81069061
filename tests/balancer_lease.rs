//! revolver's lease mode on the balancer: `lease()` / `transaction(f)` hold a worker
//! exclusively, non-blocking, in rotation; all leased → `Overload`; leases survive reloads and
//! reconnects (revolver's `reconnect_with_lease`).

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::{eventually, Probe, Switchboard};
use cylinder::{Balancer, BalancerLease, Error, Event};

const SLACK: Duration = Duration::from_secs(5);

/// Unlike revolver's rotation, a thread gets back the worker it leased last while that one
/// is free; held, the next free one in order; dead, the next live one.
#[test]
fn a_thread_gets_back_the_worker_it_leased_last_while_it_is_free() {
    let board = Switchboard::with(3);
    let balancer = Balancer::builder()
        .min_alive_ratio(0.0)
        .build_with(board.supervisor())
        .unwrap();
    let first = balancer.transaction(|w| w.id).unwrap();
    for _ in 0..5 {
        assert_eq!(balancer.transaction(|w| w.id).unwrap(), first);
    }
    // Held: the next lease is the next worker in order, and then that one comes back.
    let held = balancer.lease().unwrap();
    assert_eq!(held.id, first);
    let next = balancer.transaction(|w| w.id).unwrap();
    assert_eq!(next, (first + 1) % 3);
    drop(held);
    assert_eq!(balancer.transaction(|w| w.id).unwrap(), next);
    // Dead: the next live one, and that one from then on.
    board.current()[next].kill();
    let after = balancer.transaction(|w| w.id).unwrap();
    assert_eq!(after, (next + 1) % 3);
    assert_eq!(balancer.transaction(|w| w.id).unwrap(), after);
}

/// Threads leasing at once each keep to workers of their own once settled, and no worker
/// is ever held by two.
#[test]
fn threads_leasing_at_once_settle_on_workers_of_their_own() {
    let board = Switchboard::with(4);
    let balancer = Balancer::builder().build_with(board.supervisor()).unwrap();
    let settled: Vec<usize> = thread::scope(|scope| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| {
                    let mut last = None;
                    for _ in 0..2_000 {
                        match balancer.lease() {
                            Ok(lease) => {
                                lease.enter();
                                last = Some(lease.id);
                                lease.leave();
                            }
                            Err(Error::Overload) => thread::yield_now(),
                            Err(err) => panic!("{err:?}"),
                        }
                    }
                    // Alone now or not, its own worker is free for it.
                    let again = balancer.transaction(|w| w.id).unwrap();
                    assert_eq!(Some(again), last);
                    again
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(settled.len(), 2);
}

#[test]
fn a_lease_is_exclusive_and_all_leased_is_overload_at_once() {
    let board = Switchboard::with(3);
    let balancer = Balancer::builder().build_with(board.supervisor()).unwrap();
    let leases: Vec<BalancerLease<Probe>> = (0..3).map(|_| balancer.lease().unwrap()).collect();
    let mut ids: Vec<usize> = leases.iter().map(|l| l.id).collect();
    ids.sort();
    assert_eq!(ids, vec![0, 1, 2]);
    let began = std::time::Instant::now();
    assert!(matches!(balancer.lease(), Err(Error::Overload)));
    assert!(matches!(balancer.transaction(|_| ()), Err(Error::Overload)));
    assert!(matches!(balancer.get(), Err(Error::Overload)));
    assert!(began.elapsed() < Duration::from_millis(50));
    drop(leases);
    assert!(balancer.lease().is_ok());
    assert!(balancer.get().is_ok());
}

#[test]
fn a_panicking_transaction_releases_its_worker() {
    let board = Switchboard::with(1);
    let balancer = Balancer::builder().build_with(board.supervisor()).unwrap();
    let result = catch_unwind(AssertUnwindSafe(|| {
        balancer.transaction(|_| panic!("client failed")).unwrap()
    }));
    assert!(result.is_err());
    assert_eq!(balancer.transaction(|w| w.id).unwrap(), 0);
}

#[test]
fn a_lease_is_send_and_outlives_every_handle() {
    let board = Switchboard::with(1);
    let balancer = Balancer::builder().build_with(board.supervisor()).unwrap();
    let lease = balancer.lease().unwrap();
    drop(balancer);
    let id = thread::spawn(move || lease.id).join().unwrap();
    assert_eq!(id, 0);
}

#[test]
fn leases_survive_a_reload_and_a_reconnect() {
    let board = Switchboard::with(2);
    let balancer = Balancer::builder()
        .reconnect_delay(Duration::from_millis(10))
        .build_with(board.supervisor())
        .unwrap();
    let held = balancer.lease().unwrap();
    let free = 1 - held.id;
    // A reload listing the same children (in another order) keeps the lease.
    let mut children = board.current();
    children.reverse();
    board.set(children.clone());
    balancer.connect().unwrap();
    for _ in 0..4 {
        assert_eq!(balancer.transaction(|w| w.id).unwrap(), free);
        assert_eq!(balancer.get().unwrap().id, free);
    }
    // The supervisor goes away and comes back with the same children: still leased.
    board.stop();
    assert!(balancer.connect().is_err());
    assert!(matches!(balancer.lease(), Err(Error::Disconnected { .. })));
    board.set(children);
    assert!(eventually(SLACK, || balancer.get().is_ok()));
    let other = balancer.lease().unwrap();
    assert_eq!(other.id, free);
    assert!(matches!(balancer.lease(), Err(Error::Overload)));
    drop(held);
    assert_eq!(balancer.lease().unwrap().id, 1 - free);
}

#[test]
fn a_worker_that_leaves_while_leased_is_not_handed_out_and_comes_back_leased() {
    let board = Switchboard::with(2);
    let balancer = Balancer::builder().build_with(board.supervisor()).unwrap();
    let held = balancer.lease().unwrap();
    let leaver = held.arc();
    let stayer: Vec<Arc<Probe>> = board
        .current()
        .into_iter()
        .filter(|w| !Arc::ptr_eq(w, &leaver))
        .collect();
    board.set(stayer.clone());
    balancer.connect().unwrap();
    assert_eq!(balancer.len(), 1);
    // Back in the set while still leased: not handed out.
    board.set(vec![stayer[0].clone(), leaver.clone()]);
    let found = balancer.connect().unwrap();
    assert_eq!(found.total, 2);
    for _ in 0..4 {
        assert_eq!(balancer.transaction(|w| w.id).unwrap(), stayer[0].id);
        assert_eq!(balancer.get().unwrap().id, stayer[0].id);
    }
    let _other = balancer.lease().unwrap();
    assert!(matches!(balancer.lease(), Err(Error::Overload)));
    drop(held);
    assert_eq!(balancer.lease().unwrap().id, leaver.id);
}

#[test]
fn a_supervisor_listing_duplicates_gives_one_member_and_one_lease() {
    let child = Arc::new(Probe::new(7));
    let board = Switchboard::default();
    board.set(vec![child.clone(), child.clone(), child.clone()]);
    let balancer = Balancer::builder().build_with(board.supervisor()).unwrap();
    assert_eq!(balancer.len(), 1);
    let lease = balancer.lease().unwrap();
    assert!(matches!(balancer.lease(), Err(Error::Overload)));
    drop(lease);
    assert_eq!(balancer.connect().unwrap().total, 1);
}

#[test]
fn dead_workers_are_not_leased_and_a_dead_set_reloads() {
    let board = Switchboard::with(2);
    let balancer = Balancer::builder()
        .min_alive_ratio(0.0)
        .build_with(board.supervisor())
        .unwrap();
    board.current()[0].kill();
    for _ in 0..4 {
        assert_eq!(balancer.transaction(|w| w.id).unwrap(), 1);
    }
    // Every worker dead, the supervisor has fresh ones: the lease reloads and succeeds.
    board.current()[1].kill();
    board.set(vec![Arc::new(Probe::new(5))]);
    assert_eq!(balancer.transaction(|w| w.id).unwrap(), 5);
}

#[test]
fn no_two_holders_while_reloads_reshuffle_the_set() {
    let board = Switchboard::with(4);
    let balancer = Balancer::builder().build_with(board.supervisor()).unwrap();
    let stop = AtomicBool::new(false);
    let pool = board.current();
    thread::scope(|scope| {
        for _ in 0..6 {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    match balancer.lease() {
                        Ok(lease) => {
                            lease.enter();
                            thread::yield_now();
                            lease.leave();
                        }
                        Err(Error::Overload) => thread::yield_now(),
                        Err(err) => panic!("{err:?}"),
                    }
                }
            });
        }
        // Reloads that reorder, drop and duplicate the same four workers.
        for round in 0..2_000usize {
            let mut listed = pool.clone();
            listed.rotate_left(round % 4);
            listed.truncate(2 + round % 3);
            listed.push(listed[0].clone());
            board.set(listed);
            balancer.connect().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert!(
        pool.iter()
            .map(|w| w.uses.load(Ordering::Relaxed))
            .sum::<usize>()
            > 0
    );
}

#[test]
fn an_event_callback_may_lease() {
    let slot: Arc<std::sync::OnceLock<Balancer<Probe>>> = Arc::new(std::sync::OnceLock::new());
    let leased_in_callback = Arc::new(AtomicBool::new(false));
    let (inner, flag) = (slot.clone(), leased_in_callback.clone());
    let board = Switchboard::with(2);
    let balancer = Balancer::builder()
        .on_event(move |event| {
            if let (Event::Connected { .. }, Some(balancer)) = (event, inner.get()) {
                if balancer.transaction(|w| w.id).is_ok() && balancer.get().is_ok() {
                    flag.store(true, Ordering::SeqCst);
                }
            }
        })
        .build_with(board.supervisor())
        .unwrap();
    slot.set(balancer.clone()).ok().unwrap();
    balancer.connect().unwrap();
    assert!(leased_in_callback.load(Ordering::SeqCst));
    // The reaper's own round (after a death) may lease too.
    leased_in_callback.store(false, Ordering::SeqCst);
    board.set(vec![Arc::new(Probe::new(8)), Arc::new(Probe::new(9))]);
    balancer.get().unwrap().kill();
    for _ in 0..2 {
        let _ = balancer.get();
    }
    assert!(eventually(SLACK, || leased_in_callback.load(Ordering::SeqCst)));
}
