//! Trying to break the balancer: a supervisor that calls back into its own balancer, workers
//! whose `is_alive` or `Drop` panics, leases dropped while reloads and gets race.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use common::{Probe, Switchboard};
use cylinder::{Balancer, BoxError, Error, Worker};

#[test]
fn a_supervisor_that_calls_its_own_balancer_does_not_deadlock() {
    let slot: Arc<OnceLock<Balancer<Probe>>> = Arc::new(OnceLock::new());
    let inner = slot.clone();
    let board = Switchboard::with(2);
    let listed = board.supervisor();
    let nested = Arc::new(Mutex::new(Vec::new()));
    let seen = nested.clone();
    let balancer = Balancer::builder()
        .min_alive_ratio(0.0)
        .build_with(move || {
            if let Some(balancer) = inner.get() {
                // From inside a reload: reads work, a nested reload is refused, not awaited.
                let _ = balancer.len();
                let _ = balancer.get();
                seen.lock().unwrap().push(balancer.connect().map(|_| ()));
            }
            listed()
        })
        .unwrap();
    slot.set(balancer.clone()).ok().unwrap();
    balancer.connect().unwrap();
    let nested = nested.lock().unwrap().clone();
    assert_eq!(nested.len(), 1);
    assert!(matches!(nested[0], Err(Error::Disconnected { .. })));
    // Every worker dead while the supervisor has fresh ones: get() reloads at once, and the
    // supervisor's own get() inside that reload does not wait for itself.
    let old = board.current();
    board.set(vec![Arc::new(Probe::new(9))]);
    for child in old {
        child.kill();
    }
    assert_eq!(balancer.get().unwrap().id, 9);
}

/// A worker whose `is_alive` panics once `broken` is set, and whose drop may panic.
struct Fragile {
    id: usize,
    broken: AtomicBool,
    panic_on_drop: bool,
}

impl Worker for Fragile {
    fn is_alive(&self) -> bool {
        assert!(!self.broken.load(Ordering::SeqCst), "is_alive exploded");
        true
    }
}

impl Drop for Fragile {
    fn drop(&mut self) {
        if self.panic_on_drop && !thread::panicking() {
            panic!("drop exploded");
        }
    }
}

fn fragile(id: usize, panic_on_drop: bool) -> Arc<Fragile> {
    Arc::new(Fragile {
        id,
        broken: AtomicBool::new(false),
        panic_on_drop,
    })
}

#[test]
fn a_panicking_is_alive_during_a_reload_counts_as_dead() {
    let children = Arc::new(Mutex::new(vec![fragile(0, false), fragile(1, false)]));
    let listed = children.clone();
    let balancer = Balancer::builder()
        .build_with(move || -> Result<_, BoxError> { Ok(listed.lock().unwrap().clone()) })
        .unwrap();
    children.lock().unwrap()[0]
        .broken
        .store(true, Ordering::SeqCst);
    let found = balancer.connect().unwrap();
    assert_eq!(found.total, 1);
    assert_eq!(balancer.get().unwrap().id, 1);
    // The reload machinery is not stuck.
    children.lock().unwrap()[0]
        .broken
        .store(false, Ordering::SeqCst);
    assert_eq!(balancer.connect().unwrap().total, 2);
}

#[test]
fn a_worker_whose_drop_panics_does_not_stop_reloads() {
    let children = Arc::new(Mutex::new(vec![fragile(0, true), fragile(1, false)]));
    let listed = children.clone();
    let balancer = Balancer::builder()
        .build_with(move || -> Result<_, BoxError> { Ok(listed.lock().unwrap().clone()) })
        .unwrap();
    // The supervisor lets worker 0 go: the reload holds its last reference.
    children.lock().unwrap().remove(0);
    assert_eq!(balancer.connect().unwrap().total, 1);
    children.lock().unwrap().push(fragile(2, false));
    assert_eq!(balancer.connect().unwrap().total, 2);
}

#[test]
fn leases_dropped_while_gets_and_reloads_race() {
    let board = Switchboard::with(3);
    let balancer = Balancer::builder()
        .reconnect_delay(Duration::from_millis(5))
        .build_with(board.supervisor())
        .unwrap();
    let stop = AtomicBool::new(false);
    let overloads = AtomicUsize::new(0);
    let pool = board.current();
    thread::scope(|scope| {
        for _ in 0..3 {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    match balancer.lease() {
                        Ok(lease) => {
                            lease.enter();
                            let moved = thread::spawn(move || {
                                lease.leave();
                                lease
                            })
                            .join()
                            .unwrap();
                            drop(moved);
                        }
                        Err(Error::Overload) => {
                            overloads.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(Error::Disconnected { .. }) => {}
                        Err(err) => panic!("{err:?}"),
                    }
                }
            });
        }
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let _ = balancer.get();
            }
        });
        for round in 0..300usize {
            match round % 3 {
                0 => board.stop(),
                1 => board.set(vec![pool[round % 3].clone()]),
                _ => board.set(pool.clone()),
            }
            let _ = balancer.connect();
        }
        board.set(pool.clone());
        balancer.connect().unwrap();
        stop.store(true, Ordering::Relaxed);
    });
    // Every lease was released: all three can be leased at once, and no more.
    let all: Vec<_> = (0..3).map(|_| balancer.lease().unwrap()).collect();
    assert!(matches!(balancer.lease(), Err(Error::Overload)));
    drop(all);
}
