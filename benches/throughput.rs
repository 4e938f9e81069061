//! Throughput of cylinder and its peers, measured in one run, printed as a table: operation,
//! threads, ops/s and ns per operation on each thread. No criterion, no statistics: each
//! cell is the best of three 200 ms runs. The criterion benches beside this file measure the
//! same operations with confidence intervals.
//!
//! Run it with `cargo run --release -p cylinder-benches --example throughput` (about 30
//! seconds); the `call` section alone with
//! `cargo run --release -p cylinder-benches --example throughput -- call`.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use cylinder::Actor;
use support::*;

/// The `call` section: calls per try, split among the clients, and tries (best kept).
const CALLS: u64 = 100_000;
const CALL_TRIES: usize = 5;

const RUN: Duration = Duration::from_millis(200);
const TRIES: usize = 3;
/// revolver's published figure: "more than 100 000 pids per second".
const REVOLVER_PIDS_PER_SEC: f64 = 100_000.0;

/// One measured cell: aggregate operations per second over all threads, and the longest
/// single operation seen.
struct Cell {
    ops_per_sec: f64,
    ns_per_op_per_thread: f64,
    worst: Duration,
}

/// Runs `op` on `threads` threads for `RUN`, `TRIES` times, and keeps the best run.
fn measure(threads: usize, track_worst: bool, op: &(dyn Fn() + Sync)) -> Cell {
    let mut best: Option<Cell> = None;
    for _ in 0..TRIES {
        let stop = AtomicBool::new(false);
        let total = AtomicU64::new(0);
        let worst = Mutex::new(Duration::ZERO);
        let began = Instant::now();
        thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| {
                    let mut done = 0u64;
                    let mut longest = Duration::ZERO;
                    while !stop.load(Ordering::Relaxed) {
                        for _ in 0..64 {
                            if track_worst {
                                let t = Instant::now();
                                op();
                                longest = longest.max(t.elapsed());
                            } else {
                                op();
                            }
                        }
                        done += 64;
                    }
                    total.fetch_add(done, Ordering::Relaxed);
                    let mut worst = worst.lock().unwrap();
                    *worst = (*worst).max(longest);
                });
            }
            thread::sleep(RUN);
            stop.store(true, Ordering::Relaxed);
        });
        let elapsed = began.elapsed().as_secs_f64();
        let ops = total.load(Ordering::Relaxed) as f64;
        let cell = Cell {
            ops_per_sec: ops / elapsed,
            ns_per_op_per_thread: elapsed * 1e9 * threads as f64 / ops,
            worst: worst.into_inner().unwrap(),
        };
        if best
            .as_ref()
            .map_or(true, |b| cell.ops_per_sec > b.ops_per_sec)
        {
            best = Some(cell);
        }
    }
    best.expect("at least one try")
}

fn row(operation: &str, name: &str, threads: usize, cell: &Cell, baseline: Option<&Cell>) {
    let ratio = baseline.map_or(String::new(), |b| {
        format!("{:.2}x", cell.ns_per_op_per_thread / b.ns_per_op_per_thread)
    });
    println!(
        "| {operation} | {name} | {threads} | {:>12.0} | {:>9.1} | {ratio:>7} |",
        cell.ops_per_sec, cell.ns_per_op_per_thread
    );
}

fn header(title: &str, ratio_to: &str) {
    println!("\n{title}\n");
    println!("| operation | implementation | threads | ops/s | ns/op/thread | vs {ratio_to} |");
    println!("|---|---|---|---|---|---|");
}

