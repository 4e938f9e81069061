//! The forty-third pass: the held-here record and user code that calls back into (or
//! blocks) its own pool. Each test's doc comment says what it found.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::eventually;
use cylinder::{Error, Event, Pool};

/// What the `drain`s called from callbacks answered, and how long each took.
type Drained = Arc<Mutex<Vec<(Result<(), Error>, Duration)>>>;

/// The pool a callback drains.
type Slot<W> = Arc<Mutex<Option<Pool<W>>>>;

/// Found. A pool of one, grown with `resize(10)`: `fill_now` (src/pool/start.rs) claims
/// the nine new starts for itself and runs them on eight threads (the caller's and seven
/// scoped ones), each reporting `WorkerRestarted` on its own thread before it takes the
/// next claim. The `on_event` callback drains its pool (a shutdown decided in a callback).
/// No lease is out. Expected (GUARANTEES.md: "`drain` returns only when every lease is
/// back, every start under way has ended"; "a `drain` from any user code that holds
/// workers of the pool ... waits for every other lease and start, never for those"): each
/// drain returns `Ok` once the eight starts under way ended. Happened: the ninth claim sits
/// in `OwnClaims` (counted `starting`), which only these eight threads can take up or give
/// back, and all eight are in `drain`: every drain waits its whole 800 ms and answers
/// `Timeout`. `close` cancels only queued claims (`cancel_pending`), and the held-here
/// record has no unit for a claim owned by the caller's `fill_now`.
#[test]
fn drain_from_event_callbacks_of_a_resize_with_more_starts_than_threads_does_not_wait_for_its_own_claims(
) {
    let slot: Slot<u32> = Arc::new(Mutex::new(None));
    let outcome: Drained = Arc::new(Mutex::new(Vec::new()));
    let (handle, answers) = (slot.clone(), outcome.clone());
    let pool = Pool::builder()
        .size(1)
        .on_event(move |event| {
            if matches!(event, Event::WorkerRestarted) {
                let pool = handle.lock().unwrap().clone();
                if let Some(pool) = pool {
                    let began = Instant::now();
                    let drained = pool.drain(Duration::from_millis(800));
                    answers.lock().unwrap().push((drained, began.elapsed()));
                }
            }
        })
        .build(|| {
            // Slow enough that the eight threads all run a start at once.
            std::thread::sleep(Duration::from_millis(40));
            Ok(7u32)
        })
        .unwrap();
    *slot.lock().unwrap() = Some(pool.clone());
    let (done_tx, done_rx) = mpsc::channel();
    let grower = pool.clone();
    std::thread::spawn(move || {
        let _ = done_tx.send(grower.resize(10));
    });
    let finished = done_rx.recv_timeout(Duration::from_secs(10));
    slot.lock().unwrap().take();
    assert!(finished.is_ok(), "resize(10) never returned within 10 s");
    let answers = std::mem::take(&mut *outcome.lock().unwrap());
    assert!(!answers.is_empty(), "no WorkerRestarted callback drained");
    let slow: Vec<_> = answers
        .iter()
        .filter(|(drained, took)| drained.is_err() || *took >= Duration::from_millis(500))
        .collect();
    assert!(
        slow.is_empty(),
        "{} of {} drains from the resize's event callbacks (no lease out) answered late or \
         with an error: {slow:?}",
        slow.len(),
        answers.len()
    );
}

