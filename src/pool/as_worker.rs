//! A pool as a balancer's worker: `Balancer<Pool<W>>` balances across pools (one per
//! database server), each with its own fuse. What the balancer asks of a pool is here, so
//! that the pool's own files need not know of it.

use std::panic::Location;
use std::time::{Duration, Instant};

use super::held_here::HeldHere;
use super::waitlist::{Elsewhere, Nudge};
use super::{OwnedLease, Pool};
use crate::error::{Cause, Error};
use crate::stripe::Stripe;
use crate::sync::Ordering;
use crate::worker::Worker;

/// A pool is alive while it is open and its fuse is not blown: it has a worker open
/// (free or leased), or no start has failed since the last one that succeeded, or its
/// `reconnect_delay` since the last failure is over and no start is under way (so a start
/// may succeed now). A pool
/// whose server is down (nothing open, the last start failed) is dead while it waits out
/// that delay; it [comes back](Worker::comes_back) by itself, so a balancer keeps it in its
/// set and tries it again once the delay is over (a `Balancer<Pool<W>>::checkout` that finds
/// it with nothing free has a worker started for it in the background, also for a pool with
/// `min_idle(0)`). Its `queue_len` is the number of clients blocked in its checkout.
///
/// A closed pool never comes back: a balancer over a supervisor (`build_with`) retires it
/// and asks its supervisor again; one built with
/// [`build_pools`](crate::BalancerBuilder::build_pools) keeps it in its set, out of rotation.
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
            && (shared.counts.open() > 0
                || !shared.failing.load(Ordering::Acquire)
                // Worth one try once the delay is over, unless one is under way already:
                // clients are paced by the pool's attempts, never spin on a dead server.
                || (shared.backoff_left(Instant::now()).is_none()
                    && shared.counts.on_their_way() == 0))
    }

    fn queue_len(&self) -> Option<usize> {
        Some(self.handle.shared.waiters.len())
    }

    fn comes_back(&self) -> bool {
        !self.handle.shared.closed.load(Ordering::Acquire)
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

    /// A free worker now, into an [`OwnedLease`], for a balancer: never waits (not even for
    /// a start on its way) and never opens a worker on the caller's thread, so a pool whose
    /// start hangs cannot hold a balancer's checkout past its timeout. With nothing free it
    /// answers `Overload` (after asking for a start in the background if the pool has room)
    /// or, with the fuse blown, `Disconnected`. `site` is the client's call, for slow-lease
    /// reports (the balancer may call this from a closure, which `#[track_caller]` does not
    /// see through).
    pub(crate) fn checkout_free_owned(
        &self,
        site: &'static Location<'static>,
    ) -> Result<OwnedLease<W>, Error> {
        let shared = &*self.handle.shared;
        shared.check_open()?;
        let stripe = Stripe::current();
        while let Some(entry) = shared.free.take(stripe) {
            if let Some(entry) = shared.admit(entry, stripe) {
                shared.watch_lease(&entry, site);
                return Ok(self.owned(entry));
            }
        }
        shared.fuse()?;
        shared.start_in_background();
        Err(Error::Overload)
    }

    /// Counts `lease`'s worker as held by this thread until the guard drops: a balancer
    /// holds a lease it took here while another pool's code runs (its recorder, the `Drop`
    /// of a worker it closes), before the client has it; a `drain` of this pool called from
    /// that code does not wait for it.
    pub(crate) fn held_here(&self, lease: &OwnedLease<W>) -> HeldHere {
        HeldHere::worker(&*self.handle.shared, lease.worker_id())
    }

    /// A blocking checkout for a balancer that found every pool busy: it waits in this
    /// pool's line for at most `timeout`, and each time one of `others` keeps a worker free
    /// meanwhile, `look` is asked to take one there (it keeps what it takes and says whether
    /// it did). `Ok(None)`: `look` took one. Counted as a timeout here only if the time ran
    /// out. Workers above the size this pool kept for it while it looked elsewhere are
    /// closed once it is done, however it was served.
    #[track_caller]
    pub(crate) fn checkout_owned_or_elsewhere(
        &self,
        timeout: Duration,
        others: &[&Pool<W>],
        look: &mut dyn FnMut() -> bool,
    ) -> Result<Option<OwnedLease<W>>, Error> {
        let shared = &self.handle.shared;
        let nudge = Nudge::new();
        let _listening: Vec<_> = others
            .iter()
            .map(|other| other.handle.shared.listen(shared.clone(), nudge.clone()))
            .collect();
        // Nudged by one of `others`, then served before it looked: they nudge others.
        let pass_on = || {
            for other in others {
                other.handle.shared.nudge_listeners(false);
            }
        };
        let elsewhere = Elsewhere {
            nudge: &nudge,
            look,
            pass_on: &pass_on,
        };
        let acquired = shared.acquire_or_elsewhere(timeout, elsewhere);
        shared.shrink_unless_kept();
        let Some(entry) = acquired? else {
            return Ok(None);
        };
        shared.watch_lease(&entry, Location::caller());
        Ok(Some(self.owned(entry)))
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
