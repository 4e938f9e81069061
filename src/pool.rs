//! The leased pool: exclusive checkout of workers, gruff's semantics.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{OnClientPanic, PoolBuilder};
use crate::error::Error;
use crate::reaper::Reaper;
use crate::roster::Roster;
use crate::stripe::StripedCounter;
use crate::supervisor::Supervisor;
use crate::sync::{deadline_after, fence, AtomicBool, AtomicU64, FreeQueue, Mutex, Ordering};
use crate::waitlist::{WaitError, WaitList};
use crate::worker::Worker;

/// A fixed-size pool that leases each worker to one holder at a time.
///
/// A lease is a [`Lease`] guard: it derefs to the worker and gives it back when dropped, also
/// while its thread's panic unwinds. A worker found dead, or [discarded](Lease::discard), is
/// replaced through the supervisor by the pool's reaper thread, which brings the pool back to
/// full size. Dropping or [closing](Pool::close) the pool wakes every waiter with
/// [`Error::Closed`] and joins the reaper.
///
/// ```
/// use cylinder::{Actor, Behaviour, Pool};
///
/// struct Add;
/// impl Behaviour for Add {
///     type Request = (i64, i64);
///     type Reply = i64;
///     fn handle_call(&mut self, (a, b): (i64, i64)) -> i64 {
///         a + b
///     }
/// }
///
/// let pool = Pool::builder().size(8).build(|| Ok(Actor::spawn(Add)?)).unwrap();
/// let sum = pool.transaction(|worker| worker.call((1, 2))).unwrap();
/// assert_eq!(sum.unwrap(), 3);
///
/// let lease = pool.checkout().unwrap();
/// assert_eq!(lease.call((2, 2)).unwrap(), 4);
/// assert_eq!(pool.stats().leased, 1);
/// drop(lease);
/// assert_eq!(pool.stats().free, 8);
/// ```
pub struct Pool<W: Worker> {
    shared: Arc<Shared<W>>,
    reaper: Mutex<Reaper>,
}

struct Shared<W: Worker> {
    free: FreeQueue<Arc<W>>,
    waiters: WaitList<Arc<W>>,
    roster: Roster<W>,
    closed: AtomicBool,
    checkout_timeout: Duration,
    on_client_panic: OnClientPanic,
    checkouts: StripedCounter,
    releases: StripedCounter,
    discards: StripedCounter,
    timeouts: AtomicU64,
}

/// A view of a pool's state, from [`Pool::stats`]. The counts are exact when the pool is
/// quiet; under load each is a recent value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct PoolStats {
    /// Workers the pool has: its supervisor's live children.
    pub size: usize,
    /// Workers waiting in the pool to be leased.
    pub free: usize,
    /// Workers leased now.
    pub leased: usize,
    /// Clients blocked in a checkout.
    pub waiters: usize,
    /// Workers started in place of a dead or discarded one.
    pub restarts: u64,
    /// Blocking checkouts that gave up.
    pub timeouts: u64,
    /// Leases handed out since the start.
    pub checkouts: u64,
    /// Leases given back to the pool.
    pub releases: u64,
    /// Leases that ended with the worker retired (discarded, found dead, or its client
    /// panicked under [`OnClientPanic::Discard`]).
    pub discards: u64,
}

impl<W: Worker> Pool<W> {
    /// The options, with their defaults.
    pub fn builder() -> PoolBuilder<W> {
        PoolBuilder::default()
    }

    pub(crate) fn start(
        options: PoolBuilder<W>,
        supervisor: Box<dyn Supervisor<W>>,
    ) -> Result<Self, Error> {
        let roster = Roster::new(
            options.name.clone(),
            supervisor,
            1.0,
            options.size,
            options.reconnect_delay,
        );
        let first = roster.reload()?;
        // Room for the expected size, and for a supervisor that grows its set later.
        let capacity = options.size.unwrap_or(0).max(first.total * 4);
        let shared = Arc::new(Shared {
            free: FreeQueue::new(capacity),
            waiters: WaitList::new(),
            roster,
            closed: AtomicBool::new(false),
            checkout_timeout: options.checkout_timeout,
            on_client_panic: options.on_client_panic,
            checkouts: StripedCounter::new(),
            releases: StripedCounter::new(),
            discards: StripedCounter::new(),
            timeouts: AtomicU64::new(0),
        });
        for worker in first.added {
            shared.give_back(worker);
        }
        let upkeep = shared.clone();
        let reaper = Reaper::spawn(
            &options.name,
            shared.roster.signal.clone(),
            Box::new(move || upkeep.reaper_round()),
        )
        .map_err(|err| Error::supervisor(Box::new(err)))?;
        Ok(Pool {
            shared,
            reaper: Mutex::new(reaper),
        })
    }

