//! Reloads: linear in the size of the set, never blocking the readers, never running user code
//! under a lock, and done at once by a `get` that finds the whole set dead. Errors carry their
//! cause exactly once. The handle is `Clone` and may be dropped anywhere, the reaper included.

mod common;

use std::error::Error as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use common::{eventually, Probe, Switchboard};
use cylinder::{Balancer, BoxError, Error, Event, Worker};

const SLACK: Duration = Duration::from_secs(5);

/// Every message in `err`'s chain, walking `source()`.
fn chain(err: &Error) -> Vec<String> {
    let mut links = vec![err.to_string()];
    let mut next = err.source();
    while let Some(link) = next {
        links.push(link.to_string());
        next = link.source();
    }
    links
}

fn mentions(err: &Error, needle: &str) -> usize {
    chain(err).iter().map(|l| l.matches(needle).count()).sum()
}

#[test]
fn the_supervisors_error_is_named_exactly_once() {
    let balancer = Balancer::<Probe>::builder()
        .build_with(|| -> Result<Vec<Arc<Probe>>, BoxError> { Err("blammo".into()) })
        .unwrap();
    let from_get = balancer.get().unwrap_err();
    assert!(matches!(from_get, Error::Disconnected { .. }));
    assert_eq!(mentions(&from_get, "blammo"), 1, "{:?}", chain(&from_get));
    let from_connect = balancer.connect().unwrap_err();
    assert!(matches!(from_connect, Error::Disconnected { .. }));
    assert_eq!(
        mentions(&from_connect, "blammo"),
        1,
        "{:?}",
        chain(&from_connect)
    );
    assert_eq!(from_connect.source().unwrap().to_string(), "blammo");
    let from_lease = balancer.lease().unwrap_err();
    assert_eq!(
        mentions(&from_lease, "blammo"),
        1,
        "{:?}",
        chain(&from_lease)
    );
}

#[test]
fn a_factorys_start_error_is_named_exactly_once() {
    let factory = cylinder::Factory::new(2, || -> Result<Probe, BoxError> {
        Err("no database".into())
    });
    let balancer = Balancer::builder().build_with(factory).unwrap();
    let err = balancer.get().unwrap_err();
    assert!(matches!(err, Error::Disconnected { .. }));
    assert_eq!(mentions(&err, "no database"), 1, "{:?}", chain(&err));
    assert_eq!(mentions(&err, "disconnected"), 1, "{:?}", chain(&err));
    let panicking = cylinder::Factory::new(1, || -> Result<Probe, BoxError> { panic!("kaboom") });
    let balancer = Balancer::builder().build_with(panicking).unwrap();
    let err = balancer.connect().unwrap_err();
    assert_eq!(mentions(&err, "kaboom"), 1, "{:?}", chain(&err));
    assert_eq!(mentions(&err, "disconnected"), 1, "{:?}", chain(&err));
}

#[test]
fn a_supervisors_panic_is_the_cause() {
    let balancer = Balancer::<Probe>::builder()
        .build_with(|| -> Result<Vec<Arc<Probe>>, BoxError> { panic!("kaboom") })
        .unwrap();
    let err = balancer.get().unwrap_err();
    assert!(matches!(err, Error::Disconnected { .. }));
    assert_eq!(mentions(&err, "kaboom"), 1, "{:?}", chain(&err));
}

#[test]
fn no_live_children_is_the_cause_and_get_says_the_latest() {
    let board = Switchboard::default();
    board.set(Vec::new());
    let balancer = Balancer::builder()
        .reconnect_delay(Duration::from_millis(10))
        .build_with(board.supervisor())
        .unwrap();
    let err = balancer.get().unwrap_err();
    assert_eq!(mentions(&err, "no live children"), 1, "{:?}", chain(&err));
    board.stop();
    assert!(eventually(SLACK, || {
        balancer
            .get()
            .is_err_and(|err| mentions(&err, "supervisor not running") == 1)
    }));
}

