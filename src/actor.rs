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

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::contain;
use crate::error::Error;
use crate::sync::thread::{self, JoinHandle, Thread};
use crate::sync::{
    seqcst_point, AtomicBool, AtomicU64, AtomicUsize, CachePadded, Mutex, Ordering, UnwindMutex,
};
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

// ---------------------------------------------------------------------------------------
// Spinning: bounded in time, adaptive, and never by more threads than there are cores.

/// The longest a waiting side spins before it parks.
#[cfg(not(loom))]
const SPIN_MAX: Duration = Duration::from_micros(20);
/// The shortest spin of an adaptive budget; below it, the budget is none.
#[cfg(not(loom))]
const SPIN_MIN: Duration = Duration::from_micros(1);
/// After this long a spinner yields its core between looks, so that a runnable thread on
/// the same core (perhaps the one it waits for) gets to run. A hand-off between two cores
/// takes a few hundred nanoseconds; when both threads share one core (a loaded machine),
/// every nanosecond spun before the yield is lost: with 4 µs here a same-core round trip
/// took about 12 µs on the 2-core test machine, with 0.5 µs about 6 µs.
#[cfg(not(loom))]
const SPIN_BEFORE_YIELD: Duration = Duration::from_nanos(500);
/// A waiter whose budget fell to none still spins (a full `SPIN_MAX`) once in this many
/// waits, to notice when spinning pays again: a shorter probe never outlasts the OS wake-up
/// of the other side, so both sides would stay parked after the load that made them park
/// has gone. The probe costs at most `SPIN_MAX / PROBE_EVERY` per wait.
#[cfg(not(loom))]
const PROBE_EVERY: u64 = 32;

/// After its spin, a waiter yields its core this many times (looking between) before it
/// parks. When there are more runnable threads than cores, the thread it waits for may be
/// queued on its own core: yielding lets it run, and the hand-off costs no OS wake-up on
/// either side. When there are not, a yield returns at once.
#[cfg(not(loom))]
const YIELDS: u32 = 4;

/// Yields up to [`YIELDS`] times while `ready()` is false; returns whether it turned true.
#[cfg(not(loom))]
fn yield_until(ready: impl Fn() -> bool) -> bool {
    for _ in 0..YIELDS {
        if ready() {
            return true;
        }
        thread::yield_now();
    }
    ready()
}

/// Under loom (no clock, and a yield is a step of the model): one yield, then a look.
#[cfg(loom)]
fn yield_until(ready: impl Fn() -> bool) -> bool {
    thread::yield_now();
    ready()
}

/// Threads spinning in [`spin_until`] right now, across the process.
#[cfg(not(loom))]
static SPINNING: AtomicUsize = AtomicUsize::new(0);

#[cfg(not(loom))]
fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Spins until `ready()` or `budget` has passed, unless as many threads as there are cores
/// already spin. Returns whether `ready()` turned true.
#[cfg(not(loom))]
fn spin_until(budget: Duration, ready: impl Fn() -> bool) -> bool {
    if ready() {
        return true;
    }
    if budget.is_zero() {
        return false;
    }
    if SPINNING.fetch_add(1, Ordering::Relaxed) >= cores() {
        SPINNING.fetch_sub(1, Ordering::Relaxed);
        return false;
    }
    let began = Instant::now();
    let mut ready_now = false;
    'spin: loop {
        for _ in 0..16 {
            if ready() {
                ready_now = true;
                break 'spin;
            }
            std::hint::spin_loop();
        }
        let spun = began.elapsed();
        if spun >= budget {
            break;
        }
        if spun >= SPIN_BEFORE_YIELD {
            thread::yield_now();
        }
    }
    SPINNING.fetch_sub(1, Ordering::Relaxed);
    ready_now
}

/// Under loom (no clock): one look. A spin only delays the slow path; the model explores
/// the other threads' steps around that look instead.
#[cfg(loom)]
fn spin_until(_budget: Duration, ready: impl Fn() -> bool) -> bool {
    ready()
}

/// A spin budget that doubles after a spin that paid off and halves after one that did not,
/// down to none; then one wait in [`PROBE_EVERY`] spins, to notice when spinning pays again. Owned by one waiting side (a caller's slot, an actor's thread): relaxed atomics
/// only because a slot is shared.
#[cfg(not(loom))]
struct Budget {
    nanos: AtomicU64,
    skipped: AtomicU64,
}

