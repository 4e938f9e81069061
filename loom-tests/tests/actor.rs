//! Loom models of the actor's real code (`src/actor.rs`, built through `src/sync.rs` under
//! `--cfg loom`): the hand-off of a call and its reply, calls run on the caller, panics,
//! timeouts and stop. Each model has the actor's thread and one or two more.
#![cfg(loom)]

use std::sync::{Arc, Once};
use std::time::Duration;

use cylinder::{Actor, Behaviour, Error};
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::thread;

enum Msg {
    /// Answers `n`.
    Echo(u64),
    /// Records `n`; answers the number recorded before it (0 at first).
    Record(u64),
    /// Panics.
    Crash,
}

/// The panic message of [`Msg::Crash`]; the models' panic hook keeps it quiet.
const CRASH: &str = "a handler crashes on purpose";

/// Counters the model reads after its threads are done.
#[derive(Clone, Default)]
struct Seen {
    /// Handlers running now, on any thread.
    inside: Arc<AtomicUsize>,
    /// Times a handler found another one running (a broken exclusion): must stay 0. Counted,
    /// not asserted, because a panic in a handler is caught and answered `WorkerDied`.
    overlaps: Arc<AtomicUsize>,
    /// Handlers that ran to the end.
    handled: Arc<AtomicUsize>,
}

impl Seen {
    fn new() -> Seen {
        Seen {
            inside: Arc::new(AtomicUsize::new(0)),
            overlaps: Arc::new(AtomicUsize::new(0)),
            handled: Arc::new(AtomicUsize::new(0)),
        }
    }
    fn handled(&self) -> usize {
        self.handled.load(Ordering::Acquire)
    }
    fn assert_no_overlap(&self) {
        assert_eq!(
            self.overlaps.load(Ordering::Acquire),
            0,
            "two handlers ran at once"
        );
    }
}

/// A behaviour that answers from its message and counts its handlers. `INLINE`: its
/// `Behaviour::INLINE_CALLS`.
struct Probe<const INLINE: bool> {
    seen: Seen,
    last: u64,
}

impl<const INLINE: bool> Behaviour for Probe<INLINE> {
    type Request = Msg;
    type Reply = u64;
    const INLINE_CALLS: bool = INLINE;

    fn handle_call(&mut self, msg: Msg) -> u64 {
        if self.seen.inside.fetch_add(1, Ordering::AcqRel) != 0 {
            self.seen.overlaps.fetch_add(1, Ordering::AcqRel);
        }
        let answer = match msg {
            Msg::Echo(n) => n,
            Msg::Record(n) => std::mem::replace(&mut self.last, n),
            Msg::Crash => {
                self.seen.inside.fetch_sub(1, Ordering::AcqRel);
                panic!("{CRASH}");
            }
        };
        self.seen.handled.fetch_add(1, Ordering::AcqRel);
        self.seen.inside.fetch_sub(1, Ordering::AcqRel);
        answer
    }
}

fn spawn<const INLINE: bool>(seen: &Seen) -> Arc<Actor<Probe<INLINE>>> {
    Arc::new(
        Actor::spawn(Probe::<INLINE> {
            seen: seen.clone(),
            last: 0,
        })
        .unwrap(),
    )
}

/// Runs `test` under loom, with the preemption bound `LOOM_MAX_PREEMPTIONS` sets (3 when
/// unset), held at `most` at the highest.
fn model_within(most: usize, test: impl Fn() + Sync + Send + 'static) {
    quiet_crashes();
    let mut builder = loom::model::Builder::new();
    let bound = builder.preemption_bound.unwrap_or(3).min(most);
    builder.preemption_bound = Some(bound);
    builder.check(test);
}

/// The preemption bound of the models with three threads (the actor's and two more): at 4
/// each of them searches for minutes on 2 cores (about 25 times as long as at 3).
const THREE_THREADS: usize = 3;

/// `handoff_two_callers` is held at 2: every step of both calls is a hand-off (park tokens,
/// reply slots), and at 3 its search takes 80 s on 2 cores.
const HANDOFF_THREE_THREADS: usize = 2;

