//! The round-robin balancer over a supervisor's children: revolver's semantics.

use std::hash::Hash;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

mod builder;
mod pools;
/// The old pool's worker set (the pool used to share the balancer's supervisors); the pool
/// rewrite on main no longer uses it, and then this module goes.
mod select;
mod set;
pub(crate) mod supervisor;

pub use builder::BalancerBuilder;
pub use pools::PoolsDown;
pub use select::Strategy;
pub use supervisor::{Factory, Supervisor};

use crate::contain;
use crate::error::{Cause, Error};
use crate::event::{emit, Event};
use crate::reaper::Reaper;
use crate::stripe::{Stripe, StripedCursor};
use crate::sync::{AtomicBool, Mutex, Ordering, SnapshotGuard};
use crate::worker::Worker;
use set::{Asked, Member, Snapshot, WorkerSet};

/// How long a `get` that found the whole set dead waits for a reload that another thread is
/// running, before it reports `Disconnected`.
const RELOAD_PATIENCE: Duration = Duration::from_millis(100);

/// Hands out the next live worker of a supervisor's set, round-robin, without locks or
/// allocation: revolver.
///
/// Each thread's rotation continues after the worker it was given, so live workers share the
/// calls evenly whatever is skipped (dead, leased or over `max_queue_len`). Dead workers leave
/// rotation; when the live share falls below `min_alive_ratio` the reaper reloads the set from
/// the supervisor, and a `get` that finds the whole set dead reloads at once. If the supervisor
/// is gone or has no live children, [`get`](Balancer::get) fails at once with
/// [`Error::Disconnected`], carrying why, and the reaper reconnects by itself every
/// `reconnect_delay`.
///
/// revolver's lease mode is here too: [`lease`](Balancer::lease) and
/// [`transaction`](Balancer::transaction) hold a worker exclusively, non-blocking. Unlike
/// revolver's, successive leases of a thread do not rotate: a thread gets back the worker it
/// leased last while that one is free (as a pool's checkout does), so threads keep to their
/// own workers instead of passing them between cores.
///
/// `Balancer` is a cheap handle: clones share one balancer, whose reaper stops when the last
/// handle is dropped or on [`close`](Balancer::close).
///
/// ```
/// use std::sync::Arc;
/// use cylinder::{Balancer, BoxError, Worker};
///
/// struct Node(u32);
/// impl Worker for Node {}
///
/// let nodes = vec![Arc::new(Node(1)), Arc::new(Node(2))];
/// let balancer = Balancer::builder()
///     .build_with(move || -> Result<_, BoxError> { Ok(nodes.clone()) })
///     .unwrap();
///
/// let first = balancer.get().unwrap().0;
/// let second = balancer.get().unwrap().0;
/// assert_ne!(first, second);
/// assert_eq!(balancer.get().unwrap().0, first);
/// assert_eq!(balancer.map(|node| node.0 * 10).len(), 2);
///
/// // Lease mode: the worker is ours alone until the guard drops.
/// let lease = balancer.lease().unwrap();
/// let other = balancer.transaction(|node| node.0).unwrap();
/// assert_ne!(lease.0, other);
/// ```
pub struct Balancer<W: Worker> {
    shared: Arc<Shared<W>>,
    handle: Arc<Handle>,
}

/// Shared by the handles only: the last one to go stops the reaper.
struct Handle {
    /// Taken by the first close, which stops and joins it outside the lock: an event
    /// callback on the reaper's thread may call `close` meanwhile.
    reaper: Mutex<Option<Reaper>>,
}

