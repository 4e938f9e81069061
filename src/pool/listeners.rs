//! Balancers' waiters listening for this pool's free workers: a `Balancer<Pool<W>>`
//! checkout that finds every pool busy waits in one pool's line, and each other pool of the
//! set nudges it (see `WaitList::nudge`) when it keeps a worker free, so that it can take
//! that worker instead of waiting out its time in the one line. As the line wakes only as
//! many waiters as workers are queued, a pool nudges only as many listeners as it has free
//! workers: the nudged ones not yet looking count as on their way.

use std::sync::Arc;

use super::waitlist::Nudge;
use super::Shared;
use crate::sync::{fence, AtomicUsize, CachePadded, Mutex, Ordering};

pub(crate) struct Listeners<W: Send + 'static> {
    /// How many listen: read without the lock at every worker kept free, so on a cache line
    /// of its own (no write of the lease's path may invalidate it).
    count: CachePadded<AtomicUsize>,
    list: Mutex<Vec<Listener<W>>>,
}

/// A waiter in `line`'s pool, woken by `nudge`.
struct Listener<W: Send + 'static> {
    id: u64,
    nudge: Arc<Nudge>,
    line: Arc<Shared<W>>,
}

impl<W: Send + 'static> Default for Listeners<W> {
    fn default() -> Self {
        Listeners {
            count: CachePadded::new(AtomicUsize::new(0)),
            list: Mutex::new(Vec::new()),
        }
    }
}

impl<W: Send + 'static> Listeners<W> {
    /// Whether anyone listens. `SeqCst`: a listener counts itself in, then looks for a free
    /// worker; a pool keeps one free, then looks for listeners: one of the two sees the
    /// other.
    #[inline]
    pub(crate) fn any(&self) -> bool {
        self.count.load(Ordering::SeqCst) != 0
    }

    /// Nudges listeners not nudged yet, longest listening first, until `free` are on their
    /// way (nudged and not yet looking).
    #[cold]
    fn nudge(&self, free: usize) {
        let chosen: Vec<(Arc<Nudge>, Arc<Shared<W>>)> = {
            let list = self.list.lock();
            let mut on_their_way = list.iter().filter(|l| l.nudge.is_rung()).count();
            let mut chosen = Vec::new();
            for listener in list.iter() {
                if on_their_way >= free {
                    break;
                }
                // Marked under the list's lock, so two releases at once choose two.
                if listener.nudge.ring() {
                    chosen.push((listener.nudge.clone(), listener.line.clone()));
                    on_their_way += 1;
                }
            }
            chosen
        };
        // Each nudge takes the listener's line lock: not under this list's lock.
        for (nudge, line) in chosen {
            line.waiters.nudge(&nudge);
        }
    }
}

impl<W: Send + 'static> Shared<W> {
    /// Tells balancers' waiters elsewhere of this pool's free workers, if any listen: called
    /// after a worker was kept free (at least that one), and when a listener leaves (what it
    /// was nudged for, or another it left free, goes to the others: `listener_left`).
    #[inline]
    pub(super) fn nudge_listeners(&self, after_a_keep: bool) {
        if self.listeners.any() {
            let free = self.free.len();
            if free > 0 || after_a_keep {
                self.listeners.nudge(free.max(1));
            }
        }
    }

    /// Listens, until the guard drops, for a worker kept free here, for a waiter in
    /// `line`'s line: `nudge` is rung then.
    pub(crate) fn listen(&self, line: Arc<Shared<W>>, nudge: Arc<Nudge>) -> Listening<'_, W> {
        let mut list = self.listeners.list.lock();
        let id = list.last().map_or(0, |l| l.id + 1);
        list.push(Listener { id, nudge, line });
        self.listeners.count.fetch_add(1, Ordering::SeqCst);
        drop(list);
        fence(Ordering::SeqCst);
        Listening { pool: self, id }
    }
}

/// A listener's place in a pool's list: its drop takes it out.
pub(crate) struct Listening<'a, W: Send + 'static> {
    pool: &'a Shared<W>,
    id: u64,
}

impl<W: Send + 'static> Drop for Listening<'_, W> {
    fn drop(&mut self) {
        let listeners = &self.pool.listeners;
        let mut list = listeners.list.lock();
        let Some(at) = list.iter().position(|l| l.id == self.id) else {
            return;
        };
        let gone = list.remove(at);
        listeners.count.fetch_sub(1, Ordering::SeqCst);
        drop(list);
        // The listener's pool may go with it (its last reference): outside the lock.
        drop(gone);
        self.pool.listener_left();
    }
}
