//! Sixty-fourth breaking pass against the balancer's reload logic: each test names its
//! scenario and fails on the code it was written against. Bounded in time.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cylinder::{BoxError, Factory, Worker};

/// A child alive for its first `is_alive` only (the reload's look), dead at the first `get`
/// that looks at it: it dies on arrival. `usize::MAX` looks: healthy for good.
struct Child {
    looks_left: AtomicUsize,
}

impl Child {
    fn healthy() -> Child {
        Child {
            looks_left: AtomicUsize::new(usize::MAX),
        }
    }
    fn dies_on_arrival() -> Child {
        Child {
            looks_left: AtomicUsize::new(1),
        }
    }
}

impl Worker for Child {
    fn is_alive(&self) -> bool {
        if self.looks_left.load(Ordering::SeqCst) == usize::MAX {
            return true;
        }
        self.looks_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// A client calling `get` back to back for `for_how_long`; returns how many calls it made.
fn client_loop(balancer: &cylinder::Balancer<Child>, for_how_long: Duration) -> usize {
    let b = balancer.clone();
    common::within(Duration::from_secs(10), move || {
        let began = Instant::now();
        let mut gets = 0;
        while began.elapsed() < for_how_long {
            gets += 1;
            let _ = b.get();
            std::thread::sleep(Duration::from_micros(200));
        }
        gets
    })
    .expect("the client's loop ended")
}

/// The pool floors a tiny `reconnect_delay` at 10 ms for dead on arrival
/// (`lifecycle_breaks13`: "with 1 ns no worker is ever dead on arrival"), and the balancer's
/// reaper floors its retries at 10 ms (`lifecycle_breaks8`); the builder accepts
/// `reconnect_delay(1 ns)`. A closure supervisor lists a healthy child H and a child that
/// dies on arrival (a fresh one each call). A client calls `get` every ~200 µs for 500 ms.
/// Expected: the child dead on arrival is restarted at the 10 ms floor at most (about 50
/// supervisor calls in 500 ms; limit 150). Observed: `note_death` (src/balancer/set.rs)
/// compares the member's age with the unfloored `reconnect_delay`, so with 1 ns every death
/// is "in service": the reaper and every `get` reload at once, the supervisor asked at the
/// client's pace.
#[test]
fn with_a_one_nanosecond_reconnect_delay_a_child_dead_on_arrival_is_not_restarted_per_get() {
    let calls = Arc::new(AtomicUsize::new(0));
    let healthy = Arc::new(Child::healthy());
    let (c, h) = (calls.clone(), healthy.clone());
    let balancer = cylinder::Balancer::builder()
        .reconnect_delay(Duration::from_nanos(1))
        .build_with(move || -> Result<Vec<Arc<Child>>, BoxError> {
            c.fetch_add(1, Ordering::SeqCst);
            Ok(vec![h.clone(), Arc::new(Child::dies_on_arrival())])
        })
        .unwrap();
    let before = calls.load(Ordering::SeqCst);
    let gets = client_loop(&balancer, Duration::from_millis(500));
    let asked = calls.load(Ordering::SeqCst) - before;
    let _ = common::within(Duration::from_secs(5), move || drop(balancer));
    assert!(
        asked <= 150,
        "reconnect_delay 1 ns: the supervisor was asked {asked} times in 500 ms for {gets} \
         gets: a child dead on arrival restarted per get (the 10 ms floor allows ~50)"
    );
}

/// The same with a `Factory` of two whose every start after the first gives a child that
/// dies on arrival (a server that accepts the connection and drops it at once): its
/// restarts are counted by the factory. Expected: about one per 10 ms at most (limit 150
/// in 500 ms).
#[test]
fn with_a_one_nanosecond_reconnect_delay_a_factory_child_dead_on_arrival_is_not_restarted_per_get()
{
    let starts = Arc::new(AtomicUsize::new(0));
    let s = starts.clone();
    let factory = Arc::new(Factory::new(2, move || {
        Ok(if s.fetch_add(1, Ordering::SeqCst) == 0 {
            Child::healthy()
        } else {
            Child::dies_on_arrival()
        })
    }));
    let balancer = cylinder::Balancer::builder()
        .reconnect_delay(Duration::from_nanos(1))
        .build_with(factory.clone())
        .unwrap();
    let before = starts.load(Ordering::SeqCst);
    let gets = client_loop(&balancer, Duration::from_millis(500));
    let started = starts.load(Ordering::SeqCst) - before;
    let _ = common::within(Duration::from_secs(5), move || drop(balancer));
    assert!(
        started <= 150,
        "reconnect_delay 1 ns: {started} starts in 500 ms for {gets} gets ({} restarts): a \
         Factory child dead on arrival restarted per get (the 10 ms floor allows ~50)",
        factory.restarts()
    );
}
