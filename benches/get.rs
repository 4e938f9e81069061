//! `get`: handing out a balanced worker. cylinder's `Balancer::get()` against two floors (a
//! bare `ArcSwap` load; the same with a thread-local round-robin cursor), the textbook
//! version (ArcSwap load + one shared AtomicUsize + Arc clone) and r2d2's `get()` + drop, at
//! 1, 2 and 4 threads over 8 workers. Times are per operation on each thread.

mod support;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use support::{cylinder_balancer, keep, r2d2_pool, run_parallel, Textbook, WORKERS};

fn get(c: &mut Criterion) {
    let mut group = c.benchmark_group("get");
    group
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    let balancer = cylinder_balancer(WORKERS);
    let textbook = Textbook::new(WORKERS);
    let r2d2 = r2d2_pool(WORKERS);
    for threads in [1, 2, 4] {
        group.bench_with_input(BenchmarkId::new("cylinder", threads), &threads, |b, &t| {
            b.iter_custom(|iters| run_parallel(t, iters, &|| keep(balancer.get().unwrap().0)))
        });
        group.bench_with_input(
            BenchmarkId::new("arcswap-load-floor", threads),
            &threads,
            |b, &t| b.iter_custom(|iters| run_parallel(t, iters, &|| keep(textbook.load_first()))),
        );
        group.bench_with_input(
            BenchmarkId::new("arcswap-thread-cursor-floor", threads),
            &threads,
            |b, &t| {
                b.iter_custom(|iters| {
                    run_parallel(t, iters, &|| keep(textbook.load_per_thread_cursor()))
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("arcswap-textbook", threads),
            &threads,
            |b, &t| b.iter_custom(|iters| run_parallel(t, iters, &|| keep(textbook.get().0))),
        );
        group.bench_with_input(BenchmarkId::new("r2d2", threads), &threads, |b, &t| {
            b.iter_custom(|iters| run_parallel(t, iters, &|| keep(*r2d2.get().unwrap())))
        });
    }
    group.finish();
}

criterion_group!(benches, get);
criterion_main!(benches);
