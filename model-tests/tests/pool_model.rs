//! A state-machine property test of `Pool<W>` against a small reference model.
//!
//! proptest generates a pool configuration, an initial fault plan and a list of steps; each
//! step gives up to three client threads a few operations each (every kind of checkout,
//! release, discard, take, hold, client panic, a checkout inside a `Drop` during an unrelated
//! panic, `map`, `resize`, waiting for the reaper, `close`, and `SetFault` ops that change
//! what the user callbacks do: the start closure, `test_on_checkout`, `is_broken`, `reset`,
//! `on_event`, and the workers' `Drop`, each of which may also call back into the pool:
//! `stats()`, `Debug`, a `try_checkout`). The client threads live for the whole case and keep
//! the leases they hold from step to step.
//!
//! A tracker shared with the workers and callbacks sees every worker created, leased and
//! dropped, and every start. Each operation's result is checked against the rules a correct
//! pool keeps whatever the timing (the error variants, `Closed` after close, `Disconnected`
//! only when a start failed, `Overload` only when every worker is really leased, no double
//! lease, no hook on a leased worker, no start after close); a step alone on one thread with
//! clean callbacks is also checked against what the model predicts exactly. After each step
//! the pool must settle (bounded polling) and its counts must match the model; at the end,
//! after close or the drop of the last handle, every worker created was dropped exactly once
//! and the pool's threads are gone.
//!
//! `CYLINDER_MODEL_CASES` (default 32) runs more cases; `CYLINDER_MODEL_AVOID` (a comma list
//! of `nul`, `bad-payload`, `slow-drop`, `doa`, `fail-first`, `unwind`, `close`, `reenter`,
//! `fuse`, `start-after-close`, `double-start`, `resize`,
//! `refill`, `close-race`)
//! leaves out the inputs that reach a bug already known, to look for the next one.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use cylinder::{BoxError, Error, Lease, OnClientPanic, OwnedLease, Pool, PoolStats};
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestError, TestRunner};

/// How long a quiet point polls for the pool to settle.
const SETTLE: Duration = Duration::from_secs(2);
/// How long a step's client threads may take before the case fails as hung.
const HUNG: Duration = Duration::from_secs(10);
/// The timeout a checkout gets when the model says it must succeed.
const SURE: Duration = Duration::from_secs(2);
const CLIENTS: usize = 3;

