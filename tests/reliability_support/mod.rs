//! Shared set-up for the reliability scenarios 1–5 (`tests/reliability_*.rs`): a real
//! `frame` server on loopback (a [`ServerBroker`](switchboard::server::ServerBroker)
//! behind a TCP [`Listener`](switchboard::server::Listener), from `broker_support`)
//! that echoes requests, a [`Pool`] with a [`TcpConnector`] pointed at it (or at a
//! [`FaultProxy`](switchboard::testkit::FaultProxy) in front of it), and a record of
//! the pool's [`ConnectionEvent`]s.
//!
//! These tests run in real time over real sockets, so tokio's clock cannot be paused:
//! every wait is bounded (by `within`, `eventually` or the bounds here), and the only
//! time assertions are upper bounds that the configuration promises, with slack for
//! a loaded machine.
//!
//! A test file uses it with `mod broker_support; mod reliability_support;`.

// Each test file compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use switchboard::pool::{AuthorityStatus, PoolStatus};
use switchboard::protocol::frame::{FrameProtocol, FrameRequest};
use switchboard::server::{Disconnect, GetListenerStats, Route, ServerConfig};
use switchboard::testkit::Probe;
use switchboard::transport::TcpConnector;
use switchboard::{
    Authority, Call, CallError, CloseReason, ConnectionConfig, ConnectionConfigBuilder,
    ConnectionEvent, ConnectionId, Lease, Pool, PoolConfig, PoolConfigBuilder, PoolHandle,
};

use crate::broker_support::{
    eventually, start_server_with, within, Echo, SeenBy, Server, ServerOptions, WAIT,
};

/// The pool the scenarios use: TCP, `frame` protocol.
pub type TcpPool = PoolHandle<TcpConnector, FrameProtocol>;

/// A lease from a [`TcpPool`].
pub type TcpLease = Lease<TcpConnector, FrameProtocol>;

/// The route whose requests the server answers only after [`SLOW_REPLY`]: calls sent
/// to it stay in flight for as long as a test needs.
pub const SLOW: &str = "slow";

/// How long the server takes to answer a request on the [`SLOW`] route: longer than
/// any test runs.
pub const SLOW_REPLY: Duration = Duration::from_secs(60);

/// A pool config with settings for these tests: nothing reaped or checked unless a
/// test turns it on, a short backoff (50 ms to 500 ms), a 5 s checkout timeout and a
/// 2 s connect timeout.
pub fn pool_config() -> PoolConfigBuilder {
    PoolConfig::builder()
        .test_on_checkout_after(None)
        .health_check_interval(None)
        .idle_timeout(None)
        .max_lifetime(None)
        .backoff_base(Duration::from_millis(50))
        .backoff_max(Duration::from_millis(500))
        .checkout_timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(2))
}

/// Connection settings for pooled connections: a 10 s call timeout (longer than any
/// fault a test makes, shorter than a hang) and a heartbeat that stays out of the way
/// (pings after 2 s of silence, closes after 10 s) unless a test sets its own.
pub fn connection_config() -> ConnectionConfigBuilder {
    ConnectionConfig::builder()
        .call_timeout(Duration::from_secs(10))
        .heartbeat_interval(Duration::from_secs(2))
        .heartbeat_timeout(Duration::from_secs(10))
}

/// Starts a `frame` server on 127.0.0.1 (on `socket` if given, else a free port) whose
/// requests are echoed: at once, or after [`SLOW_REPLY`] on the [`SLOW`] route.
/// Returns the server and the requests its echo handler saw per connection.
pub async fn start_echo_server(socket: Option<tokio::net::TcpListener>) -> (Server, SeenBy) {
    let options = ServerOptions {
        socket,
        ..ServerOptions::default()
    };
    let server = start_server_with(ServerConfig::default(), options).await;
    let (echo, seen) = Echo::start_new(None);
    let route = Route {
        route: None,
        handler: echo.recipient(),
    };
    within(WAIT, "fallback route", server.broker.send(route))
        .await
        .expect("server broker alive");
    let (slow, _) = Echo::start_new(Some(SLOW_REPLY));
    server.route(SLOW, slow.recipient()).await;
    (server, seen)
}

