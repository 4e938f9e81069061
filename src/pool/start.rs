//! Starting workers: by counting, outside every pool lock, a few at a time in parallel.
//!
//! A start is first *claimed* (the pool's `total` grows by one, so no two callers open the
//! same missing worker), then run by a start thread, which delivers the new worker to a
//! waiter or the free list. Every claim is held by a [`Claim`] guard from the moment a thread
//! takes it up, so a start that fails, is cancelled by `close`, or unwinds gives its count
//! back. A failed start (an error, a panic, or a worker dead on arrival or failing its first
//! check) drops the claims still waiting, and the pool waits `reconnect_delay` before it
//! tries again.

use std::time::{Duration, Instant};

use super::held_here::HeldHere;
use super::metrics::{Clock, Took};
use super::{Entry, Shared};
use crate::contain::{self, LogsLater};
use crate::error::Cause;
use crate::event::Event;
use crate::stripe::{self, Stripe};
use crate::sync::{seqcst_point, AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// How many starts run at once, at most.
pub(crate) const PARALLEL_STARTS: usize = 8;

/// The pool's counts of workers, kept apart from the workers themselves.
#[derive(Default)]
pub(crate) struct Counts {
    /// Two counts in one word, so that one look reads both as of one moment (a claim moves
    /// both at once: read apart, a start just claimed would look open for a moment, and a
    /// `try_checkout` against a dead server would answer `Overload`): the workers open
    /// plus the starts claimed (the number the pool answers for; `TOTAL` units), and the
    /// starts claimed and not yet delivered or failed (`STARTING` units).
    total_and_starting: AtomicU64,
    /// Starts claimed that no start thread has taken up yet.
    pending: AtomicUsize,
    /// Workers started and counted open, on their way into the free list or to a waiter:
    /// the line counts them as on its way (as a start), so no second start is claimed for
    /// the waiter one of them will serve.
    delivering: AtomicUsize,
    /// Start threads running.
    starters: AtomicUsize,
    /// Threads running a start under `start_timeout`, given up on or not: a start that hangs
    /// cannot be stopped, so their number is bounded instead.
    timed_starts: AtomicUsize,
    /// Of those, the ones whose start thread still awaits them (see `Awaited`).
    timed_starts_awaited: AtomicUsize,
    /// Failed starts so far: a waiter that joined the line after the last one waits for the
    /// next before it gives up (see `Shared::acquire`).
    pub(crate) failed_starts: AtomicU64,
}

/// One unit of `Counts::total_and_starting`'s total (its high half).
const TOTAL: u64 = 1 << 32;
/// One unit of its starts claimed (its low half).
const STARTING: u64 = 1;

/// The two halves of `Counts::total_and_starting`.
fn split(word: u64) -> (usize, usize) {
    // Each half is at most `MAX_POOL_SIZE` plus the overflow, far below 2^32.
    ((word >> 32) as usize, (word & 0xFFFF_FFFF) as usize)
}

/// `n` units of a half of `Counts::total_and_starting`.
fn units(n: usize, unit: u64) -> u64 {
    n as u64 * unit
}

/// The most threads running a start under `start_timeout` at once, hung ones included.
const MAX_TIMED_STARTS: usize = 2 * PARALLEL_STARTS;

/// One claimed start that a thread has taken up: counted in `total` and `starting` until it
/// ends. [`Claim::joined`] keeps its place in `total` for the new worker; dropped otherwise
/// (the start failed, was cancelled, or unwound) it gives both counts back.
#[must_use]
pub(crate) struct Claim<'a> {
    counts: &'a Counts,
}

impl<'a> Claim<'a> {
    /// The worker it was for is open: counted open (in `total`, no longer `starting`) and,
    /// until the guard returned drops, on its way into the pool.
    fn joined(self) -> Delivering<'a> {
        let counts = self.counts;
        // Counted on its way before it stops counting as starting: the line never sees it
        // as neither.
        counts.delivering.fetch_add(1, Ordering::SeqCst);
        counts
            .total_and_starting
            .fetch_sub(STARTING, Ordering::SeqCst);
        std::mem::forget(self);
        Delivering(counts)
    }
}

/// A started worker on its way into the pool (see `Counts::delivering`).
#[must_use]
struct Delivering<'a>(&'a Counts);

impl Drop for Delivering<'_> {
    fn drop(&mut self) {
        self.0.delivering.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.counts
            .total_and_starting
            .fetch_sub(TOTAL + STARTING, Ordering::SeqCst);
    }
}

