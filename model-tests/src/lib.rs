//! Nothing here: the property tests are in `tests/`. A member of its own, so that proptest is
//! not among the crate's own dev-dependencies (a first `cargo run --example` stays small).
