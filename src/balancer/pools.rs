//! A balancer of pools: one [`Pool`] per database server, balanced with the balancer's
//! strategies, each pool with its own fuse. The one place where the balancer meets the pool.

use std::fmt;
use std::panic::Location;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::set::Snapshot;
use super::{Balancer, BalancerBuilder};
use crate::contain;
use crate::error::{Cause, Error};
use crate::pool::{OwnedLease, Pool};
use crate::stripe::Stripe;
use crate::sync::deadline_after;
use crate::worker::Worker;

/// Every pool of a balancer of pools is down: why, pool by pool. It is the cause (the
/// [`source()`](std::error::Error::source)) of the [`Error::Disconnected`] that
/// [`Balancer::checkout`] returns then; [`PoolsDown::of`] finds it.
///
/// ```
/// use cylinder::{Balancer, BoxError, Error, Pool, PoolsDown};
///
/// let down = |server: &'static str| {
///     Pool::<()>::builder()
///         .name(server)
///         .size(1)
///         .build_unchecked(move || Err::<(), BoxError>(format!("{server}: connection refused").into()))
///         .unwrap()
/// };
/// let balancer = Balancer::over_pools([down("a"), down("b")]).unwrap();
/// let err = balancer.checkout().unwrap_err();
/// assert!(matches!(err, Error::Disconnected { .. }));
/// assert!(err.to_string().starts_with("disconnected"));
/// let every = PoolsDown::of(&err).unwrap();
/// assert_eq!(every.to_string(), "all 2 pools are down: 0 (a): a: connection refused; 1 (b): b: connection refused");
/// assert_eq!(every.causes().len(), 2);
/// assert_eq!(every.causes()[1].0, "b");
/// assert_eq!(every.causes()[1].1.to_string(), "b: connection refused");
/// ```
#[derive(Debug, Clone)]
pub struct PoolsDown {
    causes: Vec<(String, Cause)>,
}

impl PoolsDown {
    /// The `PoolsDown` that `err` carries, if it does: `err` is the
    /// [`Error::Disconnected`] of a [`Balancer::checkout`] that found every pool down.
    ///
    /// ```
    /// use cylinder::{Cause, Error, PoolsDown};
    ///
    /// assert!(PoolsDown::of(&Error::Disconnected { cause: Cause::message("no live children"), state: None }).is_none());
    /// assert!(PoolsDown::of(&Error::Overload).is_none());
    /// ```
    #[must_use]
    pub fn of(err: &Error) -> Option<&PoolsDown> {
        err.cause()?.get().downcast_ref::<PoolsDown>()
    }

    /// Each pool's name and why it cannot serve (its last failed start's error, or that it
    /// is closed), in the balancer's order: the order the pools were given in.
    ///
    /// ```
    /// use cylinder::{Balancer, BoxError, Pool, PoolsDown};
    ///
    /// let pool = Pool::<()>::builder()
    ///     .name("replica")
    ///     .size(1)
    ///     .build_unchecked(|| Err::<(), BoxError>("no route to host".into()))
    ///     .unwrap();
    /// let err = Balancer::over_pools([pool]).unwrap().checkout().unwrap_err();
    /// let down = PoolsDown::of(&err).unwrap();
    /// for (pool, cause) in down.causes() {
    ///     assert_eq!(format!("{pool}: {cause}"), "replica: no route to host");
    /// }
    /// ```
    #[must_use]
    pub fn causes(&self) -> &[(String, Cause)] {
        &self.causes
    }
}