/// Found. A pool of one, with an `on_event` callback that blocks on `WorkerRestarted` (a
/// hung log sink), grown with `resize(10)` from a thread: its `fill_now` runs the nine new
/// starts on eight threads, and each reports its worker on its own thread while the ninth
/// claim waits in `OwnClaims` for one of them. A client holds the first worker and the
/// eight delivered ones, then asks for a tenth with `checkout_timeout(1 s)`. Expected
/// (BREAKING.md family 2: "an event callback that waits. ... other clients must not wait on
/// it"; `run_starter`'s doc: "a callback that blocks holds back no other start";
/// `replacements_still_start_while_start_threads_are_blocked_in_event_callbacks`): the
/// ninth start runs and the checkout is served. Happened: the ninth claim counts as on its
/// way, so the waiter claims none, and no thread takes it up while the callbacks block: the
/// checkout times out.
#[test]
fn a_resize_whose_event_callbacks_block_does_not_hold_back_its_last_start_from_a_client() {
    let release = Arc::new(AtomicBool::new(false));
    let blocked = Arc::new(AtomicUsize::new(0));
    let (r, b) = (release.clone(), blocked.clone());
    let pool = Pool::builder()
        .size(1)
        .checkout_timeout(Duration::from_secs(1))
        .on_event(move |event| {
            if matches!(event, Event::WorkerRestarted) {
                b.fetch_add(1, Ordering::SeqCst);
                let began = Instant::now();
                while !r.load(Ordering::SeqCst) && began.elapsed() < Duration::from_secs(10) {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        })
        .build(|| {
            std::thread::sleep(Duration::from_millis(20));
            Ok(())
        })
        .unwrap();
    let first = pool.checkout().unwrap();
    let grower = pool.clone();
    let resizer = std::thread::spawn(move || grower.resize(10));
    // The eight threads each delivered a worker and block in their callbacks.
    let eight = eventually(Duration::from_secs(5), || {
        blocked.load(Ordering::SeqCst) >= 8
    });
    let mut held = vec![first];
    let mut outcome = Ok(());
    if eight {
        for nth in 2..=10 {
            let began = Instant::now();
            match pool.checkout_timeout(Duration::from_secs(1)) {
                Ok(lease) => held.push(lease),
                Err(err) => {
                    outcome = Err(format!(
                        "lease {nth} of a pool resized to 10 failed after {:?} with {err:?} \
                         ({} callbacks blocked, stats {:?})",
                        began.elapsed(),
                        blocked.load(Ordering::SeqCst),
                        pool.stats()
                    ));
                    break;
                }
            }
        }
    }
    release.store(true, Ordering::SeqCst);
    drop(held);
    let _ = resizer.join();
    assert!(
        eight,
        "the resize's eight start threads never reported their workers"
    );
    outcome.unwrap();
}

/// A start error whose `Drop` drains the pool in its slot (once armed).
#[derive(Debug)]
struct DrainingError {
    slot: Slot<u32>,
    outcome: Drained,
}

impl std::fmt::Display for DrainingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection refused")
    }
}

impl std::error::Error for DrainingError {}

impl Drop for DrainingError {
    fn drop(&mut self) {
        let pool = self.slot.lock().unwrap().take();
        if let Some(pool) = pool {
            let began = Instant::now();
            let drained = pool.drain(Duration::from_millis(800));
            self.outcome
                .lock()
                .unwrap()
                .push((drained, began.elapsed()));
        }
    }
}

/// Found. A pool of one whose server goes down: its worker is discarded and every start
/// from then on fails with an error whose `Drop` drains the pool (a shutdown hook in a
/// client library's error). The first failure's error is kept as the pool's last cause;
/// the next failed start (after `reconnect_delay`) replaces it, and the replaced error is
/// dropped (`record_cause`, src/pool/shared.rs) inside `note_failure`, which `start_failed`
/// (src/pool/start.rs) calls while the failed start's claim still counts as `starting`. No
/// lease is out. Expected (GUARANTEES.md: "`drain` returns only when every lease is back,
/// every start under way has ended"; "a `drain` from any user code ... waits for every other
/// lease and start, never for those"; a failed start's error `Drop` is user code run
/// contained): `drain` returns `Ok` at once. Happened: it waits for the very claim its own
/// thread holds (no held-here unit for it, `open_worker`'s mark is gone by then): its whole
/// 800 ms, then `Timeout`.
#[test]
fn drain_from_the_drop_of_a_start_error_replaced_by_the_next_failure_does_not_wait_for_that_start()
{
    let slot: Slot<u32> = Arc::new(Mutex::new(None));
    let outcome: Drained = Arc::new(Mutex::new(Vec::new()));
    let down = Arc::new(AtomicBool::new(false));
    let (s, o, d) = (slot.clone(), outcome.clone(), down.clone());
    let pool = Pool::builder()
        .size(1)
        .reconnect_delay(Duration::from_millis(30))
        .build(move || {
            if d.load(Ordering::SeqCst) {
                Err(Box::new(DrainingError {
                    slot: s.clone(),
                    outcome: o.clone(),
                }) as cylinder::BoxError)
            } else {
                Ok(7u32)
            }
        })
        .unwrap();
    down.store(true, Ordering::SeqCst);
    *slot.lock().unwrap() = Some(pool.clone());
    cylinder::Lease::discard(pool.checkout().unwrap());
    let drained = eventually(Duration::from_secs(6), || {
        !outcome.lock().unwrap().is_empty()
    });
    slot.lock().unwrap().take();
    assert!(drained, "no replaced start error was dropped within 6 s");
    let (answer, took) = outcome.lock().unwrap().remove(0);
    assert!(
        answer.is_ok() && took < Duration::from_millis(400),
        "drain from a replaced start error's Drop (no lease out) answered {answer:?} after \
         {took:?}"
    );
}

