//! The balancer's builder: every option with its default, validated when the balancer is built.

use std::marker::PhantomData;
use std::time::Duration;

use crate::balancer::select::Strategy;
use crate::balancer::supervisor::Supervisor;
use crate::balancer::Balancer;
use crate::error::{positive, Error};
use crate::event::{Event, EventHook};
use crate::worker::Worker;

/// The options of a [`Balancer`], revolver's. Made by [`Balancer::builder`].
///
/// | option | default |
/// |---|---|
/// | `min_alive_ratio` | 1.0: reload from the supervisor as soon as one worker died |
/// | `reconnect_delay` | 1 s |
/// | `max_queue_len` | none: queue lengths are not looked at |
/// | `connect_at_start` | true |
/// | `strategy` | [`Strategy::RoundRobin`] |
/// | `on_event` | none |
/// | `name` | `"balancer"` |
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use cylinder::{Balancer, BoxError, Error, Worker};
///
/// struct Node;
/// impl Worker for Node {}
///
/// let nodes = vec![Arc::new(Node), Arc::new(Node)];
/// let children = move || -> Result<Vec<Arc<Node>>, BoxError> { Ok(nodes.clone()) };
/// let balancer = Balancer::builder()
///     .min_alive_ratio(0.75)
///     .reconnect_delay(Duration::from_millis(200))
///     .max_queue_len(10)
///     .build_with(children)
///     .unwrap();
/// assert_eq!(balancer.len(), 2);
///
/// let bad = Balancer::builder().min_alive_ratio(f64::NAN).build_with(|| Ok(Vec::<Arc<Node>>::new()));
/// assert!(matches!(bad, Err(Error::InvalidConfig { option: "min_alive_ratio", .. })));
/// ```
#[must_use]
pub struct BalancerBuilder<W> {
    pub(crate) min_alive_ratio: f64,
    pub(crate) reconnect_delay: Duration,
    pub(crate) max_queue_len: Option<usize>,
    pub(crate) connect_at_start: bool,
    pub(crate) strategy: Strategy,
    pub(crate) events: Option<EventHook>,
    pub(crate) name: String,
    /// The set is the workers first listed, for the balancer's life (`build_pools`).
    pub(crate) fixed_set: bool,
    worker: PhantomData<fn() -> W>,
}

impl<W> Default for BalancerBuilder<W> {
    fn default() -> Self {
        BalancerBuilder {
            worker: PhantomData,
            min_alive_ratio: 1.0,
            reconnect_delay: Duration::from_secs(1),
            max_queue_len: None,
            connect_at_start: true,
            strategy: Strategy::RoundRobin,
            events: None,
            name: "balancer".to_string(),
            fixed_set: false,
        }
    }
}

impl<W: Worker> BalancerBuilder<W> {
    /// The share of workers (0.0 to 1.0) that must be alive; below it the reaper reloads the
    /// set from the supervisor, once per fall.
    pub fn min_alive_ratio(mut self, ratio: f64) -> Self {
        self.min_alive_ratio = ratio;
        self
    }

    /// How long the reaper waits between attempts while disconnected.
    pub fn reconnect_delay(mut self, delay: Duration) -> Self {
        self.reconnect_delay = delay;
        self
    }

    /// Skip workers whose [`Worker::queue_len`] is above `limit`; when all are,
    /// [`Balancer::get`] returns [`Error::Overload`].
    pub fn max_queue_len(mut self, limit: usize) -> Self {
        self.max_queue_len = Some(limit);
        self
    }

    /// With `false`, the balancer starts disconnected until [`Balancer::connect`].
    pub fn connect_at_start(mut self, connect: bool) -> Self {
        self.connect_at_start = connect;
        self
    }

    /// How [`Balancer::get`] picks among the live workers. Default: round-robin.
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// A callback for lifecycle [`Event`]s, e.g. to feed metrics. It runs on the thread where
    /// the event happens and must be quick; a panic in it is contained and logged.
    pub fn on_event(mut self, callback: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        self.events = Some(std::sync::Arc::new(callback));
        self
    }

    /// The balancer's name in log lines and thread names.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Balances over `supervisor`'s children. A supervisor that is down at start is not an
    /// error: the balancer starts disconnected (its `get` says why) and the reaper keeps
    /// trying, as revolver does.
    ///
    /// # Errors
    ///
    /// - [`Error::InvalidConfig`] naming the option: `min_alive_ratio` outside `0.0..=1.0`
    ///   (or NaN), a zero `reconnect_delay`.
    /// - [`Error::Disconnected`] if the reaper thread cannot be started (the OS error is its
    ///   [`source()`](std::error::Error::source)).
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
    ///     .build_with(|| -> Result<Vec<Arc<Node>>, BoxError> { Err("no route to host".into()) })
    ///     .unwrap();
    /// let err = down.get().unwrap_err();
    /// assert_eq!(err.source().unwrap().to_string(), "no route to host");
    /// ```
    pub fn build_with(self, supervisor: impl Supervisor<W>) -> Result<Balancer<W>, Error> {
        if let Err(err) = self.validate() {
            // The supervisor (and what it captured) is user code to drop.
            crate::contain::dispose(supervisor);
            return Err(err);
        }
        Balancer::start(self, Box::new(supervisor))
    }

    fn validate(&self) -> Result<(), Error> {
        crate::error::valid_name(&self.name)?;
        if !(0.0..=1.0).contains(&self.min_alive_ratio) {
            return Err(Error::invalid(
                "min_alive_ratio",
                format!("must be within 0.0..=1.0, got {}", self.min_alive_ratio),
            ));
        }
        positive("reconnect_delay", self.reconnect_delay).map(|_| ())
    }
}

/// The event callback of a builder that is dropped (unused, or by a `build` that fails) is
/// user code to drop, contained.
impl<W> Drop for BalancerBuilder<W> {
    fn drop(&mut self) {
        crate::contain::dispose(self.events.take());
    }
}

impl<W> std::fmt::Debug for BalancerBuilder<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BalancerBuilder")
            .field("min_alive_ratio", &self.min_alive_ratio)
            .field("reconnect_delay", &self.reconnect_delay)
            .field("max_queue_len", &self.max_queue_len)
            .field("connect_at_start", &self.connect_at_start)
            .field("strategy", &self.strategy)
            .field("on_event", &self.events.is_some())
            .field("name", &self.name)
            .finish()
    }
}
