use std::sync::Arc;

use crate::error::BoxError;
use crate::sync::{AtomicU64, Mutex, Ordering};
use crate::worker::Worker;

/// The owner of a set of workers: it enumerates them, and it is told when one is given up.
///
/// `children` is asked for the current set whenever the pool or balancer (re)connects: at
/// start, after a worker died or was discarded, and every `reconnect_delay` while
/// disconnected. An `Err`, a panic, or a set with no live worker means the set is gone:
/// callers get [`Error::Disconnected`](crate::Error::Disconnected) until it is back. A panic or error here is contained
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
    /// # Errors
    /// An error (or an empty list) says the set is gone: the balancer is disconnected, with this
    /// error as the cause, until a later call lists live children.
    fn children(&self) -> Result<Vec<Arc<W>>, BoxError>;

    /// Told that `worker` was taken out of service (found dead by the balancer), once per worker,
    /// so that the next `children` can list a replacement. The default does nothing: a
    /// supervisor that restarts its children by itself needs no telling.
    fn retire(&self, worker: &Arc<W>) {
        let _ = worker;
    }

    /// Whether the last `children` left out children it means to have (a start that
    /// failed): the balancer asks again after `reconnect_delay`, as it does while a listed
    /// child is dead. The default: never ([`Factory`] says so while a slot is empty).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use cylinder::{Factory, Supervisor, Worker};
    ///
    /// struct Node;
    /// impl Worker for Node {}
    ///
    /// let starts = std::sync::Mutex::new(0);
    /// let factory = Factory::new(2, move || {
    ///     let mut n = starts.lock().unwrap();
    ///     *n += 1;
    ///     if *n == 2 { Err("refused".into()) } else { Ok(Node) }
    /// });
    /// assert_eq!(factory.children().unwrap().len(), 1);
    /// assert!(factory.incomplete()); // asked again after `reconnect_delay`
    /// assert_eq!(factory.children().unwrap().len(), 2);
    /// assert!(!factory.incomplete());
    /// ```
    fn incomplete(&self) -> bool {
        false
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
/// A start that fails or panics leaves its slot empty and is retried at the next ask (a
/// balancer asks again after `reconnect_delay`: see [`Supervisor::incomplete`]); only when
/// no worker at all is running is the failure returned.
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
        // `is_alive` is user code: asked with no lock held, of the workers as they were.
        let dead = self.dead_workers();
        let mut gone = Vec::new();
        {
            let mut slots = self.slots.lock();
            while slots.len() > size {
                let idle = slots.iter().rposition(|s| match &s.worker {
                    None => true,
                    Some(w) => dead.iter().any(|d| Arc::ptr_eq(d, w)),
                });
                let last = slots.len() - 1;
                gone.push(slots.remove(idle.unwrap_or(last)).worker);
            }
            while slots.len() < size {
                slots.push(Slot {
                    worker: None,
                    started_before: false,
                });
            }
        }
        // A worker's `Drop` is user code: never under the factory's lock, and contained (a
        // dead one retired meanwhile may be held here last).
        crate::contain::dispose_each(dead);
        crate::contain::dispose_each(gone);
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
        Factory::retire(self, worker);
    }

    fn incomplete(&self) -> bool {
        Factory::incomplete(self)
    }
}

impl<W: Worker> Supervisor<W> for Factory<W> {
    fn children(&self) -> Result<Vec<Arc<W>>, BoxError> {
        let mut gone = Vec::new();
        let listed = self.list(&mut gone);
        // The dead workers replaced go with no lock held, their `Drop` contained.
        crate::contain::dispose_each(gone);
        listed
    }

    fn incomplete(&self) -> bool {
        self.slots.lock().iter().any(|slot| slot.worker.is_none())
    }

    fn retire(&self, worker: &Arc<W>) {
        let gone = {
            let mut slots = self.slots.lock();
            slots
                .iter_mut()
                .find(|s| s.worker.as_ref().is_some_and(|w| Arc::ptr_eq(w, worker)))
                .and_then(|slot| slot.worker.take())
        };
        crate::contain::dispose(gone);
    }
}

impl<W> Drop for Factory<W> {
    fn drop(&mut self) {
        // Its workers' `Drop` is user code.
        crate::contain::dispose_each(std::mem::take(&mut *self.slots.lock()));
    }
}

impl<W: Worker> Factory<W> {
    /// The workers whose `is_alive` says false (or panics), asked with no lock held.
    fn dead_workers(&self) -> Vec<Arc<W>> {
        let workers: Vec<Arc<W>> = self
            .slots
            .lock()
            .iter()
            .filter_map(|s| s.worker.clone())
            .collect();
        workers
            .into_iter()
            .filter(|w| !crate::contain::run(|| w.is_alive()).unwrap_or(false))
            .collect()
    }

    /// Starts a worker for every empty or dead slot and lists the live ones. User code (the
    /// start, `is_alive`) runs with no lock held, so `retire`, `resize` and `Debug` never wait
    /// on a slow start: the slots are read, the starts run, and each new worker goes in only
    /// if its slot still holds what was read (else it goes, with the workers replaced, to
    /// `gone`, for the caller to drop once no lock is held).
    fn list(&self, gone: &mut Vec<Option<Arc<W>>>) -> Result<Vec<Arc<W>>, BoxError> {
        let seen: Vec<Option<Arc<W>>> =
            self.slots.lock().iter().map(|s| s.worker.clone()).collect();
        let mut started = Vec::new();
        let mut failed = Vec::new();
        // Every start's error (or panic), in order: user values, dropped with no lock held.
        let mut errors = Vec::new();
        for (index, worker) in seen.iter().enumerate() {
            if worker
                .as_ref()
                .is_some_and(|w| crate::contain::run(|| w.is_alive()).unwrap_or(false))
            {
                continue;
            }
            match crate::contain::call(|| (self.start)()) {
                Ok(new) => started.push((index, Arc::new(new))),
                Err(cause) => {
                    failed.push(index);
                    errors.push(cause);
                }
            }
        }
        // The slot still holds what was read, or was emptied meanwhile (the worker read there
        // retired): either way the new worker goes in.
        let current = |slot: &Slot<W>, read: &Option<Arc<W>>| match (&slot.worker, read) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, _) => true,
            _ => false,
        };
        let (live, size) = {
            let mut slots = self.slots.lock();
            for (index, new) in started {
                match slots.get_mut(index) {
                    Some(slot) if current(slot, &seen[index]) => {
                        if slot.started_before {
                            self.restarts.fetch_add(1, Ordering::Relaxed);
                        }
                        gone.push(slot.worker.replace(new));
                        slot.started_before = true;
                    }
                    _ => gone.push(Some(new)),
                }
            }
            for &index in &failed {
                if let Some(slot) = slots.get_mut(index) {
                    if slot.worker.is_some() && current(slot, &seen[index]) {
                        gone.push(slot.worker.take());
                    }
                }
            }
            let live: Vec<Arc<W>> = slots.iter().filter_map(|s| s.worker.clone()).collect();
            (live, slots.len())
        };
        // What was read may hold the last reference to a worker replaced meanwhile.
        gone.extend(seen);
        let Some(first) = errors.first().cloned() else {
            return Ok(live);
        };
        crate::contain::logged!(
            warn,
            "cylinder: {} of {size} workers could not start: {first}",
            size - live.len(),
        );
        crate::contain::dispose_each(errors);
        if live.is_empty() {
            // The start's own error (or panic) is the cause, once.
            return Err(Box::new(first));
        }
        crate::contain::dispose(first);
        Ok(live)
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
