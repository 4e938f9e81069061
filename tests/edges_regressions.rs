//! Regressions at the edges of the balancer and the builders: workers whose `is_alive` or
//! `queue_len` panics during a `get`, `Supervisor::retire`, and names that cannot be thread
//! names. Each test is bounded: a hang is caught by a timeout and fails the test.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, Probe};
use cylinder::{Balancer, BoxError, Error, Pool, Supervisor, Worker};

/// What a call that may panic came to: its value, or the panic's message.
fn caught<T>(call: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(call)).map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".to_string())
    })
}

// ---------------------------------------------------------------------------------------
// Names that cannot be thread names.

#[test]
fn a_pool_name_with_a_nul_byte_is_an_invalid_config_not_a_panic() {
    for unchecked in [false, true] {
        let built = caught(|| {
            let builder = Pool::<u32>::builder().size(1).name("a\0b");
            let built = if unchecked {
                builder.build_unchecked(|| Ok(0))
            } else {
                builder.build(|| Ok(0))
            };
            built.map(drop)
        });
        assert!(
            matches!(built, Ok(Err(Error::InvalidConfig { option: "name", .. }))),
            "build (unchecked: {unchecked}) with name \"a\\0b\": {built:?}"
        );
    }
}

#[test]
fn a_balancer_name_with_a_nul_byte_is_an_invalid_config_not_a_panic() {
    let built = caught(|| {
        Balancer::<Probe>::builder()
            .name("a\0b")
            .build_with(|| -> Result<Vec<Arc<Probe>>, BoxError> {
                Ok(vec![Arc::new(Probe::new(0))])
            })
            .map(drop)
    });
    assert!(
        matches!(built, Ok(Err(Error::InvalidConfig { option: "name", .. }))),
        "build_with with name \"a\\0b\": {built:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Workers whose `is_alive` or `queue_len` panics.

/// A worker whose `is_alive` or `queue_len` panics once `broken` is set.
struct Fragile {
    id: usize,
    broken: AtomicBool,
    queue_len_panics: bool,
}

impl Worker for Fragile {
    fn is_alive(&self) -> bool {
        if !self.queue_len_panics && self.broken.load(Ordering::SeqCst) {
            panic!("is_alive panics on purpose");
        }
        true
    }

    fn queue_len(&self) -> Option<usize> {
        if self.queue_len_panics && self.broken.load(Ordering::SeqCst) {
            panic!("queue_len panics on purpose");
        }
        Some(0)
    }
}

/// Three workers, the first of which panics in `is_alive` or `queue_len` once the set is
/// loaded: `get` and `lease` take it out of rotation as dead and hand out the other two.
fn a_panicking_worker_is_taken_out_of_rotation(queue_len_panics: bool) {
    common::quiet_panics();
    let workers: Vec<Arc<Fragile>> = (0..3)
        .map(|id| {
            Arc::new(Fragile {
                id,
                broken: AtomicBool::new(false),
                queue_len_panics,
            })
        })
        .collect();
    let listed = workers.clone();
    let balancer = Balancer::builder()
        .max_queue_len(10)
        .reconnect_delay(Duration::from_millis(20))
        .build_with(move || -> Result<_, BoxError> { Ok(listed.clone()) })
        .unwrap();
    assert_eq!(balancer.len(), 3);
    workers[0].broken.store(true, Ordering::SeqCst);
    let what = if queue_len_panics {
        "queue_len"
    } else {
        "is_alive"
    };
    for round in 0..12 {
        let got = caught(|| balancer.get().map(|worker| worker.id));
        assert!(
            matches!(got, Ok(Ok(1 | 2))),
            "get {round}, worker 0's {what} panicking: {got:?}"
        );
        let leased = caught(|| balancer.lease().map(|worker| worker.id));
        assert!(
            matches!(leased, Ok(Ok(1 | 2))),
            "lease {round}, worker 0's {what} panicking: {leased:?}"
        );
    }
}

#[test]
fn a_worker_whose_is_alive_panics_is_taken_out_of_rotation() {
    a_panicking_worker_is_taken_out_of_rotation(false);
}

#[test]
fn a_worker_whose_queue_len_panics_is_taken_out_of_rotation() {
    a_panicking_worker_is_taken_out_of_rotation(true);
}

// ---------------------------------------------------------------------------------------
// `Supervisor::retire`.

/// A supervisor with a fixed list of children that it changes only when told one was taken
/// out of service: it drops it, or puts a fresh one (numbered on) in its place.
#[derive(Clone)]
struct TellMe {
    children: Arc<Mutex<Vec<Arc<Probe>>>>,
    retired: Arc<Mutex<Vec<usize>>>,
    replace: bool,
    next: Arc<AtomicUsize>,
}

impl TellMe {
    fn with(count: usize, replace: bool) -> TellMe {
        TellMe {
            children: Arc::new(Mutex::new(
                (0..count).map(|id| Arc::new(Probe::new(id))).collect(),
            )),
            retired: Arc::new(Mutex::new(Vec::new())),
            replace,
            next: Arc::new(AtomicUsize::new(count)),
        }
    }

    fn retired(&self) -> Vec<usize> {
        self.retired.lock().unwrap().clone()
    }
}

impl Supervisor<Probe> for TellMe {
    fn children(&self) -> Result<Vec<Arc<Probe>>, BoxError> {
        Ok(self.children.lock().unwrap().clone())
    }

    fn retire(&self, worker: &Arc<Probe>) {
        self.retired.lock().unwrap().push(worker.id);
        let mut children = self.children.lock().unwrap();
        if let Some(at) = children.iter().position(|c| Arc::ptr_eq(c, worker)) {
            if self.replace {
                let id = self.next.fetch_add(1, Ordering::SeqCst);
                children[at] = Arc::new(Probe::new(id));
            } else {
                children.remove(at);
            }
        }
    }
}

#[test]
fn retire_is_called_once_for_a_child_found_dead() {
    let board = TellMe::with(2, false);
    let balancer = Balancer::builder()
        .reconnect_delay(Duration::from_millis(20))
        .build_with(board.clone())
        .unwrap();
    board.children.lock().unwrap()[0].kill();
    let told = eventually(Duration::from_secs(2), || {
        for _ in 0..4 {
            assert_eq!(balancer.get().map(|w| w.id).ok(), Some(1));
        }
        !board.retired().is_empty()
    });
    assert!(
        told,
        "worker 0 died and left rotation, but the supervisor was never told: retired {:?}, \
         {} reloads",
        board.retired(),
        balancer.reloads()
    );
    // A while more of gets and reloads: told once.
    for _ in 0..50 {
        let _ = balancer.get();
        let _ = balancer.connect();
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(board.retired(), vec![0], "retire calls");
}

#[test]
fn a_supervisor_that_replaces_retired_children_recovers() {
    let board = TellMe::with(1, true);
    let balancer = Balancer::builder()
        .reconnect_delay(Duration::from_millis(20))
        .build_with(board.clone())
        .unwrap();
    assert_eq!(balancer.get().unwrap().id, 0);
    board.children.lock().unwrap()[0].kill();
    let mut last = None;
    let recovered = eventually(Duration::from_secs(2), || {
        let got = balancer.get().map(|w| w.id);
        let fresh = matches!(got, Ok(id) if id != 0);
        last = Some(got);
        fresh
    });
    assert!(
        recovered,
        "its only child died; the supervisor replaces a child when told, yet get() still \
         says {last:?} after 2 s (retired {:?}, {} reloads)",
        board.retired(),
        balancer.reloads()
    );
}