fn main() {
    // `cargo run --release -p cylinder-benches --example throughput -- lease` runs only the
    // sections named.
    let only: Vec<String> = std::env::args().skip(1).collect();
    let wanted = |section: &str| only.is_empty() || only.iter().any(|o| o == section);
    println!(
        "cylinder throughput, {} cores, {} ms per cell (best of {TRIES})",
        thread::available_parallelism().map_or(0, |n| n.get()),
        RUN.as_millis()
    );
    if wanted("get") {
        let best_get = get_section();
        println!(
            "\nBalancer::get peaks at {best_get:.0} gets/s here: {:.0}x revolver's published 100 000 pids/s.",
            best_get / REVOLVER_PIDS_PER_SEC
        );
    }
    if wanted("lease") {
        lease_section();
    }
    if wanted("contended") {
        contended_section();
    }
    if wanted("transaction") {
        transaction_section();
    }
    if wanted("call") {
        call_section();
    }
}

/// Returns the best aggregate rate of `Balancer::get`.
fn get_section() -> f64 {
    header("get: a balanced worker, 8 workers", "cylinder");
    let balancer = cylinder_balancer(WORKERS);
    let textbook = Textbook::new(WORKERS);
    let r2d2 = r2d2_pool(WORKERS);
    let mut best_get = 0.0f64;
    for threads in [1, 2, 4] {
        let ours = measure(threads, false, &|| keep(balancer.get().unwrap().0));
        best_get = best_get.max(ours.ops_per_sec);
        row("get", "cylinder Balancer::get", threads, &ours, Some(&ours));
        let floor = measure(threads, false, &|| keep(textbook.load_first()));
        row(
            "get",
            "bare ArcSwap load (floor)",
            threads,
            &floor,
            Some(&ours),
        );
        let classic = measure(threads, false, &|| keep(textbook.get().0));
        row(
            "get",
            "ArcSwap + AtomicUsize + Arc clone",
            threads,
            &classic,
            Some(&ours),
        );
        let peer = measure(threads, false, &|| keep(*r2d2.get().unwrap()));
        row("get", "r2d2 get+drop", threads, &peer, Some(&ours));
    }
    best_get
}

fn lease_section() {
    header(
        "lease: checkout + drop, nobody waiting, 8 workers",
        "cylinder",
    );
    let pool = cylinder_pool(WORKERS);
    let r2d2 = r2d2_pool(WORKERS);
    let deadpool = deadpool_pool(WORKERS);
    let objects = object_pool(WORKERS);
    let floor = array_queue(WORKERS);
    for threads in [1, 2, 4] {
        let ours = measure(threads, false, &|| keep(pool.checkout().unwrap().0));
        row(
            "lease",
            "cylinder Pool::checkout",
            threads,
            &ours,
            Some(&ours),
        );
        let cell = measure(threads, false, &|| floor_cycle(&floor));
        row(
            "lease",
            "ArrayQueue pop+push (floor)",
            threads,
            &cell,
            Some(&ours),
        );
        let cell = measure(threads, false, &|| keep(*r2d2.get().unwrap()));
        row("lease", "r2d2 get", threads, &cell, Some(&ours));
        let cell = measure(threads, false, &|| keep(deadpool.try_get().map(|o| *o)));
        row("lease", "deadpool try_get", threads, &cell, Some(&ours));
        let cell = measure(threads, false, &|| keep(objects.try_pull().map(|o| *o)));
        row("lease", "object-pool try_pull", threads, &cell, Some(&ours));
    }
}

fn contended_section() {
    header(
        "contended: 8 threads over 2 workers, each lease held for a short spin",
        "cylinder",
    );
    let pool = cylinder_pool(2);
    let r2d2 = r2d2_pool(2);
    let ours = measure(8, true, &|| {
        let lease = pool.checkout().unwrap();
        short_spin();
        keep(lease.0);
    });
    row(
        "contended",
        "cylinder Pool::checkout",
        8,
        &ours,
        Some(&ours),
    );
    let peer = measure(8, true, &|| {
        let conn = r2d2.get().unwrap();
        short_spin();
        keep(*conn);
    });
    row("contended", "r2d2 get", 8, &peer, Some(&ours));
    println!(
        "\nworst single checkout wait: cylinder {:?}, r2d2 {:?}",
        ours.worst, peer.worst
    );
}

