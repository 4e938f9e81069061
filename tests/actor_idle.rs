//! Idle actors sleep: after their last message they spin for microseconds at most, then park,
//! so nine idle actors cost (next to) no CPU. Linux only: CPU time is read from `/proc`.
#![cfg(target_os = "linux")]

use std::time::{Duration, Instant};

use cylinder::{Actor, Behaviour};

struct Echo;

impl Behaviour for Echo {
    type Request = u64;
    type Reply = u64;
    fn handle_call(&mut self, n: u64) -> u64 {
        n
    }
}

/// CPU time used by this process so far, summed over its threads (nanoseconds from each
/// thread's `schedstat`; falls back to `utime + stime` of `/proc/self/stat`, in ticks of
/// 10 ms, where `schedstat` is missing).
fn process_cpu_time() -> Duration {
    let mut total = 0u64;
    let mut found = false;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            if let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) {
                if let Some(ns) = stat
                    .split_whitespace()
                    .next()
                    .and_then(|f| f.parse::<u64>().ok())
                {
                    total += ns;
                    found = true;
                }
            }
        }
    }
    if found {
        return Duration::from_nanos(total);
    }
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name (which ends with ')'): utime is the 14th field overall.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

#[test]
fn nine_idle_actors_use_less_than_two_percent_of_a_core() {
    let actors: Vec<Actor<Echo>> = (0..9).map(|_| Actor::spawn(Echo).unwrap()).collect();
    // Busy first, so that every actor's spin budget is at its largest.
    for round in 0..2_000u64 {
        for actor in &actors {
            assert_eq!(actor.call(round).unwrap(), round);
        }
    }
    // Let them go idle.
    std::thread::sleep(Duration::from_millis(100));

    let cpu_before = process_cpu_time();
    let began = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let cpu = process_cpu_time() - cpu_before;
    let wall = began.elapsed();
    let share = cpu.as_secs_f64() / wall.as_secs_f64();
    println!(
        "9 idle actors: {cpu:?} of CPU in {wall:?} ({:.3}% of a core)",
        share * 100.0
    );
    assert!(
        share < 0.02,
        "9 idle actors used {:.2}% of a core",
        share * 100.0
    );

    // And they still answer at once.
    for actor in &actors {
        assert_eq!(actor.call(7).unwrap(), 7);
    }
}
