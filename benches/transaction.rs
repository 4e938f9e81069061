//! `transaction`: a call to a worker thread leased from the pool, against the same call with
//! no pool: once where the idle actor's call runs on the caller's thread (the default), once
//! through its mailbox (`Echo<false>`, the hand-off between two threads).

mod support;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
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
    drop((pool, bare));

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
