//! What a pool reports through the [`metrics`](https://docs.rs/metrics) facade (the cargo
//! feature `metrics`): its handles are registered once, when the pool is built, with the
//! label `pool = <name>`, so install the exporter's recorder before building pools.
//!
//! | series | kind | what |
//! |---|---|---|
//! | `cylinder_pool_checkout_wait_seconds` | histogram | time in line, for checkouts that waited |
//! | `cylinder_pool_start_seconds` | histogram | time to open a worker (failed starts too) |
//! | `cylinder_pool_lease_seconds` | histogram | how long each lease was held |
//! | `cylinder_pool_workers_closed_total` | counter, `reason` | workers closed, by why |
//! | `cylinder_pool_timeouts_total` | counter | blocking checkouts that timed out |
//! | `cylinder_pool_start_failures_total` | counter | starts that failed |
//! | `cylinder_pool_workers` | gauge, `state` | `idle`, `leased`, `starting` workers |
//! | `cylinder_pool_waiting` | gauge | checkouts in line |
//!
//! The gauges are sampled by the pool's reaper every [`SAMPLE_EVERY`]; the rest is recorded
//! where it happens. Without the feature every method here is empty and the lease clock
//! is a zero-sized type: nothing is compiled in.

use std::time::Duration;
#[cfg(feature = "metrics")]
use std::time::Instant;

#[cfg(feature = "metrics")]
use crate::last_word::LastWord;

use crate::event::Event;

/// How often the reaper samples the gauges.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Why a worker was closed: the `reason` label of `cylinder_pool_workers_closed_total`.
const REASONS: [&str; 8] = [
    "broken",
    "check_failed",
    "expired",
    "idle",
    "discarded",
    "taken",
    "died",
    "evicted",
];

/// The `reason` an event closes a worker for, if it closes one.
fn reason(event: &Event) -> Option<usize> {
    let name = match event {
        Event::WorkerBroken => "broken",
        Event::CheckFailed => "check_failed",
        Event::WorkerExpired => "expired",
        Event::WorkerIdleClosed => "idle",
        Event::WorkerDiscarded => "discarded",
        Event::WorkerTaken => "taken",
        Event::WorkerDied => "died",
        Event::WorkerEvicted => "evicted",
        _ => return None,
    };
    REASONS.iter().position(|reason| *reason == name)
}

