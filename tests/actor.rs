//! Worker threads with a mailbox: call, cast, queue length, death, and restart by a factory.

use std::time::Duration;

use cylinder::{Actor, Behaviour, Error, Factory, Supervisor, Worker};

struct Echo;

enum Request {
    Echo(u32),
    Sleep(Duration),
    Crash,
}

impl Behaviour for Echo {
    type Request = Request;
    type Reply = u32;
    fn handle_call(&mut self, request: Request) -> u32 {
        match request {
            Request::Echo(n) => n,
            Request::Sleep(d) => {
                std::thread::sleep(d);
                0
            }
            Request::Crash => panic!("worker crashes on purpose"),
        }
    }
}

#[test]
fn call_cast_and_queue_len() {
    let actor = Actor::spawn(Echo).unwrap();
    assert_eq!(actor.call(Request::Echo(7)).unwrap(), 7);
    actor
        .cast(Request::Sleep(Duration::from_millis(50)))
        .unwrap();
    actor.cast(Request::Echo(1)).unwrap();
    actor.cast(Request::Echo(2)).unwrap();
    assert!(
        actor.queue_len().unwrap() >= 1,
        "casts wait behind the sleep"
    );
    assert_eq!(actor.call(Request::Echo(3)).unwrap(), 3);
    assert_eq!(Worker::queue_len(&actor), Some(0));
}

#[test]
fn call_timeout_gives_up() {
    let actor = Actor::spawn(Echo).unwrap();
    let err = actor
        .call_timeout(
            Request::Sleep(Duration::from_millis(200)),
            Duration::from_millis(10),
        )
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }));
    assert_eq!(actor.call(Request::Echo(5)).unwrap(), 5);
}

#[test]
fn a_panic_kills_the_worker_and_fails_its_callers() {
    let actor = Actor::spawn(Echo).unwrap();
    assert!(matches!(actor.call(Request::Crash), Err(Error::WorkerDied)));
    assert!(!actor.is_alive());
    assert!(matches!(
        actor.call(Request::Echo(1)),
        Err(Error::WorkerDied)
    ));
    assert!(matches!(
        actor.cast(Request::Echo(1)),
        Err(Error::WorkerDied)
    ));
}

#[test]
fn a_factory_restarts_dead_actors() {
    let factory = Factory::new(2, || Ok(Actor::spawn(Echo)?));
    let first = factory.children().unwrap();
    let _ = first[0].call(Request::Crash);
    let second = factory.children().unwrap();
    assert_eq!(second.len(), 2);
    assert!(second.iter().all(|a| a.is_alive()));
    assert!(std::sync::Arc::ptr_eq(&first[1], &second[1]));
    assert_eq!(factory.restarts(), 1);
}

#[test]
fn stop_ends_the_thread_after_its_mailbox() {
    let actor = Actor::spawn(Echo).unwrap();
    actor
        .cast(Request::Sleep(Duration::from_millis(20)))
        .unwrap();
    actor.stop();
    assert!(!actor.is_alive());
}

#[test]
fn is_alive_is_an_inherent_method_too() {
    let actor = Actor::spawn(Echo).unwrap();
    assert!(Actor::is_alive(&actor));
    actor.stop();
    assert!(!Actor::is_alive(&actor));
    assert!(format!("{actor:?}").contains("alive: false"));
}

/// Echoes its request after sleeping for the given number of microseconds.
struct SlowEcho;

impl Behaviour for SlowEcho {
    type Request = (u64, u64);
    type Reply = u64;
    fn handle_call(&mut self, (value, sleep_us): (u64, u64)) -> u64 {
        std::thread::sleep(Duration::from_micros(sleep_us));
        value
    }
}

#[test]
fn a_late_reply_is_never_taken_for_the_next_one() {
    let actor = Actor::spawn(SlowEcho).unwrap();
    for round in 0..20u64 {
        // Times out; its reply (round * 2) comes while the next call waits. (A caller
        // descheduled for longer than the handler may find its own reply in time.)
        let late = actor.call_timeout((round * 2, 3_000), Duration::from_micros(200));
        assert!(
            matches!(late, Err(Error::Timeout { .. })) || matches!(late, Ok(v) if v == round * 2),
            "{late:?}"
        );
        assert_eq!(actor.call((round * 2 + 1, 0)).unwrap(), round * 2 + 1);
    }
}

#[test]
fn a_late_reply_from_another_actor_is_dropped() {
    // One thread, one reply type, two actors: the reply slot is shared between them.
    let slow = Actor::spawn(SlowEcho).unwrap();
    let fast = Actor::spawn(SlowEcho).unwrap();
    for round in 0..10u64 {
        let late = slow.call_timeout((1_000 + round, 5_000), Duration::from_micros(100));
        // A caller descheduled for longer than the handler may find its reply in time.
        assert!(
            matches!(late, Err(Error::Timeout { .. }))
                || matches!(late, Ok(v) if v == 1_000 + round),
            "{late:?}"
        );
        assert_eq!(
            fast.call_timeout((round, 10_000), Duration::from_secs(10))
                .unwrap(),
            round
        );
    }
}

#[test]
fn many_threads_call_one_actor_at_once() {
    let actor = Actor::spawn(SlowEcho).unwrap();
    std::thread::scope(|scope| {
        for t in 0..8u64 {
            let actor = &actor;
            scope.spawn(move || {
                for i in 0..2_000u64 {
                    let value = t << 32 | i;
                    assert_eq!(actor.call((value, 0)).unwrap(), value);
                }
            });
        }
    });
    assert_eq!(actor.queue_len(), Some(0));
}

#[test]
fn callers_queued_behind_a_panic_get_worker_died() {
    let actor = Actor::spawn(Echo).unwrap();
    actor
        .cast(Request::Sleep(Duration::from_millis(300)))
        .unwrap();
    // The crash queued behind the sleep being handled before the next call is sent (a fixed
    // pause let a late crash thread queue behind it). `queue_len` counts what waits.
    let queued = |n| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while actor.queue_len() != Some(n) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    queued(0);
    std::thread::scope(|scope| {
        let crash = scope.spawn(|| actor.call(Request::Crash));
        queued(1);
        let behind = scope.spawn(|| actor.call(Request::Echo(1)));
        assert!(matches!(crash.join().unwrap(), Err(Error::WorkerDied)));
        let behind = behind.join().unwrap();
        // Queued behind the crash (or posted after it): never answered, never hung.
        assert!(matches!(behind, Err(Error::WorkerDied)), "{behind:?}");
    });
    assert!(!actor.is_alive());
}

#[test]
fn stop_from_several_threads_waits_for_the_thread() {
    let actor = Actor::spawn(Echo).unwrap();
    actor
        .cast(Request::Sleep(Duration::from_millis(30)))
        .unwrap();
    std::thread::scope(|scope| {
        for _ in 0..3 {
            scope.spawn(|| {
                actor.stop();
                assert!(!actor.is_alive());
            });
        }
    });
}
