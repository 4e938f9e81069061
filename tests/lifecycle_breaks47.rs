//! The forty-seventh pass: the pool's lifecycle and the user code it calls (the logger
//! above all). Each test's doc comment says what it found.
//!
//! The tests of this file share one process-wide logger (`common::logger`): it does nothing
//! unless a test armed a hook for a record naming its own pool (`on_log`), and then runs that
//! hook (once, or every time for a `sticky` hook).

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::eventually;
use common::logger::{disarm, logging, on_each_log, on_log};
use cylinder::{Error, Pool};

/// What each `drain` called from a callback answered, and how long it took.
type Answers = Arc<Mutex<Vec<(Result<(), Error>, Duration)>>>;

/// Found (pass 43's finding, through the logger instead of `on_event`). A pool of one,
/// grown with `resize(10)` from a thread: `fill_now` (src/pool/start.rs) claims the nine
/// new starts for itself (`OwnClaims`) and runs them on eight threads. Pass 43 made each
/// thread report its starts' *events* only once no claim is left for it to take; but the
/// "worker N started" log line that pass 45 moved into `deliver` (`log_started`) still runs
/// inside `run_claim`, before the thread takes its next claim. The application's logger
/// blocks on those lines (a stalled sink). A client holds the first worker and the eight
/// delivered ones, then asks for a tenth with `checkout_timeout(1 s)`. Expected
/// (`fill_now`'s own comment: "a callback that blocks or drains must not hold back a claim
/// only these threads can run (a waiter counts it as on its way and claims none of its
/// own)"; the promise for every callback, the logger included: "a callback that blocks
/// holds back no other client"): the ninth start runs and the checkout is served.
#[test]
fn a_logger_blocked_on_the_started_lines_of_a_resize_does_not_hold_back_its_last_start_from_a_client(
) {
    logging();
    let name = "b47-resize-log-block";
    let release = Arc::new(AtomicBool::new(false));
    let blocked = Arc::new(AtomicUsize::new(0));
    let pool = Pool::builder()
        .size(1)
        .name(name)
        .checkout_timeout(Duration::from_secs(1))
        .build(|| {
            std::thread::sleep(Duration::from_millis(20));
            Ok(())
        })
        .unwrap();
    let first = pool.checkout().unwrap();
    let (r, b) = (release.clone(), blocked.clone());
    on_each_log(&format!("{name}: worker|started"), move || {
        b.fetch_add(1, Ordering::SeqCst);
        let began = Instant::now();
        while !r.load(Ordering::SeqCst) && began.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    let grower = pool.clone();
    let resizer = std::thread::spawn(move || grower.resize(10));
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
                         ({} logger calls blocked, stats {:?})",
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
    disarm(name);
    drop(held);
    let _ = resizer.join();
    assert!(
        eight,
        "the resize's eight start threads never logged their workers"
    );
    outcome.unwrap();
}

/// Found (pass 43's first finding, through the logger). As above, the logger drains the
/// pool on each "worker N started" line of a `resize(10)` (a shutdown decided where the
/// application watches its logs). No lease is out. Expected (GUARANTEES.md: "`drain`
/// returns only when every lease is back, every start under way has ended"; "a `drain`
/// from any user code ... waits for every other lease and start, never for those"): each
/// drain returns `Ok` once the starts under way end.
#[test]
fn drain_from_the_logger_on_the_started_lines_of_a_resize_does_not_wait_for_its_own_claims() {
    logging();
    let name = "b47-resize-log-drain";
    let slot: Arc<Mutex<Option<Pool<u32>>>> = Arc::new(Mutex::new(None));
    let answers: Answers = Arc::new(Mutex::new(Vec::new()));
    let pool = Pool::builder()
        .size(1)
        .name(name)
        .build(|| {
            std::thread::sleep(Duration::from_millis(40));
            Ok(7u32)
        })
        .unwrap();
    *slot.lock().unwrap() = Some(pool.clone());
    let (handle, out) = (slot.clone(), answers.clone());
    on_each_log(&format!("{name}: worker|started"), move || {
        let pool = handle.lock().unwrap().clone();
        if let Some(pool) = pool {
            let began = Instant::now();
            let drained = pool.drain(Duration::from_millis(800));
            out.lock().unwrap().push((drained, began.elapsed()));
        }
    });
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let grower = pool.clone();
    std::thread::spawn(move || {
        let _ = done_tx.send(grower.resize(10));
    });
    let finished = done_rx.recv_timeout(Duration::from_secs(10));
    slot.lock().unwrap().take();
    disarm(name);
    assert!(finished.is_ok(), "resize(10) never returned within 10 s");
    let answers = std::mem::take(&mut *answers.lock().unwrap());
    assert!(!answers.is_empty(), "no started line drained");
    let slow: Vec<_> = answers
        .iter()
        .filter(|(drained, took)| drained.is_err() || *took >= Duration::from_millis(500))
        .collect();
    assert!(
        slow.is_empty(),
        "{} of {} drains from the logger on the resize's started lines (no lease out) \
         answered late or with an error: {slow:?}",
        slow.len(),
        answers.len()
    );
}

/// Found. `map`'s guard (`Held::drop`, src/pool/mod.rs) looks at the workers that expired
/// while `f` held them one at a time, and `retire_held`s each before it looks at the next:
/// the first one's `WorkerExpired` event (and its log line) is reported while the others
/// are still off the free list in `map`'s hand. (`sweep` and `retire_held` itself report
/// only once every worker they hold is back or closed, so that a callback that blocks or
/// drains holds back none of them.) Scenario: a pool of two, `max_lifetime(300 ms)`, whose
/// replacements take 3 s to start; `map` holds both workers 400 ms (200 ms each), so both expire in it;
/// the `on_event` callback blocks 1.5 s on `WorkerExpired` (a metrics sink that stalls).
/// Meanwhile a client asks for a worker with a 1 s timeout. Expected (GUARANTEES.md: an
/// expired worker found as the last in service "stays while no other worker is in service
/// and a replacement is coming"; the promise for every callback: "a callback that blocks
/// holds back no other client"): the second worker, the last in service with a replacement
/// coming, is kept past its expiry and the client gets it at once. Happened: it sits in
/// `map`'s guard while the first one's event callback blocks, and the client times out.
#[test]
fn an_event_callback_blocked_on_one_worker_expired_in_map_does_not_hold_back_the_other() {
    let started = Arc::new(AtomicUsize::new(0));
    let blocked = Arc::new(AtomicBool::new(false));
    let (s, b) = (started.clone(), blocked.clone());
    let pool = Pool::builder()
        .size(2)
        .max_lifetime(Duration::from_millis(300))
        .checkout_timeout(Duration::from_secs(1))
        .on_event(move |event| {
            if matches!(event, cylinder::Event::WorkerExpired) && !b.swap(true, Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1500));
            }
        })
        .build(move || {
            if s.fetch_add(1, Ordering::SeqCst) >= 2 {
                std::thread::sleep(Duration::from_secs(3));
            }
            Ok(0u32)
        })
        .unwrap();
    let mapper = pool.clone();
    let mapped = std::thread::spawn(move || {
        mapper
            .map(|_| std::thread::sleep(Duration::from_millis(200)))
            .len()
    });
    // Both workers are in map's hand; wait until the first expired one is reported.
    let reported = eventually(Duration::from_secs(5), || blocked.load(Ordering::SeqCst));
    let began = Instant::now();
    let got = pool.checkout_timeout(Duration::from_secs(1)).map(|_| ());
    let waited = began.elapsed();
    let stats = pool.stats();
    let _ = mapped.join();
    assert!(reported, "no worker expired in map");
    assert!(
        got.is_ok() && waited < Duration::from_millis(500),
        "the client got {got:?} after {waited:?} (stats then {stats:?}): the other expired \
         worker, the last in service, was held in map's guard while an event callback blocked"
    );
}

