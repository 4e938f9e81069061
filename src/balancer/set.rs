//! The balancer's published worker set: enumerate the supervisor's children, track which died,
//! reload, reconnect, and keep each member's lease state by identity across reloads.
//!
//! Membership is by pointer (`Arc::as_ptr` as a `usize` key in a `HashMap`), so a reload is
//! linear in the size of the set. No user code (supervisor, `is_alive`, a worker's `Drop`, an
//! event callback) runs while a lock of this module is held: a reload calls the supervisor and
//! the workers' `is_alive` first, merges under the set's own lock, and emits its events and
//! drops departed workers after unlocking.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::supervisor::Supervisor;
use crate::contain::{self, LogsLater};
use crate::error::{Cause, Error};
use crate::event::{emit, Event, EventHook};
use crate::pool::MIN_RECONNECT_DELAY;
use crate::reaper::Signal;
use crate::sync::{
    current_thread, fence, AtomicBool, AtomicU64, AtomicUsize, Condvar, Mutex, Ordering,
    SnapshotCell, SnapshotGuard, ThreadId,
};
use crate::worker::Worker;

/// One member of the set as leases see it: the worker and whether it is leased. One cell per
/// worker identity, reused by every reload that lists the worker again while the cell is alive,
/// so a lease survives reloads and reconnects (revolver's `reconnect_with_lease`).
///
/// Aligned to a cache line pair (as `CachePadded`): a lease writes its member's reference
/// count and lease mark, and two members allocated side by side must not share a line
/// between the threads that lease them.
#[repr(align(128))]
pub(crate) struct Member<W> {
    pub(crate) worker: Arc<W>,
    pub(crate) leased: AtomicBool,
    /// The worker's [`Worker::comes_back`], asked once when it first joined: a dead one stays
    /// in the set and is looked at again on each pass.
    pub(crate) comes_back: bool,
    /// When it was first listed (a reload that lists it again keeps the cell).
    joined: Instant,
    /// Whether it was ever handed out (a `get` or a lease found it), in any set.
    served: AtomicBool,
}

impl<W> Member<W> {
    /// It is handed out (a `get` or a lease found it).
    #[inline]
    pub(crate) fn handed_out(&self) {
        if !self.served.load(Ordering::Relaxed) {
            self.served.store(true, Ordering::Release);
        }
    }
}

/// The identity of a worker: the address of its allocation. A `Member` holds the worker, so
/// while a member is alive no other worker can have its address.
fn key<W>(worker: &Arc<W>) -> usize {
    Arc::as_ptr(worker).cast::<()>() as usize
}

impl<W> Drop for Snapshot<W> {
    fn drop(&mut self) {
        // The last reference to a worker may be here (a set replaced, the balancer's last
        // handle, a `WorkerRef` outliving both): its `Drop` is user code.
        contain::dispose_each(std::mem::take(&mut self.workers));
        contain::dispose_each(std::mem::take(&mut self.members));
    }
}

/// One published worker set. Never changed after publication except for its death marks.
pub(crate) struct Snapshot<W> {
    /// The workers, in the supervisor's order (duplicates and dead ones left out).
    pub(crate) workers: Vec<Arc<W>>,
    /// The same workers' lease cells, index for index.
    pub(crate) members: Vec<Arc<Member<W>>>,
    dead: Vec<AtomicBool>,
    alive: AtomicUsize,
    reload_asked: AtomicBool,
    /// A member that served, or was listed long before, was found dead (out for good):
    /// the next reload comes at once (see `WorkerSet::too_soon`).
    death_in_service: AtomicBool,
    /// A member died on arrival: found dead within `reconnect_delay` of its first listing,
    /// never handed out (as a pool's worker that fails before its first lease).
    death_on_arrival: AtomicBool,
    /// Why the set is empty (disconnected), if it is.
    pub(crate) cause: Cause,
    /// Whether every member comes back by itself (a balancer of pools): a reload cannot
    /// bring a live one that is not already in the set, so a `get` that finds them all dead
    /// does not ask the supervisor.
    pub(crate) all_come_back: bool,
}

