//! The hot paths allocate nothing: 10 000 `get()`s, 10 000 checkout/release pairs, the
//! balancer's leases and transactions and 10 000 `Actor::call`s in steady state, counted by
//! a global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use cylinder::{Actor, Balancer, Behaviour, BoxError, Pool, Worker};

/// Counts the allocations made by a thread while its `COUNTING` is on. Only the test's
/// own thread counts: the pool's reaper threads start up (and allocate) on their own time.
struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
/// The count is global: the tests of this file take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn counting() -> bool {
    COUNTING.try_with(Cell::get).unwrap_or(false)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counting() {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if counting() {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

struct Conn(usize);
impl Worker for Conn {}

fn allocations_during(work: impl FnOnce()) -> usize {
    ALLOCATIONS.store(0, Ordering::SeqCst);
    COUNTING.with(|c| c.set(true));
    work();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.load(Ordering::SeqCst)
}

#[test]
fn steady_state_hot_paths_allocate_nothing() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let set: Vec<Arc<Conn>> = (0..8).map(|i| Arc::new(Conn(i))).collect();
    let balancer = Balancer::builder()
        .build_with(move || -> Result<_, BoxError> { Ok(set.clone()) })
        .unwrap();
    let pool = Pool::builder().size(8).build(|| Ok(Conn(0))).unwrap();
    // Warm up: this thread's stripe and arc-swap debt slot are claimed on first use.
    for _ in 0..100 {
        std::hint::black_box(balancer.get().unwrap().0);
        std::hint::black_box(pool.checkout().unwrap().0);
        std::hint::black_box(pool.try_checkout().unwrap().0);
    }

    let gets = allocations_during(|| {
        for _ in 0..10_000 {
            std::hint::black_box(balancer.get().unwrap().0);
        }
    });
    assert_eq!(gets, 0, "Balancer::get allocated");

    let leases = allocations_during(|| {
        for _ in 0..5_000 {
            std::hint::black_box(pool.checkout().unwrap().0);
            std::hint::black_box(pool.try_checkout().unwrap().0);
        }
    });
    assert_eq!(leases, 0, "checkout/release allocated");

    let owned = allocations_during(|| {
        for _ in 0..5_000 {
            let mut lease = pool.checkout_owned().unwrap();
            lease.0 += 1;
            std::hint::black_box(lease.0);
        }
    });
    assert_eq!(owned, 0, "checkout_owned, DerefMut and release allocated");

    // The counter does see allocations, so the zeros above mean something.
    let boxed = allocations_during(|| {
        std::hint::black_box(Box::new(7u64));
    });
    assert_eq!(boxed, 1);
}

/// The balancer's lease mode: `lease` + drop, `transaction`, and `get` once lease mode is on
/// (it then looks at the lease marks).
#[test]
fn balancer_lease_mode_allocates_nothing() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let set: Vec<Arc<Conn>> = (0..8).map(|i| Arc::new(Conn(i))).collect();
    let balancer = Balancer::builder()
        .build_with(move || -> Result<_, BoxError> { Ok(set.clone()) })
        .unwrap();
    for _ in 0..100 {
        std::hint::black_box(balancer.lease().unwrap().0);
        std::hint::black_box(balancer.transaction(|conn| conn.0).unwrap());
        std::hint::black_box(balancer.get().unwrap().0);
    }
    let leases = allocations_during(|| {
        for _ in 0..10_000 {
            let lease = balancer.lease().unwrap();
            std::hint::black_box(lease.0);
            drop(lease);
        }
    });
    assert_eq!(leases, 0, "Balancer::lease and its release allocated");
    let transactions = allocations_during(|| {
        for _ in 0..10_000 {
            std::hint::black_box(balancer.transaction(|conn| conn.0).unwrap());
        }
    });
    assert_eq!(transactions, 0, "Balancer::transaction allocated");
    // Several held at once: each lease past the thread's own worker scans on.
    let held = allocations_during(|| {
        for _ in 0..2_000 {
            let a = balancer.lease().unwrap();
            let b = balancer.lease().unwrap();
            std::hint::black_box((a.0, b.0));
        }
    });
    assert_eq!(held, 0, "two leases held at once allocated");
    let gets = allocations_during(|| {
        let _held = balancer.lease().unwrap();
        for _ in 0..10_000 {
            std::hint::black_box(balancer.get().unwrap().0);
        }
    });
    assert_eq!(gets, 0, "Balancer::get in lease mode allocated");
}

/// Echoes; `Count(true)` turns allocation counting on for the thread that handles it. Sent
/// with `call_timeout`, which always goes through the mailbox, it reaches the actor's own
/// thread, so that both sides of a call are counted. `INLINE`: whether an idle actor's
/// calls run on the caller's thread.
struct Echo<const INLINE: bool>;

enum Msg {
    Echo(u64),
    Count(bool),
    /// Parks the handling thread once on a parking_lot lock (see `park_once_on_a_lock`).
    Warm,
}

/// Makes this thread park once on a contended parking_lot lock. parking_lot makes a thread's
/// parking data on its first park, and may grow its global table then (allocations); a
/// rare contended lock in the measured window must not count as an allocation per call.
fn park_once_on_a_lock() {
    let lock = Arc::new(parking_lot::Mutex::new(()));
    let held = std::sync::Barrier::new(2);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let _guard = lock.lock();
            held.wait();
            std::thread::sleep(std::time::Duration::from_millis(20));
        });
        held.wait();
        drop(lock.lock());
    });
}

impl<const INLINE: bool> Behaviour for Echo<INLINE> {
    type Request = Msg;
    type Reply = u64;
    const INLINE_CALLS: bool = INLINE;
    fn handle_call(&mut self, msg: Msg) -> u64 {
        match msg {
            Msg::Echo(n) => n,
            Msg::Count(on) => {
                COUNTING.with(|c| c.set(on));
                0
            }
            Msg::Warm => {
                park_once_on_a_lock();
                0
            }
        }
    }
}

fn calls_allocate_nothing<const INLINE: bool>() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let actor = Actor::spawn(Echo::<INLINE>).unwrap();
    let long = std::time::Duration::from_secs(10);
    // Warm up: the caller's reply slot and the mailbox's buffer are made on first use.
    for n in 0..100 {
        assert_eq!(actor.call(Msg::Echo(n)).unwrap(), n);
        assert_eq!(actor.call_timeout(Msg::Echo(n), long).unwrap(), n);
    }
    park_once_on_a_lock();
    actor.call_timeout(Msg::Warm, long).unwrap();
    actor.call_timeout(Msg::Count(true), long).unwrap();
    let calls = allocations_during(|| {
        for n in 0..10_000 {
            std::hint::black_box(actor.call(Msg::Echo(n)).unwrap());
        }
        actor.call_timeout(Msg::Echo(1), long).unwrap();
        actor.call_timeout(Msg::Count(false), long).unwrap();
    });
    assert_eq!(
        calls, 0,
        "Actor::call allocated (caller and actor threads, inline calls: {INLINE})"
    );
}

#[test]
fn steady_state_calls_allocate_nothing() {
    calls_allocate_nothing::<false>();
}

#[test]
fn calls_run_on_the_caller_allocate_nothing() {
    calls_allocate_nothing::<true>();
}
