//! The forty-first pass: the worker lifecycle and every user callback, looking for the places
//! where the crate runs user code while its own thread holds (or counts) workers of the pool,
//! and the user code calls back into the pool: the count of workers "held here"
//! (`HeldHere`, src/pool/held_here.rs), which `drain` and `try_checkout` subtract, must match
//! what the thread really holds at every such place. Each test's doc comment says whether it
//! found a bug ("Found.": it fails on commit bc75c09) or documents an attack that held
//! ("Tried.").
//!
//! Eight found, three roots: (1) the count held here is short of what the thread holds: a
//! worker closed above the size (`closed_above`: none), the other workers a sweep or `map`
//! retires together (`retire_held`: one each), `is_alive` in the sweep's second pass
//! (`look_at_each`: none), a `try_checkout`'s own new worker while its event runs
//! (`start_for_caller`: none), so `drain` waits its whole timeout for them; (2) it is above
//! what the thread holds: a worker retired at checkout (`admit_with_hooks` and
//! `close_worker` both count it) and a timed start given up (`open_within` and `open_now`
//! both count it, though its claim is gone), so `drain` answers `Ok` with another client's
//! lease still out; (3) `resize` from a start's own user code waits the whole
//! `checkout_timeout` for that start (its wait subtracts nothing held here). All fixed:
//! `HeldHere` counts by identity (worker ids, one mark for a start), so nested guards of one
//! worker count it once; every place above holds its workers by id until each is back or
//! counted out; and `resize`'s wait subtracts what is held here.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{drain_once, draining, eventually, within, Drained, Draining, Slot};
use cylinder::{Event, Lease, Pool};

/// Found. A pool of two idle workers, no lease out, nothing starting; `evict_all` retires
/// both, and the first one's `Drop` calls `drain(800 ms)` on its own pool. Expected (as for
/// a pool of one, `tests/lifecycle_breaks36.rs`, and as `drain`'s rustdoc promises for "a
/// worker's `Drop`"): `drain` does not wait for workers only its own thread can close, so it
/// returns `Ok` at once. Happened: it waits its whole 800 ms and answers `Timeout`: the
/// sweep (`sweep` → `retire_held`, src/pool/release.rs) holds the second evicted worker on
/// this thread while the first one's `Drop` runs, but `close_worker` counts only the worker
/// it drops as held here (`HeldHere::new(self, 1)`), so `drain` sees one more worker open
/// than it may subtract and waits for a worker that is closed only after it returns.
#[test]
fn drain_from_a_drop_during_evict_all_of_two_does_not_wait_for_the_other_one() {
    let slot: Slot<Draining> = Arc::new(Mutex::new(None));
    let outcome: Drained = Arc::new(Mutex::new(None));
    let pool = Pool::builder()
        .size(2)
        .build(draining(&slot, &outcome))
        .unwrap();
    assert_eq!(pool.stats().free, 2);
    *slot.lock().unwrap() = Some(pool.clone());
    let evicting = pool.clone();
    assert!(
        within(Duration::from_secs(5), move || evicting.evict_all()).is_some(),
        "evict_all did not return within 5 s"
    );
    let (drained, took) = outcome.lock().unwrap().take().expect("no worker drained");
    assert!(pool.is_closed());
    assert!(
        drained.is_ok(),
        "drain called from an evicted worker's Drop (no lease out, nothing starting) answered \
         {drained:?} after {took:?}: it waited for the other evicted worker, which the same \
         thread holds and closes only after this Drop returns"
    );
}

