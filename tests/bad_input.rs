//! Bad input, table by table: every builder option at its edges, and supervisors that err,
//! panic, list duplicates, list dead workers, or block. Each gets the exact `Error` or
//! behaviour expected, and the pool or balancer is still usable afterwards. (Negative
//! durations cannot be expressed: every duration option is a `std::time::Duration`.)

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{eventually, Probe, Switchboard};
use cylinder::{Balancer, BoxError, Error, Pool, MAX_POOL_SIZE};

fn probes() -> impl Fn() -> Result<Probe, BoxError> + Send + Sync + 'static {
    let n = AtomicUsize::new(0);
    move || Ok(Probe::new(n.fetch_add(1, Ordering::Relaxed)))
}

/// `Ok(())` for a good build that then serves a checkout, else the option named by the error.
fn pool_outcome(build: impl FnOnce() -> Result<Pool<Probe>, Error>) -> Result<(), &'static str> {
    match build() {
        Ok(pool) => {
            pool.checkout()
                .expect("a pool that built serves a checkout");
            Ok(())
        }
        Err(Error::InvalidConfig { option, .. }) => Err(option),
        Err(other) => panic!("expected InvalidConfig or a pool, got {other}"),
    }
}

/// A named way to build a pool, and the outcome it should have.
type Case = (
    &'static str,
    Box<dyn FnOnce() -> Result<Pool<Probe>, Error>>,
    Result<(), &'static str>,
);

#[test]
fn pool_options_at_their_edges() {
    let cases: Vec<Case> = vec![
        (
            "size 0",
            Box::new(|| Pool::builder().size(0).build(probes())),
            Err("size"),
        ),
        (
            "size 1",
            Box::new(|| Pool::builder().size(1).build(probes())),
            Ok(()),
        ),
        (
            "size max, one kept open",
            Box::new(|| {
                Pool::builder()
                    .size(MAX_POOL_SIZE)
                    .min_idle(1)
                    .build(probes())
            }),
            Ok(()),
        ),
        (
            "size max with overflow",
            Box::new(|| {
                Pool::builder()
                    .size(MAX_POOL_SIZE)
                    .min_idle(1)
                    .max_overflow(1)
                    .build(probes())
            }),
            Err("max_overflow"),
        ),
        (
            "min_idle 0",
            Box::new(|| Pool::builder().size(2).min_idle(0).build(probes())),
            Ok(()),
        ),
        (
            "min_idle over size",
            Box::new(|| Pool::builder().size(2).min_idle(3).build(probes())),
            Err("min_idle"),
        ),
        (
            "max_lifetime 1ns",
            Box::new(|| {
                Pool::builder()
                    .size(1)
                    .max_lifetime(Duration::from_nanos(1))
                    .build(probes())
            }),
            Ok(()),
        ),
        (
            "idle_timeout max",
            Box::new(|| {
                Pool::builder()
                    .size(2)
                    .min_idle(1)
                    .idle_timeout(Duration::MAX)
                    .build(probes())
            }),
            Ok(()),
        ),
        (
            "warn_after 1ns",
            Box::new(|| {
                Pool::builder()
                    .size(1)
                    .warn_after(Duration::from_nanos(1))
                    .build(probes())
            }),
            Ok(()),
        ),
        (
            "size max + 1",
            Box::new(|| Pool::builder().size(MAX_POOL_SIZE + 1).build(probes())),
            Err("size"),
        ),
        (
            "size usize::MAX",
            Box::new(|| Pool::builder().size(usize::MAX).build(probes())),
            Err("size"),
        ),
        (
            "size unset",
            Box::new(|| Pool::builder().build(probes())),
            Err("size"),
        ),
        (
            "checkout_timeout 0",
            Box::new(|| {
                Pool::builder()
                    .size(1)
                    .checkout_timeout(Duration::ZERO)
                    .build(probes())
            }),
            Err("checkout_timeout"),
        ),
        (
            "checkout_timeout 1ns",
            Box::new(|| {
                Pool::builder()
                    .size(1)
                    .checkout_timeout(Duration::from_nanos(1))
                    .build(probes())
            }),
            Ok(()),
        ),
        (
            "checkout_timeout max",
            Box::new(|| {
                Pool::builder()
                    .size(1)
                    .checkout_timeout(Duration::MAX)
                    .build(probes())
            }),
            Ok(()),
        ),
        (
            "reconnect_delay 0",
            Box::new(|| {
                Pool::builder()
                    .size(1)
                    .reconnect_delay(Duration::ZERO)
                    .build(probes())
            }),
            Err("reconnect_delay"),
        ),
        (
            "reconnect_delay 1ns",
            Box::new(|| {
                Pool::builder()
                    .size(1)
                    .reconnect_delay(Duration::from_nanos(1))
                    .build(probes())
            }),
            Ok(()),
        ),
        (
            "reconnect_delay max",
            Box::new(|| {
                Pool::builder()
                    .size(1)
                    .reconnect_delay(Duration::MAX)
                    .build(probes())
            }),
            Ok(()),
        ),
        (
            "fifo_after 0",
            Box::new(|| {
                Pool::builder()
                    .size(1)
                    .fifo_after(Duration::ZERO)
                    .build(probes())
            }),
            Ok(()),
        ),
        (
            "fifo_after max",
            Box::new(|| {
                Pool::builder()
                    .size(1)
                    .fifo_after(Duration::MAX)
                    .build(probes())
            }),
            Ok(()),
        ),
        (
            "empty name",
            Box::new(|| Pool::builder().size(1).name("").build(probes())),
            Ok(()),
        ),
    ];
    for (case, build, expected) in cases {
        assert_eq!(pool_outcome(build), expected, "{case}");
    }
}

