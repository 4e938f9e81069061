//! The fifty-second pass: the balancer's reload and the user code around it. Each test's doc
//! comment says what it found.
//!
//! The tests of this file share one process-wide logger (`common::logger`): it does nothing unless a
//! test armed a hook for a record containing given texts (`on_log`), and then runs that hook.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::logger::{disarm, logging, on_log};
use common::Switchboard;
use cylinder::{Balancer, Event};

/// Blocks (up to 10 s) until `release` is set, counting itself in `blocked`.
fn blocker(release: &Arc<AtomicBool>, blocked: &Arc<AtomicUsize>) -> impl Fn() + Send + Sync {
    let (r, b) = (release.clone(), blocked.clone());
    move || {
        b.fetch_add(1, Ordering::SeqCst);
        let began = Instant::now();
        while !r.load(Ordering::SeqCst) && began.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// What blocks on the reload the reaper runs after a death.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Blocks {
    /// The application's logger, on the reload's "found N new of M total, connected" line.
    Logger,
    /// The `on_event` callback, on the reload's `Connected` event.
    Event,
}

/// A balancer of two (`reconnect_delay` 10 ms). One child dies and is replaced in the
/// supervisor's list; a `get` finds it dead and asks the reaper to reload. `blocks` blocks on
/// that reload's report of the new set. Meanwhile another client calls `connect()`. Returns
/// what that call answered within 2 s (`None`: still waiting) and how long it took.
fn connect_while_a_reload_report_blocks(blocks: Blocks) -> (Option<Result<(), String>>, Duration) {
    logging();
    let name = match blocks {
        Blocks::Logger => "b52-connect-log",
        Blocks::Event => "b52-connect-event",
    };
    let board = Switchboard::with(2);
    let release = Arc::new(AtomicBool::new(false));
    let blocked = Arc::new(AtomicUsize::new(0));
    let armed = Arc::new(AtomicBool::new(false));
    let (a, block) = (armed.clone(), blocker(&release, &blocked));
    let balancer = Balancer::builder()
        .name(name)
        .reconnect_delay(Duration::from_millis(10))
        .on_event(move |event| {
            if blocks == Blocks::Event
                && matches!(event, Event::Connected { .. })
                && a.swap(false, Ordering::SeqCst)
            {
                block();
            }
        })
        .build_with(board.supervisor())
        .unwrap();
    let _ = balancer.get();
    match blocks {
        Blocks::Logger => on_log(
            &format!("{name}: found|connected"),
            blocker(&release, &blocked),
        ),
        Blocks::Event => armed.store(true, Ordering::SeqCst),
    }
    let first = board.current();
    board.set(vec![first[1].clone(), Arc::new(common::Probe::new(7))]);
    first[0].kill();
    // The client that meets the dead child; the reaper reloads.
    for _ in 0..4 {
        let _ = balancer.get();
    }
    let is_blocked = common::eventually(Duration::from_secs(5), || {
        blocked.load(Ordering::SeqCst) > 0
    });
    assert!(
        is_blocked,
        "the reload after the death never reported its set"
    );
    let other = balancer.clone();
    let began = Instant::now();
    let answered = common::within(Duration::from_secs(2), move || {
        other.connect().map(|_| ()).map_err(|err| err.to_string())
    });
    let took = began.elapsed();
    release.store(true, Ordering::SeqCst);
    disarm(name);
    (answered, took)
}

/// Control: an `on_event` callback blocked on the reaper's reload's `Connected` event does
/// not hold back another client's `connect()`: the events are emitted after the reload's
/// running mark is cleared (`run_reload`, src/balancer/set.rs).
#[test]
fn control_connect_does_not_wait_on_an_event_callback_blocked_on_another_reloads_connected_event() {
    let (answered, took) = connect_while_a_reload_report_blocks(Blocks::Event);
    assert!(
        matches!(answered, Some(Ok(()))),
        "connect() answered {answered:?} after {took:?}"
    );
}

/// Found. The same with the application's logger blocking on that reload's "found N new of
/// M total, connected" line: `merge_children` (src/balancer/set.rs) writes it while the
/// reload is still marked running (`Finish` clears the mark only after `merge_children`
/// returns), so another client's `connect()` (which waits for a reload under way, with no
/// deadline) waits on the logger run by the reaper thread. Expected, as for the event
/// callback (the control above) and as pass 50 fixed for `mark_dead`'s line: the line is
/// written once the reload holds nothing, and `connect()` returns at once.
#[test]
fn connect_does_not_wait_on_a_logger_blocked_on_another_reloads_connected_line() {
    let (answered, took) = connect_while_a_reload_report_blocks(Blocks::Logger);
    assert!(
        matches!(answered, Some(Ok(()))),
        "with the reaper's logger blocked on its reload's \"connected\" line, another \
         client's connect() answered {answered:?} after {took:?} (None: still waiting)"
    );
}

/// A balancer of one child, served once. The supervisor goes down ("supervisor not
/// running") and the child dies; a first client's `get` finds it dead and a reload (the
/// client's own or the reaper's) finds the supervisor down. With `log_blocks`, the logger
/// blocks on that reload's "disconnected (...), retrying" line. Another client's `get` then
/// answers: returns its error text (with its source) and how long it took.
fn get_while_a_reload_reports_disconnected(log_blocks: bool) -> (String, Duration) {
    logging();
    let name = if log_blocks {
        "b52-down-log"
    } else {
        "b52-down-control"
    };
    let board = Switchboard::with(1);
    let release = Arc::new(AtomicBool::new(false));
    let blocked = Arc::new(AtomicUsize::new(0));
    let balancer = Balancer::builder()
        .name(name)
        .reconnect_delay(Duration::from_millis(10))
        .build_with(board.supervisor())
        .unwrap();
    assert!(balancer.get().is_ok());
    if log_blocks {
        on_log(
            &format!("{name}: disconnected"),
            blocker(&release, &blocked),
        );
    }
    let first = board.current();
    board.stop();
    first[0].kill();
    let client = balancer.clone();
    let first_client = std::thread::spawn(move || {
        let _ = client.get();
    });
    if log_blocks {
        let is_blocked = common::eventually(Duration::from_secs(5), || {
            blocked.load(Ordering::SeqCst) > 0
        });
        assert!(is_blocked, "no reload reported the disconnect");
    } else {
        first_client.join().unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let other = balancer.clone();
    let began = Instant::now();
    let answered = common::within(Duration::from_secs(2), move || match other.get() {
        Ok(_) => "Ok".to_string(),
        Err(err) => format!(
            "{err:?} / source: {:?}",
            std::error::Error::source(&err).map(|s| s.to_string())
        ),
    })
    .unwrap_or_else(|| "still waiting".to_string());
    let took = began.elapsed();
    release.store(true, Ordering::SeqCst);
    disarm(name);
    (answered, took)
}

/// Control: with a logger that does not block, a `get` after the supervisor went down and
/// its only child died answers `Disconnected` with the supervisor's error as its source.
#[test]
fn control_a_get_after_the_supervisor_went_down_answers_its_cause() {
    let (answered, took) = get_while_a_reload_reports_disconnected(false);
    assert!(
        answered.contains("Disconnected") && answered.contains("supervisor not running"),
        "answered {answered} after {took:?}"
    );
}

/// Found. The same while the logger blocks on the reload's "disconnected (...), retrying"
/// line: `disconnect` (src/balancer/set.rs) writes that line *before* it publishes the
/// disconnected set with its cause, while the reload is still marked running. Another
/// client's `get` finds the old set all dead, waits `RELOAD_PATIENCE` (100 ms) for the
/// reload under way, then answers `Disconnected` with "no live children" instead of the
/// supervisor's error (rustdoc of `get`: "its source() is why (the supervisor's error ...)";
/// BREAKING.md 10: the right variant with its real cause, at once).
#[test]
fn a_get_while_the_logger_blocks_on_a_reloads_disconnected_line_answers_the_supervisors_cause() {
    let (answered, took) = get_while_a_reload_reports_disconnected(true);
    assert!(
        answered.contains("Disconnected")
            && answered.contains("supervisor not running")
            && took < Duration::from_millis(80),
        "with another thread's logger blocked on the reload's \"disconnected\" line, a get \
         after the supervisor went down answered {answered} after {took:?}"
    );
}

/// Which of the pool's histograms the recorder blocks on.
#[cfg(feature = "metrics")]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Histo {
    /// `cylinder_pool_lease_seconds`, recorded as a lease ends.
    Lease,
    /// `cylinder_pool_start_seconds`, recorded as a start ends.
    Start,
}

/// A pool of one with a recorder (`metrics::with_local_recorder`) whose histogram `which`
/// blocks once armed (a stalled exporter). Client A ends its lease (released, for `Lease`;
/// discarded, so that a replacement starts, for `Start`); the recorder blocks on A's
/// thread or on the start's. Another client's `checkout_timeout(1 s)` then answers: whether
/// it got a worker, what it answered, how long it took.
#[cfg(feature = "metrics")]
fn checkout_while_the_recorder_blocks(which: Histo) -> (bool, String, Duration) {
    use cylinder::{OwnedLease, Pool};
    use metrics::{
        Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString,
        Unit,
    };
    struct Blocking {
        armed: Arc<AtomicBool>,
        block: Box<dyn Fn() + Send + Sync>,
    }
    impl HistogramFn for Blocking {
        fn record(&self, _: f64) {
            if self.armed.swap(false, Ordering::SeqCst) {
                (self.block)();
            }
        }
    }
    struct Stalls {
        name: &'static str,
        histogram: Arc<Blocking>,
    }
    impl Recorder for Stalls {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
            Counter::noop()
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
            if key.name() == self.name {
                Histogram::from_arc(self.histogram.clone())
            } else {
                Histogram::noop()
            }
        }
    }
    let release = Arc::new(AtomicBool::new(false));
    let blocked = Arc::new(AtomicUsize::new(0));
    let armed = Arc::new(AtomicBool::new(false));
    let recorder = Stalls {
        name: match which {
            Histo::Lease => "cylinder_pool_lease_seconds",
            Histo::Start => "cylinder_pool_start_seconds",
        },
        histogram: Arc::new(Blocking {
            armed: armed.clone(),
            block: Box::new(blocker(&release, &blocked)),
        }),
    };
    let pool = metrics::with_local_recorder(&recorder, || {
        Pool::builder()
            .size(1)
            .name(format!("b52-metrics-{which:?}"))
            .build(|| Ok(0u32))
            .unwrap()
    });
    let lease = pool.checkout_owned().unwrap();
    armed.store(true, Ordering::SeqCst);
    let a = std::thread::spawn(move || match which {
        Histo::Lease => drop(lease),
        Histo::Start => OwnedLease::discard(lease),
    });
    let is_blocked = common::eventually(Duration::from_secs(5), || {
        blocked.load(Ordering::SeqCst) > 0
    });
    assert!(is_blocked, "the recorder never recorded {which:?}");
    let other = pool.clone();
    let began = Instant::now();
    let answered = common::within(Duration::from_secs(3), move || {
        match other.checkout_timeout(Duration::from_secs(1)) {
            Ok(_) => (true, "Ok".to_string()),
            Err(err) => (false, format!("{err:?}")),
        }
    })
    .unwrap_or((false, "still waiting".to_string()));
    let took = began.elapsed();
    release.store(true, Ordering::SeqCst);
    a.join().unwrap();
    (answered.0, answered.1, took)
}