/// Found. A pool of two idle workers, no lease out; `resize(1)` closes one as above the new
/// size, and that worker's `Drop` calls `drain(800 ms)` on its own pool. Expected (`drain`'s
/// rustdoc: called from "a worker's `Drop`", it does not wait for the workers that code holds):
/// `drain` returns `Ok` at once. Happened: it waits its whole 800 ms and answers `Timeout`.
/// A worker closed above the size (`close_above` → `closed_above`, src/pool/release.rs; also
/// an overflow worker's return and `idle_timeout`'s close) is counted in `closing` while its
/// `Drop` runs, and `drain` waits for `closing` to reach zero, but `closed_above` drops it
/// with no `HeldHere`, so the `drain` waits for the very `Drop` it is called from.
#[test]
fn drain_from_the_drop_of_a_worker_closed_by_a_shrink_does_not_wait_for_it() {
    let slot: Slot<Draining> = Arc::new(Mutex::new(None));
    let outcome: Drained = Arc::new(Mutex::new(None));
    let pool = Pool::builder()
        .size(2)
        .build(draining(&slot, &outcome))
        .unwrap();
    assert_eq!(pool.stats().free, 2);
    *slot.lock().unwrap() = Some(pool.clone());
    let resizing = pool.clone();
    let resized = within(Duration::from_secs(5), move || resizing.resize(1).is_ok());
    assert_eq!(
        resized,
        Some(true),
        "resize(1) did not return Ok within 5 s"
    );
    let (drained, took) = outcome.lock().unwrap().take().expect("no worker drained");
    assert!(pool.is_closed());
    assert!(
        drained.is_ok(),
        "drain called from the Drop of a worker closed by resize(1) (no lease out) answered \
         {drained:?} after {took:?}: it waited for the Drop it was called from"
    );
}

/// Found. A pool of one idle worker with an `is_alive` hook and an `idle_timeout` (so the
/// reaper sweeps every 10 ms and asks `is_alive` of each idle worker in its second pass,
/// `look_at_each` in src/pool/upkeep.rs); no lease out. The hook, on the reaper's thread,
/// calls `drain(800 ms)` on its own pool. Expected (as for `is_alive` at a checkout or a
/// return, and the `keepalive` check in the same pass, which count their worker as held
/// here): `drain` returns `Ok` at once. Happened: it waits its whole 800 ms and answers
/// `Timeout`: `look_at_each` asks `is_dead` (user code) with no `HeldHere` for the worker it
/// holds, so `drain` waits for the worker the sweep gives back only after the hook returns.
#[test]
fn drain_from_is_alive_in_the_reapers_sweep_does_not_wait_for_the_worker_it_probes() {
    let slot: Slot<u32> = Arc::new(Mutex::new(None));
    let outcome: Drained = Arc::new(Mutex::new(None));
    let (handle, answer) = (slot.clone(), outcome.clone());
    let pool = Pool::builder()
        .size(1)
        .idle_timeout(Duration::from_millis(40))
        .is_alive(move |_: &u32| {
            let on_reaper = std::thread::current()
                .name()
                .is_some_and(|name| name.starts_with("cylinder-reaper"));
            if on_reaper {
                drain_once(&handle, &answer, Duration::from_millis(800));
            }
            true
        })
        .build(|| Ok(7u32))
        .unwrap();
    *slot.lock().unwrap() = Some(pool.clone());
    assert!(
        eventually(Duration::from_secs(5), || outcome.lock().unwrap().is_some()),
        "the reaper never asked is_alive within 5 s"
    );
    let (drained, took) = outcome.lock().unwrap().take().unwrap();
    assert!(pool.is_closed());
    assert!(
        drained.is_ok(),
        "drain called from is_alive in the reaper's sweep (no lease out) answered {drained:?} \
         after {took:?}: it waited for the worker the sweep holds while the hook runs"
    );
}

