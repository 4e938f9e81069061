//! The line of blocked checkouts, with eventual fairness.
//!
//! A release while clients wait normally puts the worker back and wakes the longest waiter
//! not yet woken (unless enough are on their way, below), which then competes for it with
//! running threads: a thread that is already on a core may take it first, which keeps
//! throughput up (no context switch per hand-off). Once the longest waiter has waited
//! `fifo_after`, the next release hands the worker straight to it instead, so no waiter is
//! passed over for longer than that. A waiter that gives up takes nothing with it.
//!
//! A release wakes a waiter only while fewer waiters are on their way than workers are
//! queued for the line: when the releasing thread takes its worker straight back (it is on a
//! core; the woken waiter is not yet), a second release before the woken waiter looks wakes
//! no one more, instead of a context switch per release. Every waiter on its way that leaves
//! the line, served or not, tops the waiters on their way up again to the workers queued, so
//! a burst of N releases still reaches N waiters.
//!
//! A balancer of pools waits in one pool's line for a worker of any of its busy pools: the
//! other pools [`nudge`](WaitList::nudge) its waiter when they keep a worker free, and the
//! waiter looks there (`Elsewhere`) with the line let go, then waits on.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::sync::{fence, AtomicUsize, Condvar, Mutex, MutexGuard, Ordering};

struct Entry<T> {
    ticket: u64,
    since: Instant,
    handed: Option<T>,
    /// A wake-up was sent since the waiter last went to sleep: no need for another.
    woken: bool,
    /// Looking elsewhere (see `Elsewhere`): it keeps its place, but nothing is handed to it
    /// and no wake-up is sent to it meanwhile (it counts as served), so the line's items go
    /// to the waiters that can take them.
    away: bool,
    wake: Arc<Condvar>,
}

impl<T> Entry<T> {
    /// Whether an item may be handed to it, or a wake-up sent for one.
    fn may_serve(&self) -> bool {
        self.handed.is_none() && !self.away
    }
}

struct Line<T> {
    entries: VecDeque<Entry<T>>,
    next_ticket: u64,
    closed: bool,
}

/// Why a wait ended without an item.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum WaitError {
    Timeout,
    Closed,
    /// `give_up` said nothing can come.
    GaveUp,
    /// The waiter was served elsewhere (its `Elsewhere` look found an item).
    Elsewhere,
}

/// A wake-up from outside the line, for one waiter: rung, then sent with the line locked, so
/// a waiter that found it not rung with the line locked is asleep before it is sent. Its
/// state says whether the waiter is on its way to look (`RUNG`), or cannot be (looking
/// already, or out of the line), so that a pool nudges another waiter then.
pub(crate) struct Nudge {
    state: AtomicUsize,
    wake: Arc<Condvar>,
}

/// In line, not rung.
const IDLE: usize = 0;
/// Rung, not yet looked: on its way.
const RUNG: usize = 1;
/// Looking elsewhere (user code may hold it there): not on its way to anything else.
const LOOKING: usize = 2;
/// Rung while looking: it looks again when back.
const LOOKING_RUNG: usize = 3;
/// Out of the line (served, or on its way out): nothing to nudge.
const GONE: usize = 4;

impl Nudge {
    /// A nudge for a waiter not in line yet (its checkout may first take a free worker and
    /// check it): on its way to nothing until it is (`WaitList::wait` rings it then).
    pub(crate) fn new() -> Arc<Nudge> {
        Arc::new(Nudge {
            state: AtomicUsize::new(GONE),
            wake: Arc::new(Condvar::new()),
        })
    }

    /// Rung and not yet looked at by its waiter: on its way to look.
    pub(crate) fn is_rung(&self) -> bool {
        self.state.load(Ordering::SeqCst) == RUNG
    }

    /// Rings it (without waking its waiter: see `WaitList::nudge`); whether that sent its
    /// waiter on its way (it was in line, not rung). A waiter looking already will look
    /// again, but is not on its way.
    pub(crate) fn ring(&self) -> bool {
        let mut state = self.state.load(Ordering::SeqCst);
        loop {
            let next = match state {
                IDLE => RUNG,
                LOOKING => LOOKING_RUNG,
                _ => return false,
            };
            match self
                .state
                .compare_exchange(state, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return next == RUNG,
                Err(now) => state = now,
            }
        }
    }

