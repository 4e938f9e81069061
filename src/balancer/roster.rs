//! The published worker set: one mechanism, shared by the pool and the balancer, to enumerate
//! the supervisor's children, track which died, reload, and reconnect.

use std::sync::Arc;
use std::time::Duration;

use super::supervisor::{contained, Supervisor};
use crate::error::Cause;
use crate::error::Error;
use crate::event::{emit, Event, EventHook};
use crate::reaper::Signal;
use crate::sync::{
    AtomicBool, AtomicU64, AtomicUsize, Mutex, Ordering, SnapshotCell, SnapshotGuard,
};
use crate::worker::Worker;

/// One published worker set. Never changed after publication except for its death marks.
pub(crate) struct Snapshot<W> {
    pub(crate) members: Vec<Arc<W>>,
    dead: Vec<AtomicBool>,
    alive: AtomicUsize,
    reload_asked: AtomicBool,
}

impl<W> Snapshot<W> {
    fn new(members: Vec<Arc<W>>) -> Self {
        Snapshot {
            dead: members.iter().map(|_| AtomicBool::new(false)).collect(),
            alive: AtomicUsize::new(members.len()),
            reload_asked: AtomicBool::new(false),
            members,
        }
    }

    /// An empty set means disconnected.
    pub(crate) fn is_connected(&self) -> bool {
        !self.members.is_empty()
    }

    pub(crate) fn is_marked_dead(&self, index: usize) -> bool {
        self.dead[index].load(Ordering::Relaxed)
    }

    pub(crate) fn contains(&self, worker: &Arc<W>) -> bool {
        contains(&self.members, worker)
    }
}

fn contains<W>(set: &[Arc<W>], worker: &Arc<W>) -> bool {
    set.iter().any(|w| Arc::ptr_eq(w, worker))
}

/// What a reload found.
pub(crate) struct Reload<W> {
    /// Live workers that were not in the last set found.
    pub(crate) added: Vec<Arc<W>>,
    /// Workers that were in the last set found and are not any more.
    pub(crate) removed: usize,
    /// Of those, the ones still alive and not retired: let go by the supervisor itself (a
    /// shrink), so a pool must not take them back when their leases end.
    pub(crate) departed: Vec<Arc<W>>,
    /// The size of the new set.
    pub(crate) total: usize,
}

/// Workers given up on, and kept out of the set for as long as the supervisor still lists them.
#[derive(Default)]
struct Retired<W> {
    pending: Vec<Arc<W>>,
    told: Vec<Arc<W>>,
}

/// What the last successful reload found. Unlike the published set, it survives a disconnect:
/// a pool keeps the workers it has while its supervisor is away, and must not take them in a
/// second time when the supervisor lists them again.
struct Known<W> {
    members: Vec<Arc<W>>,
}

pub(crate) struct Roster<W> {
    name: String,
    supervisor: Box<dyn Supervisor<W>>,
    current: SnapshotCell<Snapshot<W>>,
    min_alive_ratio: f64,
    /// The size the set should have, when known (a factory's size; `usize::MAX`: unknown);
    /// fewer means retry.
    expected: AtomicUsize,
    reconnect_delay: Duration,
    reload_lock: Mutex<Known<W>>,
    retired: Mutex<Retired<W>>,
    pub(crate) signal: Arc<Signal>,
    pub(crate) events: Option<EventHook>,
    connected_once: AtomicBool,
    restarts: AtomicU64,
    reloads: AtomicU64,
}

