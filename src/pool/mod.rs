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
//! | — | claimed | `build`, `resize` (run by the caller, every claim tried; a resize that adds workers also during a backoff) | as above | `fill_now` |
//! | — | claimed | `try_checkout` found nothing free, the pool has room | as above, and `callers_starts` +1 until it is open | `start_for_caller` |
//! | — | claimed | a worker kept past its expiry is part of `min_idle`, nothing is coming, the pool has room | as the first row | `start_replacement_ahead` |
//! | claimed | — | `close`; a failed start drops the claims still waiting | `total` −1, `starting` −1 | `Counts::cancel_pending` |
//! | claimed | starting | a start thread takes it up (not once closed) | claim guarded | `run_starter`, `run_claim` |
//! | starting | idle or handed | the start returned a worker, alive, that passed its first check | `starting` −1 (`delivering` +1 until it is in) | `deliver` |
//! | starting | — | an error, a panic, `start_timeout`, dead on arrival, a failed first check | `total` −1, `starting` −1, backoff | `open_worker`, `first_look`, `start_failed` |
//! | idle | leased | a checkout; the check passes (or is skipped: used within `check_after_idle`) | `checkouts` +1 | `admit`, `check_due` |
//! | idle | closing | the check fails, it is dead (before its first lease: a failed start), evicted, or expired while a reaper round is under way (it may be held up in user code) or during its check (not one kept past its expiry: the last in service while a replacement is coming) | `total` −1 | `admit`, `expired_for_a_lease`, `expired_and_not_kept`, `retire` |
//! | leased | idle or handed | the lease ends; `is_broken` false, `reset` ok, alive, not evicted, not expired (or expired, the last in service, a replacement coming: kept past its expiry) | `releases` +1 | `end_lease`, `unfit`, `expired_and_not_kept`, `put_back` |
//! | leased | closing | discarded, broken, reset failed, dead, evicted, expired, client panic (`Discard`) | `discards` +1, `total` −1 | `end_lease`, `retire` |
//! | leased | — | [`Lease::take`] | `takes` +1, `total` −1 | `detach` |
//! | idle | closing | idle past `idle_timeout` above `min_idle`; above the size (shrink, overflow), unless kept for a balancer's waiter (away from this line, or listening from another's) until there is none | `total` −1 | `close_above`, `shrink_unless_kept` |
//! | idle | looked over | the reaper's sweep (at its period, or at a worker's expiry), `evict_all`, `map` | `held_free` +1 (`HeldFree`) | `sweep` |
//! | looked over | idle | alive, not expired, passed its `keepalive` check if one was due | `held_free` −1 | `sweep`, `keep_alive`, `put_back` |
//! | looked over | closing | past its `max_lifetime` (less its jitter; the youngest of those expiring at once is kept past its expiry while no other is in service, until their replacements are in), evicted, dead, failed its `keepalive` check, expired during it | `held_free` −1, `total` −1 | `sweep`, `look_at_each`, `retire` |
//! | idle | closing | the pool closed (`close`, `drain`) | `total` −1 | `drain` |
//! | closing | — | its `Drop` runs (contained); no longer in service, counted until it ends | `dropping` +1, then `total` −1, `dropping` −1 | `close_worker` |
//!
//! A retired worker is replaced at once (`replace`), even while the pool waits out a failed
//! start, unless it was dead on arrival (never leased, within `reconnect_delay` of its start):
//! that counts as a failed start, so a server that accepts and then drops connections is
//! retried at the pace of `reconnect_delay`, not in a tight loop.

mod as_worker;
mod builder;
mod checkout;
mod free;
mod held_here;
mod lease;
mod listeners;
mod manager;
mod metrics;
mod release;
mod shared;
mod start;
mod upkeep;
mod waitlist;
mod watch;

pub(crate) use builder::MIN_RECONNECT_DELAY;
pub use builder::{OnClientPanic, PoolBuilder, MAX_POOL_SIZE};
pub use free::QueueMode;
pub use lease::{Lease, OwnedLease};
pub use manager::{CheckOutcome, Manager};

