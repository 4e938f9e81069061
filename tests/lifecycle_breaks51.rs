//! The fifty-first pass: the application's logger (user code) against the crate's log lines,
//! and the pool's lifecycle. Each test's doc comment says what it found.
//!
//! The tests of this file share one process-wide logger (`common::logger`): it does nothing unless a
//! test armed a hook for a record containing given texts (`on_log`), and then runs that hook.
//! Its two findings through a blocking metrics recorder (the lease and start histograms
//! recorded with a worker in hand) are tests in `lifecycle_breaks52.rs`, which found them too.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::logger::{disarm, logging, on_each_log, on_log};

/// What a `connect()` answered: the new and total workers it found, or its error.
type Connected = Result<(usize, usize), String>;

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

/// A balancer over a `Switchboard`; one client's `connect()` whose reload's log line (`line`,
/// after the balancer's name) the logger blocks on; then another client's `connect()`, given
/// `limit`. Returns what the second got, and how long it took, or `None` if it was still
/// waiting at `limit`.
fn second_connect_while_the_logger_blocks_on(
    name: &'static str,
    line: &str,
    supervisor_down: bool,
    limit: Duration,
) -> (Option<Connected>, Duration, usize) {
    logging();
    use common::Switchboard;
    use cylinder::Balancer;
    let board = Switchboard::with(2);
    let balancer = Balancer::builder()
        .name(name)
        .reconnect_delay(Duration::from_secs(60))
        .build_with(board.supervisor())
        .unwrap();
    if supervisor_down {
        board.stop();
    }
    let release = Arc::new(AtomicBool::new(false));
    let blocked = Arc::new(AtomicUsize::new(0));
    on_log(&format!("{name}: {line}"), blocker(&release, &blocked));
    let first = {
        let balancer = balancer.clone();
        std::thread::spawn(move || balancer.connect().map(|_| ()))
    };
    assert!(
        common::eventually(Duration::from_secs(5), || blocked.load(Ordering::SeqCst)
            > 0),
        "the logger never saw the {line:?} line"
    );
    let calls_before = board.calls();
    let other = balancer.clone();
    let began = Instant::now();
    let got = common::within(limit, move || {
        other
            .connect()
            .map(|found| (found.new, found.total))
            .map_err(|err| format!("{err:?}"))
    });
    let took = began.elapsed();
    let asked = board.calls() - calls_before;
    release.store(true, Ordering::SeqCst);
    disarm(name);
    let _ = first.join();
    (got, took, asked)
}

/// Found. A balancer's reload writes "found N new of M total, connected" from inside
/// `WorkerSet::merge_children` (src/balancer/set.rs), while `run_reload`'s `Finish` guard
/// still marks the reload as running (`reload_state.running`). The set is already
/// published, the events and the `Drop`s are deferred until the mark is cleared ("with no
/// lock held"), but the log line is not: a logger that blocks on it (a stalled log sink)
/// holds the mark, and every other client's `connect()` (and the reaper's reloads) waits in
/// `WorkerSet::reload` on `reload_done` with no deadline, for as long as the logger blocks.
/// Expected (GUARANTEES: "a logger that blocks on the crate's lines holds back no other
/// client"): the second `connect()` reloads and answers at once.
#[test]
fn a_logger_blocked_on_a_reloads_connected_line_does_not_hold_back_another_clients_connect() {
    let (got, took, asked) = second_connect_while_the_logger_blocks_on(
        "b51-connected-line",
        "found|connected",
        false,
        Duration::from_secs(2),
    );
    assert!(
        matches!(got, Some(Ok(_))),
        "with one client's logger blocked on its reload's \"connected\" line, another client's \
         connect() answered {got:?} after {took:?} (the supervisor asked {asked} times meanwhile)"
    );
}

/// Found, the same root on the other branch: `WorkerSet::disconnect` writes
/// "disconnected (cause), retrying in …" with the reload still marked running. A logger that
/// blocks on it holds back every other client's `connect()`, which should fail at once with
/// the supervisor's cause.
#[test]
fn a_logger_blocked_on_a_reloads_disconnected_line_does_not_hold_back_another_clients_connect() {
    let (got, took, asked) = second_connect_while_the_logger_blocks_on(
        "b51-disconnected-line",
        "disconnected (",
        true,
        Duration::from_secs(2),
    );
    assert!(
        matches!(&got, Some(Err(err)) if err.contains("supervisor not running")),
        "with one client's logger blocked on its reload's \"disconnected\" line, another \
         client's connect() answered {got:?} after {took:?} (the supervisor asked {asked} times \
         meanwhile)"
    );
}

