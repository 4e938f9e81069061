//! One error type for the whole crate. Convention: a variant that has a cause carries it, and
//! the cause is reachable through [`source()`](std::error::Error::source) only; the variant's
//! own `Display` never repeats it, so a chain printed link by link names each cause once.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// A boxed error, as a start closure, a [`Manager`](crate::Manager) or a
/// [`Supervisor`](crate::Supervisor) returns it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why something failed, as the user's code reported it: a start closure's or supervisor's
/// error, a panic's message, or a plain reason. Cheap to clone; `Display` and `source()` are
/// those of the error inside (its `Display` and `Debug` run contained: one that panics shows
/// as such).
///
/// ```
/// use std::fmt;
/// use cylinder::Cause;
///
/// let cause = Cause::message("connection refused");
/// assert_eq!(cause.to_string(), "connection refused");
/// let io = Cause::new(std::io::Error::other("disk full"));
/// assert_eq!(io.to_string(), "disk full");
///
/// #[derive(Debug)]
/// struct Odd;
/// impl fmt::Display for Odd {
///     fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
///         panic!("no words")
///     }
/// }
/// impl std::error::Error for Odd {}
/// let odd = Cause::new(Odd).to_string();
/// assert_eq!(odd, "(an error whose formatting panicked: panicked: no words)");
/// ```
#[derive(Clone)]
pub struct Cause(Arc<dyn std::error::Error + Send + Sync + 'static>);

impl Cause {
    /// Wraps an error.
    ///
    /// ```
    /// let cause = cylinder::Cause::new("timed out");
    /// assert_eq!(cause.to_string(), "timed out");
    /// ```
    pub fn new(error: impl Into<BoxError>) -> Cause {
        let error = error.into();
        // A cause handed back as is (by a factory, say) is carried as is, not wrapped again.
        match error.downcast::<Cause>() {
            Ok(cause) => *cause,
            Err(error) => Cause(Arc::from(error)),
        }
    }

    /// A cause that is only a message.
    ///
    /// ```
    /// let cause = cylinder::Cause::message(format!("{} of {} down", 2, 3));
    /// assert_eq!(cause.to_string(), "2 of 3 down");
    /// ```
    pub fn message(message: impl Into<String>) -> Cause {
        Cause::new(message.into())
    }

    /// The cause of a caught panic, from its payload.
    pub(crate) fn panic(payload: &(dyn std::any::Any + Send)) -> Cause {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic with a non-string payload".to_string());
        Cause::message(format!("panicked: {message}"))
    }

    /// The error inside.
    ///
    /// ```
    /// let cause = cylinder::Cause::new(std::io::Error::other("disk full"));
    /// assert!(cause.get().downcast_ref::<std::io::Error>().is_some());
    /// ```
    #[must_use]
    pub fn get(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.0
    }
}

/// The error is user code to drop: the last clone of a cause goes contained, wherever it
/// goes (a clone the crate made for a log line or an error can outlive the one it keeps).
impl Drop for Cause {
    fn drop(&mut self) {
        static GONE: std::sync::OnceLock<Arc<dyn std::error::Error + Send + Sync + 'static>> =
            std::sync::OnceLock::new();
        let gone = GONE.get_or_init(|| Arc::new(Gone)).clone();
        crate::contain::dispose(std::mem::replace(&mut self.0, gone));
    }
}

/// What a cause holds while it is dropped.
#[derive(Debug)]
struct Gone;

impl std::fmt::Display for Gone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("(dropped)")
    }
}

impl std::error::Error for Gone {}

// The error's `Debug` and `Display` are user code, run by the crate's own log lines and
// errors: formatted contained, into a string first (a panic half way writes nothing), so an
// error whose formatting panics is shown as such rather than unwinding through the crate.

