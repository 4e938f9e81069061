//! Lifecycle events, for wiring metrics: an optional callback on either builder.

use std::sync::Arc;
use std::time::Duration;

/// Something that happened to a pool or balancer, passed to the `on_event` callback.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use cylinder::{Event, Lease, Pool};
///
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let log = seen.clone();
/// let pool = Pool::builder()
///     .size(2)
///     .on_event(move |event| log.lock().unwrap().push(event.clone()))
///     .build(|| Ok(()))
///     .unwrap();
/// let a = pool.try_checkout().unwrap();
/// let _b = pool.try_checkout().unwrap();
/// assert!(pool.try_checkout().is_err());
/// Lease::discard(a);
/// let seen = seen.lock().unwrap();
/// assert_eq!(seen[..2], [Event::WorkerStarted, Event::WorkerStarted]);
/// assert!(seen.contains(&Event::Overload));
/// assert!(seen.contains(&Event::WorkerDiscarded));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A worker joined at the first connect.
    WorkerStarted,
    /// A worker joined in place of one that died or was discarded (or was new to a reload).
    WorkerRestarted,
    /// A worker was found dead.
    WorkerDied,
    /// A client discarded its lease's worker (or panicked under `OnClientPanic::Discard`), or
    /// the worker failed the checkout health check.
    WorkerDiscarded,
    /// The supervisor listed its children: `new` of `total` were new.
    Connected {
        /// Workers not in the set before.
        new: usize,
        /// Workers in the set now.
        total: usize,
    },
    /// The supervisor is gone or has no live children.
    Disconnected,
    /// A blocking checkout gave up after waiting this long.
    CheckoutTimedOut(Duration),
    /// A non-blocking checkout or a `get()` found every worker busy.
    Overload,
    /// A lease has been held this long, past the pool's `warn_after` (a leak, or a slow
    /// client).
    SlowLease {
        /// How long it has been held.
        held: Duration,
        /// Where it was taken: the caller of `checkout` (or `transaction`, …).
        taken_at: &'static std::panic::Location<'static>,
    },
    /// A worker could not be started (the pool retries every `reconnect_delay`).
    StartFailed,
    /// A worker failed its check before a lease and was dropped.
    CheckFailed,
    /// A returned worker was found broken (`is_broken`), or its `reset` failed: dropped.
    WorkerBroken,
    /// A worker reached the pool's `max_lifetime` and was closed.
    WorkerExpired,
    /// An idle worker beyond `min_idle` reached the pool's `idle_timeout` and was closed.
    WorkerIdleClosed,
    /// A client detached its lease's worker from the pool (`Lease::take`).
    WorkerTaken,
    /// A worker was closed by [`Pool::evict_all`](crate::Pool::evict_all): at once if it
    /// was idle, when its lease ended if it was leased.
    WorkerEvicted,
    /// A balancer's worker that was found dead and [comes back](crate::Worker::comes_back)
    /// by itself (a pool whose server returned) is alive again, back in rotation.
    WorkerBack,
}

/// The user's callback, shared by the pool or balancer and its reaper.
pub(crate) type EventHook = Arc<dyn Fn(&Event) + Send + Sync>;

/// Calls the hook if there is one. A panicking hook is contained and logged: metrics must not
/// take the pool down.
pub(crate) fn emit(hook: &Option<EventHook>, event: Event) {
    if let Some(hook) = hook {
        if crate::contain::run(|| hook(&event)).is_err() {
            crate::contain::logged!(
                error,
                "cylinder: the on_event callback panicked on {event:?}"
            );
        }
    }
}