fn model(test: impl Fn() + Sync + Send + 'static) {
    model_within(usize::MAX, test)
}

/// The crashes on purpose would print a panic message in every explored execution; every
/// other panic (a failed assertion) is still reported.
fn quiet_crashes() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let message = info
                .payload()
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| info.payload().downcast_ref::<&str>().copied());
            if message != Some(CRASH) {
                default(info);
            }
        }));
    });
}

/// Stops the actor and checks that it ended.
fn stop<B: Behaviour>(actor: &Actor<B>) {
    actor.stop();
    assert!(!actor.is_alive());
}

// ---------------------------------------------------------------------------------------
// a. The hand-off (calls through the mailbox).

/// Two calls in a row through the mailbox (`INLINE_CALLS = false`), each answered with its own
/// reply: no lost wake-up between the caller parking and the actor delivering, nor between
/// the actor parking (after the first call) and the second call's post. A lost one leaves a
/// thread parked forever, which loom reports as a deadlock.
#[test]
fn handoff_two_calls_in_a_row() {
    model(|| {
        let seen = Seen::new();
        let actor = spawn::<false>(&seen);
        assert_eq!(actor.call(Msg::Echo(1)).unwrap(), 1);
        assert_eq!(actor.call(Msg::Echo(2)).unwrap(), 2);
        stop(&*actor);
        assert_eq!(seen.handled(), 2);
    });
}

/// Two callers on two threads, one call each through the mailbox: both posts race the actor
/// going to sleep, both deliveries race their caller going to sleep.
#[test]
fn handoff_two_callers() {
    model_within(HANDOFF_THREE_THREADS, || {
        let seen = Seen::new();
        let actor = spawn::<false>(&seen);
        let other = actor.clone();
        let t = thread::spawn(move || assert_eq!(other.call(Msg::Echo(2)).unwrap(), 2));
        assert_eq!(actor.call(Msg::Echo(1)).unwrap(), 1);
        t.join().unwrap();
        stop(&*actor);
        assert_eq!(seen.handled(), 2);
        seen.assert_no_overlap();
    });
}

// ---------------------------------------------------------------------------------------
// b. Calls run on the caller (`INLINE_CALLS = true`, the default).

/// Two callers call one idle actor at once: whichever runs its call on its own thread, and
/// whichever goes through the mailbox, both are answered and no two handlers overlap.
#[test]
fn inline_two_callers_never_overlap() {
    model_within(THREE_THREADS, || {
        let seen = Seen::new();
        let actor = spawn::<true>(&seen);
        let other = actor.clone();
        let t = thread::spawn(move || assert_eq!(other.call(Msg::Echo(2)).unwrap(), 2));
        assert_eq!(actor.call(Msg::Echo(1)).unwrap(), 1);
        t.join().unwrap();
        seen.assert_no_overlap();
        stop(&*actor);
        assert_eq!(seen.handled(), 2);
    });
}

/// A cast, then a call from the same thread: the call sees the cast handled first, whether
/// the actor's thread has taken the cast, is handling it, or has not woken yet.
#[test]
fn inline_cast_then_call_in_order() {
    model(|| {
        let seen = Seen::new();
        let actor = spawn::<true>(&seen);
        actor.cast(Msg::Record(1)).unwrap();
        assert_eq!(
            actor.call(Msg::Record(2)).unwrap(),
            1,
            "the call overtook the cast"
        );
        seen.assert_no_overlap();
        stop(&*actor);
        assert_eq!(seen.handled(), 2);
    });
}

// ---------------------------------------------------------------------------------------
// c. A handler that panics.

/// Checks what every model of a panic ends with: the actor is dead, and `stop` returns (the
/// actor's thread ended: a thread left parked would be a loom deadlock).
fn assert_dead_and_stops<B: Behaviour>(actor: &Actor<B>) {
    assert!(!actor.is_alive(), "alive after a handler panicked");
    actor.stop();
    assert!(!actor.is_alive());
}

