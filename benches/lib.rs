//! cylinder's benches, a workspace member of their own so that the crate's first build does
//! not compile criterion and the peer pools. The benches are `get.rs`, `lease.rs`,
//! `contended.rs`, `transaction.rs`, `check.rs` and `call.rs` beside this file, sharing
//! `support/`; `throughput.rs` is the example that prints the same comparison as ops/s.
//! This library is empty.
//!
//! ```sh
//! cargo bench -p cylinder-benches
//! cargo run --release -p cylinder-benches --example throughput
//! ```
