use std::sync::Arc;

use crate::error::{BoxError, Error};
use crate::sync::{AtomicU64, Mutex, Ordering};
use crate::worker::Worker;

/// The owner of a set of workers: it enumerates them, and it is told when one is given up.
///
/// `children` is asked for the current set whenever the pool or balancer (re)connects: at
/// start, after a worker died or was discarded, and every `reconnect_delay` while
/// disconnected. An `Err`, a panic, or a set with no live worker means the set is gone:
/// callers get [`Error::Disconnected`] until it is back. A panic or error here is contained
/// and logged; it never takes the pool down.
///
/// Any `Fn() -> Result<Vec<Arc<W>>, BoxError>` closure is a supervisor, and so is
/// [`Factory`], which starts workers from a closure and restarts dead ones.
///
/// ```
/// use std::sync::Arc;
/// use cylinder::{BoxError, Supervisor, Worker};
///
/// struct Node;
/// impl Worker for Node {}
///
/// let nodes = vec![Arc::new(Node), Arc::new(Node)];
/// let supervisor = move || -> Result<Vec<Arc<Node>>, BoxError> { Ok(nodes.clone()) };
/// assert_eq!(supervisor.children().unwrap().len(), 2);
/// ```
pub trait Supervisor<W>: Send + Sync + 'static {
    /// The current children. `Err` or an empty list: the set is gone (disconnected).
    fn children(&self) -> Result<Vec<Arc<W>>, BoxError>;

    /// Told that `worker` was taken out of service (found dead by the balancer), once per worker,
    /// so that the next `children` can list a replacement. The default does nothing: a
    /// supervisor that restarts its children by itself needs no telling.
    fn retire(&self, worker: &Arc<W>) {
        let _ = worker;
    }
}

impl<W, F> Supervisor<W> for F
where
    F: Fn() -> Result<Vec<Arc<W>>, BoxError> + Send + Sync + 'static,
{
    fn children(&self) -> Result<Vec<Arc<W>>, BoxError> {
        self()
    }
}

type StartFn<W> = dyn Fn() -> Result<W, BoxError> + Send + Sync;

struct Slot<W> {
    worker: Option<Arc<W>>,
    started_before: bool,
}

/// A supervisor that starts `size` workers from a closure and restarts any that died or were
/// retired, each time it is asked for its children: gruff's `{M, F, A}` worker spec.
///
/// A start that fails or panics leaves its slot empty and is retried at the next ask; only
/// when no worker at all is running is the failure returned.
///
/// ```
/// use cylinder::{Factory, Supervisor, Worker};
///
/// struct Adder;
/// impl Worker for Adder {}
///
/// let factory = Factory::new(3, || Ok(Adder));
/// assert_eq!(factory.children().unwrap().len(), 3);
/// assert_eq!(factory.restarts(), 0);
/// ```
pub struct Factory<W> {
    start: Box<StartFn<W>>,
    slots: Mutex<Vec<Slot<W>>>,
    restarts: AtomicU64,
}

impl<W: Worker> Factory<W> {
    /// A factory of `size` workers, each made by `start`. Nothing starts until the first
    /// `children()`.
    pub fn new(
        size: usize,
        start: impl Fn() -> Result<W, BoxError> + Send + Sync + 'static,
    ) -> Self {
        let slots = (0..size)
            .map(|_| Slot {
                worker: None,
                started_before: false,
            })
            .collect();
        Factory {
            start: Box::new(start),
            slots: Mutex::new(slots),
            restarts: AtomicU64::new(0),
        }
    }

    /// Changes how many workers the factory keeps. Growing adds slots that start at the next
    /// `children()`; shrinking drops empty or dead slots first, then the last ones.
    ///
    /// ```
    /// use cylinder::{Factory, Supervisor, Worker};
    ///
    /// struct Adder;
    /// impl Worker for Adder {}
    ///
    /// let factory = Factory::new(2, || Ok(Adder));
    /// factory.resize(5);
    /// assert_eq!(factory.children().unwrap().len(), 5);
    /// factory.resize(1);
    /// assert_eq!(factory.children().unwrap().len(), 1);
    /// ```
    pub fn resize(&self, size: usize) {
        let mut slots = self.slots.lock();
        while slots.len() > size {
            let idle = slots
                .iter()
                .rposition(|s| !s.worker.as_ref().is_some_and(|w| w.is_alive()));
            let last = slots.len() - 1;
            slots.remove(idle.unwrap_or(last));
        }
        while slots.len() < size {
            slots.push(Slot {
                worker: None,
                started_before: false,
            });
        }
    }

    /// How many workers were started in place of a dead or retired one.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }
}

/// A factory shared between a balancer and the code that keeps it (to resize it, say).
impl<W: Worker> Supervisor<W> for Arc<Factory<W>> {
    fn children(&self) -> Result<Vec<Arc<W>>, BoxError> {
        Factory::children(self)
    }

    fn retire(&self, worker: &Arc<W>) {
        Factory::retire(self, worker)
    }
}

impl<W: Worker> Supervisor<W> for Factory<W> {
    fn children(&self) -> Result<Vec<Arc<W>>, BoxError> {
        let mut slots = self.slots.lock();
        let mut failure = None;
        for slot in slots.iter_mut() {
            if slot.worker.as_ref().is_some_and(|w| w.is_alive()) {
                continue;
            }
            match crate::contain::call(|| (self.start)()).map_err(Error::Disconnected) {
                Ok(worker) => {
                    if slot.started_before {
                        self.restarts.fetch_add(1, Ordering::Relaxed);
                    }
                    slot.worker = Some(Arc::new(worker));
                    slot.started_before = true;
                }
                Err(err) => {
                    slot.worker = None;
                    failure = Some(err);
                }
            }
        }
        let live: Vec<Arc<W>> = slots.iter().filter_map(|s| s.worker.clone()).collect();
        match failure {
            // The start's own error (or panic) is the cause, once: not wrapped in a second
            // `Disconnected`.
            Some(Error::Disconnected(cause)) if live.is_empty() => Err(Box::new(cause)),
            Some(err) if live.is_empty() => Err(Box::new(err)),
            Some(err) => {
                log::warn!(
                    "cylinder: {} of {} workers could not start: {err}",
                    slots.len() - live.len(),
                    slots.len()
                );
                Ok(live)
            }
            None => Ok(live),
        }
    }

    fn retire(&self, worker: &Arc<W>) {
        let mut slots = self.slots.lock();
        if let Some(slot) = slots
            .iter_mut()
            .find(|s| s.worker.as_ref().is_some_and(|w| Arc::ptr_eq(w, worker)))
        {
            slot.worker = None;
        }
    }
}

impl<W> std::fmt::Debug for Factory<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Factory")
            .field("size", &self.slots.lock().len())
            .field("restarts", &self.restarts.load(Ordering::Relaxed))
            .finish()
    }
}