fn transaction_section() {
    header(
        "transaction: a call to a worker thread leased from the pool, and with no pool",
        "cylinder",
    );
    transaction_rows::<true>("");
    transaction_rows::<false>(" (hand-off)");
}

/// The `transaction` rows of one kind of call (`INLINE`: an idle actor's call runs on the
/// caller's thread).
fn transaction_rows<const INLINE: bool>(kind: &str) {
    let echo = echo_pool::<INLINE>(WORKERS);
    let bare = Actor::spawn(Echo::<INLINE>).expect("an echo thread starts");
    let ours = measure(1, false, &|| {
        keep(echo.transaction(|w| w.call(7)).unwrap().unwrap())
    });
    row(
        "transaction",
        &format!("cylinder Pool::transaction + call{kind}"),
        1,
        &ours,
        Some(&ours),
    );
    let cell = measure(1, false, &|| keep(bare.call(7).unwrap()));
    row(
        "transaction",
        &format!("bare Actor::call{kind}"),
        1,
        &cell,
        Some(&ours),
    );
}

/// Makes `CALLS` calls in all, split evenly among `clients` threads started together, best of
/// `CALL_TRIES`: returns the aggregate calls per second and the mean time of one call on one
/// client (wall time x clients / calls).
fn measure_calls(clients: usize, op: &(dyn Fn() + Sync)) -> Cell {
    let mut best: Option<Cell> = None;
    let per_client = CALLS / clients as u64;
    for _ in 0..CALL_TRIES {
        let elapsed = run_parallel(clients, per_client, op).as_secs_f64();
        let calls = (per_client * clients as u64) as f64;
        let cell = Cell {
            ops_per_sec: calls / elapsed,
            ns_per_op_per_thread: elapsed * 1e9 / per_client as f64,
            worst: Duration::ZERO,
        };
        if best
            .as_ref()
            .map_or(true, |b| cell.ops_per_sec > b.ops_per_sec)
        {
            best = Some(cell);
        }
    }
    best.expect("at least one try")
}

fn call_section() {
    header(
        &format!(
            "call: a round trip to a worker thread, {CALLS} calls per try split among the clients, best of {CALL_TRIES}"
        ),
        "actor call",
    );
    let floor = PingPong::new();
    let floor_cell = measure_calls(1, &|| keep(floor.call(7)));
    drop(floor);
    row(
        "call",
        "crossbeam bounded(1) ping-pong (floor)",
        1,
        &floor_cell,
        None,
    );
    call_rows::<true>("");
    call_rows::<false>(" (hand-off)");
}

/// The `call` rows of one kind of call (`INLINE`: an idle actor's call runs on the caller's
/// thread), each against the bare `Actor::call` of the same kind.
fn call_rows<const INLINE: bool>(kind: &str) {
    let actor = Actor::spawn(Echo::<INLINE>).expect("an echo thread starts");
    let bare = measure_calls(1, &|| keep(actor.call(7).unwrap()));
    drop(actor);
    row(
        "call",
        &format!("cylinder Actor::call{kind}"),
        1,
        &bare,
        Some(&bare),
    );
    let pooled = |clients: usize, actors: usize| {
        let pool = echo_pool::<INLINE>(actors);
        let cell = measure_calls(clients, &|| {
            keep(pool.transaction(|w| w.call(7)).unwrap().unwrap())
        });
        row(
            "call",
            &format!("Pool::transaction + call{kind}, {actors} actors"),
            clients,
            &cell,
            Some(&bare),
        );
    };
    pooled(1, 1);
    pooled(8, 8);
    pooled(16, 4);
    let shared = echo_balancer::<INLINE>(4);
    let cell = measure_calls(16, &|| keep(shared.get().unwrap().call(7).unwrap()));
    row(
        "call",
        &format!("Balancer::get + call{kind}, 4 shared actors"),
        16,
        &cell,
        Some(&bare),
    );
}
