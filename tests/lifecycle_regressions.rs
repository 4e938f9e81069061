//! Regressions for the pool's lifecycle: starts whose worker or panic payload panics when
//! dropped, workers that are dead on arrival, the start backoff and the fuse, `build`,
//! on-demand starts, `close`, `try_checkout`, `resize`, `OnClientPanic`, the order in which
//! free workers are reused, and checkouts while every start fails. Each test is bounded: a
//! hang is caught by a timeout and fails the test.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

use common::{eventually, within};
use cylinder::{Actor, Behaviour, BoxError, Error, Event, Lease, OnClientPanic, Pool};

/// A panic payload whose own `Drop` panics (unless its thread is already unwinding, which
/// would abort the test run).
struct PayloadWhoseDropPanics;

impl Drop for PayloadWhoseDropPanics {
    fn drop(&mut self) {
        if !thread::panicking() {
            panic!("a panic payload's drop panics on purpose");
        }
    }
}

/// Silences the panics these tests cause on purpose (their message ends "on purpose", or
/// their payload is a `PayloadWhoseDropPanics`); any other panic, an assertion quoting one of
/// them included, is still printed.
fn quiet_panics() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str));
        let on_purpose = message.is_some_and(|m| m.ends_with("on purpose"))
            || payload.is::<PayloadWhoseDropPanics>();
        if !on_purpose {
            eprintln!("{info}");
        }
    }));
}

// ---------------------------------------------------------------------------------------
// A start that ends after `start_timeout`, whose worker's `Drop` panics.

/// Holds up every allocation made during a window set by the test, on threads other than
/// those that opted out: the pool's start thread, once it has given up on a start, formats
/// the reason (an allocation), and so is held there while the late start hands its worker
/// over. Outside the window it is the system allocator.
struct HoldingAllocator;

#[global_allocator]
static ALLOCATOR: HoldingAllocator = HoldingAllocator;

static EPOCH: OnceLock<Instant> = OnceLock::new();
/// The window, in nanoseconds since `EPOCH` (`HOLD_UNTIL == 0`: none).
static HOLD_FROM: AtomicU64 = AtomicU64::new(0);
static HOLD_UNTIL: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static NEVER_HELD: Cell<bool> = const { Cell::new(false) };
}

fn nanos_since_epoch() -> u64 {
    EPOCH
        .get()
        .map_or(0, |epoch| epoch.elapsed().as_nanos() as u64)
}

/// Waits out the window if this allocation falls in it. Allocates nothing.
fn hold_in_window() {
    if HOLD_UNTIL.load(Ordering::SeqCst) == 0 || NEVER_HELD.try_with(Cell::get).unwrap_or(true) {
        return;
    }
    loop {
        let now = nanos_since_epoch();
        if now < HOLD_FROM.load(Ordering::SeqCst) || now >= HOLD_UNTIL.load(Ordering::SeqCst) {
            return;
        }
        thread::sleep(Duration::from_micros(100));
    }
}

unsafe impl GlobalAlloc for HoldingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        hold_in_window();
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        hold_in_window();
        System.realloc(ptr, layout, new_size)
    }
}

/// Workers dropped by a start thread other than the one that made them.
struct Late {
    calm: AtomicBool,
    caught: AtomicUsize,
}

/// A worker whose `Drop` panics.
struct LateWorker {
    made_on: ThreadId,
    late: Arc<Late>,
}

impl Drop for LateWorker {
    fn drop(&mut self) {
        let here = thread::current();
        if here.id() != self.made_on
            && here
                .name()
                .is_some_and(|name| name.starts_with("cylinder-start"))
        {
            self.late.caught.fetch_add(1, Ordering::SeqCst);
        }
        if !thread::panicking() {
            panic!("a worker's drop panics on purpose");
        }
    }
}

const START_TIMEOUT: Duration = Duration::from_millis(20);

