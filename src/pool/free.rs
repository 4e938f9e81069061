//! The free workers: a shared shelf, and one parking slot per thread stripe.
//!
//! A thread that releases a worker parks it in its own slot for its own next checkout: that
//! thread stays off the shared shelf's cache lines and gets back a worker that is hot in its
//! cache. Other threads take from the shelf, and steal from the slots when it is empty.
//!
//! The shelf is a stack by default ([`QueueMode::Lifo`], as r2d2 and HikariCP): the worker
//! released most recently goes out first, so under light load the same few workers serve
//! and the rest age out by `idle_timeout`. [`QueueMode::Fifo`] makes it a lock-free queue
//! that uses every worker in turn (deadpool's `QueueMode::Fifo`).

use crate::stripe::{Stripe, STRIPES};
use crate::sync::{seqcst_point, AtomicUsize, CachePadded, FreeQueue, Mutex, Ordering, SwapCell};

/// The order in which free workers are reused, set with
/// [`PoolBuilder::queue_mode`](crate::PoolBuilder::queue_mode). Either way a thread gets its
/// own parked worker back first (the one it released last).
///
/// ```
/// use cylinder::{Pool, QueueMode};
///
/// // Every worker used in turn: connections stay warm, none ages out by `idle_timeout`.
/// let pool = Pool::builder()
///     .size(3)
///     .queue_mode(QueueMode::Fifo)
///     .build(|| Ok(()))
///     .unwrap();
/// assert_eq!(pool.stats().size, 3);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueMode {
    /// The free worker released most recently first (the default): idle workers age out
    /// under light load, so `idle_timeout` shrinks the pool to what is used.
    #[default]
    Lifo,
    /// The free worker released longest ago first: round-robin use of every worker.
    Fifo,
}

/// The shared part of the free list.
// One per pool, made once and never moved: the queue's size needs no box.
#[allow(clippy::large_enum_variant)]
enum Shelf<T> {
    Fifo(FreeQueue<T>),
    Lifo(Stack<T>),
}

/// A bounded stack. Its count is read without the lock (to skip an empty stack) and grows
/// with a `SeqCst` read-modify-write after each push, as the queue's tail does: the order
/// `Shared::give_back` relies on against a waiter's registration.
struct Stack<T> {
    items: Mutex<Vec<T>>,
    len: AtomicUsize,
    capacity: usize,
}

impl<T> Stack<T> {
    fn push(&self, item: T) -> Result<(), T> {
        let mut items = self.items.lock();
        if items.len() >= self.capacity {
            return Err(item);
        }
        items.push(item);
        self.len.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn pop(&self) -> Option<T> {
        seqcst_point();
        if self.len.load(Ordering::SeqCst) == 0 {
            return None;
        }
        let item = self.items.lock().pop()?;
        self.len.fetch_sub(1, Ordering::SeqCst);
        Some(item)
    }
}

impl<T> Shelf<T> {
    /// The item that has been on the shelf longest: the stack's bottom, the queue's head.
    fn take_oldest(&self) -> Option<T> {
        match self {
            Shelf::Fifo(queue) => queue.pop(),
            Shelf::Lifo(stack) => {
                seqcst_point();
                if stack.len.load(Ordering::SeqCst) == 0 {
                    return None;
                }
                let mut items = stack.items.lock();
                if items.is_empty() {
                    return None;
                }
                let item = items.remove(0);
                stack.len.fetch_sub(1, Ordering::SeqCst);
                Some(item)
            }
        }
    }

    #[inline]
    fn push(&self, item: T) -> Result<(), T> {
        match self {
            Shelf::Fifo(queue) => queue.push(item),
            Shelf::Lifo(stack) => stack.push(item),
        }
    }

    fn len(&self) -> usize {
        match self {
            Shelf::Fifo(queue) => queue.len(),
            Shelf::Lifo(stack) => stack.len.load(Ordering::SeqCst),
        }
    }
}

struct Parked<T> {
    slot: SwapCell<T>,
    /// The owner's puts minus the owner's takes. Written by the stripe's owner alone, with
    /// plain stores (no read-modify-write on the owner's path); the `SeqCst` store after a
    /// put is also what orders the put before the releaser's look for waiters (see
    /// `Shared::give_back`).
    own: AtomicUsize,
    /// Takes by other threads (thieves, off the owner's path).
    stolen: AtomicUsize,
}

impl<T> Parked<T> {
    /// How many items the slot holds (0 or 1), read without touching the slot: the owner's
    /// count less the thefts (wrapping: a theft may be counted before the owner's put).
    #[inline]
    fn count(&self) -> usize {
        self.own
            .load(Ordering::SeqCst)
            .wrapping_sub(self.stolen.load(Ordering::SeqCst))
    }

    /// The owner takes its parked item back.
    #[inline]
    fn take_own(&self) -> Option<T> {
        if self.count() == 0 {
            return None;
        }
        let item = self.slot.take()?;
        let own = self.own.load(Ordering::Relaxed);
        self.own.store(own.wrapping_sub(1), Ordering::Relaxed);
        Some(item)
    }

