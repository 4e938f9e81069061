//! The pool's shared state: what every handle, lease and internal thread of a pool refers
//! to, how it is set up from the builder's options, and what it reports of itself (`stats`,
//! the state an error carries, the last failure's cause).

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::builder::{OnClientPanic, PoolBuilder, MAX_POOL_SIZE, MIN_RECONNECT_DELAY};
use super::free::FreeList;
use super::listeners::Listeners;
use super::manager::{self, Manager, Uses};
use super::metrics::PoolMetrics;
use super::start::Counts;
use super::waitlist::WaitList;
use super::watch::LeaseWatch;
use super::{Entry, PoolStats};
use crate::contain;
use crate::error::{Cause, Error, PoolState};
use crate::event::{Event, EventHook};
use crate::reaper::Signal;
use crate::stripe::StripedCounter;
use crate::sync::{AtomicBool, AtomicU64, AtomicUsize, Mutex, Ordering};

/// One pool, shared by its handles, its leases, its reaper and its start threads.
pub(crate) struct Shared<W: Send + 'static> {
    pub(super) name: String,
    /// This pool, for the start threads it launches.
    pub(super) me: Weak<Shared<W>>,
    pub(super) manager: Box<dyn Manager<Worker = W>>,
    /// The builder's `on_start`, run after every start.
    pub(super) on_start: Option<manager::CheckFn<W>>,
    pub(super) uses: Uses,
    pub(super) free: FreeList<Box<Entry<W>>>,
    pub(super) waiters: WaitList<Box<Entry<W>>>,
    /// Balancers' waiters in other pools' lines, nudged when a worker is kept free here.
    pub(super) listeners: Listeners<W>,
    pub(super) closed: AtomicBool,
    pub(super) counts: Counts,
    /// The most workers open, overflow aside (changed by `resize`).
    pub(super) size: AtomicUsize,
    /// How many workers are kept open.
    pub(super) min_idle: AtomicUsize,
    /// The `min_idle` option as built (`None`: it follows `size`): a resize clamps it to the
    /// new size without forgetting it.
    pub(super) min_idle_option: Option<usize>,
    /// Makes each resize's `size` and `min_idle` one change: two resizes at once must not
    /// leave the size of one with the `min_idle` of the other. Held for two stores only.
    pub(super) resizing: Mutex<()>,
    pub(super) max_overflow: usize,
    pub(super) capacity: usize,
    pub(super) checkout_timeout: Duration,
    /// At least `MIN_RECONNECT_DELAY`.
    pub(super) reconnect_delay: Duration,
    pub(super) start_timeout: Option<Duration>,
    pub(super) max_lifetime: Option<Duration>,
    pub(super) idle_timeout: Option<Duration>,
    pub(super) on_client_panic: OnClientPanic,
    pub(super) events: Option<EventHook>,
    pub(super) watch: Option<LeaseWatch>,
    /// Held while deciding how many starts to claim for the line and `min_idle`, so that two
    /// callers reading the same shortage do not both claim a start for it.
    pub(super) deciding: Mutex<()>,
    /// `try_checkout`s in line for a start on its way: each start that ends wakes them to
    /// look whether anything is still on its way for them.
    pub(super) waiting_for_a_start: AtomicUsize,
    /// Free workers the pool's own code holds for a moment (the reaper's sweep, `map`):
    /// still idle, counted as free by `stats()`, so a quiet pool always adds up.
    pub(super) held_free: AtomicUsize,
    /// Sweeps in their first pass (every free worker off the list for a moment, no user
    /// code): a `try_checkout` that finds nothing free meanwhile waits for it to end.
    pub(super) sorting: AtomicUsize,
    /// Workers retired whose `Drop` is still running, not yet counted out (`close_worker`):
    /// counted open, but no longer in service.
    pub(super) dropping: AtomicUsize,
    /// Starts a `try_checkout` runs for itself (`start_for_caller`), from its claim until its
    /// worker is open: counted in `total`, but not on their way to the pool.
    pub(super) callers_starts: AtomicUsize,
    /// Workers counted out whose `Drop` is still running (`closed_above`).
    pub(super) closing: AtomicUsize,
    /// Reaper rounds under way (0 or 1). A round may be held up in user code (an event
    /// callback, a keepalive check); meanwhile a checkout looks at its worker's
    /// `max_lifetime` itself, so no expired worker goes out on a lease while it waits.
    pub(super) in_upkeep: AtomicUsize,
    /// The checkout check runs only on a worker idle (unchecked) at least this long.
    pub(super) check_after_idle: Duration,
    /// Idle workers unused this long are checked by the reaper.
    pub(super) keepalive: Option<Duration>,
    /// Whether a return reads the clock for its worker's `idle_since`.
    pub(super) reads_idle_clock: bool,
    /// How many times `evict_all` was called: workers started before the last call go.
    pub(super) generation: AtomicU64,
    /// A worker was kept after an `evict_all`'s sweep that it should have gone in: the
    /// reaper's next round sweeps.
    pub(super) sweep_again: AtomicBool,
    /// Sweeps retiring workers that expired with one they keep past its expiry (0 or 1):
    /// until each has claimed its replacement, the one kept stays whatever the counts say.
    pub(super) sweep_replacing: AtomicUsize,
    /// The earliest expiry of a worker returned since the last sweep that the sweep may not
    /// have planned for, in nanoseconds after `epoch` (`u64::MAX`: none).
    pub(super) next_expiry: AtomicU64,
    pub(super) epoch: Instant,
    pub(super) metrics: PoolMetrics,
    /// The last start (or fresh worker's check) that failed, and when.
    pub(super) failure: Mutex<Option<(Cause, Instant)>>,
    /// Whether starts are failing: set by a failure, cleared by a successful start.
    pub(super) failing: AtomicBool,
    pub(super) signal: Arc<Signal>,
    pub(super) next_id: AtomicU64,
    /// Starts before this many are the first fill; later ones count as restarts.
    pub(super) first_fill: usize,
    pub(super) started: AtomicU64,
    pub(super) checkouts: StripedCounter,
    pub(super) releases: StripedCounter,
    pub(super) discards: AtomicU64,
    pub(super) takes: AtomicU64,
    pub(super) failed_checks: AtomicU64,
    pub(super) timeouts: AtomicU64,
}

