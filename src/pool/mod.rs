//! The pool: it owns a set of workers and leases each to one holder at a time (gruff's
//! semantics), and keeps its size by counting (poolboy's and r2d2's way): a worker that is
//! dropped, broken or detached is replaced from the start closure or [`Manager`].
//!
//! Where a worker is, at any moment: in the free list (`free`), handed to a waiter
//! (`waiters`), in exactly one lease, or in the hands of the pool's own code between those
//! (a check, a reset, a sweep). Nothing else refers to it.
//!
//! # A worker's life
//!
//! Every count a transition moves is held by a guard that gives it back on every exit,
//! unwinding included (`start::Claim` for a claimed start, `start::Held` for a start thread
//! or a timed start); every call into user code goes through `crate::contain`, never under
//! a pool lock.
//!
//! | from | to | trigger | counts moved | function |
//! |---|---|---|---|---|
//! | — | claimed | fewer than `min_idle` open, a waiter nothing is on its way for | `total` +1, `starting` +1 | `refill`, `start_for_line` |
//! | — | claimed | `build`, `resize` (run by the caller, every claim tried) | as above | `fill_now` |
//! | — | claimed | `try_checkout` found nothing free, the pool has room | as above | `start_for_caller` |
//! | claimed | — | `close`; a failed start drops the claims still waiting | `total` −1, `starting` −1 | `Counts::cancel_pending` |
//! | claimed | starting | a start thread takes it up (not once closed) | claim guarded | `run_starter`, `run_claim` |
//! | starting | idle or handed | the start returned a worker, alive, that passed its first check | `starting` −1 (`delivering` +1 until it is in) | `deliver` |
//! | starting | — | an error, a panic, `start_timeout`, dead on arrival, a failed first check | `total` −1, `starting` −1, backoff | `open_worker`, `first_look`, `start_failed` |
//! | idle | leased | a checkout; the check passes | `checkouts` +1 | `admit` |
//! | idle | closing | the check fails or it is dead (before its first lease: a failed start) | `total` −1 | `retire` |
//! | leased | idle or handed | the lease ends; `is_broken` false, `reset` ok, not expired | `releases` +1 | `end_lease`, `unfit`, `put_back` |
//! | leased | closing | discarded, broken, reset failed, dead, expired, client panic (`Discard`) | `discards` +1, `total` −1 | `end_lease`, `retire` |
//! | leased | — | [`Lease::take`] | `takes` +1, `total` −1 | `detach` |
//! | idle | closing | idle past `idle_timeout` above `min_idle`; above the size (shrink, overflow) | `total` −1 | `close_above` |
//! | idle | closing | past `max_lifetime`, or found dead by the reaper | `total` −1 | `sweep`, `retire` |
//! | idle | closing | the pool closed | `total` −1 | `drain` |
//! | closing | — | its `Drop` runs (contained) | — | `close_worker` |
//!
//! A retired worker is replaced at once (`replace`), even while the pool waits out a failed
//! start, unless it was dead on arrival (never leased, within `reconnect_delay` of its start):
//! that counts as a failed start, so a server that accepts and then drops connections is
//! retried at the pace of `reconnect_delay`, not in a tight loop.

mod builder;
mod free;
mod lease;
mod manager;
mod start;
mod upkeep;
mod waitlist;
mod watch;

pub use builder::{OnClientPanic, PoolBuilder, MAX_POOL_SIZE};
pub use free::QueueMode;
pub use lease::{Lease, OwnedLease};
pub use manager::{CheckOutcome, Manager};

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::contain;
use crate::error::{Cause, Error};
use crate::event::{emit, Event, EventHook};
use crate::reaper::{Reaper, Signal};
use crate::stripe::{Stripe, StripedCounter};
use crate::sync::{
    deadline_after, seqcst_point, AtomicBool, AtomicU64, AtomicUsize, Mutex, Ordering,
};
use free::FreeList;
use manager::Uses;
use start::Counts;
use waitlist::{WaitError, WaitList};
use watch::LeaseWatch;

/// A pool of workers — database connections, clients, worker threads — each leased to one
/// holder at a time.
///
/// `W` is any `Send + 'static` type: the pool owns each worker, and a lease gives `&mut W`.
/// A [`Lease`] borrows the pool (no reference count touched per checkout); an
/// [`OwnedLease`] holds a handle and may go anywhere. `Pool` is a cheap [`Clone`]able handle:
/// the pool closes on [`close`](Pool::close) or when the last handle and the last owned
/// lease are gone, and then every waiter wakes with [`Error::Closed`] and the reaper thread
/// is joined.
///
/// ```
/// use cylinder::{Lease, Pool};
///
/// // A pool of (pretend) connections: any type will do, no trait to implement.
/// struct Conn { queries: u32 }
///
/// let pool = Pool::builder().size(4).build(|| Ok(Conn { queries: 0 })).unwrap();
///
/// let mut conn = pool.checkout().unwrap();
/// conn.queries += 1; // `&mut` access through the lease
/// drop(conn); // back to the pool
///
/// let total = pool.transaction(|conn| { conn.queries += 1; conn.queries }).unwrap();
/// assert!(total >= 1);
///
/// // A clone of the handle moves into a thread; an owned lease can too.
/// let handle = pool.clone();
/// std::thread::spawn(move || handle.checkout().unwrap().queries += 1).join().unwrap();
///
/// let stats = pool.stats();
/// assert_eq!((stats.size, stats.free, stats.leased), (4, 4, 0));
/// ```
pub struct Pool<W: Send + 'static> {
    handle: Arc<Handle<W>>,
}

/// What the handles share: the pool's state, and its reaper thread. Dropping the last one
/// closes the pool.
struct Handle<W: Send + 'static> {
    shared: Arc<Shared<W>>,
    /// Taken by the first close, which stops and joins it outside the lock: an event
    /// callback on the reaper's thread may call `close` meanwhile.
    reaper: Mutex<Option<Reaper>>,
}

