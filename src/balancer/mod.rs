//! The round-robin balancer over a supervisor's children: revolver's semantics.

use std::hash::Hash;
use std::ops::Deref;
use std::sync::Arc;

mod builder;
pub(crate) mod roster;
mod select;
pub(crate) mod supervisor;

pub use builder::BalancerBuilder;
pub use select::Strategy;
pub use supervisor::{Factory, Supervisor};

use crate::error::{Cause, Error};
use crate::event::{emit, Event};
use crate::reaper::Reaper;
use crate::stripe::{Stripe, StripedCursor};
use crate::sync::{Mutex, SnapshotGuard};
use crate::worker::Worker;
use roster::{Roster, Snapshot};

/// Hands out the next live worker of a supervisor's set, round-robin, without locks or
/// allocation.
///
/// Dead workers leave rotation; when the live share falls below `min_alive_ratio` the reaper
/// reloads the set from the supervisor. If the supervisor is gone or has no live children,
/// [`get`](Balancer::get) fails at once with [`Error::Disconnected`] and the reaper reconnects
/// by itself every `reconnect_delay`.
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
/// ```
pub struct Balancer<W: Worker> {
    shared: Arc<Shared<W>>,
    reaper: Mutex<Reaper>,
}

struct Shared<W: Worker> {
    roster: Roster<W>,
    cursor: StripedCursor,
    max_queue_len: Option<usize>,
    strategy: Strategy,
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
    pub fn arc(&self) -> Arc<W> {
        self.snapshot.members[self.index].clone()
    }
}

impl<W> Deref for WorkerRef<W> {
    type Target = W;

    fn deref(&self) -> &W {
        &self.snapshot.members[self.index]
    }
}

