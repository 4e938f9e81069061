//! Fourth breaking pass against the lifecycle and the callbacks: each test names its scenario
//! and fails on the code it was written against. Bounded in time; hangs are detected with
//! bounded waits.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use cylinder::{Balancer, BoxError, Event, Pool, Worker};

/// A quiet pool of one with `max_lifetime`: its only worker expires in a sweep. "Never
/// expire every worker at once" keeps it until the next sweep, "when its replacements are
/// in" — but with one worker none is ever started, so every later sweep keeps it again and
/// the worker lives forever, whatever `max_lifetime` says.
#[test]
fn max_lifetime_on_a_quiet_pool_of_one_still_replaces_its_worker() {
    let starts = Arc::new(AtomicUsize::new(0));
    let s = starts.clone();
    let pool = Pool::builder()
        .size(1)
        .max_lifetime(Duration::from_millis(100))
        .build(move || {
            s.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .unwrap();
    let began = Instant::now();
    while starts.load(Ordering::SeqCst) < 2 && began.elapsed() < Duration::from_secs(3) {
        thread::sleep(Duration::from_millis(10));
    }
    let started = starts.load(Ordering::SeqCst);
    let stats = pool.stats();
    drop(pool);
    assert!(
        started >= 2,
        "the only worker outlived max_lifetime (100 ms) by 3 s: never replaced ({started} \
         start(s); stats {stats:?})"
    );
}

/// Nine workers discarded at once while their replacements connect slowly: eight start
/// threads run eight of them, the ninth claim waits for a thread. Each of the eight reports
/// its `WorkerRestarted` with its place among the start threads given back — to an
/// `on_event` callback that blocks (a hung log sink). None of them takes the ninth claim
/// first, and no one else ever will: the pool stays one short, `starting == 1`, for as long
/// as the callbacks block.
#[test]
fn a_start_claimed_while_eight_start_threads_run_still_starts_when_they_block_in_callbacks() {
    let hold = Arc::new(AtomicBool::new(true));
    let h = hold.clone();
    let release = Arc::new(AtomicBool::new(false));
    let r = release.clone();
    let starts = Arc::new(AtomicUsize::new(0));
    let s = starts.clone();
    let pool = Pool::builder()
        .size(9)
        .checkout_timeout(Duration::from_secs(5))
        .on_event(move |event| {
            if matches!(event, Event::WorkerRestarted) {
                let began = Instant::now();
                while !r.load(Ordering::SeqCst) && began.elapsed() < Duration::from_secs(10) {
                    thread::sleep(Duration::from_millis(5));
                }
            }
        })
        .build(move || {
            if s.fetch_add(1, Ordering::SeqCst) >= 9 {
                // A slow reconnect, until the test lets it through.
                let began = Instant::now();
                while h.load(Ordering::SeqCst) && began.elapsed() < Duration::from_secs(10) {
                    thread::sleep(Duration::from_millis(2));
                }
            }
            Ok(())
        })
        .unwrap();
    let leases: Vec<_> = (0..9).map(|_| pool.checkout().unwrap()).collect();
    let mut leases = leases.into_iter();
    // Eight replacements, each on a start thread of its own, all connecting.
    for lease in leases.by_ref().take(8) {
        cylinder::Lease::discard(lease);
    }
    let began = Instant::now();
    while starts.load(Ordering::SeqCst) < 17 && began.elapsed() < Duration::from_secs(5) {
        thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(
        starts.load(Ordering::SeqCst),
        17,
        "eight replacements did not start"
    );
    // The ninth: every start thread is busy, so it waits for one.
    for lease in leases {
        cylinder::Lease::discard(lease);
    }
    hold.store(false, Ordering::SeqCst);
    let began = Instant::now();
    while pool.stats().free < 9 && began.elapsed() < Duration::from_secs(3) {
        thread::sleep(Duration::from_millis(5));
    }
    let stats = pool.stats();
    let started = starts.load(Ordering::SeqCst);
    release.store(true, Ordering::SeqCst);
    drop(pool);
    assert_eq!(
        (stats.free, stats.starting),
        (9, 0),
        "the ninth replacement never started while eight callbacks blocked ({started} starts; \
         stats {stats:?})"
    );
}

struct Node {
    alive: AtomicBool,
}

impl Worker for Node {
    fn is_alive(&self) -> bool {
        // The thread named "held" is held up in its first look (a slow health probe).
        if thread::current().name() == Some("held") && !HELD_ONCE.swap(true, Ordering::SeqCst) {
            HELD_IN.store(true, Ordering::SeqCst);
            let began = Instant::now();
            while !HELD_GO.load(Ordering::SeqCst) && began.elapsed() < Duration::from_secs(10) {
                thread::sleep(Duration::from_millis(2));
            }
        }
        self.alive.load(Ordering::SeqCst)
    }
}

static HELD_ONCE: AtomicBool = AtomicBool::new(false);
static HELD_IN: AtomicBool = AtomicBool::new(false);
static HELD_GO: AtomicBool = AtomicBool::new(false);

fn node() -> Arc<Node> {
    Arc::new(Node {
        alive: AtomicBool::new(true),
    })
}

/// A `get` scanning a served set [a, b] is held up in a slow `is_alive`. Meanwhile `a` dies,
/// the reaper reloads, and the set [b, c] is published (c new and alive); then `b` dies.
/// The held `get` finds its old set all dead and asks `too_soon` — which reads the *new*
/// set (not yet served, published by an automatic reload just now) and says "wait
/// `reconnect_delay`". The `get` fails with `Disconnected("no live children")` while a
/// live child is published, and without looking at it.
#[test]
fn a_get_finding_an_old_set_all_dead_uses_the_live_set_published_meanwhile() {
    let (a, b, c) = (node(), node(), node());
    let listed = Arc::new(Mutex::new(vec![a.clone(), b.clone()]));
    let l = listed.clone();
    let connected = Arc::new(AtomicUsize::new(0));
    let k = connected.clone();
    let balancer = Balancer::builder()
        .reconnect_delay(Duration::from_secs(5))
        .on_event(move |event| {
            if matches!(event, Event::Connected { .. }) {
                k.fetch_add(1, Ordering::SeqCst);
            }
        })
        .build_with(move || -> Result<Vec<Arc<Node>>, BoxError> { Ok(l.lock().unwrap().clone()) })
        .unwrap();
    // The set is served.
    balancer.get().unwrap();
    let held = {
        let balancer = balancer.clone();
        thread::Builder::new()
            .name("held".into())
            .spawn(move || balancer.get().map(|w| w.arc()))
            .unwrap()
    };
    let began = Instant::now();
    while !HELD_IN.load(Ordering::SeqCst) && began.elapsed() < Duration::from_secs(5) {
        thread::sleep(Duration::from_millis(2));
    }
    assert!(HELD_IN.load(Ordering::SeqCst), "the held get never looked");
    *listed.lock().unwrap() = vec![b.clone(), c.clone()];
    a.alive.store(false, Ordering::SeqCst);
    // Gets on this thread until one meets `a` dead (it then serves `b`, from the old set);
    // the reaper reloads.
    for _ in 0..3 {
        if connected.load(Ordering::SeqCst) >= 2 {
            break;
        }
        let got = balancer.get().unwrap().arc();
        assert!(Arc::ptr_eq(&got, &b), "served a dead or unexpected worker");
        let began = Instant::now();
        while connected.load(Ordering::SeqCst) < 2 && began.elapsed() < Duration::from_millis(300) {
            thread::sleep(Duration::from_millis(2));
        }
    }
    assert_eq!(
        connected.load(Ordering::SeqCst),
        2,
        "the reaper did not reload after a death"
    );
    b.alive.store(false, Ordering::SeqCst);
    HELD_GO.store(true, Ordering::SeqCst);
    let got = held.join().unwrap();
    match got {
        Ok(worker) => assert!(Arc::ptr_eq(&worker, &c), "handed a dead worker"),
        Err(err) => {
            panic!("the get failed with {err:?} while the live set [b, c] was published (c alive)")
        }
    }
}
