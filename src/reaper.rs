//! The one background thread of each pool or balancer: it re-enumerates the supervisor when
//! asked, retries while disconnected, and stops (and is joined) on close or drop.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use crate::sync::{deadline_after, Condvar, Mutex};

#[derive(Default)]
struct SignalState {
    pending: bool,
    closed: bool,
}

/// How the hot paths ask the reaper for a round, and how close tells it to stop.
#[derive(Default)]
pub(crate) struct Signal {
    state: Mutex<SignalState>,
    wake: Condvar,
}

impl Signal {
    /// Asks for a round as soon as possible. Many asks before the round make one round.
    pub(crate) fn request(&self) {
        let mut state = self.state.lock();
        if !state.pending {
            state.pending = true;
            self.wake.notify_one();
        }
    }

    pub(crate) fn close(&self) {
        self.state.lock().closed = true;
        self.wake.notify_all();
    }

    /// Whether close was called: a round under way starts no more user code.
    pub(crate) fn is_closed(&self) -> bool {
        self.state.lock().closed
    }

    /// Whether a round was asked for and not yet started; clears the request.
    #[cfg(loom)]
    pub(crate) fn take_request(&self) -> bool {
        std::mem::take(&mut self.state.lock().pending)
    }

    /// Waits for a request, for close, or until `retry` passes. `None` once closed, else
    /// whether a round was asked for (rather than the time having come).
    fn wait(&self, retry: Option<Duration>) -> Option<bool> {
        let deadline = retry.and_then(deadline_after);
        let mut state = self.state.lock();
        while !state.pending && !state.closed {
            let (guard, timed_out) = self.wake.wait_until(state, deadline);
            state = guard;
            if timed_out {
                break;
            }
        }
        let asked = std::mem::take(&mut state.pending);
        (!state.closed).then_some(asked)
    }
}

/// One round of upkeep, told whether it was asked for (or woke on its timer); returns when to
/// run again if nothing asks sooner (`None`: only when asked).
pub(crate) type Round = Box<dyn FnMut(bool) -> Option<Duration> + Send>;

/// How long `close` waits for the reaper thread to end. A round that is inside a user
/// callback (an event callback, a supervisor) that blocks is not waited for past this: the
/// thread ends by itself once the callback returns (it holds what it needs).
const STOP_PATIENCE: Duration = Duration::from_millis(100);

/// The reaper thread. Under `--cfg loom` no thread is started: the models run rounds by hand.
pub(crate) struct Reaper {
    signal: Arc<Signal>,
    thread: Option<Running>,
}

/// A running reaper thread, and how to hear that it ended.
pub(crate) struct Running {
    handle: std::thread::JoinHandle<()>,
    /// Disconnected when the thread ends (its sender is dropped then, unwinding included).
    ended: crossbeam::channel::Receiver<()>,
}

impl Reaper {
    /// Starts the thread; its first round comes when asked, or after `first` if given.
    pub(crate) fn spawn(
        name: &str,
        signal: Arc<Signal>,
        first: Option<Duration>,
        round: Round,
    ) -> std::io::Result<Reaper> {
        let thread = if cfg!(loom) {
            drop(round);
            None
        } else {
            let waits_on = signal.clone();
            let (ending, ended) = crossbeam::channel::bounded::<()>(0);
            let handle = std::thread::Builder::new()
                .name(format!("cylinder-reaper-{name}"))
                .spawn(move || {
                    let _ending = ending;
                    crate::stripe::opt_out();
                    Self::run(&waits_on, first, round);
                })?;
            Some(Running { handle, ended })
        };
        Ok(Reaper { signal, thread })
    }

    fn run(signal: &Signal, first: Option<Duration>, mut round: Round) {
        let mut retry = first;
        while let Some(asked) = signal.wait(retry) {
            // A round never panics by design (supervisor calls are contained); this keeps a
            // bug from silently ending upkeep for good.
            retry = match catch_unwind(AssertUnwindSafe(|| round(asked))) {
                Ok(next) => next,
                Err(payload) => {
                    crate::contain::dispose(payload);
                    crate::contain::logged!(
                        error,
                        "cylinder: reaper round panicked; retrying in 1s"
                    );
                    Some(Duration::from_secs(1))
                }
            };
        }
    }

    /// Stops the thread and waits for it (see [`join`]). Idempotent.
    pub(crate) fn stop(&mut self) {
        join(self.stop_later());
    }

    /// Tells the thread to stop and hands back its handle, for the caller to [`join`] once it
    /// holds no lock: the reaper's round may run a user callback that takes the same lock
    /// (an `on_event` that closes the pool while another thread closes it). Idempotent: a
    /// later call returns `None`.
    pub(crate) fn stop_later(&mut self) -> Option<Running> {
        self.signal.close();
        self.thread.take()
    }
}

/// Waits for a reaper thread stopped with [`Reaper::stop_later`], unless called on that
/// thread itself (the last handle dropped from an event callback: it ends by itself once its
/// round returns), and for at most [`STOP_PATIENCE`]: a round blocked in a user callback is
/// not waited for (`close` never waits on user code); that thread ends when the callback
/// returns.
pub(crate) fn join(thread: Option<Running>) {
    let Some(Running { handle, ended }) = thread else {
        return;
    };
    if handle.thread().id() == std::thread::current().id() {
        return;
    }
    match ended.recv_timeout(STOP_PATIENCE) {
        Err(crossbeam::channel::RecvTimeoutError::Disconnected) => {
            let _ = handle.join();
        }
        _ => {
            crate::contain::logged!(
                debug,
                "cylinder: the reaper thread is inside a callback; it ends when the callback returns"
            );
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        self.stop();
    }
}