impl<W> Snapshot<W> {
    fn new(members: Vec<Arc<Member<W>>>) -> Self {
        Snapshot {
            all_come_back: !members.is_empty() && members.iter().all(|m| m.comes_back),
            workers: members.iter().map(|m| m.worker.clone()).collect(),
            dead: members.iter().map(|_| AtomicBool::new(false)).collect(),
            alive: AtomicUsize::new(members.len()),
            reload_asked: AtomicBool::new(false),
            death_in_service: AtomicBool::new(false),
            death_on_arrival: AtomicBool::new(false),
            members,
            cause: Cause::message("no live children"),
        }
    }

    fn disconnected(cause: Cause) -> Self {
        let mut snapshot = Snapshot::new(Vec::new());
        snapshot.cause = cause;
        snapshot
    }

    /// An empty set means disconnected.
    pub(crate) fn is_connected(&self) -> bool {
        !self.workers.is_empty()
    }

    #[inline]
    pub(crate) fn is_marked_dead(&self, index: usize) -> bool {
        self.dead[index].load(Ordering::Relaxed)
    }

    /// Whether member `index` is passed over without a look: marked dead, and it cannot
    /// come back by itself.
    #[inline]
    pub(crate) fn is_gone(&self, index: usize) -> bool {
        self.is_marked_dead(index) && !self.members[index].comes_back
    }
}

/// The workers the supervisor was told are out of service (see `WorkerSet::retired`).
struct Retired<W> {
    told: HashMap<usize, Weak<W>>,
    /// The record's length at which those gone for good are next forgotten.
    prune_at: usize,
}

/// The smallest length at which the record of retired workers is pruned.
const PRUNE_RETIRED_AT: usize = 64;

/// What the last successful reload found, kept through a disconnect so that a reconnect finds
/// the same lease cells again.
struct Known<W> {
    /// The last set's cells by worker identity.
    last: HashMap<usize, Arc<Member<W>>>,
    /// Cells of workers that left the set but are still referenced (by a lease or an old
    /// snapshot): if the worker comes back while its cell lives, the cell is reused.
    away: HashMap<usize, Weak<Member<W>>>,
}

impl<W> Drop for WorkerSet<W> {
    fn drop(&mut self) {
        // The set may hold the last references to its workers (the last handle gone, maybe on
        // the reaper's thread): their `Drop` is user code, one at a time.
        let known = std::mem::replace(
            &mut *self.known.lock(),
            Known {
                last: HashMap::new(),
                away: HashMap::new(),
            },
        );
        contain::dispose_each(known.last.into_values());
        contain::dispose_each(known.away.into_values());
        // So are the supervisor's and the event callback's.
        contain::dispose(std::mem::replace(&mut self.supervisor, Box::new(Gone)));
        contain::dispose(self.events.take());
    }
}

/// The supervisor left in a set being dropped, once the user's is gone.
struct Gone;

impl<W> Supervisor<W> for Gone {
    fn children(&self) -> Result<Vec<Arc<W>>, crate::error::BoxError> {
        Err("the balancer is gone".into())
    }
}

/// Who asked the supervisor for its children.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Asked {
    /// `build` or `connect`: the caller's choice, never held back.
    ByCaller,
    /// A `get` or the reaper, after a death or while disconnected: at most once per
    /// `reconnect_delay` after another automatic one.
    Automatically,
}

/// Who is reloading: reloads run one at a time, without a lock held while the supervisor runs.
#[derive(Default)]
struct ReloadState {
    running: Option<ThreadId>,
    /// Completed reloads, to tell a waiter that the one it waited for is done.
    finished: u64,
}

/// What a successful reload found.
pub(crate) struct Found {
    pub(crate) new: usize,
    pub(crate) total: usize,
}

