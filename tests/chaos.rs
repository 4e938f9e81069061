//! The chaos run: 16 client threads mix every pool and balancer call (and the optional
//! features: owned leases, overflow, checkout checks, return tests, slow-lease reports,
//! broadcast, `min_idle` with `idle_timeout`, `max_lifetime`) while a chaos thread kills
//! worker threads, resizes a pool, makes the pools' starts fail for a while and takes the
//! balancer's supervisor away; clients panic while holding leases, discard and take leases,
//! and move owned leases to other threads. A per-worker "in use" flag catches any double
//! lease; a watchdog fails the run instead of hanging CI. At the end every invariant must hold
//! and the counters must add up.
//!
//! Workers are also made hostile: every fifth one panics in its `Drop`, and for spells the
//! pools' starts hand out workers that are dead on arrival (their thread crashes at once).
//!
//! `CYLINDER_CHAOS_SECS` (default 3) and `CYLINDER_CHAOS_SEED` run it longer or with another
//! seed; the seed is printed, and is in the failure message.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use cylinder::{
    Actor, Balancer, Behaviour, BoxError, Error, Factory, Lease, OwnedLease, Pool, PoolBuilder,
    Supervisor, Worker,
};

const CLIENTS: usize = 16;
const POOL_SIZE: usize = 4;
const BALANCED: usize = 4;

/// splitmix64: a small seeded generator, so a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

enum Request {
    Echo(u64),
    Crash,
    /// The handler calls its own actor: it must get `CallingSelf` at once.
    CallSelf,
}

/// Self-calls that got anything but `Error::CallingSelf`.
static WRONG_SELF_CALLS: AtomicU64 = AtomicU64::new(0);

/// Knows its own actor, to call it from its handler.
#[derive(Default)]
struct Echo {
    me: Arc<std::sync::OnceLock<std::sync::Weak<Actor<Echo>>>>,
}

impl Behaviour for Echo {
    type Request = Request;
    type Reply = u64;
    fn handle_call(&mut self, request: Request) -> u64 {
        match request {
            Request::Echo(n) => n,
            Request::Crash => panic!("chaos: worker thread killed"),
            Request::CallSelf => {
                if let Some(me) = self.me.get().and_then(std::sync::Weak::upgrade) {
                    if !matches!(me.call(Request::Echo(7)), Err(Error::CallingSelf)) {
                        WRONG_SELF_CALLS.fetch_add(1, Ordering::SeqCst);
                    }
                }
                0
            }
        }
    }
}

/// An actor that knows itself.
fn spawn_echo() -> Result<Arc<Actor<Echo>>, BoxError> {
    let echo = Echo::default();
    let me = echo.me.clone();
    let actor = Arc::new(Actor::spawn(echo)?);
    let _ = me.set(Arc::downgrade(&actor));
    Ok(actor)
}

/// A worker thread with an "in use" flag that catches double leases.
struct Member {
    thread: Arc<Actor<Echo>>,
    in_use: AtomicBool,
    /// Its `Drop` panics.
    bomb: bool,
}

impl Member {
    fn new(serial: u64) -> Result<Member, BoxError> {
        Ok(Member {
            thread: spawn_echo()?,
            in_use: AtomicBool::new(false),
            bomb: serial % 5 == 4,
        })
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if self.bomb && !thread::panicking() {
            panic!("chaos: a worker's drop panics");
        }
    }
}

impl Worker for Member {
    fn is_alive(&self) -> bool {
        self.thread.is_alive()
    }
    fn queue_len(&self) -> Option<usize> {
        self.thread.queue_len()
    }
}

/// A factory supervisor the chaos thread can take away and bring back.
struct Switchable {
    factory: Factory<Member>,
    up: AtomicBool,
}

#[derive(Clone)]
struct Shared(Arc<Switchable>);

impl Supervisor<Member> for Shared {
    fn children(&self) -> Result<Vec<Arc<Member>>, BoxError> {
        if !self.0.up.load(Ordering::SeqCst) {
            return Err("chaos: supervisor is down".into());
        }
        self.0.factory.children()
    }
    fn retire(&self, worker: &Arc<Member>) {
        self.0.factory.retire(worker)
    }
}

