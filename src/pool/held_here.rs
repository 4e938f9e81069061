//! What this thread holds of a pool while it runs user code (a checkout's check, a return's
//! hooks, `map`'s callback, a sweep's looks, a worker's `Drop`, a start's closure, an event
//! reported while a new worker is still in hand): only this thread can give it back, once
//! that code returns, so a `drain`, `resize` or `try_checkout` called from it does not wait
//! for it.
//!
//! Held by *unit*: each unit is one of the counts `drain` waits for, so the record and the
//! counts cannot disagree on how much one thing weighs.
//! - A **worker** (by its id): counted open, or closing once counted out (`closed_above`).
//!   A worker two nested guards both hold counts once.
//! - A **start on its way** (a mark of its own): a start's claim (`starting`; a timed start
//!   counts once, see `Counts::timed_starts_running`), or a new worker's delivery
//!   (`delivering`). `try_checkout` and `resize` compare the starts on their way with these
//!   only.

use std::cell::RefCell;

crate::sync::per_thread! {
    /// (pool's address, unit) for everything this thread holds now.
    static HELD: RefCell<Vec<(usize, u64)>> = RefCell::new(Vec::new());
}

/// The tag of a start-on-its-way unit (worker ids are counted from 0 and never reach it).
const ON_ITS_WAY: u64 = 1 << 63;

/// A fresh start-on-its-way unit: marks are never reused, so two starts nested on one
/// thread count twice.
fn new_mark() -> u64 {
    // Not part of any protocol (only identity): a plain std atomic, under loom too.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    ON_ITS_WAY | NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// What a guard holds of one pool, until it drops (or `release`s a worker).
pub(crate) struct HeldHere {
    pool: usize,
    units: Units,
}

/// A guard's units: one or two inline (a check, a return's hooks, a start: no allocation
/// on a checkout's path), more on the heap (a sweep, `map`).
enum Units {
    Inline(usize, [u64; 2]),
    Heap(Vec<u64>),
}

impl Units {
    fn as_slice(&self) -> &[u64] {
        match self {
            Units::Inline(len, units) => &units[..*len],
            Units::Heap(units) => units,
        }
    }

    fn remove(&mut self, unit: u64) -> bool {
        match self {
            Units::Inline(len, units) => match units[..*len].iter().position(|&u| u == unit) {
                Some(at) => {
                    units.swap(at, *len - 1);
                    *len -= 1;
                    true
                }
                None => false,
            },
            Units::Heap(units) => match units.iter().position(|&u| u == unit) {
                Some(at) => {
                    units.swap_remove(at);
                    true
                }
                None => false,
            },
        }
    }
}

impl HeldHere {
    /// The worker `id` of `pool`, held by this thread.
    pub(crate) fn worker<T>(pool: &T, id: u64) -> HeldHere {
        Self::holding(pool, Units::Inline(1, [id, 0]))
    }

    /// The workers `ids` of `pool`, held by this thread.
    pub(crate) fn workers<T>(pool: &T, ids: impl IntoIterator<Item = u64>) -> HeldHere {
        Self::holding(pool, Units::Heap(ids.into_iter().collect()))
    }

    /// A start of `pool` this thread runs (its claim, not yet a worker).
    pub(crate) fn start<T>(pool: &T) -> HeldHere {
        Self::holding(pool, Units::Inline(1, [new_mark(), 0]))
    }

    /// A new worker `id` of `pool` this thread delivers: counted open, and on its way to
    /// the line until delivered.
    pub(crate) fn delivery<T>(pool: &T, id: u64) -> HeldHere {
        Self::holding(pool, Units::Inline(2, [id, new_mark()]))
    }

    fn holding<T>(pool: &T, units: Units) -> HeldHere {
        let pool = pool as *const T as usize;
        let _ = HELD.try_with(|held| {
            let mut held = held.borrow_mut();
            held.extend(units.as_slice().iter().map(|&unit| (pool, unit)));
        });
        HeldHere { pool, units }
    }

    /// No longer holds worker `id` (given back, or counted out).
    pub(crate) fn release(&mut self, id: u64) {
        if self.units.remove(id) {
            Self::forget(self.pool, id);
        }
    }

    /// Worker `id` of `pool` is counted out: no guard of this thread holds it any more (an
    /// outer guard, e.g. a checkout's or a sweep's, may still list it while events are
    /// reported, and must not count it against another client's lease).
    pub(crate) fn gone<T>(pool: &T, id: u64) {
        let pool = pool as *const T as usize;
        let _ = HELD.try_with(|held| held.borrow_mut().retain(|&entry| entry != (pool, id)));
    }

    fn forget(pool: usize, unit: u64) {
        let _ = HELD.try_with(|held| {
            let mut held = held.borrow_mut();
            if let Some(at) = held.iter().rposition(|&entry| entry == (pool, unit)) {
                held.swap_remove(at);
            }
        });
    }

    /// How many units of `pool` this thread holds now (workers and starts on their way):
    /// what `drain` does not wait for.
    pub(crate) fn of<T>(pool: &T) -> usize {
        Self::count(pool, |_| true)
    }

    /// How many starts on their way of `pool` this thread holds now: what a `try_checkout`
    /// or `resize` does not wait for.
    pub(crate) fn on_their_way<T>(pool: &T) -> usize {
        Self::count(pool, |unit| unit & ON_ITS_WAY != 0)
    }

    fn count<T>(pool: &T, counted: impl Fn(u64) -> bool) -> usize {
        let pool = pool as *const T as usize;
        HELD.try_with(|held| {
            let mut units: Vec<u64> = held
                .borrow()
                .iter()
                .filter(|&&(of, unit)| of == pool && counted(unit))
                .map(|&(_, unit)| unit)
                .collect();
            units.sort_unstable();
            units.dedup();
            units.len()
        })
        .unwrap_or(0)
    }
}

impl Drop for HeldHere {
    fn drop(&mut self) {
        for &unit in self.units.as_slice() {
            Self::forget(self.pool, unit);
        }
    }
}
