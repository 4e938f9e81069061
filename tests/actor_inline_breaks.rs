//! Attempts to break calls run on the caller's thread (`Behaviour::INLINE_CALLS`): panicking
//! drops of queued values, calls from unwinding and from thread-local destructors, races of
//! an inline call with `stop`, with a panic on the actor's thread, and with a pool that
//! replaces dead actors.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use common::{eventually, quiet_panics, within};
use cylinder::{Actor, Behaviour, Error, Pool};

const LIMIT: Duration = Duration::from_secs(10);

/// Panics when dropped, unless defused.
struct Bomb(bool);

impl Drop for Bomb {
    fn drop(&mut self) {
        if self.0 {
            panic!("a request's drop panics on purpose");
        }
    }
}

enum Ask {
    Echo(u64),
    /// Waits at the barrier, then until `release`, then panics if the flag says so.
    BlockThen(Arc<Barrier>, Arc<AtomicBool>, bool),
    /// A request whose drop panics unless the handler defuses it.
    Bomb(Bomb),
    Crash,
}

#[derive(Default)]
struct Target {
    drops: Arc<AtomicUsize>,
    dropped_on: Arc<Mutex<Option<String>>>,
    inside: Arc<AtomicU32>,
    overlaps: Arc<AtomicU32>,
}

impl Behaviour for Target {
    type Request = Ask;
    type Reply = u64;
    fn handle_call(&mut self, ask: Ask) -> u64 {
        if self.inside.fetch_add(1, Ordering::SeqCst) != 0 {
            self.overlaps.fetch_add(1, Ordering::SeqCst);
        }
        struct Leave<'a>(&'a AtomicU32);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let _leave = Leave(&self.inside);
        match ask {
            Ask::Echo(n) => n,
            Ask::BlockThen(barrier, release, crash) => {
                barrier.wait();
                while !release.load(Ordering::SeqCst) {
                    thread::sleep(Duration::from_millis(1));
                }
                if crash {
                    panic!("a handler crashes on purpose");
                }
                0
            }
            Ask::Bomb(mut bomb) => {
                bomb.0 = false;
                1
            }
            Ask::Crash => panic!("a handler crashes on purpose"),
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::SeqCst);
        *self.dropped_on.lock().unwrap() = thread::current().name().map(String::from);
    }
}

/// How the crashing call of [`a_crash_with_a_bomb_queued`] is made.
type CrashCall = fn(&Actor<Target>, Ask) -> Result<u64, Error>;

/// A handler panics while a call waits in the mailbox whose request panics when dropped.
/// The mailbox is closed by whoever ran the handler: that drop must not unwind into a caller
/// (the crashing one gets `WorkerDied`, so does the queued one), and the actor must still end
/// as usual, its behaviour dropped once on its own thread.
fn a_crash_with_a_bomb_queued(crash: CrashCall) {
    quiet_panics();
    for _ in 0..20 {
        let target = Target::default();
        let (drops, dropped_on) = (target.drops.clone(), target.dropped_on.clone());
        let actor = Arc::new(Actor::spawn(target).unwrap());
        let barrier = Arc::new(Barrier::new(2));
        let release = Arc::new(AtomicBool::new(false));
        let crasher = {
            let (actor, barrier, release) = (actor.clone(), barrier.clone(), release.clone());
            thread::spawn(move || {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    crash(&actor, Ask::BlockThen(barrier, release, true))
                }))
            })
        };
        barrier.wait();
        // The behaviour is held by the crashing call: this call waits in the mailbox.
        let queued = {
            let actor = actor.clone();
            thread::spawn(move || actor.call(Ask::Bomb(Bomb(true))))
        };
        assert!(eventually(LIMIT, || actor.queue_len() == Some(1)));
        release.store(true, Ordering::SeqCst);
        let crashed = within(LIMIT, move || crasher.join().unwrap());
        match crashed {
            Some(Ok(Err(Error::WorkerDied))) => {}
            Some(Ok(other)) => panic!("the crashing call answered {other:?}"),
            Some(Err(_)) => panic!("a queued request's panicking drop escaped into the caller"),
            None => panic!("the crashing call hung"),
        }
        let answered = within(LIMIT, move || queued.join().unwrap());
        assert!(matches!(answered, Some(Err(Error::WorkerDied))));
        assert!(!actor.is_alive());
        assert!(within(LIMIT, move || actor.stop()).is_some(), "stop hung");
        assert!(
            eventually(LIMIT, || drops.load(Ordering::SeqCst) == 1),
            "the behaviour was not dropped"
        );
        assert_eq!(
            dropped_on.lock().unwrap().as_deref(),
            Some("cylinder-worker")
        );
    }
}

