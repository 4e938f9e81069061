//! The features users know from poolboy, pooler, worker_pool and r2d2, one after the other:
//! overflow, selection strategies and hash affinity, the checkout health check, slow-lease
//! warnings, resize, lifecycle events and broadcast.
//!
//! Run it with `cargo run --example features`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use cylinder::{Balancer, BoxError, Event, Pool, Strategy, Worker};

/// A connection with an id, a queue length to report, and a health flag.
struct Conn {
    id: usize,
    queue: AtomicUsize,
    pings: AtomicU64,
}

impl Worker for Conn {
    fn queue_len(&self) -> Option<usize> {
        Some(self.queue.load(Ordering::Relaxed))
    }
}

fn connections() -> impl Fn() -> Result<Conn, BoxError> + Send + Sync + 'static {
    let next = AtomicUsize::new(0);
    move || {
        Ok(Conn {
            id: next.fetch_add(1, Ordering::Relaxed),
            queue: AtomicUsize::new(0),
            pings: AtomicU64::new(0),
        })
    }
}

fn main() -> Result<(), cylinder::Error> {
    // Events: count what happens, as a metrics exporter would (pooler + exometer).
    let events = Arc::new(Mutex::new(Vec::<Event>::new()));
    let sink = events.clone();

    println!("## overflow (poolboy's max_overflow)");
    let pool = Pool::builder()
        .size(2)
        .max_overflow(1)
        .warn_after(Duration::from_millis(50))
        .on_event(move |event| sink.lock().unwrap().push(event.clone()))
        .name("db")
        .build(connections())?;
    let a = pool.checkout()?;
    let b = pool.checkout()?;
    println!("two leased: ids {} and {}", a.id, b.id);
    let c = pool.try_checkout()?;
    println!(
        "a third, past the size: id {} (overflow workers now: {})",
        c.id,
        pool.stats().overflow
    );
    drop(c);
    println!(
        "given back with nobody waiting: overflow workers now {}",
        pool.stats().overflow
    );

    println!("\n## checkout health check (r2d2's test_on_check_out)");
    let checked = Pool::builder()
        .size(2)
        .test_on_checkout(|conn: &mut Conn| conn.id != 0) // connection 0 is "broken"
        .build(connections())?;
    let lease = checked.checkout()?;
    println!(
        "leased id {}: connection 0 failed its check and is being replaced",
        lease.id
    );
    drop(lease);
    thread::sleep(Duration::from_millis(50));
    println!("after the reaper's round: {:?}", checked.stats());

    println!("\n## slow-lease warning (worker_pool's)");
    thread::sleep(Duration::from_millis(120));
    drop((a, b));
    let slow = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, Event::SlowLease(_)))
        .count();
    println!("leases held 120 ms with warn_after 50 ms: {slow} slow-lease reports");

    println!("\n## broadcast to unleased workers (pooler's)");
    let held = pool.checkout()?;
    let pinged = pool.map(|conn| conn.pings.fetch_add(1, Ordering::Relaxed));
    println!(
        "pinged {} free workers, skipped the leased one (id {})",
        pinged.len(),
        held.id
    );
    drop(held);

    println!("\n## resize at run time");
    pool.resize(5)?;
    println!("grown: {:?}", pool.stats());
    pool.resize(2)?;
    println!("shrunk: {:?}", pool.stats());

    println!("\n## selection strategies (worker_pool's)");
    let shards: Vec<Arc<Conn>> = (0..4)
        .map(|id| {
            Arc::new(Conn {
                id,
                queue: AtomicUsize::new(id * 5),
                pings: AtomicU64::new(0),
            })
        })
        .collect();
    for strategy in [
        Strategy::RoundRobin,
        Strategy::Random,
        Strategy::LeastLoaded,
    ] {
        let set = shards.clone();
        let balancer = Balancer::builder()
            .strategy(strategy)
            .build_with(move || -> Result<_, BoxError> { Ok(set.clone()) })?;
        let mut hits = [0; 4];
        for _ in 0..1_000 {
            hits[balancer.get()?.id] += 1;
        }
        println!("{strategy:?}: picks per worker (queue lengths 0, 5, 10, 15): {hits:?}");
        if strategy == Strategy::RoundRobin {
            let owner = balancer.get_for("session-42")?.id;
            let again = balancer.get_for("session-42")?.id;
            println!("  get_for(\"session-42\") -> worker {owner}, and again -> worker {again}");
        }
    }

    println!("\n## events seen by the callback");
    let mut counts = std::collections::BTreeMap::new();
    for event in events.lock().unwrap().iter() {
        let name = format!("{event:?}");
        let kind = name.split(['(', ' ']).next().unwrap_or("").to_string();
        *counts.entry(kind).or_insert(0) += 1;
    }
    for (kind, count) in counts {
        println!("{kind}: {count}");
    }
    Ok(())
}
