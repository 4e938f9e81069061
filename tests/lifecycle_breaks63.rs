//! Sixty-third breaking pass against the balancer's reload logic: each test names its
//! scenario and fails on the code it was written against. Bounded in time.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::node::Node;
use cylinder::BoxError;

/// Waits (bounded) until the balancer's reload count moves past `from`.
fn next_reload<W: cylinder::Worker>(balancer: &cylinder::Balancer<W>, from: u64) -> bool {
    common::eventually(Duration::from_secs(5), || balancer.reloads() > from)
}

/// A cluster's node list {A, B, C}; all three serve. C dies (it served): the reaper reloads
/// at once and the supervisor lists a new node D in C's place ({A, B, D}). D dies on
/// arrival, before any `get` hands it out: a `get` that meets it marks it dead and asks
/// for a reload, which the reaper paces (`too_soon`: D died on arrival), sleeping until
/// `reconnect_delay` after C's reload. Then A, which served all along, dies, and the
/// supervisor lists A' in its place. A `get` meets A dead and asks for a reload, but the
/// set's `reload_asked` flag is already set by D's death, so the reaper is not woken: B
/// serves every `get`, and A's replacement waits for the reaper's paced timer. Expected: a
/// child that served and then died is replaced at once. Returns how long A' took to be
/// listed.
fn a_served_child_dying_in_a_set_whose_newcomer_died_on_arrival(delay: Duration) -> Duration {
    let a = Node::new(0);
    let b = Node::new(1);
    let c = Node::new(2);
    let listed: Arc<Mutex<Vec<Arc<Node>>>> =
        Arc::new(Mutex::new(vec![a.clone(), b.clone(), c.clone()]));
    let l = listed.clone();
    let deaths = Arc::new(AtomicUsize::new(0));
    let dd = deaths.clone();
    let balancer = cylinder::Balancer::builder()
        .reconnect_delay(delay)
        .on_event(move |event| {
            if matches!(event, cylinder::Event::WorkerDied) {
                dd.fetch_add(1, Ordering::SeqCst);
            }
        })
        .build_with(move || -> Result<Vec<Arc<Node>>, BoxError> { Ok(l.lock().unwrap().clone()) })
        .unwrap();
    let mut seen = [false; 3];
    for _ in 0..12 {
        seen[balancer.get().unwrap().name] = true;
    }
    assert!(seen.iter().all(|s| *s), "all three served: {seen:?}");
    // C dies (served): replaced at once by D.
    let d = Node::new(3);
    *listed.lock().unwrap() = vec![a.clone(), b.clone(), d.clone()];
    let before = balancer.reloads();
    c.kill();
    // Gets until one meets C dead, and no more (none must hand D out).
    for _ in 0..6 {
        if deaths.load(Ordering::SeqCst) > 0 {
            break;
        }
        let _ = balancer.get();
    }
    assert_eq!(deaths.load(Ordering::SeqCst), 1, "a get met C dead");
    assert!(next_reload(&balancer, before), "C was never replaced");
    assert!(
        common::eventually(Duration::from_secs(2), || balancer.len() == 3
            && balancer.map(|n| n.name).contains(&3)),
        "D was not listed"
    );
    // D dies on arrival, before it is handed out: the gets mark it dead (paced reload).
    d.kill();
    let after_d = balancer.reloads();
    for _ in 0..6 {
        if deaths.load(Ordering::SeqCst) > 1 {
            break;
        }
        let _ = balancer.get();
    }
    assert_eq!(deaths.load(Ordering::SeqCst), 2, "a get met D dead");
    // The reaper sleeps out the dead-on-arrival pacing.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(balancer.reloads(), after_d, "D's reload is paced");
    // A (served) dies; A' is listed in its place.
    let a2 = Node::new(4);
    *listed.lock().unwrap() = vec![a2.clone(), b.clone()];
    a.kill();
    let died = Instant::now();
    let replaced = common::eventually(Duration::from_secs(4), || {
        for _ in 0..4 {
            assert!(balancer.get().is_ok(), "B is alive");
        }
        balancer.map(|n| n.name).contains(&4)
    });
    let took = died.elapsed();
    let reloads = balancer.reloads() - after_d;
    drop(balancer);
    if !replaced {
        return Duration::MAX;
    }
    assert!(reloads >= 1);
    took
}

