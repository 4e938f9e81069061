//! The lease guards: a worker held by one client, given back when the guard drops.

use std::ops::{Deref, DerefMut};

use std::sync::Arc;

use super::{Entry, Key, Return, Shared};

/// What a lease holds its pool by: a borrow (no reference count touched per checkout), or
/// one of the pool's per-stripe keys (an owned lease that may outlive the borrow: one
/// reference count written per lease, on the calling thread's own cache line).
enum PoolRef<'a, W: Send + 'static> {
    Borrowed(&'a Shared<W>),
    Owned(Arc<Key<W>>),
}

impl<W: Send + 'static> PoolRef<'_, W> {
    #[inline]
    fn shared(&self) -> &Shared<W> {
        match self {
            PoolRef::Borrowed(shared) => shared,
            PoolRef::Owned(key) => key.shared(),
        }
    }
}

/// A leased worker, borrowed from its [`Pool`](crate::Pool) (see [`Pool::checkout`](crate::Pool::checkout)). Derefs to the worker,
/// mutably too; gives it back when dropped, also while its thread's panic unwinds.
///
/// Operations on the lease itself are associated functions, so they never shadow the
/// worker's own methods: [`Lease::discard`] and [`Lease::take`].
///
/// ```
/// use cylinder::Pool;
///
/// let pool = Pool::builder().size(1).build(|| Ok(Vec::<u32>::new())).unwrap();
/// let mut lease = pool.try_checkout().unwrap();
/// lease.push(1); // DerefMut: the worker itself
/// assert!(pool.try_checkout().is_err()); // the only worker is leased
/// drop(lease);
/// assert_eq!(*pool.try_checkout().unwrap(), vec![1]);
/// ```
pub struct Lease<'a, W: Send + 'static> {
    pool: PoolRef<'a, W>,
    entry: Option<Box<Entry<W>>>,
    /// Whether this thread was already unwinding when the lease began (taken in a `Drop`
    /// during a panic): that panic is not this lease's client's.
    in_panic: bool,
}

/// A leased worker that owns a handle to its pool: `'static` and `Send`, so it can be
/// returned from a function, stored in a request, or moved into `std::thread::spawn` (see
/// [`Pool::checkout_owned`](crate::Pool::checkout_owned)). Otherwise the same as [`Lease`].
///
/// ```
/// use cylinder::{OwnedLease, Pool};
///
/// let pool = Pool::builder().size(2).build(|| Ok(0u64)).unwrap();
/// let mut lease: OwnedLease<u64> = pool.checkout_owned().unwrap();
/// let worker = std::thread::spawn(move || {
///     *lease += 1;
///     *lease
/// });
/// assert_eq!(worker.join().unwrap(), 1);
/// assert_eq!(pool.stats().free, 2); // given back when the thread dropped it
/// ```
pub struct OwnedLease<W: Send + 'static>(Lease<'static, W>);

impl<'a, W: Send + 'static> Lease<'a, W> {
    #[inline]
    pub(crate) fn borrowed(shared: &'a Shared<W>, entry: Box<Entry<W>>) -> Self {
        Lease {
            pool: PoolRef::Borrowed(shared),
            entry: Some(entry),
            in_panic: std::thread::panicking(),
        }
    }

    /// Gives the worker up as broken: it is dropped and the pool starts another in its place
    /// (a lazy pool only up to `min_idle`, or for a client waiting).
    ///
    /// ```
    /// use std::time::Duration;
    /// use cylinder::{Lease, Pool};
    ///
    /// let pool = Pool::builder().size(1).build(|| Ok(())).unwrap();
    /// Lease::discard(pool.checkout().unwrap());
    /// // The pool starts a fresh worker in its place.
    /// let fresh = pool.checkout_timeout(Duration::from_secs(5)).unwrap();
    /// drop(fresh);
    /// assert_eq!(pool.stats().restarts, 1);
    /// ```
    pub fn discard(mut lease: Self) {
        if let Some(entry) = lease.entry.take() {
            lease.pool.shared().end_lease(entry, Return::Discard);
        }
    }

    /// Detaches the worker from the pool and hands it over (deadpool's `Object::take`): the
    /// pool forgets it and starts another in its place.
    ///
    /// # Panics
    /// Never: a lease holds its worker until it ends.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cylinder::{Lease, Pool};
    ///
    /// let pool = Pool::builder().size(1).build(|| Ok(String::from("conn"))).unwrap();
    /// let conn: String = Lease::take(pool.checkout().unwrap());
    /// assert_eq!(conn, "conn");
    /// let replacement = pool.checkout_timeout(Duration::from_secs(5)).unwrap();
    /// assert_eq!(*replacement, "conn");
    /// ```
    #[must_use]
    pub fn take(mut lease: Self) -> W {
        let entry = lease
            .entry
            .take()
            .expect("a lease holds its worker until it ends");
        lease.pool.shared().detach(*entry)
    }

    #[inline]
    fn entry(&self) -> &Entry<W> {
        self.entry
            .as_ref()
            .expect("a lease holds its worker until it ends")
    }
}

