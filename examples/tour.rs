//! A tour of the balancer: a supervisor of two worker threads, round-robin `get()`, options,
//! `map` over the workers, the supervisor stopped (→ `Disconnected`) and started again
//! (→ reconnected by itself), `connect()`, and lease mode (`Balancer::lease`,
//! `Balancer::transaction`). Each step prints the Rust call and what it returned; the name
//! of the same call in revolver, the Erlang balancer this one follows, is a trailing remark.
//! Lines starting with `log:` are the balancer's own reports through the `log` crate (where
//! `worker I` is the worker's place in the set).
//!
//! Run it with `cargo run --example tour`.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use cylinder::{Actor, Balancer, Behaviour, BoxError, Error, Supervisor, Worker};

/// What each worker thread does: answers a status request.
struct Status;

impl Behaviour for Status {
    type Request = ();
    type Reply = &'static str;
    fn handle_call(&mut self, (): ()) -> &'static str {
        "ready"
    }
}

/// A worker: a thread with a mailbox, and a number to tell it by.
struct Member {
    id: usize,
    actor: Actor<Status>,
}

impl Worker for Member {
    fn is_alive(&self) -> bool {
        self.actor.is_alive()
    }
    fn queue_len(&self) -> Option<usize> {
        self.actor.queue_len()
    }
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "worker {}", self.id)
    }
}

/// A supervisor of two workers that can be stopped and started again (its workers then
/// have new numbers).
#[derive(Clone, Default)]
struct Crew {
    children: Arc<Mutex<Option<Vec<Arc<Member>>>>>,
    started: Arc<AtomicUsize>,
}

impl Crew {
    fn start(&self) -> Result<String, BoxError> {
        let mut children = Vec::new();
        for _ in 0..2 {
            let id = self.started.fetch_add(1, Ordering::SeqCst);
            children.push(Arc::new(Member {
                id,
                actor: Actor::spawn(Status)?,
            }));
        }
        let names = list(&children);
        *self.children.lock().unwrap() = Some(children);
        Ok(format!("{names} running"))
    }

    fn stop(&self) -> String {
        match self.children.lock().unwrap().take() {
            Some(children) => {
                for child in &children {
                    child.actor.stop();
                }
                format!("{} stopped", list(&children))
            }
            None => "not running".to_string(),
        }
    }
}

impl Supervisor<Member> for Crew {
    fn children(&self) -> Result<Vec<Arc<Member>>, BoxError> {
        self.children
            .lock()
            .unwrap()
            .clone()
            .ok_or_else(|| "the supervisor is not running".into())
    }
}

fn list(children: &[Arc<Member>]) -> String {
    let names: Vec<String> = children.iter().map(|c| c.to_string()).collect();
    names.join(" and ")
}

/// The balancer's `log` reports, kept until the step that caused them is printed.
static REPORTS: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Reports;

impl log::Log for Reports {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Info
    }
    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            let line = format!("    log: {} {}", record.level(), record.args());
            REPORTS.lock().unwrap().push(line);
        }
    }
    fn flush(&self) {}
}

/// Prints the reports made since the last step.
fn print_reports() {
    for line in REPORTS.lock().unwrap().drain(..) {
        println!("{line}");
    }
}

/// A result as the step shows it: the value, or the error with its cause.
fn show<T: fmt::Display>(result: &Result<T, Error>) -> String {
    match result {
        Ok(value) => value.to_string(),
        Err(Error::Disconnected { cause, .. }) => format!("Err(Disconnected), cause: {cause}"),
        Err(Error::Overload) => "Err(Overload): every live worker is leased".to_string(),
        Err(err) => format!("Err({err:?})"),
    }
}