/// Found. A pool of two (`min_idle(0)`, so a retired worker is not replaced) with an
/// `is_alive` hook. Another thread holds an owned lease of worker 0 throughout. Worker 1 is
/// free and dies; a `try_checkout` takes it, finds it dead, and retires it
/// (`admit_with_hooks`, src/pool/checkout.rs), which reports `WorkerDied`; that event's
/// callback drains the pool (800 ms). Expected (GUARANTEES.md: "`drain` returns only when
/// every lease is back"; "a `drain` from any user code that holds workers of the pool ...
/// waits for every other lease"): the drain waits for worker 0's lease, which is out the
/// whole time, and answers `Timeout`. Happened: it answers `Ok` at once with the lease
/// still out: `admit_with_hooks` keeps its `HeldHere::worker` guard for worker 1 across
/// `retire` (which closes worker 1 and counts it out before the event), so the record
/// still says this thread holds one unit that no count includes any more, and the other
/// client's lease is taken for it.
#[test]
fn drain_from_the_worker_died_event_of_a_checkout_still_waits_for_another_clients_lease() {
    let slot: Slot<usize> = Arc::new(Mutex::new(None));
    let outcome: Drained = Arc::new(Mutex::new(Vec::new()));
    let (handle, answers) = (slot.clone(), outcome.clone());
    let dead = Arc::new(AtomicUsize::new(usize::MAX));
    let is_dead = dead.clone();
    let next = Arc::new(AtomicUsize::new(0));
    let pool = Pool::builder()
        .size(2)
        .min_idle(0)
        .is_alive(move |worker: &usize| *worker != is_dead.load(Ordering::SeqCst))
        .on_event(move |event| {
            if matches!(event, Event::WorkerDied) {
                let pool = handle.lock().unwrap().take();
                if let Some(pool) = pool {
                    let began = Instant::now();
                    let drained = pool.drain(Duration::from_millis(800));
                    answers.lock().unwrap().push((drained, began.elapsed()));
                }
            }
        })
        .build(move || Ok(next.fetch_add(1, Ordering::SeqCst)))
        .unwrap();
    let first = pool.checkout_owned().unwrap();
    let second = pool.checkout().unwrap();
    let (held, freed) = (*first, *second);
    drop(second);
    assert_ne!(held, freed);
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let _ = stop_rx.recv_timeout(Duration::from_secs(10));
        drop(first);
    });
    dead.store(freed, Ordering::SeqCst);
    *slot.lock().unwrap() = Some(pool.clone());
    let answer = pool.try_checkout().map(|_| ());
    let _ = stop_tx.send(());
    holder.join().unwrap();
    slot.lock().unwrap().take();
    let answers = std::mem::take(&mut *outcome.lock().unwrap());
    assert_eq!(
        answers.len(),
        1,
        "WorkerDied was not reported once (try_checkout: {answer:?})"
    );
    let (drained, took) = &answers[0];
    assert!(
        drained.is_err(),
        "drain from the WorkerDied callback answered {drained:?} after {took:?} while \
         another client's lease (worker {held}) was still out"
    );
}

