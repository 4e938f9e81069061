//! The pool's builder: every option with its default, validated when the pool is built.

use std::time::Duration;

use super::manager::{CheckOutcome, Hooks, Manager, Uses};
use super::{Pool, QueueMode};
use crate::contain::Contained;
use crate::error::{positive, BoxError, Error};
use crate::event::{Event, EventHook};

/// The largest pool [`PoolBuilder::size`] accepts (with its overflow): the free queue is
/// allocated up front.
pub const MAX_POOL_SIZE: usize = 1 << 20;

/// The smallest `reconnect_delay` the pool keeps to (the reaper's smallest tick): a shorter one
/// is paced at this.
pub(crate) const MIN_RECONNECT_DELAY: Duration = Duration::from_millis(10);

/// `check_after_idle`'s default, HikariCP's: a worker used this recently is not checked.
const DEFAULT_CHECK_AFTER_IDLE: Duration = Duration::from_millis(500);

/// What happens to a lease whose client panics while holding it.
///
/// A panic counts only if it began while the lease was held: a lease taken and returned in a
/// `Drop` that runs during an unrelated panic is released as usual. (A lease taken during an
/// unwinding cannot tell a second panic that begins while it is held from the first: std says
/// whether a thread unwinds, not which panic; such a lease is released.)
///
/// ```
/// use cylinder::{OnClientPanic, Pool};
///
/// let pool = Pool::builder()
///     .size(2)
///     .on_client_panic(OnClientPanic::Discard)
///     .build(|| Ok(String::from("conn")))
///     .unwrap();
/// assert_eq!(pool.stats().size, 2);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnClientPanic {
    /// The worker goes back to the pool (gruff's choice), through the `reset` hook if any.
    #[default]
    Release,
    /// The worker may hold broken state: it is dropped and the pool starts another.
    Discard,
}

/// The options of a [`Pool`]. Made by [`Pool::builder`].
///
/// | option | default |
/// |---|---|
/// | `size` | required: the most workers the pool opens (1 to [`MAX_POOL_SIZE`]) |
/// | `min_idle` | `size`: how many workers the pool keeps open |
/// | `max_lifetime` | none: a worker older than this is closed when next idle or returned |
/// | `idle_timeout` | none: idle workers beyond `min_idle` are closed after this |
/// | `checkout_timeout` | 30 s (`Duration::MAX`: wait without limit) |
/// | `reconnect_delay` | 1 s: retry period while starts fail |
/// | `start_timeout` | none: a start taking longer counts as failed |
/// | `on_client_panic` | [`OnClientPanic::Release`] |
/// | `fifo_after` | 1 ms: a waiter that waited this long gets the next released worker first |
/// | `queue_mode` | [`QueueMode::Lifo`]: the free worker released most recently goes out first |
/// | `max_overflow` | 0: no temporary workers beyond `size` |
/// | `warn_after` | off: no slow-lease reports |
/// | `test_on_checkout` | none (a [`Manager`]'s `check` for [`build_with`](Self::build_with)) |
/// | `check_on_checkout` | true: run the check before each lease, if there is one |
/// | `check_after_idle` | 500 ms: the check is skipped for a worker used or checked more recently |
/// | `keepalive` | off: the reaper checks workers idle this long |
/// | `on_start` | none: runs on each new worker before it joins |
/// | `is_broken`, `reset` | none (a [`Manager`]'s for [`build_with`](Self::build_with)) |
/// | `on_event` | none |
/// | `name` | `"pool"` (in log lines and thread names) |
///
/// ```
/// use std::time::Duration;
/// use cylinder::{Error, Pool};
///
/// let pool = Pool::builder()
///     .size(4)
///     .checkout_timeout(Duration::from_millis(500))
///     .name("db")
///     .build(|| Ok(Vec::<u8>::new()))
///     .unwrap();
/// assert_eq!(pool.stats().free, 4);
///
/// let bad = Pool::builder().size(4).checkout_timeout(Duration::ZERO).build(|| Ok(0));
/// assert!(matches!(bad, Err(Error::InvalidConfig { option: "checkout_timeout", .. })));
/// ```
#[must_use]
pub struct PoolBuilder<W> {
    pub(crate) size: Option<usize>,
    pub(crate) min_idle: Option<usize>,
    pub(crate) max_lifetime: Option<Duration>,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) checkout_timeout: Duration,
    pub(crate) reconnect_delay: Duration,
    pub(crate) start_timeout: Option<Duration>,
    pub(crate) on_client_panic: OnClientPanic,
    pub(crate) fifo_after: Duration,
    pub(crate) queue_mode: QueueMode,
    pub(crate) max_overflow: usize,
    pub(crate) warn_after: Option<Duration>,
    pub(crate) check_on_checkout: bool,
    pub(crate) check_after_idle: Duration,
    pub(crate) keepalive: Option<Duration>,
    pub(crate) events: Option<EventHook>,
    pub(crate) name: String,
    check: Option<super::manager::CheckFn<W>>,
    is_broken: Option<super::manager::BrokenFn<W>>,
    reset: Option<super::manager::CheckFn<W>>,
    is_alive: Option<super::manager::AliveFn<W>>,
    pub(crate) on_start: Option<super::manager::CheckFn<W>>,
}

