//! The reaper's rounds for a pool: retry failed starts after `reconnect_delay`, close idle
//! and expired workers, report slow leases.

use std::time::{Duration, Instant};

use super::free::HeldFree;
use super::held_here::HeldHere;
use super::metrics::{PoolMetrics, SAMPLE_EVERY};
use super::start::Held;
use super::{Entry, Retire, Shared};
use crate::contain::{self, LogsLater};
use crate::error::Cause;
use crate::event::Event;
use crate::stripe::Stripe;
use crate::sync::Ordering;

/// The shortest pause between two rounds that have work of their own: a tiny `warn_after`
/// or `idle_timeout` must not make the reaper spin.
pub(super) const MIN_TICK: Duration = Duration::from_millis(10);

/// When the next sweep of the free workers is due.
#[derive(Default)]
pub(crate) struct Schedule {
    next_sweep: Option<Instant>,
}

impl<W: Send + 'static> Shared<W> {
    /// One round; returns when the next is due if nothing asks sooner.
    pub(crate) fn upkeep(&self, schedule: &mut Schedule) -> Option<Duration> {
        if self.closed.load(Ordering::Acquire) {
            return None;
        }
        let _in_upkeep = Held::take(&self.in_upkeep, usize::MAX);
        let now = Instant::now();
        let mut next: Option<Duration> = None;
        let mut soon = |due: Duration| next = Some(next.map_or(due, |next| next.min(due)));
        match self.backoff_left(now) {
            Some(left) => soon(left),
            None => self.refill(),
        }
        if self.sweep_again.swap(false, Ordering::SeqCst) {
            // A worker it keeps past its expiry is looked at again at the reaper's pace.
            let kept_expiry = self.sweep(now);
            self.plan_expiry(kept_expiry.map(|at| at.max(now + MIN_TICK)));
        }
        if let Some(every) = self.sweep_every() {
            let planned = *schedule.next_sweep.get_or_insert(now + every);
            // A worker idle at its expiry is closed then, not at the next regular sweep.
            let due = self.next_expiry().map_or(planned, |at| at.min(planned));
            if due <= now {
                // This sweep serves the expiry planned (a return noted during it stays).
                self.next_expiry.store(u64::MAX, Ordering::Relaxed);
                let kept_expiry = self.sweep(now);
                schedule.next_sweep = Some(now + every);
                self.plan_expiry(kept_expiry.map(|at| at.max(now + MIN_TICK)));
                soon(every);
            } else {
                soon(due - now);
            }
            if let Some(at) = self.next_expiry() {
                soon(at.saturating_duration_since(now).max(MIN_TICK));
            }
        }
        if let Some(watch) = &self.watch {
            watch.report(&self.name, &self.events);
            soon((watch.limit / 2).max(MIN_TICK));
        }
        if PoolMetrics::ON {
            self.metrics.sample(|| self.stats());
            soon(SAMPLE_EVERY);
        }
        // Planned from the round's start: a round held up in user code (a keepalive check,
        // an event callback) must not push the next sweep or expiry back by as long; but a
        // round that always takes that long must not run the next at once (a spin).
        let took = now.elapsed();
        next.map(|due| {
            if due > MIN_TICK {
                due.saturating_sub(took).max(MIN_TICK)
            } else {
                due
            }
        })
    }

    /// How often the free workers are looked over for `idle_timeout`, `max_lifetime` and
    /// `keepalive`.
    fn sweep_every(&self) -> Option<Duration> {
        let shortest = [self.idle_timeout, self.max_lifetime, self.keepalive]
            .into_iter()
            .flatten()
            .min()?;
        Some((shortest / 4).clamp(MIN_TICK, Duration::from_secs(60)))
    }

    /// The earliest expiry the next sweep must come by, if any.
    fn next_expiry(&self) -> Option<Instant> {
        match self.next_expiry.load(Ordering::Relaxed) {
            u64::MAX => None,
            nanos => self.epoch.checked_add(Duration::from_nanos(nanos)),
        }
    }

    /// Sets the earliest expiry the reaper plans for (after a sweep), keeping one a return
    /// noted meanwhile if it is earlier.
    fn plan_expiry(&self, at: Option<Instant>) {
        let nanos = at.map_or(u64::MAX, |at| self.since_epoch(at));
        self.next_expiry.fetch_min(nanos, Ordering::Relaxed);
    }

    fn since_epoch(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX - 1)
    }

    /// A worker back in the pool that expires before the reaper planned to look: the
    /// reaper is told, so it is closed at its expiry.
    #[inline]
    pub(super) fn note_expiry(&self, at: Instant) {
        let nanos = self.since_epoch(at);
        if nanos < self.next_expiry.load(Ordering::Relaxed) {
            self.next_expiry.fetch_min(nanos, Ordering::Relaxed);
            self.signal.request();
        }
    }

    /// Looks over the free workers in two passes. First, with no user code, every worker
    /// is taken off the list for a moment: those past `max_lifetime` or evicted are closed
    /// (and others started in their place), those idle past `idle_timeout` while more than
    /// `min_idle` are open are closed, and the rest go straight back. Then, if the pool has
    /// an `is_alive` hook or a `keepalive`, the shelved workers are taken one at a time,
    /// oldest first, looked at (dead? keepalive check due?) and put back (or closed) before
    /// the next is taken: a probe or check that blocks holds back only its own worker.
    /// Returns the earliest expiry among those kept.
    pub(super) fn sweep(&self, now: Instant) -> Option<Instant> {
        let stripe = Stripe::current();
        let sorting = Held::take(&self.sorting, usize::MAX);
        let mut held = HeldFree::new(&self.held_free);
        let mut keeping = Vec::new();
        let mut retiring = Vec::new();
        let mut idle_closing = Vec::new();
        for _ in 0..self.free.len() {
            // Counted before it leaves the list, so `stats()` never misses it in between.
            held.take_one();
            let Some(entry) = self.free.take(stripe) else {
                held.leave_one();
                break;
            };
            if self.evicted(&entry) {
                retiring.push((entry, Retire::Evicted));
            } else if entry.expired(now) {
                retiring.push((entry, Retire::Expired));
            } else if let Some(closing) = self
                .idle_timeout
                .filter(|&limit| {
                    now.saturating_duration_since(entry.idle_since.unwrap_or(entry.born)) >= limit
                })
                .and_then(|_| self.release_above(self.min_idle.load(Ordering::Relaxed)))
            {
                idle_closing.push((entry, closing));
            } else {
                keeping.push(entry);
            }
        }
        // Workers started together expire together: never all at once. While no other worker
        // would stay in service (none kept, none leased) and replacements are coming (several
        // expire now, or a start is on its way, due, or started now), the youngest serves on
        // until they are in (`kept_for_replacements`); a lone expired worker with nothing
        // coming goes.
        let expired = retiring
            .iter()
            .filter(|(_, why)| matches!(why, Retire::Expired))
            .count();
        // The idle ones closed are out of the count already.
        let held_now = keeping.len() + retiring.len();
        let alone = keeping.is_empty() && self.staying_in_service() <= held_now;
        // (A lone one that is part of `min_idle` has its replacement started now, or, while
        // starts fail since it expired, after the backoff.)
        let lone = || {
            retiring
                .iter()
                .find(|(_, why)| matches!(why, Retire::Expired))
                .map(|(entry, _)| entry)
        };
        let coming = || {
            expired >= 2
                || (expired == 1
                    && (self.replacement_coming()
                        || lone().is_some_and(|entry| {
                            self.start_replacement_ahead(entry) || self.replacement_for(entry)
                        })))
        };
        // All of them this thread's until each is back or gone (a `Drop` below may drain).
        let mut held_here = HeldHere::workers(
            self,
            keeping
                .iter()
                .chain(retiring.iter().map(|(entry, _)| entry))
                .chain(idle_closing.iter().map(|(entry, _)| entry))
                .map(|entry| entry.id),
        );
        let mut replacing = None;
        if alone && coming() {
            let youngest = retiring
                .iter()
                .enumerate()
                .filter(|(_, (_, why))| matches!(why, Retire::Expired))
                .max_by_key(|(_, (entry, _))| entry.born)
                .map(|(at, _)| at);
            // Not one a whole lifetime past its expiry (unless starts fail since).
            if let Some(at) = youngest.filter(|&at| self.may_stay_past_expiry(&retiring[at].0, now))
            {
                let mut kept = retiring.swap_remove(at).0;
                kept.kept_past_expiry = true;
                // Until the others are closed and their replacements claimed, they still count
                // as in service: the kept one stays meanwhile, whatever the counts say.
                replacing = Held::take(&self.sweep_replacing, usize::MAX);
                keeping.push(kept);
            }
        }
        // Longest idle first, so the one used last is on top again (`QueueMode::Lifo`) or
        // last in line (`Fifo`), as it was before the sweep.
        keeping.sort_by_key(|entry| entry.idle_since.unwrap_or(entry.born));
        let earliest_expiry = keeping.iter().filter_map(|entry| entry.expires).min();
        for entry in keeping {
            // Back in service, no longer this thread's (a `Drop` that `put_back`'s shrink
            // runs may drain).
            held_here.release(entry.id);
            self.put_back(entry, stripe);
            held.leave_one();
        }
        drop(sorting);
        // The lines of the workers closed below once every one is closed and replaced.
        let logs = LogsLater::begin();
        let closed_idle = self.close_idle(idle_closing, &mut held, &mut held_here);
        let reported = self.retire_held(retiring, &mut held, closed_idle, replacing);
        drop(logs);
        for event in reported {
            self.emit(event);
        }
        drop(held_here);
        drop(held);
        if self.uses.is_alive || self.keepalive.is_some() {
            self.look_at_each(now);
        }
        earliest_expiry
    }

    /// Closes the workers a sweep found idle past `idle_timeout` (counted out already, held
    /// in `held` and `held_here` until each is gone); returns their events.
    fn close_idle(
        &self,
        idle_closing: Vec<(Box<Entry<W>>, Held<'_>)>,
        held: &mut HeldFree<'_>,
        held_here: &mut HeldHere,
    ) -> Vec<Event> {
        let mut closed = Vec::new();
        for (entry, closing) in idle_closing {
            let id = entry.id;
            held.leave_one();
            self.closed_above(entry, closing);
            held_here.release(id);
            contain::logged!(debug, "cylinder: {}: closed an idle worker", self.name);
            closed.push(Event::WorkerIdleClosed);
        }
        closed
    }

    /// The sweep's second pass: each shelved worker taken alone, asked `is_alive` and given
    /// its `keepalive` check if one is due, then shelved again (or closed and replaced).
    fn look_at_each(&self, now: Instant) {
        let mut held = HeldFree::new(&self.held_free);
        for _ in 0..self.free.queued() {
            held.take_one();
            let Some(mut entry) = self.free.take_oldest() else {
                held.leave_one();
                break;
            };
            // Held by this thread while its hooks (user code) run.
            let held_here = HeldHere::worker(self, entry.id);
            // `evicted` is asked again after the check: an `evict_all` may come during it.
            #[allow(clippy::same_functions_in_if_condition)]
            let verdict = if self.is_dead(&entry) {
                Some(Retire::Died)
            } else if self.evicted(&entry) {
                Some(Retire::Evicted)
            } else if let Err(cause) = self.keep_alive(&mut entry, now) {
                self.failed_checks.fetch_add(1, Ordering::Relaxed);
                Some(Retire::CheckFailed(cause))
            } else if self.evicted(&entry) {
                Some(Retire::Evicted)
            } else {
                // Its lifetime may have ended while a check (its own, or one before it) ran;
                // the one the first pass kept past its expiry stays (never all at once).
                (self.max_lifetime.is_some()
                    && self.expired_and_not_kept(&mut entry, Instant::now()))
                .then_some(Retire::Expired)
            };
            drop(held_here);
            match verdict {
                // Shelved, behind the ones not looked at yet.
                None => self.put_back(entry, Stripe::shared()),
                Some(why) => {
                    held.leave_one();
                    self.retire(entry, why);
                    continue;
                }
            }
            held.leave_one();
        }
    }

    /// The `keepalive` check, for an idle worker unused (and unchecked) that long.
    fn keep_alive(&self, entry: &mut Entry<W>, now: Instant) -> Result<(), Cause> {
        let Some(limit) = self.keepalive else {
            return Ok(());
        };
        if now.saturating_duration_since(entry.last_good()) < limit {
            return Ok(());
        }
        let held_here = HeldHere::worker(self, entry.id);
        contain::call(|| self.manager.check(&mut entry.worker))?;
        drop(held_here);
        entry.checked_at = Some(Instant::now());
        Ok(())
    }
}
