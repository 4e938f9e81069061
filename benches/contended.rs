//! `contended`: 8 threads over 2 workers, each lease held for a short spin. cylinder's
//! blocking `checkout()` against r2d2's `get()` (both block). Times are per checkout on each
//! thread; `throughput.rs` (an example of this member) also reports the worst single wait.

mod support;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use support::{cylinder_pool, keep, r2d2_pool, run_parallel, short_spin};

const THREADS: usize = 8;
const SHARED_WORKERS: usize = 2;

fn contended(c: &mut Criterion) {
    let mut group = c.benchmark_group("contended");
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));
    let pool = cylinder_pool(SHARED_WORKERS);
    let r2d2 = r2d2_pool(SHARED_WORKERS);
    group.bench_function("cylinder-checkout/8x2", |b| {
        b.iter_custom(|iters| {
            run_parallel(THREADS, iters, &|| {
                let lease = pool.checkout().unwrap();
                short_spin();
                keep(lease.0);
            })
        })
    });
    group.bench_function("r2d2-get/8x2", |b| {
        b.iter_custom(|iters| {
            run_parallel(THREADS, iters, &|| {
                let conn = r2d2.get().unwrap();
                short_spin();
                keep(*conn);
            })
        })
    });
    group.finish();
}

criterion_group!(benches, contended);
criterion_main!(benches);
