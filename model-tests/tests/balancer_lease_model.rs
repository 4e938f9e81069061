//! A state-machine property test of the balancer's lease mode (`Balancer::lease`,
//! `BalancerLease`, `transaction`, with `get`, `get_for`, `map`, `connect` and reloads
//! around them) against a small reference model.
//!
//! proptest generates a configuration and a list of steps; each step gives up to three
//! client threads a few operations: leases (released, held across steps, moved to another
//! thread, or held by a client that panics), transactions, gets, maps, connects, waits for
//! the reaper, `close`, and changes to the supervisor and its children: a child killed
//! (`is_alive` false), a child whose `is_alive` or `queue_len` panics, queue lengths over
//! `max_queue_len`, children added, removed or restarted, a supervisor that errors, panics
//! or lists nothing, an `on_event` that panics or calls back into the balancer, children
//! whose `Drop` panics on the balancer's threads.
//!
//! Every result is checked against rules that hold whatever the timing: no child leased to
//! two holders, `get` and `lease` never hand out a child dead before the call nor (`get`) one
//! leased throughout it, only `Overload` and `Disconnected` as errors, no panic out of the
//! balancer, `retire` only for dead children. A step alone on one thread, before it changes
//! the children or the supervisor, is checked against what the model predicts exactly. At
//! each quiet point the balancer reloads (`connect`, checked against the supervisor), then
//! must lease exactly the live children the clients do not hold (lease counts back to zero),
//! and every child of the last set that was killed must have been retired. At the end every
//! child is dropped and the reaper thread is gone.
//!
//! `CYLINDER_MODEL_CASES` (default 32) runs more cases; `CYLINDER_MODEL_AVOID` (a comma list
//! of `alive-panics`, `queue-panics`, `retire`, `drop-panics`) leaves out what reaches a bug already known.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use cylinder::{Balancer, BalancerLease, BoxError, Error, Strategy as Pick, Supervisor, Worker};
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestError, TestRunner};

const SETTLE: Duration = Duration::from_secs(2);
const HUNG: Duration = Duration::from_secs(10);
const CLIENTS: usize = 3;

// ---------------------------------------------------------------------------------------
// The generated input.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SupFault {
    Ok,
    Err,
    Panic,
    /// Lists no child.
    Empty,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventFault {
    Quiet,
    Panic,
    /// Calls `get()` on the balancer.
    Get,
    /// Calls `lease()` on the balancer and releases what it got.
    Lease,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Release,
    /// Kept across steps, until an `EndHeld`.
    Hold,
    /// Moved to another thread, dropped there.
    Elsewhere,
    /// The client panics holding it.
    Panic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Lease(Fate),
    Transaction {
        panic: bool,
    },
    Get,
    GetFor(u8),
    Map,
    /// Drops this thread's oldest held lease.
    EndHeld,
    Connect,
    Wait(u16),
    Close,
    /// Child `i % len` of the supervisor's list.
    Kill(u8),
    AlivePanics(u8, bool),
    QueuePanics(u8, bool),
    QueueLen(u8, u8),
    /// The supervisor restarts its dead children (new ones in their place).
    Restart,
    AddChild,
    RemoveChild(u8),
    Supervisor(SupFault),
    Event(EventFault),
    /// Children's `Drop` panics when it runs on a balancer thread.
    DropPanics(bool),
}

#[derive(Debug, Clone)]
struct Config {
    children: usize,
    min_alive_ratio: f64,
    reconnect_ms: u64,
    max_queue_len: Option<usize>,
    connect_at_start: bool,
    strategy: u8,
    events: bool,
}

impl Config {
    /// Whether the balancer asks the children's `queue_len` (a limit, or `LeastLoaded`): then
    /// a child whose `queue_len` panics is out of service (the fifteenth breaking pass).
    fn uses_queue_len(&self) -> bool {
        self.max_queue_len.is_some() || self.strategy >= 2
    }
}