    /// Its waiter starts to look, if it was rung.
    fn start_looking(&self) -> bool {
        self.state
            .compare_exchange(RUNG, LOOKING, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    /// Its waiter is back from a look that found nothing: rung again if it was rung
    /// meanwhile.
    fn back(&self) {
        if self.state.swap(IDLE, Ordering::SeqCst) == LOOKING_RUNG {
            self.state.store(RUNG, Ordering::SeqCst);
        }
    }
}

/// A waiter's look outside the line, when its nudge was rung: `look` returns whether it found
/// (and kept) an item there. It runs with the line let go: it may run user code. A waiter
/// that leaves the line with its nudge rung and not looked at calls `pass_on` (its pools
/// counted it on its way: they nudge others).
pub(crate) struct Elsewhere<'a> {
    pub(crate) nudge: &'a Nudge,
    pub(crate) look: &'a mut dyn FnMut() -> bool,
    pub(crate) pass_on: &'a dyn Fn(),
}

pub(crate) struct WaitList<T> {
    /// Entries in the line; read without the lock by releasers deciding whether to hand off.
    waiting: AtomicUsize,
    /// Entries in the line that were handed an item and have not left yet (changed with the
    /// line locked): `waiting - handed` still need one.
    handed: AtomicUsize,
    /// Entries away, looking elsewhere (changed with the line locked).
    away: AtomicUsize,
    line: Mutex<Line<T>>,
    fifo_after: Duration,
}

impl<T> WaitList<T> {
    pub(crate) fn new(fifo_after: Duration) -> Self {
        WaitList {
            fifo_after,
            waiting: AtomicUsize::new(0),
            handed: AtomicUsize::new(0),
            away: AtomicUsize::new(0),
            line: Mutex::new(Line {
                entries: VecDeque::new(),
                next_ticket: 0,
                closed: false,
            }),
        }
    }

    /// Whether anyone is in line. `SeqCst`, to pair with the registration in `wait`: a
    /// releaser that published an item and then sees no one is certain that any waiter
    /// registering later will find the item itself.
    pub(crate) fn has_waiters(&self) -> bool {
        self.waiting.load(Ordering::SeqCst) != 0
    }