/// One unit of a count (a start thread, a timed start) held while the guard lives, given back
/// on every exit, unwinding included.
#[must_use]
pub(crate) struct Held<'a>(&'a AtomicUsize);

impl<'a> Held<'a> {
    /// Takes one unit if fewer than `limit` are held.
    pub(crate) fn take(count: &'a AtomicUsize, limit: usize) -> Option<Held<'a>> {
        count
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |held| {
                (held < limit).then_some(held + 1)
            })
            .ok()
            .map(|_| Held(count))
    }

    /// Takes charge of a unit taken earlier (by `Counts::enlist`, for a thread).
    fn adopt(count: &'a AtomicUsize) -> Held<'a> {
        Held(count)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What starts report once their thread holds nothing of the pool (no claim, no place among
/// the start threads): their events, and how long each took. The event callback and the
/// metrics recorder are user code, and may block or call back into the pool.
#[must_use]
#[derive(Default)]
struct Reports {
    events: Vec<Event>,
    took: Vec<Took>,
}

impl Reports {
    fn add(&mut self, more: Reports) {
        self.events.extend(more.events);
        self.took.extend(more.took);
    }
}

/// Starts claimed by one caller for itself (`fill_now`): taken up one by one by the threads
/// it runs; those none took up are given back when it ends, unwinding included.
struct OwnClaims<'a> {
    counts: &'a Counts,
    left: AtomicUsize,
}

impl<'a> OwnClaims<'a> {
    fn take(&self) -> Option<Claim<'a>> {
        self.left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(1)
            })
            .ok()
            .map(|_| Claim {
                counts: self.counts,
            })
    }
}

impl Drop for OwnClaims<'_> {
    fn drop(&mut self) {
        let left = self.left.swap(0, Ordering::SeqCst);
        self.counts.give_back(left);
    }
}

impl Counts {
    /// `SeqCst`: a resize's look at it after storing the new size, against a close's look
    /// at the size after counting the worker out (see `Pool::resize`).
    #[inline]
    pub(crate) fn total(&self) -> usize {
        self.total_and_starting().0
    }

    /// Both counts, as of one moment.
    #[inline]
    fn total_and_starting(&self) -> (usize, usize) {
        split(self.total_and_starting.load(Ordering::SeqCst))
    }

    /// Timed starts whose thread still runs and that no longer count as `starting` (given
    /// up after `start_timeout`, or delivered while their thread winds down): a start
    /// awaited within its time counts once, as `starting`, so that a `drain` from its own
    /// user code (one mark, `HeldHere::start`) does not wait for it. Never short: a start
    /// stops being awaited (`Awaited`) before its thread stops counting, and the awaited
    /// are read first.
    pub(crate) fn timed_starts_running(&self) -> usize {
        let awaited = self.timed_starts_awaited.load(Ordering::SeqCst);
        self.timed_starts
            .load(Ordering::SeqCst)
            .saturating_sub(awaited)
    }

    #[inline]
    pub(crate) fn starting(&self) -> usize {
        self.total_and_starting().1
    }

    /// Workers open now.
    #[inline]
    pub(crate) fn open(&self) -> usize {
        let (total, starting) = self.total_and_starting();
        total.saturating_sub(starting)
    }

    /// Nothing open and no start claimed, as of one moment.
    pub(crate) fn none_open_or_starting(&self) -> bool {
        self.total_and_starting() == (0, 0)
    }

    /// Workers open and in the pool's hands or a client's: open, less those started and not
    /// yet in the pool.
    pub(crate) fn in_service(&self) -> usize {
        self.open()
            .saturating_sub(self.delivering.load(Ordering::SeqCst))
    }

    /// Workers started and counted open, not yet in the pool (no user code runs there but
    /// a `Drop` of one closed or evicted as it arrives).
    pub(crate) fn delivering(&self) -> usize {
        self.delivering.load(Ordering::SeqCst)
    }

    /// Starts on their way: claimed, running, or started and not yet in the pool.
    pub(crate) fn on_their_way(&self) -> usize {
        self.starting() + self.delivering.load(Ordering::SeqCst)
    }

