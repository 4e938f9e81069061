//! Starting workers: by counting, outside every pool lock, a few at a time in parallel.
//!
//! A start is first *claimed* (the pool's `total` grows by one, so no two callers open the
//! same missing worker), then run by a start thread, which delivers the new worker to a
//! waiter or the free list. A failed start gives its claim back, drops the claims still
//! waiting, and the pool waits `reconnect_delay` before it tries again.

use std::time::{Duration, Instant};

use super::{Entry, Shared};
use crate::error::{contained, Cause};
use crate::event::{emit, Event};
use crate::stripe::{self, Stripe};
use crate::sync::{AtomicUsize, Ordering};

/// How many starts run at once, at most.
pub(crate) const PARALLEL_STARTS: usize = 8;

/// The pool's counts of workers, kept apart from the workers themselves.
#[derive(Default)]
pub(crate) struct Counts {
    /// Workers open plus starts claimed: the number the pool answers for.
    total: AtomicUsize,
    /// Starts claimed and not yet delivered or failed.
    starting: AtomicUsize,
    /// Starts claimed that no start thread has taken up yet.
    pending: AtomicUsize,
    /// Start threads running.
    starters: AtomicUsize,
    /// Threads running a start under `start_timeout`, given up on or not: a start that hangs
    /// cannot be stopped, so their number is bounded instead.
    timed_starts: AtomicUsize,
}

/// The most threads running a start under `start_timeout` at once, hung ones included.
const MAX_TIMED_STARTS: usize = 2 * PARALLEL_STARTS;

impl Counts {
    /// `SeqCst`: a resize's look at it after storing the new size, against a close's look
    /// at the size after counting the worker out (see `Pool::resize`).
    pub(crate) fn total(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }

    pub(crate) fn starting(&self) -> usize {
        self.starting.load(Ordering::Relaxed)
    }

    /// Workers open now (for a moment between a claim's two counts, the claimed starts
    /// count as open too).
    pub(crate) fn open(&self) -> usize {
        self.total().saturating_sub(self.starting())
    }

    /// Claims up to `wanted` starts while `total` stays within `limit`; returns how many.
    /// `queued` claims wait for a start thread; the others are run by the claimer.
    fn claim(&self, wanted: usize, limit: usize, queued: bool) -> usize {
        let mut claimed = 0;
        let _ = self
            .total
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |total| {
                claimed = wanted.min(limit.saturating_sub(total));
                (claimed > 0).then_some(total + claimed)
            });
        if claimed > 0 {
            self.starting.fetch_add(claimed, Ordering::SeqCst);
            if queued {
                self.pending.fetch_add(claimed, Ordering::SeqCst);
            }
        }
        claimed
    }

    /// One worker fewer: closed, detached, or a start given up.
    pub(crate) fn release(&self) {
        self.total.fetch_sub(1, Ordering::SeqCst);
    }

    /// One worker fewer, if more than `floor` are counted; whether it was.
    pub(crate) fn release_above(&self, floor: usize) -> bool {
        self.total
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |total| {
                (total > floor).then(|| total - 1)
            })
            .is_ok()
    }

    fn take_pending(&self) -> bool {
        self.pending
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |pending| {
                pending.checked_sub(1)
            })
            .is_ok()
    }

    /// Joins the start threads if fewer than `PARALLEL_STARTS` run.
    fn enlist(&self) -> bool {
        self.starters
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |starters| {
                (starters < PARALLEL_STARTS).then_some(starters + 1)
            })
            .is_ok()
    }
}

