//! Bounds: a Connection never holds more than it was allowed to.
//!
//! Past `max_in_flight` calls awaiting replies, or `max_write_buffer` bytes the peer has
//! not taken, a caller gets a typed `Overloaded` error at once (nothing is sent for
//! it), and the connection accepts work again as soon as there is room.
#![cfg(feature = "testkit")]

mod common;

use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use common::{
    assert_not_closed, call, connect, finish, numbered, reply_of, spawn_calls, start_on,
    CallResult, Setup, WAIT,
};
use futures::Future;
use switchboard::protocol::frame::Frame;
use switchboard::testkit::{MockPeer, Probe};
use switchboard::{CallError, ConnectionConfig, ConnectionEvent, GetStats, Overload};
use tokio::time::Instant;

fn max_in_flight(limit: usize) -> ConnectionConfig {
    ConnectionConfig::builder()
        .max_in_flight(limit)
        .build()
        .unwrap()
}

#[actix::test]
async fn past_max_in_flight_a_call_is_refused_at_once_until_a_reply_makes_room() {
    tokio::time::pause();
    let Setup {
        addr,
        mut peer,
        mut events,
        ..
    } = connect(max_in_flight(4)).await;

    let first = actix_rt::spawn(addr.send(call(numbered(0))));
    let others = spawn_calls(&addr, (1..4).map(numbered));
    let requests = peer.expect_frames(4, WAIT).await;

    let start = Instant::now();
    let fifth = addr.send(call("one too many")).await;
    assert!(start.elapsed().is_zero(), "refused at once");
    assert!(
        matches!(
            fifth,
            Ok(Err(CallError::Overloaded(Overload::InFlight { limit: 4 })))
        ),
        "{fifth:?}"
    );
    // Nothing was written for the refused call.
    peer.expect_nothing(Duration::from_millis(100)).await;

    // One reply (once the connection has it) makes room for one more call.
    let answered = requests.iter().find(|r| r.payload == numbered(0)).unwrap();
    peer.reply(answered, answered.payload.clone()).await;
    assert_eq!(reply_of(finish(first).await), numbered(0));
    let accepted = actix_rt::spawn(addr.send(call("room now")));
    let request = peer.expect_request(WAIT).await;
    assert_eq!(request.payload, "room now");
    peer.reply(&request, "accepted").await;
    assert_eq!(reply_of(finish(accepted).await), "accepted");

    for request in requests.iter().filter(|r| r.payload != numbered(0)) {
        peer.reply(request, request.payload.clone()).await;
    }
    for (i, result) in finish(others).await.into_iter().enumerate() {
        assert_eq!(reply_of(result), numbered(i + 1));
    }
    let stats = addr.send(GetStats).await.unwrap();
    assert_eq!(stats.overloaded, 1);
    assert_eq!(stats.in_flight, 0);
    assert_not_closed(&mut events);
}

#[actix::test]
async fn of_many_concurrent_calls_exactly_max_in_flight_are_accepted() {
    tokio::time::pause();
    let Setup { addr, mut peer, .. } = connect(max_in_flight(4)).await;
    const CALLS: usize = 20;

    // Independent callers, all at once.
    let tasks: Vec<_> = (0..CALLS)
        .map(|i| {
            let addr = addr.clone();
            actix_rt::spawn(async move { addr.send(call(numbered(i))).await })
        })
        .collect();
    let requests = peer.expect_frames(4, WAIT).await;
    peer.expect_nothing(Duration::from_millis(100)).await;
    let stats = addr.send(GetStats).await.unwrap();
    assert_eq!(stats.in_flight, 4);
    assert_eq!(stats.overloaded, (CALLS - 4) as u64);

    for request in &requests {
        peer.reply(request, request.payload.clone()).await;
    }
    let mut accepted = 0;
    let mut refused = 0;
    for task in tasks {
        match finish(task).await {
            Ok(Ok(_)) => accepted += 1,
            Ok(Err(CallError::Overloaded(Overload::InFlight { limit: 4 }))) => refused += 1,
            other => panic!("unexpected result {other:?}"),
        }
    }
    assert_eq!((accepted, refused), (4, CALLS - 4));
}

/// A call future that is still pending after the connection has handled it.
type Pending = Pin<Box<dyn Future<Output = CallResult>>>;

