//! revolver's semantics: round-robin, dead workers skipped, reload once per fall, the
//! disconnect/reconnect fuse, overload, map, connect, connect_at_start.

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{eventually, Probe, Switchboard};
use cylinder::{Balancer, Error, Factory, Supervisor, Worker};

const SLACK: Duration = Duration::from_secs(5);

#[test]
fn one_thread_alternates_exactly() {
    let board = Switchboard::with(2);
    let balancer = Balancer::builder().build_with(board.supervisor()).unwrap();
    let ids: Vec<usize> = (0..6).map(|_| balancer.get().unwrap().id).collect();
    let first = ids[0];
    let second = 1 - first;
    assert_eq!(ids, vec![first, second, first, second, first, second]);
}

#[test]
fn one_thread_cycles_through_every_worker() {
    let board = Switchboard::with(5);
    let balancer = Balancer::builder().build_with(board.supervisor()).unwrap();
    for _ in 0..3 {
        let mut ids: Vec<usize> = (0..5).map(|_| balancer.get().unwrap().id).collect();
        ids.sort();
        assert_eq!(ids, vec![0, 1, 2, 3, 4]);
    }
}

#[test]
fn eight_threads_spread_evenly() {
    let workers = 4;
    let board = Switchboard::with(workers);
    let balancer = Balancer::builder().build_with(board.supervisor()).unwrap();
    let total = 1_000_000;
    thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                for _ in 0..total / 8 {
                    balancer.get().unwrap().uses.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    let share = total / workers;
    for child in board.current() {
        let uses = child.uses.load(Ordering::Relaxed);
        let off = uses.abs_diff(share) as f64 / share as f64;
        assert!(off <= 0.01, "worker {} got {uses}, share {share}", child.id);
    }
}

#[test]
fn two_balancers_on_one_thread_keep_their_own_rotation() {
    let (a, b) = (Switchboard::with(2), Switchboard::with(3));
    let ba = Balancer::builder().build_with(a.supervisor()).unwrap();
    let bb = Balancer::builder().build_with(b.supervisor()).unwrap();
    let mut seen_a = Vec::new();
    for _ in 0..6 {
        seen_a.push(ba.get().unwrap().id);
        bb.get().unwrap();
    }
    assert_eq!(seen_a[0..2], seen_a[2..4]);
    assert_ne!(seen_a[0], seen_a[1]);
}

#[test]
fn dead_workers_leave_rotation() {
    let board = Switchboard::with(3);
    let balancer = Balancer::builder()
        .min_alive_ratio(0.0)
        .build_with(board.supervisor())
        .unwrap();
    board.current()[1].kill();
    for _ in 0..30 {
        assert_ne!(balancer.get().unwrap().id, 1);
    }
    assert_eq!(balancer.map(|w| w.id), vec![0, 2]);
    assert_eq!(
        board.calls(),
        1,
        "ratio 0.0 never reloads while someone lives"
    );
}

#[test]
fn a_fall_below_the_ratio_reloads_exactly_once() {
    let board = Switchboard::with(4);
    let balancer = Balancer::builder()
        .min_alive_ratio(0.5)
        .build_with(board.supervisor())
        .unwrap();
    assert_eq!(board.calls(), 1);
    let old = board.current();
    // One death of four: 3/4 alive is above the ratio, no reload.
    old[0].kill();
    for _ in 0..20 {
        balancer.get().unwrap();
    }
    thread::sleep(Duration::from_millis(50));
    assert_eq!(board.calls(), 1);
    // The supervisor has restarted its children; two more deaths drop under the ratio while
    // eight threads call get(): one reload, not a storm.
    board.set((10..14).map(|id| Arc::new(Probe::new(id))).collect());
    old[1].kill();
    old[2].kill();
    thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                for _ in 0..2_000 {
                    let _ = balancer.get();
                }
            });
        }
    });
    assert!(eventually(SLACK, || board.calls() == 2));
    thread::sleep(Duration::from_millis(100));
    assert_eq!(board.calls(), 2);
    let mut ids = balancer.map(|w| w.id);
    ids.sort();
    assert_eq!(ids, vec![10, 11, 12, 13]);
}

