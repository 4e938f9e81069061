//! A pool with tiny `warn_after` and `idle_timeout` must not spin its reaper. Alone in its
//! test binary, so the process's CPU time is the pool's.

use std::thread;
use std::time::Duration;

use cylinder::Pool;

/// CPU time of this process (user + system), from /proc.
#[cfg(target_os = "linux")]
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

#[cfg(target_os = "linux")]
#[test]
fn tiny_warn_after_and_sweeps_do_not_spin_the_reaper() {
    let pool = Pool::builder()
        .size(2)
        .warn_after(Duration::from_nanos(1))
        .idle_timeout(Duration::from_nanos(1))
        .max_lifetime(Duration::from_secs(3600))
        .min_idle(1)
        .build(|| Ok(0u32))
        .unwrap();
    let _held = pool.checkout().unwrap();
    let before = cpu_time();
    thread::sleep(Duration::from_millis(1000));
    let used = cpu_time() - before;
    eprintln!("idle pool with tiny warn_after/idle_timeout: {used:?} of CPU in 1 s");
    // Measured ~0 (below the 10 ms tick) in debug and release; a spinning reaper would use
    // the whole second.
    assert!(
        used < Duration::from_millis(300),
        "{used:?} of CPU in 1 s of idling"
    );
}
