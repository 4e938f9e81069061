//! revolver's README, as a program: a supervisor of worker threads, round-robin `get()`,
//! `map` over the members, the supervisor stopped (→ `Disconnected`) and started again
//! (→ reconnected by itself), `connect()`, and revolver's lease mode (`Balancer::lease`,
//! `Balancer::transaction`). Each Erlang shell line is printed with the Rust call beside it.
//!
//! Run it with `cargo run --example tour`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use cylinder::{Actor, Balancer, Behaviour, BoxError, Error, Supervisor, Worker};

/// A worker thread that answers status requests, like the processes under `sasl_sup`.
struct Status;

impl Behaviour for Status {
    type Request = ();
    type Reply = &'static str;
    fn handle_call(&mut self, (): ()) -> &'static str {
        "waiting"
    }
}

/// A "process": a worker thread with a printable pid.
struct Process {
    pid: usize,
    thread: Actor<Status>,
}

impl Worker for Process {
    fn is_alive(&self) -> bool {
        self.thread.is_alive()
    }
    fn queue_len(&self) -> Option<usize> {
        self.thread.queue_len()
    }
}

impl std::fmt::Display for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<0.{}.0>", self.pid)
    }
}

/// An application with a supervisor of two processes that can be stopped and started, like
/// `application:start(sasl)` / `application:stop(sasl)`.
#[derive(Clone, Default)]
struct Application {
    children: Arc<Mutex<Option<Vec<Arc<Process>>>>>,
    next_pid: Arc<AtomicUsize>,
}

impl Application {
    fn start(&self) -> Result<(), BoxError> {
        let mut children = Vec::new();
        for _ in 0..2 {
            let pid = 37 + 3 * self.next_pid.fetch_add(1, Ordering::SeqCst);
            children.push(Arc::new(Process {
                pid,
                thread: Actor::spawn(Status)?,
            }));
        }
        *self.children.lock().unwrap() = Some(children);
        Ok(())
    }

    fn stop(&self) {
        if let Some(children) = self.children.lock().unwrap().take() {
            for child in children {
                child.thread.stop();
            }
        }
    }
}

impl Supervisor<Process> for Application {
    fn children(&self) -> Result<Vec<Arc<Process>>, BoxError> {
        self.children
            .lock()
            .unwrap()
            .clone()
            .ok_or_else(|| "supervisor sasl_sup not running".into())
    }
}

/// Prints the crate's `log` reports the way the Erlang shell shows them.
struct Reports;

impl log::Log for Reports {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Info
    }
    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            let kind = if record.level() <= log::Level::Warn {
                "ERROR"
            } else {
                "INFO"
            };
            println!("=={kind} REPORT==== {}", record.args());
        }
    }
    fn flush(&self) {}
}

fn show<T: std::fmt::Display>(result: &Result<T, Error>) -> String {
    match result {
        Ok(value) => value.to_string(),
        Err(Error::Disconnected(cause)) => {
            format!("{{error,disconnected}}  // Err(Disconnected): {cause}")
        }
        Err(Error::Overload) => "{error,overload}  // Err(Overload)".to_string(),
        Err(err) => format!("{{error,{err}}}"),
    }
}

/// Prints a shell line and the Rust call that does the same.
fn step(prompt: &str, erlang: &str, rust: &str) {
    println!("{prompt} {erlang}");
    println!("   // {rust}");
}

fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        thread::sleep(Duration::from_millis(5));
    }
    false
}