// ---------------------------------------------------------------------------------------
// The generated input.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StartFault {
    Ok,
    Err,
    Panic,
    /// Panics with a payload whose own `Drop` panics.
    BadPayload,
    /// The worker's `Drop` panics.
    DropPanics,
    /// Blocks `slow_ms` first (past `start_timeout` if that is shorter).
    Slow,
    /// Blocks, and the worker's `Drop` panics.
    SlowDropPanics,
    /// The worker fails its first (and every) check.
    DeadOnArrival,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CheckFault {
    Pass,
    Err,
    Panic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BrokenFault {
    No,
    Yes,
    Panic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResetFault {
    Ok,
    Err,
    Panic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventFault {
    Quiet,
    Panic,
    /// Calls `stats()` on the pool.
    Stats,
    /// Calls `try_checkout()` on the pool and releases what it got.
    TryCheckout,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Start(StartFault),
    /// The next start fails (on top of the start fault).
    FailNextStart,
    Check(CheckFault),
    Broken(BrokenFault),
    Reset(ResetFault),
    Event(EventFault),
    WorkerDropPanics(bool),
    /// The checkout check, `is_broken`, `reset` and the workers' `Drop` call back into the
    /// pool (`stats()`, `Debug`, a `try_checkout` released at once), as `on_event`'s
    /// `TryCheckout` does.
    Reenter(bool),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    /// `checkout()` (the pool's `checkout_timeout`).
    Checkout,
    /// `checkout_timeout(ms)`.
    Timeout(u16),
    Try,
    Owned,
    /// `checkout_owned()`, the lease moved to another thread that ends it there.
    OwnedElsewhere,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Release,
    Discard,
    Take,
    /// Kept by the client thread across steps (until an `EndHeld`).
    Hold,
    /// The client panics holding it.
    Panic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Lease(How, Fate),
    Transaction {
        panic: bool,
    },
    /// A checkout and normal release inside a `Drop` that runs during an unrelated panic.
    CheckoutInUnwind,
    /// Ends this thread's oldest held lease.
    EndHeld(Fate),
    Map {
        panic: bool,
    },
    Resize(usize),
    /// Lets time pass (reaper rounds, retries, late starts).
    Wait(u16),
    Close,
    /// `drain` with a short timeout: closes like `Close`, then waits for the leases out.
    Drain,
    /// `evict_all`: every worker started before it is closed (a leased one when it comes
    /// back) and replaced.
    EvictAll,
    SetFault(Fault),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Name {
    Plain,
    WithNul,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Close,
    DropHandles,
    /// Drop every handle while owned leases are still out, then the leases.
    DropHandlesKeepOwned,
}

#[derive(Debug, Clone)]
struct Config {
    size: usize,
    min_idle: Option<usize>,
    max_overflow: usize,
    start_timeout_ms: Option<u64>,
    slow_ms: u64,
    /// How long every start takes (a connection's latency), in ms.
    start_ms: u64,
    reconnect_ms: u64,
    checkout_timeout_ms: u64,
    discard_on_panic: bool,
    check: bool,
    is_broken: bool,
    reset: bool,
    events: bool,
    unchecked: bool,
    name: Name,
    /// Faults set before the pool is built.
    initial: Vec<Fault>,
    /// How many of the first starts fail.
    fail_first: usize,
}

#[derive(Debug, Clone)]
struct Case {
    config: Config,
    /// Each step: the ops of each client thread, run at once.
    steps: Vec<Vec<Vec<Op>>>,
    end: End,
}

fn start_fault() -> impl Strategy<Value = StartFault> {
    prop_oneof![
        6 => Just(StartFault::Ok),
        3 => Just(StartFault::Err),
        1 => Just(StartFault::Panic),
        1 => Just(StartFault::BadPayload),
        1 => Just(StartFault::DropPanics),
        2 => Just(StartFault::Slow),
        1 => Just(StartFault::SlowDropPanics),
        2 => Just(StartFault::DeadOnArrival),
    ]
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        4 => start_fault().prop_map(Fault::Start),
        1 => Just(Fault::FailNextStart),
        2 => prop_oneof![
            Just(CheckFault::Pass),
            Just(CheckFault::Err),
            Just(CheckFault::Panic)
        ]
        .prop_map(Fault::Check),
        2 => prop_oneof![
            Just(BrokenFault::No),
            Just(BrokenFault::Yes),
            Just(BrokenFault::Panic)
        ]
        .prop_map(Fault::Broken),
        2 => prop_oneof![Just(ResetFault::Ok), Just(ResetFault::Err), Just(ResetFault::Panic)]
            .prop_map(Fault::Reset),
        2 => prop_oneof![
            Just(EventFault::Quiet),
            Just(EventFault::Panic),
            Just(EventFault::Stats),
            Just(EventFault::TryCheckout)
        ]
        .prop_map(Fault::Event),
        1 => any::<bool>().prop_map(Fault::WorkerDropPanics),
        1 => any::<bool>().prop_map(Fault::Reenter),
    ]
}

fn fate() -> impl Strategy<Value = Fate> {
    prop_oneof![
        5 => Just(Fate::Release),
        2 => Just(Fate::Discard),
        1 => Just(Fate::Take),
        2 => Just(Fate::Hold),
        1 => Just(Fate::Panic),
    ]
}

fn how() -> impl Strategy<Value = How> {
    prop_oneof![
        2 => Just(How::Checkout),
        3 => prop_oneof![4 => Just(1u16), 4 => Just(5), 3 => Just(15), 1 => Just(300)]
            .prop_map(How::Timeout),
        3 => Just(How::Try),
        1 => Just(How::Owned),
        1 => Just(How::OwnedElsewhere),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (how(), fate()).prop_map(|(how, fate)| Op::Lease(how, fate)),
        2 => any::<bool>().prop_map(|panic| Op::Transaction { panic }),
        1 => Just(Op::CheckoutInUnwind),
        3 => fate().prop_map(Op::EndHeld),
        1 => any::<bool>().prop_map(|panic| Op::Map { panic }),
        3 => (1usize..=4).prop_map(Op::Resize),
        2 => (1u16..=25).prop_map(Op::Wait),
        2 => Just(Op::Close),
        1 => Just(Op::Drain),
        1 => Just(Op::EvictAll),
        3 => fault().prop_map(Op::SetFault),
    ]
}

fn config() -> impl Strategy<Value = Config> {
    (
        (
            1usize..=3,
            prop_oneof![Just(None), Just(Some(0)), (1usize..=3).prop_map(Some)],
            0usize..=1,
            prop_oneof![
                3 => Just(None),
                1 => Just(Some(5)),
                1 => Just(Some(12)),
                1 => Just(Some(30))
            ],
            (
                prop_oneof![Just(3u64), Just(12), Just(25)],
                prop_oneof![Just(0u64), Just(1), Just(3)],
            ),
            5u64..=20,
            prop_oneof![Just(10u64), Just(40)],
            any::<bool>(),
        ),
        (
            prop_oneof![3 => Just(true), 1 => Just(false)],
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            prop_oneof![3 => Just(false), 1 => Just(true)],
            prop_oneof![9 => Just(Name::Plain), 1 => Just(Name::WithNul)],
            proptest::collection::vec(fault(), 0..=2),
            prop_oneof![6 => Just(0usize), 1 => Just(1), 1 => Just(2)],
        ),
    )
        .prop_map(
            |(
                (
                    size,
                    min_idle,
                    max_overflow,
                    start_timeout_ms,
                    (slow_ms, start_ms),
                    reconnect_ms,
                    checkout_timeout_ms,
                    discard_on_panic,
                ),
                (check, is_broken, reset, events, unchecked, name, initial, fail_first),
            )| Config {
                size,
                min_idle: min_idle.map(|m| m.min(size)),
                max_overflow,
                start_timeout_ms,
                slow_ms,
                start_ms,
                reconnect_ms,
                checkout_timeout_ms,
                discard_on_panic,
                check,
                is_broken,
                reset,
                events,
                unchecked,
                name,
                initial,
                fail_first,
            },
        )
}

fn case() -> impl Strategy<Value = Case> {
    (
        config(),
        proptest::collection::vec(
            proptest::collection::vec(proptest::collection::vec(op(), 0..=3), 1..=CLIENTS),
            1..=6,
        ),
        prop_oneof![
            Just(End::Close),
            Just(End::DropHandles),
            Just(End::DropHandlesKeepOwned)
        ],
    )
        .prop_map(|(config, steps, end)| Case { config, steps, end })
}

// ---------------------------------------------------------------------------------------
// What the tests leave out on request (`CYLINDER_MODEL_AVOID`).

/// How soon after `close` returned a start may still begin (one at most): its caller
/// looked at the pool just before the close.
const CLOSE_RACE_GRACE: Duration = Duration::from_millis(20);

/// How many workers above the demand the known `try_checkout` race may open (see
/// `demand_slack`).
const TRY_RACE_SLACK: usize = 2;

fn avoided(tag: &str) -> bool {
    static AVOID: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    AVOID
        .get_or_init(|| {
            std::env::var("CYLINDER_MODEL_AVOID")
                .map(|list| list.split(',').map(|t| t.trim().to_string()).collect())
                .unwrap_or_default()
        })
        .iter()
        .any(|t| t == tag)
}

/// The case with the inputs the user asked to avoid replaced by harmless ones.
fn without_avoided(mut case: Case) -> Case {
    let fix_fault = |fault: &mut Fault| match fault {
        Fault::Start(StartFault::BadPayload) if avoided("bad-payload") => {
            *fault = Fault::Start(StartFault::Panic)
        }
        Fault::Start(StartFault::SlowDropPanics) if avoided("slow-drop") => {
            *fault = Fault::Start(StartFault::Slow)
        }
        Fault::Start(StartFault::DeadOnArrival) if avoided("doa") => {
            *fault = Fault::Start(StartFault::Ok)
        }
        Fault::Event(EventFault::TryCheckout) if avoided("reenter") => {
            *fault = Fault::Event(EventFault::Stats)
        }
        Fault::Reenter(true) if avoided("reenter") => *fault = Fault::Reenter(false),
        _ => {}
    };
    if avoided("nul") {
        case.config.name = Name::Plain;
    }
    if avoided("fail-first") {
        case.config.fail_first = 0;
        case.config.initial.retain(|f| *f != Fault::FailNextStart);
    }
    case.config.initial.iter_mut().for_each(fix_fault);
    for step in &mut case.steps {
        for ops in step.iter_mut() {
            for op in ops.iter_mut() {
                match op {
                    Op::SetFault(fault) => fix_fault(fault),
                    Op::CheckoutInUnwind if avoided("unwind") => *op = Op::Wait(1),
                    Op::Close | Op::Drain if avoided("close") => *op = Op::Wait(1),
                    Op::Resize(_) if avoided("resize") => *op = Op::Wait(1),
                    _ => {}
                }
            }
        }
    }
    case
}

// ---------------------------------------------------------------------------------------
// The worker, the tracker and the fault plan.

struct Status {
    held: bool,
    doa: bool,
}

/// Shared by the test, the workers and the pool's callbacks.
struct Env {
    // The fault plan.
    start: AtomicU8,
    check: AtomicU8,
    broken: AtomicU8,
    reset: AtomicU8,
    event: AtomicU8,
    drop_panics: AtomicBool,
    reenter: AtomicBool,
    fail_next: AtomicUsize,
    /// A fault that may make workers unavailable was set since the last quiet point.
    dirty: AtomicBool,
    slow: Duration,
    latency: Duration,
    start_timeout: Option<Duration>,
    /// The pool's reconnect_delay, with a margin.
    reconnect: Duration,
    // The tracker.
    next_id: AtomicU64,
    /// Workers with an id below this were created before the last `evict_all` began.
    evicted_below: AtomicU64,
    workers: Mutex<HashMap<u64, Status>>,
    created: AtomicUsize,
    dropped: AtomicUsize,
    doa_created: AtomicUsize,
    in_start: AtomicUsize,
    starts: AtomicUsize,
    starts_after_close: AtomicUsize,
    /// Starts that began within `CLOSE_RACE_GRACE` of the close (see `start`).
    starts_in_close_race: AtomicUsize,
    /// Starts that failed or may have (slow ones under `start_timeout`), counted as they begin.
    fail_marks: AtomicUsize,
    last_fail: Mutex<Option<Instant>>,
    /// When `close` returned (or the last handle went).
    closed_at: Mutex<Option<Instant>>,
    in_callback: AtomicUsize,
    callback_checkouts: AtomicU64,
    /// The on_event callback does not check out (at quiet points).
    paused: AtomicBool,
    violations: Mutex<Vec<String>>,
    /// The pool, for the `on_event` callback's calls back into it.
    slot: Mutex<Option<Pool<W>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn code<T: Copy + PartialEq>(all: &[T], value: T) -> u8 {
    all.iter().position(|v| *v == value).unwrap() as u8
}

const STARTS: [StartFault; 8] = [
    StartFault::Ok,
    StartFault::Err,
    StartFault::Panic,
    StartFault::BadPayload,
    StartFault::DropPanics,
    StartFault::Slow,
    StartFault::SlowDropPanics,
    StartFault::DeadOnArrival,
];
const CHECKS: [CheckFault; 3] = [CheckFault::Pass, CheckFault::Err, CheckFault::Panic];
const BROKENS: [BrokenFault; 3] = [BrokenFault::No, BrokenFault::Yes, BrokenFault::Panic];
const RESETS: [ResetFault; 3] = [ResetFault::Ok, ResetFault::Err, ResetFault::Panic];
const EVENTS: [EventFault; 4] = [
    EventFault::Quiet,
    EventFault::Panic,
    EventFault::Stats,
    EventFault::TryCheckout,
];

impl Env {
    fn new(config: &Config) -> Env {
        Env {
            start: AtomicU8::new(0),
            check: AtomicU8::new(0),
            broken: AtomicU8::new(0),
            reset: AtomicU8::new(0),
            event: AtomicU8::new(0),
            drop_panics: AtomicBool::new(false),
            reenter: AtomicBool::new(false),
            fail_next: AtomicUsize::new(config.fail_first),
            dirty: AtomicBool::new(config.fail_first > 0),
            slow: Duration::from_millis(config.slow_ms),
            latency: Duration::from_millis(config.start_ms),
            start_timeout: config.start_timeout_ms.map(Duration::from_millis),
            reconnect: Duration::from_millis(config.reconnect_ms + 5),
            next_id: AtomicU64::new(0),
            evicted_below: AtomicU64::new(0),
            workers: Mutex::new(HashMap::new()),
            created: AtomicUsize::new(0),
            dropped: AtomicUsize::new(0),
            doa_created: AtomicUsize::new(0),
            in_start: AtomicUsize::new(0),
            starts: AtomicUsize::new(0),
            starts_after_close: AtomicUsize::new(0),
            starts_in_close_race: AtomicUsize::new(0),
            fail_marks: AtomicUsize::new(0),
            last_fail: Mutex::new(None),
            closed_at: Mutex::new(None),
            in_callback: AtomicUsize::new(0),
            callback_checkouts: AtomicU64::new(0),
            paused: AtomicBool::new(false),
            violations: Mutex::new(Vec::new()),
            slot: Mutex::new(None),
        }
    }

    fn violate(&self, what: String) {
        lock(&self.violations).push(what);
    }

    fn violations(&self) -> Vec<String> {
        lock(&self.violations).clone()
    }

    fn start_fault(&self) -> StartFault {
        STARTS[self.start.load(SeqCst) as usize]
    }
    fn check_fault(&self) -> CheckFault {
        CHECKS[self.check.load(SeqCst) as usize]
    }
    fn broken_fault(&self) -> BrokenFault {
        BROKENS[self.broken.load(SeqCst) as usize]
    }
    fn reset_fault(&self) -> ResetFault {
        RESETS[self.reset.load(SeqCst) as usize]
    }
    fn event_fault(&self) -> EventFault {
        EVENTS[self.event.load(SeqCst) as usize]
    }

    fn set(&self, fault: Fault) {
        match fault {
            Fault::Start(f) => self.start.store(code(&STARTS, f), SeqCst),
            Fault::FailNextStart => {
                self.fail_next.fetch_add(1, SeqCst);
            }
            Fault::Check(f) => self.check.store(code(&CHECKS, f), SeqCst),
            Fault::Broken(f) => self.broken.store(code(&BROKENS, f), SeqCst),
            Fault::Reset(f) => self.reset.store(code(&RESETS, f), SeqCst),
            Fault::Event(f) => self.event.store(code(&EVENTS, f), SeqCst),
            Fault::WorkerDropPanics(on) => self.drop_panics.store(on, SeqCst),
            Fault::Reenter(on) => self.reenter.store(on, SeqCst),
        }
        if !self.plan_clean() {
            self.dirty.store(true, SeqCst);
        }
    }

    /// Starts succeed (in time), as far as the plan goes.
    fn starts_clean(&self) -> bool {
        // Under `start_timeout` any start may count as failed: its thread may come late.
        let start_ok = matches!(
            self.start_fault(),
            StartFault::Ok | StartFault::DropPanics | StartFault::Slow | StartFault::SlowDropPanics
        );
        // A new worker's first check runs at its start: a failing check fails the start.
        start_ok
            && self.start_timeout.is_none()
            && self.fail_next.load(SeqCst) == 0
            && self.check_fault() == CheckFault::Pass
    }

    /// No callback makes a worker unavailable: starts succeed, checks pass, returns keep
    /// the worker, no callback takes a worker.
    fn plan_clean(&self) -> bool {
        self.starts_clean()
            && self.check_fault() == CheckFault::Pass
            && self.broken_fault() == BrokenFault::No
            && self.reset_fault() == ResetFault::Ok
            && !self.reenters()
    }

    /// Some callback takes a worker (a `try_checkout` from user code).
    fn reenters(&self) -> bool {
        self.event_fault() == EventFault::TryCheckout || self.reenter.load(SeqCst)
    }

    fn doa_alive(&self) -> usize {
        lock(&self.workers).values().filter(|s| s.doa).count()
    }

    /// The plan is clean now and was since the last quiet point, and no dead worker waits
    /// in the pool.
    fn clean(&self) -> bool {
        self.plan_clean() && !self.dirty.load(SeqCst) && self.doa_alive() == 0
    }

    /// The pool gave up on a start under `start_timeout`: a start the pool may count as
    /// failed however quick the closure, if its thread came late.
    fn timed_out(&self, cause: &cylinder::Cause) -> bool {
        let cause = cause.to_string();
        self.start_timeout.is_some()
            && (cause.contains("did not finish within") || cause.contains("past start_timeout"))
    }

    fn is_closed(&self) -> bool {
        lock(&self.closed_at).is_some()
    }

    fn closed_at(&self) -> Option<Instant> {
        *lock(&self.closed_at)
    }

    fn mark_closed(&self) {
        lock(&self.closed_at).get_or_insert_with(Instant::now);
    }

    fn mark_fail(&self) {
        self.fail_marks.fetch_add(1, SeqCst);
        *lock(&self.last_fail) = Some(Instant::now());
    }

    fn new_worker(self: &Arc<Env>, doa: bool, drop_panics: bool) -> W {
        let id = self.next_id.fetch_add(1, SeqCst);
        lock(&self.workers).insert(id, Status { held: false, doa });
        self.created.fetch_add(1, SeqCst);
        if doa {
            self.doa_created.fetch_add(1, SeqCst);
        }
        W {
            id,
            drop_panics,
            env: self.clone(),
        }
    }

    /// A client got worker `id`.
    fn acquire(&self, id: u64, how: &str) {
        let mut workers = lock(&self.workers);
        match workers.get_mut(&id) {
            None => {
                drop(workers);
                self.violate(format!("{how}: leased worker {id}, which is not alive"));
            }
            Some(status) if status.held => {
                drop(workers);
                self.violate(format!("{how}: worker {id} leased to two holders at once"));
            }
            Some(status) => status.held = true,
        }
    }

    /// A client is about to let worker `id` go.
    fn release(&self, id: u64) {
        if let Some(status) = lock(&self.workers).get_mut(&id) {
            status.held = false;
        }
    }

    /// A hook or `map` got worker `id`: it must not be leased.
    fn touch(&self, id: u64, hook: &str) {
        let held = lock(&self.workers).get(&id).map(|s| s.held);
        match held {
            Some(false) => {}
            Some(true) => self.violate(format!("{hook} ran on worker {id} while it is leased")),
            None => self.violate(format!("{hook} ran on worker {id}, which is not alive")),
        }
    }

    fn pool(&self) -> Option<Pool<W>> {
        lock(&self.slot).clone()
    }

    fn clear_slot(&self) {
        let pool = lock(&self.slot).take();
        drop(pool);
    }
}

struct W {
    id: u64,
    drop_panics: bool,
    env: Arc<Env>,
}

impl Drop for W {
    fn drop(&mut self) {
        let status = lock(&self.env.workers).remove(&self.id);
        match status {
            None => self
                .env
                .violate(format!("worker {} dropped twice", self.id)),
            Some(status) if status.held => self
                .env
                .violate(format!("worker {} dropped while leased", self.id)),
            Some(_) => {}
        }
        self.env.dropped.fetch_add(1, SeqCst);
        maybe_call_back(&self.env);
        if (self.drop_panics || self.env.drop_panics.load(SeqCst)) && !thread::panicking() {
            panic!("worker drop on purpose");
        }
    }
}

/// A panic payload whose `Drop` panics.
struct BadPayload;

impl Drop for BadPayload {
    fn drop(&mut self) {
        if !thread::panicking() {
            panic!("panic payload drop on purpose");
        }
    }
}

struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, SeqCst);
        Counted(count)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

fn start(env: &Arc<Env>) -> Result<W, BoxError> {
    let _running = Counted::new(&env.in_start);
    env.starts.fetch_add(1, SeqCst);
    if let Some(closed) = env.closed_at() {
        // One start whose caller looked at the pool just before it closed may call this a
        // moment after `close` returned (its thread preempted between the pool's last look
        // and the call): one such start, within the grace, is that race; any more, or a
        // later one, is a start the close did not stop.
        if closed.elapsed() > CLOSE_RACE_GRACE || env.starts_in_close_race.fetch_add(1, SeqCst) > 0
        {
            env.starts_after_close.fetch_add(1, SeqCst);
        }
    }
    let fail_next = env
        .fail_next
        .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let fault = if fail_next {
        StartFault::Err
    } else {
        env.start_fault()
    };
    if !env.latency.is_zero() {
        thread::sleep(env.latency);
    }
    match fault {
        StartFault::Ok => Ok(env.new_worker(false, false)),
        StartFault::Err => {
            env.mark_fail();
            Err("start failed on purpose".into())
        }
        StartFault::Panic => {
            env.mark_fail();
            panic!("start panicked on purpose")
        }
        StartFault::BadPayload => {
            env.mark_fail();
            std::panic::panic_any(BadPayload)
        }
        StartFault::DropPanics => Ok(env.new_worker(false, true)),
        StartFault::Slow | StartFault::SlowDropPanics => {
            if env.start_timeout.is_some() {
                env.mark_fail();
            }
            thread::sleep(env.slow);
            Ok(env.new_worker(false, fault == StartFault::SlowDropPanics))
        }
        StartFault::DeadOnArrival => Ok(env.new_worker(true, false)),
    }
}

thread_local! {
    static IN_CALLBACK: Cell<bool> = const { Cell::new(false) };
}

fn on_event(env: &Arc<Env>) {
    let _running = Counted::new(&env.in_callback);
    match env.event_fault() {
        EventFault::Quiet => {}
        EventFault::Panic => panic!("on_event on purpose"),
        EventFault::Stats => {
            if let Some(pool) = env.pool() {
                let _ = pool.stats();
            }
        }
        EventFault::TryCheckout => call_back(env),
    }
}

/// A callback calling back into its own pool: `stats()`, `Debug`, and a `try_checkout`
/// whose lease is released at once.
fn call_back(env: &Arc<Env>) {
    // Paused at quiet points: a callback that checks out on every event, with every lease
    // found broken, keeps the pool restarting workers for ever.
    if env.paused.load(SeqCst) || (thread::panicking() && avoided("unwind")) {
        return;
    }
    // The checkout's own check, or the pool's Overload event, would call back again,
    // without end.
    if IN_CALLBACK
        .try_with(|inside| inside.replace(true))
        .unwrap_or(true)
    {
        return;
    }
    if let Some(pool) = env.pool() {
        let _ = pool.stats();
        let _ = format!("{pool:?}");
        if let Ok(lease) = pool.try_checkout() {
            env.callback_checkouts.fetch_add(1, SeqCst);
            env.acquire(lease.id, "a callback's try_checkout");
            env.release(lease.id);
            drop(lease);
        }
    }
    let _ = IN_CALLBACK.try_with(|inside| inside.set(false));
}

/// `call_back` from the check, `is_broken`, `reset` or a worker's `Drop`, while the plan
/// says so.
fn maybe_call_back(env: &Arc<Env>) {
    if env.reenter.load(SeqCst) {
        call_back(env);
    }
}

fn build(env: &Arc<Env>, config: &Config) -> Result<Pool<W>, Error> {
    let mut builder = Pool::builder()
        .size(config.size)
        .max_overflow(config.max_overflow)
        .reconnect_delay(Duration::from_millis(config.reconnect_ms))
        .checkout_timeout(Duration::from_millis(config.checkout_timeout_ms))
        .on_client_panic(if config.discard_on_panic {
            OnClientPanic::Discard
        } else {
            OnClientPanic::Release
        })
        .name(match config.name {
            Name::Plain => "model",
            Name::WithNul => "mo\0del",
        });
    if let Some(min_idle) = config.min_idle {
        builder = builder.min_idle(min_idle);
    }
    if let Some(ms) = config.start_timeout_ms {
        builder = builder.start_timeout(Duration::from_millis(ms));
    }
    if config.check {
        let env = env.clone();
        // Checked before every lease, so every checkout meets the injected faults.
        builder = builder.check_after_idle(Duration::ZERO);
        builder = builder.test_on_checkout(move |w: &mut W| -> Result<(), BoxError> {
            env.touch(w.id, "test_on_checkout");
            maybe_call_back(&env);
            let doa = lock(&env.workers).get(&w.id).is_some_and(|s| s.doa);
            let fault = env.check_fault();
            if doa || fault != CheckFault::Pass {
                // The pool counts a failed check as a failed start when it is a new worker's
                // first (at its start) or comes before its first lease: marked for every
                // failed check, which the model cannot tell apart.
                env.mark_fail();
            }
            if doa {
                return Err("dead on arrival on purpose".into());
            }
            match fault {
                CheckFault::Pass => Ok(()),
                CheckFault::Err => Err("check failed on purpose".into()),
                CheckFault::Panic => panic!("check panicked on purpose"),
            }
        });
    }
    if config.is_broken {
        let env = env.clone();
        builder = builder.is_broken(move |w: &mut W| {
            env.touch(w.id, "is_broken");
            maybe_call_back(&env);
            match env.broken_fault() {
                BrokenFault::No => false,
                BrokenFault::Yes => true,
                BrokenFault::Panic => panic!("is_broken panicked on purpose"),
            }
        });
    }
    if config.reset {
        let env = env.clone();
        builder = builder.reset(move |w: &mut W| -> Result<(), BoxError> {
            env.touch(w.id, "reset");
            maybe_call_back(&env);
            match env.reset_fault() {
                ResetFault::Ok => Ok(()),
                ResetFault::Err => Err("reset failed on purpose".into()),
                ResetFault::Panic => panic!("reset panicked on purpose"),
            }
        });
    }
    if config.events {
        let env = env.clone();
        builder = builder.on_event(move |_| on_event(&env));
    }
    let env = env.clone();
    if config.unchecked {
        builder.build_unchecked(move || start(&env))
    } else {
        builder.build(move || start(&env))
    }
}

// ---------------------------------------------------------------------------------------
// The model.

/// What the model knows at the start of a step, given to each client thread.
#[derive(Clone, Copy)]
struct StepView {
    /// The only client with ops in this step.
    single: bool,
    /// Leases held by all clients.
    held: usize,
    max_size: usize,
    max_overflow: usize,
    min_idle: Option<usize>,
    checkout_timeout: Duration,
    discard_on_panic: bool,
    /// Lease-taking ops in the step, all threads.
    lease_ops: usize,
    /// Some thread maps, resizes, evicts all or sets a fault in this step.
    unsettled: bool,
    /// Some thread closes the pool in this step.
    closes: bool,
}

/// What a client thread did in a step.
#[derive(Default, Debug)]
struct Report {
    held: usize,
    owned_held: usize,
    checkouts: u64,
    discards: u64,
    takes: u64,
    resized_to: Option<usize>,
}

/// Whether setting `fault` keeps every worker available (see `Env::plan_clean`).
fn fault_keeps_clean(fault: Fault, config: &Config) -> bool {
    match fault {
        Fault::Start(start) => {
            config.start_timeout_ms.is_none()
                && matches!(
                    start,
                    StartFault::Ok
                        | StartFault::DropPanics
                        | StartFault::Slow
                        | StartFault::SlowDropPanics
                )
        }
        Fault::FailNextStart => false,
        Fault::Check(check) => check == CheckFault::Pass,
        Fault::Broken(broken) => broken == BrokenFault::No,
        Fault::Reset(reset) => reset == ResetFault::Ok,
        Fault::Event(event) => event != EventFault::TryCheckout,
        Fault::WorkerDropPanics(_) => true,
        Fault::Reenter(on) => !on,
    }
}

fn is_lease_op(op: &Op) -> bool {
    matches!(
        op,
        Op::Lease(..) | Op::Transaction { .. } | Op::CheckoutInUnwind
    )
}

/// A lease a client thread holds across steps.
enum Held<'p> {
    Borrowed(Lease<'p, W>),
    Owned(OwnedLease<W>),
}

impl Held<'_> {
    fn id(&self) -> u64 {
        match self {
            Held::Borrowed(lease) => lease.id,
            Held::Owned(lease) => lease.id,
        }
    }
}

enum Cmd {
    Run(Vec<Op>, StepView),
    /// Drop the borrowed leases and the pool handle; keep the owned leases if told.
    Finish {
        keep_owned: bool,
    },
    /// Drop everything left.
    Exit,
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string payload".to_string())
}

fn ours(payload: &(dyn std::any::Any + Send)) -> bool {
    panic_message(payload).contains("on purpose")
}

/// A client thread: runs its ops of each step, keeps the leases it holds.
fn client(env: Arc<Env>, pool: Pool<W>, cmds: mpsc::Receiver<Cmd>, replies: mpsc::Sender<Report>) {
    let mut held: Vec<Held<'_>> = Vec::new();
    let keep_owned = loop {
        match cmds.recv() {
            Ok(Cmd::Run(ops, view)) => {
                let held_at_start = held.len();
                let mut client = Client {
                    env: &env,
                    pool: &pool,
                    view,
                    report: Report::default(),
                    held: &mut held,
                    held_at_start,
                };
                for op in &ops {
                    // The step's other lease ops, this thread's earlier ones included.
                    let others = view.lease_ops - usize::from(is_lease_op(op));
                    let outcome = catch_unwind(AssertUnwindSafe(|| client.run(*op, others)));
                    if let Err(payload) = outcome {
                        env.violate(format!("{op:?} panicked: {}", panic_message(&*payload)));
                    }
                }
                let mut report = client.report;
                report.held = held.len();
                report.owned_held = held.iter().filter(|h| matches!(h, Held::Owned(_))).count();
                if replies.send(report).is_err() {
                    return;
                }
            }
            Ok(Cmd::Finish { keep_owned }) => break keep_owned,
            Ok(Cmd::Exit) | Err(_) => break false,
        }
    };
    let mut owned = Vec::new();
    for lease in held.drain(..) {
        match lease {
            Held::Owned(lease) if keep_owned => owned.push(lease),
            lease => {
                env.release(lease.id());
                drop(lease);
            }
        }
    }
    drop(held);
    drop(pool);
    if replies.send(Report::default()).is_err() {
        return;
    }
    let _ = cmds.recv();
    for lease in owned {
        env.release(lease.id);
        drop(lease);
    }
    let _ = replies.send(Report::default());
}

struct Client<'a, 'p> {
    env: &'a Arc<Env>,
    pool: &'p Pool<W>,
    view: StepView,
    report: Report,
    held: &'a mut Vec<Held<'p>>,
    held_at_start: usize,
}

/// A lease just taken.
enum Got<'p> {
    Borrowed(Lease<'p, W>),
    Owned(OwnedLease<W>),
}

impl<'p> Client<'_, 'p> {
    /// Leases held by every client now, as far as this thread knows (exact when single).
    fn held_now(&self) -> usize {
        self.view.held + self.held.len() - self.held_at_start
    }

    fn limit(&self) -> usize {
        self.view.max_size + self.view.max_overflow
    }

    fn run(&mut self, op: Op, others: usize) {
        match op {
            Op::Lease(how, fate) => self.lease(how, fate, others),
            Op::Transaction { panic } => self.transaction(panic, others),
            Op::CheckoutInUnwind => self.checkout_in_unwind(),
            Op::EndHeld(fate) => {
                if !self.held.is_empty() {
                    let lease = self.held.remove(0);
                    match lease {
                        Held::Borrowed(lease) => self.end(Got::Borrowed(lease), fate),
                        Held::Owned(lease) => self.end(Got::Owned(lease), fate),
                    }
                }
            }
            Op::Map { panic } => self.map(panic),
            Op::Resize(size) => self.resize(size),
            Op::Wait(ms) => thread::sleep(Duration::from_millis(ms.into())),
            Op::Close => {
                self.pool.close();
                self.env.mark_closed();
                if !self.pool.is_closed() {
                    self.env.violate("is_closed() false after close()".into());
                }
            }
            Op::Drain => {
                let drained = self.pool.drain(Duration::from_millis(30));
                self.env.mark_closed();
                if !self.pool.is_closed() {
                    self.env.violate("is_closed() false after drain()".into());
                }
                // Leases still out (or a start, or a slow close) make it time out; nothing
                // else may come of it.
                if let Err(err) = drained {
                    if !matches!(err, Error::Timeout { .. }) {
                        self.env.violate(format!("drain failed with {err:?}"));
                    }
                }
            }
            Op::EvictAll => {
                let below = self.env.next_id.load(SeqCst);
                self.pool.evict_all();
                self.env.evicted_below.fetch_max(below, SeqCst);
            }
            Op::SetFault(fault) => self.env.set(fault),
        }
    }

    /// The checks every error must pass, whatever the timing.
    fn check_error(
        &self,
        what: &str,
        err: &Error,
        began_closed: bool,
        began: Instant,
        waited: Option<Duration>,
    ) {
        let env = self.env;
        if began_closed {
            if !matches!(err, Error::Closed) {
                env.violate(format!("{what} after close returned {err:?}, not Closed"));
            }
            return;
        }
        match err {
            Error::Closed => {
                if !self.pool.is_closed() {
                    env.violate(format!("{what} returned Closed on an open pool"));
                }
            }
            Error::Disconnected { cause, .. } => {
                if env.fail_marks.load(SeqCst) == 0 && !env.timed_out(cause) {
                    env.violate(format!(
                        "{what} returned Disconnected ({cause}) though no start failed"
                    ));
                }
            }
            Error::Overload => {
                if waited.is_some() {
                    env.violate(format!("{what} (a blocking checkout) returned Overload"));
                }
            }
            Error::Timeout { waited: after, .. } => match waited {
                None => env.violate(format!("{what} (non-blocking) returned Timeout")),
                Some(timeout) => {
                    if *after != timeout {
                        env.violate(format!(
                            "{what}: Timeout({after:?}) for a wait of {timeout:?}"
                        ));
                    }
                    // A waiter still waiting when close returned is woken with Closed.
                    if let Some(closed) = env.closed_at() {
                        if closed + Duration::from_millis(100) < began + timeout {
                            env.violate(format!(
                                "{what} returned Timeout, not Closed, though close returned {:?} before its deadline",
                                began + timeout - closed
                            ));
                        }
                    }
                }
            },
            other => env.violate(format!("{what} returned {other:?}")),
        }
    }

    /// Overload only when every worker is really leased: with clean callbacks, no map,
    /// resize or fault in the step, the leases that can be out now are those held at its
    /// start and one per other lease op in it.
    fn check_overload(&self, what: &str, others: usize, before: &PoolStats, clean: bool) {
        if !clean || self.view.unsettled || (avoided("close-race") && self.view.closes) {
            return;
        }
        let most_out = self.view.held + others;
        if most_out < self.limit() {
            self.env.violate(format!(
                "{what} returned Overload with at most {most_out} of {} workers leased (closed since: {}; stats before {before:?})",
                self.limit(),
                self.env.is_closed()
            ));
        }
    }

    fn lease(&mut self, how: How, fate: Fate, others: usize) {
        let env = self.env;
        let began_closed = env.is_closed();
        let clean = env.clean() && !began_closed;
        let before = self.pool.stats();
        let held = self.held_now();
        let single = self.view.single;
        // What the model says, alone on one thread with clean callbacks.
        let free_now = single && clean && before.free > 0;
        let room = single && clean && held < self.limit();
        let full = single && clean && held >= self.limit() && before.free == 0;
        let what = format!("{how:?}");
        let began = Instant::now();
        let (got, waited) = match how {
            How::Checkout => (
                self.pool.checkout().map(Got::Borrowed),
                Some(self.view.checkout_timeout),
            ),
            How::Timeout(ms) => {
                let timeout = if room {
                    SURE
                } else {
                    Duration::from_millis(ms.into())
                };
                (
                    self.pool.checkout_timeout(timeout).map(Got::Borrowed),
                    Some(timeout),
                )
            }
            How::Try => (self.pool.try_checkout().map(Got::Borrowed), None),
            How::Owned | How::OwnedElsewhere => (
                self.pool.checkout_owned().map(Got::Owned),
                Some(self.view.checkout_timeout),
            ),
        };
        match got {
            Ok(got) => {
                let id = match &got {
                    Got::Borrowed(lease) => lease.id,
                    Got::Owned(lease) => lease.id,
                };
                env.acquire(id, &what);
                if began_closed {
                    env.violate(format!("{what} after close leased worker {id}"));
                }
                if full {
                    env.violate(format!(
                        "{what} leased worker {id} though the model holds {held} of {} (stats before {before:?})",
                        self.limit()
                    ));
                }
                self.report.checkouts += 1;
                if how == How::OwnedElsewhere {
                    let Got::Owned(lease) = got else {
                        unreachable!()
                    };
                    self.end_elsewhere(lease, fate);
                } else {
                    self.end(got, fate);
                }
            }
            Err(err) => {
                self.check_error(&what, &err, began_closed, began, waited);
                let sure = match how {
                    How::Try => free_now || (room && before.starting == 0),
                    How::Timeout(_) => free_now || room,
                    _ => free_now,
                };
                if sure {
                    env.violate(format!(
                        "{what} failed with {err:?}, though the model holds {held} of {} (alone, clean callbacks; stats before {before:?})",
                        self.limit()
                    ));
                }
                if full && !matches!(err, Error::Timeout { .. } | Error::Overload) {
                    env.violate(format!(
                        "{what} with every worker leased returned {err:?}, not Timeout or Overload"
                    ));
                }
                if matches!(err, Error::Overload) {
                    self.check_overload(&what, others, &before, clean);
                }
            }
        }
    }

    /// Ends a lease as `fate` says.
    fn end(&mut self, got: Got<'p>, fate: Fate) {
        let env = self.env;
        let id = match &got {
            Got::Borrowed(lease) => lease.id,
            Got::Owned(lease) => lease.id,
        };
        match fate {
            Fate::Hold => {
                self.held.push(match got {
                    Got::Borrowed(lease) => Held::Borrowed(lease),
                    Got::Owned(lease) => Held::Owned(lease),
                });
                return;
            }
            _ => env.release(id),
        }
        match fate {
            Fate::Release => drop(got),
            Fate::Discard => {
                self.report.discards += 1;
                match got {
                    Got::Borrowed(lease) => Lease::discard(lease),
                    Got::Owned(lease) => OwnedLease::discard(lease),
                }
            }
            Fate::Take => {
                self.report.takes += 1;
                let worker = match got {
                    Got::Borrowed(lease) => Lease::take(lease),
                    Got::Owned(lease) => OwnedLease::take(lease),
                };
                let _ = catch_unwind(AssertUnwindSafe(move || drop(worker)));
            }
            Fate::Panic => {
                if self.view.discard_on_panic {
                    self.report.discards += 1;
                }
                let _ = catch_unwind(AssertUnwindSafe(move || {
                    let _lease = got;
                    panic!("client panicked on purpose holding its lease");
                }));
            }
            Fate::Hold => unreachable!(),
        }
    }

    /// Ends an owned lease on another thread (a hold comes back to this one).
    fn end_elsewhere(&mut self, lease: OwnedLease<W>, fate: Fate) {
        let env = self.env.clone();
        let discard_on_panic = self.view.discard_on_panic;
        let moved = thread::spawn(move || -> (Option<OwnedLease<W>>, Report) {
            let mut report = Report::default();
            if fate == Fate::Hold {
                return (Some(lease), report);
            }
            env.release(lease.id);
            match fate {
                Fate::Release | Fate::Hold => drop(lease),
                Fate::Discard => {
                    report.discards += 1;
                    OwnedLease::discard(lease);
                }
                Fate::Take => {
                    report.takes += 1;
                    let worker = OwnedLease::take(lease);
                    let _ = catch_unwind(AssertUnwindSafe(move || drop(worker)));
                }
                Fate::Panic => {
                    if discard_on_panic {
                        report.discards += 1;
                    }
                    let _ = catch_unwind(AssertUnwindSafe(move || {
                        let _lease = lease;
                        panic!("client panicked on purpose holding its owned lease");
                    }));
                }
            }
            (None, report)
        })
        .join();
        match moved {
            Ok((back, report)) => {
                self.report.discards += report.discards;
                self.report.takes += report.takes;
                if let Some(lease) = back {
                    self.held.push(Held::Owned(lease));
                }
            }
            Err(payload) => self.env.violate(format!(
                "the thread ending an owned lease panicked: {}",
                panic_message(&*payload)
            )),
        }
    }

    fn transaction(&mut self, panic: bool, others: usize) {
        let env = self.env;
        let began_closed = env.is_closed();
        let clean = env.clean() && !began_closed;
        let before = self.pool.stats();
        let held = self.held_now();
        let free_now = self.view.single && clean && before.free > 0;
        let full = self.view.single && clean && held >= self.limit() && before.free == 0;
        let ran = Cell::new(false);
        let began = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            self.pool.transaction(|w| {
                ran.set(true);
                env.acquire(w.id, "transaction");
                env.release(w.id);
                if panic {
                    panic!("transaction panicked on purpose");
                }
                w.id
            })
        }));
        if ran.get() {
            self.report.checkouts += 1;
            if panic && self.view.discard_on_panic {
                self.report.discards += 1;
            }
        }
        match outcome {
            Ok(Ok(_)) => {
                if began_closed || full {
                    env.violate(format!(
                        "transaction ran though {}",
                        if began_closed {
                            "the pool was closed"
                        } else {
                            "every worker was leased"
                        }
                    ));
                }
            }
            Ok(Err(err)) => {
                self.check_error(
                    "transaction",
                    &err,
                    began_closed,
                    began,
                    Some(self.view.checkout_timeout),
                );
                if free_now {
                    env.violate(format!(
                        "transaction failed with {err:?} though a worker was free (alone, clean callbacks; stats before {before:?})"
                    ));
                }
                if matches!(err, Error::Overload) {
                    self.check_overload("transaction", others, &before, clean);
                }
            }
            Err(payload) => {
                if !(panic && ran.get() && ours(&*payload)) {
                    env.violate(format!(
                        "transaction panicked: {}",
                        panic_message(&*payload)
                    ));
                }
            }
        }
    }

    /// A lease taken and dropped normally inside a `Drop` that runs while an unrelated panic
    /// unwinds: it is released, not discarded.
    fn checkout_in_unwind(&mut self) {
        struct OnDrop<F: FnMut()>(F);
        impl<F: FnMut()> Drop for OnDrop<F> {
            fn drop(&mut self) {
                (self.0)()
            }
        }
        let env = self.env;
        let pool = self.pool;
        let timeout = if self.view.single && env.clean() && self.held_now() < self.limit() {
            SURE
        } else {
            Duration::from_millis(5)
        };
        let leased = Cell::new(false);
        let _ = catch_unwind(AssertUnwindSafe(|| {
            let _cleanup = OnDrop(|| {
                if let Ok(lease) = pool.checkout_timeout(timeout) {
                    leased.set(true);
                    env.acquire(lease.id, "checkout in a Drop during a panic");
                    env.release(lease.id);
                    drop(lease);
                }
            });
            panic!("an unrelated panic on purpose");
        }));
        if leased.get() {
            self.report.checkouts += 1;
        }
    }

    fn map(&mut self, panic: bool) {
        let env = self.env;
        let began_closed = env.is_closed();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            self.pool.map(|w| {
                env.touch(w.id, "map");
                if panic {
                    panic!("map panicked on purpose");
                }
                w.id
            })
        }));
        match outcome {
            Ok(ids) => {
                let distinct: HashSet<u64> = ids.iter().copied().collect();
                if distinct.len() != ids.len() {
                    env.violate(format!("map called f twice on one worker: {ids:?}"));
                }
                if began_closed && !ids.is_empty() {
                    env.violate(format!("map after close ran on {ids:?}"));
                }
            }
            Err(payload) => {
                if !(panic && ours(&*payload)) {
                    env.violate(format!("map panicked: {}", panic_message(&*payload)));
                }
            }
        }
    }

    fn resize(&mut self, size: usize) {
        let env = self.env;
        let began_closed = env.is_closed();
        let sure = self.view.single
            && env.starts_clean()
            && !env.dirty.load(SeqCst)
            && env.doa_alive() == 0
            && !env.reenters()
            && !began_closed;
        let before = self.pool.stats();
        let old_min_idle = self
            .view
            .min_idle
            .map_or(self.view.max_size, |m| m.min(self.view.max_size));
        let result = self.pool.resize(size);
        match result {
            Ok(()) => {
                if began_closed {
                    env.violate(format!("resize({size}) after close returned Ok"));
                }
                self.report.resized_to = Some(size);
                self.view.max_size = size;
                if sure {
                    let stats = self.pool.stats();
                    let min_idle = self.view.min_idle.map_or(size, |m| m.min(size));
                    let held = self.held_now();
                    // Growing returns once the new workers started (a start already under
                    // way before the resize may still be).
                    if min_idle > old_min_idle && stats.size + before.starting < min_idle {
                        env.violate(format!(
                            "resize({size}) returned before its min_idle {min_idle} workers started: {stats:?} (before: {before:?})"
                        ));
                    }
                    // Free workers beyond the new size are closed at once (a worker still
                    // on its way from a start may be counted open for a moment, not free).
                    if stats.free > 0 && stats.size > size.max(held) {
                        env.violate(format!(
                            "resize({size}) left {} workers open, {} of them free, with {held} leased: {stats:?}",
                            stats.size, stats.free
                        ));
                    }
                }
            }
            Err(Error::Closed) if self.pool.is_closed() => {}
            Err(err) => env.violate(format!("resize({size}) returned {err:?}")),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Running a case.

fn cylinder_threads() -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|task| task.ok())
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|name| name.starts_with("cylinder-"))
        })
        .count()
}

