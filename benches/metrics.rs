//! `metrics`: checkout + drop with the `metrics` feature compiled in and a recorder installed
//! (every lease timed into `cylinder_pool_lease_seconds`), 1, 2 and 4 threads over 8 workers.
//! Compare with `lease/cylinder-checkout` from a run without the feature:
//!
//!     cargo bench -p cylinder-benches --bench lease -- cylinder-checkout/
//!     cargo bench -p cylinder-benches --features metrics --bench metrics

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use metrics::{
    Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use support::{cylinder_pool, keep, run_parallel, WORKERS};

/// A histogram as a count and a sum, in atomics: about what an exporter does per value.
#[derive(Default)]
struct CountSum {
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl HistogramFn for CountSum {
    fn record(&self, value: f64) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add((value * 1e9) as u64, Ordering::Relaxed);
    }
}

/// A recorder whose every series is a fresh atomic: what the pool pays to record, not what a
/// particular exporter's storage costs.
struct Atomics;

impl Recorder for Atomics {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(Arc::new(AtomicU64::new(0)))
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(Arc::new(AtomicU64::new(0)))
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(Arc::new(CountSum::default()))
    }
}

fn with_metrics(c: &mut Criterion) {
    metrics::set_global_recorder(Atomics).expect("the only recorder");
    let mut group = c.benchmark_group("metrics");
    group
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    let pool = cylinder_pool(WORKERS);
    for threads in [1, 2, 4] {
        group.bench_with_input(
            BenchmarkId::new("cylinder-checkout", threads),
            &threads,
            |b, &t| {
                b.iter_custom(|iters| run_parallel(t, iters, &|| keep(pool.checkout().unwrap().0)))
            },
        );
    }
    group.finish();
}

criterion_group!(benches, with_metrics);
criterion_main!(benches);
