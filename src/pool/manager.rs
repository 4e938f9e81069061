//! How a pool starts, checks and resets its workers: a [`Manager`], or a start closure with
//! optional hooks set on the builder.

use crate::error::BoxError;

/// Starts, checks and resets a pool's workers (r2d2's `ManageConnection`, deadpool's
/// `Manager`). Every method but `start` has a default that does nothing, so a manager is as
/// small as a start closure; [`PoolBuilder::build`](crate::PoolBuilder::build) takes a
/// closure and the same hooks as builder options instead.
///
/// Each hook gets `&mut` the worker while the pool holds it exclusively (never while it is
/// leased) and runs on the caller's or a background thread with no pool lock held. A hook
/// that errs or panics retires the worker: it is dropped, the pool starts another in its
/// place, and the error is kept as the cause given to a caller when no worker can be had.
///
/// With the cargo feature `r2d2`, every `r2d2::ManageConnection` is a `Manager`
/// (`connect` → `start`, `is_valid` → `check`, `has_broken` → `is_broken`), so the managers of
/// the r2d2 ecosystem plug in unchanged.
///
/// ```
/// use cylinder::{BoxError, Manager, Pool};
///
/// struct Conn { open: bool, in_transaction: bool }
///
/// struct Connector;
///
/// impl Manager for Connector {
///     type Worker = Conn;
///     fn start(&self) -> Result<Conn, BoxError> {
///         Ok(Conn { open: true, in_transaction: false })
///     }
///     fn check(&self, conn: &mut Conn) -> Result<(), BoxError> {
///         if conn.open { Ok(()) } else { Err("connection closed".into()) }
///     }
///     fn is_broken(&self, conn: &mut Conn) -> bool {
///         !conn.open
///     }
///     fn reset(&self, conn: &mut Conn) -> Result<(), BoxError> {
///         conn.in_transaction = false; // roll back what a client left open
///         Ok(())
///     }
/// }
///
/// let pool = Pool::builder().size(2).build_with(Connector).unwrap();
/// let mut conn = pool.checkout().unwrap();
/// conn.in_transaction = true;
/// drop(conn);
/// assert!(!pool.checkout().unwrap().in_transaction);
/// ```
pub trait Manager: Send + Sync + 'static {
    /// The worker type: a connection, a client, a thread handle.
    type Worker: Send + 'static;

    /// Makes a new worker (opens a connection). An error or panic is retried every
    /// `reconnect_delay`.
    /// # Errors
    /// The worker could not be made; the error is the cause the pool reports.
    fn start(&self) -> Result<Self::Worker, BoxError>;

    /// Checks a worker before it is leased (r2d2's `is_valid`), when the pool's
    /// `check_on_checkout` is on (the default). An error retires the worker and the next one
    /// is tried. Default: passes.
    /// # Errors
    /// The worker is unfit: it is retired, with this error as its cause.
    fn check(&self, worker: &mut Self::Worker) -> Result<(), BoxError> {
        let _ = worker;
        Ok(())
    }

    /// Whether a worker can still serve, by a look that needs no exclusive use (a thread's
    /// liveness, a connection's closed flag): asked before each lease, on return, by the
    /// reaper's sweep, and right after the worker's start, where `false` makes the start a
    /// failed one (dead on arrival). `false` retires the worker. Default: always alive.
    ///
    /// Any type can answer it; for a pool of [`Actor`](crate::Actor)s it is
    /// [`Actor::is_alive`](crate::Actor::is_alive) (with the builder's
    /// [`is_alive`](crate::PoolBuilder::is_alive) option: `.is_alive(Actor::is_alive)`).
    fn is_alive(&self, worker: &Self::Worker) -> bool {
        let _ = worker;
        true
    }

    /// A quick test on return (r2d2's `has_broken`): `true` retires the worker. Default:
    /// never broken.
    fn is_broken(&self, worker: &mut Self::Worker) -> bool {
        let _ = worker;
        false
    }

    /// Makes a returned worker fit for the next holder (deadpool's `recycle`), e.g. rolls
    /// back a transaction its client left open. An error retires it. Default: nothing.
    /// # Errors
    /// The worker could not be reset: it is retired, with this error as its cause.
    fn reset(&self, worker: &mut Self::Worker) -> Result<(), BoxError> {
        let _ = worker;
        Ok(())
    }
}