/// The start ends 3 ms after `start_timeout`: the pool has given up on it, but its start
/// thread, held in the window (see `HoldingAllocator`), has not yet let go of the channel the
/// worker comes through. The worker is then dropped there, and its `Drop` panics.
#[test]
fn a_start_that_ends_after_start_timeout_with_a_panicking_drop_leaks_no_claim() {
    quiet_panics();
    let epoch = *EPOCH.get_or_init(Instant::now);
    let late = Arc::new(Late {
        calm: AtomicBool::new(false),
        caught: AtomicUsize::new(0),
    });
    let made = late.clone();
    let pool = Pool::builder()
        .size(1)
        .name("late-start")
        .start_timeout(START_TIMEOUT)
        .reconnect_delay(Duration::from_millis(5))
        // A worker that came in time is retired soon, so that starts keep coming.
        .max_lifetime(Duration::from_millis(30))
        .build_unchecked(move || {
            NEVER_HELD.with(|never| never.set(true));
            if !made.calm.load(Ordering::SeqCst) {
                // From halfway through the start until a few milliseconds after it ends
                // (however late that is: the cap only bounds a lost thread).
                let began = epoch.elapsed();
                let (from, cap) = (began + START_TIMEOUT / 2, began + START_TIMEOUT + ms(500));
                HOLD_FROM.store(from.as_nanos() as u64, Ordering::SeqCst);
                HOLD_UNTIL.store(cap.as_nanos() as u64, Ordering::SeqCst);
                let ends = began + START_TIMEOUT + ms(3);
                thread::sleep(ends.saturating_sub(epoch.elapsed()));
                let until = epoch.elapsed() + ms(5);
                HOLD_UNTIL.store(until.as_nanos() as u64, Ordering::SeqCst);
            }
            Ok(LateWorker {
                made_on: thread::current().id(),
                late: made.clone(),
            })
        })
        .unwrap();
    let began = Instant::now();
    while late.caught.load(Ordering::SeqCst) == 0 && began.elapsed() < Duration::from_secs(2) {
        thread::sleep(ms(10));
    }
    late.calm.store(true, Ordering::SeqCst);
    let caught = late.caught.load(Ordering::SeqCst);
    let recovered = eventually(Duration::from_secs(2), || pool.stats().starting == 0);
    let stats = pool.stats();
    let checkout = checks_out_within(&pool, Duration::from_secs(2));
    assert!(
        recovered && checkout.is_ok(),
        "{caught} late workers were dropped by a start thread; the pool is stuck at {stats:?} \
         (checkout: {checkout:?})"
    );
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Tries short checkouts until one succeeds or `limit` has passed (a checkout may fail at
/// once while the pool waits to retry a failed start); the last error if none did.
fn checks_out_within<W: Send + 'static>(pool: &Pool<W>, limit: Duration) -> Result<(), Error> {
    let began = Instant::now();
    loop {
        let handle = pool.clone();
        let got = within(Duration::from_secs(5), move || {
            handle.checkout_timeout(ms(200)).map(drop)
        })
        .unwrap_or(Err(Error::Timeout {
            waited: Duration::from_secs(5),
            state: None,
            cause: None,
        }));
        if got.is_ok() || began.elapsed() >= limit {
            return got;
        }
        thread::sleep(ms(20));
    }
}

// ---------------------------------------------------------------------------------------
// A start whose panic payload panics when dropped.

/// A start that panics with a payload whose own `Drop` panics: the start counts as failed, the
/// pool retries after `reconnect_delay`, and a checkout then gets a worker.
#[test]
fn a_start_that_panics_with_a_payload_whose_drop_panics_leaks_no_claim() {
    quiet_panics();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let pool = Pool::builder()
        .size(1)
        .reconnect_delay(Duration::from_millis(50))
        .build_unchecked(move || {
            if counted.fetch_add(1, Ordering::SeqCst) == 0 {
                std::panic::panic_any(PayloadWhoseDropPanics);
            }
            Ok(0u32)
        })
        .unwrap();
    let got = checks_out_within(&pool, Duration::from_secs(3));
    let recovered = eventually(Duration::from_secs(2), || pool.stats().starting == 0);
    assert!(
        got.is_ok() && recovered,
        "after a start panicked with such a payload: checkout {got:?}, {:?}, {} starts",
        pool.stats(),
        calls.load(Ordering::SeqCst)
    );
}

/// An `on_event` callback that panics with such a payload, on the start thread, after each
/// restart: more restarts than there are start threads still each get a worker started.
#[test]
fn an_event_callback_panicking_with_a_payload_whose_drop_panics_does_not_stop_the_starts() {
    quiet_panics();
    let pool = Pool::builder()
        .size(1)
        .on_event(|event| {
            if *event == Event::WorkerRestarted {
                std::panic::panic_any(PayloadWhoseDropPanics);
            }
        })
        .build(|| Ok(0u32))
        .unwrap();
    // Each discard makes the pool start a replacement, and report it.
    for round in 0..12 {
        let handle = pool.clone();
        let got = within(Duration::from_secs(5), move || {
            handle
                .checkout_timeout(Duration::from_secs(2))
                .map(Lease::discard)
        });
        assert!(
            matches!(got, Some(Ok(()))),
            "round {round}: checkout {got:?}, {:?}",
            pool.stats()
        );
    }
}

// ---------------------------------------------------------------------------------------
// Workers that are dead on arrival.

/// An actor whose connection fails as soon as it is used: its handler panics.
struct DiesAtOnce;

impl Behaviour for DiesAtOnce {
    type Request = ();
    type Reply = ();
    fn handle_call(&mut self, _: ()) {
        panic!("the connection fails on purpose");
    }
}

/// Past this many starts the start closures below fail instead, to spare the machine: a
/// correct pool never gets near it.
const START_CAP: usize = 500;

/// Every worker is an actor whose connection fails right after it opens: a fresh worker that
/// is dead counts as a failed start (with a cause), so the pool restarts them once per
/// `reconnect_delay`, and the checkout fails with a cause.
#[test]
fn workers_dead_on_arrival_are_restarted_once_per_reconnect_delay_not_in_a_tight_loop() {
    quiet_panics();
    let starts = Arc::new(AtomicUsize::new(0));
    let counted = starts.clone();
    let pool = Pool::builder()
        .size(2)
        .reconnect_delay(Duration::from_millis(100))
        .is_alive(Actor::is_alive)
        .build_unchecked(move || -> Result<Actor<DiesAtOnce>, BoxError> {
            if counted.fetch_add(1, Ordering::SeqCst) >= START_CAP {
                return Err("start cap reached".into());
            }
            let actor = Actor::spawn(DiesAtOnce)?;
            actor.cast(())?;
            // Dead before the pool gets it: the connection failed right after it opened.
            let deadline = Instant::now() + Duration::from_secs(2);
            while actor.is_alive() && Instant::now() < deadline {
                thread::yield_now();
            }
            Ok(actor)
        })
        .unwrap();
    let handle = pool.clone();
    let got = within(Duration::from_secs(5), move || {
        handle.checkout_timeout(Duration::from_secs(1)).map(drop)
    });
    let made = starts.load(Ordering::SeqCst);
    drop(pool);
    let err = match got {
        Some(Err(err)) => err,
        other => panic!("the checkout of dead workers: {other:?}"),
    };
    // Two at first, then one batch per reconnect_delay: about a dozen in a second.
    assert!(
        made <= 40,
        "{made} starts during one 1 s checkout with reconnect_delay 100 ms (it ended with {err:?})"
    );
    assert!(
        err.cause().is_some(),
        "the checkout failed with {err:?}, no cause, after {made} dead workers"
    );
}

/// The same with plain workers that fail their first (every) checkout check.
#[test]
fn workers_failing_their_first_check_are_restarted_once_per_reconnect_delay_not_in_a_tight_loop() {
    let starts = Arc::new(AtomicUsize::new(0));
    let counted = starts.clone();
    let pool = Pool::builder()
        .size(2)
        .reconnect_delay(Duration::from_millis(100))
        .test_on_checkout(|_: &mut u32| false)
        .build_unchecked(move || -> Result<u32, BoxError> {
            if counted.fetch_add(1, Ordering::SeqCst) >= START_CAP {
                return Err("start cap reached".into());
            }
            Ok(0)
        })
        .unwrap();
    let handle = pool.clone();
    let got = within(Duration::from_secs(5), move || {
        handle.checkout_timeout(Duration::from_secs(1)).map(drop)
    });
    let made = starts.load(Ordering::SeqCst);
    drop(pool);
    let err = match got {
        Some(Err(err)) => err,
        other => panic!("the checkout of workers failing their check: {other:?}"),
    };
    assert!(
        made <= 40,
        "{made} starts during one 1 s checkout with reconnect_delay 100 ms (it ended with {err:?})"
    );
    assert!(
        err.cause().is_some(),
        "the checkout failed with {err:?}, no cause, after {made} failed checks"
    );
}

// ---------------------------------------------------------------------------------------
// A failing check on a worker leased before, while the start backoff runs.

#[derive(Debug)]
struct Conn {
    id: usize,
}

/// A fresh worker fails its first check (the pool backs off as after a failed start); then a
/// worker that was leased before fails its check. It must be replaced all the same: every
/// start succeeds, so a checkout gets a worker rather than `Disconnected`.
#[test]
fn a_failing_check_on_a_worker_leased_before_is_replaced_while_every_start_succeeds() {
    let bad: Arc<Mutex<HashSet<usize>>> = Arc::new(Mutex::new(HashSet::from([2])));
    let next = Arc::new(AtomicUsize::new(0));
    let checked = bad.clone();
    let numbered = next.clone();
    let pool = Pool::builder()
        .size(2)
        .reconnect_delay(Duration::from_secs(1))
        .test_on_checkout(move |conn: &mut Conn| !checked.lock().unwrap().contains(&conn.id))
        .build(move || {
            Ok(Conn {
                id: numbered.fetch_add(1, Ordering::SeqCst),
            })
        })
        .unwrap();
    // Both workers leased once.
    let kept = pool.checkout().unwrap();
    let other = pool.checkout().unwrap();
    // The replacement of `other` (worker 2) fails its first check.
    Lease::discard(other);
    assert!(
        eventually(Duration::from_secs(5), || pool.stats().free == 1),
        "the replacement did not start: {:?}",
        pool.stats()
    );
    let fresh = pool.try_checkout();
    // Now `kept`, leased before, goes bad while it is free.
    bad.lock().unwrap().insert(kept.id);
    drop(kept);
    let handle = pool.clone();
    let got = within(Duration::from_secs(8), move || {
        handle
            .checkout_timeout(Duration::from_secs(5))
            .map(|conn| conn.id)
    });
    drop(fresh);
    assert!(
        matches!(got, Some(Ok(_))),
        "every start succeeded, yet the checkout got {got:?}; {} starts, {:?}",
        next.load(Ordering::SeqCst),
        pool.stats()
    );
}

// ---------------------------------------------------------------------------------------
// `build` when only the first start fails.

/// `build` fails only when no start at all succeeded, after trying every claimed start: one
/// failed start must not drop the other nine.
#[test]
fn build_succeeds_when_only_the_first_of_ten_starts_fails() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let built = within(Duration::from_secs(10), move || {
        Pool::builder()
            .size(10)
            .reconnect_delay(Duration::from_secs(30))
            .build(move || -> Result<u32, BoxError> {
                if counted.fetch_add(1, Ordering::SeqCst) == 0 {
                    return Err("the first start fails".into());
                }
                // The others take a while: no start thread gets to a second claim before
                // the first start has failed.
                thread::sleep(ms(50));
                Ok(0)
            })
            .map(|pool| (pool.stats(), pool))
    })
    .expect("build returned");
    let (stats, pool) = match built {
        Ok(built) => built,
        Err(err) => panic!(
            "build failed with {err:?} after {} starts, nine of which would have succeeded",
            calls.load(Ordering::SeqCst)
        ),
    };
    assert!(
        stats.size >= 9,
        "build returned with {stats:?} after {} starts: every claim should have been tried",
        calls.load(Ordering::SeqCst)
    );
    drop(pool);
}