    /// Claims up to `wanted` starts while `total` stays within `limit`; returns how many.
    /// `queued` claims wait for a start thread; the others are the claimer's to run.
    fn claim(&self, wanted: usize, limit: usize, queued: bool) -> usize {
        let mut claimed = 0;
        let _ = self
            .total_and_starting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |word| {
                claimed = wanted.min(limit.saturating_sub(split(word).0));
                (claimed > 0).then(|| word + units(claimed, TOTAL + STARTING))
            });
        if claimed > 0 && queued {
            self.pending.fetch_add(claimed, Ordering::SeqCst);
        }
        claimed
    }

    /// One claim for the caller to run now, if the pool has room.
    fn claim_one(&self, limit: usize) -> Option<Claim<'_>> {
        (self.claim(1, limit, false) == 1).then(|| Claim { counts: self })
    }

    /// Gives back `n` claims that no start took up.
    fn give_back(&self, n: usize) {
        if n > 0 {
            self.total_and_starting
                .fetch_sub(units(n, TOTAL + STARTING), Ordering::SeqCst);
        }
    }

    /// Drops the claims still waiting for a start thread (a start failed, or the pool closed).
    pub(crate) fn cancel_pending(&self) {
        self.give_back(self.pending.swap(0, Ordering::SeqCst));
    }

    /// One worker fewer: closed, detached, or a start given up.
    pub(crate) fn release(&self) {
        self.total_and_starting.fetch_sub(TOTAL, Ordering::SeqCst);
    }

    /// One worker fewer, if more than `floor` are counted; whether it was.
    pub(crate) fn release_above(&self, floor: usize) -> bool {
        self.total_and_starting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |word| {
                (split(word).0 > floor).then(|| word - TOTAL)
            })
            .is_ok()
    }

    /// A waiting claim for a start thread to run.
    fn take_pending(&self) -> Option<Claim<'_>> {
        self.pending
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |pending| {
                pending.checked_sub(1)
            })
            .ok()
            .map(|_| Claim { counts: self })
    }

    /// Joins the start threads if fewer than `PARALLEL_STARTS` run.
    fn enlist(&self) -> bool {
        Held::take(&self.starters, PARALLEL_STARTS)
            .map(std::mem::forget)
            .is_some()
    }
}