/// A pool of two numbered workers (`min_idle(0)`: nothing retired is replaced) whose
/// `on_event` callback drains it (800 ms) on the first `WorkerEvicted` once armed, with
/// worker 0 leased by another thread until `stop` is sent; worker 1 is free.
fn two_workers_one_leased_elsewhere() -> (
    Pool<usize>,
    Slot<usize>,
    Drained,
    mpsc::Sender<()>,
    std::thread::JoinHandle<()>,
) {
    let slot: Slot<usize> = Arc::new(Mutex::new(None));
    let outcome: Drained = Arc::new(Mutex::new(Vec::new()));
    let (handle, answers) = (slot.clone(), outcome.clone());
    let next = Arc::new(AtomicUsize::new(0));
    let pool = Pool::builder()
        .size(2)
        .min_idle(0)
        .on_event(move |event| {
            if matches!(event, Event::WorkerEvicted) {
                let pool = handle.lock().unwrap().take();
                if let Some(pool) = pool {
                    let began = Instant::now();
                    let drained = pool.drain(Duration::from_millis(800));
                    answers.lock().unwrap().push((drained, began.elapsed()));
                }
            }
        })
        .build(move || Ok(next.fetch_add(1, Ordering::SeqCst)))
        .unwrap();
    let first = pool.checkout_owned().unwrap();
    drop(pool.checkout().unwrap());
    assert_eq!(pool.stats().free, 1);
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let _ = stop_rx.recv_timeout(Duration::from_secs(10));
        drop(first);
    });
    (pool, slot, outcome, stop_tx, holder)
}

/// Found. `two_workers_one_leased_elsewhere`: the test calls `evict_all`; its sweep closes
/// the free worker and reports `WorkerEvicted`, whose callback drains. Expected
/// (GUARANTEES.md: "`drain` returns only when every lease is back"; "`evict_all` ...
/// `drain` lets the leases out finish and returns when they are back"): the drain waits
/// for the other client's lease, out the whole time, and answers `Timeout`. Happened: `Ok`
/// at once with the lease out. The sweep's own `HeldHere::workers` guard (src/pool/upkeep.rs,
/// `sweep`) still names the retired worker while `retire_held` reports the events (the
/// guard drops only after it), so the record counts a unit already closed and counted out.
#[test]
fn drain_from_the_worker_evicted_event_of_evict_all_still_waits_for_another_clients_lease() {
    let (pool, slot, outcome, stop, holder) = two_workers_one_leased_elsewhere();
    *slot.lock().unwrap() = Some(pool.clone());
    pool.evict_all();
    let _ = stop.send(());
    holder.join().unwrap();
    slot.lock().unwrap().take();
    let answers = std::mem::take(&mut *outcome.lock().unwrap());
    assert_eq!(answers.len(), 1, "WorkerEvicted was not reported once");
    let (drained, took) = &answers[0];
    assert!(
        drained.is_err(),
        "drain from evict_all's WorkerEvicted callback answered {drained:?} after {took:?} \
         while another client's lease was still out"
    );
}

/// Found. `two_workers_one_leased_elsewhere`: `map` holds the free worker and its callback
/// calls `evict_all`; as `map` gives its workers back (`Held::drop` in src/pool/mod.rs) the
/// evicted one is retired and `WorkerEvicted` reported, whose callback drains. Expected:
/// as above, the drain waits for the other client's lease and answers `Timeout`.
/// Happened: `Ok` at once: `map`'s `here` guard releases the evicted ids only after
/// `retire_held` has reported their events.
#[test]
fn drain_from_the_worker_evicted_event_of_map_still_waits_for_another_clients_lease() {
    let (pool, slot, outcome, stop, holder) = two_workers_one_leased_elsewhere();
    *slot.lock().unwrap() = Some(pool.clone());
    let inner = pool.clone();
    let mapped = pool.map(|_| inner.evict_all());
    assert_eq!(mapped.len(), 1);
    let _ = stop.send(());
    holder.join().unwrap();
    slot.lock().unwrap().take();
    let answers = std::mem::take(&mut *outcome.lock().unwrap());
    assert_eq!(answers.len(), 1, "WorkerEvicted was not reported once");
    let (drained, took) = &answers[0];
    assert!(
        drained.is_err(),
        "drain from map's WorkerEvicted callback answered {drained:?} after {took:?} while \
         another client's lease was still out"
    );
}
