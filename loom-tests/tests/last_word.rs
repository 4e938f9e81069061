//! Loom models of `LastWord`, the protocol by which a pool's gauges are set (feature
//! `metrics`): each thread that changes the pool reads it, then sets the gauges through the
//! recorder (user code, slow at times). A reading taken before a change must never be set
//! after the reading taken after it.
#![cfg(loom)]

use std::sync::Arc;

use cylinder::LastWord;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::thread;

fn model(test: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(3);
    }
    builder.check(test);
}

/// What the pool is (`state`) and what its gauge says (`gauge`, a recorder's atomic).
struct Pool {
    state: AtomicUsize,
    gauge: AtomicUsize,
    sampled: LastWord,
}

/// A change to the pool, then a sample of it: through `LastWord`, or (`naive`) read and set
/// directly.
fn change_and_sample(pool: &Pool, naive: bool) {
    pool.state.fetch_add(1, Ordering::SeqCst);
    let sample = || {
        let reading = pool.state.load(Ordering::SeqCst);
        pool.gauge.store(reading, Ordering::SeqCst);
    };
    if naive {
        sample();
    } else {
        pool.sampled.write(sample);
    }
}

/// Two threads change the pool and sample it, a third samples only (the reaper): once all
/// are done, the gauge says what the pool is.
fn two_changes_and_a_reaper(naive: bool) {
    model(move || {
        let pool = Arc::new(Pool {
            state: AtomicUsize::new(0),
            gauge: AtomicUsize::new(usize::MAX),
            sampled: LastWord::new(),
        });
        let changers: Vec<_> = (0..2)
            .map(|_| {
                let pool = pool.clone();
                thread::spawn(move || change_and_sample(&pool, naive))
            })
            .collect();
        // The reaper's round: a sample with no change of its own.
        pool.sampled.write(|| {
            let reading = pool.state.load(Ordering::SeqCst);
            pool.gauge.store(reading, Ordering::SeqCst);
        });
        for changer in changers {
            changer.join().unwrap();
        }
        assert_eq!(
            pool.gauge.load(Ordering::SeqCst),
            pool.state.load(Ordering::SeqCst),
            "a stale reading had the last word"
        );
    });
}

#[test]
fn the_last_change_is_sampled_last() {
    two_changes_and_a_reaper(false);
}

/// The model can fail: without the protocol, a reading taken before the other thread's
/// change is set after that thread's.
#[test]
#[should_panic(expected = "a stale reading had the last word")]
fn without_it_a_stale_reading_can_be_set_last() {
    two_changes_and_a_reaper(true);
}
