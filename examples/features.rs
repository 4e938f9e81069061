//! The features users know from poolboy, pooler, worker_pool, r2d2 and deadpool, one after
//! the other: overflow, the checkout check, return tests and resets, slow-lease warnings,
//! broadcast, resize, `min_idle` with `idle_timeout`, `max_lifetime`, owned leases and
//! detaching a worker, selection strategies and hash affinity, and lifecycle events.
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
        // A fresh connection that fails its check counts as a failed start: the next start
        // waits this long (a check that always fails cannot make the pool churn).
        .reconnect_delay(Duration::from_millis(20))
        .build(connections())?;
    let lease = checked.checkout()?;
    println!(
        "leased id {}: connection 0 failed its check and is being replaced",
        lease.id
    );
    drop(lease);
    thread::sleep(Duration::from_millis(100));
    println!("replaced after reconnect_delay: {:?}", checked.stats());

    println!("\n## slow-lease warning (worker_pool's)");
    thread::sleep(Duration::from_millis(120));
    drop((a, b));
    let slow = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, Event::SlowLease { .. }))
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

    println!("\n## return test and reset (r2d2's has_broken, deadpool's recycle)");
    let recycled = Pool::builder()
        .size(1)
        .is_broken(|conn: &mut Conn| conn.queue.load(Ordering::Relaxed) > 100)
        .reset(|conn: &mut Conn| -> Result<(), BoxError> {
            conn.pings.store(0, Ordering::Relaxed); // e.g. roll back what the client left
            Ok(())
        })
        .build(connections())?;
    recycled.checkout()?.pings.store(9, Ordering::Relaxed);
    println!(
        "a client left 9 pings behind; the next holder sees {}",
        recycled.checkout()?.pings.load(Ordering::Relaxed)
    );
    recycled.checkout()?.queue.store(1_000, Ordering::Relaxed);
    let fresh = recycled.checkout_timeout(Duration::from_secs(5))?;
    println!(
        "a connection found broken on return is replaced: id {} now",
        fresh.id
    );
    drop(fresh);

    println!("\n## min_idle, idle_timeout and max_lifetime (r2d2's, HikariCP's)");
    let elastic = Pool::builder()
        .size(4)
        .min_idle(1)
        .idle_timeout(Duration::from_millis(40))
        .max_lifetime(Duration::from_millis(200))
        .build(connections())?;
    println!("opened at start: {}", elastic.stats().size);
    let burst: Vec<_> = (0..4)
        .map(|_| elastic.checkout())
        .collect::<Result<_, _>>()?;
    println!("a burst of 4 opens on demand: {}", elastic.stats().size);
    drop(burst);
    thread::sleep(Duration::from_millis(150));
    println!(
        "idle for 150 ms, closed down to min_idle: {}",
        elastic.stats().size
    );
    thread::sleep(Duration::from_millis(200));
    println!(
        "past max_lifetime the last one was replaced: {} opened since the start",
        elastic.stats().restarts
    );

    println!("\n## owned leases across threads, and detaching a worker");
    let shared = pool.clone(); // a cheap handle
    let owned = shared.checkout_owned()?;
    let id = thread::spawn(move || {
        owned.pings.fetch_add(1, Ordering::Relaxed);
        owned.id
    })
    .join()
    .expect("the thread ran");
    println!("worker {id} used on another thread, given back there");
    let kept: Conn = cylinder::Lease::take(pool.checkout()?);
    println!(
        "worker {} taken out of the pool for good; the pool opens another: {:?}",
        kept.id,
        pool.checkout_timeout(Duration::from_secs(5)).map(|c| c.id)
    );

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