impl Handle {
    fn close(&self) {
        let reaper = self.reaper.lock().take();
        if let Some(mut reaper) = reaper {
            reaper.stop();
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.close();
    }
}

struct Shared<W: Worker> {
    set: WorkerSet<W>,
    /// Where each thread's `get` rotation stands.
    cursor: StripedCursor,
    /// Where each thread's next lease looks first: the worker it leased last.
    lease_cursor: StripedCursor,
    max_queue_len: Option<usize>,
    strategy: Strategy,
    /// Whether a lease was ever looked for: until then, `get` need not look at lease marks.
    /// Set once by the first lease (before it marks a worker) and never cleared, so it is
    /// read-only from then on: no lease writes a line that every thread reads.
    lease_mode: AtomicBool,
}

/// What a scan of the set found.
enum Scan {
    /// A usable worker at this index (for a lease: now marked leased).
    Found(usize),
    /// Some worker is alive, but every live one is leased or over `max_queue_len`.
    Busy,
    /// Every worker of the set is dead.
    AllDead,
}

/// A worker handed out by [`Balancer::get`]. Derefs to the worker; it borrows the published
/// set instead of bumping a reference count. Clone the [`Arc`] with [`WorkerRef::arc`] to
/// keep the worker beyond a short use.
pub struct WorkerRef<W> {
    snapshot: SnapshotGuard<Snapshot<W>>,
    index: usize,
}

impl<W> WorkerRef<W> {
    /// The worker's shared handle.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use cylinder::{Balancer, BoxError, Worker};
    ///
    /// struct Node;
    /// impl Worker for Node {}
    ///
    /// let node = Arc::new(Node);
    /// let set = vec![node.clone()];
    /// let balancer = Balancer::builder()
    ///     .build_with(move || -> Result<_, BoxError> { Ok(set.clone()) })
    ///     .unwrap();
    /// assert!(Arc::ptr_eq(&balancer.get().unwrap().arc(), &node));
    /// ```
    #[must_use]
    pub fn arc(&self) -> Arc<W> {
        self.snapshot.workers[self.index].clone()
    }
}

impl<W> Deref for WorkerRef<W> {
    type Target = W;

    #[inline]
    fn deref(&self) -> &W {
        &self.snapshot.workers[self.index]
    }
}

impl<W> std::fmt::Debug for WorkerRef<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerRef")
            .field("index", &self.index)
            .finish()
    }
}

/// A worker leased by [`Balancer::lease`]: held exclusively until the guard drops (also while
/// a panic unwinds). Derefs to the worker. It owns what it needs (the worker's lease cell, and
/// nothing of the balancer), so it can outlive every balancer handle and be sent to another
/// thread.
///
/// While leased, the worker is skipped by [`Balancer::get`] and by other leases, through
/// reloads and reconnects; a worker that leaves the set while leased is not handed out again.
///
/// ```
/// use std::sync::Arc;
/// use cylinder::{Balancer, BoxError, Error, Worker};
///
/// struct Conn(u32);
/// impl Worker for Conn {}
///
/// let conns = vec![Arc::new(Conn(1))];
/// let balancer = Balancer::builder()
///     .build_with(move || -> Result<_, BoxError> { Ok(conns.clone()) })
///     .unwrap();
/// let lease = balancer.lease().unwrap();
/// assert!(matches!(balancer.lease(), Err(Error::Overload)));
/// let lease = std::thread::spawn(move || { assert_eq!(lease.0, 1); lease }).join().unwrap();
/// drop(lease);
/// assert_eq!(balancer.lease().unwrap().0, 1);
/// ```
pub struct BalancerLease<W: Worker> {
    /// Always `Some` until the lease is dropped, which lets go of it contained: the lease
    /// may hold the last reference to a worker that left the set, whose `Drop` is user code.
    member: Option<Arc<Member<W>>>,
}

impl<W: Worker> BalancerLease<W> {
    fn member(&self) -> &Member<W> {
        self.member
            .as_ref()
            .expect("a lease holds its member until it is dropped")
    }
}

impl<W: Worker> BalancerLease<W> {
    /// The leased worker's shared handle (holding it does not extend the lease).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use cylinder::{Balancer, BoxError, Worker};
    ///
    /// struct Node;
    /// impl Worker for Node {}
    ///
    /// let node = Arc::new(Node);
    /// let set = vec![node.clone()];
    /// let balancer = Balancer::builder()
    ///     .build_with(move || -> Result<_, BoxError> { Ok(set.clone()) })
    ///     .unwrap();
    /// let lease = balancer.lease().unwrap();
    /// assert!(Arc::ptr_eq(&lease.arc(), &node));
    /// ```
    #[must_use]
    pub fn arc(&self) -> Arc<W> {
        self.member().worker.clone()
    }
}

impl<W: Worker> Deref for BalancerLease<W> {
    type Target = W;

    fn deref(&self) -> &W {
        &self.member().worker
    }
}

impl<W: Worker> Drop for BalancerLease<W> {
    fn drop(&mut self) {
        if let Some(member) = self.member.take() {
            member.leased.store(false, Ordering::Release);
            contain::dispose(member);
        }
    }
}