/// Prints a step: the Rust call, what it returned, and revolver's name for it, if any.
fn step(call: &str, result: &str, revolver: Option<&str>) {
    let remark = revolver.map_or(String::new(), |name| format!("    (revolver: {name})"));
    println!("{call}  → {result}{remark}");
    print_reports();
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

    println!("## Round-robin over a supervisor's workers\n");
    let crew = Crew::default();
    step("crew.start()?", &crew.start()?, None);
    let balancer = Balancer::builder()
        .name("tour")
        .reconnect_delay(reconnect_delay)
        .build_with(crew.clone())?;
    step(
        "let balancer = Balancer::builder().name(\"tour\").build_with(crew.clone())?",
        &format!("{balancer:?}"),
        Some("balance/2"),
    );
    let mut order = Vec::new();
    for _ in 0..4 {
        let worker = balancer.get().map(|w| w.to_string());
        step("balancer.get()?", &show(&worker), Some("pid/1"));
        order.push(worker?);
    }
    assert_eq!(order[0], order[2], "round-robin alternates");
    assert_eq!(order[1], order[3]);
    assert_ne!(order[0], order[1]);

    println!("\n## Options\n");
    let tuned = Balancer::builder()
        .name("tuned")
        .min_alive_ratio(0.75)
        .reconnect_delay(Duration::from_secs(1))
        .max_queue_len(10)
        .connect_at_start(false)
        .build_with(crew.clone())?;
    step(
        "let tuned = Balancer::builder().name(\"tuned\").min_alive_ratio(0.75)\n    \
         .reconnect_delay(Duration::from_secs(1)).max_queue_len(10).connect_at_start(false)\n    \
         .build_with(crew.clone())?",
        &format!("{tuned:?}"),
        Some("balance/3 with options"),
    );
    step(
        "tuned.get()",
        &show(&tuned.get().map(|w| w.to_string())),
        None,
    );
    let found = tuned.connect()?;
    step(
        "tuned.connect()?",
        &format!("Connected {{ new: {}, total: {} }}", found.new, found.total),
        Some("connect/1"),
    );
    step(
        "tuned.get()?",
        &show(&tuned.get().map(|w| w.to_string())),
        None,
    );
    drop(tuned);

    println!("\n## Calling every worker\n");
    let statuses = balancer.map(|w| w.actor.call(()));
    let statuses: Vec<&str> = statuses.into_iter().collect::<Result<_, _>>()?;
    step(
        "balancer.map(|w| w.actor.call(()))",
        &format!("{statuses:?}"),
        Some("map/2"),
    );
    assert_eq!(statuses, ["ready", "ready"]);

    println!("\n## The supervisor stopped, and started again\n");
    step("crew.stop()", &crew.stop(), None);
    // The balancer notices the deaths on its next get(), and the reaper finds the supervisor
    // gone.
    let _ = balancer.get();
    wait_until(Duration::from_secs(5), || balancer.is_empty());
    print_reports();
    let worker = balancer.get().map(|w| w.to_string());
    step(
        "balancer.get()",
        &show(&worker),
        Some("{error, disconnected}"),
    );
    assert!(matches!(worker, Err(Error::Disconnected { .. })));

    step("crew.start()?", &crew.start()?, None);
    let back = Instant::now();
    let reconnected = wait_until(Duration::from_secs(5), || balancer.get().is_ok());
    assert!(reconnected, "the reaper reconnects by itself");
    print_reports();
    println!(
        "    (the balancer reconnected by itself after {:.0?}; its reconnect_delay is \
         {reconnect_delay:?})",
        back.elapsed()
    );
    step(
        "balancer.get()?",
        &show(&balancer.get().map(|w| w.to_string())),
        None,
    );
    let found = balancer.connect()?;
    step(
        "balancer.connect()?",
        &format!("Connected {{ new: {}, total: {} }}", found.new, found.total),
        None,
    );
    assert_eq!((found.new, found.total), (0, 2));

    println!("\n## Lease mode: one holder per worker\n");
    let mut held_by = Vec::new();
    for _ in 0..3 {
        let worker = balancer.transaction(|w| w.to_string());
        step(
            "balancer.transaction(|w| w.to_string())?",
            &show(&worker),
            Some("transaction/2"),
        );
        held_by.push(worker?);
    }
    // One thread's successive leases get the same worker while it is free (its cache stays
    // warm); another worker is leased only when that one is held.
    assert_eq!(held_by[0], held_by[1], "a thread keeps its worker");
    assert_eq!(held_by[0], held_by[2]);
    let a = balancer.lease()?;
    let b = balancer.lease()?;
    step(
        "let (a, b) = (balancer.lease()?, balancer.lease()?)",
        &format!("{} and {} leased", *a, *b),
        None,
    );
    let third = balancer.transaction(|w| w.to_string());
    step(
        "balancer.transaction(|w| w.to_string())",
        &show(&third),
        Some("{error, overload}"),
    );
    assert!(matches!(third, Err(Error::Overload)));
    drop((a, b));
    let worker = balancer.get().map(|w| w.to_string());
    step("drop((a, b)); balancer.get()?", &show(&worker), None);
    worker?;

    // Close the balancer before the supervisor stops, so that no reaper reports the workers'
    // deaths after the tour.
    drop(balancer);
    crew.stop();
    print_reports();
    println!("\ndone.");
    Ok(())
}
