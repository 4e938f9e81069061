//! Temporary workers beyond the pool's size, started when every worker is leased (poolboy's
//! `max_overflow`) and retired when they come back with nobody waiting.

use std::sync::Arc;

use crate::balancer::Factory;
use crate::sync::{AtomicUsize, Mutex, Ordering};
use crate::worker::Worker;

pub(crate) struct Overflow<W> {
    limit: usize,
    /// Overflow workers alive now; read without the lock so releases skip the lookup while
    /// there are none.
    out: AtomicUsize,
    workers: Mutex<Vec<Arc<W>>>,
    factory: Arc<Factory<W>>,
}

impl<W: Worker> Overflow<W> {
    pub(crate) fn new(limit: usize, factory: Arc<Factory<W>>) -> Self {
        Overflow {
            limit,
            out: AtomicUsize::new(0),
            workers: Mutex::new(Vec::new()),
            factory,
        }
    }

    /// Starts a temporary worker if the limit allows one.
    pub(crate) fn start(&self, pool: &str) -> Option<Arc<W>> {
        let claimed = self
            .out
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |out| {
                (out < self.limit).then_some(out + 1)
            })
            .is_ok();
        if !claimed {
            return None;
        }
        match self.factory.start_one() {
            Ok(worker) => {
                let worker = Arc::new(worker);
                self.workers.lock().push(worker.clone());
                log::debug!("cylinder: {pool}: started an overflow worker");
                Some(worker)
            }
            Err(err) => {
                self.out.fetch_sub(1, Ordering::AcqRel);
                log::warn!("cylinder: {pool}: an overflow worker could not start: {err}");
                None
            }
        }
    }

    /// Whether `worker` is a temporary one.
    #[inline]
    pub(crate) fn holds(&self, worker: &Arc<W>) -> bool {
        self.out.load(Ordering::Acquire) != 0
            && self.workers.lock().iter().any(|w| Arc::ptr_eq(w, worker))
    }

    /// Lets a temporary worker go.
    pub(crate) fn retire(&self, worker: &Arc<W>) {
        let mut workers = self.workers.lock();
        if let Some(at) = workers.iter().position(|w| Arc::ptr_eq(w, worker)) {
            workers.swap_remove(at);
            self.out.fetch_sub(1, Ordering::AcqRel);
        }
    }

    pub(crate) fn out(&self) -> usize {
        self.out.load(Ordering::Relaxed)
    }
}
