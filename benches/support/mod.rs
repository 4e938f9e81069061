//! The pools under comparison, set up alike (8 workers, no per-checkout validation), and a
//! runner that starts N threads together. Shared by the criterion benches and by
//! `throughput.rs`, the example beside them.
#![allow(dead_code)]

use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam::queue::ArrayQueue;
use cylinder::{Actor, Balancer, Behaviour, BoxError, Pool, Worker};

/// Workers in every pool of the uncontended groups.
pub const WORKERS: usize = 8;

/// The cylinder worker: a plain value, so only the pool's own cost is measured.
pub struct Conn(pub usize);

/// The balancer's workers are shared children, which say whether they are alive.
impl Worker for Conn {}

pub fn cylinder_pool(size: usize) -> Pool<Conn> {
    let next = AtomicUsize::new(0);
    Pool::builder()
        .size(size)
        .build(move || Ok(Conn(next.fetch_add(1, Ordering::Relaxed))))
        .expect("a pool of plain workers builds")
}

pub fn cylinder_balancer(size: usize) -> Balancer<Conn> {
    let set: Vec<Arc<Conn>> = (0..size).map(|i| Arc::new(Conn(i))).collect();
    Balancer::builder()
        .build_with(move || -> Result<_, BoxError> { Ok(set.clone()) })
        .expect("a balancer over a fixed set builds")
}

/// r2d2's manager for a connection that is a number; validation on checkout is off, r2d2's
/// fastest setting.
pub struct Manager;

impl r2d2::ManageConnection for Manager {
    type Connection = usize;
    type Error = std::io::Error;
    fn connect(&self) -> Result<usize, std::io::Error> {
        Ok(0)
    }
    fn is_valid(&self, _: &mut usize) -> Result<(), std::io::Error> {
        Ok(())
    }
    fn has_broken(&self, _: &mut usize) -> bool {
        false
    }
}

pub fn r2d2_pool(size: usize) -> r2d2::Pool<Manager> {
    r2d2::Pool::builder()
        .max_size(size as u32)
        .min_idle(Some(size as u32))
        .test_on_check_out(false)
        .build(Manager)
        .expect("an r2d2 pool of numbers builds")
}

pub fn deadpool_pool(size: usize) -> deadpool::unmanaged::Pool<usize> {
    deadpool::unmanaged::Pool::from((0..size).collect::<Vec<_>>())
}

pub fn object_pool(size: usize) -> object_pool::Pool<usize> {
    object_pool::Pool::new(size, || 0)
}

/// The floor: a bare bounded lock-free queue of worker numbers.
pub fn array_queue(size: usize) -> ArrayQueue<usize> {
    let queue = ArrayQueue::new(size);
    for i in 0..size {
        let _ = queue.push(i);
    }
    queue
}

/// One turn of the floor: pop a worker number and push it back.
pub fn floor_cycle(queue: &ArrayQueue<usize>) {
    if let Some(slot) = queue.pop() {
        keep(slot);
        let _ = queue.push(slot);
    }
}

/// The textbook balancer: an `ArcSwap` load, one shared `AtomicUsize`, an `Arc` clone.
pub struct Textbook {
    set: ArcSwap<Vec<Arc<Conn>>>,
    next: AtomicUsize,
}

impl Textbook {
    pub fn new(size: usize) -> Textbook {
        Textbook {
            set: ArcSwap::from_pointee((0..size).map(|i| Arc::new(Conn(i))).collect()),
            next: AtomicUsize::new(0),
        }
    }

    /// The floor of any snapshot balancer: one `ArcSwap` load and a read through it.
    pub fn load_first(&self) -> usize {
        self.set.load()[0].0
    }

    /// The floor the issue for the balancer names: an `ArcSwap` load and a round-robin
    /// position kept per thread (a thread-local cursor, no shared write), read through.
    pub fn load_per_thread_cursor(&self) -> usize {
        thread_local!(static CURSOR: std::cell::Cell<usize> = const { std::cell::Cell::new(0) });
        let set = self.set.load();
        let at = CURSOR.with(|cursor| {
            let at = cursor.get();
            cursor.set(if at + 1 == set.len() { 0 } else { at + 1 });
            at
        });
        set[at % set.len()].0
    }

