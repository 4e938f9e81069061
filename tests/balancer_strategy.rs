//! worker_pool's selection strategies, and hash affinity with `get_for`.

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::thread;

use common::Switchboard;
use cylinder::{Balancer, Strategy};

#[test]
fn random_spreads_over_every_worker() {
    let board = Switchboard::with(4);
    let balancer = Balancer::builder()
        .strategy(Strategy::Random)
        .build_with(board.supervisor())
        .unwrap();
    let mut hits = HashMap::new();
    for _ in 0..40_000 {
        *hits.entry(balancer.get().unwrap().id).or_insert(0) += 1;
    }
    assert_eq!(hits.len(), 4);
    assert!(
        hits.values().all(|&n| (8_000..12_000).contains(&n)),
        "{hits:?}"
    );
}

#[test]
fn least_loaded_prefers_short_queues() {
    let board = Switchboard::with(4);
    for (i, child) in board.current().iter().enumerate() {
        child.queue.store(i * 10, Ordering::Relaxed);
    }
    let balancer = Balancer::builder()
        .strategy(Strategy::LeastLoaded)
        .build_with(board.supervisor())
        .unwrap();
    let mut hits = [0usize; 4];
    for _ in 0..40_000 {
        hits[balancer.get().unwrap().id] += 1;
    }
    // Two random choices: worker 0 wins 7/16 of the time, worker 3 only 1/16.
    assert!(
        hits[0] > hits[1] && hits[1] > hits[2] && hits[2] > hits[3],
        "{hits:?}"
    );
    assert!(hits[3] < 4_000, "{hits:?}");
}

#[test]
fn strategies_skip_dead_workers() {
    for strategy in [
        Strategy::RoundRobin,
        Strategy::Random,
        Strategy::LeastLoaded,
    ] {
        let board = Switchboard::with(3);
        let balancer = Balancer::builder()
            .strategy(strategy)
            .min_alive_ratio(0.0)
            .build_with(board.supervisor())
            .unwrap();
        board.current()[1].kill();
        for _ in 0..200 {
            assert_ne!(balancer.get().unwrap().id, 1, "{strategy:?}");
        }
    }
}

#[test]
fn get_for_is_stable_per_key_and_spreads_keys() {
    let board = Switchboard::with(4);
    // Ratio 0: a death does not reload the set, which stays stable for the check below.
    let balancer = Balancer::builder()
        .min_alive_ratio(0.0)
        .build_with(board.supervisor())
        .unwrap();
    let mut owners = HashMap::new();
    for key in 0..1_000u32 {
        owners.insert(key, balancer.get_for(&key).unwrap().id);
    }
    thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for key in 0..1_000u32 {
                    assert_eq!(balancer.get_for(&key).unwrap().id, owners[&key]);
                }
            });
        }
    });
    let mut per_worker = [0; 4];
    for id in owners.values() {
        per_worker[*id] += 1;
    }
    assert!(per_worker.iter().all(|&n| n > 150), "{per_worker:?}");
    // A dead owner hands its keys to the next live worker, the same one each time.
    let victim = owners[&7];
    board.current()[victim].kill();
    let heir = balancer.get_for(&7).unwrap().id;
    assert_ne!(heir, victim);
    assert_eq!(balancer.get_for(&7).unwrap().id, heir);
}
