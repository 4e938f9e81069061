//! The checkout path: a worker for a lease, from the free list, the line or a start; the
//! checks it passes first; and the fuse and backpressure while no worker can be had.

use std::panic::Location;
use std::time::{Duration, Instant};

use super::metrics::PoolMetrics;

use super::builder::MIN_RECONNECT_DELAY;
use super::held_here::HeldHere;
use super::start::Held;
use super::waitlist::{Elsewhere, WaitError};
use super::{Entry, Retire, Shared};
use crate::contain;
use crate::error::{Cause, Error};
use crate::event::Event;
use crate::stripe::Stripe;
use crate::sync::{deadline_after, Ordering};

/// How long a `try_checkout` waits for a sweep's first pass (no user code: microseconds,
/// unless its thread is descheduled) to give the free workers back.
const SORTING_PATIENCE: Duration = Duration::from_millis(50);

impl<W: Send + 'static> Shared<W> {
    pub(super) fn check_open(&self) -> Result<(), Error> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// A worker for a blocking checkout: a free one, else one from the line, within
    /// `timeout`.
    #[inline(always)]
    pub(super) fn acquire(&self, timeout: Duration) -> Result<Box<Entry<W>>, Error> {
        let stripe = Stripe::current();
        // Backpressure: with the fuse blown, this checkout waits for the next start attempt
        // (not for one that failed before it came; a worker it meets dead on arrival counts,
        // the first look's included) and leaves with that attempt's cause, so a client
        // retrying against a dead server is slowed to the pace of `reconnect_delay`.
        let failed_before = self.counts.failed_starts.load(Ordering::SeqCst);
        // The fast path: a free worker that passes.
        if !self.closed.load(Ordering::Acquire) {
            if let Some(entry) = self.free.take(stripe) {
                if let Some(entry) = self.admit(entry, stripe) {
                    return Ok(entry);
                }
            }
        }
        self.acquire_slow(timeout, stripe, failed_before, None)
    }

    /// `acquire` for a balancer of pools: while it waits in this pool's line, each nudge
    /// from another pool makes it look there too (`elsewhere`, which keeps what it finds).
    /// `Ok(None)` says it was served elsewhere.
    pub(crate) fn acquire_or_elsewhere(
        &self,
        timeout: Duration,
        elsewhere: Elsewhere<'_>,
    ) -> Result<Option<Box<Entry<W>>>, Error> {
        let failed_before = self.counts.failed_starts.load(Ordering::SeqCst);
        match self.acquire_slow(timeout, Stripe::current(), failed_before, Some(elsewhere)) {
            Ok(entry) => Ok(Some(entry)),
            Err(Error::Overload) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// `acquire` past its first look. With `elsewhere`, `Overload` (which a blocking wait
    /// never answers otherwise) says it was served elsewhere.
    #[inline(never)]
    fn acquire_slow(
        &self,
        timeout: Duration,
        stripe: Stripe,
        failed_before: u64,
        elsewhere: Option<Elsewhere<'_>>,
    ) -> Result<Box<Entry<W>>, Error> {
        let mut in_line_since = None;
        let got = self.acquire_in_line(
            timeout,
            stripe,
            failed_before,
            elsewhere,
            &mut in_line_since,
        );
        self.record_wait(in_line_since, &got);
        got
    }

    /// `acquire_slow`'s looks and waits; `in_line_since` is when it first got in line (with
    /// the `metrics` feature).
    fn acquire_in_line(
        &self,
        timeout: Duration,
        stripe: Stripe,
        failed_before: u64,
        mut elsewhere: Option<Elsewhere<'_>>,
        in_line_since: &mut Option<Instant>,
    ) -> Result<Box<Entry<W>>, Error> {
        // Read the clock only if this checkout has to wait.
        let mut deadline = None;
        loop {
            self.check_open()?;
            let entry = if let Some(entry) = self.free.take(stripe) {
                entry
            } else {
                self.never_again()?;
                let deadline = *deadline.get_or_insert_with(|| deadline_after(timeout));
                let elsewhere = elsewhere.as_mut().map(|e| Elsewhere {
                    nudge: e.nudge,
                    look: &mut *e.look,
                    pass_on: e.pass_on,
                });
                if PoolMetrics::ON {
                    in_line_since.get_or_insert_with(Instant::now);
                }
                self.wait_for(stripe, deadline, timeout, failed_before, false, elsewhere)?
            };
            if let Some(entry) = self.admit(entry, stripe) {
                return Ok(entry);
            }
            // A worker failed its check: the next is tried only within the caller's time
            // (counted from the first failure, so a checkout that passes reads no clock).
            let at = *deadline.get_or_insert_with(|| deadline_after(timeout));
            if at.is_some_and(|at| Instant::now() >= at) {
                return Err(self.timed_out(timeout));
            }
        }
    }

    /// Nothing running, nothing starting, and the last start failed: nothing can come until
    /// the next try. A waiter in line gives up once a start that failed after it came has
    /// left the fuse blown; a non-blocking checkout fails at once while the pool waits out
    /// `reconnect_delay` (see `fuse`).
    pub(crate) fn fuse_blown(&self) -> bool {
        self.failing.load(Ordering::Acquire) && self.counts.none_open_or_starting()
    }

    /// A worker for a non-blocking checkout: it never waits for another client, but when the
    /// pool has room (overflow, or fewer open than `size`) it opens a worker on this thread,
    /// as poolboy's non-blocking checkout does.
    #[inline(always)]
    pub(super) fn try_acquire(&self) -> Result<Box<Entry<W>>, Error> {
        self.check_open()?;
        let stripe = Stripe::current();
        // The fast path: a free worker that passes.
        if let Some(entry) = self.free.take(stripe) {
            if let Some(entry) = self.admit(entry, stripe) {
                return Ok(entry);
            }
        }
        self.try_acquire_slow(stripe)
    }

    /// `try_acquire` past its first look.
    #[cold]
    #[inline(never)]
    fn try_acquire_slow(&self, stripe: Stripe) -> Result<Box<Entry<W>>, Error> {
        while let Some(entry) = self.free.take(stripe) {
            if let Some(entry) = self.admit(entry, stripe) {
                return Ok(entry);
            }
        }
        let nothing_open = self.counts.in_service() == 0;
        // A worker that came in between the look and the counts is free now: look again.
        while let Some(entry) = self.free.take(stripe) {
            if let Some(entry) = self.admit(entry, stripe) {
                return Ok(entry);
            }
        }
        if nothing_open && self.failing.load(Ordering::Acquire) {
            // Nothing open and starts failing: down, not busy. At once while the pool waits
            // out `reconnect_delay` or a retry is on its way; once the wait is over, this call
            // tries a start itself (below), so a lazy pool comes back.
            self.fuse()?;
            if self.counts.on_their_way() > 0 {
                self.down_if_a_start_failed()?;
            }
        } else if nothing_open && self.counts.on_their_way() > HeldHere::on_their_way(self) {
            // Nothing open yet and starts on their way, none failed (a lazy pool just built,
            // or replacements): no worker is busy, so this waits for the first to come, as a
            // start on this thread would, rather than open one more. If it went to another
            // client, this one goes on as if it had found nothing free: a start of its own
            // if the pool has room, else `Overload` (reported as such, below).
            match self.try_wait_for_a_start(stripe) {
                Err(Error::Overload) => {}
                answer => return answer,
            }
        }
        // A start of its own; once more if the first was evicted on arrival (`evict_all`
        // came while it ran: the next one uses what the eviction was for).
        for _ in 0..2 {
            let Some(entry) = self.start_for_caller() else {
                break;
            };
            let evicted = self.evicted(&entry);
            if let Some(entry) = self.admit(entry, stripe) {
                return Ok(entry);
            }
            if !evicted {
                break;
            }
        }
        // A sweep's first pass holds every free worker for a moment, and a new worker counts
        // as open a moment before it is in the pool (no user code runs in either, but the
        // `Drop` of a new worker closed as it arrives): the pool is not busy, so look again
        // as they come in (not for a delivery this thread's own user code interrupts).
        let began = Instant::now();
        while (self.sorting.load(Ordering::SeqCst) > 0
            || self.counts.delivering() > HeldHere::on_their_way(self))
            && began.elapsed() < SORTING_PATIENCE
        {
            std::thread::yield_now();
            if let Some(entry) = self.free.take(stripe) {
                if let Some(entry) = self.admit(entry, stripe) {
                    return Ok(entry);
                }
            }
        }
        if let Some(entry) = self.free.take(stripe) {
            if let Some(entry) = self.admit(entry, stripe) {
                return Ok(entry);
            }
        }
        // Closed meanwhile: say so, not "busy".
        self.check_open()?;
        self.fuse()?;
        // Nothing open and starts failing (its own start failed, or found another under
        // way): down, not busy.
        if self.counts.in_service() == 0 && self.failing.load(Ordering::Acquire) {
            self.down_if_a_start_failed()?;
        }
        self.emit(Event::Overload);
        Err(Error::Overload)
    }

    /// `try_checkout` with nothing open and starts on their way: waits for the first, as
    /// long as a start may take.
    pub(super) fn try_wait_for_a_start(&self, stripe: Stripe) -> Result<Box<Entry<W>>, Error> {
        let in_line_since = PoolMetrics::ON.then(Instant::now);
        let got = self.wait_for_a_start(stripe);
        self.record_wait(in_line_since, &got);
        got
    }

    fn wait_for_a_start(&self, stripe: Stripe) -> Result<Box<Entry<W>>, Error> {
        let waited = self.start_timeout.unwrap_or(self.checkout_timeout);
        let deadline = deadline_after(waited);
        let failed_before = self.counts.failed_starts.load(Ordering::SeqCst);
        loop {
            let entry = {
                let _counted = Held::take(&self.waiting_for_a_start, usize::MAX);
                self.wait_for(stripe, deadline, waited, failed_before, true, None)?
            };
            if let Some(entry) = self.admit(entry, stripe) {
                return Ok(entry);
            }
            // Dead on arrival: a failed start, not a busy pool.
            if self.failing.load(Ordering::Acquire) {
                self.down_if_a_start_failed()?;
            }
            // Retired for another reason (evicted while in its check): its replacement is
            // on its way, and the line is looked at again (it answers `Overload` once none
            // is, or the time is up).
        }
    }

    /// `Disconnected`, with the cause of the last start that failed, if one did.
    fn down_if_a_start_failed(&self) -> Result<(), Error> {
        match self.last_failure() {
            Some(cause) => Err(self.down(cause)),
            None => Ok(()),
        }
    }

    /// revolver's fuse: with nothing running, nothing starting and the last start failed,
    /// fail at once with that start's error rather than wait for a worker that cannot come.
    /// Only while the pool waits out `reconnect_delay`: after it, a blocking checkout must get
    /// into line and claim the next start (with `min_idle(0)` nothing else would).
    pub(super) fn fuse(&self) -> Result<(), Error> {
        if self.fuse_blown() && self.backoff_left(Instant::now()).is_some() {
            self.down_if_a_start_failed()?;
        }
        Ok(())
    }

    /// With the fuse blown and no start attempt ever again (`reconnect_delay` of
    /// `Duration::MAX`), a blocking checkout has nothing to wait for: it fails at once.
    pub(super) fn never_again(&self) -> Result<(), Error> {
        if self.fuse_blown() && self.backoff_left(Instant::now()) == Some(Duration::MAX) {
            self.down_if_a_start_failed()?;
        }
        Ok(())
    }

    /// Waits in line for a worker until `deadline`.
    /// It gives up when the fuse is blown by a start that failed after `failed_before` (the
    /// count of failed starts when it came).
    ///
    /// A `try_checkout` (`for_a_start`) waits only for a start on its way: it claims none,
    /// leaves with `Overload` once nothing is on its way (another client got it) or its time
    /// is up, and is counted as no timeout.
    pub(super) fn wait_for(
        &self,
        stripe: Stripe,
        deadline: Option<Instant>,
        timeout: Duration,
        failed_before: u64,
        for_a_start: bool,
        elsewhere: Option<Elsewhere<'_>>,
    ) -> Result<Box<Entry<W>>, Error> {
        let waited = self.waiters.wait(
            || self.free.take(stripe),
            // Asked after each look that found nothing (and after the line stopped counting
            // this waiter as served while it looked).
            || {
                if for_a_start {
                    return self.counts.on_their_way() == 0 || self.fuse_blown();
                }
                // If the pool has room (a worker was closed since this checkout's claim
                // failed), the reaper starts one for the line.
                if self.has_room() {
                    self.signal.request();
                }
                // A failure from before it came is waited out (the next attempt may succeed),
                // unless no attempt ever comes (`reconnect_delay` beyond the clock's range):
                // the last start's claim may have been given back only after it came.
                self.fuse_blown()
                    && (self.counts.failed_starts.load(Ordering::SeqCst) != failed_before
                        || Instant::now().checked_add(self.reconnect_delay).is_none())
            },
            deadline,
            || self.free.queued(),
            || {
                if !for_a_start {
                    self.start_for_line();
                }
            },
            // While starts fail, the end of the backoff: the waiter asks for the next attempt
            // itself then (the reaper makes it too, unless a callback holds it up).
            || {
                if for_a_start {
                    return None;
                }
                let now = Instant::now();
                self.backoff_left(now)
                    .and_then(|left| now.checked_add(left))
            },
            elsewhere,
            // Handed over as it left: closed with the pool, else back in service.
            |entry| {
                if self.closed.load(Ordering::Acquire) {
                    self.close_worker(entry);
                } else {
                    self.put_back(entry, stripe);
                }
            },
        );
        if PoolMetrics::ON {
            // This waiter left the line, however it left: a closed pool's gauges say so.
            // The recorder is user code: a worker it was served counts as this thread's own
            // meanwhile, as a lease's does (a recorder that drains does not wait for it).
            let _held_here = waited
                .as_ref()
                .ok()
                .map(|entry| HeldHere::worker(self, entry.id));
            self.sample_if_closed();
        }
        match waited {
            Ok(entry) => Ok(entry),
            Err(WaitError::Closed) => Err(Error::Closed),
            Err(WaitError::GaveUp | WaitError::Timeout) if for_a_start => {
                match self.last_failure() {
                    Some(cause) if self.fuse_blown() => Err(self.down(cause)),
                    _ => Err(Error::Overload),
                }
            }
            Err(WaitError::GaveUp) => Err(self.down(
                self.last_failure()
                    .unwrap_or_else(|| Cause::message("no worker could start")),
            )),
            Err(WaitError::Timeout) => Err(self.timed_out(timeout)),
            // Neither a timeout nor a busy pool: the caller was served by another pool.
            Err(WaitError::Elsewhere) => Err(Error::Overload),
        }
    }

    /// Records a checkout's time in line, once however often it got in line (a worker it
    /// was handed may fail its check), with a worker it got counted as this thread's own
    /// (the recorder is user code: a `drain` from it does not wait for that worker).
    fn record_wait(&self, in_line_since: Option<Instant>, got: &Result<Box<Entry<W>>, Error>) {
        if let Some(since) = in_line_since {
            let _held_here = got
                .as_ref()
                .ok()
                .map(|entry| HeldHere::worker(self, entry.id));
            self.metrics.waited(since.elapsed());
        }
    }

    /// A blocking checkout gave up after `timeout`: counted, reported, and answered with
    /// `Disconnected` if nothing is open and starts are failing, else `Timeout` with the
    /// pool's state and the last start error, if any.
    pub(super) fn timed_out(&self, timeout: Duration) -> Error {
        self.timeouts.fetch_add(1, Ordering::Relaxed);
        self.emit(Event::CheckoutTimedOut(timeout));
        // A failure that a successful start has healed since is no cause of this timeout.
        let failing = self.failing.load(Ordering::Acquire);
        match self.last_failure().filter(|_| failing) {
            Some(cause) if self.counts.open() == 0 => self.down(cause),
            cause => Error::Timeout {
                waited: timeout,
                state: Some(self.state()),
                cause,
            },
        }
    }

    /// Makes a worker ready for a lease: a dead one (for types that can tell) or one that
    /// fails the check is retired, and `None` says to look for another.
    #[inline(always)]
    pub(super) fn admit(&self, entry: Box<Entry<W>>, stripe: Stripe) -> Option<Box<Entry<W>>> {
        if self.uses.is_alive
            || self.uses.check
            || self.evicted(&entry)
            || self.may_have_expired(&entry)
        {
            return self.admit_with_hooks(entry, stripe);
        }
        Some(self.lease_out(entry, stripe))
    }

    /// A worker with a `max_lifetime` while a reaper round is under way: the round may be
    /// held up in user code, so its sweep may not close the worker at its expiry. (Otherwise
    /// the sweep comes at the expiry, and the checkout reads no clock.)
    #[inline(always)]
    fn may_have_expired(&self, entry: &Entry<W>) -> bool {
        entry.expires.is_some() && self.in_upkeep.load(Ordering::Relaxed) > 0
    }

    /// Kept past its expiry (by a sweep, the youngest of those expiring at once, or as the
    /// last in service) and still needed: the sweep is claiming the others' replacements, or
    /// no other worker is in service and one is coming (a start on its way, or one due: fewer
    /// open than `min_idle`), so workers never all expire at once; but not a whole lifetime
    /// past its expiry, unless starts fail (then it is the one that still works). Otherwise
    /// it goes like any expired worker: a lone worker with nothing coming (a lazy pool) does
    /// not serve on past its lifetime.
    fn kept_for_replacements(&self, entry: &Entry<W>, now: Instant) -> bool {
        entry.kept_past_expiry
            && self.may_stay_past_expiry(entry, now)
            && (self.sweep_replacing.load(Ordering::SeqCst) > 0
                || (self.staying_in_service() <= 1 && self.replacement_for(entry)))
    }

    /// A replacement is coming for `entry` once it goes: a start on its way or due, or, while
    /// starts fail since it expired, one the pool retries after its backoff (it is part of
    /// `min_idle`: its own replacement, started ahead, failed).
    pub(super) fn replacement_for(&self, entry: &Entry<W>) -> bool {
        self.replacement_coming()
            || (self.starts_failing_since_expiry(entry)
                && self.counted_staying() <= self.min_idle.load(Ordering::SeqCst))
    }

    /// Starts are failing, the last since `entry` expired.
    pub(super) fn starts_failing_since_expiry(&self, entry: &Entry<W>) -> bool {
        self.failing.load(Ordering::Acquire)
            && self
                .last_failure_at()
                .is_some_and(|failed| entry.expires.is_some_and(|expired| failed >= expired))
    }

    /// Not a whole lifetime past its expiry, or starts have failed since it expired (it is
    /// then the one that still works): one expired worker may stay in service that long.
    pub(super) fn may_stay_past_expiry(&self, entry: &Entry<W>, now: Instant) -> bool {
        !entry.long_expired(now) || self.starts_failing_since_expiry(entry)
    }

    /// Past its lifetime and to be retired for it. One that is the last in service as it is
    /// found expired is kept past it, as a sweep keeps the youngest of those expiring at once,
    /// for as long as `kept_for_replacements` says (its replacement started now if the pool
    /// will want one).
    pub(super) fn expired_and_not_kept(&self, entry: &mut Entry<W>, now: Instant) -> bool {
        if !entry.expired(now) {
            return false;
        }
        if !entry.kept_past_expiry && self.staying_in_service() <= 1 {
            entry.kept_past_expiry = true;
        }
        if entry.kept_past_expiry {
            // At every look, not only the first: one that failed is retried after the
            // backoff also while the worker is never idle for a sweep to find.
            self.start_replacement_ahead(entry);
        }
        !self.kept_for_replacements(entry, now)
    }

    /// Workers in service, less those retired whose `Drop` still runs.
    pub(super) fn staying_in_service(&self) -> usize {
        self.counts
            .in_service()
            .saturating_sub(self.dropping.load(Ordering::SeqCst))
    }

    /// A start is on its way, or one is due: fewer workers counted than `min_idle`, not
    /// counting those retired whose `Drop` still runs (their replacements are claimed next).
    pub(super) fn replacement_coming(&self) -> bool {
        self.counts.on_their_way() > 0
            || self.counted_staying() < self.min_idle.load(Ordering::SeqCst)
    }

    /// Workers counted (open or on their way), less those retired whose `Drop` still runs.
    pub(super) fn counted_staying(&self) -> usize {
        self.counts
            .total()
            .saturating_sub(self.dropping.load(Ordering::SeqCst))
    }

    /// Past its lifetime, unless its lifetime is shorter than the pace of starts
    /// (`MIN_RECONNECT_DELAY`) and it was never leased: such a worker goes out once (as with
    /// the reaper free), or every replacement would expire before its first lease and be
    /// retired in turn, in a tight loop.
    fn expired_for_a_lease(&self, entry: &mut Entry<W>) -> bool {
        let lifetime = |at: Instant| at.saturating_duration_since(entry.born);
        (entry.leased_before
            || entry
                .expires
                .is_some_and(|at| lifetime(at) >= MIN_RECONNECT_DELAY))
            && self.expired_and_not_kept(entry, Instant::now())
    }

    /// [`admit`](Self::admit) for a pool with an `is_alive` hook or a checkout check, a
    /// worker evicted, or one that may have expired.
    #[inline(never)]
    fn admit_with_hooks(&self, mut entry: Box<Entry<W>>, stripe: Stripe) -> Option<Box<Entry<W>>> {
        let _held_here = HeldHere::worker(self, entry.id);
        if self.is_dead(&entry) {
            self.retire(entry, Retire::Died);
            return None;
        }
        if self.evicted(&entry) {
            self.retire(entry, Retire::Evicted);
            return None;
        }
        if self.may_have_expired(&entry) && self.expired_for_a_lease(&mut entry) {
            self.retire(entry, Retire::Expired);
            return None;
        }
        if self.uses.check && self.check_due(&entry) {
            if let Err(cause) = contain::call(|| self.manager.check(&mut entry.worker)) {
                self.failed_checks.fetch_add(1, Ordering::Relaxed);
                self.retire(entry, Retire::CheckFailed(cause));
                return None;
            }
            if self.evicted(&entry) {
                self.retire(entry, Retire::Evicted);
                return None;
            }
            // Its lifetime may have ended while the check ran (a slow round trip). Not that of
            // a worker never leased (it goes out once, and at its return): with a check slower
            // than the lifetime, every worker would expire in it and be retired in turn.
            if self.max_lifetime.is_some()
                && (entry.leased_before || entry.kept_past_expiry)
                && self.expired_for_a_lease(&mut entry)
            {
                self.retire(entry, Retire::Expired);
                return None;
            }
        }
        // User code ran (`is_alive`, the check): it may have closed the pool.
        if self.closed.load(Ordering::Acquire) {
            self.close_worker(entry);
            return None;
        }
        Some(self.lease_out(entry, stripe))
    }

    /// A worker admitted goes out on a lease.
    #[inline(always)]
    fn lease_out(&self, mut entry: Box<Entry<W>>, stripe: Stripe) -> Box<Entry<W>> {
        entry.leased_before = true;
        entry.lease_clock = self.metrics.clock();
        self.checkouts.add(stripe);
        entry
    }

    /// Whether the checkout check runs on this worker: idle (and unchecked) at least
    /// `check_after_idle`.
    #[inline]
    fn check_due(&self, entry: &Entry<W>) -> bool {
        self.check_after_idle.is_zero()
            || Instant::now().saturating_duration_since(entry.last_good()) >= self.check_after_idle
    }

    /// A lease begins: watched for `warn_after`, with where it was taken.
    #[inline]
    pub(crate) fn watch_lease(&self, entry: &Entry<W>, site: &'static Location<'static>) {
        if let Some(watch) = &self.watch {
            watch.begin(entry.id, site);
        }
    }

    #[inline]
    pub(super) fn is_dead(&self, entry: &Entry<W>) -> bool {
        !self.worker_alive(&entry.worker)
    }

    /// The `is_alive` hook's answer (a panic in it counts as dead).
    #[inline]
    pub(crate) fn worker_alive(&self, worker: &W) -> bool {
        !self.uses.is_alive || contain::run(|| self.manager.is_alive(worker)).unwrap_or(false)
    }

    /// Drops a worker that was never counted in (a start given up or failed), contained.
    pub(crate) fn dispose(&self, worker: W) {
        if contain::dispose(worker) {
            contain::logged!(
                error,
                "cylinder: {}: dropping a new worker panicked",
                self.name
            );
        }
    }
}
