//! The fiftieth pass: the pool's lifecycle and the user code it calls. Each test's doc
//! comment says what it found.
//!
//! The tests of this file share one process-wide logger (`common::logger`): it does nothing unless a
//! test armed a hook for a record containing given texts (`on_log`), and then runs that hook.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::logger::{disarm, logging, on_each_log};
use cylinder::Pool;

/// A worker whose `Drop` panics once armed.
struct Bomb(bool);

impl Drop for Bomb {
    fn drop(&mut self) {
        if self.0 {
            panic!("a worker that panics on purpose when dropped");
        }
    }
}

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

fn timed_start_failing_on_start(name: &str, start_timeout: Option<Duration>) -> String {
    common::quiet_panics();
    logging();
    let release = Arc::new(AtomicBool::new(false));
    let blocked = Arc::new(AtomicUsize::new(0));
    let failing = Arc::new(AtomicBool::new(false));
    let f = failing.clone();
    let mut builder = Pool::builder()
        .size(1)
        .name(name)
        .reconnect_delay(Duration::from_secs(5))
        .on_start(move |worker: &mut Bomb| {
            if f.load(Ordering::SeqCst) {
                worker.0 = true;
                Err("on_start refused it deliberately")
            } else {
                Ok(())
            }
        });
    if let Some(limit) = start_timeout {
        builder = builder.start_timeout(limit);
    }
    let pool = builder.build(|| Ok(Bomb(false))).unwrap();
    failing.store(true, Ordering::SeqCst);
    on_each_log(
        &format!("{name}: dropping a new worker panicked"),
        blocker(&release, &blocked),
    );
    cylinder::Lease::discard(pool.checkout().unwrap());
    let began = Instant::now();
    let got = pool.checkout_timeout(Duration::from_secs(2));
    let took = began.elapsed();
    let outcome = match got {
        Err(err)
            if {
                let text = format!(
                    "{err} {:?}",
                    std::error::Error::source(&err).map(|s| s.to_string())
                );
                text.contains("on_start refused it")
            } =>
        {
            String::new()
        }
        other => format!(
            "a checkout after the only worker's failed replacement answered {:?} after {took:?} \
             (logger blocked {} times, stats {:?})",
            other.map(|_| ()),
            blocked.load(Ordering::SeqCst),
            pool.stats()
        ),
    };
    release.store(true, Ordering::SeqCst);
    disarm(name);
    outcome
}

/// Control: without `start_timeout`, a start whose `on_start` fails and whose worker's
/// `Drop` panics reports its cause to the waiting client at once, whatever the logger does
/// with the "dropping a new worker panicked" line (held back until the failure is recorded).
#[test]
fn control_an_untimed_failed_start_reports_its_cause_while_the_logger_blocks() {
    let outcome = timed_start_failing_on_start("b50-untimed", None);
    assert!(outcome.is_empty(), "{outcome}");
}

/// Found. The same with `start_timeout(5 s)`: the start runs on a timed start's thread
/// (`open_within`, src/pool/start.rs), whose `open_now` drops the refused worker with
/// `Shared::dispose` (src/pool/checkout.rs), which writes "dropping a new worker panicked"
/// straight to the logger, with no `LogsLater` scope: the start's outcome is sent to the
/// start thread only after the logger returns. Pass 47
/// (`a_logger_blocked_on_a_dead_arrivals_panicking_drop_line_does_not_turn_disconnected_into_a_timeout`)
/// fixed this line for untimed starts by holding it back in the caller (`run_starter`,
/// `fill_now`, `start_for_caller`), but a timed start's thread opens no scope. A logger that
/// blocks on that line holds back the failure record: the waiting client gets a bare
/// `Timeout` (`cause: None`, "starting 1") instead of `Disconnected` naming `on_start`'s
/// error (GUARANTEES: a blocking checkout with nothing running "fails with that attempt's
/// cause"; "a callback that blocks holds back no other client"; BREAKING.md 10: "never a
/// bare timeout when the cause is known"); past `start_timeout` the failure is recorded as
/// "did not finish within 5s", the wrong cause.
#[test]
fn a_timed_start_refused_by_on_start_reports_its_cause_while_the_logger_blocks_on_the_drop_line() {
    let outcome = timed_start_failing_on_start("b50-timed", Some(Duration::from_secs(5)));
    assert!(outcome.is_empty(), "{outcome}");
}