impl<W: Worker> std::fmt::Debug for BalancerLease<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BalancerLease").finish_non_exhaustive()
    }
}

/// What [`Balancer::connect`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Connected {
    /// Workers that were not in the set before.
    pub new: usize,
    /// Workers in the set now.
    pub total: usize,
}

impl<W: Worker> Balancer<W> {
    /// The options, with revolver's defaults.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use cylinder::{Balancer, BoxError, Worker};
    ///
    /// struct Node;
    /// impl Worker for Node {}
    ///
    /// let balancer = Balancer::builder()
    ///     .name("nodes")
    ///     .build_with(|| -> Result<Vec<Arc<Node>>, BoxError> { Ok(vec![Arc::new(Node)]) })
    ///     .unwrap();
    /// assert_eq!(balancer.len(), 1);
    /// ```
    pub fn builder() -> BalancerBuilder<W> {
        BalancerBuilder::default()
    }

    pub(crate) fn start(
        options: BalancerBuilder<W>,
        supervisor: Box<dyn Supervisor<W>>,
    ) -> Result<Self, Error> {
        let shared = Arc::new(Shared {
            set: WorkerSet::new(
                options.name.clone(),
                supervisor,
                options.min_alive_ratio,
                options.reconnect_delay,
                options.events.clone(),
                options.fixed_set,
            ),
            cursor: StripedCursor::new(),
            lease_cursor: StripedCursor::new(),
            max_queue_len: options.max_queue_len,
            strategy: options.strategy,
            lease_mode: AtomicBool::new(false),
        });
        // A supervisor that is down at start is retried by the reaper, as revolver does.
        let retry = if options.connect_at_start {
            let first = shared.set.reload(Asked::ByCaller);
            shared.set.retry_after(&first)
        } else {
            None
        };
        let upkeep = shared.clone();
        let reaper = Reaper::spawn(
            &options.name,
            shared.set.signal.clone(),
            None,
            Box::new(move |_asked| {
                let snapshot = upkeep.set.snapshot();
                if let Some(wait) = upkeep
                    .set
                    .too_soon(&snapshot)
                    .or_else(|| upkeep.set.reconnect_wait(&snapshot))
                {
                    return Some(wait);
                }
                drop(snapshot);
                let reload = upkeep.set.reload(Asked::Automatically);
                upkeep.set.retry_after(&reload)
            }),
        )
        .map_err(|err| Error::disconnected(Cause::new(err)))?;
        if retry.is_some() {
            shared.set.signal.request();
        }
        Ok(Balancer {
            shared,
            handle: Arc::new(Handle {
                reaper: Mutex::new(Some(reaper)),
            }),
        })
    }

    /// The next live worker, round-robin: the calling thread's rotation continues after the
    /// worker it was given last. Skips dead workers (and asks for a reload when too few are
    /// left), leased workers, and workers over `max_queue_len`.
    ///
    /// # Errors
    ///
    /// - [`Error::Disconnected`] when the supervisor is gone or has no live children; its
    ///   [`source()`](std::error::Error::source) is why (the supervisor's error or panic, or
    ///   "no live children"). A `get` that finds the whole set dead first reloads it (or
    ///   waits briefly for a reload under way) and fails only if that finds nothing live.
    /// - [`Error::Overload`] when every live worker is leased or over `max_queue_len`.
    ///
    /// ```
    /// use std::error::Error as _;
    /// use std::sync::Arc;
    /// use cylinder::{Balancer, BoxError, Error, Worker};
    ///
    /// struct Node;
    /// impl Worker for Node {}
    ///
    /// let down = Balancer::<Node>::builder()
    ///     .build_with(|| -> Result<Vec<Arc<Node>>, BoxError> { Err("connection refused".into()) })
    ///     .unwrap();
    /// let err = down.get().unwrap_err();
    /// assert!(matches!(err, Error::Disconnected { .. }));
    /// assert_eq!(err.source().unwrap().to_string(), "connection refused");
    /// ```
    #[inline]
    pub fn get(&self) -> Result<WorkerRef<W>, Error> {
        let shared = &*self.shared;
        let stripe = Stripe::current();
        let (snapshot, index) = match shared.strategy {
            Strategy::RoundRobin => self.pick(
                |_, count| shared.cursor.start(stripe, count),
                |index, count| shared.cursor.advance(stripe, index, count),
                false,
            ),
            Strategy::Random => self.pick(|_, count| select::random_below(count), |_, _| {}, false),
            Strategy::LeastLoaded => self.pick(
                |snapshot, count| {
                    let (a, b) = (select::random_below(count), select::random_below(count));
                    // A queue length that panics is never the shorter (the scan marks it dead,
                    // also when both picks are that one).
                    let load = |i: usize| {
                        contain::run(|| snapshot.workers[i].queue_len())
                            .map_or(usize::MAX, |len| len.unwrap_or(0))
                    };
                    if load(b) < load(a) {
                        b
                    } else {
                        a
                    }
                },
                |_, _| {},
                false,
            ),
        }?;
        Ok(WorkerRef { snapshot, index })
    }