/// A manager (a driver's, say) whose `Drop` panics.
struct BombManager(#[allow(dead_code)] common::DropBomb);

impl cylinder::Manager for BombManager {
    type Worker = u32;
    fn start(&self) -> Result<u32, cylinder::BoxError> {
        Ok(0)
    }
}

/// Found (pass 46's fix, not reaching one of the crate's own closures). `build_with` with a
/// builder hook (`is_alive` here) wraps the manager in an `Arc` and builds `Hooks` whose
/// closures each capture a clone of it *and* the builder's own closure
/// (`PoolBuilder::with_manager`, src/pool/builder.rs): the `is_alive` closure, dropped last
/// by `Hooks::drop` (src/pool/manager.rs), holds the last `Arc` of the manager together with
/// the user's `is_alive` closure. A manager whose `Drop` panics and an `is_alive` closure
/// capturing a value whose `Drop` panics: two user values, which the crate put in one
/// closure. Expected (GUARANTEES.md: "so does every `Drop` of a user value ..., one at a
/// time. A panic there is contained"; pass 46: "the start closure and hooks of a pool ...
/// are dropped one at a time, contained"): dropping the pool returns. Happened: the
/// manager's panic unwinds through the closure's drop glue into the captured value's
/// panicking `Drop`: the process aborts.
#[test]
fn dropping_a_pool_built_with_a_manager_and_an_is_alive_hook_whose_drops_both_panic_does_not_abort()
{
    const NAME: &str =
        "dropping_a_pool_built_with_a_manager_and_an_is_alive_hook_whose_drops_both_panic_does_not_abort";
    if common::is_child() {
        common::quiet_panics();
        let bomb = common::DropBomb;
        let pool = Pool::builder()
            .size(1)
            .is_alive(move |_: &u32| {
                let _ = &bomb;
                true
            })
            .build_with(BombManager(common::DropBomb))
            .unwrap();
        drop(pool.checkout().unwrap());
        common::assert_drops_quietly(pool);
        return;
    }
    common::assert_exits_normally_in_a_child(NAME);
}

/// Found (pass 45's logger fix, not reaching a batch). `retire_held` (src/pool/release.rs)
/// defers the *events* of the workers a sweep (or `evict_all`, or `map`) retires until every
/// one of them is closed ("a callback may wait for them, and only this thread can close
/// them"), but each worker's "worker N dropped" log line is written inside
/// `retire_unreported`, in the loop, while the workers after it are still off the free list
/// and counted open, their replacements not yet claimed. Scenario: a pool of two, both
/// workers idle; a thread calls `evict_all`; the application's logger stalls 1.5 s on the
/// first "dropped (WorkerEvicted)" line. A client takes the first replacement and then asks
/// for a second worker with a 1 s timeout. Expected (pass 45: the dropped line "written once
/// the worker is closed and replaced"; the promise for every callback, the logger
/// included: "a callback that blocks holds back no other client"): the second worker is
/// closed and replaced within milliseconds and the client gets it. Happened: it stays
/// counted open in the evicting thread's hand while the logger stalls, nothing starts in
/// its place (the pool is at its size), and the client times out.
#[test]
fn a_logger_blocked_on_one_evicted_workers_line_does_not_hold_back_the_others_replacement() {
    logging();
    let name = "b47-evict-log-block";
    let pool = Pool::builder()
        .size(2)
        .name(name)
        .checkout_timeout(Duration::from_secs(1))
        .build(|| Ok(0u32))
        .unwrap();
    assert!(eventually(Duration::from_secs(2), || pool.stats().free == 2));
    let in_logger = Arc::new(AtomicBool::new(false));
    let l = in_logger.clone();
    on_log(
        &format!("{name}: worker|dropped (WorkerEvicted)"),
        move || {
            l.store(true, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(1500));
        },
    );
    let evicter = pool.clone();
    let evicted = std::thread::spawn(move || evicter.evict_all());
    let stalled = eventually(Duration::from_secs(5), || in_logger.load(Ordering::SeqCst));
    let first = pool.checkout_timeout(Duration::from_secs(1));
    let began = Instant::now();
    let second = pool.checkout_timeout(Duration::from_secs(1)).map(|_| ());
    let waited = began.elapsed();
    let stats = pool.stats();
    drop(first);
    let _ = evicted.join();
    disarm(name);
    assert!(stalled, "evict_all never logged a dropped worker");
    assert!(
        second.is_ok() && waited < Duration::from_millis(500),
        "the second checkout got {second:?} after {waited:?} (stats then {stats:?}): the other \
         evicted worker was neither closed nor replaced while the logger stalled on the first \
         one's line"
    );
}

/// A worker whose `Drop` panics once `armed` (a driver that asserts in its destructor).
struct Grenade(Arc<AtomicBool>);

impl Drop for Grenade {
    fn drop(&mut self) {
        if self.0.load(Ordering::SeqCst) {
            panic!("a worker's Drop panics on purpose");
        }
    }
}

/// Found (pass 45's logger fix, missing one line). `drop_worker` (src/pool/mod.rs) logs
/// "dropping worker N panicked" when a worker's `Drop` panics, and `close_worker`
/// (src/pool/release.rs) gives the worker's count back (`counts.release()`) only after
/// `drop_worker` returns: the application's logger runs while the closed worker still holds
/// its place. Scenario: a pool of one; client A holds the only worker, client B waits with
/// a 1 s timeout; A discards it; the worker's `Drop` panics (contained) and the logger
/// stalls 1.5 s on that line. Expected (pass 45: the dropped line "written once the worker
/// is closed and replaced"; "a callback that blocks holds back no other client";
/// `retire_unreported`: "then its replacement claimed, then the event: a callback that
/// blocks must not hold back the replacement"): B gets the replacement within milliseconds.
/// Happened: nothing starts while the logger holds the closed worker's place, and B times
/// out.
#[test]
fn a_logger_blocked_on_a_workers_panicking_drop_line_does_not_hold_back_its_replacement() {
    logging();
    let name = "b47-drop-panic-log-block";
    common::quiet_panics();
    let armed = Arc::new(AtomicBool::new(false));
    let arm = armed.clone();
    let pool = Pool::builder()
        .size(1)
        .name(name)
        .build(move || Ok(Grenade(arm.clone())))
        .unwrap();
    let held = pool.checkout_owned().unwrap();
    let waiter = pool.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let began = Instant::now();
        let got = waiter.checkout_timeout(Duration::from_secs(1)).map(|_| ());
        let _ = tx.send((began.elapsed(), got));
    });
    assert!(eventually(Duration::from_secs(2), || pool.stats().waiters == 1));
    on_log(&format!("{name}: dropping worker"), || {
        std::thread::sleep(Duration::from_millis(1500));
    });
    armed.store(true, Ordering::SeqCst);
    let discarder = std::thread::spawn(move || cylinder::OwnedLease::discard(held));
    let (waited, got) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the waiter never came back");
    armed.store(false, Ordering::SeqCst);
    let _ = discarder.join();
    disarm(name);
    assert!(
        got.is_ok() && waited < Duration::from_millis(700),
        "the waiter got {got:?} after {waited:?}: the discarded worker's place was held while \
         the logger stalled on its 'dropping worker panicked' line"
    );
}