fn supervisor(size: usize) -> Shared {
    Shared(Arc::new(Switchable {
        factory: Factory::new(size, {
            let serial = AtomicU64::new(0);
            move || Member::new(serial.fetch_add(1, Ordering::Relaxed))
        }),
        up: AtomicBool::new(true),
    }))
}

#[derive(Default)]
struct Tally {
    operations: AtomicU64,
    double_leases: AtomicU64,
    unexpected: AtomicU64,
    client_panics: AtomicU64,
    discards: AtomicU64,
    takes: AtomicU64,
    kills: AtomicU64,
    resizes: AtomicU64,
    outages: AtomicU64,
}

struct World {
    /// A pool of worker threads that notices dead ones (a check before each lease, a test on
    /// return); its starts fail while `starts_down` is set.
    pool: Pool<Member>,
    /// A pool with every extra option: overflow, `min_idle` below `size` with an
    /// `idle_timeout`, a `max_lifetime`, a checkout check that fails now and then, slow-lease
    /// reports; the chaos thread resizes it.
    elastic: Pool<Member>,
    balancer: Balancer<Member>,
    starts_down: Arc<AtomicBool>,
    /// While set, the pools' starts hand out workers whose thread is crashing.
    dead_on_arrival: Arc<AtomicBool>,
    balancer_sup: Shared,
    tally: Tally,
    stop: AtomicBool,
    closing: AtomicBool,
}

fn expected(err: &Error, world: &World) -> bool {
    match err {
        Error::Timeout { .. }
        | Error::Overload
        | Error::Disconnected { .. }
        | Error::WorkerDied => true,
        Error::Closed => world.closing.load(Ordering::SeqCst),
        _ => false,
    }
}

/// Uses a leased worker: flags a double lease, sometimes calls it, sometimes kills it,
/// panics, discards or takes it.
fn use_lease(world: &World, mut lease: Lease<'_, Member>, rng: &mut Rng) {
    if lease.in_use.swap(true, Ordering::AcqRel) {
        world.tally.double_leases.fetch_add(1, Ordering::SeqCst);
    }
    let member: &mut Member = &mut lease;
    if rng.below(4) == 0 {
        let _ = member
            .thread
            .call_timeout(Request::Echo(1), Duration::from_millis(100));
    }
    let fate = rng.below(100);
    member.in_use.store(false, Ordering::Release);
    match fate {
        0..=2 => {
            world.tally.client_panics.fetch_add(1, Ordering::Relaxed);
            panic!("chaos: client fails while holding a lease");
        }
        3..=4 => {
            world.tally.discards.fetch_add(1, Ordering::Relaxed);
            Lease::discard(lease);
        }
        5 => {
            world.tally.takes.fetch_add(1, Ordering::Relaxed);
            drop(Lease::take(lease));
        }
        6 => {
            world.tally.kills.fetch_add(1, Ordering::Relaxed);
            let _ = lease.thread.cast(Request::Crash);
        }
        _ => drop(lease),
    }
}

/// Moves an owned lease to a thread of its own, which uses it and lets it go there.
fn use_owned_elsewhere(world: &World, lease: OwnedLease<Member>) {
    let flagged = thread::spawn(move || {
        let twice = lease.in_use.swap(true, Ordering::AcqRel);
        lease.in_use.store(false, Ordering::Release);
        twice
    })
    .join()
    .unwrap_or(false);
    if flagged {
        world.tally.double_leases.fetch_add(1, Ordering::SeqCst);
    }
}

