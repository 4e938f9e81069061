//! The return path: a worker back to service after a lease (its return hooks, the line, the
//! free list), or out of it (retired and replaced, closed above the size, detached).

use std::time::Instant;

use super::free::HeldFree;
use super::held_here::HeldHere;
use super::start::Held;
use super::upkeep::MIN_TICK;
use super::{drop_worker, Entry, OnClientPanic, Retire, Return, Shared};
use crate::contain::{self, LogsLater};
use crate::error::Cause;
use crate::event::Event;
use crate::stripe::Stripe;
use crate::sync::{seqcst_point, Ordering};

impl<W: Send + 'static> Shared<W> {
    /// Ends a lease: the worker goes back to service, or is retired and replaced.
    #[inline]
    pub(crate) fn end_lease(&self, mut entry: Box<Entry<W>>, how: Return) {
        if let Some(watch) = &self.watch {
            watch.end(entry.id);
        }
        // Recorded once the worker is back or retired: the recorder is user code.
        let held = entry.lease_clock.took();
        let discard = match how {
            Return::Release => false,
            Return::Discard => true,
            Return::Panicking => self.on_client_panic == OnClientPanic::Discard,
        };
        let unfit = if discard {
            Some(Retire::Discarded)
        } else {
            self.unfit(&mut entry)
        };
        if let Some(why) = unfit {
            self.discards.fetch_add(1, Ordering::Relaxed);
            self.retire(entry, why);
        } else {
            let stripe = Stripe::current();
            self.releases.add(stripe);
            self.put_back(entry, stripe);
        }
        self.metrics.lease_ended(held);
        self.sample_if_closed();
    }

    /// Runs the return hooks on a worker coming back from a lease; `Some` says why it must
    /// go.
    #[inline]
    pub(super) fn unfit(&self, entry: &mut Entry<W>) -> Option<Retire> {
        if self.uses.on_return {
            if let Some(why) = self.unfit_by_hooks(entry) {
                return Some(why);
            }
        }
        if self.evicted(entry) {
            return Some(Retire::Evicted);
        }
        if self.reads_idle_clock {
            let now = Instant::now();
            if self.expired_on_return(entry, now) {
                return Some(Retire::Expired);
            }
            entry.idle_since = Some(now);
        }
        None
    }

    /// The return hooks (`is_broken`, `reset`, `is_alive`): user code, out of the lease's
    /// path, run with the worker held here.
    #[inline(never)]
    fn unfit_by_hooks(&self, entry: &mut Entry<W>) -> Option<Retire> {
        let _held_here = HeldHere::worker(self, entry.id);
        if self.uses.is_broken {
            match contain::run(|| self.manager.is_broken(&mut entry.worker)) {
                Ok(false) => {}
                Ok(true) => return Some(Retire::Broken(Cause::message("found broken on return"))),
                Err(cause) => return Some(Retire::Broken(cause)),
            }
        }
        if self.uses.reset {
            if let Err(cause) = contain::call(|| self.manager.reset(&mut entry.worker)) {
                return Some(Retire::Broken(cause));
            }
        }
        self.is_dead(entry).then_some(Retire::Died)
    }

    /// Whether a worker coming back into service (from a lease, or from `map`) is past its
    /// `max_lifetime` and goes; if it stays, the reaper is told when it expires (a sweep at
    /// its expiry may have found it out of the free list).
    pub(super) fn expired_on_return(&self, entry: &mut Entry<W>, now: Instant) -> bool {
        if self.expired_and_not_kept(entry, now) {
            return true;
        }
        if let Some(at) = entry.expires {
            // Kept past it: looked at again no sooner than the reaper's pace (a client
            // returning it in a loop must not make the reaper sweep at every return).
            self.note_expiry(if at <= now { now + MIN_TICK } else { at });
        }
        false
    }

    /// Started before the last `evict_all`.
    #[inline]
    pub(super) fn evicted(&self, entry: &Entry<W>) -> bool {
        entry.generation != self.generation.load(Ordering::Relaxed)
    }

    /// Returns a worker to service. While more workers are open than `size` (overflow, or a
    /// shrink), it goes to a waiter if one waits (here, even one away looking in another
    /// pool, or a balancer's elsewhere that listens) and is otherwise closed (poolboy's
    /// rule).
    #[inline(always)]
    pub(super) fn put_back(&self, entry: Box<Entry<W>>, stripe: Stripe) {
        if self.above_size(self.size.load(Ordering::Relaxed)) {
            return self.put_back_above_size(entry, stripe);
        }
        self.keep_in_service(entry, stripe);
    }

    /// `put_back` while more workers are open than `size`: out of the fast path, so that a
    /// plain return stays inlined into the lease's drop.
    #[cold]
    #[inline(never)]
    fn put_back_above_size(&self, entry: Box<Entry<W>>, stripe: Stripe) {
        let entry = match self.waiters.hand(entry) {
            Ok(()) => return,
            // Kept free for a balancer's waiter: away from this line (it looks here when
            // back), or in another pool's line (nudged); closed once there is none
            // (`shrink_unless_kept`).
            Err(entry) if self.keeps_above_size() => entry,
            Err(entry) => match self.close_above(entry, self.size.load(Ordering::Relaxed)) {
                Some(entry) => entry,
                None => return,
            },
        };
        self.keep_in_service(entry, stripe);
    }

    /// `put_back` once the worker stays: to a waiter or the free list, then the looks that
    /// keep a return racing `close`, a shrink or `evict_all` from leaving it in service.
    #[inline(always)]
    fn keep_in_service(&self, entry: Box<Entry<W>>, stripe: Stripe) {
        let generation = entry.generation;
        self.give_back(entry, stripe);
        // A return racing `close` must not leave a worker in a closed pool.
        if self.closed.load(Ordering::Acquire) {
            self.drain();
        }
        // Nor one racing a shrink above the new size: the size was read before the worker
        // was kept, and the shrink may have looked for free workers in between. The keep's
        // `SeqCst` write, then this look, against the resize's store, then its
        // look for free workers: one of the two sees the other.
        seqcst_point();
        self.shrink_if_above_size();
        // Nor an evicted one: `evict_all` came after the caller's look (a return's `unfit`,
        // a start's `deliver`, a sweep) and swept before it was kept. The same pairing: its
        // count's increment, then its sweep, against the keep, then this look. The reaper
        // sweeps again (no user code, no sweep within a sweep here).
        if self.generation.load(Ordering::SeqCst) != generation {
            self.sweep_again.store(true, Ordering::SeqCst);
            self.signal.request();
        }
    }

    /// Closes what is free above the size, unless it is kept for a balancer's waiter.
    pub(super) fn shrink_if_above_size(&self) {
        if self.above_size(self.size.load(Ordering::SeqCst)) && !self.keeps_above_size() {
            self.shrink();
        }
    }

    /// More workers counted than `size` (open, or on their way to the pool), not counting
    /// those retired whose `Drop` still runs (they are going: a worker returned meanwhile is
    /// not closed in their place), nor a `try_checkout`'s own start (its worker goes to that
    /// caller, and is closed at its return if the pool is still above its size then).
    #[inline]
    fn above_size(&self, size: usize) -> bool {
        self.counts.total() > size
            && self
                .counted_staying()
                .saturating_sub(self.callers_starts.load(Ordering::SeqCst))
                > size
    }

    /// Gives a worker to a waiter if there is one, else keeps it free. Touches the waiters'
    /// lock only when someone waits.
    #[inline(always)]
    pub(super) fn give_back(&self, entry: Box<Entry<W>>, stripe: Stripe) {
        if self.waiters.has_waiters() {
            self.waiters
                .offer(entry, |entry| self.queue(entry), || self.free.queued());
            // Handed to a waiter here, or kept free for one: listeners elsewhere hear of
            // what is free.
            self.nudge_listeners(false);
            return;
        }
        if let Err(entry) = self.free.keep(entry, stripe) {
            return self.overfull(entry);
        }
        // No fence needed before this re-check: `keep` ends in a `SeqCst` write (the parked
        // owner's count's store, or `ArrayQueue::push` claiming its tail), and a
        // waiter registers with a `SeqCst` increment and fence before it looks for a worker
        // (the parked count with a `SeqCst` load; the queue's empty check after the queue's
        // own `SeqCst` fence). So either the waiter finds this worker, or this re-check sees
        // the waiter and hands a worker over. The loom stand-ins keep those orderings (see
        // loom-tests/README.md).
        seqcst_point();
        if self.waiters.has_waiters() {
            if let Some(entry) = self.free.take(stripe) {
                self.waiters
                    .offer(entry, |entry| self.queue(entry), || self.free.queued());
            }
        }
        // A balancer's checkout waiting in another pool's line may take it (the same
        // pairing as the waiters' above; a worker queued for this line may be free too).
        self.nudge_listeners(true);
    }

    pub(super) fn queue(&self, entry: Box<Entry<W>>) {
        if let Err(entry) = self.free.push(entry) {
            self.overfull(entry);
        }
    }

    /// The free queue is sized for every worker the pool may open: this cannot happen, but
    /// if it did the worker is closed rather than lost silently.
    pub(super) fn overfull(&self, entry: Box<Entry<W>>) {
        contain::logged!(
            error,
            "cylinder: {}: more free workers than the pool has room for; closing one",
            self.name
        );
        self.close_worker(entry);
    }

    /// Closes `entry` if more than `floor` workers are open; else hands it back.
    ///
    /// A checkout that found the pool at its limit may have registered in the line just after
    /// this worker's holder looked for waiters: now that the pool has room again, a start is
    /// claimed for it (the waiter, for its part, asks the reaper for one if it sees the room
    /// first; see `wait_for`).
    pub(super) fn close_above(&self, entry: Box<Entry<W>>, floor: usize) -> Option<Box<Entry<W>>> {
        match self.release_above(floor) {
            Some(closing) => {
                self.closed_above(entry, closing);
                None
            }
            None => Some(entry),
        }
    }

    /// Counts one worker out if more than `floor` are open: then it counts as closing (for
    /// `drain`) until the `Held` that comes back is dropped, after its `Drop`.
    pub(super) fn release_above(&self, floor: usize) -> Option<Held<'_>> {
        let closing = Held::take(&self.closing, usize::MAX)?;
        self.counts.release_above(floor).then_some(closing)
    }

    /// Closes a worker already counted out by [`release_above`](Self::release_above), and
    /// restarts one if a waiter or `min_idle` needs it.
    pub(super) fn closed_above(&self, entry: Box<Entry<W>>, closing: Held<'_>) {
        // Its log line (a `Drop` that panicked) once it no longer holds its place.
        let _logs = LogsLater::begin();
        {
            let id = entry.id;
            let held_here = HeldHere::worker(self, id);
            drop_worker(&self.name, entry);
            drop(held_here);
            drop(closing);
            HeldHere::gone(self, id);
            // The release's `SeqCst` read-modify-write, then the `SeqCst` look for waiters,
            // against a waiter's registration and fence, then its claim (`start_for_line`):
            // one of the two sees the other (`seqcst_point` gives loom that order).
            seqcst_point();
            // Below `min_idle` only if a resize up came in after the floor was read.
            if self.waiters.has_unserved()
                || self.counts.total() < self.min_idle.load(Ordering::SeqCst)
            {
                self.refill();
            }
        }
    }

    /// Takes a worker out of service and starts another in its place.
    ///
    /// A worker that dies or fails a check before its first lease, within `reconnect_delay`
    /// of its start, was dead on arrival: a failed start, with the backoff that follows. Any
    /// other is replaced at once, backoff or not: a worker that served and then failed says
    /// nothing about the next start.
    pub(super) fn retire(&self, entry: Box<Entry<W>>, why: Retire) {
        let event = self.retire_unreported(entry, why);
        self.emit(event);
    }

    /// Retires workers the caller took off the free list (counted in `held`), and returns
    /// their events (after `reported`, those of workers closed before) for the caller to
    /// report once it holds nothing more: a callback may wait for them (`drain`), or block,
    /// and only this thread can close them. Their log lines are written once every one is
    /// closed. `replacing` (a sweep's, see `sweep_replacing`) is given back once every
    /// replacement is claimed.
    #[must_use]
    pub(super) fn retire_held(
        &self,
        retiring: impl IntoIterator<Item = (Box<Entry<W>>, Retire)>,
        held: &mut HeldFree<'_>,
        mut reported: Vec<Event>,
        replacing: Option<Held<'_>>,
    ) -> Vec<Event> {
        let logs = LogsLater::begin();
        // Those not yet retired are this thread's while each goes (its `Drop` may drain).
        let retiring: Vec<_> = retiring.into_iter().collect();
        let mut held_here = HeldHere::workers(self, retiring.iter().map(|(entry, _)| entry.id));
        for (entry, why) in retiring {
            let id = entry.id;
            held.leave_one();
            reported.push(self.retire_unreported(entry, why));
            held_here.release(id);
        }
        drop(replacing);
        drop(logs);
        reported
    }

    /// Retires a worker as [`retire`](Self::retire) does, and returns the event to report.
    pub(super) fn retire_unreported(&self, entry: Box<Entry<W>>, why: Retire) -> Event {
        // Its log lines (a `Drop` that panicked, "dropped") once it is replaced.
        let _logs = LogsLater::begin();
        let dead_on_arrival = !entry.leased_before && entry.born.elapsed() < self.reconnect_delay;
        let id = entry.id;
        let (event, cause) = match why {
            Retire::Discarded => (Event::WorkerDiscarded, None),
            Retire::Died => (Event::WorkerDied, None),
            Retire::CheckFailed(cause) => (Event::CheckFailed, Some(cause)),
            Retire::Broken(cause) => (Event::WorkerBroken, Some(cause)),
            Retire::Expired => (Event::WorkerExpired, None),
            Retire::Evicted => (Event::WorkerEvicted, None),
        };
        // Logged last: the logger is user code too, and must not hold back the replacement.
        let shown = cause.clone();
        // Closed first (its `Drop` ends before a replacement may start, so no more than the
        // pool's limit are ever alive at once), then its replacement claimed, then the event:
        // a callback that blocks must not hold back the replacement.
        self.close_worker(entry);
        if dead_on_arrival && matches!(event, Event::CheckFailed | Event::WorkerDied) {
            let cause = cause.unwrap_or_else(|| {
                Cause::message(format!("worker {id} died before its first lease"))
            });
            self.note_failure(cause);
            self.refill();
        } else {
            if let Some(cause) = cause {
                self.keep_cause(cause);
            }
            self.replace();
        }
        match shown {
            Some(cause) => contain::logged!(
                warn,
                "cylinder: {}: worker {id} dropped ({event:?}): {cause}",
                self.name
            ),
            None => contain::logged!(
                debug,
                "cylinder: {}: worker {id} dropped ({event:?})",
                self.name
            ),
        }
        event
    }

    /// Detaches a leased worker: the pool forgets it and starts another.
    pub(crate) fn detach(&self, entry: Entry<W>) -> W {
        if let Some(watch) = &self.watch {
            watch.end(entry.id);
        }
        let held = entry.lease_clock.took();
        self.takes.fetch_add(1, Ordering::Relaxed);
        self.counts.release();
        // Replaced at once, as a retired worker that served a lease is, also while the pool
        // waits out a failed start (a worker that served and left says nothing of the next
        // start); claimed before the event and the record, as `retire_unreported` does: a
        // callback or recorder that blocks must not hold the replacement back.
        self.replace();
        self.metrics.lease_ended(held);
        self.emit(Event::WorkerTaken);
        self.sample_if_closed();
        entry.worker
    }

    /// Drops a worker the pool owns and forgets it.
    /// Its `Drop` ends before it is counted out: until then the pool has no room for a
    /// replacement (never more alive than the limit), and `drain` waits for it.
    pub(super) fn close_worker(&self, entry: Box<Entry<W>>) {
        // Its log line (a `Drop` that panicked) once it no longer holds its place.
        let logs = LogsLater::begin();
        // Out of service from here, though still counted until it is gone.
        let dropping = Held::take(&self.dropping, usize::MAX);
        let id = entry.id;
        let held_here = HeldHere::worker(self, id);
        drop_worker(&self.name, entry);
        drop(held_here);
        self.counts.release();
        HeldHere::gone(self, id);
        drop(dropping);
        drop(logs);
    }

    /// Drops every free worker (after close).
    #[cold]
    pub(super) fn drain(&self) {
        let stripe = Stripe::current();
        while let Some(entry) = self.free.take(stripe) {
            self.close_worker(entry);
        }
    }

    /// A balancer's waiter stopped listening here: what is free goes to the others, and
    /// what is free above the size may be closed.
    pub(super) fn listener_left(&self) {
        self.nudge_listeners(false);
        self.shrink_unless_kept();
    }

    /// Whether a worker above the size is kept free rather than closed: for a balancer's
    /// waiter away from this line, or listening here from another pool's (see `put_back`).
    fn keeps_above_size(&self) -> bool {
        self.listeners.any() || self.waiters.has_away()
    }

    /// Closes what is free above the size once no balancer's waiter it was kept for is
    /// left: called when one stops listening here, or is done waiting in this line.
    /// The same pairing as `put_back`'s: the waiter's count, then this look at the free
    /// workers, against a keep, then its look at the waiters.
    pub(super) fn shrink_unless_kept(&self) {
        seqcst_point();
        if !self.keeps_above_size() && self.above_size(self.size.load(Ordering::SeqCst)) {
            self.shrink();
        }
    }

    /// Closes free workers while more than the pool's size are open (a shrink). The size is read
    /// afresh each time: a resize up that came in meanwhile stops the shrink.
    #[cold]
    pub(super) fn shrink(&self) {
        let stripe = Stripe::current();
        loop {
            let size = self.size.load(Ordering::SeqCst);
            if !self.above_size(size) {
                break;
            }
            let Some(entry) = self.free.take(stripe) else {
                break;
            };
            if let Some(entry) = self.close_above(entry, size) {
                self.put_back(entry, stripe);
                break;
            }
        }
    }
}
