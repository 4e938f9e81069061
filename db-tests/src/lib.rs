//! cylinder against real databases, a workspace member of its own so that the crate's first
//! build compiles neither the `postgres` client nor r2d2's managers: `tests/sqlite.rs` (needs
//! nothing: SQLite is compiled in), `tests/postgres.rs` and `examples/postgres.rs` (need a
//! server: `CYLINDER_POSTGRES_URL`, or `.ci/postgres.sh`; see CONTRIBUTING.md). With
//! `--features r2d2` they also run through r2d2_sqlite's and r2d2_postgres's managers. This
//! library is empty.
