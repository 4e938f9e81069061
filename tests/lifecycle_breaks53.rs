//! The fifty-third pass: the metrics recorder as user code (feature `metrics`), after pass 52
//! moved the histograms out of the places where a thread holds pool state. Each test's doc
//! comment says what it found.

mod common;

#[cfg(feature = "metrics")]
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
#[cfg(feature = "metrics")]
use std::sync::Arc;
#[cfg(feature = "metrics")]
use std::time::{Duration, Instant};

/// Blocks (up to 5 s) until `release` is set, counting itself in `blocked`.
#[cfg(feature = "metrics")]
fn block_until(release: &AtomicBool, blocked: &AtomicUsize) {
    blocked.fetch_add(1, Ordering::SeqCst);
    let began = Instant::now();
    while !release.load(Ordering::SeqCst) && began.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The label `name` of `key`, if it has one.
#[cfg(feature = "metrics")]
fn label(key: &metrics::Key, name: &str) -> Option<String> {
    key.labels()
        .find(|l| l.key() == name)
        .map(|l| l.value().to_string())
}

/// A gauge that keeps its last value; once armed, its first `set` on a thread whose name
/// starts with `on_thread` blocks (up to 5 s) before it takes its value.
#[cfg(feature = "metrics")]
struct StallingGauge {
    value: AtomicU64,
    on_thread: &'static str,
    armed: AtomicBool,
    release: AtomicBool,
    blocked: AtomicUsize,
}

#[cfg(feature = "metrics")]
impl StallingGauge {
    fn new(on_thread: &'static str) -> Arc<Self> {
        Arc::new(StallingGauge {
            value: AtomicU64::new(f64::NAN.to_bits()),
            on_thread,
            armed: AtomicBool::new(false),
            release: AtomicBool::new(false),
            blocked: AtomicUsize::new(0),
        })
    }

    fn get(&self) -> f64 {
        f64::from_bits(self.value.load(Ordering::SeqCst))
    }
}

#[cfg(feature = "metrics")]
impl metrics::GaugeFn for StallingGauge {
    fn increment(&self, _: f64) {}
    fn decrement(&self, _: f64) {}
    fn set(&self, value: f64) {
        let here = std::thread::current()
            .name()
            .is_some_and(|name| name.starts_with(self.on_thread));
        if here && self.armed.swap(false, Ordering::SeqCst) {
            block_until(&self.release, &self.blocked);
        }
        self.value.store(value.to_bits(), Ordering::SeqCst);
    }
}

/// A recorder whose `cylinder_pool_workers{state = <state>}` gauge is `gauge`; the rest noop.
#[cfg(feature = "metrics")]
struct OneGauge {
    state: &'static str,
    gauge: Arc<StallingGauge>,
}

#[cfg(feature = "metrics")]
impl metrics::Recorder for OneGauge {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::noop()
    }
    fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        if key.name() == "cylinder_pool_workers"
            && label(key, "state").as_deref() == Some(self.state)
        {
            metrics::Gauge::from_arc(self.gauge.clone())
        } else {
            metrics::Gauge::noop()
        }
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

/// Found (feature `metrics`). The reaper samples the gauges at the end of each round
/// (`Shared::upkeep`, src/pool/upkeep.rs:69: `self.metrics.sample(&self.stats())`): it reads
/// `stats()`, then sets each gauge through the recorder (user code). `close` samples them once
/// more (`Shared::close`, src/pool/shared.rs:205) and joins the reaper for at most 100 ms. A
/// reaper round that read `stats()` before the close and sets its gauges after it (here its
/// recorder is slow on the `idle` gauge: a stalled exporter) overwrites the closed pool's
/// sample with the open pool's: `cylinder_pool_workers{state=idle}` stays at 2 for good, with
/// the pool closed and nothing idle (GUARANTEES: "The gauges of a closed pool fall to what is
/// left"; the closed pool has no reaper to correct it).
#[cfg(feature = "metrics")]
#[test]
fn a_reaper_sample_stalled_across_close_does_not_leave_the_closed_pools_idle_gauge_stale() {
    let gauge = StallingGauge::new("cylinder-reaper");
    let recorder = OneGauge {
        state: "idle",
        gauge: gauge.clone(),
    };
    let pool = metrics::with_local_recorder(&recorder, || {
        cylinder::Pool::builder()
            .size(2)
            .name("b53-reaper-idle")
            .build(|| Ok(0u32))
            .unwrap()
    });
    gauge.armed.store(true, Ordering::SeqCst);
    // The reaper samples at least every second.
    assert!(
        common::eventually(Duration::from_secs(5), || gauge
            .blocked
            .load(Ordering::SeqCst)
            > 0),
        "the reaper never sampled the idle gauge"
    );
    pool.close();
    assert_eq!(pool.stats().free, 0);
    gauge.release.store(true, Ordering::SeqCst);
    // Past a sample period: whatever samples a closed pool has sampled.
    std::thread::sleep(Duration::from_millis(1200));
    let idle = gauge.get();
    assert_eq!(
        idle,
        0.0,
        "the closed pool has {} free workers, but its idle gauge reads {idle}",
        pool.stats().free
    );
}

/// Found (feature `metrics`), the same root among the closed pool's own samples: once closed,
/// whatever moves the gauges samples them (`Shared::sample_if_closed`, src/pool/shared.rs:240),
/// each on its own thread, `stats()` then `set`, with nothing ordering them. Two leases out at
/// the close come back on two threads: the first reads `leased == 1` and its recorder is slow
/// on the `leased` gauge; the second reads `leased == 0` and sets it; the first then sets 1.
/// The closed pool has no lease out and nothing samples it again: its `leased` gauge reads 1
/// for good (`tests/metrics.rs`: "the leased gauge of a closed pool falls when its last lease
/// returns").
#[cfg(feature = "metrics")]
#[test]
fn two_last_leases_of_a_closed_pool_returned_at_once_leave_its_leased_gauge_at_zero() {
    let gauge = StallingGauge::new("b53-first-return");
    let recorder = OneGauge {
        state: "leased",
        gauge: gauge.clone(),
    };
    let pool = metrics::with_local_recorder(&recorder, || {
        cylinder::Pool::builder()
            .size(2)
            .name("b53-closed-leased")
            .build(|| Ok(0u32))
            .unwrap()
    });
    let first = pool.checkout_owned().unwrap();
    let second = pool.checkout_owned().unwrap();
    pool.close();
    gauge.armed.store(true, Ordering::SeqCst);
    let returning = std::thread::Builder::new()
        .name("b53-first-return".into())
        .spawn(move || drop(first))
        .unwrap();
    assert!(
        common::eventually(Duration::from_secs(5), || gauge
            .blocked
            .load(Ordering::SeqCst)
            > 0),
        "the first return never sampled the leased gauge"
    );
    drop(second);
    assert_eq!(pool.stats().leased, 0);
    gauge.release.store(true, Ordering::SeqCst);
    returning.join().unwrap();
    let leased = gauge.get();
    assert_eq!(
        leased,
        0.0,
        "the closed pool has {} leases out, but its leased gauge reads {leased}",
        pool.stats().leased
    );
}

/// Found (feature `metrics`). Pass 52 made a served checkout record its wait
/// (`cylinder_pool_checkout_wait_seconds`) with its worker counted as the thread's own
/// (`HeldHere::worker`, src/pool/checkout.rs:325-331), so a recorder that drains there does
/// not wait for it. A balancer's checkout that waits in pool A's line and is served by pool B
/// instead (`Shared::wait_for` with `Elsewhere`: the balancer's `look` took B's worker,
/// src/balancer/pools.rs `wait_on`) records A's wait with B's worker in the crate's hand, not
/// yet the caller's and not counted as this thread's: a recorder that drains B there waits its
/// whole limit (800 ms) for a worker only its own thread can give back, and answers `Timeout`.
#[cfg(feature = "metrics")]
#[test]
fn drain_from_the_recorder_on_a_balancer_wait_served_by_another_pool_does_not_wait_for_its_worker()
{
    use common::{drain_once, Drained, Slot};
    use cylinder::{Balancer, Pool};

    struct Drains {
        slot: Slot<u32>,
        outcome: Drained,
    }
    impl metrics::HistogramFn for Drains {
        fn record(&self, _: f64) {
            drain_once(&self.slot, &self.outcome, Duration::from_millis(800));
        }
    }
    /// Each pool's wait histogram drains the pool put in its own slot.
    struct OnWait(Vec<(String, Arc<Drains>)>);
    impl metrics::Recorder for OnWait {
        fn describe_counter(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn describe_gauge(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn describe_histogram(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn register_counter(
            &self,
            _: &metrics::Key,
            _: &metrics::Metadata<'_>,
        ) -> metrics::Counter {
            metrics::Counter::noop()
        }
        fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
            metrics::Gauge::noop()
        }
        fn register_histogram(
            &self,
            key: &metrics::Key,
            _: &metrics::Metadata<'_>,
        ) -> metrics::Histogram {
            let pool = label(key, "pool");
            match self.0.iter().find(|(name, _)| Some(name) == pool.as_ref()) {
                Some((_, drains)) if key.name() == "cylinder_pool_checkout_wait_seconds" => {
                    metrics::Histogram::from_arc(drains.clone())
                }
                _ => metrics::Histogram::noop(),
            }
        }
    }
    let names = ["b53-elsewhere-0", "b53-elsewhere-1"];
    let drains: Vec<Arc<Drains>> = names
        .iter()
        .map(|_| {
            Arc::new(Drains {
                slot: Arc::default(),
                outcome: Arc::default(),
            })
        })
        .collect();
    let recorder = OnWait(
        names
            .iter()
            .zip(&drains)
            .map(|(name, d)| (name.to_string(), d.clone()))
            .collect(),
    );
    let pools: Vec<Pool<u32>> = metrics::with_local_recorder(&recorder, || {
        names
            .iter()
            .map(|name| {
                Pool::builder()
                    .size(1)
                    .name(*name)
                    .build(|| Ok(0u32))
                    .unwrap()
            })
            .collect()
    });
    let mut held: Vec<_> = pools
        .iter()
        .map(|p| Some(p.checkout_owned().unwrap()))
        .collect();
    let balancer = Balancer::over_pools(pools.clone()).unwrap();
    let client = std::thread::spawn(move || {
        balancer
            .checkout_timeout(Duration::from_secs(5))
            .map(|lease| *lease)
    });
    let mut line = None;
    assert!(
        common::eventually(Duration::from_secs(5), || {
            line = pools.iter().position(|p| p.stats().waiters == 1);
            line.is_some()
        }),
        "the balancer's checkout never waited in a line"
    );
    let (line, other) = (line.unwrap(), 1 - line.unwrap());
    // The line's wait histogram drains the other pool, whose worker the client takes.
    *drains[line].slot.lock().unwrap() = Some(pools[other].clone());
    drop(held[other].take());
    let served = client.join().unwrap();
    let drained = drains[line].outcome.lock().unwrap().take();
    drop(held);
    assert!(served.is_ok(), "the balancer's client got {served:?}");
    let (answer, took) = drained.expect("the recorder never drained");
    assert!(
        answer.is_ok() && took < Duration::from_millis(400),
        "drain of pool {other} from the recorder of pool {line}'s wait, pool {other}'s worker \
         in its thread's hand, answered {answer:?} after {took:?}"
    );
}