#[cfg(not(loom))]
impl Budget {
    fn new() -> Self {
        Budget {
            nanos: AtomicU64::new(SPIN_MAX.as_nanos() as u64),
            skipped: AtomicU64::new(0),
        }
    }
    fn get(&self) -> Duration {
        let nanos = self.nanos.load(Ordering::Relaxed);
        if nanos > 0 {
            return Duration::from_nanos(nanos);
        }
        let skipped = self.skipped.load(Ordering::Relaxed) + 1;
        if skipped >= PROBE_EVERY {
            self.skipped.store(0, Ordering::Relaxed);
            SPIN_MAX
        } else {
            self.skipped.store(skipped, Ordering::Relaxed);
            Duration::ZERO
        }
    }
    fn learn(&self, spun: Duration, paid_off: bool) {
        if spun.is_zero() {
            return;
        }
        let (max, min) = (SPIN_MAX.as_nanos() as u64, SPIN_MIN.as_nanos() as u64);
        let now = spun.as_nanos() as u64;
        let next = if paid_off {
            (now * 2).clamp(min, max)
        } else if now / 2 < min {
            0
        } else {
            now / 2
        };
        self.nanos.store(next, Ordering::Relaxed);
    }
}

/// Under loom the spin is one look whatever the budget (see the loom [`spin_until`]), so the
/// budget is none and learns nothing: no state for the model to explore.
#[cfg(loom)]
struct Budget;

#[cfg(loom)]
impl Budget {
    fn new() -> Self {
        Budget
    }
    fn get(&self) -> Duration {
        Duration::ZERO
    }
    fn learn(&self, _spun: Duration, _paid_off: bool) {}
}

// ---------------------------------------------------------------------------------------
// The reply slot: one per calling thread and reply type, reused by every call.

struct ReplySlot<R> {
    /// The reply of the call `awaited` names, put in by the actor: `Some(None)` when the
    /// actor died first.
    reply: Mutex<Option<Option<R>>>,
    /// The call whose reply is awaited (0: none, its caller gave up or took its reply).
    /// Set by the caller before it posts the call; cleared under the `reply` lock.
    awaited: AtomicU64,
    /// The sequence number of the last call begun (the caller's alone).
    issued: AtomicU64,
    /// The sequence number of the last reply put in (a look without the lock).
    done: AtomicU64,
    /// The caller is parked, or about to: whoever puts a reply in must unpark it.
    sleeping: AtomicBool,
    caller: Thread,
    spin: Budget,
}

crate::sync::per_thread! {
    /// This thread's reply slots, one per reply type (an `Arc<ReplySlot<R>>` each).
    static REPLY_SLOTS: RefCell<Vec<Box<dyn Any>>> = RefCell::new(Vec::new());
}

