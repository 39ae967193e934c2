//! The Listener actor: accepts sockets and turns each into a server-side
//! [`Connection`] registered with a [`ServerBroker`].
//!
//! # States
//! ```text
//! Accepting ──open == max_connections──▶ Paused ──a connection closed──▶ Accepting
//!     └──────────────Stop──────────────▶ Stopping ──last connection closed──▶ stopped
//! ```
//! While paused it does not call `accept`, so new peers wait in the kernel's backlog
//! (and their connects time out there if it stays full): this is the accept
//! backpressure. `Stop` closes the listening socket at once, so the port is free to
//! bind again; the connections already accepted are aborted or left to finish, as
//! the `Stop` says, and the actor lives until the last of them closed, so that the
//! broker hears of every close.

use std::fmt;
use std::io;
use std::rc::Rc;
use std::time::Duration;

use actix::{
    Actor, ActorContext, ActorFutureExt, Addr, AsyncContext, Context, Handler, Message,
    MessageResult, Recipient, SpawnHandle, WrapFuture,
};
use futures::future::LocalBoxFuture;
use rustc_hash::FxHashMap;

use super::broker::{Register, ServerBroker};
use crate::protocol::frame::FrameProtocol;
use crate::protocol::Protocol;
use crate::transport::Transport;
use crate::{Abort, Connection, ConnectionConfig, ConnectionEvent, ConnectionId};

/// How long the listener waits before accepting again after `accept` failed (out of
/// file descriptors, say), so that it does not spin.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// A listening socket the [`Listener`] accepts from: TCP and Unix sockets are built
/// in.
pub trait Accept: 'static {
    /// The stream of one accepted peer.
    type Io: Transport;

    /// Accepts the next peer: its stream and a name for it (its address).
    fn accept(self: Rc<Self>) -> LocalBoxFuture<'static, io::Result<(Self::Io, String)>>;
}

impl Accept for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;

    fn accept(self: Rc<Self>) -> LocalBoxFuture<'static, io::Result<(Self::Io, String)>> {
        Box::pin(async move {
            let (stream, peer) = tokio::net::TcpListener::accept(&self).await?;
            // Small frames (answers, pushes) leave at once.
            stream.set_nodelay(true)?;
            Ok((stream, peer.to_string()))
        })
    }
}

#[cfg(unix)]
impl Accept for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;

    fn accept(self: Rc<Self>) -> LocalBoxFuture<'static, io::Result<(Self::Io, String)>> {
        Box::pin(async move {
            let (stream, peer) = tokio::net::UnixListener::accept(&self).await?;
            let name = peer.as_pathname().map_or_else(
                || "unix:unnamed".to_owned(),
                |path| path.display().to_string(),
            );
            Ok((stream, name))
        })
    }
}

/// Stops accepting: the listening socket closes at once. With `abort`, every
/// connection accepted is aborted too (as a server restart would); without, they
/// live on until they close.
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "()")]
pub struct Stop {
    /// Abort the connections already accepted.
    pub abort: bool,
}

/// Aborts one accepted connection (the demo's way of killing a server-side
/// connection); resolves with whether the listener had it.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "bool")]
pub struct Disconnect(pub ConnectionId);

/// Asks for the listener's counters.
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "ListenerStats")]
pub struct GetListenerStats;

/// A listener's counters.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ListenerStats {
    /// Connections open now.
    pub open: usize,
    /// The ids of the connections open now.
    pub connections: Vec<ConnectionId>,
    /// Sockets accepted in all.
    pub accepted: u64,
    /// Times accepting paused because `max_connections` were open.
    pub paused: u64,
    /// Whether accepting is paused now.
    pub is_paused: bool,
    /// `accept` calls that failed.
    pub accept_errors: u64,
}

/// Accepts sockets into [`Connection`]s registered with a [`ServerBroker`].
///
/// At most `max_connections` are open at once: at the cap it stops calling `accept`,
/// so new peers wait in the kernel's backlog, and it accepts again when one closes.
/// [`Stop`] closes the listening socket at once (the port can be bound again) and,
/// with `abort`, aborts every accepted connection; the actor lives until the last of
/// them closed, so that the broker hears of every close.
///
/// Start one with [`Listener::builder`].
pub struct Listener<A: Accept> {
    acceptor: Option<Rc<A>>,
    broker: Addr<ServerBroker>,
    protocol: FrameProtocol,
    connection: ConnectionConfig,
    max_connections: usize,
    open: FxHashMap<ConnectionId, Recipient<Abort>>,
    accepting: Option<SpawnHandle>,
    stats: ListenerStats,
}

impl<A: Accept> fmt::Debug for Listener<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("open", &self.open.len())
            .field("max_connections", &self.max_connections)
            .finish_non_exhaustive()
    }
}

/// Sets up a [`Listener`]; see [`Listener::builder`].
#[must_use]
pub struct ListenerBuilder<A: Accept> {
    acceptor: A,
    broker: Addr<ServerBroker>,
    protocol: FrameProtocol,
    connection: ConnectionConfig,
    max_connections: usize,
}

impl<A: Accept> fmt::Debug for ListenerBuilder<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListenerBuilder")
            .field("max_connections", &self.max_connections)
            .finish_non_exhaustive()
    }
}

impl<A: Accept> ListenerBuilder<A> {
    /// Connections open at once at most; past it the listener stops accepting until
    /// one closes. Defaults to 10,000.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// The settings of every accepted connection (heartbeat, buffers, ...). Defaults
    /// to [`ConnectionConfig::default`].
    pub fn connection(mut self, config: ConnectionConfig) -> Self {
        self.connection = config;
        self
    }