impl<W> std::fmt::Debug for WorkerRef<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerRef")
            .field("index", &self.index)
            .finish()
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
    pub fn builder() -> BalancerBuilder<W> {
        BalancerBuilder::default()
    }

    pub(crate) fn start(
        options: BalancerBuilder<W>,
        supervisor: Box<dyn Supervisor<W>>,
    ) -> Result<Self, Error> {
        let shared = Arc::new(Shared {
            roster: Roster::new(
                options.name.clone(),
                supervisor,
                options.min_alive_ratio,
                None,
                options.reconnect_delay,
                options.events.clone(),
            ),
            cursor: StripedCursor::new(),
            max_queue_len: options.max_queue_len,
            strategy: options.strategy,
        });
        // A supervisor that is down at start is retried by the reaper, as revolver does.
        let retry = if options.connect_at_start {
            let first = shared.roster.reload();
            shared.roster.retry_after(&first)
        } else {
            None
        };
        let upkeep = shared.clone();
        let reaper = Reaper::spawn(
            &options.name,
            shared.roster.signal.clone(),
            None,
            Box::new(move |_asked| {
                let reload = upkeep.roster.reload();
                upkeep.roster.retry_after(&reload)
            }),
        )
        .map_err(|err| Error::Disconnected(Cause::new(err)))?;
        if retry.is_some() {
            shared.roster.signal.request();
        }
        Ok(Balancer {
            shared,
            reaper: Mutex::new(reaper),
        })
    }

    /// The next live worker, round-robin. Skips dead workers (and asks for a reload when too
    /// few are left) and workers over `max_queue_len`.
    ///
    /// [`Error::Disconnected`] when the set is gone or none of it is alive;
    /// [`Error::Overload`] when every live worker is over `max_queue_len`.
    pub fn get(&self) -> Result<WorkerRef<W>, Error> {
        let shared = &*self.shared;
        self.pick(|snapshot, count| match shared.strategy {
            Strategy::RoundRobin => shared.cursor.next(Stripe::current(), count),
            Strategy::Random => select::random_below(count),
            Strategy::LeastLoaded => {
                let (a, b) = (select::random_below(count), select::random_below(count));
                let load = |i: usize| snapshot.members[i].queue_len().unwrap_or(0);
                if load(b) < load(a) {
                    b
                } else {
                    a
                }
            }
        })
    }

    /// The worker for `key`: the same live worker for the same key while the set is stable
    /// (hash affinity, e.g. to keep a session's requests in order on one worker). If that
    /// worker is dead or overloaded, the next usable one in order.
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
        self.pick(|_, count| select::index_for(key, count))
    }

    /// Looks for a usable worker starting at the index `first` picks, in order from there.
    #[inline]
    fn pick(
        &self,
        first: impl FnOnce(&Snapshot<W>, usize) -> usize,
    ) -> Result<WorkerRef<W>, Error> {
        let shared = &*self.shared;
        let snapshot = shared.roster.snapshot();
        let count = snapshot.members.len();
        if count == 0 {
            return Err(Error::Disconnected(Cause::message("no live children")));
        }
        let start = first(&snapshot, count);
        let mut overloaded = false;
        for step in 0..count {
            // start < count and step < count: one subtraction wraps it, no division.
            let index = if start + step < count {
                start + step
            } else {
                start + step - count
            };
            if snapshot.is_marked_dead(index) {
                continue;
            }
            let worker = &snapshot.members[index];
            if !worker.is_alive() {
                shared.roster.mark_dead(&snapshot, index);
                continue;
            }
            if let Some(limit) = shared.max_queue_len {
                if worker.queue_len().is_some_and(|len| len > limit) {
                    overloaded = true;
                    continue;
                }
            }
            return Ok(WorkerRef { snapshot, index });
        }
        if overloaded {
            emit(&shared.roster.events, Event::Overload);
            Err(Error::Overload)
        } else {
            shared.roster.ask_reload(&snapshot);
            Err(Error::Disconnected(Cause::message("no live children")))
        }
    }

    /// Calls `f` on every live worker of the current set, in order, and collects the results.
    pub fn map<R>(&self, mut f: impl FnMut(&W) -> R) -> Vec<R> {
        let snapshot = self.shared.roster.snapshot();
        snapshot
            .members
            .iter()
            .enumerate()
            .filter(|(index, worker)| !snapshot.is_marked_dead(*index) && worker.is_alive())
            .map(|(_, worker)| f(worker))
            .collect()
    }

    /// Asks the supervisor for its children now and reports how many of them are new.
    /// Fails with the supervisor's error, or [`Error::Disconnected`] if it has no live
    /// children; the reaper then keeps retrying.
    pub fn connect(&self) -> Result<Connected, Error> {
        let roster = &self.shared.roster;
        let reload = roster.reload();
        // Hand a failure to the reaper, which retries every `reconnect_delay`.
        if roster.retry_after(&reload).is_some() {
            roster.signal.request();
        }
        reload.map(|found| Connected {
            new: found.added.len(),
            total: found.total,
        })
    }

    /// How many workers the current set has (dead ones included until the next reload).
    pub fn len(&self) -> usize {
        self.shared.roster.snapshot().members.len()
    }

    /// Whether the balancer is disconnected (no set).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many times the supervisor was asked for its children, start included.
    pub fn reloads(&self) -> u64 {
        self.shared.roster.reloads()
    }

    /// Stops the reaper; `get` keeps serving the current set. Dropping the balancer does the
    /// same.
    pub fn close(&self) {
        // Joined with the lock let go: the reaper may be in an `on_event` that closes too.
        let reaper = self.reaper.lock().stop_later();
        crate::reaper::join(reaper);
    }

    /// Runs one reaper round on the calling thread, if one was asked for (loom models have
    /// no reaper thread).
    #[cfg(loom)]
    #[doc(hidden)]
    pub fn run_reaper_round(&self) {
        if self.shared.roster.signal.take_request() {
            let _ = self.shared.roster.reload();
        }
    }
}

impl<W: Worker> Drop for Balancer<W> {
    fn drop(&mut self) {
        self.close();
    }
}

impl<W: Worker> std::fmt::Debug for Balancer<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balancer")
            .field("name", &self.shared.roster.name())
            .field("len", &self.len())
            .finish()
    }
}
