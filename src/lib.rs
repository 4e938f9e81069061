#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod actor;
mod balancer;
mod contain;
mod error;
mod event;
mod pool;
mod reaper;
mod stripe;
mod sync;
mod worker;

pub use actor::{Actor, Behaviour};
pub use balancer::{
    Balancer, BalancerBuilder, BalancerLease, Connected, Factory, Strategy, Supervisor, WorkerRef,
};
pub use error::{BoxError, Cause, Error};
pub use event::Event;
pub use pool::{
    CheckOutcome, Lease, Manager, OnClientPanic, OwnedLease, Pool, PoolBuilder, PoolStats,
    QueueMode, MAX_POOL_SIZE,
};
pub use worker::Worker;

#[doc(hidden)]
pub use stripe::this_thread_owns_a_stripe;
