//! A pool as a balancer's worker: `Balancer<Pool<W>>` balances across pools (one per
//! database server), each with its own fuse. What the balancer asks of a pool is here, so
//! that the pool's own files need not know of it.

use std::time::Duration;

use super::{OwnedLease, Pool};
use crate::error::{Cause, Error};
use crate::sync::Ordering;
use crate::worker::Worker;

/// A pool is alive while it is open and its fuse is not blown: it has a worker open
/// (free or leased), or no start has failed since the last one that succeeded (so a start
/// may still succeed). A pool whose server is down (nothing open, the last start failed) is
/// dead until its reaper's next attempt, every `reconnect_delay`, opens a worker; it
/// [comes back](Worker::comes_back) by itself, so a balancer keeps it in its set and puts it
/// back in rotation as soon as that attempt succeeds. Its `queue_len` is the number of
/// clients blocked in its checkout.
///
/// ```
/// use cylinder::{BoxError, Pool, Worker};
///
/// let pool = Pool::builder().size(1).build(|| Ok(())).unwrap();
/// assert!(pool.is_alive());
/// assert_eq!(pool.queue_len(), Some(0));
/// pool.close();
/// assert!(!pool.is_alive());
///
/// // A pool whose server is down: nothing open, and the last start failed.
/// let down = Pool::<()>::builder()
///     .size(1)
///     .build_unchecked(|| Err::<(), BoxError>("connection refused".into()))
///     .unwrap();
/// let _ = down.try_checkout(); // waits for the first start, which fails
/// assert!(!down.is_alive());
/// assert!(down.comes_back());
/// ```
impl<W: Send + 'static> Worker for Pool<W> {
    fn is_alive(&self) -> bool {
        let shared = &*self.handle.shared;
        !shared.closed.load(Ordering::Acquire)
            && (shared.counts.open() > 0 || !shared.failing.load(Ordering::Acquire))
    }

    fn queue_len(&self) -> Option<usize> {
        Some(self.handle.shared.waiters.len())
    }

    fn comes_back(&self) -> bool {
        true
    }
}

impl<W: Send + 'static> Pool<W> {
    /// The pool's name, as built.
    pub(crate) fn name(&self) -> &str {
        &self.handle.shared.name
    }

    /// Whether `other` is a handle of this same pool.
    pub(crate) fn same_pool(&self, other: &Pool<W>) -> bool {
        std::sync::Arc::ptr_eq(&self.handle, &other.handle)
    }

    /// [`try_checkout`](Pool::try_checkout) into an [`OwnedLease`].
    #[track_caller]
    pub(crate) fn try_checkout_owned(&self) -> Result<OwnedLease<W>, Error> {
        let entry = self.handle.shared.try_acquire()?;
        self.handle
            .shared
            .watch_lease(&entry, std::panic::Location::caller());
        Ok(self.owned(entry))
    }

    /// The pool's own `checkout_timeout`.
    pub(crate) fn default_checkout_timeout(&self) -> Duration {
        self.handle.shared.checkout_timeout
    }

    /// Why the pool cannot serve now, if it cannot: closed, or the last failed start's cause.
    pub(crate) fn down_cause(&self) -> Cause {
        let shared = &*self.handle.shared;
        if shared.closed.load(Ordering::Acquire) {
            return Cause::message("the pool is closed");
        }
        shared
            .last_failure()
            .unwrap_or_else(|| Cause::message("no worker is running"))
    }
}
