//! Test workers and supervisors shared by the integration tests.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cylinder::{BoxError, Worker};

pub mod logger;
pub mod node;

/// A worker that can be killed, that counts its uses, and that catches double leases.
#[derive(Debug)]
pub struct Probe {
    pub id: usize,
    alive: AtomicBool,
    in_use: AtomicBool,
    pub uses: AtomicUsize,
    pub queue: AtomicUsize,
}

impl Probe {
    pub fn new(id: usize) -> Probe {
        Probe {
            id,
            alive: AtomicBool::new(true),
            in_use: AtomicBool::new(false),
            uses: AtomicUsize::new(0),
            queue: AtomicUsize::new(0),
        }
    }

    pub fn kill(&self) {
        self.alive.store(false, Ordering::Release);
    }

    /// Marks the probe in use; panics if someone else holds it (a double lease).
    pub fn enter(&self) {
        assert!(
            !self.in_use.swap(true, Ordering::AcqRel),
            "worker {} leased to two holders at once",
            self.id
        );
        self.uses.fetch_add(1, Ordering::Relaxed);
    }

    pub fn leave(&self) {
        assert!(
            self.in_use.swap(false, Ordering::AcqRel),
            "worker {} left while not in use",
            self.id
        );
    }
}

impl Worker for Probe {
    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    fn queue_len(&self) -> Option<usize> {
        Some(self.queue.load(Ordering::Relaxed))
    }
}

/// A start closure for `PoolBuilder::build` numbering its probes, and the count of starts.
pub fn numbered_probes() -> (
    impl Fn() -> Result<Probe, BoxError> + Send + Sync + 'static,
    Arc<AtomicUsize>,
) {
    let started = Arc::new(AtomicUsize::new(0));
    let count = started.clone();
    (
        move || Ok(Probe::new(count.fetch_add(1, Ordering::SeqCst))),
        started,
    )
}

/// A supervisor whose children the test sets, that can go down, and that counts its calls.
#[derive(Clone, Default)]
pub struct Switchboard {
    pub children: Arc<Mutex<Option<Vec<Arc<Probe>>>>>,
    pub calls: Arc<AtomicUsize>,
}

impl Switchboard {
    pub fn with(count: usize) -> Switchboard {
        let board = Switchboard::default();
        board.set((0..count).map(|id| Arc::new(Probe::new(id))).collect());
        board
    }

    pub fn set(&self, children: Vec<Arc<Probe>>) {
        *self.children.lock().unwrap() = Some(children);
    }

    pub fn stop(&self) {
        *self.children.lock().unwrap() = None;
    }

    pub fn current(&self) -> Vec<Arc<Probe>> {
        self.children.lock().unwrap().clone().unwrap_or_default()
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// The supervisor closure to hand to a builder.
    pub fn supervisor(
        &self,
    ) -> impl Fn() -> Result<Vec<Arc<Probe>>, BoxError> + Send + Sync + 'static {
        let board = self.clone();
        move || {
            board.calls.fetch_add(1, Ordering::SeqCst);
            board
                .children
                .lock()
                .unwrap()
                .clone()
                .ok_or_else(|| "supervisor not running".into())
        }
    }
}

/// Polls `condition` until it holds or `limit` passes; returns whether it held.
pub fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    condition()
}

/// A pool of probes that notices killed ones: a killed probe fails its checkout check and
/// is found broken on return, and is replaced.
pub fn probe_pool() -> cylinder::PoolBuilder<Probe> {
    cylinder::Pool::builder()
        .test_on_checkout(|probe: &mut Probe| probe.is_alive())
        .is_broken(|probe: &mut Probe| !probe.is_alive())
}

/// Runs `f` on its own thread and returns its result, or `None` if it did not finish within
/// `limit` (the thread is left behind: a deadlock fails the test rather than hanging it).
pub fn within<T: Send + 'static>(
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).ok()
}

/// Silences the panics a test causes on purpose (their message says "on purpose"); any other
/// panic is still printed.
pub fn quiet_panics() {
    std::panic::set_hook(Box::new(|info| {
        if !info.to_string().contains("on purpose") {
            eprintln!("{info}");
        }
    }));
}

/// A small deterministic generator (xorshift) for randomised test schedules.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// A worker that counts itself out of `live` when dropped: the pool's workers alive.
pub struct Tracked(pub Arc<AtomicUsize>);

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Asserts that the pool settles within 5 s: nothing starting or waiting, at most `most` open,
/// `free + leased == size`, and `live` (workers alive) equal to its size.
pub fn settles<W: Send + 'static>(
    pool: &cylinder::Pool<W>,
    live: &AtomicUsize,
    most: usize,
    what: &str,
) {
    let settled = eventually(Duration::from_secs(5), || {
        let stats = pool.stats();
        stats.starting == 0
            && stats.waiters == 0
            && stats.size <= most
            && stats.free + stats.leased == stats.size
            && live.load(Ordering::SeqCst) == stats.size
    });
    assert!(
        settled,
        "{what}: not settled: {:?}, live {}",
        pool.stats(),
        live.load(Ordering::SeqCst)
    );
}

/// Which pool of `pools` has `n` clients waiting in its line (a balancer's blocked checkout
/// waits in one), waiting up to 2 s for one to.
pub fn line_with<W: Send + 'static>(pools: &[cylinder::Pool<W>], n: usize) -> usize {
    assert!(
        eventually(Duration::from_secs(2), || pools
            .iter()
            .any(|p| p.stats().waiters == n)),
        "no line with {n} waiters: {:?}",
        pools.iter().map(cylinder::Pool::stats).collect::<Vec<_>>()
    );
    pools.iter().position(|p| p.stats().waiters == n).unwrap()
}

