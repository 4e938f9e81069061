//! Worker threads with a mailbox, and the hand-off of a call's reply.
//!
//! A call to an idle actor needs no hand-off at all: the caller takes the actor's behaviour
//! (the lock the actor's thread holds while it handles messages), finds the mailbox empty,
//! and runs the handler itself ([`Behaviour::INLINE_CALLS`]). The actor's thread takes a
//! message only while it holds the behaviour, so an empty mailbox under that lock means
//! every message sent before the call has been handled: order and exclusion are kept.
//!
//! Otherwise a call's round trip is two hand-offs between threads: the request into the actor's
//! mailbox, the reply into the caller's reply slot. Each waiting side first spins for a
//! short, adaptive while (a hand-off between two running threads takes a few hundred
//! nanoseconds; an OS wake-up takes microseconds, many more on a virtual machine), yielding
//! its core between looks after half a microsecond, then yields a few more times, then
//! parks. At most as many threads spin at once as there are cores, and a side whose spins
//! keep failing stops spinning (probing now and then), so oversubscribed callers do not
//! steal the cores the actors need. A caller that had to wake its actor does not spin.
//!
//! The reply slot is reused: one per calling thread and reply type, kept in a thread-local
//! registry, so a call allocates nothing. Each call takes the next sequence number of its
//! slot and the actor's answer carries it: a reply that comes after its caller timed out
//! is dropped, never taken for the answer to a later call.
//!
//! The room: `mailbox.rs` (the queue and the worker's sleep), `reply.rs` (the reply slot),
//! `spin.rs` (the adaptive spin budget); here, the actor and its thread.

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod mailbox;
mod reply;
mod spin;

use mailbox::{Mailbox, Queue};
use reply::{ReplySlot, ReplyTo};
use spin::Budget;

use crate::contain;
use crate::error::Error;
use crate::sync::thread::{self, JoinHandle, Thread};
use crate::sync::{AtomicBool, AtomicUsize, CachePadded, Mutex, Ordering, UnwindMutex};
use crate::worker::Worker;

/// What a worker thread does with its messages: the callbacks of an Erlang `gen_server`.
///
/// ```
/// use cylinder::{Actor, Behaviour};
///
/// struct Square;
///
/// impl Behaviour for Square {
///     type Request = i64;
///     type Reply = i64;
///     fn handle_call(&mut self, x: i64) -> i64 {
///         x * x
///     }
/// }
///
/// let worker = Actor::spawn(Square).unwrap();
/// assert_eq!(worker.call(4).unwrap(), 16);
/// ```
pub trait Behaviour: Send + 'static {
    /// The messages the worker accepts.
    type Request: Send + 'static;
    /// What a `call` answers.
    type Reply: Send + 'static;

    /// Whether a [`call`](Actor::call) to an idle actor runs [`handle_call`](Self::handle_call)
    /// on the calling thread (true unless a behaviour says otherwise).
    ///
    /// An actor is idle when its mailbox is empty and no message is being handled. The
    /// caller then takes the behaviour for the length of the call, as the actor's thread
    /// does for a message: one message at a time, in the order each sender sent them, and a
    /// panic still kills the actor and answers [`Error::WorkerDied`]. What it saves is the
    /// hand-off: no message, no wake-up, no reply, so the call costs a few nanoseconds
    /// instead of a few hundred (or microseconds, when a side has to be woken).
    ///
    /// Say `false` when the handler must run on the actor's own thread: it keeps state in
    /// thread-locals, holds a resource bound to the OS thread, expects to be woken by
    /// [`Actor::thread`]`().unpark()`, the thread has a priority or CPU affinity of its own,
    /// or it may be called from a thread-local destructor (run there, a handler that touches a
    /// thread-local, its own or a library's, may find it gone, panic, and kill the actor). A
    /// caller that is panicking (a call from a panic hook, or from a `Drop` while unwinding)
    /// always hands its call to the actor's thread.
    /// [`call_timeout`](Actor::call_timeout) and [`cast`](Actor::cast) always go through the
    /// mailbox, so that a slow handler never outlasts the caller's timeout.
    ///
    /// ```
    /// use cylinder::{Actor, Behaviour};
    ///
    /// struct WhereAmI;
    /// impl Behaviour for WhereAmI {
    ///     type Request = ();
    ///     type Reply = Option<String>;
    ///     const INLINE_CALLS: bool = false;
    ///     fn handle_call(&mut self, _: ()) -> Option<String> {
    ///         std::thread::current().name().map(String::from)
    ///     }
    /// }
    ///
    /// let actor = Actor::spawn(WhereAmI).unwrap();
    /// assert_eq!(actor.call(()).unwrap().as_deref(), Some("cylinder-worker"));
    /// ```
    const INLINE_CALLS: bool = true;

    /// Handles a `call`; the return value goes back to the caller.
    fn handle_call(&mut self, request: Self::Request) -> Self::Reply;

    /// Handles a `cast` (no one waits for a reply). By default it is handled as a call whose
    /// reply is dropped.
    fn handle_cast(&mut self, request: Self::Request) {
        let _ = self.handle_call(request);
    }
}

