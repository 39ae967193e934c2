//! Shared set-up for the client Broker's traffic-shape tests: a client broker over an
//! in-memory network, and a scripted server (the testkit's [`MockPeer`]) on the far
//! end of each connection, so a test can answer with any bytes it likes and run on
//! virtual time (`tokio::time::pause()`), with no socket involved.

// Each test file compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use switchboard::broker::{BrokerConfig, Delivery};
use switchboard::protocol::frame::{Frame, FrameKind, FrameProtocol};
use switchboard::testkit::MockPeer;
use switchboard::transport::{MemoryConnector, MemoryListener, MemoryNetwork};
use switchboard::{Authority, Broker, BrokerHandle, ConnectionConfig, Pool, PoolConfig};
use tokio::io::DuplexStream;

/// The bound on every wait of these tests (virtual time: it costs nothing).
pub const WAIT: Duration = Duration::from_secs(60);

/// A client broker over the in-memory network.
pub type Client = BrokerHandle<MemoryConnector>;

/// A scripted server connection.
pub type Peer = MockPeer<DuplexStream>;

/// A client broker to `listener` over a pool of at most `max_size` connections,
/// with heartbeats far apart and no health checks, so that a scripted peer need not
/// answer pings.
pub fn start_client(
    network: &MemoryNetwork,
    listener: &MemoryListener,
    max_size: usize,
    config: BrokerConfig,
) -> Client {
    start_client_to(network, listener.authority().clone(), max_size, config)
}

/// As [`start_client`], to `authority`, which need not be listening yet.
pub fn start_client_to(
    network: &MemoryNetwork,
    authority: Authority,
    max_size: usize,
    config: BrokerConfig,
) -> Client {
    let pool = PoolConfig::builder()
        .max_size(max_size)
        .backoff_base(Duration::from_millis(10))
        .backoff_max(Duration::from_millis(100))
        // A scripted peer answers pings only while the test reads from it.
        .health_check_interval(None)
        .test_on_checkout_after(None)
        .build()
        .expect("valid pool config");
    let connection = ConnectionConfig::builder()
        .heartbeat_interval(Duration::from_secs(3600))
        .heartbeat_timeout(Duration::from_secs(7200))
        .build()
        .expect("valid connection config");
    let pool = Pool::builder(network.connector(), FrameProtocol::default())
        .config(pool)
        .connection(connection);
    Broker::builder(pool, authority).config(config).start()
}

/// The next connection to `listener`, as a scripted peer.
pub async fn accept(listener: &mut MemoryListener) -> Peer {
    let io = tokio::time::timeout(WAIT, listener.accept())
        .await
        .expect("a connection within the bound")
        .expect("listener open");
    MockPeer::new(io)
}

/// The next frame from the client that is not a ping (pings are answered).
pub async fn next_frame(peer: &mut Peer) -> Frame {
    loop {
        let frame = peer.expect_frame(WAIT).await;
        if frame.kind == FrameKind::Ping {
            peer.send(Frame::pong(frame.id)).await;
            continue;
        }
        return frame;
    }
}

/// The next frame, which must be of `kind` (pings are answered).
pub async fn expect(peer: &mut Peer, kind: FrameKind) -> Frame {
    let frame = next_frame(peer).await;
    assert_eq!(frame.kind, kind, "expected a {kind:?} frame, got {frame:?}");
    frame
}

/// A subscribe answer: `missed`, `head` and the server's `incarnation`.
pub fn joined(missed: u64, head: u64, incarnation: u64) -> Bytes {
    let mut answer = BytesMut::with_capacity(24);
    answer.put_u64(missed);
    answer.put_u64(head);
    answer.put_u64(incarnation);
    answer.freeze()
}

/// The `after` and `incarnation` a subscribe frame resumes from (0, 0 for a first).
pub fn resume_of(subscribe: &Frame) -> (u64, u64) {
    let number = |at: usize| u64::from_be_bytes(subscribe.payload[at..at + 8].try_into().unwrap());
    match subscribe.payload.len() {
        0 => (0, 0),
        16 => (number(0), number(8)),
        8 => (number(0), 0),
        other => panic!("subscribe payload of {other} bytes"),
    }
}

/// A message of `topic` numbered `seq`, as the server pushes it.
pub fn push(topic: &'static str, seq: u64, payload: impl Into<Bytes>) -> Frame {
    let mut frame = Frame::push(topic, payload);
    frame.id = seq;
    frame
}

/// The sequence numbers of `deliveries`.
pub fn seqs(deliveries: &[Delivery]) -> Vec<u64> {
    deliveries.iter().map(|delivery| delivery.seq).collect()
}