/// Found, the same root in the crate's own supervisor: `Factory::list`
/// (src/balancer/supervisor.rs) writes "N of M workers could not start: …" from inside
/// `children()`, which a reload runs with the reload marked running. A `Factory` is the
/// crate's code, not the application's: its log line is not part of the reload the other
/// clients wait for, yet a logger that blocks on it holds back every other client's
/// `connect()`.
#[test]
fn a_logger_blocked_on_a_factorys_could_not_start_line_does_not_hold_back_another_clients_connect()
{
    logging();
    use common::Probe;
    use cylinder::{Balancer, BoxError, Factory};
    let name = "b51-factory-line";
    let failing = Arc::new(AtomicBool::new(false));
    let f = failing.clone();
    let factory = Arc::new(Factory::new(2, move || -> Result<Probe, BoxError> {
        if f.load(Ordering::SeqCst) {
            Err("b51-factory-refused on purpose".into())
        } else {
            Ok(Probe::new(0))
        }
    }));
    let balancer = Balancer::builder()
        .name(name)
        .reconnect_delay(Duration::from_secs(60))
        .build_with(factory.clone())
        .unwrap();
    // One slot empty: the next reload starts it, and the start fails.
    factory.resize(3);
    failing.store(true, Ordering::SeqCst);
    let release = Arc::new(AtomicBool::new(false));
    let blocked = Arc::new(AtomicUsize::new(0));
    on_log(
        "could not start|b51-factory-refused",
        blocker(&release, &blocked),
    );
    let first = {
        let balancer = balancer.clone();
        std::thread::spawn(move || balancer.connect().map(|_| ()))
    };
    assert!(
        common::eventually(Duration::from_secs(5), || blocked.load(Ordering::SeqCst)
            > 0),
        "the logger never saw the factory's \"could not start\" line"
    );
    let other = balancer.clone();
    let began = Instant::now();
    let got = common::within(Duration::from_secs(2), move || {
        other
            .connect()
            .map(|found| (found.new, found.total))
            .map_err(|err| format!("{err:?}"))
    });
    let took = began.elapsed();
    release.store(true, Ordering::SeqCst);
    disarm("could not start");
    let _ = first.join();
    assert!(
        got.is_some(),
        "with one client's logger blocked on the factory's \"could not start\" line, another \
         client's connect() answered {got:?} after {took:?}"
    );
}

/// Control: with the logger blocked on nothing, a second client's `connect()` answers at
/// once (the same balancer set-up as above).
#[test]
fn control_a_second_connect_answers_at_once() {
    logging();
    use common::Switchboard;
    use cylinder::Balancer;
    let board = Switchboard::with(2);
    let balancer = Balancer::builder()
        .name("b51-connect-control")
        .build_with(board.supervisor())
        .unwrap();
    let first = {
        let balancer = balancer.clone();
        std::thread::spawn(move || balancer.connect().map(|_| ()))
    };
    let other = balancer.clone();
    let got = common::within(Duration::from_secs(2), move || other.connect().is_ok());
    assert!(first.join().unwrap().is_ok());
    assert_eq!(got, Some(true));
}