#[test]
fn a_set_found_all_dead_is_reloaded_at_once() {
    let board = Switchboard::with(3);
    // A long reconnect delay: only an immediate reload can make the next get() succeed.
    let balancer = Balancer::builder()
        .reconnect_delay(Duration::from_secs(60))
        .min_alive_ratio(0.0)
        .build_with(board.supervisor())
        .unwrap();
    let old = board.current();
    board.set((10..13).map(|id| Arc::new(Probe::new(id))).collect());
    for child in &old {
        child.kill();
    }
    let id = balancer.get().expect("the supervisor has live children").id;
    assert!((10..13).contains(&id));
    // Many threads meeting the dead set at once: every one gets a live worker.
    let old = board.current();
    board.set((20..23).map(|id| Arc::new(Probe::new(id))).collect());
    for child in &old {
        child.kill();
    }
    thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                let id = balancer.get().expect("no transient Disconnected").id;
                assert!((20..23).contains(&id));
            });
        }
    });
}

/// A supervisor whose `children()` blocks while `blocking` is set.
fn slow_supervisor(
    board: &Switchboard,
    blocking: Arc<AtomicBool>,
) -> impl Fn() -> Result<Vec<Arc<Probe>>, BoxError> + Send + Sync + 'static {
    let inner = board.supervisor();
    move || {
        if blocking.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_secs(2));
        }
        inner()
    }
}

#[test]
fn readers_never_wait_for_a_blocked_supervisor() {
    let board = Switchboard::with(3);
    let blocking = Arc::new(AtomicBool::new(false));
    let balancer = Balancer::builder()
        .min_alive_ratio(0.5)
        .build_with(slow_supervisor(&board, blocking.clone()))
        .unwrap();
    blocking.store(true, Ordering::SeqCst);
    let connecting = {
        let balancer = balancer.clone();
        thread::spawn(move || balancer.connect())
    };
    // The reaper is blocked too (a death below the ratio asked it for a round).
    board.current()[0].kill();
    board.current()[1].kill();
    let _ = balancer.get();
    assert!(eventually(SLACK, || board.calls() >= 1));
    thread::sleep(Duration::from_millis(100));
    let began = Instant::now();
    for _ in 0..100 {
        assert_eq!(balancer.len(), 3);
        assert!(!balancer.is_empty());
        assert_eq!(balancer.map(|w| w.id), vec![2]);
        assert!(format!("{balancer:?}").contains("len: 3"));
        let _ = balancer.reloads();
        assert_eq!(balancer.get().unwrap().id, 2);
        assert_eq!(balancer.transaction(|w| w.id).unwrap(), 2);
    }
    assert!(
        began.elapsed() < Duration::from_millis(500),
        "readers waited {:?}",
        began.elapsed()
    );
    blocking.store(false, Ordering::SeqCst);
    assert!(connecting.join().unwrap().is_ok());
}

#[test]
fn an_event_callback_may_read_the_balancer() {
    let slot: Arc<OnceLock<Balancer<Probe>>> = Arc::new(OnceLock::new());
    let reads = Arc::new(AtomicUsize::new(0));
    let (inner, count) = (slot.clone(), reads.clone());
    let board = Switchboard::with(2);
    let balancer = Balancer::builder()
        .min_alive_ratio(0.0)
        .on_event(move |event| {
            if let Some(balancer) = inner.get() {
                // Every event: len, map, get, Debug, and a reconnect from the callback.
                let _ = balancer.len();
                let _ = balancer.map(|w| w.id);
                let _ = balancer.get();
                let _ = format!("{balancer:?}");
                if matches!(event, Event::WorkerDied) {
                    let _ = balancer.connect();
                }
                count.fetch_add(1, Ordering::SeqCst);
            }
        })
        .build_with(board.supervisor())
        .unwrap();
    slot.set(balancer.clone()).ok().unwrap();
    balancer.connect().unwrap();
    board.current()[0].kill();
    for _ in 0..4 {
        let _ = balancer.get();
    }
    board.current()[1].kill();
    board.set(vec![Arc::new(Probe::new(5))]);
    assert_eq!(balancer.get().unwrap().id, 5);
    assert!(reads.load(Ordering::SeqCst) >= 4);
}

