//! Calls through a Connection: what a caller relies on.
//!
//! Every call gets its own reply, whatever order the peer answers in; an error reply
//! is a typed `Remote` error; frames go out in exactly the order the connection handled
//! the messages; a request that cannot be encoded fails alone and leaves the connection
//! usable; and the supervisor hears `Connected` before anything else.
#![cfg(feature = "testkit")]

mod common;

use std::collections::HashMap;

use bytes::Bytes;
use common::{
    assert_not_closed, call, connect, connect_with, finish, numbered, reply_of, spawn_calls, Setup,
    PEER_NAME, WAIT,
};
use switchboard::protocol::frame::{Frame, FrameError, FrameKind, FrameProtocol};
use switchboard::{CallError, ConnectionConfig, ConnectionEvent, GetStats, SendFrame};
use tokio::time::Instant;

#[actix::test]
async fn a_call_gets_the_peers_reply() {
    tokio::time::pause();
    let Setup { addr, mut peer, .. } = connect(ConnectionConfig::default()).await;

    let reply = actix_rt::spawn(addr.send(call("question")));
    let request = peer.expect_request(WAIT).await;
    assert_eq!(request.payload, "question");
    peer.reply(&request, "answer").await;

    assert_eq!(reply_of(finish(reply).await), "answer");
}

#[actix::test]
async fn an_error_reply_fails_the_call_with_remote() {
    tokio::time::pause();
    let Setup {
        addr,
        mut peer,
        mut events,
        ..
    } = connect(ConnectionConfig::default()).await;

    let reply = actix_rt::spawn(addr.send(call("bad request")));
    let request = peer.expect_request(WAIT).await;
    peer.reply_error(&request, "no such thing").await;

    match finish(reply).await {
        Ok(Err(CallError::Remote(error))) => assert_eq!(error.message(), "no such thing"),
        other => panic!("expected a Remote error, got {other:?}"),
    }
    // An error reply is an answer like any other: the connection carries on.
    let next = actix_rt::spawn(addr.send(call("good request")));
    let request = peer.expect_request(WAIT).await;
    peer.reply(&request, "fine").await;
    assert_eq!(reply_of(finish(next).await), "fine");
    assert_not_closed(&mut events);
}

#[actix::test]
async fn replies_in_reverse_order_each_reach_their_own_caller() {
    tokio::time::pause();
    let Setup { addr, mut peer, .. } = connect(ConnectionConfig::default()).await;
    const CALLS: usize = 100;

    let results = spawn_calls(&addr, (0..CALLS).map(numbered));
    let requests = peer.expect_frames(CALLS, WAIT).await;
    for request in requests.iter().rev() {
        assert_eq!(request.kind, FrameKind::Request);
        let answer = [b"reply-to-".as_slice(), &request.payload].concat();
        peer.reply(request, answer).await;
    }

    let results = finish(results).await;
    assert_eq!(results.len(), CALLS);
    for (i, result) in results.into_iter().enumerate() {
        let expected = format!("reply-to-call-{i}");
        assert_eq!(reply_of(result), expected.as_str(), "call {i}");
    }
    let stats = addr.send(GetStats).await.unwrap();
    assert_eq!(stats.replies, CALLS as u64);
    assert_eq!(stats.in_flight, 0);
}

#[actix::test]
async fn connected_is_the_first_event() {
    tokio::time::pause();
    let Setup {
        addr,
        mut peer,
        mut events,
        ..
    } = connect(ConnectionConfig::default()).await;

    // Some traffic first, so there is something that could have come before it.
    let reply = actix_rt::spawn(addr.send(call("hello")));
    let request = peer.expect_request(WAIT).await;
    peer.reply(&request, "hi").await;
    finish(reply).await.unwrap().unwrap();

    let stats = addr.send(GetStats).await.unwrap();
    match events.expect(WAIT).await {
        ConnectionEvent::Connected { id, peer } => {
            assert_eq!(id, stats.id);
            assert_eq!(&*peer, PEER_NAME);
        }
        other => panic!("expected Connected first, got {other:?}"),
    }
}