    /// Another thread takes the parked item.
    #[inline]
    fn steal(&self) -> Option<T> {
        if self.count() == 0 {
            return None;
        }
        let item = self.slot.take()?;
        self.stolen.fetch_add(1, Ordering::Relaxed);
        Some(item)
    }

    /// Parks `item`, returning what was found in the slot (only the stripe's owner puts, and
    /// only into a slot whose count it saw at zero, but a thief's count may lag).
    #[inline]
    fn put(&self, item: T) -> Option<T> {
        let displaced = self.slot.put(item);
        if displaced.is_none() {
            let own = self.own.load(Ordering::Relaxed);
            self.own.store(own.wrapping_add(1), Ordering::SeqCst);
        }
        displaced
    }
}

pub(crate) struct FreeList<T> {
    queue: Shelf<T>,
    parked: Box<[CachePadded<Parked<T>>]>,
}

impl<T> FreeList<T> {
    pub(crate) fn new(capacity: usize, mode: QueueMode) -> Self {
        FreeList {
            queue: match mode {
                QueueMode::Fifo => Shelf::Fifo(FreeQueue::new(capacity)),
                QueueMode::Lifo => Shelf::Lifo(Stack {
                    items: Mutex::new(Vec::with_capacity(capacity)),
                    len: AtomicUsize::new(0),
                    capacity,
                }),
            },
            parked: (0..STRIPES)
                .map(|_| {
                    CachePadded::new(Parked {
                        slot: SwapCell::new(),
                        own: AtomicUsize::new(0),
                        stolen: AtomicUsize::new(0),
                    })
                })
                .collect(),
        }
    }

    /// A free item: this thread's parked one; else, reusing the most recent first (`Lifo`),
    /// one parked by another thread, else the top of the stack; or, reusing the oldest first
    /// (`Fifo`), the queue's head, else one parked by another thread.
    #[inline(always)]
    pub(crate) fn take(&self, stripe: Stripe) -> Option<T> {
        if let Some(own) = stripe.owned() {
            if let Some(item) = self.parked[own].take_own() {
                return Some(item);
            }
        }
        self.take_shared()
    }

    /// [`take`](Self::take) past this thread's own slot.
    #[inline(never)]
    fn take_shared(&self) -> Option<T> {
        let stolen = || self.parked.iter().find_map(|parked| parked.steal());
        match &self.queue {
            // Parked workers are their threads' last released: newer than those shelved.
            Shelf::Lifo(stack) => stolen().or_else(|| stack.pop()),
            Shelf::Fifo(queue) => queue.pop().or_else(stolen),
        }
    }

    /// Keeps a free item: parked for this thread if its slot is empty, else queued. Ends in a
    /// `SeqCst` write (the owner's count's store, or the queue's push on its tail), which the
    /// caller's look for waiters relies on. `Err` when the queue is full.
    #[inline]
    pub(crate) fn keep(&self, item: T, stripe: Stripe) -> Result<(), T> {
        if let Some(own) = stripe.owned() {
            let parked = &self.parked[own];
            if parked.count() == 0 {
                return match parked.put(item) {
                    Some(displaced) => self.push(displaced),
                    None => Ok(()),
                };
            }
        }
        self.push(item)
    }

    /// The item that has been on the shelf longest (parked ones are never taken: they are
    /// their threads' last released). Taking it and shelving it again (with
    /// [`push`](Self::push)) `queued()` times looks at every shelved item once.
    pub(crate) fn take_oldest(&self) -> Option<T> {
        self.queue.take_oldest()
    }

    /// Queues a free item. `Err` when the queue is full.
    pub(crate) fn push(&self, item: T) -> Result<(), T> {
        self.queue.push(item)
    }

    /// How many items are queued (not parked): where the line's kept items go. Never reads
    /// fewer than are queued when no take is under way.
    pub(crate) fn queued(&self) -> usize {
        self.queue.len()
    }

    /// How many items are free: queued or parked. A parked count read while a thief's take
    /// is half done may be one too low for a moment (it wraps below zero): the sum is read
    /// as signed and never reported below zero.
    pub(crate) fn len(&self) -> usize {
        let parked = self
            .parked
            .iter()
            .fold(0usize, |sum, parked| sum.wrapping_add(parked.count()));
        let total = self.queue.len().wrapping_add(parked) as isize;
        total.max(0) as usize
    }
}

/// A count of free workers the pool's own code has taken off the list for a moment (the
/// reaper's sweep, `Pool::map`): still idle, so `stats()` counts them as free. Each is
/// counted before it is taken and given back after it is put back (or closed); the rest on
/// any other exit, unwinding included.
pub(crate) struct HeldFree<'a> {
    count: &'a AtomicUsize,
    held: usize,
}

impl<'a> HeldFree<'a> {
    pub(crate) fn new(count: &'a AtomicUsize) -> Self {
        HeldFree { count, held: 0 }
    }

    pub(crate) fn take_one(&mut self) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.held += 1;
    }

    pub(crate) fn leave_one(&mut self) {
        if self.held > 0 {
            self.count.fetch_sub(1, Ordering::Relaxed);
            self.held -= 1;
        }
    }
}

impl Drop for HeldFree<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(self.held, Ordering::Relaxed);
    }
}
