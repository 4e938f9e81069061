//! The leased pool: exclusive checkout of workers, gruff's semantics.

use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod builder;
mod overflow;
mod waitlist;
mod watch;

pub use builder::{OnClientPanic, PoolBuilder, MAX_POOL_SIZE};

use crate::balancer::roster::Roster;
use crate::balancer::supervisor::contained;
use crate::balancer::{Factory, Supervisor};
use crate::error::{Cause, Error};
use crate::event::{emit, Event};
use crate::reaper::Reaper;
use crate::stripe::{Stripe, StripedCounter, STRIPES};
use crate::sync::{
    deadline_after, seqcst_point, AtomicBool, AtomicU64, AtomicUsize, CachePadded, FreeQueue,
    Mutex, Ordering, SwapCell,
};
use crate::worker::Worker;
use builder::HealthCheck;
use overflow::Overflow;
use waitlist::{WaitError, WaitList};
use watch::{identity, LeaseWatch};

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
    /// One free worker per thread stripe, parked by the thread that released it for its own
    /// next checkout: that thread stays off the shared queue's cache lines and gets back a
    /// worker that is hot in its cache. Other threads steal from here when the queue is dry.
    parked: Box<[CachePadded<Parked<W>>]>,
    waiters: WaitList<Arc<W>>,
    roster: Roster<W>,
    closed: AtomicBool,
    checkout_timeout: Duration,
    on_client_panic: OnClientPanic,
    health_check: Option<HealthCheck<W>>,
    overflow: Option<Overflow<W>>,
    watch: Option<LeaseWatch>,
    /// The factory the pool was built from, if any: `resize` changes its size.
    factory: Option<Arc<Factory<W>>>,
    /// Leased workers the supervisor let go (a shrink): dropped, not kept, when they return.
    leaving: Mutex<Vec<Arc<W>>>,
    /// How many are in `leaving`; read without the lock so releases skip it while empty.
    leaving_count: AtomicUsize,
    capacity: usize,
    checkouts: StripedCounter,
    releases: StripedCounter,
    discards: StripedCounter,
    timeouts: AtomicU64,
}

struct Parked<W> {
    slot: SwapCell<Arc<W>>,
    /// Puts minus takes (wrapping: a thief's take may be counted before the owner's put).
    /// Readers skip a slot whose count is zero without touching the slot; the `SeqCst`
    /// increment after a put is also what orders the put before the releaser's look for
    /// waiters (see `Shared::give_back`).
    count: AtomicUsize,
}

impl<W> Parked<W> {
    #[inline]
    fn take(&self) -> Option<Arc<W>> {
        if self.count.load(Ordering::SeqCst) == 0 {
            return None;
        }
        let worker = self.slot.take()?;
        self.count.fetch_sub(1, Ordering::Relaxed);
        Some(worker)
    }

    /// Parks `worker`. Only the stripe's owner puts, and only into a slot whose count it saw
    /// at zero, which means empty; a worker found there all the same goes to `overflow`.
    #[inline]
    fn put(&self, worker: Arc<W>, overflow: impl FnOnce(Arc<W>)) {
        let displaced = self.slot.put(worker);
        self.count.fetch_add(1, Ordering::SeqCst);
        if let Some(displaced) = displaced {
            self.count.fetch_sub(1, Ordering::Relaxed);
            overflow(displaced);
        }
    }
}

/// A view of a pool's state, from [`Pool::stats`]. The counts are exact when the pool is
/// quiet; under load each is a recent value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct PoolStats {
    /// Workers the pool has: its supervisor's live children when last asked (kept while the
    /// supervisor is away).
    pub size: usize,
    /// Workers waiting in the pool to be leased.
    pub free: usize,
    /// Workers leased now.
    pub leased: usize,
    /// Clients blocked in a checkout.
    pub waiters: usize,
    /// Workers that joined after the pool started: replacements of dead or discarded ones,
    /// and growth by [`Pool::resize`].
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
    /// Temporary workers alive now, beyond `size` (see `max_overflow`).
    pub overflow: usize,
}

impl<W: Worker> Pool<W> {
    /// The options, with their defaults.
    pub fn builder() -> PoolBuilder<W> {
        PoolBuilder::default()
    }