/// Found (feature `metrics`). A metrics recorder is user code, as the logger and `on_event`
/// are. `Shared::end_lease` (src/pool/release.rs) records `cylinder_pool_lease_seconds`
/// first, while the releasing thread still holds the worker it returns, before `put_back`:
/// a recorder whose histogram blocks (a stalled exporter) keeps the pool's only worker from
/// the client waiting for it, which times out after 1 s (GUARANTEES: a callback that blocks
/// holds back no other client; passes 47/50 moved the release's log lines and events out of
/// the same place). The lease's length is known before the record: it can be recorded once
/// the worker is back.
#[cfg(feature = "metrics")]
#[test]
fn a_recorder_blocked_on_the_lease_histogram_does_not_keep_the_returned_worker_from_a_waiter() {
    let (served, answered, took) = checkout_while_the_recorder_blocks(Histo::Lease);
    assert!(
        served,
        "with the releasing thread's recorder blocked on cylinder_pool_lease_seconds, another \
         client's checkout_timeout(1 s) of the pool of one answered {answered} after {took:?}"
    );
}

/// Found (feature `metrics`), the same root on the start path: `open_worker`
/// (src/pool/start.rs) records `cylinder_pool_start_seconds` after the start, before the new
/// worker is delivered (`deliver`). A recorder that blocks there keeps the replacement of a
/// discarded worker from the client waiting for it.
#[cfg(feature = "metrics")]
#[test]
fn a_recorder_blocked_on_the_start_histogram_does_not_keep_the_new_worker_from_a_waiter() {
    let (served, answered, took) = checkout_while_the_recorder_blocks(Histo::Start);
    assert!(
        served,
        "with the start's recorder blocked on cylinder_pool_start_seconds, another client's \
         checkout_timeout(1 s) of the pool of one answered {answered} after {took:?}"
    );
}