pub(crate) struct WorkerSet<W> {
    name: String,
    supervisor: Box<dyn Supervisor<W>>,
    current: SnapshotCell<Snapshot<W>>,
    min_alive_ratio: f64,
    reconnect_delay: Duration,
    known: Mutex<Known<W>>,
    /// The workers the supervisor was told are out of service, by identity: each is told
    /// once. Weak, so that a worker gone for good is forgotten (and its address may be
    /// reused).
    retired: Mutex<Retired<W>>,
    /// When the supervisor was last asked for its children: the automatic reloads (a `get`
    /// that finds every worker dead or none at all, the reaper after a death) come at most
    /// once per `reconnect_delay`, so children that die on arrival are not restarted in a
    /// tight loop, and a reaper held up in a callback does not stop the reconnect.
    last_asked: Mutex<Option<(Instant, Asked)>>,
    reload_state: Mutex<ReloadState>,
    reload_done: Condvar,
    pub(crate) signal: Arc<Signal>,
    pub(crate) events: Option<EventHook>,
    /// A reload thread started by a `get` on a disconnected balancer is running.
    pub(crate) background_reload: AtomicBool,
    connected_once: AtomicBool,
    /// The last reload listed a child dead, or the supervisor left some out (a start that
    /// failed): the reaper asks again after `reconnect_delay`.
    short: AtomicBool,
    reloads: AtomicU64,
    /// The set is the workers first listed, for the balancer's life (`build_pools`): one
    /// dead for good stays in it, marked dead, and no reload is asked for it.
    fixed: bool,
}

