#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod actor;
mod balancer;
mod config;
mod error;
mod event;
mod overflow;
mod pool;
mod reaper;
mod roster;
mod select;
mod stripe;
mod supervisor;
mod sync;
mod waitlist;
mod watch;
mod worker;

pub use actor::{Actor, Behaviour};
pub use balancer::{Balancer, Connected, WorkerRef};
pub use config::{BalancerBuilder, OnClientPanic, PoolBuilder, MAX_POOL_SIZE};
pub use error::{BoxError, Error};
pub use event::Event;
pub use pool::{Lease, Pool, PoolStats};
pub use select::Strategy;
pub use supervisor::{Factory, Supervisor};
pub use worker::Worker;