/// The callbacks set on a builder that is dropped (unused, or by a `build` that fails) are
/// user code to drop, one at a time, contained.
impl<W> Drop for PoolBuilder<W> {
    fn drop(&mut self) {
        crate::contain::dispose(self.events.take());
        crate::contain::dispose(self.check.take());
        crate::contain::dispose(self.is_broken.take());
        crate::contain::dispose(self.reset.take());
        crate::contain::dispose(self.is_alive.take());
        crate::contain::dispose(self.on_start.take());
    }
}

impl<W> Default for PoolBuilder<W> {
    fn default() -> Self {
        PoolBuilder {
            size: None,
            min_idle: None,
            max_lifetime: None,
            idle_timeout: None,
            checkout_timeout: Duration::from_secs(30),
            reconnect_delay: Duration::from_secs(1),
            start_timeout: None,
            on_client_panic: OnClientPanic::Release,
            fifo_after: Duration::from_millis(1),
            queue_mode: QueueMode::Lifo,
            max_overflow: 0,
            warn_after: None,
            check_on_checkout: true,
            check_after_idle: DEFAULT_CHECK_AFTER_IDLE,
            keepalive: None,
            events: None,
            name: "pool".to_string(),
            check: None,
            is_broken: None,
            reset: None,
            is_alive: None,
            on_start: None,
        }
    }
}

