//! Per-thread stripes: state that each thread writes on the hot path lives on its own cache
//! line, so threads never contend on one shared line.
//!
//! The first [`STRIPES`] live threads each own a stripe outright (handed back when the thread
//! ends), so their writes are plain loads and stores with no read-modify-write. Threads beyond
//! that share one extra stripe and use atomic read-modify-writes on it.

use std::sync::Mutex as StdMutex;

use crate::sync::{AtomicU64, AtomicUsize, CachePadded, Ordering};

/// How many threads can own a stripe at once. Under loom, whose models run at most four
/// threads, four: every stripe is a slot that a scan of the free list reads, and each read is
/// a branch of the model.
pub(crate) const STRIPES: usize = if cfg!(loom) { 4 } else { 16 };

/// The stripe shared by every thread that owns none.
const SHARED: usize = STRIPES;

static FREED: StdMutex<Vec<usize>> = StdMutex::new(Vec::new());

std::thread_local! {
    /// Set on the crate's own background threads (reaper, starters) before their first
    /// stripe lookup: they use the shared stripe and never take one from the clients.
    static BACKGROUND: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks the calling thread as one of the crate's background threads: it will never own a
/// stripe. Call before the thread touches a pool.
pub(crate) fn opt_out() {
    BACKGROUND.with(|background| background.set(true));
}
#[cfg(not(loom))]
static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A thread's claim on a stripe, handed back when the thread ends.
struct Claim(usize);

impl Claim {
    #[cfg(not(loom))]
    fn take() -> Claim {
        if BACKGROUND.with(std::cell::Cell::get) {
            return Claim(SHARED);
        }
        let mut freed = FREED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(stripe) = freed.pop() {
            return Claim(stripe);
        }
        let next = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Claim(if next < STRIPES { next } else { SHARED })
    }

    /// Loom needs every execution to start alike: stripes are numbered afresh in each one.
    #[cfg(loom)]
    fn take() -> Claim {
        loom::lazy_static! {
            static ref NEXT_IN_EXECUTION: std::sync::atomic::AtomicUsize =
                std::sync::atomic::AtomicUsize::new(0);
        }
        let next = NEXT_IN_EXECUTION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Claim(if next < STRIPES { next } else { SHARED })
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.0 != SHARED && !cfg!(loom) {
            FREED
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(self.0);
        }
    }
}

#[cfg(not(loom))]
std::thread_local! {
    static CLAIM: Claim = Claim::take();
}

// Loom runs its threads on one OS thread: its own thread-locals keep their claims apart.
#[cfg(loom)]
loom::thread_local! {
    static CLAIM: Claim = Claim::take();
}

/// A thread's stripe, looked up once per operation and passed along.
#[derive(Clone, Copy)]
pub(crate) struct Stripe(usize);

impl Stripe {
    /// The calling thread's stripe: its own, or the shared one.
    #[inline]
    pub(crate) fn current() -> Stripe {
        Stripe(CLAIM.try_with(|claim| claim.0).unwrap_or(SHARED))
    }

    /// The shared stripe, for work done on behalf of no thread in particular (a new worker
    /// joining the pool is shelved, not parked for the thread that happened to start it).
    #[inline]
    pub(crate) fn shared() -> Stripe {
        Stripe(SHARED)
    }

    /// How many stripes there are, the shared one included.
    pub(crate) const COUNT: usize = STRIPES + 1;

    /// The stripe's index, below [`COUNT`](Self::COUNT) (the shared stripe's is the last).
    #[inline]
    pub(crate) fn index(self) -> usize {
        self.0
    }

    /// The stripe's index if the calling thread owns it: per-thread state indexed by it has
    /// this thread as its only writer.
    #[inline]
    pub(crate) fn owned(self) -> Option<usize> {
        Some(self.0).filter(|&stripe| stripe != SHARED)
    }
}

/// A round-robin position per stripe. Each stripe starts at a different offset, so that new
/// threads do not all begin with the same worker.
pub(crate) struct StripedCursor {
    positions: Box<[CachePadded<AtomicUsize>]>,
}

impl StripedCursor {
    pub(crate) fn new() -> Self {
        StripedCursor {
            positions: (0..=STRIPES)
                .map(|offset| CachePadded::new(AtomicUsize::new(offset)))
                .collect(),
        }
    }

    /// Where the calling thread's rotation stands in a set of `len` (at least 1) workers: the
    /// index to look at first. On the shared stripe (threads that own none) this also steps
    /// the shared position, as only an atomic read-modify-write can.
    #[inline]
    pub(crate) fn start(&self, stripe: Stripe, len: usize) -> usize {
        let position = &self.positions[stripe.0];
        if stripe.0 == SHARED {
            return position.fetch_add(1, Ordering::Relaxed) % len;
        }
        // Divide only when the set has shrunk under the position.
        let at = position.load(Ordering::Relaxed);
        if at < len {
            at
        } else {
            at % len
        }
    }

    /// Continues the calling thread's rotation after `returned`, the index it handed out from
    /// a set of `len`: whatever was skipped, the next look starts right after it, so live
    /// workers share the calls evenly. The thread is its stripe's only writer, so this is a
    /// plain store; the shared stripe already stepped in [`start`](Self::start).
    #[inline]
    pub(crate) fn advance(&self, stripe: Stripe, returned: usize, len: usize) {
        if stripe.0 != SHARED {
            let next = if returned + 1 >= len { 0 } else { returned + 1 };
            self.positions[stripe.0].store(next, Ordering::Relaxed);
        }
    }

    /// Makes `index` where the calling thread's next look starts (affinity: the thread comes
    /// back to the worker it was given last). A plain store on the thread's own stripe; the
    /// shared stripe keeps rotating, as [`start`](Self::start) steps it.
    #[inline]
    pub(crate) fn stay(&self, stripe: Stripe, index: usize) {
        if stripe.0 != SHARED {
            self.positions[stripe.0].store(index, Ordering::Relaxed);
        }
    }
}

/// An event counter whose increments stay on the calling thread's stripe.
pub(crate) struct StripedCounter {
    cells: Box<[CachePadded<AtomicU64>]>,
}

impl StripedCounter {
    pub(crate) fn new() -> Self {
        StripedCounter {
            cells: (0..=STRIPES)
                .map(|_| CachePadded::new(AtomicU64::new(0)))
                .collect(),
        }
    }

    #[inline]
    pub(crate) fn add(&self, stripe: Stripe) {
        let cell = &self.cells[stripe.0];
        if stripe.0 == SHARED {
            cell.fetch_add(1, Ordering::Relaxed);
        } else {
            // This thread is the stripe's only writer.
            cell.store(cell.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        }
    }

    /// The total; exact once the counting threads are quiet.
    pub(crate) fn sum(&self) -> u64 {
        self.cells.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}
