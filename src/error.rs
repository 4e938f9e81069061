use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// A boxed error, as a [`Supervisor`](crate::Supervisor) or a worker factory returns it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in `cylinder`, each variant naming its cause.
///
/// ```
/// use cylinder::{Error, Pool, Worker};
///
/// struct Conn;
/// impl Worker for Conn {}
///
/// let err = Pool::builder().size(0).build(|| Ok(Conn)).unwrap_err();
/// assert!(matches!(err, Error::InvalidConfig { option: "size", .. }));
/// assert_eq!(err.to_string(), "invalid configuration: size: must be at least 1, got 0");
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Error {
    /// A blocking checkout waited this long and no worker came free.
    Timeout(Duration),
    /// Every worker is busy: all are leased (pool), or all are over `max_queue_len` (balancer).
    Overload,
    /// The pool or balancer was closed or dropped.
    Closed,
    /// The supervisor is gone or has no live children; the reaper is reconnecting.
    Disconnected,
    /// A builder option is out of range; `option` is its name.
    InvalidConfig {
        /// The builder method that was given the bad value.
        option: &'static str,
        /// What is wrong with the value.
        reason: String,
    },
    /// The supervisor's own error (or panic), carried as it was.
    Supervisor(Arc<dyn std::error::Error + Send + Sync + 'static>),
    /// The worker thread stopped (it panicked or was stopped) before it replied.
    WorkerDied,
}

impl Error {
    pub(crate) fn invalid(option: &'static str, reason: impl Into<String>) -> Error {
        Error::InvalidConfig {
            option,
            reason: reason.into(),
        }
    }

    pub(crate) fn supervisor(cause: BoxError) -> Error {
        Error::Supervisor(Arc::from(cause))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Timeout(waited) => write!(f, "no worker came free within {waited:?}"),
            Error::Overload => f.write_str("overload: every worker is busy"),
            Error::Closed => f.write_str("closed"),
            Error::Disconnected => f.write_str("disconnected: the supervisor has no live workers"),
            Error::InvalidConfig { option, reason } => {
                write!(f, "invalid configuration: {option}: {reason}")
            }
            Error::Supervisor(cause) => write!(f, "supervisor failed: {cause}"),
            Error::WorkerDied => f.write_str("the worker died before it replied"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Supervisor(cause) => Some(&**cause),
            _ => None,
        }
    }
}