    /// The worker for `key`: the same live worker for the same key while the set is stable
    /// (hash affinity, e.g. to keep a session's requests in order on one worker). If that
    /// worker is dead, leased or overloaded, the next usable one in order.
    ///
    /// # Errors
    ///
    /// As [`get`](Balancer::get): [`Error::Disconnected`] (with its cause) or
    /// [`Error::Overload`].
    ///
    /// ```
    /// use std::sync::Arc;
    /// use cylinder::{Balancer, BoxError, Worker};
    ///
    /// struct Shard(u32);
    /// impl Worker for Shard {}
    ///
    /// let shards: Vec<Arc<Shard>> = (0..4).map(|i| Arc::new(Shard(i))).collect();
    /// let balancer = Balancer::builder()
    ///     .build_with(move || -> Result<_, BoxError> { Ok(shards.clone()) })
    ///     .unwrap();
    /// let first = balancer.get_for("user-42").unwrap().0;
    /// assert!((0..10).all(|_| balancer.get_for("user-42").unwrap().0 == first));
    /// ```
    pub fn get_for<K: Hash + ?Sized>(&self, key: &K) -> Result<WorkerRef<W>, Error> {
        let (snapshot, index) =
            self.pick(|_, count| select::index_for(key, count), |_, _| {}, false)?;
        Ok(WorkerRef { snapshot, index })
    }

    /// Leases a live worker that nobody has leased, without waiting: revolver's lease mode.
    /// The worker is held exclusively until the guard drops (also while a panic unwinds):
    /// other leases and [`get`](Balancer::get) skip it, through reloads and reconnects.
    ///
    /// Which worker: the one the calling thread leased last, if it is live and free (what is
    /// remembered is its place in the set, so after a reload that moved it, whichever worker
    /// is there now); else the next live and free one after it in the set's order. So a
    /// thread that takes one lease at a time keeps getting the same worker, warm in its
    /// cache, and threads that lease at once each settle on workers of their own. (revolver's
    /// lease mode rotates instead; so do threads beyond the sixteenth alive at once, which
    /// share one cursor.)
    ///
    /// # Errors
    ///
    /// - [`Error::Overload`] at once when every live worker is leased (or over
    ///   `max_queue_len`): revolver's `{error, overload}`.
    /// - [`Error::Disconnected`] (with its cause) as for [`get`](Balancer::get).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use cylinder::{Balancer, BoxError, Error, Worker};
    ///
    /// struct Conn(u32);
    /// impl Worker for Conn {}
    ///
    /// let conns = vec![Arc::new(Conn(1)), Arc::new(Conn(2))];
    /// let balancer = Balancer::builder()
    ///     .build_with(move || -> Result<_, BoxError> { Ok(conns.clone()) })
    ///     .unwrap();
    /// let a = balancer.lease().unwrap();
    /// let b = balancer.lease().unwrap();
    /// assert_ne!(a.0, b.0);
    /// assert!(matches!(balancer.lease(), Err(Error::Overload)));
    /// drop(a);
    /// assert!(balancer.lease().is_ok());
    /// ```
    pub fn lease(&self) -> Result<BalancerLease<W>, Error> {
        let shared = &*self.shared;
        // Set before any worker is marked: a `get` that comes after a lease (in the
        // happens-before order) sees the flag, then the mark. Written once per balancer.
        if !shared.lease_mode.load(Ordering::Relaxed) {
            shared.lease_mode.store(true, Ordering::Release);
        }
        let stripe = Stripe::current();
        // Affinity: the thread looks first at the worker it leased last, whose lines are in
        // its cache (and nobody else's, while the threads keep to their own workers).
        let (snapshot, index) = self.pick(
            |_, count| shared.lease_cursor.start(stripe, count),
            |index, _| shared.lease_cursor.stay(stripe, index),
            true,
        )?;
        Ok(BalancerLease {
            member: Some(snapshot.members[index].clone()),
        })
    }

