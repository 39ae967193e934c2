//! A peer that breaks the protocol's rules — a reply for an id never sent, a second
//! reply for the same id, a request to a client — gets its connection closed with
//! `CloseReason::Protocol`. Every other call pending on that connection fails exactly
//! once with that reason, the supervisor hears `Closed` once, and the transport is
//! released.
#![cfg(feature = "testkit")]

mod common;

use common::{
    assert_no_more_events, closed_reason, connect, finish, next_closed, numbered, reply_of,
    spawn_calls, CallResult, Setup, WAIT,
};
use switchboard::protocol::frame::Frame;
use switchboard::{CloseReason, ConnectionConfig};

const CALLS: usize = 5;

fn assert_protocol_error(result: &CallResult) {
    assert!(
        matches!(closed_reason(result), Some(CloseReason::Protocol(_))),
        "expected Closed(Protocol), got {result:?}"
    );
}

#[actix::test]
async fn a_reply_for_an_id_never_sent_closes_the_connection() {
    tokio::time::pause();
    let Setup {
        addr,
        mut peer,
        mut events,
        ..
    } = connect(ConnectionConfig::default()).await;

    let results = spawn_calls(&addr, (0..CALLS).map(numbered));
    let requests = peer.expect_frames(CALLS, WAIT).await;
    let unknown = requests.iter().map(|r| r.id).max().unwrap() + 1000;
    peer.send(Frame::response(unknown, "who asked?")).await;

    let reason = next_closed(&mut events).await;
    assert!(matches!(reason, CloseReason::Protocol(_)), "{reason:?}");
    let results = finish(results).await;
    assert_eq!(results.len(), CALLS);
    results.iter().for_each(assert_protocol_error);
    assert_no_more_events(&mut events).await;
    peer.expect_closed(WAIT).await;
}

#[actix::test]
async fn a_second_reply_for_the_same_id_closes_the_connection() {
    tokio::time::pause();
    let Setup {
        addr,
        mut peer,
        mut events,
        ..
    } = connect(ConnectionConfig::default()).await;

    let results = spawn_calls(&addr, (0..CALLS).map(numbered));
    let requests = peer.expect_frames(CALLS, WAIT).await;
    let answered = requests
        .iter()
        .find(|r| r.payload == numbered(0))
        .expect("call 0 was sent");
    peer.reply(answered, "first").await;
    peer.reply(answered, "again").await;

    let reason = next_closed(&mut events).await;
    assert!(matches!(reason, CloseReason::Protocol(_)), "{reason:?}");
    let mut results = finish(results).await.into_iter();
    // The first reply was a good one and reached its caller...
    assert_eq!(reply_of(results.next().unwrap()), "first");
    // ...the duplicate failed everyone else, once each.
    let rest: Vec<_> = results.collect();
    assert_eq!(rest.len(), CALLS - 1);
    rest.iter().for_each(assert_protocol_error);
    assert_no_more_events(&mut events).await;
    peer.expect_closed(WAIT).await;
}

#[actix::test]
async fn a_duplicate_error_reply_is_also_a_protocol_violation() {
    tokio::time::pause();
    let Setup {
        addr,
        mut peer,
        mut events,
        ..
    } = connect(ConnectionConfig::default()).await;

    let results = spawn_calls(&addr, (0..2).map(numbered));
    let requests = peer.expect_frames(2, WAIT).await;
    let answered = requests.iter().find(|r| r.payload == numbered(0)).unwrap();
    peer.reply(answered, "ok").await;
    peer.reply_error(answered, "changed my mind").await;

    let reason = next_closed(&mut events).await;
    assert!(matches!(reason, CloseReason::Protocol(_)), "{reason:?}");
    let results = finish(results).await;
    assert_eq!(reply_of(results[0].clone()), "ok");
    assert_protocol_error(&results[1]);
}

#[actix::test]
async fn a_request_from_the_peer_closes_a_client_connection() {
    tokio::time::pause();
    let Setup {
        addr,
        mut peer,
        mut events,
        ..
    } = connect(ConnectionConfig::default()).await;

    let results = spawn_calls(&addr, (0..CALLS).map(numbered));
    peer.expect_frames(CALLS, WAIT).await;
    peer.send(Frame::request(1, "do something for me")).await;

    let reason = next_closed(&mut events).await;
    assert!(matches!(reason, CloseReason::Protocol(_)), "{reason:?}");
    finish(results).await.iter().for_each(assert_protocol_error);
    peer.expect_closed(WAIT).await;
}

#[actix::test]
async fn calls_after_a_protocol_close_fail_rather_than_hang() {
    tokio::time::pause();
    let Setup {
        addr,
        mut peer,
        mut events,
        ..
    } = connect(ConnectionConfig::default()).await;

    peer.send(Frame::response(42, "never asked")).await;
    next_closed(&mut events).await;

    let after = finish(spawn_calls(&addr, [numbered(0)])).await;
    match &after[0] {
        // The actor may still be stopping, or already gone.
        Ok(Err(switchboard::CallError::Closed(CloseReason::Protocol(_)))) | Err(_) => {}
        other => panic!("expected the call to fail, got {other:?}"),
    }
}
