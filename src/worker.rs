/// A shared child that a [`Balancer`](crate::Balancer) hands out (a [`Pool`](crate::Pool)
/// needs no trait: it owns its workers and checks them with its hooks; a pool of workers that
/// implement this trait looks at their liveness with `.is_alive(T::is_alive)` on its builder).
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

    /// Whether a worker found dead may come back to life by itself, as a
    /// [`Pool`](crate::Pool) does when its server returns. The balancer then keeps it in its
    /// set while it is dead, skips it, and asks its `is_alive` again on each pass, so it
    /// rejoins rotation as soon as it is alive, with no reload; it is not retired, and its
    /// death asks for no reload. The default, `false`, is revolver's: a dead worker stays
    /// dead and the supervisor lists a replacement.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use std::sync::Arc;
    /// use cylinder::{Balancer, BoxError, Worker};
    ///
    /// struct Server { up: AtomicBool }
    /// impl Worker for Server {
    ///     fn is_alive(&self) -> bool {
    ///         self.up.load(Ordering::Acquire)
    ///     }
    ///     fn comes_back(&self) -> bool {
    ///         true
    ///     }
    /// }
    ///
    /// let server = Arc::new(Server { up: AtomicBool::new(true) });
    /// let listed = vec![server.clone()];
    /// let balancer = Balancer::builder()
    ///     .build_with(move || -> Result<_, BoxError> { Ok(listed.clone()) })
    ///     .unwrap();
    /// server.up.store(false, Ordering::Release);
    /// assert!(balancer.get().is_err());
    /// server.up.store(true, Ordering::Release);
    /// assert!(balancer.get().is_ok()); // back, without a reload
    /// assert_eq!(balancer.reloads(), 1);
    /// ```
    fn comes_back(&self) -> bool {
        false
    }
}