impl<R: Send + 'static> ReplySlot<R> {
    fn new() -> Self {
        ReplySlot {
            reply: Mutex::new(None),
            awaited: AtomicU64::new(0),
            issued: AtomicU64::new(0),
            done: AtomicU64::new(0),
            sleeping: AtomicBool::new(false),
            caller: thread::current(),
            spin: Budget::new(),
        }
    }

    /// The calling thread's slot for replies of type `R`, made on its first call.
    fn mine() -> Arc<Self> {
        let found = REPLY_SLOTS.try_with(|slots| {
            // The borrow is released before anything that could run user code.
            if let Some(slot) = slots
                .borrow()
                .iter()
                .find_map(|slot| slot.downcast_ref::<Arc<Self>>())
            {
                return slot.clone();
            }
            let slot = Arc::new(Self::new());
            slots.borrow_mut().push(Box::new(slot.clone()));
            slot
        });
        // During thread-local destruction: a slot for this call alone.
        found.unwrap_or_else(|_| Arc::new(Self::new()))
    }

    /// Starts a call: its sequence number, now awaited. No lock: a late reply to an earlier
    /// call, delivered meanwhile, reads 0 or this number, never its own.
    fn begin(&self) -> u64 {
        let seq = self.issued.load(Ordering::Relaxed) + 1;
        self.issued.store(seq, Ordering::Relaxed);
        // Published to the actor by the mailbox's lock, which the call goes through next.
        self.awaited.store(seq, Ordering::Release);
        seq
    }

    /// Puts in the reply of call `seq` (`None`: the actor died first), unless its caller
    /// has moved on; then the reply is dropped.
    fn deliver(&self, seq: u64, reply: Option<R>) {
        let mut slot = self.reply.lock();
        if self.awaited.load(Ordering::Acquire) != seq {
            drop(slot);
            // A late reply whose drop panics must not kill the actor that answered it.
            contain::dispose(reply);
            return;
        }
        self.awaited.store(0, Ordering::Relaxed);
        *slot = Some(reply);
        // Under the lock: the caller takes the reply, and begins its next call, only after
        // this, so a late store can never overwrite the number of a later call.
        self.done.store(seq, Ordering::SeqCst);
        drop(slot);
        seqcst_point();
        if self.sleeping.load(Ordering::SeqCst) {
            self.caller.unpark();
        }
    }

    /// Waits for the reply of call `seq`, until `deadline` if there is one. `spin`: whether
    /// to spin first (not when the actor had to be woken: its reply takes an OS wake-up).
    fn wait(
        &self,
        seq: u64,
        deadline: Option<Instant>,
        timeout: Duration,
        spin: bool,
    ) -> Result<R, Error> {
        let ready = || self.done.load(Ordering::Acquire) == seq;
        if spin && !ready() {
            let budget = self.spin.get();
            let mut capped = budget;
            if let Some(deadline) = deadline {
                capped = budget.min(deadline.saturating_duration_since(Instant::now()));
            }
            let paid_off = spin_until(capped, ready);
            self.spin.learn(budget, paid_off);
        }
        if deadline.is_none() {
            yield_until(ready);
        }
        while !ready() {
            self.sleeping.store(true, Ordering::SeqCst);
            seqcst_point();
            if self.done.load(Ordering::SeqCst) == seq {
                break;
            }
            match deadline {
                None => thread::park(),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        self.sleeping.store(false, Ordering::Relaxed);
                        return self.give_up(timeout);
                    }
                    thread::park_timeout(deadline - now);
                }
            }
        }
        self.sleeping.store(false, Ordering::Relaxed);
        let reply = self.reply.lock().take();
        reply.flatten().ok_or(Error::WorkerDied)
    }

    /// The caller's deadline passed: a reply that came in meanwhile still counts; otherwise
    /// the call is no longer awaited, and its reply will be dropped when it comes.
    fn give_up(&self, timeout: Duration) -> Result<R, Error> {
        let mut slot = self.reply.lock();
        match slot.take() {
            Some(reply) => reply.ok_or(Error::WorkerDied),
            None => {
                self.awaited.store(0, Ordering::Relaxed);
                Err(Error::Timeout(timeout))
            }
        }
    }

    /// The call could not be posted: it is no longer awaited, so its envelope's drop puts
    /// nothing in (and anything that is there goes).
    fn abandon(&self) {
        let left = {
            let mut slot = self.reply.lock();
            self.awaited.store(0, Ordering::Relaxed);
            slot.take()
        };
        drop(left);
    }
}

/// Where the reply of one call goes. Dropped unanswered (the handler panicked, or the actor
/// ended with the call still in its mailbox), it answers [`Error::WorkerDied`].
struct ReplyTo<R: Send + 'static> {
    slot: Option<Arc<ReplySlot<R>>>,
    seq: u64,
}

impl<R: Send + 'static> ReplyTo<R> {
    fn send(mut self, reply: R) {
        if let Some(slot) = self.slot.take() {
            slot.deliver(self.seq, Some(reply));
        }
    }
}

impl<R: Send + 'static> Drop for ReplyTo<R> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            slot.deliver(self.seq, None);
        }
    }
}

// ---------------------------------------------------------------------------------------
// The mailbox.

struct Mailbox<B: Behaviour> {
    queue: Mutex<Queue<B>>,
    /// Messages queued and not yet taken by the worker (a look without the lock).
    len: AtomicUsize,
    /// The worker is parked, or about to: the next sender must unpark it.
    sleeping: AtomicBool,
    /// Read on every call and by a pool on every lease, written once: on a line of its own,
    /// away from the fields both sides write on every message.
    alive: CachePadded<AtomicBool>,
}

struct Queue<B: Behaviour> {
    items: VecDeque<Envelope<B>>,
    /// The worker has ended: nothing more is accepted.
    closed: bool,
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
}

crate::sync::per_thread! {
    /// The actor whose handler this thread runs now (its `Shared`'s address; 0: none).
    static HANDLING: Cell<usize> = Cell::new(0);
}

/// Marks this thread as running a handler of one actor, until dropped.
struct Handling(usize);

impl Handling {
    fn enter<B: Behaviour>(shared: &Shared<B>) -> Self {
        let this = shared as *const Shared<B> as usize;
        Handling(HANDLING.with(|handling| handling.replace(this)))
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
        let _ = HANDLING.try_with(|handling| handling.set(self.0));
    }
}

