//! Twelfth breaking pass: `Pool::map`, `Lease::take`, `try_checkout`'s wait for a first
//! start, the actor and the balancer's lease mode, and every fault family again. Each test
//! is one bug, named after its scenario; each fails on the code it was written against. The
//! `metrics` feature's two findings (the `idle` gauge of a pool closed while `map` held its
//! workers, and the `starting` gauge of a pool closed during a `try_checkout`'s own failing
//! start) are the last two tests of `tests/metrics.rs`.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::within;
use cylinder::{Error, Pool};

/// A pool of one built with `build_unchecked` whose first connect is slow (300 ms), with a
/// check before every lease (`check_after_idle(0)`). A client's `try_checkout` comes at
/// once: nothing is open and the first start is on its way, so it waits for it (as the
/// rustdoc says). The worker arrives and the client's check runs on it; meanwhile the
/// credentials rotate and the application calls `evict_all`, which returns. The check
/// passes, and the worker, started before the eviction, is rightly retired; its replacement
/// is claimed at once (and connects fast).
///
/// Expected: `Pool::try_checkout`'s rustdoc: "Right after `build_unchecked`, while no
/// worker is open yet and starts are on their way, it waits for the first ...: no worker is
/// busy, so `Error::Overload` would be untrue", and `Error::Overload` is "when every worker
/// is leased". Nothing is leased here and a start is on its way: the client gets the
/// replacement (or an error that says what happened), never `Overload` (as the seventh
/// pass's `a_try_checkout_whose_own_start_straddles_evict_all_is_not_told_overload` fixed
/// for a start of its own, and the eighth pass's
/// `a_checkout_in_its_check_during_evict_all_is_not_handed_the_evicted_worker` for a
/// blocking checkout).
///
/// Happened: `Shared::try_wait_for_a_start` (src/pool/checkout.rs) takes one worker from the
/// line; when `admit` retires it (evicted after its check) it does not look again and, with
/// no start failure on record, answers `Error::Overload` while nothing is leased and the
/// replacement is starting.
#[test]
fn try_checkout_waiting_for_the_first_start_whose_worker_is_evicted_in_its_check_is_not_told_overload(
) {
    let (checking_tx, checking_rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let checking_tx = Mutex::new(checking_tx);
    let go_rx = Mutex::new(go_rx);
    let checks = AtomicUsize::new(0);
    let starts = Arc::new(AtomicUsize::new(0));
    let s = starts.clone();
    let pool = Pool::builder()
        .size(1)
        .check_after_idle(Duration::ZERO)
        .checkout_timeout(Duration::from_secs(5))
        .test_on_checkout(move |_: &mut usize| {
            // Check 1: the first start's own look; check 2: the client's checkout.
            if checks.fetch_add(1, Ordering::SeqCst) == 1 {
                let _ = checking_tx.lock().unwrap().send(());
                let _ = go_rx.lock().unwrap().recv_timeout(Duration::from_secs(5));
            }
            true
        })
        .build_unchecked(move || {
            let n = s.fetch_add(1, Ordering::SeqCst);
            if n == 0 {
                thread::sleep(Duration::from_millis(300));
            }
            Ok(n)
        })
        .unwrap();
    let client = pool.clone();
    let tried = thread::spawn(move || {
        let got = client.try_checkout().map(|lease| *lease);
        (got, client.stats())
    });
    checking_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the try_checkout's check never ran");
    pool.evict_all();
    go_tx.send(()).unwrap();
    let (got, then) = within(Duration::from_secs(10), move || tried.join().unwrap())
        .expect("try_checkout did not return within 10 s");
    assert!(
        !matches!(got, Err(Error::Overload)),
        "try_checkout answered Overload (\"every worker is leased\") with {} leased and {} \
         starting ({} starts so far)",
        then.leased,
        then.starting,
        starts.load(Ordering::SeqCst)
    );
}