    pub(crate) fn start(
        options: PoolBuilder<W>,
        supervisor: Box<dyn Supervisor<W>>,
        factory: Option<Arc<Factory<W>>>,
    ) -> Result<Self, Error> {
        let roster = Roster::new(
            options.name.clone(),
            supervisor,
            1.0,
            options.size,
            options.reconnect_delay,
            options.events.clone(),
        );
        let first = roster.reload()?;
        // Room for the expected size, and to grow (a resize, or a supervisor that lists more).
        let capacity = (options.size.unwrap_or(0).max(first.total) * 4).clamp(64, MAX_POOL_SIZE);
        let shared = Arc::new(Shared {
            free: FreeQueue::new(capacity),
            parked: (0..STRIPES)
                .map(|_| {
                    CachePadded::new(Parked {
                        slot: SwapCell::new(),
                        count: AtomicUsize::new(0),
                    })
                })
                .collect(),
            waiters: WaitList::new(options.fifo_after),
            roster,
            closed: AtomicBool::new(false),
            checkout_timeout: options.checkout_timeout,
            on_client_panic: options.on_client_panic,
            health_check: options.health_check.clone(),
            overflow: factory
                .clone()
                .filter(|_| options.max_overflow > 0)
                .map(|factory| Overflow::new(options.max_overflow, factory)),
            watch: options.warn_after.map(LeaseWatch::new),
            factory,
            leaving: Mutex::new(Vec::new()),
            leaving_count: AtomicUsize::new(0),
            capacity,
            checkouts: StripedCounter::new(),
            releases: StripedCounter::new(),
            discards: StripedCounter::new(),
            timeouts: AtomicU64::new(0),
        });
        for worker in first.added {
            shared.push_free(worker);
        }
        let upkeep = shared.clone();
        let mut retry_at = None;
        let reaper = Reaper::spawn(
            &options.name,
            shared.roster.signal.clone(),
            options.warn_after.map(|limit| limit / 2),
            Box::new(move |asked| upkeep.reaper_round(asked, &mut retry_at)),
        )
        .map_err(|err| Error::Disconnected(Cause::new(err)))?;
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
    /// served in arrival order, and one that has waited the pool's `fifo_after` is handed the
    /// next released worker ahead of any thread that did not wait. A waiter that gives up
    /// takes nothing with it.
    pub fn checkout_timeout(&self, timeout: Duration) -> Result<Lease<'_, W>, Error> {
        let shared = &*self.shared;
        let stripe = Stripe::current();
        // Read the clock only if this checkout has to wait.
        let mut deadline = None;
        loop {
            shared.check_open()?;
            let worker = match shared.take_now(stripe) {
                Some(worker) => worker,
                None => {
                    let deadline = *deadline.get_or_insert_with(|| deadline_after(timeout));
                    shared.wait_for(stripe, deadline, timeout)?
                }
            };
            if shared.passes_check(&worker) {
                return Ok(self.lease(worker, stripe));
            }
        }
    }

