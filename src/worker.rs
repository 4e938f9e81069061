/// A shared child that a [`Balancer`](crate::Balancer) hands out (a [`Pool`](crate::Pool)
/// needs no trait: it owns its workers and checks them with its hooks).
///
/// Both methods have defaults, so a plain struct is a worker with one line. A worker that can
/// fail (a thread that may panic, a connection that may drop) says so through `is_alive`, and
/// then leaves rotation until its supervisor lists a replacement.
///
/// ```
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use cylinder::Worker;
///
/// struct Connection { open: AtomicBool }
///
/// impl Worker for Connection {
///     fn is_alive(&self) -> bool {
///         self.open.load(Ordering::Acquire)
///     }
/// }
///
/// let conn = Connection { open: AtomicBool::new(true) };
/// assert!(conn.is_alive());
/// assert_eq!(conn.queue_len(), None);
/// ```
pub trait Worker: Send + Sync + 'static {
    /// Whether the worker can still serve. A dead worker is never handed out again.
    fn is_alive(&self) -> bool {
        true
    }

    /// How many requests wait in the worker's mailbox, if it has one; `None` when unknown.
    /// The balancer's `max_queue_len` skips a worker whose queue is longer.
    fn queue_len(&self) -> Option<usize> {
        None
    }
}

/// How a pool tells a dead worker of a type that implements [`Worker`] (an [`Actor`] whose
/// handler panicked) without the pool's worker type having to implement anything: the type
/// registers itself when its first value is made, and a pool of that type looks it up.
///
/// [`Actor`]: crate::Actor
pub(crate) mod liveness {
    use std::any::{Any, TypeId};
    use std::sync::Mutex;

    use super::Worker;

    /// Whether the worker behind `&dyn Any` can still serve.
    pub(crate) type IsAlive = fn(&dyn Any) -> bool;

    static KNOWN: Mutex<Vec<(TypeId, IsAlive)>> = Mutex::new(Vec::new());

    fn is_alive<T: Worker>(worker: &dyn Any) -> bool {
        worker.downcast_ref::<T>().map_or(true, T::is_alive)
    }

    /// Makes `T`'s [`Worker::is_alive`] known to pools of `T`.
    pub(crate) fn register<T: Worker>() {
        let mut known = KNOWN
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !known.iter().any(|(id, _)| *id == TypeId::of::<T>()) {
            known.push((TypeId::of::<T>(), is_alive::<T>));
        }
    }

    /// `T`'s liveness test, if `T` registered one.
    pub(crate) fn of<T: 'static>() -> Option<IsAlive> {
        let known = KNOWN
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        known
            .iter()
            .find(|(id, _)| *id == TypeId::of::<T>())
            .map(|(_, test)| *test)
    }
}
