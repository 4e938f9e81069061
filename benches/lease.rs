//! `lease`: checkout + drop with nobody waiting (also through `DerefMut`, and as an owned
//! lease). cylinder's `Pool` against r2d2, deadpool
//! (unmanaged, `try_get`), object-pool (`try_pull`) and the floor, a bare crossbeam
//! `ArrayQueue` pop + push; 1, 2 and 4 threads over 8 workers, per operation on each thread.
//! The balancer's lease mode (`Balancer::lease` + drop, `transaction`) is in the same group.

mod support;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use support::{
    array_queue, cylinder_balancer, cylinder_pool, deadpool_pool, floor_cycle, keep, object_pool,
    r2d2_pool, run_parallel, WORKERS,
};

fn lease(c: &mut Criterion) {
    let mut group = c.benchmark_group("lease");
    group
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    let pool = cylinder_pool(WORKERS);
    let r2d2 = r2d2_pool(WORKERS);
    let deadpool = deadpool_pool(WORKERS);
    let objects = object_pool(WORKERS);
    let floor = array_queue(WORKERS);
    let balancer = cylinder_balancer(WORKERS);
    for threads in [1, 2, 4] {
        group.bench_with_input(
            BenchmarkId::new("cylinder-checkout", threads),
            &threads,
            |b, &t| {
                b.iter_custom(|iters| run_parallel(t, iters, &|| keep(pool.checkout().unwrap().0)))
            },
        );
        group.bench_with_input(
            BenchmarkId::new("cylinder-checkout-deref_mut", threads),
            &threads,
            |b, &t| {
                b.iter_custom(|iters| {
                    run_parallel(t, iters, &|| {
                        let mut lease = pool.checkout().unwrap();
                        lease.0 += 1;
                        keep(lease.0)
                    })
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("cylinder-checkout_owned", threads),
            &threads,
            |b, &t| {
                b.iter_custom(|iters| {
                    run_parallel(t, iters, &|| keep(pool.checkout_owned().unwrap().0))
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("cylinder-try_checkout", threads),
            &threads,
            |b, &t| {
                b.iter_custom(|iters| {
                    run_parallel(t, iters, &|| keep(pool.try_checkout().map(|l| l.0)))
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("balancer-lease", threads),
            &threads,
            |b, &t| {
                b.iter_custom(|iters| run_parallel(t, iters, &|| keep(balancer.lease().unwrap().0)))
            },
        );
        group.bench_with_input(
            BenchmarkId::new("balancer-transaction", threads),
            &threads,
            |b, &t| {
                b.iter_custom(|iters| {
                    run_parallel(t, iters, &|| keep(balancer.transaction(|w| w.0).unwrap()))
                })
            },
        );
        group.bench_with_input(BenchmarkId::new("r2d2", threads), &threads, |b, &t| {
            b.iter_custom(|iters| run_parallel(t, iters, &|| keep(*r2d2.get().unwrap())))
        });
        group.bench_with_input(
            BenchmarkId::new("deadpool-try_get", threads),
            &threads,
            |b, &t| {
                b.iter_custom(|iters| {
                    run_parallel(t, iters, &|| keep(deadpool.try_get().map(|o| *o)))
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("object-pool-try_pull", threads),
            &threads,
            |b, &t| {
                b.iter_custom(|iters| {
                    run_parallel(t, iters, &|| keep(objects.try_pull().map(|o| *o)))
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("arrayqueue-floor", threads),
            &threads,
            |b, &t| b.iter_custom(|iters| run_parallel(t, iters, &|| floor_cycle(&floor))),
        );
    }
    group.finish();
}

criterion_group!(benches, lease);
criterion_main!(benches);