use std::panic::Location;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::contain::{self, LogsLater};
use crate::error::{Cause, Error};
use crate::reaper::Reaper;
use crate::stripe::Stripe;
use crate::sync::{deadline_after, seqcst_point, CachePadded, Mutex, Ordering};
use free::HeldFree;
use held_here::HeldHere;
use manager::Uses;
use metrics::Clock;
use shared::Shared;

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
    /// One key per thread stripe for owned leases (see [`Key`]), shared by every handle.
    keys: Arc<[Arc<Key<W>>]>,
}

/// What an [`OwnedLease`] holds its pool by: one of the pool's keys, one per thread stripe,
/// each its own allocation (a cache line of its own), so that owned leases taken on
/// different threads write different reference counts, never one shared by all. A key holds
/// the pool's handle: the pool closes when the last handle and the last owned lease are gone.
pub(crate) struct Key<W: Send + 'static> {
    handle: CachePadded<Arc<Handle<W>>>,
}

impl<W: Send + 'static> Key<W> {
    #[inline]
    pub(crate) fn shared(&self) -> &Shared<W> {
        &self.handle.shared
    }
}

/// A key for each stripe (the shared stripe's last).
fn keys<W: Send + 'static>(handle: &Arc<Handle<W>>) -> Arc<[Arc<Key<W>>]> {
    (0..Stripe::COUNT)
        .map(|_| {
            Arc::new(Key {
                handle: CachePadded::new(handle.clone()),
            })
        })
        .collect()
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
    /// When `max_lifetime` closes it: `born + max_lifetime`, less a random amount of up to
    /// 2.5 % fixed at its start (HikariCP's variance), so workers started together do not
    /// all expire together.
    expires: Option<Instant>,
    /// When its last lease ended (kept only when the pool reads it: `idle_timeout`,
    /// `check_after_idle`, `keepalive`).
    idle_since: Option<Instant>,
    /// When it last passed a keepalive check.
    checked_at: Option<Instant>,
    /// Whether it was ever leased: a fresh worker that fails its check counts as a failed
    /// start (and waits `reconnect_delay`), so a check that always fails cannot make the
    /// pool start workers in a tight loop.
    leased_before: bool,
    /// Kept in service past its lifetime by a sweep, the youngest of those expiring at once
    /// (never all at once): it stays while the pool would otherwise be left with no worker
    /// and one is coming (see `Shared::kept_for_replacements`).
    kept_past_expiry: bool,
    /// The pool's `evict_all` count when it started: older ones are closed.
    generation: u64,
    /// When its lease began (for `cylinder_pool_lease_seconds`; nothing without `metrics`).
    lease_clock: Clock,
}

impl<W> Entry<W> {
    /// When it was last known to be good: started, returned from a lease, or checked.
    fn last_good(&self) -> Instant {
        let used = self.idle_since.unwrap_or(self.born);
        self.checked_at.map_or(used, |checked| checked.max(used))
    }

    /// Past its lifetime (with its jitter) at `now`.
    fn expired(&self, now: Instant) -> bool {
        self.expires.is_some_and(|at| now >= at)
    }