#[derive(Debug, Clone)]
struct Case {
    config: Config,
    steps: Vec<Vec<Vec<Op>>>,
    close_at_end: bool,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => prop_oneof![
            3 => Just(Fate::Release),
            3 => Just(Fate::Hold),
            1 => Just(Fate::Elsewhere),
            1 => Just(Fate::Panic)
        ]
        .prop_map(Op::Lease),
        2 => any::<bool>().prop_map(|panic| Op::Transaction { panic }),
        4 => Just(Op::Get),
        1 => any::<u8>().prop_map(Op::GetFor),
        1 => Just(Op::Map),
        3 => Just(Op::EndHeld),
        2 => Just(Op::Connect),
        1 => (1u16..=20).prop_map(Op::Wait),
        1 => Just(Op::Close),
        3 => any::<u8>().prop_map(Op::Kill),
        1 => (any::<u8>(), any::<bool>()).prop_map(|(i, on)| Op::AlivePanics(i, on)),
        1 => (any::<u8>(), any::<bool>()).prop_map(|(i, on)| Op::QueuePanics(i, on)),
        1 => (any::<u8>(), 0u8..=3).prop_map(|(i, n)| Op::QueueLen(i, n)),
        2 => Just(Op::Restart),
        1 => Just(Op::AddChild),
        1 => any::<u8>().prop_map(Op::RemoveChild),
        2 => prop_oneof![
            3 => Just(SupFault::Ok),
            1 => Just(SupFault::Err),
            1 => Just(SupFault::Panic),
            1 => Just(SupFault::Empty)
        ]
        .prop_map(Op::Supervisor),
        1 => prop_oneof![
            Just(EventFault::Quiet),
            Just(EventFault::Panic),
            Just(EventFault::Get),
            Just(EventFault::Lease)
        ]
        .prop_map(Op::Event),
        1 => any::<bool>().prop_map(Op::DropPanics),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        (
            1usize..=4,
            prop_oneof![Just(1.0), Just(0.5), Just(0.0)],
            5u64..=20,
            prop_oneof![3 => Just(None), 1 => (0usize..=2).prop_map(Some)],
            prop_oneof![3 => Just(true), 1 => Just(false)],
            prop_oneof![3 => Just(0u8), 1 => Just(1), 1 => Just(2)],
            any::<bool>(),
        )
            .prop_map(
                |(
                    children,
                    min_alive_ratio,
                    reconnect_ms,
                    max_queue_len,
                    connect_at_start,
                    strategy,
                    events,
                )| Config {
                    children,
                    min_alive_ratio,
                    reconnect_ms,
                    max_queue_len,
                    connect_at_start,
                    strategy,
                    events,
                },
            ),
        proptest::collection::vec(
            proptest::collection::vec(proptest::collection::vec(op(), 0..=3), 1..=CLIENTS),
            1..=6,
        ),
        any::<bool>(),
    )
        .prop_map(|(config, steps, close_at_end)| Case {
            config,
            steps,
            close_at_end,
        })
        .prop_map(without_avoided)
}

fn avoided(tag: &str) -> bool {
    static AVOID: OnceLock<Vec<String>> = OnceLock::new();
    AVOID
        .get_or_init(|| {
            std::env::var("CYLINDER_MODEL_AVOID")
                .map(|list| list.split(',').map(|t| t.trim().to_string()).collect())
                .unwrap_or_default()
        })
        .iter()
        .any(|t| t == tag)
}

fn without_avoided(mut case: Case) -> Case {
    for op in case.steps.iter_mut().flatten().flatten() {
        match op {
            Op::AlivePanics(..) if avoided("alive-panics") => *op = Op::Wait(1),
            Op::QueuePanics(..) if avoided("queue-panics") => *op = Op::Wait(1),
            Op::DropPanics(true) if avoided("drop-panics") => *op = Op::DropPanics(false),
            _ => {}
        }
    }
    case
}

// ---------------------------------------------------------------------------------------
// Children, supervisor, tracker.

struct Child {
    id: u64,
    killed: AtomicBool,
    alive_panics: AtomicBool,
    queue_panics: AtomicBool,
    queue: AtomicUsize,
    env: Arc<Env>,
}

impl Child {
    /// Dead as the model sees it: killed, or its `is_alive` panics (counted as dead).
    fn dead(&self) -> bool {
        self.killed.load(SeqCst) || self.alive_panics.load(SeqCst)
    }
}

impl Worker for Child {
    fn is_alive(&self) -> bool {
        if self.alive_panics.load(SeqCst) {
            panic!("is_alive panicked on purpose");
        }
        !self.killed.load(SeqCst)
    }