#[actix::test]
async fn frames_are_written_in_the_order_the_messages_were_sent() {
    tokio::time::pause();
    let Setup { addr, mut peer, .. } = connect(ConnectionConfig::default()).await;
    const MESSAGES: usize = 300;

    // One task sends calls and fire-and-forget pushes, interleaved, in a known order.
    let mut calls = Vec::new();
    let mut sends = Vec::new();
    for i in 0..MESSAGES {
        if i % 3 == 2 {
            let frame = Frame::push("order", format!("{i}"));
            sends.push(addr.send(SendFrame::new(frame)));
        } else {
            calls.push(addr.send(call(format!("{i}"))));
        }
    }
    let calls = actix_rt::spawn(futures::future::join_all(calls));
    let sends = actix_rt::spawn(futures::future::join_all(sends));

    let frames = peer.expect_frames(MESSAGES, WAIT).await;
    let mut last_id = 0;
    for (i, frame) in frames.iter().enumerate() {
        assert_eq!(
            frame.payload,
            format!("{i}").as_str(),
            "frame {i} out of order"
        );
        if i % 3 == 2 {
            assert_eq!(frame.kind, FrameKind::Push, "frame {i}");
            assert_eq!(frame.topic.as_deref(), Some(b"order".as_slice()));
        } else {
            assert_eq!(frame.kind, FrameKind::Request, "frame {i}");
            assert!(frame.id > last_id, "request ids increase: {frame:?}");
            last_id = frame.id;
        }
    }
    peer.expect_nothing(std::time::Duration::from_millis(100))
        .await;

    for frame in frames.iter().filter(|f| f.kind == FrameKind::Request) {
        peer.reply(frame, frame.payload.clone()).await;
    }
    let mut expected = (0..MESSAGES).filter(|i| i % 3 != 2);
    for result in finish(calls).await {
        let i = expected.next().unwrap();
        assert_eq!(reply_of(result), format!("{i}").as_str());
    }
    for result in finish(sends).await {
        assert!(matches!(result, Ok(Ok(()))), "{result:?}");
    }
}

#[actix::test]
async fn a_request_too_large_to_encode_fails_alone() {
    tokio::time::pause();
    let Setup {
        addr,
        mut peer,
        mut events,
        ..
    } = connect_with(FrameProtocol::new(1024), ConnectionConfig::default()).await;

    let started = Instant::now();
    let result = addr.send(call(vec![7u8; 2000])).await;
    assert!(started.elapsed().is_zero(), "an encode error is immediate");
    match result {
        Ok(Err(CallError::Encode(error))) => {
            let error = error.downcast_ref::<FrameError>();
            assert!(
                matches!(error, Some(FrameError::TooLarge { max: 1024, .. })),
                "{error:?}"
            );
        }
        other => panic!("expected an Encode error, got {other:?}"),
    }

    // Nothing of the refused frame reached the wire, and the next call goes through.
    let next = actix_rt::spawn(addr.send(call("small")));
    let request = peer.expect_request(WAIT).await;
    assert_eq!(request.payload, "small");
    peer.reply(&request, Bytes::from_static(b"ok")).await;
    assert_eq!(reply_of(finish(next).await), "ok");
    assert_not_closed(&mut events);

    let stats = addr.send(GetStats).await.unwrap();
    assert_eq!(stats.in_flight, 0);
    assert_eq!(stats.buffered_write_bytes, 0);
}

#[actix::test]
async fn many_concurrent_callers_each_get_their_own_reply() {
    tokio::time::pause();
    let Setup { addr, mut peer, .. } = connect(ConnectionConfig::default()).await;
    const CALLERS: usize = 64;

    // Independent tasks, as independent actors would call.
    let tasks: Vec<_> = (0..CALLERS)
        .map(|i| {
            let addr = addr.clone();
            actix_rt::spawn(async move { (i, addr.send(call(numbered(i))).await) })
        })
        .collect();
    let requests = peer.expect_frames(CALLERS, WAIT).await;
    let by_payload: HashMap<_, _> = requests.iter().map(|r| (r.payload.clone(), r)).collect();
    assert_eq!(by_payload.len(), CALLERS, "every request sent once");
    // Answer in a scrambled order.
    for k in 0..CALLERS {
        let request = &requests[(k * 37) % CALLERS];
        peer.reply(request, [b"re:".as_slice(), &request.payload].concat())
            .await;
    }
    for task in tasks {
        let (i, result) = finish(task).await;
        assert_eq!(reply_of(result), format!("re:call-{i}").as_str());
    }
}