/// Starts (lazily: it connects in the background) a pool to `authority` over TCP with
/// `config` and `connection`, telling `events` about its connections.
pub fn start_pool(
    authority: &Authority,
    config: PoolConfigBuilder,
    connection: ConnectionConfigBuilder,
    events: &Events,
) -> TcpPool {
    Pool::builder(TcpConnector::new(), FrameProtocol::default())
        .config(config.build().expect("valid pool config"))
        .connection(connection.build().expect("valid connection config"))
        .events(events.recipient())
        .authority(authority.clone())
        .start()
}

/// The pool's status of `authority`.
pub async fn authority_status(pool: &TcpPool, authority: &Authority) -> AuthorityStatus {
    let status: PoolStatus = within(WAIT, "pool status", pool.status())
        .await
        .expect("pool running");
    status
        .authority(authority)
        .unwrap_or_else(|| panic!("the pool does not know {authority}: {status:#?}"))
        .clone()
}

/// Polls the pool's status of `authority` until `done` holds, failing the test after
/// `limit`. Returns that status.
pub async fn wait_status(
    pool: &TcpPool,
    authority: &Authority,
    limit: Duration,
    what: &str,
    done: impl Fn(&AuthorityStatus) -> bool,
) -> AuthorityStatus {
    let done = &done;
    eventually(limit, what, || async move {
        let status = pool.status().await.ok()?;
        status.authority(authority).filter(|s| done(s)).cloned()
    })
    .await
}

/// Waits until `authority` has `size` open connections, all idle, none connecting and
/// nobody waiting; returns their ids.
pub async fn wait_full(
    pool: &TcpPool,
    authority: &Authority,
    size: usize,
    limit: Duration,
) -> BTreeSet<ConnectionId> {
    let status = wait_status(
        pool,
        authority,
        limit,
        &format!("{size} idle pooled connections"),
        |s| s.size == size && s.idle == size && s.connecting == 0 && s.waiters == 0,
    )
    .await;
    ids(&status)
}

/// The ids of an authority's open connections.
pub fn ids(status: &AuthorityStatus) -> BTreeSet<ConnectionId> {
    status.connections.iter().map(|c| c.id).collect()
}