impl<W: Send + 'static> PoolBuilder<W> {
    /// The most workers the pool opens (1 to [`MAX_POOL_SIZE`]), overflow aside.
    ///
    /// ```
    /// use cylinder::Pool;
    ///
    /// let pool = Pool::builder().size(3).build(|| Ok(())).unwrap();
    /// assert_eq!(pool.stats().max_size, 3);
    /// ```
    pub fn size(mut self, size: usize) -> Self {
        self.size = Some(size);
        self
    }

    /// How many workers the pool keeps open, even when idle (at most `size`; default `size`).
    /// Below `size`, the pool opens more on demand, and closes those beyond `min_idle` that
    /// stayed idle for `idle_timeout`; a worker taken out of service (broken, expired,
    /// discarded, evicted) is replaced at once only up to `min_idle` (and for a client
    /// waiting), the rest on demand.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cylinder::Pool;
    ///
    /// let pool = Pool::builder().size(8).min_idle(2).build(|| Ok(())).unwrap();
    /// assert_eq!(pool.stats().size, 2);
    /// let leases: Vec<_> = (0..5).map(|_| pool.checkout().unwrap()).collect();
    /// assert_eq!(pool.stats().leased, 5); // opened on demand, up to 8
    /// # drop(leases);
    /// ```
    pub fn min_idle(mut self, min_idle: usize) -> Self {
        self.min_idle = Some(min_idle);
        self
    }

    /// Closes a worker older than `lifetime` when it is next idle or returned (never while
    /// leased), and starts another in its place. Set it a little under the server's own
    /// connection timeout. Default: none.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cylinder::Pool;
    ///
    /// let pool = Pool::builder()
    ///     .size(2)
    ///     .max_lifetime(Duration::from_secs(30 * 60))
    ///     .build(|| Ok(()))
    ///     .unwrap();
    /// assert_eq!(pool.stats().size, 2);
    /// ```
    pub fn max_lifetime(mut self, lifetime: Duration) -> Self {
        self.max_lifetime = Some(lifetime);
        self
    }

    /// Closes idle workers beyond `min_idle` once they have been idle this long. Default:
    /// none.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cylinder::Pool;
    ///
    /// let pool = Pool::builder()
    ///     .size(4)
    ///     .min_idle(1)
    ///     .idle_timeout(Duration::from_secs(600))
    ///     .build(|| Ok(()))
    ///     .unwrap();
    /// assert_eq!(pool.stats().size, 1);
    /// ```
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = Some(timeout);
        self
    }

    /// How long [`Pool::checkout`] and [`Pool::transaction`] wait for a free worker.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cylinder::{Error, Pool};
    ///
    /// let pool = Pool::builder()
    ///     .size(1)
    ///     .checkout_timeout(Duration::from_millis(10))
    ///     .build(|| Ok(()))
    ///     .unwrap();
    /// let _held = pool.checkout().unwrap();
    /// assert!(matches!(pool.checkout(), Err(Error::Timeout { .. })));
    /// ```
    pub fn checkout_timeout(mut self, timeout: Duration) -> Self {
        self.checkout_timeout = timeout;
        self
    }

    /// How long the pool waits before it tries again after a start failed (at least 10 ms,
    /// the reaper's smallest tick, whatever is given: a client retrying against a dead
    /// server never spins). While its server is down the pool probes it once per delay,
    /// also with `min_idle(0)`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cylinder::Pool;
    ///
    /// let pool = Pool::builder()
    ///     .size(2)
    ///     .reconnect_delay(Duration::from_millis(100))
    ///     .build(|| Ok(()))
    ///     .unwrap();
    /// assert_eq!(pool.stats().size, 2);
    /// ```
    pub fn reconnect_delay(mut self, delay: Duration) -> Self {
        self.reconnect_delay = delay;
        self
    }

    /// A start that has not finished after `timeout` counts as failed (its worker, if it
    /// comes later, is dropped). Default: none.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cylinder::Pool;
    ///
    /// let pool = Pool::builder()
    ///     .size(1)
    ///     .start_timeout(Duration::from_secs(5))
    ///     .build(|| Ok(()))
    ///     .unwrap();
    /// assert_eq!(pool.stats().size, 1);
    /// ```
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = Some(timeout);
        self
    }

    /// What a lease does when its client panics while holding it.
    ///
    /// ```
    /// use cylinder::{OnClientPanic, Pool};
    ///
    /// let pool = Pool::builder()
    ///     .size(1)
    ///     .on_client_panic(OnClientPanic::Discard)
    ///     .build(|| Ok(()))
    ///     .unwrap();
    /// let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
    ///     let _lease = pool.checkout().unwrap();
    ///     panic!("the client fails while holding its lease");
    /// }));
    /// assert_eq!(pool.stats().discards, 1); // dropped, and replaced
    /// ```
    pub fn on_client_panic(mut self, policy: OnClientPanic) -> Self {
        self.on_client_panic = policy;
        self
    }

    /// How long a blocked checkout may be passed over. Until a waiter has waited this long, a
    /// released worker goes back to the pool and, unless enough waiters are already on their
    /// way, one is woken to compete for it with running threads (fast: no context switch per
    /// lease); after that, the next release hands the worker straight to the longest waiter.
    /// `Duration::ZERO` makes every hand-off strictly first come, first served.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cylinder::Pool;
    ///
    /// let strict = Pool::builder()
    ///     .size(2)
    ///     .fifo_after(Duration::ZERO)
    ///     .build(|| Ok(()))
    ///     .unwrap();
    /// assert_eq!(strict.stats().free, 2);
    /// ```
    pub fn fifo_after(mut self, patience: Duration) -> Self {
        self.fifo_after = patience;
        self
    }

    /// The order in which free workers are reused (see [`QueueMode`]): most recently released
    /// first (the default, so that `idle_timeout` shrinks a lightly used pool to what it
    /// uses), or longest idle first (every worker used in turn). Either way a thread gets its
    /// own parked worker back first.
    ///
    /// ```
    /// use cylinder::{Pool, QueueMode};
    ///
    /// let pool = Pool::builder()
    ///     .size(2)
    ///     .queue_mode(QueueMode::Fifo)
    ///     .build(|| Ok(()))
    ///     .unwrap();
    /// drop(pool.checkout().unwrap());
    /// ```
    pub fn queue_mode(mut self, mode: QueueMode) -> Self {
        self.queue_mode = mode;
        self
    }

    /// How many temporary workers the pool may open beyond `size` when every worker is
    /// leased (poolboy's `max_overflow`). While more than `size` are open, a returning worker
    /// goes to a waiter if one waits, and is otherwise closed. Default 0.
    ///
    /// ```
    /// use cylinder::Pool;
    ///
    /// let pool = Pool::builder().size(1).max_overflow(1).build(|| Ok(())).unwrap();
    /// let a = pool.try_checkout().unwrap();
    /// let b = pool.try_checkout().unwrap(); // a temporary worker
    /// assert_eq!(pool.stats().overflow, 1);
    /// drop((a, b));
    /// assert_eq!(pool.stats().overflow, 0); // closed on return, nobody waiting
    /// ```
    pub fn max_overflow(mut self, extra: usize) -> Self {
        self.max_overflow = extra;
        self
    }

    /// Reports a lease held longer than `limit`, once, through `log` (with how long it has
    /// been held) and as [`Event::SlowLease`]. Default: off, and then a checkout does not read
    /// the clock.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cylinder::Pool;
    ///
    /// let pool = Pool::builder()
    ///     .size(1)
    ///     .warn_after(Duration::from_secs(10))
    ///     .build(|| Ok(()))
    ///     .unwrap();
    /// assert_eq!(pool.stats().size, 1);
    /// ```
    pub fn warn_after(mut self, limit: Duration) -> Self {
        self.warn_after = Some(limit);
        self
    }

    /// A check run on a worker before it is leased (r2d2's `test_on_check_out` with
    /// `is_valid`): it returns `bool` or a `Result` whose error is the cause. A worker that
    /// fails it (or whose check panics) is dropped and replaced, and the next worker is tried
    /// within the caller's timeout. It runs on a new worker, and then only on a worker idle
    /// at least [`check_after_idle`](Self::check_after_idle) (500 ms by default). Default:
    /// none.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cylinder::Pool;
    ///
    /// let pool = Pool::builder()
    ///     .size(2)
    ///     .check_after_idle(Duration::ZERO) // before every lease
    ///     .test_on_checkout(|conn: &mut Vec<u8>| conn.len() < 1024)
    ///     .build(|| Ok(Vec::new()))
    ///     .unwrap();
    /// pool.checkout().unwrap().extend_from_slice(&[0; 4096]); // now fails its check
    /// assert!(pool.checkout().unwrap().is_empty());
    /// ```
    pub fn test_on_checkout<R: CheckOutcome>(
        mut self,
        check: impl Fn(&mut W) -> R + Send + Sync + 'static,
    ) -> Self {
        self.check = Some(Box::new(move |worker| check(worker).into_result()));
        self
    }

    /// Whether the check (a `test_on_checkout` closure, or a [`Manager`]'s `check`) runs
    /// before each lease. Default: true, as r2d2 does; the cost is one check per checkout (a
    /// round trip to the server for a database), so a pool whose connections rarely die may
    /// turn it off and rely on `is_broken` and the errors its clients see.
    ///
    /// ```
    /// use cylinder::Pool;
    ///
    /// let pool = Pool::builder()
    ///     .size(1)
    ///     .test_on_checkout(|_: &mut u8| false)
    ///     .check_on_checkout(false) // the check above never runs
    ///     .build(|| Ok(0))
    ///     .unwrap();
    /// assert!(pool.checkout().is_ok());
    /// ```
    pub fn check_on_checkout(mut self, on: bool) -> Self {
        self.check_on_checkout = on;
        self
    }

    /// The checkout check runs only on a worker that has been idle at least this long
    /// (since its last lease ended, its start, or its last keepalive check): one used a
    /// moment ago is as good as checked, and a check is a round trip to the server. Default:
    /// 500 ms (HikariCP's `aliveBypassWindowMs`); `Duration::ZERO` checks before every lease.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use cylinder::Pool;
    ///
    /// let checks = Arc::new(AtomicUsize::new(0));
    /// let count = checks.clone();
    /// let pool = Pool::builder()
    ///     .size(1)
    ///     .check_after_idle(Duration::from_secs(60))
    ///     .test_on_checkout(move |_: &mut ()| { count.fetch_add(1, Ordering::Relaxed); true })
    ///     .build(|| Ok(()))
    ///     .unwrap();
    /// for _ in 0..10 {
    ///     pool.checkout().unwrap();
    /// }
    /// // Checked once when it started; never again while it is in use.
    /// assert_eq!(checks.load(Ordering::Relaxed), 1);
    /// ```
    pub fn check_after_idle(mut self, idle: Duration) -> Self {
        self.check_after_idle = idle;
        self
    }

    /// Has the reaper check each idle worker that has not been used (or checked) for this
    /// long, with the pool's check (`test_on_checkout`, or the [`Manager`]'s `check`), one
    /// at a time, never a leased one: a connection the server or a firewall cut during a
    /// quiet night is replaced before a client meets it (HikariCP's `keepaliveTime`).
    /// Default: off.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use cylinder::Pool;
    ///
    /// struct Conn { cut: Arc<AtomicBool> }
    ///
    /// let cut = Arc::new(AtomicBool::new(false));
    /// let starts = cut.clone();
    /// let pool = Pool::builder()
    ///     .size(1)
    ///     .keepalive(Duration::from_millis(20))
    ///     .test_on_checkout(|conn: &mut Conn| !conn.cut.load(Ordering::Acquire))
    ///     .build(move || Ok(Conn { cut: starts.clone() }))
    ///     .unwrap();
    /// cut.store(true, Ordering::Release); // the firewall drops the idle connection
    /// // The reaper finds it within a few tens of milliseconds: no client is involved.
    /// let deadline = std::time::Instant::now() + Duration::from_secs(5);
    /// while pool.stats().failed_checks == 0 && std::time::Instant::now() < deadline {
    ///     std::thread::sleep(Duration::from_millis(5));
    /// }
    /// cut.store(false, Ordering::Release); // later starts are fine
    /// assert!(pool.stats().failed_checks >= 1); // found by the reaper, not by a client
    /// assert!(pool.checkout().is_ok());
    /// ```
    pub fn keepalive(mut self, idle: Duration) -> Self {
        self.keepalive = Some(idle);
        self
    }

    /// A quick test run on a worker when its lease ends (r2d2's `has_broken`): `true` drops
    /// it and the pool starts another. Default: none.
    ///
    /// ```
    /// use cylinder::Pool;
    ///
    /// let pool = Pool::builder()
    ///     .size(1)
    ///     .is_broken(|conn: &mut Option<u32>| conn.is_none())
    ///     .build(|| Ok(Some(7)))
    ///     .unwrap();
    /// pool.checkout().unwrap().take(); // breaks it
    /// assert_eq!(*pool.checkout().unwrap(), Some(7)); // a fresh one
    /// ```
    pub fn is_broken(mut self, test: impl Fn(&mut W) -> bool + Send + Sync + 'static) -> Self {
        self.is_broken = Some(Box::new(test));
        self
    }

    /// Makes a returned worker fit for its next holder (deadpool's `recycle`), e.g. rolls back
    /// a transaction its client left open. An error (or panic) drops the worker and the pool
    /// starts another. Default: none.
    ///
    /// ```
    /// use cylinder::{BoxError, Pool};
    ///
    /// let pool = Pool::builder()
    ///     .size(1)
    ///     .reset(|buffer: &mut Vec<u8>| -> Result<(), BoxError> {
    ///         buffer.clear();
    ///         Ok(())
    ///     })
    ///     .build(|| Ok(Vec::new()))
    ///     .unwrap();
    /// pool.checkout().unwrap().push(1);
    /// assert!(pool.checkout().unwrap().is_empty());
    /// ```
    pub fn reset<E: Into<BoxError>>(
        mut self,
        reset: impl Fn(&mut W) -> Result<(), E> + Send + Sync + 'static,
    ) -> Self {
        self.reset = Some(Box::new(move |worker| reset(worker).map_err(Into::into)));
        self
    }

    /// How to tell whether a worker can still serve, by a look that needs no exclusive use
    /// (see [`Manager::is_alive`]): asked before each lease, on return, by the reaper's
    /// sweep, and right after each start (`false` there is a failed start: dead on arrival).
    /// A dead worker is retired and replaced. For a pool of [`Actor`](crate::Actor)s:
    /// `.is_alive(Actor::is_alive)`; for a type with `cylinder::Worker`: `.is_alive(T::is_alive)`.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use cylinder::Pool;
    ///
    /// struct Conn { open: AtomicBool }
    ///
    /// let pool = Pool::builder()
    ///     .size(1)
    ///     .is_alive(|conn: &Conn| conn.open.load(Ordering::Acquire))
    ///     .build(|| Ok(Conn { open: AtomicBool::new(true) }))
    ///     .unwrap();
    /// let lease = pool.checkout().unwrap();
    /// lease.open.store(false, Ordering::Release); // the server hung up
    /// drop(lease); // found dead on return: dropped, and another started in its place
    /// assert!(pool.checkout().unwrap().open.load(Ordering::Acquire));
    /// ```
    pub fn is_alive(mut self, test: impl Fn(&W) -> bool + Send + Sync + 'static) -> Self {
        self.is_alive = Some(Box::new(test));
        self
    }

    /// Runs on every new worker right after its start (from the closure or from a
    /// [`Manager`], after the manager's `start`), before it joins the pool: a connection
    /// customizer (r2d2's `connection_customizer`), e.g. `PRAGMA busy_timeout` or
    /// `SET search_path`. An error (or panic) makes it a failed start with that cause:
    /// the worker is dropped and the pool retries after `reconnect_delay`.
    ///
    /// ```
    /// use cylinder::{BoxError, Pool};
    ///
    /// let pool = Pool::builder()
    ///     .size(2)
    ///     .on_start(|conn: &mut Vec<&str>| -> Result<(), BoxError> {
    ///         conn.push("PRAGMA busy_timeout = 5000");
    ///         Ok(())
    ///     })
    ///     .build(|| Ok(Vec::new()))
    ///     .unwrap();
    /// assert_eq!(*pool.checkout().unwrap(), ["PRAGMA busy_timeout = 5000"]);
    ///
    /// let refused = Pool::builder()
    ///     .size(1)
    ///     .on_start(|_: &mut u8| -> Result<(), BoxError> { Err("permission denied".into()) })
    ///     .build(|| Ok(0))
    ///     .unwrap_err();
    /// assert_eq!(refused.cause().unwrap().to_string(), "permission denied");
    /// ```
    pub fn on_start<E: Into<BoxError>>(
        mut self,
        hook: impl Fn(&mut W) -> Result<(), E> + Send + Sync + 'static,
    ) -> Self {
        self.on_start = Some(Box::new(move |worker| hook(worker).map_err(Into::into)));
        self
    }

    /// A callback for lifecycle [`Event`]s, e.g. to feed metrics. It runs on the thread where
    /// the event happens, with no pool lock held; a panic in it is contained and logged.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::sync::Arc;
    /// use cylinder::{Event, Pool};
    ///
    /// let started = Arc::new(AtomicUsize::new(0));
    /// let count = started.clone();
    /// let pool = Pool::builder()
    ///     .size(3)
    ///     .on_event(move |event| {
    ///         if *event == Event::WorkerStarted {
    ///             count.fetch_add(1, Ordering::Relaxed);
    ///         }
    ///     })
    ///     .build(|| Ok(()))
    ///     .unwrap();
    /// assert_eq!(started.load(Ordering::Relaxed), 3);
    /// ```
    pub fn on_event(mut self, callback: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        self.events = Some(std::sync::Arc::new(callback));
        self
    }

    /// The pool's name in log lines and thread names.
    ///
    /// ```
    /// use cylinder::Pool;
    ///
    /// let pool = Pool::builder().size(1).name("db").build(|| Ok(())).unwrap();
    /// assert!(format!("{pool:?}").contains("db"));
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Starts `min_idle` workers from `start` (in parallel, a few at a time) and returns the
    /// pool. A worker that is dropped, broken or detached is replaced from `start`.
    ///
    /// ```
    /// use cylinder::Pool;
    ///
    /// let pool = Pool::builder().size(4).build(|| Ok(String::from("conn"))).unwrap();
    /// assert_eq!(*pool.checkout().unwrap(), "conn");
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a bad option; [`Error::Disconnected`] with the last
    /// start's error as its cause when no worker at all could be started (fail fast: use
    /// [`build_unchecked`](Self::build_unchecked) for a database that may still be down).
    pub fn build(
        self,
        start: impl Fn() -> Result<W, BoxError> + Send + Sync + 'static,
    ) -> Result<Pool<W>, Error> {
        let (options, hooks) = self.hooks(start);
        let uses = Uses::of(&hooks);
        Pool::start(options, Box::new(hooks), uses, true)
    }

    /// Returns the pool at once, whatever the state of what `start` connects to: workers start
    /// in the background and are retried every `reconnect_delay` until they do. Checkouts
    /// meanwhile wait (up to their timeout) or fail fast with the start's error as the cause.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a bad option.
    ///
    /// ```
    /// use std::error::Error as _;
    /// use std::time::Duration;
    /// use cylinder::{BoxError, Error, Pool};
    ///
    /// let pool = Pool::builder()
    ///     .size(2)
    ///     .build_unchecked(|| -> Result<u32, BoxError> { Err("database is down".into()) })
    ///     .unwrap();
    /// let err = pool.checkout_timeout(Duration::from_secs(5)).unwrap_err();
    /// assert!(matches!(err, Error::Disconnected { .. }));
    /// assert_eq!(err.source().unwrap().to_string(), "database is down");
    /// ```
    pub fn build_unchecked(
        self,
        start: impl Fn() -> Result<W, BoxError> + Send + Sync + 'static,
    ) -> Result<Pool<W>, Error> {
        let (options, hooks) = self.hooks(start);
        let uses = Uses::of(&hooks);
        Pool::start(options, Box::new(hooks), uses, false)
    }

    /// Starts the pool's workers from `manager`, as [`build`](Self::build) does from a
    /// closure. Hooks set on the builder run after the manager's own: `test_on_checkout`
    /// after its `check`, `reset` after its `reset`, `is_broken` and `is_alive` as a second
    /// opinion (either one saying broken or dead retires the worker), and `on_start` after
    /// its `start`: so a manager from another crate (an r2d2 one, say) gets a connection
    /// customizer or a check of your own without a wrapper.
    ///
    /// # Errors
    /// As [`build`](Self::build).
    ///
    /// ```
    /// use cylinder::{BoxError, Manager, Pool};
    ///
    /// struct Counter;
    /// impl Manager for Counter {
    ///     type Worker = u64;
    ///     fn start(&self) -> Result<u64, BoxError> {
    ///         Ok(0)
    ///     }
    /// }
    ///
    /// let pool = Pool::builder()
    ///     .size(2)
    ///     .on_start(|n: &mut u64| -> Result<(), BoxError> {
    ///         *n = 42; // e.g. `PRAGMA busy_timeout` on a fresh connection
    ///         Ok(())
    ///     })
    ///     .build_with(Counter)
    ///     .unwrap();
    /// assert_eq!(*pool.checkout().unwrap(), 42);
    /// ```
    pub fn build_with(self, manager: impl Manager<Worker = W>) -> Result<Pool<W>, Error> {
        let (options, manager, uses) = self.with_manager(manager);
        Pool::start(options, manager, uses, true)
    }

    /// [`build_unchecked`](Self::build_unchecked) with a [`Manager`].
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a bad option.
    ///
    /// ```
    /// use cylinder::{BoxError, Manager, Pool};
    ///
    /// struct Down;
    /// impl Manager for Down {
    ///     type Worker = ();
    ///     fn start(&self) -> Result<(), BoxError> {
    ///         Err("not yet".into())
    ///     }
    /// }
    ///
    /// let pool = Pool::builder().size(1).build_unchecked_with(Down).unwrap();
    /// assert!(pool.try_checkout().is_err());
    /// ```
    pub fn build_unchecked_with(self, manager: impl Manager<Worker = W>) -> Result<Pool<W>, Error> {
        let (options, manager, uses) = self.with_manager(manager);
        Pool::start(options, manager, uses, false)
    }

    /// `manager`, with the builder's hooks (if any) run after its own.
    fn with_manager(
        mut self,
        manager: impl Manager<Worker = W>,
    ) -> (Self, Box<dyn Manager<Worker = W>>, Uses) {
        if self.check.is_none()
            && self.is_broken.is_none()
            && self.reset.is_none()
            && self.is_alive.is_none()
        {
            return (self, Box::new(manager), Uses::ALL);
        }
        // Each closure below holds a share of the manager and the builder's own hook: two
        // user values, each dropped on its own, contained (`Contained`).
        let manager = std::sync::Arc::new(manager);
        let share = || Contained::new(manager.clone());
        let hooks = Hooks {
            start: {
                let manager = share();
                Box::new(move || manager.start())
            },
            check: {
                let (manager, own) = (share(), Contained::new(self.check.take()));
                Some(Box::new(move |worker: &mut W| {
                    manager.check(worker)?;
                    own.as_ref().map_or(Ok(()), |check| check(worker))
                }))
            },
            is_broken: {
                let (manager, own) = (share(), Contained::new(self.is_broken.take()));
                Some(Box::new(move |worker: &mut W| {
                    manager.is_broken(worker) || own.as_ref().is_some_and(|test| test(worker))
                }))
            },
            reset: {
                let (manager, own) = (share(), Contained::new(self.reset.take()));
                Some(Box::new(move |worker: &mut W| {
                    manager.reset(worker)?;
                    own.as_ref().map_or(Ok(()), |reset| reset(worker))
                }))
            },
            is_alive: {
                let (manager, own) = (share(), Contained::new(self.is_alive.take()));
                Some(Box::new(move |worker: &W| {
                    manager.is_alive(worker) && own.as_ref().map_or(true, |test| test(worker))
                }))
            },
        };
        // The last share is one of the closures' (dropped contained).
        drop(manager);
        (self, Box::new(hooks), Uses::ALL)
    }

    fn hooks(
        mut self,
        start: impl Fn() -> Result<W, BoxError> + Send + Sync + 'static,
    ) -> (Self, Hooks<W>) {
        let hooks = Hooks {
            start: Box::new(start),
            check: self.check.take(),
            is_broken: self.is_broken.take(),
            reset: self.reset.take(),
            is_alive: self.is_alive.take(),
        };
        (self, hooks)
    }

    /// Checks every option; returns `(size, min_idle)`.
    pub(crate) fn validate(&self) -> Result<(usize, usize), Error> {
        crate::error::valid_name(&self.name)?;
        let size = self
            .size
            .ok_or_else(|| Error::invalid("size", "must be set"))?;
        within("size", size, 1, MAX_POOL_SIZE)?;
        within("max_overflow", self.max_overflow, 0, MAX_POOL_SIZE - size)?;
        let min_idle = self.min_idle.unwrap_or(size);
        within("min_idle", min_idle, 0, size)?;
        positive("checkout_timeout", self.checkout_timeout)?;
        positive("reconnect_delay", self.reconnect_delay)?;
        for (option, value) in [
            ("max_lifetime", self.max_lifetime),
            ("idle_timeout", self.idle_timeout),
            ("start_timeout", self.start_timeout),
            ("warn_after", self.warn_after),
            ("keepalive", self.keepalive),
        ] {
            if let Some(value) = value {
                positive(option, value)?;
            }
        }
        if self.idle_timeout.is_some() && min_idle == size && self.max_overflow == 0 {
            crate::contain::logged!(
                debug,
                "cylinder: {}: idle_timeout has no effect while min_idle equals size",
                self.name
            );
        }
        Ok((size, min_idle))
    }
}

