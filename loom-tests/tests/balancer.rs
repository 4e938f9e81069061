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
        assert!(matches!(balancer.get(), Err(Error::Disconnected(_))));
        let reader = balancer.clone();
        let t = thread::spawn(move || match reader.get() {
            Ok(worker) => assert_eq!(worker.id, 7),
            Err(err) => assert!(matches!(err, Error::Disconnected(_))),
        });
        *board.children.lock().unwrap() = vec![Node::new(7)];
        balancer.run_reaper_round();
        t.join().unwrap();
        assert_eq!(balancer.get().unwrap().id, 7);
    });
}