impl<W: Worker> WorkerSet<W> {
    pub(crate) fn new(
        name: String,
        supervisor: Box<dyn Supervisor<W>>,
        min_alive_ratio: f64,
        reconnect_delay: Duration,
        events: Option<EventHook>,
        fixed: bool,
    ) -> Self {
        WorkerSet {
            name,
            supervisor,
            current: SnapshotCell::new(Arc::new(Snapshot::disconnected(Cause::message(
                "not connected yet",
            )))),
            min_alive_ratio,
            reconnect_delay,
            known: Mutex::new(Known {
                last: HashMap::new(),
                away: HashMap::new(),
            }),
            retired: Mutex::new(Retired {
                told: HashMap::new(),
                prune_at: PRUNE_RETIRED_AT,
            }),
            last_asked: Mutex::new(None),
            reload_state: Mutex::new(ReloadState::default()),
            reload_done: Condvar::new(),
            signal: Arc::new(Signal::default()),
            events,
            background_reload: AtomicBool::new(false),
            connected_once: AtomicBool::new(false),
            short: AtomicBool::new(false),
            reloads: AtomicU64::new(0),
            fixed,
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    #[inline]
    pub(crate) fn snapshot(&self) -> SnapshotGuard<Snapshot<W>> {
        self.current.load()
    }

    /// How many times the supervisor was asked for its children.
    pub(crate) fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Notes that member `index` of `snapshot` was found dead. The first finder logs it and,
    /// when the live share falls below `min_alive_ratio`, asks the reaper for one reload.
    /// A worker that [comes back](Worker::comes_back) by itself is neither retired nor
    /// reloaded for: it stays in the set until [`revive`](Self::revive).
    pub(crate) fn mark_dead(&self, snapshot: &Snapshot<W>, index: usize) {
        // How it died, noted before the mark: a `get` that finds the whole set dead reads it
        // (`too_soon`) once it sees the mark.
        if !snapshot.members[index].comes_back {
            Self::note_death(snapshot, index, self.paced_delay());
        }
        if snapshot.dead[index].swap(true, Ordering::AcqRel) {
            // Dead already, and kept as one that comes back by itself: it may have stopped
            // for good since (a pool closed while its server was down).
            if snapshot.members[index].comes_back && !self.comes_back(snapshot, index) {
                self.out_for_good(snapshot, index, snapshot.alive.load(Ordering::Acquire));
            }
            return;
        }
        let total = snapshot.workers.len();
        let alive = snapshot.alive.fetch_sub(1, Ordering::AcqRel) - 1;
        // Retired and the reload asked first, then the line and the event (user code): a
        // callback that blocks must not hold back the replacements.
        if !(snapshot.members[index].comes_back && self.comes_back(snapshot, index)) {
            self.out_for_good(snapshot, index, alive);
        }
        contain::logged!(
            info,
            "cylinder: {}: worker {index} died ({alive} of {total} alive)",
            self.name
        );
        emit(&self.events, Event::WorkerDied);
    }

    /// Whether member `index` still comes back by itself (always, in a set fixed at build).
    fn comes_back(&self, snapshot: &Snapshot<W>, index: usize) -> bool {
        self.fixed || contain::run(|| snapshot.workers[index].comes_back()).unwrap_or(false)
    }

    /// Member `index` is out of service for good: the supervisor is told (once), and asked
    /// again when too few are left alive.
    ///
    /// The supervisor is told before the reload is asked for (so that the reload lists the
    /// replacement); a line about its `retire` panicking waits until the reload is asked for.
    fn out_for_good(&self, snapshot: &Snapshot<W>, index: usize, alive: usize) {
        let total = snapshot.workers.len();
        let on_arrival = Self::note_death(snapshot, index, self.paced_delay());
        let logs = LogsLater::begin();
        self.retire_once(&snapshot.workers[index]);
        if (alive as f64) < self.min_alive_ratio * total as f64 || alive == 0 {
            if on_arrival {
                self.ask_reload(snapshot);
            } else {
                // Once per set would not do: a death on arrival in the same set may have
                // asked already, and the reaper paced that one.
                snapshot.reload_asked.store(true, Ordering::Release);
                self.signal.request();
            }
        }
        drop(logs);
    }

    /// Notes how member `index` died (see `Snapshot::death_on_arrival`); returns whether it
    /// died on arrival.
    fn note_death(snapshot: &Snapshot<W>, index: usize, reconnect_delay: Duration) -> bool {
        let member = &snapshot.members[index];
        let on_arrival =
            member.joined.elapsed() < reconnect_delay && !member.served.load(Ordering::Acquire);
        let how = if on_arrival {
            &snapshot.death_on_arrival
        } else {
            &snapshot.death_in_service
        };
        how.store(true, Ordering::Release);
        on_arrival
    }

    /// Notes that member `index` of `snapshot`, marked dead, was found alive again (it
    /// [comes back](Worker::comes_back) by itself): the first finder logs it and reports
    /// [`Event::WorkerBack`].
    pub(crate) fn revive(&self, snapshot: &Snapshot<W>, index: usize) {
        if !snapshot.dead[index].swap(false, Ordering::AcqRel) {
            return;
        }
        let total = snapshot.workers.len();
        let alive = snapshot.alive.fetch_add(1, Ordering::AcqRel) + 1;
        contain::logged!(
            info,
            "cylinder: {}: worker {index} is back ({alive} of {total} alive)",
            self.name
        );
        emit(&self.events, Event::WorkerBack);
    }

    /// Tells the supervisor that `worker` is out of service, once per worker, with no lock
    /// held, so that its next `children` can list a replacement.
    fn retire_once(&self, worker: &Arc<W>) {
        let first = {
            let mut retired = self.retired.lock();
            let retired = &mut *retired;
            // Forgets the workers gone for good, once the record has doubled since it last
            // did (every time would make a reload of many dead workers quadratic). Only weak
            // references are dropped here: no worker's `Drop` runs under the lock.
            if retired.told.len() >= retired.prune_at {
                retired.told.retain(|_, told| told.strong_count() > 0);
                retired.prune_at = (2 * retired.told.len()).max(PRUNE_RETIRED_AT);
            }
            let told = retired
                .told
                .get(&key(worker))
                .is_some_and(|told| std::ptr::eq(told.as_ptr(), Arc::as_ptr(worker)));
            if !told {
                retired.told.insert(key(worker), Arc::downgrade(worker));
            }
            !told
        };
        if first && contain::run(|| self.supervisor.retire(worker)).is_err() {
            contain::logged!(
                error,
                "cylinder: {}: the supervisor's retire panicked",
                self.name
            );
        }
    }

    /// Asks the reaper to reload, at most once per published set.
    pub(crate) fn ask_reload(&self, snapshot: &Snapshot<W>) {
        if !snapshot.reload_asked.swap(true, Ordering::AcqRel) {
            self.signal.request();
        }
    }

    /// Reloads now, waiting for a reload that is already running to finish first (the
    /// reaper's rounds and `connect`).
    pub(crate) fn reload(&self, asked: Asked) -> Result<Found, Error> {
        {
            let mut state = self.reload_state.lock();
            loop {
                match state.running {
                    None => break,
                    Some(runner) if runner == current_thread() => {
                        // The supervisor (or an event callback it caused) asked for a
                        // reload from inside a reload: waiting would wait for itself.
                        return Err(Error::disconnected(Cause::message(
                            "a reload was asked for from inside the supervisor",
                        )));
                    }
                    Some(_) => state = self.reload_done.wait_until(state, None).0,
                }
            }
            // The reaper's round waited for another's reload while the balancer closed:
            // no supervisor call after `close`.
            if asked == Asked::Automatically && self.signal.is_closed() {
                return Err(Error::Closed);
            }
            state.running = Some(current_thread());
        }
        self.run_reload(asked)
    }

    /// For a `get` that found the whole set dead: reloads now unless a reload is running, in
    /// which case it waits for that one, up to `patience`. Returns whether a reload finished
    /// (so the published set is worth another look).
    pub(crate) fn reload_or_wait(&self, patience: Duration) -> bool {
        let deadline = Instant::now().checked_add(patience);
        {
            let mut state = self.reload_state.lock();
            match state.running {
                None => state.running = Some(current_thread()),
                Some(runner) if runner == current_thread() => return false,
                Some(_) => {
                    let waiting_for = state.finished;
                    while state.running.is_some() && state.finished == waiting_for {
                        let (guard, timed_out) = self.reload_done.wait_until(state, deadline);
                        state = guard;
                        if timed_out {
                            break;
                        }
                    }
                    return state.finished != waiting_for;
                }
            }
        }
        // Its error may hold the supervisor's, whose `Drop` is user code.
        contain::dispose(self.run_reload(Asked::Automatically));
        true
    }

    /// The reload proper, run by the one thread that marked itself running.
    fn run_reload(&self, asked: Asked) -> Result<Found, Error> {
        *self.last_asked.lock() = Some((Instant::now(), asked));
        /// Clears the running mark however the reload ends, a panic included: a reload that
        /// never finished must not make every later one wait forever.
        struct Finish<'a, W>(&'a WorkerSet<W>);
        impl<W> Drop for Finish<'_, W> {
            fn drop(&mut self) {
                {
                    let mut state = self.0.reload_state.lock();
                    state.running = None;
                    state.finished = state.finished.wrapping_add(1);
                }
                self.0.reload_done.notify_all();
            }
        }
        let mut events = Vec::new();
        let mut dropped = Vec::new();
        // Its log lines once the running mark is cleared and the new set (or the
        // supervisor's cause) published: the logger is user code, and may block or call back
        // (a `connect` waits for a running reload).
        let logs = LogsLater::begin();
        let result = {
            let _finish = Finish(self);
            self.merge_children(&mut events, &mut dropped)
        };
        drop(logs);
        // Paced from the end of this attempt: a supervisor slow to fail is not asked again
        // the moment it answers.
        *self.last_asked.lock() = Some((Instant::now(), asked));
        // Departed workers and the replaced snapshot may hold the last reference to a worker,
        // whose `Drop` is user code: they go now, with no lock held, and so do the events.
        if contain::dispose_each(dropped) > 0 {
            contain::logged!(error, "cylinder: {}: a worker's drop panicked", self.name);
        }
        for event in events {
            emit(&self.events, event);
        }
        result
    }