    /// Runs `f` on a leased worker and releases it: revolver's `transaction/2`. The worker
    /// is released also if `f` panics (the panic goes on unwinding).
    ///
    /// # Errors
    ///
    /// As [`lease`](Balancer::lease): [`Error::Overload`] when every live worker is leased,
    /// [`Error::Disconnected`] (with its cause) when there is none. `f` does not run then.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use cylinder::{Balancer, BoxError, Worker};
    ///
    /// struct Conn(u32);
    /// impl Worker for Conn {}
    ///
    /// let conns = vec![Arc::new(Conn(1)), Arc::new(Conn(2))];
    /// let balancer = Balancer::builder()
    ///     .build_with(move || -> Result<_, BoxError> { Ok(conns.clone()) })
    ///     .unwrap();
    /// let first = balancer.transaction(|conn| conn.0).unwrap();
    /// // Released: this thread gets the same worker back.
    /// assert_eq!(balancer.transaction(|conn| conn.0).unwrap(), first);
    /// // Held: the next lease is another worker.
    /// let held = balancer.lease().unwrap();
    /// assert_eq!(held.0, first);
    /// assert_ne!(balancer.transaction(|conn| conn.0).unwrap(), first);
    /// ```
    pub fn transaction<R>(&self, f: impl FnOnce(&W) -> R) -> Result<R, Error> {
        let lease = self.lease()?;
        Ok(f(&lease))
    }

    /// Looks for a usable worker starting at the index `first` picks, in order from there;
    /// with `lease`, marks it leased. `found` is told the index found and the set's size
    /// (to move the thread's cursor).
    #[inline]
    fn pick(
        &self,
        mut first: impl FnMut(&Snapshot<W>, usize) -> usize,
        found: impl FnOnce(usize, usize),
        lease: bool,
    ) -> Result<(SnapshotGuard<Snapshot<W>>, usize), Error> {
        let shared = &*self.shared;
        let mut snapshot = shared.set.snapshot();
        let mut reloaded = false;
        let mut looked_again = false;
        loop {
            let count = snapshot.workers.len();
            if count == 0 {
                // Disconnected: fail fast. Once `reconnect_delay` has passed since the
                // supervisor was last asked (the reaper may be held up in a callback), a
                // reload starts on a thread of its own: never on this caller's, which must
                // not pay for a supervisor that is slow to fail.
                if shared.set.retry_due() {
                    self.reload_in_background();
                }
                return Err(Error::disconnected(snapshot.cause.clone()));
            }
            let start = first(&snapshot, count);
            match self.scan(&snapshot, start, lease) {
                Scan::Found(index) => {
                    found(index, count);
                    snapshot.members[index].handed_out();
                    return Ok((snapshot, index));
                }
                Scan::Busy => {
                    emit(&shared.set.events, Event::Overload);
                    return Err(Error::Overload);
                }
                // A newer set was published meanwhile: look at it first.
                Scan::AllDead if !shared.set.is_current(&snapshot) && !looked_again => {
                    looked_again = true;
                    snapshot = shared.set.snapshot();
                }
                // At most once per `reconnect_delay`: children that die on arrival must not be
                // restarted on every call. Children that come back by themselves (pools) are
                // looked at again by the next scan: a reload would list the same.
                Scan::AllDead
                    if !reloaded
                        && !snapshot.all_come_back
                        && shared.set.too_soon(&snapshot).is_none() =>
                {
                    reloaded = true;
                    snapshot = self.reload_all_dead();
                }
                Scan::AllDead => {
                    if !snapshot.all_come_back {
                        shared.set.ask_reload(&snapshot);
                    }
                    return Err(Error::disconnected(Cause::message("no live children")));
                }
            }
        }
    }

    /// Every worker of the set was found dead: reload now (or wait briefly for the reload
    /// under way) rather than report `Disconnected` while the supervisor may have live
    /// children. Returns the set published after it.
    #[cold]
    #[inline(never)]
    fn reload_all_dead(&self) -> SnapshotGuard<Snapshot<W>> {
        let set = &self.shared.set;
        set.reload_or_wait(RELOAD_PATIENCE);
        let snapshot = set.snapshot();
        if !snapshot.is_connected() {
            // The reaper keeps retrying every `reconnect_delay`.
            set.signal.request();
        }
        snapshot
    }

