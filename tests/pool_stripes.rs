//! The pool's own threads (reapers, start threads) never take one of the 16 per-thread
//! stripes from the clients. A thread that owns a stripe parks the worker it releases in its
//! own slot and gets that same worker back on its next checkout; a thread without one puts it
//! at the tail of the shared queue and gets the head's worker instead. Alone in its test binary,
//! so no other test holds stripes meanwhile.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use cylinder::{Lease, Pool};

#[test]
fn background_threads_never_take_a_client_stripe() {
    // Twenty pools whose reapers sweep and whose start threads deliver: each touches the
    // stripes (sweeps, returns to the free list) many times on its background threads.
    let busy: Vec<Pool<u64>> = (0..20)
        .map(|_| {
            Pool::builder()
                .size(2)
                .min_idle(1)
                .max_lifetime(Duration::from_millis(5))
                .idle_timeout(Duration::from_millis(5))
                .warn_after(Duration::from_millis(1))
                .build(|| Ok(0u64))
                .unwrap()
        })
        .collect();
    for pool in &busy {
        // A start thread delivers the replacement.
        Lease::discard(pool.checkout().unwrap());
    }
    thread::sleep(Duration::from_millis(100));

    let next = Arc::new(AtomicU64::new(0));
    let pool = Pool::builder()
        .size(64)
        .build(move || Ok(next.fetch_add(1, Ordering::Relaxed)))
        .unwrap();
    const CLIENTS: usize = 15;
    let gate = Barrier::new(CLIENTS);
    let owned = thread::scope(|scope| {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let (pool, gate) = (&pool, &gate);
                scope.spawn(move || {
                    // All the clients are alive at once (15 of the 16 stripes).
                    gate.wait();
                    let first = *pool.checkout().unwrap();
                    let again = *pool.checkout().unwrap();
                    let owns = first == again;
                    gate.wait();
                    owns
                })
            })
            .collect();
        clients
            .into_iter()
            .map(|c| c.join().unwrap())
            .filter(|&owns| owns)
            .count()
    });
    drop(busy);
    assert_eq!(
        owned, CLIENTS,
        "only {owned} of {CLIENTS} live clients own a stripe"
    );
}