    fn merge_children(
        &self,
        events: &mut Vec<Event>,
        dropped: &mut Vec<Box<dyn std::any::Any + Send>>,
    ) -> Result<Found, Error> {
        self.reloads.fetch_add(1, Ordering::Relaxed);
        // User code first, with no lock held: the supervisor, then each child's `is_alive`.
        let listed = match contain::call(|| self.supervisor.children()).map_err(Error::disconnected)
        {
            Ok(listed) => listed,
            Err(err) => {
                let cause = err
                    .cause()
                    .cloned()
                    .unwrap_or_else(|| Cause::message(err.to_string()));
                self.disconnect(cause, events, dropped);
                return Err(err);
            }
        };
        // A worker whose `is_alive` panics counts as dead. The dead are retired (once each)
        // and dropped later with the rest, contained; a dead one that comes back by itself
        // stays, to be looked at again (a pool whose server is down).
        let mut any_alive = false;
        let mut dead_listed = false;
        let mut live = Vec::with_capacity(listed.len());
        for worker in listed {
            let alive = contain::run(|| worker.is_alive()).unwrap_or(false);
            let comes_back = self.fixed || contain::run(|| worker.comes_back()).unwrap_or(false);
            any_alive |= alive;
            if alive || comes_back {
                live.push((worker, comes_back));
            } else {
                dead_listed = true;
                self.retire_once(&worker);
                dropped.push(Box::new(worker));
            }
        }
        if !any_alive && live.iter().all(|(_, comes_back)| !comes_back) {
            // Nothing live: the last set's cells stay known, for the reconnect.
            self.disconnect(Cause::message("no live children"), events, dropped);
            return Err(Error::disconnected(Cause::message("no live children")));
        }
        let (members, new) = {
            let mut known = self.known.lock();
            let known = &mut *known;
            let mut next: HashMap<usize, Arc<Member<W>>> = HashMap::with_capacity(live.len());
            let mut members = Vec::with_capacity(live.len());
            let mut new = 0;
            for (worker, comes_back) in live {
                let id = key(&worker);
                if next.contains_key(&id) {
                    // Listed twice: one member, one lease cell.
                    dropped.push(Box::new(worker));
                    continue;
                }
                let member = if let Some(member) = known.last.remove(&id) {
                    member
                } else {
                    new += 1;
                    match known.away.remove(&id).and_then(|cell| cell.upgrade()) {
                        Some(member) => member,
                        None => Arc::new(Member {
                            worker,
                            leased: AtomicBool::new(false),
                            comes_back,
                            joined: Instant::now(),
                            served: AtomicBool::new(false),
                        }),
                    }
                };
                members.push(member.clone());
                next.insert(id, member);
            }
            // Whoever left the set keeps its cell while someone still holds it (a lease, an
            // old snapshot), so that it comes back with its lease state.
            let departed = std::mem::replace(&mut known.last, next);
            known.away.retain(|_, cell| cell.strong_count() > 0);
            for (id, member) in departed {
                known.away.insert(id, Arc::downgrade(&member));
                dropped.push(Box::new(member));
            }
            (members, new)
        };
        let total = members.len();
        let left_out = contain::run(|| self.supervisor.incomplete()).unwrap_or(false);
        self.short.store(dead_listed || left_out, Ordering::Relaxed);
        let joined = if self.connected_once.swap(true, Ordering::AcqRel) {
            Event::WorkerRestarted
        } else {
            Event::WorkerStarted
        };
        let old = self.current.load_full();
        self.current.store(Arc::new(Snapshot::new(members)));
        dropped.push(Box::new(old));
        contain::logged!(
            info,
            "cylinder: {}: found {new} new of {total} total, connected",
            self.name
        );
        events.extend(std::iter::repeat(joined).take(new));
        events.push(Event::Connected { new, total });
        Ok(Found { new, total })
    }