    /// Reloads on a short-lived thread of its own, unless one is running already. It holds
    /// the balancer only while the supervisor runs.
    #[cold]
    #[inline(never)]
    fn reload_in_background(&self) {
        let set = &self.shared.set;
        if set.background_reload.swap(true, Ordering::AcqRel) {
            return;
        }
        let shared = Arc::downgrade(&self.shared);
        let spawned = std::thread::Builder::new()
            .name(format!("cylinder-reload-{}", set.name()))
            .spawn(move || {
                crate::stripe::opt_out();
                if let Some(shared) = shared.upgrade() {
                    let set = &shared.set;
                    if set.retry_due() {
                        set.reload_or_wait(Duration::ZERO);
                    }
                    set.background_reload.store(false, Ordering::Release);
                }
            });
        if spawned.is_err() {
            set.background_reload.store(false, Ordering::Release);
            set.signal.request();
        }
    }

    /// One pass over the set from `start`.
    #[inline]
    fn scan(&self, snapshot: &Snapshot<W>, start: usize, lease: bool) -> Scan {
        let shared = &*self.shared;
        let count = snapshot.workers.len();
        // Lease marks matter only once lease mode is used.
        let leases_out = lease || shared.lease_mode.load(Ordering::Acquire);
        let mut busy = false;
        for step in 0..count {
            // start < count and step < count: one subtraction wraps it, no division.
            let index = if start + step < count {
                start + step
            } else {
                start + step - count
            };
            if snapshot.is_gone(index) {
                continue;
            }
            let worker = &snapshot.workers[index];
            // A worker whose `is_alive` or `queue_len` panics counts as dead. Its queue length
            // is asked whenever the balancer uses it (`max_queue_len`, or the least-loaded
            // strategy), before a worker that comes back is revived.
            if !contain::run(|| worker.is_alive()).unwrap_or(false) {
                shared.set.mark_dead(snapshot, index);
                continue;
            }
            let mut over_limit = false;
            if shared.max_queue_len.is_some() || shared.strategy == Strategy::LeastLoaded {
                let Ok(len) = contain::run(|| worker.queue_len()) else {
                    shared.set.mark_dead(snapshot, index);
                    continue;
                };
                over_limit = shared
                    .max_queue_len
                    .is_some_and(|limit| len.is_some_and(|len| len > limit));
            }
            if snapshot.is_marked_dead(index) {
                // Dead before and come back by itself (a pool whose server returned).
                shared.set.revive(snapshot, index);
            }
            if over_limit || (leases_out && snapshot.members[index].leased.load(Ordering::Acquire))
            {
                busy = true;
                continue;
            }
            if lease
                && snapshot.members[index]
                    .leased
                    .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                    .is_err()
            {
                busy = true;
                continue;
            }
            return Scan::Found(index);
        }
        if busy {
            Scan::Busy
        } else {
            Scan::AllDead
        }
    }

    /// Calls `f` on every live worker of the current set, in order (leased ones included),
    /// and collects the results. It never waits for a reload or the supervisor.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use cylinder::{Balancer, BoxError, Worker};
    ///
    /// struct Node(u32);
    /// impl Worker for Node {}
    ///
    /// let nodes = vec![Arc::new(Node(1)), Arc::new(Node(2))];
    /// let balancer = Balancer::builder()
    ///     .build_with(move || -> Result<_, BoxError> { Ok(nodes.clone()) })
    ///     .unwrap();
    /// assert_eq!(balancer.map(|node| node.0), vec![1, 2]);
    /// ```
    pub fn map<R>(&self, mut f: impl FnMut(&W) -> R) -> Vec<R> {
        let snapshot = self.shared.set.snapshot();
        snapshot
            .workers
            .iter()
            .enumerate()
            .filter(|(index, worker)| {
                !snapshot.is_gone(*index) && contain::run(|| worker.is_alive()).unwrap_or(false)
            })
            .map(|(_, worker)| f(worker))
            .collect()
    }