/// The crashing handler runs on the caller's thread (idle actor), which closes the mailbox.
#[test]
fn a_panicking_drop_of_a_queued_request_does_not_escape_into_an_inline_caller() {
    a_crash_with_a_bomb_queued(|actor, ask| actor.call(ask));
}

/// The crashing handler runs on the actor's thread (`call_timeout` always goes there): the
/// thread must still drop its behaviour, once, itself.
#[test]
fn a_panicking_drop_of_a_queued_request_does_not_cost_the_behaviour_its_drop() {
    a_crash_with_a_bomb_queued(|actor, ask| actor.call_timeout(ask, LIMIT));
}

/// A call made from a `Drop` that runs while its thread unwinds from a panic: the handler
/// runs on that thread (idle actor) and panics too. The nested panic must be caught and
/// answered with `WorkerDied`, not abort the process.
#[test]
fn a_handler_that_panics_during_the_callers_unwinding_answers_worker_died() {
    quiet_panics();
    let actor = Arc::new(Actor::spawn(Target::default()).unwrap());
    struct CallOnDrop(Arc<Actor<Target>>, Arc<Mutex<Option<Result<u64, Error>>>>);
    impl Drop for CallOnDrop {
        fn drop(&mut self) {
            *self.1.lock().unwrap() = Some(self.0.call(Ask::Crash));
        }
    }
    let seen = Arc::new(Mutex::new(None));
    let unwound = {
        let (actor, seen) = (actor.clone(), seen.clone());
        within(LIMIT, move || {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let _guard = CallOnDrop(actor, seen);
                panic!("the caller panics on purpose");
            }))
            .is_err()
        })
    };
    assert_eq!(unwound, Some(true));
    assert!(matches!(
        seen.lock().unwrap().take(),
        Some(Err(Error::WorkerDied))
    ));
    assert!(!actor.is_alive());
}

thread_local! {
    /// A handler's scratch buffer: a thread-local of its own.
    static SCRATCH: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
    /// What this thread does when its thread-locals are destroyed.
    static ON_EXIT: OnExit = const { OnExit(std::cell::RefCell::new(None)) };
}

struct OnExit(std::cell::RefCell<Option<Box<dyn FnOnce()>>>);

impl Drop for OnExit {
    fn drop(&mut self) {
        if let Some(exit) = self.0.borrow_mut().take() {
            exit();
        }
    }
}

/// Sums what it was sent, in a thread-local scratch buffer.
struct UsesThreadLocals<const INLINE: bool>;

impl<const INLINE: bool> Behaviour for UsesThreadLocals<INLINE> {
    type Request = u64;
    type Reply = u64;
    const INLINE_CALLS: bool = INLINE;
    fn handle_call(&mut self, x: u64) -> u64 {
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            s.push(x);
            s.iter().sum()
        })
    }
}