/// Found while fixing the two above (feature `metrics`): a checkout that waited records
/// `cylinder_pool_checkout_wait_seconds` with the worker it was served in hand. A recorder
/// that drains the pool there (user code calling back, as an event callback may) waited its
/// whole limit for that worker, which only its own thread could give back. Expected, as for
/// every callback: the served worker counts as the thread's own, and `drain` answers at once.
#[cfg(feature = "metrics")]
#[test]
fn drain_from_the_recorder_on_a_served_checkouts_wait_does_not_wait_for_its_worker() {
    use common::{drain_once, Drained, Slot};
    use cylinder::Pool;
    use metrics::{
        Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString,
        Unit,
    };
    struct Drains {
        slot: Slot<u32>,
        outcome: Drained,
    }
    impl HistogramFn for Drains {
        fn record(&self, _: f64) {
            drain_once(&self.slot, &self.outcome, Duration::from_millis(800));
        }
    }
    struct OnWait(Arc<Drains>);
    impl Recorder for OnWait {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
            Counter::noop()
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
            if key.name() == "cylinder_pool_checkout_wait_seconds" {
                Histogram::from_arc(self.0.clone())
            } else {
                Histogram::noop()
            }
        }
    }
    let slot: Slot<u32> = Arc::default();
    let outcome: Drained = Arc::default();
    let recorder = OnWait(Arc::new(Drains {
        slot: slot.clone(),
        outcome: outcome.clone(),
    }));
    let pool = metrics::with_local_recorder(&recorder, || {
        Pool::builder()
            .size(1)
            .name("b52-drain-on-wait")
            .build(|| Ok(0u32))
            .unwrap()
    });
    let held = pool.checkout().unwrap();
    let waiter = pool.clone();
    let waiting =
        std::thread::spawn(move || waiter.checkout_timeout(Duration::from_secs(5)).map(|_| ()));
    assert!(common::eventually(Duration::from_secs(5), || {
        pool.stats().waiters == 1
    }));
    *slot.lock().unwrap() = Some(pool.clone());
    drop(held);
    let served = waiting.join().unwrap();
    let drained = outcome.lock().unwrap().take();
    assert!(served.is_ok(), "the waiter got {served:?}");
    let (answer, took) = drained.expect("the recorder never drained");
    assert!(
        answer.is_ok() && took < Duration::from_millis(400),
        "drain from the recorder, the served worker in its thread's hand, answered {answer:?} \
         after {took:?}"
    );
}
