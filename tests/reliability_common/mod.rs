//! Shared set-up for the reliability scenario tests of issue 5 (scenarios 6–11 and
//! 14, `tests/reliability_*.rs`): pools whose far end is a scripted [`MockPeer`] (over
//! an in-memory pipe, or over an accepted loopback TCP socket), a `frame` echo server
//! that can stop reading (for slow-reader faults), and bounded waits.
//!
//! The pool tests that need a plain echo server use `tests/pool_support` as it is;
//! this module adds what those scenarios need beyond it: a peer the test scripts frame
//! by frame, and a server whose reading can be switched off.
//!
//! In-memory tests run on tokio's paused clock (a bound that runs out costs no real
//! time); TCP tests run on real time with bounds generous enough for a loaded 2-core
//! machine, and assert nothing about speed.

// Each test file compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use switchboard::protocol::frame::{Frame, FrameCodec, FrameKind, FrameProtocol};
use switchboard::testkit::{MockPeer, Probe};
use switchboard::transport::{MemoryConnector, MemoryListener, MemoryNetwork, TcpConnector};
use switchboard::{
    Authority, CallError, CloseReason, ConnectionConfig, ConnectionConfigBuilder, ConnectionEvent,
    ConnectionId, ConnectionStats, GetStats, Pool, PoolBuilder, PoolConfigBuilder, PoolHandle,
};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::codec::Framed;

/// A pool over loopback TCP.
pub type TcpPool = PoolHandle<TcpConnector, FrameProtocol>;

/// The bound on waits that should end at once, in virtual time (costs nothing).
pub const WAIT: Duration = Duration::from_secs(5);

/// The bound on waits that should end quickly over loopback, in real time: generous,
/// so a loaded machine does not fail a correct test; a passing test never waits it.
pub const REAL_WAIT: Duration = Duration::from_secs(10);