/// When something the recorder measures began: a lease (kept in its entry), a start.
/// Zero-sized without the feature.
#[derive(Clone, Copy)]
pub(crate) struct Clock(#[cfg(feature = "metrics")] Option<Instant>);

impl Clock {
    pub(crate) const IDLE: Clock = Clock(
        #[cfg(feature = "metrics")]
        None,
    );

    /// How long it took, measured now that it ended.
    #[inline]
    pub(crate) fn took(self) -> Took {
        Took(
            #[cfg(feature = "metrics")]
            self.0.map(|began| began.elapsed()),
        )
    }
}

/// How long a lease was held or a start took, measured when it ended and recorded once the
/// thread holds nothing of the pool (the recorder is user code, and may block). Zero-sized
/// without the feature.
#[must_use]
#[derive(Clone, Copy)]
pub(crate) struct Took(#[cfg(feature = "metrics")] Option<Duration>);

/// The pool's metric handles.
#[cfg(feature = "metrics")]
pub(crate) struct PoolMetrics {
    checkout_wait: metrics::Histogram,
    start: metrics::Histogram,
    lease: metrics::Histogram,
    closed: [metrics::Counter; REASONS.len()],
    timeouts: metrics::Counter,
    start_failures: metrics::Counter,
    idle: metrics::Gauge,
    leased: metrics::Gauge,
    starting: metrics::Gauge,
    waiting: metrics::Gauge,
    /// The gauges' writes (see [`sample`](PoolMetrics::sample)).
    sampled: LastWord,
}

/// Nothing: the feature is off.
#[cfg(not(feature = "metrics"))]
pub(crate) struct PoolMetrics;

#[cfg(feature = "metrics")]
impl PoolMetrics {
    /// The pool's handles, registered with the installed recorder (user code, contained: a
    /// recorder that panics leaves the pool without metrics, not without a pool).
    pub(crate) fn new(pool: &str) -> Self {
        Self::register(pool).unwrap_or_else(|| {
            crate::contain::logged!(error, "cylinder: {pool}: the metrics recorder panicked");
            Self::off()
        })
    }

    /// Handles that record nothing.
    pub(crate) fn off() -> Self {
        PoolMetrics {
            checkout_wait: metrics::Histogram::noop(),
            start: metrics::Histogram::noop(),
            lease: metrics::Histogram::noop(),
            closed: std::array::from_fn(|_| metrics::Counter::noop()),
            timeouts: metrics::Counter::noop(),
            start_failures: metrics::Counter::noop(),
            idle: metrics::Gauge::noop(),
            leased: metrics::Gauge::noop(),
            starting: metrics::Gauge::noop(),
            waiting: metrics::Gauge::noop(),
            sampled: LastWord::new(),
        }
    }

    /// Each handle made contained, one at a time: if one panics, those made before it are
    /// dropped one at a time too (`Drop`), never during that panic's unwinding.
    fn register(pool: &str) -> Option<Self> {
        use metrics::{counter, gauge, histogram};
        made(Self::describe)?;
        let pool = pool.to_string();
        let state = |state: &'static str| {
            made(|| gauge!("cylinder_pool_workers", "pool" => pool.clone(), "state" => state))
        };
        let mut metrics = Self::off();
        metrics.checkout_wait =
            made(|| histogram!("cylinder_pool_checkout_wait_seconds", "pool" => pool.clone()))?;
        metrics.start = made(|| histogram!("cylinder_pool_start_seconds", "pool" => pool.clone()))?;
        metrics.lease = made(|| histogram!("cylinder_pool_lease_seconds", "pool" => pool.clone()))?;
        for (closed, reason) in metrics.closed.iter_mut().zip(REASONS) {
            *closed = made(|| {
                counter!(
                    "cylinder_pool_workers_closed_total",
                    "pool" => pool.clone(),
                    "reason" => reason
                )
            })?;
        }
        metrics.timeouts =
            made(|| counter!("cylinder_pool_timeouts_total", "pool" => pool.clone()))?;
        metrics.start_failures =
            made(|| counter!("cylinder_pool_start_failures_total", "pool" => pool.clone()))?;
        metrics.idle = state("idle")?;
        metrics.leased = state("leased")?;
        metrics.starting = state("starting")?;
        metrics.waiting = made(|| gauge!("cylinder_pool_waiting", "pool" => pool.clone()))?;
        Some(metrics)
    }

    fn describe() {
        use metrics::Unit;
        metrics::describe_histogram!(
            "cylinder_pool_checkout_wait_seconds",
            Unit::Seconds,
            "Time a checkout waited in line for a worker (checkouts that waited)"
        );
        metrics::describe_histogram!(
            "cylinder_pool_start_seconds",
            Unit::Seconds,
            "Time to open a worker"
        );
        metrics::describe_histogram!(
            "cylinder_pool_lease_seconds",
            Unit::Seconds,
            "How long a lease was held"
        );
        metrics::describe_counter!(
            "cylinder_pool_workers_closed_total",
            "Workers closed, by reason"
        );
    }

    /// Whether the reaper should sample the gauges.
    pub(crate) const ON: bool = true;

    /// A checkout that waited in line got a worker or gave up after `waited`.
    pub(crate) fn waited(&self, waited: Duration) {
        record(|| self.checkout_wait.record(waited.as_secs_f64()));
    }

    /// A clock started now (a lease or a start begins).
    #[inline]
    #[allow(clippy::unused_self)] // the same signature as with the feature off
    pub(crate) fn clock(&self) -> Clock {
        Clock(Some(Instant::now()))
    }

    /// Records how long a start (that succeeded or not) took.
    pub(crate) fn started(&self, took: Took) {
        if let Some(took) = took.0 {
            record(|| self.start.record(took.as_secs_f64()));
        }
    }

    /// Records how long a lease was held, once its worker is back in service or retired.
    #[inline]
    pub(crate) fn lease_ended(&self, held: Took) {
        if let Some(held) = held.0 {
            record(|| self.lease.record(held.as_secs_f64()));
        }
    }

    /// What an event counts toward.
    pub(crate) fn event(&self, event: &Event) {
        let counter = match event {
            Event::CheckoutTimedOut(_) => &self.timeouts,
            Event::StartFailed => &self.start_failures,
            event => match reason(event) {
                Some(at) => &self.closed[at],
                None => return,
            },
        };
        record(|| counter.increment(1));
    }

    /// Sets the gauges to what `stats` reads now. The recorder is user code, slow at times:
    /// a reading taken before a change (a close, the last lease of a closed pool coming
    /// back) must not be set after the reading taken after it (see [`LastWord`]); a thread
    /// that finds another sampling leaves it to that one.
    pub(crate) fn sample(&self, stats: impl Fn() -> super::PoolStats) {
        self.sampled.write(|| self.set_gauges(&stats()));
    }

    fn set_gauges(&self, stats: &super::PoolStats) {
        #[allow(clippy::cast_precision_loss)] // counts far below 2^52
        let gauge = |gauge: &metrics::Gauge, value: usize| record(|| gauge.set(value as f64));
        gauge(&self.idle, stats.free);
        gauge(&self.leased, stats.leased);
        gauge(&self.starting, stats.starting);
        gauge(&self.waiting, stats.waiters);
    }
}

/// One of the recorder's handles (or its descriptions), made contained.
#[cfg(feature = "metrics")]
fn made<T>(make: impl FnOnce() -> T) -> Option<T> {
    crate::contain::run(make).ok()
}

/// The recorder's handles are user values: each is dropped contained, one at a time (as one,
/// a second panicking `Drop` during the first one's unwinding would abort the process).
#[cfg(feature = "metrics")]
impl Drop for PoolMetrics {
    fn drop(&mut self) {
        use crate::contain::dispose;
        use metrics::{Counter, Gauge, Histogram};
        for histogram in [&mut self.checkout_wait, &mut self.start, &mut self.lease] {
            dispose(std::mem::replace(histogram, Histogram::noop()));
        }
        for counter in self
            .closed
            .iter_mut()
            .chain([&mut self.timeouts, &mut self.start_failures])
        {
            dispose(std::mem::replace(counter, Counter::noop()));
        }
        for gauge in [
            &mut self.idle,
            &mut self.leased,
            &mut self.starting,
            &mut self.waiting,
        ] {
            dispose(std::mem::replace(gauge, Gauge::noop()));
        }
    }
}

/// Records through the recorder's handle: user code, so a panic there is contained (and
/// logged), never unwinding into a lease's return or a start.
#[cfg(feature = "metrics")]
fn record(record: impl FnOnce()) {
    if crate::contain::run(record).is_err() {
        crate::contain::logged!(error, "cylinder: the metrics recorder panicked");
    }
}

#[cfg(not(feature = "metrics"))]
#[allow(clippy::unused_self)] // the same calls as with the feature, compiled to nothing
impl PoolMetrics {
    pub(crate) fn new(_pool: &str) -> Self {
        PoolMetrics
    }

    pub(crate) fn off() -> Self {
        PoolMetrics
    }

    pub(crate) const ON: bool = false;

    #[inline]
    pub(crate) fn waited(&self, _waited: Duration) {}

    #[inline]
    pub(crate) fn clock(&self) -> Clock {
        Clock::IDLE
    }

    #[inline]
    pub(crate) fn started(&self, _took: Took) {}

    #[inline]
    pub(crate) fn lease_ended(&self, _held: Took) {}

    #[inline]
    pub(crate) fn event(&self, event: &Event) {
        let _ = reason(event);
    }

    #[inline]
    pub(crate) fn sample(&self, _stats: impl Fn() -> super::PoolStats) {}
}