/// Found. A pool of two; client A holds a lease (and keeps it for the whole test). Client B
/// checks out the other worker, whose checkout check fails, so it is retired at the checkout
/// (`admit_with_hooks` → `retire` → `close_worker`), and its `Drop` calls `drain(800 ms)`.
/// Expected (`drain`'s rustdoc: it "waits, up to `timeout`, for the leases still out to end"
/// and answers `Timeout` when "leases were still out after `timeout`"; it skips only the
/// workers its own thread holds, here the one being dropped): `drain` waits for A's lease and
/// answers `Timeout` after ~800 ms. Happened: it answers `Ok` at once while A's lease is
/// still out: the worker being dropped is counted as held here twice, once by
/// `admit_with_hooks` (`HeldHere::new(self, 1)`, src/pool/checkout.rs, still alive while it
/// retires the worker) and once more by `close_worker` (src/pool/release.rs), so `drain`
/// subtracts two for one worker, and A's lease goes unseen. (The same double count, by
/// reading: a worker dead at checkout, or closed there because the pool closed during its
/// check.)
#[test]
fn drain_from_the_drop_of_a_worker_failing_its_checkout_check_waits_for_other_leases() {
    let slot: Slot<Draining> = Arc::new(Mutex::new(None));
    let outcome: Drained = Arc::new(Mutex::new(None));
    let fail_next = Arc::new(AtomicBool::new(false));
    let fail = fail_next.clone();
    let pool = Pool::builder()
        .size(2)
        .check_after_idle(Duration::ZERO)
        .test_on_checkout(move |_: &mut Draining| !fail.swap(false, Ordering::SeqCst))
        .build(draining(&slot, &outcome))
        .unwrap();
    let held = pool.checkout_owned().unwrap();
    *slot.lock().unwrap() = Some(pool.clone());
    fail_next.store(true, Ordering::SeqCst);
    let client = pool.clone();
    let got = within(Duration::from_secs(5), move || {
        client
            .checkout_timeout(Duration::from_millis(300))
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    assert!(got.is_some(), "B's checkout did not return within 5 s");
    let (drained, took) = outcome.lock().unwrap().take().expect("no worker drained");
    let leased_then = pool.stats().leased;
    drop(held);
    assert!(
        drained.is_err(),
        "drain called from the Drop of a worker that failed its checkout check answered \
         {drained:?} after {took:?} while another client's lease was still out (leased {} \
         when it returned): it counted the worker being dropped as held here twice",
        leased_then
    );
}

/// Found. A lazy pool of one (`min_idle(0)`: nothing open); a `try_checkout` opens a worker
/// on its own thread (`start_for_caller`), and the pool's `on_event` callback, on the
/// `WorkerRestarted` that start reports, calls `drain(800 ms)` (a callback that shuts the
/// pool down on some event). No lease is out. Expected (as for every other start: `deliver`
/// reports its event "once the worker is in the pool: a callback that checks out (or blocks)
/// must not hold back the very worker it reports"; and `drain` does not wait for what its
/// own thread holds): `drain` returns `Ok` at once, and the `try_checkout` answers `Closed`.
/// Happened: `drain` waits its whole 800 ms and answers `Timeout`: `start_for_caller`
/// (src/pool/start.rs) emits the event while it holds the new worker for its caller, counted
/// open and not held here, and closes it only after the callback returns.
#[test]
fn drain_from_the_event_of_a_try_checkouts_own_start_does_not_wait_for_that_worker() {
    let slot: Slot<u32> = Arc::new(Mutex::new(None));
    let outcome: Drained = Arc::new(Mutex::new(None));
    let (handle, answer) = (slot.clone(), outcome.clone());
    let pool = Pool::builder()
        .size(1)
        .min_idle(0)
        .on_event(move |event| {
            if matches!(event, Event::WorkerStarted | Event::WorkerRestarted) {
                drain_once(&handle, &answer, Duration::from_millis(800));
            }
        })
        .build(|| Ok(7u32))
        .unwrap();
    assert_eq!(pool.stats().size, 0);
    *slot.lock().unwrap() = Some(pool.clone());
    let client = pool.clone();
    let got = within(Duration::from_secs(5), move || {
        client.try_checkout().map(|_| ()).map_err(|e| e.to_string())
    });
    assert!(got.is_some(), "try_checkout did not return within 5 s");
    let (drained, took) = outcome.lock().unwrap().take().expect("no event drained");
    assert!(
        drained.is_ok(),
        "drain called from on_event on a try_checkout's own start (no lease out) answered \
         {drained:?} after {took:?}: it waited for the worker the start holds for its caller \
         while the event runs (try_checkout answered {got:?})"
    );
}

/// Found. A pool of one with room for one overflow worker (`size(1).max_overflow(1)`,
/// `min_idle` following the size); client A holds the worker, and client B's blocking
/// checkout makes the pool start an overflow worker for it. That start's `on_start` (a
/// connection customizer that decides the pool needs more room) calls `resize(2)` once.
/// Expected (`resize`'s rustdoc: growing "returns once they started"; the one worker it adds
/// is the one already starting, and a `resize` must not wait for the start it is called
/// from, as `drain` and `try_checkout` do not): `resize` returns at once. Happened: it waits
/// the pool's whole `checkout_timeout` (2 s here, 30 s by default), and B with it: `added` is
/// counted against the workers open (`max(before, open)`, `Pool::resize` in src/pool/mod.rs),
/// which leaves out the overflow start under way, so it expects one start to end; `fill_now`
/// claims none (the pool is not short), and the loop then waits for `starts_ended` to move
/// while `on_their_way() > 0`, the one on its way being its own caller's start (no
/// `HeldHere` subtracted).
#[test]
fn resize_from_on_start_does_not_wait_for_the_start_it_is_called_from() {
    let slot: Slot<u32> = Arc::new(Mutex::new(None));
    let took: Drained = Arc::new(Mutex::new(None));
    let (handle, answer) = (slot.clone(), took.clone());
    let pool = Pool::builder()
        .size(1)
        .max_overflow(1)
        .checkout_timeout(Duration::from_secs(2))
        .on_start(move |_: &mut u32| -> Result<(), cylinder::BoxError> {
            let pool = handle.lock().unwrap().take();
            if let Some(pool) = pool {
                let began = Instant::now();
                let resized = pool.resize(2);
                *answer.lock().unwrap() = Some((resized, began.elapsed()));
            }
            Ok(())
        })
        .build(|| Ok(7u32))
        .unwrap();
    let held = pool.checkout().unwrap();
    *slot.lock().unwrap() = Some(pool.clone());
    let client = pool.clone();
    let b = within(Duration::from_secs(10), move || {
        let began = Instant::now();
        let got = client.checkout_timeout(Duration::from_secs(5)).map(|_| ());
        (got, began.elapsed())
    });
    drop(held);
    let (resized, waited) = took.lock().unwrap().take().expect("on_start never resized");
    assert!(resized.is_ok(), "{resized:?}");
    assert!(
        waited < Duration::from_secs(1),
        "resize(2) called from an overflow start's on_start took {waited:?} (checkout_timeout \
         2 s): it waited for the start it was called from; B's checkout: {b:?}; stats: {:?}",
        pool.stats()
    );
}

/// Found. A pool of two with a `start_timeout` of 100 ms (and a long `reconnect_delay`, so
/// nothing retries meanwhile); client A holds a lease for the whole test. The other worker
/// is discarded, and its replacement's start closure is slow: it returns after 300 ms, long
/// after the pool gave it up, and before it returns it calls `drain(800 ms)` on its own pool
/// (a start that decides the pool must shut down). Expected (`drain`: it "waits, up to
/// `timeout`, for the leases still out to end", skipping only what its own thread holds, here
/// its own start): `drain` waits for A's lease and answers `Timeout` after ~800 ms.
/// Happened: it answers `Ok` at once while A's lease is out. The timed start's thread counts
/// itself as held here twice (`HeldHere::new(&*me, 1)` in `open_within` and again in
/// `open_now`, src/pool/start.rs), to match the two counts `drain` sees while the start is
/// waited for (its claim, on its way, and `timed_starts_running`); once the start is given
/// up, its claim is gone, and the second unit hides A's lease.
#[test]
fn drain_from_a_start_given_up_by_start_timeout_still_waits_for_other_leases() {
    let slot: Slot<u32> = Arc::new(Mutex::new(None));
    let outcome: Drained = Arc::new(Mutex::new(None));
    let (handle, answer) = (slot.clone(), outcome.clone());
    let armed = Arc::new(AtomicBool::new(false));
    let arm = armed.clone();
    let pool = Pool::builder()
        .size(2)
        .start_timeout(Duration::from_millis(100))
        .reconnect_delay(Duration::from_secs(10))
        .build(move || {
            if arm.swap(false, Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(300));
                drain_once(&handle, &answer, Duration::from_millis(800));
            }
            Ok(7u32)
        })
        .unwrap();
    let held = pool.checkout_owned().unwrap();
    *slot.lock().unwrap() = Some(pool.clone());
    armed.store(true, Ordering::SeqCst);
    Lease::discard(pool.checkout().unwrap());
    assert!(
        eventually(Duration::from_secs(5), || outcome.lock().unwrap().is_some()),
        "the slow start never drained within 5 s"
    );
    let (drained, took) = outcome.lock().unwrap().take().unwrap();
    let leased_then = pool.stats().leased;
    drop(held);
    assert!(
        drained.is_err(),
        "drain called from a start given up by start_timeout answered {drained:?} after \
         {took:?} while another client's lease was still out (leased {leased_then})"
    );
}

/// Found. `Pool::map` over a pool of two idle workers (no lease out), whose callback calls
/// `evict_all`; `map` then retires both as it gives them back, and the first one's `Drop`
/// calls `drain(800 ms)`. Expected (as for a single worker, and `drain`'s rustdoc for "a
/// worker's `Drop`" and "`map`'s callback"): `drain` returns `Ok` at once. Happened: it
/// waits its whole 800 ms and answers `Timeout`, for the second evicted worker that `map`'s
/// guard (`Held::drop` in `Pool::map`, src/pool/mod.rs, through `retire_held`) holds on this
/// thread and closes only after this `Drop` returns; `map`'s own `HeldHere` is dropped
/// before its guard runs (declared after it), and `close_worker` counts only the one worker.
#[test]
fn drain_from_a_drop_when_map_retires_two_evicted_workers_does_not_wait_for_the_other() {
    let slot: Slot<Draining> = Arc::new(Mutex::new(None));
    let outcome: Drained = Arc::new(Mutex::new(None));
    let pool = Pool::builder()
        .size(2)
        .build(draining(&slot, &outcome))
        .unwrap();
    assert_eq!(pool.stats().free, 2);
    let mapping = pool.clone();
    let arm = slot.clone();
    let mapped = within(Duration::from_secs(5), move || {
        let mut first = true;
        mapping
            .map(|_| {
                if std::mem::take(&mut first) {
                    *arm.lock().unwrap() = Some(mapping.clone());
                    mapping.evict_all();
                }
            })
            .len()
    });
    assert_eq!(mapped, Some(2), "map did not return within 5 s");
    let (drained, took) = outcome.lock().unwrap().take().expect("no worker drained");
    assert!(pool.is_closed());
    assert!(
        drained.is_ok(),
        "drain called from the Drop of a worker map retired as evicted (no lease out) answered \
         {drained:?} after {took:?}: it waited for the other evicted worker map still holds"
    );
}

/// Tried. The `keepalive` check the reaper runs on an idle worker (its sweep's second pass)
/// calls `drain(800 ms)` on its own pool; no lease out. The check counts its worker as held
/// here (`keep_alive`, src/pool/upkeep.rs): `drain` returns `Ok` at once and the pool ends
/// empty.
#[test]
fn drain_from_a_keepalive_check_on_the_reaper_does_not_wait() {
    let slot: Slot<u32> = Arc::new(Mutex::new(None));
    let outcome: Drained = Arc::new(Mutex::new(None));
    let (handle, answer) = (slot.clone(), outcome.clone());
    let pool = Pool::builder()
        .size(1)
        .keepalive(Duration::from_millis(40))
        .test_on_checkout(move |_: &mut u32| {
            let on_reaper = std::thread::current()
                .name()
                .is_some_and(|name| name.starts_with("cylinder-reaper"));
            if on_reaper {
                drain_once(&handle, &answer, Duration::from_millis(800));
            }
            true
        })
        .build(|| Ok(7u32))
        .unwrap();
    *slot.lock().unwrap() = Some(pool.clone());
    assert!(
        eventually(Duration::from_secs(5), || outcome.lock().unwrap().is_some()),
        "the reaper never ran the keepalive check within 5 s"
    );
    let (drained, took) = outcome.lock().unwrap().take().unwrap();
    assert!(drained.is_ok(), "{drained:?} after {took:?}");
    assert!(eventually(Duration::from_secs(5), || pool.stats().size == 0));
}

/// Tried. `try_checkout` called from `is_alive` while the reaper's sweep probes the only
/// worker (size 1, no lease out) does not wait for the worker its own thread holds: it
/// answers within the second (here `Overload`: nothing free, no room), and the pool is
/// whole once the probe returns.
#[test]
fn try_checkout_from_is_alive_in_the_reapers_sweep_does_not_wait() {
    let slot: Slot<u32> = Arc::new(Mutex::new(None));
    let answer: Arc<Mutex<Option<(String, Duration)>>> = Arc::new(Mutex::new(None));
    let (handle, got) = (slot.clone(), answer.clone());
    let pool = Pool::builder()
        .size(1)
        .idle_timeout(Duration::from_millis(40))
        .is_alive(move |_: &u32| {
            let on_reaper = std::thread::current()
                .name()
                .is_some_and(|name| name.starts_with("cylinder-reaper"));
            if on_reaper {
                let pool = handle.lock().unwrap().take();
                if let Some(pool) = pool {
                    let began = Instant::now();
                    let tried = match pool.try_checkout() {
                        Ok(_) => "ok".to_string(),
                        Err(err) => err.to_string(),
                    };
                    *got.lock().unwrap() = Some((tried, began.elapsed()));
                }
            }
            true
        })
        .build(|| Ok(7u32))
        .unwrap();
    *slot.lock().unwrap() = Some(pool.clone());
    assert!(
        eventually(Duration::from_secs(5), || answer.lock().unwrap().is_some()),
        "the reaper never asked is_alive within 5 s"
    );
    let (tried, took) = answer.lock().unwrap().take().unwrap();
    assert!(took < Duration::from_secs(1), "{tried} after {took:?}");
    assert!(
        eventually(Duration::from_secs(5), || {
            let s = pool.stats();
            s.size == 1 && s.free == 1 && s.leased == 0
        }),
        "{:?}",
        pool.stats()
    );
}

/// Counts a `drain` from an event callback of a plain (line) replacement: tried, the event
/// comes once the worker is in the pool.
static LINE_EVENTS: AtomicUsize = AtomicUsize::new(0);

/// Tried. `on_event` drains the pool on the `WorkerRestarted` of a replacement started by a
/// start thread (a discarded worker's): `deliver` reports the event once the worker is in
/// the pool, so `drain` returns `Ok` at once (no lease out).
#[test]
fn drain_from_the_event_of_a_start_threads_replacement_does_not_wait() {
    let slot: Slot<u32> = Arc::new(Mutex::new(None));
    let outcome: Drained = Arc::new(Mutex::new(None));
    let (handle, answer) = (slot.clone(), outcome.clone());
    let pool = Pool::builder()
        .size(1)
        .on_event(move |event| {
            if matches!(event, Event::WorkerRestarted) {
                LINE_EVENTS.fetch_add(1, Ordering::SeqCst);
                drain_once(&handle, &answer, Duration::from_millis(800));
            }
        })
        .build(|| Ok(7u32))
        .unwrap();
    *slot.lock().unwrap() = Some(pool.clone());
    Lease::discard(pool.checkout().unwrap());
    assert!(
        eventually(Duration::from_secs(5), || outcome.lock().unwrap().is_some()),
        "no WorkerRestarted within 5 s"
    );
    let (drained, took) = outcome.lock().unwrap().take().unwrap();
    assert!(drained.is_ok(), "{drained:?} after {took:?}");
    assert!(LINE_EVENTS.load(Ordering::SeqCst) >= 1);
}