    fn queue_len(&self) -> Option<usize> {
        if self.queue_panics.load(SeqCst) {
            panic!("queue_len panicked on purpose");
        }
        Some(self.queue.load(SeqCst))
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.env.dropped.fetch_add(1, SeqCst);
        let on_balancer_thread = thread::current()
            .name()
            .is_some_and(|name| name.starts_with("cylinder-"));
        if self.env.drop_panics.load(SeqCst) && on_balancer_thread && !thread::panicking() {
            panic!("child drop panicked on purpose");
        }
    }
}

struct Env {
    /// The supervisor's list.
    list: Mutex<Vec<Arc<Child>>>,
    sup: AtomicU8,
    event: AtomicU8,
    drop_panics: AtomicBool,
    next_id: AtomicU64,
    created: AtomicUsize,
    dropped: AtomicUsize,
    /// Which children are leased, and a count of lease changes per child.
    held: Mutex<HashMap<u64, (bool, u64)>>,
    retired: Mutex<HashSet<u64>>,
    violations: Mutex<Vec<String>>,
    slot: Mutex<Option<Balancer<Child>>>,
    paused: AtomicBool,
    in_callback: AtomicUsize,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

const SUPS: [SupFault; 4] = [
    SupFault::Ok,
    SupFault::Err,
    SupFault::Panic,
    SupFault::Empty,
];
const EVENTS: [EventFault; 4] = [
    EventFault::Quiet,
    EventFault::Panic,
    EventFault::Get,
    EventFault::Lease,
];

impl Env {
    fn violate(&self, what: String) {
        lock(&self.violations).push(what);
    }

    fn violations(&self) -> Vec<String> {
        lock(&self.violations).clone()
    }

    fn sup(&self) -> SupFault {
        SUPS[self.sup.load(SeqCst) as usize]
    }

    fn event(&self) -> EventFault {
        EVENTS[self.event.load(SeqCst) as usize]
    }

    fn new_child(self: &Arc<Env>) -> Arc<Child> {
        self.created.fetch_add(1, SeqCst);
        Arc::new(Child {
            id: self.next_id.fetch_add(1, SeqCst),
            killed: AtomicBool::new(false),
            alive_panics: AtomicBool::new(false),
            queue_panics: AtomicBool::new(false),
            queue: AtomicUsize::new(0),
            env: self.clone(),
        })
    }

    fn list(&self) -> Vec<Arc<Child>> {
        lock(&self.list).clone()
    }

    fn child(&self, index: u8) -> Option<Arc<Child>> {
        let list = lock(&self.list);
        (!list.is_empty()).then(|| list[index as usize % list.len()].clone())
    }

    fn acquire(&self, id: u64, how: &str) {
        let mut held = lock(&self.held);
        let entry = held.entry(id).or_insert((false, 0));
        if entry.0 {
            drop(held);
            self.violate(format!("{how}: child {id} leased to two holders at once"));
        } else {
            *entry = (true, entry.1 + 1);
        }
    }

    fn release(&self, id: u64) {
        if let Some(entry) = lock(&self.held).get_mut(&id) {
            *entry = (false, entry.1 + 1);
        }
    }

    fn held_state(&self, id: u64) -> (bool, u64) {
        lock(&self.held).get(&id).copied().unwrap_or((false, 0))
    }

    fn balancer(&self) -> Option<Balancer<Child>> {
        lock(&self.slot).clone()
    }

    fn clear_slot(&self) {
        let balancer = lock(&self.slot).take();
        drop(balancer);
    }
}

#[derive(Clone)]
struct Board(Arc<Env>);

impl Supervisor<Child> for Board {
    fn children(&self) -> Result<Vec<Arc<Child>>, BoxError> {
        match self.0.sup() {
            SupFault::Ok => Ok(self.0.list()),
            SupFault::Err => Err("supervisor failed on purpose".into()),
            SupFault::Panic => panic!("supervisor panicked on purpose"),
            SupFault::Empty => Ok(Vec::new()),
        }
    }

