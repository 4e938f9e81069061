//! Calls that run on the caller's thread (`Behaviour::INLINE_CALLS`): only when the actor is
//! idle, never two handlers at once, messages still in order, a panic still kills the actor
//! and answers every caller, and `stop` from inside such a handler does not wait for itself.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use common::{eventually, quiet_panics, within};
use cylinder::{Actor, Behaviour, Error};

const LIMIT: Duration = Duration::from_secs(30);

/// Handlers of one actor found running at once, in any test: must stay 0.
static OVERLAPS: AtomicU32 = AtomicU32::new(0);

enum Ask {
    /// The name of the thread that handles it.
    WhereAmI,
    /// Waits at the barrier (the test then knows the actor is busy), then for `release`.
    Block(Arc<Barrier>, Arc<AtomicBool>),
    /// Records `n` as seen; answers the last number seen before it.
    Record(u64),
    Crash,
    /// Stops its own actor from inside the handler.
    StopMyself,
}

#[derive(Default)]
struct Probe {
    last: u64,
    /// This actor's handlers running now, on any thread: more than one is a broken
    /// exclusion, counted in `OVERLAPS`.
    inside: Arc<AtomicU32>,
    /// Where the behaviour was dropped.
    dropped_on: Arc<Mutex<Option<String>>>,
    me: Arc<OnceLock<Arc<Actor<Probe>>>>,
}

impl Behaviour for Probe {
    type Request = Ask;
    type Reply = (u64, String);
    fn handle_call(&mut self, ask: Ask) -> (u64, String) {
        if self.inside.fetch_add(1, Ordering::SeqCst) != 0 {
            OVERLAPS.fetch_add(1, Ordering::SeqCst);
        }
        let here = thread::current().name().unwrap_or("").to_string();
        let answer = match ask {
            Ask::WhereAmI => 0,
            Ask::Block(barrier, release) => {
                barrier.wait();
                while !release.load(Ordering::SeqCst) {
                    thread::sleep(Duration::from_millis(1));
                }
                0
            }
            Ask::Record(n) => std::mem::replace(&mut self.last, n),
            Ask::Crash => {
                self.inside.fetch_sub(1, Ordering::SeqCst);
                panic!("a handler crashes on purpose")
            }
            Ask::StopMyself => {
                self.me.get().expect("the actor is known").stop();
                0
            }
        };
        self.inside.fetch_sub(1, Ordering::SeqCst);
        (answer, here)
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let here = thread::current().name().unwrap_or("").to_string();
        *self.dropped_on.lock().unwrap() = Some(here);
    }
}

/// Not inline: the same handlers, always on the actor's thread.
struct OnItsThread(Probe);

impl Behaviour for OnItsThread {
    type Request = Ask;
    type Reply = (u64, String);
    const INLINE_CALLS: bool = false;
    fn handle_call(&mut self, ask: Ask) -> (u64, String) {
        self.0.handle_call(ask)
    }
}

/// Spawns `probe` as an actor that knows its own handle.
fn spawn(probe: Probe) -> Arc<Actor<Probe>> {
    let me = probe.me.clone();
    let actor = Arc::new(Actor::spawn(probe).unwrap());
    let _ = me.set(actor.clone());
    actor
}

/// Makes the actor busy on its own thread: a blocked message is being handled when this
/// returns. Setting the returned flag lets it go on.
fn make_busy(actor: &Arc<Actor<Probe>>) -> (Arc<AtomicBool>, thread::JoinHandle<String>) {
    let barrier = Arc::new(Barrier::new(2));
    let release = Arc::new(AtomicBool::new(false));
    let blocked = {
        let (actor, barrier, release) = (actor.clone(), barrier.clone(), release.clone());
        // `call_timeout` always goes through the mailbox, so the actor's thread handles it.
        thread::spawn(move || {
            actor
                .call_timeout(Ask::Block(barrier, release), LIMIT)
                .unwrap()
                .1
        })
    };
    barrier.wait();
    (release, blocked)
}

