//! The order in which free workers are reused: `QueueMode::Lifo` (the default) hands out the
//! worker released last, so a lightly used pool keeps using the same few and `idle_timeout`
//! closes the rest; `QueueMode::Fifo` hands out the one idle longest, spreading use over every
//! worker.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

use cylinder::{Pool, QueueMode};

/// A pool of three numbered workers in `mode`; one checkout and release on this thread,
/// then a checkout on another: the worker released, and the one the other thread got.
fn released_then_taken_elsewhere(mode: QueueMode) -> (usize, usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let pool = Pool::builder()
        .size(3)
        .queue_mode(mode)
        .build(move || Ok(next.fetch_add(1, Ordering::SeqCst)))
        .unwrap();
    let released = *pool.checkout().unwrap();
    let handle = pool.clone();
    let taken = thread::spawn(move || *handle.checkout().unwrap())
        .join()
        .unwrap();
    (released, taken)
}

#[test]
fn lifo_queue_mode_gives_another_thread_the_most_recently_released_worker() {
    let (released, taken) = released_then_taken_elsewhere(QueueMode::Lifo);
    assert_eq!(
        taken, released,
        "Lifo: another thread got worker {taken}, not worker {released} released just before"
    );
}

#[test]
fn fifo_queue_mode_gives_another_thread_the_worker_idle_longest() {
    let (released, taken) = released_then_taken_elsewhere(QueueMode::Fifo);
    assert_ne!(
        taken, released,
        "Fifo: another thread got worker {released}, released just now, while two others had \
         been idle longer"
    );
}

/// Five workers, one checkout at a time from a fresh thread each: in `Fifo` mode each
/// checkout gets the worker idle longest, so five in a row use all five.
#[test]
fn fifo_queue_mode_rotates_sequential_checkouts_through_every_worker() {
    let next = Arc::new(AtomicUsize::new(0));
    let pool = Pool::builder()
        .size(5)
        .queue_mode(QueueMode::Fifo)
        .build(move || Ok(next.fetch_add(1, Ordering::SeqCst)))
        .unwrap();
    // Five client threads, alive throughout, each making one checkout in turn.
    let mut used = Vec::new();
    thread::scope(|scope| {
        let (turns, clients): (Vec<_>, Vec<_>) = (0..5)
            .map(|_| {
                let (turn, wait) = std::sync::mpsc::channel::<std::sync::mpsc::Sender<usize>>();
                let pool = &pool;
                let client = scope.spawn(move || {
                    for reply in wait {
                        reply.send(*pool.checkout().unwrap()).unwrap();
                    }
                });
                (turn, client)
            })
            .unzip();
        for turn in &turns {
            let (reply, answer) = std::sync::mpsc::channel();
            turn.send(reply).unwrap();
            used.push(answer.recv().unwrap());
        }
        drop(turns);
        clients.into_iter().for_each(|c| c.join().unwrap());
    });
    used.sort_unstable();
    assert_eq!(
        used,
        vec![0, 1, 2, 3, 4],
        "Fifo: five checkouts in a row, from five threads"
    );
}

/// r2d2's `idle_timeout_partial_use` with each checkout on a fresh thread, in both modes: one
/// checkout every 125 ms for 1.5 s, `idle_timeout` 500 ms. `Lifo` keeps reusing the worker
/// released last, so the other four age out; `Fifo` hands out the one idle longest, spreading
/// the use over the workers, so more than one stays open.
fn open_after_partial_use(mode: QueueMode) -> usize {
    let pool = Pool::builder()
        .size(5)
        .min_idle(0)
        .queue_mode(mode)
        .idle_timeout(std::time::Duration::from_millis(500))
        .build(|| Ok(()))
        .unwrap();
    let all: Vec<_> = (0..5).map(|_| pool.try_checkout().unwrap()).collect();
    drop(all);
    for _ in 0..12 {
        thread::sleep(std::time::Duration::from_millis(125));
        let handle = pool.clone();
        thread::spawn(move || {
            drop(
                handle
                    .checkout_timeout(std::time::Duration::from_secs(2))
                    .unwrap(),
            )
        })
        .join()
        .unwrap();
    }
    pool.stats().size
}

#[test]
fn idle_timeout_partial_use_shrinks_a_lifo_pool_and_not_a_fifo_one() {
    assert_eq!(open_after_partial_use(QueueMode::Lifo), 1, "Lifo");
    assert!(open_after_partial_use(QueueMode::Fifo) > 1, "Fifo");
}