enum Envelope<B: Behaviour> {
    Call(B::Request, ReplyTo<B::Reply>),
    Cast(B::Request),
    Stop,
}

/// What an actor's thread and its callers share: the mailbox, and the behaviour itself,
/// held by whoever handles a message: the thread, or a caller that found the actor idle
/// ([`Behaviour::INLINE_CALLS`]). A message is taken from the mailbox only by the holder of
/// the behaviour, so a caller that holds it and finds the mailbox empty knows that every
/// message sent before its call has been handled.
struct Shared<B: Behaviour> {
    mailbox: Mailbox<B>,
    /// `None` once the actor's thread ended and dropped it.
    behaviour: UnwindMutex<Option<B>>,
    /// The thread holding its behaviour now to run its handlers (its `HANDLING` cell's
    /// address; 0: none), so that a call back into it from deeper in the same thread (its
    /// handler calls another actor inline, whose handler calls it) is `CallingSelf`, not a
    /// hang. Written only by the behaviour's holder (`HeldBy`).
    handled_by: AtomicUsize,
}

crate::sync::per_thread! {
    /// The actor whose handler this thread runs now (its `Shared`'s address; 0: none).
    static HANDLING: Cell<usize> = Cell::new(0);
}

/// Marks this thread as running handlers of one actor (its own thread, for its life, or a
/// caller running a call inline), until dropped.
struct Handling {
    /// The actor handled before this one on this thread (0: none).
    outer: usize,
}

/// Marks an actor as held by this thread (it holds the behaviour: `handled_by`), until
/// dropped. Only the behaviour's holder writes the mark, so an actor's thread coming up
/// while a caller runs a call inline does not overwrite the caller's.
struct HeldBy<'a> {
    handled_by: &'a AtomicUsize,
}

impl<'a> HeldBy<'a> {
    fn mark<B: Behaviour>(shared: &'a Shared<B>) -> Self {
        let me = HANDLING.with(|handling| handling as *const Cell<usize> as usize);
        shared.handled_by.store(me, Ordering::Relaxed);
        HeldBy {
            handled_by: &shared.handled_by,
        }
    }
}

impl Drop for HeldBy<'_> {
    fn drop(&mut self) {
        self.handled_by.store(0, Ordering::Relaxed);
    }
}

impl Handling {
    fn enter<B: Behaviour>(shared: &Shared<B>) -> Self {
        let this = shared as *const Shared<B> as usize;
        let outer = HANDLING.with(|handling| handling.replace(this));
        Handling { outer }
    }

    /// Whether this thread runs a handler of `shared`, innermost or further out.
    fn within<B: Behaviour>(shared: &Shared<B>) -> bool {
        let me = HANDLING
            .try_with(|handling| handling as *const Cell<usize> as usize)
            .unwrap_or(0);
        me != 0 && shared.handled_by.load(Ordering::Relaxed) == me
    }

    /// Whether this thread runs a handler of any actor now (or is an actor's thread).
    fn any() -> bool {
        HANDLING
            .try_with(|handling| handling.get() != 0)
            .unwrap_or(false)
    }

    /// Whether this thread runs a handler of the actor `shared` now.
    fn of<B: Behaviour>(shared: &Shared<B>) -> bool {
        let this = shared as *const Shared<B> as usize;
        HANDLING
            .try_with(|handling| handling.get() == this)
            .unwrap_or(false)
    }
}