// ---------------------------------------------------------------------------------------
// One on-demand checkout, one start.

/// A lazy pool, one blocking checkout: one worker is opened for it. The reaper, asked for a
/// round by the waiting checkout, must not count that checkout as still unserved once its
/// worker has been delivered (the race depends on how long a start takes, so the starts take
/// a few different times).
#[test]
fn a_checkout_that_opens_a_worker_on_demand_opens_exactly_one() {
    let trials = 80;
    let mut doubled = Vec::new();
    for trial in 0..trials {
        let start_takes = Duration::from_micros([0, 10, 20, 30, 40, 60][trial % 6]);
        let starts = Arc::new(AtomicUsize::new(0));
        let counted = starts.clone();
        let pool = Pool::builder()
            .size(4)
            .min_idle(0)
            .build(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                thread::sleep(start_takes);
                Ok(0u32)
            })
            .unwrap();
        // The reaper's first round is over.
        thread::sleep(ms(5));
        let lease = pool
            .checkout_timeout(Duration::from_secs(2))
            .expect("the on-demand checkout");
        // Room for a second start to show up.
        thread::sleep(ms(15));
        let made = starts.load(Ordering::SeqCst);
        if made != 1 {
            doubled.push((trial, made, pool.stats()));
        }
        drop(lease);
    }
    // 0.2 doubled 10-60 % of trials. A narrow window remains (1 trial in 80 seen in one CI
    // run on a loaded machine, none in most runs), so two are tolerated.
    assert!(
        doubled.len() <= 2,
        "{} of {trials} single on-demand checkouts started more than one worker; first: {:?}",
        doubled.len(),
        doubled.first()
    );
}

