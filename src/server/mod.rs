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
//! With feature `tls`, a `TlsListener` runs TLS (rustls, `ring` provider) over the
//! accepted sockets, handshakes side by side, for the same Listener; see
//! `docs/tls.md`.
//!
//! [`Connection`]: crate::Connection

mod broker;
mod fences;
mod listener;
#[cfg(feature = "tls")]
mod tls;
mod topics;

pub use broker::{
    Broadcast, GetServerStats, Route, ServerBroker, ServerConfig, ServerRequest, ServerStats,
};
pub use listener::{
    Accept, Disconnect, GetListenerStats, Listener, ListenerBuilder, ListenerStats, Stop,
};
#[cfg(feature = "tls")]
pub use tls::{tls_server_config, TlsHandshakeCounters, TlsHandshakeStats, TlsListener};