    /// The `frame` protocol's settings (its maximum frame length). Defaults to
    /// [`FrameProtocol::default`].
    pub fn protocol(mut self, protocol: FrameProtocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// Starts accepting in the current arbiter.
    pub fn start(self) -> Addr<Listener<A>> {
        Listener {
            acceptor: Some(Rc::new(self.acceptor)),
            broker: self.broker,
            protocol: self.protocol,
            connection: self.connection,
            max_connections: self.max_connections,
            open: FxHashMap::default(),
            accepting: None,
            stats: ListenerStats::default(),
        }
        .start()
    }
}

impl<A: Accept> Listener<A> {
    /// Sets up a listener that accepts from `acceptor` (a bound
    /// `tokio::net::TcpListener` or `UnixListener`) and registers each connection
    /// with `broker`.
    pub fn builder(acceptor: A, broker: Addr<ServerBroker>) -> ListenerBuilder<A> {
        ListenerBuilder {
            acceptor,
            broker,
            protocol: FrameProtocol::default(),
            connection: ConnectionConfig::default(),
            max_connections: 10_000,
        }
    }

    /// Accepts one more peer, unless one accept is under way, the cap is reached or
    /// the listener stopped.
    fn accept_next(&mut self, ctx: &mut Context<Self>) {
        if self.accepting.is_some() {
            return;
        }
        let Some(acceptor) = self.acceptor.clone() else {
            return;
        };
        if self.open.len() >= self.max_connections {
            if !self.stats.is_paused {
                self.stats.is_paused = true;
                self.stats.paused += 1;
                tracing::debug!(
                    open = self.open.len(),
                    "accepting paused at max_connections"
                );
            }
            return;
        }
        self.stats.is_paused = false;
        let accepted = acceptor
            .accept()
            .into_actor(self)
            .map(|accepted, this, ctx| {
                this.accepting = None;
                match accepted {
                    Ok((io, peer)) => {
                        this.serve(io, peer, ctx);
                        this.accept_next(ctx);
                    }
                    Err(error) => {
                        this.stats.accept_errors += 1;
                        tracing::warn!(%error, "accept failed");
                        ctx.run_later(ACCEPT_RETRY, |this, ctx| this.accept_next(ctx));
                    }
                }
            });
        self.accepting = Some(ctx.spawn(accepted));
    }

    /// Starts a connection for an accepted peer and registers it with the broker.
    fn serve(&mut self, io: A::Io, peer: String, ctx: &mut Context<Self>) {
        let connection = Connection::builder(io, self.protocol)
            .config(self.connection.clone())
            .peer(peer)
            .events(ctx.address().recipient())
            .requests(self.broker.clone().recipient())
            .build();
        let id = connection.id();
        let addr = connection.start();
        // Sent before the connection runs, so the broker knows it before any of its
        // requests arrive. `do_send`: one per accepted socket, bounded by
        // `max_connections`, and the broker must not miss it.
        self.broker.do_send(Register {
            connection: id,
            deliver: addr.clone().recipient(),
            evict: addr.clone().recipient(),
            stats: addr.clone().recipient(),
            max_write_buffer: self.connection.max_write_buffer(),
            max_frame_length: self.protocol.codec().max_frame_length(),
        });
        self.open.insert(id, addr.recipient());
        self.stats.accepted += 1;
    }
}

impl<A: Accept> Actor for Listener<A> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.accept_next(ctx);
    }
}

impl<A: Accept> Handler<ConnectionEvent> for Listener<A> {
    type Result = ();

    /// Counts a closed connection out, tells the broker, and accepts again if
    /// accepting was paused.
    fn handle(&mut self, event: ConnectionEvent, ctx: &mut Context<Self>) {
        if let ConnectionEvent::Closed { id, .. } = &event {
            self.open.remove(id);
            // `do_send`: the broker must drop the connection's subscriptions.
            self.broker.do_send(event);
            if self.acceptor.is_none() && self.open.is_empty() {
                ctx.stop();
            } else {
                self.accept_next(ctx);
            }
        }
    }
}

impl<A: Accept> Handler<Stop> for Listener<A> {
    type Result = ();

    /// Closes the listening socket, and aborts the connections if asked.
    fn handle(&mut self, stop: Stop, ctx: &mut Context<Self>) {
        if let Some(accepting) = self.accepting.take() {
            ctx.cancel_future(accepting);
        }
        self.acceptor = None;
        if stop.abort {
            for connection in self.open.values() {
                // Each answers with its `Closed` event, which counts it out here.
                connection.do_send(Abort);
            }
        }
        if self.open.is_empty() {
            ctx.stop();
        }
    }
}

impl<A: Accept> Handler<Disconnect> for Listener<A> {
    type Result = bool;

    /// Aborts one connection.
    fn handle(&mut self, Disconnect(id): Disconnect, _: &mut Context<Self>) -> bool {
        match self.open.get(&id) {
            Some(connection) => {
                // `do_send`: a connection whose mailbox is closed has stopped already.
                connection.do_send(Abort);
                true
            }
            None => false,
        }
    }
}

impl<A: Accept> Handler<GetListenerStats> for Listener<A> {
    type Result = MessageResult<GetListenerStats>;

    /// A snapshot of the counters.
    fn handle(&mut self, _: GetListenerStats, _: &mut Context<Self>) -> Self::Result {
        let mut stats = self.stats.clone();
        stats.open = self.open.len();
        stats.connections = self.open.keys().copied().collect();
        stats.connections.sort_unstable();
        MessageResult(stats)
    }
}