/// Rejects `value` outside `low..=high` for `option`.
pub(crate) fn within(
    option: &'static str,
    value: usize,
    low: usize,
    high: usize,
) -> Result<(), Error> {
    if value < low || value > high {
        let reason = if value < low {
            format!("must be at least {low}, got {value}")
        } else {
            format!("must be at most {high}, got {value}")
        };
        return Err(Error::invalid(option, reason));
    }
    Ok(())
}

impl<W> std::fmt::Debug for PoolBuilder<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("size", &self.size)
            .field("min_idle", &self.min_idle)
            .field("max_lifetime", &self.max_lifetime)
            .field("idle_timeout", &self.idle_timeout)
            .field("checkout_timeout", &self.checkout_timeout)
            .field("reconnect_delay", &self.reconnect_delay)
            .field("start_timeout", &self.start_timeout)
            .field("on_client_panic", &self.on_client_panic)
            .field("fifo_after", &self.fifo_after)
            .field("queue_mode", &self.queue_mode)
            .field("max_overflow", &self.max_overflow)
            .field("warn_after", &self.warn_after)
            .field("test_on_checkout", &self.check.is_some())
            .field("check_on_checkout", &self.check_on_checkout)
            .field("is_broken", &self.is_broken.is_some())
            .field("reset", &self.reset.is_some())
            .field("is_alive", &self.is_alive.is_some())
            .field("check_after_idle", &self.check_after_idle)
            .field("keepalive", &self.keepalive)
            .field("on_start", &self.on_start.is_some())
            .field("on_event", &self.events.is_some())
            .field("name", &self.name)
            .finish()
    }
}
