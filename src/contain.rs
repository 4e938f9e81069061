//! The one way the crate runs user code: start closures and managers, checks, `is_broken`,
//! `reset`, `is_alive`, `queue_len`, supervisors, event callbacks, actor handlers, the
//! application's logger (`logged!`), and the `Drop` of every user value (workers, errors,
//! requests, replies, behaviours, panic payloads).
//!
//! A panic in user code is caught here and turned into a [`Cause`]; the caught payload is
//! itself a user value, so it is dropped here too, and a payload whose `Drop` panics again is
//! dropped the same way (a few times, then forgotten). Nothing user code does unwinds into
//! the crate, so a guard-free count or a lock held by the caller is never left behind.
//!
//! Callers never run these under a cylinder lock: a callback may call back into the pool.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::error::{BoxError, Cause};

/// One of the crate's log lines. The application's logger is user code too (a logger that
/// panics, e.g. writing to a closed stderr, must not unwind through the crate and lose a
/// count): it runs contained, as the `metrics` recorder does.
macro_rules! logged {
    ($level:ident, $($arg:tt)*) => {{
        let _ = $crate::contain::run(|| log::$level!($($arg)*));
    }};
}
pub(crate) use logged;

/// How many payloads in a row may panic in their own `Drop` before the next is forgotten
/// instead: a payload whose drop always panics with another such payload must not loop.
const PAYLOAD_DROPS: usize = 8;

/// Runs a fallible callback (a start, check, reset, supervisor): its error or its panic
/// becomes the [`Cause`].
pub(crate) fn call<T>(callback: impl FnOnce() -> Result<T, BoxError>) -> Result<T, Cause> {
    match run(callback) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(Cause::new(error)),
        Err(cause) => Err(cause),
    }
}

/// Runs a callback that cannot fail by itself (`is_alive`, `queue_len`, `is_broken`, an event
/// callback, a handler): `Err` carries its panic's message.
pub(crate) fn run<T>(callback: impl FnOnce() -> T) -> Result<T, Cause> {
    catch_unwind(AssertUnwindSafe(callback)).map_err(|payload| {
        let cause = Cause::panic(&*payload);
        dispose_payload(payload);
        cause
    })
}

/// Drops a user value (a worker, an error, a request, a reply, a behaviour, a payload),
/// containing a panic of its `Drop`; returns whether it panicked.
pub(crate) fn dispose<T>(value: T) -> bool {
    match catch_unwind(AssertUnwindSafe(move || drop(value))) {
        Ok(()) => false,
        Err(payload) => {
            dispose_payload(payload);
            true
        }
    }
}

/// Drops the items of a collection one at a time, each as [`dispose`] does: dropped as one
/// `Vec`, a second panicking `Drop` during the first one's unwinding would abort the process.
/// Returns how many panicked.
pub(crate) fn dispose_each<T>(items: impl IntoIterator<Item = T>) -> usize {
    items
        .into_iter()
        .map(dispose)
        .filter(|&panicked| panicked)
        .count()
}

/// Drops a caught panic's payload, whose `Drop` may panic in turn.
fn dispose_payload(mut payload: Box<dyn Any + Send>) {
    for _ in 0..PAYLOAD_DROPS {
        match catch_unwind(AssertUnwindSafe(move || drop(payload))) {
            Ok(()) => return,
            Err(next) => payload = next,
        }
    }
    std::mem::forget(payload);
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    struct Bomb(u32);
    impl Drop for Bomb {
        fn drop(&mut self) {
            if self.0 > 0 {
                std::panic::panic_any(Bomb(self.0 - 1));
            }
        }
    }

    #[test]
    fn a_payload_whose_drop_panics_is_contained() {
        let got = call::<()>(|| std::panic::panic_any(Bomb(3)));
        assert!(got.unwrap_err().to_string().contains("panicked"));
    }

    #[test]
    fn a_payload_that_always_panics_again_is_forgotten() {
        let got = run(|| std::panic::panic_any(Bomb(u32::MAX)));
        assert!(got.is_err());
    }

    #[test]
    fn dispose_each_survives_two_panicking_drops() {
        assert_eq!(dispose_each(vec![Bomb(1), Bomb(0), Bomb(1)]), 2);
    }

    #[test]
    fn dispose_contains_a_panicking_drop() {
        assert!(dispose(Bomb(2)));
        assert!(!dispose(Bomb(0)));
    }
}