impl<W: Send + 'static> Shared<W> {
    /// The most workers that may be open, overflow included.
    /// Less the workers counted out whose `Drop` is still running (`closing`): a new start
    /// never takes the place of a worker still alive, so no more than the limit ever are.
    fn limit(&self) -> usize {
        (self.size.load(Ordering::SeqCst) + self.max_overflow)
            .saturating_sub(self.closing.load(Ordering::SeqCst))
    }

    /// Whether the pool may open another worker now. `SeqCst`, to pair with a waiter's
    /// registration and a closer's look for waiters (see `close_above`).
    pub(crate) fn has_room(&self) -> bool {
        self.counts.total() < self.limit()
    }

    /// Claims the starts the pool is short of: up to `min_idle`, and one for each waiter that
    /// no start or free worker is on its way for. Nothing while the pool waits out a failed
    /// start.
    pub(crate) fn refill(&self) {
        self.refill_within(false);
    }

    /// As [`refill`](Self::refill), also while the pool waits out a failed start: a worker
    /// that served a lease and then failed is replaced at once, however the last start went.
    pub(crate) fn replace(&self) {
        self.refill_within(true);
    }

    fn refill_within(&self, despite_backoff: bool) {
        if !self.has_room() {
            return;
        }
        let claimed = {
            // One decision at a time: two callers reading the same shortage must not both
            // claim a start for it.
            let _deciding = self.deciding.lock();
            // During a backoff, one start for the worker retired (or taken), not the whole
            // shortage: the rest waits for the backoff as `refill`'s does.
            let one_each = despite_backoff && self.backoff_left(Instant::now()).is_some();
            match self.wanted(despite_backoff) {
                Some(wanted) if one_each => self.counts.claim(wanted.min(1), self.limit(), true),
                Some(wanted) => self.counts.claim(wanted, self.limit(), true),
                None => 0,
            }
        };
        if claimed > 0 {
            self.launch();
        }
    }

    /// Claims the replacement of a worker about to be kept past its expiry, if the pool will
    /// want one once it goes (it is part of `min_idle`), none is coming and there is room:
    /// started while it still serves, so the pool is not empty meanwhile. Whether one was.
    pub(crate) fn start_replacement_ahead(&self, expired: &Entry<W>) -> bool {
        let claimed = {
            let _deciding = self.deciding.lock();
            let counted = self.counted_staying();
            // A backoff from before its expiry does not hold it back (its retirement would
            // claim a replacement at once too); once one has failed since, the next look
            // after the backoff tries again (meanwhile the kept worker stays, see
            // `replacement_for`): one attempt per `reconnect_delay`, not one per look.
            // A start on its way is the replacement; a shortage nobody has claimed yet (a
            // worker's `Drop` still runs, a backoff) is not: claim it here.
            if self.closed.load(Ordering::Acquire)
                || self.counts.on_their_way() > 0
                || counted > self.min_idle.load(Ordering::SeqCst)
                || (self.backoff_left(Instant::now()).is_some()
                    && self.starts_failing_since_expiry(expired))
            {
                return false;
            }
            self.counts.claim(1, self.limit(), true)
        };
        if claimed > 0 {
            self.launch();
        }
        claimed > 0
    }

    /// How many starts to claim now, if any (called with `deciding` held).
    fn wanted(&self, despite_backoff: bool) -> Option<usize> {
        if self.closed.load(Ordering::Acquire)
            || (!despite_backoff && self.backoff_left(Instant::now()).is_some())
        {
            return None;
        }
        let total = self.counts.total();
        let short = self.min_idle.load(Ordering::SeqCst).saturating_sub(total);
        // A pool whose server is down (nothing open, the last start failed) probes it once
        // per `reconnect_delay` even with `min_idle(0)`: it comes back by itself (into a
        // balancer's rotation too) without waiting for a client to ask.
        let probe = usize::from(total == 0 && self.failing.load(Ordering::Acquire));
        Some(short.max(self.line_short()).max(probe)).filter(|&wanted| wanted > 0)
    }

    /// Waiters in line that no start and no free worker is on its way for.
    fn line_short(&self) -> usize {
        let needed = self
            .waiters
            .unserved()
            .saturating_sub(self.counts.on_their_way());
        if needed == 0 {
            return 0;
        }
        needed.saturating_sub(self.free.len())
    }

    /// A blocking checkout is in line: if the pool may open another worker (overflow, or
    /// fewer open than `size`) and nothing is on its way for each waiter, claim one; a start
    /// thread opens it and it is offered to the line, so the caller waits no longer than its
    /// timeout, however slow the start.
    pub(crate) fn start_for_line(&self) {
        if !self.has_room()
            || self.closed.load(Ordering::Acquire)
            || self.backoff_left(Instant::now()).is_some()
        {
            return;
        }
        let claimed = {
            let _deciding = self.deciding.lock();
            self.line_short() > 0 && self.counts.claim(1, self.limit(), true) > 0
        };
        if claimed {
            self.launch();
        }
    }

    /// A balancer found this pool with nothing free: if it may open another worker and
    /// nothing is on its way, one start is claimed for a start thread (not run on the
    /// caller's thread, which moves on to another pool): a lazy pool (`min_idle` below its
    /// size, or whose server was down) grows with the load a balancer sends it.
    pub(crate) fn start_in_background(&self) {
        if !self.has_room()
            || self.closed.load(Ordering::Acquire)
            || self.backoff_left(Instant::now()).is_some()
            || self.counts.on_their_way() > 0
        {
            return;
        }
        let claimed = {
            let _deciding = self.deciding.lock();
            self.counts.on_their_way() == 0 && self.counts.claim(1, self.limit(), true) > 0
        };
        if claimed {
            self.launch();
        }
    }

    /// A non-blocking checkout found nothing free: if the pool may open another worker
    /// (overflow, or fewer open than `size`), open it on this thread, for this caller
    /// (poolboy's way).
    pub(crate) fn start_for_caller(&self) -> Option<Box<Entry<W>>> {
        if self.closed.load(Ordering::Acquire) || self.backoff_left(Instant::now()).is_some() {
            return None;
        }
        // Its log lines once the worker is open or the failure recorded.
        let logs = LogsLater::begin();
        // Counted as the caller's own from before its claim (a return meanwhile does not
        // close its worker as above the size for it) until the worker is open.
        let own = Held::take(&self.callers_starts, usize::MAX);
        let claim = self.counts.claim_one(self.limit())?;
        let (opened, took) = self.open_worker();
        match opened {
            Ok(opened) => {
                let (entry, event) = self.joined(opened);
                // For this caller, not the line.
                drop(claim.joined());
                drop(own);
                self.wake_those_waiting_for_a_start();
                // While it ran, this start counted as on its way to the line: a waiter that
                // came meanwhile claimed none (`start_for_line`, `wanted`). Claim one for it
                // now, as `deliver` does: not left to the reaper, which a callback may hold
                // up.
                seqcst_point();
                if self.waiters.unserved() > 0 {
                    self.refill();
                }
                // Reported with the worker still in this caller's hand (an event callback
                // that drains does not wait for it).
                let held_here = HeldHere::worker(self, entry.id);
                // A worker returned or delivered while this start counted as the caller's
                // own was kept (`above_size` leaves such a start out); this one is the
                // caller's now, so a worker free above the size goes, as at a return. The
                // count given back above, then this look, against a keep, then its look at
                // the count: one of the two sees the other.
                seqcst_point();
                self.shrink_if_above_size();
                drop(logs);
                self.log_started(entry.id);
                self.metrics.started(took);
                self.emit(event);
                drop(held_here);
                if self.closed.load(Ordering::Acquire) {
                    self.close_worker(entry);
                    self.sample_if_closed();
                    return None;
                }
                Some(entry)
            }
            Err(cause) => {
                // A start cut short by close is no failure to back off from (and no event);
                // its error is user code to drop.
                if self.closed.load(Ordering::SeqCst) {
                    drop(claim);
                    drop(own);
                    contain::dispose(cause);
                    self.sample_if_closed();
                    self.metrics.started(took);
                } else {
                    let failed = self.start_failed(cause, claim);
                    // Given back with the claim, before user code (the recorder, the event)
                    // runs.
                    drop(own);
                    drop(logs);
                    self.metrics.started(took);
                    self.emit(failed);
                }
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
                contain::logged!(
                    error,
                    "cylinder: {}: no thread for a start ({err}); starting on this one",
                    self.name
                );
                self.run_starter();
            }
        }
    }

    /// Claims the starts the pool is short of and runs them on threads of this call, a few
    /// at a time, returning once each has ended: every claim is tried (one failing does not
    /// drop the others), whatever the pool's start threads are busy with. While the pool
    /// waits out a failed start, only up to `added` (the workers a `resize` adds, asked for
    /// by its caller, once; a retry of the others waits for the backoff).
    pub(crate) fn fill_now(&self, added: usize) {
        let claimed = {
            let _deciding = self.deciding.lock();
            let wanted = self
                .wanted(false)
                .or_else(|| self.wanted(true).map(|wanted| wanted.min(added)));
            match wanted {
                Some(wanted) if wanted > 0 => self.counts.claim(wanted, self.limit(), false),
                _ => 0,
            }
        };
        if claimed == 0 {
            return;
        }
        let own = OwnClaims {
            counts: &self.counts,
            left: AtomicUsize::new(claimed),
        };
        // Each thread reports its starts' events once no claim is left for it to take: a
        // callback that blocks or drains must not hold back a claim only these threads
        // can run (a waiter counts it as on its way and claims none of its own).
        let run_own = || {
            let logs = LogsLater::begin();
            let mut reports = Reports::default();
            while let Some(claim) = own.take() {
                reports.add(self.run_claim(claim));
            }
            drop(logs);
            self.report(reports);
        };
        if cfg!(loom) {
            return run_own();
        }
        std::thread::scope(|scope| {
            for _ in 1..claimed.min(PARALLEL_STARTS) {
                let spawned = std::thread::Builder::new()
                    .name(format!("cylinder-start-{}", self.name))
                    .spawn_scoped(scope, || {
                        stripe::opt_out();
                        run_own();
                    });
                if spawned.is_err() {
                    break;
                }
            }
            run_own();
        });
    }

    /// A start thread's work (one `starters` unit was taken for it): take claimed starts one
    /// by one and run them. Before it ends, it looks once more for a claim made while it was
    /// leaving (the claimer may have seen every start thread busy).
    ///
    /// The events and log lines of each start are reported with the thread's place among
    /// the start threads given back: a callback (or logger) that blocks holds back no other
    /// start.
    fn run_starter(&self) {
        let mut enlisted = Held::adopt(&self.counts.starters);
        loop {
            while let Some(claim) = self.counts.take_pending() {
                let logs = LogsLater::begin();
                let reports = self.run_claim(claim);
                drop(enlisted);
                // A claim made while every start thread was busy gets a thread of its own
                // before this one runs user code (the logger, the events).
                if self.counts.pending.load(Ordering::SeqCst) > 0 {
                    self.launch();
                }
                drop(logs);
                self.report(reports);
                if !self.counts.enlist() {
                    return;
                }
                enlisted = Held::adopt(&self.counts.starters);
            }
            drop(enlisted);
            if self.counts.pending.load(Ordering::SeqCst) == 0 || !self.counts.enlist() {
                return;
            }
            enlisted = Held::adopt(&self.counts.starters);
        }
    }

    /// Reports what starts ran (see [`Reports`]), with nothing of the pool held.
    fn report(&self, reports: Reports) {
        self.sample_if_closed();
        for took in reports.took {
            self.metrics.started(took);
        }
        for event in reports.events {
            self.emit(event);
        }
    }

    /// Runs one claimed start and delivers its worker, or records its failure; returns what
    /// it has for the caller to report. Nothing starts once the pool is closed: the claim is
    /// given back. Callers hold its log lines back (`LogsLater`) until they hold nothing
    /// (a new worker's `Drop` that panicked is logged while the claim is held).
    fn run_claim(&self, claim: Claim<'_>) -> Reports {
        if self.closed.load(Ordering::SeqCst) {
            drop(claim);
            return Reports::default();
        }
        let (opened, took) = self.open_worker();
        let events = match opened {
            Ok(opened) => self.deliver(opened, claim),
            Err(cause) => {
                // A start cut short by close is no failure to back off from; its error is
                // user code to drop.
                if self.closed.load(Ordering::SeqCst) {
                    drop(claim);
                    contain::dispose(cause);
                    Vec::new()
                } else {
                    vec![self.start_failed(cause, claim)]
                }
            }
        };
        Reports {
            events,
            took: vec![took],
        }
    }

    /// Opens a worker with the start closure or manager, within `start_timeout` if one is
    /// set, and looks it over (see [`first_look`](Self::first_look)). With it comes the
    /// `evict_all` count from before the start began: a start under way when `evict_all`
    /// is called may have used what the eviction was for (old credentials, the old server),
    /// and how long it took (for the recorder, once the caller holds nothing).
    fn open_worker(&self) -> (Result<(W, u64), Cause>, Took) {
        let generation = self.generation.load(Ordering::Acquire);
        let clock = self.metrics.clock();
        let opened = match self.start_timeout {
            Some(limit) if !cfg!(loom) => self.open_within(limit),
            _ => {
                // This thread runs the start (its user code): a `try_checkout`, `resize` or
                // `drain` called from that code does not wait for it.
                let _held_here = HeldHere::start(self);
                self.open_now()
            }
        };
        (opened.map(|worker| (worker, generation)), clock.took())
    }

    fn open_now(&self) -> Result<W, Cause> {
        // Looked at again here, on the thread that runs the start (a timed start's thread may
        // come up well after its claim was taken): nothing starts once the pool is closed.
        if self.closed.load(Ordering::SeqCst) {
            return Err(Cause::message("the pool was closed"));
        }
        let mut worker = contain::call(|| self.manager.start())?;
        let customized = match &self.on_start {
            Some(hook) => contain::call(|| hook(&mut worker)),
            None => Ok(()),
        };
        match customized.and_then(|()| self.first_look(&mut worker)) {
            Ok(()) => Ok(worker),
            Err(cause) => {
                self.dispose(worker);
                Err(cause)
            }
        }
    }

    /// A new worker that is dead already, or fails its first check, is a failed start (with
    /// that cause): it counts toward the backoff and the fuse, so a server that accepts and
    /// then drops every connection cannot make the pool start workers in a tight loop.
    fn first_look(&self, worker: &mut W) -> Result<(), Cause> {
        if !self.worker_alive(worker) {
            return Err(Cause::message(
                "the new worker was dead on arrival (is_alive was false right after its start)",
            ));
        }
        if self.uses.check {
            contain::call(|| self.manager.check(worker))?;
        }
        Ok(())
    }

    /// An open on a thread of its own, given up after `limit`: its worker, if it comes later,
    /// is dropped there (contained).
    fn open_within(&self, limit: Duration) -> Result<W, Cause> {
        let Some(me) = self.me.upgrade() else {
            return Err(Cause::message("the pool is gone"));
        };
        let Some(timed) = Held::take(&self.counts.timed_starts, MAX_TIMED_STARTS) else {
            return Err(Cause::message(format!(
                "{MAX_TIMED_STARTS} starts are still running past start_timeout"
            )));
        };
        // The thread takes the unit over: it is given back when that thread ends.
        std::mem::forget(timed);
        let awaited = Awaited::begin(&self.counts);
        let (sender, receiver) = crossbeam::channel::bounded(1);
        let their_awaited = awaited.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("cylinder-start-{}", self.name))
            .spawn(move || {
                stripe::opt_out();
                // Its log lines (a refused or late worker's `Drop` that panicked) once it
                // holds nothing: declared first, so dropped last.
                let _logs = LogsLater::begin();
                let _timed = Held::adopt(&me.counts.timed_starts);
                // Ends before `_timed` (declared after it): never counted short.
                let _awaited = AwaitedGuard(their_awaited, &me.counts);
                // The start's user code, and a late worker's `Drop`, run on this thread.
                let _held_here = HeldHere::start(&*me);
                let opened = me.open_now();
                // A worker that came too late (or after close) is dropped here, contained.
                match sender.send(opened) {
                    Err(crossbeam::channel::SendError(Ok(late))) => me.dispose(late),
                    Err(crossbeam::channel::SendError(Err(cause))) => {
                        contain::dispose(cause);
                    }
                    Ok(()) => {}
                }
            });
        if let Err(err) = spawned {
            awaited.end(&self.counts);
            drop(Held::adopt(&self.counts.timed_starts));
            return Err(Cause::new(err));
        }
        let answer = receiver.recv_timeout(limit);
        // Given up (or served): from here the start counts by its claim, and its thread by
        // `timed_starts` until it ends.
        awaited.end(&self.counts);
        let outcome = match answer {
            Ok(opened) => opened,
            Err(crossbeam::channel::RecvTimeoutError::Timeout) => Err(Cause::message(format!(
                "the start did not finish within {limit:?}"
            ))),
            Err(crossbeam::channel::RecvTimeoutError::Disconnected) => {
                Err(Cause::message("the start thread ended without a worker"))
            }
        };
        // A worker sent just after the timeout sits in the channel: it goes with the
        // receiver, contained (its `Drop` runs while this thread holds the start's claim).
        let held_here = HeldHere::start(self);
        contain::dispose(receiver);
        drop(held_here);
        outcome
    }

    /// A new worker joins: to a waiter, or the free list. It counts as open at once (a lease
    /// of it is never seen as a start) and as on its way to the line until it is in the pool,
    /// so the line never sees it as neither. The event is reported once the worker is in the
    /// pool: a callback that checks out (or blocks) must not hold back the very worker it
    /// reports.
    fn deliver(&self, opened: (W, u64), claim: Claim<'_>) -> Vec<Event> {
        let (entry, event) = self.joined(opened);
        let id = entry.id;
        let delivering = claim.joined();
        // Counted open and on its way at once: a `Drop` below (closed, or evicted on
        // arrival) that drains does not wait for either.
        let mut held_here = HeldHere::delivery(self, entry.id);
        let mut evicted = None;
        if self.closed.load(Ordering::Acquire) {
            self.close_worker(entry);
        } else if self.evicted(&entry) {
            // Started before an `evict_all` (with what the eviction was for): it goes at
            // once, and another starts in its place; reported once it no longer counts as
            // on its way (a callback may `drain`, which waits for deliveries).
            evicted = Some(self.retire_unreported(entry, super::Retire::Evicted));
        } else {
            // Shelved, not parked for this thread (a `build` or `resize` runs starts on the
            // caller's thread too): a new worker is for whoever comes next. In service, no
            // longer this thread's (a `Drop` that `put_back`'s shrink runs may drain).
            held_here.release(entry.id);
            self.put_back(entry, Stripe::shared());
        }
        drop(delivering);
        drop(held_here);
        // A waiter that came while this start still counted as on its way to the line (it
        // was handed to another, or kept free) claimed none: claim one for it now. The
        // `SeqCst` count above, then the look for waiters, against the waiter's registration,
        // then its look at `starting` (`start_for_line`): one of the two sees the other.
        seqcst_point();
        if self.waiters.unserved() > 0 {
            self.refill();
        }
        self.wake_those_waiting_for_a_start();
        self.log_started(id);
        // Reported by the caller, with the thread's claims and place given back.
        evicted.into_iter().chain([event]).collect()
    }

    /// A `try_checkout` waiting for a start on its way leaves once none is: each start that
    /// ends wakes them to look.
    fn wake_those_waiting_for_a_start(&self) {
        if self.waiting_for_a_start.load(Ordering::SeqCst) > 0 {
            self.waiters.wake_all();
        }
    }

    /// The log line of a new worker, once it is in the pool (or in its caller's hand): the
    /// logger is user code, and must not hold back the worker it reports.
    fn log_started(&self, id: u64) {
        contain::logged!(debug, "cylinder: {}: worker {id} started", self.name);
    }

    /// Gives a started worker its entry, with the event to report.
    fn joined(&self, (worker, generation): (W, u64)) -> (Box<Entry<W>>, Event) {
        let born = Instant::now();
        let entry = Box::new(Entry {
            worker,
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            born,
            expires: self
                .max_lifetime
                .and_then(|lifetime| born.checked_add(jittered(lifetime))),
            idle_since: None,
            checked_at: None,
            leased_before: false,
            kept_past_expiry: false,
            generation,
            lease_clock: Clock::IDLE,
        });
        let nth = self.started.fetch_add(1, Ordering::Relaxed);
        if self.failing.swap(false, Ordering::AcqRel) {
            // The server is back: the reaper claims now what the backoff held back (a
            // `replace` during it claimed one start each), not at the backoff's end.
            self.signal.request();
        }
        let event = if nth < self.first_fill as u64 {
            Event::WorkerStarted
        } else {
            Event::WorkerRestarted
        };
        (entry, event)
    }

    /// A start failed: the claims still waiting are dropped, the failure recorded, then its
    /// own claim given back, and the pool waits `reconnect_delay` before the next try (the
    /// reaper makes it).
    #[must_use]
    fn start_failed(&self, cause: Cause, claim: Claim<'_>) -> Event {
        // This thread holds the claim while user code runs (the `Drop` of the cause this one
        // replaces): a `drain` there does not wait for it.
        let held_here = HeldHere::start(self);
        self.counts.cancel_pending();
        // Logged once the failure is recorded and the claim given back: the logger is user
        // code, and a waiter must not wait on it for the cause.
        let shown = cause.clone();
        // Recorded while its claim still counts as on its way: no client ever sees neither
        // a start on its way nor the failure (a `try_checkout` would open one more start).
        self.note_failure(cause);
        drop(claim);
        drop(held_here);
        // The reaper is asked again: a round that ran before the claim was given back (and
        // after a success elsewhere healed the failure) counted it as on its way.
        self.signal.request();
        // Given back, the fuse may be blown now: waiters with nothing left to wait for leave.
        if self.fuse_blown() {
            self.waiters.wake_all();
        }
        self.wake_those_waiting_for_a_start();
        contain::logged!(
            warn,
            "cylinder: {}: a worker could not start: {shown}; retrying in {:?}",
            self.name,
            self.reconnect_delay
        );
        Event::StartFailed
    }

    /// Records a failed start: the fuse and the backoff read it, and the reaper plans the
    /// retry.
    pub(crate) fn note_failure(&self, cause: Cause) {
        self.record_cause(cause, true);
        self.failing.store(true, Ordering::Release);
        self.counts.failed_starts.fetch_add(1, Ordering::SeqCst);
        self.signal.request();
        // Waiters with nothing left to wait for leave with the cause (revolver's fuse).
        if self.fuse_blown() {
            self.waiters.wake_all();
        }
    }
}

