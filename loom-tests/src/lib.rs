//! Loom models of cylinder live in `tests/`; this library is empty.