fn client(world: &World, seed: u64) {
    let mut rng = Rng(seed);
    while !world.stop.load(Ordering::Relaxed) {
        world.tally.operations.fetch_add(1, Ordering::Relaxed);
        let outcome = catch_unwind(AssertUnwindSafe(|| -> Result<(), Error> {
            match rng.below(11) {
                0 => use_lease(world, world.pool.checkout()?, &mut rng),
                1 => use_lease(
                    world,
                    world
                        .pool
                        .checkout_timeout(Duration::from_millis(rng.below(20) + 1))?,
                    &mut rng,
                ),
                2 => use_lease(world, world.pool.try_checkout()?, &mut rng),
                7 => use_owned_elsewhere(world, world.pool.checkout_owned()?),
                3 => world.pool.transaction(|member| {
                    if member.in_use.swap(true, Ordering::AcqRel) {
                        world.tally.double_leases.fetch_add(1, Ordering::SeqCst);
                    }
                    member.in_use.store(false, Ordering::Release);
                })?,
                4 | 5 => {
                    let member = world.balancer.get()?;
                    member
                        .thread
                        .call_timeout(Request::Echo(2), Duration::from_millis(100))?;
                    // A handler calling its own actor, inline or on the actor's thread.
                    match rng.below(8) {
                        0 => drop(member.thread.call(Request::CallSelf)?),
                        1 => drop(
                            member
                                .thread
                                .call_timeout(Request::CallSelf, Duration::from_millis(100))?,
                        ),
                        _ => {}
                    }
                }
                6 => {
                    world.balancer.map(|member| member.is_alive());
                }
                8 => use_lease(
                    world,
                    world.elastic.checkout_timeout(Duration::from_millis(20))?,
                    &mut rng,
                ),
                9 => use_lease(world, world.elastic.try_checkout()?, &mut rng),
                10 => {
                    world.elastic.map(|member| {
                        if member.in_use.swap(true, Ordering::AcqRel) {
                            world.tally.double_leases.fetch_add(1, Ordering::SeqCst);
                        }
                        member.in_use.store(false, Ordering::Release);
                    });
                }
                _ => match world.balancer.connect() {
                    Ok(_) | Err(Error::Disconnected { .. }) => {}
                    Err(other) => return Err(other),
                },
            }
            Ok(())
        }));
        match outcome {
            Ok(Ok(())) | Err(_) => {}
            Ok(Err(err)) if expected(&err, world) => {}
            Ok(Err(err)) => {
                eprintln!("chaos: unexpected error {err:?}");
                world.tally.unexpected.fetch_add(1, Ordering::SeqCst);
            }
        }
        if world.closing.load(Ordering::SeqCst) && world.pool.is_closed() && rng.below(4) == 0 {
            break;
        }
    }
}

fn chaos(world: &World, seed: u64) {
    let mut rng = Rng(seed);
    while !world.stop.load(Ordering::Relaxed) {
        thread::sleep(Duration::from_millis(rng.below(5) + 1));
        match rng.below(11) {
            0..=2 => {
                if let Ok(children) = world.balancer_sup.0.factory.children() {
                    let victim = &children[rng.below(children.len() as u64) as usize];
                    let _ = victim.thread.cast(Request::Crash);
                    world.tally.kills.fetch_add(1, Ordering::Relaxed);
                    // These clones may be the last (the balancer let go of a member since):
                    // dropping a member whose `Drop` panics is this thread's to contain.
                    let _ = catch_unwind(AssertUnwindSafe(|| drop(children)));
                }
            }
            3..=5 => {
                // Kill a free worker of the pool where it lies.
                let victim = rng.below(POOL_SIZE as u64) as usize;
                let mut n = 0;
                world.pool.map(|member| {
                    if n == victim {
                        let _ = member.thread.cast(Request::Crash);
                        world.tally.kills.fetch_add(1, Ordering::Relaxed);
                    }
                    n += 1;
                });
            }
            6 => {
                world.tally.outages.fetch_add(1, Ordering::Relaxed);
                world.starts_down.store(true, Ordering::SeqCst);
                world.balancer_sup.0.up.store(false, Ordering::SeqCst);
                thread::sleep(Duration::from_millis(rng.below(30) + 1));
                world.starts_down.store(false, Ordering::SeqCst);
                world.balancer_sup.0.up.store(true, Ordering::SeqCst);
            }
            9 => {
                world.tally.outages.fetch_add(1, Ordering::Relaxed);
                world.dead_on_arrival.store(true, Ordering::SeqCst);
                thread::sleep(Duration::from_millis(rng.below(30) + 1));
                world.dead_on_arrival.store(false, Ordering::SeqCst);
            }
            7 => {
                let _ = world.elastic.resize(1 + rng.below(6) as usize);
                world.tally.resizes.fetch_add(1, Ordering::Relaxed);
            }
            8 => {
                let victim = rng.below(4) as usize;
                let mut n = 0;
                world.elastic.map(|member| {
                    if n == victim {
                        let _ = member.thread.cast(Request::Crash);
                        world.tally.kills.fetch_add(1, Ordering::Relaxed);
                    }
                    n += 1;
                });
            }
            _ => {}
        }
    }
}