    /// Leases a worker if one is free now; never blocks. [`Error::Overload`] when all are
    /// leased, [`Error::Disconnected`] when the supervisor has none.
    pub fn try_checkout(&self) -> Result<Lease<'_, W>, Error> {
        let shared = &*self.shared;
        shared.check_open()?;
        let stripe = Stripe::current();
        while let Some(worker) = shared.take_now(stripe) {
            if shared.passes_check(&worker) {
                return Ok(self.lease(worker, stripe));
            }
        }
        if shared.roster.snapshot().is_connected() {
            emit(&shared.roster.events, Event::Overload);
            Err(Error::Overload)
        } else {
            Err(Error::Disconnected(Cause::message("no live children")))
        }
    }

    /// Calls `f` on every worker that is not leased now, holding each exclusively meanwhile
    /// (pooler's message to all unallocated members), and collects the results. Leased
    /// workers are skipped; a checkout meanwhile waits or takes another worker.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use cylinder::{Pool, Worker};
    ///
    /// struct Conn(AtomicUsize);
    /// impl Worker for Conn {}
    ///
    /// let pool = Pool::builder().size(3).build(|| Ok(Conn(AtomicUsize::new(0)))).unwrap();
    /// let busy = pool.checkout().unwrap();
    /// let pinged = pool.map(|conn| conn.0.fetch_add(1, Ordering::Relaxed));
    /// assert_eq!(pinged.len(), 2); // the leased one is left alone
    /// drop(busy);
    /// assert_eq!(pool.stats().free, 3);
    /// ```
    pub fn map<R>(&self, mut f: impl FnMut(&W) -> R) -> Vec<R> {
        let shared = &*self.shared;
        let stripe = Stripe::current();
        // Gives the workers back even if `f` panics.
        struct Held<'a, W: Worker>(&'a Shared<W>, Vec<Arc<W>>, Stripe);
        impl<W: Worker> Drop for Held<'_, W> {
            fn drop(&mut self) {
                for worker in self.1.drain(..) {
                    self.0.give_back(worker, self.2);
                }
            }
        }
        let mut held = Held(shared, Vec::new(), stripe);
        for _ in 0..shared.roster.known_len() {
            match shared.pop_live(stripe) {
                Some(worker) => held.1.push(worker),
                None => break,
            }
        }
        held.1.iter().map(|worker| f(worker)).collect()
    }

    /// Changes the pool's size at run time (a pool built with
    /// [`build`](PoolBuilder::build)): growing starts the new workers at once; shrinking
    /// retires free workers at once and leased ones as their leases end, never revoking a
    /// lease. At most four times the size the pool was built with (and at least 64).
    ///
    /// ```
    /// use cylinder::{Pool, Worker};
    ///
    /// struct Conn;
    /// impl Worker for Conn {}
    ///
    /// let pool = Pool::builder().size(2).build(|| Ok(Conn)).unwrap();
    /// pool.resize(5).unwrap();
    /// assert_eq!(pool.stats().size, 5);
    /// let held = pool.checkout().unwrap();
    /// pool.resize(1).unwrap();
    /// assert_eq!(pool.stats().size, 1);
    /// assert_eq!(pool.stats().leased, 1); // the lease is never revoked
    /// drop(held);
    /// assert_eq!(pool.stats().free, 1); // one worker left, whichever it is
    /// assert!(pool.resize(0).is_err());
    /// ```
    pub fn resize(&self, size: usize) -> Result<(), Error> {
        let shared = &*self.shared;
        shared.check_open()?;
        let Some(factory) = &shared.factory else {
            return Err(Error::invalid(
                "resize",
                "needs a pool built from a start closure (PoolBuilder::build)",
            ));
        };
        if size == 0 || size > shared.capacity {
            return Err(Error::invalid(
                "resize",
                format!("must be within 1..={}, got {size}", shared.capacity),
            ));
        }
        factory.resize(size);
        shared.roster.expect(size);
        let reload = shared.refresh();
        if shared.roster.retry_after(&reload).is_some() {
            shared.roster.signal.request();
        }
        reload.map(|_| ())
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
        while self.shared.take_free(Stripe::current()).is_some() {}
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
            size: shared.roster.known_len(),
            free: shared.free_count(),
            leased: checkouts.saturating_sub(releases + discards) as usize,
            waiters: shared.waiters.len(),
            restarts: shared.roster.restarts(),
            overflow: shared.overflow.as_ref().map_or(0, Overflow::out),
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
            let _ = self.shared.refresh();
        }
    }

    #[inline]
    fn lease(&self, worker: Arc<W>, stripe: Stripe) -> Lease<'_, W> {
        self.shared.checkouts.add(stripe);
        if let Some(watch) = &self.shared.watch {
            watch.begin(identity(&worker));
        }
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

    /// A worker now, without waiting: a free one, else a new overflow worker.
    #[inline]
    fn take_now(&self, stripe: Stripe) -> Option<Arc<W>> {
        self.pop_live(stripe).or_else(|| {
            self.overflow
                .as_ref()
                .and_then(|overflow| overflow.start(self.roster.name()))
        })
    }

    /// Waits in line for a worker until `deadline`.
    fn wait_for(
        &self,
        stripe: Stripe,
        deadline: Option<Instant>,
        timeout: Duration,
    ) -> Result<Arc<W>, Error> {
        if !self.roster.snapshot().is_connected() {
            return Err(Error::Disconnected(Cause::message("no live children")));
        }
        let waited = self.waiters.wait(
            || self.pop_live(stripe),
            deadline,
            |worker| self.push_free(worker),
        );
        match waited {
            Ok(worker) => Ok(worker),
            Err(WaitError::Closed) => Err(Error::Closed),
            Err(WaitError::Timeout) => {
                self.timeouts.fetch_add(1, Ordering::Relaxed);
                emit(&self.roster.events, Event::CheckoutTimedOut(timeout));
                Err(Error::Timeout(timeout))
            }
        }
    }

    /// Runs the checkout health check, if any; a worker that fails it is retired.
    #[inline]
    fn passes_check(&self, worker: &Arc<W>) -> bool {
        let Some(check) = &self.health_check else {
            return true;
        };
        if contained(|| Ok(check(worker))).unwrap_or(false) {
            return true;
        }
        log::warn!(
            "cylinder: {}: a worker failed its checkout check; replacing it",
            self.roster.name()
        );
        emit(&self.roster.events, Event::WorkerDiscarded);
        self.let_go(worker.clone());
        false
    }

    /// Takes a worker out of service: an overflow worker is dropped, a member retired.
    fn let_go(&self, worker: Arc<W>) {
        match &self.overflow {
            Some(overflow) if overflow.holds(&worker) => overflow.retire(&worker),
            _ => self.roster.retire(worker),
        }
    }

    /// A live worker: this thread's parked one, else the queue's, else one parked by another
    /// thread. Dead ones met on the way are retired.
    #[inline]
    fn pop_live(&self, stripe: Stripe) -> Option<Arc<W>> {
        loop {
            let worker = self.take_free(stripe)?;
            if worker.is_alive() {
                return Some(worker);
            }
            emit(&self.roster.events, Event::WorkerDied);
            self.roster.retire(worker);
        }
    }

    #[inline]
    fn take_free(&self, stripe: Stripe) -> Option<Arc<W>> {
        if let Some(own) = stripe.owned() {
            if let Some(worker) = self.parked[own].take() {
                return Some(worker);
            }
        }
        self.free
            .pop()
            .or_else(|| self.parked.iter().find_map(|parked| parked.take()))
    }

    /// How many workers are free: queued or parked.
    fn free_count(&self) -> usize {
        let parked = self.parked.iter().fold(0usize, |sum, parked| {
            sum.wrapping_add(parked.count.load(Ordering::Relaxed))
        });
        self.free.len().wrapping_add(parked)
    }

    /// Keeps a free worker: parked for this thread if its slot is empty, else queued. The
    /// `SeqCst` read-modify-writes here (the queue's push on its tail, or the parked count's
    /// increment) come before the caller's look for waiters.
    #[inline]
    fn keep_free(&self, worker: Arc<W>, stripe: Stripe) {
        if let Some(own) = stripe.owned() {
            let parked = &self.parked[own];
            if parked.count.load(Ordering::Relaxed) == 0 {
                return parked.put(worker, |worker| self.push_free(worker));
            }
        }
        self.push_free(worker);
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

    /// Returns a worker to service: to a waiter if there is one, else kept free. Touches the
    /// waiters' lock only when someone waits.
    #[inline]
    fn give_back(&self, worker: Arc<W>, stripe: Stripe) {
        if self.waiters.has_waiters() {
            self.waiters.offer(worker, |worker| self.push_free(worker));
            return;
        }
        self.keep_free(worker, stripe);
        // No fence needed before this re-check: `keep_free` ends in a `SeqCst`
        // read-modify-write (the parked count's increment, or `ArrayQueue::push` claiming its
        // tail), and a waiter registers with a `SeqCst` increment and fence before it looks
        // for a worker (the parked count with a `SeqCst` load; the queue's empty check after
        // the queue's own `SeqCst` fence). So either the waiter finds this worker, or this
        // re-check sees the waiter and hands a worker over. The loom stand-ins keep those
        // orderings (see loom-tests/README.md).
        seqcst_point();
        if self.waiters.has_waiters() {
            if let Some(worker) = self.take_free(stripe) {
                self.waiters.offer(worker, |worker| self.push_free(worker));
            }
        }
    }

    #[inline]
    fn release(&self, worker: Arc<W>, discard: bool) {
        let stripe = Stripe::current();
        if let Some(watch) = &self.watch {
            watch.end(identity(&worker));
        }
        if discard || !worker.is_alive() {
            self.discards.add(stripe);
            let event = if discard {
                Event::WorkerDiscarded
            } else {
                Event::WorkerDied
            };
            emit(&self.roster.events, event);
            if self.leaving_count.load(Ordering::Acquire) != 0 {
                self.departs(&worker);
            }
            return self.let_go(worker);
        }
        self.releases.add(stripe);
        if let Some(overflow) = &self.overflow {
            if overflow.holds(&worker) {
                // A temporary worker serves a waiter directly, or goes.
                if let Err(worker) = self.waiters.hand(worker) {
                    overflow.retire(&worker);
                }
                return;
            }
        }
        if self.leaving_count.load(Ordering::Acquire) != 0 && self.departs(&worker) {
            return;
        }
        self.give_back(worker, stripe);
        // A shrink may have marked this worker after the check above: sweep it out again.
        seqcst_point();
        if self.leaving_count.load(Ordering::SeqCst) != 0 {
            self.sweep(|worker| self.leaving.lock().iter().any(|w| Arc::ptr_eq(w, worker)));
        }
    }

    /// Whether `worker` is one the supervisor let go while it was leased; if so it is
    /// forgotten here, and its caller drops it.
    fn departs(&self, worker: &Arc<W>) -> bool {
        let mut leaving = self.leaving.lock();
        let Some(at) = leaving.iter().position(|w| Arc::ptr_eq(w, worker)) else {
            return false;
        };
        leaving.swap_remove(at);
        self.leaving_count.store(leaving.len(), Ordering::Release);
        true
    }

    /// Tells the supervisor what was retired and takes in what it lists now.
    fn refresh(&self) -> Result<crate::balancer::roster::Reload<W>, Error> {
        let reload = self.roster.reload();
        if let Ok(found) = &reload {
            if found.removed > 0 {
                // Mark the departures first, then sweep the free workers: a release racing
                // this either finds its worker marked, or put it back before the sweep (or
                // sees the mark after putting it back, and sweeps itself; see `release`).
                if !found.departed.is_empty() {
                    let mut leaving = self.leaving.lock();
                    leaving.extend(found.departed.iter().cloned());
                    self.leaving_count.store(leaving.len(), Ordering::SeqCst);
                }
                let snapshot = self.roster.snapshot();
                self.sweep(|worker| !snapshot.contains(worker));
            }
            let stripe = Stripe::current();
            for worker in &found.added {
                self.give_back(worker.clone(), stripe);
            }
        }
        reload
    }

    /// The reaper's work: a refresh when asked or due for a retry, and slow-lease reports.
    fn reaper_round(&self, asked: bool, retry_at: &mut Option<Instant>) -> Option<Duration> {
        if self.closed.load(Ordering::Acquire) {
            return None;
        }
        let now = Instant::now();
        if asked || retry_at.is_some_and(|at| at <= now) {
            let reload = self.refresh();
            *retry_at = self.roster.retry_after(&reload).map(|delay| now + delay);
        }
        let mut next = retry_at.map(|at| at.saturating_duration_since(Instant::now()));
        if let Some(watch) = &self.watch {
            watch.report(self.roster.name(), &self.roster.events);
            let tick = watch.limit / 2;
            next = Some(next.map_or(tick, |n| n.min(tick)));
        }
        next
    }

    /// Takes the free workers that `doomed` picks out of service (they left the set: dead,
    /// no longer listed, or let go by a shrink) and forgets them as departures.
    fn sweep(&self, doomed: impl Fn(&Arc<W>) -> bool) {
        let mut keep = Vec::new();
        let mut dropped = Vec::new();
        let stripe = Stripe::current();
        for _ in 0..self.free_count() {
            match self.take_free(stripe) {
                Some(worker) if doomed(&worker) => dropped.push(worker),
                Some(worker) => keep.push(worker),
                None => break,
            }
        }
        for worker in keep {
            self.give_back(worker, stripe);
        }
        if !dropped.is_empty() && self.leaving_count.load(Ordering::Acquire) != 0 {
            let mut leaving = self.leaving.lock();
            leaving.retain(|w| !dropped.iter().any(|d| Arc::ptr_eq(d, w)));
            self.leaving_count.store(leaving.len(), Ordering::SeqCst);
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
