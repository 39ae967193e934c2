//! Shared set-up for the Broker integration tests: a server (a [`ServerBroker`] behind a
//! TCP [`Listener`] on loopback), client brokers over a TCP pool, a subscriber that
//! collects what it is delivered, an echo handler, and bounded waits.
//!
//! These tests run on real time over loopback: every wait goes through [`within`] or
//! [`eventually`], so a hang fails the test with a message instead of stalling it.

// Each test file compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::{Actor, Addr, Context, Handler, ResponseFuture};
use bytes::Bytes;
use switchboard::broker::{BrokerConfig, Delivery};
use switchboard::protocol::frame::FrameProtocol;
use switchboard::protocol::RemoteError;
use switchboard::server::{
    GetListenerStats, GetServerStats, Listener, ListenerStats, Route, ServerBroker, ServerConfig,
    ServerRequest, ServerStats,
};
use switchboard::transport::TcpConnector;
use switchboard::{
    Authority, Broker, BrokerHandle, ConnectionConfig, ConnectionId, Pool, PoolConfig,
};
use tokio::net::TcpListener;

/// The bound on waits that should end quickly on loopback.
pub const WAIT: Duration = Duration::from_secs(10);

/// A client broker over TCP.
pub type Client = BrokerHandle<TcpConnector>;

