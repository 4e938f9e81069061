//! Loom models of the balancer's real code (built through `src/sync.rs` under `--cfg loom`).
#![cfg(loom)]

use std::sync::atomic::AtomicUsize as StdAtomicUsize;
use std::sync::{Arc, Mutex as StdMutex};

use cylinder::{Balancer, BoxError, Error, Worker};
use loom::sync::atomic::{AtomicBool, Ordering};
use loom::thread;

struct Node {
    id: usize,
    alive: AtomicBool,
}

impl Node {
    fn new(id: usize) -> Arc<Node> {
        Arc::new(Node {
            id,
            alive: AtomicBool::new(true),
        })
    }
}

impl Worker for Node {
    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }
}

/// A supervisor whose children the model switches, counting how often it is asked.
#[derive(Clone)]
struct Board {
    children: Arc<StdMutex<Vec<Arc<Node>>>>,
    calls: Arc<StdAtomicUsize>,
}

impl Board {
    fn new(children: Vec<Arc<Node>>) -> Board {
        Board {
            children: Arc::new(StdMutex::new(children)),
            calls: Arc::new(StdAtomicUsize::new(0)),
        }
    }
    fn supervisor(&self) -> impl Fn() -> Result<Vec<Arc<Node>>, BoxError> + Send + Sync + 'static {
        let board = self.clone();
        move || {
            board
                .calls
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(board.children.lock().unwrap().clone())
        }
    }
}

fn model(test: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(3);
    }
    builder.check(test);
}

/// `get()` racing a snapshot swap always returns a worker of the old or the new set.
#[test]
fn get_racing_a_swap() {
    model(|| {
        let board = Board::new(vec![Node::new(0), Node::new(1)]);
        let balancer = Arc::new(Balancer::builder().build_with(board.supervisor()).unwrap());
        let reader = balancer.clone();
        let t = thread::spawn(move || reader.get().map(|w| w.id));
        *board.children.lock().unwrap() = vec![Node::new(2), Node::new(3)];
        balancer.connect().unwrap();
        let id = t.join().unwrap().unwrap();
        assert!(id < 4);
        assert!(balancer.get().unwrap().id >= 2);
    });
}

/// A death seen by two concurrent `get()`s asks for exactly one reload.
#[test]
fn reload_trigger_fires_once() {
    model(|| {
        let dead = Node::new(0);
        let board = Board::new(vec![dead.clone(), Node::new(1)]);
        let balancer = Arc::new(Balancer::builder().build_with(board.supervisor()).unwrap());
        dead.alive.store(false, Ordering::Release);
        let other = balancer.clone();
        let t = thread::spawn(move || {
            for _ in 0..2 {
                let w = other.get().unwrap();
                assert_eq!(w.id, 1, "alive={}", w.is_alive());
            }
        });
        for _ in 0..2 {
            assert_eq!(balancer.get().unwrap().id, 1);
        }
        t.join().unwrap();
        balancer.run_reaper_round();
        balancer.run_reaper_round();
        assert_eq!(board.calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    });
}

/// A reconnect racing `get()`: the caller sees `Disconnected` or a worker of the new set.
#[test]
fn reconnect_racing_get() {
    model(|| {
        let board = Board::new(Vec::new());
        let balancer = Arc::new(Balancer::builder().build_with(board.supervisor()).unwrap());
        assert!(matches!(balancer.get(), Err(Error::Disconnected { .. })));
        let reader = balancer.clone();
        let t = thread::spawn(move || match reader.get() {
            Ok(worker) => assert_eq!(worker.id, 7),
            Err(err) => assert!(matches!(err, Error::Disconnected { .. })),
        });
        *board.children.lock().unwrap() = vec![Node::new(7)];
        balancer.run_reaper_round();
        t.join().unwrap();
        assert_eq!(balancer.get().unwrap().id, 7);
    });
}

/// Marks `node` in use by a lease holder; panics if another holder has it.
fn enter(in_use: &[AtomicBool], id: usize) {
    assert!(
        !in_use[id].swap(true, Ordering::AcqRel),
        "worker {id} leased to two holders at once"
    );
}

fn leave(in_use: &[AtomicBool], id: usize) {
    in_use[id].store(false, Ordering::Release);
}

/// Two leases racing a reload that reorders the set and lists a worker twice: never two
/// guards on one worker, and a lease fails only with `Overload`.
#[test]
fn two_leases_racing_a_reload() {
    model(|| {
        let (a, b) = (Node::new(0), Node::new(1));
        let board = Board::new(vec![a.clone(), b.clone()]);
        let balancer = Balancer::builder().build_with(board.supervisor()).unwrap();
        let in_use: Arc<[AtomicBool; 2]> =
            Arc::new([AtomicBool::new(false), AtomicBool::new(false)]);
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (balancer, in_use) = (balancer.clone(), in_use.clone());
                thread::spawn(move || match balancer.lease() {
                    Ok(lease) => {
                        enter(&*in_use, lease.id);
                        leave(&*in_use, lease.id);
                    }
                    Err(err) => assert!(matches!(err, Error::Overload), "{err:?}"),
                })
            })
            .collect();
        *board.children.lock().unwrap() = vec![b.clone(), a.clone(), b.clone()];
        balancer.connect().unwrap();
        for t in threads {
            t.join().unwrap();
        }
        // Everything released: both workers can be leased again, once each.
        let first = balancer.lease().unwrap();
        let second = balancer.lease().unwrap();
        assert_ne!(first.id, second.id);
        assert!(matches!(balancer.lease(), Err(Error::Overload)));
    });
}

