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
    assert!(matches!(err, Error::Timeout(_)));
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