// ---------------------------------------------------------------------------------------
// No start after close.

/// A pool with many slow starts queued, and the count of starts that began.
fn slow_starting_pool() -> (Pool<u32>, Arc<AtomicUsize>) {
    let began = Arc::new(AtomicUsize::new(0));
    let counted = began.clone();
    let pool = Pool::builder()
        .size(64)
        .build_unchecked(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            thread::sleep(Duration::from_millis(20));
            Ok(0u32)
        })
        .unwrap();
    // The first starts are under way, most are still queued.
    assert!(eventually(Duration::from_secs(2), || began
        .load(Ordering::SeqCst)
        >= 2));
    (pool, began)
}

/// Closing the pool (here by dropping its last handle) cancels the starts still queued.
#[test]
fn no_start_begins_after_the_last_handle_is_dropped() {
    let (pool, began) = slow_starting_pool();
    drop(pool);
    let at_drop = began.load(Ordering::SeqCst);
    thread::sleep(Duration::from_millis(600));
    let after = began.load(Ordering::SeqCst) - at_drop;
    assert_eq!(
        after, 0,
        "{after} starts began after the last handle was dropped ({at_drop} before)"
    );
}

/// The same with `close`.
#[test]
fn no_start_begins_after_close_returns() {
    let (pool, began) = slow_starting_pool();
    pool.close();
    let at_close = began.load(Ordering::SeqCst);
    thread::sleep(Duration::from_millis(600));
    let after = began.load(Ordering::SeqCst) - at_close;
    assert_eq!(
        after,
        0,
        "{after} starts began after close() returned ({at_close} before); {:?}",
        pool.stats()
    );
}

