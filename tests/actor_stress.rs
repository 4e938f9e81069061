//! Stress of the call hand-off (a lost reply is a hung caller): 16 threads call 4 shared
//! actors, whose handlers now and then panic, sleep past a caller's timeout, or answer at
//! once. Every call must be answered with its own request's value, or fail with
//! `WorkerDied` (the actor panicked) or `Timeout` (a `call_timeout` that gave up); dead
//! actors are replaced as the threads meet them. A watchdog fails the test after 120 s. It
//! runs twice: with calls to an idle actor run on the caller's thread (the default), and
//! with every call handed to the actor's thread. Handlers of one actor never run at once.
//!
//! 100 000 calls per thread in release builds; 30 000 in debug builds (`cargo test`), to keep
//! the run under half a minute on 2 cores.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use common::quiet_panics;
use cylinder::{Actor, Behaviour, Error};
use parking_lot::RwLock;

const THREADS: u64 = 16;
const ACTORS: usize = 4;
const CALLS: u64 = if cfg!(debug_assertions) {
    30_000
} else {
    100_000
};

#[derive(Clone, Copy)]
enum Act {
    Echo,
    Panic,
    Sleep(u64),
}

/// Handlers of one actor found running at once: must stay 0.
static OVERLAPS: AtomicU64 = AtomicU64::new(0);

/// `INLINE`: the behaviour's `INLINE_CALLS`. `inside`: its handlers running now.
#[derive(Default)]
struct Chaos<const INLINE: bool> {
    inside: AtomicU64,
}

impl<const INLINE: bool> Behaviour for Chaos<INLINE> {
    type Request = (u64, Act);
    type Reply = u64;
    const INLINE_CALLS: bool = INLINE;
    fn handle_call(&mut self, (value, act): (u64, Act)) -> u64 {
        if self.inside.fetch_add(1, Ordering::SeqCst) != 0 {
            OVERLAPS.fetch_add(1, Ordering::SeqCst);
        }
        let _leave = Leave(&self.inside);
        match act {
            Act::Echo => value,
            Act::Panic => panic!("a handler panics on purpose"),
            Act::Sleep(us) => {
                thread::sleep(Duration::from_micros(us));
                value
            }
        }
    }
}

/// Counts a handler out, also when it panics.
struct Leave<'a>(&'a AtomicU64);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// xorshift64*: a cheap per-thread random stream.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[derive(Default)]
struct Tally {
    answered: AtomicU64,
    died: AtomicU64,
    timed_out: AtomicU64,
    replaced: AtomicU64,
}

#[test]
fn every_call_is_answered_or_fails_and_none_hangs() {
    stress::<true>();
}

#[test]
fn every_call_handed_to_the_thread_is_answered_or_fails_and_none_hangs() {
    stress::<false>();
}

fn stress<const INLINE: bool>() {
    // Silence the expected handler panics (one message each).
    quiet_panics();
    let actors: Arc<Vec<RwLock<Arc<Actor<Chaos<INLINE>>>>>> = Arc::new(
        (0..ACTORS)
            .map(|_| RwLock::new(Arc::new(Actor::spawn(Chaos::<INLINE>::default()).unwrap())))
            .collect(),
    );
    let tally = Arc::new(Tally::default());
    let (done, finished) = mpsc::channel();
    for t in 0..THREADS {
        let actors = actors.clone();
        let tally = tally.clone();
        let done = done.clone();
        thread::spawn(move || {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (t + 1));
            for i in 0..CALLS {
                let value = t << 40 | i;
                let index = (rng.next() % ACTORS as u64) as usize;
                let actor = actors[index].read().clone();
                let roll = rng.next() % 10_000;
                let act = match roll {
                    0..=1 => Act::Panic,
                    2..=9 => Act::Sleep(200),
                    _ => Act::Echo,
                };
                let result = if roll < 50 {
                    actor.call_timeout((value, act), Duration::from_micros(50))
                } else {
                    actor.call((value, act))
                };
                match result {
                    Ok(reply) => {
                        assert_eq!(reply, value, "a reply to another call");
                        tally.answered.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(Error::WorkerDied) => {
                        assert!(!actor.is_alive(), "WorkerDied from a live actor");
                        tally.died.fetch_add(1, Ordering::Relaxed);
                        let mut slot = actors[index].write();
                        if Arc::ptr_eq(&slot, &actor) {
                            *slot = Arc::new(Actor::spawn(Chaos::<INLINE>::default()).unwrap());
                            tally.replaced.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(Error::Timeout { .. }) => {
                        assert!(roll < 50, "a call without a timeout timed out");
                        tally.timed_out.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(other) => panic!("unexpected error {other:?}"),
                }
            }
            let _ = done.send(());
        });
    }
    drop(done);
    for _ in 0..THREADS {
        finished
            .recv_timeout(Duration::from_secs(120))
            .expect("a caller hung (or panicked): a reply was lost");
    }
    let answered = tally.answered.load(Ordering::Relaxed);
    let died = tally.died.load(Ordering::Relaxed);
    let timed_out = tally.timed_out.load(Ordering::Relaxed);
    println!(
        "inline calls {INLINE}: {answered} answered, {died} WorkerDied, {timed_out} timed out, {} actors replaced",
        tally.replaced.load(Ordering::Relaxed)
    );
    assert_eq!(answered + died + timed_out, THREADS * CALLS);
    assert!(died > 0 && answered > 0);
    assert_eq!(
        OVERLAPS.load(Ordering::SeqCst),
        0,
        "two handlers ran at once"
    );
}
