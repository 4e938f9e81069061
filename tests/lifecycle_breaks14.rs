//! Fourteenth breaking pass: every option of the pool and balancer builders at its extremes
//! (0, 1 ns, the 10 ms boundary, `Duration::MAX`; sizes 1 and `MAX_POOL_SIZE`), the balancer's
//! strategies, the actor (stop and drop with calls in flight, `call_timeout` extremes, inline
//! handler panics, casts to a stopped actor, pools of actors that die), and the fault families
//! again. Each test is one bug, named after its scenario; each fails on the code it was
//! written against.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use cylinder::{Balancer, BoxError, Strategy, Worker};

/// A node whose `queue_len` panics when `broken`; otherwise its queue is empty.
struct Node {
    id: usize,
    broken: bool,
}

impl Worker for Node {
    fn queue_len(&self) -> Option<usize> {
        if self.broken {
            panic!("queue_len panics on purpose");
        }
        Some(0)
    }
}

/// A balancer with `Strategy::LeastLoaded` (and no `max_queue_len`) over three nodes, the
/// first of which panics in `queue_len`; 300 `get`s.
///
/// Expected: GUARANTEES.md, "a worker whose `is_alive` or `queue_len` panics leaves
/// rotation" (and the strategy's own comment in `Balancer::get`: "A queue length that panics
/// is never the shorter (the scan marks it dead)"), so no `get` hands out node 0.
///
/// What happened: the strategy ranks a panicking `queue_len` as `usize::MAX`, but when both
/// random picks fall on node 0 (one time in nine) it starts the scan there, and the scan
/// looks at `queue_len` only when `max_queue_len` is set: node 0 is never marked dead and is
/// handed out (about 33 of 300 gets), its `queue_len` panicking again at every pick.
#[test]
fn least_loaded_never_hands_out_a_worker_whose_queue_len_panics() {
    common::quiet_panics();
    let nodes: Vec<Arc<Node>> = (0..3)
        .map(|id| {
            Arc::new(Node {
                id,
                broken: id == 0,
            })
        })
        .collect();
    let listed = nodes.clone();
    let balancer = Balancer::builder()
        .strategy(Strategy::LeastLoaded)
        .build_with(move || -> Result<_, BoxError> { Ok(listed.clone()) })
        .unwrap();
    let mut handed_out = 0;
    for _ in 0..300 {
        let got = catch_unwind(AssertUnwindSafe(|| balancer.get().map(|node| node.id)));
        match got {
            Ok(Ok(0)) => handed_out += 1,
            Ok(Ok(_)) => {}
            other => panic!("get failed: {other:?}"),
        }
    }
    assert_eq!(
        handed_out, 0,
        "the node whose queue_len panics was handed out {handed_out} times in 300 gets"
    );
}
