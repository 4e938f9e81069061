//! Fifty-ninth breaking pass against the lifecycle and the callbacks: each test names its
//! scenario and fails on the code it was written against. Bounded in time.

mod common;

use common::node::{Node, Switch};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// A balancer over a `Factory` of two, `reconnect_delay` 1 s. Both children A and B serve
/// for 300 ms (every `get` alternates between them). B dies: it served, so the reaper
/// reloads at once and the factory restarts it (a new set {A, B'} is published; A's lease
/// cell is reused, its `joined` kept). Before any `get` lands on A in the new set, A dies.
/// A served for 300 ms, yet "handed out" is per set (`Snapshot::handed`, fresh in every
/// set), so A counts as never handed out and, listed less than `reconnect_delay` ago, as
/// dead on arrival: its replacement waits `reconnect_delay` after B's reload. Expected (a
/// worker that served and then failed is replaced at once): A is replaced at once.
#[test]
fn a_child_that_served_dying_before_its_first_get_in_a_set_reloaded_for_another_is_replaced_at_once(
) {
    let made: Arc<Mutex<Vec<Arc<Node>>>> = Arc::new(Mutex::new(Vec::new()));
    let m = made.clone();
    let factory = Arc::new(cylinder::Factory::new(2, move || {
        let mut made = m.lock().unwrap();
        let node = Node::new(made.len());
        made.push(node.clone());
        Ok(Switch(node))
    }));
    let balancer = cylinder::Balancer::builder()
        .reconnect_delay(Duration::from_secs(1))
        .build_with(factory.clone())
        .unwrap();
    // Both serve for 300 ms.
    let mut seen = [0usize; 2];
    let began = Instant::now();
    while began.elapsed() < Duration::from_millis(300) {
        seen[balancer.get().unwrap().0.name] += 1;
        thread::sleep(Duration::from_millis(10));
    }
    assert!(seen[0] > 3 && seen[1] > 3, "both served: {seen:?}");
    let (a, b) = {
        let made = made.lock().unwrap();
        (made[0].clone(), made[1].clone())
    };
    b.kill();
    // `get`s meet B dead, until B's replacement is published (seen through `map`, which
    // hands nothing out): none lands on A in the new set.
    let published = common::eventually(Duration::from_secs(3), || {
        if balancer.map(|w| w.0.name).contains(&2) {
            return true;
        }
        let _ = balancer.get();
        thread::sleep(Duration::from_millis(5));
        false
    });
    assert!(published, "B's replacement was never published");
    // A, which served for 300 ms, dies before a `get` lands on it in the new set.
    a.kill();
    let died = Instant::now();
    let replaced = common::eventually(Duration::from_secs(3), || {
        let _ = balancer.get();
        factory.restarts() == 2
    });
    let took = died.elapsed();
    drop(balancer);
    assert!(replaced, "A was not replaced within 3 s");
    assert!(
        took < Duration::from_millis(400),
        "A, a child that served for 300 ms, died and was replaced only after {took:?} \
         (reconnect_delay 1 s): paced as if dead on arrival"
    );
}