    fn retire(&self, worker: &Arc<Child>) {
        lock(&self.0.retired).insert(worker.id);
        // A child whose `queue_len` panics is taken out of service too (as if dead).
        if !worker.dead() && !worker.queue_panics.load(SeqCst) {
            self.0.violate(format!(
                "retire was told child {} is out, but it is alive",
                worker.id
            ));
        }
    }
}

thread_local! {
    static IN_CALLBACK: Cell<bool> = const { Cell::new(false) };
}

fn on_event(env: &Arc<Env>) {
    env.in_callback.fetch_add(1, SeqCst);
    let _ = catch_unwind(AssertUnwindSafe(|| event_callback(env)));
    env.in_callback.fetch_sub(1, SeqCst);
    if env.event() == EventFault::Panic && !env.paused.load(SeqCst) {
        panic!("on_event panicked on purpose");
    }
}

fn event_callback(env: &Arc<Env>) {
    if env.paused.load(SeqCst) || IN_CALLBACK.with(|inside| inside.replace(true)) {
        return;
    }
    if let Some(balancer) = env.balancer() {
        match env.event() {
            EventFault::Get => {
                if let Ok(child) = balancer.get() {
                    if child.dead() {
                        env.violate(format!(
                            "get() in on_event returned dead child {}",
                            child.id
                        ));
                    }
                }
            }
            EventFault::Lease => {
                if let Ok(lease) = balancer.lease() {
                    env.acquire(lease.id, "lease() in on_event");
                    env.release(lease.id);
                    drop(lease);
                }
            }
            EventFault::Quiet | EventFault::Panic => {}
        }
    }
    IN_CALLBACK.with(|inside| inside.set(false));
}

// ---------------------------------------------------------------------------------------
// Clients.

#[derive(Clone, Copy)]
struct StepView {
    single: bool,
    max_queue_len: Option<usize>,
    uses_queue_len: bool,
}

/// What the model knows since the last quiet point: the published set (the live children
/// listed then).
#[derive(Clone, Default)]
struct Known {
    /// `None`: disconnected.
    set: Option<Vec<u64>>,
}

enum Cmd {
    Run(Vec<Op>, StepView, Known),
    Finish,
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string payload".to_string())
}

fn client(
    env: Arc<Env>,
    balancer: Balancer<Child>,
    cmds: mpsc::Receiver<Cmd>,
    replies: mpsc::Sender<Vec<u64>>,
) {
    let mut held: Vec<BalancerLease<Child>> = Vec::new();
    while let Ok(Cmd::Run(ops, view, known)) = cmds.recv() {
        let mut client = Client {
            env: &env,
            balancer: &balancer,
            view,
            known,
            pristine: true,
            held: &mut held,
        };
        for op in ops {
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| client.run(op))) {
                env.violate(format!("{op:?} panicked: {}", panic_message(&*payload)));
            }
        }
        if replies.send(held.iter().map(|l| l.id).collect()).is_err() {
            return;
        }
    }
    for lease in held.drain(..) {
        env.release(lease.id);
        drop(lease);
    }
    drop(balancer);
    let _ = replies.send(Vec::new());
}

struct Client<'a> {
    env: &'a Arc<Env>,
    balancer: &'a Balancer<Child>,
    view: StepView,
    known: Known,
    /// Nothing changed the children or the supervisor yet in this step.
    pristine: bool,
    held: &'a mut Vec<BalancerLease<Child>>,
}

/// The children dead now (before a call).
fn dead_now(env: &Env) -> HashSet<u64> {
    env.list()
        .iter()
        .filter(|c| c.dead())
        .map(|c| c.id)
        .collect()
}