/// A worker and what the pool knows of it. Boxed once at start, so that moving it between
/// the free list, the line and a lease moves one pointer and allocates nothing.
pub(crate) struct Entry<W> {
    pub(crate) worker: W,
    /// A number for log lines and slow-lease reports.
    pub(crate) id: u64,
    born: Instant,
    /// When its last lease ended (kept only when the pool has an `idle_timeout`).
    idle_since: Option<Instant>,
    /// Whether it was ever leased: a fresh worker that fails its check counts as a failed
    /// start (and waits `reconnect_delay`), so a check that always fails cannot make the
    /// pool start workers in a tight loop.
    leased_before: bool,
}

/// How a lease ends.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Return {
    Release,
    Panicking,
    Discard,
}

/// Why a worker is taken out of service and replaced.
enum Retire {
    Discarded,
    Died,
    CheckFailed(Cause),
    Broken(Cause),
    Expired,
}

pub(crate) struct Shared<W: Send + 'static> {
    name: String,
    /// This pool, for the start threads it launches.
    me: Weak<Shared<W>>,
    manager: Box<dyn Manager<Worker = W>>,
    uses: Uses,
    free: FreeList<Box<Entry<W>>>,
    waiters: WaitList<Box<Entry<W>>>,
    closed: AtomicBool,
    counts: Counts,
    /// The most workers open, overflow aside (changed by `resize`).
    size: AtomicUsize,
    /// How many workers are kept open.
    min_idle: AtomicUsize,
    /// The `min_idle` option as built (`None`: it follows `size`): a resize clamps it to the
    /// new size without forgetting it.
    min_idle_option: Option<usize>,
    /// Makes each resize's `size` and `min_idle` one change: two resizes at once must not
    /// leave the size of one with the `min_idle` of the other. Held for two stores only.
    resizing: Mutex<()>,
    max_overflow: usize,
    capacity: usize,
    checkout_timeout: Duration,
    reconnect_delay: Duration,
    start_timeout: Option<Duration>,
    max_lifetime: Option<Duration>,
    idle_timeout: Option<Duration>,
    on_client_panic: OnClientPanic,
    events: Option<EventHook>,
    watch: Option<LeaseWatch>,
    /// Held while deciding how many starts to claim for the line and `min_idle`, so that two
    /// callers reading the same shortage do not both claim a start for it.
    deciding: Mutex<()>,
    /// `try_checkout`s in line for a start on its way: each start that ends wakes them to
    /// look whether anything is still on its way for them.
    waiting_for_a_start: AtomicUsize,
    /// The last start (or fresh worker's check) that failed, and when.
    failure: Mutex<Option<(Cause, Instant)>>,
    /// Whether starts are failing: set by a failure, cleared by a successful start.
    failing: AtomicBool,
    signal: Arc<Signal>,
    next_id: AtomicU64,
    /// Starts before this many are the first fill; later ones count as restarts.
    first_fill: usize,
    started: AtomicU64,
    checkouts: StripedCounter,
    releases: StripedCounter,
    discards: AtomicU64,
    takes: AtomicU64,
    failed_checks: AtomicU64,
    timeouts: AtomicU64,
}

/// A view of a pool's state, from [`Pool::stats`]. The counts are exact when the pool is
/// quiet (then `free + leased == size`); under load, or while a worker is being started,
/// each is a recent value.
///
/// ```
/// use cylinder::{Lease, Pool};
///
/// let pool = Pool::builder().size(2).build(|| Ok(())).unwrap();
/// let lease = pool.checkout().unwrap();
/// let stats = pool.stats();
/// assert_eq!((stats.size, stats.free, stats.leased), (2, 1, 1));
/// assert_eq!(stats.free + stats.leased, stats.size);
///
/// // Dropped, not given back: the pool starts a replacement in the background.
/// Lease::discard(lease);
/// let stats = pool.stats();
/// assert_eq!((stats.checkouts, stats.discards), (1, 1));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct PoolStats {
    /// Workers open now: free or leased (overflow included).
    pub size: usize,
    /// The most workers the pool opens, overflow aside (its `size` option).
    pub max_size: usize,
    /// Workers waiting in the pool to be leased.
    pub free: usize,
    /// Workers leased now.
    pub leased: usize,
    /// Clients blocked in a checkout.
    pub waiters: usize,
    /// Workers being started now.
    pub starting: usize,
    /// Workers started after the pool's first `min_idle`: replacements of dropped ones, and
    /// growth on demand.
    pub restarts: u64,
    /// Blocking checkouts that gave up.
    pub timeouts: u64,
    /// Leases handed out since the start.
    pub checkouts: u64,
    /// Leases that gave their worker back to the pool.
    pub releases: u64,
    /// Leases that ended with the worker dropped (discarded, found broken or dead, reset
    /// failed, past `max_lifetime`, or its client panicked under [`OnClientPanic::Discard`]).
    pub discards: u64,
    /// Leases whose worker was detached with [`Lease::take`].
    pub takes: u64,
    /// Workers dropped because they failed the check before a lease.
    pub failed_checks: u64,
    /// Temporary workers open now beyond `max_size` (see `max_overflow`).
    pub overflow: usize,
}

