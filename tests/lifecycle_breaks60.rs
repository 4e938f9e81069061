//! Sixtieth breaking pass against the lifecycle and the callbacks: each test names its
//! scenario and fails on the code it was written against. Bounded in time.

mod common;

use common::node::{Node, Switch};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// A balancer over a `Factory` of two, `reconnect_delay` 1 s. Both children A and B are
/// handed out by `get` (they served). A dies; the reaper reloads at once and the factory
/// restarts it (a new set is published, listing B's cell again). Before any `get` hands B
/// out from the *new* set, B dies too (100-odd ms after it was first listed). B served (in
/// the previous set), so it was not dead on arrival: it must be replaced at once. The
/// per-set `handed` marks forget that B served, and B's `joined` is under
/// `reconnect_delay`, so the set is marked `died_on_arrival` and B's replacement waits for
/// `reconnect_delay` after the last automatic reload.
#[test]
fn a_young_child_that_served_and_died_right_after_another_childs_restart_is_replaced_at_once() {
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
    // Both children serve.
    let mut seen = [false; 2];
    for _ in 0..10 {
        let w = balancer.get().unwrap();
        seen[w.0.name] = true;
    }
    assert!(seen[0] && seen[1], "both children served: {seen:?}");
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
    // Wait (without handing anything out) until the new set lists A's replacement.
    let published = common::eventually(Duration::from_secs(2), || {
        balancer.map(|w| w.0.name).contains(&2)
    });
    assert!(published, "A's replacement was never listed");
    // B, which served, dies before the new set hands it out.
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
        "B, a child that served, died and was replaced only after {took:?} \
         (reconnect_delay 1 s): paced as if dead on arrival"
    );
}

/// A `Factory` child whose health the factory's start closure decides.
struct Flaky {
    alive: AtomicBool,
}
impl cylinder::Worker for Flaky {
    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }
}

/// A balancer over a `Factory` of two, `reconnect_delay` 200 ms. Both children serve; one
/// dies, and a `get` that meets it has the reaper reload: the factory restarts its slot, but
/// that one start fails (`mode` "fail": the backend refused once) or its child is dead
/// already when the reload asks `is_alive` (`mode` "dead": dead on arrival); every later
/// start is healthy. The reload publishes the set of the one live child. A client calls
/// `get` for 1.5 s. The factory's doc says a start that fails "is retried at the next ask",
/// and dead-on-arrival children are to be reloaded once per `reconnect_delay`: the slot
/// should be refilled within a few `reconnect_delay`s. Returns how many members the
/// balancer had after 1.5 s and how many times the supervisor was asked.
fn a_factory_slot_lost_in_a_reload(mode: &'static str) -> (usize, u64, usize) {
    let starts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let s = starts.clone();
    let factory = Arc::new(cylinder::Factory::new(2, move || {
        let n = s.fetch_add(1, Ordering::SeqCst);
        if n == 2 && mode == "fail" {
            return Err("connection refused (once)".into());
        }
        Ok(Flaky {
            alive: AtomicBool::new(!(n == 2 && mode == "dead")),
        })
    }));
    let balancer = cylinder::Balancer::builder()
        .reconnect_delay(Duration::from_millis(200))
        .build_with(factory.clone())
        .unwrap();
    for _ in 0..4 {
        balancer.get().unwrap();
    }
    assert_eq!(balancer.len(), 2);
    // Kill one child: the balancer's workers are the factory's `Arc`s.
    let b = balancer.clone();
    let out = common::within(Duration::from_secs(10), move || {
        let mut killed = false;
        b.map(|w| {
            if !killed {
                w.alive.store(false, Ordering::SeqCst);
                killed = true;
            }
        });
        let began = Instant::now();
        while began.elapsed() < Duration::from_millis(1500) {
            let _ = b.get();
            thread::sleep(Duration::from_millis(5));
        }
        (b.len(), b.reloads())
    })
    .expect("the client's loop ended");
    let started = starts.load(Ordering::SeqCst);
    drop(balancer);
    (out.0, out.1, started)
}

#[test]
fn a_factory_start_that_fails_once_in_a_reload_is_retried() {
    let (len, reloads, started) = a_factory_slot_lost_in_a_reload("fail");
    assert!(
        len == 2,
        "1.5 s after a factory start failed once in a reload (reconnect_delay 200 ms), the \
         balancer has {len} of 2 children; {reloads} reloads, {started} starts"
    );
}

#[test]
fn a_factory_child_dead_when_its_reload_lists_it_is_restarted() {
    let (len, reloads, started) = a_factory_slot_lost_in_a_reload("dead");
    assert!(
        len == 2,
        "1.5 s after a factory child was dead on arrival in a reload (reconnect_delay 200 ms), \
         the balancer has {len} of 2 children; {reloads} reloads, {started} starts"
    );
}

/// A balancer built over a `Factory` of two whose second start fails once (the backend
/// refused one connection at boot); every later start is healthy. `build` succeeds with one
/// child. A client calls `get` for 1.5 s (`reconnect_delay` 200 ms): the factory's empty
/// slot is "retried at the next ask", but nothing ever asks again (no member of the set
/// died), so the balancer serves with half its children for good.
#[test]
fn a_factory_start_that_fails_once_at_build_is_retried() {
    let starts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let s = starts.clone();
    let factory = Arc::new(cylinder::Factory::new(2, move || {
        if s.fetch_add(1, Ordering::SeqCst) == 1 {
            return Err("connection refused (once)".into());
        }
        Ok(Flaky {
            alive: AtomicBool::new(true),
        })
    }));
    let balancer = cylinder::Balancer::builder()
        .reconnect_delay(Duration::from_millis(200))
        .build_with(factory.clone())
        .unwrap();
    let b = balancer.clone();
    let (len, reloads) = common::within(Duration::from_secs(10), move || {
        let began = Instant::now();
        while began.elapsed() < Duration::from_millis(1500) {
            let _ = b.get();
            thread::sleep(Duration::from_millis(5));
        }
        (b.len(), b.reloads())
    })
    .expect("the client's loop ended");
    let started = starts.load(Ordering::SeqCst);
    drop(balancer);
    assert!(
        len == 2,
        "1.5 s after build, where one factory start failed once (reconnect_delay 200 ms), the \
         balancer has {len} of 2 children; {reloads} reloads, {started} starts"
    );
}
