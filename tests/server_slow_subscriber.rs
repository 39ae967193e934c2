//! A subscriber that stops reading is bounded: with `Overflow::Close` the server
//! disconnects it, with `Overflow::Drop` it loses messages but stays connected, and
//! either way a fast subscriber next to it gets every message.

mod broker_support;

use std::time::Duration;

use broker_support::*;
use bytes::{Bytes, BytesMut};
use switchboard::broker::{ProducerId, Publish};
use switchboard::protocol::frame::{Frame, FrameCodec, FrameKind};
use switchboard::server::ServerConfig;
use switchboard::{ConnectionConfig, ConnectionId, Overflow};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::codec::{Decoder, Encoder};

const TOPIC: &str = "firehose";
const MESSAGES: u32 = 400;
const PAYLOAD: usize = 64 * 1024;

/// A server whose connections buffer at most 1 MiB, so a peer that does not read
/// fills its kernel buffers and then that.
async fn server(policy: Overflow) -> Server {
    let connection = ConnectionConfig::builder()
        .max_write_buffer(1024 * 1024)
        .build()
        .unwrap();
    start_server_with(
        ServerConfig::default()
            .slow_subscriber(policy)
            .subscriber_queue(64),
        ServerOptions {
            connection: Some(connection),
            ..ServerOptions::default()
        },
    )
    .await
}

/// A raw peer with a tiny receive buffer that subscribes to `TOPIC` and never reads.
/// Returns it and its server-side connection id.
async fn slow_peer(server: &Server) -> (TcpStream, ConnectionId) {
    let before = server.connections().await;
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4 * 1024).unwrap();
    let mut stream = within(
        WAIT,
        "connect",
        socket.connect(format!("127.0.0.1:{}", server.port).parse().unwrap()),
    )
    .await
    .unwrap();
    let mut bytes = BytesMut::new();
    let subscribe = Frame::new(FrameKind::Subscribe, 1, Bytes::new()).with_topic(TOPIC);
    FrameCodec::default().encode(subscribe, &mut bytes).unwrap();
    within(WAIT, "write subscribe", stream.write_all(&bytes))
        .await
        .unwrap();
    server
        .wait_stats("the slow peer's subscription", |stats| {
            stats.subscriptions == 1
        })
        .await;
    let after = server.connections().await;
    let id = *after
        .iter()
        .find(|id| !before.contains(id))
        .expect("the slow peer's connection");
    (stream, id)
}

/// A fast subscriber and a publisher; publishes every message (each confirmed) and
/// checks the fast subscriber got them all, in order.
async fn run_fast_side(server: &Server) {
    let fast = start_client(server.port, pool_config(1, 1));
    let (collector, collected) = Collector::start_new();
    within(
        WAIT,
        "subscribe",
        fast.subscribe(TOPIC, collector.recipient()),
    )
    .await
    .unwrap();
    let publisher = start_client(server.port, pool_config(1, 1));
    for n in 0..MESSAGES {
        let mut payload = vec![0u8; PAYLOAD];
        payload[..8].copy_from_slice(&tagged(1, n));
        within(
            WAIT,
            "publish",
            publisher.publish(Publish::ordered(ProducerId(1), TOPIC, payload)),
        )
        .await
        .expect("confirmed");
    }
    let wait = tokio::time::timeout(WAIT, collected.wait_for(MESSAGES as usize, WAIT * 2)).await;
    let fast_stats = within(WAIT, "stats", fast.stats()).await.unwrap();
    let deliveries = wait.unwrap_or_else(|_| {
        panic!(
            "the fast subscriber got {} of {MESSAGES}: {fast_stats:?}",
            collected.len()
        )
    });
    let got: Vec<u32> = deliveries.iter().map(|d| untag(&d.payload).1).collect();
    assert_eq!(
        got,
        (0..MESSAGES).collect::<Vec<_>>(),
        "the fast subscriber missed messages"
    );
    let stats = within(WAIT, "stats", fast.stats()).await.unwrap();
    assert_eq!(
        stats.resubscribes, 0,
        "the fast subscriber was disconnected: {stats:?}"
    );
}

/// Reads what the slow peer was sent: the number of pushes, once the server stops
/// sending (or closes).
async fn drain_pushes(stream: &mut TcpStream) -> usize {
    use tokio::io::AsyncReadExt;
    let mut codec = FrameCodec::default();
    let mut buffer = BytesMut::new();
    let mut pushes = 0;
    let mut last = 0;
    loop {
        let read =
            tokio::time::timeout(Duration::from_millis(500), stream.read_buf(&mut buffer)).await;
        match read {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(_)) => {}
        }
        while let Some(frame) = codec.decode(&mut buffer).expect("well-formed frames") {
            if frame.kind == FrameKind::Push {
                assert!(
                    frame.id > last,
                    "pushes out of order: {} after {last}",
                    frame.id
                );
                last = frame.id;
                pushes += 1;
            }
        }
    }
    pushes
}

/// Waits until the server's side of the slow peer's connection is gone.
async fn wait_disconnected(server: &Server, slow_id: ConnectionId) {
    let listener = server.listener.clone();
    eventually(WAIT, "the slow peer disconnected", || {
        let listener = listener.clone();
        async move {
            let stats = listener
                .send(switchboard::server::GetListenerStats)
                .await
                .ok()?;
            (!stats.connections.contains(&slow_id)).then_some(())
        }
    })
    .await;
}

#[actix::test]
async fn close_policy_disconnects_the_slow_peer_and_the_fast_one_gets_everything() {
    let server = server(Overflow::Close).await;
    let (_slow, slow_id) = slow_peer(&server).await;
    run_fast_side(&server).await;

    wait_disconnected(&server, slow_id).await;
    let stats = server.stats().await;
    assert_eq!(
        stats.subscriptions, 1,
        "only the fast subscription is left: {stats:?}"
    );
}

#[actix::test]
async fn close_policy_counts_the_slow_disconnect() {
    let server = server(Overflow::Close).await;
    let (_slow, slow_id) = slow_peer(&server).await;
    run_fast_side(&server).await;
    wait_disconnected(&server, slow_id).await;
    let stats = server.stats().await;
    assert!(stats.slow_disconnects >= 1, "{stats:?}");
}

#[actix::test]
async fn drop_policy_keeps_the_slow_peer_and_the_fast_one_gets_everything() {
    let server = server(Overflow::Drop).await;
    let (mut slow, slow_id) = slow_peer(&server).await;
    run_fast_side(&server).await;

    let listener = server.listener_stats().await;
    assert!(
        listener.connections.contains(&slow_id),
        "the slow peer was disconnected under Overflow::Drop: {listener:?}"
    );
    let stats = server.stats().await;
    assert_eq!(stats.subscriptions, 2, "{stats:?}");
    assert_eq!(stats.slow_disconnects, 0, "{stats:?}");
    // The slow peer lost messages, and what it got is in order.
    let pushes = within(WAIT * 2, "the slow peer's backlog", drain_pushes(&mut slow)).await;
    assert!(
        pushes < MESSAGES as usize,
        "the slow peer got all {pushes} messages: nothing was dropped"
    );
}