impl<W: Send + 'static> Pool<W> {
    /// The options, with their defaults.
    ///
    /// ```
    /// use cylinder::Pool;
    ///
    /// let pool = Pool::builder().size(2).build(|| Ok(())).unwrap();
    /// assert_eq!(pool.stats().size, 2);
    /// ```
    pub fn builder() -> PoolBuilder<W> {
        PoolBuilder::default()
    }

    pub(crate) fn start(
        options: PoolBuilder<W>,
        manager: Box<dyn Manager<Worker = W>>,
        mut uses: Uses,
        checked: bool,
    ) -> Result<Self, Error> {
        let (size, min_idle) = options.validate()?;
        uses.check &= options.check_on_checkout;
        // Room to grow: a resize up to four times the size (at least 64).
        let capacity = ((size + options.max_overflow) * 4).clamp(64, MAX_POOL_SIZE);
        let shared = Arc::new_cyclic(|me| Shared {
            name: options.name.clone(),
            me: me.clone(),
            manager,
            uses,
            free: FreeList::new(capacity, options.queue_mode),
            waiters: WaitList::new(options.fifo_after),
            closed: AtomicBool::new(false),
            counts: Counts::default(),
            size: AtomicUsize::new(size),
            min_idle: AtomicUsize::new(min_idle),
            min_idle_option: options.min_idle,
            resizing: Mutex::new(()),
            max_overflow: options.max_overflow,
            capacity,
            checkout_timeout: options.checkout_timeout,
            reconnect_delay: options.reconnect_delay,
            start_timeout: options.start_timeout,
            max_lifetime: options.max_lifetime,
            idle_timeout: options.idle_timeout,
            on_client_panic: options.on_client_panic,
            events: options.events.clone(),
            watch: options.warn_after.map(LeaseWatch::new),
            deciding: Mutex::new(()),
            waiting_for_a_start: AtomicUsize::new(0),
            failure: Mutex::new(None),
            failing: AtomicBool::new(false),
            signal: Arc::new(Signal::default()),
            next_id: AtomicU64::new(0),
            first_fill: min_idle,
            started: AtomicU64::new(0),
            checkouts: StripedCounter::new(),
            releases: StripedCounter::new(),
            discards: AtomicU64::new(0),
            takes: AtomicU64::new(0),
            failed_checks: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
        });
        let upkeep = shared.clone();
        let mut schedule = upkeep::Schedule::default();
        let reaper = Reaper::spawn(
            &options.name,
            shared.signal.clone(),
            None,
            Box::new(move |_asked| upkeep.upkeep(&mut schedule)),
        )
        .map_err(|err| Error::Disconnected(Cause::new(err)))?;
        let pool = Pool {
            handle: Arc::new(Handle {
                shared,
                reaper: Mutex::new(Some(reaper)),
            }),
        };
        let shared = &pool.handle.shared;
        if checked {
            shared.fill_now();
            if shared.counts.open() == 0 && min_idle > 0 {
                let cause = shared
                    .last_failure()
                    .unwrap_or_else(|| Cause::message("no worker started"));
                pool.close();
                return Err(Error::Disconnected(cause));
            }
        } else {
            shared.refill();
        }
        // The reaper's first round plans the sweeps and slow-lease reports.
        shared.signal.request();
        Ok(pool)
    }

    /// Leases a worker, waiting up to the pool's `checkout_timeout` for one to come free.
    ///
    /// The lease borrows the pool; to move it into a thread, use
    /// [`checkout_owned`](Self::checkout_owned) (a `Lease` moved into `thread::spawn` fails to
    /// compile with E0597).
    ///
    /// **While the server is down** (no worker open, the last start failed), a blocking
    /// checkout waits for the pool's next start attempt, up to its own timeout, and fails with
    /// that attempt's cause: a client that retries in a loop makes at most about one failed
    /// checkout per `reconnect_delay` instead of spinning. r2d2 and HikariCP block the same
    /// way (for their whole timeout); [`try_checkout`](Self::try_checkout) and the balancer's
    /// `get` stay fail-fast, as revolver's fuse is.
    ///
    /// # Errors
    /// [`Error::Timeout`] when none came free in time; [`Error::Disconnected`] (with the
    /// last start's error as its cause) when no worker is running and a start attempt failed
    /// after this checkout began (or starts were failing when it timed out);
    /// [`Error::Closed`].
    ///
    /// ```
    /// use cylinder::Pool;
    ///
    /// let pool = Pool::builder().size(1).build(|| Ok(vec![1, 2])).unwrap();
    /// let mut lease = pool.checkout().unwrap();
    /// lease.push(3);
    /// assert_eq!(*lease, [1, 2, 3]);
    /// ```
    pub fn checkout(&self) -> Result<Lease<'_, W>, Error> {
        self.checkout_timeout(self.handle.shared.checkout_timeout)
    }

    /// Leases a worker, waiting up to `timeout` (`Duration::MAX`: no limit). Waiters are
    /// served in arrival order, and one that has waited the pool's `fifo_after` is handed the
    /// next released worker ahead of any thread that did not wait. A waiter that gives up
    /// takes nothing with it.
    ///
    /// # Errors
    /// As [`checkout`](Self::checkout).
    ///
    /// ```
    /// use std::time::Duration;
    /// use cylinder::{Error, Pool};
    ///
    /// let pool = Pool::builder().size(1).build(|| Ok(())).unwrap();
    /// let held = pool.checkout().unwrap();
    /// let waited = pool.checkout_timeout(Duration::from_millis(10));
    /// assert!(matches!(waited, Err(Error::Timeout(_))));
    /// drop(held);
    /// ```
    #[inline]
    pub fn checkout_timeout(&self, timeout: Duration) -> Result<Lease<'_, W>, Error> {
        let shared = &*self.handle.shared;
        let entry = shared.acquire(timeout)?;
        Ok(Lease::borrowed(shared, entry))
    }

    /// Leases a worker if one is free now; never waits for another client. When every
    /// worker is leased and the pool has room (`max_overflow`, or fewer open than `size`), it
    /// opens one on this thread, as poolboy's non-blocking checkout does: that takes as long as
    /// a start (bound it with `start_timeout`).
    ///
    /// Right after [`build_unchecked`](PoolBuilder::build_unchecked), while no worker is open
    /// yet and starts are on their way, it waits for the first (as long as a start takes,
    /// bounded by `start_timeout`, else `checkout_timeout`): no worker is busy, so
    /// [`Error::Overload`] would be untrue.
    ///
    /// # Errors
    /// [`Error::Overload`] when every worker is leased; [`Error::Disconnected`] when none is
    /// running and the last start failed (at once, while the pool waits out
    /// `reconnect_delay`); [`Error::Closed`], also when the pool closed during the call.
    ///
    /// ```
    /// use cylinder::{Error, Pool};
    ///
    /// let pool = Pool::builder().size(1).build(|| Ok(())).unwrap();
    /// let held = pool.try_checkout().unwrap();
    /// assert!(matches!(pool.try_checkout(), Err(Error::Overload)));
    /// drop(held);
    /// ```
    pub fn try_checkout(&self) -> Result<Lease<'_, W>, Error> {
        let shared = &*self.handle.shared;
        let entry = shared.try_acquire()?;
        Ok(Lease::borrowed(shared, entry))
    }

    /// Leases a worker as [`checkout`](Self::checkout) does, into an [`OwnedLease`]: it holds
    /// a handle to the pool instead of borrowing it, so it is `'static` and `Send`.
    ///
    /// # Errors
    /// As [`checkout`](Self::checkout).
    ///
    /// ```
    /// use cylinder::Pool;
    ///
    /// let pool = Pool::builder().size(2).build(|| Ok(Vec::<u32>::new())).unwrap();
    /// let threads: Vec<_> = (0..2)
    ///     .map(|i| {
    ///         let mut lease = pool.checkout_owned().unwrap();
    ///         std::thread::spawn(move || lease.push(i))
    ///     })
    ///     .collect();
    /// threads.into_iter().for_each(|t| t.join().unwrap());
    /// assert_eq!(pool.stats().free, 2);
    /// ```
    pub fn checkout_owned(&self) -> Result<OwnedLease<W>, Error> {
        self.checkout_owned_timeout(self.handle.shared.checkout_timeout)
    }

    /// [`checkout_owned`](Self::checkout_owned), waiting up to `timeout`.
    ///
    /// # Errors
    /// As [`checkout`](Self::checkout).
    ///
    /// ```
    /// use std::time::Duration;
    /// use cylinder::Pool;
    ///
    /// let pool = Pool::builder().size(1).build(|| Ok(())).unwrap();
    /// let held = pool.checkout_owned_timeout(Duration::from_secs(1)).unwrap();
    /// assert!(pool.checkout_owned_timeout(Duration::from_millis(5)).is_err());
    /// drop(held);
    /// ```
    pub fn checkout_owned_timeout(&self, timeout: Duration) -> Result<OwnedLease<W>, Error> {
        let entry = self.handle.shared.acquire(timeout)?;
        Ok(OwnedLease::new(self.clone(), entry))
    }

    /// Runs `f` with a leased worker (waiting as [`checkout`](Self::checkout) does) and gives
    /// the worker back afterwards, also if `f` panics.
    ///
    /// # Errors
    /// As [`checkout`](Self::checkout); `f`'s own result is returned inside `Ok`.
    ///
    /// ```
    /// use cylinder::Pool;
    ///
    /// let pool = Pool::builder().size(2).build(|| Ok(0u64)).unwrap();
    /// let n = pool.transaction(|counter| { *counter += 1; *counter }).unwrap();
    /// assert_eq!(n, 1);
    /// ```
    pub fn transaction<R>(&self, f: impl FnOnce(&mut W) -> R) -> Result<R, Error> {
        let mut lease = self.checkout()?;
        Ok(f(&mut lease))
    }

    /// Calls `f` on every worker that is not leased now, holding each exclusively meanwhile
    /// (pooler's message to all unallocated members), and collects the results. Leased
    /// workers are skipped; a checkout meanwhile waits or takes another worker. The workers
    /// go back also if `f` panics.
    ///
    /// ```
    /// use cylinder::Pool;
    ///
    /// let pool = Pool::builder().size(3).build(|| Ok(0u32)).unwrap();
    /// let busy = pool.checkout().unwrap();
    /// let pinged = pool.map(|conn| { *conn += 1; *conn });
    /// assert_eq!(pinged, vec![1, 1]); // the leased one is left alone
    /// drop(busy);
    /// assert_eq!(pool.stats().free, 3);
    /// ```
    pub fn map<R>(&self, mut f: impl FnMut(&mut W) -> R) -> Vec<R> {
        let shared = &*self.handle.shared;
        let stripe = Stripe::current();
        // Gives the workers back even if `f` panics.
        struct Held<'a, W: Send + 'static>(&'a Shared<W>, Vec<Box<Entry<W>>>, Stripe);
        impl<W: Send + 'static> Drop for Held<'_, W> {
            fn drop(&mut self) {
                for entry in self.1.drain(..) {
                    self.0.put_back(entry, self.2);
                }
            }
        }
        let mut held = Held(shared, Vec::new(), stripe);
        for _ in 0..shared.free.len() {
            match shared.free.take(stripe) {
                Some(entry) => held.1.push(entry),
                None => break,
            }
        }
        held.1
            .iter_mut()
            .map(|entry| f(&mut entry.worker))
            .collect()
    }

    /// Changes the most workers the pool opens, at run time. Growing starts the new workers
    /// (if `min_idle` follows the size) and returns once they started; shrinking closes free
    /// workers at once and leased ones as their leases end, never revoking a lease. At most
    /// four times the size the pool was built with (and at least 64).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a size out of range; [`Error::Closed`].
    ///
    /// ```
    /// use cylinder::Pool;
    ///
    /// let pool = Pool::builder().size(2).build(|| Ok(())).unwrap();
    /// pool.resize(5).unwrap();
    /// assert_eq!(pool.stats().size, 5);
    /// let held = pool.checkout().unwrap();
    /// pool.resize(1).unwrap();
    /// assert_eq!(pool.stats().leased, 1); // the lease is never revoked
    /// drop(held);
    /// assert_eq!(pool.stats().size, 1);
    /// assert!(pool.resize(0).is_err());
    /// ```
    pub fn resize(&self, size: usize) -> Result<(), Error> {
        let shared = &*self.handle.shared;
        shared.check_open()?;
        builder::within("resize", size, 1, shared.capacity - shared.max_overflow)?;
        {
            let _one_at_a_time = shared.resizing.lock();
            shared.size.store(size, Ordering::SeqCst);
            let min_idle = shared
                .min_idle_option
                .map_or(size, |min_idle| min_idle.min(size));
            shared.min_idle.store(min_idle, Ordering::SeqCst);
        }
        // The new size stored, then the pool's count read (`shrink`, `fill_now`), against a
        // worker closed as above the old size, then the size read (`close_above`): one of
        // the two sees the other, so a worker closed meanwhile is started again.
        seqcst_point();
        shared.shrink();
        shared.fill_now();
        Ok(())
    }

    /// Closes the pool: checkouts fail with [`Error::Closed`], every waiter wakes with it,
    /// the free workers are dropped, and the reaper is stopped and joined. Leases still out
    /// may be dropped as usual (their workers are then dropped too). Idempotent.
    ///
    /// ```
    /// use cylinder::{Error, Pool};
    ///
    /// let pool = Pool::builder().size(1).build(|| Ok(())).unwrap();
    /// pool.close();
    /// assert!(pool.is_closed());
    /// assert!(matches!(pool.checkout(), Err(Error::Closed)));
    /// ```
    pub fn close(&self) {
        self.handle.close();
    }

    /// Whether the pool was closed.
    ///
    /// ```
    /// use cylinder::Pool;
    ///
    /// let pool = Pool::builder().size(1).build(|| Ok(())).unwrap();
    /// assert!(!pool.is_closed());
    /// ```
    pub fn is_closed(&self) -> bool {
        self.handle.shared.closed.load(Ordering::Acquire)
    }

    /// The pool's counts now. Never waits on a start, a check or any user callback.
    ///
    /// ```
    /// use cylinder::Pool;
    ///
    /// let pool = Pool::builder().size(2).build(|| Ok(())).unwrap();
    /// let held = pool.checkout().unwrap();
    /// let stats = pool.stats();
    /// assert_eq!((stats.size, stats.free, stats.leased), (2, 1, 1));
    /// drop(held);
    /// ```
    pub fn stats(&self) -> PoolStats {
        self.handle.shared.stats()
    }

    /// Runs one reaper round on the calling thread (loom models have no reaper thread).
    #[cfg(loom)]
    #[doc(hidden)]
    pub fn run_reaper_round(&self) {
        let mut schedule = upkeep::Schedule::default();
        self.handle.shared.upkeep(&mut schedule);
    }
}

