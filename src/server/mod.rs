//! The server side: a [`Listener`] accepts sockets, starts a [`Connection`] for each
//! and registers it with a [`ServerBroker`], which answers their requests through
//! handlers and fans publishes out to subscribers.
//!
//! ```text
//!  peer ──socket──▶ Listener ──starts──▶ Connection ──Incoming──▶ ServerBroker ──ServerRequest──▶ handler
//!                      │ (max_connections,     ▲                     │
//!                      │  accept backpressure) └──Deliver (answers, pushes)
//!                      └──Register / Closed──────────────────────────▶
//! ```
//!
//! Heartbeats never reach the broker: each connection answers its peer's pings
//! itself, so a busy broker or a slow handler cannot make a client think the link
//! is dead.
//!
//! [`Connection`]: crate::Connection

mod broker;
mod fences;
mod listener;

pub use broker::{
    Broadcast, GetServerStats, Route, ServerBroker, ServerConfig, ServerRequest, ServerStats,
};
pub use listener::{
    Accept, Disconnect, GetListenerStats, Listener, ListenerBuilder, ListenerStats, Stop,
};