struct Model {
    max_size: usize,
    min_idle: Option<usize>,
    max_overflow: usize,
    held: [usize; CLIENTS],
    owned_held: [usize; CLIENTS],
    closed: bool,
    /// The most leases that were wanted at once (held, plus one per client with lease ops).
    demand: usize,
    /// A callback took leases: no bound on demand.
    demand_unknown: bool,
    /// Workers above `demand` that the known `try_checkout` race may have opened.
    demand_slack: usize,
    /// `evict_all` was called: a lease out then counts as a discard when it comes back.
    evicted: bool,
    stats: PoolStats,
}

impl Model {
    fn held(&self) -> usize {
        self.held.iter().sum()
    }

    fn min_idle_now(&self) -> usize {
        self.min_idle
            .map_or(self.max_size, |m| m.min(self.max_size))
    }
}

/// Polls the pool until it is quiet; checks the invariants of a quiet pool. Returns its stats.
fn settle(env: &Env, pool: &Pool<W>, model: &Model, when: &str) -> PoolStats {
    env.paused.store(true, SeqCst);
    let stats = settle_paused(env, pool, model, when);
    env.paused.store(false, SeqCst);
    stats
}

fn settle_paused(env: &Env, pool: &Pool<W>, model: &Model, when: &str) -> PoolStats {
    let deadline = Instant::now() + SETTLE;
    let mut last = String::new();
    loop {
        let first = pool.stats();
        thread::sleep(Duration::from_millis(2));
        let stats = pool.stats();
        let alive = lock(&env.workers).len();
        let mut why = Vec::new();
        if first.size != stats.size || first.free != stats.free || first.leased != stats.leased {
            why.push("counts moving".to_string());
        }
        if stats.starting != 0 {
            why.push(format!("starting {}", stats.starting));
        }
        if stats.waiters != 0 {
            why.push(format!("waiters {}", stats.waiters));
        }
        // (Starts slower than start_timeout keep running after the pool gave up on them.)
        let late_starts = env.start_timeout.is_some()
            && matches!(
                env.start_fault(),
                StartFault::Slow | StartFault::SlowDropPanics
            );
        if env.in_start.load(SeqCst) != 0 && !late_starts {
            why.push("a start closure is running".to_string());
        }
        if env.in_callback.load(SeqCst) != 0 {
            why.push("an on_event callback is running".to_string());
        }
        if stats.free + stats.leased != stats.size {
            why.push(format!(
                "free {} + leased {} != size {}",
                stats.free, stats.leased, stats.size
            ));
        }
        if alive != stats.size {
            why.push(format!("{alive} workers alive, size {}", stats.size));
        }
        let evicted_below = env.evicted_below.load(SeqCst);
        let survivors: Vec<u64> = lock(&env.workers)
            .iter()
            .filter(|(&id, status)| id < evicted_below && !status.held)
            .map(|(&id, _)| id)
            .collect();
        if !survivors.is_empty() {
            why.push(format!(
                "workers {survivors:?} started before evict_all are still free"
            ));
        }
        if model.closed && stats.free != 0 {
            why.push(format!("{} free workers after close", stats.free));
        }
        if !model.closed
            && env.starts_clean()
            && stats.size < model.min_idle_now()
            && !avoided("refill")
        {
            why.push(format!(
                "size {} below min_idle {}",
                stats.size,
                model.min_idle_now()
            ));
        }
        if why.is_empty() {
            // With starts clean again, wait out the backoff of the last failure, so that the
            // next step starts with a pool that may start workers.
            let backoff = env.starts_clean()
                && lock(&env.last_fail).is_some_and(|at| at + env.reconnect > Instant::now());
            if !backoff || Instant::now() > deadline {
                env.dirty.store(!env.plan_clean(), SeqCst);
                return stats;
            }
        } else {
            last = format!("{why:?} {stats:?}");
        }
        if Instant::now() > deadline {
            env.violate(format!(
                "{when}: the pool did not settle within {SETTLE:?}: {last}"
            ));
            env.dirty.store(true, SeqCst);
            return stats;
        }
    }
}

