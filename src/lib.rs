//! switchboard: an actor-model connection manager for Actix.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations, rust_2018_idioms, unreachable_pub)]

mod authority;
mod connection;
mod error;
pub mod protocol;
pub mod transport;

pub use authority::Authority;
pub use connection::{
    Abort, Call, CallReply, Close, Connection, ConnectionBuilder, ConnectionConfig,
    ConnectionConfigBuilder, ConnectionEvent, ConnectionId, ConnectionStats, GetStats, Pushed,
    SendFrame, SendReply,
};
pub use error::{CallError, CloseReason, ConfigError, ConnectError, Overload};
#[cfg(feature = "testkit")]
pub mod testkit;
