//! A tiny `warn_after` (or `idle_timeout`, `max_lifetime`) must not make the reaper spin.
//! Alone in its test binary, so the process's CPU time is the pool's.

use std::time::{Duration, Instant};

use cylinder::Pool;

/// The process's CPU time so far (user + system), from `/proc/self/stat`.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // The kernel reports in USER_HZ, 100 on Linux.
    Some(Duration::from_millis(ticks * 10))
}

#[test]
fn tiny_durations_do_not_spin_the_reaper() {
    let Some(before) = cpu_time() else {
        eprintln!("no /proc/self/stat here: skipped");
        return;
    };
    let pool = Pool::builder()
        .size(4)
        .min_idle(1)
        .warn_after(Duration::from_nanos(1))
        .idle_timeout(Duration::from_nanos(1))
        .max_lifetime(Duration::from_millis(1))
        .build(|| Ok(()))
        .unwrap();
    let _held = pool.checkout().unwrap(); // a lease for the slow-lease reports to see
    let began = Instant::now();
    std::thread::sleep(Duration::from_millis(1000));
    let used = cpu_time().unwrap() - before;
    let share = used.as_secs_f64() / began.elapsed().as_secs_f64();
    eprintln!("the pool used {used:?} of CPU in {:?}", began.elapsed());
    assert!(
        share < 0.2,
        "the reaper spun: {:.0}% of a core",
        share * 100.0
    );
}