#[test]
fn a_call_to_an_idle_actor_runs_on_the_caller_and_to_a_busy_one_on_its_thread() {
    let actor = spawn(Probe::default());
    let me = thread::current().name().unwrap().to_string();
    assert_eq!(actor.call(Ask::WhereAmI).unwrap().1, me);

    let (release, blocked) = make_busy(&actor);
    let queued = {
        let actor = actor.clone();
        thread::spawn(move || actor.call(Ask::WhereAmI).unwrap().1)
    };
    assert!(eventually(LIMIT, || actor.queue_len() == Some(1)));
    release.store(true, Ordering::SeqCst);
    assert_eq!(blocked.join().unwrap(), "cylinder-worker");
    assert_eq!(queued.join().unwrap(), "cylinder-worker");
    // Idle again: back on the caller (once the actor's thread, which sent the last reply
    // just before it marks itself idle, has done so).
    assert!(eventually(LIMIT, || actor.call(Ask::WhereAmI).unwrap().1 == me));
    assert_eq!(OVERLAPS.load(Ordering::SeqCst), 0);
}

#[test]
fn a_behaviour_that_says_no_always_runs_on_its_thread() {
    let actor = Actor::spawn(OnItsThread(Probe::default())).unwrap();
    for _ in 0..100 {
        assert_eq!(actor.call(Ask::WhereAmI).unwrap().1, "cylinder-worker");
    }
}

#[test]
fn a_call_after_a_cast_from_the_same_thread_sees_the_cast() {
    let actor = spawn(Probe::default());
    let mut expected_last = 0;
    for n in 1..=20_000u64 {
        if n % 2 == 1 {
            // Left in the mailbox (the actor thread may be asleep): the call below must not
            // overtake it by running here.
            actor.cast(Ask::Record(n)).unwrap();
        } else {
            let (last, _) = actor.call(Ask::Record(n)).unwrap();
            assert_eq!(last, n - 1, "a call overtook the cast before it");
        }
        expected_last = n;
    }
    assert_eq!(actor.call(Ask::Record(0)).unwrap().0, expected_last);
}