impl<B: Behaviour> Mailbox<B> {
    /// Queues `envelope` and wakes the worker if it sleeps (then returns true); gives it
    /// back if the worker has ended.
    fn post(&self, envelope: Envelope<B>, worker: &Thread) -> Result<bool, Envelope<B>> {
        {
            let mut queue = self.queue.lock();
            if queue.closed {
                return Err(envelope);
            }
            queue.items.push_back(envelope);
            self.len.fetch_add(1, Ordering::SeqCst);
        }
        seqcst_point();
        // A compare-and-swap, not a swap: the same effect (only a true is cleared), and a
        // failed one writes nothing. Loom needs that: it leaves a store that an RMW raced
        // unordered with the actor's next `sleeping = true`, and a later look could then
        // read the stale false although the real modification order forbids it.
        if self.sleeping.load(Ordering::SeqCst)
            && self
                .sleeping
                .compare_exchange(true, false, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            worker.unpark();
            return Ok(true);
        }
        Ok(false)
    }

    fn try_take(&self) -> Option<Envelope<B>> {
        if self.len.load(Ordering::Acquire) == 0 {
            return None;
        }
        let envelope = self.queue.lock().items.pop_front();
        if envelope.is_some() {
            self.len.fetch_sub(1, Ordering::Release);
        }
        envelope
    }

    /// Whether a message waits, or the actor died (then there is nothing more to wait for).
    fn ready(&self) -> bool {
        self.len.load(Ordering::Acquire) != 0 || !self.alive.load(Ordering::Acquire)
    }

    /// Waits until a message is queued: spins for a while (adaptively), then parks. False
    /// when the actor died instead (a handler panicked on a caller's thread).
    fn wait(&self, spin: &Budget) -> bool {
        loop {
            if self.ready() {
                return self.alive.load(Ordering::Acquire);
            }
            let budget = spin.get();
            let paid_off = spin_until(budget, || self.ready());
            spin.learn(budget, paid_off);
            if paid_off || yield_until(|| self.ready()) {
                continue;
            }
            self.sleeping.store(true, Ordering::SeqCst);
            seqcst_point();
            if self.len.load(Ordering::SeqCst) == 0 && self.alive.load(Ordering::SeqCst) {
                thread::park();
            }
            self.sleeping.store(false, Ordering::Relaxed);
        }
    }

    /// Ends the mailbox: later posts fail, and the messages still queued are dropped (their
    /// callers get [`Error::WorkerDied`]).
    fn close(&self) {
        let left = {
            let mut queue = self.queue.lock();
            queue.closed = true;
            self.len.store(0, Ordering::Release);
            std::mem::take(&mut queue.items)
        };
        // A request's drop may panic. The rest are still dropped (their callers answered),
        // and the panic goes no further: not into a caller whose handler panicked and who
        // closes the mailbox, not out of the actor's thread before it drops its behaviour.
        for envelope in left {
            contain::dispose(envelope);
        }
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
            log::error!(
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
            return Ok(Err(Error::WorkerDied));
        };
        let handling = Handling::enter(&self.shared);
        let answer = contain::run(|| behaviour.handle_call(request));
        drop(handling);
        match answer {
            Ok(reply) => Ok(Ok(reply)),
            Err(_panicked) => {
                // As when it panics on the actor's thread: dead before anyone can see the
                // behaviour again, the callers queued meanwhile answered, the thread ended.
                self.shared.mailbox.alive.store(false, Ordering::Release);
                drop(held);
                self.shared.mailbox.close();
                self.thread.unpark();
                log::error!(
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
        self.not_from_itself()?;
        match self.call_here(request) {
            Ok(answered) => answered,
            Err(request) => self.round_trip(request, None),
        }
    }

    /// Sends `request` and waits at most `timeout` for the reply: [`Error::Timeout`] after
    /// that. A reply that comes later is dropped; it is never taken for the reply to a later
    /// call.
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
    /// assert!(matches!(late, Err(Error::Timeout(_))));
    /// // The late reply (100) is not mistaken for this one.
    /// assert_eq!(sleepy.call_timeout(0, Duration::from_secs(5)).unwrap(), 0);
    /// ```
    pub fn call_timeout(&self, request: B::Request, timeout: Duration) -> Result<B::Reply, Error> {
        self.not_from_itself()?;
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
            && (Handling::of(&self.shared) || thread::current().id() == self.thread.id())
    }

    fn round_trip(
        &self,
        request: B::Request,
        timeout: Option<Duration>,
    ) -> Result<B::Reply, Error> {
        if !self.is_alive() {
            return Err(Error::WorkerDied);
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
                drop(envelope);
                Err(Error::WorkerDied)
            }
        }
    }

    /// Sends `request` without waiting for it to be handled.
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
            return Err(Error::WorkerDied);
        }
        self.shared
            .mailbox
            .post(Envelope::Cast(request), &self.thread)
            .map(|_| ())
            .map_err(|_| Error::WorkerDied)
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