#[actix::test]
async fn a_peer_that_does_not_read_fills_the_write_buffer_up_to_its_cap_only() {
    tokio::time::pause();
    const CAP: usize = 1024;
    const PAYLOAD: usize = 200;
    let frame_len = Frame::request(1, vec![0u8; PAYLOAD]).encoded_len();

    // A 64-byte pipe whose far end nobody reads.
    let (client, server) = tokio::io::duplex(64);
    let mut peer = MockPeer::new(server);
    let mut events = Probe::<ConnectionEvent>::start();
    let config = ConnectionConfig::builder()
        .max_write_buffer(CAP)
        .build()
        .unwrap();
    let addr = start_on(client, config, &events).await;

    // Call until one is refused; each call has been handled once GetStats answers.
    let mut pending: Vec<Pending> = Vec::new();
    let mut refusal = None;
    for i in 0..50 {
        let mut request: Pending = Box::pin(addr.send(call(vec![i as u8; PAYLOAD])));
        let stats = addr.send(GetStats).await.unwrap();
        assert!(
            stats.buffered_write_bytes <= CAP + frame_len,
            "{} bytes buffered",
            stats.buffered_write_bytes
        );
        match futures::poll!(request.as_mut()) {
            Poll::Ready(result) => {
                refusal = Some(result);
                break;
            }
            Poll::Pending => pending.push(request),
        }
    }
    match refusal {
        Some(Ok(Err(CallError::Overloaded(Overload::WriteBuffer { buffered, limit })))) => {
            assert_eq!(limit, CAP);
            assert!(buffered <= CAP, "{buffered} bytes buffered");
        }
        other => panic!("expected a WriteBuffer overload, got {other:?}"),
    }
    assert!(!pending.is_empty());
    let stats = addr.send(GetStats).await.unwrap();
    assert!(stats.buffered_write_bytes <= CAP + frame_len);
    assert_eq!(stats.overloaded, 1);

    // The peer starts reading: every accepted call arrives once, intact and in order,
    // and nothing of the refused one.
    for (i, _) in pending.iter().enumerate() {
        let request = peer.expect_request(WAIT).await;
        assert_eq!(request.payload, vec![i as u8; PAYLOAD]);
        peer.reply(&request, format!("reply {i}")).await;
    }
    peer.expect_nothing(Duration::from_millis(100)).await;
    for (i, request) in pending.into_iter().enumerate() {
        let result = tokio::time::timeout(WAIT, request).await.unwrap();
        assert_eq!(reply_of(result), format!("reply {i}").as_str());
    }

    // With the buffer drained, calls are accepted again.
    let later = spawn_calls(&addr, (0..3).map(numbered));
    for _ in 0..3 {
        let request = peer.expect_request(WAIT).await;
        peer.reply(&request, request.payload.clone()).await;
    }
    for (i, result) in finish(later).await.into_iter().enumerate() {
        assert_eq!(reply_of(result), numbered(i));
    }
    let stats = addr.send(GetStats).await.unwrap();
    assert_eq!(stats.buffered_write_bytes, 0);
    assert_not_closed(&mut events);
}

#[actix::test]
async fn overloaded_counts_refused_calls_only_not_unwritten_pongs() {
    tokio::time::pause();
    // A peer that stopped reading but still pings: the connection cannot fit the pong
    // into its full write buffer and drops it, as documented. No call was refused.
    let (client, server) = tokio::io::duplex(64);
    let mut peer = MockPeer::new(server);
    let mut events = Probe::<ConnectionEvent>::start();
    let config = ConnectionConfig::builder()
        .max_write_buffer(1024)
        .build()
        .unwrap();
    let addr = start_on(client, config, &events).await;
    let _pending = actix_rt::spawn(addr.send(call(vec![0u8; 2000])));
    addr.send(GetStats).await.unwrap();

    for id in 1..=3 {
        peer.send(Frame::ping(id)).await;
    }
    // Then a push, which this connection (no push recipient) drops and counts: once it
    // is counted, the pings before it have been read and handled.
    peer.send(Frame::push("sync", "")).await;
    let mut stats = addr.send(GetStats).await.unwrap();
    for _ in 0..100 {
        if stats.pushes_dropped == 1 {
            break;
        }
        tokio::task::yield_now().await;
        stats = addr.send(GetStats).await.unwrap();
    }
    assert_eq!(stats.pushes_dropped, 1, "the peer's frames were read");
    assert_eq!(
        stats.overloaded, 0,
        "no call was refused, yet `overloaded` counts {}",
        stats.overloaded
    );
    assert_not_closed(&mut events);
}
