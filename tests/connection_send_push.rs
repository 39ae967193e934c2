//! Fire-and-forget sends and the peer's pushes.
//!
//! A `SendFrame` resolves `Ok` only once the frame is in the transport (the peer can
//! read it at that moment), and fails with `Closed` if the connection stops first.
//! A push from the peer reaches the push recipient intact; with no recipient it is
//! dropped and counted, and the connection carries on.
#![cfg(feature = "testkit")]

mod common;

use std::pin::Pin;

use bytes::Bytes;
use common::{
    assert_not_closed, call, connect, finish, next_closed, reply_of, start_on, Setup, WAIT,
};
use futures::{Future, FutureExt, StreamExt};
use switchboard::protocol::frame::{Frame, FrameKind, FramePush};
use switchboard::testkit::{MockPeer, Probe};
use switchboard::{
    Abort, CallError, CloseReason, Connection, ConnectionConfig, ConnectionEvent, GetStats,
    SendFrame,
};

#[actix::test]
async fn a_send_resolves_once_the_peer_can_read_the_frame() {
    tokio::time::pause();
    let Setup {
        addr,
        mut peer,
        mut events,
        ..
    } = connect(ConnectionConfig::default()).await;

    let sent = addr
        .send(SendFrame::new(Frame::push("news", "hello")))
        .await
        .unwrap();
    assert!(sent.is_ok(), "{sent:?}");
    // The bytes are already in the pipe: the peer reads the frame without waiting.
    let frame = peer
        .framed()
        .next()
        .now_or_never()
        .expect("the frame is readable as soon as the send resolved")
        .expect("stream open")
        .expect("a valid frame");
    assert_eq!(frame, Frame::push("news", "hello"));
    assert_not_closed(&mut events);
}

#[actix::test]
async fn a_send_still_in_the_buffer_fails_with_closed_when_the_connection_stops() {
    tokio::time::pause();
    // A 64-byte pipe nobody reads: a 1,000-byte frame cannot be taken in full.
    let (client, server) = tokio::io::duplex(64);
    let _peer = MockPeer::new(server);
    let mut events = Probe::<ConnectionEvent>::start();
    let addr = start_on(client, ConnectionConfig::default(), &events).await;

    let mut send: Pin<Box<dyn Future<Output = _>>> =
        Box::pin(addr.send(SendFrame::new(Frame::push("big", vec![1u8; 1000]))));
    addr.send(GetStats).await.unwrap();
    assert!(
        futures::poll!(send.as_mut()).is_pending(),
        "not resolved while the transport has not taken the frame"
    );

    addr.send(Abort).await.unwrap();
    let result = tokio::time::timeout(WAIT, send).await.expect("resolves");
    assert!(
        matches!(result, Ok(Err(CallError::Closed(CloseReason::Aborted)))),
        "{result:?}"
    );
    assert!(matches!(
        next_closed(&mut events).await,
        CloseReason::Aborted
    ));
}

#[actix::test]
async fn a_send_after_the_connection_closed_fails() {
    tokio::time::pause();
    let Setup {
        addr, mut events, ..
    } = connect(ConnectionConfig::default()).await;

    addr.send(Abort).await.unwrap();
    next_closed(&mut events).await;
    let result = addr.send(SendFrame::new(Frame::push("t", "later"))).await;
    assert!(
        matches!(result, Ok(Err(CallError::Closed(_))) | Err(_)),
        "{result:?}"
    );
}

#[actix::test]
async fn sends_wait_while_the_peer_does_not_read_and_resolve_when_it_does() {
    tokio::time::pause();
    let (client, server) = tokio::io::duplex(64);
    let mut peer = MockPeer::new(server);
    let events = Probe::<ConnectionEvent>::start();
    let addr = start_on(client, ConnectionConfig::default(), &events).await;

    let mut send: Pin<Box<dyn Future<Output = _>>> =
        Box::pin(addr.send(SendFrame::new(Frame::push("big", vec![2u8; 500]))));
    addr.send(GetStats).await.unwrap();
    assert!(futures::poll!(send.as_mut()).is_pending());

    let frame = peer.expect_kind(FrameKind::Push, WAIT).await;
    assert_eq!(frame.payload.len(), 500);
    let result = tokio::time::timeout(WAIT, send).await.expect("resolves");
    assert!(matches!(result, Ok(Ok(()))), "{result:?}");
}

#[actix::test]
async fn a_push_from_the_peer_reaches_the_push_recipient() {
    tokio::time::pause();
    let Setup {
        addr,
        mut peer,
        mut pushes,
        mut events,
        ..
    } = connect(ConnectionConfig::default()).await;

    peer.send(Frame::push("prices", "42")).await;
    peer.send(Frame::push("prices", "43")).await;

    let stats = addr.send(GetStats).await.unwrap();
    for expected in ["42", "43"] {
        let pushed = pushes.expect(WAIT).await;
        assert_eq!(pushed.connection, stats.id);
        assert_eq!(
            pushed.push,
            FramePush {
                seq: 0,
                topic: Some(Bytes::from_static(b"prices")),
                payload: Bytes::from(expected),
            }
        );
    }
    let stats = addr.send(GetStats).await.unwrap();
    assert_eq!((stats.pushes, stats.pushes_dropped), (2, 0));
    assert_not_closed(&mut events);
}

#[actix::test]
async fn without_a_push_recipient_pushes_are_dropped_and_counted() {
    tokio::time::pause();
    let (io, mut peer) = MockPeer::pair();
    let mut events = Probe::<ConnectionEvent>::start();
    let addr = Connection::builder(io, switchboard::protocol::frame::FrameProtocol::default())
        .events(events.recipient())
        .start();

    for i in 0..3 {
        peer.send(Frame::push("unheard", format!("{i}"))).await;
    }
    // A call round trip after the pushes: the connection has read them by its reply.
    let reply = actix_rt::spawn(addr.send(call("sync")));
    let request = peer.expect_request(WAIT).await;
    peer.reply(&request, "synced").await;
    assert_eq!(reply_of(finish(reply).await), "synced");

    let stats = addr.send(GetStats).await.unwrap();
    assert_eq!((stats.pushes, stats.pushes_dropped), (0, 3));
    assert_not_closed(&mut events);
}