#[test]
fn many_callers_of_one_shared_actor_never_run_two_handlers_at_once() {
    let actor = spawn(Probe::default());
    let total = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (actor, total) = (actor.clone(), total.clone());
            thread::spawn(move || {
                for i in 0..5_000u64 {
                    let ask = Ask::Record(t * 1_000_000 + i);
                    if i % 7 == 0 {
                        actor.cast(ask).unwrap();
                    } else if i % 11 == 0 {
                        actor.call_timeout(ask, LIMIT).unwrap();
                    } else {
                        actor.call(ask).unwrap();
                    }
                    total.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(total.load(Ordering::Relaxed), 40_000);
    actor.call(Ask::WhereAmI).unwrap();
    assert_eq!(
        OVERLAPS.load(Ordering::SeqCst),
        0,
        "two handlers ran at once"
    );
}

#[test]
fn a_panic_on_the_caller_kills_the_actor_and_answers_everyone() {
    quiet_panics();
    let dropped_on = Arc::new(Mutex::new(None));
    let mut probe = Probe::default();
    probe.dropped_on = dropped_on.clone();
    let actor = spawn(probe);
    let handle = actor.thread().clone();
    let outcome = within(LIMIT, {
        let actor = actor.clone();
        move || actor.call(Ask::Crash)
    });
    assert!(matches!(outcome, Some(Err(Error::WorkerDied))));
    assert!(!actor.is_alive(), "WorkerDied from an actor still alive");
    assert!(matches!(actor.call(Ask::WhereAmI), Err(Error::WorkerDied)));
    assert!(matches!(
        actor.call_timeout(Ask::WhereAmI, LIMIT),
        Err(Error::WorkerDied)
    ));
    assert!(matches!(actor.cast(Ask::WhereAmI), Err(Error::WorkerDied)));
    // The thread ends, and the behaviour is dropped there, as after a panic on the thread.
    let stopped = within(LIMIT, {
        let actor = actor.clone();
        move || actor.stop()
    });
    assert!(
        stopped.is_some(),
        "stop waited forever for the dead actor's thread"
    );
    assert_eq!(
        dropped_on.lock().unwrap().as_deref(),
        Some("cylinder-worker")
    );
    drop(handle);
}

#[test]
fn callers_queued_behind_a_caller_whose_handler_panics_get_worker_died() {
    quiet_panics();
    for _ in 0..50 {
        let actor = spawn(Probe::default());
        let barrier = Arc::new(Barrier::new(2));
        let release = Arc::new(AtomicBool::new(false));
        // The panicking call below must run on this test's thread: make sure it does by
        // blocking it first (inline) while others queue, then crashing in the next call.
        let blocker = {
            let (actor, barrier, release) = (actor.clone(), barrier.clone(), release.clone());
            thread::spawn(move || {
                // Inline (idle actor): this thread holds the behaviour while it blocks.
                let _ = actor.call(Ask::Block(barrier, release));
                actor.call(Ask::Crash)
            })
        };
        barrier.wait();
        let queued: Vec<_> = (0..3)
            .map(|_| {
                let actor = actor.clone();
                thread::spawn(move || actor.call(Ask::WhereAmI))
            })
            .collect();
        assert!(eventually(LIMIT, || actor.queue_len() == Some(3)));
        release.store(true, Ordering::SeqCst);
        // The queued calls are handled by the actor's thread (the mailbox was not empty, so
        // the crash call waits behind them); the crash then kills the actor.
        let crash = within(LIMIT, move || blocker.join().unwrap());
        assert!(matches!(crash, Some(Err(Error::WorkerDied))));
        for call in queued {
            let answered = within(LIMIT, move || call.join().unwrap());
            assert!(matches!(answered, Some(Ok(_))), "a queued call was lost");
        }
        assert!(!actor.is_alive());
    }
}

#[test]
fn a_call_waiting_in_the_mailbox_when_a_caller_panics_gets_worker_died() {
    quiet_panics();
    for _ in 0..200 {
        let actor = spawn(Probe::default());
        let racers: Vec<_> = (0..4)
            .map(|i| {
                let actor = actor.clone();
                thread::spawn(move || actor.call(if i == 0 { Ask::Crash } else { Ask::WhereAmI }))
            })
            .collect();
        for racer in racers {
            let outcome = within(LIMIT, move || racer.join().unwrap());
            match outcome {
                Some(Ok(_)) | Some(Err(Error::WorkerDied)) => {}
                other => panic!("a caller hung or failed oddly: {other:?}"),
            }
        }
        assert!(!actor.is_alive());
        assert!(within(LIMIT, move || actor.stop()).is_some());
    }
}

#[test]
fn stop_from_inside_a_handler_run_on_the_caller_does_not_wait_for_itself() {
    let actor = spawn(Probe::default());
    let answered = within(LIMIT, {
        let actor = actor.clone();
        move || actor.call(Ask::StopMyself)
    });
    assert!(
        matches!(answered, Some(Ok(_))),
        "stop from an inline handler deadlocked"
    );
    assert!(eventually(LIMIT, || !actor.is_alive()));
    assert!(within(LIMIT, move || actor.stop()).is_some());
}

#[test]
fn a_slow_handler_still_times_out_with_call_timeout_on_an_idle_actor() {
    struct Slow;
    impl Behaviour for Slow {
        type Request = u64;
        type Reply = u64;
        fn handle_call(&mut self, ms: u64) -> u64 {
            thread::sleep(Duration::from_millis(ms));
            ms
        }
    }
    let actor = Actor::spawn(Slow).unwrap();
    let began = std::time::Instant::now();
    let late = actor.call_timeout(300, Duration::from_millis(10));
    assert!(matches!(late, Err(Error::Timeout { .. })));
    assert!(began.elapsed() < Duration::from_millis(250));
    // Busy with the late call: this one queues behind it, on the actor's thread.
    assert_eq!(actor.call(0).unwrap(), 0);
}

#[test]
fn calls_nest_across_actors_on_the_caller() {
    struct Outer(Arc<Actor<Inner>>);
    struct Inner;
    impl Behaviour for Inner {
        type Request = u64;
        type Reply = u64;
        fn handle_call(&mut self, x: u64) -> u64 {
            x + 1
        }
    }
    impl Behaviour for Outer {
        type Request = u64;
        type Reply = u64;
        fn handle_call(&mut self, x: u64) -> u64 {
            self.0.call(x).unwrap() * 2
        }
    }
    let inner = Arc::new(Actor::spawn(Inner).unwrap());
    let outer = Actor::spawn(Outer(inner.clone())).unwrap();
    for x in 0..1000 {
        assert_eq!(outer.call(x).unwrap(), (x + 1) * 2);
    }
}
