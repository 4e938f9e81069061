//! Slow-lease warnings (`worker_pool`'s, HikariCP's leak detection): leases held past
//! `warn_after` are reported once, by the reaper, with how long they have been held and
//! where they were taken (the checkout's caller, by `#[track_caller]`).

use std::panic::Location;
use std::time::{Duration, Instant};

use crate::event::{emit, Event, EventHook};
use crate::sync::Mutex;

struct Held {
    worker: u64,
    since: Instant,
    site: &'static Location<'static>,
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

    pub(crate) fn begin(&self, worker: u64, site: &'static Location<'static>) {
        self.held.lock().push(Held {
            worker,
            since: Instant::now(),
            site,
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
                slow.push((held_for, lease.site));
            }
        }
        for (held, taken_at) in slow {
            crate::contain::logged!(
                warn,
                "cylinder: {pool}: a lease taken at {taken_at} has been held for {held:?} \
                 (warn_after is {:?})",
                self.limit
            );
            emit(events, Event::SlowLease { held, taken_at });
        }
    }
}