    /// Expired a whole lifetime ago or more (it sat unseen in the free list while the reaper
    /// was held up): too old to be kept past its expiry.
    fn long_expired(&self, now: Instant) -> bool {
        self.expires.is_some_and(|at| {
            now.saturating_duration_since(at) >= at.saturating_duration_since(self.born)
        })
    }
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
    Evicted,
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
        mut options: PoolBuilder<W>,
        manager: Box<dyn Manager<Worker = W>>,
        mut uses: Uses,
        checked: bool,
    ) -> Result<Self, Error> {
        let checked_options = options.validate().and_then(|sizes| {
            if options.keepalive.is_some() && !uses.check {
                return Err(Error::invalid(
                    "keepalive",
                    "needs a check to run: set test_on_checkout, or build_with a Manager",
                ));
            }
            Ok(sizes)
        });
        let (size, min_idle) = match checked_options {
            Ok(sizes) => sizes,
            Err(err) => {
                // The manager (or start closure and hooks) is user code to drop.
                contain::dispose(manager);
                return Err(err);
            }
        };
        uses.check &= options.check_on_checkout;
        let shared = Shared::new(&mut options, manager, uses, size, min_idle);
        let upkeep = shared.clone();
        let mut schedule = upkeep::Schedule::default();
        let reaper = Reaper::spawn(
            &options.name,
            shared.signal.clone(),
            None,
            Box::new(move |_asked| upkeep.upkeep(&mut schedule)),
        )
        .map_err(|err| Error::disconnected(Cause::new(err)))?;
        let handle = Arc::new(Handle {
            shared,
            reaper: Mutex::new(Some(reaper)),
        });
        let pool = Pool {
            keys: keys(&handle),
            handle,
        };
        let shared = &pool.handle.shared;
        if checked {
            shared.fill_now(0);
            if shared.counts.open() == 0 && min_idle > 0 {
                let cause = shared
                    .last_failure()
                    .unwrap_or_else(|| Cause::message("no worker started"));
                let down = shared.down(cause);
                pool.close();
                return Err(down);
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
    /// checkout per `reconnect_delay` instead of spinning. r2d2 and `HikariCP` block the same
    /// way (for their whole timeout); [`try_checkout`](Self::try_checkout) and the balancer's
    /// `get` stay fail-fast, as revolver's fuse is.
    ///
    /// # Errors
    /// [`Error::Timeout`] when none came free in time; [`Error::Disconnected`] (with the
    /// last start's error as its cause) when no worker is running and a start attempt failed
    /// after this checkout began (or nothing was running and starts were failing when it
    /// timed out);
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
    #[inline]
    #[track_caller]
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
    /// assert!(matches!(waited, Err(Error::Timeout { .. })));
    /// drop(held);
    /// ```
    // Always inlined: the fast path is small (the slow one is out of line), and a call
    // returning the large `Result` costs more than the checkout itself.
    #[inline(always)]
    #[track_caller]
    pub fn checkout_timeout(&self, timeout: Duration) -> Result<Lease<'_, W>, Error> {
        let shared = &*self.handle.shared;
        let entry = shared.acquire(timeout)?;
        shared.watch_lease(&entry, Location::caller());
        Ok(Lease::borrowed(shared, entry))
    }

    /// Leases a worker if one is free now; never waits for another client. When every
    /// worker is leased and the pool has room (`max_overflow`, or fewer open than `size`), it
    /// opens one on this thread, as poolboy's non-blocking checkout does: that takes as long as
    /// a start (bound it with `start_timeout`).
    ///
    /// Right after [`build_unchecked`](PoolBuilder::build_unchecked), while no worker is open
    /// yet and starts are on their way, it waits for the first (as long as a start takes,
    /// bounded by `start_timeout`, else `checkout_timeout`) rather than answer
    /// [`Error::Overload`] while no worker is busy; a start still on its way after that
    /// bound leaves it with `Overload` all the same (it never answers a blocking checkout's
    /// `Timeout`), and [`stats`](Self::stats) says `starting`.
    ///
    /// # Errors
    /// [`Error::Overload`] when no worker can be had now: every one is leased, or for a
    /// moment in the pool's own hands (a `keepalive` check, a close), or the first start is
    /// still on its way after the bound above; [`Error::Disconnected`] when none is running
    /// and the last start failed (at once, while the pool waits out `reconnect_delay`);
    /// [`Error::Closed`], also when the pool closed during the call.
    ///
    /// ```
    /// use cylinder::{Error, Pool};
    ///
    /// let pool = Pool::builder().size(1).build(|| Ok(())).unwrap();
    /// let held = pool.try_checkout().unwrap();
    /// assert!(matches!(pool.try_checkout(), Err(Error::Overload)));
    /// drop(held);
    /// ```
    #[inline]
    #[track_caller]
    pub fn try_checkout(&self) -> Result<Lease<'_, W>, Error> {
        let shared = &*self.handle.shared;
        let entry = shared.try_acquire()?;
        shared.watch_lease(&entry, Location::caller());
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
    #[inline]
    #[track_caller]
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
    #[inline]
    #[track_caller]
    pub fn checkout_owned_timeout(&self, timeout: Duration) -> Result<OwnedLease<W>, Error> {
        let entry = self.handle.shared.acquire(timeout)?;
        self.handle.shared.watch_lease(&entry, Location::caller());
        Ok(self.owned(entry))
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
    #[track_caller]
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
        // Gives the workers back even if `f` panics; counted as free meanwhile.
        struct Held<'a, W: Send + 'static> {
            shared: &'a Shared<W>,
            entries: Vec<Box<Entry<W>>>,
            count: HeldFree<'a>,
            stripe: Stripe,
            /// Each held by this thread until it is back or counted out: a `drain` from `f`,
            /// or from a `Drop` as they go, does not wait for them.
            here: HeldHere,
        }
        impl<W: Send + 'static> Drop for Held<'_, W> {
            fn drop(&mut self) {
                // Evicted meanwhile (`evict_all` while `f` ran): it goes now, once the rest
                // are back. Expired meanwhile (the sweep at its expiry found it held): each
                // is looked at as a lease's return would, one at a time once the rest are
                // back, so the last in service is kept while its replacement comes.
                let now = self.shared.reads_idle_clock.then(Instant::now);
                // Events and log lines once every worker is back or gone: a callback that
                // blocks must not hold back one still in this hand.
                let logs = LogsLater::begin();
                let mut reported = Vec::new();
                let mut evicted = Vec::new();
                let mut expiring = Vec::new();
                for mut entry in self.entries.drain(..) {
                    if self.shared.evicted(&entry) {
                        evicted.push((entry, Retire::Evicted));
                    } else if now.is_some_and(|now| entry.expires.is_some_and(|at| at <= now)) {
                        expiring.push(entry);
                    } else {
                        if let Some(now) = now {
                            // Not expired: the reaper is told when it is.
                            self.shared.expired_on_return(&mut entry, now);
                        }
                        // Back in service, no longer this thread's (a `Drop` that `put_back`'s
                        // shrink runs may drain).
                        self.here.release(entry.id);
                        self.count.leave_one();
                        self.shared.put_back(entry, self.stripe);
                    }
                }
                let gone: Vec<u64> = evicted.iter().map(|(entry, _)| entry.id).collect();
                reported = self
                    .shared
                    .retire_held(evicted, &mut self.count, reported, None);
                for id in gone {
                    self.here.release(id);
                }
                for mut entry in expiring {
                    let id = entry.id;
                    if self.shared.expired_on_return(&mut entry, Instant::now()) {
                        let expired = [(entry, Retire::Expired)];
                        reported =
                            self.shared
                                .retire_held(expired, &mut self.count, reported, None);
                        self.here.release(id);
                    } else {
                        self.count.leave_one();
                        self.here.release(id);
                        self.shared.put_back(entry, self.stripe);
                    }
                }
                drop(logs);
                for event in reported {
                    self.shared.emit(event);
                }
                self.shared.sample_if_closed();
            }
        }
        let mut held = Held {
            shared,
            entries: Vec::new(),
            count: HeldFree::new(&shared.held_free),
            stripe,
            here: HeldHere::workers(shared, []),
        };
        for _ in 0..shared.free.len() {
            held.count.take_one();
            let Some(entry) = shared.free.take(stripe) else {
                held.count.leave_one();
                break;
            };
            held.entries.push(entry);
        }
        held.here = HeldHere::workers(shared, held.entries.iter().map(|entry| entry.id));
        held.entries
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
        let ended_before = shared.starts_ended();
        let added = {
            let _one_at_a_time = shared.resizing.lock();
            shared.size.store(size, Ordering::SeqCst);
            let min_idle = shared
                .min_idle_option
                .map_or(size, |min_idle| min_idle.min(size));
            let before = shared.min_idle.swap(min_idle, Ordering::SeqCst);
            min_idle.saturating_sub(before.max(shared.counts.open())) as u64
        };
        // The new size stored, then the pool's count read (`shrink`, `fill_now`), against a
        // worker closed as above the old size, then the size read (`close_above`): one of
        // the two sees the other, so a worker closed meanwhile is started again.
        seqcst_point();
        shared.shrink();
        // The workers it adds are started now, also while the pool waits out a failed start
        // (the caller asked for them, and `resize` returns once they started); the others,
        // and a resize that adds none, leave the pace of retries alone.
        shared.fill_now(usize::try_from(added).unwrap_or(usize::MAX));
        // The reaper may have claimed some of the new workers' starts first (it reads the
        // new `min_idle` too): those are this resize's as well, and it returns once as many
        // starts as it added have ended, as long as a start may take. A shrink adds none:
        // it never waits for a start that is not its own.
        if !cfg!(loom) && added > 0 {
            let limit = shared.start_timeout.unwrap_or(shared.checkout_timeout);
            let deadline = deadline_after(limit);
            // A start this thread runs (`resize` from `on_start`) is not waited for.
            let held_here = HeldHere::on_their_way(shared);
            while shared.starts_ended().wrapping_sub(ended_before) < added
                && shared.counts.on_their_way() > held_here
                && !shared.closed.load(Ordering::Acquire)
                && deadline.map_or(true, |at| Instant::now() < at)
            {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Ok(())
    }

    /// Closes every worker the pool has now and starts fresh ones in their place (HikariCP's
    /// `softEvictConnections`), e.g. after a failover or a credential rotation: idle workers
    /// are closed at once, leased ones when their lease ends (never revoked). Replacements
    /// start as any replacement does, a few at a time (a lazy pool, `min_idle` below `size`,
    /// starts them up to `min_idle` and opens the rest on demand). Each is reported as
    /// [`Event::WorkerEvicted`](crate::Event::WorkerEvicted) (and counted with the reason `evicted`).
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// use std::sync::Arc;
    /// use cylinder::Pool;
    ///
    /// let generation = Arc::new(AtomicU32::new(1));
    /// let current = generation.clone();
    /// let pool = Pool::builder()
    ///     .size(2)
    ///     .build(move || Ok(current.load(Ordering::SeqCst)))
    ///     .unwrap();
    /// let held = pool.checkout().unwrap();
    /// generation.store(2, Ordering::SeqCst); // new credentials
    /// pool.evict_all();
    /// assert_eq!(*held, 1); // a lease is never revoked...
    /// drop(held); // ...its worker goes when it comes back
    /// for _ in 0..2 {
    ///     assert_eq!(*pool.checkout().unwrap(), 2);
    /// }
    /// ```
    pub fn evict_all(&self) {
        let shared = &*self.handle.shared;
        shared.generation.fetch_add(1, Ordering::SeqCst);
        // A worker kept after this sweep, by a caller that looked before the count moved,
        // asks the reaper to sweep again (`put_back`): the increment, then the sweep's look,
        // against the keep, then `put_back`'s look at the count.
        seqcst_point();
        shared.sweep(Instant::now());
    }

    /// Closes the pool and waits, up to `timeout`, for the leases still out to end: new
    /// checkouts fail with [`Error::Closed`] and the waiting ones wake with it at once, while
    /// running work finishes (a graceful shutdown: sqlx's `close().await`). Workers are
    /// dropped as they come back.
    ///
    /// Called from user code that holds workers of this pool (a check, a return's hooks,
    /// [`map`](Self::map)'s callback, a worker's `Drop`), it does not wait for those: they
    /// are closed once that code returns.
    ///
    /// # Errors
    /// [`Error::Timeout`] (with the pool's state) when leases were still out after
    /// `timeout`: the pool is closed all the same, and they are dropped as they end.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cylinder::{Error, Pool};
    ///
    /// let pool = Pool::builder().size(2).build(|| Ok(0u64)).unwrap();
    /// let mut lease = pool.checkout_owned().unwrap();
    /// let work = std::thread::spawn(move || {
    ///     std::thread::sleep(Duration::from_millis(20));
    ///     *lease += 1; // finishes, then gives the worker back
    /// });
    /// pool.drain(Duration::from_secs(5)).unwrap();
    /// assert!(matches!(pool.checkout(), Err(Error::Closed)));
    /// assert_eq!(pool.stats().size, 0);
    /// work.join().unwrap();
    /// ```
    pub fn drain(&self, timeout: Duration) -> Result<(), Error> {
        let began = Instant::now();
        self.close();
        let shared = &*self.handle.shared;
        let deadline = deadline_after(timeout);
        let mut pause = Duration::from_micros(50);
        // Called from user code that holds workers (or runs a start) of this pool: they are
        // closed once it returns, which cannot happen while this waits.
        let held_here = HeldHere::of(shared);
        // Every worker closed, its `Drop` ended (a graceful close of a connection), every
        // start ended.
        while shared.counts.open()
            + shared.counts.on_their_way()
            + shared.counts.timed_starts_running()
            + shared.closing.load(Ordering::SeqCst)
            > held_here
        {
            let now = Instant::now();
            if deadline.is_some_and(|at| now >= at) {
                shared.sample_if_closed();
                return Err(Error::Timeout {
                    waited: began.elapsed(),
                    state: Some(shared.state()),
                    cause: None,
                });
            }
            // Shutdown is no hot path: a short, growing pause between looks.
            let left = deadline.map_or(pause, |at| at - now);
            std::thread::sleep(pause.min(left));
            pause = (pause * 2).min(Duration::from_millis(5));
        }
        shared.sample_if_closed();
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
    #[must_use]
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
    #[must_use]
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

impl<W: Send + 'static> Pool<W> {
    /// An owned lease of `entry`, holding the pool by the calling thread's stripe's key.
    #[inline]
    pub(crate) fn owned(&self, entry: Box<Entry<W>>) -> OwnedLease<W> {
        let key = self.keys[Stripe::current().index()].clone();
        OwnedLease::new(key, entry)
    }
}

impl<W: Send + 'static> Clone for Pool<W> {
    fn clone(&self) -> Self {
        Pool {
            handle: self.handle.clone(),
            keys: self.keys.clone(),
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

/// Drops a worker; a panic in its `Drop` is contained and logged.
fn drop_worker<W>(pool: &str, entry: Box<Entry<W>>) {
    let id = entry.id;
    if contain::dispose(entry) {
        contain::logged!(error, "cylinder: {pool}: dropping worker {id} panicked");
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::{Lease, Pool};
    use crate::stripe::Stripe;

    /// The crate's own threads (reaper, start threads) run callbacks; none may take one of
    /// the client threads' stripes.
    #[test]
    fn the_reaper_and_start_threads_never_take_a_client_stripe() {
        let owned = Arc::new(AtomicUsize::new(0));
        let calls = Arc::new(AtomicUsize::new(0));
        let (o, c) = (owned.clone(), calls.clone());
        let pool = Pool::builder()
            .size(2)
            .warn_after(Duration::from_millis(10))
            .on_event(move |_| {
                let name = std::thread::current()
                    .name()
                    .unwrap_or_default()
                    .to_string();
                if name.starts_with("cylinder-") {
                    c.fetch_add(1, Ordering::SeqCst);
                    if Stripe::current().owned().is_some() {
                        o.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
            .build(|| Ok(()))
            .unwrap();
        let slow = pool.checkout().unwrap();
        Lease::discard(pool.checkout().unwrap());
        let until = Instant::now() + Duration::from_secs(10);
        while calls.load(Ordering::SeqCst) < 2 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(calls.load(Ordering::SeqCst) >= 2);
        drop(slow);
        assert_eq!(owned.load(Ordering::SeqCst), 0);
    }
}