    /// Leases a worker, waiting up to the pool's `checkout_timeout` for one to come free.
    pub fn checkout(&self) -> Result<Lease<'_, W>, Error> {
        self.checkout_timeout(self.shared.checkout_timeout)
    }

    /// Leases a worker, waiting up to `timeout` (`Duration::MAX`: no limit). Waiters are
    /// served in arrival order; one that gives up takes nothing with it.
    pub fn checkout_timeout(&self, timeout: Duration) -> Result<Lease<'_, W>, Error> {
        let shared = &*self.shared;
        shared.check_open()?;
        // With a line formed, newcomers queue behind it instead of jumping ahead.
        if !shared.waiters.has_waiters() {
            if let Some(worker) = shared.pop_live() {
                return Ok(self.lease(worker));
            }
        }
        if !shared.roster.snapshot().is_connected() {
            return Err(Error::Disconnected);
        }
        let waited = shared.waiters.wait(
            || shared.pop_live(),
            deadline_after(timeout),
            |worker| shared.push_free(worker),
        );
        match waited {
            Ok(worker) => Ok(self.lease(worker)),
            Err(WaitError::Closed) => Err(Error::Closed),
            Err(WaitError::Timeout) => {
                shared.timeouts.fetch_add(1, Ordering::Relaxed);
                Err(Error::Timeout(timeout))
            }
        }
    }

    /// Leases a worker if one is free now; never blocks. [`Error::Overload`] when all are
    /// leased, [`Error::Disconnected`] when the supervisor has none.
    pub fn try_checkout(&self) -> Result<Lease<'_, W>, Error> {
        let shared = &*self.shared;
        shared.check_open()?;
        if let Some(worker) = shared.pop_live() {
            return Ok(self.lease(worker));
        }
        if shared.roster.snapshot().is_connected() {
            Err(Error::Overload)
        } else {
            Err(Error::Disconnected)
        }
    }

    /// Runs `f` with a leased worker (waiting as [`checkout`](Self::checkout) does) and gives
    /// the worker back afterwards, also if `f` panics.
    pub fn transaction<R>(&self, f: impl FnOnce(&W) -> R) -> Result<R, Error> {
        let lease = self.checkout()?;
        Ok(f(&lease))
    }

    /// Closes the pool: checkouts fail with [`Error::Closed`], every waiter wakes with it, and
    /// the reaper is stopped and joined. Leases still out may be dropped as usual. Idempotent.
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.waiters.close();
        self.reaper.lock().stop();
        while self.shared.free.pop().is_some() {}
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// The pool's counts now.
    pub fn stats(&self) -> PoolStats {
        let shared = &*self.shared;
        let checkouts = shared.checkouts.sum();
        let releases = shared.releases.sum();
        let discards = shared.discards.sum();
        PoolStats {
            size: shared.roster.snapshot().members.len(),
            free: shared.free.len(),
            leased: checkouts.saturating_sub(releases + discards) as usize,
            waiters: shared.waiters.len(),
            restarts: shared.roster.restarts(),
            timeouts: shared.timeouts.load(Ordering::Relaxed),
            checkouts,
            releases,
            discards,
        }
    }

    /// Runs one reaper round on the calling thread (loom models have no reaper thread).
    #[cfg(loom)]
    #[doc(hidden)]
    pub fn run_reaper_round(&self) {
        if self.shared.roster.signal.take_request() {
            self.shared.reaper_round();
        }
    }

    fn lease(&self, worker: Arc<W>) -> Lease<'_, W> {
        self.shared.checkouts.add();
        Lease {
            shared: &self.shared,
            worker: Some(worker),
        }
    }
}

impl<W: Worker> Shared<W> {
    fn check_open(&self) -> Result<(), Error> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// A live worker from the free queue; dead ones met on the way are retired.
    fn pop_live(&self) -> Option<Arc<W>> {
        loop {
            let worker = self.free.pop()?;
            if worker.is_alive() {
                return Some(worker);
            }
            self.roster.retire(worker);
        }
    }

    fn push_free(&self, worker: Arc<W>) {
        if let Err(worker) = self.free.push(worker) {
            log::error!(
                "cylinder: {}: more workers than the pool has room for; retiring one",
                self.roster.name()
            );
            self.roster.retire(worker);
        }
    }