// ---------------------------------------------------------------------------------------
// What `try_checkout` says.

/// A `try_checkout` opening a worker on its own thread while the pool is closed says
/// `Closed`, not `Overload`.
#[test]
fn try_checkout_racing_close_returns_closed() {
    let pool = Pool::builder()
        .size(1)
        .min_idle(0)
        .build(|| {
            thread::sleep(Duration::from_millis(300));
            Ok(0u32)
        })
        .unwrap();
    let (started, in_start) = mpsc::channel();
    let handle = pool.clone();
    let caller = thread::spawn(move || {
        started.send(()).unwrap();
        // Opens a worker on this thread (the pool has room), for 300 ms.
        handle.try_checkout().map(drop)
    });
    in_start.recv().unwrap();
    assert!(eventually(Duration::from_secs(2), || pool.stats().starting == 1));
    pool.close();
    let got = within(Duration::from_secs(5), move || caller.join().unwrap());
    assert!(
        matches!(got, Some(Err(Error::Closed))),
        "try_checkout during close: {got:?}"
    );
}

/// Right after `build_unchecked`, with its starts under way and nothing leased, a
/// `try_checkout` must not say every worker is busy.
#[test]
fn try_checkout_right_after_build_unchecked_does_not_say_overload() {
    let pool = Pool::builder()
        .size(2)
        .build_unchecked(|| {
            thread::sleep(Duration::from_millis(500));
            Ok(0u32)
        })
        .unwrap();
    let handle = pool.clone();
    let got = within(Duration::from_secs(5), move || {
        let got = handle.try_checkout().map(drop);
        (got, handle.stats())
    })
    .expect("try_checkout returned");
    assert!(
        !matches!(got.0, Err(Error::Overload)),
        "right after build_unchecked, nothing open, nothing leased: try_checkout said {:?} \
         ({:?})",
        got.0,
        got.1
    );
}