/// Keeps the run's thousands of deliberate panics ("chaos: ...") off stderr; any other panic
/// is reported as usual.
fn quiet_chaos_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str));
            if message.is_some_and(|m| m.starts_with("chaos: ")) {
                // Silent, but kept: should it escape its thread, the watchdog says where.
                // (Captured unresolved: symbols are looked up only if it is reported.)
                let at = (info.to_string(), std::backtrace::Backtrace::force_capture());
                let _ = LAST_PANIC.try_with(|last| *last.borrow_mut() = Some(at));
            } else {
                report(info);
            }
        }));
    });
}

fn settings() -> (Duration, u64) {
    quiet_chaos_panics();
    let secs = std::env::var("CYLINDER_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(3.0);
    let seed = std::env::var("CYLINDER_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0x00C0_FFEE);
    (Duration::from_secs_f64(secs), seed)
}

/// A pool builder of members that notices dead ones, and the start closure, which fails
/// while `down` is set.
fn members(
    down: &Arc<AtomicBool>,
    dead_on_arrival: &Arc<AtomicBool>,
) -> (
    PoolBuilder<Member>,
    impl Fn() -> Result<Member, BoxError> + Send + Sync + 'static,
) {
    let (down, dead_on_arrival) = (down.clone(), dead_on_arrival.clone());
    let serial = AtomicU64::new(0);
    let builder = Pool::builder()
        .is_alive(|member: &Member| member.thread.is_alive())
        .is_broken(|member: &mut Member| !member.thread.is_alive())
        .checkout_timeout(Duration::from_millis(50))
        .reconnect_delay(Duration::from_millis(5));
    (builder, move || {
        if down.load(Ordering::SeqCst) {
            return Err("chaos: starts are failing".into());
        }
        let member = Member::new(serial.fetch_add(1, Ordering::Relaxed))?;
        if dead_on_arrival.load(Ordering::SeqCst) {
            let _ = member.thread.cast(Request::Crash);
        }
        Ok(member)
    })
}

fn build_world() -> Arc<World> {
    let balancer_sup = supervisor(BALANCED);
    let starts_down = Arc::new(AtomicBool::new(false));
    let checks = AtomicU64::new(0);
    let dead_on_arrival = Arc::new(AtomicBool::new(false));
    let (elastic, start_elastic) = members(&starts_down, &dead_on_arrival);
    let (pool, start) = members(&starts_down, &dead_on_arrival);
    Arc::new(World {
        elastic: elastic
            .size(3)
            .min_idle(1)
            .idle_timeout(Duration::from_millis(15))
            .max_lifetime(Duration::from_millis(40))
            .name("chaos-elastic")
            .max_overflow(2)
            .warn_after(Duration::from_millis(20))
            .test_on_checkout(move |member: &mut Member| {
                member.thread.is_alive() && checks.fetch_add(1, Ordering::Relaxed) % 50 != 49
            })
            .build(start_elastic)
            .unwrap(),
        pool: pool
            .size(POOL_SIZE)
            .name("chaos-pool")
            .test_on_checkout(|member: &mut Member| member.thread.is_alive())
            .build(start)
            .unwrap(),
        balancer: Balancer::builder()
            .name("chaos-balancer")
            .reconnect_delay(Duration::from_millis(5))
            .min_alive_ratio(0.75)
            .build_with(balancer_sup.clone())
            .unwrap(),
        starts_down,
        dead_on_arrival,
        balancer_sup,
        tally: Tally::default(),
        stop: AtomicBool::new(false),
        closing: AtomicBool::new(false),
    })
}

/// How a thread of the run ended: `Err` with what escaped it (a panic that got past the
/// client's own `catch_unwind`: the crate let one through), and where.
type Ended = Result<(), String>;

/// Starts the clients and the chaos thread; returns a receiver that hears from each thread
/// as it finishes.
fn start(world: &Arc<World>, seed: u64) -> mpsc::Receiver<Ended> {
    let (done, finished) = mpsc::channel();
    for n in 0..CLIENTS {
        let (world, done) = (world.clone(), done.clone());
        thread::spawn(move || {
            let _ = done.send(reported(&format!("client {n}"), || {
                client(&world, seed.wrapping_add(n as u64 + 1));
            }));
        });
    }
    let (world, done) = (world.clone(), done.clone());
    thread::spawn(move || {
        let _ = done.send(reported("the chaos thread", || chaos(&world, seed)));
    });
    finished
}

/// Runs `f`; a panic that escapes it is reported with its message and where it was raised.
fn reported(who: &str, f: impl FnOnce()) -> Ended {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|m| (*m).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(a payload that is not a string)".into());
        // The payload may be hostile (its `Drop` may panic): not dropped here.
        std::mem::forget(payload);
        let at = LAST_PANIC
            .with(|last| last.take())
            .map(|(info, trace)| format!("{info}\n{trace}"))
            .unwrap_or_default();
        format!("{who} died of a panic: {message}\n{at}")
    })
}