    pub fn get(&self) -> Arc<Conn> {
        let set = self.set.load();
        set[self.next.fetch_add(1, Ordering::Relaxed) % set.len()].clone()
    }
}

/// A worker thread that echoes. `INLINE` is its [`Behaviour::INLINE_CALLS`]: by default a
/// call to an idle echo runs on the caller's thread; `Echo<false>` always takes the mailbox
/// round trip (the hand-off between two threads).
pub struct Echo<const INLINE: bool = true>;

impl<const INLINE: bool> Behaviour for Echo<INLINE> {
    type Request = u64;
    type Reply = u64;
    const INLINE_CALLS: bool = INLINE;
    fn handle_call(&mut self, n: u64) -> u64 {
        n
    }
}

pub fn echo_pool<const INLINE: bool>(size: usize) -> Pool<Actor<Echo<INLINE>>> {
    Pool::builder()
        .size(size)
        .build(|| Ok(Actor::spawn(Echo::<INLINE>)?))
        .expect("a pool of echo threads builds")
}

/// Holds a lease for a short while, as the `contended` group does: ten spin-loop hints,
/// about 0.26 µs on the 2-core machine of BENCHMARKS.md.
pub fn short_spin() {
    for _ in 0..10 {
        std::hint::spin_loop();
    }
}

/// Runs `op` `iters` times on each of `threads` threads, started together, and returns the
/// wall time from the first thread's start to the last thread's end: time / iters is the
/// time per operation on each thread, and threads x iters / time the aggregate throughput.
/// Thread start-up stays out (each thread warms up, then all start at a barrier). The mean
/// of each thread's own loop time would not do: with more threads than cores, a thread whose
/// loop fits in one time slice runs while the others wait, so each loop looks short and the
/// aggregate would be counted as if they had all run at once.
pub fn run_parallel(threads: usize, iters: u64, op: &(dyn Fn() + Sync)) -> Duration {
    let start = Barrier::new(threads);
    thread::scope(|scope| {
        let spans: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    // Warm the thread's own state (stripe, arc-swap debt slot) before timing.
                    op();
                    start.wait();
                    let began = Instant::now();
                    for _ in 0..iters {
                        op();
                    }
                    (began, Instant::now())
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().expect("a bench thread panicked"))
            .collect();
        let first = spans
            .iter()
            .map(|s| s.0)
            .min()
            .expect("at least one thread");
        let last = spans
            .iter()
            .map(|s| s.1)
            .max()
            .expect("at least one thread");
        last - first
    })
}

pub fn keep<T>(value: T) {
    black_box(value);
}

/// A balancer over `size` shared echo threads: many callers may queue on one actor.
pub fn echo_balancer<const INLINE: bool>(size: usize) -> Balancer<Actor<Echo<INLINE>>> {
    let set: Vec<Arc<Actor<Echo<INLINE>>>> = (0..size)
        .map(|_| Arc::new(Actor::spawn(Echo::<INLINE>).expect("an echo thread starts")))
        .collect();
    Balancer::builder()
        .build_with(move || -> Result<_, BoxError> { Ok(set.clone()) })
        .expect("a balancer over echo threads builds")
}

/// The floor of a call round trip: a bare crossbeam `bounded(1)` ping-pong with one echo
/// thread, one request channel and one reply channel, both made once.
pub struct PingPong {
    request: Option<crossbeam::channel::Sender<u64>>,
    reply: crossbeam::channel::Receiver<u64>,
    thread: Option<thread::JoinHandle<()>>,
}

impl PingPong {
    pub fn new() -> PingPong {
        let (request, inbox) = crossbeam::channel::bounded::<u64>(1);
        let (outbox, reply) = crossbeam::channel::bounded::<u64>(1);
        let thread = thread::spawn(move || {
            for n in inbox.iter() {
                if outbox.send(n).is_err() {
                    return;
                }
            }
        });
        PingPong {
            request: Some(request),
            reply,
            thread: Some(thread),
        }
    }

    /// One round trip: send `n`, wait for it to come back.
    pub fn call(&self, n: u64) -> u64 {
        self.request.as_ref().unwrap().send(n).unwrap();
        self.reply.recv().unwrap()
    }
}

impl Drop for PingPong {
    fn drop(&mut self) {
        self.request = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
