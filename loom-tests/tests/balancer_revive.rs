//! Loom models of a balancer worker that dies and comes back by itself (as a pool whose
//! server goes down and returns) while `get()`s race: the balancer's real code, with a
//! stand-in worker whose `is_alive` is a switch (a pool's is two atomic loads).
#![cfg(loom)]

use std::sync::atomic::AtomicUsize as StdAtomicUsize;
use std::sync::Arc;

use cylinder::{Balancer, BoxError, Error, Worker};
use loom::sync::atomic::{AtomicBool, Ordering};
use loom::thread;

struct Server {
    id: usize,
    up: AtomicBool,
    comes_back: bool,
}

impl Server {
    fn new(id: usize, comes_back: bool) -> Arc<Server> {
        Arc::new(Server {
            id,
            up: AtomicBool::new(true),
            comes_back,
        })
    }
}

impl Worker for Server {
    fn is_alive(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }
    fn comes_back(&self) -> bool {
        self.comes_back
    }
}

fn model(test: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(3);
    }
    builder.check(test);
}

/// A fixed set, counting how often it is asked for.
fn supervisor(
    set: Vec<Arc<Server>>,
    calls: Arc<StdAtomicUsize>,
) -> impl Fn() -> Result<Vec<Arc<Server>>, BoxError> + Send + Sync + 'static {
    move || {
        calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(set.clone())
    }
}

/// Server 0 dies and comes back while two threads `get()`: each gets a worker (server 1 is
/// always up), no reload is asked for, and once it is back server 0 is in rotation again.
#[test]
fn a_server_dying_and_coming_back_while_gets_race() {
    model(|| {
        let (flaky, steady) = (Server::new(0, true), Server::new(1, false));
        let calls = Arc::new(StdAtomicUsize::new(0));
        let set = vec![flaky.clone(), steady];
        let balancer = Balancer::builder()
            .build_with(supervisor(set, calls.clone()))
            .unwrap();
        let other = balancer.clone();
        let getter = thread::spawn(move || other.get().map(|w| w.id).unwrap());
        let chaos = {
            let flaky = flaky.clone();
            thread::spawn(move || {
                flaky.up.store(false, Ordering::Release);
                flaky.up.store(true, Ordering::Release);
            })
        };
        let mine = balancer.get().map(|w| w.id).unwrap();
        assert!(mine < 2);
        assert!(getter.join().unwrap() < 2);
        chaos.join().unwrap();
        // Back: both live, and one thread's rotation meets server 0 within two gets.
        assert_eq!(balancer.map(|w| w.id), vec![0, 1]);
        let (a, b) = (balancer.get().unwrap().id, balancer.get().unwrap().id);
        assert!(a == 0 || b == 0, "server 0 not back in rotation: {a}, {b}");
        balancer.run_reaper_round();
        assert_eq!(
            calls.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "a reload"
        );
    });
}

/// The only server dies while a `get()` races: it gets the server or `Disconnected`, never
/// anything else; no reload is asked for, and once the server is back `get()` gives it.
#[test]
fn the_only_server_dying_and_coming_back() {
    model(|| {
        let server = Server::new(0, true);
        let calls = Arc::new(StdAtomicUsize::new(0));
        let balancer = Balancer::builder()
            .build_with(supervisor(vec![server.clone()], calls.clone()))
            .unwrap();
        let other = balancer.clone();
        let getter = thread::spawn(move || match other.get() {
            Ok(w) => assert_eq!(w.id, 0),
            Err(err) => assert!(matches!(err, Error::Disconnected { .. }), "{err:?}"),
        });
        server.up.store(false, Ordering::Release);
        assert!(matches!(balancer.get(), Err(Error::Disconnected { .. })));
        getter.join().unwrap();
        server.up.store(true, Ordering::Release);
        assert_eq!(balancer.get().unwrap().id, 0);
        balancer.run_reaper_round();
        assert_eq!(
            calls.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "a reload"
        );
    });
}