impl Client<'_> {
    /// What the model predicts for a lease, alone and pristine: the children that may be
    /// leased now (`None` when it cannot tell).
    fn leasable(&self) -> Option<(Vec<u64>, bool)> {
        if !self.view.single || !self.pristine || self.env.event() == EventFault::Lease {
            return None;
        }
        let set = self.known.set.as_ref();
        let Some(set) = set else {
            return Some((Vec::new(), false));
        };
        let list = self.env.list();
        let mut free = Vec::new();
        for id in set {
            let child = list.iter().find(|c| c.id == *id)?;
            if child.queue_panics.load(SeqCst) && self.view.uses_queue_len {
                return None;
            }
            let over = self
                .view
                .max_queue_len
                .is_some_and(|limit| child.queue.load(SeqCst) > limit);
            if !over && !self.env.held_state(*id).0 {
                free.push(*id);
            }
        }
        Some((free, true))
    }

    fn check_error(&self, what: &str, err: &Error, predicted: &Option<(Vec<u64>, bool)>) {
        match err {
            Error::Overload | Error::Disconnected { .. } => {}
            other => self.env.violate(format!(
                "{what} returned {other:?}, not Overload or Disconnected"
            )),
        }
        if let Some((free, connected)) = predicted {
            let right = match err {
                Error::Overload => *connected && free.is_empty(),
                Error::Disconnected { .. } => !*connected,
                _ => false,
            };
            if !right {
                self.env.violate(format!(
                    "{what} returned {err:?}; the model has free children {free:?} (connected: {connected})"
                ));
            }
        }
    }

    fn check_child(
        &self,
        what: &str,
        id: u64,
        dead_before: &HashSet<u64>,
        predicted: &Option<(Vec<u64>, bool)>,
    ) {
        if dead_before.contains(&id) {
            self.env
                .violate(format!("{what} returned child {id}, dead before the call"));
        }
        if let Some((free, _)) = predicted {
            if !free.contains(&id) {
                self.env.violate(format!(
                    "{what} returned child {id}; the model's free children are {free:?}"
                ));
            }
        }
    }

    fn run(&mut self, op: Op) {
        let env = self.env;
        match op {
            Op::Lease(fate) => {
                let predicted = self.leasable();
                let dead_before = dead_now(env);
                match self.balancer.lease() {
                    Ok(lease) => {
                        env.acquire(lease.id, "lease()");
                        self.check_child("lease()", lease.id, &dead_before, &predicted);
                        self.end(lease, fate);
                    }
                    Err(err) => self.check_error("lease()", &err, &predicted),
                }
            }
            Op::Transaction { panic } => {
                let predicted = self.leasable();
                let dead_before = dead_now(env);
                let ran = Cell::new(None);
                let outcome = catch_unwind(AssertUnwindSafe(|| {
                    self.balancer.transaction(|child| {
                        ran.set(Some(child.id));
                        env.acquire(child.id, "transaction");
                        env.release(child.id);
                        if panic {
                            panic!("transaction panicked on purpose");
                        }
                    })
                }));
                if let Some(id) = ran.get() {
                    self.check_child("transaction", id, &dead_before, &predicted);
                }
                match outcome {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => self.check_error("transaction", &err, &predicted),
                    Err(payload) => {
                        if !(panic && ran.get().is_some()) {
                            env.violate(format!(
                                "transaction panicked: {}",
                                panic_message(&*payload)
                            ));
                        }
                    }
                }
            }
            Op::Get | Op::GetFor(_) => {
                let predicted = self.leasable();
                let dead_before = dead_now(env);
                let states: HashMap<u64, (bool, u64)> = lock(&env.held).clone();
                let got = match op {
                    Op::GetFor(key) => self.balancer.get_for(&key),
                    _ => self.balancer.get(),
                };
                let what = format!("{op:?}");
                match got {
                    Ok(child) => {
                        self.check_child(&what, child.id, &dead_before, &predicted);
                        let before = states.get(&child.id).copied().unwrap_or((false, 0));
                        if before.0 && env.held_state(child.id) == before {
                            env.violate(format!(
                                "{what} returned child {}, leased all through the call",
                                child.id
                            ));
                        }
                    }
                    Err(err) => self.check_error(&what, &err, &predicted),
                }
            }
            Op::Map => {
                let dead_before = dead_now(env);
                let ids = self.balancer.map(|child| child.id);
                for id in ids {
                    if dead_before.contains(&id) {
                        env.violate(format!("map() ran on child {id}, dead before the call"));
                    }
                }
            }
            Op::EndHeld => {
                if !self.held.is_empty() {
                    let lease = self.held.remove(0);
                    env.release(lease.id);
                    drop(lease);
                }
            }
            Op::Connect => {
                let single = self.view.single && self.pristine;
                let result = self.balancer.connect();
                if single {
                    let live: HashSet<u64> = if env.sup() == SupFault::Ok {
                        env.list()
                            .iter()
                            .filter(|c| !c.dead())
                            .map(|c| c.id)
                            .collect()
                    } else {
                        HashSet::new()
                    };
                    match &result {
                        Ok(found) if found.total == live.len() && !live.is_empty() => {}
                        Err(Error::Disconnected { .. }) if live.is_empty() => {}
                        other => env.violate(format!(
                            "connect() returned {other:?}; the supervisor lists {} live children",
                            live.len()
                        )),
                    }
                    self.known.set = (!live.is_empty()).then(|| {
                        let mut ids: Vec<u64> = live.into_iter().collect();
                        ids.sort();
                        ids
                    });
                } else if let Err(err) = &result {
                    if !matches!(err, Error::Disconnected { .. }) {
                        env.violate(format!("connect() returned {err:?}"));
                    }
                }
            }
            Op::Wait(ms) => thread::sleep(Duration::from_millis(ms.into())),
            Op::Close => self.balancer.close(),
            Op::Kill(i) => {
                self.pristine = false;
                if let Some(child) = env.child(i) {
                    child.killed.store(true, SeqCst);
                }
            }
            Op::AlivePanics(i, on) => {
                self.pristine = false;
                if let Some(child) = env.child(i) {
                    child.alive_panics.store(on, SeqCst);
                }
            }
            Op::QueuePanics(i, on) => {
                self.pristine = false;
                if let Some(child) = env.child(i) {
                    child.queue_panics.store(on, SeqCst);
                }
            }
            Op::QueueLen(i, n) => {
                self.pristine = false;
                if let Some(child) = env.child(i) {
                    child.queue.store(n.into(), SeqCst);
                }
            }
            Op::Restart => {
                self.pristine = false;
                let mut list = lock(&env.list);
                for child in list.iter_mut() {
                    if child.dead() {
                        *child = env.new_child();
                    }
                }
            }
            Op::AddChild => {
                self.pristine = false;
                let child = env.new_child();
                lock(&env.list).push(child);
            }
            Op::RemoveChild(i) => {
                self.pristine = false;
                let mut list = lock(&env.list);
                if !list.is_empty() {
                    let at = i as usize % list.len();
                    list.remove(at);
                }
            }
            Op::Supervisor(fault) => {
                self.pristine = false;
                env.sup
                    .store(SUPS.iter().position(|f| *f == fault).unwrap() as u8, SeqCst);
            }
            Op::Event(fault) => {
                self.pristine = false;
                env.event.store(
                    EVENTS.iter().position(|f| *f == fault).unwrap() as u8,
                    SeqCst,
                );
            }
            Op::DropPanics(on) => env.drop_panics.store(on, SeqCst),
        }
    }

    fn end(&mut self, lease: BalancerLease<Child>, fate: Fate) {
        let env = self.env.clone();
        match fate {
            Fate::Hold => self.held.push(lease),
            Fate::Release => {
                env.release(lease.id);
                drop(lease);
            }
            Fate::Elsewhere => {
                let moved = thread::spawn(move || {
                    env.release(lease.id);
                    drop(lease);
                })
                .join();
                if moved.is_err() {
                    self.env
                        .violate("dropping a lease on another thread panicked".to_string());
                }
            }
            Fate::Panic => {
                env.release(lease.id);
                let _ = catch_unwind(AssertUnwindSafe(move || {
                    let _lease = lease;
                    panic!("client panicked on purpose holding its lease");
                }));
            }
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

fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(2));
    }
}

