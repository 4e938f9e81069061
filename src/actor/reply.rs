//! The reply slot: one per calling thread and reply type, reused by every call.

use std::any::Any;
use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::spin::{spin_until, yield_until, Budget};
use crate::contain;
use crate::error::Error;
use crate::sync::thread::{self, Thread};
use crate::sync::{seqcst_point, AtomicBool, AtomicU64, Mutex, Ordering};

pub(super) struct ReplySlot<R> {
    /// The reply of the call `awaited` names, put in by the actor: `Some(None)` when the
    /// actor died first.
    pub(super) reply: Mutex<Option<Option<R>>>,
    /// The call whose reply is awaited (0: none, its caller gave up or took its reply).
    /// Set by the caller before it posts the call; cleared under the `reply` lock.
    pub(super) awaited: AtomicU64,
    /// The sequence number of the last call begun (the caller's alone).
    pub(super) issued: AtomicU64,
    /// The sequence number of the last reply put in (a look without the lock).
    pub(super) done: AtomicU64,
    /// The caller is parked, or about to: whoever puts a reply in must unpark it.
    pub(super) sleeping: AtomicBool,
    pub(super) caller: Thread,
    pub(super) spin: Budget,
}

crate::sync::per_thread! {
    /// This thread's reply slots, one per reply type (an `Arc<ReplySlot<R>>` each).
    static REPLY_SLOTS: RefCell<Vec<Box<dyn Any>>> = RefCell::new(Vec::new());
}

impl<R: Send + 'static> ReplySlot<R> {
    pub(super) fn new() -> Self {
        ReplySlot {
            reply: Mutex::new(None),
            awaited: AtomicU64::new(0),
            issued: AtomicU64::new(0),
            done: AtomicU64::new(0),
            sleeping: AtomicBool::new(false),
            caller: thread::current(),
            spin: Budget::new(),
        }
    }

    /// The calling thread's slot for replies of type `R`, made on its first call.
    pub(super) fn mine() -> Arc<Self> {
        let found = REPLY_SLOTS.try_with(|slots| {
            // The borrow is released before anything that could run user code.
            if let Some(slot) = slots
                .borrow()
                .iter()
                .find_map(|slot| slot.downcast_ref::<Arc<Self>>())
            {
                return slot.clone();
            }
            let slot = Arc::new(Self::new());
            slots.borrow_mut().push(Box::new(slot.clone()));
            slot
        });
        // During thread-local destruction: a slot for this call alone.
        found.unwrap_or_else(|_| Arc::new(Self::new()))
    }

    /// Starts a call: its sequence number, now awaited. No lock: a late reply to an earlier
    /// call, delivered meanwhile, reads 0 or this number, never its own.
    pub(super) fn begin(&self) -> u64 {
        let seq = self.issued.load(Ordering::Relaxed) + 1;
        self.issued.store(seq, Ordering::Relaxed);
        // Published to the actor by the mailbox's lock, which the call goes through next.
        self.awaited.store(seq, Ordering::Release);
        seq
    }

    /// Puts in the reply of call `seq` (`None`: the actor died first), unless its caller
    /// has moved on; then the reply is dropped.
    pub(super) fn deliver(&self, seq: u64, reply: Option<R>) {
        let mut slot = self.reply.lock();
        if self.awaited.load(Ordering::Acquire) != seq {
            drop(slot);
            // A late reply whose drop panics must not kill the actor that answered it.
            contain::dispose(reply);
            return;
        }
        self.awaited.store(0, Ordering::Relaxed);
        *slot = Some(reply);
        // Under the lock: the caller takes the reply, and begins its next call, only after
        // this, so a late store can never overwrite the number of a later call.
        self.done.store(seq, Ordering::SeqCst);
        drop(slot);
        seqcst_point();
        if self.sleeping.load(Ordering::SeqCst) {
            self.caller.unpark();
        }
    }

    /// Waits for the reply of call `seq`, until `deadline` if there is one. `spin`: whether
    /// to spin first (not when the actor had to be woken: its reply takes an OS wake-up).
    pub(super) fn wait(
        &self,
        seq: u64,
        deadline: Option<Instant>,
        timeout: Duration,
        spin: bool,
    ) -> Result<R, Error> {
        let ready = || self.done.load(Ordering::Acquire) == seq;
        if spin && !ready() {
            let budget = self.spin.get();
            let mut capped = budget;
            if let Some(deadline) = deadline {
                capped = budget.min(deadline.saturating_duration_since(Instant::now()));
            }
            let paid_off = spin_until(capped, ready);
            self.spin.learn(budget, paid_off);
        }
        if deadline.is_none() {
            yield_until(ready);
        }
        while !ready() {
            self.sleeping.store(true, Ordering::SeqCst);
            seqcst_point();
            if self.done.load(Ordering::SeqCst) == seq {
                break;
            }
            match deadline {
                None => thread::park(),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        self.sleeping.store(false, Ordering::Relaxed);
                        return self.give_up(timeout);
                    }
                    thread::park_timeout(deadline - now);
                }
            }
        }
        self.sleeping.store(false, Ordering::Relaxed);
        let reply = self.reply.lock().take();
        reply.flatten().ok_or(Error::WorkerDied)
    }

    /// The caller's deadline passed: a reply that came in meanwhile still counts; otherwise
    /// the call is no longer awaited, and its reply will be dropped when it comes.
    pub(super) fn give_up(&self, timeout: Duration) -> Result<R, Error> {
        let mut slot = self.reply.lock();
        if let Some(reply) = slot.take() {
            reply.ok_or(Error::WorkerDied)
        } else {
            self.awaited.store(0, Ordering::Relaxed);
            Err(Error::Timeout {
                waited: timeout,
                state: None,
                cause: None,
            })
        }
    }

    /// The call could not be posted: it is no longer awaited, so its envelope's drop puts
    /// nothing in (and anything that is there goes).
    pub(super) fn abandon(&self) {
        let left = {
            let mut slot = self.reply.lock();
            self.awaited.store(0, Ordering::Relaxed);
            slot.take()
        };
        drop(left);
    }
}

/// Where the reply of one call goes. Dropped unanswered (the handler panicked, or the actor
/// ended with the call still in its mailbox), it answers [`Error::WorkerDied`].
pub(super) struct ReplyTo<R: Send + 'static> {
    pub(super) slot: Option<Arc<ReplySlot<R>>>,
    pub(super) seq: u64,
}

impl<R: Send + 'static> ReplyTo<R> {
    pub(super) fn send(mut self, reply: R) {
        if let Some(slot) = self.slot.take() {
            slot.deliver(self.seq, Some(reply));
        }
    }
}

impl<R: Send + 'static> Drop for ReplyTo<R> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            slot.deliver(self.seq, None);
        }
    }
}