/// Found, the same root seen from a logger that calls back: a logger that, on a reload's
/// "connected" line, calls `connect()` on the same balancer (a log shipper that wants the
/// current set, say) is answered `Disconnected` "a reload was asked for from inside the
/// supervisor": the line is written while the reload is still marked running on that
/// thread, so the logger is taken for the supervisor. The set is published and nothing is
/// running any more but the crate's own log line; expected: the nested `connect()` reloads
/// (or at least does not blame the supervisor).
#[test]
fn connect_from_the_logger_on_a_reloads_connected_line_is_not_refused_as_the_supervisors() {
    logging();
    use common::Switchboard;
    use cylinder::Balancer;
    let name = "b51-connect-from-logger";
    let board = Switchboard::with(2);
    let balancer = Balancer::builder()
        .name(name)
        .reconnect_delay(Duration::from_secs(60))
        .build_with(board.supervisor())
        .unwrap();
    let nested: Arc<Mutex<Option<Connected>>> = Arc::new(Mutex::new(None));
    let (slot, weak) = (nested.clone(), balancer.clone());
    on_log(&format!("{name}: found|connected"), move || {
        let got = weak
            .connect()
            .map(|found| (found.new, found.total))
            .map_err(|err| {
                format!(
                    "{err:?} ({})",
                    std::error::Error::source(&err)
                        .map(|s| s.to_string())
                        .unwrap_or_default()
                )
            });
        *slot.lock().unwrap() = Some(got);
    });
    let outer = common::within(Duration::from_secs(5), {
        let balancer = balancer.clone();
        move || {
            balancer
                .connect()
                .map(|_| ())
                .map_err(|err| format!("{err:?}"))
        }
    });
    disarm(name);
    let nested = nested.lock().unwrap().clone();
    assert!(
        outer.is_some(),
        "the outer connect() did not return within 5 s"
    );
    assert!(
        matches!(nested, Some(Ok(_))),
        "connect() from the logger on the reload's \"connected\" line answered {nested:?}"
    );
}

/// Found (a double fault, the pass-50 root at a second line): a balancer of three
/// (`min_alive_ratio(0.5)`) whose supervisor's `retire` panics. Two workers die; on the
/// second, `WorkerSet::out_for_good` (src/balancer/set.rs) calls `retire_once`, which logs
/// "the supervisor's retire panicked" straight to the logger, and only then `ask_reload`.
/// A logger that blocks on that line holds the reload back (every other client finds the
/// workers marked dead already and asks nothing): the set stays one worker alive for as long
/// as the logger blocks. Pass 50 moved `mark_dead`'s own "died" line after `out_for_good`
/// for this reason ("retired and the reload asked first, then the line and the event").
#[test]
fn a_logger_blocked_on_a_panicking_retire_line_does_not_hold_back_the_reload() {
    balancer_whose_retire_panics_with_two_of_three_dead("b51-retire-panics", true);
}

/// Control: the same with a logger that does not block reloads at once.
#[test]
fn control_a_balancer_whose_retire_panics_with_two_of_three_dead_reloads() {
    balancer_whose_retire_panics_with_two_of_three_dead("b51-control-retire-panics", false);
}

fn balancer_whose_retire_panics_with_two_of_three_dead(name: &'static str, blocks: bool) {
    logging();
    common::quiet_panics();
    use common::{Probe, Switchboard};
    use cylinder::{Balancer, BoxError, Supervisor};

    #[derive(Clone)]
    struct Panicky {
        board: Switchboard,
    }
    impl Supervisor<Probe> for Panicky {
        fn children(&self) -> Result<Vec<Arc<Probe>>, BoxError> {
            (self.board.supervisor())()
        }
        fn retire(&self, _: &Arc<Probe>) {
            panic!("a supervisor whose retire panics on purpose");
        }
    }

    let board = Switchboard::with(3);
    let release = Arc::new(AtomicBool::new(false));
    let blocked = Arc::new(AtomicUsize::new(0));
    let lines = Arc::new(AtomicUsize::new(0));
    let seen = lines.clone();
    let block = blocker(&release, &blocked);
    on_each_log(
        &format!("{name}: the supervisor's retire panicked"),
        move || {
            if lines.fetch_add(1, Ordering::SeqCst) == 1 && blocks {
                block();
            }
        },
    );
    let balancer = Balancer::builder()
        .name(name)
        .min_alive_ratio(0.5)
        .reconnect_delay(Duration::from_millis(10))
        .build_with(Panicky {
            board: board.clone(),
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
    let is_blocked = common::eventually(Duration::from_secs(5), || {
        if blocks {
            blocked.load(Ordering::SeqCst) > 0
        } else {
            seen.load(Ordering::SeqCst) >= 2
        }
    });
    let reloaded = is_blocked
        && common::eventually(Duration::from_secs(2), || {
            let _ = balancer.get();
            board.calls() > calls_before
        });
    let asked = board.calls() - calls_before;
    release.store(true, Ordering::SeqCst);
    disarm(name);
    looping.join().unwrap();
    assert!(is_blocked, "the client never met the two dead workers");
    assert!(
        reloaded,
        "with two of three workers dead (min_alive_ratio 0.5) and one client's logger (blocking: \
         {blocks}) \
         on the second \"retire panicked\" line, the supervisor was asked {asked} more times \
         in 2 s"
    );
}