impl fmt::Display for PoolsDown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "all {} pools are down", self.causes.len())?;
        for (i, (pool, cause)) in self.causes.iter().enumerate() {
            write!(
                f,
                "{} {i} ({pool}): {cause}",
                if i == 0 { ":" } else { ";" }
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for PoolsDown {}

impl<W: Send + 'static> BalancerBuilder<Pool<W>> {
    /// Balances over `pools`, one per server (a primary and its replicas, or equal
    /// servers), with this builder's strategy. The set is the pools given, in that order,
    /// for the balancer's life ([`Balancer::connect`] lists the same again); a pool that is
    /// closed stays in it, out of rotation, and once every one is closed checkouts answer
    /// [`Error::Closed`].
    ///
    /// Each pool keeps its own fuse: a pool whose server is down leaves rotation, its reaper
    /// retries every one of *its* `reconnect_delay`, and it is back in rotation as soon as an
    /// attempt opens a connection, with no reload (a pool [comes back](Worker::comes_back) by
    /// itself). The balancer's own `min_alive_ratio` and `reconnect_delay` play no part.
    ///
    /// # Errors
    ///
    /// - [`Error::InvalidConfig`] with `option: "pools"` when `pools` is empty or gives one
    ///   pool twice (two handles of one pool), and as
    ///   [`build_with`](BalancerBuilder::build_with) for the builder's options.
    /// - [`Error::Disconnected`] if the reaper thread cannot be started.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cylinder::{Balancer, Error, Pool, Strategy};
    ///
    /// let server = |n: u32| Pool::builder().name(format!("server-{n}")).size(2).build(move || Ok(n)).unwrap();
    /// let balancer = Balancer::builder()
    ///     .name("replicas")
    ///     .strategy(Strategy::LeastLoaded) // the pool with fewer clients waiting, of two
    ///     .build_pools([server(1), server(2), server(3)])
    ///     .unwrap();
    /// assert_eq!(balancer.len(), 3);
    ///
    /// let none = Balancer::<Pool<u32>>::builder().build_pools([]);
    /// assert!(matches!(none, Err(Error::InvalidConfig { option: "pools", .. })));
    /// let one = server(1);
    /// let twice = Balancer::builder().build_pools([one.clone(), one]);
    /// assert!(matches!(twice, Err(Error::InvalidConfig { option: "pools", .. })));
    /// ```
    pub fn build_pools(
        mut self,
        pools: impl IntoIterator<Item = Pool<W>>,
    ) -> Result<Balancer<Pool<W>>, Error> {
        let pools: Vec<Arc<Pool<W>>> = pools.into_iter().map(Arc::new).collect();
        if pools.is_empty() {
            return Err(Error::invalid("pools", "at least one pool is needed"));
        }
        for (i, pool) in pools.iter().enumerate() {
            if let Some(j) = pools[..i].iter().position(|p| p.same_pool(pool)) {
                return Err(Error::invalid(
                    "pools",
                    format!("pools {j} and {i} are the same pool"),
                ));
            }
        }
        // A pool closed for good stays in the set, out of rotation: the set is the pools
        // given, and `Closed` is the answer once every one is.
        self.fixed_set = true;
        self.build_with(move || -> Result<_, crate::error::BoxError> { Ok(pools.clone()) })
    }
}

impl<W: Send + 'static> Balancer<Pool<W>> {
    /// A round-robin balancer over `pools`, with the default options:
    /// `Balancer::builder().build_pools(pools)` (see
    /// [`build_pools`](BalancerBuilder::build_pools)).
    ///
    /// # Errors
    ///
    /// As [`build_pools`](BalancerBuilder::build_pools): [`Error::InvalidConfig`] for no
    /// pools or one pool given twice.
    ///
    /// ```
    /// use cylinder::{Balancer, Pool};
    ///
    /// let primary = Pool::builder().size(2).build(|| Ok("primary")).unwrap();
    /// let replica = Pool::builder().size(2).build(|| Ok("replica")).unwrap();
    /// let balancer = Balancer::over_pools([primary, replica]).unwrap();
    ///
    /// let first = *balancer.checkout().unwrap();
    /// let second = *balancer.checkout().unwrap();
    /// assert_ne!(first, second); // round-robin
    /// ```
    pub fn over_pools(pools: impl IntoIterator<Item = Pool<W>>) -> Result<Self, Error> {
        Balancer::builder().build_pools(pools)
    }

    /// Every pool of the set, live or down, in order: to read each one's
    /// [`stats`](Pool::stats), or to check out from one server in particular.
    ///
    /// ```
    /// use cylinder::{Balancer, Pool};
    ///
    /// let pools: Vec<_> = (0..3).map(|n| Pool::builder().size(1).build(move || Ok(n)).unwrap()).collect();
    /// let balancer = Balancer::over_pools(pools).unwrap();
    /// for _ in 0..6 {
    ///     drop(balancer.checkout().unwrap());
    /// }
    /// let shares: Vec<u64> = balancer.pools().iter().map(|pool| pool.stats().checkouts).collect();
    /// assert_eq!(shares, [2, 2, 2]);
    /// ```
    #[must_use]
    pub fn pools(&self) -> Vec<Pool<W>> {
        let snapshot = self.shared.set.snapshot();
        snapshot
            .workers
            .iter()
            .map(|pool| (**pool).clone())
            .collect()
    }

    /// Leases a worker from the next live pool (by the balancer's strategy), waiting at most
    /// the pools' `checkout_timeout` (the longest of them, if they differ): see
    /// [`checkout_timeout`](Self::checkout_timeout).
    ///
    /// # Errors
    ///
    /// As [`checkout_timeout`](Self::checkout_timeout).
    ///
    /// ```
    /// use cylinder::{Balancer, Pool};
    ///
    /// let pools: Vec<_> = (0..2).map(|n| Pool::builder().size(1).build(move || Ok(n)).unwrap()).collect();
    /// let balancer = Balancer::over_pools(pools).unwrap();
    /// let a = balancer.checkout().unwrap();
    /// let b = std::thread::spawn({
    ///     let balancer = balancer.clone();
    ///     move || balancer.checkout().map(|lease| *lease)
    /// });
    /// assert_ne!(*a, b.join().unwrap().unwrap()); // the other server's
    /// ```
    #[track_caller]
    pub fn checkout(&self) -> Result<OwnedLease<W>, Error> {
        let snapshot = self.shared.set.snapshot();
        let timeout = snapshot
            .workers
            .iter()
            .map(|pool| pool.default_checkout_timeout())
            .max()
            .unwrap_or(Duration::from_secs(30));
        drop(snapshot);
        self.checkout_timeout(timeout)
    }

    /// Leases a worker from the next live pool (by the balancer's strategy), waiting up to
    /// `timeout` in all (`Duration::MAX`: no limit). When that pool fails with
    /// [`Error::Disconnected`] (its server went down: its connections fail their check and
    /// the replacement cannot connect), the call moves on to the next live pool, and so on,
    /// so a server going down costs clients at most the leases that were on it. Pools that
    /// are down are skipped and come back into rotation by themselves.
    ///
    /// When every live pool is busy, the call waits in the line of the first in rotation,
    /// and takes instead a worker that any other open pool keeps free meanwhile (a busy one
    /// freeing a worker, a pool that was down coming back): each pool tells the clients
    /// waiting elsewhere as many as it has free. Only the line waited in counts a timeout.
    ///
    /// While every pool is down, the call waits for the next reconnect attempt of the pool
    /// next in rotation (at most its `reconnect_delay`, within `timeout`), takes its
    /// connection if the attempt succeeds (or another pool's, if one comes back first),
    /// looks once more at the others, and otherwise fails: a client that retries in a loop
    /// is paced by the reconnect attempts, never spinning.
    ///
    /// # Errors
    ///
    /// - [`Error::Disconnected`] when every pool is down; its cause (its
    ///   [`source()`](std::error::Error::source)) is a [`PoolsDown`] giving each pool's
    ///   cause, found with [`PoolsDown::of`]. If the balancer's set is gone (a custom
    ///   supervisor failed), its cause.
    /// - [`Error::Timeout`] when no worker came free in time in a live pool; its `cause` is
    ///   that pool's last failed start, if its starts were failing (`state` is `None`).
    /// - [`Error::Overload`] when every live pool has more waiters than the balancer's
    ///   `max_queue_len`.
    /// - [`Error::Closed`] when every pool is closed.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cylinder::{Balancer, Error, Pool};
    ///
    /// let pools: Vec<_> = (0..2).map(|n| Pool::builder().size(1).build(move || Ok(n)).unwrap()).collect();
    /// let balancer = Balancer::over_pools(pools).unwrap();
    /// let a = balancer.checkout().unwrap();
    /// let b = balancer.checkout().unwrap();
    /// let busy = balancer.checkout_timeout(Duration::from_millis(10));
    /// assert!(matches!(busy, Err(Error::Timeout { .. })));
    /// drop((a, b));
    /// ```
    #[track_caller]
    pub fn checkout_timeout(&self, timeout: Duration) -> Result<OwnedLease<W>, Error> {
        let deadline = deadline_after(timeout);
        let shared = &*self.shared;
        let (snapshot, first, all_down) = match self.get() {
            Ok(first) => (first.snapshot, first.index, false),
            Err(Error::Disconnected { cause, .. }) => {
                let snapshot = shared.set.snapshot();
                let count = snapshot.workers.len();
                if count == 0 {
                    return Err(Error::disconnected(cause));
                }
                // Each pool's own cause is collected below.
                contain::dispose(cause);
                let stripe = Stripe::current();
                let start = shared.cursor.start(stripe, count);
                // The next pool in rotation that is open: a closed one is out of rotation
                // for good, and waiting on it would pace no one.
                let first = (0..count)
                    .map(|step| (start + step) % count)
                    .find(|&index| !snapshot.workers[index].is_closed())
                    .unwrap_or(start);
                shared.cursor.advance(stripe, first, count);
                (snapshot, first, true)
            }
            Err(err) => return Err(err),
        };
        let count = snapshot.workers.len();
        let mut causes = Causes(vec![None; count]);
        let mut busy = Vec::new();
        // Live pools passed over for having more waiters than `max_queue_len`.
        let mut full = false;
        // `Some` once the time ran out in a pool's line, with that pool's cause (its last
        // failed start) if it had one.
        let mut timed_out: Option<Option<Cause>> = None;
        // Every pool down: wait for the next attempt of the one next in rotation (paced by
        // its `reconnect_delay`), then look once at the others.
        if all_down {
            match self.wait_on(&snapshot, first, deadline, &mut causes, Joined::Down) {
                Some(Ok(lease)) => return Ok(lease),
                Some(Err(cause)) => timed_out = Some(cause),
                None => {}
            }
        }
        // A free worker in the first live pool in rotation that has one, without waiting
        // (a pool that is down fails over at once; one that is busy is noted).
        for step in usize::from(all_down)..count {
            let index = (first + step) % count;
            let pool = &snapshot.workers[index];
            if step > 0 {
                match self.may_serve(&snapshot, index) {
                    Serve::Yes => {}
                    Serve::Dead => continue,
                    Serve::Full => {
                        full = true;
                        continue;
                    }
                }
            }
            match pool.checkout_free_owned(Location::caller()) {
                Ok(lease) => return Ok(self.served(&snapshot, index, lease)),
                Err(Error::Overload) => busy.push(index),
                Err(Error::Disconnected { cause, .. }) => causes.note(index, cause),
                Err(other) => {
                    contain::dispose(other);
                }
            }
        }
        // None free: wait in the first busy one's line within the time left, taking a
        // worker that another pool keeps free meanwhile; one whose server goes down
        // meanwhile fails over to the next.
        // The wait for the next attempt, when every pool was down, was a line waited in too.
        let mut waited = all_down;
        for index in busy {
            if timed_out.is_some() {
                break;
            }
            // The time ran out in the line before (its pool went down at the last moment):
            // no other line is joined only to count a timeout there too.
            if waited && deadline.is_some_and(|at| Instant::now() >= at) {
                timed_out = Some(None);
                break;
            }
            waited = true;
            match self.wait_on(&snapshot, index, deadline, &mut causes, Joined::Busy) {
                Some(Ok(lease)) => return Ok(lease),
                Some(Err(cause)) => timed_out = Some(cause),
                None => {}
            }
        }
        if let Some(cause) = timed_out {
            return Err(Error::Timeout {
                waited: timeout,
                state: None,
                cause,
            });
        }
        if snapshot.workers.iter().all(|pool| pool.is_closed()) {
            return Err(Error::Closed);
        }
        // The pools waited in went down or closed, and the live ones left have too many
        // waiters: busy, not down.
        if full {
            return Err(Error::Overload);
        }
        let causes = snapshot
            .workers
            .iter()
            .zip(std::mem::take(&mut causes.0))
            .map(|(pool, cause)| {
                let cause = cause.unwrap_or_else(|| pool.down_cause());
                (pool.name().to_string(), cause)
            })
            .collect();
        Err(Error::disconnected(Cause::new(PoolsDown { causes })))
    }

    /// A blocking checkout from pool `index` within the time left, that takes a worker kept
    /// free meanwhile in any other open pool of the set instead (each nudges the waiter
    /// then: a busy one that frees a worker, a down one that comes back), so no worker
    /// free elsewhere is left while the time runs out in this one's line: the lease, `Err`
    /// when the time ran out (with the pool's cause, if its starts were failing), `None`
    /// when the pool is down (its cause noted) or closed.
    #[track_caller]
    fn wait_on(
        &self,
        snapshot: &Snapshot<Pool<W>>,
        index: usize,
        deadline: Option<Instant>,
        causes: &mut Causes,
        joined: Joined,
    ) -> Option<Result<OwnedLease<W>, Option<Cause>>> {
        let count = snapshot.workers.len();
        // In rotation order after this one; a closed pool never comes back.
        let others: Vec<usize> = (1..count)
            .map(|step| (index + step) % count)
            .filter(|&i| !snapshot.workers[i].is_closed())
            .collect();
        let pools: Vec<&Pool<W>> = others.iter().map(|&i| &*snapshot.workers[i]).collect();
        // The client's call, for slow-lease reports of a lease taken in `look`.
        let site = Location::caller();
        let mut found = None;
        // Runs while this pool's waiter is away looking: it only takes a lease, held by
        // this thread (not yet the client's) until this pool's checkout has ended (its
        // recorder and its closes above its size are user code that may drain the other
        // pool); the rest (a worker back in rotation: a log line, an event) comes after.
        let mut look = || {
            for (&other, pool) in others.iter().zip(&pools) {
                match pool.checkout_free_owned(site) {
                    Ok(lease) => {
                        let held_here = pool.held_here(&lease);
                        found = Some((other, lease, held_here));
                        return true;
                    }
                    Err(Error::Disconnected { cause, .. }) => causes.note(other, cause),
                    Err(other) => {
                        contain::dispose(other);
                    }
                }
            }
            false
        };
        match snapshot.workers[index].checkout_owned_or_elsewhere(left(deadline), &pools, &mut look)
        {
            Ok(Some(lease)) => Some(Ok(self.served(snapshot, index, lease))),
            Ok(None) => found.map(|(other, lease, held_here)| {
                drop(held_here);
                Ok(self.served(snapshot, other, lease))
            }),
            Err(Error::Timeout { cause, .. }) => Some(Err(cause)),
            // A busy line whose pool lost its last worker while its starts failed, and the
            // time ran out: a timeout (counted there), with that pool's cause. (A line
            // joined because every pool was down is still down: the others are looked at.)
            Err(Error::Disconnected { cause, .. })
                if joined == Joined::Busy && deadline.is_some_and(|at| Instant::now() >= at) =>
            {
                Some(Err(Some(cause)))
            }
            Err(Error::Disconnected { cause, .. }) => {
                causes.note(index, cause);
                None
            }
            Err(other) => {
                contain::dispose(other);
                None
            }
        }
    }

    /// Whether pool `index` is worth a look: alive (else marked dead), and within the
    /// balancer's `max_queue_len`, as `get` would have it.
    fn may_serve(&self, snapshot: &Snapshot<Pool<W>>, index: usize) -> Serve {
        let pool = &snapshot.workers[index];
        if !pool.is_alive() {
            self.shared.set.mark_dead(snapshot, index);
            return Serve::Dead;
        }
        match (self.shared.max_queue_len, pool.queue_len()) {
            (Some(limit), Some(len)) if len > limit => Serve::Full,
            _ => Serve::Yes,
        }
    }

    /// A lease from pool `index`: if the pool was marked dead, it is back.
    fn served(
        &self,
        snapshot: &Snapshot<Pool<W>>,
        index: usize,
        lease: OwnedLease<W>,
    ) -> OwnedLease<W> {
        if snapshot.is_marked_dead(index) {
            // Its log line and event are user code, run with the lease not yet the
            // client's: it counts as this thread's own meanwhile (a `drain` of that pool
            // from them does not wait for it).
            let _held_here = snapshot.workers[index].held_here(&lease);
            self.shared.set.revive(snapshot, index);
        }
        lease
    }
}

/// Why a balancer checkout waits in a pool's line (`wait_on`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Joined {
    /// Every pool was down: it waits for this one's next start attempt.
    Down,
    /// The pool was alive, every worker leased.
    Busy,
}

/// Whether a pool may serve a balancer checkout (`may_serve`).
enum Serve {
    Yes,
    /// Down (marked dead).
    Dead,
    /// Alive, with more waiters than `max_queue_len`.
    Full,
}

/// The causes a balancer checkout collected, pool by pool. A start error's `Drop` is user
/// code: those not handed to the caller (in a `PoolsDown`) are dropped contained.
struct Causes(Vec<Option<Cause>>);

impl Causes {
    fn note(&mut self, index: usize, cause: Cause) {
        contain::dispose(self.0[index].replace(cause));
    }
}

impl Drop for Causes {
    fn drop(&mut self) {
        contain::dispose_each(self.0.drain(..));
    }
}

/// What is left of the time until `deadline` (`None`: no limit).
fn left(deadline: Option<Instant>) -> Duration {
    deadline.map_or(Duration::MAX, |at| {
        at.saturating_duration_since(Instant::now())
    })
}