thread_local! {
    /// Where this thread's last panic was raised (kept by the panic hook).
    static LAST_PANIC: std::cell::RefCell<Option<(String, std::backtrace::Backtrace)>> =
        const { std::cell::RefCell::new(None) };
}

/// The watchdog: every thread must finish within `limit`, none of a panic that escaped.
fn join_all(finished: &mpsc::Receiver<Ended>, seed: u64, limit: Duration) {
    let deadline = Instant::now() + limit;
    for n in 0..=CLIENTS {
        let left = deadline.saturating_duration_since(Instant::now());
        match finished.recv_timeout(left) {
            Ok(Ok(())) => {}
            Ok(Err(died)) => panic!("chaos (seed {seed}): {died}"),
            Err(_) => panic!(
                "chaos (seed {seed}): watchdog: {} of {} threads still running after {limit:?}",
                CLIENTS + 1 - n,
                CLIENTS + 1
            ),
        }
    }
}

fn report(world: &World, what: &str, seed: u64, secs: Duration) {
    let t = &world.tally;
    eprintln!(
        "chaos {what} (seed {seed}, {secs:?}, {CLIENTS} clients): {} operations; faults: {} worker kills, {} start/supervisor outages, {} client panics, {} discards, {} takes, {} resizes; pool {:?}; elastic pool {:?}",
        t.operations.load(Ordering::Relaxed),
        t.kills.load(Ordering::Relaxed),
        t.outages.load(Ordering::Relaxed),
        t.client_panics.load(Ordering::Relaxed),
        t.discards.load(Ordering::Relaxed),
        t.takes.load(Ordering::Relaxed),
        t.resizes.load(Ordering::Relaxed),
        world.pool.stats(),
        world.elastic.stats(),
    );
}