/// What a `test_on_checkout` closure returns: `bool` (pass or fail), or a `Result` whose
/// error becomes the cause.
///
/// ```
/// use cylinder::CheckOutcome;
///
/// assert!(true.into_result().is_ok());
/// let failed = Err::<(), _>("server gone").into_result().unwrap_err();
/// assert_eq!(failed.to_string(), "server gone");
/// ```
pub trait CheckOutcome {
    /// `Ok` when the check passed, else why not.
    /// # Errors
    /// Why the check failed.
    fn into_result(self) -> Result<(), BoxError>;
}

impl CheckOutcome for bool {
    fn into_result(self) -> Result<(), BoxError> {
        if self {
            Ok(())
        } else {
            Err("the checkout check returned false".into())
        }
    }
}

impl<E: Into<BoxError>> CheckOutcome for Result<(), E> {
    fn into_result(self) -> Result<(), BoxError> {
        self.map_err(Into::into)
    }
}

type StartFn<W> = Box<dyn Fn() -> Result<W, BoxError> + Send + Sync>;
pub(crate) type CheckFn<W> = Box<dyn Fn(&mut W) -> Result<(), BoxError> + Send + Sync>;
pub(crate) type BrokenFn<W> = Box<dyn Fn(&mut W) -> bool + Send + Sync>;
pub(crate) type AliveFn<W> = Box<dyn Fn(&W) -> bool + Send + Sync>;

/// A manager made of a start closure and the hooks set on the builder.
pub(crate) struct Hooks<W> {
    pub(crate) start: StartFn<W>,
    pub(crate) check: Option<CheckFn<W>>,
    pub(crate) is_broken: Option<BrokenFn<W>>,
    pub(crate) reset: Option<CheckFn<W>>,
    pub(crate) is_alive: Option<AliveFn<W>>,
}

/// Each closure is user code to drop (with what it captured), one at a time: dropped as
/// one, a second panicking `Drop` during the first one's unwinding would abort the process.
impl<W> Drop for Hooks<W> {
    fn drop(&mut self) {
        let start: StartFn<W> = Box::new(|| Err("the pool is gone".into()));
        crate::contain::dispose(std::mem::replace(&mut self.start, start));
        crate::contain::dispose(self.check.take());
        crate::contain::dispose(self.is_broken.take());
        crate::contain::dispose(self.reset.take());
        crate::contain::dispose(self.is_alive.take());
    }
}

impl<W: Send + 'static> Manager for Hooks<W> {
    type Worker = W;

    fn start(&self) -> Result<W, BoxError> {
        (self.start)()
    }

    fn check(&self, worker: &mut W) -> Result<(), BoxError> {
        self.check.as_ref().map_or(Ok(()), |check| check(worker))
    }

    fn is_broken(&self, worker: &mut W) -> bool {
        self.is_broken.as_ref().is_some_and(|test| test(worker))
    }

    fn is_alive(&self, worker: &W) -> bool {
        self.is_alive.as_ref().map_or(true, |test| test(worker))
    }

    fn reset(&self, worker: &mut W) -> Result<(), BoxError> {
        self.reset.as_ref().map_or(Ok(()), |reset| reset(worker))
    }
}

/// Which of a manager's hooks the pool calls: a closure-built pool skips the ones not set,
/// so a pool without hooks pays nothing for them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Uses {
    pub(crate) check: bool,
    pub(crate) is_broken: bool,
    pub(crate) reset: bool,
    pub(crate) is_alive: bool,
    /// Whether a return runs any hook (`is_broken`, `reset`, `is_alive`): one look on the
    /// lease's path.
    pub(crate) on_return: bool,
}

impl Uses {
    pub(crate) const ALL: Uses = Uses {
        check: true,
        is_broken: true,
        reset: true,
        is_alive: true,
        on_return: true,
    };

    pub(crate) fn of<W>(hooks: &Hooks<W>) -> Uses {
        let (is_broken, reset, is_alive) = (
            hooks.is_broken.is_some(),
            hooks.reset.is_some(),
            hooks.is_alive.is_some(),
        );
        Uses {
            check: hooks.check.is_some(),
            is_broken,
            reset,
            is_alive,
            on_return: is_broken || reset || is_alive,
        }
    }
}

#[cfg(feature = "r2d2")]
impl<M> Manager for M
where
    M: r2d2::ManageConnection,
    M::Error: Send + Sync,
{
    type Worker = M::Connection;

    fn start(&self) -> Result<M::Connection, BoxError> {
        self.connect().map_err(Into::into)
    }

    fn check(&self, worker: &mut M::Connection) -> Result<(), BoxError> {
        self.is_valid(worker).map_err(Into::into)
    }

    fn is_broken(&self, worker: &mut M::Connection) -> bool {
        self.has_broken(worker)
    }
}