/// The payload of a request carrying `text`; the echo server answers with it, so
/// each reply says which call it answers.
pub fn payload(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

/// Calls through `lease` (bounded) and checks the reply is this call's own: the
/// connection really works end to end.
pub async fn echo(lease: &TcpLease, text: &str) {
    let reply = within(WAIT, "call", lease.call(FrameRequest::new(payload(text))))
        .await
        .unwrap_or_else(|error| panic!("call {text:?} on {:?} failed: {error}", lease.id()));
    assert_eq!(&reply[..], text.as_bytes(), "reply to {text:?}");
}

/// Starts a call on the [`SLOW`] route over `lease`'s connection, in a task of its
/// own: it stays in flight until the connection fails (or [`SLOW_REPLY`]).
pub fn spawn_slow_call(
    lease: &TcpLease,
    text: &str,
) -> tokio::task::JoinHandle<Result<Bytes, CallError>> {
    let addr = lease.addr().clone();
    let request = FrameRequest::new(payload(text)).with_topic(SLOW);
    actix::spawn(async move { addr.send(Call::new(request)).await? })
}

/// Checks that `result` is the failure of a call whose connection broke: `Closed`
/// with a reason the connection did not choose (not a timeout, not a reply).
pub fn assert_broken(result: &Result<Bytes, CallError>, what: &str) -> CloseReason {
    match result {
        Err(CallError::Closed(reason)) if !reason.is_requested() => reason.clone(),
        other => panic!("{what}: expected Closed by a failure, got {other:?}"),
    }
}

/// The pool's connection events as a test sees them: a [`Probe`] given to
/// [`PoolBuilder::events`](switchboard::PoolBuilder::events), and everything it
/// recorded so far, each with when the test took it off the probe.
pub struct Events {
    probe: Probe<ConnectionEvent>,
    seen: Vec<(Instant, ConnectionEvent)>,
}

impl Default for Events {
    fn default() -> Self {
        Self::new()
    }
}

impl Events {
    /// Starts the probe (inside the actix system).
    pub fn new() -> Self {
        Self {
            probe: Probe::start(),
            seen: Vec::new(),
        }
    }

    /// Where the pool sends its events.
    pub fn recipient(&self) -> actix::Recipient<ConnectionEvent> {
        self.probe.recipient()
    }

    /// Takes every event already sent off the probe.
    pub fn collect(&mut self) {
        let now = Instant::now();
        for event in self.probe.drain() {
            self.seen.push((now, event));
        }
    }

    /// Waits until every connection in `ids` has reported `Closed`, failing the test
    /// after `limit`. Returns each one's reason and when the test saw it.
    pub async fn wait_closed(
        &mut self,
        ids: &BTreeSet<ConnectionId>,
        limit: Duration,
    ) -> HashMap<ConnectionId, (CloseReason, Instant)> {
        let deadline = Instant::now() + limit;
        loop {
            let closed = self.closed();
            if ids.iter().all(|id| closed.contains_key(id)) {
                return ids
                    .iter()
                    .map(|id| {
                        let (at, reason) = closed[id].first().cloned().expect("closed");
                        (*id, (reason, at))
                    })
                    .collect();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "not every one of {ids:?} reported Closed within {limit:?}; closed: {closed:?}"
            );
            // `Probe::expect` would panic at its timeout; this gives up quietly at the
            // deadline and lets the assertion above say what was missing.
            if let Ok(event) = tokio::time::timeout(left, self.next()).await {
                self.seen.push((Instant::now(), event));
            }
        }
    }

    /// The next event, polled every 5 ms (so a time taken is at most that late).
    async fn next(&mut self) -> ConnectionEvent {
        loop {
            if let Some(event) = self.probe.try_next() {
                return event;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Every `Closed` seen so far, per connection: when and why, in order.
    pub fn closed(&mut self) -> HashMap<ConnectionId, Vec<(Instant, CloseReason)>> {
        self.collect();
        let mut closed: HashMap<ConnectionId, Vec<(Instant, CloseReason)>> = HashMap::new();
        for (at, event) in &self.seen {
            if let ConnectionEvent::Closed { id, reason } = event {
                closed.entry(*id).or_default().push((*at, reason.clone()));
            }
        }
        closed
    }

    /// Every connection that reported `Connected` so far.
    pub fn connected(&mut self) -> BTreeSet<ConnectionId> {
        self.collect();
        self.seen
            .iter()
            .filter_map(|(_, event)| match event {
                ConnectionEvent::Connected { id, .. } => Some(*id),
                _ => None,
            })
            .collect()
    }

    /// Checks that no connection reported `Closed` more than once, and returns how
    /// many did per connection.
    pub fn assert_closed_at_most_once(&mut self) -> HashMap<ConnectionId, usize> {
        let counts: HashMap<ConnectionId, usize> = self
            .closed()
            .into_iter()
            .map(|(id, closes)| (id, closes.len()))
            .collect();
        for (id, count) in &counts {
            assert_eq!(*count, 1, "{id} reported Closed {count} times");
        }
        counts
    }
}

/// Closes the pool (bounded) and checks that every connection it ever opened
/// reported `Closed` exactly once: none forgotten open, none reported twice.
pub async fn close_and_check_events(pool: &TcpPool, events: &mut Events) {
    within(WAIT, "close the pool", pool.close()).await;
    let connected = events.connected();
    events.wait_closed(&connected, WAIT).await;
    // A duplicate would come right behind the first: give it a moment to show.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let counts = events.assert_closed_at_most_once();
    for id in counts.keys() {
        assert!(connected.contains(id), "{id} closed without connecting");
    }
}

/// Disconnects every connection the server holds, from the server's side, and waits
/// until the server has closed them all.
pub async fn server_disconnects_everyone(server: &Server) {
    for id in server.connections().await {
        let known = within(WAIT, "disconnect", server.listener.send(Disconnect(id)))
            .await
            .expect("listener alive");
        assert!(known, "the listener did not know {id}");
    }
    let listener = server.listener.clone();
    eventually(WAIT, "the server closed its connections", || {
        let listener = listener.clone();
        async move {
            let stats = listener.send(GetListenerStats).await.ok()?;
            (stats.open == 0).then_some(())
        }
    })
    .await;
}
