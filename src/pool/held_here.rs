//! The workers this thread holds while it runs user code with them (a checkout's check, a
//! return's hooks, `map`'s callback, a sweep's looks, a worker's `Drop`, an event reported
//! while a new worker is still in hand), and the start it runs: only this thread can give
//! them back, once that code returns, so a `drain`, `resize` or `try_checkout` called from
//! it does not wait for them. Counted by identity (a worker's id; one mark for a start), so
//! a worker two nested guards both hold counts once.

use std::cell::RefCell;

crate::sync::per_thread! {
    /// (pool's address, worker id or `START`) for everything this thread holds now.
    static HELD: RefCell<Vec<(usize, u64)>> = RefCell::new(Vec::new());
}

/// The mark of a start this thread runs (no worker id yet).
const START: u64 = u64::MAX;

/// What a guard holds of one pool, until it drops (or `release`s an id).
pub(crate) struct HeldHere {
    pool: usize,
    ids: Vec<u64>,
}

impl HeldHere {
    /// The worker `id` of `pool`, held by this thread.
    pub(crate) fn worker<T>(pool: &T, id: u64) -> HeldHere {
        Self::holding(pool, vec![id])
    }

    /// The workers `ids` of `pool`, held by this thread.
    pub(crate) fn workers<T>(pool: &T, ids: impl IntoIterator<Item = u64>) -> HeldHere {
        Self::holding(pool, ids.into_iter().collect())
    }

    /// A start of `pool` this thread runs.
    pub(crate) fn start<T>(pool: &T) -> HeldHere {
        Self::holding(pool, vec![START])
    }

    fn holding<T>(pool: &T, ids: Vec<u64>) -> HeldHere {
        let pool = pool as *const T as usize;
        let _ = HELD.try_with(|held| held.borrow_mut().extend(ids.iter().map(|&id| (pool, id))));
        HeldHere { pool, ids }
    }

    /// No longer holds worker `id` (given back, or counted out).
    pub(crate) fn release(&mut self, id: u64) {
        if let Some(at) = self.ids.iter().position(|&held| held == id) {
            self.ids.swap_remove(at);
            Self::forget(self.pool, id);
        }
    }

    fn forget(pool: usize, id: u64) {
        let _ = HELD.try_with(|held| {
            let mut held = held.borrow_mut();
            if let Some(at) = held.iter().rposition(|&entry| entry == (pool, id)) {
                held.swap_remove(at);
            }
        });
    }

    /// How many workers (and starts) of `pool` this thread holds now.
    pub(crate) fn of<T>(pool: &T) -> usize {
        let pool = pool as *const T as usize;
        HELD.try_with(|held| {
            let mut ids: Vec<u64> = held
                .borrow()
                .iter()
                .filter(|&&(of, _)| of == pool)
                .map(|&(_, id)| id)
                .collect();
            ids.sort_unstable();
            ids.dedup();
            ids.len()
        })
        .unwrap_or(0)
    }
}

impl Drop for HeldHere {
    fn drop(&mut self) {
        for id in std::mem::take(&mut self.ids) {
            Self::forget(self.pool, id);
        }
    }
}