impl<W: Send + 'static> Shared<W> {
    /// The most workers that may be open, overflow included.
    fn limit(&self) -> usize {
        self.size.load(Ordering::SeqCst) + self.max_overflow
    }

    /// Whether the pool may open another worker now. `SeqCst`, to pair with a waiter's
    /// registration and a closer's look for waiters (see `close_above`).
    pub(crate) fn has_room(&self) -> bool {
        self.counts.total.load(Ordering::SeqCst) < self.limit()
    }

    /// Claims the starts the pool is short of: up to `min_idle`, and one for each waiter that
    /// no start is on its way for. Nothing while the pool waits out a failed start.
    pub(crate) fn refill(&self) {
        if let Some(wanted) = self.wanted() {
            if self.counts.claim(wanted, self.limit(), true) > 0 {
                self.launch();
            }
        }
    }

    /// How many starts to claim now, if any.
    fn wanted(&self) -> Option<usize> {
        if self.closed.load(Ordering::Acquire) || self.backoff_left(Instant::now()).is_some() {
            return None;
        }
        let short = self
            .min_idle
            .load(Ordering::SeqCst)
            .saturating_sub(self.counts.total());
        let unserved = self.waiters.len().saturating_sub(self.counts.starting());
        Some(short.max(unserved)).filter(|&wanted| wanted > 0)
    }

    /// A blocking checkout is in line: if the pool may open another worker (overflow, or
    /// fewer open than `size`) and no start is on its way for each waiter, claim one; a start
    /// thread opens it and it is offered to the line, so the caller waits no longer than its
    /// timeout, however slow the start.
    pub(crate) fn start_for_line(&self) {
        if self.counts.starting() >= self.waiters.len()
            || self.closed.load(Ordering::Acquire)
            || self.backoff_left(Instant::now()).is_some()
        {
            return;
        }
        if self.counts.claim(1, self.limit(), true) > 0 {
            self.launch();
        }
    }

    /// A non-blocking checkout found nothing free: if the pool may open another worker
    /// (overflow, or fewer open than `size`), open it on this thread, for this caller
    /// (poolboy's way).
    pub(crate) fn start_for_caller(&self) -> Option<Box<Entry<W>>> {
        if self.closed.load(Ordering::Acquire)
            || self.backoff_left(Instant::now()).is_some()
            || self.counts.claim(1, self.limit(), false) == 0
        {
            return None;
        }
        match self.start_one() {
            Ok(worker) => {
                let (entry, event) = self.joined(worker);
                // While it ran, this start counted as on its way to the line: a waiter that
                // came meanwhile claimed none (`start_for_line`, `wanted`). Ask for one now.
                if self.waiters.has_unserved() && self.has_room() {
                    self.signal.request();
                }
                emit(&self.events, event);
                if self.closed.load(Ordering::Acquire) {
                    self.close_worker(entry);
                    return None;
                }
                Some(entry)
            }
            Err(cause) => {
                self.start_failed(cause);
                None
            }
        }
    }

    /// How long the pool still waits before it tries a start again after one failed.
    pub(crate) fn backoff_left(&self, now: Instant) -> Option<Duration> {
        if !self.failing.load(Ordering::Acquire) {
            return None;
        }
        let at = self.failure.lock().as_ref()?.1;
        match at.checked_add(self.reconnect_delay) {
            Some(retry_at) => {
                Some(retry_at.saturating_duration_since(now)).filter(|left| !left.is_zero())
            }
            None => Some(Duration::MAX),
        }
    }

    /// Starts threads for the claimed starts, up to `PARALLEL_STARTS` at once; under loom
    /// the starts run on the calling thread.
    fn launch(&self) {
        while self.counts.pending.load(Ordering::SeqCst) > 0 && self.counts.enlist() {
            if cfg!(loom) {
                self.run_starter();
                continue;
            }
            let Some(me) = self.me.upgrade() else {
                return self.run_starter();
            };
            let spawned = std::thread::Builder::new()
                .name(format!("cylinder-start-{}", self.name))
                .spawn(move || {
                    stripe::opt_out();
                    me.run_starter();
                });
            if let Err(err) = spawned {
                log::error!(
                    "cylinder: {}: no thread for a start ({err}); starting on this one",
                    self.name
                );
                self.run_starter();
            }
        }
    }

    /// Starts the claimed workers, then opens and delivers each, until none is left.
    pub(crate) fn fill_now(&self) {
        if let Some(wanted) = self.wanted() {
            if self.counts.claim(wanted, self.limit(), true) == 0 {
                return;
            }
        }
        if cfg!(loom) {
            return self.launch();
        }
        std::thread::scope(|scope| {
            while self.counts.pending.load(Ordering::SeqCst) > 0 && self.counts.enlist() {
                let spawned = std::thread::Builder::new()
                    .name(format!("cylinder-start-{}", self.name))
                    .spawn_scoped(scope, || {
                        stripe::opt_out();
                        self.run_starter();
                    });
                if spawned.is_err() {
                    self.run_starter();
                }
            }
        });
    }

    /// A start thread's work: take claimed starts one by one and run them. Before it ends, it
    /// looks once more for a claim made while it was leaving (the claimer may have seen every
    /// start thread busy).
    fn run_starter(&self) {
        loop {
            while self.counts.take_pending() {
                match self.start_one() {
                    Ok(worker) => self.deliver(worker),
                    Err(cause) => self.start_failed(cause),
                }
            }
            self.counts.starters.fetch_sub(1, Ordering::SeqCst);
            if self.counts.pending.load(Ordering::SeqCst) == 0 || !self.counts.enlist() {
                return;
            }
        }
    }

    /// Runs the start closure or manager, within `start_timeout` if one is set.
    fn start_one(&self) -> Result<W, Cause> {
        match self.start_timeout {
            Some(limit) if !cfg!(loom) => self.start_within(limit),
            _ => contained(|| self.manager.start()),
        }
    }

    /// A start on a thread of its own, given up after `limit`: its worker, if it comes later,
    /// is dropped with the channel.
    fn start_within(&self, limit: Duration) -> Result<W, Cause> {
        let Some(me) = self.me.upgrade() else {
            return Err(Cause::message("the pool is gone"));
        };
        let timed = &self.counts.timed_starts;
        if timed
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |running| {
                (running < MAX_TIMED_STARTS).then_some(running + 1)
            })
            .is_err()
        {
            return Err(Cause::message(format!(
                "{MAX_TIMED_STARTS} starts are still running past start_timeout"
            )));
        }
        let (sender, receiver) = crossbeam::channel::bounded(1);
        let spawned = std::thread::Builder::new()
            .name(format!("cylinder-start-{}", self.name))
            .spawn(move || {
                stripe::opt_out();
                let started = contained(|| me.manager.start());
                me.counts.timed_starts.fetch_sub(1, Ordering::SeqCst);
                // A worker that came too late is dropped here, its Drop's panic contained.
                if let Err(crossbeam::channel::SendError(Ok(late))) = sender.send(started) {
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(late)));
                }
            });
        if let Err(err) = spawned {
            timed.fetch_sub(1, Ordering::SeqCst);
            return Err(Cause::new(err));
        }
        match receiver.recv_timeout(limit) {
            Ok(started) => started,
            Err(crossbeam::channel::RecvTimeoutError::Timeout) => Err(Cause::message(format!(
                "the start did not finish within {limit:?}"
            ))),
            Err(crossbeam::channel::RecvTimeoutError::Disconnected) => {
                Err(Cause::message("the start thread ended without a worker"))
            }
        }
    }

    /// A new worker joins: to a waiter, or the free list.
    /// The event is reported once the worker is in the pool: a callback that checks out (or
    /// blocks) must not hold back the very worker it reports.
    fn deliver(&self, worker: W) {
        let (entry, event) = self.joined(worker);
        if self.closed.load(Ordering::Acquire) {
            self.close_worker(entry);
        } else {
            self.put_back(entry, Stripe::current());
        }
        emit(&self.events, event);
    }

    /// Counts a started worker in and gives it its entry, with the event to report.
    fn joined(&self, worker: W) -> (Box<Entry<W>>, Event) {
        if self.liveness.get().is_none() {
            if let Some(is_alive) = crate::worker::liveness::of::<W>() {
                let _ = self.liveness.set(is_alive);
            }
        }
        let entry = Box::new(Entry {
            worker,
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            born: Instant::now(),
            idle_since: None,
            leased_before: false,
        });
        let nth = self.started.fetch_add(1, Ordering::Relaxed);
        self.counts.starting.fetch_sub(1, Ordering::SeqCst);
        self.failing.store(false, Ordering::Release);
        log::debug!("cylinder: {}: worker {} started", self.name, entry.id);
        let event = if nth < self.first_fill as u64 {
            Event::WorkerStarted
        } else {
            Event::WorkerRestarted
        };
        (entry, event)
    }

    /// A start failed: its claim and the ones still waiting are given back, and the pool
    /// waits `reconnect_delay` before the next try (the reaper makes it).
    fn start_failed(&self, cause: Cause) {
        let dropped = 1 + self.counts.pending.swap(0, Ordering::SeqCst);
        self.counts.starting.fetch_sub(dropped, Ordering::SeqCst);
        self.counts.total.fetch_sub(dropped, Ordering::SeqCst);
        log::warn!(
            "cylinder: {}: a worker could not start: {cause}; retrying in {:?}",
            self.name,
            self.reconnect_delay
        );
        self.note_failure(cause);
        emit(&self.events, Event::StartFailed);
    }

    /// Records a failed start: the fuse and the backoff read it, and the reaper plans the
    /// retry.
    pub(crate) fn note_failure(&self, cause: Cause) {
        // The cause replaced is dropped after the lock is let go (see `keep_cause`).
        let replaced = self.failure.lock().replace((cause, Instant::now()));
        drop(replaced);
        self.failing.store(true, Ordering::Release);
        self.signal.request();
        // Waiters with nothing left to wait for leave with the cause (revolver's fuse).
        if self.fuse_blown() {
            self.waiters.wake_all();
        }
    }
}
