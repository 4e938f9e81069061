//! Balancer children a test can kill.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A balancer child that serves until killed (dead from then on).
pub struct Node {
    pub name: usize,
    pub alive: AtomicBool,
}

impl Node {
    pub fn new(name: usize) -> Arc<Node> {
        Arc::new(Node {
            name,
            alive: AtomicBool::new(true),
        })
    }

    pub fn kill(&self) {
        self.alive.store(false, Ordering::SeqCst);
    }
}

impl cylinder::Worker for Node {
    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }
}

/// A `Factory`'s worker: a handle on a `Node` the test can kill.
pub struct Switch(pub Arc<Node>);

impl cylinder::Worker for Switch {
    fn is_alive(&self) -> bool {
        self.0.alive.load(Ordering::SeqCst)
    }
}
