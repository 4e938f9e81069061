//! Fifteenth breaking pass: the checks one path makes and another skips (a strategy, a
//! worker that comes back by itself, the balancer of pools), and options read raw on one path
//! and floored on another. Each test is one bug, named after its scenario; each fails on the
//! code it was written against.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use cylinder::{Balancer, BoxError, Strategy, Worker};

/// A node that comes back by itself (as a pool does), whose `queue_len` panics when `broken`.
struct Returning {
    id: usize,
    broken: bool,
}

impl Worker for Returning {
    fn queue_len(&self) -> Option<usize> {
        if self.broken {
            panic!("queue_len panics on purpose");
        }
        Some(0)
    }

    fn comes_back(&self) -> bool {
        true
    }
}

/// A balancer with `Strategy::LeastLoaded` (no `max_queue_len`) over three workers that
/// [come back](Worker::comes_back) by themselves, the first of which panics in `queue_len`;
/// 300 `get`s.
///
/// Expected: GUARANTEES.md, "a worker whose `is_alive` or `queue_len` panics leaves
/// rotation" (the fourteenth pass fixed this for workers that do not come back), so no `get`
/// hands out worker 0.
///
/// What happened: when both random picks fall on worker 0 the strategy marks it dead and
/// starts the scan there; the scan passes over a dead worker only if it does not come back,
/// asks this one's `is_alive` (true), revives it and, with no `max_queue_len`, never asks
/// its `queue_len`: worker 0 is handed out (about one get in nine), flapping between
/// `WorkerDied` and `WorkerBack` on every such get.
#[test]
fn least_loaded_never_hands_out_a_worker_that_comes_back_whose_queue_len_panics() {
    common::quiet_panics();
    let workers: Vec<Arc<Returning>> = (0..3)
        .map(|id| {
            Arc::new(Returning {
                id,
                broken: id == 0,
            })
        })
        .collect();
    let listed = workers.clone();
    let balancer = Balancer::builder()
        .strategy(Strategy::LeastLoaded)
        .build_with(move || -> Result<_, BoxError> { Ok(listed.clone()) })
        .unwrap();
    let mut handed_out = 0;
    for _ in 0..300 {
        let got = catch_unwind(AssertUnwindSafe(|| balancer.get().map(|worker| worker.id)));
        match got {
            Ok(Ok(0)) => handed_out += 1,
            Ok(Ok(_)) => {}
            other => panic!("get failed: {other:?}"),
        }
    }
    assert_eq!(
        handed_out, 0,
        "the worker whose queue_len panics was handed out {handed_out} times in 300 gets"
    );
}