#[test]
fn balancer_options_at_their_edges() {
    let board = Switchboard::with(2);
    let ratios = [
        (0.0, true),
        (-0.0, true),
        (f64::MIN_POSITIVE, true),
        (0.5, true),
        (1.0, true),
        (1.0 + f64::EPSILON, false),
        (-f64::MIN_POSITIVE, false),
        (f64::NAN, false),
        (f64::INFINITY, false),
        (f64::NEG_INFINITY, false),
        (f64::MAX, false),
    ];
    for (ratio, good) in ratios {
        match Balancer::builder()
            .min_alive_ratio(ratio)
            .build_with(board.supervisor())
        {
            Ok(balancer) => {
                assert!(good, "ratio {ratio} was accepted");
                assert!(balancer.get().is_ok());
            }
            Err(Error::InvalidConfig { option, reason }) => {
                assert!(!good, "ratio {ratio} was refused: {reason}");
                assert_eq!(option, "min_alive_ratio");
            }
            Err(other) => panic!("ratio {ratio}: {other}"),
        }
    }
    for (delay, good) in [
        (Duration::ZERO, false),
        (Duration::from_nanos(1), true),
        (Duration::MAX, true),
    ] {
        let result = Balancer::builder()
            .reconnect_delay(delay)
            .build_with(board.supervisor());
        assert_eq!(result.is_ok(), good, "reconnect_delay {delay:?}");
    }
    for limit in [0, 1, usize::MAX] {
        let balancer = Balancer::builder()
            .max_queue_len(limit)
            .build_with(board.supervisor())
            .unwrap();
        assert!(balancer.get().is_ok(), "max_queue_len {limit}");
    }
}

#[test]
fn a_supervisor_or_start_that_errs() {
    let err = Pool::builder()
        .size(2)
        .build(|| -> Result<Probe, BoxError> { Err("connection refused".into()) })
        .unwrap_err();
    assert!(
        matches!(&err, Error::Disconnected { cause, .. } if cause.to_string() == "connection refused"),
        "{err}"
    );
    assert!(std::error::Error::source(&err).is_some());
    // A balancer starts disconnected and keeps trying.
    let balancer = Balancer::builder()
        .build_with(|| -> Result<Vec<Arc<Probe>>, BoxError> { Err("connection refused".into()) })
        .unwrap();
    assert!(matches!(balancer.get(), Err(Error::Disconnected { .. })));
    assert!(matches!(
        balancer.connect(),
        Err(Error::Disconnected { .. })
    ));
}

