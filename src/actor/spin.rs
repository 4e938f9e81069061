//! Spinning: bounded in time, adaptive, and never by more threads than there are cores.

use std::time::Duration;
#[cfg(not(loom))]
use std::time::Instant;

use crate::sync::thread;
#[cfg(not(loom))]
use crate::sync::{AtomicU64, AtomicUsize, Ordering};

/// The longest a waiting side spins before it parks.
#[cfg(not(loom))]
pub(super) const SPIN_MAX: Duration = Duration::from_micros(20);
/// The shortest spin of an adaptive budget; below it, the budget is none.
#[cfg(not(loom))]
pub(super) const SPIN_MIN: Duration = Duration::from_micros(1);
/// After this long a spinner yields its core between looks, so that a runnable thread on
/// the same core (perhaps the one it waits for) gets to run. A hand-off between two cores
/// takes a few hundred nanoseconds; when both threads share one core (a loaded machine),
/// every nanosecond spun before the yield is lost: with 4 µs here a same-core round trip
/// took about 12 µs on the 2-core test machine, with 0.5 µs about 6 µs.
#[cfg(not(loom))]
pub(super) const SPIN_BEFORE_YIELD: Duration = Duration::from_nanos(500);
/// A waiter whose budget fell to none still spins (a full `SPIN_MAX`) once in this many
/// waits, to notice when spinning pays again: a shorter probe never outlasts the OS wake-up
/// of the other side, so both sides would stay parked after the load that made them park
/// has gone. The probe costs at most `SPIN_MAX / PROBE_EVERY` per wait.
#[cfg(not(loom))]
pub(super) const PROBE_EVERY: u64 = 32;

/// After its spin, a waiter yields its core this many times (looking between) before it
/// parks. When there are more runnable threads than cores, the thread it waits for may be
/// queued on its own core: yielding lets it run, and the hand-off costs no OS wake-up on
/// either side. When there are not, a yield returns at once.
#[cfg(not(loom))]
pub(super) const YIELDS: u32 = 4;

/// Yields up to [`YIELDS`] times while `ready()` is false; returns whether it turned true.
#[cfg(not(loom))]
pub(super) fn yield_until(ready: impl Fn() -> bool) -> bool {
    for _ in 0..YIELDS {
        if ready() {
            return true;
        }
        thread::yield_now();
    }
    ready()
}

/// Under loom (no clock, and a yield is a step of the model): one yield, then a look.
#[cfg(loom)]
pub(super) fn yield_until(ready: impl Fn() -> bool) -> bool {
    thread::yield_now();
    ready()
}

/// Threads spinning in [`spin_until`] right now, across the process.
#[cfg(not(loom))]
pub(super) static SPINNING: AtomicUsize = AtomicUsize::new(0);

#[cfg(not(loom))]
pub(super) fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES
        .get_or_init(|| std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get))
}

/// Spins until `ready()` or `budget` has passed, unless as many threads as there are cores
/// already spin. Returns whether `ready()` turned true.
#[cfg(not(loom))]
pub(super) fn spin_until(budget: Duration, ready: impl Fn() -> bool) -> bool {
    if ready() {
        return true;
    }
    if budget.is_zero() {
        return false;
    }
    if SPINNING.fetch_add(1, Ordering::Relaxed) >= cores() {
        SPINNING.fetch_sub(1, Ordering::Relaxed);
        return false;
    }
    let began = Instant::now();
    let mut ready_now = false;
    'spin: loop {
        for _ in 0..16 {
            if ready() {
                ready_now = true;
                break 'spin;
            }
            std::hint::spin_loop();
        }
        let spun = began.elapsed();
        if spun >= budget {
            break;
        }
        if spun >= SPIN_BEFORE_YIELD {
            thread::yield_now();
        }
    }
    SPINNING.fetch_sub(1, Ordering::Relaxed);
    ready_now
}

/// Under loom (no clock): one look. A spin only delays the slow path; the model explores
/// the other threads' steps around that look instead.
#[cfg(loom)]
pub(super) fn spin_until(_budget: Duration, ready: impl Fn() -> bool) -> bool {
    ready()
}

/// A spin budget that doubles after a spin that paid off and halves after one that did not,
/// down to none; then one wait in [`PROBE_EVERY`] spins, to notice when spinning pays again. Owned by one waiting side (a caller's slot, an actor's thread): relaxed atomics
/// only because a slot is shared.
#[cfg(not(loom))]
pub(super) struct Budget {
    pub(super) nanos: AtomicU64,
    pub(super) skipped: AtomicU64,
}

#[cfg(not(loom))]
impl Budget {
    pub(super) fn new() -> Self {
        Budget {
            nanos: AtomicU64::new(SPIN_MAX.as_nanos() as u64),
            skipped: AtomicU64::new(0),
        }
    }
    pub(super) fn get(&self) -> Duration {
        let nanos = self.nanos.load(Ordering::Relaxed);
        if nanos > 0 {
            return Duration::from_nanos(nanos);
        }
        let skipped = self.skipped.load(Ordering::Relaxed) + 1;
        if skipped >= PROBE_EVERY {
            self.skipped.store(0, Ordering::Relaxed);
            SPIN_MAX
        } else {
            self.skipped.store(skipped, Ordering::Relaxed);
            Duration::ZERO
        }
    }
    pub(super) fn learn(&self, spun: Duration, paid_off: bool) {
        if spun.is_zero() {
            return;
        }
        let (max, min) = (SPIN_MAX.as_nanos() as u64, SPIN_MIN.as_nanos() as u64);
        let now = spun.as_nanos() as u64;
        let next = if paid_off {
            (now * 2).clamp(min, max)
        } else if now / 2 < min {
            0
        } else {
            now / 2
        };
        self.nanos.store(next, Ordering::Relaxed);
    }
}

/// Under loom the spin is one look whatever the budget (see the loom [`spin_until`]), so the
/// budget is none and learns nothing: no state for the model to explore.
#[cfg(loom)]
pub(super) struct Budget;

#[cfg(loom)]
impl Budget {
    pub(super) fn new() -> Self {
        Budget
    }
    pub(super) fn get(&self) -> Duration {
        Duration::ZERO
    }
    pub(super) fn learn(&self, _spun: Duration, _paid_off: bool) {}
}