    /// Returns a worker to service: to the longest waiter if there is one, else to the free
    /// queue. Touches the waiters' lock only when someone waits.
    fn give_back(&self, worker: Arc<W>) {
        if self.waiters.has_waiters() {
            self.waiters.offer(worker, |worker| self.push_free(worker));
            return;
        }
        self.push_free(worker);
        // Pairs with the waiter's registration: if a waiter came in after our check, it either
        // finds the worker itself or we see it here and hand the worker over.
        fence(Ordering::SeqCst);
        if self.waiters.has_waiters() {
            if let Some(worker) = self.free.pop() {
                self.waiters.offer(worker, |worker| self.push_free(worker));
            }
        }
    }

    fn release(&self, worker: Arc<W>, discard: bool) {
        if discard || !worker.is_alive() {
            self.discards.add();
            self.roster.retire(worker);
        } else {
            self.releases.add();
            self.give_back(worker);
        }
    }

    /// The reaper's work: tell the supervisor what was retired, take in what it lists.
    fn reaper_round(&self) -> Option<Duration> {
        if self.closed.load(Ordering::Acquire) {
            return None;
        }
        let reload = self.roster.reload();
        if let Ok(found) = &reload {
            if found.removed > 0 {
                self.drop_non_members();
            }
            for worker in &found.added {
                self.give_back(worker.clone());
            }
        }
        self.roster.retry_after(&reload)
    }

    /// Takes workers that left the set (dead, or no longer listed) out of the free queue.
    fn drop_non_members(&self) {
        let snapshot = self.roster.snapshot();
        let mut keep = Vec::new();
        for _ in 0..self.free.len() {
            match self.free.pop() {
                Some(worker) if snapshot.contains(&worker) => keep.push(worker),
                Some(_) => {}
                None => break,
            }
        }
        for worker in keep {
            self.give_back(worker);
        }
    }
}

impl<W: Worker> Drop for Pool<W> {
    fn drop(&mut self) {
        self.close();
    }
}

impl<W: Worker> std::fmt::Debug for Pool<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.shared.roster.name())
            .field("stats", &self.stats())
            .finish()
    }
}

/// A leased worker. Derefs to the worker; gives it back to the pool when dropped.
///
/// ```
/// use cylinder::{Pool, Worker};
///
/// struct Conn;
/// impl Worker for Conn {}
///
/// let pool = Pool::builder().size(1).build(|| Ok(Conn)).unwrap();
/// let lease = pool.try_checkout().unwrap();
/// assert!(pool.try_checkout().is_err()); // the only worker is leased
/// drop(lease);
/// assert!(pool.try_checkout().is_ok());
/// ```
pub struct Lease<'a, W: Worker> {
    shared: &'a Shared<W>,
    worker: Option<Arc<W>>,
}

impl<W: Worker> Lease<'_, W> {
    /// Gives the worker up as broken: it is retired and the supervisor starts a replacement.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cylinder::{Pool, Worker};
    ///
    /// struct Conn;
    /// impl Worker for Conn {}
    ///
    /// let pool = Pool::builder().size(1).build(|| Ok(Conn)).unwrap();
    /// pool.checkout().unwrap().discard();
    /// // The reaper starts a fresh worker in its place.
    /// let fresh = pool.checkout_timeout(Duration::from_secs(5)).unwrap();
    /// drop(fresh);
    /// assert_eq!(pool.stats().restarts, 1);
    /// ```
    pub fn discard(mut self) {
        if let Some(worker) = self.worker.take() {
            self.shared.release(worker, true);
        }
    }

    /// The leased worker's shared handle, e.g. to compare identities.
    pub fn worker(&self) -> &Arc<W> {
        self.worker
            .as_ref()
            .expect("a lease holds its worker until dropped")
    }
}

impl<W: Worker> Deref for Lease<'_, W> {
    type Target = W;

    fn deref(&self) -> &W {
        self.worker()
    }
}

impl<W: Worker> Drop for Lease<'_, W> {
    fn drop(&mut self) {
        if let Some(worker) = self.worker.take() {
            let discard =
                std::thread::panicking() && self.shared.on_client_panic == OnClientPanic::Discard;
            self.shared.release(worker, discard);
        }
    }
}

impl<W: Worker> std::fmt::Debug for Lease<'_, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("pool", &self.shared.roster.name())
            .finish()
    }
}
