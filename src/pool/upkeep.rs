//! The reaper's rounds for a pool: retry failed starts after `reconnect_delay`, close idle
//! and expired workers, report slow leases.

use std::time::{Duration, Instant};

use super::{Retire, Shared};
use crate::event::{emit, Event};
use crate::stripe::Stripe;
use crate::sync::{AtomicUsize, Ordering};

/// The shortest pause between two rounds that have work of their own: a tiny `warn_after`
/// or `idle_timeout` must not make the reaper spin.
const MIN_TICK: Duration = Duration::from_millis(10);

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
        let now = Instant::now();
        let mut next: Option<Duration> = None;
        let mut soon = |due: Duration| next = Some(next.map_or(due, |next| next.min(due)));
        match self.backoff_left(now) {
            Some(left) => soon(left),
            None => self.refill(),
        }
        if let Some(every) = self.sweep_every() {
            let due = *schedule.next_sweep.get_or_insert(now + every);
            if due <= now {
                self.sweep(now);
                schedule.next_sweep = Some(now + every);
                soon(every);
            } else {
                soon(due - now);
            }
        }
        if let Some(watch) = &self.watch {
            watch.report(&self.name, &self.events);
            soon((watch.limit / 2).max(MIN_TICK));
        }
        next
    }

    /// How often the free workers are looked over for `idle_timeout` and `max_lifetime`.
    fn sweep_every(&self) -> Option<Duration> {
        let shortest = match (self.idle_timeout, self.max_lifetime) {
            (Some(idle), Some(life)) => idle.min(life),
            (Some(limit), None) | (None, Some(limit)) => limit,
            (None, None) => return None,
        };
        Some((shortest / 4).clamp(MIN_TICK, Duration::from_secs(60)))
    }

    /// Looks over the free workers: closes those past `max_lifetime` or found dead (and
    /// starts others in their place), and those idle past `idle_timeout` while more than
    /// `min_idle` are open. The ones kept go back before any of that runs user code (a
    /// worker's `Drop`, an event callback), so a callback that blocks holds back no free
    /// worker.
    fn sweep(&self, now: Instant) {
        let stripe = Stripe::current();
        let mut sweep_held = SweepHeld::new(&self.sweeping);
        let mut keep = Vec::new();
        let mut retiring = Vec::new();
        let mut idle_closing = Vec::new();
        for _ in 0..self.free.len() {
            // Counted before it leaves the list, so `stats()` never misses it in between.
            sweep_held.take_one();
            let Some(entry) = self.free.take(stripe) else {
                sweep_held.leave_one();
                break;
            };
            if self.expired(&entry, now) {
                retiring.push((entry, Retire::Expired));
            } else if self.is_dead(&entry) {
                retiring.push((entry, Retire::Died));
            } else if self.idle_timeout.is_some_and(|limit| {
                now.saturating_duration_since(entry.idle_since.unwrap_or(entry.born)) >= limit
            }) && self
                .counts
                .release_above(self.min_idle.load(Ordering::Relaxed))
            {
                idle_closing.push(entry);
            } else {
                keep.push(entry);
            }
        }
        // Workers started together expire together: never all at once. While no other worker
        // would stay in service (none kept, none leased) and replacements are coming (several
        // expire now, or starts are on their way), the youngest expired one serves until a
        // later sweep, when they are in; a lone expired worker with nothing coming goes.
        let expired = retiring
            .iter()
            .filter(|(_, why)| matches!(why, Retire::Expired))
            .count();
        // The idle ones closed are out of the count already.
        let held = keep.len() + retiring.len();
        let coming = expired >= 2 || (expired == 1 && self.counts.on_their_way() > 0);
        if keep.is_empty() && coming && self.counts.in_service() <= held {
            let youngest = retiring
                .iter()
                .enumerate()
                .filter(|(_, (_, why))| matches!(why, Retire::Expired))
                .max_by_key(|(_, (entry, _))| entry.born)
                .map(|(at, _)| at);
            if let Some(at) = youngest {
                keep.push(retiring.swap_remove(at).0);
            }
        }
        // Longest idle first, so the one used last is on top again (`QueueMode::Lifo`) or
        // last in line (`Fifo`), as it was before the sweep.
        keep.sort_by_key(|entry| entry.idle_since.unwrap_or(entry.born));
        for entry in keep {
            self.put_back(entry, stripe);
            sweep_held.leave_one();
        }
        for entry in idle_closing {
            sweep_held.leave_one();
            self.closed_above(entry);
            log::debug!("cylinder: {}: closed an idle worker", self.name);
            emit(&self.events, Event::WorkerIdleClosed);
        }
        for (entry, why) in retiring {
            sweep_held.leave_one();
            self.retire(entry, why);
        }
    }
}

/// The sweep's count of the free workers it holds (`Shared::sweeping`), given back one by one
/// as each is put back or closed, and all at once on any other exit, unwinding included.
struct SweepHeld<'a> {
    count: &'a AtomicUsize,
    held: usize,
}

impl<'a> SweepHeld<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        SweepHeld { count, held: 0 }
    }

    fn take_one(&mut self) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.held += 1;
    }

    fn leave_one(&mut self) {
        if self.held > 0 {
            self.count.fetch_sub(1, Ordering::Relaxed);
            self.held -= 1;
        }
    }
}

impl Drop for SweepHeld<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(self.held, Ordering::Relaxed);
    }
}
