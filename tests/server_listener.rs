//! The Listener: `max_connections` holds further peers back until one closes, a
//! closed client's subscriptions go with it, and `Stop { abort: true }` closes every
//! connection and frees the port.

mod broker_support;

use std::time::Duration;

use broker_support::*;
use bytes::BytesMut;
use futures::future::join_all;
use switchboard::broker::Request;
use switchboard::protocol::frame::{Frame, FrameCodec, FrameKind};
use switchboard::server::{ServerConfig, Stop};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Encoder;

async fn raw_connect(port: u16) -> TcpStream {
    within(WAIT, "connect", TcpStream::connect(("127.0.0.1", port)))
        .await
        .expect("connect")
}

fn subscribe_frame(id: u64, topic: &'static str) -> BytesMut {
    let mut bytes = BytesMut::new();
    let frame = Frame::new(FrameKind::Subscribe, id, bytes::Bytes::new()).with_topic(topic);
    FrameCodec::default().encode(frame, &mut bytes).unwrap();
    bytes
}

#[actix::test]
async fn a_peer_past_max_connections_waits_until_one_closes() {
    let server = start_server_with(
        ServerConfig::default(),
        ServerOptions {
            max_connections: Some(2),
            ..ServerOptions::default()
        },
    )
    .await;
    let (echo, _) = Echo::start_new(None);
    server.route("echo", echo.recipient()).await;

    let first = raw_connect(server.port).await;
    let _second = raw_connect(server.port).await;
    server.wait_open(2).await;
    let listener = server.listener_stats().await;
    assert!(listener.is_paused, "{listener:?}");

    // The third peer connects (the kernel's backlog takes it) but is not served.
    let client = start_client(server.port, pool_config(1, 1));
    let mut request = Box::pin(client.request(Request::new("echo", "third")));
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut request)
            .await
            .is_err(),
        "the third peer was served past max_connections"
    );
    let listener = server.listener_stats().await;
    assert_eq!(listener.open, 2, "{listener:?}");
    assert_eq!(listener.accepted, 2, "{listener:?}");
    assert!(listener.is_paused, "{listener:?}");

    // One of the first two goes: the third is accepted and its request answered.
    drop(first);
    let answer = within(WAIT, "the held request", request).await.unwrap();
    assert_eq!(&answer[..], b"third");
    let listener = server.listener_stats().await;
    assert_eq!(listener.accepted, 3, "{listener:?}");
    assert_eq!(listener.open, 2, "{listener:?}");
    assert!(listener.paused >= 1, "{listener:?}");
}

async fn wait_subscriptions(server: &Server, count: usize) {
    server
        .wait_stats(&format!("{count} server subscriptions"), |stats| {
            stats.subscriptions == count
        })
        .await;
}

#[actix::test]
async fn a_closed_client_pools_subscriptions_are_dropped() {
    let server = start_server(ServerConfig::default()).await;
    let client = start_client(server.port, pool_config(1, 1));
    let mut collectors = Vec::new();
    for topic in ["a", "b", "c"] {
        let (collector, _) = Collector::start_new();
        within(
            WAIT,
            "subscribe",
            client.subscribe(topic, collector.clone().recipient()),
        )
        .await
        .unwrap();
        collectors.push(collector);
    }
    wait_subscriptions(&server, 3).await;

    within(WAIT, "pool close", client.pool().close()).await;
    wait_subscriptions(&server, 0).await;
    server.wait_open(0).await;
    assert_eq!(server.stats().await.connections, 0);
}

#[actix::test]
async fn an_aborted_raw_connections_subscriptions_are_dropped() {
    let server = start_server(ServerConfig::default()).await;
    let mut raw = raw_connect(server.port).await;
    let mut frames = subscribe_frame(1, "x");
    frames.extend_from_slice(&subscribe_frame(2, "y"));
    within(WAIT, "write", raw.write_all(&frames)).await.unwrap();
    wait_subscriptions(&server, 2).await;

    // Reset rather than a clean close: the server must notice either way.
    socket2::SockRef::from(&raw)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(raw);
    wait_subscriptions(&server, 0).await;
    server.wait_open(0).await;
}

#[actix::test]
async fn stop_with_abort_closes_every_connection_and_frees_the_port() {
    let server = start_server(ServerConfig::default()).await;
    let (echo, _) = Echo::start_new(None);
    server.route("echo", echo.recipient()).await;
    let client = start_client(server.port, pool_config(2, 2));
    wait_pool_size(&client, server.port, 2).await;
    let answers = within(
        WAIT,
        "requests",
        join_all((0..10u8).map(|n| client.request(Request::new("echo", vec![n])))),
    )
    .await;
    assert!(answers.iter().all(Result::is_ok));
    let mut raw = raw_connect(server.port).await;
    server.wait_open(3).await;

    within(WAIT, "stop", server.listener.send(Stop { abort: true }))
        .await
        .unwrap();

    // The raw peer sees its connection end.
    let mut buffer = [0u8; 64];
    let read = within(WAIT, "raw peer closed", raw.read(&mut buffer)).await;
    assert!(matches!(read, Ok(0) | Err(_)), "raw peer read {read:?}");
    // The listener goes once its last connection closed; the broker forgot them all.
    let listener = server.listener.clone();
    eventually(WAIT, "listener stopped", || {
        let connected = listener.connected();
        async move { (!connected).then_some(()) }
    })
    .await;
    server
        .wait_stats("no server connections", |stats| stats.connections == 0)
        .await;

    // The port is free again.
    let port = server.port;
    let socket = eventually(WAIT, "bind the same port again", || async move {
        tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .ok()
    })
    .await;
    assert_eq!(socket.local_addr().unwrap().port(), port);
}