impl<W: Send + 'static> Clone for Pool<W> {
    fn clone(&self) -> Self {
        Pool {
            handle: self.handle.clone(),
        }
    }
}

impl<W: Send + 'static> Handle<W> {
    fn close(&self) {
        self.shared.close();
        let reaper = self.reaper.lock().take();
        if let Some(mut reaper) = reaper {
            reaper.stop();
        }
    }
}

impl<W: Send + 'static> Drop for Handle<W> {
    fn drop(&mut self) {
        self.close();
    }
}

impl<W: Send + 'static> std::fmt::Debug for Pool<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.handle.shared.name)
            .field("stats", &self.stats())
            .finish()
    }
}

impl<W: Send + 'static> Shared<W> {
    fn check_open(&self) -> Result<(), Error> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// A worker for a blocking checkout: a free one, else one from the line, within
    /// `timeout`.
    #[inline]
    fn acquire(&self, timeout: Duration) -> Result<Box<Entry<W>>, Error> {
        let stripe = Stripe::current();
        // Read the clock only if this checkout has to wait.
        let mut deadline = None;
        // Backpressure: with the fuse blown, this checkout waits for the next start attempt
        // (not for one that failed before it came; a worker it meets dead on arrival counts)
        // and leaves with that attempt's cause, so a client retrying against a dead server is
        // slowed to the pace of `reconnect_delay`.
        let failed_before = self.counts.failed_starts.load(Ordering::SeqCst);
        loop {
            self.check_open()?;
            let entry = match self.free.take(stripe) {
                Some(entry) => entry,
                None => {
                    self.never_again()?;
                    let deadline = *deadline.get_or_insert_with(|| deadline_after(timeout));
                    self.wait_for(stripe, deadline, timeout, failed_before, false)?
                }
            };
            if let Some(entry) = self.admit(entry, stripe) {
                return Ok(entry);
            }
            // A worker failed its check: the next is tried only within the caller's time
            // (counted from the first failure, so a checkout that passes reads no clock).
            let at = *deadline.get_or_insert_with(|| deadline_after(timeout));
            if at.is_some_and(|at| Instant::now() >= at) {
                return Err(self.timed_out(timeout));
            }
        }
    }

    /// Nothing running, nothing starting, and the last start failed: nothing can come until
    /// the next try. A waiter in line gives up once a start that failed after it came has
    /// left the fuse blown; a non-blocking checkout fails at once while the pool waits out
    /// `reconnect_delay` (see `fuse`).
    pub(crate) fn fuse_blown(&self) -> bool {
        self.failing.load(Ordering::Acquire)
            && self.counts.open() == 0
            && self.counts.starting() == 0
    }

    /// A worker for a non-blocking checkout: it never waits for another client, but when the
    /// pool has room (overflow, or fewer open than `size`) it opens a worker on this thread,
    /// as poolboy's non-blocking checkout does.
    fn try_acquire(&self) -> Result<Box<Entry<W>>, Error> {
        self.check_open()?;
        let stripe = Stripe::current();
        while let Some(entry) = self.free.take(stripe) {
            if let Some(entry) = self.admit(entry, stripe) {
                return Ok(entry);
            }
        }
        let nothing_open = self.counts.in_service() == 0;
        // A worker that came in between the look and the counts is free now: look again.
        while let Some(entry) = self.free.take(stripe) {
            if let Some(entry) = self.admit(entry, stripe) {
                return Ok(entry);
            }
        }
        if nothing_open && self.failing.load(Ordering::Acquire) {
            // Nothing open and starts failing: down, not busy. At once while the pool waits
            // out `reconnect_delay` or a retry is on its way; once the wait is over, this call
            // tries a start itself (below), so a lazy pool comes back.
            self.fuse()?;
            if self.counts.on_their_way() > 0 {
                if let Some(cause) = self.last_failure() {
                    return Err(Error::Disconnected(cause));
                }
            }
        } else if nothing_open && self.counts.on_their_way() > 0 {
            // Nothing open yet and starts on their way, none failed (a lazy pool just built,
            // or replacements): no worker is busy, so this waits for the first to come, as a
            // start on this thread would, rather than open one more.
            return self.try_wait_for_a_start(stripe);
        }
        if let Some(entry) = self.start_for_caller() {
            if let Some(entry) = self.admit(entry, stripe) {
                return Ok(entry);
            }
        }
        // Closed meanwhile: say so, not "busy".
        self.check_open()?;
        self.fuse()?;
        emit(&self.events, Event::Overload);
        Err(Error::Overload)
    }

    /// `try_checkout` with nothing open and starts on their way: waits for the first, as
    /// long as a start may take.
    fn try_wait_for_a_start(&self, stripe: Stripe) -> Result<Box<Entry<W>>, Error> {
        let waited = self.start_timeout.unwrap_or(self.checkout_timeout);
        let failed_before = self.counts.failed_starts.load(Ordering::SeqCst);
        let entry = {
            let _counted = start::Held::take(&self.waiting_for_a_start, usize::MAX);
            self.wait_for(stripe, deadline_after(waited), waited, failed_before, true)?
        };
        if let Some(entry) = self.admit(entry, stripe) {
            return Ok(entry);
        }
        // Dead on arrival: a failed start, not a busy pool.
        match self.last_failure() {
            Some(cause) => Err(Error::Disconnected(cause)),
            None => Err(Error::Overload),
        }
    }

    /// revolver's fuse: with nothing running, nothing starting and the last start failed,
    /// fail at once with that start's error rather than wait for a worker that cannot come.
    /// Only while the pool waits out `reconnect_delay`: after it, a blocking checkout must get
    /// into line and claim the next start (with `min_idle(0)` nothing else would).
    fn fuse(&self) -> Result<(), Error> {
        if self.fuse_blown() && self.backoff_left(Instant::now()).is_some() {
            if let Some(cause) = self.last_failure() {
                return Err(Error::Disconnected(cause));
            }
        }
        Ok(())
    }

    /// With the fuse blown and no start attempt ever again (`reconnect_delay` of
    /// `Duration::MAX`), a blocking checkout has nothing to wait for: it fails at once.
    fn never_again(&self) -> Result<(), Error> {
        if self.fuse_blown() && self.backoff_left(Instant::now()) == Some(Duration::MAX) {
            if let Some(cause) = self.last_failure() {
                return Err(Error::Disconnected(cause));
            }
        }
        Ok(())
    }

    /// Waits in line for a worker until `deadline`.
    /// It gives up when the fuse is blown by a start that failed after `failed_before` (the
    /// count of failed starts when it came).
    ///
    /// A `try_checkout` (`for_a_start`) waits only for a start on its way: it claims none,
    /// leaves with `Overload` once nothing is on its way (another client got it) or its time
    /// is up, and is counted as no timeout.
    fn wait_for(
        &self,
        stripe: Stripe,
        deadline: Option<Instant>,
        timeout: Duration,
        failed_before: u64,
        for_a_start: bool,
    ) -> Result<Box<Entry<W>>, Error> {
        let waited = self.waiters.wait(
            || self.free.take(stripe),
            // Asked after each look that found nothing (and after the line stopped counting
            // this waiter as served while it looked).
            || {
                if for_a_start {
                    return self.counts.on_their_way() == 0 || self.fuse_blown();
                }
                // If the pool has room (a worker was closed since this checkout's claim
                // failed), the reaper starts one for the line.
                if self.has_room() {
                    self.signal.request();
                }
                self.fuse_blown()
                    && self.counts.failed_starts.load(Ordering::SeqCst) != failed_before
            },
            deadline,
            || self.free.queued(),
            || {
                if !for_a_start {
                    self.start_for_line();
                }
            },
            |entry| self.close_worker(entry),
        );
        match waited {
            Ok(entry) => Ok(entry),
            Err(WaitError::Closed) => Err(Error::Closed),
            Err(WaitError::GaveUp | WaitError::Timeout) if for_a_start => {
                match self.last_failure() {
                    Some(cause) if self.fuse_blown() => Err(Error::Disconnected(cause)),
                    _ => Err(Error::Overload),
                }
            }
            Err(WaitError::GaveUp) => Err(Error::Disconnected(
                self.last_failure()
                    .unwrap_or_else(|| Cause::message("no worker could start")),
            )),
            Err(WaitError::Timeout) => Err(self.timed_out(timeout)),
        }
    }

    /// A blocking checkout gave up after `timeout`: counted, reported, and answered with the
    /// failing starts' cause if starts are failing.
    fn timed_out(&self, timeout: Duration) -> Error {
        self.timeouts.fetch_add(1, Ordering::Relaxed);
        emit(&self.events, Event::CheckoutTimedOut(timeout));
        match self.last_failure() {
            Some(cause) if self.failing.load(Ordering::Acquire) => Error::Disconnected(cause),
            _ => Error::Timeout(timeout),
        }
    }

    /// Makes a worker ready for a lease: a dead one (for types that can tell) or one that
    /// fails the check is retired, and `None` says to look for another.
    #[inline]
    fn admit(&self, mut entry: Box<Entry<W>>, stripe: Stripe) -> Option<Box<Entry<W>>> {
        if self.is_dead(&entry) {
            self.retire(entry, Retire::Died);
            return None;
        }
        if self.uses.check {
            if let Err(cause) = contain::call(|| self.manager.check(&mut entry.worker)) {
                self.failed_checks.fetch_add(1, Ordering::Relaxed);
                self.retire(entry, Retire::CheckFailed(cause));
                return None;
            }
        }
        entry.leased_before = true;
        self.checkouts.add(stripe);
        if let Some(watch) = &self.watch {
            watch.begin(entry.id);
        }
        Some(entry)
    }

    #[inline]
    fn is_dead(&self, entry: &Entry<W>) -> bool {
        !self.worker_alive(&entry.worker)
    }

    /// The `is_alive` hook's answer (a panic in it counts as dead).
    #[inline]
    pub(crate) fn worker_alive(&self, worker: &W) -> bool {
        !self.uses.is_alive || contain::run(|| self.manager.is_alive(worker)).unwrap_or(false)
    }

    /// Drops a worker that was never counted in (a start given up or failed), contained.
    pub(crate) fn dispose(&self, worker: W) {
        if contain::dispose(worker) {
            log::error!("cylinder: {}: dropping a new worker panicked", self.name);
        }
    }

    /// Ends a lease: the worker goes back to service, or is retired and replaced.
    #[inline]
    pub(crate) fn end_lease(&self, mut entry: Box<Entry<W>>, how: Return) {
        if let Some(watch) = &self.watch {
            watch.end(entry.id);
        }
        let discard = match how {
            Return::Release => false,
            Return::Discard => true,
            Return::Panicking => self.on_client_panic == OnClientPanic::Discard,
        };
        let unfit = if discard {
            Some(Retire::Discarded)
        } else {
            self.unfit(&mut entry)
        };
        if let Some(why) = unfit {
            self.discards.fetch_add(1, Ordering::Relaxed);
            return self.retire(entry, why);
        }
        let stripe = Stripe::current();
        self.releases.add(stripe);
        self.put_back(entry, stripe);
    }

    /// Runs the return hooks on a worker coming back from a lease; `Some` says why it must
    /// go.
    #[inline]
    fn unfit(&self, entry: &mut Entry<W>) -> Option<Retire> {
        if self.uses.is_broken {
            match contain::run(|| self.manager.is_broken(&mut entry.worker)) {
                Ok(false) => {}
                Ok(true) => return Some(Retire::Broken(Cause::message("found broken on return"))),
                Err(cause) => return Some(Retire::Broken(cause)),
            }
        }
        if self.uses.reset {
            if let Err(cause) = contain::call(|| self.manager.reset(&mut entry.worker)) {
                return Some(Retire::Broken(cause));
            }
        }
        if self.is_dead(entry) {
            return Some(Retire::Died);
        }
        if self.max_lifetime.is_some() || self.idle_timeout.is_some() {
            let now = Instant::now();
            if self.expired(entry, now) {
                return Some(Retire::Expired);
            }
            entry.idle_since = Some(now);
        }
        None
    }

    fn expired(&self, entry: &Entry<W>, now: Instant) -> bool {
        self.max_lifetime
            .is_some_and(|lifetime| now.saturating_duration_since(entry.born) >= lifetime)
    }

    /// Returns a worker to service. While more workers are open than `size` (overflow, or a
    /// shrink), it goes to a waiter if one waits and is otherwise closed (poolboy's rule).
    #[inline]
    fn put_back(&self, entry: Box<Entry<W>>, stripe: Stripe) {
        let entry = if self.counts.total() > self.size.load(Ordering::Relaxed) {
            match self.waiters.hand(entry) {
                Ok(()) => return,
                Err(entry) => match self.close_above(entry, self.size.load(Ordering::Relaxed)) {
                    Some(entry) => entry,
                    None => return,
                },
            }
        } else {
            entry
        };
        self.give_back(entry, stripe);
        // A return racing `close` must not leave a worker in a closed pool.
        if self.closed.load(Ordering::Acquire) {
            self.drain();
        }
        // Nor one racing a shrink above the new size: the size was read before the worker
        // was kept, and the shrink may have looked for free workers in between. The keep's
        // `SeqCst` read-modify-write, then this look, against the resize's store, then its
        // look for free workers: one of the two sees the other.
        seqcst_point();
        if self.counts.total() > self.size.load(Ordering::SeqCst) {
            self.shrink();
        }
    }

    /// Gives a worker to a waiter if there is one, else keeps it free. Touches the waiters'
    /// lock only when someone waits.
    #[inline]
    fn give_back(&self, entry: Box<Entry<W>>, stripe: Stripe) {
        if self.waiters.has_waiters() {
            self.waiters
                .offer(entry, |entry| self.queue(entry), || self.free.queued());
            return;
        }
        if let Err(entry) = self.free.keep(entry, stripe) {
            return self.overfull(entry);
        }
        // No fence needed before this re-check: `keep` ends in a `SeqCst` read-modify-write
        // (the parked count's increment, or `ArrayQueue::push` claiming its tail), and a
        // waiter registers with a `SeqCst` increment and fence before it looks for a worker
        // (the parked count with a `SeqCst` load; the queue's empty check after the queue's
        // own `SeqCst` fence). So either the waiter finds this worker, or this re-check sees
        // the waiter and hands a worker over. The loom stand-ins keep those orderings (see
        // loom-tests/README.md).
        seqcst_point();
        if self.waiters.has_waiters() {
            if let Some(entry) = self.free.take(stripe) {
                self.waiters
                    .offer(entry, |entry| self.queue(entry), || self.free.queued());
            }
        }
    }

    fn queue(&self, entry: Box<Entry<W>>) {
        if let Err(entry) = self.free.push(entry) {
            self.overfull(entry);
        }
    }

    /// The free queue is sized for every worker the pool may open: this cannot happen, but
    /// if it did the worker is closed rather than lost silently.
    fn overfull(&self, entry: Box<Entry<W>>) {
        log::error!(
            "cylinder: {}: more free workers than the pool has room for; closing one",
            self.name
        );
        self.close_worker(entry);
    }

    /// Closes `entry` if more than `floor` workers are open; else hands it back.
    ///
    /// A checkout that found the pool at its limit may have registered in the line just after
    /// this worker's holder looked for waiters: now that the pool has room again, a start is
    /// claimed for it (the waiter, for its part, asks the reaper for one if it sees the room
    /// first; see `wait_for`).
    fn close_above(&self, entry: Box<Entry<W>>, floor: usize) -> Option<Box<Entry<W>>> {
        if self.counts.release_above(floor) {
            self.closed_above(entry);
            None
        } else {
            Some(entry)
        }
    }

    /// Closes a worker already counted out by `Counts::release_above`, and restarts one if a
    /// waiter or `min_idle` needs it.
    fn closed_above(&self, entry: Box<Entry<W>>) {
        {
            drop_worker(&self.name, entry);
            // The release's `SeqCst` read-modify-write, then the `SeqCst` look for waiters,
            // against a waiter's registration and fence, then its claim (`start_for_line`):
            // one of the two sees the other (`seqcst_point` gives loom that order).
            seqcst_point();
            // Below `min_idle` only if a resize up came in after the floor was read.
            if self.waiters.has_unserved()
                || self.counts.total() < self.min_idle.load(Ordering::SeqCst)
            {
                self.refill();
            }
        }
    }

    /// Takes a worker out of service and starts another in its place.
    ///
    /// A worker that dies or fails a check before its first lease, within `reconnect_delay`
    /// of its start, was dead on arrival: a failed start, with the backoff that follows. Any
    /// other is replaced at once, backoff or not: a worker that served and then failed says
    /// nothing about the next start.
    fn retire(&self, entry: Box<Entry<W>>, why: Retire) {
        let dead_on_arrival = !entry.leased_before && entry.born.elapsed() < self.reconnect_delay;
        let id = entry.id;
        let (event, cause) = match why {
            Retire::Discarded => (Event::WorkerDiscarded, None),
            Retire::Died => (Event::WorkerDied, None),
            Retire::CheckFailed(cause) => (Event::CheckFailed, Some(cause)),
            Retire::Broken(cause) => (Event::WorkerBroken, Some(cause)),
            Retire::Expired => (Event::WorkerExpired, None),
        };
        match &cause {
            Some(cause) => log::warn!(
                "cylinder: {}: worker {} dropped ({event:?}): {cause}",
                self.name,
                entry.id
            ),
            None => log::debug!(
                "cylinder: {}: worker {} dropped ({event:?})",
                self.name,
                entry.id
            ),
        }
        // Closed first (its `Drop` ends before a replacement may start, so no more than the
        // pool's limit are ever alive at once), then its replacement claimed, then the event:
        // a callback that blocks must not hold back the replacement.
        self.close_worker(entry);
        if dead_on_arrival && matches!(event, Event::CheckFailed | Event::WorkerDied) {
            let cause = cause.unwrap_or_else(|| {
                Cause::message(format!("worker {id} died before its first lease"))
            });
            self.note_failure(cause);
            self.refill();
        } else {
            if let Some(cause) = cause {
                self.keep_cause(cause);
            }
            self.replace();
        }
        emit(&self.events, event);
    }

    /// Detaches a leased worker: the pool forgets it and starts another.
    pub(crate) fn detach(&self, entry: Entry<W>) -> W {
        if let Some(watch) = &self.watch {
            watch.end(entry.id);
        }
        self.takes.fetch_add(1, Ordering::Relaxed);
        self.counts.release();
        emit(&self.events, Event::WorkerTaken);
        self.refill();
        entry.worker
    }

    /// Drops a worker the pool owns and forgets it.
    fn close_worker(&self, entry: Box<Entry<W>>) {
        self.counts.release();
        drop_worker(&self.name, entry);
    }

    /// Drops every free worker (after close).
    fn drain(&self) {
        let stripe = Stripe::current();
        while let Some(entry) = self.free.take(stripe) {
            self.close_worker(entry);
        }
    }

    /// Closes free workers while more than the pool's size are open (a shrink). The size is read
    /// afresh each time: a resize up that came in meanwhile stops the shrink.
    fn shrink(&self) {
        let stripe = Stripe::current();
        loop {
            let size = self.size.load(Ordering::SeqCst);
            if self.counts.total() <= size {
                break;
            }
            let Some(entry) = self.free.take(stripe) else {
                break;
            };
            if let Some(entry) = self.close_above(entry, size) {
                self.put_back(entry, stripe);
                break;
            }
        }
    }

    /// Closes: no start begins after this (the claims still waiting are given back; a start
    /// under way drops its worker when it ends), every waiter wakes with `Closed`, and the free
    /// workers are dropped.
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.counts.cancel_pending();
        self.waiters.close();
        self.drain();
    }

    fn stats(&self) -> PoolStats {
        let checkouts = self.checkouts.sum();
        let releases = self.releases.sum();
        let discards = self.discards.load(Ordering::Relaxed);
        let takes = self.takes.load(Ordering::Relaxed);
        let open = self.counts.open();
        let size = self.size.load(Ordering::Relaxed);
        let started = self.started.load(Ordering::Relaxed);
        PoolStats {
            size: open,
            max_size: size,
            free: self.free.len().min(open),
            leased: (checkouts.saturating_sub(releases + discards + takes) as usize).min(open),
            waiters: self.waiters.len(),
            starting: self.counts.starting(),
            restarts: started.saturating_sub(self.first_fill as u64),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            checkouts,
            releases,
            discards,
            takes,
            failed_checks: self.failed_checks.load(Ordering::Relaxed),
            overflow: open.saturating_sub(size),
        }
    }

    /// The last failure's cause, if any was kept.
    fn last_failure(&self) -> Option<Cause> {
        self.failure.lock().as_ref().map(|(cause, _)| cause.clone())
    }

    /// Keeps `cause` as the one to report, without marking the starts as failing: the time
    /// of the last failed start, which the backoff counts from, stays as it was.
    fn keep_cause(&self, cause: Cause) {
        self.record_cause(cause, false);
    }

    /// Keeps `cause` as the one to report; `failed_start` also makes now the time the
    /// backoff counts from.
    pub(crate) fn record_cause(&self, cause: Cause, failed_start: bool) {
        // The cause replaced is dropped after the lock is let go: a user error's Drop is user
        // code, and may call into the pool.
        let replaced = {
            let mut failure = self.failure.lock();
            let at = match failure.as_ref() {
                Some((_, at)) if !failed_start => *at,
                _ => Instant::now(),
            };
            failure.replace((cause, at))
        };
        contain::dispose(replaced);
    }
}

impl<W: Send + 'static> Drop for Shared<W> {
    fn drop(&mut self) {
        // What the pool keeps of the user's is user code to drop: the last start error, the
        // manager or start closure, the event callback (the last `Arc` to the pool may be
        // held by a start thread, which must not die of it, or by the caller's last handle).
        let failure = self.failure.lock().take();
        contain::dispose(failure);
        contain::dispose(std::mem::replace(
            &mut self.manager,
            Box::new(Gone(Default::default())),
        ));
        contain::dispose(self.events.take());
    }
}

/// The manager left in a pool being dropped, once the user's is gone.
struct Gone<W>(std::marker::PhantomData<fn() -> W>);

impl<W: Send + 'static> Manager for Gone<W> {
    type Worker = W;

    fn start(&self) -> Result<W, crate::error::BoxError> {
        Err("the pool is gone".into())
    }
}

/// Drops a worker; a panic in its `Drop` is contained and logged.
fn drop_worker<W>(pool: &str, entry: Box<Entry<W>>) {
    let id = entry.id;
    if contain::dispose(entry) {
        log::error!("cylinder: {pool}: dropping worker {id} panicked");
    }
}