    pub(crate) fn len(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Whether a waiter is away, looking elsewhere. `SeqCst`: see `Shared::put_back`.
    pub(crate) fn has_away(&self) -> bool {
        self.away.load(Ordering::SeqCst) != 0
    }

    /// Waiters in line not handed an item yet (a recent value, read without the lock).
    pub(crate) fn unserved(&self) -> usize {
        let handed = self.handed.load(Ordering::SeqCst);
        self.waiting.load(Ordering::SeqCst).saturating_sub(handed)
    }

    /// Whether someone in line has not been handed an item yet. Takes the lock only when
    /// someone waits; a waiter registering after this look sees what the caller did before it.
    pub(crate) fn has_unserved(&self) -> bool {
        self.has_waiters() && self.line.lock().entries.iter().any(Entry::may_serve)
    }

    /// Serves the line with `item`: handed straight to the longest waiter not yet served if it
    /// has waited `fifo_after`, else given to `keep` (queued with the free workers), and
    /// waiters woken until as many are on their way as `queued` says are queued, and at least
    /// one (see `dispatch`). `keep` runs with the line locked, so a waiter registering
    /// meanwhile sees its effect.
    pub(crate) fn offer(&self, item: T, keep: impl FnOnce(T), queued: impl Fn() -> usize) {
        let mut line = self.line.lock();
        if let Some(entry) = line.entries.iter_mut().find(|e| e.may_serve()) {
            if entry.since.elapsed() >= self.fifo_after {
                entry.handed = Some(item);
                self.handed.fetch_add(1, Ordering::SeqCst);
                entry.wake.notify_one();
                return;
            }
        }
        keep(item);
        // The item just kept is counted even if a count read at this moment misses it.
        Self::dispatch(&mut line, queued().max(1));
    }

    /// Wakes waiters neither served nor already woken, longest first, until `free` are on
    /// their way (woken, not yet looked). Each of those looks with the line locked; one that
    /// leaves calls this again, so an item still queued then finds a waiter even if this
    /// call counted too few.
    fn dispatch(line: &mut Line<T>, free: usize) {
        let mut on_the_way = line
            .entries
            .iter()
            .filter(|e| e.woken && e.may_serve())
            .count();
        for entry in &mut line.entries {
            if on_the_way >= free {
                break;
            }
            if entry.may_serve() && !entry.woken {
                entry.woken = true;
                entry.wake.notify_one();
                on_the_way += 1;
            }
        }
    }

    /// Hands `item` straight to the longest waiter not yet served, or gives it back.
    pub(crate) fn hand(&self, item: T) -> Result<(), T> {
        if !self.has_waiters() {
            return Err(item);
        }
        let mut line = self.line.lock();
        match line.entries.iter_mut().find(|e| e.may_serve()) {
            Some(entry) => {
                entry.handed = Some(item);
                self.handed.fetch_add(1, Ordering::SeqCst);
                entry.wake.notify_one();
                Ok(())
            }
            None => Err(item),
        }
    }

    /// Waits in line until an item is handed over or `take` finds one, until `deadline`
    /// (`None`: no limit), until the line is closed, or until `give_up` (asked after each look
    /// that found nothing, once this waiter no longer counts as served) says nothing can come.
    /// While `take` looks, the waiter counts as served (see `unserved`). `registered` runs
    /// once the waiter is in line, with the line's lock let go (it may start an item that is
    /// then offered to the line), and again each time `next_try` (asked before each sleep)
    /// comes before a wake-up. `queued` counts the items queued for the line (see
    /// `offer`). With `elsewhere`, each time its nudge was rung the waiter looks there too,
    /// after its look in line. An item handed to a waiter that leaves without it (closed, or
    /// served elsewhere) goes to `on_left`, after the line's lock is let go.
    // Each argument is one of the pool's hooks into the line; a struct would name them twice.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn wait(
        &self,
        mut take: impl FnMut() -> Option<T>,
        mut give_up: impl FnMut() -> bool,
        deadline: Option<Instant>,
        queued: impl Fn() -> usize,
        registered: impl Fn(),
        next_try: impl Fn() -> Option<Instant>,
        mut elsewhere: Option<Elsewhere<'_>>,
        on_left: impl FnOnce(T),
    ) -> Result<T, WaitError> {
        let Some((ticket, wake)) = self.register(elsewhere.as_ref()) else {
            return Err(WaitError::Closed);
        };
        registered();
        let mut line = self.line.lock();
        let mut timed_out = false;
        let mut served = false;
        let (at, outcome) = loop {
            let at = Self::position(&line, ticket);
            if line.closed {
                break (at, Err(WaitError::Closed));
            }
            if let Some(item) = line.entries[at].handed.take() {
                served = true;
                break (at, Ok(item));
            }
            if let Some(item) = self.look(&mut take) {
                served = true;
                break (at, Ok(item));
            }
            if let Some(elsewhere) = &mut elsewhere {
                // Read with the line locked: a nudge rung after this wakes the sleep below.
                if elsewhere.nudge.start_looking() {
                    let (relocked, found) = self.look_elsewhere(line, ticket, elsewhere, &queued);
                    line = relocked;
                    if found {
                        served = true;
                        break (Self::position(&line, ticket), Err(WaitError::Elsewhere));
                    }
                    // Back: look in line again (the time may be up, the line closed).
                    continue;
                }
            }
            if give_up() {
                // What it gives up on (the last start on its way ended) may have queued an
                // item since the look: one more look before it leaves empty-handed.
                if let Some(item) = self.look(&mut take) {
                    served = true;
                    break (at, Ok(item));
                }
                break (at, Err(WaitError::GaveUp));
            }
            if timed_out {
                break (at, Err(WaitError::Timeout));
            }
            // About to sleep, having looked with the line locked: a wake-up sent before now
            // (while this waiter was not asleep, e.g. running `registered`) was for an item
            // it has just missed, so it is due a fresh one.
            line.entries[at].woken = false;
            let retry_at = next_try();
            let until = match (deadline, retry_at) {
                (Some(deadline), Some(retry_at)) => Some(deadline.min(retry_at)),
                (deadline, None) => deadline,
                (None, retry_at) => retry_at,
            };
            let (guard, expired) = wake.wait_until(line, until);
            line = guard;
            // Without a retry time the wait's own timeout is the deadline's (as the loom
            // stand-in, which times out without the clock moving, needs it to be).
            timed_out = expired
                && (retry_at.is_none()
                    || deadline.is_some_and(|deadline| Instant::now() >= deadline));
            if expired && !timed_out {
                // `next_try` came first: run `registered` again, with the lock let go (the
                // pool's next start attempt is due, and its reaper may be held up).
                drop(line);
                registered();
                line = self.line.lock();
            }
        };
        let entry = line
            .entries
            .remove(at)
            .expect("the entry was found just now");
        // Out of the line: what is freed elsewhere goes to other waiters.
        let rung_unlooked = elsewhere
            .as_ref()
            .is_some_and(|e| e.nudge.state.swap(GONE, Ordering::SeqCst) == RUNG);
        // Out of `waiting` before out of `handed` (`unserved` reads them the other way
        // round): a served waiter leaving is never seen as an unserved one.
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        if served || entry.handed.is_some() {
            self.handed.fetch_sub(1, Ordering::SeqCst);
        }
        // It was on its way for a queued item (and may have been handed another, or found
        // none): items still queued are owed waiters on their way.
        if entry.woken && !line.closed {
            Self::dispatch(&mut line, queued());
        }
        drop(line);
        // Handed over at the moment of closing, or while it looked elsewhere (otherwise
        // taken above).
        if let Some(item) = entry.handed {
            on_left(item);
        }
        if rung_unlooked {
            if let Some(elsewhere) = &elsewhere {
                (elsewhere.pass_on)();
            }
        }
        outcome
    }

