//! `transaction`: a call to a worker thread leased from the pool, against the same call with
//! no pool: once where the idle actor's call runs on the caller's thread (the default), once
//! through its mailbox (`Echo<false>`, the hand-off between two threads). With the call on
//! the caller, the same call leased from the fastest peer pool (`object-pool`) and from the
//! bare floor (a lock-free queue of actors: pop, call, push) shows what any lease adds.

mod support;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use crossbeam::queue::ArrayQueue;
use cylinder::Actor;
use support::{echo_pool, keep, Echo};

fn transaction(c: &mut Criterion) {
    let mut group = c.benchmark_group("transaction");
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));
    let pool = echo_pool::<true>(8);
    let bare = Actor::spawn(Echo::<true>).expect("an echo thread starts");
    group.bench_function("cylinder-transaction", |b| {
        b.iter(|| keep(pool.transaction(|w| w.call(7)).unwrap().unwrap()))
    });
    group.bench_function("bare-call", |b| b.iter(|| keep(bare.call(7).unwrap())));
    let peer = object_pool::Pool::new(8, || Actor::spawn(Echo::<true>).expect("starts"));
    group.bench_function("object-pool-transaction", |b| {
        b.iter(|| keep(peer.try_pull().expect("8 free").call(7).unwrap()))
    });
    let floor = ArrayQueue::new(8);
    for _ in 0..8 {
        let _ = floor.push(Actor::spawn(Echo::<true>).expect("an echo thread starts"));
    }
    group.bench_function("floor-queue-transaction", |b| {
        b.iter(|| {
            let actor = floor.pop().expect("8 free");
            keep(actor.call(7).unwrap());
            let _ = floor.push(actor);
        })
    });
    drop((pool, bare, peer, floor));

    let pool = echo_pool::<false>(8);
    let bare = Actor::spawn(Echo::<false>).expect("an echo thread starts");
    group.bench_function("cylinder-transaction-handoff", |b| {
        b.iter(|| keep(pool.transaction(|w| w.call(7)).unwrap().unwrap()))
    });
    group.bench_function("bare-mailbox-call", |b| {
        b.iter(|| keep(bare.call(7).unwrap()))
    });
    group.finish();
}

criterion_group!(benches, transaction);
criterion_main!(benches);
