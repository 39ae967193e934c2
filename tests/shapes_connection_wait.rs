//! Traffic shape: bursts larger than `max_in_flight` on a connection configured to
//! wait (issue 15, item 2; docs/reliability.md T2).
//!
//! With `max_waiting_calls(n)`, a call past `max_in_flight` waits for room, first come
//! first served, bounded by its own timeout (`Timeout`) and by `n` waiting calls
//! (`Overloaded(Waiting)` at once past it); a connection that closes fails every waiting
//! call exactly once. The default (0) keeps `Overloaded` at once. Shapes: bursts of 1×
//! to 300× `max_in_flight`, `max_in_flight` from 1 to 64, a peer that answers at once or
//! after a delay; all in virtual time.
#![cfg(feature = "testkit")]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{call, connect, finish, numbered, spawn_calls, CallResult, Setup, WAIT};
use switchboard::protocol::frame::FrameKind;
use switchboard::testkit::MockPeer;
use switchboard::{Abort, CallError, Close, CloseReason, ConnectionConfig, GetStats, Overload};
use tokio::time::Instant;

fn waiting(max_in_flight: usize, max_waiting: usize) -> ConnectionConfig {
    ConnectionConfig::builder()
        .max_in_flight(max_in_flight)
        .max_waiting_calls(max_waiting)
        .build()
        .unwrap()
}

/// Answers every request with its own payload, after `delay`, until `count` are done;
/// returns the payloads in the order the requests arrived.
fn echo(
    mut peer: MockPeer,
    count: usize,
    delay: Duration,
) -> tokio::task::JoinHandle<(MockPeer, Vec<Bytes>)> {
    actix_rt::spawn(async move {
        let mut seen = Vec::with_capacity(count);
        while seen.len() < count {
            let frame = peer.expect_frame(Duration::from_secs(60)).await;
            if frame.kind != FrameKind::Request {
                continue;
            }
            tokio::time::sleep(delay).await;
            seen.push(frame.payload.clone());
            peer.reply(&frame, frame.payload.clone()).await;
        }
        (peer, seen)
    })
}

fn outcome(result: &CallResult) -> &'static str {
    match result {
        Ok(Ok(_)) => "ok",
        Ok(Err(CallError::Overloaded(_))) => "overloaded",
        Ok(Err(CallError::Timeout { .. })) => "timeout",
        Ok(Err(CallError::Closed(_))) => "closed",
        Ok(Err(CallError::Closing)) => "closing",
        Ok(Err(_)) => "other",
        Err(_) => "mailbox",
    }
}

#[actix::test]
async fn a_burst_larger_than_max_in_flight_all_succeeds_in_arrival_order() {
    tokio::time::pause();
    for (max_in_flight, burst, delay) in [
        (1, 50, Duration::ZERO),
        (8, 500, Duration::from_millis(1)),
        (64, 2_000, Duration::ZERO),
        (4, 1_200, Duration::ZERO),
    ] {
        let shape = format!("max_in_flight {max_in_flight}, burst {burst}, peer delay {delay:?}");
        let Setup { addr, peer, .. } = connect(waiting(max_in_flight, burst)).await;
        let peer = echo(peer, burst, delay);
        let results = finish(spawn_calls(&addr, (0..burst).map(numbered))).await;
        let failed: Vec<_> = results.iter().map(outcome).filter(|o| *o != "ok").collect();
        assert!(
            failed.is_empty(),
            "{shape}: {} failed: {:?}",
            failed.len(),
            &failed[..failed.len().min(5)]
        );
        for (i, result) in results.into_iter().enumerate() {
            assert_eq!(
                common::reply_of(result),
                numbered(i),
                "{shape}: call {i} got another's reply"
            );
        }
        // First come, first served: the peer saw the requests in the order they were made.
        let (_peer, seen) = finish(peer).await;
        let expected: Vec<_> = (0..burst).map(numbered).collect();
        assert_eq!(seen, expected, "{shape}: requests out of arrival order");
        let stats = addr.send(GetStats).await.unwrap();
        assert_eq!(stats.overloaded, 0, "{shape}: {stats:?}");
        assert_eq!(stats.queued_calls, 0, "{shape}: {stats:?}");
    }
}

#[actix::test]
async fn without_the_wait_policy_a_burst_past_max_in_flight_is_overloaded_at_once() {
    tokio::time::pause();
    let Setup { addr, mut peer, .. } = connect(waiting(4, 0)).await;
    let results = spawn_calls(&addr, (0..10).map(numbered));
    let requests = peer.expect_frames(4, WAIT).await;
    for request in &requests {
        peer.reply(request, "ok").await;
    }
    let results = finish(results).await;
    let overloaded = results
        .iter()
        .filter(|r| {
            matches!(
                r,
                Ok(Err(CallError::Overloaded(Overload::InFlight { limit: 4 })))
            )
        })
        .count();
    assert_eq!(overloaded, 6);
}