fn main() -> Result<(), BoxError> {
    log::set_logger(&Reports).map_err(|e| e.to_string())?;
    log::set_max_level(log::LevelFilter::Info);
    let reconnect_delay = Duration::from_millis(200);

    println!("## balancing\n");
    step(
        "1>",
        "application:start(sasl).",
        "let sasl = Application::default(); sasl.start()?;",
    );
    let sasl = Application::default();
    sasl.start()?;
    println!("ok");
    step(
        "2>",
        "revolver:balance(sasl_sup, sasl_pool).",
        "let pool = Balancer::builder().name(\"sasl_pool\").build_with(sasl.clone())?;",
    );
    let pool = Balancer::builder()
        .name("sasl_pool")
        .reconnect_delay(reconnect_delay)
        .build_with(sasl.clone())?;
    println!("{{ok, {pool:?}}}");
    let mut order = Vec::new();
    for n in 3..7 {
        step(&format!("{n}>"), "revolver:pid(sasl_pool).", "pool.get()?");
        let pid = pool.get().map(|p| p.to_string());
        println!("{}", show(&pid));
        order.push(pid?);
    }
    assert_eq!(order[0], order[2], "round-robin alternates");
    assert_eq!(order[1], order[3]);
    assert_ne!(order[0], order[1]);

    println!("\n## options\n");
    step(
        "1>",
        "revolver:balance(sasl_sup, sasl_pool2, #{min_alive_ratio => 0.75, reconnect_delay => 1000, max_message_queue_length => 10, connect_at_start => false}).",
        "Balancer::builder().min_alive_ratio(0.75).reconnect_delay(Duration::from_millis(1000)).max_queue_len(10).connect_at_start(false).build_with(sasl.clone())?",
    );
    let tuned = Balancer::builder()
        .name("sasl_pool2")
        .min_alive_ratio(0.75)
        .reconnect_delay(Duration::from_millis(1000))
        .max_queue_len(10)
        .connect_at_start(false)
        .build_with(sasl.clone())?;
    println!("{{ok, {tuned:?}}}");
    step("2>", "revolver:pid(sasl_pool2).", "tuned.get()");
    println!("{}", show(&tuned.get().map(|p| p.to_string())));
    step("3>", "revolver:connect(sasl_pool2).", "tuned.connect()?");
    let found = tuned.connect()?;
    println!(
        "ok  // Connected {{ new: {}, total: {} }}",
        found.new, found.total
    );
    step("4>", "revolver:pid(sasl_pool2).", "tuned.get()?");
    println!("{}", show(&tuned.get().map(|p| p.to_string())));
    drop(tuned);

    println!("\n## calling all members\n");
    step(
        "3>",
        "revolver:map(sasl_pool, fun(Pid) -> proplists:get_value(status, process_info(Pid)) end).",
        "pool.map(|p| p.thread.call(()))",
    );
    let statuses = pool.map(|p| p.thread.call(()));
    let statuses: Vec<&str> = statuses.into_iter().collect::<Result<_, _>>()?;
    println!("{statuses:?}");
    assert_eq!(statuses, ["waiting", "waiting"]);

    println!("\n## disconnect and reconnect\n");
    step("4>", "application:stop(sasl).", "sasl.stop();");
    sasl.stop();
    println!("ok");
    // The balancer notices the deaths on its next get() and the reaper finds the supervisor gone.
    let _ = pool.get();
    wait_until(Duration::from_secs(5), || pool.is_empty());
    step(
        "5>",
        "revolver:pid(sasl_pool).",
        "pool.get()  // Err(Error::Disconnected(cause)): the cause is err.source()",
    );
    let pid = pool.get().map(|p| p.to_string());
    println!("{}", show(&pid));
    assert!(matches!(pid, Err(Error::Disconnected(_))));

    step("6>", "application:start(sasl).", "sasl.start()?;");
    sasl.start()?;
    println!("ok");
    let back = Instant::now();
    let reconnected = wait_until(Duration::from_secs(5), || pool.get().is_ok());
    assert!(reconnected, "the reaper reconnects by itself");
    println!(
        "   (reconnected by itself after {:?}; reconnect_delay is {reconnect_delay:?})",
        back.elapsed()
    );
    step("7>", "revolver:pid(sasl_pool).", "pool.get()?");
    println!("{}", show(&pool.get().map(|p| p.to_string())));

    step("8>", "revolver:connect(sasl_pool).", "pool.connect()?");
    let found = pool.connect()?;
    println!(
        "ok  // Connected {{ new: {}, total: {} }}",
        found.new, found.total
    );
    assert_eq!((found.new, found.total), (0, 2));

    println!("\n## lease-based balancing\n");
    step(
        "2>",
        "{ok, Pool} = revolver:balance(sasl_sup, sasl_pool, #{max_message_queue_length => lease}).",
        "let leased = Balancer::builder().name(\"sasl_lease\").build_with(sasl.clone())?;  // lease mode is a call, not an option",
    );
    let leased = Balancer::builder()
        .name("sasl_lease")
        .build_with(sasl.clone())?;
    println!("{{ok, {leased:?}}}");
    let mut pids = Vec::new();
    for n in 3..6 {
        step(
            &format!("{n}>"),
            "revolver:transaction(sasl_pool, fun(Pid) -> {here_is_the_pid, Pid} end).",
            "leased.transaction(|pid| (\"here_is_the_pid\", pid.to_string()))?",
        );
        let pid = leased.transaction(|p| p.to_string())?;
        println!("{{here_is_the_pid,{pid}}}");
        pids.push(pid);
    }
    assert_ne!(pids[0], pids[1], "successive leases alternate");
    assert_eq!(pids[0], pids[2]);
    step(
        "6>",
        "% both workers busy in a transaction",
        "let (a, b) = (leased.lease()?, leased.lease()?); leased.transaction(..)",
    );
    let held = leased.lease()?;
    let other = leased.lease()?;
    let third = leased.transaction(|p| p.to_string());
    println!("{}", show(&third));
    assert!(matches!(third, Err(Error::Overload)));
    drop((held, other));

    // Close the balancers before the application stops, so that no reaper reports the
    // children's deaths after the tour.
    drop(leased);
    drop(pool);
    sasl.stop();
    println!("\ndone.");
    Ok(())
}