#[test]
fn a_start_that_panics() {
    let err = Pool::builder()
        .size(2)
        .build(|| -> Result<Probe, BoxError> { panic!("start bug") })
        .unwrap_err();
    assert_eq!(
        std::error::Error::source(&err).unwrap().to_string(),
        "panicked: start bug"
    );
    // Panicking later, on a restart, is contained: the pool keeps serving what it has.
    let fail = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let (f, c) = (fail.clone(), calls.clone());
    let pool = Pool::builder()
        .size(2)
        .reconnect_delay(Duration::from_millis(10))
        .build(move || -> Result<Probe, BoxError> {
            let n = c.fetch_add(1, Ordering::SeqCst);
            if f.load(Ordering::SeqCst) {
                panic!("start bug on restart");
            }
            Ok(Probe::new(n))
        })
        .unwrap();
    fail.store(true, Ordering::SeqCst);
    cylinder::Lease::discard(pool.checkout().unwrap());
    assert!(eventually(Duration::from_secs(5), || calls
        .load(Ordering::SeqCst)
        >= 5));
    for _ in 0..10 {
        pool.checkout().unwrap();
    }
    fail.store(false, Ordering::SeqCst);
    assert!(eventually(Duration::from_secs(5), || pool.stats().size == 2));
    assert!(pool.checkout().is_ok());
}

#[test]
fn a_supervisor_that_lists_duplicates() {
    let one = Arc::new(Probe::new(0));
    let two = Arc::new(Probe::new(1));
    let _ = one;
    let board = vec![two.clone(), two.clone()];
    let balancer = Balancer::builder()
        .build_with(move || -> Result<_, BoxError> { Ok(board.clone()) })
        .unwrap();
    assert_eq!(balancer.len(), 1);
}

#[test]
fn a_supervisor_that_lists_dead_workers() {
    let dead = Arc::new(Probe::new(0));
    dead.kill();
    let alive = Arc::new(Probe::new(1));
    let _ = alive;
    // Only dead workers: nothing to hand out, which is "disconnected".
    let all_dead = vec![dead];
    let balancer = Balancer::builder()
        .build_with(move || -> Result<_, BoxError> { Ok(all_dead.clone()) })
        .unwrap();
    assert!(matches!(balancer.get(), Err(Error::Disconnected { .. })));
}

#[test]
fn a_start_that_blocks() {
    let slow = Arc::new(AtomicBool::new(false));
    let s2 = slow.clone();
    let n = AtomicUsize::new(0);
    let pool = Pool::builder()
        .size(2)
        .build(move || -> Result<_, BoxError> {
            if s2.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(400));
            }
            Ok(Probe::new(n.fetch_add(1, Ordering::SeqCst)))
        })
        .unwrap();
    slow.store(true, Ordering::SeqCst);
    // The discard starts a replacement, which blocks in the start closure...
    cylinder::Lease::discard(pool.checkout().unwrap());
    thread::sleep(Duration::from_millis(20));
    // ...while checkouts of the remaining worker and stats go on at full speed.
    let began = Instant::now();
    for _ in 0..1_000 {
        pool.checkout().unwrap();
        let _ = pool.stats();
        let _ = format!("{pool:?}");
    }
    assert!(
        began.elapsed() < Duration::from_millis(300),
        "checkouts waited on a start"
    );
    // Closing does not wait for the start either; its worker is dropped when it comes.
    let began = Instant::now();
    pool.close();
    assert!(began.elapsed() < Duration::from_millis(300));
    assert!(matches!(pool.checkout(), Err(Error::Closed)));
}