#[test]
fn chaos_run_keeps_every_invariant() {
    let (secs, seed) = settings();
    eprintln!(
        "chaos: CYLINDER_CHAOS_SEED={seed} CYLINDER_CHAOS_SECS={}",
        secs.as_secs_f64()
    );
    let world = build_world();
    let finished = start(&world, seed);
    thread::sleep(secs);
    world.stop.store(true, Ordering::SeqCst);
    join_all(&finished, seed, Duration::from_secs(30));
    assert_eq!(
        WRONG_SELF_CALLS.load(Ordering::SeqCst),
        0,
        "chaos (seed {seed}): a handler calling its own actor got something else than CallingSelf"
    );

    // Faults over (a kill already queued in a worker's mailbox may still land): the pool
    // must come back to full size, every worker leasable at once and alive.
    let back = Instant::now();
    let pool = &world.pool;
    loop {
        // Checkouts also meet the dead workers that still sit free, and retire them.
        let leases: Vec<_> = (0..POOL_SIZE)
            .filter_map(|_| pool.try_checkout().ok())
            .collect();
        let full = leases.len() == POOL_SIZE && leases.iter().all(|l| l.thread.is_alive());
        drop(leases);
        let stats = pool.stats();
        if full && stats.size == POOL_SIZE && stats.free == POOL_SIZE {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "chaos (seed {seed}): pool not back to full size: {stats:?}"
        );
        thread::sleep(Duration::from_millis(5));
    }
    report(&world, "run", seed, secs);
    let stats = pool.stats();
    let t = &world.tally;
    assert_eq!(
        t.double_leases.load(Ordering::SeqCst),
        0,
        "chaos (seed {seed}): a worker was leased twice"
    );
    assert_eq!(
        t.unexpected.load(Ordering::SeqCst),
        0,
        "chaos (seed {seed}): unexpected errors"
    );
    assert_eq!(stats.leased, 0, "chaos (seed {seed}): {stats:?}");
    assert_eq!(stats.waiters, 0, "chaos (seed {seed}): {stats:?}");
    assert_eq!(
        stats.checkouts,
        stats.releases + stats.discards + stats.takes,
        "chaos (seed {seed}): {stats:?}"
    );
    // Client discards went to both pools; each pool also counts dead workers it met.
    let both = stats.discards + world.elastic.stats().discards;
    assert!(
        both >= t.discards.load(Ordering::Relaxed),
        "chaos (seed {seed}): {stats:?}"
    );
    assert!(
        t.kills.load(Ordering::Relaxed) > 0 && t.client_panics.load(Ordering::Relaxed) > 0,
        "chaos (seed {seed}): the run injected too few faults"
    );
    // The elastic pool settles at its final size with nothing leased and no overflow left.
    let elastic = &world.elastic;
    elastic.resize(3).unwrap();
    let back = Instant::now();
    loop {
        let leases: Vec<_> = (0..3).filter_map(|_| elastic.try_checkout().ok()).collect();
        let full = leases.len() == 3 && leases.iter().all(|l| l.thread.is_alive());
        drop(leases);
        let stats = elastic.stats();
        // Idle workers beyond min_idle close after idle_timeout: between 1 and 3 stay open.
        if full && (1..=3).contains(&stats.size) && stats.free == stats.size && stats.overflow == 0
        {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "chaos (seed {seed}): elastic pool not settled: {stats:?}"
        );
        thread::sleep(Duration::from_millis(5));
    }
    let stats = elastic.stats();
    assert_eq!(stats.leased, 0, "chaos (seed {seed}): {stats:?}");
    assert_eq!(
        stats.checkouts,
        stats.releases + stats.discards + stats.takes,
        "chaos (seed {seed}): {stats:?}"
    );
    assert!(
        stats.restarts > 0,
        "chaos (seed {seed}): max_lifetime and idle_timeout churned nothing: {stats:?}"
    );
    // The balancer serves live workers again.
    let until = Instant::now() + Duration::from_secs(10);
    while world.balancer.get().is_err() {
        assert!(
            Instant::now() < until,
            "chaos (seed {seed}): the balancer did not reconnect"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn chaos_run_ends_with_close_under_load() {
    let (secs, seed) = settings();
    let seed = seed.wrapping_add(1);
    let world = build_world();
    let finished = start(&world, seed);
    thread::sleep(secs / 3);
    world.closing.store(true, Ordering::SeqCst);
    world.pool.close();
    assert!(matches!(world.pool.checkout(), Err(Error::Closed)));
    thread::sleep(Duration::from_millis(50));
    world.stop.store(true, Ordering::SeqCst);
    join_all(&finished, seed, Duration::from_secs(30));
    assert_eq!(
        WRONG_SELF_CALLS.load(Ordering::SeqCst),
        0,
        "chaos (seed {seed}): a handler calling its own actor got something else than CallingSelf"
    );
    report(&world, "closed under load", seed, secs / 3);
    let stats = world.pool.stats();
    assert_eq!(
        world.tally.double_leases.load(Ordering::SeqCst),
        0,
        "chaos (seed {seed}): a worker was leased twice"
    );
    assert_eq!(
        world.tally.unexpected.load(Ordering::SeqCst),
        0,
        "chaos (seed {seed}): unexpected errors"
    );
    assert_eq!(
        (stats.leased, stats.waiters),
        (0, 0),
        "chaos (seed {seed}): {stats:?}"
    );
    assert_eq!(
        stats.checkouts,
        stats.releases + stats.discards + stats.takes,
        "chaos (seed {seed}): {stats:?}"
    );
}
