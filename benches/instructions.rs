//! Instructions per lease, for valgrind: `checkout` (or `try_checkout`) + drop in a loop on
//! one thread over a pool of 8, `N` times. Run it for two `N` and take the difference, so
//! that the pool's build and the process's start cancel out:
//!
//! ```sh
//! cargo build --release -p cylinder-benches --example instructions
//! for n in 100000 200000; do
//!     valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!         target/release/examples/instructions $n checkout 2>&1 | grep Collected
//! done   # (second - first) / 100000 = instructions per checkout + drop
//! ```
//!
//! A count, not a time: it does not drift with a shared host's speed, so a change to the
//! lease's path can be compared with the code before it on any machine.

use std::hint::black_box;

use cylinder::Pool;

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args
        .next()
        .map_or(100_000, |n| n.parse().expect("N, a count of leases"));
    let try_checkout = args.next().as_deref() == Some("try_checkout");
    let pool = Pool::builder()
        .size(8)
        .build(|| Ok(0u64))
        .expect("a pool of plain workers builds");
    for _ in 0..n {
        if try_checkout {
            black_box(pool.try_checkout().expect("a worker is free"));
        } else {
            black_box(pool.checkout().expect("a worker is free"));
        }
    }
}