/// A quiet point: every child of the last set that was killed is found dead and retired;
/// a reload matches the supervisor; the children the clients do not hold can all be leased
/// at once, and no more.
fn quiet_point(
    env: &Arc<Env>,
    balancer: &Balancer<Child>,
    config: &Config,
    last: &Known,
    when: &str,
) -> Known {
    env.paused.store(true, SeqCst);
    eventually(SETTLE, || env.in_callback.load(SeqCst) == 0);
    // A round of gets over the stale set: each dead member is found dead.
    for _ in 0..balancer.len() + 1 {
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| balancer.get().map(|_| ()))) {
            env.violate(format!(
                "{when}: get() panicked: {}",
                panic_message(&*payload)
            ));
            break;
        }
    }
    let list = env.list();
    let killed: Vec<u64> = last
        .set
        .iter()
        .flatten()
        .copied()
        .filter(|id| list.iter().any(|c| c.id == *id && c.killed.load(SeqCst)))
        .collect();
    let panicking = list.iter().any(|c| c.alive_panics.load(SeqCst));
    let reloaded = catch_unwind(AssertUnwindSafe(|| balancer.connect()));
    let live: Vec<u64> = if env.sup() == SupFault::Ok {
        let mut ids: Vec<u64> = list.iter().filter(|c| !c.dead()).map(|c| c.id).collect();
        ids.sort();
        ids.dedup();
        ids
    } else {
        Vec::new()
    };
    match reloaded {
        Err(payload) => env.violate(format!(
            "{when}: connect() panicked: {}",
            panic_message(&*payload)
        )),
        Ok(Ok(found)) if found.total == live.len() && !live.is_empty() => {}
        Ok(Err(Error::Disconnected { .. })) if live.is_empty() => {}
        Ok(other) => env.violate(format!(
            "{when}: connect() returned {other:?}; the supervisor lists {} live children",
            live.len()
        )),
    }
    // Only while the supervisor answers: a set that vanished with its supervisor was not
    // looked over, and its dead are not taken out of service one by one.
    if !killed.is_empty() && env.sup() == SupFault::Ok && !avoided("retire") {
        let retired = eventually(Duration::from_millis(500), || {
            let retired = lock(&env.retired);
            killed.iter().all(|id| retired.contains(id))
        });
        if !retired {
            let retired = lock(&env.retired).clone();
            env.violate(format!(
                "{when}: children {killed:?} of the set died, the supervisor was told of {:?} (Supervisor::retire)",
                killed.iter().filter(|id| retired.contains(id)).collect::<Vec<_>>()
            ));
        }
    }
    // Leases: every live child not held by a client, no more.
    let queue_unknown = config.uses_queue_len() && list.iter().any(|c| c.queue_panics.load(SeqCst));
    if !panicking && !queue_unknown {
        let expected: HashSet<u64> = live
            .iter()
            .copied()
            .filter(|id| !env.held_state(*id).0)
            .filter(|id| {
                let child = list.iter().find(|c| c.id == *id).unwrap();
                config
                    .max_queue_len
                    .map_or(true, |limit| child.queue.load(SeqCst) <= limit)
            })
            .collect();
        let mut leases = Vec::new();
        let mut last_err = None;
        for _ in 0..live.len() + 1 {
            match catch_unwind(AssertUnwindSafe(|| balancer.lease())) {
                Ok(Ok(lease)) => {
                    env.acquire(lease.id, "lease() at a quiet point");
                    leases.push(lease);
                }
                Ok(Err(err)) => {
                    last_err = Some(err);
                    break;
                }
                Err(payload) => {
                    env.violate(format!(
                        "{when}: lease() panicked: {}",
                        panic_message(&*payload)
                    ));
                    break;
                }
            }
        }
        let got: HashSet<u64> = leases.iter().map(|l| l.id).collect();
        if got != expected {
            env.violate(format!(
                "{when}: leased {got:?} at once, the free live children are {expected:?} (then {last_err:?})"
            ));
        }
        let right_end = match &last_err {
            Some(Error::Overload) => !live.is_empty(),
            Some(Error::Disconnected { .. }) => live.is_empty(),
            _ => false,
        };
        if !right_end && got == expected {
            env.violate(format!(
                "{when}: after leasing every free child, lease() returned {last_err:?}"
            ));
        }
        for lease in leases {
            env.release(lease.id);
            drop(lease);
        }
    }
    env.paused.store(false, SeqCst);
    Known {
        set: (!live.is_empty()).then_some(live),
    }
}

