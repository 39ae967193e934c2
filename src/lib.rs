//! switchboard: an actor-model connection manager for Actix.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations, rust_2018_idioms, unreachable_pub)]

mod authority;
mod error;
pub mod protocol;

pub use authority::Authority;
pub use error::{CallError, CloseReason, ConfigError, ConnectError, Overload};
