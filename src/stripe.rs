//! Per-thread stripes: state that each thread writes on the hot path lives on its own cache
//! line, so threads never contend on one shared line.

use std::cell::Cell;

use crate::sync::{AtomicU64, AtomicUsize, CachePadded, Ordering};

/// How many stripes a cursor or counter has; threads beyond this share stripes.
pub(crate) const STRIPES: usize = 16;

static NEXT_STRIPE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

thread_local! {
    static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// This thread's stripe, handed out in turn to threads as they first ask.
pub(crate) fn stripe() -> usize {
    STRIPE.with(|cell| {
        let stripe = cell.get();
        if stripe != usize::MAX {
            return stripe;
        }
        let stripe = NEXT_STRIPE.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % STRIPES;
        cell.set(stripe);
        stripe
    })
}

/// A round-robin position per stripe. Each stripe starts at a different offset, so that new
/// threads do not all begin with the same worker.
pub(crate) struct StripedCursor {
    positions: Box<[CachePadded<AtomicUsize>]>,
}

impl StripedCursor {
    pub(crate) fn new() -> Self {
        StripedCursor {
            positions: (0..STRIPES)
                .map(|offset| CachePadded::new(AtomicUsize::new(offset)))
                .collect(),
        }
    }

    /// The calling thread's next position. A plain load and store, not a read-modify-write:
    /// only threads that share a stripe can race here, and a lost step only repeats a worker.
    pub(crate) fn next(&self) -> usize {
        let position = &self.positions[stripe()];
        let at = position.load(Ordering::Relaxed);
        position.store(at.wrapping_add(1), Ordering::Relaxed);
        at
    }
}

/// An event counter whose increments stay on the calling thread's stripe.
pub(crate) struct StripedCounter {
    cells: Box<[CachePadded<AtomicU64>]>,
}

impl StripedCounter {
    pub(crate) fn new() -> Self {
        StripedCounter {
            cells: (0..STRIPES)
                .map(|_| CachePadded::new(AtomicU64::new(0)))
                .collect(),
        }
    }

    pub(crate) fn add(&self) {
        self.cells[stripe()].fetch_add(1, Ordering::Relaxed);
    }

    /// The total; exact once the counting threads are quiet.
    pub(crate) fn sum(&self) -> u64 {
        self.cells.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}