/// A balancer over a cluster's node list, `reconnect_delay` 1 s, two nodes A and B that
/// serve for 300 ms. B leaves the cluster (dead, no longer listed): the reaper reloads at
/// once and publishes {A} (A's cell reused). Before a `get` lands on A in that set, A dies
/// and the supervisor lists a new node C. A `get` finds A dead: A served for 300 ms, but
/// not from this set, and was first listed less than `reconnect_delay` ago, so it counts
/// as dead on arrival: the `get` does not reload (`too_soon`) and answers `Disconnected`
/// ("no live children"), as does every `get` for about a second, though the supervisor
/// lists a live child. Expected: the `get` reloads and is served by C.
#[test]
fn a_get_finding_a_child_that_served_dead_just_after_anothers_reload_is_served_by_the_new_child() {
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
    let mut seen = [0usize; 2];
    let began = Instant::now();
    while began.elapsed() < Duration::from_millis(300) {
        seen[balancer.get().unwrap().name] += 1;
        thread::sleep(Duration::from_millis(10));
    }
    assert!(seen[0] > 3 && seen[1] > 3, "both served: {seen:?}");
    // B leaves the cluster.
    *listed.lock().unwrap() = vec![a.clone()];
    b.kill();
    // `get`s meet B dead, until {A} is published: none lands on A in the new set.
    let reloaded = common::eventually(Duration::from_secs(3), || {
        if balancer.len() == 1 {
            return true;
        }
        let _ = balancer.get();
        thread::sleep(Duration::from_millis(5));
        false
    });
    assert!(reloaded, "the set was not reloaded after B died");
    // A dies; a fresh node C joins.
    let c = Node::new(2);
    *listed.lock().unwrap() = vec![c.clone()];
    a.kill();
    let died = Instant::now();
    let first = balancer.get().map(|w| w.name);
    let mut served_at = None;
    let mut refused = 0;
    while died.elapsed() < Duration::from_millis(1500) {
        match balancer.get().map(|w| w.name) {
            Ok(2) => {
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
        matches!(first, Ok(2)) && served_at.is_some_and(|at| at < Duration::from_millis(300)),
        "the first get after A (served for 300 ms) died answered {first:?}; {refused} more \
         were refused; C served only after {served_at:?} (reconnect_delay 1 s)"
    );
}

/// Lease mode, a `Factory` of two, `reconnect_delay` 1 s. A client leases child A and
/// holds the lease. Child B serves `get`s, then dies: the reaper reloads at once and the
/// factory restarts it (a new set {A, B'}; A's cell, still leased, is reused). A then dies
/// while still leased: it is in use at that very moment, yet in the new set it was never
/// "handed out" (`Snapshot::handed` is fresh per set) and it was first listed less than
/// `reconnect_delay` ago, so a `get` that finds it dead marks the set dead on arrival and
/// A's replacement waits `reconnect_delay` after B's reload. Expected: a worker that served
/// (here: is leased) and then died is replaced at once.
#[test]
fn a_leased_child_held_across_anothers_reload_that_dies_is_replaced_at_once() {
    let made: Arc<Mutex<Vec<Arc<Node>>>> = Arc::new(Mutex::new(Vec::new()));
    let m = made.clone();
    let factory = Arc::new(cylinder::Factory::new(2, move || {
        let mut made = m.lock().unwrap();
        let node = Node::new(made.len());
        made.push(node.clone());
        Ok(Switch(node))
    }));
    let balancer = cylinder::Balancer::builder()
        .reconnect_delay(Duration::from_secs(1))
        .build_with(factory.clone())
        .unwrap();
    let lease = balancer.lease().unwrap();
    let held = lease.0.name;
    let (a, b) = {
        let made = made.lock().unwrap();
        (made[held].clone(), made[1 - held].clone())
    };
    // The other child serves `get`s for 200 ms.
    let began = Instant::now();
    while began.elapsed() < Duration::from_millis(200) {
        assert_eq!(balancer.get().unwrap().0.name, b.name);
        thread::sleep(Duration::from_millis(10));
    }
    b.kill();
    let published = common::eventually(Duration::from_secs(3), || {
        if balancer.map(|w| w.0.name).contains(&2) {
            return true;
        }
        let _ = balancer.get();
        thread::sleep(Duration::from_millis(5));
        false
    });
    assert!(published, "B's replacement was never published");
    // A dies while leased.
    a.kill();
    let died = Instant::now();
    let replaced = common::eventually(Duration::from_secs(3), || {
        let _ = balancer.get();
        factory.restarts() == 2
    });
    let took = died.elapsed();
    drop(lease);
    drop(balancer);
    assert!(replaced, "A was not replaced within 3 s");
    assert!(
        took < Duration::from_millis(400),
        "A, leased all along, died and was replaced only after {took:?} (reconnect_delay \
         1 s): paced as if dead on arrival"
    );
}
