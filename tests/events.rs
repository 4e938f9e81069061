//! Lifecycle events: started, died, restarted, discarded, connected, disconnected, checkout
//! timed out, overload; and a panicking callback is contained.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, numbered_probes, probe_pool, Switchboard};
use cylinder::{Balancer, Error, Event, Lease, Pool};

fn recorder() -> (
    Arc<Mutex<Vec<Event>>>,
    impl Fn(&Event) + Send + Sync + 'static,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    (seen, move |event: &Event| {
        log.lock().unwrap().push(event.clone())
    })
}

fn count(seen: &Mutex<Vec<Event>>, wanted: &Event) -> usize {
    seen.lock().unwrap().iter().filter(|e| *e == wanted).count()
}

#[test]
fn pool_events() {
    let (seen, record) = recorder();
    let (start, _) = numbered_probes();
    let pool = probe_pool().size(2).on_event(record).build(start).unwrap();
    assert_eq!(count(&seen, &Event::WorkerStarted), 2);
    Lease::discard(pool.checkout().unwrap());
    let lease = pool.checkout().unwrap();
    lease.kill();
    drop(lease);
    assert!(eventually(Duration::from_secs(5), || count(
        &seen,
        &Event::WorkerRestarted
    ) == 2));
    assert_eq!(count(&seen, &Event::WorkerDiscarded), 1);
    assert_eq!(count(&seen, &Event::WorkerBroken), 1);
    let _a = pool.checkout().unwrap();
    let _b = pool.checkout().unwrap();
    assert!(matches!(pool.try_checkout(), Err(Error::Overload)));
    assert!(pool.checkout_timeout(Duration::from_millis(5)).is_err());
    assert_eq!(count(&seen, &Event::Overload), 1);
    assert_eq!(
        count(&seen, &Event::CheckoutTimedOut(Duration::from_millis(5))),
        1
    );
}

#[test]
fn balancer_events() {
    let (seen, record) = recorder();
    let board = Switchboard::with(2);
    let balancer = Balancer::builder()
        .reconnect_delay(Duration::from_millis(10))
        .max_queue_len(0)
        .on_event(record)
        .build_with(board.supervisor())
        .unwrap();
    for child in board.current() {
        child.queue.store(1, std::sync::atomic::Ordering::Relaxed);
    }
    assert!(matches!(balancer.get(), Err(Error::Overload)));
    for child in board.current() {
        child.kill();
    }
    board.stop();
    let _ = balancer.get();
    assert!(eventually(Duration::from_secs(5), || count(
        &seen,
        &Event::Disconnected
    ) == 1));
    assert_eq!(count(&seen, &Event::WorkerDied), 2);
    assert_eq!(count(&seen, &Event::Overload), 1);
}

#[test]
fn a_panicking_callback_is_contained() {
    let (start, _) = numbered_probes();
    let pool = Pool::builder()
        .size(1)
        .on_event(|_| panic!("metrics backend down"))
        .build(start)
        .unwrap();
    Lease::discard(pool.checkout().unwrap());
    assert!(eventually(Duration::from_secs(5), || pool.stats().free == 1));
}