/// `lifetime` less a random amount of up to 2.5 % (HikariCP's variance): workers started
/// together expire over a spread, not in one reconnect storm.
fn jittered(lifetime: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    // A fresh `RandomState` is keyed anew: its hash of nothing is a random number.
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    #[allow(clippy::cast_precision_loss)] // 53 bits of randomness are plenty
    let fraction = (random >> 11) as f64 / (1u64 << 53) as f64;
    lifetime.saturating_sub(lifetime.mul_f64(0.025 * fraction))
}

/// Whether a timed start's start thread still awaits it (`Counts::timed_starts_awaited`):
/// whichever of the two threads is done with it first (the start thread once it stops
/// waiting, the timed thread as it ends) counts it out, once.
#[derive(Clone)]
struct Awaited(std::sync::Arc<AtomicBool>);

impl Awaited {
    fn begin(counts: &Counts) -> Awaited {
        counts.timed_starts_awaited.fetch_add(1, Ordering::SeqCst);
        Awaited(std::sync::Arc::new(AtomicBool::new(true)))
    }

    fn end(&self, counts: &Counts) {
        if self.0.swap(false, Ordering::SeqCst) {
            counts.timed_starts_awaited.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// The timed thread's side of `Awaited`: ends it on every exit, unwinding included.
struct AwaitedGuard<'a>(Awaited, &'a Counts);

impl Drop for AwaitedGuard<'_> {
    fn drop(&mut self) {
        self.0.end(self.1);
    }
}
