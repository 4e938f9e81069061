//! `call`: the round trip to a worker thread, side by side with the floor (a bare crossbeam
//! `bounded(1)` ping-pong between two threads). Rows at one client, the same call through
//! `Pool::transaction`, and several clients at once: 8 clients over 8 actors (a pool;
//! aggregate throughput) and 16 clients over 4 actors (more clients than cores; a pool, where
//! 4 lease and 12 wait, and a balancer, where 4 callers share each actor).
//!
//! Each row runs twice: with the default `Echo`, whose call to an idle actor runs on the
//! caller's thread, and with `Echo<false>` (rows `…-handoff`), whose every call is a hand-off
//! through the mailbox, the round trip the ping-pong floor and Erlang's `gen_server:call` make.
//!
//! Criterion's time is per call on each client thread; its throughput (elements/s) is the
//! aggregate over all clients.

mod support;

use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use cylinder::Actor;
use support::{echo_balancer, echo_pool, keep, run_parallel, Echo, PingPong};

/// The rows of one kind of call; `suffix` is appended to each row's operation.
fn rows<const INLINE: bool>(group: &mut BenchmarkGroup<'_, WallTime>, suffix: &str) {
    group.throughput(Throughput::Elements(1));
    let actor = Actor::spawn(Echo::<INLINE>).expect("an echo thread starts");
    group.bench_function(format!("actor-call{suffix}/1"), |b| {
        b.iter(|| keep(actor.call(7).unwrap()))
    });
    drop(actor);

    let one = echo_pool::<INLINE>(1);
    group.bench_function(format!("pool-transaction-call{suffix}/1x1"), |b| {
        b.iter(|| keep(one.transaction(|w| w.call(7)).unwrap().unwrap()))
    });
    drop(one);

    group.throughput(Throughput::Elements(8));
    let eight = echo_pool::<INLINE>(8);
    group.bench_function(format!("pool-transaction-call{suffix}/8x8"), |b| {
        b.iter_custom(|iters| {
            run_parallel(8, iters, &|| {
                keep(eight.transaction(|w| w.call(7)).unwrap().unwrap())
            })
        })
    });
    drop(eight);

    group.throughput(Throughput::Elements(16));
    let four = echo_pool::<INLINE>(4);
    group.bench_function(format!("pool-transaction-call{suffix}/16x4"), |b| {
        b.iter_custom(|iters| {
            run_parallel(16, iters, &|| {
                keep(four.transaction(|w| w.call(7)).unwrap().unwrap())
            })
        })
    });
    drop(four);

    let shared = echo_balancer::<INLINE>(4);
    group.bench_function(format!("balancer-call{suffix}/16x4"), |b| {
        b.iter_custom(|iters| {
            run_parallel(16, iters, &|| keep(shared.get().unwrap().call(7).unwrap()))
        })
    });
}

fn call(c: &mut Criterion) {
    let mut group = c.benchmark_group("call");
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));

    group.throughput(Throughput::Elements(1));
    let floor = PingPong::new();
    group.bench_function("crossbeam-bounded1-pingpong/1", |b| {
        b.iter(|| keep(floor.call(7)))
    });
    drop(floor);

    rows::<true>(&mut group, "");
    rows::<false>(&mut group, "-handoff");
    group.finish();
}

criterion_group!(benches, call);
criterion_main!(benches);
