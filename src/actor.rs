use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crossbeam::channel::{self, Receiver, Sender};

use crate::error::Error;
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

    /// Handles a `call`; the return value goes back to the caller.
    fn handle_call(&mut self, request: Self::Request) -> Self::Reply;

    /// Handles a `cast` (no one waits for a reply). By default it is handled as a call whose
    /// reply is dropped.
    fn handle_cast(&mut self, request: Self::Request) {
        let _ = self.handle_call(request);
    }
}

enum Envelope<B: Behaviour> {
    Call(B::Request, Sender<B::Reply>),
    Cast(B::Request),
    Stop,
}

/// A worker thread with a mailbox: the Rust analogue of a `gen_server`.
///
/// Messages are handled one at a time, in order. If a handler panics, the thread ends, the
/// callers still waiting get [`Error::WorkerDied`], and [`Worker::is_alive`] turns false, so
/// that a [`Factory`](crate::Factory) supervisor starts a fresh one in its place.
///
/// ```
/// use cylinder::{Actor, Behaviour, Worker};
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
    mailbox: Sender<Envelope<B>>,
    alive: Arc<AtomicBool>,
    thread: thread::Thread,
}

/// Marks the actor dead if a handler panics. Declared after the caller's reply channel, it
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
    pub fn spawn(behaviour: B) -> std::io::Result<Self> {
        // Pools of actors retire dead ones with no configuration.
        crate::worker::liveness::register::<Self>();
        let (mailbox, inbox) = channel::unbounded();
        let alive = Arc::new(AtomicBool::new(true));
        let flag = alive.clone();
        let handle = thread::Builder::new()
            .name("cylinder-worker".into())
            .spawn(move || Self::serve(behaviour, inbox, &flag))?;
        Ok(Actor {
            mailbox,
            alive,
            thread: handle.thread().clone(),
        })
    }

    fn serve(mut behaviour: B, inbox: Receiver<Envelope<B>>, alive: &AtomicBool) {
        let run = catch_unwind(AssertUnwindSafe(|| {
            for envelope in inbox.iter() {
                match envelope {
                    Envelope::Call(request, reply) => {
                        let _dead_on_panic = DeadOnPanic(alive);
                        // The caller may have given up (timeout); its reply is then dropped.
                        let _ = reply.send(behaviour.handle_call(request));
                    }
                    Envelope::Cast(request) => behaviour.handle_cast(request),
                    Envelope::Stop => return,
                }
            }
        }));
        // Dead before the inbox drops and fails the callers still queued.
        alive.store(false, Ordering::Release);
        drop(inbox);
        if run.is_err() {
            log::error!(
                "cylinder: worker thread {:?} panicked; it is dead and will be replaced",
                thread::current().id()
            );
        }
    }

    /// Sends `request` and waits for the reply.
    pub fn call(&self, request: B::Request) -> Result<B::Reply, Error> {
        let (reply, answer) = channel::bounded(1);
        self.send(Envelope::Call(request, reply))?;
        answer.recv().map_err(|_| Error::WorkerDied)
    }

    /// Sends `request` and waits at most `timeout` for the reply.
    pub fn call_timeout(&self, request: B::Request, timeout: Duration) -> Result<B::Reply, Error> {
        let (reply, answer) = channel::bounded(1);
        self.send(Envelope::Call(request, reply))?;
        answer.recv_timeout(timeout).map_err(|err| match err {
            channel::RecvTimeoutError::Timeout => Error::Timeout(timeout),
            channel::RecvTimeoutError::Disconnected => Error::WorkerDied,
        })
    }

    /// Sends `request` without waiting for it to be handled.
    pub fn cast(&self, request: B::Request) -> Result<(), Error> {
        self.send(Envelope::Cast(request))
    }

    /// How many messages wait in the mailbox.
    pub fn queue_len(&self) -> Option<usize> {
        Some(self.mailbox.len())
    }

    /// Stops the thread once it has handled what is already in its mailbox, and waits for
    /// that. Must not be called from the worker's own thread.
    pub fn stop(&self) {
        let _ = self.mailbox.send(Envelope::Stop);
        // Return only once the thread is gone, so `is_alive` is false afterwards.
        while self.alive.load(Ordering::Acquire) {
            thread::yield_now();
        }
    }

    /// The worker's thread.
    pub fn thread(&self) -> &thread::Thread {
        &self.thread
    }

    fn send(&self, envelope: Envelope<B>) -> Result<(), Error> {
        if !self.alive.load(Ordering::Acquire) {
            return Err(Error::WorkerDied);
        }
        self.mailbox.send(envelope).map_err(|_| Error::WorkerDied)
    }
}

impl<B: Behaviour> Worker for Actor<B> {
    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    fn queue_len(&self) -> Option<usize> {
        Actor::queue_len(self)
    }
}

impl<B: Behaviour> Drop for Actor<B> {
    fn drop(&mut self) {
        // Dropping the mailbox ends the thread after its queued messages.
        let _ = self.mailbox.send(Envelope::Stop);
    }
}

impl<B: Behaviour> std::fmt::Debug for Actor<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Actor")
            .field("thread", &self.thread.id())
            .field("alive", &self.alive.load(Ordering::Relaxed))
            .field("queue_len", &self.mailbox.len())
            .finish()
    }
}
