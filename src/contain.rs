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
/// count): it runs contained, as the `metrics` recorder does. Within a [`LogsLater`] scope
/// the line is formatted now and written when the scope ends.
macro_rules! logged {
    ($level:ident, $($arg:tt)*) => {{
        if $crate::contain::level!($level) <= log::max_level() {
            $crate::contain::write_log(
                $crate::contain::level!($level),
                module_path!(),
                format_args!($($arg)*),
            );
        }
    }};
}
pub(crate) use logged;

/// The `log::Level` of a `logged!` line.
macro_rules! level {
    (error) => {
        log::Level::Error
    };
    (warn) => {
        log::Level::Warn
    };
    (info) => {
        log::Level::Info
    };
    (debug) => {
        log::Level::Debug
    };
    (trace) => {
        log::Level::Trace
    };
}
pub(crate) use level;

/// A log line held back: its level, its target (the module that wrote it), its text.
type LaterLine = (log::Level, &'static str, String);

crate::sync::per_thread! {
    /// The log lines held back by this thread's [`LogsLater`] scope, if one is open.
    static LATER: std::cell::RefCell<Option<Vec<LaterLine>>> = std::cell::RefCell::new(None);
}

/// Writes a log line through the application's logger, contained; or keeps it for the end
/// of this thread's [`LogsLater`] scope. (The line's arguments are the crate's own, and a
/// user error among them formats contained: see `Cause`.)
pub(crate) fn write_log(level: log::Level, target: &'static str, line: std::fmt::Arguments<'_>) {
    let held_back = LATER
        .try_with(|later| later.borrow().is_some())
        .unwrap_or(false);
    if held_back {
        // Formatted with no borrow held: a user error's `Display` may call into the crate
        // (which may log, or open a scope of its own).
        if let Ok(text) = run(|| line.to_string()) {
            let kept = LATER
                .try_with(|later| match later.borrow_mut().as_mut() {
                    Some(lines) => {
                        lines.push((level, target, text));
                        None
                    }
                    None => Some(text),
                })
                .unwrap_or(None);
            if let Some(text) = kept {
                let _ = run(|| log::log!(target: target, level, "{text}"));
            }
        }
        return;
    }
    let _ = run(|| log::log!(target: target, level, "{line}"));
}

/// Holds back this thread's log lines until it drops (unwinding included): the logger is
/// user code, and may block or call back into the pool, so a batch that holds workers or
/// claims of its own (a sweep's closes, `resize`'s own starts) writes its lines once it
/// holds nothing. Nested scopes write with the outermost.
pub(crate) struct LogsLater {
    outermost: bool,
}

impl LogsLater {
    pub(crate) fn begin() -> LogsLater {
        let outermost = LATER
            .try_with(|later| {
                let mut later = later.borrow_mut();
                let outermost = later.is_none();
                if outermost {
                    *later = Some(Vec::new());
                }
                outermost
            })
            .unwrap_or(false);
        LogsLater { outermost }
    }
}

impl Drop for LogsLater {
    fn drop(&mut self) {
        if !self.outermost {
            return;
        }
        let lines = LATER
            .try_with(|later| later.borrow_mut().take())
            .ok()
            .flatten()
            .unwrap_or_default();
        for (level, target, line) in lines {
            let _ = run(|| log::log!(target: target, level, "{line}"));
        }
    }
}

/// A user value dropped contained, on its own: for several captured together (one closure
/// holding two), whose `Drop`s would otherwise run in one unwinding.
pub(crate) struct Contained<T>(Option<T>);

impl<T> Contained<T> {
    pub(crate) fn new(value: T) -> Self {
        Contained(Some(value))
    }
}

impl<T> std::ops::Deref for Contained<T> {
    type Target = T;

    fn deref(&self) -> &T {
        // Only `Drop` takes the value out.
        self.0
            .as_ref()
            .unwrap_or_else(|| unreachable!("a contained value is taken only when dropped"))
    }
}

impl<T> Drop for Contained<T> {
    fn drop(&mut self) {
        dispose(self.0.take());
    }
}

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
