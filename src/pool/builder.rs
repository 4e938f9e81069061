//! The pool's builder: every option with its default, validated when the pool is built.

use std::marker::PhantomData;
use std::time::Duration;

use crate::balancer::{Factory, Supervisor};
use crate::error::positive;
use crate::error::{BoxError, Error};
use crate::event::{Event, EventHook};
use crate::pool::Pool;
use crate::worker::Worker;

/// The largest pool [`PoolBuilder::size`] accepts: its free queue is allocated up front.
pub const MAX_POOL_SIZE: usize = 1 << 20;

/// A check run on a worker before it is leased.
pub(crate) type HealthCheck<W> = std::sync::Arc<dyn Fn(&W) -> bool + Send + Sync>;

/// What happens to a lease whose client panics while holding it.
///
/// ```
/// use cylinder::{OnClientPanic, Pool, Worker};
///
/// struct Conn;
/// impl Worker for Conn {}
///
/// let pool = Pool::builder()
///     .size(2)
///     .on_client_panic(OnClientPanic::Discard)
///     .build(|| Ok(Conn))
///     .unwrap();
/// assert_eq!(pool.stats().size, 2);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnClientPanic {
    /// The worker goes back to the pool (gruff's choice).
    #[default]
    Release,
    /// The worker may hold broken state: it is retired and replaced through the supervisor.
    Discard,
}

/// The options of a [`Pool`]. Made by [`Pool::builder`].
///
/// | option | default |
/// |---|---|
/// | `size` | required for [`build`](Self::build); for [`build_with`](Self::build_with), the size the supervisor should keep |
/// | `checkout_timeout` | 30 s (`Duration::MAX`: wait without limit) |
/// | `reconnect_delay` | 1 s |
/// | `on_client_panic` | [`OnClientPanic::Release`] |
/// | `fifo_after` | 1 ms: a waiter that waited this long gets the next released worker first |
/// | `max_overflow` | 0: no temporary workers |
/// | `warn_after` | off: no slow-lease reports |
/// | `test_on_checkout` | none |
/// | `on_event` | none |
/// | `name` | `"pool"` (in log lines and the reaper thread's name) |
///
/// ```
/// use std::time::Duration;
/// use cylinder::{Error, Pool, Worker};
///
/// struct Conn;
/// impl Worker for Conn {}
///
/// let pool = Pool::builder()
///     .size(4)
///     .checkout_timeout(Duration::from_millis(500))
///     .name("db")
///     .build(|| Ok(Conn))
///     .unwrap();
/// assert_eq!(pool.stats().free, 4);
///
/// let bad = Pool::builder().size(4).checkout_timeout(Duration::ZERO).build(|| Ok(Conn));
/// assert!(matches!(bad, Err(Error::InvalidConfig { option: "checkout_timeout", .. })));
/// ```
#[must_use]
pub struct PoolBuilder<W> {
    pub(crate) size: Option<usize>,
    pub(crate) checkout_timeout: Duration,
    pub(crate) reconnect_delay: Duration,
    pub(crate) on_client_panic: OnClientPanic,
    pub(crate) fifo_after: Duration,
    pub(crate) max_overflow: usize,
    pub(crate) warn_after: Option<Duration>,
    pub(crate) health_check: Option<HealthCheck<W>>,
    pub(crate) events: Option<EventHook>,
    pub(crate) name: String,
    worker: PhantomData<fn() -> W>,
}

impl<W> Default for PoolBuilder<W> {
    fn default() -> Self {
        PoolBuilder {
            worker: PhantomData,
            size: None,
            checkout_timeout: Duration::from_secs(30),
            reconnect_delay: Duration::from_secs(1),
            on_client_panic: OnClientPanic::Release,
            fifo_after: Duration::from_millis(1),
            max_overflow: 0,
            warn_after: None,
            health_check: None,
            events: None,
            name: "pool".to_string(),
        }
    }
}

impl<W: Worker> PoolBuilder<W> {
    /// How many workers the pool keeps (1 to [`MAX_POOL_SIZE`]).
    pub fn size(mut self, size: usize) -> Self {
        self.size = Some(size);
        self
    }

    /// How long [`Pool::checkout`] and [`Pool::transaction`] wait for a free worker.
    pub fn checkout_timeout(mut self, timeout: Duration) -> Self {
        self.checkout_timeout = timeout;
        self
    }

    /// How long the reaper waits between attempts while the supervisor fails.
    pub fn reconnect_delay(mut self, delay: Duration) -> Self {
        self.reconnect_delay = delay;
        self
    }

    /// What a lease does when its client panics while holding it.
    pub fn on_client_panic(mut self, policy: OnClientPanic) -> Self {
        self.on_client_panic = policy;
        self
    }

