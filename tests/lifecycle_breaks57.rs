//! Fifty-seventh breaking pass against the lifecycle and the callbacks: each test names its
//! scenario and fails on the code it was written against. Bounded in time.

mod common;

use common::node::{Node, Switch};

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// A balancer over a `Factory` of two, `reconnect_delay` 1 s. Both children serve for more
/// than `reconnect_delay`. Child A dies (it served): found by a `get`, the reaper reloads at
/// once and the factory restarts it (a new set is published). Right after, child B dies:
/// B is no newcomer (it has served since the start, well over `reconnect_delay`), yet it
/// died within `reconnect_delay` of the *set's* publication, so the set is marked
/// `died_young` and the reload that replaces B is paced as if B were dead on arrival.
/// Expected: a worker that served and then died is replaced at once (the pool's rule; and
/// the balancer's before pass 56).
#[test]
fn an_old_child_dying_just_after_another_childs_replacement_is_replaced_at_once() {
    let made: Arc<Mutex<Vec<Arc<Node>>>> = Arc::new(Mutex::new(Vec::new()));
    let m = made.clone();
    let factory = Arc::new(cylinder::Factory::new(2, move || {
        let mut made = m.lock().unwrap();
        let n = made.len();
        // `Factory` wants a `W`; the child is its own `Arc` inside the factory, so keep a
        // switch to kill it by.
        let node = Node::new(n);
        made.push(node.clone());
        Ok(Switch(node))
    }));
    let balancer = cylinder::Balancer::builder()
        .reconnect_delay(Duration::from_secs(1))
        .build_with(factory.clone())
        .unwrap();
    // Both children serve for longer than `reconnect_delay`.
    let began = Instant::now();
    while began.elapsed() < Duration::from_millis(1200) {
        assert!(balancer.get().is_ok());
        thread::sleep(Duration::from_millis(20));
    }
    let (a, b) = {
        let made = made.lock().unwrap();
        (made[0].clone(), made[1].clone())
    };
    a.kill();
    // A `get` meets A dead; the reaper reloads at once and the factory restarts A.
    let replaced = common::eventually(Duration::from_secs(3), || {
        let _ = balancer.get();
        factory.restarts() == 1
    });
    assert!(
        replaced,
        "A (served, then died) was not replaced within 3 s"
    );
    // Let the new set be published and served.
    let published = common::eventually(Duration::from_secs(2), || {
        balancer.get().map(|w| w.0.name == 2).unwrap_or(false)
    });
    assert!(published, "A's replacement never served");
    // Now B, which has served since the start, dies.
    b.kill();
    let died = Instant::now();
    let b_replaced = common::eventually(Duration::from_secs(3), || {
        let _ = balancer.get();
        factory.restarts() == 2
    });
    let took = died.elapsed();
    drop(balancer);
    assert!(b_replaced, "B was not replaced within 3 s");
    assert!(
        took < Duration::from_millis(400),
        "B, a child that served for {:?}, died and was replaced only after {took:?} \
         (reconnect_delay 1 s): paced as if dead on arrival",
        Duration::from_millis(1200)
    );
}