impl<W: Send + 'static> Shared<W> {
    /// The shared state of a pool built from `options`.
    pub(super) fn new(
        options: &mut PoolBuilder<W>,
        manager: Box<dyn Manager<Worker = W>>,
        uses: Uses,
        size: usize,
        min_idle: usize,
    ) -> Arc<Self> {
        // Room to grow: a resize up to four times the size (at least 64), and the overflow
        // above that.
        let resize_limit = (size * 4).max(64).min(MAX_POOL_SIZE - options.max_overflow);
        let capacity = resize_limit + options.max_overflow;
        let on_start = options.on_start.take();
        Arc::new_cyclic(|me| Shared {
            name: options.name.clone(),
            me: me.clone(),
            manager,
            on_start,
            uses,
            free: FreeList::new(capacity, options.queue_mode),
            waiters: WaitList::new(options.fifo_after),
            listeners: Listeners::default(),
            closed: AtomicBool::new(false),
            counts: Counts::default(),
            size: AtomicUsize::new(size),
            min_idle: AtomicUsize::new(min_idle),
            min_idle_option: options.min_idle,
            resizing: Mutex::new(()),
            max_overflow: options.max_overflow,
            capacity,
            checkout_timeout: options.checkout_timeout,
            // The reaper's smallest tick: what paces the retries also bounds the window in
            // which a worker that dies counts as dead on arrival.
            reconnect_delay: options.reconnect_delay.max(MIN_RECONNECT_DELAY),
            start_timeout: options.start_timeout,
            max_lifetime: options.max_lifetime,
            idle_timeout: options.idle_timeout,
            on_client_panic: options.on_client_panic,
            events: options.events.clone(),
            watch: options.warn_after.map(LeaseWatch::new),
            deciding: Mutex::new(()),
            waiting_for_a_start: AtomicUsize::new(0),
            held_free: AtomicUsize::new(0),
            closing: AtomicUsize::new(0),
            in_upkeep: AtomicUsize::new(0),
            sorting: AtomicUsize::new(0),
            check_after_idle: options.check_after_idle,
            keepalive: options.keepalive,
            reads_idle_clock: options.idle_timeout.is_some()
                || options.max_lifetime.is_some()
                || options.keepalive.is_some()
                || (uses.check && !options.check_after_idle.is_zero()),
            generation: AtomicU64::new(0),
            sweep_again: AtomicBool::new(false),
            sweep_replacing: AtomicUsize::new(0),
            dropping: AtomicUsize::new(0),
            callers_starts: AtomicUsize::new(0),
            next_expiry: AtomicU64::new(u64::MAX),
            epoch: Instant::now(),
            metrics: PoolMetrics::new(&options.name),
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
        })
    }

    /// Closes: no start begins after this (the claims still waiting are given back; a start
    /// under way drops its worker when it ends), every waiter wakes with `Closed`, and the free
    /// workers are dropped.
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.counts.cancel_pending();
        self.waiters.close();
        self.drain();
        // The reaper stops: the gauges say what is left (leases still out, nothing idle).
        if PoolMetrics::ON {
            self.metrics.sample(|| self.stats());
        }
    }

    pub(super) fn stats(&self) -> PoolStats {
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
            free: (self.free.len() + self.held_free.load(Ordering::Relaxed)).min(open),
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

    /// A closed pool has no reaper to sample its gauges: whatever moves them after the
    /// close (a lease that ends or is taken, a start that ends, a waiter that leaves,
    /// `drain`) samples them.
    #[inline]
    pub(super) fn sample_if_closed(&self) {
        if PoolMetrics::ON && self.closed.load(Ordering::Acquire) {
            self.metrics.sample(|| self.stats());
        }
    }

    /// Starts that ended so far, with a worker or without.
    pub(super) fn starts_ended(&self) -> u64 {
        self.started.load(Ordering::SeqCst) + self.counts.failed_starts.load(Ordering::SeqCst)
    }

    /// Reports an event: to the metrics (with the `metrics` feature) and the `on_event`
    /// callback.
    pub(crate) fn emit(&self, event: Event) {
        self.metrics.event(&event);
        crate::event::emit(&self.events, event);
    }

    /// The pool as an error reports it.
    pub(crate) fn state(&self) -> PoolState {
        let stats = self.stats();
        PoolState {
            size: stats.size,
            leased: stats.leased,
            idle: stats.free,
            waiting: stats.waiters,
            starting: stats.starting,
        }
    }

    /// `Disconnected` with `cause` and the pool's state now.
    pub(crate) fn down(&self, cause: Cause) -> Error {
        Error::Disconnected {
            cause,
            state: Some(self.state()),
        }
    }

    /// The last failure's cause, if any was kept.
    pub(super) fn last_failure(&self) -> Option<Cause> {
        self.failure.lock().as_ref().map(|(cause, _)| cause.clone())
    }

    /// When the last start failed (or a fresh worker failed its check), if one did.
    pub(super) fn last_failure_at(&self) -> Option<Instant> {
        self.failure.lock().as_ref().map(|&(_, at)| at)
    }

    /// Keeps `cause` as the one to report, without marking the starts as failing: the time
    /// of the last failed start, which the backoff counts from, stays as it was.
    pub(super) fn keep_cause(&self, cause: Cause) {
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
            Box::new(Gone(std::marker::PhantomData)),
        ));
        contain::dispose(self.on_start.take());
        // The metrics recorder's handles are user code too.
        contain::dispose(std::mem::replace(&mut self.metrics, PoolMetrics::off()));
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