/// Compares a quiet pool with the model.
fn compare(env: &Env, model: &Model, stats: &PoolStats, when: &str) {
    let held = model.held();
    if stats.leased != held {
        env.violate(format!(
            "{when}: stats say {} leased, the clients hold {held}",
            stats.leased
        ));
    }
    if !model.closed && stats.max_size != model.max_size {
        env.violate(format!(
            "{when}: max_size {} but the model says {}",
            stats.max_size, model.max_size
        ));
    }
    if stats.size > model.max_size.max(held) && !avoided("double-start") {
        env.violate(format!(
            "{when}: {} workers open, above max_size {} with {held} leased and no waiter: {stats:?}",
            stats.size, model.max_size
        ));
    }
    if !model.demand_unknown
        && stats.size > model.min_idle_now().max(model.demand) + model.demand_slack
        && !avoided("double-start")
    {
        env.violate(format!(
            "{when}: {} workers open, though min_idle is {} and at most {} were wanted at once: {stats:?}",
            stats.size,
            model.min_idle_now(),
            model.demand
        ));
    }
    let after_close = env.starts_after_close.load(SeqCst);
    if after_close != 0 && !avoided("start-after-close") {
        env.violate(format!(
            "{when}: {after_close} starts began after the pool was closed"
        ));
    }
}