    /// Asks the supervisor for its children now (after any reload under way) and reports how
    /// many of them are new: revolver's `connect/1`. Leased workers stay leased.
    ///
    /// # Errors
    ///
    /// [`Error::Disconnected`] when the supervisor fails, panics or has no live children; its
    /// [`source()`](std::error::Error::source) is the supervisor's error (or panic message,
    /// or "no live children"). The reaper then keeps retrying every `reconnect_delay`.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use cylinder::{Balancer, BoxError, Worker};
    ///
    /// struct Node;
    /// impl Worker for Node {}
    ///
    /// let children = Arc::new(Mutex::new(vec![Arc::new(Node)]));
    /// let listed = children.clone();
    /// let balancer = Balancer::builder()
    ///     .build_with(move || -> Result<_, BoxError> { Ok(listed.lock().unwrap().clone()) })
    ///     .unwrap();
    /// children.lock().unwrap().push(Arc::new(Node));
    /// let found = balancer.connect().unwrap();
    /// assert_eq!((found.new, found.total), (1, 2));
    /// ```
    pub fn connect(&self) -> Result<Connected, Error> {
        let set = &self.shared.set;
        let reload = set.reload(Asked::ByCaller);
        // Hand a failure to the reaper, which retries every `reconnect_delay`.
        if set.retry_after(&reload).is_some() {
            set.signal.request();
        }
        reload.map(|found| Connected {
            new: found.new,
            total: found.total,
        })
    }

    /// How many workers the current set has (dead ones included until the next reload). It
    /// never waits for a reload or the supervisor.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use cylinder::{Balancer, BoxError, Worker};
    ///
    /// struct Node;
    /// impl Worker for Node {}
    ///
    /// let balancer = Balancer::builder()
    ///     .build_with(|| -> Result<Vec<Arc<Node>>, BoxError> { Ok(vec![Arc::new(Node)]) })
    ///     .unwrap();
    /// assert_eq!(balancer.len(), 1);
    /// ```
    #[must_use]
    pub fn len(&self) -> usize {
        self.shared.set.snapshot().workers.len()
    }

    /// Whether the balancer is disconnected (no set).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use cylinder::{Balancer, BoxError, Worker};
    ///
    /// struct Node;
    /// impl Worker for Node {}
    ///
    /// let balancer = Balancer::builder()
    ///     .connect_at_start(false)
    ///     .build_with(|| -> Result<Vec<Arc<Node>>, BoxError> { Ok(vec![Arc::new(Node)]) })
    ///     .unwrap();
    /// assert!(balancer.is_empty());
    /// ```
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many times the supervisor was asked for its children, start included.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use cylinder::{Balancer, BoxError, Worker};
    ///
    /// struct Node;
    /// impl Worker for Node {}
    ///
    /// let balancer = Balancer::builder()
    ///     .build_with(|| -> Result<Vec<Arc<Node>>, BoxError> { Ok(vec![Arc::new(Node)]) })
    ///     .unwrap();
    /// assert_eq!(balancer.reloads(), 1);
    /// ```
    #[must_use]
    pub fn reloads(&self) -> u64 {
        self.shared.set.reloads()
    }

    /// Stops the reaper for every handle; `get` and `lease` keep serving the current set.
    /// Dropping the last handle does the same.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use cylinder::{Balancer, BoxError, Worker};
    ///
    /// struct Node;
    /// impl Worker for Node {}
    ///
    /// let balancer = Balancer::builder()
    ///     .build_with(|| -> Result<Vec<Arc<Node>>, BoxError> { Ok(vec![Arc::new(Node)]) })
    ///     .unwrap();
    /// let handle = balancer.clone();
    /// handle.close();
    /// assert!(balancer.get().is_ok());
    /// ```
    pub fn close(&self) {
        self.handle.close();
    }

    /// Runs one reaper round on the calling thread, if one was asked for (loom models have
    /// no reaper thread).
    #[cfg(loom)]
    #[doc(hidden)]
    pub fn run_reaper_round(&self) {
        if self.shared.set.signal.take_request() {
            contain::dispose(self.shared.set.reload(Asked::Automatically));
        }
    }
}

impl<W: Worker> Clone for Balancer<W> {
    fn clone(&self) -> Self {
        Balancer {
            shared: self.shared.clone(),
            handle: self.handle.clone(),
        }
    }
}

impl<W: Worker> std::fmt::Debug for Balancer<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balancer")
            .field("name", &self.shared.set.name())
            .field("len", &self.len())
            .finish()
    }
}