/// A balancer over a cluster's node list, `reconnect_delay` 1 s. Nodes A and B serve for
/// more than `reconnect_delay`. A leaves the cluster (dead, no longer listed): the reaper
/// reloads at once and publishes {B}. Shortly after, B dies too (it served all along) and
/// the supervisor lists a new node C. A `get` finds the whole set dead: because B died within
/// `reconnect_delay` of the set's publication, the set is `died_young`, so the `get` does
/// not reload (`too_soon`) and answers `Disconnected` ("no live children"), and so does
/// every `get` until `reconnect_delay` after the last reload, though the supervisor lists a
/// live child. Expected (as before pass 56, since the set was served): the `get` reloads
/// and is served by C.
#[test]
fn a_get_finding_its_only_old_child_dead_just_after_a_reload_reloads_and_is_served() {
    let a = Node::new(0);
    let b = Node::new(1);
    let listed: Arc<Mutex<Vec<Arc<Node>>>> = Arc::new(Mutex::new(vec![a.clone(), b.clone()]));
    let l = listed.clone();
    let balancer = cylinder::Balancer::builder()
        .reconnect_delay(Duration::from_secs(1))
        .build_with(move || -> Result<Vec<Arc<Node>>, cylinder::BoxError> {
            Ok(l.lock().unwrap().clone())
        })
        .unwrap();
    let began = Instant::now();
    while began.elapsed() < Duration::from_millis(1200) {
        assert!(balancer.get().is_ok());
        thread::sleep(Duration::from_millis(20));
    }
    let reloads = balancer.reloads();
    // A leaves the cluster.
    *listed.lock().unwrap() = vec![b.clone()];
    a.kill();
    let reloaded = common::eventually(Duration::from_secs(3), || {
        let _ = balancer.get();
        balancer.reloads() > reloads && balancer.get().map(|_| ()).is_ok()
    });
    assert!(reloaded, "the set was not reloaded after A died");
    // Served by B in the new set, once it is published.
    thread::sleep(Duration::from_millis(50));
    assert_eq!(balancer.get().unwrap().name, 1);
    thread::sleep(Duration::from_millis(30));
    // B dies; a fresh node C joins.
    let c = Node::new(2);
    *listed.lock().unwrap() = vec![c.clone()];
    b.kill();
    let died = Instant::now();
    let first = balancer.get().map(|w| w.name);
    let mut served_at = None;
    while died.elapsed() < Duration::from_millis(1500) {
        if matches!(balancer.get().map(|w| w.name), Ok(2)) {
            served_at = Some(died.elapsed());
            break;
        }
        thread::sleep(Duration::from_millis(5));
    }
    drop(balancer);
    assert!(
        matches!(first, Ok(2)) && served_at.is_some_and(|at| at < Duration::from_millis(300)),
        "the first get after B (served for over 1 s) died answered {first:?}; C served only \
         after {served_at:?} (reconnect_delay 1 s)"
    );
}

/// A balancer over a `Factory` of one, `reconnect_delay` 1 s. The child dies and the reaper
/// restarts it at once (an automatic reload publishes the set of the new child). The new
/// child serves for 300 ms (every `get` is answered by it), then dies: it served, so it was
/// not dead on arrival, yet it died within `reconnect_delay` of its set's publication and
/// the set is marked `died_young`: every `get` answers `Disconnected` ("no live children")
/// and the factory is asked again only `reconnect_delay` after the last reload. Expected (a
/// pool replaces a worker that served and then failed at once, even during a backoff; so
/// did the balancer before pass 56): the first `get` after the death reloads and is served.
#[test]
fn a_lone_child_that_served_and_then_died_soon_after_its_restart_is_replaced_at_once() {
    let made: Arc<Mutex<Vec<Arc<Node>>>> = Arc::new(Mutex::new(Vec::new()));
    let m = made.clone();
    let factory = Arc::new(cylinder::Factory::new(1, move || {
        let mut made = m.lock().unwrap();
        let node = Node::new(made.len());
        made.push(node.clone());
        Ok(Switch(node))
    }));
    let balancer = cylinder::Balancer::builder()
        .reconnect_delay(Duration::from_secs(1))
        .build_with(factory.clone())
        .unwrap();
    assert!(balancer.get().is_ok());
    let first = made.lock().unwrap()[0].clone();
    first.kill();
    let restarted = common::eventually(Duration::from_secs(3), || {
        let _ = balancer.get();
        factory.restarts() == 1 && balancer.get().is_ok()
    });
    assert!(restarted, "the first child was not restarted within 3 s");
    // The new child serves for 300 ms.
    let began = Instant::now();
    while began.elapsed() < Duration::from_millis(300) {
        assert_eq!(balancer.get().map(|w| w.0.name).ok(), Some(1));
        thread::sleep(Duration::from_millis(10));
    }
    let second = made.lock().unwrap()[1].clone();
    second.kill();
    let died = Instant::now();
    let answer = balancer.get().map(|w| w.0.name);
    let mut served_at = None;
    let mut refused = 0;
    while died.elapsed() < Duration::from_millis(1500) {
        match balancer.get() {
            Ok(w) if w.0.name == 2 => {
                served_at = Some(died.elapsed());
                break;
            }
            Ok(_) => {}
            Err(_) => refused += 1,
        }
        thread::sleep(Duration::from_millis(5));
    }
    drop(balancer);
    assert!(
        matches!(answer, Ok(2)) && served_at.is_some_and(|at| at < Duration::from_millis(300)),
        "after the child that served for 300 ms died, the first get answered {answer:?}, \
         {refused} more were refused, and its replacement served only after {served_at:?} \
         (reconnect_delay 1 s)"
    );
}