#[test]
fn a_child_that_served_dying_after_a_newcomer_died_on_arrival_in_the_same_set_is_replaced_at_once()
{
    let delay = Duration::from_secs(2);
    let took = a_served_child_dying_in_a_set_whose_newcomer_died_on_arrival(delay);
    assert!(
        took != Duration::MAX,
        "A (served, then died) was not replaced within 4 s"
    );
    assert!(
        took < Duration::from_millis(500),
        "A, a child that served, died after a newcomer of its set died on arrival, and was \
         replaced only after {took:?} (reconnect_delay {delay:?}; MAX = not within 4 s): the \
         set's one reload request was spent on the paced dead-on-arrival reload"
    );
}

#[test]
fn a_child_that_served_dying_after_a_newcomer_died_on_arrival_is_replaced_with_no_reconnect_limit()
{
    let took = a_served_child_dying_in_a_set_whose_newcomer_died_on_arrival(Duration::MAX);
    assert!(
        took != Duration::MAX,
        "with reconnect_delay Duration::MAX, A (served, then died \
        after a newcomer of its set died on arrival) was not replaced within 4 s (B serving)"
    );
    assert!(
        took < Duration::from_millis(500),
        "with reconnect_delay Duration::MAX, A (served, then died after a newcomer of its set \
         died on arrival) was replaced only after {took:?} (MAX = never within 4 s)"
    );
}

/// A balancer over one child A, which served. A client thread calls `connect` and the
/// supervisor, slow this time (a cluster's directory that takes its time), holds it. A
/// dies; a `get` meets it dead and, the reload under way not finishing within its
/// patience, asks the reaper for one: the reaper's round waits for the `connect`'s reload
/// to end (reloads run one at a time). Now the balancer is closed: `close` waits for the
/// reaper 100 ms and returns. Then the supervisor answers the `connect`. Expected (as the
/// pool's close: the reaper ends once the callback it waits on returns, and nothing is
/// started after close): the supervisor is asked no more. Observed: the closed balancer's
/// reaper goes on to run its own reload and asks the supervisor again after `close`
/// returned.
#[test]
fn a_reaper_waiting_for_a_connects_slow_reload_at_close_does_not_ask_the_supervisor_after_close() {
    let a = Node::new(0);
    let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
    let slow = Arc::new(AtomicBool::new(false));
    let calls: Arc<Mutex<Vec<(Instant, String)>>> = Arc::new(Mutex::new(Vec::new()));
    let (g, sl, c, listed) = (gate.clone(), slow.clone(), calls.clone(), a.clone());
    let balancer = cylinder::Balancer::builder()
        .reconnect_delay(Duration::from_millis(200))
        .build_with(move || -> Result<Vec<Arc<Node>>, BoxError> {
            let name = std::thread::current().name().unwrap_or("?").to_string();
            c.lock().unwrap().push((Instant::now(), name));
            if sl.load(Ordering::SeqCst) {
                // Bounded: at most 3 s.
                let (lock, cvar) = &*g;
                let open = lock.lock().unwrap();
                let _ = cvar
                    .wait_timeout_while(open, Duration::from_secs(3), |open| !*open)
                    .unwrap();
            }
            Ok(vec![listed.clone()])
        })
        .unwrap();
    assert_eq!(balancer.get().unwrap().name, 0, "A served");
    slow.store(true, Ordering::SeqCst);
    let b2 = balancer.clone();
    let connecting = std::thread::spawn(move || {
        let _ = b2.connect();
        drop(b2);
    });
    assert!(
        common::eventually(Duration::from_secs(2), || calls.lock().unwrap().len() == 2),
        "the connect asked the supervisor"
    );
    a.kill();
    // Waits out the reload under way (100 ms), then asks the reaper.
    assert!(balancer.get().is_err());
    // The reaper's round is now waiting for the connect's reload.
    std::thread::sleep(Duration::from_millis(100));
    balancer.close();
    let closed = Instant::now();
    {
        let (lock, cvar) = &*gate;
        *lock.lock().unwrap() = true;
        cvar.notify_all();
    }
    connecting.join().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let after: Vec<String> = calls
        .lock()
        .unwrap()
        .iter()
        .filter(|(at, _)| *at > closed)
        .map(|(_, name)| name.clone())
        .collect();
    drop(balancer);
    assert!(
        after.is_empty(),
        "the supervisor was asked {} time(s) after close returned, by {after:?}",
        after.len()
    );
}

