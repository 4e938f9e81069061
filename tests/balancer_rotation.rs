//! Exact rotation: whatever `get()` skips (a worker over `max_queue_len`, a dead worker kept in
//! the set below `min_alive_ratio`, a leased worker), the others share the calls evenly, as
//! revolver's `queue_limit` tests show (the skipped one's neighbour gets no double share).

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::thread;

use common::Switchboard;
use cylinder::{Balancer, Error};

/// The ids `get()` returns, `n` times on this thread.
fn ids(balancer: &Balancer<common::Probe>, n: usize) -> Vec<usize> {
    (0..n).map(|_| balancer.get().unwrap().id).collect()
}

/// Asserts that `seen` cycles through `expected` (in some rotation of that order) exactly.
fn assert_cycles(seen: &[usize], expected: &[usize]) {
    let start = expected
        .iter()
        .position(|&id| id == seen[0])
        .unwrap_or_else(|| panic!("{} not among {expected:?}: {seen:?}", seen[0]));
    for (i, &id) in seen.iter().enumerate() {
        assert_eq!(
            id,
            expected[(start + i) % expected.len()],
            "call {i} of {seen:?}, expected a cycle of {expected:?}"
        );
    }
}

#[test]
fn a_worker_over_the_queue_limit_is_skipped_and_the_others_alternate() {
    // revolver's queue_limit cases: each position of the overloaded worker in turn.
    for over in 0..3 {
        let board = Switchboard::with(3);
        let balancer = Balancer::builder()
            .max_queue_len(10)
            .build_with(board.supervisor())
            .unwrap();
        board.current()[over].queue.store(11, Ordering::Relaxed);
        let others: Vec<usize> = (0..3).filter(|&id| id != over).collect();
        let seen = ids(&balancer, 30);
        assert_cycles(&seen, &others);
        // Back under the limit: all three rotate again, each once per cycle.
        board.current()[over].queue.store(0, Ordering::Relaxed);
        let seen = ids(&balancer, 30);
        assert_cycles(&seen, &[0, 1, 2]);
    }
}

#[test]
fn two_of_five_over_the_limit_the_other_three_cycle() {
    let board = Switchboard::with(5);
    let balancer = Balancer::builder()
        .max_queue_len(1)
        .build_with(board.supervisor())
        .unwrap();
    board.current()[1].queue.store(5, Ordering::Relaxed);
    board.current()[2].queue.store(5, Ordering::Relaxed);
    assert_cycles(&ids(&balancer, 60), &[0, 3, 4]);
}

#[test]
fn a_dead_worker_kept_in_the_set_gives_no_neighbour_double_traffic() {
    for dead in 0..3 {
        let board = Switchboard::with(3);
        let balancer = Balancer::builder()
            .min_alive_ratio(0.5)
            .build_with(board.supervisor())
            .unwrap();
        board.current()[dead].kill();
        let others: Vec<usize> = (0..3).filter(|&id| id != dead).collect();
        assert_cycles(&ids(&balancer, 30), &others);
        assert_eq!(balancer.len(), 3, "the dead worker stays in the set");
        assert_eq!(
            board.calls(),
            1,
            "2 of 3 alive is above the ratio: no reload"
        );
    }
}

#[test]
fn a_leased_worker_is_skipped_and_the_others_alternate() {
    let board = Switchboard::with(3);
    let balancer = Balancer::builder().build_with(board.supervisor()).unwrap();
    let lease = balancer.lease().unwrap();
    let others: Vec<usize> = (0..3).filter(|&id| id != lease.id).collect();
    assert_cycles(&ids(&balancer, 30), &others);
    drop(lease);
    assert_cycles(&ids(&balancer, 30), &[0, 1, 2]);
}

#[test]
fn each_thread_shares_its_calls_evenly_whatever_is_skipped() {
    let board = Switchboard::with(5);
    let balancer = Balancer::builder()
        .max_queue_len(0)
        .build_with(board.supervisor())
        .unwrap();
    board.current()[3].queue.store(1, Ordering::Relaxed);
    let per_thread: Vec<HashMap<usize, usize>> = thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    let mut counts = HashMap::new();
                    for _ in 0..4_000 {
                        *counts.entry(balancer.get().unwrap().id).or_insert(0) += 1;
                    }
                    counts
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for counts in per_thread {
        assert_eq!(counts.len(), 4, "{counts:?}");
        assert!(!counts.contains_key(&3));
        // 4000 calls over 4 workers: exactly 1000 each (a thread's own rotation is exact).
        assert!(counts.values().all(|&n| n == 1_000), "{counts:?}");
    }
}

#[test]
fn all_over_the_limit_is_overload_and_rotation_resumes_after() {
    let board = Switchboard::with(3);
    let balancer = Balancer::builder()
        .max_queue_len(0)
        .build_with(board.supervisor())
        .unwrap();
    for child in board.current() {
        child.queue.store(1, Ordering::Relaxed);
    }
    assert!(matches!(balancer.get(), Err(Error::Overload)));
    board.current()[0].queue.store(0, Ordering::Relaxed);
    assert_eq!(ids(&balancer, 5), vec![0; 5]);
    for child in board.current() {
        child.queue.store(0, Ordering::Relaxed);
    }
    assert_cycles(&ids(&balancer, 9), &[0, 1, 2]);
}
