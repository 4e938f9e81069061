//! How the balancer picks a worker: worker_pool's strategies.

use std::cell::Cell;
use std::hash::{Hash, Hasher};

/// How [`Balancer::get`](crate::Balancer::get) picks among the live workers. Whichever it
/// picks first, a dead or overloaded worker is skipped for the next one in order.
///
/// ```
/// use std::sync::Arc;
/// use cylinder::{Balancer, BoxError, Strategy, Worker};
///
/// struct Shard(usize);
/// impl Worker for Shard {
///     fn queue_len(&self) -> Option<usize> {
///         Some(self.0)
///     }
/// }
///
/// let shards = vec![Arc::new(Shard(0)), Arc::new(Shard(10))];
/// let balancer = Balancer::builder()
///     .strategy(Strategy::LeastLoaded)
///     .build_with(move || -> Result<_, BoxError> { Ok(shards.clone()) })
///     .unwrap();
/// // Of two random picks the shorter queue wins: the busy shard only when both pick it,
/// // about one time in four.
/// let busy = (0..1000).filter(|_| balancer.get().unwrap().0 == 10).count();
/// assert!(busy < 400, "{busy}");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Strategy {
    /// Each thread cycles through the workers in order (revolver's; the default).
    #[default]
    RoundRobin,
    /// A worker chosen at random.
    Random,
    /// The one with the shorter [`queue_len`](crate::Worker::queue_len) of two chosen at
    /// random ("power of two choices"); a worker with no known queue length counts as idle.
    LeastLoaded,
}

thread_local! {
    static RANDOM: Cell<u64> = const { Cell::new(0) };
}

/// A fast per-thread pseudo-random number (xorshift64*), seeded per thread.
pub(crate) fn random() -> u64 {
    RANDOM
        .try_with(|state| {
            let mut x = state.get();
            if x == 0 {
                // Seed from the state's own address: distinct for each live thread.
                x = (state as *const Cell<u64> as u64) | 1;
            }
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            state.set(x);
            x.wrapping_mul(0x2545_F491_4F6C_DD1D)
        })
        .unwrap_or(0x9E37_79B9_7F4A_7C15)
}

/// A random index below `len` (at least 1).
pub(crate) fn random_below(len: usize) -> usize {
    (random() % len as u64) as usize
}

/// The index `key` maps to among `len` workers, the same for the same key and length.
pub(crate) fn index_for<K: Hash + ?Sized>(key: &K, len: usize) -> usize {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    (hasher.finish() % len as u64) as usize
}