    /// Puts a waiter in line (unless the line is closed): its ticket, and what wakes it.
    fn register(&self, elsewhere: Option<&Elsewhere<'_>>) -> Option<(u64, Arc<Condvar>)> {
        let mut line = self.line.lock();
        if line.closed {
            return None;
        }
        let ticket = line.next_ticket;
        line.next_ticket += 1;
        let wake = elsewhere.map_or_else(|| Arc::new(Condvar::new()), |e| e.nudge.wake.clone());
        line.entries.push_back(Entry {
            ticket,
            since: Instant::now(),
            handed: None,
            woken: false,
            away: false,
            wake: wake.clone(),
        });
        self.waiting.fetch_add(1, Ordering::SeqCst);
        if let Some(elsewhere) = elsewhere {
            // Its first look is elsewhere too (again, if a check sent it back into line).
            elsewhere.nudge.state.swap(RUNG, Ordering::SeqCst);
        }
        fence(Ordering::SeqCst);
        Some((ticket, wake))
    }

    /// A waiter's look elsewhere, its nudge just taken (`Nudge::start_looking`): away from
    /// the line while it looks, with the line let go (the look may run user code for a
    /// while); whether it found an item there. Counted as served meanwhile, as in `look`,
    /// and a wake-up it had goes to another waiter. Back with nothing, it counts as unserved
    /// again (and looks again if it was nudged meanwhile).
    fn look_elsewhere<'g>(
        &'g self,
        mut line: MutexGuard<'g, Line<T>>,
        ticket: u64,
        elsewhere: &mut Elsewhere<'_>,
        queued: &impl Fn() -> usize,
    ) -> (MutexGuard<'g, Line<T>>, bool) {
        // Looking (no longer rung), then the look: against a pool keeping a worker free,
        // then ringing listeners (`Listeners::nudge`), one of the two sees the other.
        fence(Ordering::SeqCst);
        let at = Self::position(&line, ticket);
        let entry = &mut line.entries[at];
        entry.away = true;
        self.away.fetch_add(1, Ordering::SeqCst);
        self.handed.fetch_add(1, Ordering::SeqCst);
        if std::mem::take(&mut entry.woken) {
            Self::dispatch(&mut line, queued());
        }
        drop(line);
        let found = (elsewhere.look)();
        let mut line = self.line.lock();
        let at = Self::position(&line, ticket);
        line.entries[at].away = false;
        self.away.fetch_sub(1, Ordering::SeqCst);
        if !found {
            elsewhere.nudge.back();
            self.handed.fetch_sub(1, Ordering::SeqCst);
        }
        (line, found)
    }