    /// Publishes the disconnected set with its cause. Called within a reload, whose log
    /// lines are held back until it has ended.
    fn disconnect(
        &self,
        cause: Cause,
        events: &mut Vec<Event>,
        dropped: &mut Vec<Box<dyn std::any::Any + Send>>,
    ) {
        let old = self.current.load_full();
        if old.is_connected() {
            contain::logged!(
                error,
                "cylinder: {}: disconnected ({cause}), retrying in {:?}",
                self.name,
                self.reconnect_delay
            );
            events.push(Event::Disconnected);
        }
        self.current.store(Arc::new(Snapshot::disconnected(cause)));
        dropped.push(Box::new(old));
    }

    /// How long an automatic reload must still wait (`None`: it may run now). When the
    /// members of `scanned` found dead out for good all died on arrival (see
    /// `Snapshot::death_on_arrival`), the next automatic reload waits until `reconnect_delay`
    /// has passed since the last, also while other members serve (a child that dies as it
    /// starts is restarted at that pace, not at every `get` that meets it); a member that
    /// served, or was listed long before, is replaced at once. A member that comes back by
    /// itself (a pool whose server is down) asks for no reload, and counts for neither.
    pub(crate) fn too_soon(&self, scanned: &Snapshot<W>) -> Option<Duration> {
        // The death marks this caller saw, and how each died (noted before its mark).
        fence(Ordering::Acquire);
        if !scanned.death_on_arrival.load(Ordering::Acquire)
            || scanned.death_in_service.load(Ordering::Acquire)
        {
            return None;
        }
        match *self.last_asked.lock() {
            Some((at, Asked::Automatically)) => self.left_after(at),
            _ => None,
        }
    }