/// Runs `future` with a bound, failing the test (with `what`) if it does not finish.
pub async fn within<F: Future>(bound: Duration, what: &str, future: F) -> F::Output {
    tokio::time::timeout(bound, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: did not finish within {bound:?}"))
}

/// Polls `check` every 5 ms (of whichever clock runs) until it returns `Some`, failing
/// the test after `bound`.
pub async fn eventually<T, F, Fut>(bound: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not reached within {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Connection settings with heartbeats far apart, so a scripted peer sees only the
/// frames the test causes (no pings to answer).
pub fn quiet_connection() -> ConnectionConfigBuilder {
    ConnectionConfig::builder()
        .heartbeat_interval(Duration::from_secs(3600))
        .heartbeat_timeout(Duration::from_secs(3 * 3600))
}

/// A pool config with nothing running on its own (no health checks, no tests on
/// checkout, no reaping) and a short restart backoff.
pub fn pool_config() -> PoolConfigBuilder {
    switchboard::PoolConfig::builder()
        .test_on_checkout_after(None)
        .health_check_interval(None)
        .idle_timeout(None)
        .max_lifetime(None)
        .backoff_base(Duration::from_millis(50))
        .backoff_max(Duration::from_millis(500))
}

/// A connection's stats (it must be running).
pub async fn stats_of<T, P>(addr: &actix::Addr<switchboard::Connection<T, P>>) -> ConnectionStats
where
    T: switchboard::transport::Transport,
    P: switchboard::protocol::Protocol,
{
    within(REAL_WAIT, "connection stats", addr.send(GetStats))
        .await
        .expect("the connection is running")
}

/// The reason inside a `CallError::Closed`.
///
/// # Panics
/// If the error is another one.
pub fn closed_reason(error: &CallError) -> &CloseReason {
    match error {
        CallError::Closed(reason) => reason,
        other => panic!("expected CallError::Closed, got {other:?}"),
    }
}

/// The next `Closed` event from a pool's (or connection's) events probe, skipping
/// the others: the connection that closed and why.
pub async fn next_closed(
    events: &mut Probe<ConnectionEvent>,
    bound: Duration,
) -> (ConnectionId, CloseReason) {
    let event = events
        .within(bound, |event| {
            matches!(event, ConnectionEvent::Closed { .. })
        })
        .await;
    match event {
        ConnectionEvent::Closed { id, reason } => (id, reason),
        _ => unreachable!("matched as Closed above"),
    }
}

/// Asserts that no `Closed` event has arrived so far.
pub fn assert_no_close(events: &mut Probe<ConnectionEvent>) {
    for event in events.drain() {
        assert!(
            !matches!(event, ConnectionEvent::Closed { .. }),
            "a connection closed: {event:?}"
        );
    }
}

/// A pool over an in-memory network whose far end the test scripts: every connection
/// the pool opens is accepted here as a [`MockPeer`].
pub struct ScriptedBed {
    pub network: MemoryNetwork,
    pub listener: MemoryListener,
    pub authority: Authority,
}

impl ScriptedBed {
    /// Listens at `memory://name`.
    pub fn new(name: &str) -> Self {
        let network = MemoryNetwork::new();
        let listener = network.bind(name);
        let authority = listener.authority().clone();
        Self {
            network,
            listener,
            authority,
        }
    }

    /// A pool builder for this bed's authority with `config` and `connection`.
    pub fn pool(
        &self,
        config: PoolConfigBuilder,
        connection: ConnectionConfig,
    ) -> PoolBuilder<MemoryConnector, FrameProtocol> {
        Pool::builder(self.network.connector(), FrameProtocol::default())
            .config(config.build().unwrap())
            .connection(connection)
            .authority(self.authority.clone())
    }

    /// The peer of the next connection the pool opens (bounded).
    pub async fn accept(&mut self) -> MockPeer<DuplexStream> {
        let stream = within(WAIT, "the pool connects", self.listener.accept())
            .await
            .expect("the listener is open");
        MockPeer::new(stream)
    }
}

/// A pool over loopback TCP whose far end the test scripts: every connection the
/// pool opens is accepted here, and the accepted socket is a [`MockPeer`].
pub struct TcpBed {
    pub listener: TcpListener,
    pub addr: SocketAddr,
}

impl TcpBed {
    /// Listens on a free port of 127.0.0.1.
    pub async fn new() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        Self { listener, addr }
    }

    /// Where the pool connects.
    pub fn authority(&self) -> Authority {
        Authority::tcp("127.0.0.1", self.addr.port())
    }

    /// A pool builder for this bed's authority with `config` and `connection`.
    pub fn pool(
        &self,
        config: PoolConfigBuilder,
        connection: ConnectionConfig,
    ) -> PoolBuilder<TcpConnector, FrameProtocol> {
        Pool::builder(TcpConnector::new(), FrameProtocol::default())
            .config(config.build().unwrap())
            .connection(connection)
            .authority(self.authority())
    }

    /// The peer of the next connection accepted (bounded, real time).
    pub async fn accept(&self) -> MockPeer<TcpStream> {
        let (stream, _) = within(REAL_WAIT, "the pool connects", self.listener.accept())
            .await
            .expect("accept");
        stream.set_nodelay(true).unwrap();
        MockPeer::new(stream)
    }
}

/// A `frame` echo server that answers pings and echoes requests, and whose reading
/// can be switched off and on again: a server that stops reading, so that what its
/// clients write piles up in the transport and then in their own buffers.
#[derive(Clone)]
pub struct EchoServer {
    reading: Rc<watch::Sender<bool>>,
}

impl Default for EchoServer {
    fn default() -> Self {
        Self::new()
    }
}

impl EchoServer {
    /// A server that reads; give it streams with [`serve`](Self::serve) or one of the
    /// listen methods.
    pub fn new() -> Self {
        Self {
            reading: Rc::new(watch::Sender::new(true)),
        }
    }

    /// Stops reading on every connection (what is sent stays in the transport).
    pub fn stop_reading(&self) {
        self.reading.send_replace(false);
    }

    /// Reads again.
    pub fn resume_reading(&self) {
        self.reading.send_replace(true);
    }

    /// Accepts connections at `memory://name` on `network`.
    pub fn listen_memory(&self, network: &MemoryNetwork, name: &str) -> Authority {
        let mut listener = network.bind(name);
        let authority = listener.authority().clone();
        let server = self.clone();
        actix::spawn(async move {
            while let Some(stream) = listener.accept().await {
                server.serve(stream);
            }
        });
        authority
    }

    /// Accepts connections on a free port of 127.0.0.1; returns the address.
    pub async fn listen_tcp(&self) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = self.clone();
        actix::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                server.serve(stream);
            }
        });
        addr
    }

    /// Serves one connection until it closes.
    pub fn serve<T: AsyncRead + AsyncWrite + Unpin + 'static>(&self, stream: T) {
        let mut reading = self.reading.subscribe();
        actix::spawn(async move {
            let (mut sink, mut frames) = Framed::new(stream, FrameCodec::default()).split();
            // Replies go out on their own task, so a client that does not read its
            // replies cannot stop this one from reading (and the other way round).
            let (replies, mut outgoing) = tokio::sync::mpsc::unbounded_channel::<Frame>();
            let writer = actix::spawn(async move {
                while let Some(frame) = outgoing.recv().await {
                    if sink.send(frame).await.is_err() {
                        break;
                    }
                }
            });
            loop {
                if reading.wait_for(|on| *on).await.is_err() {
                    break;
                }
                // Stop reading as soon as told to, even in the middle of a wait.
                let frame = tokio::select! {
                    frame = frames.next() => frame,
                    changed = reading.changed() => {
                        if changed.is_err() { break; }
                        continue;
                    }
                };
                let Some(Ok(frame)) = frame else { break };
                let reply = match frame.kind {
                    FrameKind::Ping => Frame::pong(frame.id),
                    FrameKind::Request => Frame::response(frame.id, frame.payload),
                    _ => continue,
                };
                if replies.send(reply).is_err() {
                    break;
                }
            }
            writer.abort();
        });
    }
}

/// The peer, of two, that reads the next frame first, and that frame: tells which
/// scripted peer is at the far end of which pooled connection.
pub async fn next_frame_on_either<T: switchboard::transport::Transport>(
    peers: &mut [MockPeer<T>; 2],
    bound: Duration,
) -> (usize, Frame) {
    let [first, second] = peers;
    tokio::select! {
        frame = first.expect_frame(bound) => (0, frame),
        frame = second.expect_frame(bound) => (1, frame),
    }
}

/// Payload bytes of call `n` of a test: distinct per call, so a reply shows whose it is.
pub fn payload(n: usize, len: usize) -> Vec<u8> {
    let mut bytes = format!("call-{n}:").into_bytes();
    bytes.resize(len.max(bytes.len()), b'.');
    bytes
}