impl<W: Send + 'static> OwnedLease<W> {
    /// Its worker's id in its pool.
    pub(super) fn worker_id(&self) -> u64 {
        self.0.entry().id
    }

    #[inline]
    pub(crate) fn new(key: Arc<Key<W>>, entry: Box<Entry<W>>) -> Self {
        OwnedLease(Lease {
            pool: PoolRef::Owned(key),
            entry: Some(entry),
            in_panic: std::thread::panicking(),
        })
    }

    /// Gives the worker up as broken, as [`Lease::discard`] does.
    ///
    /// ```
    /// use cylinder::{OwnedLease, Pool};
    ///
    /// let pool = Pool::builder().size(1).build(|| Ok(())).unwrap();
    /// OwnedLease::discard(pool.checkout_owned().unwrap());
    /// assert_eq!(pool.stats().discards, 1);
    /// ```
    pub fn discard(lease: Self) {
        Lease::discard(lease.0);
    }

    /// Detaches the worker from the pool, as [`Lease::take`] does.
    ///
    /// ```
    /// use cylinder::{OwnedLease, Pool};
    ///
    /// let pool = Pool::builder().size(1).build(|| Ok(5u8)).unwrap();
    /// assert_eq!(OwnedLease::take(pool.checkout_owned().unwrap()), 5);
    /// ```
    #[must_use]
    pub fn take(lease: Self) -> W {
        Lease::take(lease.0)
    }
}

impl<W: Send + 'static> Deref for Lease<'_, W> {
    type Target = W;

    #[inline]
    fn deref(&self) -> &W {
        &self.entry().worker
    }
}

impl<W: Send + 'static> DerefMut for Lease<'_, W> {
    #[inline]
    fn deref_mut(&mut self) -> &mut W {
        &mut self
            .entry
            .as_mut()
            .expect("a lease holds its worker until it ends")
            .worker
    }
}

impl<W: Send + 'static> Drop for Lease<'_, W> {
    #[inline]
    fn drop(&mut self) {
        if let Some(entry) = self.entry.take() {
            // Only a panic that began while the lease was held is its client's.
            let how = if std::thread::panicking() && !self.in_panic {
                Return::Panicking
            } else {
                Return::Release
            };
            self.pool.shared().end_lease(entry, how);
        }
    }
}

impl<W: Send + 'static> Deref for OwnedLease<W> {
    type Target = W;

    #[inline]
    fn deref(&self) -> &W {
        &self.0
    }
}

impl<W: Send + 'static> DerefMut for OwnedLease<W> {
    #[inline]
    fn deref_mut(&mut self) -> &mut W {
        &mut self.0
    }
}

impl<W: Send + 'static> std::fmt::Debug for Lease<'_, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("pool", &self.pool.shared().name)
            .field("worker", &self.entry.as_ref().map(|entry| entry.id))
            .finish()
    }
}

impl<W: Send + 'static> std::fmt::Debug for OwnedLease<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("OwnedLease").field(&self.0).finish()
    }
}