impl Drop for Handling {
    fn drop(&mut self) {
        let _ = HANDLING.try_with(|handling| handling.set(self.outer));
    }
}

/// A worker thread with a mailbox: the Rust analogue of a `gen_server`.
///
/// Messages are handled one at a time, in order. If a handler panics, the thread ends, the
/// callers still waiting get [`Error::WorkerDied`], and [`is_alive`](Self::is_alive) turns
/// false, so that a [`Factory`](crate::Factory) supervisor starts a fresh one in its place.
///
/// Any number of threads may call one actor at once (it is `Sync`; a balancer shares it).
/// A call to an idle actor runs its handler on the calling thread, unless the behaviour
/// says otherwise ([`Behaviour::INLINE_CALLS`]); a call to a busy one goes through the
/// mailbox. A call allocates nothing: each calling thread reuses its own reply slot. A
/// waiting side spins briefly before it parks, so back-to-back calls cost no OS wake-up,
/// and an actor that gets no message for a while sleeps.
///
/// ```
/// use cylinder::{Actor, Behaviour};
///
/// struct Counter(u64);
///
/// impl Behaviour for Counter {
///     type Request = u64;
///     type Reply = u64;
///     fn handle_call(&mut self, add: u64) -> u64 {
///         self.0 += add;
///         self.0
///     }
/// }
///
/// let counter = Actor::spawn(Counter(0)).unwrap();
/// counter.cast(5).unwrap();
/// assert_eq!(counter.call(1).unwrap(), 6);
/// assert_eq!(counter.queue_len(), Some(0));
/// counter.stop();
/// assert!(counter.call(1).is_err());
/// assert!(!counter.is_alive());
/// ```
pub struct Actor<B: Behaviour> {
    shared: Arc<Shared<B>>,
    thread: Thread,
    handle: Mutex<Option<JoinHandle<()>>>,
}

/// Marks the actor dead if a handler panics. Declared after the caller's reply slot, it
/// drops first, so a caller who sees `WorkerDied` also sees `is_alive() == false`.
struct DeadOnPanic<'a>(&'a AtomicBool);

impl Drop for DeadOnPanic<'_> {
    fn drop(&mut self) {
        if thread::panicking() {
            self.0.store(false, Ordering::Release);
        }
    }
}