#[test]
fn the_default_ratio_reloads_after_one_death() {
    let factory = Arc::new(Factory::new(2, || Ok(Probe::new(0))));
    let shared = factory.clone();
    let balancer = Balancer::builder()
        .build_with(move || shared.children())
        .unwrap();
    balancer.get().unwrap().kill();
    // Death is noticed by the next get() that meets the worker.
    for _ in 0..2 {
        let _ = balancer.get();
    }
    assert!(eventually(SLACK, || factory.restarts() == 1));
    assert!(eventually(SLACK, || balancer.map(|w| w.is_alive()) == vec![true, true]));
}

#[test]
fn disconnects_at_once_and_reconnects_by_itself() {
    let delay = Duration::from_millis(100);
    let board = Switchboard::with(2);
    let balancer = Balancer::builder()
        .reconnect_delay(delay)
        .build_with(board.supervisor())
        .unwrap();
    assert!(balancer.get().is_ok());
    // The supervisor goes away, and its children with it.
    for child in board.current() {
        child.kill();
    }
    board.stop();
    let _ = balancer.get();
    assert!(eventually(SLACK, || balancer.is_empty()));
    let began = Instant::now();
    assert!(matches!(balancer.get(), Err(Error::Disconnected { .. })));
    // At once: not after the reaper's reconnect (a reconnect_delay away). Half of it leaves
    // room for this thread being descheduled on a loaded machine.
    assert!(
        began.elapsed() < delay / 2,
        "disconnected is reported at once, not after {:?}",
        began.elapsed()
    );
    // It comes back: the reaper reconnects within reconnect_delay (plus slack).
    thread::sleep(delay * 2);
    board.set((5..7).map(|id| Arc::new(Probe::new(id))).collect());
    let back = Instant::now();
    assert!(eventually(SLACK, || balancer.get().is_ok()));
    assert!(
        back.elapsed() < delay + Duration::from_millis(500),
        "took {:?}",
        back.elapsed()
    );
    let mut ids = balancer.map(|w| w.id);
    ids.sort();
    assert_eq!(ids, vec![5, 6]);
}

#[test]
fn a_supervisor_down_at_start_is_retried() {
    let board = Switchboard::default();
    let balancer = Balancer::builder()
        .reconnect_delay(Duration::from_millis(20))
        .build_with(board.supervisor())
        .unwrap();
    assert!(matches!(balancer.get(), Err(Error::Disconnected { .. })));
    board.set(vec![Arc::new(Probe::new(3))]);
    assert!(eventually(SLACK, || balancer.get().is_ok()));
}

#[test]
fn overload_when_every_queue_is_over_the_limit() {
    let board = Switchboard::with(3);
    let balancer = Balancer::builder()
        .max_queue_len(10)
        .build_with(board.supervisor())
        .unwrap();
    let children = board.current();
    children[0].queue.store(11, Ordering::Relaxed);
    children[2].queue.store(50, Ordering::Relaxed);
    for _ in 0..10 {
        assert_eq!(balancer.get().unwrap().id, 1);
    }
    children[1].queue.store(10, Ordering::Relaxed);
    assert_eq!(balancer.get().unwrap().id, 1, "at the limit is still fine");
    children[1].queue.store(11, Ordering::Relaxed);
    assert!(matches!(balancer.get(), Err(Error::Overload)));
}

#[test]
fn map_runs_over_live_members() {
    let board = Switchboard::with(3);
    let balancer = Balancer::builder()
        .min_alive_ratio(0.0)
        .build_with(board.supervisor())
        .unwrap();
    assert_eq!(balancer.map(|w| w.id * 2), vec![0, 2, 4]);
    board.current()[0].kill();
    assert_eq!(balancer.map(|w| w.id), vec![1, 2]);
}

