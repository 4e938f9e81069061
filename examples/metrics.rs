//! A pool's metrics, printed as a Prometheus-style snapshot.
//!
//!     cargo run --example metrics --features metrics
//!
//! Any exporter of the `metrics` facade works the same way: install its recorder first
//! (e.g. `metrics_exporter_prometheus::PrometheusBuilder::new().install()`), then build the
//! pools. This example installs a small recorder of its own that keeps the values and prints
//! them, so it needs nothing else.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use cylinder::{Lease, Pool};
use metrics::{
    Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};

/// A histogram kept as count and sum, as Prometheus summaries show it.
#[derive(Default)]
struct CountSum(Mutex<(u64, f64)>);

impl HistogramFn for CountSum {
    fn record(&self, value: f64) {
        let mut kept = self.0.lock().unwrap();
        kept.0 += 1;
        kept.1 += value;
    }
}

enum Series {
    Counter(Arc<AtomicU64>),
    Gauge(Arc<AtomicU64>),
    Histogram(Arc<CountSum>),
}

/// Every series by its name and labels, sorted for printing.
#[derive(Default, Clone)]
struct Snapshot(Arc<Mutex<BTreeMap<String, Series>>>);

impl Snapshot {
    fn print(&self) {
        for (name, series) in self.0.lock().unwrap().iter() {
            match series {
                Series::Counter(value) => println!("{name} {}", value.load(Ordering::Relaxed)),
                Series::Gauge(bits) => {
                    println!("{name} {}", f64::from_bits(bits.load(Ordering::Relaxed)));
                }
                Series::Histogram(kept) => {
                    let (count, sum) = *kept.0.lock().unwrap();
                    println!("{name} count={count} sum={sum:.6}");
                }
            }
        }
    }

    /// The series of `key`, made by `make` the first time.
    fn register<T>(
        &self,
        key: &Key,
        make: impl FnOnce() -> Series,
        get: impl FnOnce(&Series) -> T,
    ) -> T {
        let labels: Vec<String> = key
            .labels()
            .map(|label| format!("{}=\"{}\"", label.key(), label.value()))
            .collect();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        get(self.0.lock().unwrap().entry(name).or_insert_with(make))
    }
}

impl Recorder for Snapshot {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let make = || Series::Counter(Arc::default());
        self.register(key, make, |series| match series {
            Series::Counter(value) => Counter::from_arc(value.clone()),
            _ => Counter::noop(),
        })
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        let make = || Series::Gauge(Arc::default());
        self.register(key, make, |series| match series {
            Series::Gauge(value) => Gauge::from_arc(value.clone()),
            _ => Gauge::noop(),
        })
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        let make = || Series::Histogram(Arc::default());
        self.register(key, make, |series| match series {
            Series::Histogram(kept) => Histogram::from_arc(kept.clone()),
            _ => Histogram::noop(),
        })
    }
}

fn main() -> Result<(), cylinder::Error> {
    let snapshot = Snapshot::default();
    metrics::set_global_recorder(snapshot.clone()).expect("the only recorder");

    let pool = Pool::builder().size(4).name("db").build(|| {
        thread::sleep(Duration::from_millis(5)); // opening a connection
        Ok(Vec::<u8>::new())
    })?;
    // Eight clients share four connections: some wait.
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let pool = pool.clone();
            thread::spawn(move || {
                for _ in 0..20 {
                    let mut conn = pool.checkout().expect("a connection");
                    conn.push(1);
                    thread::sleep(Duration::from_millis(1)); // a query
                }
            })
        })
        .collect();
    for client in clients {
        client.join().expect("a client");
    }
    Lease::discard(pool.checkout()?); // one found broken by its client
    thread::sleep(Duration::from_millis(1100)); // the reaper samples the gauges every second
    snapshot.print();
    Ok(())
}