/// Found. A balancer of three (`min_alive_ratio(0.5)`: under two alive, the supervisor is
/// asked for a new set). Two of its workers die; a client's `get()` finds them dead one
/// after the other, and its `on_event` callback blocks on the second `WorkerDied` (a stalled
/// metrics sink). `Set::mark_dead` (src/balancer/set.rs) reports the event *before*
/// `out_for_good` tells the supervisor (`retire`) and asks the reaper to reload
/// (`ask_reload`); every other client that meets those workers finds them marked dead
/// already and asks nothing. Expected (the pool's own rule, `retire_unreported`: "its
/// replacement claimed, then the event: a callback that blocks must not hold back the
/// replacement"; the promise: "a callback that blocks holds back no other client";
/// "`Supervisor::retire` is called once per child taken out of service"): the set is
/// reloaded while the callback blocks. Observed: no retire and no reload until the callback
/// returns; every other client is left on the one worker alive.
#[test]
fn a_balancer_event_callback_blocked_on_worker_died_does_not_hold_back_the_reload() {
    balancer_with_two_of_three_dead(Some(false));
}

/// Found, the same root through the logger: `mark_dead` writes "worker N died" straight to
/// the application's logger before it retires the worker and asks for a reload. A logger
/// that blocks on the second such line holds the reload back the same way.
#[test]
fn a_logger_blocked_on_a_balancer_worker_died_line_does_not_hold_back_the_reload() {
    balancer_with_two_of_three_dead(Some(true));
}

/// Control: the same with a callback that does not block reloads at once.
#[test]
fn control_a_balancer_with_two_of_three_dead_reloads() {
    balancer_with_two_of_three_dead(None);
}

/// `blocks`: `None`, nothing blocks; `Some(false)`, `on_event` blocks on the second
/// `WorkerDied`; `Some(true)`, the logger blocks on the second "died" line.
fn balancer_with_two_of_three_dead(blocks: Option<bool>) {
    logging();
    use common::{Probe, Switchboard};
    use cylinder::{Balancer, BoxError, Event, Supervisor};

    #[derive(Clone)]
    struct Counting {
        board: Switchboard,
        retired: Arc<AtomicUsize>,
    }
    impl Supervisor<Probe> for Counting {
        fn children(&self) -> Result<Vec<Arc<Probe>>, BoxError> {
            (self.board.supervisor())()
        }
        fn retire(&self, _: &Arc<Probe>) {
            self.retired.fetch_add(1, Ordering::SeqCst);
        }
    }

    let board = Switchboard::with(3);
    let retired = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(AtomicBool::new(false));
    let blocked = Arc::new(AtomicUsize::new(0));
    let died = Arc::new(AtomicUsize::new(0));
    let (d, block) = (died.clone(), blocker(&release, &blocked));
    let name = match blocks {
        None => "b50-balancer-died-control",
        Some(false) => "b50-balancer-died-event",
        Some(true) => "b50-balancer-died-log",
    };
    if blocks == Some(true) {
        let lines = Arc::new(AtomicUsize::new(0));
        let block = blocker(&release, &blocked);
        on_each_log(&format!("{name}: worker|died"), move || {
            if lines.fetch_add(1, Ordering::SeqCst) == 1 {
                block();
            }
        });
    }
    let balancer = Balancer::builder()
        .name(name)
        .min_alive_ratio(0.5)
        .reconnect_delay(Duration::from_millis(10))
        .on_event(move |event| {
            if matches!(event, Event::WorkerDied)
                && d.fetch_add(1, Ordering::SeqCst) == 1
                && blocks == Some(false)
            {
                block();
            }
        })
        .build_with(Counting {
            board: board.clone(),
            retired: retired.clone(),
        })
        .unwrap();
    let first = board.current();
    let calls_before = board.calls();
    board.set((10..13).map(|id| Arc::new(Probe::new(id))).collect());
    first[0].kill();
    first[1].kill();
    let client = balancer.clone();
    let stop = release.clone();
    let looping = std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let _ = client.get();
        }
    });
    let is_blocked = common::eventually(Duration::from_secs(5), || match blocks {
        None => died.load(Ordering::SeqCst) >= 2,
        Some(_) => blocked.load(Ordering::SeqCst) > 0,
    });
    // Other clients meanwhile.
    let reloaded = is_blocked
        && common::eventually(Duration::from_secs(2), || {
            let _ = balancer.get();
            board.calls() > calls_before && retired.load(Ordering::SeqCst) >= 2
        });
    let seen = (board.calls() - calls_before, retired.load(Ordering::SeqCst));
    release.store(true, Ordering::SeqCst);
    disarm(name);
    looping.join().unwrap();
    assert!(is_blocked, "the client never met the two dead workers");
    assert!(
        reloaded,
        "with two of three workers dead (min_alive_ratio 0.5) and one client's {} blocked on \
         the second worker's death, the supervisor was asked {} more times and retire called \
         {} times in 2 s",
        if blocks == Some(true) {
            "logger"
        } else {
            "on_event callback"
        },
        seen.0,
        seen.1
    );
}