#[test]
fn connect_rescans_and_reports() {
    let board = Switchboard::with(2);
    let balancer = Balancer::builder().build_with(board.supervisor()).unwrap();
    let found = balancer.connect().unwrap();
    assert_eq!((found.new, found.total), (0, 2));
    let mut children = board.current();
    children.push(Arc::new(Probe::new(2)));
    board.set(children);
    let found = balancer.connect().unwrap();
    assert_eq!((found.new, found.total), (1, 3));
    assert_eq!(balancer.len(), 3);
    board.stop();
    assert!(matches!(
        balancer.connect(),
        Err(Error::Disconnected { .. })
    ));
    assert!(matches!(balancer.get(), Err(Error::Disconnected { .. })));
}

#[test]
fn connect_at_start_false_waits_for_connect() {
    let board = Switchboard::with(2);
    let balancer = Balancer::builder()
        .connect_at_start(false)
        .build_with(board.supervisor())
        .unwrap();
    assert_eq!(board.calls(), 0);
    assert!(matches!(balancer.get(), Err(Error::Disconnected { .. })));
    thread::sleep(Duration::from_millis(30));
    assert!(matches!(balancer.get(), Err(Error::Disconnected { .. })));
    let found = balancer.connect().unwrap();
    assert_eq!((found.new, found.total), (2, 2));
    assert!(balancer.get().is_ok());
}

/// Collects the crate's log lines for the report test.
struct Recorder(Mutex<Vec<String>>);

impl log::Log for Recorder {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        if record.args().to_string().starts_with("cylinder: reporter") {
            self.0.lock().unwrap().push(record.args().to_string());
        }
    }
    fn flush(&self) {}
}

static RECORDER: Recorder = Recorder(Mutex::new(Vec::new()));

#[test]
fn reports_like_revolver() {
    log::set_logger(&RECORDER).unwrap();
    log::set_max_level(log::LevelFilter::Debug);
    let board = Switchboard::with(2);
    let balancer = Balancer::builder()
        .name("reporter")
        .reconnect_delay(Duration::from_millis(20))
        .build_with(board.supervisor())
        .unwrap();
    for child in board.current() {
        child.kill();
    }
    board.stop();
    let _ = balancer.get();
    assert!(eventually(SLACK, || balancer.is_empty()));
    board.set(vec![Arc::new(Probe::new(9))]);
    assert!(eventually(SLACK, || balancer.get().is_ok()));
    let lines = RECORDER.0.lock().unwrap().clone();
    let has = |needle: &str| lines.iter().any(|l| l.contains(needle));
    assert!(has("found 2 new of 2 total, connected"), "{lines:#?}");
    assert!(has("worker 0 died") || has("worker 1 died"), "{lines:#?}");
    assert!(
        has("disconnected (supervisor not running), retrying in 20ms"),
        "{lines:#?}"
    );
    assert!(has("found 1 new of 1 total, connected"), "{lines:#?}");
    let counts: HashMap<&str, usize> =
        [("died", lines.iter().filter(|l| l.contains("died")).count())].into();
    assert_eq!(counts["died"], 2);
}

#[test]
fn get_during_swaps_returns_a_worker_of_some_published_set() {
    let board = Switchboard::with(2);
    let balancer = Balancer::builder().build_with(board.supervisor()).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let worker = balancer.get().unwrap();
                    // Every published set holds ids 2k and 2k+1 of one generation.
                    assert!(worker.is_alive());
                    assert!(worker.id < 2_000);
                }
            });
        }
        for generation in 1..1_000 {
            board.set(vec![
                Arc::new(Probe::new(2 * generation)),
                Arc::new(Probe::new(2 * generation + 1)),
            ]);
            let found = balancer.connect().unwrap();
            assert_eq!((found.new, found.total), (2, 2));
        }
        stop.store(true, Ordering::Relaxed);
    });
}
