//! The line of blocked checkouts. A released worker is handed straight to the longest waiter
//! (FIFO), so late arrivals cannot jump the line, and a waiter that gives up takes nothing.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use crate::sync::{fence, AtomicUsize, Condvar, Mutex, Ordering};

struct Entry<T> {
    ticket: u64,
    handed: Option<T>,
    wake: Arc<Condvar>,
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
}

pub(crate) struct WaitList<T> {
    /// Entries in the line; read without the lock by releasers deciding whether to hand off.
    waiting: AtomicUsize,
    line: Mutex<Line<T>>,
}

impl<T> WaitList<T> {
    pub(crate) fn new() -> Self {
        WaitList {
            waiting: AtomicUsize::new(0),
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

    /// Hands `item` to the longest waiter not yet served. With no such waiter, `otherwise`
    /// gets the item while the line is still locked, so that a waiter registering meanwhile
    /// sees what `otherwise` did (put it back in the free queue).
    pub(crate) fn offer(&self, item: T, otherwise: impl FnOnce(T)) {
        let mut line = self.line.lock();
        match line.entries.iter_mut().find(|e| e.handed.is_none()) {
            Some(entry) => {
                entry.handed = Some(item);
                entry.wake.notify_one();
            }
            None => otherwise(item),
        }
    }

    /// Waits in line until an item is handed over or `take` finds one, until `deadline`
    /// (`None`: no limit), or until the line is closed. An item handed over at the moment of
    /// closing goes to `on_closed`.
    pub(crate) fn wait(
        &self,
        mut take: impl FnMut() -> Option<T>,
        deadline: Option<Instant>,
        on_closed: impl FnOnce(T),
    ) -> Result<T, WaitError> {
        let mut line = self.line.lock();
        if line.closed {
            return Err(WaitError::Closed);
        }
        let ticket = line.next_ticket;
        line.next_ticket += 1;
        let wake = Arc::new(Condvar::new());
        line.entries.push_back(Entry {
            ticket,
            handed: None,
            wake: wake.clone(),
        });
        self.waiting.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let mut timed_out = false;
        let outcome = loop {
            let at = line
                .entries
                .iter()
                .position(|e| e.ticket == ticket)
                .expect("a waiter's entry stays in line until it leaves");
            if line.closed {
                if let Some(item) = line.entries.remove(at).and_then(|e| e.handed) {
                    on_closed(item);
                }
                break Err(WaitError::Closed);
            }
            if let Some(item) = line.entries[at].handed.take() {
                line.entries.remove(at);
                break Ok(item);
            }
            if let Some(item) = take() {
                line.entries.remove(at);
                break Ok(item);
            }
            if timed_out {
                line.entries.remove(at);
                break Err(WaitError::Timeout);
            }
            let (guard, expired) = wake.wait_until(line, deadline);
            line = guard;
            timed_out = expired;
        };
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        outcome
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