fn run_case(case: &Case) -> Result<(), String> {
    let threads_before = cylinder_threads();
    let config = &case.config;
    let env = Arc::new(Env {
        list: Mutex::new(Vec::new()),
        sup: AtomicU8::new(0),
        event: AtomicU8::new(0),
        drop_panics: AtomicBool::new(false),
        next_id: AtomicU64::new(0),
        created: AtomicUsize::new(0),
        dropped: AtomicUsize::new(0),
        held: Mutex::new(HashMap::new()),
        retired: Mutex::new(HashSet::new()),
        violations: Mutex::new(Vec::new()),
        slot: Mutex::new(None),
        paused: AtomicBool::new(false),
        in_callback: AtomicUsize::new(0),
    });
    for _ in 0..config.children {
        let child = env.new_child();
        lock(&env.list).push(child);
    }
    let mut builder = Balancer::builder()
        .min_alive_ratio(config.min_alive_ratio)
        .reconnect_delay(Duration::from_millis(config.reconnect_ms))
        .connect_at_start(config.connect_at_start)
        .strategy(match config.strategy {
            0 => Pick::RoundRobin,
            1 => Pick::Random,
            _ => Pick::LeastLoaded,
        })
        .name("model");
    if let Some(limit) = config.max_queue_len {
        builder = builder.max_queue_len(limit);
    }
    if config.events {
        let env = env.clone();
        builder = builder.on_event(move |_| on_event(&env));
    }
    let balancer = match builder.build_with(Board(env.clone())) {
        Ok(balancer) => balancer,
        Err(err) => {
            env.violate(format!("build failed: {err:?}"));
            return Err(env.violations().join("\n  "));
        }
    };
    if config.events {
        *lock(&env.slot) = Some(balancer.clone());
    }
    let mut cmds = Vec::new();
    let mut replies = Vec::new();
    for _ in 0..CLIENTS {
        let (cmd_tx, cmd_rx) = mpsc::channel();
        let (reply_tx, reply_rx) = mpsc::channel();
        let env = env.clone();
        let balancer = balancer.clone();
        thread::spawn(move || client(env, balancer, cmd_rx, reply_tx));
        cmds.push(cmd_tx);
        replies.push(reply_rx);
    }
    let fail = |env: &Arc<Env>, balancer: Balancer<Child>, cmds: Vec<mpsc::Sender<Cmd>>| {
        env.clear_slot();
        drop(cmds);
        drop(balancer);
        let mut violations = env.violations();
        violations.dedup();
        Err(violations.join("\n  "))
    };
    let mut known = quiet_point(&env, &balancer, config, &Known::default(), "after build");
    for (index, step) in case.steps.iter().enumerate() {
        let when = format!("after step {index}");
        let busy: Vec<usize> = (0..step.len()).filter(|&c| !step[c].is_empty()).collect();
        let view = StepView {
            single: busy.len() == 1,
            max_queue_len: config.max_queue_len,
            uses_queue_len: config.uses_queue_len(),
        };
        for &c in &busy {
            let _ = cmds[c].send(Cmd::Run(step[c].clone(), view, known.clone()));
        }
        for &c in &busy {
            if replies[c].recv_timeout(HUNG).is_err() {
                env.violate(format!("{when}: client {c} hung in {:?}", step[c]));
                return fail(&env, balancer, cmds);
            }
        }
        known = quiet_point(&env, &balancer, config, &known, &when);
        if !env.violations().is_empty() {
            return fail(&env, balancer, cmds);
        }
    }
    // The end: close or not, every handle dropped, then every lease, then the children.
    if case.close_at_end {
        balancer.close();
    }
    env.clear_slot();
    drop(balancer);
    for cmd in &cmds {
        let _ = cmd.send(Cmd::Finish);
    }
    for (c, reply) in replies.iter().enumerate() {
        if reply.recv_timeout(HUNG).is_err() {
            env.violate(format!("client {c} hung dropping its leases"));
        }
    }
    lock(&env.list).clear();
    let done = eventually(SETTLE, || {
        env.created.load(SeqCst) == env.dropped.load(SeqCst) && cylinder_threads() <= threads_before
    });
    if !done {
        env.violate(format!(
            "after every handle, lease and child went: created {} children, dropped {}; {} cylinder threads (before: {threads_before})",
            env.created.load(SeqCst),
            env.dropped.load(SeqCst),
            cylinder_threads()
        ));
    }
    let mut violations = env.violations();
    violations.dedup();
    if violations.is_empty() {
        Ok(())
    } else {
        Err(violations.join("\n  "))
    }
}

fn quiet_panics() {
    std::panic::set_hook(Box::new(|info| {
        if !info.to_string().contains("on purpose") {
            eprintln!("{info}");
        }
    }));
}

#[test]
fn balancer_leases_against_the_model() {
    quiet_panics();
    let cases = std::env::var("CYLINDER_MODEL_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(32);
    let retries = std::env::var("CYLINDER_MODEL_RETRIES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(4);
    let mut runner = TestRunner::new(RunnerConfig {
        cases,
        failure_persistence: None,
        max_shrink_iters: 2048,
        max_shrink_time: 60_000,
        ..RunnerConfig::default()
    });
    let failed_once = AtomicBool::new(false);
    let result = runner.run(&case(), |case| {
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
            eprintln!("the balancer broke the model:\n  {why}\nminimal case: {case:#?}");
            panic!("the balancer broke the model (see above)");
        }
        Err(TestError::Abort(why)) => panic!("aborted: {why}"),
    }
}
