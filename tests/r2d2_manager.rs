//! With the `r2d2` feature, any `r2d2::ManageConnection` is a cylinder `Manager`: `connect`
//! starts, `is_valid` checks before each lease, `has_broken` tests on return.
#![cfg(feature = "r2d2")]

use std::error::Error as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cylinder::{Error, Pool};

/// A connection that is a number; the test decides which are invalid or broken.
#[derive(Default)]
struct Numbers {
    next: AtomicUsize,
    invalid: AtomicUsize,
    refuse: AtomicBool,
}

#[derive(Debug)]
struct Refused;

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection refused")
    }
}

impl std::error::Error for Refused {}

/// The r2d2 manager: shares the numbers with the test.
struct Manager(Arc<Numbers>);

impl r2d2::ManageConnection for Manager {
    type Connection = usize;
    type Error = Refused;

    fn connect(&self) -> Result<usize, Refused> {
        if self.0.refuse.load(Ordering::SeqCst) {
            return Err(Refused);
        }
        Ok(self.0.next.fetch_add(1, Ordering::SeqCst))
    }

    fn is_valid(&self, conn: &mut usize) -> Result<(), Refused> {
        if *conn == self.0.invalid.load(Ordering::SeqCst) {
            return Err(Refused);
        }
        Ok(())
    }

    fn has_broken(&self, conn: &mut usize) -> bool {
        *conn >= 1_000
    }
}

#[test]
fn an_r2d2_manager_plugs_in_unchanged() {
    let numbers = Arc::new(Numbers {
        invalid: AtomicUsize::new(usize::MAX),
        ..Numbers::default()
    });
    let pool = Pool::builder()
        .size(2)
        .reconnect_delay(Duration::from_millis(10))
        // `is_valid` before every lease, not only after `check_after_idle`.
        .check_after_idle(Duration::ZERO)
        .build_with(Manager(numbers.clone()))
        .unwrap();
    assert_eq!(pool.stats().size, 2);
    // is_valid runs before each lease: an invalid connection is replaced.
    numbers.invalid.store(0, Ordering::SeqCst);
    for _ in 0..2 {
        // Both at once, so that connection 0 is met whatever the reuse order.
        let both: Vec<_> = (0..2).map(|_| pool.checkout().unwrap()).collect();
        assert!(both.iter().all(|conn| **conn != 0));
    }
    // The replacement comes once reconnect_delay has passed (a fresh connection failing its
    // check counts as a failed start).
    let began = std::time::Instant::now();
    while pool.stats().free < 2 {
        assert!(
            began.elapsed() < Duration::from_secs(10),
            "{:?}",
            pool.stats()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // has_broken runs on return: a broken connection is replaced.
    *pool.checkout().unwrap() = 1_000;
    let ids: Vec<usize> = (0..2)
        .map(|_| *pool.checkout_timeout(Duration::from_secs(10)).unwrap())
        .collect();
    assert!(ids.iter().all(|&id| id < 1_000), "{ids:?}");
    let stats = pool.stats();
    assert_eq!((stats.failed_checks, stats.discards), (1, 1), "{stats:?}");
}

#[test]
fn an_r2d2_managers_connect_error_is_the_cause() {
    let numbers = Arc::new(Numbers {
        refuse: AtomicBool::new(true),
        ..Numbers::default()
    });
    let err = Pool::builder()
        .size(2)
        .build_with(Manager(numbers.clone()))
        .unwrap_err();
    assert!(matches!(err, Error::Disconnected { .. }), "{err}");
    assert_eq!(err.source().unwrap().to_string(), "connection refused");
    // Unchecked, the pool comes up when the server does.
    let pool = Pool::builder()
        .size(2)
        .reconnect_delay(Duration::from_millis(10))
        .build_unchecked_with(Manager(numbers.clone()))
        .unwrap();
    numbers.refuse.store(false, Ordering::SeqCst);
    // Until the next try (reconnect_delay after the last failure) the fuse fails checkouts
    // fast, with the cause; then the pool comes up by itself.
    let began = std::time::Instant::now();
    loop {
        match pool.checkout_timeout(Duration::from_secs(10)) {
            Ok(_) => break,
            Err(err) => {
                assert!(matches!(err, Error::Disconnected { .. }), "{err}");
                assert!(began.elapsed() < Duration::from_secs(10), "{err}");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}