#[test]
fn the_last_handle_dropped_on_the_reaper_thread() {
    let slot: Arc<Mutex<Option<Balancer<Probe>>>> = Arc::new(Mutex::new(None));
    let done = Arc::new(AtomicBool::new(false));
    let (inner, finished) = (slot.clone(), done.clone());
    let board = Switchboard::with(2);
    let balancer = Balancer::builder()
        .on_event(move |event| {
            let on_reaper = thread::current()
                .name()
                .is_some_and(|n| n.starts_with("cylinder-reaper"));
            if on_reaper && matches!(event, Event::Connected { .. }) {
                let last = inner.lock().unwrap().take();
                if last.is_some() {
                    drop(last);
                    finished.store(true, Ordering::SeqCst);
                }
            }
        })
        .build_with(board.supervisor())
        .unwrap();
    *slot.lock().unwrap() = Some(balancer.clone());
    board.current()[0].kill();
    // The reaper's round (asked for by this death, which the next gets meet) drops the last
    // handle.
    for _ in 0..2 {
        let _ = balancer.get();
    }
    drop(balancer);
    assert!(eventually(SLACK, || done.load(Ordering::SeqCst)));
}

#[test]
fn clones_share_one_balancer_and_close_stops_the_reaper_for_all() {
    let board = Switchboard::with(2);
    let a = Balancer::builder()
        .reconnect_delay(Duration::from_millis(10))
        .build_with(board.supervisor())
        .unwrap();
    let b = a.clone();
    assert_ne!(a.get().unwrap().id, b.get().unwrap().id, "one rotation");
    let lease = a.lease().unwrap();
    assert_ne!(b.lease().unwrap().id, lease.id);
    drop(a);
    // The reaper still runs for b: a supervisor down is retried.
    board.stop();
    for child in board.current() {
        child.kill();
    }
    assert!(b.connect().is_err());
    let calls = board.calls();
    assert!(eventually(SLACK, || board.calls() > calls + 2));
    b.close();
    thread::sleep(Duration::from_millis(50));
    let calls = board.calls();
    thread::sleep(Duration::from_millis(100));
    assert_eq!(board.calls(), calls, "closed: no more retries");
}

struct Plain;
impl Worker for Plain {}

/// Builds a balancer over `n` workers and reloads it once after a death; returns both times.
fn build_and_reload(n: usize) -> (Duration, Duration) {
    let children: Arc<Mutex<Vec<Arc<Plain>>>> =
        Arc::new(Mutex::new((0..n).map(|_| Arc::new(Plain)).collect()));
    let listed = children.clone();
    let began = Instant::now();
    let balancer = Balancer::builder()
        .build_with(move || -> Result<_, BoxError> { Ok(listed.lock().unwrap().clone()) })
        .unwrap();
    let built = began.elapsed();
    assert_eq!(balancer.len(), n);
    children.lock().unwrap()[n / 2] = Arc::new(Plain);
    let began = Instant::now();
    let found = balancer.connect().unwrap();
    let reloaded = began.elapsed();
    assert_eq!((found.new, found.total), (1, n));
    (built, reloaded)
}

#[test]
fn reloads_are_linear_in_the_set() {
    let (built, reloaded) = build_and_reload(100_000);
    eprintln!("100k workers: built in {built:?}, reloaded in {reloaded:?}");
    // Generous bounds for a debug build on a busy machine (about 0.15 s each measured on two
    // idle cores; 0.1's linear membership scans would take minutes here). The ratio below is
    // what catches quadratic behaviour.
    assert!(built < Duration::from_secs(10), "built in {built:?}");
    assert!(
        reloaded < Duration::from_secs(10),
        "reloaded in {reloaded:?}"
    );
    // Four times the workers: linear takes ~4x as long in a debug build (up to ~9x measured
    // in release, once the 100k set outgrows the caches), quadratic 16x and more. Best of
    // five, to see through a busy machine.
    let best = |n: usize| {
        (0..5)
            .map(|_| {
                let (b, r) = build_and_reload(n);
                b + r
            })
            .min()
            .unwrap()
    };
    let (quarter, full) = (best(25_000), best(100_000));
    eprintln!("best of 5: 25k {quarter:?}, 100k {full:?}");
    assert!(
        full < quarter * 12,
        "25k: {quarter:?}, 100k: {full:?}: not linear"
    );
}