impl<B: Behaviour> Actor<B> {
    /// Starts the worker thread. Fails only if the operating system refuses a new thread.
    ///
    /// # Errors
    /// The error of `std::thread::Builder::spawn` when no thread can be started.
    ///
    /// ```
    /// use cylinder::{Actor, Behaviour};
    ///
    /// struct Echo;
    /// impl Behaviour for Echo {
    ///     type Request = u8;
    ///     type Reply = u8;
    ///     fn handle_call(&mut self, x: u8) -> u8 {
    ///         x
    ///     }
    /// }
    ///
    /// let echo = Actor::spawn(Echo)?;
    /// assert_eq!(echo.call(3).unwrap(), 3);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn spawn(behaviour: B) -> std::io::Result<Self> {
        // Pools of actors retire dead ones with no configuration.
        let shared = Arc::new(Shared {
            mailbox: Mailbox {
                queue: Mutex::new(Queue {
                    items: VecDeque::new(),
                    closed: false,
                }),
                len: AtomicUsize::new(0),
                sleeping: AtomicBool::new(false),
                alive: CachePadded::new(AtomicBool::new(true)),
            },
            behaviour: UnwindMutex::new(Some(behaviour)),
            handled_by: AtomicUsize::new(0),
        });
        let serving = shared.clone();
        let handle = thread::Builder::new()
            .name("cylinder-worker".into())
            .spawn(move || Self::serve(&serving))?;
        Ok(Actor {
            shared,
            thread: handle.thread().clone(),
            handle: Mutex::new(Some(handle)),
        })
    }

    /// The actor's thread: waits for messages, then takes the behaviour and handles them
    /// until the mailbox is empty (or waits for a caller that runs a call of its own).
    fn serve(shared: &Shared<B>) {
        let _handling = Handling::enter(shared);
        let inbox = &shared.mailbox;
        let spin = Budget::new();
        let run = contain::run(|| {
            while inbox.wait(&spin) {
                let mut held = shared.behaviour.lock();
                let _held_by = HeldBy::mark(shared);
                let Some(behaviour) = held.as_mut() else {
                    return;
                };
                // Alive is looked at again: a caller's handler may have panicked meanwhile.
                while inbox.alive.load(Ordering::Acquire) {
                    let Some(envelope) = inbox.try_take() else {
                        break;
                    };
                    match envelope {
                        Envelope::Call(request, reply) => {
                            let _dead_on_panic = DeadOnPanic(&inbox.alive);
                            // Not `reply.send(behaviour.handle_call(..))`: the receiver would
                            // be moved into a temporary that a panic drops before
                            // `_dead_on_panic`.
                            let answer = behaviour.handle_call(request);
                            reply.send(answer);
                        }
                        Envelope::Cast(request) => {
                            let _dead_on_panic = DeadOnPanic(&inbox.alive);
                            behaviour.handle_cast(request);
                        }
                        Envelope::Stop => {
                            // Dead while the behaviour is still held: no caller may run a
                            // call of its own on a stopped actor.
                            inbox.alive.store(false, Ordering::Release);
                            return;
                        }
                    }
                }
            }
        });
        // Dead before the mailbox closes and fails the callers still queued.
        inbox.alive.store(false, Ordering::Release);
        inbox.close();
        if run.is_err() {
            contain::logged!(
                error,
                "cylinder: worker thread {:?} panicked; it is dead and will be replaced",
                thread::current().id()
            );
        }
        // The behaviour ends on the actor's own thread, after its last message.
        let behaviour = shared.behaviour.lock().take();
        contain::dispose(behaviour);
    }

    /// Runs a call on this thread if the actor is idle ([`Behaviour::INLINE_CALLS`]); gives
    /// the request back if it is not.
    fn call_here(&self, request: B::Request) -> Result<Result<B::Reply, Error>, B::Request> {
        // Not while this thread panics: in a panic hook, a handler's panic would abort the
        // process (a panic in the hook), where on the actor's thread it only kills the actor.
        if !B::INLINE_CALLS || thread::panicking() {
            return Err(request);
        }
        let Some(mut held) = self.shared.behaviour.try_lock() else {
            return Err(request);
        };
        // Messages sent before this call (by this thread too) are handled first, in order.
        if self.shared.mailbox.len.load(Ordering::Acquire) != 0 {
            return Err(request);
        }
        let Some(behaviour) = held.as_mut().filter(|_| self.is_alive()) else {
            drop(held);
            return Ok(Err(refused(request, Error::WorkerDied)));
        };
        let handling = Handling::enter(&self.shared);
        let held_by = HeldBy::mark(&self.shared);
        let answer = contain::run(|| behaviour.handle_call(request));
        drop((held_by, handling));
        match answer {
            Ok(reply) => Ok(Ok(reply)),
            Err(_panicked) => {
                // As when it panics on the actor's thread: dead before anyone can see the
                // behaviour again, the callers queued meanwhile answered, the thread ended.
                self.shared.mailbox.alive.store(false, Ordering::Release);
                drop(held);
                self.shared.mailbox.close();
                self.thread.unpark();
                contain::logged!(
                    error,
                    "cylinder: a handler of worker thread {:?} panicked on the calling thread; \
                     the worker is dead and will be replaced",
                    self.thread.id()
                );
                Ok(Err(Error::WorkerDied))
            }
        }
    }

    /// Sends `request` and waits for the reply. [`Error::WorkerDied`] if the actor ended,
    /// or its handler panicked, before it replied. If the actor is idle, the handler runs on
    /// this thread instead ([`Behaviour::INLINE_CALLS`]).
    ///
    /// # Errors
    /// [`Error::WorkerDied`] when the actor ended, or its handler panicked, before it replied;
    /// [`Error::CallingSelf`] when called from one of this actor's own handlers.
    ///
    /// ```
    /// use cylinder::{Actor, Behaviour};
    ///
    /// struct Double;
    /// impl Behaviour for Double {
    ///     type Request = u32;
    ///     type Reply = u32;
    ///     fn handle_call(&mut self, x: u32) -> u32 {
    ///         2 * x
    ///     }
    /// }
    ///
    /// let double = Actor::spawn(Double).unwrap();
    /// assert_eq!(double.call(21).unwrap(), 42);
    /// ```
    pub fn call(&self, request: B::Request) -> Result<B::Reply, Error> {
        if let Err(err) = self.not_from_itself() {
            return Err(refused(request, err));
        }
        match self.call_here(request) {
            Ok(answered) => answered,
            Err(request) => self.round_trip(request, None),
        }
    }

    /// Sends `request` and waits at most `timeout` for the reply: [`Error::Timeout`] after
    /// that. A reply that comes later is dropped; it is never taken for the reply to a later
    /// call.
    ///
    /// # Errors
    /// [`Error::Timeout`] when no reply came within `timeout`; otherwise as [`call`](Self::call).
    ///
    /// ```
    /// use std::time::Duration;
    /// use cylinder::{Actor, Behaviour, Error};
    ///
    /// struct Sleepy;
    /// impl Behaviour for Sleepy {
    ///     type Request = u64;
    ///     type Reply = u64;
    ///     fn handle_call(&mut self, ms: u64) -> u64 {
    ///         std::thread::sleep(Duration::from_millis(ms));
    ///         ms
    ///     }
    /// }
    ///
    /// let sleepy = Actor::spawn(Sleepy).unwrap();
    /// let late = sleepy.call_timeout(100, Duration::from_millis(5));
    /// assert!(matches!(late, Err(Error::Timeout { .. })));
    /// // The late reply (100) is not mistaken for this one.
    /// assert_eq!(sleepy.call_timeout(0, Duration::from_secs(5)).unwrap(), 0);
    /// ```
    pub fn call_timeout(&self, request: B::Request, timeout: Duration) -> Result<B::Reply, Error> {
        if let Err(err) = self.not_from_itself() {
            return Err(refused(request, err));
        }
        self.round_trip(request, Some(timeout))
    }

    /// A handler of this actor calling it would wait for itself: [`Error::CallingSelf`].
    #[inline]
    fn not_from_itself(&self) -> Result<(), Error> {
        if self.runs_here() {
            return Err(Error::CallingSelf);
        }
        Ok(())
    }

    /// Whether this thread runs one of this actor's handlers now (on the actor's thread or
    /// inline). Outside every handler it costs one thread-local read.
    #[inline]
    fn runs_here(&self) -> bool {
        Handling::any()
            && (Handling::of(&self.shared)
                || Handling::within(&self.shared)
                || thread::current().id() == self.thread.id())
    }

    fn round_trip(
        &self,
        request: B::Request,
        timeout: Option<Duration>,
    ) -> Result<B::Reply, Error> {
        if !self.is_alive() {
            return Err(refused(request, Error::WorkerDied));
        }
        let slot = ReplySlot::<B::Reply>::mine();
        let seq = slot.begin();
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let reply_to = ReplyTo {
            slot: Some(slot.clone()),
            seq,
        };
        match self
            .shared
            .mailbox
            .post(Envelope::Call(request, reply_to), &self.thread)
        {
            Ok(woke) => slot.wait(seq, deadline, timeout.unwrap_or(Duration::MAX), !woke),
            Err(envelope) => {
                // The slot first: a request whose drop panics must not leave it awaiting.
                slot.abandon();
                Err(refused(envelope, Error::WorkerDied))
            }
        }
    }

    /// Sends `request` without waiting for it to be handled.
    ///
    /// # Errors
    /// [`Error::WorkerDied`] when the actor has ended.
    ///
    /// ```
    /// use cylinder::{Actor, Behaviour};
    ///
    /// struct Sum(u64);
    /// impl Behaviour for Sum {
    ///     type Request = u64;
    ///     type Reply = u64;
    ///     fn handle_call(&mut self, x: u64) -> u64 {
    ///         self.0 += x;
    ///         self.0
    ///     }
    /// }
    ///
    /// let sum = Actor::spawn(Sum(0)).unwrap();
    /// sum.cast(2).unwrap();
    /// assert_eq!(sum.call(3).unwrap(), 5);
    /// ```
    pub fn cast(&self, request: B::Request) -> Result<(), Error> {
        if !self.is_alive() {
            return Err(refused(request, Error::WorkerDied));
        }
        self.shared
            .mailbox
            .post(Envelope::Cast(request), &self.thread)
            .map(|_| ())
            .map_err(|envelope| refused(envelope, Error::WorkerDied))
    }

    /// How many messages wait in the mailbox.
    ///
    /// ```
    /// use cylinder::{Actor, Behaviour};
    ///
    /// struct Echo;
    /// impl Behaviour for Echo {
    ///     type Request = u8;
    ///     type Reply = u8;
    ///     fn handle_call(&mut self, x: u8) -> u8 {
    ///         x
    ///     }
    /// }
    ///
    /// let echo = Actor::spawn(Echo).unwrap();
    /// echo.call(1).unwrap();
    /// assert_eq!(echo.queue_len(), Some(0));
    /// ```
    pub fn queue_len(&self) -> Option<usize> {
        Some(self.shared.mailbox.len.load(Ordering::Acquire))
    }

    /// Whether the actor still serves: false once it was stopped or a handler panicked.
    ///
    /// ```
    /// use cylinder::{Actor, Behaviour};
    ///
    /// struct Echo;
    /// impl Behaviour for Echo {
    ///     type Request = u8;
    ///     type Reply = u8;
    ///     fn handle_call(&mut self, x: u8) -> u8 {
    ///         x
    ///     }
    /// }
    ///
    /// let echo = Actor::spawn(Echo).unwrap();
    /// assert!(echo.is_alive());
    /// echo.stop();
    /// assert!(!echo.is_alive());
    /// ```
    pub fn is_alive(&self) -> bool {
        self.shared.mailbox.alive.load(Ordering::Acquire)
    }

    /// Stops the thread once it has handled what is already in its mailbox, and waits for
    /// that. Called from the worker's own thread (in a handler), it only asks the thread to
    /// stop after the current message.
    ///
    /// ```
    /// use cylinder::{Actor, Behaviour};
    ///
    /// struct Echo;
    /// impl Behaviour for Echo {
    ///     type Request = u8;
    ///     type Reply = u8;
    ///     fn handle_call(&mut self, x: u8) -> u8 {
    ///         x
    ///     }
    /// }
    ///
    /// let echo = Actor::spawn(Echo).unwrap();
    /// echo.cast(1).unwrap();
    /// echo.stop();
    /// assert!(!echo.is_alive());
    /// ```
    pub fn stop(&self) {
        let _ = self.shared.mailbox.post(Envelope::Stop, &self.thread);
        if self.runs_here() {
            return;
        }
        // Held while joining, so a concurrent `stop` also returns only once the thread ended.
        let mut handle = self.handle.lock();
        if let Some(handle) = handle.take() {
            let _ = handle.join();
        }
    }

    /// The worker's thread.
    ///
    /// ```
    /// use cylinder::{Actor, Behaviour};
    ///
    /// struct Echo;
    /// impl Behaviour for Echo {
    ///     type Request = u8;
    ///     type Reply = u8;
    ///     fn handle_call(&mut self, x: u8) -> u8 {
    ///         x
    ///     }
    /// }
    ///
    /// let echo = Actor::spawn(Echo).unwrap();
    /// assert_eq!(echo.thread().name(), Some("cylinder-worker"));
    /// ```
    pub fn thread(&self) -> &thread::Thread {
        &self.thread
    }
}

impl<B: Behaviour> Worker for Actor<B> {
    fn is_alive(&self) -> bool {
        Actor::is_alive(self)
    }

    fn queue_len(&self) -> Option<usize> {
        Actor::queue_len(self)
    }
}

impl<B: Behaviour> Drop for Actor<B> {
    fn drop(&mut self) {
        // The thread ends after its queued messages; it is not waited for.
        let _ = self.shared.mailbox.post(Envelope::Stop, &self.thread);
    }
}

impl<B: Behaviour> std::fmt::Debug for Actor<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Actor")
            .field("thread", &self.thread.id())
            .field("alive", &self.is_alive())
            .field(
                "queue_len",
                &self.shared.mailbox.len.load(Ordering::Relaxed),
            )
            .finish()
    }
}

/// A request (or its envelope) the actor will not handle goes back to no one: it is the
/// caller's value, but its `Drop` is user code, dropped contained as every other.
fn refused<T>(request: T, err: Error) -> Error {
    contain::dispose(request);
    err
}