    /// How long a blocked checkout may be passed over. Until a waiter has waited this long, a
    /// released worker goes back to the pool and the longest waiter is woken to compete for
    /// it with running threads (fast: no context switch per lease); after that, the next
    /// release hands the worker straight to the longest waiter. `Duration::ZERO` makes every
    /// hand-off strictly first come, first served.
    pub fn fifo_after(mut self, patience: Duration) -> Self {
        self.fifo_after = patience;
        self
    }

    /// How many temporary workers the pool may start, beyond `size`, when every worker is
    /// leased (poolboy's `max_overflow`). An overflow worker is started by the same closure
    /// as the others, goes to a waiter when it comes back if one waits, and is otherwise
    /// retired. Needs a pool built with [`build`](Self::build). Default 0.
    pub fn max_overflow(mut self, extra: usize) -> Self {
        self.max_overflow = extra;
        self
    }

    /// Reports a lease held longer than `limit`, once, through `log` (with how long it has
    /// been held) and as [`Event::SlowLease`]. The reaper looks every `limit / 2`. Default:
    /// off, and then a checkout does not read the clock.
    pub fn warn_after(mut self, limit: Duration) -> Self {
        self.warn_after = Some(limit);
        self
    }

    /// A check run on a worker before it is leased (r2d2's `test_on_check_out`). A worker
    /// that fails it (returns `false` or panics) is retired and replaced through the
    /// supervisor, and the next worker is tried, within the caller's timeout. Default: none.
    pub fn test_on_checkout(mut self, check: impl Fn(&W) -> bool + Send + Sync + 'static) -> Self {
        self.health_check = Some(std::sync::Arc::new(check));
        self
    }

    /// A callback for lifecycle [`Event`]s, e.g. to feed metrics. It runs on the thread where
    /// the event happens and must be quick; a panic in it is contained and logged.
    pub fn on_event(mut self, callback: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        self.events = Some(std::sync::Arc::new(callback));
        self
    }

    /// The pool's name in log lines and thread names.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Starts `size` workers from `start` under a [`Factory`] supervisor, which restarts the
    /// ones that die. Fails if the options are bad or no worker could be started.
    pub fn build(
        self,
        start: impl Fn() -> Result<W, BoxError> + Send + Sync + 'static,
    ) -> Result<Pool<W>, Error> {
        let size = self
            .size
            .ok_or_else(|| Error::invalid("size", "must be set to build from a closure"))?;
        self.validate()?;
        let factory = std::sync::Arc::new(Factory::new(size, start));
        Pool::start(self, Box::new(factory.clone()), Some(factory))
    }

    /// Leases the children of an existing supervisor. `size`, if set, is how many children
    /// the supervisor should keep: fewer makes the reaper retry every `reconnect_delay`.
    pub fn build_with(self, supervisor: impl Supervisor<W>) -> Result<Pool<W>, Error> {
        self.validate()?;
        if self.max_overflow > 0 {
            return Err(Error::invalid(
                "max_overflow",
                "needs a pool built from a start closure (PoolBuilder::build)",
            ));
        }
        Pool::start(self, Box::new(supervisor), None)
    }

    fn validate(&self) -> Result<(), Error> {
        match self.size {
            Some(0) => return Err(Error::invalid("size", "must be at least 1, got 0")),
            Some(size) if size > MAX_POOL_SIZE => {
                return Err(Error::invalid(
                    "size",
                    format!("must be at most {MAX_POOL_SIZE}, got {size}"),
                ))
            }
            _ => {}
        }
        positive("checkout_timeout", self.checkout_timeout)?;
        if let Some(limit) = self.warn_after {
            positive("warn_after", limit)?;
        }
        if self.max_overflow > MAX_POOL_SIZE {
            return Err(Error::invalid(
                "max_overflow",
                format!("must be at most {MAX_POOL_SIZE}, got {}", self.max_overflow),
            ));
        }
        positive("reconnect_delay", self.reconnect_delay)?;
        Ok(())
    }
}

impl<W> std::fmt::Debug for PoolBuilder<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("size", &self.size)
            .field("checkout_timeout", &self.checkout_timeout)
            .field("reconnect_delay", &self.reconnect_delay)
            .field("on_client_panic", &self.on_client_panic)
            .field("fifo_after", &self.fifo_after)
            .field("max_overflow", &self.max_overflow)
            .field("warn_after", &self.warn_after)
            .field("test_on_checkout", &self.health_check.is_some())
            .field("on_event", &self.events.is_some())
            .field("name", &self.name)
            .finish()
    }
}