impl fmt::Debug for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let alternate = f.alternate();
        write_contained(f, || {
            if alternate {
                format!("{:#?}", self.0)
            } else {
                format!("{:?}", self.0)
            }
        })
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let alternate = f.alternate();
        write_contained(f, || {
            if alternate {
                format!("{:#}", self.0)
            } else {
                self.0.to_string()
            }
        })
    }
}

/// Writes what `show` formats, or, if it panics, says so with the panic's message.
fn write_contained(f: &mut fmt::Formatter<'_>, show: impl FnOnce() -> String) -> fmt::Result {
    match crate::contain::run(show) {
        Ok(text) => f.pad(&text),
        Err(panicked) => write!(f, "(an error whose formatting panicked: {panicked})"),
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// What a pool looked like when an error was made: carried by [`Error::Timeout`] and
/// [`Error::Disconnected`] from a pool, so a log line says at once whether the pool was
/// exhausted (every worker leased, a line waiting) or down (nothing open, starts failing).
/// `Display` is one line, HikariCP-style.
///
/// ```
/// use std::time::Duration;
/// use cylinder::{Error, Pool};
///
/// let pool = Pool::builder().size(1).build(|| Ok(())).unwrap();
/// let _held = pool.checkout().unwrap();
/// let err = pool.checkout_timeout(Duration::from_millis(20)).unwrap_err();
/// let state = err.state().unwrap();
/// assert_eq!((state.size, state.leased, state.idle), (1, 1, 0));
/// assert_eq!(
///     err.to_string(),
///     "no worker came free within 20ms (size 1, leased 1, idle 0, waiting 0, starting 0)"
/// );
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct PoolState {
    /// Workers open (leased or idle).
    pub size: usize,
    /// Workers leased to clients.
    pub leased: usize,
    /// Workers free in the pool.
    pub idle: usize,
    /// Checkouts waiting in line.
    pub waiting: usize,
    /// Starts under way.
    pub starting: usize,
}

impl fmt::Display for PoolState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "size {}, leased {}, idle {}, waiting {}, starting {}",
            self.size, self.leased, self.idle, self.waiting, self.starting
        )
    }
}

/// Everything that can go wrong in `cylinder`, each variant naming its cause.
///
/// A variant with a cause ([`Disconnected`](Error::Disconnected)) gives it through
/// [`source()`](std::error::Error::source), never in its own message:
///
/// ```
/// use std::error::Error as _;
/// use cylinder::{Error, Pool};
///
/// let err = Pool::<u32>::builder().size(0).build(|| Ok(1)).unwrap_err();
/// assert!(matches!(err, Error::InvalidConfig { option: "size", .. }));
/// assert_eq!(err.to_string(), "invalid configuration: size: must be at least 1, got 0");
///
/// let down = Pool::<u32>::builder().size(2).build(|| Err("connection refused".into())).unwrap_err();
/// assert!(matches!(down, Error::Disconnected { .. }));
/// assert_eq!(
///     down.to_string(),
///     "disconnected: no worker is running (size 0, leased 0, idle 0, waiting 0, starting 0)"
/// );
/// assert_eq!(down.source().unwrap().to_string(), "connection refused");
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Error {
    /// A blocking checkout (or a [`drain`](crate::Pool::drain)) waited this long and no
    /// worker came free (every lease did not come back).
    Timeout {
        /// How long it waited.
        waited: Duration,
        /// The pool at that moment (`None` from a balancer).
        state: Option<PoolState>,
        /// The last start error, if starts were failing (none succeeded since): reachable
        /// by `source()` too.
        cause: Option<Cause>,
    },
    /// Every worker is busy: all are leased, or for a moment in the pool's own hands (a
    /// `keepalive` check, a close, a first start still on its way; see
    /// [`Pool::try_checkout`](crate::Pool::try_checkout)) (pool); or all are over
    /// `max_queue_len` or leased (balancer).
    Overload,
    /// The pool or balancer was closed or dropped.
    Closed,
    /// No worker can be had: the supervisor is gone or has no live children (balancer), or no
    /// worker could be started (pool). The cause is the last error met (the supervisor's or
    /// start's error or panic, or why the set is empty); the reaper keeps retrying.
    Disconnected {
        /// The last error met; also `source()`.
        cause: Cause,
        /// The pool at that moment (`None` from a balancer).
        state: Option<PoolState>,
    },
    /// A builder option is out of range; `option` is its name.
    InvalidConfig {
        /// The builder method that was given the bad value.
        option: &'static str,
        /// What is wrong with the value.
        reason: String,
    },
    /// The worker thread stopped (it panicked or was stopped) before it replied.
    WorkerDied,
    /// An actor's handler called its own actor (`call`, on the actor's thread or inline):
    /// the call would wait for itself, so it fails at once (Erlang's `calling_self`).
    CallingSelf,
}