// ---------------------------------------------------------------------------------------
// `resize` up while the start threads are busy.

/// `resize` up "returns once they started", also while every start thread is busy with
/// slow starts of its own.
#[test]
fn resize_up_returns_once_its_new_workers_started_while_the_start_threads_are_busy() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let pool = Pool::builder()
        .size(8)
        .build(move || {
            // The eight replacements (calls 8 to 15) are slow; every other start is quick.
            let n = counted.fetch_add(1, Ordering::SeqCst);
            if (8..16).contains(&n) {
                thread::sleep(Duration::from_millis(1500));
            }
            Ok(0u32)
        })
        .unwrap();
    let leases: Vec<_> = (0..8).map(|_| pool.checkout().unwrap()).collect();
    leases.into_iter().for_each(Lease::discard);
    // Eight slow replacements under way: every start thread is busy.
    assert!(
        eventually(Duration::from_secs(2), || calls.load(Ordering::SeqCst)
            >= 16),
        "{:?}",
        pool.stats()
    );
    let handle = pool.clone();
    let stats = within(Duration::from_secs(5), move || {
        handle.resize(12).unwrap();
        handle.stats()
    })
    .expect("resize returned");
    assert!(
        stats.size >= 4,
        "resize(12) returned before its four new workers started: {stats:?}"
    );
}

// ---------------------------------------------------------------------------------------
// `OnClientPanic::Discard` and a lease inside a `Drop` that runs during a panic.