/// Silences the panics the test causes on purpose (their message says so, or their payload
/// is a `BadPayload`); any other panic is printed.
fn quiet_panics() {
    std::panic::set_hook(Box::new(|info| {
        if !info.payload().is::<BadPayload>() && !info.to_string().contains("on purpose") {
            eprintln!("{info}");
        }
    }));
}

fn run_case(case: &Case) -> Result<(), String> {
    let threads_before = cylinder_threads();
    let config = &case.config;
    let env = Arc::new(Env::new(config));
    for fault in &config.initial {
        env.set(*fault);
    }
    let built = catch_unwind(AssertUnwindSafe(|| build(&env, config)));
    let pool = match built {
        Err(payload) => {
            env.mark_closed();
            env.violate(format!("build panicked: {}", panic_message(&*payload)));
            return finish_without_pool(&env, threads_before);
        }
        Ok(Err(err)) => {
            env.mark_closed();
            let min_idle = config.min_idle.unwrap_or(config.size);
            if matches!(config.name, Name::WithNul) {
                if !matches!(err, Error::InvalidConfig { option: "name", .. }) {
                    env.violate(format!("a NUL in the name gave {err:?}, not InvalidConfig"));
                }
            } else if config.unchecked {
                env.violate(format!("build_unchecked failed: {err:?}"));
            } else if !matches!(err, Error::Disconnected { .. }) {
                env.violate(format!("build failed with {err:?}, not Disconnected"));
            } else if env.fail_marks.load(SeqCst) == 0
                && !err.cause().is_some_and(|c| env.timed_out(c))
            {
                env.violate(format!("build failed with {err:?} though no start failed"));
            } else if env.start_timeout.is_none()
                && env.fail_next.load(SeqCst) == 0
                && !config.initial.contains(&Fault::FailNextStart)
                && env.starts_clean()
                && (!config.check || env.check_fault() == CheckFault::Pass)
                && config.fail_first < min_idle
            {
                env.violate(format!(
                    "build failed ({err:?}) though only the first {} of its {min_idle} starts fail",
                    config.fail_first
                ));
            }
            return finish_without_pool(&env, threads_before);
        }
        Ok(Ok(pool)) => {
            if matches!(config.name, Name::WithNul) {
                env.violate("a pool was built with a NUL in its name".to_string());
            }
            pool
        }
    };
    if config.events {
        *lock(&env.slot) = Some(pool.clone());
    }
    // The clients.
    let mut cmds = Vec::new();
    let mut replies = Vec::new();
    for _ in 0..CLIENTS {
        let (cmd_tx, cmd_rx) = mpsc::channel();
        let (reply_tx, reply_rx) = mpsc::channel();
        let env = env.clone();
        let pool = pool.clone();
        thread::spawn(move || client(env, pool, cmd_rx, reply_tx));
        cmds.push(cmd_tx);
        replies.push(reply_rx);
    }
    let mut model = Model {
        max_size: config.size,
        min_idle: config.min_idle,
        max_overflow: config.max_overflow,
        held: [0; CLIENTS],
        owned_held: [0; CLIENTS],
        closed: false,
        demand: 0,
        demand_unknown: false,
        demand_slack: 0,
        evicted: false,
        stats: PoolStats::default(),
    };
    model.stats = settle(&env, &pool, &model, "after build");
    compare(&env, &model, &model.stats, "after build");
    if !env.violations().is_empty() {
        return abandon(&env, pool, cmds);
    }
    for (index, step) in case.steps.iter().enumerate() {
        let when = format!("after step {index}");
        let busy: Vec<usize> = (0..step.len()).filter(|&c| !step[c].is_empty()).collect();
        let lease_ops = step.iter().flatten().filter(|op| is_lease_op(op)).count();
        // (`evict_all` closes the free workers and starts others in their place: a
        // `try_checkout` beside it may find nothing free and no room, as beside a resize.)
        let unsettled = step.iter().flatten().any(|op| match op {
            Op::Map { .. } | Op::Resize(_) | Op::EvictAll => true,
            Op::SetFault(fault) => !fault_keeps_clean(*fault, config),
            _ => false,
        });
        let view = StepView {
            single: busy.len() == 1,
            held: model.held(),
            max_size: model.max_size,
            max_overflow: model.max_overflow,
            min_idle: model.min_idle,
            checkout_timeout: Duration::from_millis(config.checkout_timeout_ms),
            discard_on_panic: config.discard_on_panic,
            lease_ops,
            unsettled,
            closes: step
                .iter()
                .flatten()
                .any(|op| matches!(op, Op::Close | Op::Drain)),
        };
        let reenters = env.reenters()
            || step.iter().flatten().any(|op| {
                matches!(
                    op,
                    Op::SetFault(Fault::Event(EventFault::TryCheckout) | Fault::Reenter(true))
                )
            });
        model.evicted |= step.iter().flatten().any(|op| *op == Op::EvictAll);
        let exact_discards = !model.evicted
            && env.broken_fault() == BrokenFault::No
            && env.reset_fault() == ResetFault::Ok
            && !step
                .iter()
                .flatten()
                .any(|op| matches!(op, Op::SetFault(Fault::Broken(_) | Fault::Reset(_))));
        let wanted = model.held()
            + step
                .iter()
                .map(|ops| {
                    ops.iter()
                        .filter(|op| matches!(op, Op::Lease(_, Fate::Hold)))
                        .count()
                        + usize::from(ops.iter().any(is_lease_op))
                })
                .sum::<usize>();
        model.demand = model.demand.max(wanted);
        model.demand_unknown |= reenters;
        // The known, accepted race: a `try_checkout` that finds nothing free while a start
        // is on its way may open one more worker itself (at most two more;
        // `lifecycle_regressions::a_checkout_that_opens_a_worker_on_demand_opens_exactly_one`
        // bounds how often). Only a step with a `try_checkout` beside another operation
        // may do so: another client's lease, or one of this client's own before it whose
        // worker was discarded, panicked or broke (its replacement is the start on its way).
        let racing_tries = step
            .iter()
            .any(|ops| ops.iter().any(|op| matches!(op, Op::Lease(How::Try, _))))
            && step
                .iter()
                .flatten()
                .filter(|op| !matches!(op, Op::SetFault(_) | Op::Wait(_)))
                .count()
                > 1;
        if racing_tries {
            model.demand_slack = TRY_RACE_SLACK;
        }
        let doa_before = env.doa_created.load(SeqCst);
        let callback_before = env.callback_checkouts.load(SeqCst);
        let began = Instant::now();
        for &c in &busy {
            let _ = cmds[c].send(Cmd::Run(step[c].clone(), view));
        }
        let mut reports: Vec<(usize, Report)> = Vec::new();
        for &c in &busy {
            match replies[c].recv_timeout(HUNG) {
                Ok(report) => reports.push((c, report)),
                Err(_) => {
                    env.violate(format!("{when}: client {c} hung in {:?}", step[c]));
                    return Err(report(&env));
                }
            }
        }
        let mut checkouts = 0;
        let mut discards = 0;
        let mut takes = 0;
        for (c, report) in &reports {
            model.held[*c] = report.held;
            model.owned_held[*c] = report.owned_held;
            checkouts += report.checkouts;
            discards += report.discards;
            takes += report.takes;
            if let Some(size) = report.resized_to {
                if busy.len() == 1 {
                    model.max_size = size;
                }
            }
        }
        if step
            .iter()
            .flatten()
            .any(|op| matches!(op, Op::Close | Op::Drain))
        {
            model.closed = true;
        }
        if busy.len() > 1 && !model.closed {
            let sizes: Vec<usize> = step
                .iter()
                .flatten()
                .filter_map(|op| match op {
                    Op::Resize(size) => Some(*size),
                    _ => None,
                })
                .collect();
            // Resizes racing each other: the last one wins, whichever it is.
            let max_size = pool.stats().max_size;
            if sizes.contains(&max_size) || max_size == model.max_size {
                model.max_size = max_size;
            } else {
                env.violate(format!(
                    "{when}: max_size {max_size} is none of the sizes asked {sizes:?}"
                ));
            }
        }
        let stats = settle(&env, &pool, &model, &when);
        compare(&env, &model, &stats, &when);
        let delta = |now: u64, then: u64| now.wrapping_sub(then);
        if delta(stats.takes, model.stats.takes) != takes {
            env.violate(format!(
                "{when}: {} takes counted, the clients took {takes}",
                delta(stats.takes, model.stats.takes)
            ));
        }
        if exact_discards && delta(stats.discards, model.stats.discards) != discards {
            env.violate(format!(
                "{when}: {} discards counted, the clients discarded {discards} (a normal release counted as a discard?)",
                delta(stats.discards, model.stats.discards)
            ));
        }
        let callbacks = env.callback_checkouts.load(SeqCst) - callback_before;
        if !reenters && delta(stats.checkouts, model.stats.checkouts) != checkouts + callbacks {
            env.violate(format!(
                "{when}: {} checkouts counted, the clients made {}",
                delta(stats.checkouts, model.stats.checkouts),
                checkouts + callbacks
            ));
        }
        // Workers dead on arrival are restarted no faster than reconnect_delay allows.
        let doa = env.doa_created.load(SeqCst) - doa_before;
        let periods = began.elapsed().as_millis() as usize / config.reconnect_ms as usize + 2;
        let bound = (model.max_size.max(4) + model.max_overflow)
            * (periods + step.iter().flatten().count() + 1);
        if doa > bound {
            env.violate(format!(
                "{when}: {doa} workers dead on arrival started in {:?} (reconnect_delay {} ms): no backoff",
                began.elapsed(),
                config.reconnect_ms
            ));
        }
        model.stats = stats;
        if !env.violations().is_empty() {
            return abandon(&env, pool, cmds);
        }
    }
    // The end: close or drop every handle, then every lease.
    if case.end == End::Close {
        pool.close();
        env.mark_closed();
    }
    for cmd in &cmds {
        let _ = cmd.send(Cmd::Finish {
            keep_owned: case.end == End::DropHandlesKeepOwned,
        });
    }
    for (c, reply) in replies.iter().enumerate() {
        if reply.recv_timeout(HUNG).is_err() {
            env.violate(format!("client {c} hung dropping its leases"));
            return Err(report(&env));
        }
    }
    env.clear_slot();
    drop(pool);
    // With owned leases still out, the pool closes only when the last of them goes.
    let owned_out: usize = model.owned_held.iter().sum();
    if case.end != End::DropHandlesKeepOwned || owned_out == 0 {
        env.mark_closed();
    }
    for cmd in &cmds {
        let _ = cmd.send(Cmd::Exit);
    }
    for (c, reply) in replies.iter().enumerate() {
        if reply.recv_timeout(HUNG).is_err() {
            env.violate(format!("client {c} hung dropping its owned leases"));
            return Err(report(&env));
        }
    }
    env.mark_closed();
    finish_without_pool(&env, threads_before)
}