impl Error {
    pub(crate) fn invalid(option: &'static str, reason: impl Into<String>) -> Error {
        Error::InvalidConfig {
            option,
            reason: reason.into(),
        }
    }

    /// `Disconnected` with `cause` and no pool state (a balancer's).
    pub(crate) fn disconnected(cause: Cause) -> Error {
        Error::Disconnected { cause, state: None }
    }

    /// The cause carried, if any: `Disconnected`'s, or the last start error a `Timeout` saw.
    ///
    /// ```
    /// use cylinder::{Cause, Error};
    ///
    /// let err = Error::Disconnected { cause: Cause::message("no live children"), state: None };
    /// assert_eq!(err.cause().unwrap().to_string(), "no live children");
    /// assert!(Error::Overload.cause().is_none());
    /// ```
    #[must_use]
    pub fn cause(&self) -> Option<&Cause> {
        match self {
            Error::Disconnected { cause, .. } => Some(cause),
            Error::Timeout { cause, .. } => cause.as_ref(),
            _ => None,
        }
    }

    /// The pool's state when the error was made, if it came from a pool.
    ///
    /// ```
    /// use cylinder::Pool;
    ///
    /// let err = Pool::<u32>::builder().size(3).build(|| Err("refused".into())).unwrap_err();
    /// assert_eq!(err.state().unwrap().size, 0);
    /// ```
    #[must_use]
    pub fn state(&self) -> Option<&PoolState> {
        match self {
            Error::Disconnected { state, .. } | Error::Timeout { state, .. } => state.as_ref(),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Timeout { waited, state, .. } => {
                write!(f, "no worker came free within {waited:?}")?;
                in_state(f, state.as_ref())
            }
            Error::Overload => f.write_str("overload: every worker is busy"),
            Error::Closed => f.write_str("closed"),
            Error::Disconnected { state, .. } => {
                f.write_str("disconnected: no worker is running")?;
                in_state(f, state.as_ref())
            }
            Error::InvalidConfig { option, reason } => {
                write!(f, "invalid configuration: {option}: {reason}")
            }
            Error::WorkerDied => f.write_str("the worker died before it replied"),
            Error::CallingSelf => {
                f.write_str("an actor's handler called its own actor, which would wait for itself")
            }
        }
    }
}

/// ` (size …, leased …)` after a message, when the pool's state is known.
fn in_state(f: &mut fmt::Formatter<'_>, state: Option<&PoolState>) -> fmt::Result {
    match state {
        Some(state) => write!(f, " ({state})"),
        None => Ok(()),
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause()
            .map(|cause| cause as &(dyn std::error::Error + 'static))
    }
}

/// Rejects a name that cannot name a thread (the reaper's and start threads' names carry it).
pub(crate) fn valid_name(name: &str) -> Result<(), Error> {
    if name.contains('\0') {
        return Err(Error::invalid("name", "must not contain a NUL byte"));
    }
    Ok(())
}

/// Rejects a zero duration for `option`.
pub(crate) fn positive(option: &'static str, value: Duration) -> Result<Duration, Error> {
    if value.is_zero() {
        return Err(Error::invalid(option, "must be greater than zero"));
    }
    Ok(value)
}