#[actix::test]
async fn a_waiting_call_ends_by_its_own_timeout_and_never_reaches_the_peer() {
    tokio::time::pause();
    let Setup { addr, mut peer, .. } = connect(waiting(1, 10)).await;
    // The one slot is taken by a call the peer holds for 5 s.
    let first = actix_rt::spawn(addr.send(call("first")));
    let held = peer.expect_request(WAIT).await;
    let start = Instant::now();
    let second = actix_rt::spawn(addr.send(call("second").timeout(Duration::from_millis(500))));
    let third = actix_rt::spawn(addr.send(call("third")));

    let second = finish(second).await;
    let took = start.elapsed();
    assert!(
        matches!(second, Ok(Err(CallError::Timeout { after })) if after == Duration::from_millis(500)),
        "{second:?}"
    );
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_millis(600),
        "{took:?}"
    );

    tokio::time::sleep(Duration::from_secs(5)).await;
    peer.reply(&held, "first").await;
    assert_eq!(common::reply_of(finish(first).await), "first");
    // The next request on the wire is the third: the second gave up before it was sent.
    let next = peer.expect_request(WAIT).await;
    assert_eq!(next.payload, "third");
    peer.reply(&next, "third").await;
    assert_eq!(common::reply_of(finish(third).await), "third");
    let stats = addr.send(GetStats).await.unwrap();
    assert_eq!(stats.calls, 2, "{stats:?}");
}

#[actix::test]
async fn past_max_waiting_calls_a_call_is_overloaded_at_once() {
    tokio::time::pause();
    let Setup { addr, mut peer, .. } = connect(waiting(2, 3)).await;
    let results = spawn_calls(&addr, (0..8).map(numbered));
    let requests = peer.expect_frames(2, WAIT).await;
    // 2 in flight, 3 waiting, 3 refused at once.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let stats = addr.send(GetStats).await.unwrap();
    assert_eq!((stats.in_flight, stats.queued_calls), (2, 3), "{stats:?}");
    for request in &requests {
        peer.reply(request, request.payload.clone()).await;
    }
    for _ in 0..3 {
        let request = peer.expect_request(WAIT).await;
        peer.reply(&request, request.payload.clone()).await;
    }
    let results = finish(results).await;
    let outcomes: Vec<_> = results.iter().map(outcome).collect();
    assert_eq!(
        outcomes,
        [
            "ok",
            "ok",
            "ok",
            "ok",
            "ok",
            "overloaded",
            "overloaded",
            "overloaded"
        ]
    );
    assert!(
        matches!(
            results[7],
            Ok(Err(CallError::Overloaded(Overload::Waiting { limit: 3 })))
        ),
        "{:?}",
        results[7]
    );
}

#[actix::test]
async fn a_connection_that_closes_fails_every_waiting_call_exactly_once() {
    tokio::time::pause();
    // Abort: every call, in flight or waiting, fails once with Closed(Aborted).
    let Setup { addr, mut peer, .. } = connect(waiting(4, 1000)).await;
    let results = spawn_calls(&addr, (0..500).map(numbered));
    peer.expect_frames(4, WAIT).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(addr.send(GetStats).await.unwrap().queued_calls, 496);
    addr.send(Abort).await.unwrap();
    let results = finish(results).await;
    assert_eq!(results.len(), 500);
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Ok(Err(CallError::Closed(CloseReason::Aborted))))),
        "{:?}",
        results.iter().map(outcome).collect::<Vec<_>>()
    );

    // A graceful close: waiting calls never reached the wire, so they fail with
    // Closing at once (safe to retry elsewhere); calls in flight get their replies.
    let Setup { addr, mut peer, .. } = connect(waiting(2, 1000)).await;
    let results = spawn_calls(&addr, (0..10).map(numbered));
    let requests = peer.expect_frames(2, WAIT).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    let close = actix_rt::spawn(addr.send(Close::default()));
    tokio::time::sleep(Duration::from_millis(10)).await;
    for request in &requests {
        peer.reply(request, request.payload.clone()).await;
    }
    let reason = finish(close).await.unwrap();
    assert!(matches!(reason, CloseReason::Closed), "{reason:?}");
    let outcomes: Vec<_> = finish(results).await.iter().map(outcome).collect();
    let mut expected = vec!["ok"; 2];
    expected.extend(["closing"; 8]);
    assert_eq!(outcomes, expected);
    peer.expect_closed(WAIT).await;
}
