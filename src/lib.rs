//! switchboard: an actor-model connection manager for Actix applications.
//!
//! It keeps long-lived framed connections to remote peers healthy and routes typed
//! messages over them. You drive it with actor messages from your own actors.
//!
//! ```
//! use futures::{SinkExt, StreamExt};
//! use switchboard::protocol::frame::{Frame, FrameCodec, FrameKind, FrameProtocol, FrameRequest};
//! use switchboard::{Call, Connection, ConnectionConfig};
//! use tokio_util::codec::Framed;
//!
//! #[actix::main]
//! async fn main() {
//!     // Any AsyncRead + AsyncWrite transport works; here an in-memory pipe to a
//!     // peer that answers every request with its own payload.
//!     let (client, server) = tokio::io::duplex(64 * 1024);
//!     actix::spawn(async move {
//!         let mut peer = Framed::new(server, FrameCodec::default());
//!         while let Some(Ok(frame)) = peer.next().await {
//!             if frame.kind == FrameKind::Request {
//!                 peer.send(Frame::response(frame.id, frame.payload)).await.unwrap();
//!             }
//!         }
//!     });
//!
//!     let config = ConnectionConfig::builder().max_in_flight(1024).build().unwrap();
//!     let conn = Connection::builder(client, FrameProtocol::default())
//!         .config(config)
//!         .peer("echo")
//!         .start();
//!     let reply = conn.send(Call::new(FrameRequest::new("hello"))).await;
//!     assert_eq!(&reply.unwrap().unwrap()[..], b"hello");
//! }
//! ```
//!
//! # Layout
//!
//! - [`Connection`] (`src/connection/`): one actor per transport. It owns the framed
//!   stream (one reader, one writer, no locks), correlates replies with calls by id
//!   or in order, runs its own heartbeat, bounds what it buffers, and fails every
//!   pending call exactly once when it stops. Its messages: [`Call`], [`SendFrame`],
//!   [`Close`], [`Abort`], [`GetStats`]; it reports [`ConnectionEvent`]s to a
//!   supervisor and hands [`Pushed`] messages to a push recipient.
//! - [`Pool`] (`src/pool/`): supervises Connections per [`Authority`]: `min_idle` /
//!   `max_size` and a global cap, exclusive [`Lease`]s and [`SharedConnection`]s, a
//!   fair queue of waiters with timeouts, health checks, idle and lifetime expiry,
//!   restarts with backoff and failure accrual, drain and close. Checkouts that find
//!   an idle connection do not go through the actor. Use it through a
//!   [`PoolHandle`] or with messages ([`pool::Checkout`], [`pool::GetStatus`], ...).
//! - [`Broker`] (`src/broker/`): routes application messages over a Pool: requests
//!   by id, publishes ordered per producer or spread by load, subscriptions kept
//!   across reconnects. Use it through a [`BrokerHandle`] or with messages
//!   ([`broker::Publish`], [`broker::Request`], [`broker::Subscribe`], ...).
//! - [`server`] (`src/server/`): the server side: a [`server::Listener`] accepts
//!   sockets into Connections registered with a [`server::ServerBroker`], which
//!   answers requests through handler actors and fans publishes out to subscribers.
//! - [`protocol`] (`src/protocol/`): the [`Protocol`](protocol::Protocol) trait (a
//!   codec plus frame semantics) and the built-in
//!   [`frame`](protocol::frame) protocol, and [`resp`](protocol::resp), Redis's
//!   RESP2/RESP3 with a handshaking connector and a typed client.
//! - [`transport`] (`src/transport/`): [`Connector`](transport::Connector)s for TCP,
//!   Unix sockets and in-memory pipes, keyed by [`Authority`].
//! - TLS (feature `tls`, rustls with the `ring` provider): `transport::TlsConnector`
//!   over any connector and `server::TlsListener` over any listening socket, with
//!   bounded handshakes and names checked; see `docs/tls.md`.
//! - `testkit` (feature `testkit`, `src/testkit/`): the actor test harness, a probe
//!   actor and a scripted mock peer, for this crate's tests and yours.
//! - `metrics` (feature `metrics`, `src/metrics.rs`): pool and connection figures
//!   (sizes, waiters, connects and their errors, calls in flight, round trips, call
//!   errors, closes) through the `metrics` facade; names and meanings in
//!   `docs/metrics.md`. Feature `serde` makes [`PoolConfig`], [`ConnectionConfig`]
//!   and [`server::ServerConfig`] loadable from files, checked as their builders
//!   check them (`docs/config.md`).
//! - Errors: [`CallError`] (why a call failed), [`CloseReason`] (why a connection
//!   stopped), [`ConnectError`] (why a transport did not open), [`PoolError`] (why a
//!   checkout failed), [`ConfigError`].
//!
//! The Broker (routing, ordering, subscriptions, the server side) builds on these;
//! see `docs/architecture.md`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations, rust_2018_idioms, unreachable_pub)]

mod authority;
pub mod broker;
mod connection;
mod error;
#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(not(feature = "metrics"))]
mod metrics;
pub mod pool;
pub mod protocol;
pub mod server;
pub mod transport;

pub use authority::Authority;
pub use broker::{Broker, BrokerHandle};
pub use connection::{
    Abort, Call, CallReply, Close, Connection, ConnectionBuilder, ConnectionConfig,
    ConnectionConfigBuilder, ConnectionEvent, ConnectionId, ConnectionStats, Deliver, GetStats,
    Incoming, Overflow, Ping, Pushed, SendFrame, SendReply,
};
pub use error::{CallError, CloseReason, ConfigError, ConnectError, Overload, PoolError};
pub use pool::{
    Lease, Pool, PoolBuilder, PoolConfig, PoolConfigBuilder, PoolHandle, SharedConnection, Spread,
};
#[cfg(feature = "testkit")]
pub mod testkit;

/// Compiles the README's code, so the README and the API cannot drift apart.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// The largest mailbox capacity this crate gives an actix actor. actix 0.13 counts
/// senders and capacity in one word: a capacity near `usize::MAX >> 1` makes every
/// `Addr::clone` panic ("too many outstanding senders"), and `usize::MAX` overflows.
/// A mailbox this large never parks a sender in practice; the bounds that matter
/// (`max_in_flight`, queue caps) are counted by the actors themselves.
pub(crate) const MAX_MAILBOX: usize = 1 << 20;