    /// Where the waiter with `ticket` is in line.
    fn position(line: &Line<T>, ticket: u64) -> usize {
        line.entries
            .iter()
            .position(|e| e.ticket == ticket)
            .expect("a waiter's entry stays in line until it leaves")
    }

    /// Wakes a waiter in this line that waits with `nudge`, rung by the caller (see
    /// `Nudge::ring`).
    pub(crate) fn nudge(&self, nudge: &Nudge) {
        let _line = self.line.lock();
        nudge.wake.notify_one();
    }

    /// A waiter's look for a queued item. It counts as served while it looks, so that a start
    /// decision made meanwhile never sees the item gone from the free list and this waiter
    /// still unserved.
    fn look(&self, take: &mut impl FnMut() -> Option<T>) -> Option<T> {
        self.handed.fetch_add(1, Ordering::SeqCst);
        let item = take();
        if item.is_none() {
            self.handed.fetch_sub(1, Ordering::SeqCst);
        }
        item
    }

    /// Wakes every waiter to look again (and to give up if nothing can come).
    pub(crate) fn wake_all(&self) {
        let line = self.line.lock();
        for entry in &line.entries {
            entry.wake.notify_one();
        }
    }

    /// Closes the line: every waiter wakes and leaves with `WaitError::Closed`.
    pub(crate) fn close(&self) {
        let mut line = self.line.lock();
        line.closed = true;
        for entry in &line.entries {
            entry.wake.notify_one();
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::thread;

    /// A waiter woken for an item kept free, then handed another before it looked, leaves
    /// with the handed one: the kept item must not stay free while the next waiter sleeps.
    /// (Root cause of `a_woken_waiter_handed_another_worker_passes_its_wake_up_on`.)
    #[test]
    fn a_woken_waiter_handed_another_item_passes_its_wake_up_on() {
        let line = Arc::new(WaitList::<u32>::new(Duration::from_millis(500)));
        let free = Arc::new(std::sync::Mutex::new(Vec::<u32>::new()));
        let (in_registered, paused) = mpsc::channel();
        let (resume, go) = mpsc::channel::<()>();
        let first = {
            let (line, free) = (line.clone(), free.clone());
            thread::spawn(move || {
                line.wait(
                    || free.lock().unwrap().pop(),
                    || false,
                    Some(Instant::now() + Duration::from_secs(5)),
                    || free.lock().unwrap().len(),
                    || {
                        in_registered.send(()).unwrap();
                        go.recv().unwrap();
                    },
                    || None,
                    None,
                    |_| {},
                )
            })
        };
        paused.recv().unwrap();
        let second = {
            let (line, free) = (line.clone(), free.clone());
            thread::spawn(move || {
                line.wait(
                    || free.lock().unwrap().pop(),
                    || false,
                    None,
                    || free.lock().unwrap().len(),
                    || {},
                    || None,
                    None,
                    |_| {},
                )
            })
        };
        while line.len() < 2 {
            thread::yield_now();
        }
        // The second waiter is asleep.
        thread::sleep(Duration::from_millis(20));
        // Before the first waiter's `fifo_after`: kept free, the first waiter woken (it is
        // not asleep: it is in `registered`).
        let queued = || free.lock().unwrap().len();
        line.offer(1, |item| free.lock().unwrap().push(item), queued);
        thread::sleep(Duration::from_millis(600));
        // Past it: handed straight to the first waiter, which has not looked yet.
        line.offer(2, |item| free.lock().unwrap().push(item), queued);
        resume.send(()).unwrap();
        assert_eq!(first.join().unwrap(), Ok(2));
        // The second waiter has no deadline: it is served by item 1 or never (a later
        // release, after a generous bound, only rescues the thread).
        let began = Instant::now();
        while !second.is_finished() && began.elapsed() < Duration::from_secs(3) {
            thread::sleep(Duration::from_millis(1));
        }
        let stranded = !second.is_finished();
        if stranded {
            line.offer(3, |item| free.lock().unwrap().push(item), queued);
        }
        let got = second.join().unwrap();
        assert!(
            !stranded,
            "the second waiter slept while item 1 was free (then took {got:?})"
        );
        assert_eq!(got, Ok(1));
    }
}