/// Drops the clients and the pool of a case that already failed (without waiting for them).
fn abandon(env: &Arc<Env>, pool: Pool<W>, cmds: Vec<mpsc::Sender<Cmd>>) -> Result<(), String> {
    env.clear_slot();
    for cmd in &cmds {
        let _ = cmd.send(Cmd::Exit);
    }
    drop(cmds);
    drop(pool);
    Err(report(env))
}

/// The end checks: every worker dropped exactly once, no start after close, threads gone.
fn finish_without_pool(env: &Arc<Env>, threads_before: usize) -> Result<(), String> {
    env.clear_slot();
    let deadline = Instant::now() + SETTLE;
    loop {
        let alive = lock(&env.workers).len();
        let threads = cylinder_threads();
        let done = alive == 0 && env.in_start.load(SeqCst) == 0 && threads <= threads_before;
        if done {
            break;
        }
        if Instant::now() > deadline {
            let ids: Vec<u64> = lock(&env.workers).keys().copied().collect();
            if !ids.is_empty() {
                env.violate(format!(
                    "after the pool closed and every lease went, workers {ids:?} were never dropped (created {}, dropped {})",
                    env.created.load(SeqCst),
                    env.dropped.load(SeqCst)
                ));
            }
            if threads > threads_before {
                env.violate(format!(
                    "{} cylinder threads still running after the pool closed ({threads_before} before it)",
                    threads - threads_before
                ));
            }
            // (Starts slower than start_timeout keep running after the pool gave up on them.)
            let late_starts = env.start_timeout.is_some()
                && matches!(
                    env.start_fault(),
                    StartFault::Slow | StartFault::SlowDropPanics
                );
            if env.in_start.load(SeqCst) != 0 && !late_starts {
                env.violate("a start still running after the pool closed".to_string());
            }
            break;
        }
        thread::sleep(Duration::from_millis(2));
    }
    let after_close = env.starts_after_close.load(SeqCst);
    if after_close != 0 && !avoided("start-after-close") {
        env.violate(format!(
            "{after_close} starts began after the pool was closed"
        ));
    }
    if env.created.load(SeqCst) != env.dropped.load(SeqCst) && lock(&env.workers).is_empty() {
        env.violate(format!(
            "created {} workers, dropped {}",
            env.created.load(SeqCst),
            env.dropped.load(SeqCst)
        ));
    }
    if env.violations().is_empty() {
        Ok(())
    } else {
        Err(report(env))
    }
}

