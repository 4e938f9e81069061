//! Sixty-first breaking pass against the lifecycle and the callbacks: each test names its
//! scenario and fails on the code it was written against. Bounded in time.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::node::{Node, Switch};
use cylinder::BoxError;

const DELAY: Duration = Duration::from_secs(2);

/// Waits (bounded) until the balancer's reload count moves past `from`.
fn next_reload<W: cylinder::Worker>(balancer: &cylinder::Balancer<W>, from: u64) -> bool {
    common::eventually(Duration::from_secs(5), || balancer.reloads() > from)
}

/// A closure supervisor lists two healthy children A and B and, beside them, one child that
/// is always dead (a backend that never comes up): every reload lists a child dead, so the
/// balancer is `short` and asks again every `reconnect_delay` (2 s). A and B both serve. Right
/// after one of those periodic reloads, A (which served, and was listed 2 s before) dies and
/// the supervisor lists a fresh A' in its place. A `get` meets A dead: A served, so it must
/// be replaced at once, as it is in a balancer that is not short. Returns how long A's
/// replacement took to be listed.
#[test]
fn a_child_that_served_dying_while_another_is_listed_dead_is_replaced_at_once() {
    let a = Node::new(0);
    let b = Node::new(1);
    let ghost = Node::new(99);
    ghost.kill();
    let listed: Arc<Mutex<Vec<Arc<Node>>>> = Arc::new(Mutex::new(vec![a.clone(), b.clone()]));
    let l = listed.clone();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let balancer = cylinder::Balancer::builder()
        .reconnect_delay(DELAY)
        .build_with(move || -> Result<Vec<Arc<Node>>, BoxError> {
            c.fetch_add(1, Ordering::SeqCst);
            let mut children = l.lock().unwrap().clone();
            children.push(ghost.clone());
            Ok(children)
        })
        .unwrap();
    let mut seen = [false; 2];
    for _ in 0..10 {
        seen[balancer.get().unwrap().name] = true;
    }
    assert!(seen[0] && seen[1], "both children served: {seen:?}");
    // Right after the reaper's periodic "short" reload, A dies and A' is listed in its place.
    let before = balancer.reloads();
    assert!(
        next_reload(&balancer, before),
        "the short set was never asked again"
    );
    let a2 = Node::new(2);
    *listed.lock().unwrap() = vec![a2.clone(), b.clone()];
    a.kill();
    let died = Instant::now();
    let replaced = common::eventually(Duration::from_secs(4), || {
        for _ in 0..4 {
            let _ = balancer.get();
        }
        balancer.map(|n| n.name).contains(&2)
    });
    let took = died.elapsed();
    drop(balancer);
    assert!(
        replaced,
        "A (served, then died) was not replaced within 4 s"
    );
    assert!(
        took < Duration::from_millis(500),
        "A, a child that served, died while another child was listed dead and was replaced \
         only after {took:?} (reconnect_delay {DELAY:?}): held back by the short retry"
    );
}

/// A `Factory` of three whose backend takes two connections: the third slot's start always
/// fails (`incomplete`, so the balancer asks again every `reconnect_delay`, 2 s). Children A
/// and B serve. Right after one of the periodic retries, A dies. A served: a `get` that
/// meets it dead has the reaper reload at once and the factory restart A's slot (the
/// backend has room again), as it does in a factory with no empty slot. Returns how long
/// A's replacement took.
#[test]
fn a_factory_child_that_served_dying_while_a_slot_cannot_start_is_replaced_at_once() {
    let made: Arc<Mutex<Vec<Arc<Node>>>> = Arc::new(Mutex::new(Vec::new()));
    let m = made.clone();
    let factory = Arc::new(cylinder::Factory::new(3, move || {
        let mut made = m.lock().unwrap();
        let live = made
            .iter()
            .filter(|n| n.alive.load(Ordering::SeqCst))
            .count();
        if live >= 2 {
            return Err("too many connections".into());
        }
        let node = Node::new(made.len());
        made.push(node.clone());
        Ok(Switch(node))
    }));
    let balancer = cylinder::Balancer::builder()
        .reconnect_delay(DELAY)
        .build_with(factory.clone())
        .unwrap();
    assert_eq!(balancer.len(), 2);
    let mut seen = [false; 2];
    for _ in 0..10 {
        seen[balancer.get().unwrap().0.name] = true;
    }
    assert!(seen[0] && seen[1], "both children served: {seen:?}");
    let before = balancer.reloads();
    assert!(
        next_reload(&balancer, before),
        "the incomplete factory was never asked again"
    );
    let a = made.lock().unwrap()[0].clone();
    a.kill();
    let died = Instant::now();
    let replaced = common::eventually(Duration::from_secs(4), || {
        for _ in 0..4 {
            let _ = balancer.get();
        }
        factory.restarts() >= 1 && balancer.map(|w| w.0.name).contains(&2)
    });
    let took = died.elapsed();
    drop(balancer);
    assert!(
        replaced,
        "A (served, then died) was not replaced within 4 s"
    );
    assert!(
        took < Duration::from_millis(500),
        "A, a factory child that served, died while another slot could not start and was \
         replaced only after {took:?} (reconnect_delay {DELAY:?}): held back by the short retry"
    );
}

/// As above with `reconnect_delay(Duration::MAX)` ("no limit": a failed start is never
/// retried by itself). A `Factory` of three whose third slot cannot start; A and B serve, A
/// dies. A served, so a `get` that meets it dead must have it replaced at once; the set must
/// not stay degraded at 1 of 3 for good while the factory can start A's replacement.
#[test]
fn a_factory_child_that_served_dying_while_a_slot_cannot_start_is_replaced_with_no_reconnect_limit()
{
    let made: Arc<Mutex<Vec<Arc<Node>>>> = Arc::new(Mutex::new(Vec::new()));
    let m = made.clone();
    let factory = Arc::new(cylinder::Factory::new(3, move || {
        let mut made = m.lock().unwrap();
        let live = made
            .iter()
            .filter(|n| n.alive.load(Ordering::SeqCst))
            .count();
        if live >= 2 {
            return Err("too many connections".into());
        }
        let node = Node::new(made.len());
        made.push(node.clone());
        Ok(Switch(node))
    }));
    let balancer = cylinder::Balancer::builder()
        .reconnect_delay(Duration::MAX)
        .build_with(factory.clone())
        .unwrap();
    let mut seen = [false; 2];
    for _ in 0..10 {
        seen[balancer.get().unwrap().0.name] = true;
    }
    assert!(seen[0] && seen[1], "both children served: {seen:?}");
    std::thread::sleep(Duration::from_millis(50));
    let a = made.lock().unwrap()[0].clone();
    a.kill();
    let replaced = common::eventually(Duration::from_millis(1500), || {
        for _ in 0..4 {
            let _ = balancer.get();
        }
        factory.restarts() >= 1 && balancer.map(|w| w.0.name).contains(&2)
    });
    let (len, alive, reloads) = (
        balancer.len(),
        balancer.map(|w| w.0.name).len(),
        balancer.reloads(),
    );
    drop(balancer);
    assert!(
        replaced,
        "A (served, then died) was not replaced within 1.5 s: the set stayed at {alive} live of \
         {len} listed ({reloads} reloads, {} restarts)",
        factory.restarts()
    );
}