/// A member of a mixed set: a server that comes back by itself, or a child that is alive
/// for its first `is_alive` only (listed alive by the reload, dead at the first `get`).
struct Mixed {
    name: usize,
    comes_back: bool,
    up: AtomicBool,
    looks_left: AtomicUsize,
}
impl Mixed {
    fn server(name: usize) -> Arc<Mixed> {
        Arc::new(Mixed {
            name,
            comes_back: true,
            up: AtomicBool::new(true),
            looks_left: AtomicUsize::new(usize::MAX),
        })
    }
    fn dies_on_arrival(name: usize) -> Arc<Mixed> {
        Arc::new(Mixed {
            name,
            comes_back: false,
            up: AtomicBool::new(true),
            looks_left: AtomicUsize::new(1),
        })
    }
}
impl cylinder::Worker for Mixed {
    fn is_alive(&self) -> bool {
        if !self.up.load(Ordering::SeqCst) {
            return false;
        }
        let left = self.looks_left.load(Ordering::SeqCst);
        if left == usize::MAX {
            return true;
        }
        self.looks_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
    fn comes_back(&self) -> bool {
        self.comes_back
    }
}

/// A supervisor lists two servers that come back by themselves (P and H) and, once the
/// cluster grows, a child N that dies on arrival (alive when listed, dead at its first
/// look): every reload lists a fresh N. P served, then its server went down (it stays in
/// the set, marked dead, looked at again on each pass; its death asks for no reload). A
/// client calls `get` every 2 ms for 1 s (H serves it); `reconnect_delay` 300 ms. N dies on
/// arrival, so its restarts should come about once per `reconnect_delay`. But `too_soon`
/// takes any member marked dead that served (or was listed long ago) as a reason to reload
/// at once, and P, down, is marked dead again in every new set: N is restarted at the pace
/// of the client's `get`s.
#[test]
fn a_child_dead_on_arrival_beside_a_server_that_is_down_is_not_restarted_per_get() {
    let p = Mixed::server(0);
    let h = Mixed::server(1);
    let grown = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let (pp, hh, gg, cc) = (p.clone(), h.clone(), grown.clone(), calls.clone());
    let next = Arc::new(AtomicUsize::new(100));
    let delay = Duration::from_millis(300);
    let balancer = cylinder::Balancer::builder()
        .reconnect_delay(delay)
        .build_with(move || -> Result<Vec<Arc<Mixed>>, BoxError> {
            cc.fetch_add(1, Ordering::SeqCst);
            let mut children = vec![pp.clone(), hh.clone()];
            if gg.load(Ordering::SeqCst) {
                children.push(Mixed::dies_on_arrival(next.fetch_add(1, Ordering::SeqCst)));
            }
            Ok(children)
        })
        .unwrap();
    let mut seen = [false; 2];
    for _ in 0..8 {
        seen[balancer.get().unwrap().name] = true;
    }
    assert!(seen[0] && seen[1], "P and H served: {seen:?}");
    p.up.store(false, Ordering::SeqCst);
    grown.store(true, Ordering::SeqCst);
    balancer.connect().unwrap();
    let before = calls.load(Ordering::SeqCst);
    let b = balancer.clone();
    let (gets, failed) = common::within(Duration::from_secs(10), move || {
        let began = Instant::now();
        let (mut gets, mut failed) = (0, 0);
        while began.elapsed() < Duration::from_millis(1000) {
            gets += 1;
            if b.get().is_err() {
                failed += 1;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        (gets, failed)
    })
    .expect("the client's loop ended");
    let asked = calls.load(Ordering::SeqCst) - before;
    drop(balancer);
    // About one restart per 300 ms in 1 s (plus the first, paced from the connect).
    assert!(
        asked <= 8,
        "the supervisor was asked {asked} times in 1 s (reconnect_delay {delay:?}) for {gets} \
         gets ({failed} failed): a child dead on arrival restarted per get"
    );
}