/// `OnClientPanic::Discard` is for a client that panicked while holding its lease: a lease
/// taken and returned within a `Drop` that runs while an unrelated panic unwinds is released.
#[test]
fn a_lease_used_and_returned_inside_a_drop_during_an_unrelated_panic_is_released() {
    quiet_panics();
    let pool = Pool::builder()
        .size(1)
        .on_client_panic(OnClientPanic::Discard)
        .build(|| Ok(0u32))
        .unwrap();
    struct Cleanup<'a>(&'a Pool<u32>);
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            // A clean checkout, use and return, which happens to run while a panic unwinds.
            let mut lease = self.0.checkout().unwrap();
            *lease += 1;
            drop(lease);
        }
    }
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let _cleanup = Cleanup(&pool);
        panic!("an unrelated failure on purpose");
    }));
    assert!(outcome.is_err());
    let stats = pool.stats();
    assert_eq!(
        (stats.discards, stats.releases),
        (0, 1),
        "the lease did not panic, yet its worker was discarded: {stats:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Reuse order and `idle_timeout`.

/// r2d2's `idle_timeout_partial_use`: five workers, one client using one worker at a time
/// now and then; the four it does not need are closed after `idle_timeout`.
#[test]
fn idle_timeout_shrinks_a_lightly_used_pool_to_what_is_used() {
    let dropped = Arc::new(AtomicUsize::new(0));
    let left = Arc::new(AtomicUsize::new(5));
    let (count, budget) = (dropped.clone(), left.clone());
    struct Connection(Arc<AtomicUsize>);
    impl Drop for Connection {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let pool = Pool::builder()
        .size(5)
        .min_idle(0)
        .idle_timeout(Duration::from_millis(500))
        .reconnect_delay(Duration::from_secs(30))
        .build(move || -> Result<Connection, BoxError> {
            // Five connections at most, as in r2d2's test.
            if budget
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_err()
            {
                return Err("no more connections".into());
            }
            Ok(Connection(count.clone()))
        })
        .unwrap();
    // Open all five.
    let all: Vec<_> = (0..5).map(|_| pool.try_checkout().unwrap()).collect();
    drop(all);
    assert_eq!(pool.stats().size, 5);
    for _ in 0..12 {
        thread::sleep(Duration::from_millis(125));
        drop(pool.checkout_timeout(Duration::from_secs(2)).unwrap());
    }
    assert_eq!(
        (dropped.load(Ordering::SeqCst), pool.stats().size),
        (4, 1),
        "(dropped, open) after 1.5 s of one checkout every 125 ms with idle_timeout 500 ms: {:?}",
        pool.stats()
    );
}

/// The same with each checkout made on a thread of its own (one at a time).
#[test]
fn idle_timeout_shrinks_a_pool_used_one_checkout_at_a_time_from_fresh_threads() {
    let live = Arc::new(AtomicUsize::new(0));
    let alive = live.clone();
    let pool = Pool::builder()
        .size(5)
        .min_idle(0)
        .idle_timeout(Duration::from_millis(500))
        .build(move || {
            alive.fetch_add(1, Ordering::SeqCst);
            Ok(common::Tracked(alive.clone()))
        })
        .unwrap();
    let all: Vec<_> = (0..5).map(|_| pool.try_checkout().unwrap()).collect();
    drop(all);
    assert_eq!(pool.stats().size, 5);
    for _ in 0..12 {
        thread::sleep(Duration::from_millis(125));
        let handle = pool.clone();
        thread::spawn(move || drop(handle.checkout_timeout(Duration::from_secs(2)).unwrap()))
            .join()
            .unwrap();
    }
    let stats = pool.stats();
    assert_eq!(
        (stats.size, live.load(Ordering::SeqCst)),
        (1, 1),
        "(open, alive) after 1.5 s of one checkout every 125 ms, each from a fresh thread, with \
         idle_timeout 500 ms: {stats:?}"
    );
}

/// Reuse is last in, first out: a checkout on another thread gets the worker released last,
/// not the one idle longest.
#[test]
fn a_checkout_on_another_thread_gets_the_most_recently_released_worker() {
    let next = Arc::new(AtomicUsize::new(0));
    let numbered = next.clone();
    let pool = Pool::builder()
        .size(3)
        .build(move || {
            Ok(Conn {
                id: numbered.fetch_add(1, Ordering::SeqCst),
            })
        })
        .unwrap();
    let last = pool.checkout().unwrap().id;
    let handle = pool.clone();
    let other = thread::spawn(move || handle.checkout().unwrap().id)
        .join()
        .unwrap();
    assert_eq!(
        other, last,
        "another thread got worker {other}, not worker {last} released just before"
    );
}

// ---------------------------------------------------------------------------------------
// Checkouts while every start fails.

/// With every start failing, a blocking checkout waits for the next start attempt (within
/// its timeout) and fails with that attempt's cause, so a client that retries makes about one
/// failed checkout per `reconnect_delay` instead of spinning; `try_checkout` still fails at
/// once.
#[test]
fn a_client_retrying_checkouts_while_starts_fail_makes_one_failed_checkout_per_reconnect_delay() {
    let attempts = Arc::new(AtomicUsize::new(0));
    let counted = attempts.clone();
    let pool = Pool::builder()
        .size(2)
        .reconnect_delay(Duration::from_millis(50))
        .build_unchecked(move || -> Result<u32, BoxError> {
            counted.fetch_add(1, Ordering::SeqCst);
            Err("connection refused".into())
        })
        .unwrap();
    let handle = pool.clone();
    let outcome = within(Duration::from_secs(10), move || {
        let began = Instant::now();
        let mut failures = Vec::new();
        while began.elapsed() < Duration::from_millis(500) && failures.len() < 1000 {
            match handle.checkout_timeout(Duration::from_secs(5)) {
                Ok(_) => panic!("every start fails"),
                Err(err) => failures.push(err),
            }
        }
        failures
    })
    .expect("the client's loop ended");
    let failed = outcome.len();
    let wrong: Vec<_> = outcome
        .iter()
        .filter(|err| {
            !matches!(err, Error::Disconnected { cause, .. } if cause.to_string() == "connection refused")
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "failures other than Disconnected(connection refused): {:?}",
        wrong.first()
    );
    // One per start attempt (every 50 ms, for 500 ms), and a few to spare.
    assert!(
        failed <= 20,
        "{failed} failed checkouts in 500 ms with reconnect_delay 50 ms ({} start attempts)",
        attempts.load(Ordering::SeqCst)
    );
    // A non-blocking checkout still fails at once, with the cause.
    let handle = pool.clone();
    let tried = within(Duration::from_secs(2), move || {
        handle.try_checkout().map(drop)
    });
    assert!(
        matches!(tried, Some(Err(Error::Disconnected { .. }))),
        "try_checkout while starts fail: {tried:?}"
    );
}