/// Calls the actor from a thread-local destructor that runs after the handler's own
/// thread-local was destroyed on that thread; returns the answer and whether the actor
/// lives on.
fn call_from_a_thread_local_destructor<const INLINE: bool>() -> (Option<Result<u64, Error>>, bool) {
    quiet_panics();
    let actor = Arc::new(Actor::spawn(UsesThreadLocals::<INLINE>).unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    let caller = {
        let actor = actor.clone();
        thread::spawn(move || {
            // Thread-locals are destroyed in the reverse order of their first use: the
            // handler's scratch buffer, used on this thread too, is gone when the exiting
            // call runs.
            ON_EXIT.with(|exit| {
                *exit.0.borrow_mut() = Some(Box::new(move || {
                    let _ = tx.send(actor.call(5));
                }))
            });
            SCRATCH.with(|s| s.borrow_mut().clear());
        })
    };
    assert!(within(LIMIT, move || caller.join().is_ok()) == Some(true));
    (rx.recv_timeout(LIMIT).ok(), actor.is_alive())
}

/// Before calls could run on the caller, a call from a thread-local destructor ran on the
/// actor's thread, whose thread-locals are all there. Opting out still gives that.
#[test]
fn a_call_from_a_thread_local_destructor_is_answered_on_the_actors_thread() {
    let (answer, alive) = call_from_a_thread_local_destructor::<false>();
    assert!(matches!(answer, Some(Ok(5))), "{answer:?}");
    assert!(alive);
}

/// Known limitation, not fixed: run inline, the same call finds the handler's thread-local
/// gone on the calling thread, the handler panics, and the actor dies. No stable way tells a
/// thread-local destructor from other code (see `Behaviour::INLINE_CALLS`).
#[test]
#[ignore = "known limitation: an inline call from a thread-local destructor runs where thread-locals may be gone"]
fn a_call_from_a_thread_local_destructor_is_answered_inline() {
    let (answer, alive) = call_from_a_thread_local_destructor::<true>();
    assert!(matches!(answer, Some(Ok(5))), "{answer:?}");
    assert!(alive, "a call from a destructor killed the actor");
}

/// Inline calls race `stop()` from another thread: every call is answered or gets
/// `WorkerDied`, `WorkerDied` only from a dead actor, nothing after `stop` returned is Ok,
/// and the behaviour is dropped once, on the actor's thread.
#[test]
fn inline_calls_racing_stop() {
    for round in 0..200 {
        let target = Target::default();
        let (drops, dropped_on, overlaps) = (
            target.drops.clone(),
            target.dropped_on.clone(),
            target.overlaps.clone(),
        );
        let actor = Arc::new(Actor::spawn(target).unwrap());
        let stopped = Arc::new(AtomicBool::new(false));
        let callers: Vec<_> = (0..2)
            .map(|_| {
                let (actor, stopped) = (actor.clone(), stopped.clone());
                thread::spawn(move || loop {
                    let after_stop = stopped.load(Ordering::SeqCst);
                    match actor.call(Ask::Echo(7)) {
                        Ok(7) => assert!(!after_stop, "Ok from a stopped actor"),
                        Ok(other) => panic!("wrong reply {other}"),
                        Err(Error::WorkerDied) => {
                            assert!(!actor.is_alive(), "WorkerDied from a live actor");
                            return;
                        }
                        Err(other) => panic!("unexpected {other:?}"),
                    }
                })
            })
            .collect();
        if round % 2 == 0 {
            thread::yield_now();
        }
        let stopper = {
            let (actor, stopped) = (actor.clone(), stopped.clone());
            within(LIMIT, move || {
                actor.stop();
                stopped.store(true, Ordering::SeqCst);
            })
        };
        assert!(stopper.is_some(), "stop hung");
        for caller in callers {
            assert!(within(LIMIT, move || caller.join().unwrap()).is_some());
        }
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        assert_eq!(
            dropped_on.lock().unwrap().as_deref(),
            Some("cylinder-worker")
        );
        assert_eq!(overlaps.load(Ordering::SeqCst), 0);
    }
}

/// Inline calls race a panic on the actor's thread (a cast that crashes) and a panic on
/// another caller: `WorkerDied` only from a dead actor, no hang, one drop.
#[test]
fn inline_calls_racing_panics_on_the_thread_and_on_callers() {
    quiet_panics();
    for round in 0..200 {
        let target = Target::default();
        let (drops, overlaps) = (target.drops.clone(), target.overlaps.clone());
        let actor = Arc::new(Actor::spawn(target).unwrap());
        let callers: Vec<_> = (0..3)
            .map(|i| {
                let actor = actor.clone();
                thread::spawn(move || {
                    for n in 0.. {
                        let result = if i == 0 && n == 50 + round % 7 {
                            actor.call(Ask::Crash)
                        } else if i == 1 && n == 40 + round % 11 {
                            actor.cast(Ask::Crash).map(|_| 0)
                        } else {
                            actor.call(Ask::Echo(n))
                        };
                        match result {
                            Ok(_) => {}
                            Err(Error::WorkerDied) => {
                                assert!(!actor.is_alive(), "WorkerDied from a live actor");
                                return;
                            }
                            Err(other) => panic!("unexpected {other:?}"),
                        }
                    }
                })
            })
            .collect();
        for caller in callers {
            let joined = within(LIMIT, move || caller.join().is_ok());
            assert_eq!(joined, Some(true), "a caller hung or failed");
        }
        assert!(within(LIMIT, move || actor.stop()).is_some(), "stop hung");
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        assert_eq!(overlaps.load(Ordering::SeqCst), 0);
    }
}

/// A pool of actors: a transaction whose call panics (inline) leaves a dead actor, which the
/// pool must notice and replace; no later transaction gets `WorkerDied` from it.
#[test]
fn a_pool_replaces_an_actor_whose_inline_handler_panicked() {
    quiet_panics();
    let pool = Pool::builder()
        .size(1)
        .is_alive(Actor::is_alive)
        .build(|| Ok(Actor::spawn(Target::default())?))
        .unwrap();
    let died = pool.transaction(|actor| actor.call(Ask::Crash)).unwrap();
    assert!(matches!(died, Err(Error::WorkerDied)));
    let answer = within(LIMIT, move || {
        pool.transaction(|actor| actor.call(Ask::Echo(3)))
    });
    assert!(
        matches!(answer, Some(Ok(Ok(3)))),
        "the pool handed out the dead actor: {answer:?}"
    );
}

/// A panic hook reports each panic to an actor with `call` (and skips the actor's own
/// panics, so as not to call itself). When the report's handler panics, that is the actor's
/// death, as on its thread, not a panic inside the hook, which aborts the process. Run in a
/// child process: an abort would end the whole test binary.
#[test]
fn a_handler_that_panics_inside_a_panic_hook_does_not_abort_the_process() {
    const NAME: &str = "a_handler_that_panics_inside_a_panic_hook_does_not_abort_the_process";
    if std::env::var_os("CYLINDER_BREAK_CHILD").is_some() {
        panic_hook_reports_to_an_actor();
        return;
    }
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
        .env("CYLINDER_BREAK_CHILD", "1")
        .status()
        .unwrap();
    assert!(status.success(), "the child process failed: {status:?}");
}

fn panic_hook_reports_to_an_actor() {
    /// Keeps reports; panics on one it cannot parse.
    struct Reporter(Vec<String>);
    impl Behaviour for Reporter {
        type Request = String;
        type Reply = usize;
        fn handle_call(&mut self, report: String) -> usize {
            if report.contains("unparsable") {
                panic!("the reporter panics on purpose");
            }
            self.0.push(report);
            self.0.len()
        }
    }
    static REPORTER: OnceLock<Actor<Reporter>> = OnceLock::new();
    static REPORTED: Mutex<Vec<Result<usize, Error>>> = Mutex::new(Vec::new());
    REPORTER.get_or_init(|| Actor::spawn(Reporter(Vec::new())).unwrap());
    std::panic::set_hook(Box::new(|info| {
        let message = info.to_string();
        if message.contains("reporter") {
            return; // its own panic: it cannot report itself
        }
        let answer = REPORTER.get().unwrap().call(message);
        REPORTED.lock().unwrap().push(answer);
    }));
    let done = within(LIMIT, || {
        let first = std::panic::catch_unwind(|| panic!("a caller panics"));
        let second = std::panic::catch_unwind(|| panic!("an unparsable caller panics"));
        first.is_err() && second.is_err()
    });
    let _ = std::panic::take_hook();
    assert_eq!(done, Some(true));
    let reported = std::mem::take(&mut *REPORTED.lock().unwrap());
    assert!(matches!(
        reported.as_slice(),
        [Ok(1), Err(Error::WorkerDied)]
    ));
    assert!(!REPORTER.get().unwrap().is_alive());
}

/// Bursts of casts and calls (inline, handed off, with and without timeout) from several
/// senders at once: each sender's messages are handled in the order it sent them, none is
/// handled twice or lost, and a call's reply is its own.
#[test]
fn bursts_from_many_senders_keep_each_senders_order() {
    const SENDERS: u64 = 6;
    const EACH: u64 = 3_000;
    /// The last number handled from each sender; counts what it handled.
    struct Ordered {
        last: Vec<u64>,
        handled: u64,
        broken: Arc<AtomicU32>,
    }
    impl Behaviour for Ordered {
        type Request = (u64, u64);
        type Reply = (u64, u64);
        fn handle_call(&mut self, (sender, n): (u64, u64)) -> (u64, u64) {
            let last = &mut self.last[sender as usize];
            if n != *last + 1 {
                self.broken.fetch_add(1, Ordering::SeqCst);
            }
            *last = n;
            self.handled += 1;
            (sender, n)
        }
    }
    let broken = Arc::new(AtomicU32::new(0));
    let actor = Arc::new(
        Actor::spawn(Ordered {
            last: vec![0; SENDERS as usize],
            handled: 0,
            broken: broken.clone(),
        })
        .unwrap(),
    );
    let senders: Vec<_> = (0..SENDERS)
        .map(|s| {
            let actor = actor.clone();
            thread::spawn(move || {
                for n in 1..=EACH {
                    match (n + s) % 5 {
                        0 | 1 => actor.cast((s, n)).unwrap(),
                        2 => assert_eq!(actor.call_timeout((s, n), LIMIT).unwrap(), (s, n)),
                        _ => assert_eq!(actor.call((s, n)).unwrap(), (s, n)),
                    }
                }
            })
        })
        .collect();
    for sender in senders {
        assert!(within(LIMIT * 2, move || sender.join().is_ok()) == Some(true));
    }
    // A call from each sender's point of view: every message before it was handled.
    let (_, _) = actor.call((0, EACH + 1)).unwrap();
    assert_eq!(
        broken.load(Ordering::SeqCst),
        0,
        "a sender's order was broken"
    );
    let stopped = within(LIMIT, move || actor.stop());
    assert!(stopped.is_some());
}

/// A handler that reaches back into its own actor (inline or on the thread): a cast to
/// itself waits behind it, `queue_len` and `is_alive` answer, a `call_timeout` to itself
/// fails at once with `CallingSelf` (the actor is busy with this very call), `stop` does not
/// wait for itself, and
/// dropping the last other handle from inside does not hang. Nothing deadlocks.
#[test]
fn a_handler_that_reaches_back_into_its_own_actor() {
    #[derive(Default)]
    struct Reentrant {
        me: Arc<Mutex<Option<Arc<Actor<Reentrant>>>>>,
        seen: Vec<u64>,
    }
    enum Back {
        Note(u64),
        CastQueueAliveTimeout,
        Seen,
        StopAndDropMe,
    }
    impl Behaviour for Reentrant {
        type Request = Back;
        type Reply = (Vec<u64>, Option<usize>, bool, bool);
        fn handle_call(&mut self, back: Back) -> Self::Reply {
            let me = self.me.lock().unwrap().clone();
            match back {
                Back::Note(n) => {
                    self.seen.push(n);
                    (Vec::new(), None, true, false)
                }
                Back::CastQueueAliveTimeout => {
                    let me = me.unwrap();
                    me.cast(Back::Note(1)).unwrap();
                    let queued = me.queue_len();
                    let alive = me.is_alive();
                    let calling_self = matches!(
                        me.call_timeout(Back::Note(2), Duration::from_secs(60)),
                        Err(Error::CallingSelf)
                    );
                    (Vec::new(), queued, alive, calling_self)
                }
                Back::Seen => (self.seen.clone(), None, true, false),
                Back::StopAndDropMe => {
                    let me = me.unwrap();
                    me.stop();
                    // The other handle: the caller still holds one.
                    self.me.lock().unwrap().take();
                    drop(me);
                    (Vec::new(), None, true, false)
                }
            }
        }
    }
    for inline_caller in [true, false] {
        let behaviour = Reentrant::default();
        let me = behaviour.me.clone();
        let actor = Arc::new(Actor::spawn(behaviour).unwrap());
        *me.lock().unwrap() = Some(actor.clone());
        let outcome = within(LIMIT, {
            let actor = actor.clone();
            move || {
                let first = if inline_caller {
                    actor.call(Back::CastQueueAliveTimeout)
                } else {
                    actor.call_timeout(Back::CastQueueAliveTimeout, LIMIT)
                };
                let seen = actor.call(Back::Seen).map(|r| r.0);
                let stopped = actor.call(Back::StopAndDropMe);
                actor.stop();
                (first, seen, stopped, actor.is_alive())
            }
        });
        let (first, seen, stopped, alive) = outcome.expect("a handler reaching back deadlocked");
        let (_, queued, alive_inside, calling_self) = first.unwrap();
        assert_eq!(queued, Some(1));
        assert!(alive_inside);
        assert!(calling_self);
        assert_eq!(seen.unwrap(), vec![1], "the cast, and no call to itself");
        assert!(stopped.is_ok());
        assert!(!alive);
    }
}

/// A reply that panics when dropped: dropped late, on the actor's thread, after its caller
/// gave up, it must not kill the actor that answered it.
struct Grenade(u64);

impl Drop for Grenade {
    fn drop(&mut self) {
        if self.0 == 1 {
            panic!("a late reply explodes on purpose");
        }
    }
}

struct SlowGrenades;

impl Behaviour for SlowGrenades {
    type Request = u64;
    type Reply = Grenade;
    fn handle_call(&mut self, ms: u64) -> Grenade {
        thread::sleep(Duration::from_millis(ms));
        Grenade(if ms > 0 { 1 } else { 0 })
    }
}

#[test]
fn a_late_reply_whose_drop_panics_does_not_kill_the_actor() {
    quiet_panics();
    let actor = Actor::spawn(SlowGrenades).unwrap();
    // Far longer than the timeout, so that even a caller descheduled for a while gives up
    // before the reply comes (one that found its reply would drop the grenade itself).
    let late = actor.call_timeout(300, Duration::from_millis(1));
    assert!(matches!(late, Err(Error::Timeout { .. })));
    // Queued behind the late call: answered once the late reply has been dropped.
    let next = actor.call_timeout(0, Duration::from_secs(30));
    assert!(
        matches!(next, Ok(Grenade(0))),
        "the actor died of a late reply"
    );
    assert!(actor.is_alive());
}