impl<W: Worker> Roster<W> {
    pub(crate) fn new(
        name: String,
        supervisor: Box<dyn Supervisor<W>>,
        min_alive_ratio: f64,
        expected: Option<usize>,
        reconnect_delay: Duration,
        events: Option<EventHook>,
    ) -> Self {
        Roster {
            name,
            supervisor,
            current: SnapshotCell::new(Arc::new(Snapshot::new(Vec::new()))),
            min_alive_ratio,
            expected: AtomicUsize::new(expected.unwrap_or(usize::MAX)),
            reconnect_delay,
            reload_lock: Mutex::new(Known {
                members: Vec::new(),
            }),
            retired: Mutex::new(Retired {
                pending: Vec::new(),
                told: Vec::new(),
            }),
            signal: Arc::new(Signal::default()),
            events,
            connected_once: AtomicBool::new(false),
            restarts: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn snapshot(&self) -> SnapshotGuard<Snapshot<W>> {
        self.current.load()
    }

    /// Workers that joined after the first connect: the replacements.
    pub(crate) fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// How many times the supervisor was asked for its children.
    pub(crate) fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Notes that member `index` of `snapshot` was found dead. The first finder logs it and,
    /// when the live share falls below `min_alive_ratio`, asks the reaper for one reload.
    pub(crate) fn mark_dead(&self, snapshot: &Snapshot<W>, index: usize) {
        if snapshot.dead[index].swap(true, Ordering::AcqRel) {
            return;
        }
        let total = snapshot.members.len();
        let alive = snapshot.alive.fetch_sub(1, Ordering::AcqRel) - 1;
        log::info!(
            "cylinder: {}: worker {index} died ({alive} of {total} alive)",
            self.name
        );
        emit(&self.events, Event::WorkerDied);
        if (alive as f64) < self.min_alive_ratio * total as f64 || alive == 0 {
            self.ask_reload(snapshot);
        }
    }

    /// Asks the reaper to reload, at most once per published set.
    pub(crate) fn ask_reload(&self, snapshot: &Snapshot<W>) {
        if !snapshot.reload_asked.swap(true, Ordering::AcqRel) {
            self.signal.request();
        }
    }

    /// Takes `worker` out of service: the supervisor is told and a reload asked for.
    pub(crate) fn retire(&self, worker: Arc<W>) {
        self.retired.lock().pending.push(worker);
        self.signal.request();
    }

    fn expected(&self) -> usize {
        self.expected.load(Ordering::Relaxed)
    }

    /// Sets the size the set should have (after a resize).
    pub(crate) fn expect(&self, size: usize) {
        self.expected.store(size, Ordering::Relaxed);
    }

    /// How many workers the last successful reload found (kept through a disconnect).
    pub(crate) fn known_len(&self) -> usize {
        self.reload_lock.lock().members.len()
    }

    /// Asks the supervisor for its children and publishes the live ones. `added` and
    /// `removed` compare with the last successful reload, not with the published set, which
    /// is empty while disconnected.
    pub(crate) fn reload(&self) -> Result<Reload<W>, Error> {
        let mut known = self.reload_lock.lock();
        self.reloads.fetch_add(1, Ordering::Relaxed);
        // Every worker given up on so far and still listed, or given up on since the last
        // reload: none of them is a departure.
        let (pending, given_up) = {
            let mut retired = self.retired.lock();
            let pending = std::mem::take(&mut retired.pending);
            retired.told.extend(pending.iter().cloned());
            (pending, retired.told.clone())
        };
        for worker in &pending {
            if let Err(err) = contained(|| {
                self.supervisor.retire(worker);
                Ok(())
            }) {
                log::error!("cylinder: {}: supervisor's retire failed: {err}", self.name);
            }
        }
        let old = self.current.load_full();
        let listed = match contained(|| self.supervisor.children()) {
            Ok(listed) => listed,
            Err(err) => {
                let reason = err
                    .cause()
                    .map_or_else(|| err.to_string(), Cause::to_string);
                self.disconnect(&old, &reason);
                return Err(err);
            }
        };
        let members = {
            let mut retired = self.retired.lock();
            retired.told.retain(|w| contains(&listed, w));
            let mut members: Vec<Arc<W>> = Vec::with_capacity(listed.len());
            for worker in listed {
                if worker.is_alive()
                    && !contains(&retired.told, &worker)
                    && !contains(&members, &worker)
                {
                    members.push(worker);
                }
            }
            members
        };
        if members.is_empty() {
            self.disconnect(&old, "no live children");
            return Err(Error::Disconnected(Cause::message("no live children")));
        }
        let added: Vec<Arc<W>> = members
            .iter()
            .filter(|w| !contains(&known.members, w))
            .cloned()
            .collect();
        let removed = known
            .members
            .iter()
            .filter(|w| !contains(&members, w))
            .count();
        let departed = known
            .members
            .iter()
            .filter(|w| !contains(&members, w) && w.is_alive() && !contains(&given_up, w))
            .cloned()
            .collect();
        let total = members.len();
        let joined = if self.connected_once.swap(true, Ordering::AcqRel) {
            self.restarts
                .fetch_add(added.len() as u64, Ordering::Relaxed);
            Event::WorkerRestarted
        } else {
            Event::WorkerStarted
        };
        known.members.clone_from(&members);
        self.current.store(Arc::new(Snapshot::new(members)));
        log::info!(
            "cylinder: {}: found {} new of {total} total, connected",
            self.name,
            added.len()
        );
        for _ in &added {
            emit(&self.events, joined.clone());
        }
        emit(
            &self.events,
            Event::Connected {
                new: added.len(),
                total,
            },
        );
        Ok(Reload {
            added,
            removed,
            departed,
            total,
        })
    }

    /// When the reaper should try again after a reload: after `reconnect_delay` while the set
    /// is gone or short of its expected size, else only when asked.
    pub(crate) fn retry_after(&self, reload: &Result<Reload<W>, Error>) -> Option<Duration> {
        let delay = self.reconnect_delay;
        match reload {
            Ok(found) if self.expected() == usize::MAX || found.total >= self.expected() => None,
            Ok(found) => {
                log::warn!(
                    "cylinder: {}: only {} of {} workers running, retrying in {delay:?}",
                    self.name,
                    found.total,
                    self.expected()
                );
                Some(delay)
            }
            Err(_) => {
                log::debug!(
                    "cylinder: {}: still disconnected, retrying in {delay:?}",
                    self.name
                );
                Some(delay)
            }
        }
    }

    fn disconnect(&self, old: &Snapshot<W>, reason: &str) {
        if old.is_connected() {
            log::error!(
                "cylinder: {}: disconnected ({reason}), retrying in {:?}",
                self.name,
                self.reconnect_delay
            );
            self.current.store(Arc::new(Snapshot::new(Vec::new())));
            emit(&self.events, Event::Disconnected);
        }
    }
}