fn report(env: &Env) -> String {
    let mut violations = env.violations();
    violations.dedup();
    violations.join("\n  ")
}

#[test]
fn pool_against_the_model() {
    quiet_panics();
    let cases = std::env::var("CYLINDER_MODEL_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(32);
    let mut runner = TestRunner::new(RunnerConfig {
        cases,
        failure_persistence: None,
        max_shrink_iters: 2048,
        max_shrink_time: 60_000,
        ..RunnerConfig::default()
    });
    // Once a case failed, each case tried while shrinking runs up to `retries` times: a
    // failure that depends on timing then still shrinks.
    let retries = std::env::var("CYLINDER_MODEL_RETRIES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(4);
    let failed_once = AtomicBool::new(false);
    let result = runner.run(&case().prop_map(without_avoided), |case| {
        let tries = if failed_once.load(SeqCst) { retries } else { 1 };
        for _ in 0..tries {
            if let Err(why) = run_case(&case) {
                failed_once.store(true, SeqCst);
                return Err(TestCaseError::fail(why));
            }
        }
        Ok(())
    });
    match result {
        Ok(()) => {}
        Err(TestError::Fail(why, case)) => {
            // Printed, not only panicked with: the panic hook hides messages that name the
            // faults injected "on purpose".
            eprintln!("the pool broke the model:\n  {why}\nminimal case: {case:#?}");
            panic!("the pool broke the model (see above)");
        }
        Err(TestError::Abort(why)) => panic!("aborted: {why}"),
    }
}
