//! `transaction`: a real call to a worker thread through its mailbox, leased from the pool,
//! against the same round trip with no pool.

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
    let pool = echo_pool(8);
    let bare = Actor::spawn(Echo).expect("an echo thread starts");
    group.bench_function("cylinder-transaction", |b| {
        b.iter(|| keep(pool.transaction(|w| w.call(7)).unwrap().unwrap()))
    });
    group.bench_function("bare-mailbox-call", |b| {
        b.iter(|| keep(bare.call(7).unwrap()))
    });
    group.finish();
}

criterion_group!(benches, transaction);
criterion_main!(benches);