/// Awaits `future`, failing the test if it takes longer than `limit`.
pub async fn within<F: Future>(limit: Duration, what: &str, future: F) -> F::Output {
    match tokio::time::timeout(limit, future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// Polls `check` every 10 ms until it returns `Some`, failing the test after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A running server: its broker, its listener, and where it listens.
pub struct Server {
    pub broker: Addr<ServerBroker>,
    pub listener: Addr<Listener<TcpListener>>,
    pub port: u16,
}

impl Server {
    /// The authority clients connect to.
    pub fn authority(&self) -> Authority {
        Authority::tcp("127.0.0.1", self.port)
    }

    /// The server broker's counters.
    pub async fn stats(&self) -> ServerStats {
        within(WAIT, "server stats", self.broker.send(GetServerStats))
            .await
            .expect("server broker alive")
    }

    /// The listener's counters.
    pub async fn listener_stats(&self) -> ListenerStats {
        within(WAIT, "listener stats", self.listener.send(GetListenerStats))
            .await
            .expect("listener alive")
    }

    /// The ids of the server-side connections open now.
    pub async fn connections(&self) -> Vec<ConnectionId> {
        self.listener_stats().await.connections
    }

    /// Waits until the listener has exactly `open` connections; returns their ids.
    pub async fn wait_open(&self, open: usize) -> Vec<ConnectionId> {
        let listener = self.listener.clone();
        eventually(WAIT, &format!("{open} open server connections"), || {
            let listener = listener.clone();
            async move {
                let stats = listener.send(GetListenerStats).await.ok()?;
                (stats.open == open).then_some(stats.connections)
            }
        })
        .await
    }

    /// Waits until the server broker's counters satisfy `done`.
    pub async fn wait_stats(&self, what: &str, done: impl Fn(&ServerStats) -> bool) {
        let broker = self.broker.clone();
        eventually(WAIT, what, || {
            let broker = broker.clone();
            let ready = broker.send(GetServerStats);
            let done = &done;
            async move { ready.await.ok().filter(|stats| done(stats)).map(|_| ()) }
        })
        .await;
    }

    /// Routes requests for `route` to `handler`.
    pub async fn route(&self, route: &'static str, handler: actix::Recipient<ServerRequest>) {
        within(
            WAIT,
            "route",
            self.broker.send(Route {
                route: Some(Bytes::from_static(route.as_bytes())),
                handler,
            }),
        )
        .await
        .expect("server broker alive");
    }
}

/// How a test server is set up beyond its [`ServerConfig`].
#[derive(Default)]
pub struct ServerOptions {
    /// The accepted connections' settings.
    pub connection: Option<ConnectionConfig>,
    /// The listener's cap on open connections.
    pub max_connections: Option<usize>,
    /// A listening socket to use instead of a fresh one on 127.0.0.1:0.
    pub socket: Option<TcpListener>,
}

/// Starts a server with `config` on 127.0.0.1, an ephemeral port.
pub async fn start_server(config: ServerConfig) -> Server {
    start_server_with(config, ServerOptions::default()).await
}

/// Starts a server with `config` and `options`.
pub async fn start_server_with(config: ServerConfig, options: ServerOptions) -> Server {
    let broker = ServerBroker::start(config).expect("valid server config");
    let socket = match options.socket {
        Some(socket) => socket,
        None => TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback"),
    };
    let port = socket.local_addr().expect("bound").port();
    let mut builder = Listener::builder(socket, broker.clone());
    if let Some(connection) = options.connection {
        builder = builder.connection(connection);
    }
    if let Some(max) = options.max_connections {
        builder = builder.max_connections(max);
    }
    let listener = builder.start();
    Server {
        broker,
        listener,
        port,
    }
}

/// A pool config with `min_idle` and `max_size` and otherwise the defaults.
pub fn pool_config(min_idle: usize, max_size: usize) -> PoolConfig {
    PoolConfig::builder()
        .min_idle(min_idle)
        .max_size(max_size)
        .build()
        .expect("valid pool config")
}

/// Starts a client broker to `port` over a pool with `config`.
pub fn start_client(port: u16, config: PoolConfig) -> Client {
    start_client_with(port, config, None, BrokerConfig::default())
}

/// Starts a client broker to `port` over a pool with `config`, its connections with
/// `connection` (or the defaults), and the broker with `broker`.
pub fn start_client_with(
    port: u16,
    config: PoolConfig,
    connection: Option<ConnectionConfig>,
    broker: BrokerConfig,
) -> Client {
    let mut pool = Pool::builder(TcpConnector::new(), FrameProtocol::default()).config(config);
    if let Some(connection) = connection {
        pool = pool.connection(connection);
    }
    Broker::builder(pool, Authority::tcp("127.0.0.1", port))
        .config(broker)
        .start()
}

/// Waits until the client's pool has `count` open connections to `port`.
pub async fn wait_pool_size(client: &Client, port: u16, count: usize) {
    let pool = client.pool().clone();
    let authority = Authority::tcp("127.0.0.1", port);
    eventually(WAIT, &format!("{count} pooled connections"), || {
        let pool = pool.clone();
        let authority = authority.clone();
        async move {
            let status = pool.status().await.ok()?;
            // Open and idle, so that a burst of picks finds every one of them.
            let group = status.authority(&authority)?;
            (group.size == count && group.idle == count).then_some(())
        }
    })
    .await;
}

/// What a [`Collector`] was delivered, shared with the test.
#[derive(Clone, Default)]
pub struct Collected(Arc<Mutex<Vec<Delivery>>>);

impl Collected {
    /// A copy of everything delivered so far, in delivery order.
    pub fn snapshot(&self) -> Vec<Delivery> {
        self.0.lock().unwrap().clone()
    }

    /// How many messages were delivered so far.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// Waits until at least `count` messages were delivered; returns them.
    pub async fn wait_for(&self, count: usize, limit: Duration) -> Vec<Delivery> {
        let this = self.clone();
        eventually(limit, &format!("{count} deliveries"), || {
            let this = this.clone();
            async move { (this.len() >= count).then(|| this.snapshot()) }
        })
        .await
    }
}

/// A subscriber actor that records every [`Delivery`]. Its mailbox is large, so that
/// a burst is not dropped by the broker's `try_send`.
pub struct Collector {
    collected: Collected,
}

impl Collector {
    /// Starts a collector; returns its address and what it collects.
    pub fn start_new() -> (Addr<Collector>, Collected) {
        let collected = Collected::default();
        let addr = Collector {
            collected: collected.clone(),
        }
        .start();
        (addr, collected)
    }
}

impl Actor for Collector {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(1_000_000);
    }
}

impl Handler<Delivery> for Collector {
    type Result = ();

    fn handle(&mut self, delivery: Delivery, _: &mut Context<Self>) {
        self.collected.0.lock().unwrap().push(delivery);
    }
}

/// Requests an [`Echo`] handler saw, per server-side connection.
#[derive(Clone, Default)]
pub struct SeenBy(Arc<Mutex<HashMap<ConnectionId, usize>>>);

impl SeenBy {
    /// A copy of the counts.
    pub fn counts(&self) -> HashMap<ConnectionId, usize> {
        self.0.lock().unwrap().clone()
    }
}

/// A request handler that answers with the request's own payload, after `delay` if
/// set, and counts requests per connection.
pub struct Echo {
    delay: Option<Duration>,
    seen: SeenBy,
}

impl Echo {
    /// Starts an echo handler; returns its address and its per-connection counts.
    pub fn start_new(delay: Option<Duration>) -> (Addr<Echo>, SeenBy) {
        let seen = SeenBy::default();
        let addr = Echo {
            delay,
            seen: seen.clone(),
        }
        .start();
        (addr, seen)
    }
}

impl Actor for Echo {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(1_000_000);
    }
}

impl Handler<ServerRequest> for Echo {
    type Result = ResponseFuture<Result<Bytes, RemoteError>>;

    fn handle(&mut self, request: ServerRequest, _: &mut Context<Self>) -> Self::Result {
        *self
            .seen
            .0
            .lock()
            .unwrap()
            .entry(request.connection)
            .or_default() += 1;
        let delay = self.delay;
        Box::pin(async move {
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            Ok(request.payload)
        })
    }
}

/// A payload naming a producer and its message number.
pub fn tagged(producer: u32, n: u32) -> Bytes {
    let mut bytes = Vec::with_capacity(8);
    bytes.extend_from_slice(&producer.to_be_bytes());
    bytes.extend_from_slice(&n.to_be_bytes());
    Bytes::from(bytes)
}

/// The producer and message number of a [`tagged`] payload.
pub fn untag(payload: &[u8]) -> (u32, u32) {
    assert!(payload.len() >= 8, "payload too short: {payload:?}");
    let producer = u32::from_be_bytes(payload[..4].try_into().unwrap());
    let n = u32::from_be_bytes(payload[4..8].try_into().unwrap());
    (producer, n)
}
