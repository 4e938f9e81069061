//! Balancers' waiters listening for this pool's free workers: a `Balancer<Pool<W>>`
//! checkout that finds every pool busy waits in one pool's line, and each of the other busy
//! pools nudges it (see `WaitList::nudge`) when it keeps a worker free, so that it can take
//! that worker instead of waiting out its time in the one line.

use std::sync::Arc;

use super::waitlist::Nudge;
use super::Shared;
use crate::sync::{fence, AtomicUsize, Mutex, Ordering};

pub(crate) struct Listeners<W: Send + 'static> {
    /// How many listen: read without the lock at every worker kept free.
    count: AtomicUsize,
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
            count: AtomicUsize::new(0),
            list: Mutex::new(Vec::new()),
        }
    }
}

impl<W: Send + 'static> Listeners<W> {
    /// Nudges every listener, if any: after a worker was kept free, and a `SeqCst` point
    /// (a listener counts itself in, then looks for a free worker: either it finds this
    /// one, or this sees it and nudges it).
    #[inline]
    pub(crate) fn nudge_any(&self) {
        if self.count.load(Ordering::SeqCst) != 0 {
            self.nudge_each();
        }
    }

    #[cold]
    fn nudge_each(&self) {
        // Each nudge takes the listener's line lock: not under this list's lock.
        let each: Vec<(Arc<Nudge>, Arc<Shared<W>>)> = self
            .list
            .lock()
            .iter()
            .map(|l| (l.nudge.clone(), l.line.clone()))
            .collect();
        for (nudge, line) in each {
            line.waiters.nudge(&nudge);
        }
    }

    /// Listens, until the guard drops, for a worker kept free here, for a waiter in
    /// `line`'s line: `nudge` is rung then.
    pub(crate) fn listen(&self, line: Arc<Shared<W>>, nudge: Arc<Nudge>) -> Listening<'_, W> {
        let mut list = self.list.lock();
        let id = list.last().map_or(0, |l| l.id + 1);
        list.push(Listener { id, nudge, line });
        self.count.fetch_add(1, Ordering::SeqCst);
        drop(list);
        fence(Ordering::SeqCst);
        Listening {
            listeners: self,
            id,
        }
    }
}

/// A listener's place in the list: its drop takes it out.
pub(crate) struct Listening<'a, W: Send + 'static> {
    listeners: &'a Listeners<W>,
    id: u64,
}

impl<W: Send + 'static> Drop for Listening<'_, W> {
    fn drop(&mut self) {
        let mut list = self.listeners.list.lock();
        if let Some(at) = list.iter().position(|l| l.id == self.id) {
            let gone = list.remove(at);
            self.listeners.count.fetch_sub(1, Ordering::SeqCst);
            drop(list);
            // The listener's pool may go with it (its last reference): outside the lock.
            drop(gone);
        }
    }
}