/// A builder of a pool named `server-{n}` with `size` workers, for a balancer of pools.
pub fn numbered(n: usize, size: usize) -> cylinder::PoolBuilder<usize> {
    cylinder::Pool::builder()
        .name(format!("server-{n}"))
        .size(size)
}

/// A balancer client on its own thread: the worker it got (or the error) and how long it
/// waited.
pub fn balancer_client(
    balancer: cylinder::Balancer<cylinder::Pool<usize>>,
    timeout: Duration,
) -> std::thread::JoinHandle<(Result<usize, cylinder::Error>, Duration)> {
    std::thread::spawn(move || {
        let began = Instant::now();
        let got = balancer.checkout_timeout(timeout).map(|lease| *lease);
        (got, began.elapsed())
    })
}

/// `count` pools of one worker each (`numbered`, worker `n`), every worker checked at each
/// checkout, pool `n`'s check taking 1.5 s while `slow` holds `n`; each pool's worker is
/// held by the test (drop a lease to free that pool's worker): every pool is busy.
pub fn busy_pools_with_a_slow_check(
    count: usize,
    slow: &Arc<AtomicUsize>,
    fifo_after: Duration,
) -> (
    Vec<cylinder::Pool<usize>>,
    Vec<Option<cylinder::OwnedLease<usize>>>,
) {
    let pools: Vec<cylinder::Pool<usize>> = (0..count)
        .map(|n| {
            let slow = slow.clone();
            numbered(n, 1)
                .fifo_after(fifo_after)
                .check_after_idle(Duration::ZERO)
                .test_on_checkout(move |_: &mut usize| {
                    if slow.load(Ordering::SeqCst) == n {
                        std::thread::sleep(Duration::from_millis(1500));
                    }
                    true
                })
                .build(move || Ok(n))
                .unwrap()
        })
        .collect();
    let held = pools
        .iter()
        .map(|p| Some(p.checkout_owned().unwrap()))
        .collect();
    (pools, held)
}

/// Every pool's worker held by the test, one lease a pool (`take` one to free that pool's
/// worker): the pools of one worker each are busy.
pub fn hold_all<W: Send + 'static>(
    pools: &[cylinder::Pool<W>],
) -> Vec<Option<cylinder::OwnedLease<W>>> {
    pools
        .iter()
        .map(|p| Some(p.checkout_owned().unwrap()))
        .collect()
}

/// Drops a lease of `pool` (one worker, whose `reset` fails): the drop must return (no panic
/// into the client), the worker be replaced (free 1 of size 1) within 3 s, and the next
/// checkout work.
pub fn assert_a_failed_reset_is_replaced(pool: &cylinder::Pool<u32>) {
    let lease = pool.checkout().unwrap();
    let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(lease)));
    let settled = eventually(Duration::from_secs(3), || {
        let stats = pool.stats();
        stats.size == 1 && stats.free == 1 && stats.starting == 0
    });
    let stats = pool.stats();
    let next = pool.checkout().map(|lease| *lease);
    assert!(
        dropped.is_ok() && settled && next.is_ok(),
        "drop(lease) panicked into the client: {}; settled: {settled}, stats {stats:?}; next \
         checkout {next:?}",
        dropped.is_err()
    );
}

/// What a `drain` called from a callback answered, and how long it took.
pub type Drained = Arc<Mutex<Option<(Result<(), cylinder::Error>, Duration)>>>;

/// The pool a callback drains, taken (once) by the first callback that fires armed.
pub type Slot<W> = Arc<Mutex<Option<cylinder::Pool<W>>>>;

/// Drains the pool in `slot` (if still there, once) with `limit`, recording the answer.
pub fn drain_once<W: Send + 'static>(slot: &Slot<W>, outcome: &Drained, limit: Duration) {
    let pool = slot.lock().unwrap().take();
    if let Some(pool) = pool {
        let began = Instant::now();
        let drained = pool.drain(limit);
        *outcome.lock().unwrap() = Some((drained, began.elapsed()));
    }
}

/// A worker whose `Drop` drains its own pool within 800 ms (once: the first one dropped
/// with the slot filled).
pub struct Draining {
    pub slot: Slot<Draining>,
    pub outcome: Drained,
}

impl Drop for Draining {
    fn drop(&mut self) {
        drain_once(&self.slot, &self.outcome, Duration::from_millis(800));
    }
}

/// A start closure of `Draining` workers sharing `slot` and `outcome`.
pub fn draining(
    slot: &Slot<Draining>,
    outcome: &Drained,
) -> impl Fn() -> Result<Draining, BoxError> + Send + Sync + 'static {
    let (slot, outcome) = (slot.clone(), outcome.clone());
    move || {
        Ok(Draining {
            slot: slot.clone(),
            outcome: outcome.clone(),
        })
    }
}

/// Whether this process is a child that `assert_exits_normally_in_a_child` runs.
pub fn is_child() -> bool {
    std::env::var_os("CYLINDER_TEST_CHILD").is_some()
}

/// Runs this binary's test `name` alone in a child process (where `is_child` is true) and
/// asserts that it exited normally: a process abort (two panics in one unwinding) shows
/// here as a failure, not as the death of the whole test binary.
pub fn assert_exits_normally_in_a_child(name: &str) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env("CYLINDER_TEST_CHILD", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the child running {name} did not exit normally ({:?}); stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Drops `value` and asserts that nothing panicked into the caller.
pub fn assert_drops_quietly<T>(value: T) {
    let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(value)));
    assert!(dropped.is_ok(), "dropping it panicked into the caller");
}

/// A value whose `Drop` panics (captured by a user closure, a manager, a recorder's handle).
pub struct DropBomb;

impl Drop for DropBomb {
    fn drop(&mut self) {
        panic!("a value that panics on purpose when dropped");
    }
}