/// A lease released while a reload drops its worker from the set and another puts it back:
/// the worker is leased again exactly once, never twice, never lost.
#[test]
fn a_lease_released_while_its_worker_leaves_and_returns() {
    model(|| {
        let a = Node::new(0);
        let board = Board::new(vec![a.clone()]);
        let balancer = Balancer::builder().build_with(board.supervisor()).unwrap();
        let lease = balancer.lease().unwrap();
        let other = balancer.clone();
        let t = thread::spawn(move || {
            if let Ok(again) = other.lease() {
                assert_eq!(again.id, 1, "worker 0 is still held");
            }
            drop(lease);
        });
        *board.children.lock().unwrap() = vec![Node::new(1)];
        balancer.connect().unwrap();
        *board.children.lock().unwrap() = vec![a.clone()];
        balancer.connect().unwrap();
        t.join().unwrap();
        // Released now: exactly one lease of worker 0.
        let one = balancer.lease().unwrap();
        assert_eq!(one.id, 0);
        assert!(matches!(balancer.lease(), Err(Error::Overload)));
    });
}

/// Lease mode is switched on by the first lease (`Shared::lease_mode`, never cleared), not
/// counted per lease: a `get` that comes after a lease (here: after seeing the id it
/// published) skips the leased worker, whichever the interleaving.
#[test]
fn a_get_after_a_lease_skips_its_worker() {
    model(|| {
        let board = Board::new(vec![Node::new(0), Node::new(1)]);
        let balancer = Balancer::builder().build_with(board.supervisor()).unwrap();
        let published = Arc::new(loom::sync::atomic::AtomicUsize::new(0));
        let (leaser, seen) = (balancer.clone(), published.clone());
        let t = thread::spawn(move || {
            let lease = leaser.lease().unwrap();
            seen.store(lease.id + 1, Ordering::Release);
            lease
        });
        let seen = published.load(Ordering::Acquire);
        let got = balancer.get().unwrap().id;
        if seen != 0 {
            assert_ne!(got, seen - 1, "get handed out a worker leased before it");
        }
        let lease = t.join().unwrap();
        assert_ne!(balancer.get().unwrap().id, lease.id);
        drop(lease);
        let first = balancer.get().unwrap().id;
        assert_ne!(
            balancer.get().unwrap().id,
            first,
            "both workers back in rotation"
        );
    });
}

/// Lease affinity (`Shared::lease_cursor`): each thread looks first at the worker it leased
/// last. Three holders whose cursors collide (the main thread holds worker 0, where the
/// third thread's cursor starts; the second thread starts at worker 1) lease, release and
/// lease again: never two holders of one worker, a lease fails only with `Overload`, and
/// once all is released every worker can be leased again, once.
#[test]
fn affine_leases_never_share_a_worker() {
    model(|| {
        let board = Board::new(vec![Node::new(0), Node::new(1)]);
        let balancer = Balancer::builder().build_with(board.supervisor()).unwrap();
        let in_use: Arc<[AtomicBool; 2]> =
            Arc::new([AtomicBool::new(false), AtomicBool::new(false)]);
        // The main thread takes the first stripe: its cursor starts at worker 0.
        let held = balancer.lease().unwrap();
        assert_eq!(held.id, 0);
        enter(&*in_use, held.id);
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (balancer, in_use) = (balancer.clone(), in_use.clone());
                thread::spawn(move || {
                    for _ in 0..2 {
                        match balancer.lease() {
                            Ok(lease) => {
                                enter(&*in_use, lease.id);
                                leave(&*in_use, lease.id);
                            }
                            Err(err) => assert!(matches!(err, Error::Overload), "{err:?}"),
                        }
                    }
                })
            })
            .collect();
        leave(&*in_use, held.id);
        drop(held);
        for t in threads {
            t.join().unwrap();
        }
        let first = balancer.lease().unwrap();
        let second = balancer.lease().unwrap();
        assert_ne!(first.id, second.id);
        assert!(matches!(balancer.lease(), Err(Error::Overload)));
    });
}