fn ok_or_died(answer: Result<u64, Error>, expected: u64) {
    match answer {
        Ok(n) => assert_eq!(n, expected),
        Err(Error::WorkerDied) => {}
        Err(other) => panic!("unexpected {other:?}"),
    }
}

/// A call whose handler panics on the caller's thread (the actor was idle), while another
/// thread calls: that one gets its answer or `WorkerDied`, never hangs.
#[test]
fn panic_inline_with_another_caller() {
    model_within(THREE_THREADS, || {
        let seen = Seen::new();
        let actor = spawn::<true>(&seen);
        let other = actor.clone();
        let t = thread::spawn(move || ok_or_died(other.call(Msg::Echo(2)), 2));
        assert!(matches!(actor.call(Msg::Crash), Err(Error::WorkerDied)));
        t.join().unwrap();
        assert_dead_and_stops(&*actor);
        seen.assert_no_overlap();
    });
}

/// A handler that panics on the actor's thread (a cast: always handled there), while another
/// thread calls: that one gets its answer or `WorkerDied`, never hangs; the actor is dead
/// once `stop` has returned.
#[test]
fn panic_on_the_actor_thread_with_another_caller() {
    model_within(THREE_THREADS, || {
        let seen = Seen::new();
        let actor = spawn::<true>(&seen);
        let other = actor.clone();
        let t = thread::spawn(move || ok_or_died(other.call(Msg::Echo(2)), 2));
        actor.cast(Msg::Crash).unwrap();
        t.join().unwrap();
        actor.stop();
        assert!(!actor.is_alive(), "alive after a handler panicked");
        seen.assert_no_overlap();
    });
}

// ---------------------------------------------------------------------------------------
// d. A timeout racing the late reply.

/// A `call_timeout` that gives up (its deadline is now: loom has no clock) races its reply;
/// the next call from the same thread reuses the reply slot and must get its own reply,
/// never the late one.
#[test]
fn timeout_racing_the_late_reply() {
    model(|| {
        let seen = Seen::new();
        let actor = spawn::<false>(&seen);
        match actor.call_timeout(Msg::Echo(1), Duration::ZERO) {
            Ok(n) => assert_eq!(n, 1),
            Err(Error::Timeout { .. }) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
        assert_eq!(actor.call(Msg::Echo(2)).unwrap(), 2, "took the late reply");
        stop(&*actor);
        assert_eq!(seen.handled(), 2);
    });
}

/// A `call_timeout` whose deadline does not pass (an hour) waits through timed parks, which
/// loom models as parks that return at once: it gets its reply.
#[test]
fn timed_wait_gets_its_reply() {
    model(|| {
        let seen = Seen::new();
        let actor = spawn::<false>(&seen);
        let hour = Duration::from_secs(3600);
        assert_eq!(actor.call_timeout(Msg::Echo(1), hour).unwrap(), 1);
        stop(&*actor);
    });
}

// ---------------------------------------------------------------------------------------
// e. Stop racing a call.

/// `stop` racing a call from another thread (run on the caller if the actor is idle): stop
/// returns, the call is answered or gets `WorkerDied`, and nothing is handled after stop
/// returned (its `Stop` was handled).
#[test]
fn stop_racing_an_inline_call() {
    model_within(THREE_THREADS, || {
        let seen = Seen::new();
        let actor = spawn::<true>(&seen);
        let other = actor.clone();
        let t = thread::spawn(move || other.call(Msg::Echo(2)));
        actor.stop();
        assert!(!actor.is_alive());
        let handled_at_stop = seen.handled();
        let answer = t.join().unwrap();
        assert_eq!(
            seen.handled(),
            handled_at_stop,
            "a call was handled after stop"
        );
        match answer {
            Ok(n) => {
                assert_eq!(n, 2);
                assert_eq!(handled_at_stop, 1);
            }
            Err(Error::WorkerDied) => assert_eq!(handled_at_stop, 0, "handled, yet WorkerDied"),
            Err(other) => panic!("unexpected {other:?}"),
        }
    });
}