/// Found (the same line's twin on the start path). `open_now` (src/pool/start.rs) drops a
/// new worker that is dead on arrival with `Shared::dispose` (src/pool/checkout.rs), which
/// logs "dropping a new worker panicked" when its `Drop` panics, while the start still
/// holds its claim and before `start_failed` records the failure. Scenario: a pool of one
/// whose server starts handing out dead connections (`is_alive` false) whose `Drop`
/// panics; A holds the only worker, B waits with a 1 s timeout; A discards it; the
/// replacement is dead on arrival and the logger stalls 3 s on the "dropping a new worker
/// panicked" line. Expected (GUARANTEES.md: a blocking checkout with nothing running "waits
/// for the next attempt ... and fails with that attempt's cause"; "a callback that blocks
/// holds back no other client"; BREAKING.md 10: "never a bare timeout when the cause is
/// known"): B fails at once with `Disconnected` naming the dead arrival. Happened: B waits
/// its whole second and gets a bare `Timeout`.
#[test]
fn a_logger_blocked_on_a_dead_arrivals_panicking_drop_line_does_not_turn_disconnected_into_a_timeout(
) {
    logging();
    let name = "b47-new-drop-panic-log-block";
    common::quiet_panics();
    let down = Arc::new(AtomicBool::new(false));
    let (is_down, arm) = (down.clone(), down.clone());
    let pool = Pool::builder()
        .size(1)
        .name(name)
        .is_alive(move |_: &Grenade| !is_down.load(Ordering::SeqCst))
        .build(move || Ok(Grenade(arm.clone())))
        .unwrap();
    let held = pool.checkout_owned().unwrap();
    let waiter = pool.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let began = Instant::now();
        let got = waiter
            .checkout_timeout(Duration::from_secs(1))
            .map(|_| ())
            .map_err(|err| {
                let cause = std::error::Error::source(&err).map(ToString::to_string);
                format!("{err}: {cause:?}")
            });
        let _ = tx.send((began.elapsed(), got));
    });
    assert!(eventually(Duration::from_secs(2), || pool.stats().waiters == 1));
    on_log(&format!("{name}: dropping a new worker panicked"), || {
        std::thread::sleep(Duration::from_secs(3));
    });
    down.store(true, Ordering::SeqCst);
    let discarder = std::thread::spawn(move || {
        // The worker A held is dropped here (its Drop panics too, contained).
        cylinder::OwnedLease::discard(held)
    });
    let (waited, got) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the waiter never came back");
    let _ = discarder.join();
    disarm(name);
    down.store(false, Ordering::SeqCst);
    assert!(
        matches!(&got, Err(text) if text.contains("dead on arrival"))
            && waited < Duration::from_millis(900),
        "the waiter got {got:?} after {waited:?}: the replacement had been found dead on \
         arrival at once, its failure held back by the logger on its drop's line"
    );
}
