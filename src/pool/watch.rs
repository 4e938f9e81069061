//! Slow-lease warnings (`worker_pool`'s): leases held past `warn_after` are reported once, by
//! the reaper, with how long they have been held.

use std::time::{Duration, Instant};

use crate::event::{emit, Event, EventHook};
use crate::sync::Mutex;

struct Held {
    worker: u64,
    since: Instant,
    reported: bool,
}

pub(crate) struct LeaseWatch {
    pub(crate) limit: Duration,
    held: Mutex<Vec<Held>>,
}

impl LeaseWatch {
    pub(crate) fn new(limit: Duration) -> Self {
        LeaseWatch {
            limit,
            held: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn begin(&self, worker: u64) {
        self.held.lock().push(Held {
            worker,
            since: Instant::now(),
            reported: false,
        });
    }

    pub(crate) fn end(&self, worker: u64) {
        let mut held = self.held.lock();
        if let Some(at) = held.iter().position(|h| h.worker == worker) {
            held.swap_remove(at);
        }
    }

    /// Reports each lease held past the limit, once.
    pub(crate) fn report(&self, pool: &str, events: &Option<EventHook>) {
        let mut slow = Vec::new();
        for lease in self.held.lock().iter_mut() {
            let held_for = lease.since.elapsed();
            if !lease.reported && held_for >= self.limit {
                lease.reported = true;
                slow.push(held_for);
            }
        }
        for held_for in slow {
            log::warn!(
                "cylinder: {pool}: a lease has been held for {held_for:?} (warn_after is {:?})",
                self.limit
            );
            emit(events, Event::SlowLease(held_for));
        }
    }
}