    /// `reconnect_delay`, no shorter than the reaper's smallest tick (as the pool's): a
    /// delay of a nanosecond paces nothing, and children dead on arrival would be restarted
    /// at every `get`.
    fn paced_delay(&self) -> Duration {
        self.reconnect_delay.max(MIN_RECONNECT_DELAY)
    }

    /// What is left of `reconnect_delay` after `at`.
    fn left_after(&self, at: Instant) -> Option<Duration> {
        // A delay past the clock's range (`Duration::MAX`: never again) is never over.
        let Some(due) = at.checked_add(self.paced_delay()) else {
            return Some(Duration::MAX);
        };
        Some(due.saturating_duration_since(Instant::now())).filter(|left| !left.is_zero())
    }

    /// While disconnected, or short of children (see `short`), what is left of
    /// `reconnect_delay` since the supervisor was last asked, by anyone: the reaper's next attempt comes no sooner (a failed `build` or
    /// `connect` is an attempt too).
    pub(crate) fn reconnect_wait(&self, snapshot: &Snapshot<W>) -> Option<Duration> {
        // A death in the set asked for a reload: `too_soon` alone paces that one (a member
        // that served is replaced at once, short or not).
        let death_asked = snapshot.reload_asked.load(Ordering::Acquire);
        if snapshot.is_connected() && (!self.short.load(Ordering::Relaxed) || death_asked) {
            return None;
        }
        let last = *self.last_asked.lock();
        last.and_then(|(at, _)| self.left_after(at))
    }

    /// Whether the supervisor was asked before and `reconnect_delay` has passed since: a
    /// disconnected `get` may ask again (a balancer built with `connect_at_start(false)`
    /// waits for `connect`).
    pub(crate) fn retry_due(&self) -> bool {
        let last = *self.last_asked.lock();
        last.is_some_and(|(at, _)| self.left_after(at).is_none())
    }

    /// Whether `snapshot` is the set published now.
    pub(crate) fn is_current(&self, snapshot: &Snapshot<W>) -> bool {
        let current = self.current.load();
        let current: &Snapshot<W> = &current;
        std::ptr::eq(current, snapshot)
    }

    pub(crate) fn retry_after<T>(&self, reload: &Result<T, Error>) -> Option<Duration> {
        if reload.is_ok() {
            if !self.short.load(Ordering::Relaxed) {
                return None;
            }
            contain::logged!(
                debug,
                "cylinder: {}: children missing, asking again in {:?}",
                self.name,
                self.reconnect_delay
            );
            Some(self.paced_delay())
        } else {
            contain::logged!(
                debug,
                "cylinder: {}: still disconnected, retrying in {:?}",
                self.name,
                self.reconnect_delay
            );
            Some(self.paced_delay())
        }
    }
}
