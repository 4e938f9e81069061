//! The mailbox: the queue of messages, and the worker's sleep.

use std::collections::VecDeque;

use super::spin::{spin_until, yield_until, Budget};
use super::{Behaviour, Envelope};
use crate::contain;
use crate::sync::thread::{self, Thread};
use crate::sync::{seqcst_point, AtomicBool, AtomicUsize, CachePadded, Mutex, Ordering};

pub(super) struct Mailbox<B: Behaviour> {
    pub(super) queue: Mutex<Queue<B>>,
    /// Messages queued and not yet taken by the worker (a look without the lock).
    pub(super) len: AtomicUsize,
    /// The worker is parked, or about to: the next sender must unpark it.
    pub(super) sleeping: AtomicBool,
    /// Read on every call and by a pool on every lease, written once: on a line of its own,
    /// away from the fields both sides write on every message.
    pub(super) alive: CachePadded<AtomicBool>,
}

pub(super) struct Queue<B: Behaviour> {
    pub(super) items: VecDeque<Envelope<B>>,
    /// The worker has ended: nothing more is accepted.
    pub(super) closed: bool,
}

impl<B: Behaviour> Mailbox<B> {
    /// Queues `envelope` and wakes the worker if it sleeps (then returns true); gives it
    /// back if the worker has ended.
    pub(super) fn post(&self, envelope: Envelope<B>, worker: &Thread) -> Result<bool, Envelope<B>> {
        {
            let mut queue = self.queue.lock();
            if queue.closed {
                return Err(envelope);
            }
            queue.items.push_back(envelope);
            self.len.fetch_add(1, Ordering::SeqCst);
        }
        seqcst_point();
        // A compare-and-swap, not a swap: the same effect (only a true is cleared), and a
        // failed one writes nothing. Loom needs that: it leaves a store that an RMW raced
        // unordered with the actor's next `sleeping = true`, and a later look could then
        // read the stale false although the real modification order forbids it.
        if self.sleeping.load(Ordering::SeqCst)
            && self
                .sleeping
                .compare_exchange(true, false, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            worker.unpark();
            return Ok(true);
        }
        Ok(false)
    }

    pub(super) fn try_take(&self) -> Option<Envelope<B>> {
        if self.len.load(Ordering::Acquire) == 0 {
            return None;
        }
        let envelope = self.queue.lock().items.pop_front();
        if envelope.is_some() {
            self.len.fetch_sub(1, Ordering::Release);
        }
        envelope
    }

    /// Whether a message waits, or the actor died (then there is nothing more to wait for).
    pub(super) fn ready(&self) -> bool {
        self.len.load(Ordering::Acquire) != 0 || !self.alive.load(Ordering::Acquire)
    }

    /// Waits until a message is queued: spins for a while (adaptively), then parks. False
    /// when the actor died instead (a handler panicked on a caller's thread).
    pub(super) fn wait(&self, spin: &Budget) -> bool {
        loop {
            if self.ready() {
                return self.alive.load(Ordering::Acquire);
            }
            let budget = spin.get();
            let paid_off = spin_until(budget, || self.ready());
            spin.learn(budget, paid_off);
            if paid_off || yield_until(|| self.ready()) {
                continue;
            }
            self.sleeping.store(true, Ordering::SeqCst);
            seqcst_point();
            if self.len.load(Ordering::SeqCst) == 0 && self.alive.load(Ordering::SeqCst) {
                thread::park();
            }
            self.sleeping.store(false, Ordering::Relaxed);
        }
    }

    /// Ends the mailbox: later posts fail, and the messages still queued are dropped (their
    /// callers get [`Error::WorkerDied`]).
    pub(super) fn close(&self) {
        let left = {
            let mut queue = self.queue.lock();
            queue.closed = true;
            self.len.store(0, Ordering::Release);
            std::mem::take(&mut queue.items)
        };
        // A request's drop may panic. The rest are still dropped (their callers answered),
        // and the panic goes no further: not into a caller whose handler panicked and who
        // closes the mailbox, not out of the actor's thread before it drops its behaviour.
        for envelope in left {
            contain::dispose(envelope);
        }
    }
}
